"""Every write of the circuit store, named and parameterized (values are never formatted in):
architectures, runs and their tags, checkpoints and their circuit edges, and deletes."""

MERGE_ARCHITECTURE = """
MERGE (a:Architecture {key: $key})
  ON CREATE SET a.n_layers = $n_layers, a.n_heads = $n_heads, a.n_kv_heads = $n_kv_heads,
                a.parallel_attn_mlp = $parallel, a.n_components = $n_components, a.n_edges = $n_edges
WITH a
UNWIND $components AS c
MERGE (n:Component {arch: $key, name: c.name})
  ON CREATE SET n.ci = c.ci, n.kind = c.kind, n.layer = c.layer, n.head = c.head
MERGE (a)-[:HAS_COMPONENT]->(n)
"""

MERGE_RUN = """
MATCH (a:Architecture {key: $arch})
MERGE (r:Run {id: $id})
  ON CREATE SET r += $props, r.arch = $arch, r.created = datetime()
WITH r, a
CALL (r, a) {
  WITH r, a WHERE r.arch = a.key
  MERGE (r)-[:ON_ARCH]->(a)
}
RETURN r.arch AS arch, r.config_hash AS config_hash
"""

COMPLETE_STEPS = """
MATCH (c:Checkpoint {run: $run}) WHERE c.complete
RETURN c.step AS step ORDER BY step
"""

# $meta also carries the own circuit's precomputed head-level sets (queries/writer.py own_circuit_sets)
# and the leading ranks again (top_keys, top_scores, n_top: queries/writer.py top_arrays).
# One statement: the node and its arrays (hand-made checkpoints in tests; the writer uses the two below).
CREATE_CHECKPOINT = """
MATCH (r:Run {id: $run})
CREATE (r)-[:HAS_CHECKPOINT]->(c:Checkpoint {uid: $uid, run: $run, step: $step, level: $level,
                                             complete: false, started: datetime()})
SET c += $meta
SET c.keys = $keys, c.scores = $scores, c.in_graph = $in_graph,
    c.n_edges = size($keys), c.n_in_graph = size($in_graph)
RETURN c.uid AS uid
"""

# The writer creates the (incomplete) node first, then sets its arrays in one transaction WHILE its
# circuit relationships are created in another (queries/writer.py write_checkpoint): the two touch
# different nodes, and the node existing first means a crash leaves nothing remove_incomplete misses.
NEW_CHECKPOINT = """
MATCH (r:Run {id: $run})
CREATE (r)-[:HAS_CHECKPOINT]->(c:Checkpoint {uid: $uid, run: $run, step: $step, level: $level,
                                             complete: false, started: datetime()})
RETURN c.uid AS uid
"""

SET_CHECKPOINT_ARRAYS = """
MATCH (c:Checkpoint {uid: $uid})
SET c += $meta
SET c.keys = $keys, c.scores = $scores, c.in_graph = $in_graph,
    c.n_edges = size($keys), c.n_in_graph = size($in_graph)
RETURN c.uid AS uid
"""

# Components are fetched once per batch, ordered by their index, and addressed by position. The rows
# come as parallel columns ($src, $dst component indices; $k key, $s score, $r rank): one list per
# column packs and travels faster than a list per row. ck (the checkpoint's uid) is the only link to the
# checkpoint: run and step (written up to ec65292, read by nothing) are on the (:Checkpoint) node.
CREATE_CIRCUIT_EDGES = """
MATCH (n:Component {arch: $arch})
WITH n ORDER BY n.ci
WITH collect(n) AS comps
UNWIND range(0, size($k) - 1) AS i
WITH comps[$src[i]] AS a, comps[$dst[i]] AS b, i
CREATE (a)-[:CIRCUIT_EDGE {ck: $ck, k: $k[i], s: $s[i], r: $r[i]}]->(b)
"""

# One transaction: the new version becomes visible and every older one of (run, step) is retired.
COMPLETE_CHECKPOINT = """
MATCH (c:Checkpoint {uid: $uid})
OPTIONAL MATCH (old:Checkpoint {run: c.run, step: c.step}) WHERE old.uid <> c.uid
SET old.complete = false, old.retired = true
SET c.complete = true, c.finished = datetime()
RETURN [u IN collect(old.uid) WHERE u IS NOT NULL] AS retired
"""

INCOMPLETE_CHECKPOINTS = """
MATCH (c:Checkpoint {run: $run, step: $step}) WHERE NOT c.complete
RETURN c.uid AS uid
"""

DELETE_CIRCUIT_EDGES_BATCH = """
MATCH ()-[e:CIRCUIT_EDGE]->() WHERE e.ck = $ck
WITH e LIMIT $limit
DELETE e
RETURN count(*) AS deleted
"""

DELETE_CHECKPOINT = "MATCH (c:Checkpoint {uid: $uid}) DETACH DELETE c"

RUN_CHECKPOINT_UIDS = "MATCH (c:Checkpoint {run: $run}) RETURN c.uid AS uid"

DELETE_RUN = "MATCH (r:Run {id: $run}) DETACH DELETE r"

# Tags a run with what it is (e.g. robustness runs: analysis, of_run, model_label).
TAG_RUN = """
MATCH (r:Run {id: $id})
SET r += $tags
RETURN r.id AS id
"""
