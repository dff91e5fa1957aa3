"""The one place that knows each architecture's module names: hooks on an unmodified HF model.

circuitshift runs the frozen Hugging Face model itself (exact HF parity, no weight conversion) and
places PyTorch hooks where the EAP-IG graph needs them. Nothing else in the project touches module
names, weight layouts or transformer_lens: when transformer_lens changed its API (4.x replaced
HookedTransformer with TransformerBridge, whose split-q/k/v path is 4-8x slower and raises
NotImplementedError for split q/k/v inputs and per-head results on GPT-Neo and OPT) only this module
would have to care, and it uses neither.

Supported architectures (module names in brackets: attention norm / q,k,v projection(s) / output
projection / MLP norm / MLP / final norm / input node):

* ``gpt_neox`` (Pythia; parallel or sequential residual) [input_layernorm / query_key_value (fused,
  [head][q|k|v][dh]) / dense / post_attention_layernorm / mlp / final_layer_norm / embed_in].
* ``gpt2`` [ln_1 / c_attn (fused Conv1D, [q|k|v][head][dh]) / c_proj / ln_2 / mlp / ln_f / wte].
* ``gpt_neo`` [ln_1 / attn.attention.q_proj, k_proj, v_proj (separate, no bias) / out_proj / ln_2 /
  mlp / ln_f / wte]. Sequential blocks; no 1/sqrt(dh) attention scaling; layers alternate global and
  local (sliding-window) attention. Neither changes the graph nor the hooks: the window lives in the
  attention module's causal mask, after the q/k/v projections and before the output projection, which
  are the only places hooked, so both layer types are handled identically.
* ``opt`` (pre-LN only) [self_attn_layer_norm / self_attn.q_proj, k_proj, v_proj (separate, with bias)
  / out_proj / final_layer_norm (of the layer) / fc2 (the MLP has no module of its own: fc1 -> act ->
  fc2, run on the flattened (B*P, D) residual stream; the hooks reshape to (B, P, D)) /
  decoder.final_layer_norm / embed_tokens]. The learned positional embedding (offset 2) is added after
  the input node and is identical for clean and corrupted prompts, so it cancels. Post-LN OPT (OPT-350m)
  and project_in/project_out (word_embed_proj_dim != hidden_size) raise a UserError.
* ``llama`` [input_layernorm (RMSNorm) / self_attn.q_proj, k_proj, v_proj (grouped-query: G <= H kv
  heads) / o_proj / post_attention_layernorm / mlp (SwiGLU) / norm / embed_tokens]. Rotary embeddings
  are applied after the projections (inside the attention), so the hooked q/k are pre-rotary as for
  GPT-NeoX.

How split q/k/v inputs and per-head results are obtained (the same for every architecture, without
TransformerLens): a projection module's output is a list of heads; :meth:`ModelAdapter.qkv_projs`
describes each q/k/v projection module of a layer as the graph destination columns of its heads plus
their weight rows (n, dh, D) and bias (n, dh): one fused module with 3H heads (GPT-NeoX, GPT-2), or
three modules q (H), k (G), v (G) (GPT-Neo, OPT, Llama). With grouped-query attention the k/v heads of
kv-head g are the destinations ``a{l}.h{g*H/G}<k|v>`` (analysis.graph); the columns of the other query
heads' k/v stay empty.

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
  (:meth:`ModelAdapter.qkv_input_grads`, :func:`layernorm_vjp`, :func:`rmsnorm_vjp`); the gradient of
  the one use of the residual stream that enters the MLP's norm and the final norm (through an alias
  with a tensor hook).
* for patching (:mod:`analysis.patching`), each q/k/v projection module's output can be replaced by
  recomputing its heads from per-head inputs through the same norm module and weight rows
  (:meth:`ModelAdapter.write_heads`).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from analysis.errors import UserError
from analysis.graph import GraphSpec

SUPPORTED_ARCHITECTURES = ("gpt_neox", "gpt2", "gpt_neo", "opt", "llama")
FUSED_QKV = ("gpt_neox", "gpt2")

Tensor = torch.Tensor


@dataclass
class EncodedPairs:
    """Token ids of prompt pairs, teacher-forced: BOS + prompt + every answer token but the last (the
    clean answer's tokens in both runs, so the two differ only in the prompt); no padding yet.

    ``label[i]`` are the answer's tokens (one per answer position), ``corrupted_label[i]`` the
    corrupted answer's (same length) or None, ``n_prompt[i]`` the prompt's length including BOS."""

    clean: list[list[int]]
    corrupted: list[list[int]]
    label: list[list[int]]
    corrupted_label: list[list[int] | None]
    n_prompt: list[int]


@dataclass
class Batch:
    """A right-padded batch. Answer positions: ``pos[b, j]`` is the position whose next-token logits
    predict answer token j of row b (the last prompt position for j = 0); rows with fewer answer
    tokens than A are padded with their last real answer position and ``amask`` False there."""

    clean: Tensor  # (B, P) long, right-padded
    corrupted: Tensor  # (B, P)
    last: Tensor  # (B,) index of each prompt's last real position (= pos[:, 0])
    label: Tensor  # (B, A) answer token ids
    corrupted_label: Tensor | None  # (B, A) or None
    pos: Tensor  # (B, A) answer positions
    amask: Tensor  # (B, A) bool, True at real answer positions

    @property
    def keep(self) -> Tensor:
        """The positions whose logits are computed (``logits_to_keep``): every answer position."""
        return torch.unique(self.pos)

    def answer_logits(self, kept_logits: Tensor, keep: Tensor | None = None) -> Tensor:
        """(B, A, V) logits at the answer positions, from logits computed only at ``keep``."""
        keep = self.keep if keep is None else keep
        rows = torch.arange(self.pos.shape[0], device=kept_logits.device)[:, None]
        return kept_logits[rows, torch.searchsorted(keep, self.pos).to(kept_logits.device)]


@dataclass
class QKVProj:
    """One q/k/v projection module of a layer, as a list of heads.

    ``cols``: (n,) the graph destination column of each output head, relative to the layer's first
    q/k/v column (q of head h = h, k = H + h, v = 2H + h); ``W`` (n, dh, D) and ``b`` (n, dh) or None:
    head i's output is ``norm(x) @ W[i].T + b[i]``.
    """

    module: nn.Module
    cols: Tensor
    W: Tensor
    b: Tensor | None
    fused: bool  # the fused GPT-NeoX / GPT-2 module (output layout: ModelAdapter.split_qkv)

    @property
    def n(self) -> int:
        return int(self.cols.numel())


@dataclass
class QKVGradPlan:
    """Layer ``layer``'s q/k/v input-gradient maths for one scoring call
    (:meth:`ModelAdapter.qkv_grad_plan`): ``cols`` (n,) the graph columns of its heads (in the model's
    output order) relative to the layer's first q/k/v column; ``W`` (n, dh, D) their weight rows times
    the attention norm's weight (W'); the norm (LayerNorm, or RMSNorm) and its eps; ``offset`` (n, dh)
    each head's output at xhat = 0 (its bias plus W times the LayerNorm's bias), so that a projection
    output minus ``offset`` is xhat W'^T."""

    layer: int
    cols: Tensor
    W: Tensor
    layernorm: bool
    eps: float
    offset: Tensor  # (n, dh): each head's output at xhat = 0 (bias + W beta)


