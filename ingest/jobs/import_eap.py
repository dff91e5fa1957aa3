"""The import job (`circuitshift import eap-json`): EAP-IG graph JSON files as the checkpoints of one run,
every file validated before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import click

from analysis.errors import UserError
from analysis.provenance import code_version, file_hash
from ingest.eap_json import read_eap_json
from queries.connection import session_driver
from queries.writer import CircuitWriter, RunRecord


def import_eap_json(files: list[str | Path], run_id: str, steps: list[int], model_config: str | None,
                    model: str, task: str) -> None:
    """Store `files` under `run_id` at `steps` (one step: consecutive steps from it); `model_config` is
    a JSON object for files that do not say their architecture."""
    if len(steps) == 1:
        steps = [steps[0] + i for i in range(len(files))]
    elif len(steps) != len(files):
        raise UserError(f"{len(files)} file(s) but {len(steps)} --step value(s)")
    if len(set(steps)) != len(steps):
        raise UserError("two files would get the same step")
    cfg = None
    if model_config:
        try:
            cfg = json.loads(model_config)
        except json.JSONDecodeError as exc:
            raise UserError(f"--model-config is not valid JSON: {exc.msg}") from None
        if not isinstance(cfg, dict):
            raise UserError("--model-config must be a JSON object")
    parsed = [read_eap_json(f, cfg) for f in files]  # all validated before any write
    archs = {p.arch for p in parsed}
    if len(archs) > 1:
        raise UserError("the files describe different architectures: " + ", ".join(a.key for a in archs))
    arch = parsed[0].arch
    run = RunRecord(id=run_id, model=model, task=task, method="import", code_version=code_version(),
                    extra={"files": [str(f) for f in files]})
    with session_driver() as (driver, database):
        writer = CircuitWriter(driver, database)
        writer.ensure_run(run, arch)
        for p, step in zip(parsed, steps):
            writer.write_checkpoint(run_id, arch, p.checkpoint(step, {"source_sha256": file_hash(p.path)}))
            click.echo(f"{p.path.name}: {len(p.names)} {p.level}-level edges "
                       f"({sum(p.in_graph)} in the circuit) -> {run_id}:{step}")
