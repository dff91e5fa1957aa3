"""Run records for results the store derives itself (unions), with their provenance."""

from __future__ import annotations

from analysis.provenance import code_version
from queries.writer import RunRecord


def union_run_record(run: str, a: str, b: str, definition, max_edges) -> RunRecord:
    return RunRecord(id=run, method="union", code_version=code_version(),
                     hparams={"score_fuse": "avg", "max_edges": max_edges},
                     extra={"union_of": [a, b], "definition": definition.describe()})
