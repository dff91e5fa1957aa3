"""The fine-tuning job's public names at their first path (README "Your own Trainer" and older scripts
import `CircuitCheckpointCallback` from here); the job itself is ingest/jobs/finetune.py."""

from ingest.jobs.finetune import CircuitCheckpointCallback, IngestConfig, architecture_of, run_ingest

__all__ = ["CircuitCheckpointCallback", "IngestConfig", "architecture_of", "run_ingest"]
