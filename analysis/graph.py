"""The edge graph of a transformer, named as hannamw/EAP-IG names it.

Every shape rule (node names and numbering, the dense layout, edge names and counts, grouped-query
k/v edges, store keys) is :class:`analysis.layout.Layout`'s, described there; :class:`GraphSpec` is that
layout read from a model's config and :class:`Graph` adds torch: the dense ``(n_src, n_dst)`` score
tensor's ``mask`` of real edges and the dense <-> dict conversions.

With grouped-query attention a head-level edge ``u->a{l}.h{h}`` expanded to q/k/v
(:func:`kv_representative`) stands for ``u->a{l}.h{h}<q>`` and the group's shared
``u->a{l}.h{g*r}<k|v>``. Pruning (:func:`analysis.circuit.prune_circuit`) treats a group's k/v edges as
parents of every head of the group and drops them only when their source or every head of the group is
dead, so pruning never changes a patching evaluation, with or without grouped-query attention.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Mapping

import torch

from analysis.errors import UserError
from analysis.layout import QKV, Edge, Layout, Node, NodeKind, parse_edge_name
from analysis.architectures import TL_ONLY_ARCHITECTURES, graph_shape
from analysis.layout import format_edge as edge_name

__all__ = ["QKV", "TL_ONLY_ARCHITECTURES", "Edge", "Graph", "GraphSpec", "Node", "NodeKind", "build_graph",
           "edge_name", "expected_edge_count", "kv_representative", "n_upstream_for_layer", "parse_edge_name"]


@dataclass(frozen=True)
class GraphSpec(Layout):
    """The shape of a model's graph (:class:`analysis.layout.Layout`: every numbering and rule), read
    from a model's config."""

    @classmethod
    def from_hf_config(cls, config) -> "GraphSpec":
        """From a transformers config (GPT-NeoX, GPT-2, GPT-Neo, OPT, Llama; Qwen2 and Gemma, whose graph is
        Llama's, for the TransformerLens backend)."""
        # one home for what each architecture is: analysis/architectures.py
        return cls(*graph_shape(config))


def kv_representative(spec: Layout, name: str) -> str:
    """:meth:`Layout.kv_representative` (``u->a1.h3<k>`` -> the group's shared ``u->a1.h2<k>``)."""
    return spec.kv_representative(name)


def expected_edge_count(spec: Layout) -> int:
    """E = (H+2G+1)[L + (H+1)L(L-1)/2] + 1 + L(H+1) (+ L*H when sequential)."""
    return spec.n_edges("qkv")


def n_upstream_for_layer(spec: Layout, layer: int, mlp: bool = False) -> int:
    """Number of leading sources feeding the heads (or, with ``mlp=True``, the MLP) of ``layer``;
    ``layer == n_layers`` gives the logits count."""
    return spec.n_upstream(layer, mlp)


@dataclass(frozen=True)
class Graph:
    """All nodes and edges of one :class:`GraphSpec`, with the dense score layout.

    Attributes: ``spec``, ``nodes`` (dict name -> Node, in forward order), ``edges`` (list of Edge,
    deterministic order: by destination layer, then source, then destination as in hannamw/EAP-IG),
    ``edge_index`` (name -> position in ``edges``), ``sources`` / ``destinations`` (row / column names
    of the dense tensor; a destination is ``'a3.h1<q>'``, ``'m0'`` or ``'logits'``), ``mask`` (bool
    ``(n_src, n_dst)``: real edges), ``src_index`` / ``dst_index`` (name -> row / column).
    """

    spec: GraphSpec
    nodes: dict[str, Node]
    edges: list[Edge]
    sources: list[str]
    destinations: list[str]
    mask: torch.Tensor = field(repr=False)

    @property
    def n_src(self) -> int:
        return len(self.sources)

    @property
    def n_dst(self) -> int:
        return len(self.destinations)

    @cached_property
    def edge_index(self) -> dict[str, int]:
        return {e.name: i for i, e in enumerate(self.edges)}

    @cached_property
    def src_index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.sources)}

    @cached_property
    def dst_index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.destinations)}

    @cached_property
    def _edge_rows_cols(self) -> tuple[torch.Tensor, torch.Tensor]:
        rows, cols = self.spec.edge_rows_cols
        return torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)

    def edge_position(self, name: str) -> tuple[int, int]:
        """(row, column) of an edge in the dense tensor."""
        src, dst, qkv = parse_edge_name(name)
        if name not in self.edge_index:
            raise UserError(f"edge {name!r} is not in this graph")
        return self.spec.position(Edge(src, dst, qkv, name))

    def edge_scores(self, dense: torch.Tensor) -> torch.Tensor:
        """The scores of ``edges`` (in order) as a 1-D tensor, from a dense (n_src, n_dst) tensor."""
        if tuple(dense.shape) != (self.n_src, self.n_dst):
            raise ValueError(f"dense scores have shape {tuple(dense.shape)}, expected ({self.n_src}, {self.n_dst})")
        rows, cols = self._edge_rows_cols
        return dense.detach().cpu()[rows, cols]

    def scores_to_dict(self, dense: torch.Tensor) -> dict[str, float]:
        """Every edge name -> its score (float), in ``edges`` order."""
        vals = self.edge_scores(dense).double().tolist()
        return {e.name: v for e, v in zip(self.edges, vals)}

    def dict_to_scores(self, scores: Mapping[str, float], dtype=torch.float32) -> torch.Tensor:
        """The inverse of :meth:`scores_to_dict`: a dense tensor, zero outside the real edges.

        Every edge of the graph must be present; unknown names raise a UserError.
        """
        missing = len(self.edges) - sum(1 for e in self.edges if e.name in scores)
        if missing:
            raise UserError(f"{missing} edge(s) of the graph have no score")
        extra = [k for k in scores if k not in self.edge_index]
        if extra:
            raise UserError(f"{len(extra)} unknown edge name(s), e.g. {extra[0]!r}")
        rows, cols = self._edge_rows_cols
        dense = torch.zeros(self.n_src, self.n_dst, dtype=dtype)
        dense[rows, cols] = torch.tensor([float(scores[e.name]) for e in self.edges], dtype=dtype)
        return dense

    def n_upstream(self, dst: str) -> int:
        """How many leading ``sources`` feed destination ``dst`` (sources are ordered by layer)."""
        return int(self.mask[:, self.dst_index[dst]].sum())


def build_graph(spec: GraphSpec) -> Graph:
    """The graph of ``spec``: its nodes, edges and dense layout from the layout, plus the mask."""
    nodes = {n.name: n for n in spec.nodes}
    mask = torch.zeros(spec.n_src, spec.n_dst, dtype=torch.bool)
    rows, cols = spec.edge_rows_cols
    mask[list(rows), list(cols)] = True
    return Graph(spec, nodes, list(spec.edges), list(spec.sources), list(spec.destinations), mask)
