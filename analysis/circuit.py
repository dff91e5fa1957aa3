"""Circuits from edge scores: selection, pruning, q/k/v -> head collapse, EAP-IG graph JSON.

The public names of three modules, importable from here:

* :mod:`analysis.circuit_type`: the one circuit type :class:`Circuit` (a graph shape, a level ``"qkv"``
  or ``"head"``, the in-circuit edges with their signed scores, the in-circuit nodes and optionally
  every edge's score), edge levels, :func:`prune_circuit` (method.md 2.4 step 3), :func:`collapse`.
* :mod:`analysis.selection`: :func:`select_circuit` and the :data:`SELECTORS` registry (top_n,
  top_frac, threshold, percentile, greedy; method.md 2.4), on a validated :class:`ScoreTable`.
* :mod:`analysis.eap_json`: hannamw/EAP-IG graph JSON, :func:`to_eap_json` / :func:`from_eap_json`.
"""

from __future__ import annotations

from analysis.circuit_type import (Circuit, CircuitEdge, CircuitNode, Level, Scores, collapse, empty_circuit,
                                   full_circuit, head_name, infer_level, level_edges, level_index, prune_circuit,
                                   split_edge_name)
from analysis.eap_json import from_eap_json, to_eap_json
from analysis.selection import (SELECTORS, Selector, ScoreTable, score_table, select_circuit, select_greedy,
                                select_percentile, select_threshold, select_top_frac, select_top_n)

__all__ = ["SELECTORS", "Circuit", "CircuitEdge", "CircuitNode", "Level", "ScoreTable", "Scores", "Selector",
           "collapse", "empty_circuit", "from_eap_json", "full_circuit", "head_name", "infer_level", "level_edges",
           "level_index", "prune_circuit", "score_table", "select_circuit", "select_greedy", "select_percentile",
           "select_threshold", "select_top_frac", "select_top_n", "split_edge_name", "to_eap_json"]
