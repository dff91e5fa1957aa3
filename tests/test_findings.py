"""`circuitshift experiment findings`: the statistics against hand-computed and independent values, and
the tiny preset end to end against the test server (page and stored findings consistent with the runs)."""

from __future__ import annotations

import dataclasses
import itertools
import math
import statistics

import pytest

from conftest import run_cli
from analysis import findings as F
from analysis.errors import UserError
from ingest.jobs.experiment import experiment_table
from ingest.jobs.findings import run_findings
from ingest.jobs.findings_setup import PRESETS, FindingsPreset, model_folder
from queries import findings as QF
from queries.api import CircuitDefinition, Store


# -- statistics --------------------------------------------------------------------------------------

def exact_bootstrap_quantiles(values, level=0.95):
    """Every resample of a small sample, equally likely: the exact bootstrap distribution of the mean."""
    means = sorted(sum(c) / len(c) for c in itertools.product(values, repeat=len(values)))
    n = len(means)
    return means[math.ceil((1 - level) / 2 * n) - 1], means[math.ceil((1 + level) / 2 * n) - 1]


def test_bootstrap_interval_matches_the_exact_bootstrap_distribution():
    values = [1.0, 2.0, 6.0]
    lo, hi = F.bootstrap_mean_ci(values, draws=20000, seed=3)
    exact_lo, exact_hi = exact_bootstrap_quantiles(values)  # 27 resamples: means on a 1/3 grid
    assert abs(lo - exact_lo) <= 1 / 3 + 1e-9 and abs(hi - exact_hi) <= 1 / 3 + 1e-9
    assert F.bootstrap_mean_ci([4.0, 4.0, 4.0]) == (4.0, 4.0)
    # n=2 of {0, 1}: means 0, .5, 1 with probabilities 1/4, 1/2, 1/4 -> the 2.5% and 97.5% points are 0 and 1
    assert F.bootstrap_mean_ci([0.0, 1.0], draws=4000) == (0.0, 1.0)
    assert F.bootstrap_mean_ci(values, seed=1) == F.bootstrap_mean_ci(values, seed=1)
    with pytest.raises(UserError):
        F.bootstrap_mean_ci([])


def test_measure_mean_sd_and_single_value():
    m = F.measure([10.0, 20.0, 30.0], "%", "seeds")
    assert m.value == 20.0 and m.sd == statistics.stdev([10, 20, 30]) == 10.0 and m.n == 3
    assert 10.0 <= m.low <= m.high <= 30.0 and m.unit == "%"
    one = F.measure([7.0])
    assert one.value == 7.0 and one.low is None and one.high is None and one.sd is None


def test_empirical_p_by_hand():
    assert F.empirical_p(5, [1, 5, 7, 2]) == pytest.approx(3 / 5)      # 5 and 7 >= 5, plus the observed
    assert F.empirical_p(100, [1, 2, 3]) == pytest.approx(1 / 4)       # never 0
    assert F.empirical_p(0, [0, 0]) == 1.0
    with pytest.raises(UserError):
        F.empirical_p(1, [])


def test_random_overlaps_have_the_hypergeometric_mean():
    n, k = 100, 20
    draws = F.random_overlaps(range(n), list(range(k)), k, draws=5000, seed=0)
    assert statistics.fmean(draws) == pytest.approx(k * k / n, abs=0.15)  # hypergeometric mean k*K/N = 4
    var = k * (k / n) * (1 - k / n) * (n - k) / (n - 1)                  # and variance 2.59
    assert statistics.variance(draws) == pytest.approx(var, rel=0.1)
    assert all(0 <= d <= k for d in draws)
    assert F.random_overlaps(range(10), list(range(10)), 10, 5) == [10] * 5  # the whole graph: all shared
    with pytest.raises(UserError):
        F.random_overlaps(range(5), [0], 6, 1)


def m(value, low, high):
    return F.Measure(value, low, high, n=3)


def test_verdict_rule_all_three_outcomes():
    assert F.judge("x", m(5, 1, 9), 0).outcome == F.REPRODUCES
    assert F.judge("x", m(-5, -9, -1), 0).outcome == F.DOES_NOT
    assert F.judge("x", m(0, 0, 0), 0).outcome == F.DOES_NOT          # a tie does not beat
    straddle = F.judge("x", m(1, -2, 4), 0)
    assert straddle.outcome == F.INCONCLUSIVE and "straddles" in straddle.reason
    single = F.judge("x", F.measure([95.0], "%"), 80)
    assert single.outcome == F.INCONCLUSIVE and "one value" in single.reason
    assert F.judge("x", m(0.1, 0.05, 0.2), 0.5, above=False).outcome == F.REPRODUCES  # a claim "below"
    assert F.judge("x", m(0.7, 0.6, 0.9), 0.5, above=False).outcome == F.DOES_NOT
    assert F.judge("x", m(1, -2, 4), 0, why_inconclusive="because").reason == "because"


