"""Shared fixtures. Storage tests talk to a real Neo4j server, never to a mock.

The session starts its own server in a temporary home on free ports (or uses the server that
`NEO4J_URI` / `NEO4J_PASSWORD` point at, when set), and every test that takes `db` starts from an
empty database.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def neo4j_settings(tmp_path_factory):
    from queries.settings import Neo4jSettings

    if os.environ.get("NEO4J_URI"):
        yield Neo4jSettings()
        return
    from queries.connection import set_initial_password
    from queries.server.local import LocalServer, free_port

    home = tmp_path_factory.mktemp("neo4j-home")
    server = LocalServer(home, bolt_port=free_port(), http_port=free_port(), heap="768m")
    status = server.start(timeout=180)
    password = secrets.token_urlsafe(16)
    set_initial_password(status.bolt_uri, password)
    settings = Neo4jSettings(uri=status.bolt_uri, password=password)
    settings._server = server  # for tests that stop and start it
    try:
        yield settings
    finally:
        server.stop()


@pytest.fixture(scope="session")
def driver(neo4j_settings):
    from queries.connection import open_driver
    from queries.schema import ensure_schema

    drv = open_driver(neo4j_settings)
    ensure_schema(drv, neo4j_settings.database)
    yield drv
    drv.close()


def _wipe(driver, database):
    while True:
        records, _, _ = driver.execute_query(
            "MATCH ()-[e]->() WITH e LIMIT 100000 DELETE e RETURN count(*) AS n", database_=database)
        if records[0]["n"] == 0:
            break
    driver.execute_query("MATCH (n) DETACH DELETE n", database_=database)


@pytest.fixture
def db(driver, neo4j_settings):
    """An empty database: `(driver, database)`."""
    _wipe(driver, neo4j_settings.database)
    return driver, neo4j_settings.database


@pytest.fixture
def cli_env(neo4j_settings, tmp_path, monkeypatch):
    """Environment under which the `circuitshift` CLI talks to the test server."""
    env = dict(os.environ)
    env.update({"NEO4J_URI": neo4j_settings.uri, "NEO4J_USER": neo4j_settings.user,
                "NEO4J_PASSWORD": neo4j_settings.resolved_password(),
                "CIRCUITSHIFT_STATE_DIR": str(tmp_path / "state")})
    for key in ("NEO4J_URI", "NEO4J_USER", "NEO4J_PASSWORD", "CIRCUITSHIFT_STATE_DIR"):
        monkeypatch.setenv(key, env[key])
    return env


def run_cli(args, env=None, cwd=None, timeout=600):
    """Run the installed `circuitshift` entry point in a subprocess; return CompletedProcess."""
    import subprocess
    import sys
    exe = Path(sys.executable).parent / "circuitshift"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=timeout)
