"""The `circuitshift` command line.

Sub-commands are loaded lazily from their own modules (ingest/commands/, one per command group; the
jobs they run are in ingest/jobs/), so `circuitshift db status` never imports torch,
and `--help` lists every command without loading any of them. A user mistake (UserError, or a database
that refuses us) prints one `error:` line and exits 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys

import click

from analysis.errors import UserError

# name -> (module, attribute, one-line help). Modules that are not in this checkout are not listed.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "db": ("ingest.commands.db", "db", "Run the local Neo4j server: start, stop, status, init."),
    "import": ("ingest.commands.imports", "import_group", "Import circuits people already have (EAP-IG JSON)."),
    "export": ("ingest.commands.export", "export", "Export a stored circuit as GraphML, GEXF or EAP-IG JSON."),
    "query": ("ingest.commands.query", "query", "The paper's questions as Cypher queries over stored circuits."),
    "cypher": ("ingest.commands.query", "cypher", "Run ad hoc Cypher in a read-only transaction."),
    "data": ("ingest.commands.data", "data", "Build and inspect task datasets (clean/corrupted prompt pairs)."),
    "score": ("ingest.commands.score", "score", "Score every edge of a model's graph with EAP / EAP-IG."),
    "circuit": ("ingest.commands.circuit", "circuit", "Select circuits from scores and evaluate them."),
    "ingest": ("ingest.commands.ingest", "ingest", "Fine-tune and stream every checkpoint's circuit into Neo4j."),
    "demo": ("ingest.commands.demo", "demo", "The end-to-end demo on a small local model."),
    "circuitlora": ("ingest.commands.circuitlora", "circuitlora", "CircuitLoRA: plan and train from critical layers."),
    "experiment": ("ingest.commands.experiment", "experiment", "Run the paper's method comparison."),
    "report": ("ingest.commands.report", "report", "Figures and an HTML report of a stored run."),
    "robustness": ("ingest.commands.robustness", "robustness", "Circuit robustness and a resampling-noise baseline."),
}


def _available(name: str) -> bool:
    return importlib.util.find_spec(COMMANDS[name][0]) is not None


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(n for n in COMMANDS if _available(n))

    def get_command(self, ctx, name):
        if name not in COMMANDS or not _available(name):
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx, formatter):
        rows = [(n, COMMANDS[n][2]) for n in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="circuitshift")
def cli():
    """circuitshift: what did fine-tuning change inside my model?

    Scores EAP-IG circuits at every fine-tuning checkpoint, stores every scored edge in Neo4j, and
    answers the questions of Wang et al. (ICML 2025) as Cypher queries.
    """


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no "Writing model shards" bars
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("neo4j").setLevel(logging.ERROR)  # retries are ours to report, in one line
    try:
        rv = cli.main(args=argv, prog_name="circuitshift", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except UserError as exc:
        click.echo(f"error: {_one_line(exc)}", err=True)
        sys.exit(2)
    except Exception as exc:  # the driver's errors are user-facing too (bad password, server down)
        if type(exc).__module__.startswith("neo4j"):
            from queries.connection import explain  # neo4j: loaded only when it failed
            click.echo(f"error: {_one_line(explain(exc, 'the database'))}", err=True)
            sys.exit(2)
        raise
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
