"""The store's numbering of a graph's components and edges (pure Python: `queries/` never imports torch).

Every rule (component index `ci`, edge keys `k = (src_ci * N + dst_ci) * 4 + channel`, edge names, counts
and grouped-query k/v edges) is `analysis.layout.Layout`'s; this module adds only the component rows the
store writes, whose layers are the store's: `input` = 0 (as the paper's critical-layer rule counts it),
`a{l}.h{h}` and `m{l}` = l, `logits` = L.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

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
