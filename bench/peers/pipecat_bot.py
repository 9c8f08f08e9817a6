"""The Pipecat comparison peer: a Twilio Media Streams bot built on ``pipecat-ai``, with stub services.

Runs in its OWN virtualenv (``bench/.venv-pipecat``, made by ``bench/run_bench.py``
with ``pip install "pipecat-ai[websocket,silero]==1.14.0" uvicorn``), never in the
engine's: Pipecat's dependency pins are its own. It imports nothing from this
repository, and uses Pipecat as a library only (no code copied from it):

* FastAPI + uvicorn serve ``WS /twilio/media`` and ``GET /healthz`` (the same
  URLs as ``callengine serve``, so the same ``callengine loadtest`` drives both);
* per call: ``parse_telephony_websocket`` reads Twilio's ``connected``/``start``,
  then a ``FastAPIWebsocketTransport`` with Pipecat's ``TwilioFrameSerializer``
  (8 kHz μ-law in and out, ``clear`` on interruption; auto hang-up off: there is
  no Twilio REST API here), Silero VAD in the user aggregator (stop 0.2 s, like the
  engine's 200 ms hangover), and the pipeline
  ``transport.input → StubSTT → user aggregator → StubLLM → StubTTS → transport.output
  → assistant aggregator``;
* the stub services subclass Pipecat's ``STTService``, ``LLMService`` and
  ``TTSService`` and inject the same delays as ``engine.providers.stub``, read from
  the same environment variables (``CALLENGINE_STUB_*``, defaults as in
  ``config/default.toml``): interim transcripts every ``stt_partial_ms`` of
  speech, the final ``stt_final_delay_ms`` after the VAD says the user stopped,
  first token after ``llm_first_token_ms`` then ``llm_tokens_per_s``, first audio
  after ``tts_first_audio_ms`` then ``tts_rtf``, 60 ms of tone per character.
* the greeting is spoken through the stub TTS when the client connects (Pipecat
  has no greeting cache; the engine streams a pre-synthesized one).

Usage: ``bench/.venv-pipecat/bin/python bench/peers/pipecat_bot.py --port 8765``.
All of it runs on one asyncio event loop in one process (uvicorn, one worker).
"""



import argparse
import asyncio
import os
import sys
import time
from typing import AsyncGenerator

import numpy as np

GREETING = "Hi, you've reached Demo Plumbing. How can I help you today?"
STT_TEXT = "I need a plumber for a leaking pipe"


def _setting(name: str, default: float) -> float:
    raw = os.environ.get(f"CALLENGINE_STUB_{name.upper()}")
    return float(raw) if raw not in (None, "") else default


PARTIAL_MS = _setting("stt_partial_ms", 200)
FINAL_DELAY_MS = _setting("stt_final_delay_ms", 150)
FIRST_TOKEN_MS = _setting("llm_first_token_ms", 300)
TOKENS_PER_S = _setting("llm_tokens_per_s", 40.0)
FIRST_AUDIO_MS = _setting("tts_first_audio_ms", 100)
TTS_RTF = _setting("tts_rtf", 0.2)
REPLY_TEXT = os.environ.get("CALLENGINE_STUB_REPLY_TEXT") or "Thanks for calling. We can send a technician tomorrow morning."
MS_PER_CHAR = 60.0
SPEECH_RMS = 150.0


