"""Reading EAP-IG graph JSON: hannamw/EAP-IG `Graph.to_json` files (every edge, with `in_graph` flags
and q/k/v edges) and the paper's collapsed files (in-graph head-level edges only).

Everything is validated before anything is written: a malformed file gets one error naming the file and
the problem.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from analysis.errors import UserError, read_json_file
from queries.components import Architecture
from queries.writer import CheckpointData


@dataclass
class EapGraphFile:
    path: Path
    arch: Architecture
    level: str  # 'qkv' or 'head'
    full: bool  # every edge of the graph present (else in-graph edges only)
    names: list[str]
    scores: list[float]
    in_graph: list[bool]
    nodes_in_graph: list[str]

    def checkpoint(self, step: int, meta: dict | None = None) -> CheckpointData:
        info = {"source_file": str(self.path), "source_format": "eap-ig-json",
                "source_full_graph": self.full}
        info.update(meta or {})
        return CheckpointData(step=step, names=self.names, scores=self.scores, in_graph=self.in_graph,
                              level=self.level, meta=info)


def read_eap_json(path: Path | str, model_config: dict | None = None) -> EapGraphFile:
    """Parse and validate one EAP-IG graph JSON file."""
    path = Path(path)

    def fail(problem: str):
        raise UserError(f"{path}: {problem}")

    doc = read_json_file(path, "file")
    if not isinstance(doc, dict):
        fail("expected a JSON object with 'cfg', 'nodes' and 'edges'")
    cfg = dict(doc.get("cfg") or {})
    cfg.update(model_config or {})
    for key in ("n_layers", "n_heads"):
        if not isinstance(cfg.get(key), int) or isinstance(cfg.get(key), bool) or cfg[key] < 1:
            fail(f"cfg.{key} missing or not a positive integer (give it with --model-config)")
    parallel = cfg.get("parallel_attn_mlp")
    if not isinstance(parallel, bool):
        fail("cfg.parallel_attn_mlp missing or not true/false (give it with --model-config)")
    try:
        arch = Architecture(cfg["n_layers"], cfg["n_heads"], parallel, cfg.get("n_kv_heads"))
    except UserError as exc:
        fail(str(exc))
    nodes, edges = doc.get("nodes"), doc.get("edges")
    if not isinstance(nodes, dict) or not isinstance(edges, dict):
        fail("'nodes' and 'edges' must be JSON objects")
    if not edges:
        fail("no edges")
    for name, flag in nodes.items():
        if name not in arch.ci:
            fail(f"node {name!r} is not in a {arch.key} graph")
        if not isinstance(flag, bool):
            fail(f"node {name!r}: in_graph must be true/false")
    names, scores, flags = [], [], []
    has_qkv = None
    for name, entry in edges.items():
        if not isinstance(entry, dict) or "score" not in entry:
            fail(f"edge {name!r}: expected {{\"score\": number, \"in_graph\": bool}}")
        score, flag = entry["score"], entry.get("in_graph", True)
        if not isinstance(score, (int, float)) or isinstance(score, bool) or not math.isfinite(score):
            fail(f"edge {name!r}: score {score!r} is not a finite number")
        if not isinstance(flag, bool):
            fail(f"edge {name!r}: in_graph must be true/false")
        try:
            _, _, dst_ci, qkv = arch.edge_key(name)
        except UserError as exc:
            fail(str(exc))
        if arch.components[dst_ci]["kind"] == "attn":
            if has_qkv is None:
                has_qkv = qkv is not None
            elif has_qkv != (qkv is not None):
                fail(f"edge {name!r}: mixes q/k/v-level and head-level edges into heads")
        names.append(name)
        scores.append(float(score))
        flags.append(flag)
    level = "qkv" if has_qkv in (None, True) else "head"
    full = len(names) == arch.n_edges(level)
    if not any(flags):
        fail("no edge is in the graph (in_graph all false)")
    return EapGraphFile(path=path, arch=arch, level=level, full=full, names=names, scores=scores,
                        in_graph=flags, nodes_in_graph=[n for n, f in nodes.items() if f])
