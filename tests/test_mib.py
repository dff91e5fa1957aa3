"""MIB's CPR and CMD: the areas against numpy's trapezoid rule, the curve's anchors (the full graph is
the model, the empty one the corrupted run), every point equal to evaluating that circuit on its own,
and bad curves refused with one line."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from analysis.circuit import select_circuit
from analysis.datasets import PromptPair
from analysis.eap import score
from analysis.errors import UserError
from analysis.evaluate import evaluate
from analysis.graph import build_graph
from analysis.mib import MIB_FRACTIONS, areas, mib_curve, normalised
from analysis.models import load_model
from analysis.tiny import build_tiny_model

torch.set_num_threads(2)
PFX = "Calculate the result of the following arithmetic expression and provide only the final answer:"


def test_areas_match_numpy_trapezoid():
    rng = np.random.default_rng(0)
    f = rng.uniform(-0.2, 1.3, len(MIB_FRACTIONS))
    cpr, cmd = areas(MIB_FRACTIONS, list(f))
    x = np.array(MIB_FRACTIONS)
    assert cpr == pytest.approx(np.trapezoid(f, x), rel=1e-12)
    assert cmd == pytest.approx(np.trapezoid(np.abs(1 - f), x), rel=1e-12)
    cpr_log, _ = areas(MIB_FRACTIONS, list(f), log_scale=True)
    assert cpr_log == pytest.approx(np.trapezoid(f, np.log(x)), rel=1e-12)


def test_a_model_perfect_curve_has_cpr_one_minus_first_fraction_and_cmd_zero():
    cpr, cmd = areas(MIB_FRACTIONS, [1.0] * len(MIB_FRACTIONS))
    assert cpr == pytest.approx(1.0 - MIB_FRACTIONS[0])
    assert cmd == 0.0
    assert math.isnan(normalised(0.0, 1.0))


@pytest.mark.parametrize("fr, f, msg", [
    ((0.1,), [1.0], "at least two points"),
    ((0.1, 0.2), [1.0], "at least two points"),
    ((0.2, 0.1), [1.0, 1.0], "increasing"),
    ((0.0, 0.1), [1.0, 1.0], "positive"),
])
def test_bad_curves_are_refused(fr, f, msg):
    with pytest.raises(UserError, match=msg):
        areas(fr, f)


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    d = tmp_path_factory.mktemp("mib")
    build_tiny_model(d, arch="gpt_neox", n_layers=2, n_heads=4, d_model=32, seed=3, max_number=120, init_std=0.3)
    adapter = load_model(d, dtype="float64")
    rows = [(41, 29), (5, 3), (12, 7), (50, 1), (60, 50), (33, 11)]
    pairs = [PromptPair(f"{PFX} {a} + {b} =", f"{PFX} {a} - {b} =", str(a + b), str(a - b)) for a, b in rows]
    graph = build_graph(adapter.spec)
    result = score(adapter, graph, pairs, method="eap-ig-inputs", metric="logit-diff", steps=3, batch_size=4)
    return adapter, pairs, result, graph


def test_curve_anchors_and_points_equal_single_evaluations(scored):
    adapter, pairs, result, graph = scored
    fractions = (0.001, 0.05, 0.2, 1.0)
    out = mib_curve(adapter, result, pairs, metric="logit-diff", batch_size=4, fractions=fractions)
    n_total = len(graph.edges)
    assert out.fractions == fractions and out.metric == "logit-diff"
    assert out.n_edges[0] == 0 and out.faithfulness[0] == pytest.approx(0.0, abs=1e-9)  # int(0.001 E) = 0
    assert out.n_edges[-1] == n_total and out.faithfulness[-1] == pytest.approx(100.0, abs=1e-9)
    for p, n_kept, f in zip(fractions[1:-1], out.n_edges[1:-1], out.faithfulness[1:-1]):
        c = select_circuit(result, adapter.spec, "top_n", int(p * n_total))
        ev = evaluate(adapter, c, pairs, metric="logit-diff", batch_size=4)
        assert n_kept == ev.n_edges
        assert f == pytest.approx(100.0 * ev.f_circuit / ev.f_model, rel=1e-9)
    cpr, cmd = areas(fractions, [x / 100 for x in out.faithfulness])
    assert (out.cpr, out.cmd) == pytest.approx((cpr, cmd))
    assert out.to_dict()["faithfulness_percent"] == list(out.faithfulness)


def test_fractions_out_of_range_are_refused(scored):
    adapter, pairs, result, _ = scored
    with pytest.raises(UserError, match=r"\(0, 1\]"):
        mib_curve(adapter, result, pairs, fractions=(0.5, 1.5))
