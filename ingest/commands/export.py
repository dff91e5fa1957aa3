"""`circuitshift export RUN:STEP --format graphml|gexf|eap-json --out FILE`: one stored circuit, out."""

from __future__ import annotations

import click

from queries.api import Store
from queries.connection import session_driver


@click.command("export")
@click.argument("circuit")
@click.option("--format", "fmt", type=click.Choice(["graphml", "gexf", "eap-json"]), required=True,
              help="graphml/gexf (networkx) or EAP-IG graph JSON (what `import eap-json` reads).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="File to write.")
@click.option("--level", type=click.Choice(["qkv", "head"]), default=None,
              help="Edge level (default: the stored level; head collapses q/k/v edges).")
@click.option("--all-edges", is_flag=True,
              help="Every scored edge with its in-circuit flag, not only the circuit's edges.")
def export(circuit, fmt, out, level, all_edges):
    """Export stored circuit RUN:STEP (union circuits included)."""
    from ingest.jobs.export import export_circuit  # networkx, loaded only when exporting
    with session_driver() as (driver, database):
        r = export_circuit(Store(driver, database), circuit, fmt, out, level, all_edges)
    click.echo(f"{r['circuit']}: {r['edges']} {r['level']}-level edges ({r['in_circuit']} in the circuit) "
               f"-> {r['out']} ({r['format']})")
