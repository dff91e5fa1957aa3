"""Hooks on an unmodified HF model: where the EAP-IG graph's nodes are read and written.

circuitshift runs the frozen Hugging Face model itself (exact HF parity, no weight conversion) and
places PyTorch hooks where the EAP-IG graph needs them. Module names and weight layouts come from the
per-architecture registry (:mod:`analysis.architectures`: one entry per ``model_type``, with its
paths and the quirks below); this module places the hooks, :mod:`analysis.qkv_heads` holds the
per-layout q/k/v head maths and :mod:`analysis.encoding` the tokenisation. Nothing here uses
transformer_lens: when it changed its API (4.x replaced HookedTransformer with TransformerBridge, whose
split-q/k/v path is 4-8x slower and raises NotImplementedError for split q/k/v inputs and per-head
results on GPT-Neo and OPT) only :mod:`analysis.tl_adapter` had to care.

Quirks the registry records and the hooks honour:

* GPT-NeoX (parallel or sequential residual) and GPT-2 project q, k, v in one fused module (layouts
  [head][q|k|v][dh] and Conv1D [q|k|v][head][dh]); GPT-Neo, OPT and Llama (grouped-query: G <= H kv
  heads) in three. Rotary embeddings are applied after the projections (inside the attention), so the
  hooked q/k are pre-rotary.
* GPT-Neo's layers alternate global and local (sliding-window) attention and it has no 1/sqrt(dh)
  scaling. Neither changes the graph nor the hooks: the window lives in the attention module's causal
  mask, after the q/k/v projections and before the output projection, the only places hooked.
* OPT (pre-LN only): the MLP has no module of its own (fc1 -> act -> fc2, run on the flattened
  (B*P, D) residual stream; the hooks reshape to (B, P, D)). The learned positional embedding (offset
  2) is added after the input node and is identical for clean and corrupted prompts, so it cancels.
  Post-LN OPT (OPT-350m) and project_in/project_out (word_embed_proj_dim != hidden_size) raise a
  UserError.

What the hooks expose (B = batch, P = positions, D = d_model, H heads of size dh):

* input node output: the token-embedding output (the position embedding is the same for clean and
  corrupted prompts, so it cancels in every difference). It can be overridden, which is how integrated
  gradients interpolate the input.
* head outputs: the o-projection input ``z`` (B, P, H*dh); head h's contribution is ``z_h @ W_O[h]``
  (:meth:`ModelAdapter.head_outputs`). Its bias is shared by clean and corrupted runs and cancels.
* MLP outputs (B, P, D).
* gradients at destinations: the q/k/v projection OUTPUT gradient (pre-rotary; separate projections'
  gradients are concatenated in q, k, v order), mapped back per head to the residual stream
  analytically with the attention norm's closed-form vector-Jacobian product
  (:meth:`ModelAdapter.qkv_input_grads`, :mod:`analysis.norms`); the gradient of the one use of the
  residual stream that enters the MLP's norm and the final norm (through an alias with a tensor hook).
* for patching (:mod:`analysis.patching`), each q/k/v projection module's output can be replaced by
  recomputing its heads from per-head inputs through the same norm module and weight rows
  (:meth:`ModelAdapter.write_heads`).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from analysis.architectures import NATIVE_ARCHITECTURES, REGISTRY, native
from analysis.encoding import Batch, EncodedPairs, PairEncoding
from analysis.errors import UserError
from analysis.graph import GraphSpec
from analysis.norms import layernorm_vjp, norm_vjp, rmsnorm_vjp
from analysis.qkv_heads import QKVGradPlan, QKVHeads, QKVProj

# Kept importable from here (models.py, tl_adapter.py and callers outside analysis/ use these names).
SUPPORTED_ARCHITECTURES = NATIVE_ARCHITECTURES
FUSED_QKV = tuple(mt for mt in NATIVE_ARCHITECTURES if REGISTRY[mt].fused_qkv)
__all__ = ["ModelAdapter", "Batch", "EncodedPairs", "QKVProj", "QKVGradPlan", "SUPPORTED_ARCHITECTURES",
           "FUSED_QKV", "check_supported", "norm_vjp", "layernorm_vjp", "rmsnorm_vjp"]

Tensor = torch.Tensor
_NORM_TITLES = {"layernorm": "LayerNorm", "rmsnorm": "RMSNorm", "rmsnorm_plus_one": "RMSNorm"}


def check_supported(model_type: str | None) -> None:
    """A one-line UserError unless the native adapter scores ``model_type``."""
    native(model_type)


@dataclass(frozen=True)
class LayerModules:
    """One decoder layer's hooked modules, resolved once from the registry's paths."""

    attention: nn.Module
    attn_norm: nn.Module
    mlp_norm: nn.Module
    mlp: nn.Module  # its output is the MLP node's output (OPT: fc2, output (B*P, D))
    qkv: tuple[nn.Module, ...]  # (fused,) or (q_proj, k_proj, v_proj)
    o_proj: nn.Module


def _submodule(root: nn.Module, path: str) -> nn.Module | None:
    """``root.get_submodule(path)``, None where the model has no module there (e.g. a removed norm)."""
    try:
        return root.get_submodule(path)
    except AttributeError:
        return None


class ModelAdapter(PairEncoding, QKVHeads):
    """A frozen HF causal LM plus its tokenizer, with the hooks the scoring engine needs."""

    def __init__(self, model: nn.Module, tokenizer, source: str | None = None):
        cfg = model.config
        self.architecture = native(getattr(cfg, "model_type", None))
        self.arch: str = cfg.model_type
        self.spec = GraphSpec.from_hf_config(cfg)  # UserErrors for unsupported variants (post-LN OPT, ...)
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.tokenizer = tokenizer
        self.source = source
        self.n_layers = self.spec.n_layers
        self.n_heads = self.spec.n_heads
        self.n_kv_heads = self.spec.kv_heads
        self.d_model = cfg.hidden_size
        self.d_head = getattr(cfg, "head_dim", None) or self.d_model // self.n_heads
        self.vocab_size = cfg.vocab_size
        first = next(self.model.parameters())
        self.device, self.dtype = first.device, first.dtype
        a = self.architecture
        self._embed = self.model.get_submodule(a.embed)
        self._final_ln = _submodule(self.model, a.final_norm)
        if self._final_ln is None:
            raise UserError(f"{a.title} without a final {_NORM_TITLES[a.norm]} is not supported")
        self._blocks = list(self.model.get_submodule(a.blocks))
        self._layers = [self._layer_modules(b) for b in self._blocks]
        self._w_qkv: dict[int, Tensor] = {}
        self._w_o: dict[int, Tensor] = {}

    def _layer_modules(self, block: nn.Module) -> LayerModules:
        a = self.architecture
        attn = block.get_submodule(a.attention)
        return LayerModules(attn, block.get_submodule(a.attn_norm), block.get_submodule(a.mlp_norm),
                            block.get_submodule(a.mlp), tuple(attn.get_submodule(n) for n in a.qkv),
                            attn.get_submodule(a.o_proj))

    # ---------------------------------------------------------------- modules and weights
    def attn_ln(self, l: int) -> nn.Module:
        return self._layers[l].attn_norm

    def mlp_ln(self, l: int) -> nn.Module:
        return self._layers[l].mlp_norm

    def final_ln(self) -> nn.Module:
        return self._final_ln

    def qkv_proj(self, l: int) -> nn.Module:
        """The fused q/k/v projection (GPT-NeoX, GPT-2 only; see :meth:`qkv_projs` for every architecture)."""
        if not self.architecture.fused_qkv:
            raise ValueError(f"{self.arch} has separate q/k/v projections: use qkv_projs")
        return self._layers[l].qkv[0]

    def qkv_modules(self, l: int) -> list[nn.Module]:
        """The q/k/v projection module(s) of layer l: [fused] or [q_proj, k_proj, v_proj]."""
        return list(self._layers[l].qkv)

    def o_proj(self, l: int) -> nn.Module:
        return self._layers[l].o_proj

    def mlp(self, l: int) -> nn.Module:
        """The module whose output is the MLP node's output (OPT: ``fc2``, output (B*P, D))."""
        return self._layers[l].mlp

    def W_O(self, l: int) -> Tensor:
        """(H, dh, D): head h's output is z_h @ W_O[h]."""
        if l not in self._w_o:
            H, dh, D = self.n_heads, self.d_head, self.d_model
            w = self.o_proj(l).weight.detach()
            # -> (D_in=H*dh, D_out); a Conv1D (GPT-2) already stores it so
            w = w if self.architecture.fan_in_fan_out else w.t()
            self._w_o[l] = w.reshape(H, dh, D).contiguous()
        return self._w_o[l]

    def head_outputs(self, l: int, z: Tensor, out_dtype=None) -> Tensor:
        """z (B, P, H*dh) -> per-head contributions (H, B, P, D) (bias excluded)."""
        B, P, _ = z.shape
        zh = z.reshape(B, P, self.n_heads, self.d_head)
        w = self.W_O(l)
        if out_dtype is not None:
            zh, w = zh.to(out_dtype), w.to(out_dtype)
        return torch.einsum("bphk,hkd->hbpd", zh, w)

    # ---------------------------------------------------------------- running
    def embed(self, tokens: Tensor) -> Tensor:
        """The input node's output for ``tokens`` (B, P) -> (B, P, D), without grad."""
        with torch.no_grad():
            return self._embed(tokens.to(self.device))

    def forward_logits(self, tokens: Tensor) -> Tensor:
        """The plain HF forward (no hooks): logits (B, P, V)."""
        tokens = tokens.to(self.device)
        return self.model(input_ids=tokens, attention_mask=torch.ones_like(tokens), use_cache=False).logits

    @contextmanager
    def hooks(self, *,
              embed_override: Callable[[Tensor], Tensor] | None = None,
              on_z: Callable[[int, Tensor], None] | None = None,
              on_mlp_out: Callable[[int, Tensor], None] | None = None,
              on_attn_out: Callable[[int, Tensor], None] | None = None,
              on_attn_ln_in: Callable[[int, Tensor], None] | None = None,
              attn_out_override: Callable[[int, Tensor], Tensor | None] | None = None,
              mlp_out_override: Callable[[int, Tensor], Tensor | None] | None = None,
              grad_qkv: Callable[[int, Tensor], None] | None = None,
              grad_mlp_in: Callable[[int, Tensor], None] | None = None,
              grad_final_in: Callable[[Tensor], None] | None = None,
              on_qkv_out: Callable[[int, Tensor], None] | None = None):
        """Install hooks for one forward (and backward) pass; all removed on exit.

        Forward callbacks get detached tensors. ``*_override`` callbacks may return a replacement
        output (or None to keep it). Gradient callbacks fire during backward. ``on_qkv_out``: the q/k/v
        projection output(s) of each layer (separate projections: q, k, v concatenated, as
        ``grad_qkv``).
        """
        handles = []
        add = handles.append
        if embed_override is not None:
            add(self._embed.register_forward_hook(lambda m, a, out: embed_override(out)))
        # OPT runs its MLP on the flattened (B*P, D) stream: remember each layer's (B, P, D) shape
        shapes: dict[int, torch.Size] = {}
        mlp_hooked = on_mlp_out is not None or mlp_out_override is not None
        for l in range(self.n_layers):
            if on_z is not None:
                add(self.o_proj(l).register_forward_pre_hook(
                    lambda m, a, l=l: on_z(l, a[0].detach())))
            if on_attn_out is not None or attn_out_override is not None:
                add(self.o_proj(l).register_forward_hook(_observe(l, on_attn_out, attn_out_override)))
            if mlp_hooked and self.architecture.flat_mlp:
                add(self.attn_ln(l).register_forward_pre_hook(
                    lambda m, a, l=l: shapes.__setitem__(l, a[0].shape)))
            if mlp_hooked:
                def f_mlp(m, a, out, l=l):
                    o = out.view(shapes[l]) if out.dim() == 2 else out
                    if on_mlp_out is not None:
                        on_mlp_out(l, o.detach())
                    if mlp_out_override is not None:
                        new = mlp_out_override(l, o)
                        return None if new is None else new.reshape(out.shape)
                    return None
                add(self.mlp(l).register_forward_hook(f_mlp))
            if on_attn_ln_in is not None:
                add(self.attn_ln(l).register_forward_pre_hook(
                    lambda m, a, l=l: on_attn_ln_in(l, a[0].detach())))
            mods = self.qkv_modules(l)
            if grad_qkv is not None:
                put = _gather(len(mods), lambda g, l=l: grad_qkv(l, g))
                handles += [m.register_forward_hook(_grad_part(i, put)) for i, m in enumerate(mods)]
            if on_qkv_out is not None:
                put = _gather(len(mods), lambda t, l=l: on_qkv_out(l, t))
                handles += [m.register_forward_hook(lambda mm, a, out, i=i, put=put: put(i, out.detach()))
                            for i, m in enumerate(mods)]
            if grad_mlp_in is not None:
                add(self.mlp_ln(l).register_forward_pre_hook(_alias_grad_hook(lambda g, l=l: grad_mlp_in(l, g))))
        if grad_final_in is not None:
            add(self._final_ln.register_forward_pre_hook(_alias_grad_hook(grad_final_in)))
        try:
            yield
        finally:
            for h in handles:
                h.remove()


