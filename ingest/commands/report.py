"""`circuitshift report RUN [RUN ...] | --experiment ID [--experiment ID2 ...]`: the paper's figures and
tables, one HTML page (and, for several runs or experiments, its Markdown twin) from stored data."""

from __future__ import annotations

from pathlib import Path

import click

from ingest.commands.options import definition_options


@click.command()
@click.argument("runs", nargs=-1)
@click.option("--experiment", "experiments", multiple=True,
              help="An experiment (`experiment compare --experiment ID`) whose runs fill Tables 1/3/4; repeatable.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder (default: reports/RUN, or reports/ID_ID... for several).")
@click.option("--pct", type=float, default=95.0, show_default=True,
              help="One run: percentile of |score| kept in each circuit of the difference figure (Fig. 3).")
@click.option("--browser-view/--no-browser-view", default=True, show_default=True,
              help="One run: also store the first -> last difference as a Neo4j Browser view (ViewNode, "
                   "ADDED_/REMOVED_/KEPT_ relationships; see queries/exploration.py).")
@click.option("--union", "union", default=None,
              help="A:STEP,B:STEP: store their union (method.md 5) and export it as EAP-IG JSON beside the "
                   "page; or RUN:STEP of a union stored already.")
@click.option("--union-as", default=None, help="Store the union as this RUN:STEP (default: union-A@S-B@S:0).")
@click.option("--union-max-edges", type=int, default=None,
              help="Keep the top N union edges by |score| (the paper: the compositional circuit's size).")
@click.option("--union-model", default=None, help="Model the union's faithfulness curve is evaluated on.")
@click.option("--union-data", default=None, help="Dataset folder of that evaluation (its circuit split).")
@click.option("--device", default="cpu", show_default=True, help="Device of the union's evaluation.")
@click.option("--batch-size", type=int, default=16, show_default=True, help="Batch size of that evaluation.")
@definition_options
def report(runs, experiments, out, pct, browser_view, union, union_as, union_max_edges, union_model, union_data,
           device, batch_size, definition):
    """Figures (PNG, with the plotted values as JSON beside each) and index.html.

    One RUN: accuracy and faithfulness, churn against the resampling-noise baseline, change rates,
    per-layer changes, the before/after circuit difference, and robustness when stored.

    Several runs or --experiment: Figure 2 across tasks, Figure 4 (Add/Sub 200-500), Tables 1, 3 and 4
    (mean ± std over seeds, parameter ratio, the paper's numbers beside ours) and, with --union, the union
    circuit's EAP-IG JSON and faithfulness curve; plus report.md."""
    if len(runs) == 1 and not (experiments or union):
        from ingest.jobs.report import write_report
        write_report(runs[0], out, pct, browser_view, definition)
        return
    from ingest.jobs.report_multi import MultiReport, write_multi_report
    from ingest.jobs.report_union import UnionSource
    req = MultiReport(runs=tuple(runs), experiments=tuple(experiments), definition=definition,
                      union=UnionSource.parse(union, union_as) if union else None, union_max_edges=union_max_edges,
                      union_model=union_model, union_data=union_data, device=device, batch_size=batch_size)
    write_multi_report(req, out)
