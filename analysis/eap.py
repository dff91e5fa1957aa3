"""EAP / EAP-IG edge scores: the scoring engine.

    score(adapter, graph, pairs, method="eap-ig-inputs", metric="kl", steps=5, ig_rule="right",
          batch_size=16, compat=None, backend=None) -> ScoreResult

Score of edge u -> v (one convention for every method; higher |score| = more important, the sign is
kept)::

    score(u->v) = 1/N sum_examples 1/|K| sum_{k in K} sum_positions (a_u^corr - a_u^clean) . dL/d(in_v)|_k

with L the per-example metric (:mod:`analysis.metrics`) at the prompt's last real position, ``in_v`` the
input of v (the residual stream entering v's LayerNorm; for a head, separately for q, k and v) and
K the gradient points of the method. To first order the score is the change of the metric when the
edge alone carries the corrupted activation. Scores are normalised per example (a sum over examples
divided by N), so unlike hannamw/EAP-IG (which also takes a batch mean inside the metric) they do
not depend on the batch size; hannamw's scores are ours divided by the batch size on full batches
(``compat="hannamw"`` gives its exact numbers, below).

Methods
    eap                 K = {clean}: the gradient of the clean run (Syed et al.; hannamw ``EAP``).
    eap-ig-inputs       K = {input embedding interpolated e_corr + (k/m)(e_clean - e_corr)}:
                        ``ig_rule="right"``: k = 1..m (the paper's code, ends at the clean input;
                        the default); ``"left"``: k = 0..m-1 (hannamw/EAP-IG, starts at the corrupted
                        input). m = 1 with the right rule equals ``eap``; m = 1 with the left rule is
                        the gradient at the corrupted input.
    eap-ig-activations  For each upstream node group (input; the heads of one layer; one MLP) its
                        output is interpolated between corrupted and clean (same k rule) while the
                        rest runs on the clean prompt; the scores of that group's edges use those
                        gradients. (hannamw adds every group's gradients to every edge; we keep
                        each group's own, which is the method as described.)
    clean-corrupted     K = {clean, corrupted}.

``compat="hannamw"``: hannamw/EAP-IG 795f560's exact numbers (tests/test_compat.py checks them
against scores the reference itself produced, benchmarks/make_reference_scores.py). What differs:

* batch mean: the reference's metric is the batch mean, so each batch's scores are divided by its
  size before the sum over batches / N: full batches give ours / batch size, and a partial last batch
  of b < B examples weighs B/b times more per example.
* IG rule: the reference's: k = 0..m-1 (left) for eap-ig-inputs and k = 1..m (right) for
  eap-ig-activations; ``ig_rule`` is ignored.
* eap-ig-activations: the reference runs one interpolation pass per node group (input, the heads of
  each layer, each MLP) and step, and adds EVERY pass's gradients to EVERY edge (not only the edges
  out of the interpolated group), then divides by (1 + 2L) * m passes: each edge's score is its
  activation difference times the destination gradient averaged over all (1 + 2L) * m interpolation
  points (with the interpolated group's own inputs getting no gradient in its passes, and, in the
  input group's passes of a model without learned position embeddings, neither the destinations
  that read layer 0's residual entry: the reference's TL hooks never fire on that constant).

Backends: ``backend="native"`` hooks the HF model itself (:mod:`analysis.adapter`);
``"transformer-lens"`` places the same hooks through TransformerLens' TransformerBridge
(:mod:`analysis.tl_adapter`), an independent oracle and the way to score architectures the native
adapter does not know. The engine sees either through the same adapter interface.

Speed: the frozen HF model runs unmodified (no weight gradients, no split q/k/v in the forward pass):
one forward without grad at one end point, then one forward + backward per gradient point (the clean
or corrupted end point doubles as an IG step), so eap-ig-inputs costs (m+1) forwards + m backwards
plus the contraction. Per-head q/k/v input gradients come from the q/k/v projection output gradient
through the norm's closed-form VJP (:mod:`analysis.adapter`). The activation differences
(n_src, B, P, D) are kept per batch (in a buffer reused across batches).

The contraction (issue 19; native adapter, :class:`_Engine`) is restructured, not approximated:

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
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from analysis.adapter import Batch, ModelAdapter
from analysis.errors import UserError
from analysis.graph import Graph, n_upstream_for_layer
from analysis.metrics import NEEDS_CORRUPTED_LABEL, get_metric, per_example

Tensor = torch.Tensor

METHODS = ("eap", "eap-ig-inputs", "eap-ig-activations", "clean-corrupted")
IG_RULES = ("left", "right")
COMPATS = ("hannamw",)
BACKENDS = ("native", "transformer-lens")
REFERENCE_IG_RULE = {"eap-ig-inputs": "left", "eap-ig-activations": "right"}  # hannamw/EAP-IG 795f560
SIGN_CONVENTION = ("score = (corrupted - clean activation) . d metric / d input, averaged over examples "
                   "and gradient points; higher |score| = more important; sign kept")


@dataclass
class ScoreResult:
    dense: Tensor  # (n_src, n_dst), float64 on CPU, zero outside ``mask``
    mask: Tensor  # (n_src, n_dst) bool: real edges
    graph: Graph
    settings: dict = field(default_factory=dict)
    parity: float | None = None  # max |HF logits - hooked logits| on the first batch (last positions)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return self.graph.scores_to_dict(self.dense)


# ------------------------------------------------------------------------------------------ checks
def check_settings(method: str, metric: str, steps: int | None, ig_rule: str | None, batch_size: int,
                   compat: str | None = None, backend: str | None = None) -> int:
    """Validate before anything is loaded; return the number of IG steps m (1 without IG)."""
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    get_metric(metric)
    check_compat(compat)
    if backend is not None and backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if ig_rule is not None and ig_rule not in IG_RULES:
        raise UserError(f"unknown IG rule {ig_rule!r}; choose left or right")
    if batch_size is None or batch_size <= 0:
        raise UserError(f"batch size must be positive, got {batch_size}")
    if method in ("eap-ig-inputs", "eap-ig-activations"):
        if steps is None:
            steps = 5
        if steps <= 0:
            raise UserError(f"--steps must be a positive number of IG steps, got {steps}")
        return int(steps)
    if steps is not None and steps <= 0:
        raise UserError(f"--steps must be positive, got {steps}")
    return 1


def check_compat(compat: str | None) -> None:
    if compat is not None and compat not in COMPATS:
        raise UserError(f"unknown compat {compat!r}; the only one is hannamw (hannamw/EAP-IG 795f560's exact numbers)")


def resolve_ig_rule(method: str, ig_rule: str | None, compat: str | None) -> str:
    """The IG rule a run uses: the reference's under compat, else ``ig_rule`` (default right)."""
    if compat is not None and method in REFERENCE_IG_RULE:
        return REFERENCE_IG_RULE[method]
    return ig_rule or "right"


