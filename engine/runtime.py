"""The process runtime: everything one host process owns, and who owns it.

Owned here, one of each per process: the settings and business profiles, the
providers (one STT, TTS and LLM object each, plus the fallback recognizer), the
silero VAD model (one ONNX session; each call's detector keeps only its state),
the pre-synthesized greetings and apologies (and, with ``[piper] warm_lines``, a
background thread that speaks every business's fixed lines into the voice's cache),
the store, the metrics, and the root supervision tree::

    engine  (Supervisor, one_for_one)
      recorder  pykka  permanent   - the only writer of records (write-behind, journaled)
      calls     Supervisor         - one temporary child per live call (its tree: the call_tree factory)
      chats     DynamicSupervisor  - one child per active WhatsApp chat (passivated when idle)

``Runtime.run`` is a trio task (the app's lifespan nursery owns it); it returns
when the tree stops. Everything else runs on the trio thread unless a method
says otherwise. Nothing here is shared between processes: with ``--workers N``
each process has its own runtime, and a call's context travels in TwiML
``<Parameter>``s, never in memory.

The runtime knows no role: the application hands it the factory of a call's
tree (``call_tree``, :func:`actors.call.build_call_tree` in the host), so the
runtime sits beneath the roles' wiring and imports nothing of ``actors``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import trio

from engine.actor import ActorContext
from engine.admission import Admission
from engine.bridge import call_soon_in_trio
from engine.business import Business, load_businesses
from engine.config import Settings
from engine.drain import CLOSING_DEFAULT
from engine.dynamic_supervisor import DynamicSupervisor
from engine.messages import CallInfo, FlushJournal, RecordCallEnded, RecordCallStarted, RecordTurn
from engine.metrics import Metrics
from engine.providers import make_planner, make_stt, make_tts
from engine.providers.rules_text import SENTENCE_SPLIT
from engine.recorder import Recorder
from engine.repair import CallOwnership
from engine.store import DurableWriter, Journal, Store, StoreUnavailable, open_store
from engine.supervisor import ChildSpec, Restart, Supervisor, run_root

log = logging.getLogger("callengine.runtime")


@dataclass
class LiveCall:
    info: CallInfo
    tree: Supervisor
    ended: trio.Event = field(default_factory=trio.Event)
    end_reason: str = ""  # preset to "shutdown" by the drain before it stops the tree
    escalated: bool = False


#: Builds one call's tree: ``(runtime, info, stream, sock) -> Supervisor``; ``sock``
#: stays owned by the host's handler, ``stream`` is the call's sans-IO Twilio stream.
CallTreeFactory = Callable[["Runtime", CallInfo, Any, Any], Supervisor]


class Runtime:
    """See the module docstring. Construct with ``Runtime.create`` (blocking: loads models)."""

    def __init__(
        self, settings: Settings, businesses: dict[str, Business], store: Store, *, call_tree: CallTreeFactory
    ) -> None:
        self.settings = settings
        self.call_tree = call_tree
        self.businesses = businesses
        self.store = store
        self.metrics = Metrics()
        self.stt = make_stt(settings.stt, settings)
        self.stt_fallback = make_stt("whisper", settings) if settings.stt == "google" else None
        self.tts = make_tts(settings.tts, settings)
        self.planner = make_planner(settings.llm, settings)
        self.llm_limiter = trio.CapacityLimiter(max(8, settings.max_calls * 2))
        self._blocking_limiter = trio.CapacityLimiter(8)  # store reads, model loads
        # Bounded reads (the admin API) have their own threads: a frozen database
        # leaves abandoned reads behind, and they must not hold up the others.
        self._bounded_limiter = trio.CapacityLimiter(4)
        self._greetings: dict[str, bytes] = {}
        self._apologies: dict[str, bytes] = {}
        self._closings: dict[str, bytes] = {}
        a = settings.admission
        self.admission = Admission(settings.max_calls, a.max_pending, a.max_pending_per_ip)
        self.live: dict[str, LiveCall] = {}
        self.root: Supervisor | None = None
        self.calls: Supervisor | None = None
        self.chats: DynamicSupervisor | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self.writer = DurableWriter(store, Journal(settings.data_path / "journal.jsonl"))
        self.ownership = CallOwnership(store, dead_after_s=settings.repair.dead_after_s)
        self._beat_now = trio.Event()
        self._warm_stop = threading.Event()
        self._warm_thread: threading.Thread | None = None
        self.chat_hooks: list[Callable[["Runtime"], Any]] = []
        self.started_at = time.time()
        self.vad_session: Any = None  # engine.vad.SileroSession, loaded by create()

    @classmethod
    def create(cls, settings: Settings, *, call_tree: CallTreeFactory) -> "Runtime":
        """Blocking construction: profiles, store (migrated), providers, caches.
        ``call_tree`` builds each call's tree (see :data:`CallTreeFactory`)."""
        businesses = load_businesses(settings.businesses_path)
        settings.data_path.mkdir(parents=True, exist_ok=True)
        url = settings.secret("database_url") or f"sqlite:///{settings.data_path / 'callengine.db'}"
        store = open_store(url)
        store.migrate()
        for biz in businesses.values():
            store.upsert_business(biz.id, biz.name, {"language": biz.language, "source": biz.source})
        runtime = cls(settings, businesses, store, call_tree=call_tree)
        runtime.repair_at_start()
        runtime.prepare_audio()
        if settings.tts == "piper" and settings.piper.warm_lines and settings.piper.cache_mb > 0:
            runtime.start_warming_lines()
        from engine.vad import SileroSession

        # The one silero model of this process (~100 ms to load: here, never at call start).
        runtime.vad_session = SileroSession.shared(8000)
        warm = getattr(runtime.stt, "warm_up", None) or getattr(runtime.stt_fallback, "warm_up", None)
        if warm is not None:
            warm()
        return runtime

    # ---- crash repair (engine.repair) ------------------------------------------------

    def repair_at_start(self) -> None:
        """Blocking, at start-up: replay what a previous run of this data directory
        journaled (its calls' real ends come first), close the calls of processes
        that are gone as ``lost``, and register this process as an owner. A store
        that is away only delays it to the first heartbeat that reaches it."""
        try:
            if self.writer.pending:
                self.writer.flush()
            repaired = self.ownership.repair()
            self.ownership.register()
        except StoreUnavailable:
            log.warning("store unavailable at start: crash repair deferred", exc_info=True)
            return
        for _ in repaired:
            self.metrics.count("calls_repaired_lost")

    async def _ownership_ticker(self) -> None:
        """Stamp this process and its calls every ``repair.heartbeat_s`` (and at
        once when a call starts), and repair the calls of processes that are gone."""
        period = self.settings.repair.heartbeat_s
        while True:
            with trio.move_on_after(period):
                await self._beat_now.wait()
            self._beat_now = trio.Event()
            sids = list(self.live)
            with trio.move_on_after(max(period, 1.0)):
                try:
                    await trio.to_thread.run_sync(self.ownership.beat, sids, abandon_on_cancel=True)
                    repaired = await trio.to_thread.run_sync(self.ownership.repair, abandon_on_cancel=True)
                except StoreUnavailable:
                    continue
                for _ in repaired:
                    self.metrics.count("calls_repaired_lost")

    # ---- caches ---------------------------------------------------------------------

    def prepare_audio(self) -> None:
        """Pre-synthesize every business's greeting and apology (no TTS on the greeting path)."""
        for biz in self.businesses.values():
            self._greetings[biz.id] = self._synth(biz.greeting(), biz)
            apology = biz.prompt("apology", default="Sorry, we have a technical problem. Please call again later.")
            self._apologies[biz.id] = self._synth(apology, biz)
            closing = biz.prompt("shutdown", default=CLOSING_DEFAULT)
            self._closings[biz.id] = self._synth(closing, biz)

    def start_warming_lines(self) -> None:
        """Speak every business's fixed sentences once (those of ``Business.spoken_lines``
        with no ``{field}`` to fill), on a
        background thread at low CPU priority, sentence by sentence as the planner
        hands them to the TTS actor: the voice caches each sentence's audio, so the
        rule planner's replies (and an LLM's quoting them) start playing at once
        instead of waiting ~0.1 s of a core per second of speech. Calls are served
        first: the warm-up's synthesis runs wait behind every call's (the voice's
        ``deferred``), and a sentence no call has needed yet is computed by the call; a
        call that needs the sentence the warm-up is computing at that moment hears it as
        it is computed, at that call's priority (the cache computes each sentence once).
        ``close`` stops the thread between sentences."""
        jobs = []
        speaks = getattr(self.tts, "speaks", None)
        for biz in self.businesses.values():
            for lang in sorted({biz.lang, *biz.prompts.keys()}):
                if speaks is not None and not speaks(lang):
                    continue  # the voice's fallback speaks it, and caches nothing
                for line in biz.spoken_lines(lang):
                    for sentence in SENTENCE_SPLIT.split(line.strip()):
                        if sentence.strip() and "{" not in sentence:
                            jobs.append((sentence.strip(), lang, biz.voice))
        if not jobs:
            return

        def warm() -> None:
            tid = threading.get_native_id()
            try:
                os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + 10))
            except OSError:
                pass
            started = time.monotonic()
            deferred = getattr(self.tts, "deferred", None)  # the Piper voice's: behind every call
            with deferred() if deferred is not None else contextlib.nullcontext():
                done = speak_all()
            log.info("voice cache warmed", extra={"sentences": done, "seconds": round(time.monotonic() - started, 2)})

        def speak_all() -> int:
            done = 0
            for text, lang, voice in dict.fromkeys(jobs):
                if self._warm_stop.is_set():
                    break
                try:
                    for _ in self.tts.synthesize(text, language=lang, voice=voice):
                        pass
                    done += 1
                except Exception:  # a line the voice cannot say is said (and reported) on a call
                    log.warning("could not pre-synthesize %r", text[:60], exc_info=True)
            return done

        self._warm_thread = threading.Thread(target=warm, name="tts-warm", daemon=True)
        self._warm_thread.start()

    def _synth(self, text: str, biz: Business) -> bytes:
        return b"".join(self.tts.synthesize(text, language=biz.language, voice=biz.voice))

    def greeting_audio(self, business_id: str) -> bytes:
        return self._greetings.get(business_id, b"")

    def apology_audio(self, business_id: str) -> bytes:
        return self._apologies.get(business_id, b"")

    def closing_audio(self, business_id: str) -> bytes:
        """What a caller still on the line hears when a drain ends the call."""
        return self._closings.get(business_id, b"")

    # ---- lookups --------------------------------------------------------------------

    def business_for_number(self, number: str) -> Business:
        digits = "".join(ch for ch in number if ch.isdigit())
        for biz in self.businesses.values():
            for n in biz.phone_numbers:
                if digits and "".join(ch for ch in n if ch.isdigit()) == digits:
                    return biz
        return self.default_business()

    def default_business(self) -> Business:
        for biz in self.businesses.values():
            if biz.default:
                return biz
        return next(iter(self.businesses.values()))

    def new_vad(self) -> Any:
        from engine.vad import VoiceActivityDetector

        v = self.settings.vad
        return VoiceActivityDetector(
            sample_rate=8000,
            threshold=v.threshold,
            min_speech_ms=v.min_speech_ms,
            hangover_ms=v.hangover_ms,
            session=self.vad_session,
        )

    # ---- recording (any thread, never blocks) ------------------------------------------

    def record(self, msg: Any) -> None:
        if type(msg) is RecordTurn:
            self.metrics.turn_recorded(msg.stamps, msg.interrupted)
        root = self.root
        token = self._token
        if root is None or token is None:
            self.writer.write(msg)  # before start / after stop: write through
            return
        call_soon_in_trio(token, root.tell_role, "recorder", msg)

    async def read_store(self, fn: Callable[..., Any], *args: Any, timeout: float | None = None) -> Any:
        """``fn(*args)`` on a worker thread. With ``timeout``, raises ``StoreUnavailable``
        once that many seconds pass without an answer (a frozen database, a full
        pool): the thread is abandoned and ends on the store's own bound, so a
        request never waits longer than ``timeout``."""
        if timeout is None:
            return await trio.to_thread.run_sync(fn, *args, limiter=self._blocking_limiter)
        with trio.move_on_after(timeout):
            return await trio.to_thread.run_sync(fn, *args, limiter=self._bounded_limiter, abandon_on_cancel=True)
        raise StoreUnavailable(f"the store did not answer within {timeout:g} s")

    # ---- calls ----------------------------------------------------------------------

    @property
    def live_call_count(self) -> int:
        return len(self.live)

    async def start_call(
        self,
        info: CallInfo,
        stream: Any,
        sock: Any,
    ) -> LiveCall:
        """Spawn the call's tree under ``calls``; returns once every actor is ready.

        ``sock`` (a ``transports.asgi_ws.MediaSocket``) stays owned by the caller
        (the host's handler); the tree's transport reads and writes it until the
        tree ends."""
        assert self.calls is not None
        tree = self.call_tree(self, info, stream, sock)
        live = LiveCall(info=info, tree=tree)

        def on_exit(sup: Supervisor, error: BaseException | None) -> None:
            live.escalated = error is not None
            live.end_reason = "escalated" if error is not None else (live.end_reason or "ended")
            self.live.pop(info.call_sid, None)
            self.metrics.calls_live.dec()
            self.record(RecordCallEnded(call_sid=info.call_sid, ended_at=time.time(), reason=live.end_reason))
            live.ended.set()
            conv = sup.env.get("conversation")
            if conv is not None and self.calls is not None:
                self.calls.nursery.start_soon(self._summarize, info.call_sid, conv)

        tree._on_exit = on_exit
        self.live[info.call_sid] = live
        self.metrics.calls_total.inc()
        self.metrics.calls_live.inc()
        self.record(
            RecordCallStarted(
                call_sid=info.call_sid,
                stream_sid=info.stream_sid,
                business_id=info.business_id,
                from_number=info.from_number,
                to_number=info.to_number,
                started_at=info.started_at,
            )
        )
        await self.calls.start_child(ChildSpec(info.call_sid, lambda ctx: tree, restart=Restart.TEMPORARY))
        self._beat_now.set()  # claim it in the store now, not at the next heartbeat
        return live

    async def _summarize(self, call_sid: str, conv: Any) -> None:
        """After hang-up: the call's summary, off the hot path (a worker thread)."""
        try:
            summary = await trio.to_thread.run_sync(conv.summary, limiter=self.llm_limiter)
        except Exception:  # noqa: BLE001 - a summary is a nicety; never fail for it
            log.warning("summary failed", extra={"call_sid": call_sid}, exc_info=True)
            return
        if summary:
            self.record(RecordCallEnded(call_sid=call_sid, ended_at=time.time(), reason="", summary=summary))

    # ---- lifecycle ------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus["Runtime"] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the root tree until cancelled or ``stop()``; ready once every child is."""
        self._token = trio.lowlevel.current_trio_token()
        writer = self.writer

        def new_calls(ctx: ActorContext) -> Supervisor:
            # A fresh instance per start: a restarted supervisor must not reuse state.
            self.calls = Supervisor("calls", [], intensity=1_000_000, period=1.0)
            return self.calls

        def new_chats(ctx: ActorContext) -> Supervisor:
            self.chats = DynamicSupervisor("chats", intensity=1_000_000, period=1.0)
            return self.chats

        root = Supervisor(
            "engine",
            [
                ChildSpec("recorder", lambda ctx: Recorder.start(ctx, writer), shutdown=5.0),
                ChildSpec("calls", new_calls, restart=Restart.PERMANENT, shutdown=10.0),
                ChildSpec("chats", new_chats, restart=Restart.PERMANENT, shutdown=10.0),
            ],
            intensity=10,
            period=60.0,
        )
        self.root = root
        async with trio.open_nursery() as nursery:
            await nursery.start(run_root, root)
            for hook in self.chat_hooks:
                hook(self)
            nursery.start_soon(self._flush_ticker)
            nursery.start_soon(self._ownership_ticker)
            task_status.started(self)
            await root.wait_finished()
            nursery.cancel_scope.cancel()
        self.root = None

    async def _flush_ticker(self) -> None:
        while True:
            await trio.sleep(2.0)
            if self.writer.pending and self.root is not None:
                self.root.tell_role("recorder", FlushJournal())

    def stop(self) -> None:
        if self.root is not None:
            self.root.request_stop()

    def close(self) -> None:
        """After ``run`` returned: stop the voice warm-up, flush what is journaled
        and release the store."""
        self._warm_stop.set()
        if self._warm_thread is not None:
            self._warm_thread.join(timeout=5.0)
        try:
            self.writer.flush()
            if not self.writer.pending:  # every end is stored: nothing of ours to repair
                self.ownership.leave()
        except StoreUnavailable:
            log.warning("store unavailable at exit", exc_info=True)
        finally:
            self.store.close()
