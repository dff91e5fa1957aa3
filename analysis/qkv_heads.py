"""Each layer's q/k/v projections as lists of heads, per weight layout (the registry's ``qkv_layout``).

A projection module's output is a list of heads. :class:`QKVHeads` (mixed into
:class:`analysis.adapter.ModelAdapter`) describes each q/k/v projection module of a layer as the graph
destination columns of its heads plus their weight rows (n, dh, D) and bias (n, dh): one fused module
with 3H heads ('fused_interleaved' GPT-NeoX [head][q|k|v][dh], 'fused_conv1d' GPT-2 [q|k|v][head][dh]),
or three modules q (H), k (G), v (G) ('split', 'gqa'). With grouped-query attention the k/v heads of
kv-head g are the destinations ``a{l}.h{g*H/G}<k|v>`` (analysis.graph); the columns of the other
query heads' k/v stay empty. It also holds the per-head gradient maths built on those rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from analysis.architectures import Architecture
from analysis.norms import norm_kind, norm_vjp

Tensor = torch.Tensor


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


class QKVHeads:
    """The q/k/v head maths of :class:`analysis.adapter.ModelAdapter` (which provides the attributes
    and module accessors declared here)."""

    architecture: Architecture
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_model: int
    device: torch.device
    _w_qkv: dict[int, Tensor]
    # and the module accessors qkv_proj(l), qkv_modules(l), attn_ln(l)

    # ---------------------------------------------------------------- fused layouts
    def _interleaved(self) -> bool:
        return self.architecture.qkv_layout == "fused_interleaved"

    def _fused_rows(self, l: int) -> Tensor:
        """The fused projection's weight as (3H, dh, D) head rows in the module's output order."""
        w = self.qkv_proj(l).weight.detach()
        w = w.t() if self.architecture.fan_in_fan_out else w  # Conv1D stores (D, 3D)
        # contiguous: the scoring maths then runs on the same memory layout for every architecture
        return w.reshape(3 * self.n_heads, self.d_head, self.d_model).contiguous()

    def _fused_cols(self) -> Tensor:
        """The graph column of each fused output head (module order): head i = (h, t) -> t*H + h when
        interleaved, i itself for [q|k|v][head]."""
        H, dev = self.n_heads, self.device
        if self._interleaved():
            return (torch.arange(3, device=dev)[None, :] * H + torch.arange(H, device=dev)[:, None]).reshape(-1)
        return torch.arange(3 * H, device=dev)

    def W_qkv(self, l: int) -> Tensor:
        """(3, H, dh, D): q_h = LN(x) @ W_qkv[0, h].T (+ bias). Not for grouped-query models (use
        :meth:`qkv_projs`)."""
        if l not in self._w_qkv:
            H, dh, D = self.n_heads, self.d_head, self.d_model
            if self.architecture.fused_qkv:
                rows = self._fused_rows(l)
                w = rows.view(H, 3, dh, D).permute(1, 0, 2, 3) if self._interleaved() else rows.view(3, H, dh, D)
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
        if self._interleaved():
            return bias.view(H, 3, dh).transpose(0, 1).reshape(3 * H, dh)
        return bias.view(3 * H, dh)

    def qkv_projs(self, l: int) -> list[QKVProj]:
        """Layer l's q/k/v projection modules as lists of heads (the module docstring)."""
        H, G, dh, D = self.n_heads, self.n_kv_heads, self.d_head, self.d_model
        dev = self.device
        if self.architecture.fused_qkv:
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

    def split_qkv(self, g: Tensor) -> Tensor:
        """Fused architectures: (B, P, 3D) q/k/v projection output (or its gradient) -> (B, P, 3, H, dh)
        (a view)."""
        B, P, _ = g.shape
        H, dh = self.n_heads, self.d_head
        if not self.architecture.fused_qkv:
            raise ValueError(f"{self.architecture.model_type} has separate q/k/v projections: use heads_of")
        if self._interleaved():
            return g.view(B, P, H, 3, dh).transpose(2, 3)
        return g.view(B, P, 3, H, dh)

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

    # ---------------------------------------------------------------- per-head gradients
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
        kind = norm_kind(norm)
        if kind is None:
            return None
        layernorm = kind == "layernorm"
        eps = float(norm.eps if layernorm else norm.variance_epsilon)
        dh = self.d_head
        if self.architecture.fused_qkv:  # one module: its heads in output order, mapped to graph columns
            m = self.qkv_proj(l)
            W0 = self._fused_rows(l)
            b = None if m.bias is None else m.bias.detach().view(3 * self.n_heads, dh)
            cols = self._fused_cols()
        else:  # separate q, k, v projections concatenated: the graph's order
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
