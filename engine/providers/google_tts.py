"""Google Cloud Text-to-Speech (v1), μ-law 8 kHz straight from the service.

One :class:`GoogleTts` per process owns one ``texttospeech_v1.TextToSpeechClient`` (one
gRPC channel, shared by every call; gRPC multiplexes the requests). ``synthesize`` is a
blocking generator run on the TTS actor's thread: it asks for ``MULAW`` at 8000 Hz, so no
resampling or transcoding happens here; Google wraps that audio in a RIFF/WAVE header, which
is removed (``strip_wav_header``) so that only μ-law samples reach the pacer.

Cancellation: the request goes out through the transport's raw unary callable as a gRPC
future (the GAPIC wrapper would block without a way to cancel), polled every
``poll_s`` (20 ms) against the ``CancelToken``; a barge-in cancels the RPC in flight and ends
the generator without yielding. Between chunks the token is checked again.

Errors (service status, deadline, a response that is not 8 kHz μ-law) raise
``ProviderError`` from the generator; bad arguments raise ``ValueError`` at once.
"""

from __future__ import annotations

import logging
import re
from typing import Iterator, Mapping

import grpc
from google.api_core import exceptions as gexc
from google.cloud import texttospeech_v1 as tts
from google.cloud.texttospeech_v1.services.text_to_speech.transports import TextToSpeechGrpcTransport

from engine.audio import strip_wav_header
from engine.business import short_lang
from engine.messages import CancelToken
from engine.providers.base import ProviderError
from engine.providers.google_client import build_client

__all__ = ["GoogleTts", "DEFAULT_VOICES"]

log = logging.getLogger(__name__)

SAMPLE_RATE = 8000
WAVE_FORMAT_MULAW = 7
#: Default voice per short language code (a business's ``voice`` overrides it).
DEFAULT_VOICES: Mapping[str, str] = {"he": "he-IL-Wavenet-A", "en": "en-US-Wavenet-F"}
_VOICE_LANG_RE = re.compile(r"^([a-z]{2,3}-[A-Z]{2})-")


class GoogleTts:
    """The process-wide Google TTS provider (implements ``TextToSpeech``); thread-safe.

    ``endpoint`` with ``insecure=True`` talks plaintext gRPC to a local peer (no credentials
    looked up); otherwise default credentials (or ``credentials``) and ``endpoint`` / the
    regional endpoint ``{region}-texttospeech.googleapis.com``.
    """

    name = "google"

    def __init__(
        self,
        *,
        endpoint: str | None = None,
        insecure: bool = False,
        region: str | None = None,
        credentials: object | None = None,
        voices: Mapping[str, str] | None = None,
        chunk_ms: int = 100,
        timeout_s: float = 5.0,
        poll_s: float = 0.02,
        speaking_rate: float = 0.0,
    ) -> None:
        if chunk_ms <= 0 or timeout_s <= 0 or poll_s <= 0:
            raise ValueError("chunk_ms, timeout_s and poll_s must be positive")
        self.voices = dict(DEFAULT_VOICES if voices is None else voices)
        self.chunk_bytes = SAMPLE_RATE * chunk_ms // 1000  # μ-law: one byte per sample
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self.speaking_rate = speaking_rate
        self._channel: grpc.Channel | None
        self._client, self._channel = build_client(
            tts.TextToSpeechClient, TextToSpeechGrpcTransport, "texttospeech",
            endpoint=endpoint, insecure=insecure, region=region, credentials=credentials,
        )

    def voice_for(self, language: str, voice: str = "") -> tuple[str, str]:
        """(language_code, voice name) for a request. ``iw-IL`` becomes ``he-IL`` (TTS codes)."""
        if voice:
            m = _VOICE_LANG_RE.match(voice)
            if m:
                return m.group(1), voice
        lang = short_lang(language or "he-IL")
        tag = language if language and short_lang(language) != "he" else "he-IL"
        return tag, voice or self.voices.get(lang, "")

    def synthesize(
        self, text: str, *, language: str, voice: str = "", cancel: CancelToken | None = None
    ) -> Iterator[bytes]:
        """Yield 8 kHz μ-law chunks of about ``chunk_ms`` for ``text`` (no WAV header).

        Runs on the caller's (TTS actor) thread. Empty text yields nothing. Stops without
        yielding more when ``cancel`` is set. Raises ``ProviderError`` on service failure.
        """
        if not isinstance(text, str):
            raise ValueError(f"text must be str, got {type(text).__name__}")
        if not text.strip():
            return
        language_code, name = self.voice_for(language, voice)
        request = tts.SynthesizeSpeechRequest(
            input=tts.SynthesisInput(text=text),
            voice=tts.VoiceSelectionParams(language_code=language_code, name=name),
            audio_config=tts.AudioConfig(
                audio_encoding=tts.AudioEncoding.MULAW,
                sample_rate_hertz=SAMPLE_RATE,
                speaking_rate=self.speaking_rate,
            ),
        )
        audio = self._call(request, cancel)
        if audio is None:
            return
        payload = self._mulaw_payload(audio)
        for i in range(0, len(payload), self.chunk_bytes):
            if cancel is not None and cancel.cancelled:
                return
            yield payload[i : i + self.chunk_bytes]

    def close(self) -> None:
        """Close the shared channel (process shutdown). Never raises."""
        try:
            if self._channel is not None:
                self._channel.close()
            else:
                self._client.transport.close()
        except Exception:  # noqa: BLE001
            log.warning("google tts: channel close failed", exc_info=True)

    # ------------------------------------------------------------------ internals

    def _call(self, request: tts.SynthesizeSpeechRequest, cancel: CancelToken | None) -> bytes | None:
        """The audio bytes, or None when cancelled first."""
        if cancel is not None and cancel.cancelled:
            return None
        future = self._client.transport.synthesize_speech.future(request, timeout=self.timeout_s)  # type: ignore[attr-defined]
        try:
            while True:
                try:
                    response = future.result(timeout=self.poll_s)
                    break
                except grpc.FutureTimeoutError:
                    if cancel is not None and cancel.cancelled:
                        future.cancel()
                        return None
        except grpc.FutureCancelledError:
            return None
        except grpc.RpcError as exc:
            err = gexc.from_grpc_error(exc) if isinstance(exc, grpc.Call) else exc
            raise ProviderError(f"google tts: synthesis failed: {err}") from exc
        return bytes(response.audio_content)

    @staticmethod
    def _mulaw_payload(audio: bytes) -> bytes:
        try:
            payload, info = strip_wav_header(audio)
        except ValueError as exc:
            raise ProviderError(f"google tts: malformed WAV from the service: {exc}") from exc
        if info and (info.get("format") != WAVE_FORMAT_MULAW or info.get("rate") != SAMPLE_RATE):
            raise ProviderError(f"google tts: expected 8 kHz mu-law, the service sent {info}")
        return payload
