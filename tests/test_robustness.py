"""`circuitshift robustness` on a tiny model: perturbation levels, disjoint splits and the
resampling-noise baseline are scored, stored as runs, and read back by the report."""

from __future__ import annotations

import random

import pytest

from conftest import run_cli
from analysis.datasets import PromptPair, write_dataset
from analysis.robustness import bootstrap_samples, disjoint_splits, level_splits
from analysis.tiny import build_tiny_model
from analysis.errors import UserError
from ingest.jobs.report import gather
from queries import exploration as X
from queries.api import CircuitDefinition, Store

PFX = "Calculate:"


def pairs(rng, n):
    out = []
    for _ in range(n):
        a, b = rng.randrange(1, 50), rng.randrange(1, 50)
        out.append(PromptPair(f"{PFX} {a} + {b} =", f"{PFX} {a} - {b} =", str(a + b), str(a - b)))
    return out


def test_split_helpers():
    assert level_splits(["circuit", "perturb_20", "perturb_10", "split_0"]) == \
        {0: "circuit", 10: "perturb_10", 20: "perturb_20"}
    assert disjoint_splits(["split_1", "split_0", "perturb_10"]) == {0: "split_0", 1: "split_1"}
    s = bootstrap_samples(list(range(10)), 3, seed=1)
    assert len(s) == 3 and all(len(x) == 10 for x in s) and s == bootstrap_samples(list(range(10)), 3, seed=1)
    with pytest.raises(UserError):
        bootstrap_samples([1], 1)


def test_robustness_cli_stores_levels_splits_and_noise(db, cli_env, tmp_path):
    driver, database = db
    model = tmp_path / "m"
    build_tiny_model(model, arch="gpt_neox", n_layers=2, n_heads=2, d_model=16, seed=0, max_number=120,
                     init_std=0.5)
    rng = random.Random(0)
    circuit = pairs(rng, 6)
    splits = {"finetune": pairs(rng, 4), "circuit": circuit, "perturb_50": circuit[:3] + pairs(rng, 3),
              "split_0": pairs(rng, 4), "split_1": pairs(rng, 4)}
    data = tmp_path / "data"
    write_dataset(data, splits, {"task": "toy"})
    args = ["robustness", "--model", f"finetuned={model}", "--model", f"random={model}", "--data", str(data),
            "--steps", "1", "--batch-size", "6", "--top-frac", "0.3", "--run-prefix", "rob",
            "--of", "ft"]
    proc = run_cli(args, env=cli_env)
    assert proc.returncode == 0, proc.stderr
    store = Store(driver, database)
    runs = {r["run"]: r for r in store.read("MATCH (r:Run) OPTIONAL MATCH (r)-[:HAS_CHECKPOINT]->(c) "
                                            "WITH r, c ORDER BY c.step RETURN r.id AS run, "
                                            "r.analysis AS analysis, collect(c.step) AS steps")}
    assert runs["rob-finetuned"]["steps"] == [0, 50] and runs["rob-finetuned"]["analysis"] == "robustness"
    assert runs["rob-random-splits"]["steps"] == [0, 1] and runs["rob-random-splits"]["analysis"] == "splits"
    j = store.jaccard("rob-finetuned:0", "rob-finetuned:50", CircuitDefinition())["edge_jaccard"]
    assert f"edge Jaccard {j:.3f}" in proc.stdout
    # The noise baseline of a checkpoint of run `rob-finetuned` itself (any stored run works).
    proc = run_cli(["robustness", "--model", f"finetuned={model}", "--data", str(data), "--no-levels",
                    "--no-splits", "--noise-of", "rob-finetuned:0", "--samples", "3", "--steps", "1",
                    "--batch-size", "6", "--top-frac", "0.3"], env=cli_env)
    assert proc.returncode == 0, proc.stderr
    noise = X.churn_against_noise(store, "rob-finetuned", CircuitDefinition())
    assert noise["noise_runs"] == ["rob-finetuned~noise"] and noise["noise_pairs"] == 2
    real = store.churn("rob-finetuned~noise", CircuitDefinition())["transitions"]
    assert noise["noise"]["edges"]["values"] == [t["edges_changed"] for t in real]
    assert "noise edge churn between resamples" in proc.stdout
    data_ = gather(store, "rob-finetuned", CircuitDefinition())
    assert data_["noise"]["noise_pairs"] == 2
    bad = run_cli(["robustness", "--model", f"x={model}", "--data", str(tmp_path)], env=cli_env)
    assert bad.returncode == 2 and bad.stderr.startswith("error:")
