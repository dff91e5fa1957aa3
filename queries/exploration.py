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
  style sheet's sizes. Delete with `DELETE_VIEW`. Views never feed an analysis query.

Every statement here is named and parameterized, like queries/library.py.
"""

from __future__ import annotations

import statistics

from queries import library as Q
from queries.schema import SCHEMA_STATEMENTS

DEGREE_BUCKETS = (2, 5, 10, 20)  # Deg1: degree <= 2, Deg2: <= 5, Deg3: <= 10, Deg4: <= 20, Deg5: more
KIND_LABELS = {"input": "Input", "attn": "Attn", "mlp": "MLP", "logits": "Logits"}

LABEL_COMPONENTS = """
MATCH (c:Component)
FOREACH (_ IN CASE WHEN c.kind = 'input' THEN [1] ELSE [] END | SET c:Input)
FOREACH (_ IN CASE WHEN c.kind = 'attn' THEN [1] ELSE [] END | SET c:Attn)
FOREACH (_ IN CASE WHEN c.kind = 'mlp' THEN [1] ELSE [] END | SET c:MLP)
FOREACH (_ IN CASE WHEN c.kind = 'logits' THEN [1] ELSE [] END | SET c:Logits)
RETURN count(c) AS labelled
"""

VIEW_INDEX = SCHEMA_STATEMENTS["view_node_view"]  # part of the one schema (queries/schema.py)

# The 95th-percentile difference with the KEPT edges too (Store.diff returns only added/removed):
# for A ($uids[0]) and B ($uids[1]) separately keep |s| >= the $pct percentile of that circuit's |s|.
DIFF_EDGES = Q._GIVEN_CHECKPOINTS + Q._SELECT + Q._ENDPOINTS + """
WITH pos, collect({key: key, s: s, src: src, dst: dst}) AS edges
WITH pos, edges, [e IN edges | abs(e.s)] AS mags
UNWIND mags AS m
WITH pos, edges, percentileCont(m, $pct / 100.0) AS threshold
UNWIND [e IN edges WHERE abs(e.s) >= threshold] AS e
WITH e.key AS key, e.src AS src, e.dst AS dst, collect({pos: pos, s: e.s}) AS seen
RETURN key, src, dst,
       CASE WHEN size(seen) = 2 THEN 'kept' WHEN seen[0].pos = 1 THEN 'added' ELSE 'removed' END AS status,
       CASE WHEN size(seen) = 2 THEN [x IN seen WHERE x.pos = 1][0].s ELSE seen[0].s END AS s
ORDER BY key
"""

DELETE_VIEW = """
MATCH (n:ViewNode {view: $view})
DETACH DELETE n
RETURN count(*) AS deleted
"""

# rows: {ci, name, kind, layer, degree, status, labels}; edges: {src, dst, key, name, s, status, tier, type}
WRITE_VIEW_NODES = """
UNWIND $rows AS row
CREATE (n:ViewNode {view: $view, ci: row.ci, name: row.name, kind: row.kind, layer: row.layer,
                    degree: row.degree, status: row.status})
SET n:$(row.labels)
RETURN count(n) AS nodes
"""

WRITE_VIEW_EDGES = """
UNWIND $edges AS e
MATCH (a:ViewNode {view: $view, ci: e.src})
MATCH (b:ViewNode {view: $view, ci: e.dst})
CREATE (a)-[r:$(e.type) {view: $view, key: e.key, name: e.name, s: e.s, status: e.status,
                          tier: e.tier}]->(b)
