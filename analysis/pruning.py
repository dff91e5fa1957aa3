"""Dead-node pruning, the one rule (pure Python: `queries/prune.py` prunes stored keys with it, and
`analysis.circuit.prune_circuit` circuits of edge names).

method.md 2.4 step 3, hannamw ``prune_dead_nodes`` with prune_childless and prune_parentless: a node
is dead when it has no in-circuit child edge (except the sink, ``logits``) or no in-circuit parent edge
(except the source, ``input``); a dead node's edges go, until nothing changes. An edge may be read by
several nodes (a grouped-query k/v edge by every head of its group): it goes when its source dies or
every node reading it is dead. hannamw does one childless and one parentless sweep; a worklist (a
removal can only kill the removed edges' endpoints) reaches the fixed point, so pruning is idempotent.
"""

from __future__ import annotations

from typing import Hashable, Sequence

from analysis.layout import Layout


def prune_edges(ends: Sequence[tuple[Hashable, Sequence[Hashable]]], source: Hashable,
                sink: Hashable) -> tuple[list[int], set]:
    """``ends[i]`` = (source node, nodes reading edge i) -> (positions of the surviving edges in
    order, the live nodes)."""
    children: dict = {}
    parents: dict = {}
    for i, (src, readers) in enumerate(ends):
        children.setdefault(src, set()).add(i)
        for d in readers:
            parents.setdefault(d, set()).add(i)
    alive = set(children) | set(parents)
    live_readers = [set(r) for _, r in ends]
    kept = set(range(len(ends)))
    work = sorted(alive)  # the fixed point does not depend on the order; sorted for determinism

    def remove(i: int) -> None:
        src, readers = ends[i]
        children[src].discard(i)
        for d in readers:
            parents[d].discard(i)
        kept.discard(i)
        work.extend([src, *readers])

    while work:
        node = work.pop()
        if node not in alive:
            continue
        if (node == source or parents.get(node)) and (node == sink or children.get(node)):
            continue
        alive.discard(node)
        for i in list(children.get(node, ())):
            remove(i)
        for i in list(parents.get(node, ())):
            live_readers[i].discard(node)
            parents[node].discard(i)
            if not live_readers[i] & alive and i in kept:
                remove(i)
    return sorted(kept), alive


def prune_keys(layout: Layout, keys: Sequence[int]) -> tuple[list[int], set[int]]:
    """Store keys -> (positions of the surviving keys, in order; the live components' ci)."""
    return prune_edges([layout.readers(int(k)) for k in keys], 0, layout.n_components - 1)