def test_judge_p_and_combine():
    null = [0, 1, 2, 1, 0] * 40                                       # 200 draws
    assert F.judge_p("x", 10, null).outcome == F.REPRODUCES
    assert F.judge_p("x", 1, null).outcome == F.DOES_NOT
    few = F.judge_p("x", 10, [0] * 10)                                # 1/11 >= 0.05: p < 0.05 unreachable
    assert few.outcome == F.INCONCLUSIVE and "cannot" in few.reason
    v = {o: F.Verdict("c", m(1, 0, 2), 0, outcome=o) for o in (F.REPRODUCES, F.DOES_NOT, F.INCONCLUSIVE)}
    assert F.combine([v[F.REPRODUCES]] * 2) == F.REPRODUCES
    assert F.combine([v[F.REPRODUCES], v[F.INCONCLUSIVE]]) == F.INCONCLUSIVE
    assert F.combine([v[F.INCONCLUSIVE], v[F.DOES_NOT]]) == F.DOES_NOT
    assert F.combine([]) == F.INCONCLUSIVE


def test_change_rate_and_paired_differences_by_hand():
    assert F.change_rate([2, 4], 10) == pytest.approx(30.0)           # (2 + 4) / 2 / 10 x 100
    assert F.paired_differences({1: 50.0, 2: 60.0, 3: 1.0}, {1: 40.0, 2: 70.0}) == [10.0, -10.0]
    with pytest.raises(UserError):
        F.change_rate([], 10)


def test_preset_checks():
    with pytest.raises(UserError):
        FindingsPreset(name="bad", n_layers=2, ko3_top=2)
    with pytest.raises(UserError):
        FindingsPreset(name="bad", noise_samples=1)
    with pytest.raises(UserError):  # a real model is used as is: nothing to pre-train
        FindingsPreset(name="bad", model="smollm2", pretrain_steps=10)


def test_added_fields_leave_the_default_and_tiny_records_as_they_were():
    before = {"name", "n_layers", "n_heads", "d_model", "pretrain_steps", "count", "ko1_count", "finetune_steps",
              "finetune_lr", "checkpoints", "examples", "top_frac", "ig_steps", "noise_samples", "perturb_levels",
              "disjoint", "ko3_seeds", "ko3_steps", "ko3_lr", "ko3_base_accuracy", "ko3_top", "ko3_methods",
              "ko4_count", "ko4_draws", "ko4_k_fracs", "seed"}
    assert set(PRESETS["default"].record()) == before and set(PRESETS["tiny"].record()) == before
    rec = PRESETS["smollm2"].record()
    assert rec["model"] == "smollm2" and rec["separator"] == "" and rec["pretrain_steps"] == 0


def test_smollm2_preset_validates_and_its_model_resolves():
    from analysis.gguf import gguf_config
    from analysis.models import resolve_model_source

    p = PRESETS["smollm2"]
    source = resolve_model_source(p.model)
    assert source.gguf_file and source.gguf_path.is_file()
    cfg = gguf_config(source.gguf_path)  # metadata only: what the converted folder's config.json will say
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.hidden_size) == \
        ("llama", p.n_layers, p.n_heads, p.d_model)
    # the paper's share of critical layers (5 of 24 = 21%): 6 of 30 = 20%
    assert p.ko3_top / p.n_layers == pytest.approx(0.2) and p.ko3_seeds >= 3 and p.ig_steps == 5
    assert len(p.perturb_levels) >= 2 and p.disjoint >= 3  # KO1's Jaccards need 2+ values for an interval


def tiny_llama(folder):
    from analysis.pretrain import WORDS
    from analysis.tiny import build_tiny_model
    from analysis.tokenizer import build_word_tokenizer

    tok = build_word_tokenizer(folder, max_number=9, extra_words=WORDS)
    return build_tiny_model(folder, arch="llama", n_layers=4, n_heads=2, n_kv_heads=1, d_model=32, seed=0,
                            tokenizer=tok)


def test_model_folder_checks_the_preset_against_the_model(tmp_path):
    folder = tiny_llama(tmp_path / "llama")
    ok = FindingsPreset(name="t", model=str(folder), n_layers=4, n_heads=2, d_model=32, pretrain_steps=0, ko3_top=1)
    assert model_folder(ok) == folder
    with pytest.raises(UserError, match="layers, heads, d_model"):
        model_folder(dataclasses.replace(ok, n_heads=4))


def test_findings_on_a_given_llama_end_to_end(db, tmp_path):
    """The real-model path (a model used as is, not pre-trained here) on a tiny Llama: fine-tuned export,
    random model like it, page naming the model."""
    driver, database = db
    folder = tiny_llama(tmp_path / "llama")
    p = dataclasses.replace(PRESETS["tiny"], name="tiny-llama", model=str(folder), pretrain_steps=0)
    doc = run_findings(driver, database, p, "tl", tmp_path / "state", tmp_path / "page", echo=lambda *_: None)
    assert doc["model"] == str(folder) and doc["model_arch"] == {"name": "llama", "type": "llama"}
    assert [ko["key"] for ko in doc["observations"]] == ["KO1", "KO2", "KO3", "KO4"]
    md = (tmp_path / "page" / "findings.md").read_text()
    assert "the pretrained llama (llama, 4 layers, 2 heads, d_model 32" in md.splitlines()[2]
    stored = QF.read_findings(Store(driver, database), "tl")["doc"]
    assert stored["preset"]["model"] == str(folder) and stored["model_arch"]["type"] == "llama"
    assert (tmp_path / "state" / "findings" / "finetuned-tl" / "config.json").exists()
    ko1 = next(ko for ko in doc["observations"] if ko["key"] == "KO1")
    assert set(ko1["models"]) == {"pretrained", "finetuned", "random"}


