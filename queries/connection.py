"""Opening a driver with errors a person can read.

Every statement runs through `Driver.execute_query` with READ or WRITE routing, so the same code works
against the local server, a cluster (`neo4j://`) and Aura (`neo4j+s://`).
"""

from __future__ import annotations

from contextlib import contextmanager

import neo4j
from neo4j import GraphDatabase
from neo4j import exceptions as nx

from analysis.errors import UserError
from queries.cypher.admin import SET_INITIAL_PASSWORD
from queries.settings import Neo4jSettings


def explain(exc: Exception, uri: str) -> str:
    """One line that says what went wrong talking to Neo4j and what to do about it."""
    if isinstance(exc, nx.AuthError):
        return (f"Neo4j at {uri} rejected the credentials: check NEO4J_USER / NEO4J_PASSWORD")
    if isinstance(exc, nx.ServiceUnavailable):
        return (f"cannot reach Neo4j at {uri}: is the server running? (`circuitshift db start`, "
                "or set NEO4J_URI)")
    if isinstance(exc, nx.ConfigurationError):
        return f"bad Neo4j configuration for {uri}: {exc}"
    if isinstance(exc, nx.ClientError) and "Forbidden" in (exc.code or ""):
        return f"Neo4j refused the operation: {exc.message}"
    if isinstance(exc, nx.Neo4jError):
        return f"Neo4j error {exc.code}: {exc.message}"
    return f"Neo4j error at {uri}: {exc}"


def open_driver(settings: Neo4jSettings | None = None, verify: bool = True) -> neo4j.Driver:
    """A driver for `settings` (default: from the environment), checked to answer when `verify`."""
    settings = settings or Neo4jSettings()
    uri = settings.checked_uri()
    try:
        driver = GraphDatabase.driver(uri, auth=(settings.user, settings.resolved_password()),
                                      connection_timeout=10, max_transaction_retry_time=30,
                                      notifications_min_severity="OFF")
    except (ValueError, nx.ConfigurationError) as exc:
        raise UserError(f"bad NEO4J_URI {uri!r}: {exc}") from None
    if verify:
        try:
            driver.verify_connectivity()
            driver.verify_authentication()
        except (nx.Neo4jError, nx.DriverError, OSError) as exc:
            driver.close()
            raise UserError(explain(exc, uri)) from None
    return driver


@contextmanager
def session_driver(settings: Neo4jSettings | None = None):
    """`with session_driver() as (driver, database):` for CLI commands."""
    settings = settings or Neo4jSettings()
    driver = open_driver(settings)
    try:
        yield driver, settings.database
    except (nx.Neo4jError, nx.DriverError) as exc:
        raise UserError(explain(exc, settings.uri)) from None
    finally:
        driver.close()


def set_initial_password(bolt_uri: str, new_password: str, timeout: float = 60.0) -> None:
    """Replace a fresh server's expired `neo4j`/`neo4j` login with `new_password`."""
    import time
    deadline = time.monotonic() + timeout
    while True:
        try:
            with GraphDatabase.driver(bolt_uri, auth=("neo4j", "neo4j")) as driver:
                driver.execute_query(SET_INITIAL_PASSWORD, new=new_password, database_="system")
            return
        except nx.ServiceUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
