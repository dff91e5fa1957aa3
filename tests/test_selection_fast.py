"""Issue 19 vectorised circuit selection (ranking, threshold and percentile on tensors, a ScoreResult
read in graph order without a dict): the circuits must be exactly those of the plain-Python rules
(reimplemented here as they were before), with ties broken by the graph's edge order, for
absolute and signed keys, full and partial score sets, parallel, sequential and grouped-query graphs."""

from __future__ import annotations

import math

import pytest
import torch

from analysis.circuit import prune_circuit, score_table, select_circuit
from analysis.eap import ScoreResult
from analysis.graph import GraphSpec, build_graph

SPECS = [GraphSpec(3, 4, True), GraphSpec(3, 4, False), GraphSpec(3, 4, False, 2)]


def plain_select(names, scores, method, value, absolute, n_graph):
    key = [abs(s) if absolute else s for s in scores]
    if method in ("top_n", "top_frac"):
        n = int(value) if method == "top_n" else min(int(value * n_graph), len(names))
        order = sorted(range(len(names)), key=lambda i: -key[i])
        return {names[i] for i in order[:n]}
    if method == "threshold":
        return {n for n, k in zip(names, key) if k >= value}
    keys = sorted(key)
    pos = value / 100 * (len(keys) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(keys) - 1)
    cut = keys[lo] + (keys[hi] - keys[lo]) * (pos - lo)
    return {n for n, k in zip(names, key) if k >= cut}


def result(spec, seed, ties):
    g = build_graph(spec)
    torch.manual_seed(seed)
    dense = torch.randn(g.n_src, g.n_dst, dtype=torch.float64)
    if ties:
        dense = (dense * 2).round() / 2  # many equal |scores|
    dense[~g.mask] = 0
    return ScoreResult(dense, g.mask.clone(), g)


@pytest.mark.parametrize("spec", SPECS, ids=str)
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("absolute", [True, False])
def test_selection_equals_plain_rules(spec, ties, absolute):
    res = result(spec, 1, ties)
    full = res.to_dict()
    partial = dict(list(full.items())[::3])
    for scores in (res, full, partial):
        d = scores.to_dict() if isinstance(scores, ScoreResult) else scores
        names = [e.name for e in res.graph.edges if e.name in d]
        vals = [d[n] for n in names]
        for method, value in (("top_n", 25), ("top_frac", 0.05), ("threshold", 1.0), ("percentile", 90)):
            c = select_circuit(scores, spec, method, value, prune=False, absolute=absolute)
            want = plain_select(names, vals, method, value, absolute, len(res.graph.edges))
            assert set(c.edges) == want, (method, type(scores).__name__)
            assert list(c.edges) == [n for n in names if n in want]  # graph order
            assert all(c.edges[n] == d[n] for n in c.edges)
            pruned = select_circuit(scores, spec, method, value, absolute=absolute)
            assert dict(pruned.edges) == dict(prune_circuit(c).edges)


def test_score_result_table_is_the_dict_table():
    res = result(SPECS[0], 2, False)
    a, b = score_table(res), score_table(res.to_dict(), res.graph.spec)
    assert (a.names, a.scores, a.level) == (b.names, b.scores, b.level)
    assert a.ranked() == b.ranked()