# -- end to end --------------------------------------------------------------------------------------

def test_findings_tiny_end_to_end(db, cli_env, tmp_path):
    driver, database = db
    out = tmp_path / "page"
    proc = run_cli(["experiment", "findings", "--preset", "tiny", "--id", "tf", "--out", str(out)], env=cli_env,
                   timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for ko in ("KO1", "KO2", "KO3", "KO4"):
        assert f"{ko}: " in proc.stdout
    md = (out / "findings.md").read_text()
    assert "## Where the paper does not reproduce" in md and (out / "findings.html").exists()
    for fig in ("robustness", "ko2_churn_noise", "ko3_accuracy", "ko4_overlap"):
        assert (out / "figures" / f"{fig}.png").stat().st_size > 0 and f"figures/{fig}.png" in md

    again_out = tmp_path / "again"  # the page is drawn from the stored document alone
    proc = run_cli(["experiment", "findings", "--preset", "tiny", "--id", "tf", "--out", str(again_out),
                    "--page-only"], env=cli_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (again_out / "findings.md").read_text() == md

    store = Store(driver, database)
    stored = QF.read_findings(store, "tf")
    doc = stored["doc"]
    obs = {ko["key"]: ko for ko in doc["observations"]}
    assert list(obs) == ["KO1", "KO2", "KO3", "KO4"]
    for ko in obs.values():
        assert ko["verdict"] in (F.REPRODUCES, F.DOES_NOT, F.INCONCLUSIVE) and ko["subclaims"]
        assert ko["verdict"] == F.combine([F.Verdict(**{**v, "measure": F.Measure(**v["measure"])})
                                           for v in ko["subclaims"]])
        assert f"## {ko['key']}: {ko['title']} ({ko['verdict']})" in md
    # every run the findings name is stored, complete, and tagged per Key Observation
    used = stored["runs"]
    assert {u["ko"] for u in used} == set(obs)
    for u in used:
        assert store.read("MATCH (r:Run {id: $id})-[:HAS_CHECKPOINT]->(c) WHERE c.complete RETURN count(c) AS n",
                          id=u["run"])[0]["n"] >= 1, u
    assert stored["experiment"] == obs["KO3"]["experiment"]

    head = CircuitDefinition()
    ko2 = obs["KO2"]
    churn = store.churn(ko2["run"], head)["transitions"]
    assert [t["edges_changed"] for t in ko2["transitions"]] == [t["edges_changed"] for t in churn]
    assert [t["nodes_changed"] for t in ko2["transitions"]] == [t["nodes_changed"] for t in churn]
    assert sum(1 for u in used if u["ko"] == "KO2" and "noise" in u["role"]) == len(churn) + 1
    assert ko2["accuracy_last_%"] == QF.run_metrics(store, ko2["run"])[-1]["accuracy"]

    ko1 = obs["KO1"]
    assert ko1["perturbed_rows"] and all(st["perturbed"] > 0 for st in ko1["perturbed_rows"].values())
    for label, mod in ko1["models"].items():
        levels_run, splits_run = mod["runs"]
        faith = [r["faithfulness"] for r in QF.run_metrics(store, levels_run) if r["step"] == 0]
        faith += [r["faithfulness"] for r in QF.run_metrics(store, splits_run)]
        assert mod["faithfulness_values_%"] == faith
        for lv, j in mod["level_jaccard"].items():
            assert j == store.jaccard(f"{levels_run}:0", f"{levels_run}:{lv}", head)["edge_jaccard"]

    ko3 = obs["KO3"]
    runs = experiment_table(store, ko3["experiment"])["runs"]
    for label, by_seed in ko3["accuracy_by_seed_%"].items():
        assert by_seed == {str(r["seed"]): r["accuracy"] for r in runs if r["label"] == label}
    assert len(ko3["critical_layers"]) == doc["preset"]["ko3_top"]

    ko4 = obs["KO4"]
    ks = [r["k"] for r in ko4["overlaps"]]
    again = store.overlap(ko4["union"], ko4["circuits"]["compositional"], head, ks)["overlap"]
    assert [r["overlap"] for r in ko4["overlaps"]] == [r["overlap"] for r in again]
    assert ko4["graph_edges"] == len(QF.graph_head_pairs(store, ko4["circuits"]["compositional"]))
    for r in ko4["overlaps"]:
        assert r["p"] == F.empirical_p(r["overlap"], r["null"]) and len(r["null"]) == doc["preset"]["ko4_draws"]
