"""Print callengine's import graph: packages, then modules (``make imports``).

Reads the same packages and rules as ``lint-imports`` (``.importlinter``) and
builds the graph with grimp, which counts every import: module level, inside a
function ("lazy") and under ``TYPE_CHECKING``. Lazy imports are marked, so an
import moved into a function to hide a cycle shows here as well as in the check.

    python scripts/import_graph.py              # packages, then every module's imports
    python scripts/import_graph.py --packages   # only the top-level packages
    python scripts/import_graph.py --dot > g.dot  # Graphviz, modules grouped by package
"""

from __future__ import annotations

import argparse
import configparser
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def root_packages() -> list[str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / ".importlinter")
    return cfg["importlinter"]["root_packages"].split()


def build(packages: list[str]) -> tuple[dict[tuple[str, str], list[int]], set[tuple[str, str]]]:
    """Every import between the project's modules: {(importer, imported): [line, ...]},
    and the set of pairs imported only inside functions (lazy)."""
    import grimp

    sys.path.insert(0, str(ROOT))
    graph = grimp.build_graph(*packages, cache_dir=None)
    edges: dict[tuple[str, str], list[int]] = {}
    lazy: set[tuple[str, str]] = set()
    for importer in sorted(graph.modules):
        path = ROOT / Path(*importer.split("."))
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        lines = path.read_text(encoding="utf-8").splitlines()
        for imported in graph.find_modules_directly_imported_by(importer):
            details = graph.get_import_details(importer=importer, imported=imported)
            numbers = sorted(d["line_number"] for d in details)
            edges[(importer, imported)] = numbers
            if all(lines[n - 1][:1].isspace() for n in numbers):
                lazy.add((importer, imported))
    return edges, lazy


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--packages", action="store_true", help="only the imports between top-level packages")
    p.add_argument("--dot", action="store_true", help="print the module graph in Graphviz dot")
    args = p.parse_args(argv)
    edges, lazy = build(root_packages())
    top = lambda m: m.split(".")[0]  # noqa: E731
    if args.dot:
        print("digraph imports {\n  rankdir=LR; node [shape=box, fontsize=10];")
        groups: dict[str, set[str]] = defaultdict(set)
        for a, b in edges:
            groups[top(a)].add(a)
            groups[top(b)].add(b)
        for pkg, mods in sorted(groups.items()):
            print(f'  subgraph "cluster_{pkg}" {{ label="{pkg}";')
            for m in sorted(mods):
                print(f'    "{m}";')
            print("  }")
        for a, b in sorted(edges):
            print(f'  "{a}" -> "{b}"{" [style=dashed]" if (a, b) in lazy else ""};')
        print("}")
        return 0
    between = Counter((top(a), top(b)) for a, b in edges if top(a) != top(b))
    print("packages (importer -> imported: module pairs)")
    for (a, b), n in sorted(between.items()):
        print(f"  {a} -> {b}: {n}")
    if args.packages:
        return 0
    print("\nmodules (imported modules; * = only in indented imports: inside a function or under TYPE_CHECKING)")
    by_importer: dict[str, list[str]] = defaultdict(list)
    for a, b in sorted(edges):
        by_importer[a].append(b + ("*" if (a, b) in lazy else ""))
    for a in sorted(by_importer):
        print(f"  {a} -> {', '.join(by_importer[a])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
