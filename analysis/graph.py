"""The edge graph of a transformer, named as hannamw/EAP-IG names it.

Nodes
    ``input`` (token embedding output), ``a{l}.h{h}`` (head h of layer l: its output contribution
    z_h @ W_O[h]), ``m{l}`` (MLP of layer l), ``logits`` (the input of the final LayerNorm).

    In the :class:`Node` dataclass the input node has ``layer=-1`` and the logits node has
    ``layer=n_layers``, so that "src.layer < dst.layer" is the edge rule. Queries that group edges by
    layer (critical layers, method.md section 11 item 7) map ``input`` to layer 0.

Edges
    Every upstream node feeds every downstream node: ``input->a3.h1<q>``, ``a0.h2->m1``, ``m0->logits``.
    Edges into a head are split into its q, k and v inputs (``<q>``/``<k>``/``<v>`` suffix).
    With parallel attention/MLP (GPT-NeoX, Pythia) the MLP of layer l gets the same upstream set as the
    heads of layer l; with sequential blocks (GPT-2, GPT-Neo) it also gets layer l's heads.

Dense layout (identical to hannamw/EAP-IG's ``Graph``)
    ``sources``:      ``input``, then per layer ``a{l}.h0 .. a{l}.h{H-1}``, ``m{l}``   (1 + L(H+1))
    ``destinations``: per layer ``a{l}.h*<q>``, ``a{l}.h*<k>``, ``a{l}.h*<v>``, ``m{l}``; then ``logits``
                      (L(3H+1) + 1)
    Scores live in a dense ``(n_src, n_dst)`` tensor; ``mask`` marks the real edges.

    E = (3H+1)[L + (H+1)L(L-1)/2] + 1 + L(H+1)  (+ L*H when sequential).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal, Mapping

import torch

from analysis.errors import UserError

NodeKind = Literal["input", "attn", "mlp", "logits"]
QKV = ("q", "k", "v")

_EDGE_RE = re.compile(r"^(input|a\d+\.h\d+|m\d+)->(a\d+\.h\d+|m\d+|logits)(?:<([qkv])>)?$")


@dataclass(frozen=True)
class GraphSpec:
    """The shape of a model's graph: everything the edge set depends on.

    ``n_kv_heads`` is recorded for grouped-query models (the graph is still per query head: one
    k and v destination per query head, as hannamw/EAP-IG's ungrouped attention); it does not change
    the edge set.
    """

    n_layers: int
    n_heads: int
    parallel_attn_mlp: bool
    n_kv_heads: int | None = None

    @classmethod
    def from_hf_config(cls, config) -> "GraphSpec":
        """From a transformers config (GPT-NeoX, GPT-2, GPT-Neo)."""
        mt = getattr(config, "model_type", None)
        if mt == "gpt_neox":
            return cls(config.num_hidden_layers, config.num_attention_heads,
                       bool(getattr(config, "use_parallel_residual", True)))
        if mt == "gpt2":
            return cls(config.n_layer, config.n_head, False)
        if mt == "gpt_neo":
            return cls(config.num_layers, config.num_heads, False)
        raise UserError(f"unsupported architecture {mt!r} for a graph; supported: gpt_neox, gpt2, gpt_neo")


@dataclass(frozen=True)
class Node:
    name: str
    kind: NodeKind
    layer: int  # input: -1, logits: n_layers (queries map input to layer 0)
    head: int | None = None


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str  # node name, without the <q|k|v> suffix
    qkv: Literal["q", "k", "v"] | None
    name: str


def edge_name(src: str, dst: str, qkv: str | None = None) -> str:
    return f"{src}->{dst}" if qkv is None else f"{src}->{dst}<{qkv}>"


def parse_edge_name(name: str) -> tuple[str, str, str | None]:
    """``'a0.h2->a3.h1<q>'`` -> ``('a0.h2', 'a3.h1', 'q')``; ``'m0->logits'`` -> ``('m0', 'logits', None)``."""
    m = _EDGE_RE.match(name)
    if not m:
        raise UserError(f"not an edge name: {name!r} (expected e.g. 'a0.h2->a3.h1<q>' or 'm0->logits')")
    src, dst, qkv = m.group(1), m.group(2), m.group(3)
    if dst.startswith("a") and qkv is None:
        raise UserError(f"edge {name!r} into a head needs a <q>, <k> or <v> suffix")
    if not dst.startswith("a") and qkv is not None:
        raise UserError(f"edge {name!r}: only edges into heads carry a <q|k|v> suffix")
    return src, dst, qkv


def expected_edge_count(spec: GraphSpec) -> int:
    """E = (3H+1)[L + (H+1)L(L-1)/2] + 1 + L(H+1) (+ L*H when sequential)."""
    L, H = spec.n_layers, spec.n_heads
    e = (3 * H + 1) * (L + (H + 1) * L * (L - 1) // 2) + 1 + L * (H + 1)
    if not spec.parallel_attn_mlp:
        e += L * H
    return e


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
        si, di = self.src_index, self.dst_index
        rows = torch.tensor([si[e.src] for e in self.edges], dtype=torch.long)
        cols = torch.tensor([di[e.dst if e.qkv is None else f"{e.dst}<{e.qkv}>"] for e in self.edges],
                            dtype=torch.long)
        return rows, cols

    def edge_position(self, name: str) -> tuple[int, int]:
        """(row, column) of an edge in the dense tensor."""
        src, dst, qkv = parse_edge_name(name)
        if name not in self.edge_index:
            raise UserError(f"edge {name!r} is not in this graph")
        return self.src_index[src], self.dst_index[dst if qkv is None else f"{dst}<{qkv}>"]

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
    L, H = spec.n_layers, spec.n_heads
    if L <= 0 or H <= 0:
        raise UserError(f"a graph needs n_layers > 0 and n_heads > 0, got {L} and {H}")
    nodes: dict[str, Node] = {"input": Node("input", "input", -1)}
    sources = ["input"]
    destinations: list[str] = []
    edges: list[Edge] = []
    residual = ["input"]
    for l in range(L):
        heads = [f"a{l}.h{h}" for h in range(H)]
        for h, name in enumerate(heads):
            nodes[name] = Node(name, "attn", l, h)
        nodes[f"m{l}"] = Node(f"m{l}", "mlp", l)
        sources += heads + [f"m{l}"]
        destinations += [f"{a}<{x}>" for x in QKV for a in heads] + [f"m{l}"]
        for src in residual:
            for a in heads:
                for x in QKV:
                    edges.append(Edge(src, a, x, edge_name(src, a, x)))
            if spec.parallel_attn_mlp:
                edges.append(Edge(src, f"m{l}", None, edge_name(src, f"m{l}")))
        residual = residual + heads
        if not spec.parallel_attn_mlp:
            for src in residual:
                edges.append(Edge(src, f"m{l}", None, edge_name(src, f"m{l}")))
        residual = residual + [f"m{l}"]
    nodes["logits"] = Node("logits", "logits", L)
    destinations.append("logits")
    for src in residual:
        edges.append(Edge(src, "logits", None, edge_name(src, "logits")))

    mask = _dense_mask(spec, nodes, sources, destinations)
    return Graph(spec, nodes, edges, sources, destinations, mask)


def _dense_mask(spec: GraphSpec, nodes: dict[str, Node], sources: list[str], destinations: list[str]) -> torch.Tensor:
    """mask[s, d]: source s feeds destination d (src layer < dst layer, or a same-layer head into a
    sequential MLP)."""
    src_layer = torch.tensor([nodes[s].layer for s in sources])
    src_attn = torch.tensor([nodes[s].kind == "attn" for s in sources])
    dst_nodes = [nodes[d.split("<")[0]] for d in destinations]
    dst_layer = torch.tensor([n.layer for n in dst_nodes])
    dst_mlp = torch.tensor([n.kind == "mlp" for n in dst_nodes])
    mask = src_layer[:, None] < dst_layer[None, :]
    if not spec.parallel_attn_mlp:
        mask |= (src_layer[:, None] == dst_layer[None, :]) & src_attn[:, None] & dst_mlp[None, :]
    return mask


def n_upstream_for_layer(spec: GraphSpec, layer: int, mlp: bool = False) -> int:
    """Number of leading sources feeding the heads (or, with ``mlp=True``, the MLP) of ``layer``;
    ``layer == n_layers`` gives the logits count."""
    n = 1 + layer * (spec.n_heads + 1)
    if mlp and not spec.parallel_attn_mlp and layer < spec.n_layers:
        n += spec.n_heads
    return n
