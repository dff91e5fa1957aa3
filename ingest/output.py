"""Printing query results as a table, one JSON document, or CSV.

A table goes to a terminal as a `rich` table (fitted to the terminal's width, numeric columns
right-aligned) and anywhere else (a pipe, a file, a test) as plain aligned text, the format scripts read.
"""

from __future__ import annotations

import csv
import io
import json
import sys

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

FORMATS = ("table", "json", "csv")

format_option = click.option("--format", "fmt", type=click.Choice(FORMATS), default="table",
                             show_default=True, help="Output format.")


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, dict)):
        text = json.dumps(v)
        return text if len(text) <= 60 else text[:57] + "..."
    return "" if v is None else str(v)


def rows_table(rows: list[dict], title: str | None = None) -> str:
    if not rows:
        return (title + "\n" if title else "") + "(no rows)"
    cols = list(rows[0].keys())
    cells = [[_cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = [title] if title else []
    lines.append("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.rjust(w) if _numeric(v) else v.ljust(w) for v, w in zip(row, widths))
              for row in cells]
    return "\n".join(lines)


def _numeric(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def rich_table(rows: list[dict], title: str | None = None) -> Table:
    """`rows` as a rich Table; cells are Text, so brackets in values are never read as markup."""
    table = Table(title=Text(title) if title else None, title_justify="left")
    cols = list(rows[0].keys()) if rows else ["(no rows)"]
    cells = [[_cell(r.get(c)) for c in cols] for r in rows]
    for i, c in enumerate(cols):
        numeric = bool(cells) and all(_numeric(row[i]) for row in cells if row[i])
        table.add_column(Text(c), justify="right" if numeric else "left")
    for row in cells:
        table.add_row(*(Text(v) for v in row))
    return table


def print_table(rows: list[dict], title: str | None = None) -> None:
    """A rich table on a terminal; plain text (:func:`rows_table`) when stdout is not one."""
    if sys.stdout.isatty():
        Console().print(rich_table(rows, title))
    else:
        click.echo(rows_table(rows, title))


def emit(result: dict, fmt: str, table_key: str | None = None, title: str | None = None) -> None:
    """Print `result`: JSON prints it whole; table/csv print `result[table_key]` (a list of rows), or
    the scalar figures of `result` as one row when there is no table."""
    if fmt == "json":
        click.echo(json.dumps(result, indent=2, default=str))
        return
    if table_key is not None:
        rows = result[table_key]
    else:
        rows = [{k: v for k, v in result.items() if not isinstance(v, (list, dict))}]
    if fmt == "csv":
        buf = io.StringIO()
        if rows:
            writer = csv.DictWriter(buf, fieldnames=list(rows[0].keys()), lineterminator="\n")
            writer.writeheader()
            for r in rows:
                writer.writerow({k: (json.dumps(v) if isinstance(v, (list, dict)) else v)
                                 for k, v in r.items()})
        sys.stdout.write(buf.getvalue())
        return
    header = {k: v for k, v in result.items()
              if k != table_key and not isinstance(v, (list, dict)) and table_key is not None}
    if header:
        click.echo("  ".join(f"{k}={_cell(v)}" for k, v in header.items()))
    print_table(rows, title)
