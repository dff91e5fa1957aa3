"""Dead-node pruning on stored edge keys (numpy: `queries/` never imports torch).

The method's circuit is "top n edges, then prune" (method.md 2.4 steps 2-3); a circuit chosen after the
fact from stored scores (`query --top-frac ...`) is pruned the same way, so `--top-frac 0.05` gives back
the checkpoint's stored circuit. The rule is `analysis.pruning.prune_edges` (which
`analysis.circuit.prune_circuit` uses too); this is the same rule computed on arrays, because the
worklist version took ~90 ms per Pythia-1.4B top-5% selection (11,574 edges), i.e. most of a re-selected
churn over 11 checkpoints. tests/test_store_fast.py checks the two agree edge for edge.

The rule as arrays: an edge is kept while its source is alive and at least one node reading it is
alive (a grouped-query k/v edge is read by every head of its group); a node is alive while it is the
source (`input`) or some kept edge reads it, and it is the sink (`logits`) or some kept edge leaves it.
Starting from everything and applying both until nothing changes reaches the same (greatest) fixed
point as the worklist: each pass only removes what the worklist would also remove.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from analysis.errors import UserError
from queries.components import Architecture


def prune_mask(arch: Architecture, keys: np.ndarray) -> np.ndarray:
    """`kept[i]`: whether edge `keys[i]` survives pruning."""
    keys = np.asarray(keys, dtype=np.int64)
    n = arch.n_components
    pair, channel = keys // 4, keys % 4
    src, dst = pair // n, pair % n
    g = arch.group_size
    # (edge, reader) rows: a shared k/v edge has the g heads of its group as readers
    shared = (channel >= 2) & (g > 1)
    repeat = np.where(shared, g, 1)
    edge_of = np.repeat(np.arange(len(keys)), repeat)
    reader = np.repeat(dst, repeat) + (np.arange(len(edge_of)) - np.repeat(np.cumsum(repeat) - repeat, repeat))
    is_source = np.zeros(n, dtype=bool)
    is_source[0] = True
    is_sink = np.zeros(n, dtype=bool)
    is_sink[n - 1] = True
    kept = np.ones(len(keys), dtype=bool)
    alive = np.ones(n, dtype=bool)
    while True:
        live_rows = kept[edge_of]
        has_parent = np.bincount(reader[live_rows], minlength=n) > 0
        has_child = np.bincount(src[kept], minlength=n) > 0
        alive_now = alive & (is_source | has_parent) & (is_sink | has_child)
        read = np.bincount(edge_of[alive_now[reader]], minlength=len(keys)) > 0  # a reader alive
        kept_now = kept & alive_now[src] & read
        if (kept_now == kept).all() and (alive_now == alive).all():
            return kept
        kept, alive = kept_now, alive_now


def surviving(arch: Architecture, keys: Sequence[int], what: str) -> np.ndarray:
    """The prune mask of the selected prefix `keys` (`what` names it: 'RUN:STEP: definition'); a
    UserError when nothing survives."""
    kept = prune_mask(arch, np.asarray(keys, dtype=np.int64))
    if not kept.any():
        raise UserError(f"{what} selects {len(keys)} edge(s) that prune to an empty circuit; select more "
                        "edges or use --no-prune")
    return kept


def prune_keys(arch: Architecture, keys: Sequence[int]) -> list[int]:
    """Positions (0-based, into `keys`) of the edges that survive pruning, in order."""
    if len(keys) == 0:
        return []
    return np.flatnonzero(prune_mask(arch, np.asarray(keys, dtype=np.int64))).tolist()
