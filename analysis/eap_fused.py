"""The scoring engine's contraction state and its fused fast path (native adapter).

Speed: the frozen HF model runs unmodified (no weight gradients, no split q/k/v in the forward pass):
one forward without grad at one end point, then one forward + backward per gradient point (the clean
or corrupted end point doubles as an IG step), so eap-ig-inputs costs (m+1) forwards + m backwards
plus the contraction. Per-head q/k/v input gradients come from the q/k/v projection output gradient
through the norm's closed-form VJP (:mod:`analysis.adapter`). The activation differences
(n_src, B, P, D) are kept per batch (in a buffer reused across batches).

The contraction (issue 19; native adapter, :class:`Engine`) is restructured, not approximated:

* LayerNorm models: the differences are centred over d_model once per batch. Every destination's
  gradient is a LayerNorm VJP, of zero mean over d_model, so no score changes, and the per-head
  VJP's mean term drops out.
* The norm's weight is folded into the q/k/v weight rows and 1/sigma into the small per-head output
  gradient, so v = W'^T (r g) needs no pass over the (heads, B, P, D) tensor; the remaining xhat
  term of the VJP is (diff . xhat)(v . xhat) / D, two small per-position products (diff . xhat for
  every layer from one batched matmul; v . xhat from the q/k/v projection output the forward
  computed anyway, minus its bias and W beta).
* Scores are linear in the gradients, so r g and the MLP / logits input gradients are SUMMED over
  the gradient points, and the (heads, B, P, D) gradients and the big matmul with the differences
  happen once per batch instead of once per pass (per layer, one matmul for the heads, the MLP and
  the logits together).

float64 scores equal the pre-issue-19 engine's to ~1e-15 relative (tests/test_scores_unchanged.py);
float32 within 6e-7 of the largest score, well inside float32's own error (~1e-5 against float64).
"""

from __future__ import annotations

import math

import torch

from analysis.adapter import ModelAdapter
from analysis.graph import Graph

Tensor = torch.Tensor


class Grads:
    """Gradients (and attention LayerNorm inputs) of one backward pass."""

    def __init__(self):
        self.qkv: dict[int, Tensor] = {}
        self.x: dict[int, Tensor] = {}
        self.mlp: dict[int, Tensor] = {}
        self.final: Tensor | None = None
        self.out: dict[int, Tensor] = {}  # q/k/v projection outputs (fused path, when asked)

    def hook_kwargs(self, qkv_out: bool = False) -> dict:
        def gq(l, g):
            self.qkv[l] = g

        def gx(l, x):
            self.x[l] = x

        def gm(l, g):
            self.mlp[l] = g

        def gf(g):
            self.final = g

        kw = dict(grad_qkv=gq, on_attn_ln_in=gx, grad_mlp_in=gm, grad_final_in=gf)
        if qkv_out:
            kw["on_qkv_out"] = self.out.__setitem__
        return kw


