"""What is stored, read by name: runs, their checkpoints' metrics, their tags, and the analysis runs
(robustness, disjoint splits, resampling noise) linked to a run by their tags."""

from __future__ import annotations

RUNS = """
MATCH (r:Run)
OPTIONAL MATCH (r)-[:HAS_CHECKPOINT]->(c:Checkpoint) WHERE c.complete
WITH r, c ORDER BY c.step
RETURN r.id AS run, r.model AS model, r.task AS task, r.method AS method, r.arch AS arch,
       collect(c.step) AS steps
ORDER BY run
"""

# cpr and cmd (MIB units, analysis/mib.py) are null for checkpoints scored without them.
CHECKPOINT_METRICS = """
MATCH (c:Checkpoint {run: $run}) WHERE c.complete
RETURN c.step AS step, c.epoch AS epoch, c.accuracy AS accuracy, c.faithfulness AS faithfulness,
       c.circuit_accuracy AS circuit_accuracy, c.n_edges AS n_edges, c.n_in_graph AS n_in_graph,
       c.level AS level, c.cpr AS cpr, c.cmd AS cmd
ORDER BY step
"""

# A run's model and task (to plan from a stored circuit without naming the model again).
RUN_SOURCE = """
MATCH (r:Run {id: $run})
RETURN r.model AS model, r.task AS task, r.method AS method
"""

# Analysis runs of `circuitshift robustness` on a run (linked by of_run) or on its task.
ANALYSIS_RUNS = """
MATCH (r:Run) WHERE r.analysis = $analysis AND (r.of_run = $of OR r.task = $task)
OPTIONAL MATCH (r)-[:HAS_CHECKPOINT]->(c:Checkpoint) WHERE c.complete
WITH r, c ORDER BY c.step
RETURN r.id AS run, r.model_label AS label, r.of_run AS of_run, r.noise_step AS noise_step,
       collect(c.step) AS steps
ORDER BY run
"""

NOISE_RUNS = """
MATCH (r:Run) WHERE r.analysis = 'noise' AND r.of_run = $of
OPTIONAL MATCH (r)-[:HAS_CHECKPOINT]->(c:Checkpoint) WHERE c.complete
WITH r, c ORDER BY c.step
RETURN r.id AS run, r.noise_step AS noise_step, collect(c.step) AS steps
ORDER BY run
"""

RUN_TASK = "MATCH (r:Run {id: $run}) RETURN r.task AS task"
