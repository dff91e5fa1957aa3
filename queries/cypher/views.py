"""Browser difference views: the statements that materialise, read and delete them (the data model is
described in queries/exploration.py, which builds a view's rows)."""

from __future__ import annotations

from queries.cypher.fragments import GIVEN_ENDPOINTS

# Components get a kind label (Browser styles by label only); idempotent.
LABEL_COMPONENTS = """
MATCH (c:Component)
FOREACH (_ IN CASE WHEN c.kind = 'input' THEN [1] ELSE [] END | SET c:Input)
FOREACH (_ IN CASE WHEN c.kind = 'attn' THEN [1] ELSE [] END | SET c:Attn)
FOREACH (_ IN CASE WHEN c.kind = 'mlp' THEN [1] ELSE [] END | SET c:MLP)
FOREACH (_ IN CASE WHEN c.kind = 'logits' THEN [1] ELSE [] END | SET c:Logits)
RETURN count(c) AS labelled
"""

# The 95th-percentile difference with the KEPT edges too (Store.diff returns only added/removed):
# for A ($uids[0]) and B ($uids[1]) separately keep |s| >= the $pct percentile of that circuit's |s|.
DIFF_EDGES = GIVEN_ENDPOINTS + """
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

# One view as Browser draws it (printed in reports for the user to paste, with `:param view => ...`).
SHOW_VIEW = "MATCH p = (:ViewNode {view: $view})-[]->() RETURN p"
