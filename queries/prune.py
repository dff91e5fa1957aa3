"""Dead-node pruning on stored edge keys (pure Python: `queries/` never imports torch).

The method's circuit is "top n edges, then prune" (method.md 2.4 steps 2-3); a circuit chosen after the
fact from stored scores (`query --top-frac ...`) is pruned the same way, so `--top-frac 0.05` gives back
the checkpoint's stored circuit. The rule is `analysis.pruning.prune_edges`, which
`analysis.circuit.prune_circuit` uses too (a test checks the two agree).
"""

from __future__ import annotations

from typing import Sequence

from analysis.pruning import prune_keys as prune_layout_keys
from queries.components import Architecture


def prune_keys(arch: Architecture, keys: Sequence[int]) -> list[int]:
    """Positions (0-based, into `keys`) of the edges that survive pruning, in order."""
    return prune_layout_keys(arch, keys)[0]
