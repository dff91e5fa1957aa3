"""Circuits from edge scores: selection, pruning, q/k/v -> head collapse, EAP-IG graph JSON.

A :class:`Circuit` is the one circuit type: a graph shape (:class:`~analysis.graph.GraphSpec`), a level
(``"qkv"``: edges into heads carry ``<q|k|v>`` as scored; ``"head"``: the paper's collapsed edges
``src->aL.hH``), the in-circuit edges with their signed scores, and the in-circuit nodes. It may carry
the scores of every edge of the graph (``all_scores``), so that a q/k/v-level circuit can be written
as a full hannamw/EAP-IG graph file (every edge, ``in_graph`` flags).

Selection (method.md 2.4) goes through one registry, :data:`SELECTORS`, whose functions all have the
signature ``(table: ScoreTable, value: float) -> list[str]`` (the chosen edge names):

    top_n       the n edges of largest |score| (hannamw ``apply_topn``)
    top_frac    top_n with n = int(frac * |edges of the graph|): the paper's 5% (11,574 for Pythia-1.4B)
    threshold   every edge with |score| >= value (hannamw ``apply_threshold``)
    percentile  every edge with |score| >= the value-th percentile of |score| (95 keeps the top 5%)
    greedy      hannamw ``apply_greedy``: grow from the logits, always taking the best-scoring edge
                into a node already in the circuit; n = value edges

Ties in |score| are broken by the graph's edge order, so selection is deterministic.
:func:`select_circuit` then prunes (method.md 2.4 step 3) to a fixed point.
"""

from __future__ import annotations

import heapq
import json
import math
import re
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Literal, Mapping

from analysis.errors import UserError, read_json_file
from analysis.graph import GraphSpec, Node, build_graph, parse_edge_name

Level = Literal["qkv", "head"]
#: edge name -> signed score (``a0.h2->a3.h1<q>`` at q/k/v level, ``a0.h2->a3.h1`` at head level)
Scores = Mapping[str, float]

_HEAD_EDGE_RE = re.compile(r"^(input|a\d+\.h\d+|m\d+)->(a\d+\.h\d+|m\d+|logits)$")


@dataclass(frozen=True)
class CircuitEdge:
    name: str
    src: str
    dst: str  # node name, without the <q|k|v> suffix
    qkv: Literal["q", "k", "v"] | None
    score: float


#: a circuit node is a graph node (``analysis.graph.Node``: name, kind, layer, head)
CircuitNode = Node


@dataclass(frozen=True)
class Circuit:
    spec: GraphSpec
    level: Level
    edges: Mapping[str, float]  # in-circuit edges -> signed score, in the graph's edge order
    nodes: frozenset[str]  # in-circuit nodes
    all_scores: Mapping[str, float] | None = field(default=None, repr=False)  # every edge (full file)
    meta: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self):  # frozen in fact, not only by name
        object.__setattr__(self, "edges", MappingProxyType(dict(self.edges)))
        object.__setattr__(self, "nodes", frozenset(self.nodes))
        if self.all_scores is not None:
            object.__setattr__(self, "all_scores", MappingProxyType(dict(self.all_scores)))
        object.__setattr__(self, "meta", MappingProxyType(dict(self.meta)))

    @property
    def n_edges(self) -> int:
        return len(self.edges)

    def edge_list(self) -> tuple[CircuitEdge, ...]:
        out = []
        for name, s in self.edges.items():
            src, dst, qkv = split_edge_name(name)
            out.append(CircuitEdge(name, src, dst, qkv, float(s)))
        return tuple(out)

    def node_list(self) -> tuple[CircuitNode, ...]:
        nodes = build_graph(self.spec).nodes
        return tuple(n for name, n in nodes.items() if name in self.nodes)

    def qkv_edge_names(self) -> frozenset[str]:
        """The in-circuit edges at q/k/v level (a head-level edge into a head stands for its three
        q/k/v edges, as method.md 5 expands union circuits for evaluation)."""
        if self.level == "qkv":
            return frozenset(self.edges)
        out = set()
        for name in self.edges:
            _, dst, _ = split_edge_name(name)
            if dst.startswith("a"):
                out.update(f"{name}<{x}>" for x in "qkv")
            else:
                out.add(name)
        return frozenset(out)


