"""The paper's figures from plain data (lists and dicts; never a driver): matplotlib, Agg backend.

Every `plot_*` function draws one figure, saves `<out>/<name>.png`, and returns (and writes as
`<name>.json`) what was actually drawn, read back from the matplotlib artists (line y-data, bar
heights, scatter offsets), so tests compare the plotted values with the query results.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402

ADDED = "#104670"      # method.md 6.4
REMOVED = "#E47159"
KEPT = "#B0B0B0"
NOISE = "#9AA1AC"


def _save(fig, out: Path, name: str, drawn: dict) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / f"{name}.png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    (out / f"{name}.json").write_text(json.dumps(drawn, indent=1, default=float))
    return drawn


def _lines(ax) -> dict:
    return {ln.get_label(): [float(y) for y in ln.get_ydata()] for ln in ax.get_lines()
            if not ln.get_label().startswith("_")}


def _bars(ax) -> dict:
    out = {}
    for container in ax.containers:
        out[container.get_label()] = [float(p.get_height()) for p in container.patches]
    return out


def _none_to_nan(xs) -> list[float]:
    return [float("nan") if x is None else float(x) for x in xs]


def plot_accuracy_faithfulness(out: Path, steps: list, accuracy: list, faithfulness: list,
                               title: str = "") -> dict:
    """Fig. 2 left/middle: model accuracy and circuit faithfulness over checkpoints, both stored and
    drawn in percent (0-100)."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(steps, _none_to_nan(accuracy), "o-", color=ADDED, label="accuracy")
    ax.plot(steps, _none_to_nan(faithfulness), "s--", color=REMOVED, label="faithfulness")
    ax.set_xlabel("checkpoint (step)")
    ax.set_ylabel("%")
    top = max([100.0, *(y for y in _none_to_nan(accuracy) + _none_to_nan(faithfulness) if y == y)])
    ax.set_ylim(min([0.0, *(y for y in _none_to_nan(faithfulness) if y == y)]) - 2, top + 2)
    ax.set_title(title or "Accuracy and circuit faithfulness")
    ax.legend()
    ax.grid(alpha=0.3)
    drawn = {"steps": [float(s) for s in ax.get_lines()[0].get_xdata()], **_lines(ax)}
    return _save(fig, out, "accuracy_faithfulness", drawn)


def plot_churn(out: Path, transitions: list[str], nodes: list[int], edges: list[int],
               noise: dict | None = None, title: str = "") -> dict:
    """Fig. 3 top right: node and edge changes per transition; with a resampling-noise band
    (mean +- sd, dashed max) of the churn between circuits of ONE checkpoint on resampled data."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    drawn: dict = {"transitions": transitions}
    for ax, what, values, colour in ((axes[0], "nodes", nodes, ADDED), (axes[1], "edges", edges, REMOVED)):
        x = list(range(len(values)))
        ax.plot(x, values, "o-", color=colour, label=f"{what} changed")
        n = (noise or {}).get(what) or {}
        if n.get("mean") is not None:
            lo, hi = n["mean"] - (n["sd"] or 0.0), n["mean"] + (n["sd"] or 0.0)
            ax.axhspan(lo, hi, color=NOISE, alpha=0.35, label="noise mean ± sd")
            ax.axhline(n["max"], color=NOISE, ls="--", label="noise max")
            drawn[f"{what}_noise_band"] = [float(lo), float(hi)]
            drawn[f"{what}_noise_max"] = float(n["max"])
        ax.set_xticks(x, transitions, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel(f"{what} changed")
        ax.set_title(f"{what.capitalize()} changes per transition")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        drawn[what] = _lines(ax)[f"{what} changed"]
    if title:
        fig.suptitle(title)
    return _save(fig, out, "churn", drawn)


def plot_change_rates(out: Path, node_rate: float, edge_rate: float,
                      noise_node_rate: float | None = None, noise_edge_rate: float | None = None) -> dict:
    """Fig. 3 bottom right: change rate Delta_S (%) of nodes and edges (and of the noise runs)."""
    fig, ax = plt.subplots(figsize=(4.5, 3.6))
    ax.bar([0, 1], [node_rate or 0.0, edge_rate or 0.0], width=0.38, color=[ADDED, REMOVED],
           label="fine-tuning")
    if noise_node_rate is not None and noise_edge_rate is not None:
        ax.bar([0.4, 1.4], [noise_node_rate, noise_edge_rate], width=0.38, color=NOISE,
               label="resampling noise")
    ax.set_xticks([0.2, 1.2], ["nodes", "edges"])
    ax.set_ylabel("change rate Δ_S (%)")
    ax.set_title("Change rate")
    ax.legend(fontsize=8)
    return _save(fig, out, "change_rates", _bars(ax))


def plot_per_layer(out: Path, layers: list[int], nodes_added: list, nodes_removed: list,
                   edges_added: list, edges_removed: list, title: str = "") -> dict:
    """Rebuttal Figure 1: added/removed nodes and edges per layer (edge layer = source layer)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharex=True)
    w = 0.4
    for ax, what, add, rem in ((axes[0], "nodes", nodes_added, nodes_removed),
                               (axes[1], "edges", edges_added, edges_removed)):
        ax.bar([x - w / 2 for x in layers], add, width=w, color=ADDED, label=f"{what} added")
        ax.bar([x + w / 2 for x in layers], rem, width=w, color=REMOVED, label=f"{what} removed")
        ax.set_xlabel("layer")
        ax.set_ylabel(f"{what}")
        ax.set_title(f"{what.capitalize()} added / removed per layer")
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    drawn = {"layers": layers, **_bars(axes[0]), **_bars(axes[1])}
    return _save(fig, out, "per_layer", drawn)


