"""Set arithmetic on selected edge keys, in numpy: churn between neighbouring checkpoints and the union
of two circuits. queries.api.Store reads the selected keys or head-level lists with one statement and
counts here: counting in Cypher unwound and grouped a row per edge, 2x the time of pulling the same keys
into Python for churn at Pythia-1.4B scale, and 3.0 s for the union read at opt-6.7b scale
(benchmarks/BENCHMARKS.md, issue 19). tests/test_store_fast.py checks both against the definitions.
"""

from __future__ import annotations

import numpy as np


def churn_counts(selected: list[np.ndarray], level: str, n_components: int) -> list[dict]:
    """method.md 6.1-6.2 per transition t -> t+1 of `selected` (each checkpoint's selected store keys,
    in step order): edges (head level: pairs, key // 4; q/k/v level: keys) and nodes (both endpoints
    of every selected edge) added, removed, and the size before."""
    edges, nodes = [], []
    for keys in selected:
        pair = keys // 4
        edges.append(np.unique(pair if level == "head" else keys))
        nodes.append(np.union1d(pair // n_components, pair % n_components))

    def gone(a, b):  # members of a missing from b
        return len(a) - int(np.isin(a, b, assume_unique=True).sum())
    return [{"transition": t, "edges_added": gone(edges[t + 1], edges[t]),
             "edges_removed": gone(edges[t], edges[t + 1]), "edges_before": len(edges[t]),
             "nodes_added": gone(nodes[t + 1], nodes[t]), "nodes_removed": gone(nodes[t], nodes[t + 1]),
             "nodes_before": len(nodes[t])} for t in range(len(edges) - 1)]


def union_rows(sides: list[dict], max_edges: int | None) -> list[dict]:
    """Merge two circuits' head-level (keys, scores) lists (rows {pos, keys, scores}, pos 0 = A,
    1 = B) into the union of method.md 5: an edge in both gets (s_A + s_B) / 2, one in one its own
    score; ordered by |score| descending, ties by key; the first `max_edges` (None: all)."""
    keys = np.concatenate([np.asarray(r["keys"], dtype=np.int64) for r in sides] + [np.zeros(0, np.int64)])
    scores = np.concatenate([np.asarray(r["scores"], dtype=np.float64) for r in sides] + [np.zeros(0)])
    order = np.argsort(keys, kind="stable")
    keys, scores = keys[order], scores[order]
    twice = np.flatnonzero(keys[1:] == keys[:-1])  # an edge is at most once per circuit
    merged = scores.copy()
    merged[twice] = (scores[twice] + scores[twice + 1]) / 2.0
    first = np.ones(len(keys), dtype=bool)
    first[twice + 1] = False
    keys, merged = keys[first], merged[first]
    ranked = np.lexsort((keys, -np.abs(merged)))[:max_edges]
    return [{"key": k, "s": s} for k, s in zip(keys[ranked].tolist(), merged[ranked].tolist())]