# ------------------------------------------------------------------------------------------ names
def split_edge_name(name: str) -> tuple[str, str, str | None]:
    """Like ``graph.parse_edge_name`` but also accepts head-level edges into heads (``u->a3.h1``)."""
    m = _HEAD_EDGE_RE.match(name)
    if m:
        return m.group(1), m.group(2), None
    return parse_edge_name(name)


def head_name(name: str) -> str:
    """``'a0.h2->a3.h1<q>'`` -> ``'a0.h2->a3.h1'`` (other names unchanged)."""
    return name[:-3] if name.endswith((">",)) else name


@lru_cache(maxsize=8)
def level_edges(spec: GraphSpec, level: Level) -> tuple[str, ...]:
    """Every edge name of the graph at ``level``, in the graph's order."""
    names = [e.name for e in build_graph(spec).edges]
    if level == "qkv":
        return tuple(names)
    return tuple(dict.fromkeys(head_name(n) for n in names))


@lru_cache(maxsize=8)
def _level_index(spec: GraphSpec, level: Level) -> dict[str, int]:
    return {n: i for i, n in enumerate(level_edges(spec, level))}


def infer_level(names) -> Level:
    for name in names:
        if "->a" in name:
            return "qkv" if name.endswith(">") else "head"
    return "qkv"  # no edge into a head: both levels agree


# ------------------------------------------------------------------------------------------ scores
@dataclass(frozen=True)
class ScoreTable:
    """Validated scores of one graph at one level, in the graph's edge order (unscored edges absent)."""

    spec: GraphSpec
    level: Level
    names: tuple[str, ...]
    scores: tuple[float, ...]
    absolute: bool = True

    def key(self, i: int) -> float:
        return abs(self.scores[i]) if self.absolute else self.scores[i]

    @cached_property
    def keys(self):
        """Every key (|score|, or the signed score) as a float64 tensor, in ``names`` order."""
        import torch

        k = torch.tensor(self.scores, dtype=torch.float64)
        return k.abs() if self.absolute else k

    @property
    def n_graph_edges(self) -> int:
        return len(level_edges(self.spec, self.level))

    def ranked(self) -> list[int]:
        """Indices by descending key; ties keep the graph's edge order (a stable sort)."""
        import torch

        return torch.sort(self.keys, descending=True, stable=True).indices.tolist()


def score_table(scores, spec: GraphSpec | None = None, absolute: bool = True) -> ScoreTable:
    """From a dict ``{edge: score}``, a ``ScoreResult`` (``.to_dict()``, ``.graph.spec``) or a
    ``circuitshift score`` document (``{"graph": {...}, "scores": {...}}``)."""
    if hasattr(scores, "to_dict") and hasattr(scores, "graph"):
        if spec is None or spec == scores.graph.spec:  # already in the graph's edge order: no dict, no sort
            g = scores.graph
            vals = g.edge_scores(scores.dense).double()
            if not bool(vals.isfinite().all()):
                raise UserError(f"edge {g.edges[int((~vals.isfinite()).nonzero()[0])].name!r} has a non-finite score")
            return ScoreTable(g.spec, "qkv", level_edges(g.spec, "qkv"), tuple(vals.tolist()), absolute)
        scores = scores.to_dict()
    elif isinstance(scores, Mapping) and "scores" in scores and isinstance(scores["scores"], Mapping):
        g = scores.get("graph") or {}
        if spec is None and g:
            spec = GraphSpec(int(g["n_layers"]), int(g["n_heads"]), bool(g["parallel_attn_mlp"]))
        scores = scores["scores"]
    if spec is None:
        raise UserError("the graph shape (n_layers, n_heads, parallel_attn_mlp) of the scores is unknown")
    if not scores:
        raise UserError("no edge scores to select from")
    level = infer_level(scores)
    index = _level_index(spec, level)
    unknown = [n for n in scores if n not in index]
    if unknown:
        raise UserError(f"{len(unknown)} edge name(s) are not in a {spec.n_layers}-layer x {spec.n_heads}-head "
                        f"graph, e.g. {unknown[0]!r} (wrong model shape or mixed q/k/v and head levels)")
    order = sorted(scores, key=index.__getitem__)
    vals = tuple(float(scores[n]) for n in order)
    bad = [n for n, v in zip(order, vals) if not math.isfinite(v)]
    if bad:
        raise UserError(f"edge {bad[0]!r} has a non-finite score")
    return ScoreTable(spec, level, tuple(order), vals, absolute)


