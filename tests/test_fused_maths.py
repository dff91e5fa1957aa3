"""The restructured q/k/v input-gradient maths of issue 19 (analysis.adapter.qkv_grad_plan,
norm_stats, qkv_input_grads_nomean) against the closed-form VJP the engine used before
(``qkv_input_grads``), on every native architecture in float64: equal for RMSNorm, and for LayerNorm
equal up to a constant along d_model per (head, position), i.e. equal against any d-centred vector
(the engine centres its activation differences). Also: the plan's offset makes a projection output
minus the offset equal to xhat W'^T, and the dense layout (plan.cols) covers each head once."""

from __future__ import annotations

import pytest
import torch

from analysis.models import load_model
from analysis.tiny import build_tiny_model

ARCHS = {"gpt_neox": {}, "gpt2": {}, "gpt_neo": {}, "opt": {}, "llama": {"n_kv_heads": 2}}


@pytest.fixture(scope="module", params=list(ARCHS))
def adapter(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    build_tiny_model(d, arch=request.param, n_layers=2, n_heads=4, d_model=32, seed=11, max_number=50,
                     init_std=0.3, **ARCHS[request.param])
    a = load_model(d, dtype="float64")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # non-zero biases and norm weights, so the offset and gamma folding matter
        for name, p in a.model.named_parameters():
            if name.endswith("bias") or "norm" in name or "ln" in name:
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
    return a


def test_nomean_grads_match_closed_form_vjp(adapter):
    a, l = adapter, 1
    plan = a.qkv_grad_plan(l, torch.float64)
    B, P, D = 3, 5, a.d_model
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, P, D, generator=g, dtype=torch.float64) * 2 + 0.5
    n_out = sum(p.n for p in a.qkv_projs(l)) * a.d_head
    gq = torch.randn(B, P, n_out, generator=g, dtype=torch.float64)
    ref = a.qkv_input_grads(l, gq, x, torch.float64).reshape(3 * a.n_heads, B * P, D)[plan.cols]
    got = a.qkv_input_grads_nomean(plan, gq, x)
    assert sorted(plan.cols.tolist()) == sorted(set(plan.cols.tolist()))
    if plan.layernorm:
        assert torch.allclose(got - got.mean(-1, keepdim=True), ref - ref.mean(-1, keepdim=True), atol=1e-12)
        assert float(ref.mean(-1).abs().max()) < 1e-12  # the true gradient has zero mean over d_model
    else:
        assert torch.allclose(got, ref, atol=1e-12)


def test_offset_turns_projection_output_into_xhat_w(adapter):
    a, l = adapter, 0
    plan = a.qkv_grad_plan(l, torch.float64)
    x = torch.randn(2, 4, a.d_model, dtype=torch.float64)
    with torch.no_grad():
        h = a.attn_ln(l)(x)
        out = torch.cat([m(h) for m in a.qkv_modules(l)], -1).reshape(8, -1)  # model layout (B*P, n*dh)
    xhat, _ = a.norm_stats(plan, x)
    want = xhat.reshape(8, -1) @ plan.W.reshape(plan.W.shape[0] * a.d_head, -1).T
    if plan.layernorm:
        assert torch.allclose(out - plan.offset.reshape(-1), want, atol=1e-10)
    else:  # HF's RMSNorm computes in float32 even in a float64 model
        assert torch.allclose(out - plan.offset.reshape(-1), want, atol=1e-5)