def layout_positions(components: list[dict], n_layers: int) -> dict[str, tuple[float, float]]:
    """Fig. 3 layout: one row per layer, input at the top, logits at the bottom, MLP last in a row."""
    rows: dict[int, list[dict]] = {}
    for c in components:
        row = -1 if c["kind"] == "input" else (n_layers if c["kind"] == "logits" else c["layer"])
        rows.setdefault(row, []).append(c)
    pos = {}
    for row, cs in rows.items():
        cs = sorted(cs, key=lambda c: (c["kind"] == "mlp", c.get("head") or 0))
        for i, c in enumerate(cs):
            pos[c["name"]] = (i - (len(cs) - 1) / 2.0, -float(row))
    return pos


def plot_circuit_diff(out: Path, components: list[dict], n_layers: int, edges: list[dict],
                      degree: dict[str, int], added_nodes: list[str], removed_nodes: list[str],
                      title: str = "") -> dict:
    """Fig. 3 left: the before/after difference. `edges`: {name, src, dst, status} with status
    added (blue), removed (red) or kept (grey); node grey level = degree in the filtered final graph;
    added nodes outlined blue, removed nodes red."""
    pos = layout_positions(components, n_layers)
    used = sorted({e["src"] for e in edges} | {e["dst"] for e in edges} | set(added_nodes)
                  | set(removed_nodes), key=lambda n: (-pos[n][1], pos[n][0]))
    fig, ax = plt.subplots(figsize=(8, max(4.0, 0.55 * (n_layers + 2))))
    drawn: dict = {"edges": {}}
    for status, colour, z in (("kept", KEPT, 1), ("removed", REMOVED, 2), ("added", ADDED, 3)):
        es = [e for e in edges if e["status"] == status]
        segs = [[pos[e["src"]], pos[e["dst"]]] for e in es]
        lc = LineCollection(segs, colors=colour, linewidths=1.4 if status != "kept" else 0.8,
                            alpha=0.9, zorder=z, label=f"{status} edges ({len(es)})")
        lc.set_gid(status)
        ax.add_collection(lc)
        drawn["edges"][status] = sorted(e["name"] for e in es)
    top = max(degree.values()) if degree else 1
    greys = [1.0 - 0.85 * degree.get(n, 0) / top for n in used]
    edgecolors = [ADDED if n in added_nodes else REMOVED if n in removed_nodes else "#333333" for n in used]
    sc = ax.scatter([pos[n][0] for n in used], [pos[n][1] for n in used], s=90,
                    c=[(g, g, g) for g in greys], edgecolors=edgecolors, linewidths=1.5, zorder=4)
    for n in used:
        ax.annotate(n, pos[n], fontsize=6, ha="center", va="bottom", xytext=(0, 5),
                    textcoords="offset points", zorder=5)
    drawn["nodes"] = used
    drawn["node_grey"] = {n: float(sc.get_facecolors()[i][0]) for i, n in enumerate(used)}
    drawn["degree"] = {n: degree.get(n, 0) for n in used}
    drawn["added_nodes"] = sorted(n for n, c in zip(used, edgecolors) if c == ADDED)
    drawn["removed_nodes"] = sorted(n for n, c in zip(used, edgecolors) if c == REMOVED)
    ax.set_yticks([-float(r) for r in range(-1, n_layers + 1)],
                  ["input"] + [f"layer {i}" for i in range(n_layers)] + ["logits"], fontsize=7)
    ax.set_xticks([])
    ax.autoscale()
    ax.margins(0.08)
    ax.legend(loc="lower right", fontsize=7)
    ax.set_title(title or "Circuit difference (before → after)")
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    return _save(fig, out, "circuit_diff", drawn)


