"""TTS actor: sentences in, μ-law audio out, one call's voice.

A ``PykkaActor``: synthesis blocks (a subprocess, a gRPC call), so it runs on
the call's TTS thread; the provider object itself is shared by the process (one
client, one loaded voice). Sentences of one reply are synthesized in order as
the planner streams them, so the first sentence plays while later ones are
still being written.

Cancellation: every ``Speak`` carries the reply's ``CancelToken``. A cancelled
reply's remaining sentences are skipped and a running synthesis stops at its
next chunk; the pacer also ignores audio of a cleared turn, so a late chunk is
never heard.
"""

from __future__ import annotations

import time
from typing import Any

from engine.actor import ActorContext, PykkaActor
from engine.messages import AgentAudio, ReplyStamp, Speak
from engine.providers.base import TextToSpeech


class TtsActor(PykkaActor):
    def __init__(self, ctx: ActorContext, provider: TextToSpeech, *, voice: str = "") -> None:
        super().__init__(ctx)
        self._provider = provider
        self._voice = voice
        self._stamped: set[int] = set()

    def receive(self, msg: Any) -> None:
        if not isinstance(msg, Speak):
            return
        send = self.ctx.send
        if msg.cancel.cancelled:
            return
        if msg.text.strip():
            for chunk in self._provider.synthesize(
                msg.text, language=msg.language, voice=msg.voice or self._voice, cancel=msg.cancel
            ):
                if msg.cancel.cancelled:
                    return
                if not chunk:
                    continue
                if msg.turn_id not in self._stamped:
                    self._stamped.add(msg.turn_id)
                    send("planner", ReplyStamp(turn_id=msg.turn_id, name="tts_first_audio", t=time.monotonic()))
                send("pacer", AgentAudio(turn_id=msg.turn_id, mulaw=chunk, last=False))
        if msg.last and not msg.cancel.cancelled:
            send("pacer", AgentAudio(turn_id=msg.turn_id, mulaw=b"", last=True))
