"""The scoring memory estimate against what the engine really allocates: its weight part is the model's
weights plus exactly the engine's per-layer copies (float32 and bfloat16 models, grouped-query and
fused q/k/v), its per-example parts cover the engine's buffers after a batch, and everything but the
weights scales with the chunk (what choose_chunk assumes). The estimate against measured peaks:
benchmarks/bench_memory.py."""

from __future__ import annotations

import pytest
import torch

from analysis.datasets import PromptPair
from analysis.eap import _score_batch
from analysis.eap_batch import BatchScorer
from analysis.eap_fused import Engine
from analysis.eap_memory import choose_chunk, estimate_memory
from analysis.graph import build_graph
from analysis.metrics import get_metric
from analysis.models import load_model
from analysis.tiny import build_tiny_model

torch.set_num_threads(2)
PFX = "Calculate the result of the following arithmetic expression and provide only the final answer:"
SHAPES = {"llama": dict(arch="llama", n_layers=3, n_heads=4, n_kv_heads=2, d_model=32, d_mlp=80),
          "gpt_neox": dict(arch="gpt_neox", n_layers=2, n_heads=4, d_model=32)}


def _bytes(ts) -> int:
    seen, total = set(), 0
    for t in ts:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


@pytest.fixture(scope="module", params=sorted(SHAPES))
def model_dir(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(f"mem_{request.param}")
    build_tiny_model(d, seed=2, max_number=120, **SHAPES[request.param])
    return d


def pairs():
    return [PromptPair(f"{PFX} {a} + {b} =", f"{PFX} {a} - {b} =", str(a + b), str(a - b))
            for a, b in [(41, 29), (5, 3), (12, 7)]]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_weights_are_the_models_plus_the_engines_copies(model_dir, dtype):
    adapter = load_model(model_dir, dtype=dtype)
    graph = build_graph(adapter.spec)
    eng = Engine(adapter, graph, torch.float32)
    assert eng.fused  # the path the estimate follows
    copies = [*eng.w_o.values(), *adapter._w_o.values(), *(p.W for p in eng.plans.values()), eng.w_flat]
    model = _bytes(adapter.model.parameters())
    est = estimate_memory(adapter, graph, 4, 20)
    assert est["weights"] == model + _bytes(copies)


def test_per_example_parts_cover_the_engines_buffers(model_dir):
    """After one scored batch (eap-ig-inputs, KL) the engine's reusable buffers (differences, q/k/v
    gradient sums, MLP / logits sums, the per-layer contraction buffer) all fit the estimate's
    activation-difference, gradient and contraction parts, and are most of them."""
    adapter = load_model(model_dir, dtype="float32")
    graph = build_graph(adapter.spec)
    enc = adapter.encode_pairs(pairs())
    batch = adapter.make_batch(enc, range(3))
    B, P = batch.clean.shape
    eng = Engine(adapter, graph, torch.float32)
    s = BatchScorer(adapter, graph, batch, get_metric("kl"), torch.float32, eng)
    try:
        _score_batch(s, "eap-ig-inputs", 2, "right")
        s.batch_scores()
    finally:  # a scorer that installs standing hooks removes them when closed (score() does so)
        getattr(s, "close", lambda: None)()
    buffers = _bytes(eng._bufs.values())
    est = estimate_memory(adapter, graph, B, P)
    covered = est["activation_differences"] + est["gradients"] + est["contraction"]
    assert buffers <= covered <= 3 * buffers


def test_everything_but_the_weights_scales_with_the_chunk(model_dir):
    adapter = load_model(model_dir, dtype="float32")
    graph = build_graph(adapter.spec)
    one, five = estimate_memory(adapter, graph, 1, 30), estimate_memory(adapter, graph, 5, 30)
    assert five["weights"] == one["weights"]
    for k in one:
        if k not in ("weights", "total"):
            assert five[k] == 5 * one[k] > 0
    assert choose_chunk(adapter, graph, 8, 30, five["total"]) == 5
    assert choose_chunk(adapter, graph, 8, 30, five["total"] - 1) == 4
