"""The one description of a model's edge graph, pure Python (no torch: `queries/` imports it too).

Everything about a graph that depends only on its shape lives here: node names and numbering, the
dense source / destination layout of the scoring engine, edge names, edge counts, the store's
integer edge keys and the grouped-query k/v rules. :mod:`analysis.graph` adds torch tensors on top,
:mod:`queries.components` the store's component rows.

Nodes, in forward order, with their component index ``ci``
    ``input`` = 0, then per layer ``a{l}.h0 .. a{l}.h{H-1}``, ``m{l}``, and ``logits`` last
    (N = L(H+1) + 2 nodes). A :class:`Node` has ``layer`` -1 for ``input`` and L for ``logits``, so that
    "src.layer < dst.layer" is the edge rule (the store maps ``input`` to layer 0).

Dense layout (hannamw/EAP-IG's ``Graph``)
    rows (sources):        every node but ``logits``, in ci order: row == ci, 1 + L(H+1) rows; the heads
                           of layer l start at row 1 + l(H+1), its MLP at 1 + l(H+1) + H.
    columns (destinations): per layer ``a{l}.h*<q>``, ``a{l}.h*<k>``, ``a{l}.h*<v>``, ``m{l}``; then
                           ``logits``: layer l starts at column l(3H+1), L(3H+1) + 1 columns.

Edges
    Every upstream node feeds every downstream node; edges into a head carry ``<q|k|v>``. With parallel
    attention/MLP the MLP of layer l reads what the heads of layer l read; with sequential blocks also
    those heads. Head-level names (``u->a3.h1``) stand for a head's three q/k/v edges.

    E = (H+2G+1)[L + (H+1)L(L-1)/2] + 1 + L(H+1)  (+ L*H when sequential), G = H without GQA.

Grouped-query attention (G = ``n_kv_heads`` < H key/value heads, r = H/G)
    The k/v inputs exist once per kv-head, named after the first query head of its group
    (``a{l}.h{g*r}<k|v>``); the other heads of a group have no k/v edges (their dense columns hold no
    edge). Such a shared k/v edge is read by every head of the group (:meth:`Layout.readers`).

Store keys
    ``k = (src_ci * N + dst_ci) * 4 + channel`` (channel 0 = none, 1/2/3 = q/k/v): ``k // 4`` is the
    head-level pair.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

from analysis.errors import UserError

NodeKind = Literal["input", "attn", "mlp", "logits"]
QKV = ("q", "k", "v")
CHANNELS = {None: 0, "q": 1, "k": 2, "v": 3}
CHANNEL_NAMES = {0: None, 1: "q", 2: "k", 3: "v"}

# the one edge-name pattern: src, dst, optional <q|k|v>; head-level edges into heads match too
EDGE_RE = re.compile(r"^(input|a\d+\.h\d+|m\d+)->(a\d+\.h\d+|m\d+|logits)(?:<([qkv])>)?$")
_NODE_RE = re.compile(r"^(?:a(\d+)\.h(\d+)|m(\d+))$")


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


# ------------------------------------------------------------------------------------------ names
def format_edge(src: str, dst: str, qkv: str | None = None) -> str:
    return f"{src}->{dst}" if qkv is None else f"{src}->{dst}<{qkv}>"


def split_edge_name(name: str) -> tuple[str, str, str | None]:
    """(src, dst, qkv) of a q/k/v-level or head-level name (``u->a3.h1`` is allowed)."""
    m = EDGE_RE.match(name)
    if not m:
        raise UserError(f"not an edge name: {name!r} (expected e.g. 'a0.h2->a3.h1<q>' or 'm0->logits')")
    src, dst, qkv = m.group(1), m.group(2), m.group(3)
    if not dst.startswith("a") and qkv is not None:
        raise UserError(f"edge {name!r}: only edges into heads carry a <q|k|v> suffix")
    return src, dst, qkv


def parse_edge_name(name: str) -> tuple[str, str, str | None]:
    """A q/k/v-level name: ``'a0.h2->a3.h1<q>'`` -> ``('a0.h2', 'a3.h1', 'q')``; ``'m0->logits'`` ->
    ``('m0', 'logits', None)``. An edge into a head needs its suffix."""
    src, dst, qkv = split_edge_name(name)
    if dst.startswith("a") and qkv is None:
        raise UserError(f"edge {name!r} into a head needs a <q>, <k> or <v> suffix")
    return src, dst, qkv


def head_name(name: str) -> str:
    """``'a0.h2->a3.h1<q>'`` -> ``'a0.h2->a3.h1'`` (other names unchanged)."""
    return name[:-3] if name.endswith(">") else name


# ------------------------------------------------------------------------------------------ layout
@dataclass(frozen=True)
class Layout:
    """The shape a graph depends on, and every numbering derived from it.

    ``n_kv_heads``: key/value heads of a grouped-query model (None when every query head has its own).
    """

    n_layers: int
    n_heads: int
    parallel_attn_mlp: bool
    n_kv_heads: int | None = None

    def __post_init__(self):
        L, H, G = self.n_layers, self.n_heads, self.n_kv_heads
        if L < 1 or H < 1:
            raise UserError(f"a graph needs at least one layer and one head, got {L}x{H}")
        if G is not None and (G < 1 or H % G):
            raise UserError(f"n_kv_heads {G} must be a positive divisor of n_heads {H}")

    # -------------------------------------------------------------- grouped-query attention
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

    @property
    def key(self) -> str:
        """The store's name of the shape (shared by every run of that shape)."""
        kv = f".kv{self.n_kv_heads}" if self.n_kv_heads and self.n_kv_heads != self.n_heads else ""
        return f"L{self.n_layers}.H{self.n_heads}.{'par' if self.parallel_attn_mlp else 'seq'}{kv}"

    # -------------------------------------------------------------- nodes
    @cached_property
    def nodes(self) -> tuple[Node, ...]:
        """Every node in forward (ci) order."""
        out = [Node("input", "input", -1)]
        for l in range(self.n_layers):
            out += [Node(f"a{l}.h{h}", "attn", l, h) for h in range(self.n_heads)]
            out.append(Node(f"m{l}", "mlp", l))
        out.append(Node("logits", "logits", self.n_layers))
        return tuple(out)

    @cached_property
    def ci(self) -> dict[str, int]:
        """Node name -> component index (= its source row, for every node but logits)."""
        return {n.name: i for i, n in enumerate(self.nodes)}

    @property
    def n_components(self) -> int:
        return self.n_layers * (self.n_heads + 1) + 2

    def node(self, name: str) -> Node:
        """The node called ``name``; a UserError says which layer or head is out of range."""
        i = self.ci.get(name)
        if i is not None:
            return self.nodes[i]
        m = _NODE_RE.match(name)
        if m is None:
            raise UserError(f"not a node name: {name!r}")
        layer = int(m.group(1) if m.group(3) is None else m.group(3))
        if m.group(2) is not None and int(m.group(2)) >= self.n_heads:
            raise UserError(f"head {int(m.group(2))} out of range for {self.n_heads} heads")
        raise UserError(f"layer {layer} out of range for {self.n_layers} layers")

    def feeds(self, src: Node, dst: Node) -> bool:
        """The upstream rule: an earlier layer; within a layer only attn -> MLP, and only when sequential."""
        if src.layer < dst.layer:
            return True
        return (src.layer == dst.layer and src.kind == "attn" and dst.kind == "mlp"
                and not self.parallel_attn_mlp)

    # -------------------------------------------------------------- dense layout
    @property
    def n_src(self) -> int:
        return 1 + self.n_layers * (self.n_heads + 1)

    @property
    def n_dst(self) -> int:
        return self.n_layers * (3 * self.n_heads + 1) + 1

    def head_row(self, layer: int, head: int = 0) -> int:
        """Source row of head ``head`` of ``layer`` (the heads of a layer are consecutive rows)."""
        return 1 + layer * (self.n_heads + 1) + head

    def mlp_row(self, layer: int) -> int:
        return self.head_row(layer, self.n_heads)

    def col0(self, layer: int) -> int:
        """First destination column of ``layer``: its 3H q/k/v columns, then its MLP column."""
        return layer * (3 * self.n_heads + 1)

    def qkv_col(self, layer: int, qkv: str, head: int) -> int:
        return self.col0(layer) + QKV.index(qkv) * self.n_heads + head

    def mlp_col(self, layer: int) -> int:
        return self.col0(layer) + 3 * self.n_heads

    @property
    def logits_col(self) -> int:
        return self.n_dst - 1

    def n_upstream(self, layer: int, mlp: bool = False) -> int:
        """How many leading sources feed the heads (``mlp=True``: the MLP) of ``layer``; ``layer ==
        n_layers`` gives the logits count."""
        n = self.head_row(layer)
        if mlp and not self.parallel_attn_mlp and layer < self.n_layers:
            n += self.n_heads
        return n

    def node_groups(self) -> list[tuple[str, int, tuple[int, int]]]:
        """(kind, layer, source rows) of the node groups: input, the heads of a layer, one MLP."""
        groups: list[tuple[str, int, tuple[int, int]]] = [("input", -1, (0, 1))]
        for l in range(self.n_layers):
            r = self.head_row(l)
            groups += [("attn", l, (r, r + self.n_heads)), ("mlp", l, (r + self.n_heads, r + self.n_heads + 1))]
        return groups

    @cached_property
    def sources(self) -> tuple[str, ...]:
        return tuple(n.name for n in self.nodes[:-1])

    @cached_property
    def destinations(self) -> tuple[str, ...]:
        """Column names: ``'a3.h1<q>'``, ``'m0'``, ``'logits'``."""
        out: list[str] = []
        for l in range(self.n_layers):
            out += [f"a{l}.h{h}<{x}>" for x in QKV for h in range(self.n_heads)]
            out.append(f"m{l}")
        out.append("logits")
        return tuple(out)

    def dst_col(self, dst: str, qkv: str | None) -> int:
        """Column of destination node ``dst`` (its ``qkv`` input for a head)."""
        node = self.node(dst)
        if node.kind == "attn":
            return self.qkv_col(node.layer, qkv, node.head)
        return self.mlp_col(node.layer) if node.kind == "mlp" else self.logits_col

    def position(self, edge: Edge) -> tuple[int, int]:
        """(row, column) of a q/k/v-level edge in the dense layout."""
        return self.ci[edge.src], self.dst_col(edge.dst, edge.qkv)

    # -------------------------------------------------------------- edges
    @cached_property
    def edges(self) -> tuple[Edge, ...]:
        """Every q/k/v-level edge, in hannamw/EAP-IG's order: by destination layer, then source, then
        destination."""
        out: list[Edge] = []
        heads_of = [self.nodes[self.head_row(l):self.mlp_row(l)] for l in range(self.n_layers)]
        upstream = 1  # sources in the residual stream so far (a prefix of the rows)
        for l, heads in enumerate(heads_of):
            mlp = f"m{l}"
            for src in self.sources[:upstream]:
                for a in heads:
                    out += [Edge(src, a.name, x, format_edge(src, a.name, x))
                            for x in (QKV if self.has_kv(a.head) else ("q",))]
                if self.parallel_attn_mlp:
                    out.append(Edge(src, mlp, None, format_edge(src, mlp)))
            if not self.parallel_attn_mlp:
                out += [Edge(src, mlp, None, format_edge(src, mlp)) for src in self.sources[:upstream + self.n_heads]]
            upstream += self.n_heads + 1
        out += [Edge(src, "logits", None, format_edge(src, "logits")) for src in self.sources]
        return tuple(out)

    @cached_property
    def edge_rows_cols(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(rows, columns) of ``edges``, in order."""
        rows, cols = zip(*(self.position(e) for e in self.edges))
        return rows, cols

    def n_edges(self, level: str = "qkv") -> int:
        """Edge count of the full graph at q/k/v level (method.md's formula) or head level."""
        L, H, G = self.n_layers, self.n_heads, self.kv_heads
        per_dst = H + 2 * G + 1 if level == "qkv" else H + 1
        e = per_dst * (L + (H + 1) * L * (L - 1) // 2) + 1 + L * (H + 1)
        if not self.parallel_attn_mlp:
            e += L * H
        return e

    def kv_representative(self, name: str) -> str:
        """The graph's name for a q/k/v-level edge: with grouped-query attention ``u->a1.h3<k>`` (query
        head 3 reads kv-head 3 // r) becomes ``u->a1.h{first head of that group}<k>``; others unchanged."""
        if self.group_size == 1 or not name.endswith(("<k>", "<v>")):
            return name
        src, dst, qkv = parse_edge_name(name)
        layer, head = dst[1:].split(".h")
        return format_edge(src, f"a{layer}.h{int(head) - int(head) % self.group_size}", qkv)

    # -------------------------------------------------------------- store keys
    @cached_property
    def key_of(self) -> dict[str, int]:
        """Every edge name of the graph (q/k/v level and head level) -> its key; by destination (ci
        order), then source, the head-level name before its channels."""
        n, out = self.n_components, {}
        for d_ci, d in enumerate(self.nodes[1:], 1):
            for s_ci, s in enumerate(self.nodes[:-1]):
                if not self.feeds(s, d):
                    continue
                pair = s_ci * n + d_ci
                base = f"{s.name}->{d.name}"
                out[base] = pair * 4
                if d.kind == "attn":
                    for ch in QKV if self.has_kv(d.head) else ("q",):
                        out[f"{base}<{ch}>"] = pair * 4 + CHANNELS[ch]
        return out

    def edge_key(self, name: str) -> tuple[int, int, int, str | None]:
        """``name`` (q/k/v or head level) -> (key, src_ci, dst_ci, channel); a UserError for a name not
        in this graph."""
        src, dst, qkv = split_edge_name(name)
        try:
            s, d = self.node(src), self.node(dst)
        except UserError as exc:
            raise UserError(f"edge {name!r}: {exc}") from None
        ok = self.feeds(s, d)
        if qkv in ("k", "v") and not self.has_kv(d.head):
            ok = False  # grouped-query: k/v edges live on the first query head of each group
        if not ok:
            raise UserError(f"edge {name!r} does not exist in a {self.key} graph")
        s_ci, d_ci = self.ci[src], self.ci[dst]
        return (s_ci * self.n_components + d_ci) * 4 + CHANNELS[qkv], s_ci, d_ci, qkv

    def edge_name(self, key: int) -> str:
        pair, channel = divmod(key, 4)
        s_ci, d_ci = divmod(pair, self.n_components)
        return format_edge(self.nodes[s_ci].name, self.nodes[d_ci].name, CHANNEL_NAMES[channel])

    def readers(self, key: int) -> tuple[int, tuple[int, ...]]:
        """(source ci, the ci of every node that reads the edge): a shared grouped-query k/v edge is
        read by every head of its group (consecutive components)."""
        pair, channel = divmod(key, 4)
        src, dst = divmod(pair, self.n_components)
        if channel in (2, 3) and self.group_size > 1:
            return src, tuple(range(dst, dst + self.group_size))
        return src, (dst,)
