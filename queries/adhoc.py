"""Ad hoc Cypher, read-only: the statement is planned first (EXPLAIN) and refused unless the planner
calls it read-only, then run in a READ transaction (which the server also enforces)."""

from __future__ import annotations

from neo4j import exceptions as nx

from analysis.errors import UserError


def _plain(value):
    """Nodes, relationships and paths as plain JSON-able values."""
    from neo4j.graph import Node, Path, Relationship
    if isinstance(value, Node):
        return {"labels": sorted(value.labels), **dict(value)}
    if isinstance(value, Relationship):
        return {"type": value.type, **dict(value)}
    if isinstance(value, Path):
        return [_plain(n) for n in value.nodes]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def run_read_only(driver, database, statement: str, params: dict | None = None) -> list[dict]:
    params = params or {}
    if not statement.strip():
        raise UserError("empty Cypher statement")
    try:
        _, summary, _ = driver.execute_query("EXPLAIN " + statement, params, database_=database,
                                             routing_="r")
    except nx.CypherSyntaxError as exc:
        raise UserError(f"Cypher syntax error: {exc.message.splitlines()[0]}") from None
    except nx.ClientError as exc:
        raise UserError(f"Cypher error: {(exc.message or str(exc)).splitlines()[0]}") from None
    if summary.query_type != "r":
        raise UserError("only read-only Cypher runs here (this statement writes or changes the schema)")
    try:
        records, _, _ = driver.execute_query(statement, params, database_=database, routing_="r")
    except nx.ClientError as exc:
        raise UserError(f"Cypher error: {(exc.message or str(exc)).splitlines()[0]}") from None
    return [{k: _plain(v) for k, v in r.items()} for r in records]