def plot_robustness(out: Path, levels: list[float], series: dict[str, list[float]],
                    splits: dict[str, float] | None = None, title: str = "") -> dict:
    """Fig. 2 right / Fig. 5: edge Jaccard to the clean circuit vs perturbation level, per model;
    `splits`: the rebuttal's mean pairwise Jaccard over disjoint splits, drawn as dotted lines."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    colours = {"finetuned": ADDED, "fine-tuned": ADDED, "pretrained": "#3E9A62", "pre-trained": "#3E9A62",
               "random": REMOVED}
    for label, ys in series.items():
        ax.plot(levels[:len(ys)], ys, "o-", label=label, color=colours.get(label))
    for label, value in (splits or {}).items():
        ax.axhline(value, ls=":", color=colours.get(label, "#555555"), label=f"_{label} splits")
    ax.set_xlabel("perturbation level (%)")
    ax.set_ylabel("edge Jaccard to clean circuit")
    ax.set_ylim(0, 1.05)
    ax.set_title(title or "Circuit robustness")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    drawn = {"levels": levels, **_lines(ax), "splits": splits or {}}
    return _save(fig, out, "robustness", drawn)


def plot_checkpoint_curves(out: Path, name: str, curves: dict[str, dict], robustness: dict | None = None,
                           title: str = "") -> dict:
    """Fig. 2 across tasks / Fig. 4: accuracy (left) and circuit faithfulness (middle) over checkpoints,
    one line per run (`curves`: {label: {steps, accuracy, faithfulness}}, percent); with a right panel,
    edge Jaccard to the clean circuit vs perturbation level, when `robustness` ({levels, series}) has
    series. Saved as `<out>/<name>.png`."""
    rob = robustness if robustness and robustness.get("series") else None
    fig, axes = plt.subplots(1, 3 if rob else 2, figsize=(15 if rob else 10.5, 3.8))
    drawn: dict = {"steps": {}}
    for ax, what in ((axes[0], "accuracy"), (axes[1], "faithfulness")):
        for label, c in curves.items():
            ax.plot(c["steps"], _none_to_nan(c[what]), "o-", ms=3, label=label)
            drawn["steps"][label] = [float(s) for s in c["steps"]]
        ax.set_xlabel("checkpoint (step)")
        ax.set_ylabel(f"{what} (%)")
        ax.set_ylim(min([0.0, *(y for c in curves.values() for y in _none_to_nan(c[what]) if y == y)]) - 2, 102)
        ax.set_title(f"Model {what}" if what == "accuracy" else "Circuit faithfulness")
        ax.grid(alpha=0.3)
        drawn[what] = _lines(ax)
    axes[0].legend(fontsize=7)
    if rob:
        ax = axes[2]
        for label, ys in rob["series"].items():
            ax.plot(rob["levels"][:len(ys)], ys, "o-", ms=3, label=label)
        ax.set_xlabel("perturbation level (%)")
        ax.set_ylabel("edge Jaccard to clean circuit")
        ax.set_ylim(0, 1.05)
        ax.set_title("Circuit robustness")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        drawn["robustness"] = {"levels": list(rob["levels"]), **_lines(ax)}
    if title:
        fig.suptitle(title, y=1.02)  # above the panels' own titles
    return _save(fig, out, name, drawn)


def plot_union_curve(out: Path, fracs: list[float], ours: list[float], paper: list[float | None]) -> dict:
    """The rebuttal's union table as a curve: faithfulness (%) of the union's top-x% circuit, ours and
    the paper's."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    xs = [100 * f for f in fracs]
    ax.plot(xs, _none_to_nan(ours), "o-", color=ADDED, label="ours")
    ax.plot(xs, _none_to_nan(paper), "s--", color=NOISE, label="paper (rebuttal)")
    ax.set_xlabel("edges kept (% of the graph's edges)")
    ax.set_ylabel("faithfulness (%)")
    ax.set_title("Union circuit: faithfulness vs size")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, out, "union_curve", {"percent_edges": xs, **_lines(ax)})
