"""Metrics that scores are taken with respect to, evaluated per example at its answer positions.

Every metric maps ``(logits (..., V), clean_logits (..., V), label (...), corrupted_label (...)|None)``
to a value per position (...). With answers of several tokens the positions are the answer positions
of a teacher-forced run (``analysis.adapter.Batch``: shape (B, A)); :func:`per_example` sums a metric
over each example's real answer positions, so a single-token answer gives exactly the value at the
last prompt position. The engine sums per-example values (no batch mean), so scores never depend on
the batch size.

* ``kl``: KL(P_clean || P) **averaged over the vocabulary** (``F.kl_div(...).mean(-1)``), as the
  paper's code (method.md 2.3). Zero on the clean run; grows as the run moves away from it.
* ``logit-diff``: logit[label] - logit[corrupted_label]. Needs the corrupted_label column.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from analysis.errors import UserError

Tensor = torch.Tensor


def _upcast(x: Tensor) -> Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def kl_vocab_mean(logits: Tensor, clean_logits: Tensor, label=None, corrupted_label=None) -> Tensor:
    logq = F.log_softmax(_upcast(logits), dim=-1)
    logp = F.log_softmax(_upcast(clean_logits), dim=-1)
    return F.kl_div(logq, logp, log_target=True, reduction="none").mean(-1)


def logit_diff(logits: Tensor, clean_logits=None, label=None, corrupted_label=None) -> Tensor:
    if corrupted_label is None:
        raise UserError("the logit-diff metric needs a corrupted_label for every row")
    x = _upcast(logits)
    return x.gather(-1, label[..., None])[..., 0] - x.gather(-1, corrupted_label[..., None])[..., 0]


def per_example(metric: Callable[..., Tensor], logits: Tensor, reference: Tensor | None, batch) -> Tensor:
    """(B,) the metric summed over each example's answer positions (``batch.amask``); logits and
    reference are the (B, A, V) answer logits."""
    values = metric(logits, reference, batch.label, batch.corrupted_label)
    return torch.where(batch.amask, values, torch.zeros((), dtype=values.dtype, device=values.device)).sum(-1)


METRICS: dict[str, Callable[..., Tensor]] = {"kl": kl_vocab_mean, "logit-diff": logit_diff}
NEEDS_CORRUPTED_LABEL = {"kl": False, "logit-diff": True}


def get_metric(name: str) -> Callable[..., Tensor]:
    if name not in METRICS:
        raise UserError(f"unknown metric {name!r}; choose one of {', '.join(METRICS)}")
    return METRICS[name]
