"""Synthetic caller speech: espeak-ng -> 8 kHz μ-law, for the simulated caller.

The simulated caller (``callengine call``, the load tester, tests) needs lines of
speech that the embedded STT can recognise, with no network and no credentials.
espeak-ng is a Debian package that writes a 22050 Hz PCM16 WAV on ``--stdout`` in
about 10 ms a short line; we strip the header, resample band-limited to 8 kHz and
encode G.711 μ-law, i.e. exactly what Twilio would send for a phone caller.

The text goes to espeak-ng on stdin (never on the command line, never through a
shell), so a line starting with ``-`` cannot be read as an option. Results are
cached per (text, voice, rate) with ``functools.lru_cache``: a load test that plays
the same script on 200 calls synthesizes each line once. ``synthesize_line`` blocks
(a subprocess); from trio call it via ``trio.to_thread.run_sync``. It is thread-safe
(lru_cache is, and each call runs its own process).
"""

from __future__ import annotations

import functools
import shutil
import subprocess

from engine.audio import resample_pcm16, strip_wav_header, ulaw_encode

__all__ = ["synthesize_line", "VoiceUnavailable"]

_TARGET_RATE = 8000
_TIMEOUT_S = 30.0


class VoiceUnavailable(RuntimeError):
    """espeak-ng is missing or failed (unknown voice, bad output)."""


@functools.lru_cache(maxsize=256)
def synthesize_line(text: str, voice: str = "en-us", rate_wpm: int = 160) -> bytes:
    """Speak ``text`` with espeak-ng and return 8 kHz mono G.711 μ-law bytes.

    Raises ``ValueError`` for empty text or a rate outside 80..450 wpm, and
    :class:`VoiceUnavailable` when espeak-ng is not installed, rejects the voice,
    or returns something that is not 16-bit mono PCM WAV.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("synthesize_line needs non-empty text")
    if not 80 <= int(rate_wpm) <= 450:
        raise ValueError(f"rate_wpm must be within 80..450, got {rate_wpm}")
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise VoiceUnavailable("espeak-ng not found on PATH (Debian/Ubuntu: apt-get install espeak-ng)")
    try:
        proc = subprocess.run(
            [exe, "--stdout", "-v", voice, "-s", str(int(rate_wpm))],
            input=text.encode("utf-8"),
            capture_output=True,
            timeout=_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise VoiceUnavailable(f"espeak-ng failed to run: {exc}") from exc
    if proc.returncode != 0 or not proc.stdout:
        detail = proc.stderr.decode("utf-8", "replace").strip()[:200]
        raise VoiceUnavailable(f"espeak-ng exited {proc.returncode} for voice {voice!r}: {detail}")
    pcm, info = strip_wav_header(proc.stdout)
    if info.get("format") != 1 or info.get("bits") != 16 or info.get("channels") != 1:
        raise VoiceUnavailable(f"unexpected espeak-ng output format: {info}")
    if len(pcm) % 2:
        pcm = pcm[:-1]
    return ulaw_encode(resample_pcm16(pcm, int(info["rate"]), _TARGET_RATE))
