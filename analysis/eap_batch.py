"""One batch of the scoring engine: the hooked runs, the activation differences (corrupted - clean, one
row per source node) and the contraction with each run's destination gradients (the generic path here,
the fused one in :mod:`analysis.eap_fused`)."""

from __future__ import annotations

from typing import Callable

import torch

from analysis.adapter import Batch, ModelAdapter
from analysis.eap_fused import Engine, FusedContraction, Grads
from analysis.graph import Graph
from analysis.metrics import per_example

Tensor = torch.Tensor


class BatchScorer(FusedContraction):
    """One batch: its hooked runs (:meth:`run`), the activation differences ``diff`` (n_src, B, P, D)
    they capture, and the scores contracted from each run's gradients (:meth:`contract`)."""

    def __init__(self, adapter: ModelAdapter, graph: Graph, batch: Batch, metric: Callable, acc_dtype,
                 engine: Engine | None = None):
        self.a, self.g, self.b = adapter, graph, batch
        self.metric = metric
        self.acc = acc_dtype
        self.eng = engine or Engine(adapter, graph, acc_dtype)
        B, P = batch.clean.shape
        self.B, self.P = B, P
        self.diff = self.eng.buffer("diff", graph.n_src, B, P, adapter.d_model)
        self._written: set[int] = {0}  # rows of ``diff`` already holding a value (the rest: garbage)
        self._centred = False
        self._pending: tuple[int, int] | None = None  # fused path: rows of the accumulated gradients
        self._gs: Tensor | None = None  # (L, B*P, n*dh) summed scaled q/k/v gradients of _gs_layers
        self._gs_layers: set[int] = set()
        self._gsum: dict[tuple, Tensor] = {}  # ("m", l) / ("f",) -> summed MLP / logits input gradients
        if self.eng.fused:
            self.scores_plan = torch.zeros(graph.n_src, adapter.n_layers, self.eng.n + 1, dtype=acc_dtype,
                                           device=adapter.device)
            self.scores_final = torch.zeros(graph.n_src, dtype=acc_dtype, device=adapter.device)
        else:
            self.scores = torch.zeros(graph.n_src, graph.n_dst, dtype=acc_dtype, device=adapter.device)
        self.e_clean = adapter.embed(batch.clean)
        self.e_corr = adapter.embed(batch.corrupted)
        torch.sub(self.e_corr.to(acc_dtype), self.e_clean.to(acc_dtype), out=self.diff[0])
        self.target: Tensor | None = None  # clean answer-position logits (B, A, V)
        self.ones = torch.ones_like(batch.clean)  # right padding + causal attention: no mask needed
        self.keep = batch.keep  # logits only at the answer positions
        self.outs = {}  # (which, kind, layer) -> full attention / MLP outputs (activations IG)

    # -------------------------------------------------------------- pieces
    def _add_rows(self, r: int, value: Tensor, sign: float) -> None:
        """diff[r:r+k] (+)= sign * value (the first write of a row overwrites it)."""
        if self._pending is not None:  # gradients accumulated against the old differences
            self.flush()
        rows = self.diff[r:r + value.shape[0]]
        if r in self._written:
            rows.add_(value, alpha=sign)
        else:
            torch.mul(value, sign, out=rows)
            self._written.add(r)
        self._centred = False

    def _capture(self, sign: float, keep_outputs: str | None = None) -> dict:
        H = self.a.n_heads
        eng = self.eng

        if eng.fused:
            def on_z(l, z):  # per-head outputs straight into diff: one batched matmul, no temporaries
                if self._pending is not None:
                    self.flush()
                r = self.g.spec.head_row(l)
                B, P, _ = z.shape
                zh = z.reshape(B * P, H, -1).transpose(0, 1).to(self.acc)  # (H, B*P, dh)
                rows = self.diff[r:r + H].view(H, B * P, -1)
                first = r not in self._written
                rows.baddbmm_(zh, eng.w_o[l], beta=0.0 if first else 1.0, alpha=sign)
                self._written.add(r)
                self._centred = False
        else:
            def on_z(l, z):
                self._add_rows(self.g.spec.head_row(l), self.a.head_outputs(l, z, self.acc), sign)

        def on_mlp(l, out):
            self._add_rows(self.g.spec.mlp_row(l), out.to(self.acc)[None], sign)

        kw = dict(on_z=on_z, on_mlp_out=on_mlp)
        if keep_outputs is not None:
            def on_attn_out(l, out):
                self.outs[(keep_outputs, "attn", l)] = out

            def on_mlp2(l, out):
                on_mlp(l, out)
                self.outs[(keep_outputs, "mlp", l)] = out

            kw.update(on_attn_out=on_attn_out, on_mlp_out=on_mlp2)
        return kw

    def _interp(self, alpha: float, clean: Tensor, corr: Tensor) -> Tensor:
        if alpha == 1.0:
            return clean
        if alpha == 0.0:
            return corr
        return (1.0 - alpha) * corr + alpha * clean

    def run(self, *, embed_alpha: float | None = 1.0, capture: float | None = None,
            keep_outputs: str | None = None, grad: bool = True, override: tuple | None = None,
            set_target: bool = False, grad_upstream: bool = False) -> Grads | None:
        """One forward (and backward when ``grad``) on the clean prompt with the input embedding
        interpolated at ``embed_alpha`` (None: the model's own clean embedding) and optionally one
        node group's output replaced (``override = (kind, layer, alpha)``). ``grad_upstream``: with an
        override, also compute the gradients at destinations upstream of the replaced group (the
        hannamw aggregation uses every pass for every edge)."""
        a = self.a
        kw: dict = {}
        with_grad_input = grad and (override is None or grad_upstream)
        if embed_alpha is not None or with_grad_input:
            e = self._interp(1.0 if embed_alpha is None else embed_alpha, self.e_clean, self.e_corr)
            if with_grad_input:
                e = e.detach().requires_grad_(True)
            kw["embed_override"] = lambda out, e=e: e
        if capture is not None:
            kw.update(self._capture(capture, keep_outputs))
        grads = Grads() if grad else None
        if grad:
            kw.update(grads.hook_kwargs(qkv_out=self.eng.qkv_out))
        if override is not None:
            kind, layer, alpha = override
            if kind == "input":
                e = self._interp(alpha, self.e_clean, self.e_corr).detach().requires_grad_(True)
                kw["embed_override"] = lambda out, e=e: e
            else:
                new = self._interp(alpha, self.outs[("clean", kind, layer)], self.outs[("corr", kind, layer)])
                new = new.detach().requires_grad_(True)
                key = "attn_out_override" if kind == "attn" else "mlp_out_override"
                kw[key] = lambda l, out, layer=layer, new=new: new if l == layer else None
        with torch.set_grad_enabled(grad), a.hooks(**kw):
            logits = self._logits()
        answer = self.b.answer_logits(logits, self.keep)
        if set_target:
            self.target = answer.detach()
        if grad:
            per_example(self.metric, answer, self.target, self.b).sum().backward()
        return grads

    def _logits(self) -> Tensor:
        """The hooked clean-token run's logits at the answer positions (a backend may run its own
        forward, e.g. TransformerLens' bridge; the native adapter runs the HF model itself)."""
        run = getattr(self.a, "run_logits", None)
        if run is not None:
            return run(self.b.clean, self.keep)
        return self.a.model(input_ids=self.b.clean, attention_mask=self.ones, use_cache=False,
                            logits_to_keep=self.keep).logits

    def _complete_diff(self) -> None:
        """Before a contraction: zero the rows no capture wrote (none in practice) and, on the fused
        LayerNorm path, centre every row over d_model (once per batch, again only after a capture)."""
        if len(self._written) < self.g.n_src:
            spec = self.g.spec
            for l in range(self.a.n_layers):
                for start, k in ((spec.head_row(l), spec.n_heads), (spec.mlp_row(l), 1)):
                    if start not in self._written:
                        self.diff[start:start + k].zero_()
                        self._written.add(start)
        if self.eng.center and not self._centred:
            self.diff.sub_(self.diff.mean(-1, keepdim=True))
            self._centred = True

    def batch_scores(self) -> Tensor:
        """The batch's summed scores (n_src, n_dst), float64 on the CPU (after :meth:`flush`)."""
        if not self.eng.fused:
            return self.scores.to("cpu", torch.float64)
        self.flush()
        out = torch.zeros(self.g.n_src, self.g.n_dst, dtype=torch.float64)
        out[:, self.eng.plan_cols] = self.scores_plan.to("cpu", torch.float64).view(self.g.n_src, -1)
        out[:, -1] += self.scores_final.to("cpu", torch.float64)
        return out

    def contract(self, gr: Grads, rows: tuple[int, int] | None = None) -> None:
        """scores[src, dst] += sum_{b,p,d} diff[src] * grad_in[dst] (restricted to ``rows``). The fused
        path only accumulates (:meth:`_accumulate`); :meth:`flush` completes it (``score`` calls it
        after each batch, and it runs by itself when ``rows`` change)."""
        if self.eng.fused:
            self._accumulate(gr, rows)
        else:
            self._contract_generic(gr, rows)

    def _contract_generic(self, gr: Grads, rows: tuple[int, int] | None = None) -> None:
        self._complete_diff()
        a, spec, acc = self.a, self.g.spec, self.acc
        H, L = a.n_heads, a.n_layers
        lo, hi_all = (0, self.g.n_src) if rows is None else rows
        flat = self.diff.view(self.g.n_src, -1)
        for l in range(L):
            c0 = spec.col0(l)
            if l in gr.qkv:
                hi = min(hi_all, spec.n_upstream(l))
                if lo < hi:
                    gh = a.qkv_input_grads(l, gr.qkv[l], gr.x.get(l), acc).reshape(3 * H, -1)
                    self.scores[lo:hi, c0:c0 + 3 * H] += flat[lo:hi] @ gh.T
            if l in gr.mlp:
                hi = min(hi_all, spec.n_upstream(l, mlp=True))
                if lo < hi:
                    self.scores[lo:hi, spec.mlp_col(l)] += flat[lo:hi] @ gr.mlp[l].to(acc).reshape(-1)
        if gr.final is not None:
            hi = min(hi_all, self.g.n_src)
            self.scores[lo:hi, -1] += flat[lo:hi] @ gr.final.to(acc).reshape(-1)