RETURN count(r) AS edges
"""

VIEW_SUMMARY = """
MATCH (a:ViewNode {view: $view})-[r]->(b:ViewNode)
RETURN type(r) AS type, r.status AS status, r.name AS name, r.s AS s, a.name AS src, b.name AS dst
ORDER BY name
"""

VIEWS = """
MATCH (n:ViewNode)
RETURN n.view AS view, count(n) AS nodes ORDER BY view
"""

# -- the guide's queries (queries/browser/guide.html): self-contained, parameters set by `:param` ----
# They read each checkpoint's own circuit (in_graph) at head level (q/k/v summed), as the paper.
# Browser sends `:param` numbers as floats: steps are compared as numbers, never as strings.

GUIDE_RUNS = """
MATCH (r:Run)
OPTIONAL MATCH (r)-[:HAS_CHECKPOINT]->(c:Checkpoint) WHERE c.complete
WITH r, c ORDER BY c.step
RETURN r.id AS run, r.task AS task, r.method AS method, collect(c.step) AS steps
ORDER BY run
"""

GUIDE_CHURN = """
MATCH (:Run {id: $run})-[:ON_ARCH]->(arch:Architecture)
MATCH (c:Checkpoint {run: $run}) WHERE c.complete
WITH arch.n_components AS n, c ORDER BY c.step
WITH n, collect(c) AS cs
UNWIND range(0, size(cs) - 2) AS t
WITH n, cs[t] AS x, cs[t + 1] AS y
CALL (x) { UNWIND x.in_graph AS r RETURN collect(DISTINCT x.keys[r - 1] / 4) AS ex }
CALL (y) { UNWIND y.in_graph AS r RETURN collect(DISTINCT y.keys[r - 1] / 4) AS ey }
WITH x, y, ex, ey, n,
     reduce(s = [], p IN ex | s + [p / n, p % n]) AS nx, reduce(s = [], p IN ey | s + [p / n, p % n]) AS ny
CALL (nx) { UNWIND nx AS v RETURN collect(DISTINCT v) AS vx }
CALL (ny) { UNWIND ny AS v RETURN collect(DISTINCT v) AS vy }
RETURN x.step AS from_step, y.step AS to_step,
       size([k IN ey WHERE NOT k IN ex]) AS edges_added, size([k IN ex WHERE NOT k IN ey]) AS edges_removed,
       size([v IN vy WHERE NOT v IN vx]) AS nodes_added, size([v IN vx WHERE NOT v IN vy]) AS nodes_removed
ORDER BY from_step
"""

GUIDE_CIRCUIT = """
MATCH (c:Checkpoint {run: $run, step: $a}) WHERE c.complete
MATCH p = (:Component)-[e:CIRCUIT_EDGE {ck: c.uid}]->(:Component)
RETURN p
"""

GUIDE_TWO_CIRCUITS = """
MATCH (c:Checkpoint {run: $run}) WHERE c.complete AND c.step IN [$a, $b]
MATCH p = (:Component)-[e:CIRCUIT_EDGE {ck: c.uid}]->(:Component)
RETURN p
"""

GUIDE_VIEW = """
WITH $run + ':' + toInteger($a) + '..' + $run + ':' + toInteger($b) AS view
MATCH p = (:ViewNode {view: view})-[]->(:ViewNode)
RETURN p
"""

GUIDE_CRITICAL_LAYERS = """
MATCH (:Run {id: $run})-[:ON_ARCH]->(arch:Architecture)
MATCH (c:Checkpoint {run: $run}) WHERE c.complete AND c.step IN [$a, $b]
UNWIND c.in_graph AS r
WITH arch, c.step AS step, c.keys[r - 1] / 4 AS pair, c.scores[r - 1] AS s
WITH arch, step, pair, sum(s) AS s
WITH arch, pair, collect({step: step, s: s}) AS seen
WITH arch, pair / arch.n_components AS src,
     CASE size(seen) WHEN 2 THEN abs(seen[0].s - seen[1].s) ELSE abs(seen[0].s) END AS delta
WITH CASE WHEN src = 0 THEN 0 ELSE (src - 1) / (arch.n_heads + 1) END AS layer, sum(delta) AS delta
RETURN layer, delta ORDER BY delta DESC, layer LIMIT 5
"""

GUIDE_OVERLAP = """
UNWIND [[$run, $a], [$run2, $b2]] AS ref
MATCH (c:Checkpoint {run: ref[0], step: ref[1]}) WHERE c.complete
UNWIND c.in_graph AS r
WITH ref, c.keys[r - 1] / 4 AS pair, sum(c.scores[r - 1]) AS s
ORDER BY abs(s) DESC, pair
WITH ref, collect(pair) AS ranked
WITH collect(ranked) AS lists
UNWIND [10, 50, 100] AS k
WITH k, lists, [x IN lists[0][..k] WHERE x IN lists[1][..k]] AS both
RETURN k, size(both) AS overlap, size(lists[0]) AS size_a, size(lists[1]) AS size_b
"""

GUIDE_NOISE = """
MATCH (r:Run) WHERE r.noise_of = $run
RETURN r.id AS noise_run, r.noise_step AS of_step
"""

GUIDE_STATEMENTS = {
    "runs": GUIDE_RUNS, "churn": GUIDE_CHURN, "circuit": GUIDE_CIRCUIT, "two_circuits": GUIDE_TWO_CIRCUITS,
    "view": GUIDE_VIEW, "critical_layers": GUIDE_CRITICAL_LAYERS, "overlap": GUIDE_OVERLAP,
}

# -- robustness and the noise baseline: linking analysis runs to a run -----------------------------

TAG_RUN = """
MATCH (r:Run {id: $id})
SET r += $tags
RETURN r.id AS id
"""

ANALYSIS_RUNS = """
MATCH (r:Run) WHERE r.analysis = $analysis AND (r.of_run = $of OR r.task = $task)
OPTIONAL MATCH (r)-[:HAS_CHECKPOINT]->(c:Checkpoint) WHERE c.complete
WITH r, c ORDER BY c.step
RETURN r.id AS run, r.model_label AS label, r.of_run AS of_run, r.noise_step AS noise_step,
       collect(c.step) AS steps
