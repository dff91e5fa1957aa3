"""The per-architecture registry (analysis/architectures.py, issue 15 item 2).

Every entry is complete and documented, every module path it names exists on a tiny model built from
a config (on the meta device: no weights), its LoRA targets are exactly the block's linear layers,
its graph shape equals GraphSpec.from_hf_config (refusals with the same messages), and an unknown
model_type is one line naming the known ones.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from torch import nn

from analysis.adapter import check_supported
from analysis.architectures import (NATIVE_ARCHITECTURES, REGISTRY, TL_ONLY_ARCHITECTURES, Architecture,
                                    graph_shape, lookup)
from analysis.errors import UserError
from analysis.graph import GraphSpec
from analysis.norms import norm_kind
from analysis.tiny import TINY_ARCHS, tiny_config

H, G, D = 4, 2, 32

# The layer prefixes CircuitLoRA matched before the registry (analysis/circuitlora.py LAYER_PATHS).
OLD_LAYER_PATHS = {
    "gpt_neox": r"gpt_neox\.layers\.(\d+)\.", "gpt2": r"transformer\.h\.(\d+)\.",
    "gpt_neo": r"transformer\.h\.(\d+)\.", "opt": r"model\.decoder\.layers\.(\d+)\.",
    "llama": r"model\.layers\.(\d+)\.",
}


def meta_model(arch: str, **kw):
    from transformers import AutoModelForCausalLM

    cfg = tiny_config(arch, n_layers=2, n_heads=H, d_model=D, vocab_size=64, **kw)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(cfg)


@pytest.fixture(scope="module", params=sorted(REGISTRY))
def entry(request) -> Architecture:
    return REGISTRY[request.param]


def test_registry_covers_the_known_architectures():
    assert NATIVE_ARCHITECTURES == ("gpt_neox", "gpt2", "gpt_neo", "opt", "llama")
    assert TL_ONLY_ARCHITECTURES == ("qwen2", "gemma")
    assert set(REGISTRY) == set(TINY_ARCHS)  # every entry has a tiny builder


def test_every_entry_is_complete_and_documented(entry):
    for f in dataclasses.fields(Architecture):
        assert f.metadata.get("help"), f"field {f.name} has no help text"
        value = getattr(entry, f.name)
        if f.name not in ("parallel_residual_key", "refusals") and not isinstance(value, bool):
            assert value, f"{entry.model_type}.{f.name} is empty"
    assert (len(entry.qkv) == 1) == entry.fused_qkv and len(entry.qkv) in (1, 3)
    assert set(entry.ia3_feedforward) <= set(entry.lora_targets)
    assert entry.unembed.rsplit(".", 1)[-1] not in entry.lora_targets
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.blocks = "x"


def test_every_module_exists_on_a_tiny_model(entry):
    model = meta_model(entry.model_type)
    for path in (entry.embed, entry.final_norm, entry.unembed):
        assert isinstance(model.get_submodule(path), nn.Module)
    blocks = model.get_submodule(entry.blocks)
    assert len(blocks) == 2
    dh = D // H
    for block in blocks:
        attn = block.get_submodule(entry.attention)
        norms = [block.get_submodule(entry.attn_norm), block.get_submodule(entry.mlp_norm),
                 model.get_submodule(entry.final_norm)]
        if entry.norm == "layernorm":
            assert all(isinstance(n, nn.LayerNorm) for n in norms)
        elif entry.norm == "rmsnorm":
            assert all(norm_kind(n) == "rmsnorm" for n in norms)
        else:  # (1 + weight): no closed-form VJP of ours, TL-only
            assert all(norm_kind(n) is None and "RMSNorm" in type(n).__name__ for n in norms)
        block.get_submodule(entry.mlp)
        o = attn.get_submodule(entry.o_proj)
        qkv = [attn.get_submodule(n) for n in entry.qkv]
        conv1d = [type(m).__name__ == "Conv1D" for m in qkv + [o]]
        assert all(c == entry.fan_in_fan_out for c in conv1d)
        widths = [m.weight.shape[-1 if entry.fan_in_fan_out else 0] for m in qkv]
        if entry.fused_qkv:
            assert widths == [3 * H * dh]
        else:
            kv = G if entry.qkv_layout == "gqa" else H
            assert widths == [H * dh, kv * dh, kv * dh]
    # LoRA targets: exactly the decoder layers' linear modules (method.md 3.2), all inside a layer
    linear = {name for name, m in model.named_modules()
              if isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"}
    targeted = {n for n in linear if n.rsplit(".", 1)[-1] in entry.lora_targets}
    assert targeted == linear - {entry.unembed}
    assert all(re.match(entry.layer_regex, n) for n in targeted)
    mlp_modules = {n for n, _ in model.named_modules() if re.match(entry.layer_regex + re.escape(entry.mlp), n)}
    ia3 = {n for n in targeted if n.rsplit(".", 1)[-1] in entry.ia3_feedforward}
    assert ia3 and {n.rsplit(".", 1)[-1] for n in ia3} == set(entry.ia3_feedforward)
    assert ia3 <= mlp_modules or entry.flat_mlp  # OPT's MLP has no module of its own (fc1, fc2 in the block)


def test_layer_regex_is_circuitloras_old_naming():
    assert {mt: REGISTRY[mt].layer_regex for mt in OLD_LAYER_PATHS} == OLD_LAYER_PATHS


def _configs():
    """Configs of every family, with their variants (residual rule, GQA, refused OPTs)."""
    from transformers import GPTNeoConfig, GPTNeoXConfig, LlamaConfig, OPTConfig

    for arch in sorted(REGISTRY):
        yield tiny_config(arch, n_layers=3, n_heads=H, d_model=D, vocab_size=64)
    yield GPTNeoXConfig(num_hidden_layers=2, num_attention_heads=2, hidden_size=8, use_parallel_residual=False)
    yield GPTNeoConfig(num_layers=4, num_heads=2, hidden_size=8, attention_types=[[["global", "local"], 2]])
    llama = dict(num_hidden_layers=2, num_attention_heads=4, hidden_size=16)
    yield LlamaConfig(**llama, num_key_value_heads=4)
    yield LlamaConfig(**llama, num_key_value_heads=1)
    yield OPTConfig(hidden_size=8, num_attention_heads=2, do_layer_norm_before=False, word_embed_proj_dim=8)
    yield OPTConfig(hidden_size=16, num_attention_heads=2, word_embed_proj_dim=8)


@pytest.mark.parametrize("config", list(_configs()), ids=lambda c: c.model_type)
def test_graph_shape_equals_graphspec_from_hf_config(config):
    try:
        want = GraphSpec.from_hf_config(config)
    except UserError as exc:
        with pytest.raises(UserError) as got:
            graph_shape(config)
        assert str(got.value) == str(exc)
        return
    assert GraphSpec(*graph_shape(config)) == want


def test_refused_opt_variants_name_the_reason():
    from transformers import OPTConfig

    with pytest.raises(UserError, match="post-LayerNorm"):
        graph_shape(OPTConfig(hidden_size=8, num_attention_heads=2, do_layer_norm_before=False, word_embed_proj_dim=8))
    with pytest.raises(UserError, match="project_in"):
        graph_shape(OPTConfig(hidden_size=16, num_attention_heads=2, word_embed_proj_dim=8))


def test_unknown_model_type_is_one_line_naming_the_known_ones():
    with pytest.raises(UserError) as exc:
        lookup("mistral")
    msg = str(exc.value)
    assert "\n" not in msg and "'mistral'" in msg
    assert all(mt in msg for mt in REGISTRY)
    with pytest.raises(UserError, match="unsupported architecture 'mistral' for a graph"):
        graph_shape(type("Config", (), {"model_type": "mistral"})())
    # the native adapter refuses TL-only ones with its own message
    with pytest.raises(UserError, match="unsupported architecture 'qwen2'; supported: gpt_neox, gpt2"):
        check_supported("qwen2")
    check_supported("llama")
