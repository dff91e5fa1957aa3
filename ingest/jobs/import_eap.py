"""The import job (`circuitshift import eap-json`): EAP-IG graph files as the checkpoints of one run,
every file validated before anything is written. A `.pt` file (by suffix) is hannamw's `Graph.to_pt`
file (`analysis.eap_pt`: every q/k/v-level edge, float32 scores); any other file is graph JSON."""

from __future__ import annotations

import json
from pathlib import Path

import click

from analysis.eap_pt import from_eap_pt
from analysis.errors import UserError
from analysis.provenance import code_version, file_hash
from ingest.eap_json import EapGraphFile, read_eap_json
from queries.components import Architecture
from queries.connection import session_driver
from queries.writer import CircuitWriter, RunRecord


def read_eap_pt(path: Path | str) -> EapGraphFile:
    """One hannamw `.pt` graph file as the store reads a full q/k/v-level EAP-IG graph JSON file."""
    c = from_eap_pt(path)
    if not c.edges:  # as graph JSON: the store refuses a checkpoint with no circuit
        raise UserError(f"{path}: no edge is in the graph (edges_in_graph all false)")
    s = c.spec
    return EapGraphFile(path=Path(path), arch=Architecture(s.n_layers, s.n_heads, s.parallel_attn_mlp, s.n_kv_heads),
                        level="qkv", full=True, names=list(c.all_scores), scores=list(c.all_scores.values()),
                        in_graph=[n in c.edges for n in c.all_scores], nodes_in_graph=sorted(c.nodes))


def read_graph_file(path: Path | str, model_config: dict | None) -> tuple[EapGraphFile, str]:
    """(the validated file, its source format): `.pt` by suffix, else graph JSON."""
    if Path(path).suffix.lower() == ".pt":  # a .pt file always carries its own cfg
        return read_eap_pt(path), "eap-ig-pt"
    return read_eap_json(path, model_config), "eap-ig-json"


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
    read = [read_graph_file(f, cfg) for f in files]  # all validated before any write
    parsed = [p for p, _ in read]
    archs = {p.arch for p in parsed}
    if len(archs) > 1:
        raise UserError("the files describe different architectures: " + ", ".join(a.key for a in archs))
    arch = parsed[0].arch
    run = RunRecord(id=run_id, model=model, task=task, method="import", code_version=code_version(),
                    extra={"files": [str(f) for f in files]})
    with session_driver() as (driver, database):
        writer = CircuitWriter(driver, database)
        writer.ensure_run(run, arch)
        for (p, source_format), step in zip(read, steps):
            meta = {"source_sha256": file_hash(p.path), "source_format": source_format}
            writer.write_checkpoint(run_id, arch, p.checkpoint(step, meta))
            click.echo(f"{p.path.name}: {len(p.names)} {p.level}-level edges "
                       f"({sum(p.in_graph)} in the circuit) -> {run_id}:{step}")
