"""The paper's questions as named, parameterized Cypher statements.

Formulas cite `../shared/spec/method.md` (section numbers below). Every statement takes its values as
parameters; statements are assembled once, at import, from the constant fragments in this file.

Common parameters
    $mode, $value   the circuit definition: 'in_graph' (the checkpoint's own circuit: what the method
                    kept, e.g. top 5% then pruning), 'top_n' (value = n), 'top_frac' (value = fraction),
                    'threshold' (keep |score| >= value), 'percentile' (keep |score| >= the value-th
                    percentile of |score| over all scored edges, linear interpolation); each of these
                    four is a prefix of the rank-ordered arrays. 'ranks': the 1-based ranks in
                    $ranks[toString(uid)] (a pruned prefix, computed by queries.api.Store).
    $ranks          {uid as string: [rank, ...]}; read only when $mode = 'ranks' ({} otherwise).
    $level          'qkv' (edges into heads split into q/k/v) or 'head' (the paper's collapse: the three
                    selected edges of one head pair summed, method.md 2.4).
    $n_comp, $hp1, $n_layers
                    the architecture: number of components, heads + 1, layers (to decode edge keys:
                    pair = key / 4 at qkv level, src = pair / n_comp, dst = pair % n_comp; the layer of
                    component ci is (ci - 1) / hp1, `input` counts as layer 0, method.md 4 step 3).

Rows produced by the selection fragment: (pos, key, s) = position of the circuit in the list of
checkpoints, edge key at the chosen level, signed score (summed over q/k/v at head level).
"""

from __future__ import annotations

# -- fragments -------------------------------------------------------------------------------------

# The ranks of a checkpoint's own circuit, or those the caller chose ($mode = 'ranks').
_OWN_RANKS = "CASE WHEN $mode = 'ranks' THEN $ranks[toString(c.uid)] ELSE c.in_graph END"

# Expects `c` (a Checkpoint) and `pos` in scope.
_SELECT = """
WITH c, pos, c.keys AS keys, c.scores AS scores, """ + _OWN_RANKS + """ AS in_graph, c.n_edges AS n
WITH c, pos, keys, scores, in_graph, n,
     CASE WHEN $mode = 'percentile' AND n > 1
          THEN ($value / 100.0) * (n - 1) ELSE 0.0 END AS x
WITH c, pos, keys, scores, in_graph, n,
     CASE $mode
       WHEN 'percentile' THEN abs(scores[n - 1 - toInteger(floor(x))])
            + (x - floor(x)) * (abs(scores[n - 1 - toInteger(ceil(x))]) - abs(scores[n - 1 - toInteger(floor(x))]))
       ELSE $value END AS t
WITH c, pos, keys, scores, in_graph,
     CASE $mode
       WHEN 'in_graph' THEN -1
       WHEN 'ranks' THEN -1
       WHEN 'top_n' THEN toInteger($value)
       WHEN 'top_frac' THEN toInteger(floor($value * n))
       ELSE size([s IN scores WHERE abs(s) >= t]) END AS cut
UNWIND CASE WHEN cut < 0 THEN [r IN in_graph | r - 1] ELSE range(0, cut - 1) END AS i
WITH pos, CASE $level WHEN 'head' THEN keys[i] / 4 ELSE keys[i] END AS key, scores[i] AS s
WITH pos, key, sum(s) AS s
"""

# Set-only variant of _SELECT for the churn queries (measured 2x faster at Pythia-1.4B scale): reads
# `scores` only when the definition needs them, keeps no score, and carries `n_pos`. Rows: (pos, n_pos, key).
_SELECT_KEYS = """
WITH c, pos, n_pos, c.keys AS keys, c.n_edges AS n,
     CASE WHEN $mode IN ['threshold', 'percentile'] THEN c.scores ELSE [] END AS scores
WITH c, pos, n_pos, keys, scores, n,
     CASE WHEN $mode = 'percentile' AND n > 1 THEN ($value / 100.0) * (n - 1) ELSE 0.0 END AS x
WITH c, pos, n_pos, keys, scores, n,
     CASE $mode
       WHEN 'percentile' THEN abs(scores[n - 1 - toInteger(floor(x))])
            + (x - floor(x)) * (abs(scores[n - 1 - toInteger(ceil(x))]) - abs(scores[n - 1 - toInteger(floor(x))]))
       ELSE $value END AS t
WITH c, pos, n_pos, keys,
     CASE $mode
       WHEN 'in_graph' THEN -1
       WHEN 'ranks' THEN -1
       WHEN 'top_n' THEN toInteger($value)
       WHEN 'top_frac' THEN toInteger(floor($value * n))
       ELSE size([s IN scores WHERE abs(s) >= t]) END AS cut
UNWIND CASE WHEN cut < 0 THEN [r IN """ + _OWN_RANKS + """ | r - 1] ELSE range(0, cut - 1) END AS i
WITH DISTINCT pos, n_pos, CASE $level WHEN 'head' THEN keys[i] / 4 ELSE keys[i] END AS key
"""

