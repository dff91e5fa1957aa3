"""Constraints and indexes of the circuit store, created idempotently (`IF NOT EXISTS`).

The data model (see README "Data model"):
  (:Architecture {key, n_layers, n_heads, n_kv_heads, parallel_attn_mlp, n_components, n_edges})
     -[:HAS_COMPONENT]->(:Component {arch, ci, name, kind, layer, head})
  (:Run {id, model, revision, task, dataset_hash, method, ...provenance})-[:ON_ARCH]->(:Architecture)
  (:Run)-[:HAS_CHECKPOINT]->(:Checkpoint {uid, run, step, complete, level, n_edges, ...})
  (:Component)-[:EDGE {ck, k, s, r, g}]->(:Component)   one relationship per scored edge per checkpoint:
      ck = the checkpoint's uid, k = edge key (pair key * 4 + channel), s = signed score,
      r = rank by |score| (1 = most important), g = in the checkpoint's own circuit.
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
    # Every circuit query seeks one checkpoint's edges by rank cut-off or by in-circuit flag.
    "edge_rank": (
        "CREATE INDEX edge_rank IF NOT EXISTS FOR ()-[e:EDGE]-() ON (e.ck, e.r)"),
    "edge_in_graph": (
        "CREATE INDEX edge_in_graph IF NOT EXISTS FOR ()-[e:EDGE]-() ON (e.ck, e.g)"),
}


def ensure_schema(driver, database: str | None = None) -> None:
    """Create every constraint and index if missing, and wait until they are online."""
    for statement in SCHEMA_STATEMENTS.values():
        driver.execute_query(statement, database_=database)
    driver.execute_query("CALL db.awaitIndexes(300)", database_=database)
