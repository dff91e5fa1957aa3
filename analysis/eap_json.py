"""EAP-IG graph JSON, the one reader and writer: hannamw/EAP-IG ``Graph.to_json`` files (every edge,
with ``in_graph`` flags and q/k/v edges) and the paper's collapsed files (in-graph head-level edges only).

:func:`read_graph` validates a whole file before anything uses it (a malformed file gets one error
naming the file and the problem); :func:`from_eap_json` makes a :class:`~analysis.circuit.Circuit` of it
and ``ingest/eap_json.py`` a checkpoint for the store.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from analysis.circuit_type import Circuit, Level, level_edges, level_index
from analysis.errors import UserError, read_json_file
from analysis.graph import GraphSpec
from analysis.layout import split_edge_name


@dataclass(frozen=True)
class EapGraph:
    """One validated EAP-IG graph file, its edges in file order."""

    path: Path
    spec: GraphSpec
    level: Level
    full: bool  # every edge of the graph present (else in-graph edges only)
    names: tuple[str, ...]
    scores: tuple[float, ...]
    in_graph: tuple[bool, ...]
    nodes_in_graph: tuple[str, ...]
    meta: Mapping[str, object] = field(default_factory=dict)  # the file's "circuitshift" section


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _shape(spec: GraphSpec) -> str:
    return f"{spec.n_layers} layers x {spec.n_heads} heads ({'parallel' if spec.parallel_attn_mlp else 'sequential'})"


def _spec(cfg: dict, fail, hint: str) -> GraphSpec:
    for key in ("n_layers", "n_heads"):
        if not _is_count(cfg.get(key)):
            fail(f"cfg.{key} missing or not a positive integer{hint}")
    if not isinstance(cfg.get("parallel_attn_mlp"), bool):
        fail(f"cfg.parallel_attn_mlp missing or not true/false{hint}")
    kv = cfg.get("n_kv_heads")
    if kv is not None and not _is_count(kv):
        fail("cfg.n_kv_heads must be a positive integer")
    try:
        return GraphSpec(cfg["n_layers"], cfg["n_heads"], cfg["parallel_attn_mlp"], kv)
    except UserError as exc:
        fail(str(exc))


def read_graph(path: Path | str, model_config: dict | None = None, what: str = "file",
               hint: str = "") -> EapGraph:
    """Parse and validate one EAP-IG graph JSON file. ``model_config`` overrides / supplies its cfg;
    ``what`` names the file in a not-found error, ``hint`` ends a missing-shape error (where to give it)."""
    path = Path(path)

    def fail(problem: str):
        raise UserError(f"{path}: {problem}")

    doc = read_json_file(path, what)
    if not isinstance(doc, dict):
        fail("expected a JSON object with 'cfg', 'nodes' and 'edges'")
    cfg = doc.get("cfg") or {}
    if not isinstance(cfg, dict):
        fail("'cfg' must be a JSON object")
    spec = _spec({**cfg, **(model_config or {})}, fail, hint)
    nodes, edges = doc.get("nodes"), doc.get("edges")
    if not isinstance(nodes, dict) or not isinstance(edges, dict):
        fail("'nodes' and 'edges' must be JSON objects")
    if not edges:
        fail("no edges")
    for name, flag in nodes.items():
        if name not in spec.ci:
            fail(f"node {name!r} is not in a {spec.key} graph")
        if not isinstance(flag, bool):
            fail(f"node {name!r}: in_graph must be true/false")
    names, scores, flags = [], [], []
    has_qkv = None
    for name, entry in edges.items():
        if not isinstance(entry, dict) or "score" not in entry:
            fail(f"edge {name!r}: expected {{\"score\": number, \"in_graph\": bool}}")
        score, flag = entry["score"], entry.get("in_graph", True)
        if not isinstance(score, (int, float)) or isinstance(score, bool) or not math.isfinite(score):
            fail(f"edge {name!r}: score {score!r} is not a finite number")
        if not isinstance(flag, bool):
            fail(f"edge {name!r}: in_graph must be true/false")
        try:
            _, dst, qkv = split_edge_name(name)
        except UserError as exc:
            fail(str(exc))
        try:
            spec.edge_key(name)
        except UserError as exc:
            reason = str(exc).removeprefix(f"edge {name!r}: ")
            fail(f"edge {name!r} is not in a {_shape(spec)} graph" + ("" if reason == str(exc) else f" ({reason})"))
        if dst.startswith("a"):
            if has_qkv is None:
                has_qkv = qkv is not None
            elif has_qkv != (qkv is not None):
                fail(f"edge {name!r}: mixes q/k/v-level and head-level edges into heads")
        names.append(name)
        scores.append(float(score))
        flags.append(flag)
    if not any(flags):
        fail("no edge is in the graph (in_graph all false)")
    level: Level = "qkv" if has_qkv in (None, True) else "head"
    return EapGraph(path, spec, level, len(names) == spec.n_edges(level), tuple(names), tuple(scores),
                    tuple(flags), tuple(n for n, f in nodes.items() if f), dict(doc.get("circuitshift") or {}))


def from_eap_json(path: Path | str, spec: GraphSpec | None = None) -> Circuit:
    """Read an EAP-IG graph JSON file (full with flags, or in-graph edges only; q/k/v or head level).

    With ``spec`` (e.g. the model's), a file of another shape is refused with one line."""
    g = read_graph(path, what="circuit file")
    fspec = g.spec
    if spec is not None and (fspec.n_layers, fspec.n_heads, fspec.parallel_attn_mlp) != \
            (spec.n_layers, spec.n_heads, spec.parallel_attn_mlp):
        raise UserError(f"{g.path}: circuit shape {_shape(fspec)} does not match the model's {_shape(spec)}")
    index = level_index(fspec, g.level)
    order = sorted(range(len(g.names)), key=lambda i: index[g.names[i]])
    edges = {g.names[i]: g.scores[i] for i in order if g.in_graph[i]}
    # The file's node flags are the node set: under grouped-query attention a k/v edge is named after
    # its group's first head, which need not be a circuit node itself (as analysis/eap_pt.py reads
    # them). Only a file that flags no node (e.g. an empty node dict) gets its edges' endpoints.
    nodes = set(g.nodes_in_graph)
    if not nodes:
        for n in edges:
            s, d, _ = split_edge_name(n)
            nodes.update((s, d))
    meta = {**g.meta, "source_file": str(g.path)}
    all_scores = {g.names[i]: g.scores[i] for i in order} if g.full else None
    return Circuit(fspec, g.level, edges, frozenset(nodes), all_scores, meta)


def to_eap_json(c: Circuit, path: Path | str | None = None, full: bool | None = None) -> dict:
    """The EAP-IG graph JSON document (and write it to ``path``).

    ``full`` (default: a q/k/v-level circuit that knows every score): every edge with its ``in_graph``
    flag, as hannamw ``Graph.to_json``; otherwise in-circuit edges only, as the paper's collapsed files.
    The node dict always lists every node of the graph with its flag.
    """
    if not c.edges:  # EAP-IG readers (and the store) refuse a graph with no edge in it
        raise UserError("an empty circuit cannot be written as an EAP-IG graph file")
    if full is None:
        full = c.level == "qkv" and c.all_scores is not None and len(c.all_scores) == len(level_edges(c.spec, "qkv"))
    if full and (c.all_scores is None or len(c.all_scores) != len(level_edges(c.spec, c.level))):
        raise UserError("a full graph file needs the score of every edge; this circuit only knows its own")
    cfg = {"n_layers": c.spec.n_layers, "n_heads": c.spec.n_heads, "parallel_attn_mlp": c.spec.parallel_attn_mlp}
    if c.spec.n_kv_heads is not None:
        cfg["n_kv_heads"] = c.spec.n_kv_heads
    nodes = {n.name: n.name in c.nodes for n in c.spec.nodes}
    if full:
        edges = {n: {"score": float(s), "in_graph": n in c.edges} for n, s in
                 sorted(c.all_scores.items(), key=lambda kv: level_index(c.spec, c.level)[kv[0]])}
    else:
        edges = {n: {"score": float(s), "in_graph": True} for n, s in c.edges.items()}
    doc = {"cfg": cfg, "nodes": nodes, "edges": edges}
    if c.meta:
        doc["circuitshift"] = dict(c.meta)  # ignored by EAP-IG readers
    if path is not None:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(doc))
    return doc
