"""hannamw/EAP-IG's `Graph.to_pt` / `Graph.from_pt` file (MIB's circuit submission format).

The file is a `torch.save`d dict::

    cfg             {"n_layers", "n_heads", "parallel_attn_mlp", "d_model"}  (+ "n_kv_heads" when GQA)
    src_nodes       ["input", "a0.h0", ..., "m0", ...]            forward order, logits excluded
    dst_nodes       ["a0.h0<q>", ..., "a0.h0<k>", ..., "m0", ..., "logits"]
    edges_scores    float32 (n_src, n_dst): the score of every real edge, 0 elsewhere
    edges_in_graph  bool (n_src, n_dst): the circuit
    nodes_in_graph  bool (n_src,): the circuit's nodes (logits has no row)

This is exactly `analysis.graph.Graph`'s dense layout (sources x destinations, per layer q of every
head, then k, then v, then the MLP), so a circuit is written without re-indexing. The format holds
every edge's score, so only full q/k/v-level circuits (as every stored checkpoint is) can be written.
With grouped-query attention the k/v columns of the non-first heads of a group are not real edges
here; they are written as 0 / False.
"""

from __future__ import annotations

from pathlib import Path

import torch

from analysis.circuit import Circuit
from analysis.errors import UserError
from analysis.graph import GraphSpec, build_graph

REQUIRED = ("cfg", "src_nodes", "dst_nodes", "edges_scores", "edges_in_graph", "nodes_in_graph")


def to_eap_pt(c: Circuit, path: Path | str, d_model: int | None = None) -> dict:
    """Write ``c`` as a hannamw ``.pt`` graph file; returns the saved dict."""
    if c.level != "qkv" or c.all_scores is None:
        raise UserError("an eap-pt file holds every edge's score: export a q/k/v-level circuit with all its "
                        "scores (a stored checkpoint, without --level head)")
    graph = build_graph(c.spec)
    if len(c.all_scores) != len(graph.edges):
        raise UserError(f"an eap-pt file needs all {len(graph.edges)} edge scores; this circuit knows "
                        f"{len(c.all_scores)}")
    scores = graph.dict_to_scores(c.all_scores, dtype=torch.float64).to(torch.float32)
    in_graph = torch.zeros(graph.n_src, graph.n_dst, dtype=torch.bool)
    for name in c.edges:
        in_graph[graph.edge_position(name)] = True
    cfg = {"n_layers": c.spec.n_layers, "n_heads": c.spec.n_heads, "parallel_attn_mlp": c.spec.parallel_attn_mlp}
    if d_model is not None:
        cfg["d_model"] = int(d_model)
    if c.spec.n_kv_heads is not None and c.spec.n_kv_heads != c.spec.n_heads:
        cfg["n_kv_heads"] = c.spec.n_kv_heads
    doc = {"cfg": cfg, "src_nodes": list(graph.sources), "dst_nodes": list(graph.destinations),
           "edges_scores": scores, "edges_in_graph": in_graph,
           "nodes_in_graph": torch.tensor([n in c.nodes for n in graph.sources], dtype=torch.bool)}
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    torch.save(doc, p)
    return doc


def from_eap_pt(path: Path | str, spec: GraphSpec | None = None) -> Circuit:
    """Read a hannamw ``.pt`` graph file as a full q/k/v-level circuit (every score, the in-graph flags).

    With ``spec`` (e.g. the model's), a file of another shape is refused with one line."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such circuit file")
    try:  # weights_only: a circuit file is data, never code to unpickle
        doc = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one user-facing line
        raise UserError(f"{p}: not a readable torch graph file ({type(exc).__name__})") from None
    if not isinstance(doc, dict) or any(k not in doc for k in REQUIRED):
        missing = [k for k in REQUIRED if not isinstance(doc, dict) or k not in doc]
        raise UserError(f"{p}: not an EAP-IG .pt graph: missing {', '.join(missing)}")
    cfg = doc["cfg"]
    try:
        fspec = GraphSpec(int(cfg["n_layers"]), int(cfg["n_heads"]), bool(cfg["parallel_attn_mlp"]),
                          cfg.get("n_kv_heads"))
    except (KeyError, TypeError, ValueError, AttributeError):
        raise UserError(f"{p}: cfg needs n_layers, n_heads and parallel_attn_mlp") from None
    if spec is not None and (fspec.n_layers, fspec.n_heads, fspec.parallel_attn_mlp) != \
            (spec.n_layers, spec.n_heads, spec.parallel_attn_mlp):
        raise UserError(f"{p}: circuit shape {fspec.n_layers}x{fspec.n_heads} does not match the model's "
                        f"{spec.n_layers}x{spec.n_heads}")
    graph = build_graph(fspec)
    scores, flags = doc["edges_scores"], doc["edges_in_graph"]
    if list(doc["src_nodes"]) != list(graph.sources) or list(doc["dst_nodes"]) != list(graph.destinations):
        raise UserError(f"{p}: its node lists are not the {fspec.n_layers}x{fspec.n_heads} graph's")
    shape = (graph.n_src, graph.n_dst)
    if not (isinstance(scores, torch.Tensor) and isinstance(flags, torch.Tensor)) or \
            tuple(scores.shape) != shape or tuple(flags.shape) != shape:
        raise UserError(f"{p}: edges_scores and edges_in_graph must both be {shape[0]}x{shape[1]} tensors")
    if bool((flags.bool() & ~graph.mask).any()):
        raise UserError(f"{p}: edges_in_graph marks positions that are not edges of the graph")
    if not bool(torch.isfinite(scores[graph.mask].to(torch.float64)).all()):
        raise UserError(f"{p}: edges_scores holds a score that is not a finite number")
    node_flags = doc["nodes_in_graph"]
    if not isinstance(node_flags, torch.Tensor) or tuple(node_flags.shape) != (graph.n_src,):
        raise UserError(f"{p}: nodes_in_graph must be a tensor of {graph.n_src} flags")
    all_scores = graph.scores_to_dict(scores.to(torch.float64))
    rows, cols = flags.bool().nonzero(as_tuple=True)
    chosen = {graph.sources[r] + "->" + graph.destinations[c] for r, c in zip(rows.tolist(), cols.tolist())}
    edges = {n: s for n, s in all_scores.items() if n in chosen}
    # the file's node flags are the node set (under GQA a k/v edge is named after its group's first
    # head, which need not be in the circuit itself); logits has no flag: in when an edge reaches it
    nodes = {n for n, f in zip(graph.sources, node_flags.bool().tolist()) if f}
    if any(n.endswith("->logits") for n in edges):
        nodes.add("logits")
    return Circuit(fspec, "qkv", edges, frozenset(nodes), all_scores, {"source_file": str(p)})
