"""Server administration and read-only checks: the first login's password change, whether a database
answers, the server's heap, and the census of a run's checkpoints (fault-injection tests, benchmarks)."""

from __future__ import annotations

# A fresh server's `neo4j`/`neo4j` login must change its password before anything else runs.
SET_INITIAL_PASSWORD = "ALTER CURRENT USER SET PASSWORD FROM 'neo4j' TO $new"

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
