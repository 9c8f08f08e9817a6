"""The embedded TTS: espeak-ng as a subprocess, streamed as 8 kHz μ-law.

``espeak-ng --stdout`` writes a streamed WAV (placeholder sizes, PCM16 mono at
22050 Hz) and starts writing within about 10 ms, so we stream: read its stdout as
it comes, resample to 8 kHz, μ-law encode, and yield 100 ms chunks (800 bytes).

Streaming resampling without clicks: ``engine.audio.resample_pcm16`` is stateless
and time-aligned (input sample 0 maps to output sample 0). For 22050 -> 8000 the
ratio is 160/441, so an input block starting at a multiple of 441 samples maps to
an output block starting at a multiple of 160; ``engine.audio.StreamingResampler``
resamples each block with real audio on both sides and keeps only its own output
samples, which is sample-for-sample the whole-utterance result (tests check this). Rejected: reading everything before
yielding (adds the whole synthesis time to first audio) and resampling blocks
independently (clicks every 100 ms).

Safety: the text is one argv element after ``--`` (no shell, and text starting
with ``-`` is not an option); NUL and other control characters are removed.
Cancellation is checked between reads and between chunks; on cancel (or when the
consumer closes the generator) the subprocess is killed and reaped.

Hebrew: unless ``hebrew_diacritize`` is off or the Nakdimon model file is missing
(then a warning and raw espeak-ng Hebrew), Hebrew text is pointed by Nakdimon and
handed over as espeak-ng phonemes (``engine.providers.hebrew_niqqud``): raw
espeak-ng guesses Hebrew vowels and drops most of them.

Threads: one ``EspeakTts`` per process, shared; ``synthesize`` is a blocking
generator run on the TTS actor's pykka thread. Each call owns its own subprocess,
so concurrent calls from different threads are safe.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from typing import Iterator, Mapping

from engine.audio import StreamingResampler, strip_wav_header, ulaw_encode
from engine.business import short_lang
from engine.messages import CancelToken
from engine.providers.base import ProviderError

__all__ = ["EspeakTts"]

log = logging.getLogger(__name__)

OUT_RATE = 8000
CHUNK_BYTES = 800  # 100 ms of 8 kHz μ-law
_READ_SIZE = 16384
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_DEFAULT_VOICES = {"en": "en-us", "he": "he"}
_FALLBACK_VOICE = "en-us"


def _list_voices(executable: str) -> set[str]:
    """Voice names espeak-ng knows (``--voices`` column 2, plus file names)."""
    try:
        out = subprocess.run([executable, "--voices"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise ProviderError(f"espeak-ng could not be run ({executable}): {exc}") from exc
    voices: set[str] = set()
    for line in out.splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 5:
            voices.add(cols[1].lower())
            voices.add(cols[4].rsplit("/", 1)[-1].lower())
    return voices


class EspeakTts:
    """``TextToSpeech`` backed by the ``espeak-ng`` program (Debian package ``espeak-ng``).

    Construction looks the program up and lists its voices once; it raises
    ``ProviderError`` naming the package when the program is missing.
    ``voices`` overrides the language -> voice map (``{"en": "en-us", "he": "he"}``).
    """

    name = "espeak"

    def __init__(
        self,
        *,
        rate_wpm: int = 160,
        executable: str | None = None,
        voices: Mapping[str, str] | None = None,
        chunk_bytes: int = CHUNK_BYTES,
        hebrew_diacritize: bool = True,
        nakdimon_model: str | None = None,
    ) -> None:
        exe = executable or shutil.which("espeak-ng")
        if not exe or not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
            raise ProviderError(
                "espeak-ng is not installed (install the 'espeak-ng' package, e.g. apt-get install espeak-ng)"
            )
        if not 80 <= rate_wpm <= 450:
            raise ValueError(f"rate_wpm must be within 80..450, got {rate_wpm}")
        if chunk_bytes <= 0:
            raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
        self._exe = exe
        self._rate = rate_wpm
        self._chunk = chunk_bytes
        self._available = _list_voices(exe)
        self._voices = dict(_DEFAULT_VOICES, **(voices or {}))
        self._warned: set[str] = set()
        self._niqqud = None
        if hebrew_diacritize:
            from engine.providers.hebrew_niqqud import NakdimonDiacritizer

            try:
                self._niqqud = NakdimonDiacritizer(nakdimon_model)
            except FileNotFoundError as exc:
                log.warning("Hebrew is spoken by raw espeak-ng: %s", exc)

    def hebrew_input(self, text: str) -> str:
        """What espeak-ng is given for Hebrew text: pointed by Nakdimon and written as
        espeak-ng phonemes (``hebrew_niqqud``), or the text itself without the model."""
        if self._niqqud is None:
            return text
        from engine.providers.hebrew_niqqud import espeak_phonemes

        return espeak_phonemes(self._niqqud.diacritize(text))

    def voice_for(self, language: str, voice: str = "") -> str:
        """The espeak-ng voice used for ``language`` (BCP-47) or an explicit ``voice``.

        An unknown voice or language falls back to the language's base voice, then
        to ``en-us``, with one warning per language (never an error on a live call).
        """
        if voice and voice.lower() in self._available:
            return voice
        lang = short_lang(language or "en")
        candidates = [self._voices.get(lang, ""), (language or "").lower(), lang]
        for cand in candidates:
            if cand and cand.lower() in self._available:
                return cand
        if lang not in self._warned:
            self._warned.add(lang)
            log.warning("espeak-ng has no voice for %r (voice %r); using %s", language, voice, _FALLBACK_VOICE)
        return _FALLBACK_VOICE

    def synthesize(
        self, text: str, *, language: str, voice: str = "", cancel: CancelToken | None = None
    ) -> Iterator[bytes]:
        """Yield 8 kHz μ-law audio for ``text`` in ``chunk_bytes`` chunks (the last may be
        shorter). Empty text yields nothing. Stops, and kills espeak-ng, as soon as
        ``cancel`` is seen set (checked between reads and chunks) or the generator is
        closed. Raises ``ProviderError`` when espeak-ng fails or writes no audio."""
        clean = " ".join(_CONTROL.sub(" ", text or "").split())
        if not clean:
            return
        if short_lang(language or "en") == "he":
            clean = self.hebrew_input(clean)
        argv = [self._exe, "--stdout", "-v", self.voice_for(language, voice), "-s", str(self._rate), "--", clean]
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError as exc:
            raise ProviderError(f"espeak-ng could not be started: {exc}") from exc
        try:
            yield from self._stream(proc, cancel)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()

    # ------------------------------------------------------------------ internals

    def _stream(self, proc: subprocess.Popen, cancel: CancelToken | None) -> Iterator[bytes]:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        head = b""
        pcm = bytearray()
        info: dict = {}
        resampler: StreamingResampler | None = None
        out = bytearray()
        produced = 0
        while True:
            if cancel is not None and cancel.cancelled:
                return
            data = os.read(fd, _READ_SIZE)
            eof = not data
            if resampler is None:
                head += data
                if b"data" not in head[:4096] and not eof:
                    continue
                if head[:4] == b"RIFF":
                    try:
                        payload, info = strip_wav_header(head)
                    except ValueError:
                        if not eof:
                            continue
                        raise ProviderError("espeak-ng wrote a WAV header without audio") from None
                else:
                    payload, info = head, {}
                if info and (info.get("format") != 1 or info.get("bits") != 16 or info.get("channels") != 1):
                    raise ProviderError(f"espeak-ng wrote unexpected audio: {info}")
                resampler = StreamingResampler(int(info.get("rate", 22050)), OUT_RATE)
                data = payload
            pcm += data
            usable = len(pcm) - (len(pcm) % 2)
            if usable:
                out += ulaw_encode(resampler.feed(bytes(pcm[:usable]), final=False))
                del pcm[:usable]
            if eof:
                out += ulaw_encode(resampler.feed(b"", final=True))
            while len(out) >= self._chunk or (eof and out):
                if cancel is not None and cancel.cancelled:
                    return
                chunk = bytes(out[: self._chunk])
                del out[: self._chunk]
                produced += len(chunk)
                yield chunk
            if eof:
                break
        rc = proc.wait()
        if produced == 0:
            err = proc.stderr.read().decode("utf-8", "replace").strip() if proc.stderr else ""
            raise ProviderError(f"espeak-ng produced no audio (exit {rc}): {err or 'no message'}")
