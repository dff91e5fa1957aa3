"""The layering the README promises, enforced: analysis/ never imports neo4j, queries/ never imports
torch (so `circuitshift db ...` and the store work without it), and no import cycle between modules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("analysis", "ingest", "queries")


def modules(package: str) -> list[str]:
    return sorted(".".join(p.relative_to(ROOT).with_suffix("").parts) for p in (ROOT / package).rglob("*.py")
                  if p.name != "__init__.py")


def _imports_in_fresh_python(mods: list[str]) -> set[str]:
    code = ("import importlib, sys\n"
            f"for m in {mods!r}:\n    importlib.import_module(m)\n"
            "print(' '.join(sorted(m.split('.')[0] for m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return set(out.stdout.split())


def test_queries_never_import_torch():
    loaded = _imports_in_fresh_python(modules("queries"))
    assert "torch" not in loaded and "transformers" not in loaded


def test_analysis_never_imports_neo4j():
    loaded = _imports_in_fresh_python(modules("analysis"))
    assert "neo4j" not in loaded and "queries" not in loaded


def _module_imports(path: Path, name: str) -> set[str]:
    """Project modules imported at module level (function-local imports are how a command stays light
    and are not cycles at import time)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m.split(".")[0] in PACKAGES and m != name}


def test_no_import_cycle():
    graph = nx.DiGraph()
    known = {m for p in PACKAGES for m in modules(p)}
    for name in known:
        path = ROOT / (name.replace(".", "/") + ".py")
        graph.add_node(name)
        graph.add_edges_from((name, m) for m in _module_imports(path, name) if m in known)
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, f"import cycles: {cycles[:5]}"


@pytest.mark.parametrize("package,forbidden", [("queries", "torch"), ("analysis", "neo4j")])
def test_no_module_level_import_of_the_other_layer(package, forbidden):
    for name in modules(package):
        tree = ast.parse((ROOT / (name.replace(".", "/") + ".py")).read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] == forbidden for n in names), f"{name} imports {forbidden}"
