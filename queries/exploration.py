"""Exploring stored circuits: Browser views, the guide's queries, and churn judged against noise.

Neo4j Browser styles nodes by LABEL and relationships by TYPE only (GraSS has no property selectors),
so what the style sheet (`queries/browser/style.grass`) needs is materialised as labels and types:

* Components get a kind label (`:Input`, `:Attn`, `:MLP`, `:Logits`; `LABEL_COMPONENTS`, idempotent),
  so every `CIRCUIT_EDGE` picture is coloured by kind with captions = component names.
* A *view* is a removable, materialised before/after difference (method.md 6.4, Fig. 3):
      (:ViewNode:<Kind>:Deg<1-5> {view, name, ci, kind, layer, degree, status})
        -[:ADDED_<1-4> | REMOVED_<1-4> | KEPT_<1-4> {view, key, name, s, status, tier}]->(:ViewNode)
  `view` is its id (e.g. `RUN:0..RUN:10`); edges are the 95th-percentile-filtered edges of A and B,
  ADDED = only in B, REMOVED = only in A, KEPT = in both; `s` is B's score (A's for a removed edge);
  the suffix 1-4 is the |s| quartile within the view (the style sheet widens 1 -> 4); `degree` is
  the node's degree in the view and `Deg1..Deg5` buckets it (1-2, 3-5, 6-10, 11-20, >20) for the
  style sheet's sizes. Views never feed an analysis query; their statements are in
  queries/cypher/views.py and CircuitWriter.replace_view writes them.

The Browser guide is generated here from the named statements of queries/cypher/guide.py.
"""

from __future__ import annotations

import html
import statistics

from queries.api import Store
from queries.cypher import views as V
from queries.cypher.guide import GUIDE_STATEMENTS
from queries.writer import CircuitWriter

DEGREE_BUCKETS = (2, 5, 10, 20)  # Deg1: degree <= 2, Deg2: <= 5, Deg3: <= 10, Deg4: <= 20, Deg5: more
KIND_LABELS = {"input": "Input", "attn": "Attn", "mlp": "MLP", "logits": "Logits"}


def degree_label(degree: int) -> str:
    for i, top in enumerate(DEGREE_BUCKETS):
        if degree <= top:
            return f"Deg{i + 1}"
    return f"Deg{len(DEGREE_BUCKETS) + 1}"


def view_id(a: str, b: str) -> str:
    return f"{a}..{b}"


def diff_edges(store, a: str, b: str, definition, pct: float = 95.0) -> dict:
    """The Fig. 3 difference with kept edges: rows {key, name, src, dst, status, s} + components."""
    ra, rb = store.pair(a, b, definition)
    rows = store.read(V.DIFF_EDGES, uids=[ra.uid, rb.uid], pct=float(pct),
                      **store.selection(definition, [ra.uid, rb.uid], ra.arch), **store.arch_params(ra.arch))
    arch, level = ra.arch, definition.level
    for r in rows:
        r["name"] = arch.edge_name(r["key"] * 4 if level == "head" else r["key"])
    return {"a": a, "b": b, "pct": pct, "arch": arch, "edges": rows}


