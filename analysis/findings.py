"""The statistics behind `circuitshift experiment findings`: intervals, empirical p-values and the
verdict rule for the paper's four Key Observations (torch-free; never imports neo4j).

Every judged quantity becomes a `Measure` (a point estimate, its interval and how the interval was
made); a claim is judged by where the interval lies against the paper's threshold:

    interval entirely on the claimed side   -> "reproduces"
    interval entirely on the other side     -> "does not reproduce"
    interval straddles the threshold, or fewer than 2 values to form one -> "inconclusive"

so a verdict never rests on a point estimate alone.
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import asdict, dataclass, field
from typing import Sequence

from analysis.errors import UserError

REPRODUCES = "reproduces"
DOES_NOT = "does not reproduce"
INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class Measure:
    """One measured figure: the estimate, its interval (same unit), and what the interval is."""

    value: float = field(metadata={"help": "Point estimate (mean over the values)."})
    low: float | None = field(default=None, metadata={"help": "Interval low end (None: no interval)."})
    high: float | None = field(default=None, metadata={"help": "Interval high end."})
    n: int = field(default=1, metadata={"help": "How many values the estimate rests on."})
    sd: float | None = field(default=None, metadata={"help": "Sample standard deviation (n >= 2)."})
    spread: str = field(default="", metadata={"help": "How the interval was made, in words."})
    unit: str = field(default="", metadata={"help": "'%' for rates, accuracies, faithfulness."})

    def text(self, digits: int = 1) -> str:
        """'84.2% (95% CI 80.1-88.0%, n=3, sd 2.1)'."""
        u = self.unit
        out = f"{self.value:.{digits}f}{u}"
        extra = []
        if self.low is not None and self.high is not None:
            extra.append(f"{self.spread or 'interval'} {self.low:.{digits}f}-{self.high:.{digits}f}{u}")
        extra.append(f"n={self.n}")
        if self.sd is not None:
            extra.append(f"sd {self.sd:.{digits}f}")
        return f"{out} ({', '.join(extra)})"


@dataclass(frozen=True)
class Verdict:
    """One sub-claim judged: the paper's wording, the measure, the threshold and the outcome."""

    claim: str = field(metadata={"help": "What is tested, in the paper's terms."})
    measure: Measure = field(metadata={"help": "The measured figure."})
    threshold: float = field(metadata={"help": "The claim holds above (or below) this value."})
    above: bool = field(default=True, metadata={"help": "True: the claim is measure > threshold."})
    outcome: str = field(default=INCONCLUSIVE, metadata={"help": "reproduces / does not reproduce / inconclusive."})
    reason: str = field(default="", metadata={"help": "Why, in one line."})

    def as_dict(self) -> dict:
        return asdict(self)


