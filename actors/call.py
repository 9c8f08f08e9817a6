"""One call's supervised actor tree.

::

    call:<CallSid>  (Supervisor, one_for_one, auto_shutdown=any_significant)
      transport  trio   transient, significant  - the caller hanging up ends the tree
      decoder    trio   permanent
      stt        pykka  permanent, retried with backoff, then the fallback recognizer
      planner    trio   permanent
      tts        pykka  permanent
      pacer      trio   permanent               - starts the cached greeting at once

Children start in this order and stop in reverse. The pacer is started right
after the transport's readers are ready, but the greeting frames are queued in
its ``on_start``, before any recognizer thread exists, so the first greeting
frame never waits for a pykka thread to start. (Order of specs and start:
transport, pacer, decoder, planner, tts, stt.)

State that must survive a child's restart lives outside the children, in the
tree's ``env``: the conversation (history, lead slots), the audio since the
last final (``AudioHistory``), and the call's stamps.

Escalation: past ``call_intensity`` restarts in ``call_period_s`` the tree gives
up; the WebSocket handler plays the business's apology and closes the call, and
the call record is kept. No other call is touched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol

from actors.decoder import Decoder
from actors.pacer import Pacer
from actors.planner import Planner, TurnSettings
from actors.stt import SttActor
from actors.transport import Transport
from actors.tts import TtsActor
from engine.audio_history import PREROLL_BYTES, AudioHistory
from engine.echo import EchoReference
from engine.messages import CallInfo
from engine.supervisor import Backoff, ChildSpec, Restart, Strategy, Supervisor

if TYPE_CHECKING:
    from transports.asgi_ws import MediaSocket
    from transports.twilio import TwilioStream


class CallServices(Protocol):
    """What a call's tree uses of the process (``engine.runtime.Runtime`` is one):
    the tree is built from these and owns none of them."""

    settings: Any
    businesses: Mapping[str, Any]
    metrics: Any
    planner: Any
    stt: Any
    stt_fallback: Any
    tts: Any
    llm_limiter: Any
    record: Callable[[Any], None]

    def greeting_audio(self, business_id: str) -> bytes: ...

    def new_vad(self) -> Any: ...


def build_call_tree(
    runtime: CallServices,
    info: CallInfo,
    stream: "TwilioStream",
    sock: "MediaSocket",
) -> Supervisor:
    """``sock``: the call's socket, owned by the host's handler; the transport
    reads and writes it while the tree lives."""
    s = runtime.settings
    business = runtime.businesses[info.business_id]
    history = AudioHistory(preroll_bytes=PREROLL_BYTES)
    conversation = runtime.planner.open_conversation(business, channel="call")
    call_stamps: dict[str, float] = {}
    sup_cfg = s.supervision
    turn_cfg = TurnSettings(
        early_finalize=s.turn.early_finalize,
        early_punct_min_chars=s.turn.early_punct_min_chars,
        early_stable_min_chars=s.turn.early_stable_min_chars,
        stable_ms=s.turn.stable_ms,
        speculative=s.turn.speculative,
        speculative_min_chars=s.turn.speculative_min_chars,
        final_timeout_ms=s.turn.final_timeout_ms,
        resume_window_ms=s.turn.resume_window_ms,
        unfinished_hold_ms=s.turn.unfinished_hold_ms,
    )
    # The agent's outbound level (pacer writes, decoder reads): tells echo from the caller.
    echo = EchoReference() if s.vad.echo_gate else None
    env = {"call": info, "business": business, "history": history, "conversation": conversation, "stamps": call_stamps}
    metrics = runtime.metrics
    language = business.language
    voice = business.voice

    def stt_spec_factory(provider: Any) -> Any:
        return lambda ctx: SttActor.start(
            ctx, provider, history, language=language, phrase_hints=business.phrase_hints
        )

    decoders: list[Decoder] = []  # the decoder running now, once started (the STT probe asks it)

    def new_decoder(ctx: Any) -> Decoder:
        decoder = Decoder(
            runtime.new_vad(),
            history,
            batch_ms=s.turn.stt_batch_ms,
            echo=echo,
            barge_in_min_ms=s.vad.barge_in_min_ms,
        )
        decoders[:] = [decoder]
        return decoder

    stt_fallback = runtime.stt_fallback
    children = [
        ChildSpec(
            "transport",
            lambda ctx: Transport(stream, sock, metrics=metrics),
            restart=Restart.TRANSIENT,
            significant=True,
        ),
        ChildSpec(
            "pacer",
            lambda ctx: Pacer(
                greeting=runtime.greeting_audio(business.id),
                lead_ms=s.pacer.lead_ms,
                queue_frames=s.pacer.queue_frames,
                metrics=metrics,
                echo=echo,
            ),
        ),
        ChildSpec("decoder", new_decoder),
        ChildSpec(
            "planner",
            lambda ctx: Planner(
                conversation=conversation,
                call_sid=info.call_sid,
                business_id=business.id,
                language=language,
                voice=voice,
                connected_at=info.connected_at,
                record=runtime.record,
                limiter=runtime.llm_limiter,
                settings=turn_cfg,
                streaming_stt=bool(getattr(runtime.stt, "streaming", False)),
                call_stamps=call_stamps,
                metrics=metrics,
            ),
        ),
        ChildSpec("tts", lambda ctx: TtsActor.start(ctx, runtime.tts, voice=voice)),
        ChildSpec(
            "stt",
            stt_spec_factory(runtime.stt),
            fallback=stt_spec_factory(stt_fallback) if stt_fallback is not None else None,
            max_retries=sup_cfg.stt_retries,
            backoff=Backoff(base=sup_cfg.stt_backoff_s, max=5.0, jitter=0.1),
            probe_interval=sup_cfg.stt_probe_interval_s,
            probe_hold=sup_cfg.stt_probe_hold_s,
            # Try the primary recognizer again only between utterances: a switch
            # mid-utterance splits it between two sessions.
            probe_when=lambda: not (decoders and decoders[-1].in_speech),
            buffer=1024,
        ),
    ]
    return Supervisor(
        f"call:{info.call_sid}",
        children,
        strategy=Strategy.ONE_FOR_ONE,
        intensity=sup_cfg.call_intensity,
        period=sup_cfg.call_period_s,
        auto_shutdown="any_significant",
        env=env,
        on_event=metrics.supervision_event if metrics is not None else None,
    )
