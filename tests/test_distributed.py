"""Sharded scoring and evaluation over 2 real OS processes (torch.distributed, gloo on CPU): the
all-reduced scores and faithfulness equal the single-process run's, for an uneven split (the last
batch short, ranks holding different numbers of examples), under the default and hannamw settings."""

from __future__ import annotations

import pickle

import pytest
import torch.distributed as dist

from analysis.circuit import select_circuit
from analysis.datasets import PromptPair
from analysis.distributed import Shard, current_shard, sharded_evaluate_many, sharded_score
from analysis.eap import score
from analysis.evaluate import evaluate_many
from analysis.graph import build_graph
from analysis.models import load_model
from analysis.tiny import build_tiny_model
from gloo import join_gloo, spawn_ranks

PFX = "Calculate the result of the following arithmetic expression and provide only the final answer:"
ROWS = [(41, 29), (5, 3), (12, 7), (50, 1), (60, 50), (33, 11), (9, 4)]  # 7 pairs, batch 2: 4 batches
BATCH = 2
CASES = [dict(method="eap-ig-inputs", metric="kl", steps=3),
         dict(method="eap-ig-activations", metric="logit-diff", steps=2, compat="hannamw")]


def pairs():
    return [PromptPair(f"{PFX} {a} + {b} =", f"{PFX} {a} - {b} =", str(a + b), str(a - b)) for a, b in ROWS]


def _worker(rank: int, world: int, port: int, model_dir: str, out: str) -> None:
    join_gloo(rank, world, port)
    try:
        assert current_shard() == Shard(rank, world)
        adapter = load_model(model_dir, dtype="float64")
        graph = build_graph(adapter.spec)
        results = []
        for case in CASES:
            r = sharded_score(adapter, graph, pairs(), batch_size=BATCH, **case)
            circuit = select_circuit(r, adapter.spec, "top_n", 40)
            ev = sharded_evaluate_many(adapter, [circuit], pairs(), ("kl", "logit-diff"), BATCH)[0]
            results.append((r.dense, r.settings, ev))
        with open(f"{out}.{rank}", "wb") as f:
            pickle.dump(results, f)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("dist")
    build_tiny_model(d, arch="gpt_neox", n_layers=2, n_heads=4, d_model=32, seed=11, max_number=120, init_std=0.3)
    return d


def test_shards_are_whole_batches_round_robin():
    assert Shard(0, 2).indices(7, 2) == [0, 1, 4, 5]
    assert Shard(1, 2).indices(7, 2) == [2, 3, 6]
    assert Shard(2, 3).indices(4, 2) == []  # more ranks than batches: an empty shard
    assert sorted(Shard(0, 3).indices(11, 3) + Shard(1, 3).indices(11, 3) + Shard(2, 3).indices(11, 3)) \
        == list(range(11))
    assert current_shard() == Shard(0, 1)  # no process group: the only process


def test_two_gloo_processes_equal_one(model_dir, tmp_path):
    out = str(tmp_path / "result")
    ranks = spawn_ranks(_worker, 2, str(model_dir), out)
    adapter = load_model(model_dir, dtype="float64")
    graph = build_graph(adapter.spec)
    for i, case in enumerate(CASES):
        single = score(adapter, graph, pairs(), batch_size=BATCH, **case)
        circuit = select_circuit(single, adapter.spec, "top_n", 40)
        ev1 = evaluate_many(adapter, [circuit], pairs(), ("kl", "logit-diff"), BATCH)[0]
        scale = single.dense.abs().max()
        for dense, settings, ev in (ranks[0][i], ranks[1][i]):  # every rank holds the global result
            assert (dense - single.dense).abs().max() <= 1e-6 * scale
            assert settings["n_examples"] == len(ROWS) and settings["shards"] == 2
            assert ev.n_examples == len(ROWS) and ev.n_edges == ev1.n_edges
            assert ev.model_accuracy == pytest.approx(ev1.model_accuracy)
            assert ev.circuit_accuracy == pytest.approx(ev1.circuit_accuracy)
            for m in ("kl", "logit-diff"):
                assert ev.by_metric[m].f_model == pytest.approx(ev1.by_metric[m].f_model, rel=1e-9)
                assert ev.by_metric[m].f_circuit == pytest.approx(ev1.by_metric[m].f_circuit, rel=1e-9)
                assert ev.by_metric[m].percent == pytest.approx(ev1.by_metric[m].percent, rel=1e-9)
