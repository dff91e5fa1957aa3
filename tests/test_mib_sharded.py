"""MIB's curve sharded over 2 real OS processes (torch.distributed, gloo on CPU), as `ingest run --mib`
computes it under torchrun: `analysis.mib.mib_curve` in a process group evaluates each rank's own
batches only (round robin, an uneven split) and all-reduces the sums, and every rank's curve, CPR and
CMD equal the single-process ones within 1e-6; `analysis.checkpoint.score_checkpoint` (what each
checkpoint of `ingest run` calls) stores the same CPR / CMD under 2 processes as under one."""

from __future__ import annotations

import pickle

import pytest
import torch.distributed as dist

from analysis.datasets import PromptPair
from analysis.eap import score
from analysis.graph import build_graph
from analysis.models import load_model
from analysis.tiny import build_tiny_model
from gloo import join_gloo, spawn_ranks

PFX = "Calculate the result of the following arithmetic expression and provide only the final answer:"
ROWS = [(41, 29), (5, 3), (12, 7), (50, 1), (60, 50), (33, 11), (9, 4)]  # 7 pairs, batch 2: 4 batches
BATCH = 2
FRACTIONS = (0.01, 0.05, 0.1, 0.2, 0.5, 1.0)


def pairs():
    return [PromptPair(f"{PFX} {a} + {b} =", f"{PFX} {a} - {b} =", str(a + b), str(a - b)) for a, b in ROWS]


def _scores(adapter):
    return score(adapter, build_graph(adapter.spec), pairs(), method="eap-ig-inputs", metric="kl", steps=2,
                 batch_size=BATCH)


def _worker(rank: int, world: int, port: int, model_dir: str, out: str) -> None:
    join_gloo(rank, world, port)
    try:
        import analysis.distributed as distributed
        from analysis.checkpoint import ScoringConfig, score_checkpoint
        from analysis.mib import mib_curve

        seen = []  # the pairs each evaluation on this rank got: its shard, not the whole split
        plain = distributed.evaluate_many

        def spy(adapter, circuits, ps, *args, **kwargs):
            seen.append((len(circuits), [p.clean for p in ps]))
            return plain(adapter, circuits, ps, *args, **kwargs)

        distributed.evaluate_many = spy
        adapter = load_model(model_dir, dtype="float64")
        curves = {m: mib_curve(adapter, _scores(adapter), pairs(), m, BATCH, FRACTIONS)
                  for m in ("kl", "logit-diff")}
        cfg = ScoringConfig(steps=2, batch_size=BATCH, top_n=30, mib=True)
        ckpt = score_checkpoint(adapter.model, adapter.tokenizer, pairs(), cfg)
        with open(f"{out}.{rank}", "wb") as f:
            pickle.dump((curves, ckpt.metrics, ckpt.settings["mib"], seen), f)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("mib_sharded")
    build_tiny_model(d, arch="gpt_neox", n_layers=2, n_heads=4, d_model=32, seed=11, max_number=120, init_std=0.3)
    return d


def test_two_gloo_processes_give_the_one_process_curve(model_dir, tmp_path):
    from analysis.checkpoint import ScoringConfig, score_checkpoint
    from analysis.distributed import Shard
    from analysis.mib import mib_curve

    out = str(tmp_path / "result")
    ranks = spawn_ranks(_worker, 2, str(model_dir), out)
    adapter = load_model(model_dir, dtype="float64")
    single = {m: mib_curve(adapter, _scores(adapter), pairs(), m, BATCH, FRACTIONS) for m in ("kl", "logit-diff")}
    ckpt = score_checkpoint(adapter.model, adapter.tokenizer, pairs(),
                            ScoringConfig(steps=2, batch_size=BATCH, top_n=30, mib=True))
    for rank, (curves, metrics, mib_settings, seen) in enumerate(ranks):
        for m, one in single.items():
            got = curves[m]
            assert got.fractions == one.fractions and got.n_edges == one.n_edges and got.metric == m
            assert len({round(x, 6) for x in one.faithfulness}) > 3  # a curve, not a constant
            for a, b in zip(got.faithfulness, one.faithfulness):
                assert abs(a - b) <= 1e-6 * max(1.0, abs(b))
            assert got.cpr == pytest.approx(one.cpr, abs=1e-6) and got.cmd == pytest.approx(one.cmd, abs=1e-6)
        for key in ("cpr", "cmd"):  # what ingest run stores per checkpoint
            assert metrics[key] == pytest.approx(ckpt.metrics[key], abs=1e-6)
        assert metrics["mib_faithfulness"] == pytest.approx(ckpt.metrics["mib_faithfulness"], abs=1e-6)
        assert mib_settings == ckpt.settings["mib"]
        # every MIB evaluation (all fractions at once) saw this rank's whole batches only
        mine = [p.clean for i, p in enumerate(pairs()) if i in Shard(rank, 2).indices(len(ROWS), BATCH)]
        curve_evals = [ps for n_circuits, ps in seen if n_circuits > 1]
        assert len(curve_evals) == 3 and all(ps == mine for ps in curve_evals)
