"""`circuitshift query ...` (the paper's questions) and `circuitshift cypher` (ad hoc, read-only)."""

from __future__ import annotations

import json

import click

from analysis.errors import UserError
from ingest.commands.options import definition_options, with_store
from ingest.output import emit, format_option
from queries.adhoc import run_read_only
from queries.api import store_union
from queries.connection import session_driver


def circuit_query(f):
    """What every query over stored circuits takes: a circuit definition, --format and a Store."""
    return definition_options(format_option(with_store(f)))


def two_circuits(f):
    """Circuits A and B (RUN:STEP each)."""
    return click.argument("a")(click.argument("b")(f))


@click.group()
def query():
    """The paper's questions as Cypher queries over stored circuits.

    A circuit is RUN:STEP. Without a definition flag a circuit is the checkpoint's stored circuit (what
    the method kept, e.g. top 5% then pruning); --top-frac/--top-n/--threshold/--percentile choose
    another from all stored scores, pruned of dead nodes as the method's circuit is (--no-prune keeps
    the raw selection). Every query runs from Python too: queries.api.Store.
    """


@query.command()
@click.argument("run")
@circuit_query
def churn(store, run, definition, fmt):
    """Node and edge churn (added, removed, total) for each transition t -> t+1 of RUN."""
    emit(store.churn(run, definition), fmt, "transitions")


@query.command("change-rate")
@click.argument("run")
@circuit_query
def change_rate(store, run, definition, fmt):
    """Change rate Delta_S of nodes and of edges over RUN (method.md 6.3)."""
    emit(store.change_rate(run, definition), fmt)


@query.command("per-layer")
@two_circuits
@circuit_query
def per_layer(store, a, b, definition, fmt):
    """Per-layer added/removed nodes and edges from circuit A to B (edge layer = source layer)."""
    emit(store.per_layer(a, b, definition), fmt, "layers")


@query.command()
@two_circuits
@click.option("--pct", type=float, default=95.0, show_default=True,
              help="Percentile of |score| kept in each circuit (the paper's figure uses 95).")
@circuit_query
def diff(store, a, b, pct, definition, fmt):
    """The 95th-percentile difference between circuits A and B (method.md 6.4, Fig. 3)."""
    emit(store.diff(a, b, definition, pct), fmt)


@query.command()
@two_circuits
@click.option("--as", "as_ref", required=True, help="Store the union as circuit RUN:STEP.")
@click.option("--max-edges", type=int, default=None,
              help="Keep the top N union edges by |score| (the paper: the compositional circuit's size).")
@definition_options
@format_option
def union(a, b, as_ref, max_edges, definition, fmt):
    """Union of circuits A and B (method.md 5), stored as a circuit of its own."""
    with session_driver() as (driver, database):
        emit(store_union(driver, database, a, b, as_ref, definition, max_edges), fmt)


@query.command()
@two_circuits
@click.option("--k", "ks", type=int, multiple=True, default=(100, 500, 1000), show_default=True,
              help="k of Overlap_k; repeat for several.")
@circuit_query
def overlap(store, a, b, ks, definition, fmt):
    """Overlap_k = |Top_k(A) ∩ Top_k(B)|, ranking edges by |score| (method.md 5)."""
    emit(store.overlap(a, b, definition, list(ks)), fmt, "overlap")


@query.command()
@two_circuits
@circuit_query
def jaccard(store, a, b, definition, fmt):
    """Jaccard similarity of the edge sets and node sets of circuits A and B."""
    emit(store.jaccard(a, b, definition), fmt)


@query.command("critical-layers")
@two_circuits
@click.option("--top", type=int, default=5, show_default=True, help="How many layers.")
@circuit_query
def critical_layers(store, a, b, top, definition, fmt):
    """Critical layers from A (before) to B (after) (method.md 4): CircuitLoRA's input."""
    result = store.critical_layers(a, b, definition, top)
    if fmt == "table":
        rows = [{"rank": i + 1, "layer": l, "delta": d}
                for i, (l, d) in enumerate(zip(result["layers"], result["deltas"]))]
        emit({"layers": rows}, fmt, "layers", title=f"critical layers {a} -> {b}")
    else:
        emit(result, fmt)


@query.command("node-bound")
@two_circuits
@circuit_query
def node_bound(store, a, b, definition, fmt):
    """Does node change explain edge change? Both versions of method.md 6.6."""
    emit(store.node_bound(a, b, definition), fmt)


@query.command()
@format_option
@with_store
def runs(store, fmt):
    """Stored runs and their complete checkpoints."""
    emit({"runs": store.runs()}, fmt, "runs")


@query.command()
@click.argument("run")
@format_option
@with_store
def metrics(store, run, fmt):
    """Accuracy, circuit accuracy and faithfulness (percent), circuit size and MIB CPR/CMD at each
    checkpoint of RUN."""
    emit({"checkpoints": store.checkpoint_metrics(run),
          "units": "accuracy, circuit_accuracy and faithfulness in percent (0-100); cpr and cmd in MIB "
                   "units (empty: not measured)"}, fmt, "checkpoints")


@click.command()
@click.argument("statement")
@click.option("--param", "params", multiple=True, metavar="NAME=JSON",
              help="A query parameter, e.g. --param run='\"demo\"'. Values are JSON.")
@format_option
def cypher(statement, params, fmt):
    """Run ad hoc Cypher in a read-only transaction; writes are refused."""
    values = {}
    for p in params:
        name, sep, raw = p.partition("=")
        if not sep or not name.isidentifier():
            raise UserError(f"--param {p!r} is not NAME=JSON")
        try:
            values[name] = json.loads(raw)
        except json.JSONDecodeError:
            values[name] = raw
    with session_driver() as (driver, database):
        rows = run_read_only(driver, database, statement, values)
    emit({"rows": rows}, fmt, "rows")