def _observe(layer: int, on_out, override):
    """A forward hook on a node group's output module: report the output, optionally replace it."""

    def hook(module, args, out):
        if on_out is not None:
            on_out(layer, out.detach())
        return None if override is None else override(layer, out)

    return hook


def _gather(n: int, deliver: Callable[[Tensor], None]) -> Callable[[int, Tensor], None]:
    """``put(i, t)`` for the n q/k/v projection modules of a layer (any arrival order): once all n
    arrived, ``deliver`` gets them concatenated in q, k, v order (a fused module's alone, as is)."""
    if n == 1:
        return lambda i, t: deliver(t)
    buf: dict[int, Tensor] = {}

    def put(i: int, t: Tensor) -> None:
        buf[i] = t
        if len(buf) == n:
            parts = [buf[j] for j in range(n)]
            buf.clear()
            deliver(torch.cat(parts, dim=-1))

    return put


def _grad_part(i: int, put: Callable[[int, Tensor], None]):
    """A forward hook that sends the gradient of q/k/v projection module i's output to ``put``."""

    def hook(module, args, out):
        if out.requires_grad:
            out.register_hook(lambda g: put(i, g))
        return None

    return hook


def _alias_grad_hook(cb: Callable[[Tensor], None]):
    """A forward pre-hook that feeds the module an alias of its input and reports the gradient of that
    one use of the tensor (not of its other uses in the residual stream)."""

    def pre(module, args):
        x = args[0]
        if not x.requires_grad:
            return None
        y = x.view_as(x)
        y.register_hook(cb)
        return (y,) + tuple(args[1:])

    return pre
