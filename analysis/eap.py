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

The engine itself: one batch's runs and contraction in :mod:`analysis.eap_batch`, the fused fast
contraction (and how it is restructured, not approximated) in :mod:`analysis.eap_fused`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, fields
from typing import Sequence

import torch

from analysis.adapter import Batch, ModelAdapter
from analysis.errors import UserError
from analysis.eap_batch import BatchScorer
from analysis.eap_fused import Engine, Grads
from analysis.eap_memory import choose_chunk, device_budget, estimate_memory, format_bytes  # noqa: F401 (re-exported)
from analysis.graph import Graph
from analysis.metrics import NEEDS_CORRUPTED_LABEL, get_metric

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


# ------------------------------------------------------------------------------------------ batches
def _drop_constant_entry(gr: Grads, adapter) -> Grads:
    """hannamw's input-group passes: the reference replaces the embedding by a constant that does not
    require grad, so where layer 0's residual entry is that constant alone (no learned position
    embedding: GPT-NeoX, Llama, ...) TransformerLens' backward hooks never fire at the destinations
    reading it: the heads of layer 0 and, with parallel attention/MLP, m0. Drop those gradients."""
    if adapter.architecture.learned_positions:  # a learned position embedding joins the input node
        return gr
    gr.qkv.pop(0, None)
    if adapter.spec.parallel_attn_mlp:
        gr.mlp.pop(0, None)
    return gr


def _score_ig_activations(s: BatchScorer, steps: int, ig_rule: str, shared: bool) -> int:
    """eap-ig-activations; ``shared``: hannamw's aggregation (every pass's gradients for every edge,
    averaged over all passes), else each group's edges use its own passes. Returns #gradient points."""
    s.run(embed_alpha=0.0, capture=+1.0, keep_outputs="corr", grad=False)
    s.run(embed_alpha=1.0, capture=-1.0, keep_outputs="clean", grad=False, set_target=True)
    groups = s.g.spec.node_groups()
    for kind, layer, rows in groups:
        for alpha in ig_alphas(steps, ig_rule):
            if not shared:
                s.contract(s.run(embed_alpha=None, override=(kind, layer, alpha)), rows=rows)
                continue
            gr = s.run(embed_alpha=None, override=(kind, layer, alpha), grad_upstream=True)
            s.contract(_drop_constant_entry(gr, s.a) if kind == "input" else gr)
    return steps * len(groups) if shared else steps


def _score_batch(s: BatchScorer, method: str, steps: int, ig_rule: str, compat: str | None = None) -> int:
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


def batch_rows(batch: Batch, lo: int, hi: int) -> Batch:
    """Rows lo:hi of ``batch`` (a chunk), padded as the whole batch: every field is per row."""
    return Batch(*(None if (v := getattr(batch, f.name)) is None else v[lo:hi] for f in fields(batch)))


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
          backend: str | None = None, chunk: int | None = None,
          memory_budget: int | None = None) -> ScoreResult:
    """Score every edge of ``graph`` on prompt ``pairs`` (``analysis.datasets.PromptPair``).

    ``compat="hannamw"``: hannamw/EAP-IG's exact numbers (module docstring; implies its IG rule).
    ``backend``: "native" or "transformer-lens" (None: the adapter's own).
    ``chunk``: score each batch in micro-batches of at most ``chunk`` examples (the same numbers up to
    float rounding, less memory); None: the largest chunk whose estimate fits ``memory_budget`` bytes
    (None: the accelerator's free memory; on the CPU the whole batch)."""
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
    engine = Engine(adapter, graph, acc)
    if chunk is not None and chunk <= 0:
        raise UserError(f"--chunk must be a positive number of examples, got {chunk}")
    budget = memory_budget if memory_budget is not None else (None if chunk else device_budget(adapter))
    split = 0  # the largest chunk of a batch that was split (0: none was)
    for st in it:
        batch = adapter.make_batch(enc, range(st, min(n, st + batch_size)))
        size = batch.clean.shape[0]
        c = chunk or choose_chunk(adapter, graph, size, batch.clean.shape[1], budget)
        split = max(split, c if c < size else 0)
        batch_scores = torch.zeros(graph.n_src, graph.n_dst, dtype=torch.float64)
        for lo in range(0, size, c):
            part = batch_rows(batch, lo, min(size, lo + c))  # same padding as the whole batch
            s = BatchScorer(adapter, graph, part, metric_fn, acc, engine)
            points = _score_batch(s, method, m, ig_rule, compat)
            batch_scores += s.batch_scores()
            if parity and st == 0:
                # the hooked clean-run logits: target is the (hooked) clean answer-position logits
                value = _parity(adapter, part, s.target)
                parity_value = value if parity_value is None else max(parity_value, value)
            del s
        total += batch_scores if compat is None else batch_scores / size  # hannamw: the whole batch's mean
    dense = total / (n * points)
    dense[~graph.mask] = 0.0
    settings = _settings(adapter, method, metric, m, ig_rule, batch_size, n, compat)
    if split:  # recorded only when a batch was split, so unsplit runs' settings are as before
        settings["chunk"] = split
    return ScoreResult(dense, graph.mask.clone(), graph, settings, parity_value, time.perf_counter() - t0)