# The source/destination component of an edge key at the chosen level.
_ENDPOINTS = """
WITH pos, key, s, CASE $level WHEN 'head' THEN key ELSE key / 4 END AS pair
WITH pos, key, s, pair / $n_comp AS src, pair % $n_comp AS dst
"""

_LAYER_OF_SRC = "CASE WHEN src = 0 THEN 0 ELSE (src - 1) / $hp1 END"
_LAYER_OF = "CASE WHEN {v} = 0 THEN 0 WHEN {v} = $n_comp - 1 THEN $n_layers ELSE ({v} - 1) / $hp1 END"

# Checkpoints of one run, in step order.
_RUN_CHECKPOINTS = """
MATCH (c:Checkpoint {run: $run}) WHERE c.complete
WITH c ORDER BY c.step
WITH collect(c) AS cs
UNWIND range(0, size(cs) - 1) AS pos
WITH cs[pos] AS c, pos, size(cs) AS n_pos
"""

# Checkpoints given by uid, in the order given ($uids).
_GIVEN_CHECKPOINTS = """
UNWIND range(0, size($uids) - 1) AS pos
MATCH (c:Checkpoint {uid: $uids[pos]}) WHERE c.complete
WITH c, pos
"""

# Items (edge keys or node ids) present per position -> churn per transition t -> t+1.
_CHURN_TAIL = """
WITH item, collect(pos) AS present, n_pos
UNWIND present AS p
WITH p, n_pos,
     sum(CASE WHEN p > 0 AND NOT (p - 1) IN present THEN 1 ELSE 0 END) AS added_into,
     sum(CASE WHEN p < n_pos - 1 AND NOT (p + 1) IN present THEN 1 ELSE 0 END) AS removed_after,
     count(*) AS size
WITH n_pos, collect({p: p, added: added_into, removed: removed_after, size: size}) AS per
UNWIND range(0, n_pos - 2) AS t
WITH t, per, [x IN per WHERE x.p = t] AS cur, [x IN per WHERE x.p = t + 1] AS nxt
RETURN t AS transition,
       CASE WHEN size(nxt) > 0 THEN nxt[0].added ELSE 0 END AS added,
       CASE WHEN size(cur) > 0 THEN cur[0].removed ELSE 0 END AS removed,
       CASE WHEN size(cur) > 0 THEN cur[0].size ELSE 0 END AS size_before,
       CASE WHEN size(nxt) > 0 THEN nxt[0].size ELSE 0 END AS size_after
ORDER BY transition
"""

# -- statements ------------------------------------------------------------------------------------

RESOLVE_CHECKPOINT = """
MATCH (r:Run {id: $run})-[:HAS_CHECKPOINT]->(c:Checkpoint {step: $step}) WHERE c.complete
MATCH (r)-[:ON_ARCH]->(a:Architecture)
RETURN c.uid AS uid, c.level AS level, c.n_edges AS n_edges, a.key AS arch, a.n_layers AS n_layers,
       a.n_heads AS n_heads, a.n_components AS n_comp, a.parallel_attn_mlp AS parallel,
       a.n_kv_heads AS n_kv_heads
"""

RUN_INFO = """
MATCH (r:Run {id: $run})-[:ON_ARCH]->(a:Architecture)
OPTIONAL MATCH (r)-[:HAS_CHECKPOINT]->(c:Checkpoint) WHERE c.complete
WITH r, a, c ORDER BY c.step
RETURN a.key AS arch, a.n_layers AS n_layers, a.n_heads AS n_heads, a.n_components AS n_comp,
       a.parallel_attn_mlp AS parallel, a.n_kv_heads AS n_kv_heads, collect(c.step) AS steps,
       collect(c.level) AS levels,
       collect(c.uid) AS uids
"""