def build_app():  # noqa: C901 - one factory holding the bot's pieces together
    from fastapi import FastAPI, WebSocket
    from loguru import logger

    from pipecat.audio.vad.silero import SileroVADAnalyzer
    from pipecat.audio.vad.vad_analyzer import VADParams
    from pipecat.frames.frames import (
        Frame,
        InterimTranscriptionFrame,
        LLMContextFrame,
        LLMFullResponseEndFrame,
        LLMFullResponseStartFrame,
        LLMTextFrame,
        TranscriptionFrame,
        TTSAudioRawFrame,
        TTSSpeakFrame,
        VADUserStartedSpeakingFrame,
        VADUserStoppedSpeakingFrame,
    )
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.runner import PipelineRunner
    from pipecat.pipeline.task import PipelineParams, PipelineTask
    from pipecat.processors.aggregators.llm_context import LLMContext
    from pipecat.processors.aggregators.llm_response_universal import (
        LLMContextAggregatorPair,
        LLMUserAggregatorParams,
    )
    from pipecat.processors.frame_processor import FrameDirection
    from pipecat.runner.utils import parse_telephony_websocket
    from pipecat.serializers.twilio import TwilioFrameSerializer
    from dataclasses import fields

    from pipecat.services.llm_service import LLMService
    from pipecat.services.settings import LLMSettings, STTSettings, TTSSettings
    from pipecat.services.stt_service import STTService
    from pipecat.services.tts_service import TTSService
    from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport

    logger.remove()
    logger.add(sys.stderr, level=os.environ.get("PIPECAT_LOG_LEVEL", "WARNING"))

    def complete(cls):  # a store-mode settings object with every field given (None: unsupported)
        return cls(**{f.name: None for f in fields(cls) if f.name != "extra" and f.init})

    words = STT_TEXT.split()
    t = np.arange(8000 * 2) / 8000.0
    rng = np.random.default_rng(1)
    tone = (5000 * (0.6 * np.sin(2 * np.pi * 300 * t) + 0.4 * np.sin(2 * np.pi * 450 * t)
                    + 0.1 * rng.standard_normal(t.size))).astype("<i2").tobytes()

    class StubSTT(STTService):
        """Energy-detected speech; interim every PARTIAL_MS of it; final FINAL_DELAY_MS after VAD stop."""

        def __init__(self, **kwargs) -> None:
            super().__init__(settings=complete(STTSettings), ttfs_p99_latency=(200 + FINAL_DELAY_MS) / 1000.0, **kwargs)
            self._speech_ms = 0.0
            self._partials = 0
            self._final_task: asyncio.Task | None = None

        def can_generate_metrics(self) -> bool:
            return False

        async def run_stt(self, audio: bytes) -> AsyncGenerator[Frame | None, None]:
            usable = len(audio) - len(audio) % 320
            if usable:
                x = np.frombuffer(audio[:usable], dtype="<i2").astype(np.float32).reshape(-1, 160)
                for energy in (x * x).mean(axis=1):
                    if energy < SPEECH_RMS * SPEECH_RMS:
                        continue
                    before = int(self._speech_ms // PARTIAL_MS)
                    self._speech_ms += 20.0
                    if int(self._speech_ms // PARTIAL_MS) > before:
                        self._partials += 1
                        text = " ".join(words[i % len(words)] for i in range(self._partials))
                        yield InterimTranscriptionFrame(text, "caller", str(time.time()))
            yield None

        async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
            await super().process_frame(frame, direction)
            if isinstance(frame, VADUserStartedSpeakingFrame):
                if self._final_task is not None:
                    await self.cancel_task(self._final_task)
                    self._final_task = None
                self._speech_ms = 0.0
                self._partials = 0
            elif isinstance(frame, VADUserStoppedSpeakingFrame):
                self._final_task = self.create_task(self._final(), name="stub_stt_final")

        async def _final(self) -> None:
            await asyncio.sleep(FINAL_DELAY_MS / 1000.0)
            await self.push_frame(TranscriptionFrame(STT_TEXT, "caller", str(time.time()), finalized=True))
            self._final_task = None

    class StubLLM(LLMService):
        """First token after FIRST_TOKEN_MS, then one word per 1/TOKENS_PER_S (cancelled by interruptions)."""

        def can_generate_metrics(self) -> bool:
            return False

        async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
            await super().process_frame(frame, direction)
            if isinstance(frame, LLMContextFrame):
                await self.push_frame(LLMFullResponseStartFrame())
                tokens = REPLY_TEXT.split()
                t0 = time.monotonic()
                for i, word in enumerate(tokens):
                    delay = t0 + FIRST_TOKEN_MS / 1000.0 + i / TOKENS_PER_S - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    await self.push_frame(LLMTextFrame(word if i == len(tokens) - 1 else word + " "))
                await self.push_frame(LLMFullResponseEndFrame())
            else:
                await self.push_frame(frame, direction)

    class StubTTS(TTSService):
        """First audio after FIRST_AUDIO_MS, then 100 ms chunks at TTS_RTF; 60 ms of tone per character."""

        def can_generate_metrics(self) -> bool:
            return False

        async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
            total = int(len(text.strip()) * MS_PER_CHAR) * 16  # PCM16 at 8 kHz: 16 bytes per ms
            chunk = 1600  # 100 ms
            t0 = time.monotonic()
            pos = k = 0
            while pos < total:
                delay = t0 + FIRST_AUDIO_MS / 1000.0 + k * 0.1 * TTS_RTF - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                n = min(chunk, total - pos)
                start = pos % len(tone)
                piece = (tone[start:] + tone)[:n]
                yield TTSAudioRawFrame(audio=piece, sample_rate=8000, num_channels=1, context_id=context_id)
                pos += n
                k += 1

    app = FastAPI()

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok", "pid": os.getpid(), "stt": "pipecat-stub", "tts": "pipecat-stub",
                "llm": "pipecat-stub", "pipecat": _pipecat_version()}

    @app.websocket("/twilio/media")
    async def media(websocket: WebSocket) -> None:
        await websocket.accept()
        _, call_data = await parse_telephony_websocket(websocket)
        serializer = TwilioFrameSerializer(
            stream_sid=call_data["stream_id"],
            call_sid=call_data["call_id"],
            params=TwilioFrameSerializer.InputParams(auto_hang_up=False),
        )
        transport = FastAPIWebsocketTransport(
            websocket=websocket,
            params=FastAPIWebsocketParams(
                audio_in_enabled=True,
                audio_out_enabled=True,
                add_wav_header=False,
                serializer=serializer,
            ),
        )
        context = LLMContext([{"role": "system", "content": "A receptionist for a plumbing company."}])
        aggregators = LLMContextAggregatorPair(
            context,
            user_params=LLMUserAggregatorParams(vad_analyzer=SileroVADAnalyzer(params=VADParams(stop_secs=0.2))),
        )
        pipeline = Pipeline(
            [
                transport.input(),
                StubSTT(),
                aggregators.user(),
                StubLLM(settings=complete(LLMSettings)),
                StubTTS(sample_rate=8000, settings=complete(TTSSettings)),
                transport.output(),
                aggregators.assistant(),
            ]
        )
        task = PipelineTask(
            pipeline,
            params=PipelineParams(audio_in_sample_rate=8000, audio_out_sample_rate=8000),
        )

        @transport.event_handler("on_client_connected")
        async def on_connected(_transport, _client) -> None:
            await task.queue_frames([TTSSpeakFrame(GREETING)])

        @transport.event_handler("on_client_disconnected")
        async def on_disconnected(_transport, _client) -> None:
            await task.cancel()

        await PipelineRunner(handle_sigint=False).run(task)

    return app


def _pipecat_version() -> str:
    try:
        from importlib.metadata import version

        return version("pipecat-ai")
    except Exception:  # noqa: BLE001 - informational only
        return "unknown"


def main() -> None:
    import uvicorn

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    args = p.parse_args()
    uvicorn.run(build_app(), host=args.host, port=args.port, log_level="warning", ws="websockets-sansio")


if __name__ == "__main__":
    main()
