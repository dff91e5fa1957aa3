"""The scoring engine against an independent naive implementation, and its invariances.

The naive reference (tests/naive.py) re-implements the tiny GPT-NeoX / GPT-2 forward node by node from
the HF weights: every destination input (each head's q, k and v separately, each MLP, the logits) is built explicitly
as the sum of its upstream node outputs plus ``eps[src, dst] * (corrupted - clean)`` for a scalar
``eps`` per edge; autograd of the metric w.r.t. ``eps`` at 0 is the textbook EAP gradient of every
edge. It runs one example at a time (no batching, no padding) and shares no code with the engine
(it uses neither analysis.adapter, analysis.eap nor analysis.metrics).
"""

from __future__ import annotations

import pytest
import torch

from analysis.datasets import PromptPair
from analysis.eap import score
from analysis.graph import build_graph
from analysis.models import load_model
from analysis.tiny import build_tiny_model
from naive import Naive

torch.set_num_threads(2)

PFX = "Calculate the result of the following arithmetic expression and provide only the final answer:"


def make_pairs():
    rows = [(41, 29), (5, 3), (12, 7), (50, 1), (9, 9), (60, 50)]
    pairs = [PromptPair(f"{PFX} {a} + {b} =", f"{PFX} {a} - {b} =", str(a + b), str(a - b)) for a, b in rows]
    # prompts of other lengths, so batches are padded
    pairs.append(PromptPair("Derive the following sequence: 1, 2, 3,", "Derive the following sequence: 1, 2, 5,", "4", "6"))
    pairs.append(PromptPair("LCM(4, 6) =", "LCM(3, 5) =", "12", "15"))
    return pairs


@pytest.fixture(scope="module", params=["gpt_neox", "gpt2"])
def adapter(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    build_tiny_model(d, arch=request.param, n_layers=2, n_heads=4, d_model=32, seed=3, max_number=120,
                     init_std=0.3)
    return load_model(d, dtype="float64")


# ----------------------------------------------------------------------------- naive reference
def naive_metric(name, logits, clean_logits, label, corrupted_label):
    if name == "kl":
        logp = clean_logits.log_softmax(-1)
        logq = logits.log_softmax(-1)
        return (logp.exp() * (logp - logq)).sum() / logits.shape[-1]
    return logits[label] - logits[corrupted_label]


def naive_scores(adapter, pairs, method, metric="kl", steps=1, rule="right"):
    """Dense (n_src, n_dst) scores, one example at a time, via autograd on per-edge eps."""
    nv = Naive(adapter.model)
    tok = adapter.tokenizer
    bos = tok.bos_token_id
    total = torch.zeros(len(nv.sources), len(nv.dkeys), dtype=torch.float64)
    if method == "eap":
        alphas = [1.0]
    elif method == "clean-corrupted":
        alphas = [1.0, 0.0]
    else:
        ks = range(1, steps + 1) if rule == "right" else range(steps)
        alphas = [k / steps for k in ks]
    for p in pairs:
        ids_c = torch.tensor([bos] + tok(p.clean, add_special_tokens=False)["input_ids"])
        ids_k = torch.tensor([bos] + tok(p.corrupted, add_special_tokens=False)["input_ids"])
        lab = tok(p.label, add_special_tokens=False)["input_ids"][0]
        clab = tok(p.corrupted_label, add_special_tokens=False)["input_ids"][0]
        with torch.no_grad():
            e_c, e_k = nv.embed(ids_c), nv.embed(ids_k)
            clean_logits, outs_c = nv.forward(ids_c, e_c)
            _, outs_k = nv.forward(ids_c, e_k)  # corrupted tokens == corrupted embedding
        diff = [k - c for k, c in zip(outs_k, outs_c)]
        if method == "eap-ig-activations":
            groups = [[0]]
            for l in range(nv.L):
                r = 1 + l * (nv.H + 1)
                groups += [list(range(r, r + nv.H)), [r + nv.H]]
        else:
            groups = [list(range(len(nv.sources)))]
        for rows in groups:
            for a in alphas:
                eps = torch.zeros_like(total, requires_grad=True)
                if method == "eap-ig-activations":
                    override = {s: a * outs_c[s] + (1 - a) * outs_k[s] for s in rows}
                    logits, _ = nv.forward(ids_c, e_c, eps, diff, override=override)
                else:
                    emb = (1 - a) * e_k + a * e_c
                    logits, _ = nv.forward(ids_c, emb, eps, diff)
                val = naive_metric(metric, logits, clean_logits, lab, clab)
                (g,) = torch.autograd.grad(val, eps)
                total[rows] += g[rows]
    mask = build_graph(adapter.spec).mask
    total[~mask] = 0
    return total / (len(pairs) * len(alphas))


def rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max())


