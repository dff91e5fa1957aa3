"""``compat="hannamw"`` against scores hannamw/EAP-IG 795f560 itself produced, and proof that nothing
changes without it.

The reference scores in tests/data/hannamw/ were made by benchmarks/make_reference_scores.py (run in
the reference's own virtualenv, TransformerLens 3.9.0) on a seeded tiny GPT-NeoX that this module
rebuilds (the stored weights hash proves it is the same model), 8 prompt pairs in batches of 3 (the
last one partial), m = 3, float64, KL and logit-diff as batch means.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from analysis.datasets import PromptPair
from analysis.eap import score
from analysis.errors import UserError
from analysis.graph import build_graph
from analysis.models import load_model
from analysis.provenance import weights_sha256
from analysis.tiny import build_tiny_model

torch.set_num_threads(2)

DATA = Path(__file__).parent / "data" / "hannamw"
METHODS = ("eap", "eap-ig-inputs", "clean-corrupted", "eap-ig-activations")
DOCS = {m: json.loads((DATA / f"{m}.json").read_text()) for m in METHODS}
CASES = [(m, metric) for m in METHODS for metric in DOCS[m]["scores"]]
RTOL = 1e-5  # of the largest |score|, scale 1


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    recipe = {k: v for k, v in DOCS["eap"]["model"].items() if k != "weights_sha256"}
    return build_tiny_model(tmp_path_factory.mktemp("hannamw"), **recipe)


@pytest.fixture(scope="module")
def adapter(model_dir):
    a = load_model(model_dir, dtype="float64")
    assert weights_sha256(a.model) == DOCS["eap"]["model"]["weights_sha256"], (
        "the rebuilt tiny model is not the one the reference scored: rerun benchmarks/make_reference_scores.py")
    return a


@pytest.fixture(scope="module")
def graph(adapter):
    return build_graph(adapter.spec)


PAIRS = [PromptPair(*row) for row in DOCS["eap"]["pairs"]]


def rel_err(ours: dict, ref: dict) -> float:
    a = torch.tensor([ours[k] for k in ref], dtype=torch.float64)
    b = torch.tensor(list(ref.values()), dtype=torch.float64)
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("method,metric", CASES)
def test_equals_reference_scores(adapter, graph, method, metric):
    doc = DOCS[method]
    ref = doc["scores"][metric]
    assert set(ref) == {e.name for e in graph.edges}
    assert max(abs(v) for v in ref.values()) > 1e-7  # not a degenerate (all-zero) reference
    res = score(adapter, graph, PAIRS, method=method, metric=metric, steps=doc["steps"],
                batch_size=doc["batch_size"], compat="hannamw")
    err = rel_err(res.to_dict(), ref)
    print(f"{method} {metric}: max |ours - reference| / max |reference| = {err:.1e}")
    assert err <= RTOL
    assert res.settings["compat"] == "hannamw"


def _dense(adapter, graph, pairs, **kw):
    return score(adapter, graph, pairs, steps=3, parity=False, **kw).dense


@pytest.mark.parametrize("method", ["eap", "eap-ig-inputs", "clean-corrupted"])
def test_full_batches_give_ours_over_batch_size(adapter, graph, method):
    """On full batches of 4 the reference's batch mean is exactly our per-example score / 4."""
    kw = dict(method=method, metric="logit-diff", batch_size=4, ig_rule="left")
    ours = _dense(adapter, graph, PAIRS, **kw)
    compat = _dense(adapter, graph, PAIRS, compat="hannamw", **kw)
    assert torch.equal(compat * 4, ours)


def test_partial_last_batch_weighs_more(adapter, graph):
    """hannamw = (1/N) sum over batches of our score of that batch alone: batches of 3, 3, 2."""
    kw = dict(method="clean-corrupted", metric="logit-diff")
    compat = _dense(adapter, graph, PAIRS, compat="hannamw", batch_size=3, **kw)
    per_batch = sum(_dense(adapter, graph, PAIRS[i:i + 3], batch_size=3, **kw) for i in range(0, len(PAIRS), 3))
    torch.testing.assert_close(compat, per_batch / len(PAIRS), rtol=1e-12, atol=0)


def test_compat_implies_the_reference_ig_rules(adapter, graph):
    for method, rule in (("eap-ig-inputs", "left"), ("eap-ig-activations", "right")):
        a = score(adapter, graph, PAIRS[:3], method=method, steps=2, batch_size=3, compat="hannamw", ig_rule="left")
        b = score(adapter, graph, PAIRS[:3], method=method, steps=2, batch_size=3, compat="hannamw", ig_rule="right")
        assert torch.equal(a.dense, b.dense) and a.settings["ig_rule"] == rule


def test_without_compat_nothing_changes(adapter, graph):
    """No flag is the default; the IG-activations aggregation is ours (each group's own passes)."""
    for method in METHODS:
        default = score(adapter, graph, PAIRS, method=method, steps=3, batch_size=3, parity=False)
        explicit = score(adapter, graph, PAIRS, method=method, steps=3, batch_size=3, parity=False, compat=None)
        assert torch.equal(default.dense, explicit.dense)
        assert default.settings["compat"] is None and default.settings["backend"] == "native"
    ours = _dense(adapter, graph, PAIRS[:4], method="eap-ig-activations", metric="logit-diff", batch_size=4)
    ref = _dense(adapter, graph, PAIRS[:4], method="eap-ig-activations", metric="logit-diff", batch_size=4,
                 compat="hannamw")
    assert not torch.allclose(ref * 4, ours, rtol=1e-3)  # a different aggregation, not only a scale


def test_bad_compat_is_a_one_line_error(adapter, graph):
    from analysis.checkpoint import ScoringConfig

    with pytest.raises(UserError, match="unknown compat 'tl'; the only one is hannamw"):
        score(adapter, graph, PAIRS, compat="tl")
    with pytest.raises(UserError, match="unknown compat"):
        ScoringConfig(compat="hanna")
    assert ScoringConfig(compat="hannamw").record()["compat"] == "hannamw"
    assert "compat" not in ScoringConfig().record()  # run hashes without compat are unchanged


def _cli(argv, capsys):
    from ingest.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    out = capsys.readouterr()
    return exc.value.code, out.err


def test_cli_compat(model_dir, tmp_path, capsys):
    data = tmp_path / "d.csv"
    with open(data, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(("clean", "corrupted", "label", "corrupted_label"))
        w.writerows(DOCS["eap"]["pairs"])
    base = ["score", "--model", str(model_dir), "--data", str(data), "--dtype", "float64", "--quiet",
            "--batch-size", "3", "--method", "eap-ig-inputs", "--steps", "3"]
    code, err = _cli(base + ["--out", str(tmp_path / "o.json"), "--compat", "hannamw"], capsys)
    assert code == 0, err
    doc = json.loads((tmp_path / "o.json").read_text())
    assert doc["provenance"]["settings"]["compat"] == "hannamw" and doc["provenance"]["settings"]["ig_rule"] == "left"
    assert rel_err(doc["scores"], DOCS["eap-ig-inputs"]["scores"]["kl"]) <= RTOL
    code, err = _cli(base + ["--out", str(tmp_path / "x.json"), "--compat", "hannamw", "--ig-rule", "right"], capsys)
    assert code == 2 and "uses the reference's IG rule for eap-ig-inputs (left)" in err and err.count("\n") == 1
    code, err = _cli(base + ["--out", str(tmp_path / "x.json"), "--compat", "paper"], capsys)
    assert code == 2 and "unknown compat 'paper'" in err and err.count("\n") == 1
