"""The per-architecture registry: every fact about a model family that depends on its ``model_type``.

One frozen :class:`Architecture` entry per Hugging Face ``model_type`` the project knows holds the
module paths the hooks use (:mod:`analysis.adapter`), the q/k/v weight layout, the norm kind, the
residual rule and graph shape (:mod:`analysis.graph`), the LoRA / IA3 target modules
(:mod:`analysis.training`) and the per-layer module regex (:mod:`analysis.circuitlora`). Nothing else
in the project dispatches on ``model_type``; adding an architecture is one entry in :data:`REGISTRY`
plus its tests (tests/test_registry.py checks every entry against a model built from a config).

Module paths are dotted attribute paths (``get_submodule`` names): ``blocks``, ``embed``,
``final_norm`` and ``unembed`` from the ``*ForCausalLM`` model; ``attention``, ``attn_norm``,
``mlp_norm`` and ``mlp`` from one decoder block; ``qkv`` and ``o_proj`` from the block's attention.

This module imports neither torch nor transformers (configs are read by attribute only), so the
torch-free layers may use it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Literal, NamedTuple

from analysis.errors import UserError

QKVLayout = Literal["fused_interleaved", "fused_conv1d", "split", "gqa"]
NormKind = Literal["layernorm", "rmsnorm", "rmsnorm_plus_one"]


class GraphShape(NamedTuple):
    """What the edge graph of a model depends on (the fields of :class:`analysis.graph.GraphSpec`):
    ``GraphSpec(*shape)``."""

    n_layers: int
    n_heads: int
    parallel_attn_mlp: bool
    n_kv_heads: int | None  # None when every query head has its own key/value head (G = H)


@dataclass(frozen=True)
class Architecture:
    """Everything the project knows about one ``model_type`` (the module docstring)."""

    model_type: str = field(metadata={"help": "The transformers config's model_type, e.g. 'gpt_neox'."})
    title: str = field(metadata={"help": "The family's display name in messages, e.g. 'GPT-NeoX'."})
    blocks: str = field(metadata={"help": "Path of the ModuleList of decoder layers, from the model."})
    embed: str = field(metadata={"help": "Path of the token embedding (the graph's input node), from the model."})
    final_norm: str = field(metadata={"help": "Path of the final norm (its input is the logits node), from the model."})
    unembed: str = field(metadata={"help": "Path of the output embedding (never a LoRA target), from the model."})
    attention: str = field(metadata={"help": "Path of the attention module, from a block."})
    attn_norm: str = field(metadata={"help": "Path of the norm before the attention, from a block."})
    mlp_norm: str = field(metadata={"help": "Path of the norm before the MLP, from a block."})
    mlp: str = field(metadata={"help": "Path of the module whose output is the MLP node's output, from a block."})
    qkv: tuple[str, ...] = field(metadata={
        "help": "The q/k/v projection module(s), from the attention: one fused module or (q, k, v)."})
    o_proj: str = field(metadata={"help": "The attention's output projection (its input is z), from the attention."})
    qkv_layout: QKVLayout = field(metadata={"help": (
        "How the q/k/v projections lay out heads: 'fused_interleaved' one Linear with output "
        "[head][q|k|v][dh] (GPT-NeoX); 'fused_conv1d' one Conv1D with output [q|k|v][head][dh] "
        "(GPT-2); 'split' three Linears of H heads each; 'gqa' three Linears, k and v with the "
        "config's num_key_value_heads G <= H heads (grouped-query attention).")})
    norm: NormKind = field(metadata={"help": (
        "The norm modules: 'layernorm' (nn.LayerNorm), 'rmsnorm' (weight * x / rms, with "
        "variance_epsilon), 'rmsnorm_plus_one' ((1 + weight) * x / rms, Gemma).")})
    n_layers_key: str = field(metadata={"help": "The config attribute holding the number of layers."})
    n_heads_key: str = field(metadata={"help": "The config attribute holding the number of attention heads."})
    parallel_residual_key: str | None = field(metadata={"help": (
        "The config flag that makes attention and MLP read the same residual stream (default True "
        "when the config lacks it); None: always sequential blocks.")})
    lora_targets: tuple[str, ...] = field(metadata={
        "help": "peft target_modules: every nn.Linear/Conv1D of a block (method.md 3.2), no unembedding."})
    ia3_feedforward: tuple[str, ...] = field(metadata={
        "help": "peft IA3 feedforward_modules: the MLP's targets (IA3 scales their input, not output)."})
    fan_in_fan_out: bool = field(metadata={
        "help": "The linear layers are transformers Conv1D, weights stored (in, out) (peft fan_in_fan_out)."})
    flat_mlp: bool = field(default=False, metadata={
        "help": "The MLP node's module runs on the flattened (B*P, D) stream (OPT's fc2)."})
    learned_positions: bool = field(default=False, metadata={
        "help": "A learned position embedding is added after the input node (GPT-2, GPT-Neo, OPT)."})
    tl_only: bool = field(default=False, metadata={
        "help": "Scored only by the TransformerLens backend (--backend transformer-lens), not the native adapter."})
    refusals: tuple[Callable[[object], str | None], ...] = field(default=(), metadata={
        "help": "Config checks run by graph_shape: each returns the UserError message of an unsupported "
                "variant of the family (post-LayerNorm OPT, ...) or None."})

    @property
    def fused_qkv(self) -> bool:
        """One module projects q, k and v together (:attr:`qkv_layout` 'fused_*')."""
        return self.qkv_layout.startswith("fused_")

    @property
    def layer_regex(self) -> str:
        """The module-name prefix of decoder layer i (group 1 = i), as CircuitLoRA matches LoRA targets:
        ``gpt_neox\\.layers\\.(\\d+)\\.``."""
        return re.escape(self.blocks) + r"\.(\d+)\."

    def graph_shape(self, config) -> GraphShape:
        """The graph's (n_layers, n_heads, parallel_attn_mlp, n_kv_heads) from a transformers config;
        a UserError for a variant of the family the graph cannot describe."""
        for refuse in self.refusals:
            message = refuse(config)
            if message:
                raise UserError(message)
        H = getattr(config, self.n_heads_key)
        parallel = self.parallel_residual_key is not None and bool(getattr(config, self.parallel_residual_key, True))
        G = (getattr(config, "num_key_value_heads", None) or H) if self.qkv_layout == "gqa" else H
        return GraphShape(getattr(config, self.n_layers_key), H, parallel, None if G == H else G)


def _post_layernorm_opt(config) -> str | None:
    if not getattr(config, "do_layer_norm_before", True):
        return ("post-LayerNorm OPT (do_layer_norm_before=False, e.g. OPT-350m) is not supported: "
                "its residual stream is normalised after each sublayer, so node outputs do not add up")
    return None


def _projected_opt(config) -> str | None:
    wdim = getattr(config, "word_embed_proj_dim", None)
    if wdim is not None and wdim != config.hidden_size:
        return (f"OPT with word_embed_proj_dim {wdim} != hidden_size {config.hidden_size} "
                "(project_in/project_out) is not supported")
    return None


def _llama_like(model_type: str, title: str, norm: NormKind = "rmsnorm", tl_only: bool = False) -> Architecture:
    """Llama's naming, shared by the decoders that copied it (Qwen2, Gemma): pre-norm sequential
    blocks, separate grouped-query projections, SwiGLU MLP."""
    return Architecture(
        model_type, title, blocks="model.layers", embed="model.embed_tokens", final_norm="model.norm",
        unembed="lm_head", attention="self_attn", attn_norm="input_layernorm", mlp_norm="post_attention_layernorm",
        mlp="mlp", qkv=("q_proj", "k_proj", "v_proj"), o_proj="o_proj", qkv_layout="gqa", norm=norm,
        n_layers_key="num_hidden_layers", n_heads_key="num_attention_heads", parallel_residual_key=None,
        lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        ia3_feedforward=("gate_proj", "up_proj", "down_proj"), fan_in_fan_out=False, tl_only=tl_only)


_ENTRIES = (
    # Pythia. Rotary q/k are rotated inside the attention, after the hooked projection. The checkpoints'
    # embed_out is transformers 5's lm_head.
    Architecture(
        "gpt_neox", "GPT-NeoX", blocks="gpt_neox.layers", embed="gpt_neox.embed_in",
        final_norm="gpt_neox.final_layer_norm", unembed="lm_head", attention="attention",
        attn_norm="input_layernorm", mlp_norm="post_attention_layernorm", mlp="mlp", qkv=("query_key_value",),
        o_proj="dense", qkv_layout="fused_interleaved", norm="layernorm", n_layers_key="num_hidden_layers",
        n_heads_key="num_attention_heads", parallel_residual_key="use_parallel_residual",
        lora_targets=("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
        ia3_feedforward=("dense_h_to_4h", "dense_4h_to_h"), fan_in_fan_out=False),
    Architecture(
        "gpt2", "GPT-2", blocks="transformer.h", embed="transformer.wte", final_norm="transformer.ln_f",
        unembed="lm_head", attention="attn", attn_norm="ln_1", mlp_norm="ln_2", mlp="mlp", qkv=("c_attn",),
        o_proj="c_proj", qkv_layout="fused_conv1d", norm="layernorm", n_layers_key="n_layer", n_heads_key="n_head",
        parallel_residual_key=None, lora_targets=("c_attn", "c_proj", "c_fc"), ia3_feedforward=("c_fc",),
        fan_in_fan_out=True, learned_positions=True),
    # Local (sliding-window) layers differ from global ones only in the attention's causal mask, between
    # the hooked projections, so both are hooked identically.
    Architecture(
        "gpt_neo", "GPT-Neo", blocks="transformer.h", embed="transformer.wte", final_norm="transformer.ln_f",
        unembed="lm_head", attention="attn.attention", attn_norm="ln_1", mlp_norm="ln_2", mlp="mlp",
        qkv=("q_proj", "k_proj", "v_proj"), o_proj="out_proj", qkv_layout="split", norm="layernorm",
        n_layers_key="num_layers", n_heads_key="num_heads", parallel_residual_key=None,
        lora_targets=("q_proj", "k_proj", "v_proj", "out_proj", "c_fc", "c_proj"),
        ia3_feedforward=("c_fc", "c_proj"), fan_in_fan_out=False, learned_positions=True),
    # Pre-LN OPT only. The MLP has no module of its own (fc1 -> act -> fc2 inside the block).
    Architecture(
        "opt", "OPT", blocks="model.decoder.layers", embed="model.decoder.embed_tokens",
        final_norm="model.decoder.final_layer_norm", unembed="lm_head", attention="self_attn",
        attn_norm="self_attn_layer_norm", mlp_norm="final_layer_norm", mlp="fc2", qkv=("q_proj", "k_proj", "v_proj"),
        o_proj="out_proj", qkv_layout="split", norm="layernorm", n_layers_key="num_hidden_layers",
        n_heads_key="num_attention_heads", parallel_residual_key=None,
        lora_targets=("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"), ia3_feedforward=("fc1", "fc2"),
        fan_in_fan_out=False, flat_mlp=True, learned_positions=True, refusals=(_post_layernorm_opt, _projected_opt)),
    _llama_like("llama", "Llama"),
    _llama_like("qwen2", "Qwen2", tl_only=True),
    _llama_like("gemma", "Gemma", norm="rmsnorm_plus_one", tl_only=True),
)

REGISTRY: dict[str, Architecture] = {a.model_type: a for a in _ENTRIES}
# The native adapter's architectures, and those only the TransformerLens backend scores.
NATIVE_ARCHITECTURES = tuple(a.model_type for a in _ENTRIES if not a.tl_only)
TL_ONLY_ARCHITECTURES = tuple(a.model_type for a in _ENTRIES if a.tl_only)


def lookup(model_type: str | None) -> Architecture:
    """The registry entry of ``model_type``; a one-line UserError naming the known ones."""
    arch = REGISTRY.get(model_type or "")
    if arch is None:
        raise UserError(f"unknown architecture {model_type!r}; known: {', '.join(NATIVE_ARCHITECTURES)} "
                        f"(and {', '.join(TL_ONLY_ARCHITECTURES)} with --backend transformer-lens)")
    return arch


def native(model_type: str | None) -> Architecture:
    """The entry of an architecture the native adapter scores; the adapter's one-line UserError otherwise."""
    arch = REGISTRY.get(model_type or "")
    if arch is None or arch.tl_only:
        raise UserError(f"unsupported architecture {model_type!r}; supported: " + ", ".join(NATIVE_ARCHITECTURES))
    return arch


def graph_shape(config) -> GraphShape:
    """The graph's (n_layers, n_heads, parallel_attn_mlp, n_kv_heads) of a transformers config, with
    :meth:`analysis.graph.GraphSpec.from_hf_config`'s messages: ``GraphSpec(*graph_shape(config))``."""
    mt = getattr(config, "model_type", None)
    if mt not in REGISTRY:
        raise UserError(f"unsupported architecture {mt!r} for a graph; supported: {', '.join(NATIVE_ARCHITECTURES)} "
                        f"(and {', '.join(TL_ONLY_ARCHITECTURES)} with --backend transformer-lens)")
    return REGISTRY[mt].graph_shape(config)