# ----------------------------------------------------------------------------- tests
def test_naive_reference_matches_hf(adapter):
    nv = Naive(adapter.model)
    ids = torch.tensor([0] + adapter.tokenizer(f"{PFX} 3 + 4 =", add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        ours, _ = nv.forward(ids, nv.embed(ids))
        hf = adapter.model(input_ids=ids[None]).logits[0, -1]
    assert float((ours - hf).abs().max()) < 1e-10


@pytest.mark.parametrize("method,metric,steps,rule", [
    ("eap-ig-inputs", "kl", 3, "right"),
    ("eap-ig-inputs", "kl", 2, "left"),
    ("eap-ig-inputs", "logit-diff", 2, "right"),
    ("eap", "logit-diff", None, "right"),
    ("clean-corrupted", "kl", None, "right"),
    ("eap-ig-activations", "kl", 2, "right"),
])
def test_engine_matches_naive(adapter, method, metric, steps, rule):
    pairs = make_pairs()[:3] + make_pairs()[6:]  # mixed lengths: padded batches
    graph = build_graph(adapter.spec)
    ours = score(adapter, graph, pairs, method=method, metric=metric, steps=steps, ig_rule=rule, batch_size=3)
    ref = naive_scores(adapter, pairs, method, metric, steps or 1, rule)
    assert ref.abs().max() > 0
    assert rel_err(ours.dense, ref) < 1e-5
    assert ours.parity is not None and ours.parity < 1e-9


def test_ig_one_step_and_eap(adapter):
    pairs = make_pairs()
    g = build_graph(adapter.spec)
    eap = score(adapter, g, pairs, method="eap", metric="logit-diff").dense
    right1 = score(adapter, g, pairs, method="eap-ig-inputs", metric="logit-diff", steps=1, ig_rule="right").dense
    left1 = score(adapter, g, pairs, method="eap-ig-inputs", metric="logit-diff", steps=1, ig_rule="left").dense
    cc = score(adapter, g, pairs, method="clean-corrupted", metric="logit-diff").dense
    # right rule, m = 1: the clean point = EAP.  left rule, m = 1: the corrupted point.
    assert torch.allclose(right1, eap, rtol=0, atol=1e-12 * float(eap.abs().max()))
    assert rel_err(left1, 2 * cc - eap) < 1e-9
    assert rel_err(left1, eap) > 1e-3  # the two end points really differ


def test_scores_converge_with_steps(adapter):
    pairs = make_pairs()[:3]
    g = build_graph(adapter.spec)
    ref = score(adapter, g, pairs, method="eap-ig-inputs", steps=64, parity=False).dense
    errs = [rel_err(score(adapter, g, pairs, method="eap-ig-inputs", steps=m, parity=False).dense, ref)
            for m in (1, 2, 4, 8, 16)]
    assert all(b < a for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] < 0.25 * errs[0]


def test_batch_size_and_padding_do_not_change_scores(adapter):
    pairs = make_pairs()
    g = build_graph(adapter.spec)
    runs = [score(adapter, g, pairs, method="eap-ig-inputs", steps=2, batch_size=b, parity=False).dense
            for b in (1, 3, 8)]
    for r in runs[1:]:
        assert rel_err(r, runs[0]) < 1e-10
    # a padded batch (mixed lengths) == the mean of unpadded single-example runs
    singles = torch.stack([score(adapter, g, [p], method="eap-ig-inputs", steps=2, parity=False).dense
                           for p in pairs]).mean(0)
    assert rel_err(runs[2], singles) < 1e-10


def test_deterministic_signed_and_masked(adapter):
    pairs = make_pairs()[:4]
    g = build_graph(adapter.spec)
    a = score(adapter, g, pairs, method="eap-ig-inputs", steps=2, batch_size=2)
    b = score(adapter, g, pairs, method="eap-ig-inputs", steps=2, batch_size=2)
    assert torch.equal(a.dense, b.dense)
    real = a.dense[g.mask]
    assert (real > 0).any() and (real < 0).any()
    assert (a.dense[~g.mask] == 0).all()
    d = a.to_dict()
    assert len(d) == len(g.edges) and set(d) == set(g.edge_index)


def test_float32_close_to_float64(adapter, tmp_path):
    pairs = make_pairs()[:3]
    g = build_graph(adapter.spec)
    ref = score(adapter, g, pairs, method="eap-ig-inputs", steps=2, metric="logit-diff").dense
    adapter.model.to(torch.float32)
    try:
        from analysis.adapter import ModelAdapter

        a32 = ModelAdapter(adapter.model, adapter.tokenizer)
        s32 = score(a32, g, pairs, method="eap-ig-inputs", steps=2, metric="logit-diff").dense
    finally:
        adapter.model.to(torch.float64)
        adapter._w_qkv.clear()
        adapter._w_o.clear()
    assert rel_err(s32, ref) < 1e-3