def ig_alphas(steps: int, rule: str) -> list[float]:
    ks = range(1, steps + 1) if rule == "right" else range(0, steps)
    return [k / steps for k in ks]


# ------------------------------------------------------------------------------------------ engine
class _Grads:
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


class _Engine:
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
            c0 = l * (3 * H + 1)
            qcols = (c0 + self.plans[l].cols.cpu()) if self.fused else c0 + torch.arange(3 * H)
            cols = torch.cat([qcols, torch.tensor([c0 + 3 * H, graph.n_dst - 1])]).to(adapter.device)
            self.layers.append((n_upstream_for_layer(spec, l), n_upstream_for_layer(spec, l, mlp=True), cols))
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


class _BatchScorer:
    def __init__(self, adapter: ModelAdapter, graph: Graph, batch: Batch, metric: Callable, acc_dtype,
                 engine: _Engine | None = None):
        self.a, self.g, self.b = adapter, graph, batch
        self.metric = metric
        self.acc = acc_dtype
        self.eng = engine or _Engine(adapter, graph, acc_dtype)
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
    def _row0(self, l: int) -> int:
        return 1 + l * (self.a.n_heads + 1)

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
                r = self._row0(l)
                B, P, _ = z.shape
                zh = z.reshape(B * P, H, -1).transpose(0, 1).to(self.acc)  # (H, B*P, dh)
                rows = self.diff[r:r + H].view(H, B * P, -1)
                first = r not in self._written
                rows.baddbmm_(zh, eng.w_o[l], beta=0.0 if first else 1.0, alpha=sign)
                self._written.add(r)
                self._centred = False
        else:
            def on_z(l, z):
                self._add_rows(self._row0(l), self.a.head_outputs(l, z, self.acc), sign)

        def on_mlp(l, out):
            self._add_rows(self._row0(l) + H, out.to(self.acc)[None], sign)

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
            set_target: bool = False, grad_upstream: bool = False) -> _Grads | None:
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
        grads = _Grads() if grad else None
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
            H = self.a.n_heads
            for l in range(self.a.n_layers):
                r = self._row0(l)
                for start, k in ((r, H), (r + H, 1)):
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

    def contract(self, gr: _Grads, rows: tuple[int, int] | None = None) -> None:
        """scores[src, dst] += sum_{b,p,d} diff[src] * grad_in[dst] (restricted to ``rows``). The fused
        path only accumulates (:meth:`_accumulate`); :meth:`flush` completes it (``score`` calls it
        after each batch, and it runs by itself when ``rows`` change)."""
        if self.eng.fused:
            self._accumulate(gr, rows)
        else:
            self._contract_generic(gr, rows)

    def _accumulate(self, gr: _Grads, rows: tuple[int, int] | None) -> None:
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

    def _contract_generic(self, gr: _Grads, rows: tuple[int, int] | None = None) -> None:
        self._complete_diff()
        a, spec, acc = self.a, self.g.spec, self.acc
        H, L = a.n_heads, a.n_layers
        lo, hi_all = (0, self.g.n_src) if rows is None else rows
        flat = self.diff.view(self.g.n_src, -1)
        for l in range(L):
            c0 = l * (3 * H + 1)
            if l in gr.qkv:
                hi = min(hi_all, n_upstream_for_layer(spec, l))
                if lo < hi:
                    gh = a.qkv_input_grads(l, gr.qkv[l], gr.x.get(l), acc).reshape(3 * H, -1)
                    self.scores[lo:hi, c0:c0 + 3 * H] += flat[lo:hi] @ gh.T
            if l in gr.mlp:
                hi = min(hi_all, n_upstream_for_layer(spec, l, mlp=True))
                if lo < hi:
                    self.scores[lo:hi, c0 + 3 * H] += flat[lo:hi] @ gr.mlp[l].to(acc).reshape(-1)
        if gr.final is not None:
            hi = min(hi_all, self.g.n_src)
            self.scores[lo:hi, -1] += flat[lo:hi] @ gr.final.to(acc).reshape(-1)


