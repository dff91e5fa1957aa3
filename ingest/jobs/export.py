"""Exporting one stored circuit (`RUN:STEP`) as GraphML, GEXF (via networkx) or EAP-IG graph JSON.

The checkpoint is read through `queries.api.Store.checkpoint_edges`: every scored edge in rank order
with its in-circuit flag. By default only the circuit's edges are exported (as the paper's files);
`all_edges` exports every scored edge with its flag (as hannamw `Graph.to_json`).

Levels: a checkpoint exports at its stored level, or at head level (`level="head"`) from a q/k/v-level
checkpoint. At head level an in-circuit head edge's score is the sum of its in-circuit q/k/v scores
(the paper's collapse, as the query library computes it); an edge outside the circuit sums all its
channels.

eap-pt is hannamw's `Graph.to_pt` file (MIB's submission format; `analysis.eap_pt`): every q/k/v-level
edge's score as float32 (the store keeps float64) with the in-graph flags, so only a checkpoint stored
at q/k/v level with every edge scored can be written; its cfg carries d_model when the run's model
config is on this machine (or given), else none.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
from transformers import AutoConfig

from analysis.circuit_type import Circuit
from analysis.eap_pt import to_eap_pt
from analysis.errors import UserError
from analysis.gguf import cached_folder, gguf_config
from analysis.graph import GraphSpec
from analysis.models import resolve_model_source
from queries.api import CheckpointEdges, Store
from queries.components import Architecture

FORMATS = ("graphml", "gexf", "eap-json", "eap-pt")


@dataclass(frozen=True)
class ExportEdges:
    arch: Architecture
    circuit: str  # RUN:STEP
    level: str
    full: bool  # every scored edge (else the circuit's edges only)
    names: list[str]
    scores: list[float]
    ranks: list[int]  # 1-based rank by |score| among every scored edge at this level
    in_circuit: list[bool]


def _split(name: str) -> tuple[str, str, str | None]:
    base, _, qkv = name.partition("<")
    src, dst = base.split("->")
    return src, dst, (qkv.rstrip(">") or None)


def export_edges(edges: CheckpointEdges, level: str | None = None, all_edges: bool = False) -> ExportEdges:
    stored = edges.level
    level = level or stored
    if level not in ("qkv", "head"):
        raise UserError(f"unknown level {level!r}; use qkv or head")
    if stored == "head" and level == "qkv":
        raise UserError(f"{edges.ref.name} is stored at head level (collapsed); use --level head")
    names, scores, flags = list(edges.names), list(edges.scores), list(edges.in_circuit)
    if level != stored:  # q/k/v -> head
        total: dict[str, float] = {}
        kept: dict[str, float] = {}
        for n, s, f in zip(names, scores, flags):
            h = n.split("<")[0]
            total[h] = total.get(h, 0.0) + s
            if f:
                kept[h] = kept.get(h, 0.0) + s
        names = list(total)
        scores = [kept.get(h, total[h]) for h in names]
        flags = [h in kept for h in names]
        order = sorted(range(len(names)), key=lambda i: (-abs(scores[i]), edges.ref.arch.key_of[names[i]]))
        names, scores, flags = [names[i] for i in order], [scores[i] for i in order], [flags[i] for i in order]
    ranks = list(range(1, len(names) + 1))
    if not all_edges:
        keep = [i for i, f in enumerate(flags) if f]
        names, scores, ranks, flags = ([x[i] for i in keep] for x in (names, scores, ranks, flags))
    if not names:
        raise UserError(f"{edges.ref.name} has no edge in its circuit; use --all-edges")
    return ExportEdges(arch=edges.ref.arch, circuit=edges.ref.name, level=level, full=all_edges,
                       names=names, scores=scores, ranks=ranks, in_circuit=flags)


def _nodes_in_circuit(e: ExportEdges) -> set[str]:
    out = set()
    for n, f in zip(e.names, e.in_circuit):
        if f:
            src, dst, _ = _split(n)
            out.update((src, dst))
    return out


def to_networkx(e: ExportEdges):
    """A `networkx.DiGraph` (head level) or `MultiDiGraph` keyed by channel (q/k/v level: up to three
    edges per head pair). Every component of the graph is a node: attributes name, kind, layer, head
    (-1 off heads), in_circuit; edges: score, rank, channel ('q'/'k'/'v' or 'none'), in_circuit."""
    g = nx.MultiDiGraph() if e.level == "qkv" else nx.DiGraph()
    g.graph.update({"circuit": e.circuit, "level": e.level, "arch": e.arch.key, "full": e.full})
    touched = _nodes_in_circuit(e)
    for c in e.arch.components:
        g.add_node(c["name"], name=c["name"], kind=c["kind"], layer=c["layer"],
                   head=-1 if c["head"] is None else c["head"], in_circuit=c["name"] in touched)
    for n, s, r, f in zip(e.names, e.scores, e.ranks, e.in_circuit):
        src, dst, qkv = _split(n)
        attrs = {"score": float(s), "rank": int(r), "channel": qkv or "none", "in_circuit": bool(f)}
        if e.level == "qkv":
            g.add_edge(src, dst, key=qkv or "none", **attrs)
        else:
            g.add_edge(src, dst, **attrs)
    return g


def to_eap_json(e: ExportEdges) -> dict:
    """The hannamw/EAP-IG `Graph.to_json` layout, which `circuitshift import eap-json` reads back."""
    cfg = {"n_layers": e.arch.n_layers, "n_heads": e.arch.n_heads,
           "parallel_attn_mlp": e.arch.parallel_attn_mlp}
    if e.arch.n_kv_heads is not None:
        cfg["n_kv_heads"] = e.arch.n_kv_heads
    touched = _nodes_in_circuit(e)
    nodes = {c["name"]: c["name"] in touched for c in e.arch.components}
    order = sorted(range(len(e.names)), key=lambda i: e.arch.key_of[e.names[i]])  # graph order
    edges = {e.names[i]: {"score": float(e.scores[i]), "in_graph": bool(e.in_circuit[i])} for i in order}
    return {"cfg": cfg, "nodes": nodes, "edges": edges,
            "circuitshift": {"exported_from": e.circuit, "level": e.level, "full": e.full}}


def to_circuit(e: ExportEdges) -> Circuit:
    """The exported edges as an analysis circuit (every exported score kept; nodes as the store's)."""
    a = e.arch
    order = sorted(range(len(e.names)), key=lambda i: a.key_of[e.names[i]])  # graph order
    return Circuit(GraphSpec(a.n_layers, a.n_heads, a.parallel_attn_mlp, a.n_kv_heads), e.level,
                   {e.names[i]: e.scores[i] for i in order if e.in_circuit[i]}, frozenset(_nodes_in_circuit(e)),
                   {e.names[i]: e.scores[i] for i in order}, {"exported_from": e.circuit})


def pt_edges(edges: CheckpointEdges, level: str | None) -> ExportEdges:
    """A checkpoint's edges for an eap-pt file: every q/k/v-level edge scored, or one clear error."""
    name = edges.ref.name
    if level == "head":
        raise UserError("an eap-pt file holds q/k/v-level edges; drop --level head")
    if edges.level != "qkv":
        raise UserError(f"{name} is stored at head level (a union or a collapsed import); an eap-pt file "
                        "needs every q/k/v-level edge's score: export it as eap-json, graphml or gexf")
    e = export_edges(edges, "qkv", all_edges=True)
    want = e.arch.n_edges("qkv")
    if len(e.names) != want:
        raise UserError(f"{name} has {len(e.names)} of the graph's {want} q/k/v-level edge scores; an eap-pt "
                        "file needs every one: export it as eap-json")
    return e


def run_d_model(store: Store, run: str) -> int | None:
    """The hidden size of the run's model when its config is on this machine (a model folder, a GGUF,
    a hub model in the local cache); None otherwise (e.g. an imported run names no model)."""
    model = (store.run_source(run) or {}).get("model") or ""
    if not model:
        return None
    try:
        source = resolve_model_source(model, install=False)
        cached = cached_folder(source.gguf_path) if source.gguf_file else None
        if source.gguf_file and cached is None:
            config = gguf_config(source.gguf_path)
        else:
            config = AutoConfig.from_pretrained(str(cached or source.path), local_files_only=True)
    except Exception:  # noqa: BLE001 - missing or unreadable here (d_model is optional): the file goes without it
        return None
    width = getattr(config, "hidden_size", None)
    return width if isinstance(width, int) else None


def export_circuit(store: Store, ref: str, fmt: str, out: Path | str, level: str | None = None,
                   all_edges: bool = False, d_model: int | None = None) -> dict:
    """Write circuit `ref` to `out` in `fmt`; returns a one-line summary's fields. ``d_model`` (eap-pt
    only; default: the run's model's, when known) goes into the file's cfg."""
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    edges = store.checkpoint_edges(ref)
    e = pt_edges(edges, level) if fmt == "eap-pt" else export_edges(edges, level, all_edges)
    out = Path(out)
    if out.is_dir():
        raise UserError(f"--out {out} is a directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "eap-pt":
        to_eap_pt(to_circuit(e), out, d_model if d_model is not None else run_d_model(store, edges.ref.run))
    elif fmt == "eap-json":
        out.write_text(json.dumps(to_eap_json(e)))
    else:
        g = to_networkx(e)
        g.graph["full"] = str(e.full).lower()  # GraphML/GEXF graph attributes: plain strings
        (nx.write_graphml if fmt == "graphml" else nx.write_gexf)(g, out)
    return {"circuit": e.circuit, "format": fmt, "level": e.level, "edges": len(e.names),
            "in_circuit": sum(e.in_circuit), "out": str(out)}
