"""The circuit type: :class:`Circuit`, its edge names and levels, pruning and the q/k/v -> head collapse
(the rest of :mod:`analysis.circuit`: selection in :mod:`analysis.selection`, EAP-IG graph JSON in
:mod:`analysis.eap_json`).

A :class:`Circuit` is a graph shape (:class:`~analysis.graph.GraphSpec`), a level (``"qkv"``: edges
into heads carry ``<q|k|v>`` as scored; ``"head"``: the paper's collapsed edges ``src->aL.hH``), the
in-circuit edges with their signed scores, and the in-circuit nodes. It may carry the scores of every
edge of the graph (``all_scores``), so that a q/k/v-level circuit can be written as a full
hannamw/EAP-IG graph file (every edge, ``in_graph`` flags).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType
from typing import Literal, Mapping

from analysis.graph import GraphSpec
from analysis.layout import Layout, Node, head_name, split_edge_name
from analysis.pruning import prune_edges

Level = Literal["qkv", "head"]
#: edge name -> signed score (``a0.h2->a3.h1<q>`` at q/k/v level, ``a0.h2->a3.h1`` at head level)
Scores = Mapping[str, float]

__all__ = ["Circuit", "CircuitEdge", "CircuitNode", "Level", "Scores", "collapse", "empty_circuit", "full_circuit",
           "head_name", "infer_level", "level_edges", "level_index", "prune_circuit", "split_edge_name"]


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
        return tuple(n for n in self.spec.nodes if n.name in self.nodes)

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
@lru_cache(maxsize=8)
def level_edges(spec: Layout, level: Level) -> tuple[str, ...]:
    """Every edge name of the graph at ``level``, in the graph's order."""
    names = [e.name for e in spec.edges]
    if level == "qkv":
        return tuple(names)
    return tuple(dict.fromkeys(head_name(n) for n in names))


@lru_cache(maxsize=8)
def level_index(spec: Layout, level: Level) -> dict[str, int]:
    """Edge name -> its position in :func:`level_edges`."""
    return {n: i for i, n in enumerate(level_edges(spec, level))}


def infer_level(names) -> Level:
    for name in names:
        if "->a" in name:
            return "qkv" if name.endswith(">") else "head"
    return "qkv"  # no edge into a head: both levels agree


# ------------------------------------------------------------------------------------------ pruning
def prune_circuit(c: Circuit) -> Circuit:
    """Drop dead nodes and their edges until nothing changes (method.md 2.4 step 3; hannamw
    ``prune_dead_nodes`` with prune_childless and prune_parentless).

    The rule is :func:`analysis.pruning.prune_edges` (stored keys are pruned with it too), on the
    edges' component numbers: for a head any of its q/k/v edges counts as a parent, and a grouped-query
    k/v edge as a parent of every head of its group (:meth:`analysis.layout.Layout.readers`). An empty
    result is returned as such: evaluating it gives 0% faithfulness.
    """
    names = list(c.edges)
    spec = c.spec
    kept, alive = prune_edges([spec.readers(spec.edge_key(n)[0]) for n in names], 0, spec.n_components - 1)
    edges = {names[i]: c.edges[names[i]] for i in kept}
    nodes = frozenset(spec.nodes[ci].name for ci in alive)
    return Circuit(c.spec, c.level, edges, nodes, c.all_scores, {**c.meta, "pruned": True})


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
    order = level_index(c.spec, "head")
    out = {k: out[k] for k in sorted(out, key=order.__getitem__)}
    return Circuit(c.spec, "head", out, c.nodes, None, {**c.meta, "collapsed": True})


def full_circuit(spec: GraphSpec, level: Level = "qkv") -> Circuit:
    """Every edge of the graph (faithfulness 100% by construction); scores 0."""
    names = level_edges(spec, level)
    return Circuit(spec, level, dict.fromkeys(names, 0.0), frozenset(n.name for n in spec.nodes))


def empty_circuit(spec: GraphSpec, level: Level = "qkv") -> Circuit:
    """No edge (faithfulness 0%: every edge carries the corrupted activation)."""
    return Circuit(spec, level, {}, frozenset())
