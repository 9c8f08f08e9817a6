"""Tests for engine.audio: G.711 μ-law, resampling, framing, WAV parsing."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from engine.audio import (
    MULAW_SILENCE,
    ULAW_TO_PCM16,
    StreamingResampler,
    frames,
    resample_pcm16,
    rms_pcm16,
    strip_wav_header,
    ulaw_decode,
    ulaw_encode,
)


def _pcm(samples) -> bytes:
    return np.asarray(samples).astype("<i2").tobytes()


def _samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.int64)


def _tone(freq: float, rate: int, seconds: float = 1.0, amp: float = 10000.0) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    return _pcm(amp * np.sin(2 * np.pi * freq * t))


# ------------------------------------------------------------------ μ-law


def test_decode_table_known_values() -> None:
    assert ULAW_TO_PCM16.shape == (256,)
    assert ULAW_TO_PCM16.dtype == np.int16
    assert ULAW_TO_PCM16[0xFF] == 0
    assert ULAW_TO_PCM16[0x00] == -32124
    assert ULAW_TO_PCM16[0x80] == 32124
    assert ULAW_TO_PCM16[0x7F] == 0  # "negative zero"
    # segment 0 step is 8: 0xFE -> 8, 0x7E -> -8
    assert ULAW_TO_PCM16[0xFE] == 8
    assert ULAW_TO_PCM16[0x7E] == -8
    assert _samples(ulaw_decode(b"\xff\x00\x80")).tolist() == [0, -32124, 32124]


def test_encode_known_values() -> None:
    assert ulaw_encode(_pcm([0])) == b"\xff"
    assert ulaw_encode(_pcm([32767])) == b"\x80"  # clipped at 32635
    assert ulaw_encode(_pcm([-32768])) == b"\x00"
    assert ulaw_encode(_pcm([-1])) == b"\x7f"
    assert ulaw_encode(_pcm([8])) == b"\xfe"


def test_every_code_round_trips() -> None:
    codes = bytes(c for c in range(256) if c != 0x7F)  # 0x7F (-0) encodes back as 0xFF
    assert ulaw_encode(ulaw_decode(codes)) == codes


def test_decode_matches_the_table_for_every_code() -> None:
    # ulaw_decode uses bytes.translate; the reference is the numpy gather it replaced.
    codes = bytes(range(256))
    reference = ULAW_TO_PCM16[np.frombuffer(codes, dtype=np.uint8)].astype("<i2").tobytes()
    assert ulaw_decode(codes) == reference
    assert type(ulaw_decode(codes)) is bytes
    shuffled = bytes(np.random.default_rng(7).integers(0, 256, 4000, dtype=np.uint8))
    want = ULAW_TO_PCM16[np.frombuffer(shuffled, dtype=np.uint8)].astype("<i2").tobytes()
    assert ulaw_decode(shuffled) == want


def test_decode_accepts_any_bytes_like_and_empty() -> None:
    frame = bytes(range(0, 256, 3))
    want = ulaw_decode(frame)
    assert ulaw_decode(bytearray(frame)) == want
    assert ulaw_decode(memoryview(frame)) == want
    assert ulaw_decode(b"") == b""


def test_round_trip_within_quantisation_error() -> None:
    x = np.arange(-32635, 32636, 7)
    y = _samples(ulaw_decode(ulaw_encode(_pcm(x))))
    err = np.abs(y - x)
    # G.711 step doubles per segment: error at most half a step (step = 2**(seg+3))
    seg = np.clip(np.floor(np.log2(np.maximum(np.abs(x) + 0x84, 1))) - 7, 0, 7)
    assert np.all(err <= 2 ** (seg + 3) / 2 + 1)
    assert err.max() <= 512


def test_encode_rejects_odd_bytes() -> None:
    with pytest.raises(ValueError, match="even"):
        ulaw_encode(b"\x00\x01\x02")


# ------------------------------------------------------------------ resampling


@pytest.mark.parametrize("block_ms", [20.0, 100.0])
@pytest.mark.parametrize("src,dst", [(22050, 8000), (16000, 8000), (8000, 16000)])
def test_streaming_resampler_equals_resampling_the_whole_signal(src: int, dst: int, block_ms: float) -> None:
    rng = np.random.default_rng(7)
    signal = (rng.standard_normal(src) * 3000).astype("<i2").tobytes()  # one second of noise: every seam shows
    resampler = StreamingResampler(src, dst, block_ms=block_ms)
    out, pos = [], 0
    while pos < len(signal):
        step = 2 * int(rng.integers(1, 3000))
        out.append(resampler.feed(signal[pos : pos + step], final=False))
        pos += step
    out.append(resampler.feed(b"", final=True))
    assert b"".join(out) == resample_pcm16(signal, src, dst)
    assert sum(1 for part in out if part) > 3  # it emitted as it went, not only at the end
    assert StreamingResampler(src, dst, block_ms=block_ms).feed(signal, final=True) == resample_pcm16(signal, src, dst)


def _peak_hz(pcm: bytes, rate: int) -> float:
    s = _samples(pcm).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(s * np.hanning(s.size)))
    return float(np.argmax(spectrum) * rate / s.size)


def test_resample_keeps_1khz_tone() -> None:
    src = _tone(1000, 22050)
    out = resample_pcm16(src, 22050, 8000)
    assert len(out) == 2 * 8000
    assert abs(_peak_hz(out, 8000) - 1000) < 2
    # passband gain ~1 (amplitude 10000 sine -> rms 7071)
    assert rms_pcm16(out) == pytest.approx(7071, rel=0.02)


def test_resample_attenuates_6khz_tone() -> None:
    out = resample_pcm16(_tone(6000, 22050), 22050, 8000)
    assert rms_pcm16(out) < 7071 * 0.01  # more than 40 dB down; naive decimation would alias it


def test_resample_other_ratios() -> None:
    up = resample_pcm16(_tone(1000, 8000), 8000, 16000)
    assert len(up) == 2 * 16000
    assert abs(_peak_hz(up, 16000) - 1000) < 2
    # a ratio whose phase table would be too large takes the direct path
    odd = resample_pcm16(_tone(440, 22050), 22050, 8001)
    assert abs(_peak_hz(odd, 8001) - 440) < 2
    assert resample_pcm16(b"", 22050, 8000) == b""
    same = _tone(100, 8000, 0.1)
    assert resample_pcm16(same, 8000, 8000) == same


def test_resample_bad_input() -> None:
    with pytest.raises(ValueError):
        resample_pcm16(b"\x00", 22050, 8000)
    with pytest.raises(ValueError):
        resample_pcm16(b"\x00\x00", 0, 8000)


# ------------------------------------------------------------------ framing & misc


def test_frames_split_and_pad() -> None:
    data = bytes(range(200)) + bytes(range(200))  # 400 bytes
    out = frames(data)
    assert [len(f) for f in out] == [160, 160, 160]
    assert b"".join(out)[:400] == data
    assert out[-1][80:] == MULAW_SILENCE * 80
    assert frames(b"") == []
    assert frames(b"\x01" * 320) == [b"\x01" * 160, b"\x01" * 160]
    assert frames(b"\x01" * 5, size=2) == [b"\x01\x01", b"\x01\x01", b"\x01\xff"]
    with pytest.raises(ValueError):
        frames(b"abc", size=0)


def test_rms() -> None:
    assert rms_pcm16(b"") == 0.0
    assert rms_pcm16(_pcm([3, -3, 3, -3])) == 3.0
    assert rms_pcm16(_pcm([1000] * 10)) == 1000.0


def _wav(payload: bytes, rate: int = 22050, fmt: int = 1, bits: int = 16, data_size: int | None = None,
         extra_chunk: bytes = b"") -> bytes:
    fmt_chunk = struct.pack("<4sIHHIIHH", b"fmt ", 16, fmt, 1, rate, rate * bits // 8, bits // 8, bits)
    size = len(payload) if data_size is None else data_size
    body = b"WAVE" + fmt_chunk + extra_chunk + struct.pack("<4sI", b"data", size) + payload
    return b"RIFF" + struct.pack("<I", len(body)) + body


def test_strip_wav_header() -> None:
    payload = _tone(500, 22050, 0.01)
    data, info = strip_wav_header(_wav(payload, extra_chunk=b"LIST" + struct.pack("<I", 3) + b"abc\x00"))
    assert data == payload
    assert info == {"rate": 22050, "channels": 1, "format": 1, "bits": 16}
    # μ-law WAV (Google TTS MULAW)
    data, info = strip_wav_header(_wav(b"\xff" * 10, rate=8000, fmt=7, bits=8))
    assert data == b"\xff" * 10 and info["format"] == 7 and info["rate"] == 8000


def test_strip_wav_header_streamed_placeholder_size() -> None:
    payload = b"\x01\x02" * 50
    data, info = strip_wav_header(_wav(payload, data_size=0x7FFFFFFF))
    assert data == payload
    assert info["rate"] == 22050


def test_strip_wav_header_passthrough_and_errors() -> None:
    raw = b"\xff" * 100
    assert strip_wav_header(raw) == (raw, {})
    with pytest.raises(ValueError, match="data"):
        strip_wav_header(b"RIFF" + struct.pack("<I", 4) + b"WAVE")
