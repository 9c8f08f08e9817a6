"""STT actor: owns one recognition session of a call.

A ``PykkaActor``: vendor sessions block (Google's sync gRPC stream, a whisper
transcription), so each call's recognizer lives on its own thread and receives
audio in 40-100 ms batches, never per frame.

Failure semantics (the supervisor's child spec gives the numbers): when the
session reports an error (``on_error`` from a gRPC thread) the actor fails on
purpose; the supervisor restarts it with backoff, then switches the slot to the
fallback recognizer. Each new incarnation first replays the call's
``AudioHistory`` (the unfinalized speech, from its pre-roll on; never the
silence before it) into its new session, then skips mailbox items it has
already replayed (by ``seq``), so no word is lost and none is recognized twice.

Which failures count toward the fallback: only those of a session that could not
carry new audio. A session that delivered a final, or took ``PROGRESS_BYTES`` of
live audio (beyond its replay) before it reported the error, made progress: the
actor reports it (``ActorContext.report_progress``) before failing, and the
supervisor starts its failure count again. A service that ends every stream
after a few seconds of audio therefore keeps the call on the primary, restarted
after the first backoff step each time; one that refuses every open, or dies
during the replay, switches to the fallback after the retries.

Streaming recognizers get all audio; batch recognizers (``streaming=False``,
e.g. whisper) get only speech: a 600 ms pre-roll before ``SpeechStarted``, the
chunks in speech, and ``end_utterance()`` on ``UtteranceEnded`` (which is when
they transcribe, on this thread).
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from typing import Any

from engine.actor import ActorContext, PykkaActor
from engine.audio_history import PREROLL_BYTES, AudioHistory
from engine.messages import (
    AudioChunk,
    SessionFailed,
    SpeechStarted,
    Transcript,
    UtteranceEnded,
)
from engine.providers.base import SpeechToText, SttSession

#: Live audio a session must take before it fails for the failure to count as
#: progress: 500 ms (a refused open fails within one 100 ms batch).
PROGRESS_BYTES = 500 * 16


class SttActor(PykkaActor):
    def __init__(
        self,
        ctx: ActorContext,
        provider: SpeechToText,
        history: AudioHistory,
        *,
        language: str,
        phrase_hints: tuple[str, ...] = (),
    ) -> None:
        super().__init__(ctx)
        self._provider = provider
        self._history = history
        self._language = language
        self._hints = phrase_hints
        self._session: SttSession | None = None
        self._replayed_upto = 0
        self._in_utterance = False
        self._preroll: deque[bytes] = deque()
        self._preroll_bytes = 0
        self._last_ue_seq = 0
        self._trimmed_upto = 0
        self._final_pending_trim = False
        self._streaming = bool(getattr(provider, "streaming", False))
        self._live_bytes = 0  # audio fed beyond the replay (this thread writes)
        self._finals = 0  # finals delivered by this session (its threads write)
        self._progressed_at_error: bool | None = None

    # ---- lifecycle (actor thread) ----------------------------------------------------

    def started(self) -> None:
        self._session = self._provider.open_session(
            language=self._language,
            sample_rate=8000,
            phrase_hints=self._hints,
            on_transcript=self._on_transcript,
            on_error=self._on_error,
        )
        for item in self._history.pending():
            self._feed(item)
            self._replayed_upto = max(self._replayed_upto, item.seq)

    def stopping(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def receive(self, msg: Any) -> None:
        if isinstance(msg, SessionFailed):
            if self._progressed_at_error:
                self.ctx.report_progress()
            raise msg.error
        if isinstance(msg, (AudioChunk, UtteranceEnded)):
            if msg.seq <= self._replayed_upto:
                return
            self._feed(msg)
            if isinstance(msg, AudioChunk):
                self._live_bytes += len(msg.pcm16)
        elif isinstance(msg, SpeechStarted):
            self._begin_utterance()

    # ---- internals -------------------------------------------------------------------

    def _feed(self, item: AudioChunk | UtteranceEnded) -> None:
        session = self._session
        if session is None:
            return
        if isinstance(item, UtteranceEnded):
            self._last_ue_seq = item.seq
            self._in_utterance = False
            session.end_utterance()
            if self._final_pending_trim:
                self._final_pending_trim = False
                self._trimmed_upto = item.seq
                self._history.trim_through(item.seq)
            return
        if self._streaming:
            session.push_audio(item.pcm16)
        elif self._in_utterance or item.in_speech:
            # The decoder sends the chunk that holds the detection before
            # SpeechStarted itself: the pre-roll goes first either way.
            self._begin_utterance()
            session.push_audio(item.pcm16)
        else:
            preroll = self._preroll
            preroll.append(item.pcm16)
            self._preroll_bytes += len(item.pcm16)
            while len(preroll) > 1 and self._preroll_bytes - len(preroll[0]) >= PREROLL_BYTES:
                self._preroll_bytes -= len(preroll.popleft())

    def _begin_utterance(self) -> None:
        """Speech began: a batch recognizer gets the pre-roll now, in order, once."""
        if self._in_utterance:
            return
        self._in_utterance = True
        if not self._streaming and self._session is not None:
            for pcm in self._preroll:
                self._session.push_audio(pcm)
        self._preroll.clear()
        self._preroll_bytes = 0

    def _on_transcript(self, tr: Transcript) -> None:
        # Any thread (a gRPC reader or this actor's own thread).
        if tr.is_final:
            self._finals += 1
            if self._last_ue_seq > self._trimmed_upto:
                # The final covers the utterance that ended last, even when the
                # caller has already started the next one: keep only what follows.
                self._trimmed_upto = self._last_ue_seq
                self._history.trim_through(self._last_ue_seq)
            else:
                # A final inside a long utterance (no boundary since the last
                # trim): trim when that utterance ends.
                self._final_pending_trim = True
        if not tr.t:
            tr = dataclasses.replace(tr, t=time.monotonic())
        if tr.is_final and not self._streaming and not tr.upto_seq:
            # A batch recognizer finalizes inside ``end_utterance``, on this thread:
            # the final transcribes the utterance that ended last. The planner
            # needs to know which, when the caller has already gone on.
            tr = dataclasses.replace(tr, upto_seq=self._last_ue_seq)
        self.ctx.send("planner", tr)

    def _on_error(self, exc: BaseException) -> None:
        # Any thread: fail this actor on its own thread, in mailbox order. Whether
        # the session made progress is decided now: audio the actor feeds after
        # this moment went to a dead session.
        if self._progressed_at_error is None:
            self._progressed_at_error = self._finals > 0 or self._live_bytes >= PROGRESS_BYTES
        try:
            self.actor_ref.tell(SessionFailed(error=exc))
        except Exception:  # noqa: BLE001 - the actor is already gone
            pass
