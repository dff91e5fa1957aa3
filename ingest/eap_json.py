"""Reading EAP-IG graph JSON for the store: hannamw/EAP-IG `Graph.to_json` files (every edge, with
`in_graph` flags and q/k/v edges) and the paper's collapsed files (in-graph head-level edges only).

The reader and its checks are `analysis.eap_json.read_graph`'s (one reader for the CLI, the store and
circuits); this module turns its result into a checkpoint. Everything is validated before anything is
written: a malformed file gets one error naming the file and the problem.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from analysis.eap_json import read_graph
from queries.components import Architecture
from queries.writer import CheckpointData


@dataclass(frozen=True)
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
    g = read_graph(path, model_config, hint=" (give it with --model-config)")
    s = g.spec
    return EapGraphFile(path=g.path, arch=Architecture(s.n_layers, s.n_heads, s.parallel_attn_mlp, s.n_kv_heads),
                        level=g.level, full=g.full, names=list(g.names), scores=list(g.scores),
                        in_graph=list(g.in_graph), nodes_in_graph=list(g.nodes_in_graph))
