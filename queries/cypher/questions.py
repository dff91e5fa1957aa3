"""The paper's questions as named, parameterized Cypher statements, and the reads that resolve circuits.

Formulas cite `../shared/spec/method.md` (section numbers below); parameters and the rows the selection
yields are described in `queries/cypher/fragments.py`, which every statement here is assembled from.
"""

from __future__ import annotations

from queries.cypher.fragments import (CUT_INPUTS, GIVEN_CHECKPOINTS, GIVEN_ENDPOINTS, LAYER_OF_NODE,
                                      LAYER_OF_SRC, SELECT, cut, leading)


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
       collect(c.uid) AS uids, collect(c.head_keys IS NOT NULL) AS precomputed
"""

# method.md 6.1-6.2 for any definition: each complete checkpoint's selected edge keys at the stored
# level, in step order (the prefix the definition cuts, or the own circuit's keys for in_graph), read
# from the leading arrays when they cover it. queries.api.Store prunes them and counts the symmetric
# differences: one read of ~5% of the keys, where counting them in Cypher unwound a row per edge and
# took 2x longer than pulling the same keys into Python (BENCHMARKS.md, issue 19).
RUN_SELECTED_KEYS = """
MATCH (c:Checkpoint {run: $run}) WHERE c.complete
WITH c, """ + CUT_INPUTS + cut("c") + """WITH c, cut, CASE WHEN cut < 0 THEN c.in_graph ELSE [] END AS ranks
WITH c, cut, ranks, """ + leading("keys", "CASE WHEN cut < 0 THEN ranks[-1] ELSE cut END") + """ AS keys
RETURN c.uid AS uid, c.step AS step,
       CASE WHEN cut < 0 THEN [r IN ranks | keys[r - 1]] ELSE keys[..cut] END AS keys
ORDER BY step
"""

# method.md 6.1-6.2 for the stored circuit at head level, from the sets written with each checkpoint
# (queries/writer.py own_circuit_sets): per transition, the members of one set missing from the other's
# mask. One pass over list elements, no rows per edge: used when every checkpoint of the run has them.
CHURN_OWN_HEAD = """
MATCH (c:Checkpoint {run: $run}) WHERE c.complete
WITH c ORDER BY c.step
WITH collect({edges: c.head_keys, edge_mask: c.head_mask, nodes: c.circuit_nodes,
              node_mask: c.node_mask}) AS cs
UNWIND range(0, size(cs) - 2) AS t
WITH t, cs[t] AS a, cs[t + 1] AS b
RETURN t AS transition,
       size([k IN b.edges WHERE NOT a.edge_mask[k]]) AS edges_added,
       size([k IN a.edges WHERE NOT b.edge_mask[k]]) AS edges_removed, size(a.edges) AS edges_before,
       size([x IN b.nodes WHERE NOT a.node_mask[x]]) AS nodes_added,
       size([x IN a.nodes WHERE NOT b.node_mask[x]]) AS nodes_removed, size(a.nodes) AS nodes_before
ORDER BY transition
"""

# method.md 6.4 with 6.5's per-layer grouping: added/removed nodes and edges between circuit A
# ($uids[0]) and circuit B ($uids[1]); an edge's layer is its source's layer, `input` = layer 0.
PER_LAYER = GIVEN_ENDPOINTS + """
WITH collect({pos: pos, key: key, src: src, dst: dst}) AS rows
CALL (rows) {
  UNWIND rows AS row
  WITH row.key AS key, row.src AS src, collect(row.pos) AS present
  WITH """ + LAYER_OF_SRC + """ AS layer, present
  RETURN 'edge' AS what, layer,
         sum(CASE WHEN present = [1] THEN 1 ELSE 0 END) AS added,
         sum(CASE WHEN present = [0] THEN 1 ELSE 0 END) AS removed
  UNION ALL
  UNWIND rows AS row
  UNWIND [row.src, row.dst] AS node
  WITH node, collect(DISTINCT row.pos) AS present
  WITH """ + LAYER_OF_NODE + """ AS layer, present
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
DIFF_PERCENTILE = GIVEN_ENDPOINTS + """
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
JACCARD = GIVEN_ENDPOINTS + """
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
OVERLAP = GIVEN_CHECKPOINTS + SELECT + """
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
CRITICAL_LAYERS = GIVEN_ENDPOINTS + """
WITH key, src, collect({pos: pos, s: s}) AS entries
WITH """ + LAYER_OF_SRC + """ AS layer,
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
NODE_BOUND = GIVEN_ENDPOINTS + """
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

# method.md 5: union of A and B at head level, read side: each circuit's head-level keys and scores
# as two lists (pos 0 = A, 1 = B; a circuit with no edge has no row). queries.api.Store merges them
# (an edge in both gets the average score, one in one its own; top $max_edges by |score|, ties by
# key): sorting and grouping ~100k rows in Cypher took 3.0 s at opt-6.7b scale.
UNION_SIDES = GIVEN_CHECKPOINTS + SELECT + """
WITH pos, collect(key) AS keys, collect(s) AS scores
RETURN pos, keys, scores ORDER BY pos
"""

# The keys a prefix definition (top_n, top_frac, threshold, percentile) selects in each checkpoint of
# $uids, at the stored level, before pruning (queries.api.Store prunes them).
SELECTED_PREFIX = """
UNWIND $uids AS uid
MATCH (c:Checkpoint {uid: uid}) WHERE c.complete
WITH c, """ + CUT_INPUTS + cut("c") + """RETURN c.uid AS uid, c.step AS step, c.run AS run, (""" + leading("keys", "cut") + """)[..cut] AS keys
"""

# Keys and scores of one circuit (for exports and tests).
CIRCUIT_EDGES = GIVEN_CHECKPOINTS + SELECT + """
RETURN key, s ORDER BY abs(s) DESC, key
"""

# Every scored edge of one checkpoint, in rank order, with its own circuit (1-based ranks): exports.
CHECKPOINT_ARRAYS = """
MATCH (c:Checkpoint {uid: $uid}) WHERE c.complete
RETURN c.level AS level, c.keys AS keys, c.scores AS scores, c.in_graph AS in_graph
"""
