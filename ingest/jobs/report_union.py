"""The union circuit of the report (method.md 5, 8 item 15): built from two stored circuits (or an
already stored union), exported beside the page as EAP-IG graph JSON (what `import eap-json` reads), and,
given the model and data it is evaluated on, its faithfulness when it keeps the top x% of the graph's
edges (the rebuttal's %-edges table, `analysis.evaluate.CURVE_FRACS`)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from analysis.circuit import level_edges
from analysis.datasets import load_split
from analysis.errors import UserError
from analysis.evaluate import CURVE_FRACS, faithfulness_curve
from analysis.models import load_model
from ingest.jobs import paper_numbers as P
from ingest.jobs.export import export_circuit
from queries.api import CircuitDefinition, Store, parse_ref, store_union

UNION_FILE = "union_circuit.json"


@dataclasses.dataclass(frozen=True)
class UnionSource:
    """`--union A:STEP,B:STEP` (build and store it as `stored_as`) or `--union REF` (stored already)."""

    parts: tuple[str, ...]
    stored_as: str

    @classmethod
    def parse(cls, text: str, stored_as: str | None = None) -> "UnionSource":
        parts = tuple(p.strip() for p in text.split(",") if p.strip())
        for p in parts:
            parse_ref(p)
        if len(parts) == 1:
            return cls(parts, parts[0])
        if len(parts) != 2:
            raise UserError(f"--union takes A:STEP,B:STEP (two circuits) or one stored union, got {text!r}")
        default = "union-" + "-".join(p.replace(":", "@") for p in parts) + ":0"
        parse_ref(stored_as or default)
        return cls(parts, stored_as or default)


def union_circuit(driver, database, src: UnionSource, definition: CircuitDefinition,
                  max_edges: int | None) -> dict:
    """Make sure the union is stored (a rerun reuses the stored one); returns store_union's fields."""
    store = Store(driver, database)
    run, step = parse_ref(src.stored_as)
    info = store.run_info(run)
    if len(src.parts) == 1 or (info and step in info["steps"]):
        edges = store.checkpoint_edges(src.stored_as)
        return {"stored_as": src.stored_as, "a": None, "b": None, "edges": sum(edges.in_circuit)}
    head = dataclasses.replace(definition, level="head")  # unions are built at head level
    return store_union(driver, database, src.parts[0], src.parts[1], src.stored_as, head, max_edges)


def union_curve(path: Path, model: str, data: str, device: str = "cpu", batch_size: int = 16) -> list[dict]:
    """Faithfulness (percent) of the union's top-x% circuits, on the model's circuit split, with the
    paper's value beside each."""
    adapter = load_model(model, device=device)
    pairs = load_split(Path(data), "circuit")
    doc = json.loads(Path(path).read_text())
    scores = {name: float(e["score"]) for name, e in doc["edges"].items() if e.get("in_graph", True)}
    # a small graph's top 1% can be no edge at all: such a point is reported, not evaluated
    n_graph = len(level_edges(adapter.spec, "head"))
    fracs = [f for f in CURVE_FRACS if int(f * n_graph) >= 1]
    points = {p.frac: p for p in faithfulness_curve(adapter, scores, pairs, fracs, adapter.spec, "kl", batch_size)}
    rows = []
    for f in CURVE_FRACS:
        p = points.get(f)
        rows.append({"top %": round(100 * f, 2), "edges (q/k/v, pruned)": p.n_edges if p else 0,
                     "faithfulness %": round(p.faithfulness, 2) if p else None,
                     "circuit accuracy %": round(p.circuit_accuracy, 2) if p else None,
                     "faithfulness % (paper)": P.UNION_CURVE.get(f)})
    return rows


def union_report(driver, database, src: UnionSource, out: Path, definition: CircuitDefinition,
                 max_edges: int | None = None, model: str | None = None, data: str | None = None,
                 device: str = "cpu", batch_size: int = 16) -> dict:
    """Store (if needed) and export the union beside the page; its curve when model and data are given."""
    stored = union_circuit(driver, database, src, definition, max_edges)
    exported = export_circuit(Store(driver, database), src.stored_as, "eap-json", Path(out) / UNION_FILE,
                              level="head")
    curve = union_curve(Path(exported["out"]), model, data, device, batch_size) if model and data else None
    return {"union": src.stored_as, "of": list(src.parts), "edges": stored["edges"], "file": UNION_FILE,
            "curve": curve}