# ------------------------------------------------------------------------------------------ selectors
Selector = Callable[[ScoreTable, float], list[str]]


def _count(value: float, what: str, upper: int) -> int:
    if value != int(value):
        raise UserError(f"{what} must be a whole number of edges, got {value}")
    n = int(value)
    if n <= 0:
        raise UserError(f"empty circuit requested: {what} = {n}; ask for at least one edge")
    if n > upper:
        raise UserError(f"{what} = {n} is out of range: the scores cover {upper} edges")
    return n


def select_top_n(t: ScoreTable, value: float) -> list[str]:
    n = _count(value, "top-n", len(t.names))
    return [t.names[i] for i in t.ranked()[:n]]


def select_top_frac(t: ScoreTable, value: float) -> list[str]:
    if not 0 < value <= 1:
        raise UserError(f"top fraction {value} is out of range (0, 1]; the paper uses 0.05")
    n = int(value * t.n_graph_edges)  # the paper's int(0.05 * len(g.edges))
    if n == 0:
        raise UserError(f"empty circuit requested: top fraction {value} of {t.n_graph_edges} edges is 0 edges")
    return select_top_n(t, min(n, len(t.names)))


def select_threshold(t: ScoreTable, value: float) -> list[str]:
    if value < 0 and t.absolute:
        raise UserError(f"|score| threshold must be >= 0, got {value}")
    out = [t.names[i] for i in (t.keys >= value).nonzero().flatten().tolist()]
    if not out:
        raise UserError(f"empty circuit: no edge has |score| >= {value:g} (largest is "
                        f"{float(t.keys.max()):.3g})")
    return out


def select_percentile(t: ScoreTable, value: float) -> list[str]:
    if not 0 <= value < 100:
        raise UserError(f"percentile {value} is out of range [0, 100); 95 keeps the top 5%")
    import torch

    keys = torch.sort(t.keys).values
    pos = value / 100 * (len(keys) - 1)  # linear interpolation, as numpy.percentile
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(keys) - 1)
    k_lo, k_hi = float(keys[lo]), float(keys[hi])
    cut = k_lo + (k_hi - k_lo) * (pos - lo)
    return [t.names[i] for i in (t.keys >= cut).nonzero().flatten().tolist()]


def select_greedy(t: ScoreTable, value: float) -> list[str]:
    """hannamw ``apply_greedy``: start from the edges into ``logits``; take the best candidate; when its
    parent joins the circuit, that parent's incoming edges become candidates."""
    n = _count(value, "greedy n", len(t.names))
    into: dict[str, list[int]] = {}
    for i, name in enumerate(t.names):
        into.setdefault(split_edge_name(name)[1], []).append(i)
    heap = [(-t.key(i), i) for i in into.get("logits", [])]
    heapq.heapify(heap)
    in_nodes = {"logits"}
    out: list[str] = []
    while heap and len(out) < n:
        _, i = heapq.heappop(heap)
        out.append(t.names[i])
        parent = split_edge_name(t.names[i])[0]
        if parent not in in_nodes:
            in_nodes.add(parent)
            for j in into.get(parent, []):
                heapq.heappush(heap, (-t.key(j), j))
    return out


SELECTORS: dict[str, Selector] = {
    "top_n": select_top_n,
    "top_frac": select_top_frac,
    "threshold": select_threshold,
    "percentile": select_percentile,
    "greedy": select_greedy,
}


