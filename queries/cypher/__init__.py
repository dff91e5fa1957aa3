"""Every Cypher statement of circuitshift, named and parameterized (values are never formatted in), one
module per concern:

    fragments    the pieces the analysis statements are assembled from (checkpoint selection, the
                 circuit-definition cut, edge endpoints, layers, churn)
    questions    the paper's questions and the reads they resolve circuits with
    runs         what is stored: runs, their metrics, tags and analysis runs (robustness, noise)
    writes       the circuit store's writes (architectures, runs, checkpoints) and deletes
    experiments  CircuitLoRA plans and method comparisons
    views        Browser difference views (materialised, removable)
    guide        the Browser guide's self-contained queries
    admin        server checks (heap, ping, census) and the first-login password change

The schema (constraints and indexes) is `queries/schema.py`, applied whole by `circuitshift db init`.
"""
