"""Dead-node pruning on stored edge keys (pure Python: `queries/` never imports torch).

The method's circuit is "top n edges, then prune" (method.md 2.4 steps 2-3); a circuit chosen after the
fact from stored scores (`query --top-frac ...`) is pruned the same way, so `--top-frac 0.05` gives back
the checkpoint's stored circuit. The rule is `analysis.circuit.prune_circuit`'s, on keys instead of
names (a test checks the two agree): a node is dead when it has no in-circuit child edge (except
`logits`) or no in-circuit parent edge (except `input`); a dead node's edges go, until nothing changes.
With grouped-query attention a k/v edge into the first head of a group feeds every head of the group.
"""

from __future__ import annotations

from typing import Sequence

from queries.components import Architecture


def _endpoints(arch: Architecture, key: int) -> tuple[int, tuple[int, ...]]:
    """(source component, the components that read this edge) of an edge key."""
    pair, channel = divmod(key, 4)
    src, dst = divmod(pair, arch.n_components)
    group = arch.group_size
    if channel in (2, 3) and group > 1:  # a shared k/v input: the group's heads are consecutive
        return src, tuple(range(dst, dst + group))
    return src, (dst,)


def prune_keys(arch: Architecture, keys: Sequence[int]) -> list[int]:
    """Positions (0-based, into `keys`) of the edges that survive pruning, in order."""
    logits = arch.n_components - 1
    ends = [_endpoints(arch, int(k)) for k in keys]
    children: dict[int, set[int]] = {}
    parents: dict[int, set[int]] = {}
    for i, (src, readers) in enumerate(ends):
        children.setdefault(src, set()).add(i)
        for d in readers:
            parents.setdefault(d, set()).add(i)
    alive = set(children) | set(parents)
    live_readers = [set(r) for _, r in ends]
    kept = set(range(len(keys)))
    work = sorted(alive)

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
        if (node == 0 or parents.get(node)) and (node == logits or children.get(node)):
            continue
        alive.discard(node)
        for i in list(children.get(node, ())):
            remove(i)
        for i in list(parents.get(node, ())):
            live_readers[i].discard(node)
            parents[node].discard(i)
            if not live_readers[i] & alive and i in kept:
                remove(i)
    return sorted(kept)
