"""Seeded fine-tuning / circuit splits and the rebuttal's disjoint robustness splits (method.md 1.8, 7).

`split_indices` is exactly scikit-learn's `train_test_split(test_size=circuit, random_state=seed)`
(numpy RandomState permutation; the first ceil(circuit*n) indices are the test set), so the paper's
Add/Sub(100) 90/10 split and the compositional 80/20 split (both seed 42) are reproduced without
depending on scikit-learn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from analysis.errors import UserError


@dataclass(frozen=True)
class SplitConfig:
    """Fractions of the dataset for fine-tuning and for circuit discovery/evaluation (disjoint)."""
    finetune: float = 0.8
    circuit: float = 0.2
    seed: int = 42

    def __post_init__(self):
        if not (0 < self.finetune < 1 and 0 < self.circuit < 1):
            raise UserError(f"split fractions must lie strictly between 0 and 1 "
                            f"(finetune {self.finetune}, circuit {self.circuit})")
        if abs(self.finetune + self.circuit - 1) > 1e-9:
            raise UserError(f"split fractions must add up to 1: finetune {self.finetune} + circuit "
                            f"{self.circuit} = {self.finetune + self.circuit:g}")


def _permutation(n: int, seed: int) -> list[int]:
    import numpy as np
    return [int(i) for i in np.random.RandomState(seed).permutation(n)]


def split_indices(n: int, config: SplitConfig) -> tuple[list[int], list[int]]:
    """(finetune, circuit) row indices, in sklearn's order."""
    n_circuit = math.ceil(config.circuit * n)
    n_finetune = n - n_circuit
    if n_circuit < 1 or n_finetune < 1:
        raise UserError(f"{n} examples cannot be split {config.finetune:g}/{config.circuit:g}: "
                        "one side would be empty")
    perm = _permutation(n, config.seed)
    return perm[n_circuit:], perm[:n_circuit]


def disjoint_splits(indices: list[int], k: int, size: int, seed: int) -> list[list[int]]:
    """`k` disjoint, seeded samples of `size` rows drawn from `indices` (the rebuttal used 5 x 200)."""
    if k < 2 or size < 1:
        raise UserError(f"disjoint splits need at least 2 splits of at least 1 row (got {k} x {size})")
    if k * size > len(indices):
        raise UserError(f"{k} disjoint splits of {size} need {k * size} rows, but only {len(indices)} "
                        "are available")
    perm = _permutation(len(indices), seed)
    return [[indices[perm[i * size + j]] for j in range(size)] for i in range(k)]