class Engine:
    """What one ``score`` call keeps across its batches: the fused contraction's per-layer plans and
    weights (in the accumulation dtype), and reusable buffers (no per-batch allocation of the
    activation differences).

    The fused path (native adapter, every attention norm a LayerNorm or RMSNorm) contracts with
    :meth:`ModelAdapter.qkv_input_grads_nomean`; when every norm a destination reads is a LayerNorm
    the activation differences are centred over d_model once per batch, which changes no score (each
    destination's gradient is a LayerNorm VJP, with zero mean over d_model) and lets the per-head
    gradients skip their mean term. Other adapters (TransformerLens) take the generic path:
    ``qkv_input_grads`` (3H, B, P, D) and one matmul per layer."""

    def __init__(self, adapter, graph: Graph, acc):
        self.a, self.g, self.acc = adapter, graph, acc
        L = adapter.n_layers
        self.fused = isinstance(adapter, ModelAdapter)
        self.plans: dict = {}
        if self.fused:
            for l in range(L):
                plan = adapter.qkv_grad_plan(l, acc)
                if plan is None:
                    break
                self.plans[l] = plan
            kinds = {(p.layernorm, p.eps, tuple(p.W.shape)) for p in self.plans.values()}
            self.fused = len(self.plans) == L and len(kinds) == 1  # one norm kind / eps / shape: stackable
        self.center = self.fused and all(
            isinstance(m, torch.nn.LayerNorm)
            for m in [adapter.attn_ln(l) for l in range(L)] + [adapter.mlp_ln(l) for l in range(L)]
            + [adapter.final_ln()])
        H = adapter.n_heads
        spec = graph.spec
        self.layers = []  # per layer: (n_up qkv, n_up mlp, destination columns of qkv heads, mlp, logits)
        for l in range(L):
            c0 = spec.col0(l)
            qcols = (c0 + self.plans[l].cols.cpu()) if self.fused else c0 + torch.arange(3 * H)
            cols = torch.cat([qcols, torch.tensor([spec.mlp_col(l), spec.logits_col])]).to(adapter.device)
            self.layers.append((spec.n_upstream(l), spec.n_upstream(l, mlp=True), cols))
        if self.fused:
            self.w_o = {l: adapter.W_O(l).to(acc) for l in range(L)}
            self.plan = self.plans[0]  # the norm kind / eps every layer shares
            self.n = self.plan.W.shape[0]
            self.offset = torch.stack([self.plans[l].offset.reshape(-1) for l in range(L)])  # (L, n*dh)
            self.w_flat = torch.stack([self.plans[l].W.view(self.n * adapter.d_head, -1) for l in range(L)])
            # the fused path accumulates scores in plan order, (n_src, L, n + 1) (q/k/v heads, MLP) plus
            # the logits column, with slice adds only (deterministic on every device); this maps them to
            # the graph's columns once per batch, on the CPU
            self.plan_cols = torch.stack([c[:self.n + 1] for _, _, c in self.layers]).reshape(-1).cpu()
        # xhat W'^T, needed per gradient point, is the projection output the forward computed anyway,
        # minus the plan's offset: used when the model runs in the accumulation dtype and the norm is a
        # LayerNorm (a bf16 output would cost precision, and HF's RMSNorm computes in float32 even in a
        # float64 model); otherwise one batched matmul per gradient point
        self.qkv_out = self.fused and adapter.dtype == acc and self.plan.layernorm
        self._bufs: dict[str, Tensor] = {}

    def buffer(self, name: str, *shape) -> Tensor:
        """A reusable uninitialised tensor of ``shape`` (storage grows, never shrinks)."""
        n = math.prod(shape)
        b = self._bufs.get(name)
        if b is None or b.numel() < n:
            b = self._bufs[name] = torch.empty(n, dtype=self.acc, device=self.a.device)
        return b[:n].view(*shape)


