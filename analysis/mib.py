"""MIB's circuit-localization metrics, CPR and CMD (Mueller et al., "MIB: a Mechanistic Interpretability
Benchmark", 2025), on circuitshift's scores.

MIB evaluates a scored graph at the edge fractions ``MIB_FRACTIONS`` (0.1% .. 100%): at each fraction p
the circuit is the top ``int(p * E)`` edges by |score| (E = every q/k/v-level edge), pruned, and its
normalised faithfulness is

    f(C) = (m(C) - m(empty)) / (m(M) - m(empty))

CPR (circuit performance ratio) is the area under f over the fractions and CMD (circuit-model
distance) the area under |1 - f|, both by the trapezoid rule on a linear x axis (MIB's default). Higher
CPR is better; lower CMD is better (0 means every circuit behaves exactly like the model).

Here m(X) is `analysis.evaluate`'s F(X), whose anchors are the same: F(empty) = 0 (the empty circuit
patches every edge, so its run is the corrupted run) and F(full) = F(M). So f(C) = F(C) / F(M): under
``logit-diff`` this is MIB's formula exactly; under ``kl`` it is the same normalisation of the KL
distance from the corrupted run.

Units: the per-fraction faithfulness is stored in percent, like every faithfulness in circuitshift;
CPR and CMD are areas in MIB's own units (f as a fraction times the edge fraction, so a model-perfect
curve has CPR 1 and CMD 0), so they compare directly with MIB's published numbers.

In a distributed run (an initialised process group: torchrun / accelerate launch) the curve is sharded
as `analysis.distributed.sharded_evaluate_many` shards an evaluation: each rank evaluates every
fraction's circuit on its own whole batches (round robin) and the sums are all-reduced, so every rank
calls :func:`mib_curve` and gets the one-process curve (to float rounding) in about 1/N of the time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from analysis.circuit import empty_circuit, score_table, select_circuit
from analysis.distributed import Shard, sharded_evaluate_many
from analysis.errors import UserError

#: MIB's edge fractions (its ``evaluate_area_under_curve`` percentages)
MIB_FRACTIONS: tuple[float, ...] = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


@dataclass(frozen=True)
class MIBResult:
    """One scored graph's MIB curve and its two areas."""

    fractions: tuple[float, ...]  # edge fractions evaluated
    n_edges: tuple[int, ...]  # edges kept at each fraction, after pruning
    faithfulness: tuple[float, ...]  # normalised faithfulness f(C) at each fraction, in percent
    cpr: float  # area under f (f as a fraction); MIB units, higher is better
    cmd: float  # area under |1 - f|; MIB units, lower is better
    metric: str

    def to_dict(self) -> dict:
        return {"fractions": list(self.fractions), "n_edges": list(self.n_edges),
                "faithfulness_percent": list(self.faithfulness), "cpr": self.cpr, "cmd": self.cmd,
                "metric": self.metric}


def areas(fractions: Sequence[float], faithfulness: Sequence[float],
          log_scale: bool = False) -> tuple[float, float]:
    """(CPR, CMD) of a curve: trapezoid areas under f and |1 - f| (f as fractions, not percent)."""
    if len(fractions) != len(faithfulness) or len(fractions) < 2:
        raise UserError("a faithfulness curve needs at least two points, one value per fraction")
    if any(b <= a for a, b in zip(fractions, fractions[1:])) or fractions[0] <= 0:
        raise UserError(f"curve fractions must be positive and increasing, got {list(fractions)}")
    xs = [math.log(x) for x in fractions] if log_scale else list(fractions)
    cpr = cmd = 0.0
    for i in range(len(xs) - 1):
        width = xs[i + 1] - xs[i]
        f1, f2 = faithfulness[i], faithfulness[i + 1]
        cpr += width * (f1 + f2) / 2
        cmd += width * (abs(1 - f1) + abs(1 - f2)) / 2
    return cpr, cmd


def normalised(f_model: float, f_circuit: float) -> float:
    """f(C) = F(C) / F(M) as a fraction (nan when the model's F is 0: nothing to recover)."""
    if f_model == 0 or not math.isfinite(f_model):
        return float("nan")
    return f_circuit / f_model


def mib_curve(adapter, scores, pairs: Sequence, metric: str = "logit-diff", batch_size: int = 16,
              fractions: Sequence[float] = MIB_FRACTIONS, progress: bool = False,
              shard: Shard | None = None) -> MIBResult:
    """Evaluate the top-p circuits of ``scores`` for every MIB fraction p and return CPR and CMD.

    ``scores``: what `analysis.circuit.select_circuit` takes (a ScoreResult, an edge->score dict or
    a score document) for ``adapter``'s graph. The clean and corrupted runs are shared by all points.
    ``shard``: this process's share of the batches (default: its rank in the initialised process
    group, else all of them); with more than one process every rank must call this (a collective).
    """
    fractions = tuple(float(p) for p in fractions)
    if any(not 0 < p <= 1 for p in fractions):
        raise UserError(f"MIB fractions must lie in (0, 1], got {list(fractions)}")
    table = score_table(scores, adapter.spec)
    total = table.n_graph_edges
    circuits = []
    for p in fractions:
        n = min(int(p * total), len(table.names))  # MIB: int(pct * n_scored_items), then prune
        circuits.append(select_circuit(scores, adapter.spec, "top_n", n) if n > 0
                        else empty_circuit(adapter.spec, table.level))
    results = sharded_evaluate_many(adapter, circuits, pairs, (metric,), batch_size, True, shard, progress)
    f = [normalised(r.by_metric[metric].f_model, r.by_metric[metric].f_circuit) for r in results]
    cpr, cmd = areas(fractions, f)
    return MIBResult(fractions, tuple(r.n_edges for r in results), tuple(x * 100.0 for x in f),
                     cpr, cmd, metric)
