"""CircuitLoRA plans and method comparisons in the store, as named, parameterized Cypher statements.

Data model (constraints in queries/schema.py):
  (:Plan {id, kind, label, json, critical_layers, r_o, r_c, parameter_ratio, before, after, model, created})
     -[:FROM_CIRCUIT {role: 'before'|'after'}]->(:Checkpoint)     the circuits a plan came from
  (:Run)-[:TRAINED_WITH]->(:Plan)                                   phase 2 runs
  (:Experiment {id, task, model, seeds, labels, settings, created})
     -[:HAS_RUN {label, seed}]->(:Run {experiment, label, parameter_ratio, trainable_parameters})

The comparison table (Table 1 form) is computed here, from the runs' final complete checkpoints: the mean
and the sample standard deviation over seeds with Cypher's avg() and stDev(), in the stored unit of
accuracy (percent, 0-100).
"""

from __future__ import annotations

MERGE_PLAN = """
MERGE (p:Plan {id: $id})
  ON CREATE SET p.created = datetime()
SET p.kind = $kind, p.label = $label, p.json = $json, p.critical_layers = $critical_layers,
    p.r_o = $r_o, p.r_c = $r_c, p.parameter_ratio = $parameter_ratio, p.before = $before,
    p.after = $after, p.model = $model, p.task = $task
WITH p
OPTIONAL MATCH (p)-[old:FROM_CIRCUIT]->()
DELETE old
WITH DISTINCT p
UNWIND $sources AS src
MATCH (c:Checkpoint {uid: src.uid}) WHERE c.complete
MERGE (p)-[:FROM_CIRCUIT {role: src.role}]->(c)
RETURN count(*) AS linked
"""

PLAN_BY_ID = "MATCH (p:Plan {id: $id}) RETURN p.json AS json"

LINK_RUN_PLAN = """
MATCH (r:Run {id: $run}), (p:Plan {id: $plan})
MERGE (r)-[:TRAINED_WITH]->(p)
RETURN r.id AS run
"""

MERGE_EXPERIMENT = """
MERGE (x:Experiment {id: $id})
  ON CREATE SET x.created = datetime()
SET x.task = $task, x.model = $model, x.seeds = $seeds, x.labels = $labels, x.settings = $settings
RETURN x.id AS id
"""

# Tags a run as one cell of an experiment (idempotent) with the numbers the table needs.
TAG_EXPERIMENT_RUN = """
MATCH (x:Experiment {id: $experiment}), (r:Run {id: $run})
SET r.experiment = $experiment, r.label = $label, r.parameter_ratio = $parameter_ratio,
    r.trainable_parameters = $trainable_parameters
MERGE (x)-[h:HAS_RUN {label: $label, seed: $seed}]->(r)
RETURN r.id AS run
"""

EXPERIMENT_INFO = """
MATCH (x:Experiment {id: $experiment})
OPTIONAL MATCH (x)-[h:HAS_RUN]->(r:Run)
RETURN x.task AS task, x.model AS model, x.seeds AS seeds, x.labels AS labels, x.settings AS settings,
       count(r) AS runs
"""

# One row per run: the step-0 (pre-trained) and final complete checkpoints' accuracy.
EXPERIMENT_RUNS = """
MATCH (x:Experiment {id: $experiment})-[h:HAS_RUN]->(r:Run)
MATCH (r)-[:HAS_CHECKPOINT]->(c:Checkpoint) WHERE c.complete
WITH h, r, c ORDER BY c.step
WITH h, r, collect(c) AS cs
RETURN h.label AS label, h.seed AS seed, r.id AS run, r.parameter_ratio AS parameter_ratio,
       cs[0].step AS first_step, cs[0].accuracy AS accuracy_step0,
       cs[-1].step AS final_step, cs[-1].accuracy AS accuracy
ORDER BY label, seed
"""

# The table: per method label, mean and sample std (stDev) over seeds of the final accuracy, and the
# parameter ratio; plus the "pretrained" row from the step-0 checkpoints (each seed's runs all start
# from the same model; one value per seed, averaged over that seed's runs). Labels in $exclude (the
# phase-1 run) are not rows. Rows come in the order of $order.
EXPERIMENT_TABLE = """
CALL () {
  MATCH (x:Experiment {id: $experiment})-[h:HAS_RUN]->(r:Run)
  WHERE NOT h.label IN $exclude
  MATCH (r)-[:HAS_CHECKPOINT]->(c:Checkpoint) WHERE c.complete
  WITH h, r, c ORDER BY c.step
  WITH h, r, collect(c) AS cs
  WHERE cs[-1].step > 0
  RETURN h.label AS label, h.seed AS seed, cs[-1].accuracy AS acc, r.parameter_ratio AS ratio
  UNION ALL
  MATCH (x:Experiment {id: $experiment})-[h:HAS_RUN]->(r:Run)
  WHERE NOT h.label IN $exclude
  MATCH (r)-[:HAS_CHECKPOINT]->(c:Checkpoint {step: 0}) WHERE c.complete
  WITH h.seed AS seed, avg(c.accuracy) AS acc
  RETURN 'pretrained' AS label, seed, acc, 0.0 AS ratio
}
WITH label, count(*) AS n, avg(acc) AS mean, stDev(acc) AS std, min(acc) AS min, max(acc) AS max,
     avg(ratio) AS parameter_ratio, collect(seed) AS seeds
WITH label, n, mean, std, min, max, parameter_ratio, seeds,
     [i IN range(0, size($order) - 1) WHERE $order[i] = label] AS at
RETURN label, n, mean, std, min, max, parameter_ratio, seeds
ORDER BY CASE WHEN size(at) > 0 THEN at[0] ELSE size($order) END, label
"""
