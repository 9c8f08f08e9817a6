"""A Piper (VITS) voice cut into three stages, so its audio can start before it is whole.

A Piper voice is one ONNX graph: phoneme ids -> text encoder and duration predictor
(``prior``: the frame-level prior ``z_p`` and its mask) -> normalizing flow (``flow``:
``z_p`` -> latent ``z``) -> HiFi-GAN generator (``vocoder``: ``z`` -> audio, 256
samples per frame). Run whole, nothing can be heard until the last sample of the
piece is computed, and the vocoder is about two thirds of the work.

The flow and the vocoder are convolutions along time: an output frame depends only on
input frames near it. So after the prior has run once over the whole piece, the flow
and the vocoder are run over consecutive windows of frames, each with
``FLOW_CONTEXT`` / ``VOCODER_CONTEXT`` frames of real input on both sides, keeping
only the window's own output. The result equals the whole-graph run (the contexts
were measured on the default voice: beyond 24 and 12 frames the difference is below
one 16-bit step; tests check it), and the first 16 frames (186 ms) of audio cost
about a fifth of a short piece's synthesis. The prior's random noise is drawn once
per piece, so windows agree with each other.

The cut is found by the graph's node names, which Piper's exporter takes from the
model's modules (``/flow/...``, ``/dec/...``): the vocoder's input is the first input
of the first ``/dec/`` node, and the flow's inputs are what ``/flow/`` nodes and the
vocoder's input read from outside the flow. ``split`` returns ``None`` for a graph
of another shape, and the caller runs the voice whole. The stages are cut with
``onnx.utils.Extractor`` (public API) in memory at load (a third of a second); the
file on disk is not changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FLOW_AHEAD", "FLOW_CONTEXT", "VOCODER_CONTEXT", "VitsStages", "FrameStream"]

FLOW_CONTEXT = 24  # frames of z_p each side of a flow window (4 couplings of k=5 WaveNets: ≤ 32 in theory)
VOCODER_CONTEXT = 12  # frames of z each side of a vocoder window (HiFi-GAN; measured exact at 12)
FLOW_AHEAD = 64  # after the first window the flow runs this many frames ahead of the vocoder (fewer flow runs)


@dataclass(frozen=True)
class VitsStages:
    """Three ``onnxruntime.InferenceSession``s and the tensor names between them."""

    prior: Any
    flow: Any
    vocoder: Any
    prior_inputs: frozenset[str]
    flow_inputs: tuple[str, ...]  # (z_p, mask): frames on axis 2
    vocoder_input: str

    @classmethod
    def split(cls, model_path: str | Path, make_session: Any) -> "VitsStages | None":
        """Cut the voice at ``model_path``; ``make_session(model_bytes)`` builds a session.
        ``None`` when the graph does not have the expected stages (or ``onnx`` is missing)."""
        try:
            import onnx
            import onnx.utils
        except ImportError:  # pragma: no cover - a declared dependency
            return None
        model = onnx.load(str(model_path))
        graph = model.graph
        nodes = list(graph.node)
        dec = next((i for i, n in enumerate(nodes) if n.name.startswith("/dec/")), None)
        flow_ids = [i for i, n in enumerate(nodes) if n.name.startswith("/flow/")]
        if dec is None or not flow_ids or len(graph.output) != 1:
            return None
        vocoder_input = nodes[dec].input[0]
        produced_by = {out: i for i, n in enumerate(nodes) for out in n.output}
        start, end = flow_ids[0], produced_by.get(vocoder_input)
        if end is None or not start <= end < dec:
            return None
        # What the flow (every node from the first /flow/ one to the vocoder's input) reads
        # from before it, other than constants and weights: z_p and the frame mask.
        constants = {i.name for i in graph.initializer}
        constants.update(out for n in nodes if n.op_type == "Constant" for out in n.output)
        flow_inputs: list[str] = []
        for n in nodes[start : end + 1]:
            for name in n.input:
                origin = produced_by.get(name)
                if name and name not in constants and origin is not None and origin < start and name not in flow_inputs:
                    flow_inputs.append(name)
        if len(flow_inputs) != 2:
            return None
        inputs = [i.name for i in graph.input]
        try:
            extractor = onnx.utils.Extractor(model)
            prior = extractor.extract_model(inputs, flow_inputs)
            flow = extractor.extract_model(flow_inputs, [vocoder_input])
            vocoder = extractor.extract_model([vocoder_input], [graph.output[0].name])
        except Exception:  # onnx raises plain Exceptions for graphs it cannot cut
            return None
        del model, graph, nodes, extractor
        sessions = [make_session(m.SerializeToString()) for m in (prior, flow, vocoder)]
        z_p, mask = cls._order(sessions[1])
        if z_p is None:
            return None
        return cls(sessions[0], sessions[1], sessions[2], frozenset(inputs), (z_p, mask), vocoder_input)

    @staticmethod
    def _order(flow_session: Any) -> tuple[str | None, str | None]:
        """(z_p, mask) among the flow's two inputs: the mask is the one with one channel."""
        shapes = {i.name: list(i.shape or []) for i in flow_session.get_inputs()}
        masks = [n for n, s in shapes.items() if len(s) == 3 and s[1] == 1]
        if len(shapes) != 2 or len(masks) != 1:
            return None, None
        return next(n for n in shapes if n != masks[0]), masks[0]


class FrameStream:
    """One piece's latent frames, turned into audio window by window (see the module
    docstring). Not thread-safe: one per synthesis.

    ``prior_out`` is the prior's ``(z_p, mask)``; ``next_audio(frames)`` returns float
    audio for the next ``frames`` frames (fewer at the end) and computes only what
    that needs.
    """

    def __init__(self, stages: VitsStages, prior_out: list[np.ndarray], *, flow_ahead: int = FLOW_AHEAD) -> None:
        self._stages = stages
        self._ahead = max(0, flow_ahead)
        self._zp, self._mask = prior_out
        self.frames = int(self._zp.shape[2])
        self._z = np.empty(self._zp.shape, dtype=np.float32)
        self._have = 0  # frames of z computed
        self._done = 0  # frames of audio returned

    @property
    def finished(self) -> bool:
        return self._done >= self.frames

    def next_audio(self, frames: int) -> np.ndarray:
        s = self._done
        e = min(self.frames, s + max(1, frames))
        need = min(self.frames, e + VOCODER_CONTEXT)
        if self._have < need:
            self._extend_z(need)
        lo = max(0, s - VOCODER_CONTEXT)
        window = np.ascontiguousarray(self._z[:, :, lo:need])
        audio = np.asarray(self._stages.vocoder.run(None, {self._stages.vocoder_input: window})[0]).reshape(-1)
        hop = audio.size // (need - lo)
        self._done = e
        return audio[(s - lo) * hop : (e - lo) * hop]

    def _extend_z(self, need: int) -> None:
        # The first window asks for no more than it needs (first audio); later ones run
        # ahead, so the flow's context is paid for less often.
        have = self._have
        if have:
            need = min(self.frames, need + self._ahead)
        lo, hi = max(0, have - FLOW_CONTEXT), min(self.frames, need + FLOW_CONTEXT)
        z_name, mask_name = self._stages.flow_inputs
        feeds = {
            z_name: np.ascontiguousarray(self._zp[:, :, lo:hi]),
            mask_name: np.ascontiguousarray(self._mask[:, :, lo:hi]),
        }
        z = np.asarray(self._stages.flow.run(None, feeds)[0])
        self._z[:, :, have:need] = z[:, :, have - lo : need - lo]
        self._have = need