# method.md 6.2 (edges: symmetric difference of the edge sets of checkpoints t and t+1).
CHURN_EDGES = _RUN_CHECKPOINTS + _SELECT_KEYS + "WITH pos, key AS item, n_pos\n" + _CHURN_TAIL

# method.md 6.1 (nodes: symmetric difference of the node sets; a node is in a circuit when one of its
# edges is).
CHURN_NODES = _RUN_CHECKPOINTS + _SELECT_KEYS + """
WITH pos, n_pos, CASE $level WHEN 'head' THEN key ELSE key / 4 END AS pair
UNWIND [pair / $n_comp, pair % $n_comp] AS item
WITH DISTINCT pos, n_pos, item
""" + _CHURN_TAIL

# method.md 6.4 with 6.5's per-layer grouping: added/removed nodes and edges between circuit A
# ($uids[0]) and circuit B ($uids[1]); an edge's layer is its source's layer, `input` = layer 0.
PER_LAYER = _GIVEN_CHECKPOINTS + _SELECT + _ENDPOINTS + """
WITH collect({pos: pos, key: key, src: src, dst: dst}) AS rows
CALL (rows) {
  UNWIND rows AS row
  WITH row.key AS key, row.src AS src, collect(row.pos) AS present
  WITH """ + _LAYER_OF_SRC + """ AS layer, present
  RETURN 'edge' AS what, layer,
         sum(CASE WHEN present = [1] THEN 1 ELSE 0 END) AS added,
         sum(CASE WHEN present = [0] THEN 1 ELSE 0 END) AS removed
  UNION ALL
  UNWIND rows AS row
  UNWIND [row.src, row.dst] AS node
  WITH node, collect(DISTINCT row.pos) AS present
  WITH """ + _LAYER_OF.format(v="node") + """ AS layer, present
  RETURN 'node' AS what, layer,
         sum(CASE WHEN present = [1] THEN 1 ELSE 0 END) AS added,
         sum(CASE WHEN present = [0] THEN 1 ELSE 0 END) AS removed
}
RETURN what, layer, added, removed ORDER BY what, layer
"""

# method.md 6.4: the 95th-percentile difference (Fig. 3 left). For A and B separately keep the edges
# with |score| >= the $pct percentile of |score| over that circuit's edges; added/removed edges come
# from the filtered sets, added/removed nodes from the unfiltered ones; `degree` is each node's degree
# in the filtered B graph (the figure's grey level).
DIFF_PERCENTILE = _GIVEN_CHECKPOINTS + _SELECT + _ENDPOINTS + """
WITH pos, collect({key: key, s: s, src: src, dst: dst}) AS edges
WITH pos, edges, [e IN edges | abs(e.s)] AS mags
UNWIND mags AS m
WITH pos, edges, percentileCont(m, $pct / 100.0) AS threshold
WITH pos, edges, threshold, [e IN edges WHERE abs(e.s) >= threshold] AS kept
WITH collect({pos: pos, edges: edges, kept: kept, threshold: threshold}) AS cs
WITH [c IN cs WHERE c.pos = 0][0] AS a, [c IN cs WHERE c.pos = 1][0] AS b
WITH a, b, [e IN a.kept | e.key] AS ka, [e IN b.kept | e.key] AS kb
CALL (a) { UNWIND a.edges AS e UNWIND [e.src, e.dst] AS x RETURN collect(DISTINCT x) AS na }
CALL (b) { UNWIND b.edges AS e UNWIND [e.src, e.dst] AS x RETURN collect(DISTINCT x) AS nb }
WITH a, b, ka, kb, [x IN nb WHERE NOT x IN na] AS added_nodes, [x IN na WHERE NOT x IN nb] AS removed_nodes
CALL (ka, kb) {
  UNWIND ka + kb AS key
  WITH key, count(*) AS c
  WITH key, c, key IN kb AS in_b
  RETURN [k IN collect(CASE WHEN c = 1 AND in_b THEN key END) WHERE k IS NOT NULL] AS added_edges,
         [k IN collect(CASE WHEN c = 1 AND NOT in_b THEN key END) WHERE k IS NOT NULL] AS removed_edges
}
CALL (b) {
  UNWIND b.kept AS e
  UNWIND [e.src, e.dst] AS node
  WITH node, count(*) AS degree ORDER BY node
  RETURN collect([node, degree]) AS degree
}
RETURN a.threshold AS threshold_a, b.threshold AS threshold_b, size(ka) AS kept_a, size(kb) AS kept_b,
       added_edges, removed_edges, added_nodes, removed_nodes, degree
"""

