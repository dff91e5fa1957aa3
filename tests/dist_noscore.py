"""`circuitshift` with the checkpoint scoring switched off: launched under torchrun by
tests/test_distributed_ingest.py, it trains exactly as `ingest run` does (same callbacks, same
Trainer saves at the circuit checkpoints) but scores and writes nothing, so its weights are those of
training without scoring."""

from __future__ import annotations

import ingest.jobs.finetune as finetune
from ingest.cli import main


def no_scoring(self, model, state, step) -> None:
    """CircuitCheckpointCallback._checkpoint, doing nothing."""


if __name__ == "__main__":
    finetune.CircuitCheckpointCallback._checkpoint = no_scoring
    main()
