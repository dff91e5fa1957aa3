"""Pruning on stored edge keys (queries/prune.py) is the method's pruning (analysis.circuit.prune_circuit):
the same kept edges for random selections on sequential, parallel and grouped-query graphs."""

from __future__ import annotations

import random

import pytest

from analysis.circuit import prune_circuit, select_circuit
from analysis.graph import GraphSpec, build_graph
from queries.components import Architecture
from queries.prune import prune_keys


@pytest.mark.parametrize("shape", [(2, 2, True, None), (3, 2, False, None), (2, 4, False, 2), (3, 4, True, 1)])
def test_prune_keys_matches_prune_circuit(shape):
    spec, arch = GraphSpec(*shape), Architecture(*shape)
    names = [e.name for e in build_graph(spec).edges]
    rng = random.Random(sum(shape[:2]))
    differs = 0
    for trial in range(40):
        scores = {n: rng.gauss(0, 1) for n in names}
        n = rng.randint(1, len(names) // 2)
        raw = select_circuit(scores, spec, "top_n", n, prune=False)
        chosen = sorted(raw.edges, key=lambda e: -abs(scores[e]))
        kept = prune_keys(arch, [arch.key_of[e] for e in chosen])
        assert {chosen[i] for i in kept} == set(prune_circuit(raw).edges), (trial, n)
        differs += len(kept) < len(chosen)
    assert differs > 5  # the selections really had dead nodes to prune


def test_prune_keys_keeps_a_path_and_drops_a_dead_end():
    arch = Architecture(2, 1, True)
    path = [arch.key_of[n] for n in ("input->a0.h0<q>", "a0.h0->m1", "m1->logits")]
    assert prune_keys(arch, path) == [0, 1, 2]
    dead_end = path + [arch.key_of["input->m0"]]  # m0 has no child
    assert prune_keys(arch, dead_end) == [0, 1, 2]
    assert prune_keys(arch, path[:2]) == []  # m1 has no child, then a0 none
