"""The Key Observations' findings (`circuitshift experiment findings`): named, parameterized statements.

Data model (beside the experiments' in queries/cypher/experiments.py):
  (:Findings {id, preset, json, verdicts, created})
     -[:OF_EXPERIMENT]->(:Experiment)          the KO3 method comparison the findings include
     -[:USED_RUN {ko, role}]->(:Run)           every run each Key Observation was measured on
The JSON is the whole findings document (claims, figures, intervals, verdicts); `verdicts` is a map
KO -> verdict for a quick read in Browser.
"""

MERGE_FINDINGS = """
MERGE (f:Findings {id: $id})
  ON CREATE SET f.created = datetime()
SET f.preset = $preset, f.json = $json, f.verdicts = $verdicts, f.updated = datetime()
WITH f
OPTIONAL MATCH (f)-[old:USED_RUN|OF_EXPERIMENT]->()
DELETE old
WITH DISTINCT f
OPTIONAL MATCH (x:Experiment {id: $experiment})
FOREACH (_ IN CASE WHEN x IS NULL THEN [] ELSE [1] END | MERGE (f)-[:OF_EXPERIMENT]->(x))
WITH f
UNWIND $runs AS used
MATCH (r:Run {id: used.run})
MERGE (f)-[:USED_RUN {ko: used.ko, role: used.role}]->(r)
RETURN count(*) AS linked
"""

FINDINGS_BY_ID = """
MATCH (f:Findings {id: $id})
OPTIONAL MATCH (f)-[:OF_EXPERIMENT]->(x:Experiment)
OPTIONAL MATCH (f)-[u:USED_RUN]->(r:Run)
RETURN f.json AS json, f.preset AS preset, x.id AS experiment,
       collect({ko: u.ko, role: u.role, run: r.id}) AS runs
"""

# Every head-level edge pair of a checkpoint's graph (its scored edges' keys / 4, distinct): the
# universe random control circuits are drawn from (stored keys are pair * 4 + channel at both levels).
GRAPH_HEAD_PAIRS = """
MATCH (r:Run {id: $run})-[:HAS_CHECKPOINT]->(c:Checkpoint {step: $step}) WHERE c.complete
UNWIND c.keys AS key
WITH DISTINCT key / 4 AS pair
RETURN collect(pair) AS pairs
"""

# Per-checkpoint metrics of a run, in step order (faithfulness and accuracy are stored in percent).
RUN_METRICS = """
MATCH (r:Run {id: $run})-[:HAS_CHECKPOINT]->(c:Checkpoint) WHERE c.complete
RETURN c.step AS step, c.accuracy AS accuracy, c.faithfulness AS faithfulness, c.n_in_graph AS edges
ORDER BY step
"""

# The layers each run of an experiment gave a higher rank (CircuitLoRA: critical; RandomLoRA: drawn).
EXPERIMENT_PLAN_LAYERS = """
MATCH (x:Experiment {id: $experiment})-[h:HAS_RUN]->(r:Run)
OPTIONAL MATCH (r)-[:TRAINED_WITH]->(p:Plan)
RETURN h.label AS label, h.seed AS seed, r.id AS run, p.critical_layers AS layers, p.kind AS kind
ORDER BY label, seed
"""
