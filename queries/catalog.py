"""What is stored, as named reads: runs, checkpoint metrics, run tags and analysis runs, plans and
method comparisons. `queries.api.Store` has these methods (it mixes this class in); each runs one
statement of `queries/cypher/` and returns plain rows."""

from __future__ import annotations

from queries.cypher import experiments as E
from queries.cypher import questions as Q
from queries.cypher import runs as R
from queries.cypher import views as V


class StoredRecords:
    """Reads of stored records; expects `self.read(statement, **params) -> list[dict]`."""

    def _first(self, statement: str, **params) -> dict | None:
        rows = self.read(statement, **params)
        return rows[0] if rows else None

    # -- runs --------------------------------------------------------------------------------------
    def runs(self) -> list[dict]:
        """Every run: id, model, task, method, arch and its complete checkpoints' steps."""
        return self.read(R.RUNS)

    def checkpoint_metrics(self, run: str) -> list[dict]:
        """Per complete checkpoint of `run`, in step order: accuracy, faithfulness, circuit size, ..."""
        return self.read(R.CHECKPOINT_METRICS, run=run)

    def run_info(self, run: str) -> dict | None:
        """The run's architecture and its complete checkpoints' steps, levels and uids (None: no run)."""
        return self._first(Q.RUN_INFO, run=run)

    def run_source(self, run: str) -> dict | None:
        """The run's model, task and method (None: no run)."""
        return self._first(R.RUN_SOURCE, run=run)

    def run_task(self, run: str) -> str | None:
        row = self._first(R.RUN_TASK, run=run)
        return row["task"] if row else None

    def analysis_runs(self, analysis: str, of_run: str, task: str | None) -> list[dict]:
        """Runs tagged `analysis` (robustness, splits, noise) linked to `of_run` or on `task`."""
        return self.read(R.ANALYSIS_RUNS, analysis=analysis, of=of_run, task=task or "\u0000")

    def noise_runs(self, run: str) -> list[dict]:
        """The resampling-noise runs stored for `run` (robustness --noise-of RUN:STEP)."""
        return self.read(R.NOISE_RUNS, of=run)

    # -- plans and experiments ---------------------------------------------------------------------
    def plan_json(self, plan_id: str) -> str | None:
        row = self._first(E.PLAN_BY_ID, id=plan_id)
        return row["json"] if row else None

    def experiment_info(self, experiment: str) -> dict | None:
        return self._first(E.EXPERIMENT_INFO, experiment=experiment)

    def experiment_runs(self, experiment: str) -> list[dict]:
        """One row per run of the experiment: label, seed, first and final step and accuracy."""
        return self.read(E.EXPERIMENT_RUNS, experiment=experiment)

    def experiment_table_rows(self, experiment: str, exclude: list[str], order: list[str]) -> list[dict]:
        """Per method label: mean and sample std over seeds of the final accuracy, in `order`."""
        return self.read(E.EXPERIMENT_TABLE, experiment=experiment, exclude=list(exclude), order=list(order))

    # -- Browser views -----------------------------------------------------------------------------
    def view_summary(self, view: str) -> list[dict]:
        return self.read(V.VIEW_SUMMARY, view=view)

    def views(self) -> list[dict]:
        return self.read(V.VIEWS)