ORDER BY run
"""

NOISE_RUNS = """
MATCH (r:Run) WHERE r.analysis = 'noise' AND r.of_run = $of
OPTIONAL MATCH (r)-[:HAS_CHECKPOINT]->(c:Checkpoint) WHERE c.complete
WITH r, c ORDER BY c.step
RETURN r.id AS run, r.noise_step AS noise_step, collect(c.step) AS steps
ORDER BY run
"""

RUN_TASK = "MATCH (r:Run {id: $run}) RETURN r.task AS task"


# -- Python side (a Store from queries.api; no driver calls here besides Store.read) -----------------

def degree_label(degree: int) -> str:
    for i, top in enumerate(DEGREE_BUCKETS):
        if degree <= top:
            return f"Deg{i + 1}"
    return f"Deg{len(DEGREE_BUCKETS) + 1}"


def view_id(a: str, b: str) -> str:
    return f"{a}..{b}"


def diff_edges(store, a: str, b: str, definition, pct: float = 95.0) -> dict:
    """The Fig. 3 difference with kept edges: rows {key, name, src, dst, status, s} + components."""
    ra, rb = store._pair(a, b, definition)
    rows = store.read(DIFF_EDGES, uids=[ra.uid, rb.uid], pct=float(pct),
                      **store.selection(definition, [ra.uid, rb.uid], ra.arch), **store._arch_params(ra.arch))
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
    from queries.api import Store

    store = Store(driver, database)
    d = diff_edges(store, a, b, definition, pct)
    arch, edges = d["arch"], d["edges"]
    vid = view_id(a, b)

    def run(stmt, **params):
        return driver.execute_query(stmt, params, database_=database, routing_="w")

    run(VIEW_INDEX)
    run(LABEL_COMPONENTS)
    run(DELETE_VIEW, view=vid)
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
    run(WRITE_VIEW_NODES, view=vid, rows=nodes)
    if rows:
        run(WRITE_VIEW_EDGES, view=vid, edges=rows)
    counts = {s: sum(1 for e in edges if e["status"] == s) for s in ("added", "removed", "kept")}
    return {"view": vid, "nodes": len(nodes), "edges": len(rows), **counts}


def noise_runs(store, run: str) -> list[dict]:
    """The resampling-noise runs stored for `run` (robustness --noise-of RUN:STEP)."""
    return store.read(NOISE_RUNS, of=run)


def churn_against_noise(store, run: str, definition) -> dict:
    """Real churn per transition of `run` beside the churn between circuits of ONE checkpoint scored
    on resampled data (the noise runs): what change would be seen if nothing had changed.

    For each transition: edges/nodes changed, the noise mean, sd and max, and `edges_z`
    = (changed - noise mean) / noise sd (None when sd = 0) and `edges_above_noise` = changed > max.
    """
    real = store.churn(run, definition)["transitions"]
    noise = []
    nruns = noise_runs(store, run)
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


# -- the guide (queries/browser/guide.html is generated from these statements: `python -m
#    queries.exploration` rewrites it, and a test checks that it is current) --------------------------

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
    import html

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


if __name__ == "__main__":
    from importlib import resources
    from pathlib import Path
    path = Path(str(resources.files("queries.browser").joinpath("guide.html")))
    path.write_text(guide_html())
    print(f"wrote {path}")