def bootstrap_mean_ci(values: Sequence[float], level: float = 0.95, draws: int = 2000,
                      seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean: `draws` resamples with replacement (random.Random
    with `seed`), the (1-level)/2 and (1+level)/2 quantiles of their means (nearest rank)."""
    vals = [float(v) for v in values]
    if not vals:
        raise UserError("no values to bootstrap")
    if not 0 < level < 1:
        raise UserError(f"interval level must be in (0, 1), got {level}")
    rng = random.Random(seed)
    n = len(vals)
    means = sorted(sum(vals[rng.randrange(n)] for _ in range(n)) / n for _ in range(draws))
    lo_i = max(0, math.ceil((1 - level) / 2 * draws) - 1)
    hi_i = min(draws - 1, math.ceil((1 + level) / 2 * draws) - 1)
    return means[lo_i], means[hi_i]


def measure(values: Sequence[float], unit: str = "", what: str = "values", seed: int = 0) -> Measure:
    """Mean of `values` with its bootstrap 95% interval (none for a single value)."""
    vals = [float(v) for v in values]
    if not vals:
        raise UserError(f"no {what} to measure")
    mean = statistics.fmean(vals)
    if len(vals) < 2:
        return Measure(mean, n=1, unit=unit, spread=f"single {what[:-1] if what.endswith('s') else what}")
    lo, hi = bootstrap_mean_ci(vals, seed=seed)
    return Measure(mean, lo, hi, n=len(vals), sd=statistics.stdev(vals), unit=unit,
                   spread=f"bootstrap 95% CI over {what}")


def empirical_p(observed: float, null: Sequence[float]) -> float:
    """One-sided empirical p-value of `observed` against null draws: (1 + #{null >= observed}) /
    (1 + draws), never 0 (the observed value counts as one draw of the null)."""
    if not null:
        raise UserError("no null draws for an empirical p-value")
    return (1 + sum(1 for x in null if x >= observed)) / (1 + len(null))


def random_overlaps(universe: Sequence[int], reference_top: Sequence[int], k: int, draws: int,
                    seed: int = 0) -> list[int]:
    """Overlap_k of `draws` random edge sets of size k (drawn without replacement from `universe`,
    the graph's edges) with the reference circuit's top k: the size-matched random control."""
    pool = list(universe)
    if k > len(pool):
        raise UserError(f"k={k} is larger than the graph's {len(pool)} edges")
    ref = set(reference_top[:k])
    rng = random.Random(seed)
    return [len(ref.intersection(rng.sample(pool, k))) for _ in range(draws)]


def judge(claim: str, m: Measure, threshold: float, above: bool = True, why_inconclusive: str = "") -> Verdict:
    """The verdict rule of the module docstring; a single value (no interval) is inconclusive."""
    side = ">" if above else "<"
    if m.low is None or m.high is None:
        return Verdict(claim, m, threshold, above, INCONCLUSIVE,
                       why_inconclusive or f"one value only ({m.value:.3g}): no interval to judge {side} {threshold:g}")
    lo, hi = (m.low, m.high) if above else (-m.high, -m.low)
    t = threshold if above else -threshold
    if lo > t:
        return Verdict(claim, m, threshold, above, REPRODUCES, f"whole interval {side} {threshold:g}")
    if hi <= t:
        return Verdict(claim, m, threshold, above, DOES_NOT, f"whole interval on the other side of {threshold:g}")
    return Verdict(claim, m, threshold, above, INCONCLUSIVE,
                   why_inconclusive or f"interval {m.low:.3g}-{m.high:.3g} straddles {threshold:g}")


def judge_p(claim: str, observed: float, null: Sequence[float], alpha: float = 0.05) -> Verdict:
    """Observed above a null distribution: p < alpha reproduces; else does not (p >= alpha with
    enough draws to reach alpha), or inconclusive when the draws cannot reach alpha at all."""
    p = empirical_p(observed, null)
    lo, hi = _quantiles(null, 0.025), _quantiles(null, 0.975)
    m = Measure(float(observed), lo, hi, n=len(null), sd=statistics.stdev(null) if len(null) > 1 else None,
                spread="random-control 95% range")
    if 1 / (1 + len(null)) >= alpha:
        return Verdict(claim, m, alpha, False, INCONCLUSIVE, f"{len(null)} random draws cannot give p < {alpha}")
    if p < alpha:
        return Verdict(claim, m, alpha, False, REPRODUCES, f"empirical p = {p:.4f} < {alpha}")
    return Verdict(claim, m, alpha, False, DOES_NOT, f"empirical p = {p:.4f} >= {alpha}: within random overlap")


def _quantiles(vals: Sequence[float], q: float) -> float:
    s = sorted(vals)
    return float(s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))])


def combine(verdicts: Sequence[Verdict]) -> str:
    """A Key Observation from its sub-claims: every one reproduces -> reproduces; any does not ->
    does not reproduce; otherwise inconclusive."""
    outcomes = [v.outcome for v in verdicts]
    if not outcomes:
        return INCONCLUSIVE
    if all(o == REPRODUCES for o in outcomes):
        return REPRODUCES
    if any(o == DOES_NOT for o in outcomes):
        return DOES_NOT
    return INCONCLUSIVE


def change_rate(changes: Sequence[float], size0: float) -> float:
    """Delta_S = (1/n) sum_t changes_t / S_0 x 100% (method.md 6.3)."""
    if not changes or not size0:
        raise UserError("a change rate needs at least one transition and a non-empty first circuit")
    return 100.0 * sum(changes) / len(changes) / size0


def paired_differences(a: dict, b: dict) -> list[float]:
    """a[seed] - b[seed] over the seeds both have (methods compared seed by seed)."""
    return [float(a[s]) - float(b[s]) for s in sorted(set(a) & set(b))]
