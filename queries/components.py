"""The store's numbering of a graph's components and edges (pure Python: `queries/` never imports torch).

Every rule (component index `ci`, edge keys `k = (src_ci * N + dst_ci) * 4 + channel`, edge names, counts
and grouped-query k/v edges) is `analysis.layout.Layout`'s; this module adds only the component rows the
store writes, whose layers are the store's: `input` = 0 (as the paper's critical-layer rule counts it),
`a{l}.h{h}` and `m{l}` = l, `logits` = L.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from analysis.layout import CHANNEL_NAMES, CHANNELS, Layout

__all__ = ["Architecture", "CHANNELS", "CHANNEL_NAMES"]


@dataclass(frozen=True)
class Architecture(Layout):
    """The shape a graph depends on; `key` names it in the store (shared by every run of that shape)."""

    @cached_property
    def components(self) -> list[dict]:
        """Rows `{name, kind, layer, head, ci}` in forward order."""
        return [{"name": n.name, "kind": n.kind, "layer": max(n.layer, 0), "head": n.head, "ci": ci}
                for ci, n in enumerate(self.nodes)]

    @cached_property
    def is_head(self) -> np.ndarray:
        """`is_head[ci]`: whether component ci is an attention head (edges into it carry q/k/v
        channels), from the layout's nodes; index it with an edge key's destination ci to vectorise."""
        return np.array([n.kind == "attn" for n in self.nodes], dtype=bool)

    def destinations_of(self, keys: np.ndarray) -> np.ndarray:
        """The destination ci of each edge key (the key rule of analysis.layout.Layout.edge_name)."""
        return (np.asarray(keys) // 4) % self.n_components
