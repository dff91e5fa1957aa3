"""Fragments the analysis statements are assembled from, once, at import (constant text only).

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

Rows produced by SELECT: (pos, key, s) = position of the circuit in the list of checkpoints, edge key
at the chosen level, signed score (summed over q/k/v at head level).
"""

from __future__ import annotations

# The ranks of a checkpoint's own circuit, or those the caller chose ($mode = 'ranks').
OWN_RANKS = "CASE WHEN $mode = 'ranks' THEN $ranks[toString(c.uid)] ELSE c.in_graph END"

# What cut() reads: `scores` only when the definition needs them (a whole `scores` array is the
# costliest read of a checkpoint) and the number of scored edges. Expects `c` in scope.
CUT_INPUTS = """CASE WHEN $mode IN ['threshold', 'percentile'] THEN c.scores ELSE [] END AS scores,
     c.n_edges AS n"""


def cut(carry: str) -> str:
    """How many leading (rank-ordered) edges the definition keeps, as `cut` (-1: keep the ranks of
    `in_graph`/'ranks'); the percentile is interpolated linearly over |score|. Expects `scores`, `n`
    (CUT_INPUTS) and the variables of `carry` in scope; keeps `carry` and cut."""
    return f"""
WITH {carry}, scores, n,
     CASE WHEN $mode = 'percentile' AND n > 1 THEN ($value / 100.0) * (n - 1) ELSE 0.0 END AS x
WITH {carry}, scores, n,
     CASE $mode
       WHEN 'percentile' THEN abs(scores[n - 1 - toInteger(floor(x))])
            + (x - floor(x)) * (abs(scores[n - 1 - toInteger(ceil(x))]) - abs(scores[n - 1 - toInteger(floor(x))]))
       ELSE $value END AS t
WITH {carry},
     CASE $mode
       WHEN 'in_graph' THEN -1
       WHEN 'ranks' THEN -1
       WHEN 'top_n' THEN toInteger($value)
       WHEN 'top_frac' THEN toInteger(floor($value * n))
       ELSE size([s IN scores WHERE abs(s) >= t]) END AS cut
"""


def leading(array: str, m: str) -> str:
    """Checkpoint `c`'s `keys` or `scores` array, at least its first `m` ranks: the stored leading
    tenth (`top_keys`/`top_scores`, queries/writer.py top_arrays) when it covers them, else the whole
    array (always for a checkpoint written before the leading arrays: its n_top is null)."""
    return f"CASE WHEN c.n_top >= {m} THEN c.top_{array} ELSE c.{array} END"


# How many leading ranks a selection reads: its cut, or the last (largest) of its ranks.
NEEDED = "CASE WHEN cut < 0 THEN in_graph[-1] ELSE cut END"


# Whether checkpoint `c`'s own circuit at head level is read from its precomputed arrays (written by
# queries/writer.py since issue 19; a checkpoint written before has none and takes the ranked path).
OWN_HEAD = "($mode = 'in_graph' AND $level = 'head' AND c.head_keys IS NOT NULL)"

# The selected edges with their scores. Expects `c` (a Checkpoint) and `pos` in scope.
SELECT = """
CALL (c) {
  WITH c WHERE """ + OWN_HEAD + """
  WITH c.head_keys AS keys, c.head_scores AS scores
  UNWIND range(0, size(keys) - 1) AS i
  RETURN keys[i] AS key, scores[i] AS s
  UNION ALL
  WITH c WHERE NOT """ + OWN_HEAD + """
  WITH c, """ + OWN_RANKS + """ AS in_graph, """ + CUT_INPUTS
SELECT += cut("c, in_graph") + """
  WITH c, in_graph, cut, """ + NEEDED + """ AS m
  WITH in_graph, cut, """ + leading("keys", "m") + """ AS keys, """ + leading("scores", "m") + """ AS scores
  UNWIND CASE WHEN cut < 0 THEN [r IN in_graph | r - 1] ELSE range(0, cut - 1) END AS i
  WITH CASE $level WHEN 'head' THEN keys[i] / 4 ELSE keys[i] END AS key, scores[i] AS s
  RETURN key, sum(s) AS s
}
WITH pos, key, s
"""

# The source/destination component of an edge key at the chosen level.
ENDPOINTS = """
WITH pos, key, s, CASE $level WHEN 'head' THEN key ELSE key / 4 END AS pair
WITH pos, key, s, pair / $n_comp AS src, pair % $n_comp AS dst
"""

LAYER_OF_SRC = "CASE WHEN src = 0 THEN 0 ELSE (src - 1) / $hp1 END"
LAYER_OF_NODE = "CASE WHEN node = 0 THEN 0 WHEN node = $n_comp - 1 THEN $n_layers ELSE (node - 1) / $hp1 END"

# Checkpoints given by uid, in the order given ($uids).
GIVEN_CHECKPOINTS = """
UNWIND range(0, size($uids) - 1) AS pos
MATCH (c:Checkpoint {uid: $uids[pos]}) WHERE c.complete
WITH c, pos
"""

# The selected circuits of $uids (A = 0, B = 1) as rows (pos, key, s, src, dst).
GIVEN_ENDPOINTS = GIVEN_CHECKPOINTS + SELECT + ENDPOINTS