def _activation_groups(n_layers: int, H: int) -> list[tuple[str, int, tuple[int, int]]]:
    """The node groups eap-ig-activations interpolates, in forward order, with their source rows."""
    groups: list[tuple[str, int, tuple[int, int]]] = [("input", -1, (0, 1))]
    for l in range(n_layers):
        r = 1 + l * (H + 1)
        groups += [("attn", l, (r, r + H)), ("mlp", l, (r + H, r + H + 1))]
    return groups


# Architectures whose residual stream entering layer 0 adds a learned position embedding to the input
# node's output (see _drop_constant_entry).
_LEARNED_POSITIONS = ("gpt2", "gpt_neo", "opt")


def _drop_constant_entry(gr: _Grads, adapter) -> _Grads:
    """hannamw's input-group passes: the reference replaces the embedding by a constant that does not
    require grad, so where layer 0's residual entry is that constant alone (no learned position
    embedding: GPT-NeoX, Llama, ...) TransformerLens' backward hooks never fire at the destinations
    reading it: the heads of layer 0 and, with parallel attention/MLP, m0. Drop those gradients."""
    if getattr(adapter, "arch", None) in _LEARNED_POSITIONS:
        return gr
    gr.qkv.pop(0, None)
    if adapter.spec.parallel_attn_mlp:
        gr.mlp.pop(0, None)
    return gr


def _score_ig_activations(s: _BatchScorer, steps: int, ig_rule: str, shared: bool) -> int:
    """eap-ig-activations; ``shared``: hannamw's aggregation (every pass's gradients for every edge,
    averaged over all passes), else each group's edges use its own passes. Returns #gradient points."""
    s.run(embed_alpha=0.0, capture=+1.0, keep_outputs="corr", grad=False)
    s.run(embed_alpha=1.0, capture=-1.0, keep_outputs="clean", grad=False, set_target=True)
    groups = _activation_groups(s.a.n_layers, s.a.n_heads)
    for kind, layer, rows in groups:
        for alpha in ig_alphas(steps, ig_rule):
            if not shared:
                s.contract(s.run(embed_alpha=None, override=(kind, layer, alpha)), rows=rows)
                continue
            gr = s.run(embed_alpha=None, override=(kind, layer, alpha), grad_upstream=True)
            s.contract(_drop_constant_entry(gr, s.a) if kind == "input" else gr)
    return steps * len(groups) if shared else steps


