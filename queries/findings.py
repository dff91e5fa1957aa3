"""The Key Observations' findings in the store: write and read the `(:Findings)` document (its data model
and statements: queries/cypher/findings.py). Never imports torch."""

from __future__ import annotations

import json

from analysis.errors import UserError
from queries.api import parse_ref
from queries.cypher import findings as S


def write_findings(driver, database, findings_id: str, preset: str, doc: dict, experiment: str | None,
                   runs: list[dict]) -> int:
    """Store the findings document, linked to the KO3 experiment and every run used ({run, ko, role})."""
    verdicts = {ko["key"]: ko["verdict"] for ko in doc.get("observations", [])}
    records, _, _ = driver.execute_query(
        S.MERGE_FINDINGS, {"id": findings_id, "preset": preset, "json": json.dumps(doc, sort_keys=True, default=str),
                         "verdicts": json.dumps(verdicts, sort_keys=True), "experiment": experiment or "",
                         "runs": runs}, database_=database, routing_="w")
    return records[0]["linked"] if records else 0


def read_findings(store, findings_id: str) -> dict:
    """The stored findings: {doc, preset, experiment, runs}."""
    rows = store.read(S.FINDINGS_BY_ID, id=findings_id)
    if not rows or rows[0]["json"] is None:
        raise UserError(f"no findings {findings_id!r} in the database")
    r = rows[0]
    return {"doc": json.loads(r["json"]), "preset": r["preset"], "experiment": r["experiment"],
            "runs": [u for u in r["runs"] if u["run"]]}


def graph_head_pairs(store, ref: str) -> list[int]:
    """All head-level edge pairs of the graph circuit `ref` was scored on."""
    run, step = parse_ref(ref)
    rows = store.read(S.GRAPH_HEAD_PAIRS, run=run, step=step)
    return sorted(rows[0]["pairs"]) if rows else []


def run_metrics(store, run: str) -> list[dict]:
    return store.read(S.RUN_METRICS, run=run)


def experiment_plan_layers(store, experiment: str) -> list[dict]:
    return store.read(S.EXPERIMENT_PLAN_LAYERS, experiment=experiment)
