"""The foundation: a real local Neo4j server, settings, the CLI's error behaviour."""

from __future__ import annotations

import os
import stat
import urllib.request

import pytest

from conftest import run_cli


def test_write_read_round_trip(db):
    driver, database = db
    driver.execute_query("CREATE (:Probe {name: $name, values: $values})",
                         name="round-trip", values=[1.5, -2.0], database_=database)
    records, _, _ = driver.execute_query(
        "MATCH (p:Probe {name: $name}) RETURN p.values AS v", name="round-trip",
        database_=database, routing_="r")
    assert records[0]["v"] == [1.5, -2.0]


def test_init_is_idempotent(db, cli_env):
    driver, database = db
    first = run_cli(["db", "init"], env=cli_env)
    second = run_cli(["db", "init"], env=cli_env)
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    records, _, _ = driver.execute_query("SHOW CONSTRAINTS YIELD name RETURN name", database_=database)
    names = sorted(r["name"] for r in records)
    assert names.count("run_id") == 1 and "component_key" in names
    records, _, _ = driver.execute_query(
        "SHOW INDEXES YIELD name, state WHERE name IN ['checkpoint_complete', 'circuit_edge_ck'] RETURN state",
        database_=database)
    assert [r["state"] for r in records] == ["ONLINE", "ONLINE"]


def test_wrong_password_gives_one_line(cli_env):
    env = dict(cli_env, NEO4J_PASSWORD="definitely-not-the-password")
    proc = run_cli(["db", "init"], env=env)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "rejected the credentials" in lines[0]
    assert "Traceback" not in proc.stderr


def test_unreachable_server_gives_one_line(cli_env):
    from queries.server.local import free_port
    env = dict(cli_env, NEO4J_URI=f"bolt://127.0.0.1:{free_port()}")
    proc = run_cli(["db", "init"], env=env)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach Neo4j" in lines[0], proc.stderr


def test_wrong_uri_scheme_gives_one_line(cli_env):
    env = dict(cli_env, NEO4J_URI="http://127.0.0.1:7474")
    proc = run_cli(["db", "init"], env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and "unsupported scheme" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_settings_read_environment(monkeypatch):
    from queries.settings import Neo4jSettings
    monkeypatch.setenv("NEO4J_URI", "neo4j+s://example.databases.neo4j.io")
    monkeypatch.setenv("NEO4J_PASSWORD", "s3cret-from-env")
    monkeypatch.setenv("NEO4J_DATABASE", "circuits")
    s = Neo4jSettings()
    assert s.checked_uri() == "neo4j+s://example.databases.neo4j.io"
    assert s.resolved_password() == "s3cret-from-env"
    assert s.database == "circuits"
    assert "s3cret" not in repr(s)  # the secret never shows in logs


def test_cli_lifecycle_fresh_home(tmp_path):
    """`db start` on a fresh state folder: generated 0600 password, Browser 200, status, data survives
    stop/start, a second start is a no-op, `db stop` stops it."""
    from queries.server.local import free_port
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEO4J_")}
    env["CIRCUITSHIFT_STATE_DIR"] = str(tmp_path / "state")
    bolt, http = free_port(), free_port()
    try:
        proc = run_cli(["db", "start", "--bolt-port", str(bolt), "--http-port", str(http)], env=env)
        assert proc.returncode == 0, proc.stderr
        assert "Generated password" in proc.stdout
        pw_file = tmp_path / "state" / "neo4j-password"
        assert stat.S_IMODE(pw_file.stat().st_mode) == 0o600
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/browser/", timeout=10) as resp:
            assert resp.status == 200
        again = run_cli(["db", "start"], env=env)
        assert again.returncode == 0 and "already running" in again.stdout
        st = run_cli(["db", "status"], env=env)
        assert st.returncode == 0 and f"bolt://127.0.0.1:{bolt}" in st.stdout

        # Settings follow the ports `db start` chose, and the generated password.
        from queries.connection import open_driver
        from queries.settings import Neo4jSettings
        os.environ["CIRCUITSHIFT_STATE_DIR"] = env["CIRCUITSHIFT_STATE_DIR"]
        try:
            settings = Neo4jSettings(_env_file=None, uri=f"bolt://127.0.0.1:{bolt}")
            with open_driver(settings) as drv:
                drv.execute_query("CREATE (:Probe {survives: true})")
            assert run_cli(["db", "stop"], env=env).returncode == 0
            down = run_cli(["db", "status"], env=env)
            assert down.returncode == 1 and "not running" in down.stdout
            assert run_cli(["db", "start"], env=env).returncode == 0
            with open_driver(settings) as drv:
                records, _, _ = drv.execute_query("MATCH (p:Probe {survives: true}) RETURN count(p) AS n")
            assert records[0]["n"] == 1
        finally:
            del os.environ["CIRCUITSHIFT_STATE_DIR"]
    finally:
        run_cli(["db", "stop"], env=env)


def test_local_server_listens_on_loopback_only(neo4j_settings):
    server = getattr(neo4j_settings, "_server", None)
    if server is None:
        pytest.skip("tests run against an external NEO4J_URI")
    conf = (server.home / "conf" / "neo4j.conf").read_text()
    assert "server.default_listen_address=127.0.0.1" in conf
    assert "dbms.security.auth_enabled=true" in conf
    assert "dbms.usage_report.enabled=false" in conf
