"""The one place that knows each architecture's module names: hooks on an unmodified HF model.

circuitshift runs the frozen Hugging Face model itself (exact HF parity, no weight conversion) and
places PyTorch hooks where the EAP-IG graph needs them. Nothing else in the project touches module
names, weight layouts or transformer_lens: when transformer_lens changed its API (4.x replaced
HookedTransformer with TransformerBridge, whose split-q/k/v path is 4-8x slower and unsupported for
some architectures) only this module would have to care, and it uses neither.

Supported architectures: GPT-NeoX (Pythia; parallel or sequential residual) and GPT-2.

What the hooks expose (B = batch, P = positions, D = d_model, H heads of size dh):

* input node output: the token-embedding output (GPT-2: ``wte``; the position embedding is the same
  for clean and corrupted prompts, so it cancels in every difference). It can be overridden, which is
  how integrated gradients interpolate the input.
* head outputs: the o-projection input ``z`` (B, P, D); head h's contribution is ``z_h @ W_O[h]``
  (:meth:`ModelAdapter.head_outputs`). Its bias is shared by clean and corrupted runs and cancels.
* MLP outputs.
* gradients at destinations: the q/k/v projection OUTPUT gradient (pre-rotary, all heads at once),
  mapped back per head to the residual stream analytically with the attention LayerNorm's closed-form
  vector-Jacobian product (:meth:`ModelAdapter.qkv_input_grads`); the gradient of the one use of the
  residual stream that enters the MLP's LayerNorm and the final LayerNorm (through an alias with a
  tensor hook).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from analysis.errors import UserError
from analysis.graph import GraphSpec

SUPPORTED_ARCHITECTURES = ("gpt_neox", "gpt2")

Tensor = torch.Tensor


@dataclass
class EncodedPairs:
    """Token ids of prompt pairs: BOS prepended, no padding yet."""

    clean: list[list[int]]
    corrupted: list[list[int]]
    label: list[int]
    corrupted_label: list[int | None]


@dataclass
class Batch:
    clean: Tensor  # (B, P) long, right-padded
    corrupted: Tensor  # (B, P)
    last: Tensor  # (B,) index of each prompt's last real position
    label: Tensor  # (B,)
    corrupted_label: Tensor | None  # (B,) or None


def check_supported(model_type: str | None) -> None:
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise UserError(f"unsupported architecture {model_type!r}; supported: "
                        + ", ".join(SUPPORTED_ARCHITECTURES))


class ModelAdapter:
    """A frozen HF causal LM plus its tokenizer, with the hooks the scoring engine needs."""

    def __init__(self, model: nn.Module, tokenizer, source: str | None = None):
        cfg = model.config
        check_supported(getattr(cfg, "model_type", None))
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.tokenizer = tokenizer
        self.source = source
        self.arch: str = cfg.model_type
        self.spec = GraphSpec.from_hf_config(cfg)
        self.n_layers = self.spec.n_layers
        self.n_heads = self.spec.n_heads
        self.d_model = cfg.hidden_size
        self.d_head = self.d_model // self.n_heads
        self.vocab_size = cfg.vocab_size
        first = next(self.model.parameters())
        self.device, self.dtype = first.device, first.dtype
        if self.arch == "gpt_neox":
            base = self.model.gpt_neox
            self._embed, self._blocks, self._final_ln = base.embed_in, list(base.layers), base.final_layer_norm
        else:
            base = self.model.transformer
            self._embed, self._blocks, self._final_ln = base.wte, list(base.h), base.ln_f
        self._w_qkv: dict[int, Tensor] = {}
        self._w_o: dict[int, Tensor] = {}

    # ---------------------------------------------------------------- modules and weights
    def attn_ln(self, l: int) -> nn.LayerNorm:
        b = self._blocks[l]
        return b.input_layernorm if self.arch == "gpt_neox" else b.ln_1

    def mlp_ln(self, l: int) -> nn.LayerNorm:
        b = self._blocks[l]
        return b.post_attention_layernorm if self.arch == "gpt_neox" else b.ln_2

    def final_ln(self) -> nn.LayerNorm:
        return self._final_ln

    def qkv_proj(self, l: int) -> nn.Module:
        b = self._blocks[l]
        return b.attention.query_key_value if self.arch == "gpt_neox" else b.attn.c_attn

    def o_proj(self, l: int) -> nn.Module:
        b = self._blocks[l]
        return b.attention.dense if self.arch == "gpt_neox" else b.attn.c_proj

    def mlp(self, l: int) -> nn.Module:
        return self._blocks[l].mlp

    def W_qkv(self, l: int) -> Tensor:
        """(3, H, dh, D): q_h = LN(x) @ W_qkv[0, h].T (+ bias)."""
        if l not in self._w_qkv:
            H, dh, D = self.n_heads, self.d_head, self.d_model
            w = self.qkv_proj(l).weight.detach()
            if self.arch == "gpt_neox":  # Linear (3D, D); output layout [head][q|k|v][dh]
                w = w.view(H, 3, dh, D).permute(1, 0, 2, 3)
            else:  # Conv1D (D, 3D); output layout [q|k|v][head][dh]
                w = w.t().view(3, H, dh, D)
            self._w_qkv[l] = w.contiguous()
        return self._w_qkv[l]

    def W_O(self, l: int) -> Tensor:
        """(H, dh, D): head h's output is z_h @ W_O[h]."""
        if l not in self._w_o:
            H, dh, D = self.n_heads, self.d_head, self.d_model
            w = self.o_proj(l).weight.detach()
            w = w.t() if self.arch == "gpt_neox" else w  # -> (D_in=H*dh, D_out)
            self._w_o[l] = w.reshape(H, dh, D).contiguous()
        return self._w_o[l]

    def split_qkv(self, g: Tensor) -> Tensor:
        """(B, P, 3D) q/k/v projection output (or its gradient) -> (B, P, 3, H, dh) (a view)."""
        B, P, _ = g.shape
        H, dh = self.n_heads, self.d_head
        if self.arch == "gpt_neox":
            return g.view(B, P, H, 3, dh).transpose(2, 3)
        return g.view(B, P, 3, H, dh)

    # ---------------------------------------------------------------- per-head maths
    def head_outputs(self, l: int, z: Tensor, out_dtype=None) -> Tensor:
        """z (B, P, H*dh) -> per-head contributions (H, B, P, D) (bias excluded)."""
        B, P, _ = z.shape
        zh = z.reshape(B, P, self.n_heads, self.d_head)
        w = self.W_O(l)
        if out_dtype is not None:
            zh, w = zh.to(out_dtype), w.to(out_dtype)
        return torch.einsum("bphk,hkd->hbpd", zh, w)

    def qkv_input_grads(self, l: int, g_qkv: Tensor, x: Tensor, out_dtype=None) -> Tensor:
        """Gradient at each head's q/k/v INPUT (the residual stream before the attention LayerNorm).

        g_qkv: (B, P, 3D) gradient at the q/k/v projection output; x: (B, P, D) the attention
        LayerNorm's input. Returns (3H, B, P, D), ordered q heads, k heads, v heads:
        g_in(h, q) = J_LN(x)^T (W_Q[h]^T g_q_h), the LayerNorm VJP in closed form.
        """
        dt = out_dtype or g_qkv.dtype
        g = self.split_qkv(g_qkv).to(dt)
        u = torch.einsum("bpthk,thkd->thbpd", g, self.W_qkv(l).to(dt))  # (3, H, B, P, D)
        u = u.reshape(3 * self.n_heads, *u.shape[2:])
        return layernorm_vjp(self.attn_ln(l), x.to(dt), u)

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
              grad_final_in: Callable[[Tensor], None] | None = None):
        """Install hooks for one forward (and backward) pass; all removed on exit.

        Forward callbacks get detached tensors. ``*_override`` callbacks may return a replacement
        output (or None to keep it). Gradient callbacks fire during backward.
        """
        handles = []
        L = self.n_layers

        def add(h):
            handles.append(h)

        if embed_override is not None:
            add(self._embed.register_forward_hook(lambda m, a, out: embed_override(out)))
        for l in range(L):
            if on_z is not None:
                add(self.o_proj(l).register_forward_pre_hook(
                    lambda m, a, l=l: on_z(l, a[0].detach())))
            if on_attn_out is not None or attn_out_override is not None:
                def f_attn(m, a, out, l=l):
                    if on_attn_out is not None:
                        on_attn_out(l, out.detach())
                    if attn_out_override is not None:
                        return attn_out_override(l, out)
                    return None
                add(self.o_proj(l).register_forward_hook(f_attn))
            if on_mlp_out is not None or mlp_out_override is not None:
                def f_mlp(m, a, out, l=l):
                    if on_mlp_out is not None:
                        on_mlp_out(l, out.detach())
                    if mlp_out_override is not None:
                        return mlp_out_override(l, out)
                    return None
                add(self.mlp(l).register_forward_hook(f_mlp))
            if on_attn_ln_in is not None:
                add(self.attn_ln(l).register_forward_pre_hook(
                    lambda m, a, l=l: on_attn_ln_in(l, a[0].detach())))
            if grad_qkv is not None:
                def f_qkv(m, a, out, l=l):
                    if out.requires_grad:
                        out.register_hook(lambda g, l=l: grad_qkv(l, g))
                add(self.qkv_proj(l).register_forward_hook(f_qkv))
            if grad_mlp_in is not None:
                add(self.mlp_ln(l).register_forward_pre_hook(_alias_grad_hook(lambda g, l=l: grad_mlp_in(l, g))))
        if grad_final_in is not None:
            add(self._final_ln.register_forward_pre_hook(_alias_grad_hook(grad_final_in)))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    # ---------------------------------------------------------------- tokens
    def token_id(self, text: str) -> int | None:
        """The single token of ``text`` (as written, no space added), or None if it is not one token."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids[0] if len(ids) == 1 else None

    @property
    def bos_id(self) -> int:
        t = self.tokenizer
        for tid in (t.bos_token_id, t.eos_token_id):
            if tid is not None:
                return int(tid)
        raise UserError("the tokenizer has no BOS or EOS token to prepend")

    @property
    def pad_id(self) -> int:
        t = self.tokenizer
        return int(t.pad_token_id) if t.pad_token_id is not None else self.bos_id

    def encode_pairs(self, pairs: Sequence, need_corrupted_label: bool = False) -> EncodedPairs:
        """BOS + tokens of every prompt; one-line UserErrors naming the row for bad data."""
        bos = self.bos_id
        clean, corr, lab, clab = [], [], [], []
        for i, p in enumerate(pairs, start=1):
            c = [bos] + self.tokenizer(p.clean, add_special_tokens=False)["input_ids"]
            k = [bos] + self.tokenizer(p.corrupted, add_special_tokens=False)["input_ids"]
            if len(c) != len(k):
                raise UserError(f"row {i}: clean and corrupted prompts have different token lengths "
                                f"({len(c) - 1} vs {len(k) - 1}): {p.clean!r} / {p.corrupted!r}")
            t = self.token_id(str(p.label))
            if t is None:
                raise UserError(f"row {i}: label {p.label!r} is not a single token")
            ct = None
            if need_corrupted_label:
                if p.corrupted_label in (None, ""):
                    raise UserError(f"row {i}: the logit-diff metric needs a corrupted_label column")
                ct = self.token_id(str(p.corrupted_label))
                if ct is None:
                    raise UserError(f"row {i}: corrupted_label {p.corrupted_label!r} is not a single token")
            clean.append(c)
            corr.append(k)
            lab.append(t)
            clab.append(ct)
        return EncodedPairs(clean, corr, lab, clab)

    def make_batch(self, enc: EncodedPairs, idx: Sequence[int]) -> Batch:
        """Right-pad rows ``idx`` of ``enc`` into one batch on the model's device."""
        P = max(len(enc.clean[i]) for i in idx)
        pad = self.pad_id
        clean = torch.full((len(idx), P), pad, dtype=torch.long)
        corr = torch.full((len(idx), P), pad, dtype=torch.long)
        for r, i in enumerate(idx):
            n = len(enc.clean[i])
            clean[r, :n] = torch.tensor(enc.clean[i])
            corr[r, :n] = torch.tensor(enc.corrupted[i])
        last = torch.tensor([len(enc.clean[i]) - 1 for i in idx])
        label = torch.tensor([enc.label[i] for i in idx])
        cl = None
        if all(enc.corrupted_label[i] is not None for i in idx):
            cl = torch.tensor([enc.corrupted_label[i] for i in idx]).to(self.device)
        d = self.device
        return Batch(clean.to(d), corr.to(d), last.to(d), label.to(d), cl)


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


def layernorm_vjp(ln: nn.LayerNorm, x: Tensor, v: Tensor) -> Tensor:
    """Closed-form J_LN(x)^T v for v of shape (..., B, P, D) broadcast against x (B, P, D).

    LN(x) = gamma * xhat + beta, xhat = (x - mean) / sqrt(var + eps) (biased var):
    J^T v = (u - mean(u) - xhat * mean(u * xhat)) / sigma with u = gamma * v.
    """
    mu = x.mean(-1, keepdim=True)
    xc = x - mu
    var = (xc * xc).mean(-1, keepdim=True)
    rstd = torch.rsqrt(var + ln.eps)
    xhat = xc * rstd
    u = v * ln.weight.to(v.dtype) if ln.weight is not None else v
    return (u - u.mean(-1, keepdim=True) - xhat * (u * xhat).mean(-1, keepdim=True)) * rstd
