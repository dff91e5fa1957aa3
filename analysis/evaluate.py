"""Circuit evaluation as the paper measures it: faithfulness by patching, circuit and model accuracy.

    evaluate(adapter, circuit, pairs, metric="kl", batch_size=16) -> EvalResult
    evaluate_many(adapter, circuits, pairs, metrics=("kl",), batch_size=16) -> list[EvalResult]
    faithfulness_curve(adapter, scores, pairs, fracs=CURVE_FRACS) -> list[CurvePoint]

Faithfulness (method.md 2.5), from dataset means (not per-example ratios)::

    faithfulness % = (1 - |F(M) - F(C)| / |F(M)|) * 100

* ``kl``: F(X) = mean_examples KL(P_corr,full || P_X), the corrupted run as the reference, vocab-mean
  (``F.kl_div(...).mean(-1)``), last prompt position (summed over the answer positions of a
  teacher-forced run when an answer has several tokens, as scoring does). F(M) uses the clean full model, F(C) the circuit run
  (:mod:`analysis.patching`). The full graph gives F(C) = F(M) (100%); the empty graph patches every
  edge, so the circuit run IS the corrupted run, F(C) = 0 (0%).
* ``logit-diff``: F(X) = mean LD(X) - mean LD(corrupted), LD = logit[label] - logit[corrupted_label]:
  the same two anchors (empty -> 0%, full -> 100%); between them it equals Hanna et al.'s normalised
  (m(C) - m(empty)) / (m(M) - m(empty)).

Accuracy, in percent (method.md 1.9): for a single-token answer, the argmax next token at the last
prompt position, decoded and stripped, equals the stripped label (the paper's rule: `` 70`` counts as
``70``); for an answer of several tokens, every answer token is the argmax at its teacher-forced
position. Model accuracy on the clean full run, circuit accuracy on the circuit run. Every quantity
here is a percent (0..100): faithfulness, circuit accuracy, model accuracy.

Circuits are pruned before evaluation as hannamw ``evaluate_graph`` does; under patching this does not
change the result (a pruned node's output reaches nothing, or equals its corrupted output), which the
tests check. Head-level circuits are expanded to their q/k/v edges. Parameters stay frozen
(the adapter freezes them; every pass runs under ``no_grad``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch

from analysis.adapter import ModelAdapter
from analysis.circuit import Circuit, prune_circuit, select_circuit
from analysis.errors import UserError
from analysis.graph import GraphSpec, build_graph
from analysis.metrics import kl_vocab_mean, logit_diff, per_example
from analysis.patching import PatchedRunner, absent_matrix

EVAL_METRICS = ("kl", "logit-diff")
#: the rebuttal's union table: faithfulness when the circuit keeps the top x% of edges
CURVE_FRACS = (0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.10)


@dataclass(frozen=True)
class Faithfulness:
    metric: str
    f_model: float  # F(M)
    f_circuit: float  # F(C)
    percent: float  # (1 - |F(M) - F(C)| / |F(M)|) * 100; nan when F(M) = 0


@dataclass(frozen=True)
class EvalResult:
    faithfulness: float  # percent, first metric
    f_model: float
    f_circuit: float
    circuit_accuracy: float  # percent
    model_accuracy: float  # percent
    n_examples: int
    n_edges: int  # q/k/v-level edges in the evaluated (pruned) circuit
    metric: str
    by_metric: Mapping[str, Faithfulness] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"faithfulness_percent": self.faithfulness, "metric": self.metric, "f_model": self.f_model,
                "f_circuit": self.f_circuit, "circuit_accuracy": self.circuit_accuracy,
                "model_accuracy": self.model_accuracy, "n_examples": self.n_examples, "n_edges": self.n_edges,
                "by_metric": {k: vars(v) for k, v in self.by_metric.items()}, "seconds": round(self.seconds, 3)}


@dataclass(frozen=True)
class CurvePoint:
    frac: float
    n_edges: int  # after pruning, q/k/v level
    faithfulness: float  # percent
    circuit_accuracy: float  # percent


def percent(f_model: float, f_circuit: float) -> float:
    if f_model == 0 or not math.isfinite(f_model):
        return float("nan")
    return (1.0 - abs(f_model - f_circuit) / abs(f_model)) * 100.0


def _check(adapter: ModelAdapter, circuits: Sequence[Circuit], pairs, metrics, batch_size) -> None:
    if not pairs:
        raise UserError("no prompt pairs to evaluate on")
    if batch_size is None or batch_size <= 0:
        raise UserError(f"batch size must be positive, got {batch_size}")
    if not metrics:
        raise UserError("no metric to evaluate")
    for m in metrics:
        if m not in EVAL_METRICS:
            raise UserError(f"unknown metric {m!r}; choose one of {', '.join(EVAL_METRICS)}")
    s = adapter.spec
    for c in circuits:
        if (c.spec.n_layers, c.spec.n_heads, c.spec.parallel_attn_mlp) != (s.n_layers, s.n_heads, s.parallel_attn_mlp):
            raise UserError(f"the circuit is for {c.spec.n_layers} layers x {c.spec.n_heads} heads "
                            f"({'parallel' if c.spec.parallel_attn_mlp else 'sequential'}), the model has "
                            f"{s.n_layers} x {s.n_heads} ({'parallel' if s.parallel_attn_mlp else 'sequential'})")


def evaluate_many(adapter: ModelAdapter, circuits: Sequence[Circuit], pairs: Sequence,
                  metrics: Sequence[str] = ("kl",), batch_size: int = 16, prune: bool = True,
                  progress: bool = False) -> list[EvalResult]:
    """Evaluate several circuits on the same pairs: one corrupted and one clean run per batch, then
    one patched run per circuit."""
    t0 = time.perf_counter()
    metrics = tuple(metrics)
    _check(adapter, circuits, pairs, metrics, batch_size)
    graph = build_graph(adapter.spec)
    circuits = [prune_circuit(c) if prune else c for c in circuits]
    absents = [absent_matrix(graph, c.qkv_edge_names()) for c in circuits]
    enc = adapter.encode_pairs(pairs, need_corrupted_label="logit-diff" in metrics)
    correct = _Correct(adapter, pairs, enc)
    n = len(pairs)
    sums = {"model_correct": 0, "kl_model": 0.0, "ld_model": 0.0, "ld_corr": 0.0}
    per = [{"correct": 0, "kl": 0.0, "ld": 0.0} for _ in circuits]
    starts = range(0, n, batch_size)
    it = starts
    if progress:
        from tqdm import tqdm

        it = tqdm(starts, total=math.ceil(n / batch_size), unit="batch",
                  desc=f"evaluating {len(circuits)} circuit{'s' if len(circuits) != 1 else ''}")

    def total(metric, logits, reference, batch) -> float:
        return float(per_example(metric, logits, reference, batch).double().sum())

    for st in it:
        idx = list(range(st, min(n, st + batch_size)))
        batch = adapter.make_batch(enc, idx)
        r = PatchedRunner(adapter, graph, batch)
        sums["model_correct"] += correct(r.clean_logits, batch, idx)
        if "kl" in metrics:
            sums["kl_model"] += total(kl_vocab_mean, r.clean_logits, r.corrupted_logits, batch)
        if "logit-diff" in metrics:
            sums["ld_model"] += total(logit_diff, r.clean_logits, None, batch)
            sums["ld_corr"] += total(logit_diff, r.corrupted_logits, None, batch)
        for acc, absent in zip(per, absents):
            logits = r.run(absent)
            acc["correct"] += correct(logits, batch, idx)
            if "kl" in metrics:
                acc["kl"] += total(kl_vocab_mean, logits, r.corrupted_logits, batch)
            if "logit-diff" in metrics:
                acc["ld"] += total(logit_diff, logits, None, batch)
        del r
    seconds = time.perf_counter() - t0
    out = []
    for c, acc in zip(circuits, per):
        by: dict[str, Faithfulness] = {}
        if "kl" in metrics:
            fm, fc = sums["kl_model"] / n, acc["kl"] / n
            by["kl"] = Faithfulness("kl", fm, fc, percent(fm, fc))
        if "logit-diff" in metrics:
            base = sums["ld_corr"] / n
            fm, fc = sums["ld_model"] / n - base, acc["ld"] / n - base
            by["logit-diff"] = Faithfulness("logit-diff", fm, fc, percent(fm, fc))
        first = by[metrics[0]]
        out.append(EvalResult(first.percent, first.f_model, first.f_circuit, 100.0 * acc["correct"] / n,
                              100.0 * sums["model_correct"] / n, n, len(c.qkv_edge_names()), metrics[0], by,
                              seconds / max(1, len(circuits))))
    return out


class _Correct:
    """Counts right answers in a batch (the accuracy rule of the module docstring)."""

    def __init__(self, adapter: ModelAdapter, pairs: Sequence, enc):
        self.tokenizer = adapter.tokenizer
        self.labels = [str(p.label).strip() for p in pairs]
        self.n_tokens = [len(t) for t in enc.label]
        self.decoded: dict[int, str] = {}

    def _decode(self, t: int) -> str:
        if t not in self.decoded:
            self.decoded[t] = self.tokenizer.decode([t]).strip()
        return self.decoded[t]

    def __call__(self, logits: torch.Tensor, batch, idx) -> int:
        ids = logits.argmax(-1)  # (B, A)
        whole = ((ids == batch.label) | ~batch.amask).all(-1).tolist()
        first = ids[:, 0].tolist()
        return sum(self._decode(t) == self.labels[i] if self.n_tokens[i] == 1 else ok
                   for t, ok, i in zip(first, whole, idx))


def evaluate(adapter: ModelAdapter, circuit: Circuit, pairs: Sequence, metric: str | Sequence[str] = "kl",
             batch_size: int = 16, prune: bool = True, progress: bool = False) -> EvalResult:
    """Faithfulness (first metric; all in ``by_metric``), circuit accuracy and model accuracy."""
    metrics = (metric,) if isinstance(metric, str) else tuple(metric)
    return evaluate_many(adapter, [circuit], pairs, metrics, batch_size, prune, progress)[0]


def faithfulness_curve(adapter: ModelAdapter, scores, pairs: Sequence, fracs: Sequence[float] = CURVE_FRACS,
                       spec: GraphSpec | None = None, metric: str = "kl", batch_size: int = 16,
                       progress: bool = False) -> list[CurvePoint]:
    """Faithfulness of the top-x% circuits (selected, pruned) for every x in ``fracs``; the corrupted
    and clean runs are shared by all points."""
    circuits = [select_circuit(scores, spec or adapter.spec, "top_frac", f) for f in fracs]
    results = evaluate_many(adapter, circuits, pairs, (metric,), batch_size, True, progress)
    return [CurvePoint(f, r.n_edges, r.faithfulness, r.circuit_accuracy) for f, r in zip(fracs, results)]


def hooked_parity(adapter: ModelAdapter, pairs: Sequence, batch_size: int = 16) -> float:
    """max |HF logits - our patched-path logits| at the last positions, with every layer forced through
    our per-head q/k/v path and nothing patched (should be float rounding only)."""
    graph = build_graph(adapter.spec)
    enc = adapter.encode_pairs(pairs)
    zero = torch.zeros(graph.n_src, graph.n_dst)
    worst = 0.0
    for st in range(0, len(pairs), batch_size):
        r = PatchedRunner(adapter, graph, adapter.make_batch(enc, range(st, min(len(pairs), st + batch_size))))
        ours = r.run(zero, force=True)  # (B, A, V) at the answer positions
        worst = max(worst, float((ours.double() - r.clean_logits.double()).abs().max()))
    return worst