def select_circuit(scores, spec: GraphSpec | None = None, method: str = "top_frac", value: float = 0.05,
                   prune: bool = True, absolute: bool = True) -> Circuit:
    """Scores (dict, ScoreResult or score document) -> a circuit, pruned to a fixed point by default.

    The circuit keeps every score it was selected from (``all_scores``), so a q/k/v-level circuit
    selected from a full score set can be written as a full EAP-IG graph file.
    """
    if method not in SELECTORS:
        raise UserError(f"unknown selection method {method!r}; choose one of {', '.join(SELECTORS)}")
    t = score_table(scores, spec, absolute)
    chosen = SELECTORS[method](t, value)
    index = _level_index(t.spec, t.level)  # graph order = t.names order when every edge is scored
    if len(t.names) != len(index):
        index = {n: i for i, n in enumerate(t.names)}
    edges = {t.names[i]: t.scores[i] for i in sorted(map(index.__getitem__, set(chosen)))}
    nodes: set[str] = set()
    for name in edges:
        src, dst, _ = split_edge_name(name)
        nodes.update((src, dst))
    meta = {"selection": method, "value": value, "absolute": absolute, "selected_edges": len(edges)}
    c = Circuit(t.spec, t.level, edges, frozenset(nodes), dict(zip(t.names, t.scores)), meta)
    return prune_circuit(c) if prune else c


# ------------------------------------------------------------------------------------------ pruning
def _consumers(spec: GraphSpec, name: str) -> tuple[str, set[str]]:
    """(source, the nodes that read this edge). With grouped-query attention a k/v edge is named after
    the first query head of its group but feeds the shared k/v input that every head of the group reads."""
    src, dst, qkv = split_edge_name(name)
    group = spec.n_heads // (spec.n_kv_heads or spec.n_heads)
    if qkv in ("k", "v") and group > 1:
        layer, head = dst[1:].split(".h")
        return src, {f"a{layer}.h{int(head) + i}" for i in range(group)}
    return src, {dst}


def prune_circuit(c: Circuit) -> Circuit:
    """Drop dead nodes and their edges until nothing changes (method.md 2.4 step 3; hannamw
    ``prune_dead_nodes`` with prune_childless and prune_parentless).

    A node is dead when it has no in-circuit child edge (except ``logits``) or no in-circuit parent
    edge (except ``input``); for a head any of its q/k/v edges counts as a parent, and with grouped-query
    attention a group's shared k/v edges count as parents of every head of the group (they go only
    when the source dies or every head of the group is dead). hannamw does one childless and one
    parentless sweep; we iterate with a worklist (a removal can only kill the removed edges'
    endpoints), so the result is a fixed point and pruning is idempotent. An empty result is returned
    as such: evaluating it gives 0% faithfulness.
    """
    edges = dict(c.edges)
    parsed = {n: _consumers(c.spec, n) for n in edges}
    live = {n: set(cons) for n, (_, cons) in parsed.items()}
    children: dict[str, set[str]] = {}
    parents: dict[str, set[str]] = {}
    for n, (s, cons) in parsed.items():
        children.setdefault(s, set()).add(n)
        for d in cons:
            parents.setdefault(d, set()).add(n)
    alive = {s for s, _ in parsed.values()} | {d for _, cons in parsed.values() for d in cons}
    work = sorted(alive)

    def remove(n):
        s, cons = parsed[n]
        children[s].discard(n)
        for d in cons:
            parents.get(d, set()).discard(n)
        del edges[n]
        work.extend([s, *cons])

    while work:
        node = work.pop()
        if node not in alive:
            continue
        has_parent = node == "input" or bool(parents.get(node))
        has_child = node == "logits" or bool(children.get(node))
        if has_parent and has_child:
            continue
        alive.discard(node)
        for n in list(children.get(node, ())):
            remove(n)
        for n in list(parents.get(node, ())):
            live[n].discard(node)
            parents[node].discard(n)
            if not live[n] & alive:
                remove(n)
    kept = {n: s for n, s in c.edges.items() if n in edges}
    return Circuit(c.spec, c.level, kept, frozenset(alive), c.all_scores, {**c.meta, "pruned": True})