def check_supported(model_type: str | None) -> None:
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise UserError(f"unsupported architecture {model_type!r}; supported: "
                        + ", ".join(SUPPORTED_ARCHITECTURES))


class ModelAdapter:
    """A frozen HF causal LM plus its tokenizer, with the hooks the scoring engine needs."""

    def __init__(self, model: nn.Module, tokenizer, source: str | None = None):
        cfg = model.config
        check_supported(getattr(cfg, "model_type", None))
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
        if self.arch == "gpt_neox":
            base = self.model.gpt_neox
            self._embed, self._blocks, self._final_ln = base.embed_in, list(base.layers), base.final_layer_norm
        elif self.arch in ("gpt2", "gpt_neo"):
            base = self.model.transformer
            self._embed, self._blocks, self._final_ln = base.wte, list(base.h), base.ln_f
        elif self.arch == "opt":
            base = self.model.model.decoder
            if base.final_layer_norm is None:
                raise UserError("OPT without a final LayerNorm is not supported")
            self._embed, self._blocks, self._final_ln = base.embed_tokens, list(base.layers), base.final_layer_norm
        else:  # llama
            base = self.model.model
            self._embed, self._blocks, self._final_ln = base.embed_tokens, list(base.layers), base.norm
        self._w_qkv: dict[int, Tensor] = {}
        self._w_o: dict[int, Tensor] = {}

    # ---------------------------------------------------------------- modules and weights
    def _attn(self, l: int) -> nn.Module:
        b = self._blocks[l]
        if self.arch == "gpt_neox":
            return b.attention
        if self.arch == "gpt2":
            return b.attn
        if self.arch == "gpt_neo":
            return b.attn.attention
        return b.self_attn  # opt, llama

    def attn_ln(self, l: int) -> nn.Module:
        b = self._blocks[l]
        if self.arch in ("gpt_neox", "llama"):
            return b.input_layernorm
        if self.arch == "opt":
            return b.self_attn_layer_norm
        return b.ln_1  # gpt2, gpt_neo

    def mlp_ln(self, l: int) -> nn.Module:
        b = self._blocks[l]
        if self.arch in ("gpt_neox", "llama"):
            return b.post_attention_layernorm
        if self.arch == "opt":
            return b.final_layer_norm
        return b.ln_2

    def final_ln(self) -> nn.Module:
        return self._final_ln

    def qkv_proj(self, l: int) -> nn.Module:
        """The fused q/k/v projection (GPT-NeoX, GPT-2 only; see :meth:`qkv_projs` for every architecture)."""
        if self.arch not in FUSED_QKV:
            raise ValueError(f"{self.arch} has separate q/k/v projections: use qkv_projs")
        a = self._attn(l)
        return a.query_key_value if self.arch == "gpt_neox" else a.c_attn

    def qkv_modules(self, l: int) -> list[nn.Module]:
        """The q/k/v projection module(s) of layer l: [fused] or [q_proj, k_proj, v_proj]."""
        if self.arch in FUSED_QKV:
            return [self.qkv_proj(l)]
        a = self._attn(l)
        return [a.q_proj, a.k_proj, a.v_proj]

    def o_proj(self, l: int) -> nn.Module:
        a = self._attn(l)
        if self.arch == "gpt_neox":
            return a.dense
        if self.arch == "gpt2":
            return a.c_proj
        if self.arch == "llama":
            return a.o_proj
        return a.out_proj  # gpt_neo, opt

    def mlp(self, l: int) -> nn.Module:
        """The module whose output is the MLP node's output (OPT: ``fc2``, output (B*P, D))."""
        b = self._blocks[l]
        return b.fc2 if self.arch == "opt" else b.mlp

    def W_qkv(self, l: int) -> Tensor:
        """(3, H, dh, D): q_h = LN(x) @ W_qkv[0, h].T (+ bias). Not for grouped-query models (use
        :meth:`qkv_projs`)."""
        if l not in self._w_qkv:
            H, dh, D = self.n_heads, self.d_head, self.d_model
            if self.arch == "gpt_neox":  # Linear (3D, D); output layout [head][q|k|v][dh]
                w = self.qkv_proj(l).weight.detach().view(H, 3, dh, D).permute(1, 0, 2, 3)
            elif self.arch == "gpt2":  # Conv1D (D, 3D); output layout [q|k|v][head][dh]
                w = self.qkv_proj(l).weight.detach().t().view(3, H, dh, D)
            else:
                if self.n_kv_heads != H:
                    raise ValueError("grouped-query attention has no (3, H, dh, D) W_qkv: use qkv_projs")
                w = torch.stack([m.weight.detach().view(H, dh, D) for m in self.qkv_modules(l)])
            self._w_qkv[l] = w.contiguous()
        return self._w_qkv[l]

    def _qkv_bias(self, l: int) -> Tensor | None:
        """(3H, dh) bias rows of the fused projection, ordered q heads, k heads, v heads."""
        H, dh = self.n_heads, self.d_head
        bias = self.qkv_proj(l).bias
        if bias is None:
            return None
        bias = bias.detach()
        if self.arch == "gpt_neox":
            return bias.view(H, 3, dh).transpose(0, 1).reshape(3 * H, dh)
        return bias.view(3 * H, dh)

    def qkv_projs(self, l: int) -> list[QKVProj]:
        """Layer l's q/k/v projection modules as lists of heads (the module docstring)."""
        H, G, dh, D = self.n_heads, self.n_kv_heads, self.d_head, self.d_model
        dev = self.device
        if self.arch in FUSED_QKV:
            return [QKVProj(self.qkv_proj(l), torch.arange(3 * H, device=dev), self.W_qkv(l).view(3 * H, dh, D),
                            self._qkv_bias(l), True)]
        r = H // G
        kv_heads = torch.arange(G, device=dev) * r  # the first query head of each group
        cols = [torch.arange(H, device=dev), H + kv_heads, 2 * H + kv_heads]
        out = []
        for m, c in zip(self.qkv_modules(l), cols):
            n = int(c.numel())
            b = m.bias.detach().view(n, dh) if m.bias is not None else None
            out.append(QKVProj(m, c, m.weight.detach().view(n, dh, D), b, False))
        return out

    def W_O(self, l: int) -> Tensor:
        """(H, dh, D): head h's output is z_h @ W_O[h]."""
        if l not in self._w_o:
            H, dh, D = self.n_heads, self.d_head, self.d_model
            w = self.o_proj(l).weight.detach()
            w = w if self.arch == "gpt2" else w.t()  # -> (D_in=H*dh, D_out) (GPT-2's Conv1D already is)
            self._w_o[l] = w.reshape(H, dh, D).contiguous()
        return self._w_o[l]

    def split_qkv(self, g: Tensor) -> Tensor:
        """Fused architectures: (B, P, 3D) q/k/v projection output (or its gradient) -> (B, P, 3, H, dh)
        (a view)."""
        B, P, _ = g.shape
        H, dh = self.n_heads, self.d_head
        if self.arch == "gpt_neox":
            return g.view(B, P, H, 3, dh).transpose(2, 3)
        if self.arch == "gpt2":
            return g.view(B, P, 3, H, dh)
        raise ValueError(f"{self.arch} has separate q/k/v projections: use heads_of")

    def heads_of(self, p: QKVProj, out: Tensor) -> Tensor:
        """A projection's output (or gradient) (B, P, n*dh) -> its heads (B, P, n, dh), in ``p.cols`` order."""
        B, P = out.shape[:2]
        if p.fused:
            return self.split_qkv(out).reshape(B, P, p.n, self.d_head)
        return out.view(B, P, p.n, self.d_head)

    def write_heads(self, p: QKVProj, like: Tensor, new: Tensor) -> Tensor:
        """A new projection output shaped and laid out as ``like`` from per-head values (B, P, n, dh)."""
        res = torch.empty_like(like)
        B, P = like.shape[:2]
        if p.fused:
            self.split_qkv(res).copy_(new.view(B, P, 3, self.n_heads, self.d_head))
        else:
            res.view(B, P, p.n, self.d_head).copy_(new)
        return res

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
        """Gradient at each head's q/k/v INPUT (the residual stream before the attention norm).

        g_qkv: (B, P, n_qkv) gradient at the q/k/v projection output(s) (separate projections: q, k, v
        concatenated); x: (B, P, D) the attention norm's input. Returns (3H, B, P, D) in the graph's
        column order (q heads, k heads, v heads): g_in(h, t) = J_norm(x)^T (W_t[h]^T g_t_h), the norm's
        VJP in closed form. With grouped-query attention, kv-head g's k/v gradient sits at the first
        query head of its group and the other heads' k/v rows are zero.
        """
        dt = out_dtype or g_qkv.dtype
        projs = self.qkv_projs(l)
        if len(projs) == 1:
            g = self.split_qkv(g_qkv).to(dt)
            u = torch.einsum("bpthk,thkd->thbpd", g, self.W_qkv(l).to(dt))  # (3, H, B, P, D)
            u = u.reshape(3 * self.n_heads, *u.shape[2:])
            return norm_vjp(self.attn_ln(l), x.to(dt), u)
        parts = torch.split(g_qkv, [p.n * self.d_head for p in projs], dim=-1)
        u = torch.cat([torch.einsum("bpnk,nkd->nbpd", self.heads_of(p, gp).to(dt), p.W.to(dt))
                       for p, gp in zip(projs, parts)])
        gin = norm_vjp(self.attn_ln(l), x.to(dt), u)
        if gin.shape[0] == 3 * self.n_heads:
            return gin
        full = gin.new_zeros(3 * self.n_heads, *gin.shape[1:])
        full[torch.cat([p.cols for p in projs])] = gin
        return full

    # ---------------------------------------------------------------- fused scoring maths
    def qkv_grad_plan(self, l: int, dtype) -> "QKVGradPlan | None":
        """Layer l's q/k/v input-gradient maths for :meth:`qkv_input_grads_nomean` and the scoring
        engine, precomputed once per scoring call (the caller caches it; the weights are frozen while
        it is used). Heads in the MODEL's output order (the projection output (B, P, n*dh) is (B, P, n,
        dh) without a copy; ``cols`` maps them to graph columns), weight rows scaled by the attention
        norm's weight. None when the attention norm has no closed-form VJP here (use
        :meth:`qkv_input_grads`)."""
        norm = self.attn_ln(l)
        if isinstance(norm, nn.LayerNorm):
            layernorm, eps = True, float(norm.eps)
        elif hasattr(norm, "variance_epsilon") and hasattr(norm, "weight"):  # LlamaRMSNorm
            layernorm, eps = False, float(norm.variance_epsilon)
        else:
            return None
        H, dh, D = self.n_heads, self.d_head, self.d_model
        if self.arch == "gpt_neox":  # output layout [head][q|k|v][dh]: head i = (h, t), column t*H + h
            m = self.qkv_proj(l)
            W0 = m.weight.detach().view(3 * H, dh, D)
            b = None if m.bias is None else m.bias.detach().view(3 * H, dh)
            cols = (torch.arange(3, device=self.device)[None, :] * H
                    + torch.arange(H, device=self.device)[:, None]).reshape(-1)
        else:  # gpt2 [q|k|v][head][dh]; separate q, k, v projections concatenated: the graph's order
            projs = self.qkv_projs(l)
            W0 = torch.cat([p.W for p in projs])
            cols = torch.cat([p.cols for p in projs])
            bs = [p.b if p.b is not None else torch.zeros(p.n, dh, dtype=W0.dtype, device=W0.device) for p in projs]
            b = None if all(p.b is None for p in projs) else torch.cat(bs)
        W0 = W0.to(dtype)
        W = W0 * norm.weight.detach().to(dtype) if norm.weight is not None else W0
        offset = torch.zeros(W0.shape[0], dh, dtype=dtype, device=W0.device)
        if b is not None:
            offset += b.to(dtype)
        beta = getattr(norm, "bias", None) if layernorm else None
        if beta is not None:
            offset += W0 @ beta.detach().to(dtype)
        return QKVGradPlan(l, cols, W.contiguous(), layernorm, eps, offset)

    def norm_stats(self, plan: "QKVGradPlan", x: Tensor) -> tuple[Tensor, Tensor]:
        """The attention norm's normalised input and inverse scale: x (..., D) -> xhat (..., D),
        r (..., 1) in ``plan.W``'s dtype (LayerNorm: xhat = (x - mean) r, r = 1/sigma; RMSNorm:
        xhat = x r, r = 1/rms). Leading dimensions are free (e.g. several layers stacked)."""
        x = x.to(plan.W.dtype)
        if plan.layernorm:
            xc = x - x.mean(-1, keepdim=True)
            r = torch.rsqrt((xc * xc).mean(-1, keepdim=True) + plan.eps)
            return xc.mul_(r), r
        r = torch.rsqrt((x * x).mean(-1, keepdim=True) + plan.eps)
        return x * r, r

    def head_view(self, plan: "QKVGradPlan", t: Tensor) -> Tensor:
        """A q/k/v projection output or its gradient (..., B, P, n*dh) as an (..., n, B, P, dh) view,
        heads in ``plan.cols`` order (no copy: the plan keeps the model's head order)."""
        *lead, B, P, _ = t.shape
        return t.view(*lead, B, P, -1, self.d_head).movedim(-2, -4)

    def scaled_head_grads(self, plan: "QKVGradPlan", g_qkv: Tensor, r: Tensor, out: Tensor | None = None) -> Tensor:
        """The q/k/v projection output gradient (B, P, n*dh) per head and scaled by the norm's r
        (B*P, 1): (n, B*P, dh) in ``plan.cols`` order, one strided pass (``out``: a buffer)."""
        B, P = g_qkv.shape[:2]
        n, dh = plan.W.shape[0], self.d_head
        gs = out.view(n, B, P, dh) if out is not None else torch.empty(n, B, P, dh, dtype=plan.W.dtype,
                                                                        device=g_qkv.device)
        torch.mul(self.head_view(plan, g_qkv), r.view(1, B, P, 1), out=gs)
        return gs.view(n, B * P, dh)

    def qkv_input_grads_nomean(self, plan: "QKVGradPlan", g_qkv: Tensor, x: Tensor) -> Tensor:
        """:meth:`qkv_input_grads` restructured as the scoring engine computes it: (n, B*P, D) in
        ``plan.cols`` order (only the heads that have k/v with grouped-query attention).

        RMSNorm: exactly J^T (W_h^T g_h). LayerNorm: J^T (W_h^T g_h) WITHOUT its mean term, i.e. the
        gradient plus a constant along d_model for every (head, position): exact when contracted with
        vectors whose mean over d_model is zero (the engine centres its activation differences, which
        changes no score: every destination's true gradient is a LayerNorm VJP, of zero mean).

        With gamma folded into ``plan.W`` (W' = W gamma) and r, xhat from :meth:`norm_stats`:
        J^T (W^T g) = v - xhat (v . xhat) / D [- r mean(gamma W^T g)], v = W'^T (r g). The engine never
        forms this per pass: it sums r g over the IG points (v is linear in it) and gets v . xhat as
        (r g) . (xhat W'^T), so the (n, B*P, D) tensor is built once per batch."""
        D = x.shape[-1]
        xhat, r = self.norm_stats(plan, x)
        xhat = xhat.reshape(-1, D)
        v = torch.bmm(self.scaled_head_grads(plan, g_qkv, r), plan.W)  # (n, B*P, D)
        m = torch.bmm(v.transpose(0, 1), xhat.unsqueeze(-1))  # (B*P, n, 1): v . xhat
        return v.addcmul_(xhat, m.transpose(0, 1), value=-1.0 / D)

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
        L = self.n_layers

        def add(h):
            handles.append(h)

        if embed_override is not None:
            add(self._embed.register_forward_hook(lambda m, a, out: embed_override(out)))
        # OPT runs its MLP on the flattened (B*P, D) stream: remember each layer's (B, P, D) shape
        shapes: dict[int, torch.Size] = {}
        mlp_hooked = on_mlp_out is not None or mlp_out_override is not None
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
            if mlp_hooked and self.arch == "opt":
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
            if grad_qkv is not None:
                mods = self.qkv_modules(l)
                if len(mods) == 1:
                    def f_qkv(m, a, out, l=l):
                        if out.requires_grad:
                            out.register_hook(lambda g, l=l: grad_qkv(l, g))
                    add(mods[0].register_forward_hook(f_qkv))
                else:  # separate q, k, v: report their gradients concatenated, once all three arrived
                    buf: dict[int, Tensor] = {}

                    def f_part(m, a, out, l=l, i=0, buf=buf):
                        if not out.requires_grad:
                            return

                        def got(g):
                            buf[i] = g
                            if len(buf) == 3:
                                cat = torch.cat([buf[0], buf[1], buf[2]], dim=-1)
                                buf.clear()
                                grad_qkv(l, cat)
                        out.register_hook(got)
                    for i, m in enumerate(mods):
                        add(m.register_forward_hook(lambda mm, a, out, i=i, f=f_part: f(mm, a, out, i=i)))
            if on_qkv_out is not None:
                mods = self.qkv_modules(l)
                if len(mods) == 1:
                    add(mods[0].register_forward_hook(lambda m, a, out, l=l: on_qkv_out(l, out.detach())))
                else:
                    obuf: dict[int, Tensor] = {}

                    def f_out(m, a, out, l=l, i=0, obuf=obuf):
                        obuf[i] = out.detach()
                        if len(obuf) == 3:
                            on_qkv_out(l, torch.cat([obuf[0], obuf[1], obuf[2]], dim=-1))
                            obuf.clear()
                    for i, m in enumerate(mods):
                        add(m.register_forward_hook(lambda mm, a, out, i=i, f=f_out: f(mm, a, out, i=i)))
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
        ids = self.answer_ids(text)
        return ids[0] if len(ids) == 1 else None

    def answer_ids(self, text: str) -> list[int]:
        """The tokens of an answer exactly as it follows the prompt (a leading space is part of it)."""
        return self.tokenizer(str(text), add_special_tokens=False)["input_ids"]

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
        """BOS + prompt + answer tokens but the last; one-line UserErrors naming the row for bad data.

        The answer is the label exactly as written (README, "Labels as the model sees them"). A
        corrupted answer of another token length is an error when the metric needs it and unused
        otherwise."""
        bos = self.bos_id
        out = EncodedPairs([], [], [], [], [])
        for i, p in enumerate(pairs, start=1):
            c = [bos] + self.tokenizer(p.clean, add_special_tokens=False)["input_ids"]
            k = [bos] + self.tokenizer(p.corrupted, add_special_tokens=False)["input_ids"]
            if len(c) != len(k):
                raise UserError(f"row {i}: clean and corrupted prompts have different token lengths "
                                f"({len(c) - 1} vs {len(k) - 1}): {p.clean!r} / {p.corrupted!r}")
            ans = self.answer_ids(p.label) if str(p.label).strip() else []
            if not ans:
                raise UserError(f"row {i}: empty answer (label {p.label!r})")
            cans = None
            if need_corrupted_label:
                if p.corrupted_label in (None, "") or not str(p.corrupted_label).strip():
                    raise UserError(f"row {i}: the logit-diff metric needs a corrupted_label column")
                cans = self.answer_ids(p.corrupted_label)
                if len(cans) != len(ans):
                    raise UserError(f"row {i}: answer {p.label!r} is {len(ans)} token(s) but corrupted "
                                    f"answer {p.corrupted_label!r} is {len(cans)}; they must be equal")
            out.clean.append(c + ans[:-1])
            out.corrupted.append(k + ans[:-1])
            out.label.append(ans)
            out.corrupted_label.append(cans)
            out.n_prompt.append(len(c))
        return out

    def make_batch(self, enc: EncodedPairs, idx: Sequence[int]) -> Batch:
        """Right-pad rows ``idx`` of ``enc`` into one batch on the model's device."""
        idx = list(idx)
        P = max(len(enc.clean[i]) for i in idx)
        A = max(len(enc.label[i]) for i in idx)
        pad = self.pad_id
        clean = torch.full((len(idx), P), pad, dtype=torch.long)
        corr = torch.full((len(idx), P), pad, dtype=torch.long)
        pos = torch.zeros((len(idx), A), dtype=torch.long)
        label = torch.zeros((len(idx), A), dtype=torch.long)
        amask = torch.zeros((len(idx), A), dtype=torch.bool)
        with_cl = all(enc.corrupted_label[i] is not None for i in idx)
        cl = torch.zeros((len(idx), A), dtype=torch.long) if with_cl else None
        for r, i in enumerate(idx):
            n, a = len(enc.clean[i]), len(enc.label[i])
            clean[r, :n] = torch.tensor(enc.clean[i])
            corr[r, :n] = torch.tensor(enc.corrupted[i])
            first = enc.n_prompt[i] - 1
            pos[r] = torch.tensor([first + min(j, a - 1) for j in range(A)])
            label[r] = torch.tensor([enc.label[i][min(j, a - 1)] for j in range(A)])
            amask[r, :a] = True
            if cl is not None:
                cl[r] = torch.tensor([enc.corrupted_label[i][min(j, a - 1)] for j in range(A)])
        d = self.device
        return Batch(clean.to(d), corr.to(d), pos[:, 0].to(d), label.to(d),
                     None if cl is None else cl.to(d), pos.to(d), amask.to(d))


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


def norm_vjp(norm: nn.Module, x: Tensor, v: Tensor) -> Tensor:
    """Closed-form J_norm(x)^T v for a LayerNorm or an RMSNorm (Llama) module."""
    if isinstance(norm, nn.LayerNorm):
        return layernorm_vjp(norm, x, v)
    if hasattr(norm, "variance_epsilon") and hasattr(norm, "weight"):  # LlamaRMSNorm
        return rmsnorm_vjp(norm, x, v)
    raise UserError(f"no closed-form VJP for the norm module {type(norm).__name__}")


def rmsnorm_vjp(norm: nn.Module, x: Tensor, v: Tensor) -> Tensor:
    """Closed-form J_RMS(x)^T v for v of shape (..., B, P, D) broadcast against x (B, P, D).

    RMS(x) = w * xhat, xhat = x / sqrt(mean(x^2) + eps) = x * r:
    J^T v = r * (u - xhat * mean(u * xhat)) with u = w * v.
    """
    r = torch.rsqrt((x * x).mean(-1, keepdim=True) + norm.variance_epsilon)
    xhat = x * r
    u = v * norm.weight.to(v.dtype)
    return (u - xhat * (u * xhat).mean(-1, keepdim=True)) * r


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