def _score_batch(s: _BatchScorer, method: str, steps: int, ig_rule: str, compat: str | None = None) -> int:
    """Fill ``s.scores`` with the batch's summed (not yet averaged) scores; return #gradient points."""
    if method == "eap" or (method == "eap-ig-inputs" and ig_rule == "right"):
        if method == "eap":
            steps = 1
        s.run(embed_alpha=0.0, capture=+1.0, grad=False)  # corrupted activations (no grad)
        alphas = ig_alphas(steps, "right")  # [1/m, ..., 1]; run the clean point first
        order = [alphas[-1]] + alphas[:-1]
        for i, alpha in enumerate(order):  # the clean point's own logits are the KL target
            gr = s.run(embed_alpha=alpha, capture=-1.0 if i == 0 else None, set_target=i == 0)
            s.contract(gr)
        return steps
    if method == "eap-ig-inputs":  # left rule: k = 0..m-1
        s.run(embed_alpha=1.0, capture=-1.0, grad=False, set_target=True)  # clean activations + target
        for i, alpha in enumerate(ig_alphas(steps, "left")):
            gr = s.run(embed_alpha=alpha, capture=+1.0 if i == 0 else None)
            s.contract(gr)
        return steps
    if method == "clean-corrupted":
        g_clean = s.run(embed_alpha=1.0, capture=-1.0, set_target=True)  # diff not complete yet: contract later
        g_corr = s.run(embed_alpha=0.0, capture=+1.0)
        s.contract(g_clean)
        s.contract(g_corr)
        return 2
    if method == "eap-ig-activations":
        return _score_ig_activations(s, steps, ig_rule, shared=compat == "hannamw")
    raise UserError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")


def _parity(adapter: ModelAdapter, batch: Batch, hooked: Tensor) -> float:
    """max |HF logits - hooked-run logits| at the answer positions (the plain HF forward computes the
    logits only there on the native adapter, as the hooked runs do)."""
    with torch.no_grad():
        if isinstance(adapter, ModelAdapter):
            keep = batch.keep
            ids = batch.clean.to(adapter.device)
            out = adapter.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False,
                                logits_to_keep=keep).logits
            ref = batch.answer_logits(out, keep)
        else:
            ref = batch.answer_logits(adapter.forward_logits(batch.clean),
                                      torch.arange(batch.clean.shape[1], device=batch.pos.device))
    return float((ref.to(torch.float64) - hooked.to(torch.float64)).abs().max())


def with_backend(adapter, backend: str | None):
    """The adapter that scores with ``backend`` (None: the adapter's own). A native adapter asked for
    transformer-lens is re-wrapped (a copy of its model) by :class:`analysis.tl_adapter.TLAdapter`."""
    own = getattr(adapter, "backend", "native")
    if backend is None or backend == own:
        return adapter
    if backend == "transformer-lens":
        from analysis.tl_adapter import TLAdapter

        return TLAdapter.from_adapter(adapter)
    raise UserError(f"backend {backend!r} needs a native adapter (analysis.models.load_model), not a {own} one")


def _settings(adapter, method: str, metric: str, m: int, ig_rule: str, batch_size: int, n: int,
              compat: str | None) -> dict:
    """What a score depends on, stored with it (provenance)."""
    ig = method in ("eap-ig-inputs", "eap-ig-activations")
    hannamw = compat == "hannamw"
    shared = hannamw and method == "eap-ig-activations"
    return {
        "method": method, "metric": metric, "steps": m if ig else None, "ig_rule": ig_rule if ig else None,
        "batch_size": batch_size, "n_examples": n, "dtype": str(adapter.dtype).replace("torch.", ""),
        "device": str(adapter.device),
        "aggregation": "sum over d_model and positions" + (
            "; every edge uses the gradients of all (1 + 2L) x m interpolation passes (hannamw)" if shared else ""),
        "normalization": ("hannamw: per batch the metric's batch mean (scores / batch size), summed over batches / N, "
                          "mean over gradient points" if hannamw else
                          "per example: sum over examples / N, mean over gradient points"),
        "kl": "vocabulary mean" if metric == "kl" else None,
        "sign": SIGN_CONVENTION,
        "compat": compat,
        "backend": getattr(adapter, "backend", "native"),
    }


