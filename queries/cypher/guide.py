"""The Browser guide's queries (the guide is generated from them: queries/exploration.py's guide_html).

They are self-contained, with parameters set by `:param`, and read each checkpoint's own circuit
(in_graph) at head level (q/k/v summed), as the paper. Browser sends `:param` numbers as floats: steps
are compared as numbers, never as strings.
"""

from __future__ import annotations

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

# The latest complete checkpoint's circuit of $run, components linked to components (`circuitshift
# demo` prints it for Browser with the run id written in).
LATEST_CIRCUIT = """MATCH (c:Checkpoint {run: $run}) WHERE c.complete WITH c ORDER BY c.step DESC LIMIT 1
MATCH (a:Component)-[e:CIRCUIT_EDGE {ck: c.uid}]->(b:Component) RETURN a, e, b"""
