"""Constraints and indexes of the circuit store, created idempotently (`IF NOT EXISTS`): the one schema,
which `circuitshift db init` and every writer apply whole.

The data model (see README "Data model"):
  (:Architecture {key, n_layers, n_heads, n_kv_heads, parallel_attn_mlp, n_components, n_edges})
     -[:HAS_COMPONENT]->(:Component {arch, ci, name, kind, layer, head})
  (:Run {id, model, revision, task, dataset_hash, method, ...provenance})-[:ON_ARCH]->(:Architecture)
  (:Run)-[:HAS_CHECKPOINT]->(:Checkpoint {uid, run, step, complete, level, n_edges, keys, scores,
                                           in_graph, ...metrics and scoring settings})
      keys/scores: every scored edge, ordered by rank (|score| descending); in_graph: the ranks of the
      edges in the checkpoint's own circuit (see queries/writer.py for why arrays); top_keys/top_scores:
      the first n_top ranks again (the top tenth, and the own circuit's); head_keys, head_scores,
      head_mask, circuit_nodes, node_mask: the own circuit at head level (queries/writer.py).
  (:Component)-[:CIRCUIT_EDGE {ck, k, s, r}]->(:Component)   the checkpoint's own circuit, for Neo4j
      Browser: ck = checkpoint uid, k = edge key, s = signed score, r = rank (stores written up to
      ec65292 also carry run and step, which nothing reads: match on ck or the Checkpoint node).
"""

from __future__ import annotations

SCHEMA_STATEMENTS: dict[str, str] = {
    "architecture_key": (
        "CREATE CONSTRAINT architecture_key IF NOT EXISTS "
        "FOR (a:Architecture) REQUIRE a.key IS UNIQUE"),
    "component_key": (
        "CREATE CONSTRAINT component_key IF NOT EXISTS "
        "FOR (c:Component) REQUIRE (c.arch, c.name) IS UNIQUE"),
    "run_id": (
        "CREATE CONSTRAINT run_id IF NOT EXISTS FOR (r:Run) REQUIRE r.id IS UNIQUE"),
    "checkpoint_uid": (
        "CREATE CONSTRAINT checkpoint_uid IF NOT EXISTS FOR (c:Checkpoint) REQUIRE c.uid IS UNIQUE"),
    "checkpoint_run_step": (
        "CREATE INDEX checkpoint_run_step IF NOT EXISTS FOR (c:Checkpoint) ON (c.run, c.step)"),
    "checkpoint_complete": (
        "CREATE INDEX checkpoint_complete IF NOT EXISTS FOR (c:Checkpoint) ON (c.complete)"),
    # Browser views and deletes select one checkpoint's circuit relationships by its uid.
    "circuit_edge_ck": (
        "CREATE INDEX circuit_edge_ck IF NOT EXISTS FOR ()-[e:CIRCUIT_EDGE]-() ON (e.ck)"),
    # CircuitLoRA plans and method comparisons (queries/cypher/experiments.py)
    "plan_id": "CREATE CONSTRAINT plan_id IF NOT EXISTS FOR (p:Plan) REQUIRE p.id IS UNIQUE",
    "experiment_id": "CREATE CONSTRAINT experiment_id IF NOT EXISTS FOR (x:Experiment) REQUIRE x.id IS UNIQUE",
    # the Key Observations' findings documents (queries/cypher/findings.py), merged by id
    "findings_id": "CREATE CONSTRAINT findings_id IF NOT EXISTS FOR (f:Findings) REQUIRE f.id IS UNIQUE",
    # Browser difference views (queries/cypher/views.py) are found and deleted by their view name
    "view_node_view": "CREATE INDEX view_node_view IF NOT EXISTS FOR (n:ViewNode) ON (n.view)",
}


def ensure_schema(driver, database: str | None = None) -> None:
    """Create every constraint and index if missing, and wait until they are online."""
    for statement in SCHEMA_STATEMENTS.values():
        driver.execute_query(statement, database_=database)
    driver.execute_query("CALL db.awaitIndexes(300)", database_=database)
