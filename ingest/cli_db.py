"""`circuitshift db start | stop | status | init`: the local Neo4j server and its schema."""

from __future__ import annotations

import os
import secrets

import click

from analysis.errors import UserError
from queries.server.local import LocalServer, NEO4J_VERSION, default_state_dir
from queries.settings import password_file


def _server(bolt_port: int | None = None, http_port: int | None = None) -> LocalServer:
    return LocalServer(default_state_dir() / "neo4j", bolt_port=bolt_port, http_port=http_port)


def _local_password() -> tuple[str, bool]:
    """NEO4J_PASSWORD if set; else the generated password in the state folder (made once, 0600)."""
    env = os.environ.get("NEO4J_PASSWORD")
    if env:
        if len(env) < 8:
            raise UserError("NEO4J_PASSWORD must be at least 8 characters (Neo4j's minimum)")
        return env, False
    path = password_file()
    if path.exists():
        return path.read_text().strip(), False
    path.parent.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(18)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(password + "\n")
    return password, True


@click.group()
def db():
    """Run a real local Neo4j 5.26 Community server (no Docker needed)."""


@db.command()
@click.option("--bolt-port", type=int, default=None, help="Bolt port (default 7687, or the last one used).")
@click.option("--http-port", type=int, default=None, help="HTTP/Browser port (default 7474, or the last one used).")
@click.option("--timeout", type=float, default=120.0, show_default=True, help="Seconds to wait for Bolt.")
def start(bolt_port, http_port, timeout):
    """Start the local server in the background; returns once Bolt answers. A no-op when running."""
    from queries.connection import set_initial_password
    from queries.schema import ensure_schema
    from queries.settings import Neo4jSettings

    server = _server(bolt_port, http_port)
    if server.status().running:
        st = server.status()
        click.echo(f"Neo4j already running (pid {st.pid}) at {st.bolt_uri}; Browser {st.browser_url}")
        return
    password, generated = _local_password()
    marker = server.home / "run" / "password-set"
    assets_port = _start_browser_assets(server)
    st = server.start(timeout=timeout)
    if not marker.exists():
        set_initial_password(st.bolt_uri, password)
        marker.write_text("1\n")
    settings = Neo4jSettings(uri=st.bolt_uri, password=password)
    ensure_schema_with(settings, ensure_schema)
    click.echo(f"Neo4j {NEO4J_VERSION} running (pid {st.pid}) at {st.bolt_uri}")
    click.echo(f"Browser: {st.browser_url}  (user neo4j; on connect it applies the circuit style sheet "
               f"and opens the guide served at http://localhost:{assets_port}/)")
    click.echo(f"Data and logs: {server.home}")
    if generated:
        click.echo(f"Generated password (saved with mode 0600 in {password_file()}): {password}")


def _start_browser_assets(server: LocalServer) -> int:
    """Serve the Browser style sheet and guide on a loopback port (the last one, or a free one) and
    make the server's Browser load both on connect (browser.post_connect_cmd)."""
    from ingest.browser_assets import browser_settings, saved_port, start_detached
    from queries.server.local import _port_open, free_port

    (server.home / "run").mkdir(parents=True, exist_ok=True)
    (server.home / "logs").mkdir(parents=True, exist_ok=True)
    port = saved_port(server.home)
    from ingest.browser_assets import running_pid
    if port is None or (running_pid(server.home) is None and _port_open(port)):
        port = free_port()
    start_detached(server.home, port)
    server.extra_conf = {**browser_settings(port), **server.extra_conf}
    return port


def ensure_schema_with(settings, ensure_schema):
    from queries.connection import session_driver
    with session_driver(settings) as (driver, database):
        ensure_schema(driver, database)


@db.command()
def stop():
    """Stop the local server."""
    from ingest.browser_assets import stop_detached
    server = _server()
    stop_detached(server.home)
    if server.stop():
        click.echo("Neo4j stopped")
    else:
        click.echo("Neo4j was not running")


@db.command()
def status():
    """Say whether the local server runs, where, and how much it holds. Exit 1 when it is down."""
    server = _server()
    st = server.status()
    if not st.running:
        click.echo(f"Neo4j is not running (home {st.home})")
        raise SystemExit(1)
    click.echo(f"Neo4j {NEO4J_VERSION} running (pid {st.pid}) at {st.bolt_uri}; Browser {st.browser_url}")


@db.command()
def init():
    """Create constraints and indexes (idempotent) on the server NEO4J_URI points at."""
    from queries.schema import ensure_schema
    from queries.settings import Neo4jSettings
    settings = Neo4jSettings()
    ensure_schema_with(settings, ensure_schema)
    click.echo(f"schema ready on {settings.uri} (database {settings.database})")