# ------------------------------------------------------------------------------------------ collapse
def collapse(c: Circuit) -> Circuit:
    """q/k/v -> head: the in-circuit edges ``u->aL.hH<q|k|v>`` of one head become ``u->aL.hH`` with the
    SUM of their signed scores (the paper's ``collapse_qkv.py``); nodes unchanged. Only in-circuit
    edges survive, as in the paper's files."""
    if c.level == "head":
        return c
    out: dict[str, float] = {}
    for name, s in c.edges.items():
        h = head_name(name)
        out[h] = out.get(h, 0.0) + float(s)
    order = _level_index(c.spec, "head")
    out = {k: out[k] for k in sorted(out, key=order.__getitem__)}
    return Circuit(c.spec, "head", out, c.nodes, None, {**c.meta, "collapsed": True})


# ------------------------------------------------------------------------------------------ JSON
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
    nodes = {name: name in c.nodes for name in build_graph(c.spec).nodes}
    if full:
        edges = {n: {"score": float(s), "in_graph": n in c.edges} for n, s in
                 sorted(c.all_scores.items(), key=lambda kv: _level_index(c.spec, c.level)[kv[0]])}
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


def from_eap_json(path: Path | str, spec: GraphSpec | None = None) -> Circuit:
    """Read an EAP-IG graph JSON file (full with flags, or in-graph edges only; q/k/v or head level).

    With ``spec`` (e.g. the model's), a file of another shape is refused with one line."""
    p = Path(path)
    doc = read_json_file(p, "circuit file")
    if not isinstance(doc, dict) or not isinstance(doc.get("cfg"), dict) or not isinstance(doc.get("edges"), dict):
        raise UserError(f"{p}: expected an EAP-IG graph JSON object with 'cfg', 'nodes' and 'edges'")
    cfg = doc["cfg"]
    try:
        fspec = GraphSpec(int(cfg["n_layers"]), int(cfg["n_heads"]), bool(cfg["parallel_attn_mlp"]),
                          cfg.get("n_kv_heads"))
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{p}: cfg needs n_layers, n_heads and parallel_attn_mlp") from None
    if spec is not None and (fspec.n_layers, fspec.n_heads, fspec.parallel_attn_mlp) != \
            (spec.n_layers, spec.n_heads, spec.parallel_attn_mlp):
        raise UserError(f"{p}: circuit shape {_shape(fspec)} does not match the model's {_shape(spec)}")
    raw = doc["edges"]
    try:
        scores = {n: float(e["score"]) for n, e in raw.items()}
        flags = {n: bool(e.get("in_graph", True)) for n, e in raw.items()}
    except (TypeError, KeyError, ValueError):
        raise UserError(f"{p}: every edge needs {{\"score\": number, \"in_graph\": bool}}") from None
    level = infer_level(scores)
    index = _level_index(fspec, level)
    unknown = [n for n in scores if n not in index]
    if unknown:
        raise UserError(f"{p}: edge {unknown[0]!r} is not in a {_shape(fspec)} graph")
    order = sorted(scores, key=index.__getitem__)
    edges = {n: scores[n] for n in order if flags[n]}
    nodes = {n for n, f in (doc.get("nodes") or {}).items() if f}
    for n in edges:
        s, d, _ = split_edge_name(n)
        nodes.update((s, d))
    full = len(scores) == len(index)
    meta = dict(doc.get("circuitshift") or {})
    meta["source_file"] = str(p)
    return Circuit(fspec, level, edges, frozenset(nodes), {n: scores[n] for n in order} if full else None, meta)


def _shape(spec: GraphSpec) -> str:
    return f"{spec.n_layers} layers x {spec.n_heads} heads ({'parallel' if spec.parallel_attn_mlp else 'sequential'})"


def full_circuit(spec: GraphSpec, level: Level = "qkv") -> Circuit:
    """Every edge of the graph (faithfulness 100% by construction); scores 0."""
    names = level_edges(spec, level)
    return Circuit(spec, level, dict.fromkeys(names, 0.0), frozenset(build_graph(spec).nodes))


def empty_circuit(spec: GraphSpec, level: Level = "qkv") -> Circuit:
    """No edge (faithfulness 0%: every edge carries the corrupted activation)."""
    return Circuit(spec, level, {}, frozenset())