def score(adapter: ModelAdapter, graph: Graph, pairs: Sequence, method: str = "eap-ig-inputs",
          metric: str = "kl", steps: int | None = 5, ig_rule: str | None = "right", batch_size: int = 16,
          progress: bool = False, parity: bool = True, compat: str | None = None,
          backend: str | None = None) -> ScoreResult:
    """Score every edge of ``graph`` on prompt ``pairs`` (``analysis.datasets.PromptPair``).

    ``compat="hannamw"``: hannamw/EAP-IG's exact numbers (module docstring; implies its IG rule).
    ``backend``: "native" or "transformer-lens" (None: the adapter's own)."""
    t0 = time.perf_counter()
    m = check_settings(method, metric, steps, ig_rule, batch_size, compat, backend)
    ig_rule = resolve_ig_rule(method, ig_rule, compat)
    adapter = with_backend(adapter, backend)
    metric_fn = get_metric(metric)
    if graph.spec != adapter.spec:
        raise UserError(f"graph {graph.spec} does not match the model {adapter.spec}")
    if not pairs:
        raise UserError("no prompt pairs to score")
    enc = adapter.encode_pairs(pairs, need_corrupted_label=NEEDS_CORRUPTED_LABEL[metric])
    acc = torch.float64 if adapter.dtype == torch.float64 else torch.float32
    total = torch.zeros(graph.n_src, graph.n_dst, dtype=torch.float64)
    n = len(pairs)
    starts = range(0, n, batch_size)
    it = starts
    if progress:
        from tqdm import tqdm

        it = tqdm(starts, total=math.ceil(n / batch_size), desc=f"scoring ({method})", unit="batch")
    parity_value = None
    points = 1
    engine = _Engine(adapter, graph, acc)
    for st in it:
        batch = adapter.make_batch(enc, range(st, min(n, st + batch_size)))
        s = _BatchScorer(adapter, graph, batch, metric_fn, acc, engine)
        points = _score_batch(s, method, m, ig_rule, compat)
        batch_scores = s.batch_scores()
        total += batch_scores if compat is None else batch_scores / batch.clean.shape[0]  # hannamw: batch mean
        if parity and parity_value is None:
            # the hooked clean-run logits: target is the (hooked) clean last-position logits
            parity_value = _parity(adapter, batch, s.target)
        del s
    dense = total / (n * points)
    dense[~graph.mask] = 0.0
    settings = _settings(adapter, method, metric, m, ig_rule, batch_size, n, compat)
    return ScoreResult(dense, graph.mask.clone(), graph, settings, parity_value, time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------ memory
def estimate_memory(adapter: ModelAdapter, graph: Graph, batch_size: int, n_pos: int) -> dict[str, int]:
    """Rough peak memory (bytes) of one batch: weights, activation differences, stored gradients,
    per-layer contraction temporaries and autograd activations."""
    B, P, D, L, H = batch_size, n_pos, adapter.d_model, adapter.n_layers, adapter.n_heads
    wb = torch.finfo(adapter.dtype).bits // 8
    ab = 8 if adapter.dtype == torch.float64 else 4
    n_params = sum(p.numel() for p in adapter.model.parameters())
    d_mlp = getattr(adapter.model.config, "intermediate_size", None) or getattr(adapter.model.config, "n_inner", None) or 4 * D
    out = {
        "weights": n_params * wb,
        "activation_differences": graph.n_src * B * P * D * ab,
        # per pass: q/k/v output gradients and outputs, LayerNorm inputs, MLP / logits input gradients
        "gradients": L * B * P * (8 * D) * wb,
        # one layer's (3H + 2) x B x P x D destination gradients, and the (L, 3H, B*P, dh) summed /
        # per-pass scaled head gradients and their xhat projections, plus the summed MLP gradients
        "contraction": ((3 * H + 2) + 10 * L) * B * P * D * ab,
        "autograd_activations": L * B * P * (12 * D + 2 * d_mlp + 2 * H * P) * wb,
    }
    out["total"] = sum(out.values())
    return out


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"
