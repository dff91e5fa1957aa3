"""Reads of the multi-run report (`circuitshift report RUN [RUN ...] | --experiment ID ...`), as named,
parameterized Cypher statements: the checkpoint curves of several runs, and the per-run cells of several
experiments' method tables (method.md 8, Tables 1, 3, 4).

A run "used a union plan" when it was trained with a (:Plan) whose 'after' circuit belongs to a run of
method 'union' (a circuit stored by `circuitshift query union`): that is CircuitLoRA_U (method.md 5).
"""

from __future__ import annotations

_UNION_PLAN = """EXISTS {
  MATCH (r)-[:TRAINED_WITH]->(:Plan)-[:FROM_CIRCUIT {role: 'after'}]->(:Checkpoint)
        <-[:HAS_CHECKPOINT]-(:Run {method: 'union'})
}"""

# One row per requested run that exists, with its complete checkpoints' steps, accuracy and faithfulness
# (stored in percent) in step order; `hparams` carries the task's defaults key (add_sub_300, ...).
RUN_CURVES = """
UNWIND range(0, size($runs) - 1) AS i
MATCH (r:Run {id: $runs[i]})
OPTIONAL MATCH (r)-[:HAS_CHECKPOINT]->(c:Checkpoint) WHERE c.complete
WITH i, r, c ORDER BY c.step
WITH i, r, collect(c) AS cs
RETURN r.id AS run, r.task AS task, r.hparams AS hparams, r.method AS method, r.label AS label,
       r.experiment AS experiment, [c IN cs | c.step] AS steps, [c IN cs | c.accuracy] AS accuracy,
       [c IN cs | c.faithfulness] AS faithfulness, """ + _UNION_PLAN + """ AS union_plan
ORDER BY i
"""

KNOWN_EXPERIMENTS = """
UNWIND $experiments AS id
MATCH (x:Experiment {id: id})
RETURN x.id AS id, x.task AS task, x.model AS model, x.seeds AS seeds, x.labels AS labels
"""

# One row per tagged run of the experiments (labels in $exclude, the phase-1 run, left out): its first
# (step 0, the pre-trained model) and final complete checkpoints' accuracy and its parameter ratio.
EXPERIMENT_CELLS = """
UNWIND $experiments AS id
MATCH (x:Experiment {id: id})-[h:HAS_RUN]->(r:Run)
WHERE NOT h.label IN $exclude
MATCH (r)-[:HAS_CHECKPOINT]->(c:Checkpoint) WHERE c.complete
WITH x, h, r, c ORDER BY c.step
WITH x, h, r, collect(c) AS cs
RETURN x.id AS experiment, h.label AS label, h.seed AS seed, r.id AS run, r.task AS task,
       r.hparams AS hparams, r.parameter_ratio AS parameter_ratio,
       cs[0].step AS first_step, cs[0].accuracy AS accuracy_step0,
       cs[-1].step AS final_step, cs[-1].accuracy AS accuracy, """ + _UNION_PLAN + """ AS union_plan
ORDER BY experiment, label, seed
"""
