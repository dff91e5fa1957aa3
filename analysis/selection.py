"""Circuit selection from edge scores (the rest of :mod:`analysis.circuit`).

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
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Mapping

import torch

from analysis.circuit_type import Circuit, Level, infer_level, level_edges, level_index, prune_circuit
from analysis.errors import UserError
from analysis.graph import GraphSpec
from analysis.layout import split_edge_name


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
        k = torch.tensor(self.scores, dtype=torch.float64)
        return k.abs() if self.absolute else k

    @property
    def n_graph_edges(self) -> int:
        return len(level_edges(self.spec, self.level))

    def ranked(self) -> list[int]:
        """Indices by descending key; ties keep the graph's edge order (a stable sort)."""
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
            kv = g.get("n_kv_heads")  # grouped-query attention: the k/v edges exist once per kv-head
            spec = GraphSpec(int(g["n_layers"]), int(g["n_heads"]), bool(g["parallel_attn_mlp"]),
                             None if kv is None else int(kv))
        scores = scores["scores"]
    if spec is None:
        raise UserError("the graph shape (n_layers, n_heads, parallel_attn_mlp) of the scores is unknown")
    if not scores:
        raise UserError("no edge scores to select from")
    level = infer_level(scores)
    index = level_index(spec, level)
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
    index = level_index(t.spec, t.level)  # graph order = t.names order when every edge is scored
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
