"""Every write statement of the circuit store, named and parameterized (values are never formatted in).

The analysis queries live in `queries/library.py`; the schema in `queries/schema.py`.
"""

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

CREATE_CHECKPOINT = """
MATCH (r:Run {id: $run})
CREATE (r)-[:HAS_CHECKPOINT]->(c:Checkpoint {uid: $uid, run: $run, step: $step, level: $level,
                                             complete: false, started: datetime()})
SET c += $meta
SET c.keys = $keys, c.scores = $scores, c.in_graph = $in_graph,
    c.n_edges = size($keys), c.n_in_graph = size($in_graph)
RETURN c.uid AS uid
"""

# Components are fetched once per batch, ordered by their index, and addressed by position.
CREATE_CIRCUIT_EDGES = """
MATCH (n:Component {arch: $arch})
WITH n ORDER BY n.ci
WITH collect(n) AS comps
UNWIND $rows AS row
WITH comps[row[0]] AS a, comps[row[1]] AS b, row
CREATE (a)-[:CIRCUIT_EDGE {ck: $ck, run: $run, step: $step, k: row[2], s: row[3], r: row[4]}]->(b)
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

# -- Read-only checks of the fault-injection tests and benchmarks (tests/faults.py) ------------------

# Every checkpoint node of a run, complete or not, with its circuit relationships counted: a checkpoint
# that landed twice, or leftovers of a write cut short, show up here.
CHECKPOINT_CENSUS = """
MATCH (c:Checkpoint {run: $run})
OPTIONAL MATCH ()-[e:CIRCUIT_EDGE]->() WHERE e.ck = c.uid
RETURN c.step AS step, c.complete AS complete, c.n_in_graph AS n_in_graph, count(e) AS rels
ORDER BY step
"""

# A run's complete checkpoints as stored (every property) and their circuit edges, to compare runs.
CHECKPOINT_CONTENTS = """
MATCH (c:Checkpoint {run: $run}) WHERE c.complete
OPTIONAL MATCH (a:Component)-[e:CIRCUIT_EDGE]->(b:Component) WHERE e.ck = c.uid
WITH c, e, a, b ORDER BY e.r
RETURN c.step AS step, properties(c) AS props,
       [x IN collect([a.name, b.name, e.k, e.s, e.r]) WHERE x[0] IS NOT NULL] AS circuit
ORDER BY step
"""

# The server JVM's heap (bytes: used, committed, max) and one memory pool's (e.g. G1 Old Gen: what
# survives collections, where a leak would show).
SERVER_HEAP = """
CALL dbms.queryJmx($bean) YIELD attributes
RETURN attributes.HeapMemoryUsage.value.properties AS heap
"""

SERVER_MEMORY_POOL = """
CALL dbms.queryJmx($bean) YIELD attributes
RETURN attributes.Usage.value.properties AS usage
"""

# Whether a database answers a query at all (a restarted server opens its port before its databases).
PING = "RETURN 1 AS ok"
