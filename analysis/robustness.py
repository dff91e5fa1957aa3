"""Circuit robustness (method.md 7) and the resampling-noise baseline (model side; never imports neo4j).

* Perturbation robustness: one circuit on the clean circuit split (level 0) and one per perturbed copy
  `perturb_<p>` (p = 10..90 % of the rows perturbed); Robustness(p) = edge Jaccard(G_0, G_p), computed
  later by the store (`Store.jaccard`) from the circuits stored as checkpoints of a run, step = p.
* Disjoint splits (the rebuttal): one circuit per `split_<k>`; the mean pairwise Jaccard.
* Noise baseline: the SAME model scored on K bootstrap resamples of the circuit split. The churn
  between these circuits is what "churn" looks like when nothing but the data sample changed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Sequence

from analysis.errors import UserError


@dataclass
class ScoredCircuit:
    step: int
    names: list
    scores: list
    in_graph: list
    meta: dict


def level_splits(available: Sequence[str]) -> dict[int, str]:
    """{level %: split name} for the perturbed copies in a dataset folder, plus 0 -> 'circuit'."""
    out = {0: "circuit"}
    for name in available:
        if name.startswith("perturb_") and name[len("perturb_"):].isdigit():
            out[int(name[len("perturb_"):])] = name
    return dict(sorted(out.items()))


def disjoint_splits(available: Sequence[str]) -> dict[int, str]:
    return dict(sorted((int(n[len("split_"):]), n) for n in available
                       if n.startswith("split_") and n[len("split_"):].isdigit()))


def bootstrap_samples(pairs: Sequence, k: int, seed: int = 0, size: int | None = None) -> list[list]:
    """K resamples with replacement of `pairs` (each of `size`, default len(pairs))."""
    if k < 2:
        raise UserError(f"--samples must be at least 2 (churn needs two circuits), got {k}")
    if not pairs:
        raise UserError("no pairs to resample")
    rng = random.Random(seed)
    n = size or len(pairs)
    return [[pairs[rng.randrange(len(pairs))] for _ in range(n)] for _ in range(k)]


def random_model_like(model, seed: int = 0):
    """A randomly initialised model of the same architecture and tokenizer (the paper's 'random')."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    fresh = AutoModelForCausalLM.from_config(model.config)
    return fresh.to(next(model.parameters()).device).eval()


def score_sets(model, tokenizer, sets: dict[int, Sequence], cfg, progress: Callable | None = None
               ) -> list[ScoredCircuit]:
    """Score one circuit per pair set (step -> pairs) with the scoring config of the checkpoints."""
    from analysis.checkpoint import score_checkpoint

    out = []
    for step, pairs in sets.items():
        res = score_checkpoint(model, tokenizer, pairs, cfg)
        out.append(ScoredCircuit(step, res.names, res.scores, res.in_graph,
                                 {**res.metrics, "scoring": res.settings}))
        if progress:
            progress(step, res)
    return out
