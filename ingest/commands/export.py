"""`circuitshift export RUN:STEP --format graphml|gexf|eap-json|eap-pt --out FILE`: one stored circuit, out."""

from __future__ import annotations

import click

from queries.api import Store
from queries.connection import session_driver


@click.command("export")
@click.argument("circuit")
@click.option("--format", "fmt", type=click.Choice(["graphml", "gexf", "eap-json", "eap-pt"]), required=True,
              help="graphml/gexf (networkx); eap-json: EAP-IG graph JSON (hannamw Graph.to_json, what "
                   "`import eap-json` reads); eap-pt: hannamw Graph.to_pt, MIB's submission format (every "
                   "q/k/v-level edge, scores as float32: the store keeps float64; `import` reads it back).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="File to write.")
@click.option("--level", type=click.Choice(["qkv", "head"]), default=None,
              help="Edge level (default: the stored level; head collapses q/k/v edges; eap-pt: qkv only).")
@click.option("--all-edges", is_flag=True,
              help="Every scored edge with its in-circuit flag, not only the circuit's edges "
                   "(eap-pt always holds every edge).")
@click.option("--d-model", type=click.IntRange(min=1), default=None,
              help="eap-pt: the model's hidden size for the file's cfg (default: read from the run's model "
                   "config when it is on this machine; otherwise the cfg has no d_model).")
def export(circuit, fmt, out, level, all_edges, d_model):
    """Export stored circuit RUN:STEP (union circuits included; eap-pt needs a q/k/v-level checkpoint
    with every edge scored, so not a union)."""
    from ingest.jobs.export import export_circuit  # networkx and torch, loaded only when exporting
    with session_driver() as (driver, database):
        r = export_circuit(Store(driver, database), circuit, fmt, out, level, all_edges, d_model)
    click.echo(f"{r['circuit']}: {r['edges']} {r['level']}-level edges ({r['in_circuit']} in the circuit) "
               f"-> {r['out']} ({r['format']})")
