"""One report page, written twice from the same sections: HTML (index.html) and Markdown (report.md).

A section is a heading, paragraphs (plain text; `code` spans in backticks), figures (PNG names beside
the page) and tables (lists of row dicts, one column per key of the first row)."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

STYLE = ("<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
         "table{border-collapse:collapse;font-size:13px;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 7px}"
         "td.paper,th.paper{color:#666;font-style:italic}img{max-width:100%;border:1px solid #eee;margin:.5em 0}"
         "</style>")
PAPER_MARK = "(paper)"  # a column whose name ends so holds the paper's published numbers


@dataclass(frozen=True)
class Section:
    title: str
    text: tuple[str, ...] = ()
    figures: tuple[str, ...] = ()
    tables: tuple[tuple[dict, ...], ...] = ()


def cell_text(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def html_table(rows) -> str:
    rows = list(rows)
    if not rows:
        return "<p>(none)</p>"
    cols = list(rows[0])

    def cls(c):
        return " class='paper'" if c.endswith(PAPER_MARK) else ""
    head = "".join(f"<th{cls(c)}>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td{cls(c)}>{html.escape(cell_text(r.get(c)))}</td>" for c in cols)
                   + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def markdown_table(rows) -> str:
    rows = list(rows)
    if not rows:
        return "(none)"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell_text(r.get(c)).replace("|", "\\|") for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def _html_text(t: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(t))


def to_html(title: str, sections: list[Section]) -> str:
    parts = ["<!doctype html><html><head><meta charset='utf-8'>", f"<title>{html.escape(title)}</title>",
             STYLE, "</head><body>", f"<h1>{html.escape(title)}</h1>"]
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        parts += [f"<p>{_html_text(t)}</p>" for t in s.text]
        parts += [f"<img src='{html.escape(f)}'>" for f in s.figures]
        parts += [html_table(t) for t in s.tables]
    parts.append("</body></html>")
    return "\n".join(parts)


def to_markdown(title: str, sections: list[Section]) -> str:
    parts = [f"# {title}"]
    for s in sections:
        parts.append(f"## {s.title}")
        parts += list(s.text)
        parts += [f"![{f}]({f})" for f in s.figures]
        parts += [markdown_table(t) for t in s.tables]
    return "\n\n".join(parts) + "\n"
