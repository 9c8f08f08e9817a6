"""A local, deterministic, fault-injecting Google Cloud Text-to-Speech v1 peer.

A real gRPC server for ``google.cloud.texttospeech.v1.TextToSpeech`` (``SynthesizeSpeech``
and a minimal ``ListVoices``) using the proto-plus types of ``google-cloud-texttospeech``,
so the real client library can be pointed at it over an insecure loopback channel.

Audio: a deterministic tone-and-noise pattern (seeded by the text) of ``ms_per_char``
(60 ms) per character, in the requested encoding and rate (MULAW or LINEAR16). Like Google,
it wraps the audio in a RIFF/WAVE header by default (``wrap_wav``; the ``fmt`` chunk says
format 7 for μ-law, 1 for PCM); switch it off to get bare samples.

Faults (:meth:`TtsPeer.set_faults`, thread-safe, any time): ``delay_s`` before answering,
``fail_next`` requests fail with ``fail_code`` (UNAVAILABLE by default).

Records: :attr:`TtsPeer.requests`, a list of :class:`RecordedSynthesis`.

Threads: the ``grpc.server`` pool runs the handlers. Standalone:
``python -m tests.peers.tts_peer --port 50052``.
"""

from __future__ import annotations

import argparse
import logging
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from typing import Sequence

import grpc
import numpy as np
from google.cloud.texttospeech_v1 import (
    AudioEncoding,
    ListVoicesRequest,
    ListVoicesResponse,
    SsmlVoiceGender,
    SynthesizeSpeechRequest,
    SynthesizeSpeechResponse,
    Voice,
)

from engine.audio import ulaw_encode
from tests.peers.grpc_peer import GrpcPeer

__all__ = ["TtsPeer", "RecordedSynthesis", "wav_wrap", "VOICES"]

log = logging.getLogger(__name__)

SERVICE = "google.cloud.texttospeech.v1.TextToSpeech"

#: The voices ListVoices reports (name, language, gender).
VOICES: tuple[tuple[str, str, SsmlVoiceGender], ...] = (
    ("he-IL-Wavenet-A", "he-IL", SsmlVoiceGender.FEMALE),
    ("he-IL-Wavenet-B", "he-IL", SsmlVoiceGender.MALE),
    ("en-US-Wavenet-F", "en-US", SsmlVoiceGender.FEMALE),
    ("en-US-Wavenet-D", "en-US", SsmlVoiceGender.MALE),
)


@dataclass(frozen=True)
class RecordedSynthesis:
    text: str
    ssml: str
    voice_name: str
    language: str
    encoding: str
    sample_rate: int


def wav_wrap(payload: bytes, *, rate: int, fmt: int, bits: int) -> bytes:
    """A minimal RIFF/WAVE file around ``payload`` (``fmt``: 1 PCM, 7 μ-law), mono."""
    block = bits // 8
    fmt_chunk = struct.pack("<HHIIHH", fmt, 1, rate, rate * block, block, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt_chunk)) + fmt_chunk
    body += b"data" + struct.pack("<I", len(payload)) + payload
    if len(payload) % 2:
        body += b"\x00"
    return b"RIFF" + struct.pack("<I", len(body)) + body


