"""A small hand-made fine-tuning run for the exploration tests (Browser, report): no model needed.

Run `demo` on a 4-layer, 4-head parallel architecture, checkpoints 0, 10, 20, 30, 40: every head-level
edge is scored (seeded random scores that drift from step to step) and each checkpoint's circuit is
its top 40 edges, so circuits change between checkpoints. Accuracy and faithfulness rise over steps.
"""

from __future__ import annotations

import numpy as np

from queries.components import Architecture
from queries.writer import CheckpointData, CircuitWriter, RunRecord

ARCH = Architecture(4, 4, True)
STEPS = (0, 10, 20, 30, 40)
TOP = 40


def demo_checkpoints(n_steps: int = len(STEPS), seed: int = 0) -> list[CheckpointData]:
    rng = np.random.default_rng(seed)
    names = sorted(n for n in ARCH.key_of if not n.endswith(">"))  # head level
    base = rng.lognormal(0.0, 1.0, len(names)) * rng.choice([-1.0, 1.0], len(names))
    drift = rng.normal(0.0, 0.45, len(names)) * np.abs(base).mean()
    out = []
    for i, step in enumerate(STEPS[:n_steps]):
        scores = base + drift * i + rng.normal(0.0, 0.05, len(names))
        order = np.argsort(-np.abs(scores), kind="stable")
        flags = np.zeros(len(names), dtype=bool)
        flags[order[:TOP]] = True
        out.append(CheckpointData(step=step, names=names, scores=scores.tolist(), in_graph=flags.tolist(),
                                  level="head", meta={"accuracy": 0.3 + 0.15 * i,
                                                      "faithfulness": 0.7 + 0.05 * i, "epoch": i}))
    return out


def write_demo(driver, database, run_id: str = "demo", n_steps: int = len(STEPS), seed: int = 0,
               task: str = "toy") -> list[int]:
    writer = CircuitWriter(driver, database)
    writer.ensure_run(RunRecord(id=run_id, model="hand-made", task=task, seed=seed), ARCH)
    return [writer.write_checkpoint(run_id, ARCH, cp) for cp in demo_checkpoints(n_steps, seed)]
