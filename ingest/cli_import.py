"""`circuitshift import eap-json FILE... --run NAME --step N`: circuits people already have."""

from __future__ import annotations

import json

import click

from analysis.errors import UserError


@click.group("import")
def import_group():
    """Import circuits people already have."""


@import_group.command("eap-json")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--run", "run_id", required=True, help="Run to store them under (created if new).")
@click.option("--step", "steps", type=int, multiple=True, required=True,
              help="Step of each file; one value for one file, or a first step for several files "
                   "(then steps count up by one).")
@click.option("--model-config", default=None,
              help='JSON with n_layers, n_heads, parallel_attn_mlp when the files lack a "cfg".')
@click.option("--model", default="", help="Model the circuits belong to (provenance).")
@click.option("--task", default="", help="Task the circuits were found on (provenance).")
def eap_json(files, run_id, steps, model_config, model, task):
    """Import EAP-IG graph JSON: hannamw/EAP-IG Graph.to_json files (all edges, in_graph flags, q/k/v
    edges) or the paper's collapsed, in-graph-only head-level files. Every file is validated before
    anything is written."""
    from analysis.provenance import code_version, file_hash
    from ingest.eap_json import read_eap_json
    from queries.connection import session_driver
    from queries.writer import CircuitWriter, RunRecord

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
