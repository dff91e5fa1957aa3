"""Model loading and the hook adapter on tiny local models."""

import pytest
import torch

from analysis.errors import UserError
from analysis.graph import GraphSpec
from analysis.models import load_model
from analysis.tiny import build_tiny_model

torch.set_num_threads(2)


@pytest.fixture(scope="module", params=["gpt_neox", "gpt2"])
def adapter(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    build_tiny_model(d, arch=request.param, n_layers=2, n_heads=4, d_model=32, seed=1, max_number=120,
                     init_std=0.3)
    return load_model(d, dtype="float64")


def test_tiny_model_loads_with_offline_tokenizer(adapter):
    assert adapter.spec == GraphSpec(2, 4, adapter.arch == "gpt_neox")
    assert adapter.dtype == torch.float64
    assert all(not p.requires_grad for p in adapter.model.parameters())
    assert adapter.token_id("70") is not None and adapter.token_id("12345") is None
    if adapter.arch == "gpt_neox":
        assert adapter.model.config.use_parallel_residual


def test_hooks_are_transparent_and_head_outputs_sum(adapter):
    ids = torch.tensor([[0] + adapter.tokenizer("LCM(4, 6) =", add_special_tokens=False)["input_ids"]])
    zs, outs = {}, {}
    with torch.no_grad():
        plain = adapter.forward_logits(ids)
        with adapter.hooks(on_z=lambda l, z: zs.__setitem__(l, z), on_attn_out=lambda l, o: outs.__setitem__(l, o),
                           grad_mlp_in=lambda l, g: None, grad_final_in=lambda g: None):
            hooked = adapter.forward_logits(ids)
    assert float((plain - hooked).abs().max()) == 0.0
    for l in range(adapter.n_layers):
        heads = adapter.head_outputs(l, zs[l])  # (H, B, P, D)
        bias = adapter.o_proj(l).bias
        assert torch.allclose(heads.sum(0) + bias, outs[l], atol=1e-12)


def test_qkv_input_grads_match_autograd(adapter):
    l = 1
    torch.manual_seed(0)
    x = torch.randn(2, 5, adapter.d_model, dtype=torch.float64, requires_grad=True)
    g_out = torch.randn(2, 5, 3 * adapter.d_model, dtype=torch.float64)
    ln, proj = adapter.attn_ln(l), adapter.qkv_proj(l)
    W = adapter.W_qkv(l)
    got = adapter.qkv_input_grads(l, g_out, x.detach())  # (3H, B, P, D)
    split = adapter.split_qkv(g_out)  # (B, P, 3, H, dh)
    for t in range(3):
        for h in range(adapter.n_heads):
            y = ln(x) @ W[t, h].T
            (gx,) = torch.autograd.grad((y * split[:, :, t, h]).sum(), x)
            assert torch.allclose(got[t * adapter.n_heads + h], gx, atol=1e-12)
    # the per-head grads add up to the gradient through the real projection
    (full,) = torch.autograd.grad((proj(ln(x)) * g_out).sum(), x)
    assert torch.allclose(got.sum(0), full, atol=1e-12)


def test_missing_path_and_unsupported_architecture(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_model(tmp_path / "nope")
    from transformers import MistralConfig, MistralForCausalLM  # Llama is supported since issue 7 part 3

    cfg = MistralConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=2)
    MistralForCausalLM(cfg).save_pretrained(tmp_path / "mistral")
    with pytest.raises(UserError, match="supported: gpt_neox, gpt2"):
        load_model(tmp_path / "mistral")