# method.md 6.2-6.3 and 7: Jaccard similarity of the edge sets and of the node sets of A and B.
JACCARD = _GIVEN_CHECKPOINTS + _SELECT + _ENDPOINTS + """
WITH collect({pos: pos, key: key, src: src, dst: dst}) AS rows
CALL (rows) {
  UNWIND rows AS row
  WITH row.key AS key, count(*) AS c
  RETURN sum(CASE WHEN c = 2 THEN 1 ELSE 0 END) AS edge_inter, count(*) AS edge_union
}
CALL (rows) {
  UNWIND rows AS row
  UNWIND [row.src, row.dst] AS node
  WITH node, count(DISTINCT row.pos) AS c
  RETURN sum(CASE WHEN c = 2 THEN 1 ELSE 0 END) AS node_inter, count(*) AS node_union
}
RETURN edge_inter, edge_union, toFloat(edge_inter) / edge_union AS edge_jaccard,
       node_inter, node_union, toFloat(node_inter) / node_union AS node_jaccard
"""

# method.md 5: Overlap_k(A, B) = |Top_k(A) ∩ Top_k(B)|, Top_k by |score| (ties: smaller key first).
OVERLAP = _GIVEN_CHECKPOINTS + _SELECT + """
WITH pos, key, s ORDER BY pos, abs(s) DESC, key
WITH pos, collect(key) AS ranked
WITH collect(ranked) AS lists
UNWIND $ks AS k
CALL (lists, k) {
  UNWIND lists[0][..k] + lists[1][..k] AS key
  WITH key, count(*) AS c
  RETURN sum(CASE WHEN c = 2 THEN 1 ELSE 0 END) AS overlap
}
RETURN k, overlap, size(lists[0]) AS size_a, size(lists[1]) AS size_b
"""

# method.md 4 (phase 1): over the union of edge keys, delta = |s_B - s_A| for an edge in both,
# |s| for an edge in one; summed per source layer (`input` = layer 0); the top $top layers.
CRITICAL_LAYERS = _GIVEN_CHECKPOINTS + _SELECT + _ENDPOINTS + """
WITH key, src, collect({pos: pos, s: s}) AS entries
WITH """ + _LAYER_OF_SRC + """ AS layer,
     CASE size(entries) WHEN 2 THEN abs(entries[0].s - entries[1].s) ELSE abs(entries[0].s) END AS delta
WITH layer, sum(delta) AS delta
ORDER BY delta DESC, layer
WITH collect({layer: layer, delta: delta}) AS ranked
RETURN [x IN ranked[..$top] | x.layer] AS layers, [x IN ranked[..$top] | x.delta] AS deltas,
       [x IN ranked | x.layer] AS all_layers, [x IN ranked | x.delta] AS all_deltas
"""

# method.md 6.6: does node change explain edge change? (a) the rebuttal's bound: changed nodes x mean
# node degree (averaged over A and B) vs. actual edge changes; (b) the code's version: the share of
# changed edges incident to a changed node (q/k/v suffixes stripped: incidence is by component).
NODE_BOUND = _GIVEN_CHECKPOINTS + _SELECT + _ENDPOINTS + """
WITH collect({pos: pos, key: key, src: src, dst: dst}) AS rows
CALL (rows) {
  UNWIND rows AS row
  UNWIND [row.src, row.dst] AS node
  WITH node, collect(DISTINCT row.pos) AS present
  RETURN collect(CASE WHEN size(present) = 1 THEN node END) AS changed_nodes,
         sum(CASE WHEN 0 IN present THEN 1 ELSE 0 END) AS nodes_a,
         sum(CASE WHEN 1 IN present THEN 1 ELSE 0 END) AS nodes_b
}
CALL (rows, changed_nodes) {
  UNWIND rows AS row
  WITH row.key AS key, row.src AS src, row.dst AS dst, collect(row.pos) AS present
  RETURN sum(CASE WHEN size(present) = 1 THEN 1 ELSE 0 END) AS changed_edges,
         sum(CASE WHEN size(present) = 1 AND (src IN changed_nodes OR dst IN changed_nodes)
                  THEN 1 ELSE 0 END) AS incident_changed_edges,
         sum(CASE WHEN 0 IN present THEN 1 ELSE 0 END) AS edges_a,
         sum(CASE WHEN 1 IN present THEN 1 ELSE 0 END) AS edges_b
}
WITH size(changed_nodes) AS changed_nodes, nodes_a, nodes_b, changed_edges, incident_changed_edges,
     edges_a, edges_b,
     (2.0 * edges_a / nodes_a + 2.0 * edges_b / nodes_b) / 2.0 AS mean_degree
RETURN changed_nodes, changed_edges, mean_degree, changed_nodes * mean_degree AS bound,
       CASE WHEN changed_nodes = 0 THEN null ELSE changed_edges / (changed_nodes * mean_degree) END
         AS actual_over_bound,
       incident_changed_edges,
       CASE WHEN changed_edges = 0 THEN null ELSE toFloat(incident_changed_edges) / changed_edges END
         AS incident_share,
       nodes_a, nodes_b, edges_a, edges_b
"""