def quartile_tiers(values: list[float]) -> list[int]:
    """1..4: the quartile of each |value| among all of them (rank based; ties share the lower tier)."""
    mags = sorted(abs(v) for v in values)
    n = len(mags)
    out = []
    for v in values:
        below = sum(1 for m in mags if m < abs(v))
        out.append(min(4, 1 + (4 * below) // n) if n else 1)
    return out


def write_diff_view(driver, database, a: str, b: str, definition, pct: float = 95.0) -> dict:
    """Materialise the before/after difference A -> B as a Browser view (replacing an older one)."""
    store = Store(driver, database)
    d = diff_edges(store, a, b, definition, pct)
    arch, edges = d["arch"], d["edges"]
    vid = view_id(a, b)
    degree: dict[int, int] = {}
    status_of: dict[int, set] = {}
    for e in edges:
        for v in (e["src"], e["dst"]):
            degree[v] = degree.get(v, 0) + 1
            status_of.setdefault(v, set()).add(e["status"])
    comps = arch.components
    nodes = []
    for ci in sorted(degree):
        c = comps[ci]
        st = status_of[ci]
        status = "added" if st == {"added"} else "removed" if st == {"removed"} else "kept"
        nodes.append({"ci": ci, "name": c["name"], "kind": c["kind"], "layer": c["layer"],
                      "degree": degree[ci], "status": status,
                      "labels": [KIND_LABELS[c["kind"]], degree_label(degree[ci])]})
    tiers = quartile_tiers([e["s"] for e in edges])
    rows = [{"src": e["src"], "dst": e["dst"], "key": e["key"], "name": e["name"], "s": e["s"],
             "status": e["status"], "tier": t, "type": f"{e['status'].upper()}_{t}"}
            for e, t in zip(edges, tiers)]
    CircuitWriter(driver, database).replace_view(vid, nodes, rows)
    counts = {s: sum(1 for e in edges if e["status"] == s) for s in ("added", "removed", "kept")}
    return {"view": vid, "nodes": len(nodes), "edges": len(rows), **counts}


def churn_against_noise(store, run: str, definition) -> dict:
    """Real churn per transition of `run` beside the churn between circuits of ONE checkpoint scored
    on resampled data (the noise runs): what change would be seen if nothing had changed.

    For each transition: edges/nodes changed, the noise mean, sd and max, and `edges_z`
    = (changed - noise mean) / noise sd (None when sd = 0) and `edges_above_noise` = changed > max.
    """
    real = store.churn(run, definition)["transitions"]
    noise = []
    nruns = store.noise_runs(run)
    for nr in nruns:
        if len(nr["steps"]) >= 2:
            noise += store.churn(nr["run"], definition)["transitions"]
    out = {"run": run, "definition": definition.describe(),
           "noise_runs": [nr["run"] for nr in nruns], "noise_pairs": len(noise)}
    stats = {}
    for what in ("edges", "nodes"):
        vals = [t[f"{what}_changed"] for t in noise]
        stats[what] = {"mean": statistics.fmean(vals) if vals else None,
                       "sd": statistics.stdev(vals) if len(vals) > 1 else (0.0 if vals else None),
                       "min": min(vals) if vals else None, "max": max(vals) if vals else None,
                       "values": vals}
    out["noise"] = stats
    rows = []
    for t in real:
        row = {"from_step": t["from_step"], "to_step": t["to_step"],
               "edges_changed": t["edges_changed"], "nodes_changed": t["nodes_changed"]}
        for what in ("edges", "nodes"):
            s = stats[what]
            row[f"{what}_noise_mean"] = s["mean"]
            row[f"{what}_noise_max"] = s["max"]
            row[f"{what}_z"] = ((t[f"{what}_changed"] - s["mean"]) / s["sd"]
                                if s["sd"] else None)
            row[f"{what}_above_noise"] = (t[f"{what}_changed"] > s["max"]) if s["max"] is not None else None
        rows.append(row)
    out["transitions"] = rows
    return out


# -- the guide (ingest/browser_assets.py serves it as guide.html, generated from the statements) ---

GUIDE_SLIDES = [
    ("circuitshift: what did fine-tuning change?",
     "Every checkpoint of a fine-tuning run has its circuit scored with EAP-IG and stored here. "
     "Pick a run, then set the parameters used by every slide: <code>run</code>, two steps "
     "<code>a</code> (before) and <code>b</code> (after), and for the overlap slide a second circuit "
     "<code>run2</code>:<code>b2</code>.",
     [":param {run: 'demo', a: 0, b: 10, run2: 'demo', b2: 10}", "runs"]),
    ("A run's churn (method.md 6.1-6.2, Fig. 3 right)",
     "Nodes and edges added and removed at each transition t &rarr; t+1 of the run, on each "
     "checkpoint's own circuit at head level. <code>circuitshift report RUN</code> draws these beside "
     "the churn between circuits of one checkpoint scored on resampled data (the noise floor).",
     ["churn"]),
    ("The circuit at a checkpoint",
     "The circuit of checkpoint <code>a</code> as stored: components coloured by kind "
     "(input, attention head, MLP, logits), captions are their names.",
     ["circuit"]),
    ("The difference between two checkpoints (Fig. 3 left)",
     "Both circuits at once (parallel edges: one per checkpoint). For the paper's picture, "
     "<code>circuitshift report RUN</code> materialises the 95th-percentile difference a &rarr; b as a "
     "view: added edges blue, removed red, kept grey, wider for larger |score|, components sized by "
     "degree (the second query; the view id is <code>RUN:a..RUN:b</code>).",
     ["two_circuits", "view"]),
    ("Critical layers (CircuitLoRA, method.md 4)",
     "Layers ranked by the summed |score change| of their outgoing edges from a to b: the top 5 are "
     "the layers CircuitLoRA gives a higher LoRA rank.",
     ["critical_layers"]),
    ("Union vs compositional (Overlap_k, method.md 5)",
     "How many of the top-k edges two circuits share, e.g. a union circuit stored with "
     "<code>circuitshift query union</code> against the compositional task's circuit "
     "(set <code>run2</code> and <code>b2</code>).",
     ["overlap"]),
]


def guide_html() -> str:
    def pre(cmd: str) -> str:
        text = cmd if cmd.startswith(":") else GUIDE_STATEMENTS[cmd].strip()
        return f'<pre class="pre-scrollable code runnable">{html.escape(text)}</pre>'

    slides = []
    for title, text, cmds in GUIDE_SLIDES:
        body = "\n".join(pre(c) for c in cmds)
        slides.append(f'<slide class="row-fluid">\n<div class="col-sm-12">\n<h3>{html.escape(title)}</h3>\n'
                      f"<p>{text}</p>\n{body}\n</div>\n</slide>")
    return ('<article class="guide">\n<carousel class="deck container-fluid">\n'
            + "\n".join(slides) + "\n</carousel>\n</article>\n")

