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

Grouped-query attention (Llama with G = ``n_kv_heads`` < H key/value heads, r = H/G query heads per group)
    Query heads stay nodes ``a{l}.h{h}`` with their own ``<q>`` destinations. The k and v inputs exist once
    per KV-HEAD: kv-head g's are named after the FIRST query head of its group, ``a{l}.h{g*r}<k>`` /
    ``<v>``; the other query heads of the group have no k/v edges (they read the same k/v input).
    So the per-layer destinations are H + 2G (+ the MLP) and

    E = (H+2G+1)[L + (H+1)L(L-1)/2] + 1 + L(H+1)  (+ L*H when sequential).

    The dense layout keeps hannamw's 3H columns per layer (``a{l}.h{h}<k>`` of a non-first query head is
    a column with no edge: ``mask`` is False there), so the engine, patching and every name stay as for
    ungrouped attention. A head-level edge ``u->a{l}.h{h}`` expanded to q/k/v
    (:func:`kv_representative`) stands for ``u->a{l}.h{h}<q>`` and the group's shared
    ``u->a{l}.h{g*r}<k|v>``.

    Pruning (:func:`analysis.circuit.prune_circuit`) treats a group's k/v edges as parents of every
    head of the group and drops them only when their source or every head of the group is dead, so
    pruning never changes a patching evaluation, with or without grouped-query attention.
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

# Decoders only the TransformerLens backend scores (analysis.tl_adapter): sequential pre-norm blocks with
# grouped-query attention, named and laid out as Llama (k/v destinations per kv-head).
TL_ONLY_ARCHITECTURES = ("qwen2", "gemma")

_EDGE_RE = re.compile(r"^(input|a\d+\.h\d+|m\d+)->(a\d+\.h\d+|m\d+|logits)(?:<([qkv])>)?$")


@dataclass(frozen=True)
class GraphSpec:
    """The shape of a model's graph: everything the edge set depends on.

    ``n_kv_heads``: the number of key/value heads of a grouped-query model (None when every query
    head has its own, i.e. G = H). With G < H only the first query head of each group carries k/v
    edges (module docstring), which changes the edge count.
    """

    n_layers: int
    n_heads: int
    parallel_attn_mlp: bool
    n_kv_heads: int | None = None

    def __post_init__(self):
        G, H = self.n_kv_heads, self.n_heads
        if G is not None and (G <= 0 or H % G):
            raise UserError(f"n_kv_heads {G} must be a positive divisor of n_heads {H}")

    @property
    def kv_heads(self) -> int:
        """G: the number of key/value heads (H without grouped-query attention)."""
        return self.n_kv_heads or self.n_heads

    @property
    def group_size(self) -> int:
        """r = H / G query heads share one key/value head."""
        return self.n_heads // self.kv_heads

    def has_kv(self, head: int) -> bool:
        """Whether query head ``head`` carries the k/v destinations of its group (the group's first)."""
        return head % self.group_size == 0

    @classmethod
    def from_hf_config(cls, config) -> "GraphSpec":
        """From a transformers config (GPT-NeoX, GPT-2, GPT-Neo, OPT, Llama; Qwen2 and Gemma, whose graph is
        Llama's, for the TransformerLens backend)."""
        mt = getattr(config, "model_type", None)
        if mt == "gpt_neox":
            return cls(config.num_hidden_layers, config.num_attention_heads,
                       bool(getattr(config, "use_parallel_residual", True)))
        if mt == "gpt2":
            return cls(config.n_layer, config.n_head, False)
        if mt == "gpt_neo":
            return cls(config.num_layers, config.num_heads, False)
        if mt == "opt":
            if not getattr(config, "do_layer_norm_before", True):
                raise UserError("post-LayerNorm OPT (do_layer_norm_before=False, e.g. OPT-350m) is not supported: "
                                "its residual stream is normalised after each sublayer, so node outputs do not add up")
            wdim = getattr(config, "word_embed_proj_dim", None)
            if wdim is not None and wdim != config.hidden_size:
                raise UserError(f"OPT with word_embed_proj_dim {wdim} != hidden_size {config.hidden_size} "
                                "(project_in/project_out) is not supported")
            return cls(config.num_hidden_layers, config.num_attention_heads, False)
        if mt in ("llama",) + TL_ONLY_ARCHITECTURES:
            H = config.num_attention_heads
            G = getattr(config, "num_key_value_heads", None) or H
            return cls(config.num_hidden_layers, H, False, None if G == H else G)
        raise UserError(f"unsupported architecture {mt!r} for a graph; supported: gpt_neox, gpt2, gpt_neo, opt, llama "
                        f"(and {', '.join(TL_ONLY_ARCHITECTURES)} with --backend transformer-lens)")


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


def kv_representative(spec: GraphSpec, name: str) -> str:
    """The graph's name for a q/k/v-level edge: with grouped-query attention ``u->a1.h3<k>`` (query head 3
    reads kv-head 3 // r) becomes ``u->a1.h{first head of that group}<k>``; other names are unchanged."""
    if spec.group_size == 1 or not name.endswith(("<k>", "<v>")):
        return name
    src, dst, qkv = parse_edge_name(name)
    layer, head = dst[1:].split(".h")
    first = int(head) - int(head) % spec.group_size
    return edge_name(src, f"a{layer}.h{first}", qkv)


def expected_edge_count(spec: GraphSpec) -> int:
    """E = (H+2G+1)[L + (H+1)L(L-1)/2] + 1 + L(H+1) (+ L*H when sequential); G = H without grouped-query
    attention, which gives (3H+1)[...]."""
    L, H, G = spec.n_layers, spec.n_heads, spec.kv_heads
    e = (H + 2 * G + 1) * (L + (H + 1) * L * (L - 1) // 2) + 1 + L * (H + 1)
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
            for h, a in enumerate(heads):
                for x in QKV if spec.has_kv(h) else ("q",):
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
    if spec.group_size > 1:  # grouped-query: k/v columns only for the first query head of each group
        no_kv = torch.tensor([d.endswith(("<k>", "<v>")) and not spec.has_kv(nodes[d.split("<")[0]].head)
                              for d in destinations])
        mask[:, no_kv] = False
    return mask


def n_upstream_for_layer(spec: GraphSpec, layer: int, mlp: bool = False) -> int:
    """Number of leading sources feeding the heads (or, with ``mlp=True``, the MLP) of ``layer``;
    ``layer == n_layers`` gives the logits count."""
    n = 1 + layer * (spec.n_heads + 1)
    if mlp and not spec.parallel_attn_mlp and layer < spec.n_layers:
        n += spec.n_heads
    return n
