"""One schema: `circuitshift db init` (queries.schema.ensure_schema) creates every constraint and index
the store uses, including CircuitLoRA plans, experiments and Browser views, on a real server."""

from __future__ import annotations

from queries.schema import SCHEMA_STATEMENTS, ensure_schema


def test_db_init_applies_the_whole_schema(db):
    driver, database = db
    ensure_schema(driver, database)
    ensure_schema(driver, database)  # idempotent
    recs, _, _ = driver.execute_query("SHOW CONSTRAINTS YIELD name RETURN collect(name) AS names",
                                      database_=database)
    constraints = set(recs[0]["names"])
    recs, _, _ = driver.execute_query("SHOW INDEXES YIELD name RETURN collect(name) AS names", database_=database)
    indexes = set(recs[0]["names"])
    for name, statement in SCHEMA_STATEMENTS.items():
        assert name in (constraints if "CONSTRAINT" in statement else indexes), name
    assert {"plan_id", "experiment_id", "view_node_view"} <= set(SCHEMA_STATEMENTS)
