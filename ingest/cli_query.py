"""`circuitshift query ...` (the paper's questions) and `circuitshift cypher` (ad hoc, read-only)."""

from __future__ import annotations

import functools

import click

from analysis.errors import UserError
from ingest.output import emit, format_option


def definition_options(f):
    """--top-frac | --top-n | --threshold | --percentile, and --level: which edges form a circuit."""
    @click.option("--top-frac", type=float, default=None, help="Keep the top fraction of edges by |score|.")
    @click.option("--top-n", type=int, default=None, help="Keep the top N edges by |score|.")
    @click.option("--threshold", type=float, default=None, help="Keep edges with |score| >= X.")
    @click.option("--percentile", type=float, default=None,
                  help="Keep edges with |score| >= the P-th percentile of |score|.")
    @click.option("--level", type=click.Choice(["qkv", "head"]), default="head", show_default=True,
                  help="q/k/v-level edges, or head level (q/k/v summed, as the paper).")
    @click.option("--no-prune", is_flag=True,
                  help="Keep the selected edges as they are (default: prune dead nodes, as the method does).")
    @functools.wraps(f)
    def wrapper(*args, top_frac, top_n, threshold, percentile, level, no_prune, **kwargs):
        from queries.api import CircuitDefinition
        given = {k: v for k, v in {"top_frac": top_frac, "top_n": top_n, "threshold": threshold,
                                   "percentile": percentile}.items() if v is not None}
        if len(given) > 1:
            raise UserError("choose one of --top-frac, --top-n, --threshold, --percentile")
        if no_prune and not given:
            raise UserError("--no-prune applies to --top-frac, --top-n, --threshold or --percentile")
        mode, value = next(iter(given.items())) if given else ("in_graph", None)
        kwargs["definition"] = CircuitDefinition(mode, value, level, prune=not no_prune)
        return f(*args, **kwargs)
    return wrapper


def with_store(f):
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        from queries.api import Store
        from queries.connection import session_driver
        with session_driver() as (driver, database):
            return f(Store(driver, database), *args, **kwargs)
    return wrapper


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
@definition_options
@format_option
@with_store
def churn(store, run, definition, fmt):
    """Node and edge churn (added, removed, total) for each transition t -> t+1 of RUN."""
    emit(store.churn(run, definition), fmt, "transitions")


@query.command("change-rate")
@click.argument("run")
@definition_options
@format_option
@with_store
def change_rate(store, run, definition, fmt):
    """Change rate Delta_S of nodes and of edges over RUN (method.md 6.3)."""
    emit(store.change_rate(run, definition), fmt)


@query.command("per-layer")
@click.argument("a")
@click.argument("b")
@definition_options
@format_option
@with_store
def per_layer(store, a, b, definition, fmt):
    """Per-layer added/removed nodes and edges from circuit A to B (edge layer = source layer)."""
    emit(store.per_layer(a, b, definition), fmt, "layers")


@query.command()
@click.argument("a")
@click.argument("b")
@click.option("--pct", type=float, default=95.0, show_default=True,
              help="Percentile of |score| kept in each circuit (the paper's figure uses 95).")
@definition_options
@format_option
@with_store
def diff(store, a, b, pct, definition, fmt):
    """The 95th-percentile difference between circuits A and B (method.md 6.4, Fig. 3)."""
    emit(store.diff(a, b, definition, pct), fmt)


@query.command()
@click.argument("a")
@click.argument("b")
@click.option("--as", "as_ref", required=True, help="Store the union as circuit RUN:STEP.")
@click.option("--max-edges", type=int, default=None,
              help="Keep the top N union edges by |score| (the paper: the compositional circuit's size).")
@definition_options
@format_option
def union(a, b, as_ref, max_edges, definition, fmt):
    """Union of circuits A and B (method.md 5), stored as a circuit of its own."""
    from queries.api import store_union
    from queries.connection import session_driver
    with session_driver() as (driver, database):
        emit(store_union(driver, database, a, b, as_ref, definition, max_edges), fmt)


@query.command()
@click.argument("a")
@click.argument("b")
@click.option("--k", "ks", type=int, multiple=True, default=(100, 500, 1000), show_default=True,
              help="k of Overlap_k; repeat for several.")
@definition_options
@format_option
@with_store
def overlap(store, a, b, ks, definition, fmt):
    """Overlap_k = |Top_k(A) ∩ Top_k(B)|, ranking edges by |score| (method.md 5)."""
    emit(store.overlap(a, b, definition, list(ks)), fmt, "overlap")


@query.command()
@click.argument("a")
@click.argument("b")
@definition_options
@format_option
@with_store
def jaccard(store, a, b, definition, fmt):
    """Jaccard similarity of the edge sets and node sets of circuits A and B."""
    emit(store.jaccard(a, b, definition), fmt)


@query.command("critical-layers")
@click.argument("a")
@click.argument("b")
@click.option("--top", type=int, default=5, show_default=True, help="How many layers.")
@definition_options
@format_option
@with_store
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
@click.argument("a")
@click.argument("b")
@definition_options
@format_option
@with_store
def node_bound(store, a, b, definition, fmt):
    """Does node change explain edge change? Both versions of method.md 6.6."""
    emit(store.node_bound(a, b, definition), fmt)


@query.command()
@format_option
@with_store
def runs(store, fmt):
    """Stored runs and their complete checkpoints."""
    from queries import library as Q
    emit({"runs": store.read(Q.RUNS)}, fmt, "runs")


@query.command()
@click.argument("run")
@format_option
@with_store
def metrics(store, run, fmt):
    """Accuracy, circuit accuracy and faithfulness (percent) and circuit size at each checkpoint of RUN."""
    from queries import library as Q
    emit({"checkpoints": store.read(Q.CHECKPOINT_METRICS, run=run),
          "units": "accuracy, circuit_accuracy and faithfulness in percent (0-100)"}, fmt, "checkpoints")


@click.command()
@click.argument("statement")
@click.option("--param", "params", multiple=True, metavar="NAME=JSON",
              help="A query parameter, e.g. --param run='\"demo\"'. Values are JSON.")
@format_option
def cypher(statement, params, fmt):
    """Run ad hoc Cypher in a read-only transaction; writes are refused."""
    import json

    from queries.adhoc import run_read_only
    from queries.connection import session_driver
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