class TtsPeer(GrpcPeer):
    """``with TtsPeer() as peer: peer.address``."""

    SERVICE = SERVICE

    def __init__(
        self, *, host: str = "127.0.0.1", port: int = 0, wrap_wav: bool = True, ms_per_char: int = 60
    ) -> None:
        self.host = host
        self.port = port
        self.wrap_wav = wrap_wav
        self.ms_per_char = ms_per_char
        self.lock = threading.Lock()
        self.delay_s = 0.0
        self.fail_next = 0
        self.fail_code = grpc.StatusCode.UNAVAILABLE
        self.requests: list[RecordedSynthesis] = []
        self._server: grpc.Server | None = None

    def _handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        return {
            "SynthesizeSpeech": grpc.unary_unary_rpc_method_handler(
                self._synthesize,
                request_deserializer=SynthesizeSpeechRequest.deserialize,
                response_serializer=SynthesizeSpeechResponse.serialize,
            ),
            "ListVoices": grpc.unary_unary_rpc_method_handler(
                self._list_voices,
                request_deserializer=ListVoicesRequest.deserialize,
                response_serializer=ListVoicesResponse.serialize,
            ),
        }

    def set_faults(self, *, delay_s: float | None = None, fail_next: int | None = None,
                   fail_code: grpc.StatusCode | None = None, wrap_wav: bool | None = None) -> None:
        """Change behaviour while running (thread-safe)."""
        with self.lock:
            if delay_s is not None:
                self.delay_s = delay_s
            if fail_next is not None:
                self.fail_next = fail_next
            if fail_code is not None:
                self.fail_code = fail_code
            if wrap_wav is not None:
                self.wrap_wav = wrap_wav

    # ------------------------------------------------------------------ handlers

    def _synthesize(self, req: SynthesizeSpeechRequest, context: grpc.ServicerContext) -> SynthesizeSpeechResponse:
        cfg = req.audio_config
        rec = RecordedSynthesis(
            text=req.input.text,
            ssml=req.input.ssml,
            voice_name=req.voice.name,
            language=req.voice.language_code,
            encoding=AudioEncoding(cfg.audio_encoding).name,
            sample_rate=cfg.sample_rate_hertz,
        )
        with self.lock:
            self.requests.append(rec)
            delay, wrap = self.delay_s, self.wrap_wav
            fail = self.fail_next > 0
            if fail:
                self.fail_next -= 1
            code = self.fail_code
        if delay:
            time.sleep(delay)
        if fail:
            context.abort(code, "Synthesis failed (injected).")
        text = rec.text or rec.ssml
        if not text:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Either `input.text` or `input.ssml` needs to be set.")
        if not rec.language:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Voice language_code is required.")
        rate = rec.sample_rate or 24000
        pcm = self.render(text, rate)
        if cfg.audio_encoding == AudioEncoding.MULAW:
            payload, fmt, bits = ulaw_encode(pcm), 7, 8
        elif cfg.audio_encoding == AudioEncoding.LINEAR16:
            payload, fmt, bits = pcm, 1, 16
        else:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"Peer supports MULAW and LINEAR16, not {rec.encoding}.")
        audio = wav_wrap(payload, rate=rate, fmt=fmt, bits=bits) if wrap else payload
        return SynthesizeSpeechResponse(audio_content=audio)

    def _list_voices(self, req: ListVoicesRequest, context: grpc.ServicerContext) -> ListVoicesResponse:
        voices = [
            Voice(language_codes=[lang], name=name, ssml_gender=gender, natural_sample_rate_hertz=24000)
            for name, lang, gender in VOICES
            if not req.language_code or lang.lower().startswith(req.language_code.lower())
        ]
        return ListVoicesResponse(voices=voices)

    def render(self, text: str, rate: int) -> bytes:
        """The PCM16 the peer says for ``text`` at ``rate`` (deterministic)."""
        n = rate * self.ms_per_char * len(text) // 1000
        rng = np.random.default_rng(zlib.crc32(text.encode("utf-8")))
        t = np.arange(n) / rate
        envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 3.0 * t)  # syllable-like amplitude wobble
        x = 5000.0 * envelope * (0.8 * np.sin(2 * np.pi * 180.0 * t) + 0.2 * rng.uniform(-1, 1, n))
        return np.clip(x, -32768, 32767).astype("<i2").tobytes()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Local Google Text-to-Speech v1 peer")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50052)
    parser.add_argument("--no-wav", action="store_true", help="return bare samples (no RIFF header)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    peer = TtsPeer(host=args.host, port=args.port, wrap_wav=not args.no_wav).start()
    log.info("tts peer listening on %s", peer.address)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        peer.stop()


if __name__ == "__main__":
    main()
