"""The local Neo4j server of `circuitshift db` and the demos: start it (first-login password, the one
schema, the Browser style sheet and guide served beside it), stop it, apply the schema elsewhere.

Torch-free: `circuitshift db ...` loads only this, queries/ and ingest/browser_assets.py.
"""

from __future__ import annotations

import os
import secrets

import click

from analysis.errors import UserError
from ingest.browser_assets import browser_settings, running_pid, saved_port, start_detached, stop_detached
from queries.connection import session_driver, set_initial_password
from queries.schema import ensure_schema
from queries.server.local import NEO4J_VERSION, LocalServer, _port_open, default_state_dir, free_port
from queries.settings import Neo4jSettings, password_file


def local_server(bolt_port: int | None = None, http_port: int | None = None) -> LocalServer:
    return LocalServer(default_state_dir() / "neo4j", bolt_port=bolt_port, http_port=http_port)


def local_password() -> tuple[str, bool]:
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


def start_local_server(bolt_port: int | None, http_port: int | None, timeout: float) -> None:
    """Start the local server in the background; returns once Bolt answers. A no-op when running."""
    server = local_server(bolt_port, http_port)
    if server.status().running:
        st = server.status()
        click.echo(f"Neo4j already running (pid {st.pid}) at {st.bolt_uri}; Browser {st.browser_url}")
        return
    password, generated = local_password()
    marker = server.home / "run" / "password-set"
    assets_port = start_browser_assets(server)
    st = server.start(timeout=timeout)
    if not marker.exists():
        set_initial_password(st.bolt_uri, password)
        marker.write_text("1\n")
    apply_schema(Neo4jSettings(uri=st.bolt_uri, password=password))
    click.echo(f"Neo4j {NEO4J_VERSION} running (pid {st.pid}) at {st.bolt_uri}")
    click.echo(f"Browser: {st.browser_url}  (user neo4j; on connect it applies the circuit style sheet "
               f"and opens the guide served at http://localhost:{assets_port}/)")
    click.echo(f"Data and logs: {server.home}")
    if generated:
        click.echo(f"Generated password (saved with mode 0600 in {password_file()}): {password}")


def start_browser_assets(server: LocalServer) -> int:
    """Serve the Browser style sheet and guide on a loopback port (the last one, or a free one) and
    make the server's Browser load both on connect (browser.post_connect_cmd)."""
    (server.home / "run").mkdir(parents=True, exist_ok=True)
    (server.home / "logs").mkdir(parents=True, exist_ok=True)
    port = saved_port(server.home)
    if port is None or (running_pid(server.home) is None and _port_open(port)):
        port = free_port()
    start_detached(server.home, port)
    server.extra_conf = {**browser_settings(port), **server.extra_conf}
    return port


def stop_local_server() -> bool:
    """Stop the local server and its Browser assets; False when it was not running."""
    server = local_server()
    stop_detached(server.home)
    return server.stop()


def apply_schema(settings: Neo4jSettings) -> None:
    """The one schema (queries/schema.py), whole, on the server `settings` names."""
    with session_driver(settings) as (driver, database):
        ensure_schema(driver, database)
