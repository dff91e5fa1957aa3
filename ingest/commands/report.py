"""`circuitshift report RUN [--out DIR]`: the paper's figures and one HTML page from stored data."""

from __future__ import annotations

from pathlib import Path

import click

from ingest.commands.options import definition_options


@click.command()
@click.argument("run")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder (default: reports/RUN).")
@click.option("--pct", type=float, default=95.0, show_default=True,
              help="Percentile of |score| kept in each circuit of the difference figure (Fig. 3).")
@click.option("--browser-view/--no-browser-view", default=True, show_default=True,
              help="Also store the first -> last difference as a Neo4j Browser view (ViewNode, "
                   "ADDED_/REMOVED_/KEPT_ relationships; see queries/exploration.py).")
@definition_options
def report(run, out, pct, browser_view, definition):
    """Figures (PNG, with the plotted values as JSON beside each) and index.html for RUN: accuracy
    and faithfulness, churn per transition against the resampling-noise baseline, change rates,
    per-layer changes, the before/after circuit difference, and robustness when stored."""
    from ingest.jobs.report import write_report
    write_report(run, out, pct, browser_view, definition)
