"""`circuitshift db start | stop | status | init`: the local Neo4j server and its schema (the job is
ingest/jobs/local_server.py; nothing here imports torch)."""

from __future__ import annotations

import click

from ingest.jobs.local_server import apply_schema, local_server, start_local_server, stop_local_server
from queries.server.local import NEO4J_VERSION
from queries.settings import Neo4jSettings


@click.group()
def db():
    """Run a real local Neo4j 5.26 Community server (no Docker needed)."""


@db.command()
@click.option("--bolt-port", type=int, default=None, help="Bolt port (default 7687, or the last one used).")
@click.option("--http-port", type=int, default=None, help="HTTP/Browser port (default 7474, or the last one used).")
@click.option("--timeout", type=float, default=120.0, show_default=True, help="Seconds to wait for Bolt.")
def start(bolt_port, http_port, timeout):
    """Start the local server in the background; returns once Bolt answers. A no-op when running."""
    start_local_server(bolt_port, http_port, timeout)


@db.command()
def stop():
    """Stop the local server."""
    click.echo("Neo4j stopped" if stop_local_server() else "Neo4j was not running")


@db.command()
def status():
    """Say whether the local server runs, where, and how much it holds. Exit 1 when it is down."""
    st = local_server().status()
    if not st.running:
        click.echo(f"Neo4j is not running (home {st.home})")
        raise SystemExit(1)
    click.echo(f"Neo4j {NEO4J_VERSION} running (pid {st.pid}) at {st.bolt_uri}; Browser {st.browser_url}")


@db.command()
def init():
    """Create constraints and indexes (idempotent) on the server NEO4J_URI points at."""
    settings = Neo4jSettings()
    apply_schema(settings)
    click.echo(f"schema ready on {settings.uri} (database {settings.database})")
