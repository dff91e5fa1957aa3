"""One OS process of tests/test_concurrent_writers.py: write one run of random scored checkpoints.

    python tests/concurrent_writer.py RUN_ID N_CHECKPOINTS SEED GO_FILE

Connection settings come from the environment (NEO4J_URI, NEO4J_USER, NEO4J_PASSWORD), as for every
circuitshift process. It waits for GO_FILE so that all processes start writing at once.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from faults import qkv_names  # noqa: E402
from queries.components import Architecture  # noqa: E402
from queries.connection import open_driver  # noqa: E402
from queries.settings import Neo4jSettings  # noqa: E402
from queries.writer import CheckpointData, CircuitWriter, RunRecord  # noqa: E402

#: every process writes the same architecture: its Component nodes are MERGEd by all four at once
ARCH = Architecture(n_layers=6, n_heads=8, parallel_attn_mlp=True)


def checkpoints(n: int, seed: int) -> list[CheckpointData]:
    """The run's checkpoints: random signed scores, the top 5% by |score| in the circuit."""
    names = qkv_names(ARCH)
    rng = np.random.default_rng(seed)
    out = []
    for step in range(n):
        scores = rng.standard_normal(len(names))
        cut = np.sort(np.abs(scores))[-int(0.05 * len(names))]
        out.append(CheckpointData(step * 10, names, scores.tolist(), (np.abs(scores) >= cut).tolist(),
                                  meta={"accuracy": float(step)}))
    return out


def main(run_id: str, n: int, seed: int, go: Path) -> None:
    settings = Neo4jSettings()
    driver = open_driver(settings)
    try:
        deadline = time.monotonic() + 120
        while not go.exists():
            if time.monotonic() > deadline:
                raise SystemExit("the start signal never came")
            time.sleep(0.01)
        writer = CircuitWriter(driver, settings.database)
        writer.ensure_run(RunRecord(id=run_id, task="concurrency", method="test", seed=seed), ARCH)
        for cp in checkpoints(n, seed):
            writer.write_checkpoint(run_id, ARCH, cp)
    finally:
        driver.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