# method.md 5: union of A and B at head level. Nodes: OR; edges: union of keys, the average score
# for an edge in both, its own score otherwise; then the top $max_edges by |score| (ties: key).
UNION_EDGES = _GIVEN_CHECKPOINTS + _SELECT + """
WITH key, collect(s) AS ss
WITH key, CASE size(ss) WHEN 2 THEN (ss[0] + ss[1]) / 2.0 ELSE ss[0] END AS s
ORDER BY abs(s) DESC, key
WITH collect({key: key, s: s}) AS merged
UNWIND CASE WHEN $max_edges IS NULL THEN merged ELSE merged[..$max_edges] END AS e
RETURN e.key AS key, e.s AS s
"""

# The keys a prefix definition (top_n, top_frac, threshold, percentile) selects in each checkpoint of
# $uids, at the stored level, before pruning (queries.api.Store prunes them).
SELECTED_PREFIX = """
UNWIND $uids AS uid
MATCH (c:Checkpoint {uid: uid}) WHERE c.complete
WITH c, c.keys AS keys, c.n_edges AS n,
     CASE WHEN $mode IN ['threshold', 'percentile'] THEN c.scores ELSE [] END AS scores
WITH c, keys, scores, n,
     CASE WHEN $mode = 'percentile' AND n > 1 THEN ($value / 100.0) * (n - 1) ELSE 0.0 END AS x
WITH c, keys, scores, n,
     CASE $mode
       WHEN 'percentile' THEN abs(scores[n - 1 - toInteger(floor(x))])
            + (x - floor(x)) * (abs(scores[n - 1 - toInteger(ceil(x))]) - abs(scores[n - 1 - toInteger(floor(x))]))
       ELSE $value END AS t
WITH c, keys, CASE $mode
       WHEN 'top_n' THEN toInteger($value)
       WHEN 'top_frac' THEN toInteger(floor($value * n))
       ELSE size([s IN scores WHERE abs(s) >= t]) END AS cut
RETURN c.uid AS uid, c.step AS step, c.run AS run, keys[..cut] AS keys
"""

# Keys and scores of one circuit (for exports and tests).
CIRCUIT_EDGES = _GIVEN_CHECKPOINTS + _SELECT + """
RETURN key, s ORDER BY abs(s) DESC, key
"""

RUNS = """
MATCH (r:Run)
OPTIONAL MATCH (r)-[:HAS_CHECKPOINT]->(c:Checkpoint) WHERE c.complete
WITH r, c ORDER BY c.step
RETURN r.id AS run, r.model AS model, r.task AS task, r.method AS method, r.arch AS arch,
       collect(c.step) AS steps
ORDER BY run
"""

CHECKPOINT_METRICS = """
MATCH (c:Checkpoint {run: $run}) WHERE c.complete
RETURN c.step AS step, c.epoch AS epoch, c.accuracy AS accuracy, c.faithfulness AS faithfulness,
       c.circuit_accuracy AS circuit_accuracy, c.n_edges AS n_edges, c.n_in_graph AS n_in_graph,
       c.level AS level
ORDER BY step
"""

# Every scored edge of one checkpoint, in rank order, with its own circuit (1-based ranks): exports.
CHECKPOINT_ARRAYS = """
MATCH (c:Checkpoint {uid: $uid}) WHERE c.complete
RETURN c.level AS level, c.keys AS keys, c.scores AS scores, c.in_graph AS in_graph
"""
