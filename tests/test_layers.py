"""The layers hold: ``lint-imports`` checks the contracts in ``.importlinter``.

The contracts (top-level packages in layers, engine's layers from the
application down to the kernel, the roles importing no application module, the
wire protocols importing no runtime, the simulated caller on the wire protocol
only, the product never importing its benchmarks, no cycle inside any package)
are checked on every import, lazy and ``TYPE_CHECKING`` ones included. The
graph they are checked on is printed by ``make imports``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("callengine", "engine", "actors", "transports", "whatsapp_bridge", "callsim", "bench")


def test_the_import_contracts_are_kept() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run(
        [str(lint), "--no-cache", "--config", str(ROOT / ".importlinter")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "BROKEN" not in proc.stdout


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(*PACKAGES, cache_dir=None)


@pytest.mark.parametrize(
    "importer, imported",
    [
        ("callengine.cli", "bench"),  # the product's commands never load the benchmarks
        ("callengine.cli", "callsim"),
        ("engine.runtime", "actors"),  # the runtime is handed the call tree's factory
        ("engine", "callengine"),  # the application sits on top: nothing of the product imports it
        ("engine.store.postgres", "engine.store.sqlite"),  # both import engine.store.sql
        ("transports", "callsim"),  # the simulated caller is not part of the wire
    ],
)
def test_no_import_between(graph: grimp.ImportGraph, importer: str, imported: str) -> None:
    """Checked on the graph itself, so a lazy import (inside a function) counts too."""
    chains = graph.find_shortest_chains(importer=importer, imported=imported, as_packages=True)
    assert not chains, f"{importer} imports {imported}: {sorted(chains)}"


def test_the_graph_command_prints_every_package() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "import_graph.py"), "--packages"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "callsim -> transports" in proc.stdout
    assert "engine -> bench" not in proc.stdout