class FusedContraction:
    """The fused contraction of :class:`analysis.eap_batch.BatchScorer` (its ``eng``, ``a``, ``g``,
    ``diff``, ``B``, ``P``, ``scores_plan`` / ``scores_final`` and the ``_pending`` / ``_gs`` /
    ``_gs_layers`` / ``_gsum`` accumulators): gradient points are accumulated, then contracted with
    the activation differences once per batch in :meth:`flush`."""

    def _accumulate(self, gr: Grads, rows: tuple[int, int] | None) -> None:
        """One gradient point of the fused contraction. Every score is linear in the destination
        gradients, so their parts that are linear in the pass's gradient are SUMMED over the gradient
        points and contracted with ``diff`` once, in :meth:`flush`: per layer the heads' scaled
        gradients r g (n, B*P, dh; v = W'^T (r g), ``ModelAdapter.qkv_input_grads_nomean``), the MLP
        input gradient and the logits one. Only the norm's xhat term depends on the pass beyond r g:
        -(1/D) sum_{b,p} (diff . xhat)(v . xhat), added to the scores now, with every layer at once:
        diff . xhat from one batched matmul over ``diff``, v . xhat = (r g) . (xhat W'^T) where
        xhat W'^T is the q/k/v projection output minus the plan's offset (or one batched matmul)."""
        rows = (0, self.g.n_src) if rows is None else tuple(rows)
        if self._pending is not None and self._pending != rows:
            self.flush()
        self._pending = rows
        self._complete_diff()
        a, eng = self.a, self.eng
        lo, hi = rows
        B, P, D, dh, n = self.B, self.P, a.d_model, a.d_head, eng.n
        BP = B * P
        qs = [l for l in sorted(gr.qkv) if lo < min(hi, eng.layers[l][0])]
        if qs:
            Lq = len(qs)
            span = qs == list(range(qs[0], qs[0] + Lq))
            at = slice(qs[0], qs[0] + Lq) if span else torch.tensor(qs, device=a.device)
            xhat, r = a.norm_stats(eng.plan, torch.stack([gr.x[l] for l in qs]).view(Lq, BP, D))
            r_hi = min(hi, max(eng.layers[l][0] for l in qs))
            src = self.diff[lo:r_hi].view(r_hi - lo, BP, D).transpose(0, 1)  # (B*P, rows, D)
            c = torch.bmm(src, xhat.permute(1, 2, 0))  # (B*P, rows, Lq): diff . xhat
            # in the projection's own layout (B*P, n*dh): contiguous, no permutation. y = xhat W'^T,
            # then g y, summed over dh and times r: v . xhat
            y = eng.buffer("y", Lq, BP, n * dh)
            if eng.qkv_out:  # the projection output - offset
                for j, l in enumerate(qs):
                    torch.sub(gr.out[l].view(BP, -1), eng.offset[l], out=y[j])
            else:
                torch.bmm(xhat, eng.w_flat[at].transpose(1, 2), out=y)
            for j, l in enumerate(qs):
                y[j].mul_(gr.qkv[l].view(BP, -1))
            m = y.view(Lq, BP, n, dh).sum(-1).mul_(r)  # (Lq, B*P, n): v . xhat
            t2 = torch.bmm(c.permute(2, 1, 0), m)  # (Lq, rows, n)
            # rows past a layer's upstream count land on non-edges, which score() zeroes
            if span:
                self.scores_plan[lo:r_hi, at, :n].add_(t2.transpose(0, 1), alpha=-1.0 / D)
            else:
                for j, l in enumerate(qs):
                    self.scores_plan[lo:r_hi, l, :n].add_(t2[j], alpha=-1.0 / D)
            if self._gs is None:
                self._gs = eng.buffer("gs_sum", a.n_layers, BP, n * dh)
                self._gs_layers = set()
            for j, l in enumerate(qs):  # sum over the gradient points of r g
                g = gr.qkv[l].view(BP, -1)
                if l in self._gs_layers:
                    self._gs[l].addcmul_(g, r[j])
                else:
                    torch.mul(g, r[j], out=self._gs[l])
            self._gs_layers.update(qs)
        adds, srcs = [], []
        for l, g in gr.mlp.items():
            if lo < min(hi, eng.layers[l][1]):
                self._acc_grad(("m", l), g, adds, srcs)
        if gr.final is not None and lo < hi:
            self._acc_grad(("f",), gr.final, adds, srcs)
        if adds:
            torch._foreach_add_(adds, srcs)

    def _acc_grad(self, key, g: Tensor, adds: list, srcs: list) -> None:
        acc = self._gsum.get(key)
        if acc is None:
            acc = self._gsum[key] = self.eng.buffer(f"g{key}", g.numel())
            acc.copy_(g.reshape(-1))
        else:
            adds.append(acc)
            srcs.append(g.reshape(-1).to(acc.dtype))

    def flush(self) -> None:
        """Contract the accumulated gradients with ``diff``: per layer ONE buffer (the heads'
        v = W'^T sum(r g) from one batched matmul, the MLP's and, for the last layer, the logits'
        summed gradients) and one matmul per segment of source rows (the heads read the fewest sources,
        then the MLP (sequential blocks: + the layer's heads), then the logits: each segment multiplies
        a suffix of the buffer's columns), so ``diff`` is read about once per layer and batch."""
        if self._pending is None:
            return
        a, eng = self.a, self.eng
        L, n_src = a.n_layers, self.g.n_src
        lo, hi = self._pending
        BP, D = self.B * self.P, a.d_model
        flat = self.diff.view(n_src, -1)
        for l in range(L):
            n_q, n_m, _ = eng.layers[l]
            plan = eng.plans[l]
            n = plan.W.shape[0]
            parts = []  # (first column, end column, rows read), in column order
            if self._gs is not None and l in self._gs_layers:
                parts.append((0, n, n_q))
            if ("m", l) in self._gsum:
                parts.append((n, n + 1, n_m))
            if l == L - 1 and ("f",) in self._gsum:
                parts.append((n + 1, n + 2, n_src))
            if not parts:
                continue
            c_hi = parts[-1][1]
            buf = eng.buffer("grads", n + 2, BP * D)
            for c0, _, _ in parts:
                if c0 == 0:  # v = W'^T sum(r g): the summed gradients as heads (n, B*P, dh), a strided view
                    torch.bmm(self._gs[l].view(BP, n, -1).transpose(0, 1), plan.W, out=buf[:n].view(n, BP, D))
                elif c0 == n:
                    buf[n].copy_(self._gsum[("m", l)])
                else:
                    buf[n + 1].copy_(self._gsum[("f",)])
            if parts[0][0] == 0 and c_hi == n + 2 and len(parts) == 2:  # no MLP gradient between
                buf[n].zero_()
            start = lo
            for c0, _, need in parts:
                stop = min(hi, need)
                if start < stop:
                    prod = flat[start:stop] @ buf[c0:c_hi].T
                    k = min(c_hi, n + 1) - c0  # columns of this layer (heads, MLP); the rest: logits
                    if k > 0:
                        self.scores_plan[start:stop, l, c0:c0 + k] += prod[:, :k]
                    if c_hi == n + 2:
                        self.scores_final[start:stop] += prod[:, -1]
                    start = stop
        self._gs = None
        self._gs_layers = set()
        self._gsum.clear()
        self._pending = None
