"""`circuitshift import eap-json FILE... --run NAME --step N`: circuits people already have (EAP-IG graph
JSON, or hannamw `.pt` graph files by suffix; `import eap-pt` is the same command)."""

from __future__ import annotations

import click


@click.group("import")
def import_group():
    """Import circuits people already have."""


@import_group.command("eap-json")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--run", "run_id", required=True, help="Run to store them under (created if new).")
@click.option("--step", "steps", type=int, multiple=True, required=True,
              help="Step of each file; one value for one file, or a first step for several files "
                   "(then steps count up by one).")
@click.option("--model-config", default=None,
              help='JSON with n_layers, n_heads, parallel_attn_mlp when JSON files lack a "cfg" '
                   "(.pt files always carry theirs).")
@click.option("--model", default="", help="Model the circuits belong to (provenance).")
@click.option("--task", default="", help="Task the circuits were found on (provenance).")
def eap_json(files, run_id, steps, model_config, model, task):
    """Import EAP-IG graph files: JSON, or .pt (by suffix).

    JSON: hannamw/EAP-IG Graph.to_json files (all edges, in_graph flags, q/k/v edges) or the paper's
    collapsed, in-graph-only head-level files. .pt: hannamw Graph.to_pt files, MIB's submission format
    (every q/k/v edge, float32 scores). Every file is validated before anything is written."""
    from ingest.jobs.import_eap import import_eap_json  # reads files with analysis (torch)
    import_eap_json(list(files), run_id, list(steps), model_config, model, task)


import_group.add_command(eap_json, "eap-pt")  # the same reader: the suffix decides the format
