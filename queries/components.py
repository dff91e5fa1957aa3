"""The store's numbering of a graph's components and edges (pure Python: `queries/` never imports torch).

Components of an architecture with L layers and H heads, in forward order, get an index `ci`:
`input` = 0, then for each layer `a{l}.h0..a{l}.h{H-1}`, `m{l}`, and `logits` last.
An edge gets an integer key `k = (src_ci * N + dst_ci) * 4 + channel` (N components; channel 0 = none,
1/2/3 = q/k/v), so `k / 4` is its head-level pair and `k % 4` its q/k/v channel.

Layers as stored on components: `input` = 0 (as the paper's critical-layer rule counts it),
`a{l}.h{h}` and `m{l}` = l, `logits` = L.

Grouped-query attention (`n_kv_heads` = G < H, r = H/G; the same scheme as `analysis.graph`): every query
head has its `<q>` edges, but the k/v inputs exist once per kv-head, named after the first query head of
its group: `u->a{l}.h{g*r}<k|v>`. The other heads of a group have no `<k>`/`<v>` edges. Head-level
pairs are unchanged (every head has q edges); the q/k/v-level count uses H + 2G per layer instead of 3H.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

from analysis.errors import UserError

CHANNELS = {None: 0, "q": 1, "k": 2, "v": 3}
CHANNEL_NAMES = {0: None, 1: "q", 2: "k", 3: "v"}
_EDGE = re.compile(r"^(input|a(\d+)\.h(\d+)|m(\d+))->(logits|a(\d+)\.h(\d+)|m(\d+))(?:<([qkv])>)?$")


@dataclass(frozen=True)
class Architecture:
    """The shape a graph depends on; `key` names it in the store (shared by every run of that shape)."""

    n_layers: int
    n_heads: int
    parallel_attn_mlp: bool
    n_kv_heads: int | None = None

    def __post_init__(self):
        if self.n_layers < 1 or self.n_heads < 1:
            raise UserError(f"a graph needs at least one layer and one head, got {self.n_layers}x{self.n_heads}")
        if self.n_kv_heads is not None and (self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads):
            raise UserError(f"n_kv_heads {self.n_kv_heads} must be a positive divisor of n_heads {self.n_heads}")

    @property
    def group_size(self) -> int:
        """Query heads per key/value head (1 without grouped-query attention)."""
        return self.n_heads // (self.n_kv_heads or self.n_heads)

    def has_kv(self, head: int) -> bool:
        """Whether edges into query head `head` carry `<k>`/`<v>` channels (first head of its kv group)."""
        return head % self.group_size == 0

    @property
    def key(self) -> str:
        kv = f".kv{self.n_kv_heads}" if self.n_kv_heads and self.n_kv_heads != self.n_heads else ""
        return f"L{self.n_layers}.H{self.n_heads}.{'par' if self.parallel_attn_mlp else 'seq'}{kv}"

    @cached_property
    def components(self) -> list[dict]:
        """Rows `{ci, name, kind, layer, head}` in forward order."""
        rows = [{"name": "input", "kind": "input", "layer": 0, "head": None}]
        for layer in range(self.n_layers):
            rows += [{"name": f"a{layer}.h{h}", "kind": "attn", "layer": layer, "head": h}
                     for h in range(self.n_heads)]
            rows.append({"name": f"m{layer}", "kind": "mlp", "layer": layer, "head": None})
        rows.append({"name": "logits", "kind": "logits", "layer": self.n_layers, "head": None})
        for ci, row in enumerate(rows):
            row["ci"] = ci
        return rows

    @cached_property
    def ci(self) -> dict[str, int]:
        return {c["name"]: c["ci"] for c in self.components}

    @property
    def n_components(self) -> int:
        return len(self.components)

    def n_edges(self, level: str = "qkv") -> int:
        """Edge count of the full graph at q/k/v level (method.md's formula) or head level."""
        L, H = self.n_layers, self.n_heads
        G = self.n_kv_heads or H
        per_dst = H + 2 * G + 1 if level == "qkv" else H + 1
        e = per_dst * (L + (H + 1) * L * (L - 1) // 2) + 1 + L * (H + 1)
        if not self.parallel_attn_mlp:
            e += L * H
        return e

    @cached_property
    def key_of(self) -> dict[str, int]:
        """Every edge name of the graph (q/k/v level and head level) -> its key, built by enumeration."""
        names = [c["name"] for c in self.components]
        n = self.n_components
        out: dict[str, int] = {}
        for d in self.components[1:]:
            d_ci, d_layer = d["ci"], d["layer"]
            for s in self.components[:-1]:
                s_layer = -1 if s["kind"] == "input" else s["layer"]
                if d["kind"] == "logits":
                    ok = True
                elif s_layer < d_layer:
                    ok = True
                else:  # same layer: only attn -> mlp in sequential blocks
                    ok = (s_layer == d_layer and s["kind"] == "attn" and d["kind"] == "mlp"
                          and not self.parallel_attn_mlp)
                if not ok:
                    continue
                pair = s["ci"] * n + d_ci
                base = f"{names[s['ci']]}->{names[d_ci]}"
                out[base] = pair * 4
                if d["kind"] == "attn":
                    for ch in ("q", "k", "v") if self.has_kv(d["head"]) else ("q",):
                        out[f"{base}<{ch}>"] = pair * 4 + CHANNELS[ch]
        return out

    def _position(self, name: str, m: re.Match, src: bool) -> tuple[int, int]:
        """(layer, order within layer: heads 0, mlp 1) of a node; input (-1, 0), logits (L, 0)."""
        if name == "input":
            return -1, 0
        if name == "logits":
            return self.n_layers, 0
        groups = (m.group(2), m.group(3), m.group(4)) if src else (m.group(6), m.group(7), m.group(8))
        if groups[0] is not None:
            layer, head = int(groups[0]), int(groups[1])
            if head >= self.n_heads:
                raise UserError(f"head {head} out of range for {self.n_heads} heads")
            kind = 0
        else:
            layer, kind = int(groups[2]), 1
        if layer >= self.n_layers:
            raise UserError(f"layer {layer} out of range for {self.n_layers} layers")
        return layer, kind

    def edge_key(self, name: str) -> tuple[int, int, int, str | None]:
        """`name` -> (key, src_ci, dst_ci, channel); raises UserError for a name not in this graph."""
        m = _EDGE.match(name)
        if not m:
            raise UserError(f"not an edge name: {name!r}")
        src, dst, qkv = m.group(1), m.group(5), m.group(9)
        if dst.startswith("a") != (qkv is not None) and qkv is not None:
            raise UserError(f"edge {name!r}: only edges into heads carry <q|k|v>")
        try:
            s_layer, s_kind = self._position(src, m, True)
            d_layer, d_kind = self._position(dst, m, False)
        except UserError as exc:
            raise UserError(f"edge {name!r}: {exc}") from None
        # Upstream rule: earlier layer; within a layer only attn -> mlp, and only when sequential.
        ok = s_layer < d_layer or (s_layer == d_layer and s_kind == 0 and d_kind == 1
                                   and not self.parallel_attn_mlp)
        if qkv in ("k", "v") and not self.has_kv(int(m.group(7))):
            ok = False  # grouped-query: k/v edges live on the first query head of each group
        if not ok:
            raise UserError(f"edge {name!r} does not exist in a {self.key} graph")
        s_ci, d_ci = self.ci[src], self.ci[dst]
        return (s_ci * self.n_components + d_ci) * 4 + CHANNELS[qkv], s_ci, d_ci, qkv

    def edge_name(self, key: int) -> str:
        pair, channel = divmod(key, 4)
        s_ci, d_ci = divmod(pair, self.n_components)
        name = f"{self.components[s_ci]['name']}->{self.components[d_ci]['name']}"
        qkv = CHANNEL_NAMES[channel]
        return name if qkv is None else f"{name}<{qkv}>"
