"""Figures of the findings page that analysis/figures.py has no form for (plain data in, PNG out).

Like analysis/figures.py, each function saves `<out>/<name>.png` and returns (and writes as JSON) what
it drew, so a test can compare the drawing with the stored findings.
"""

from __future__ import annotations

from pathlib import Path

from analysis.figures import ADDED, NOISE, REMOVED, _save, plt  # one way to save a figure and what it drew


def plot_churn_vs_noise(out: Path, transitions: list[str], node_rates: list[float], edge_rates: list[float],
                        edges: list[int], edge_noise_max: list[int], edge_noise_mean: list[float]) -> dict:
    """KO2: left, node and edge change per transition in % of the first circuit; right, edges changed
    per transition beside the resampling noise of its two checkpoints (mean, and max as the bar)."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    x = list(range(len(transitions)))
    a.plot(x, node_rates, "o-", color=ADDED, label="nodes changed (% of S_0)")
    a.plot(x, edge_rates, "s-", color=REMOVED, label="edges changed (% of S_0)")
    a.set_ylabel("%")
    a.set_title("Node vs edge change per transition")
    b.bar(x, edge_noise_max, color=NOISE, alpha=0.6, label="noise max (resamples)")
    b.plot(x, edge_noise_mean, "_", color="#555555", markersize=18, label="noise mean")
    b.plot(x, edges, "o-", color=REMOVED, label="edges changed")
    b.set_ylabel("head-level edges")
    b.set_title("Edge churn against resampling noise")
    for ax in (a, b):
        ax.set_xticks(x, transitions, rotation=45, ha="right", fontsize=8)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    drawn = {"transitions": transitions, "node_rates": node_rates, "edge_rates": edge_rates, "edges": edges,
             "edge_noise_max": [float(h.get_height()) for h in b.patches]}
    return _save(fig, out, "ko2_churn_noise", drawn)


def plot_method_accuracy(out: Path, methods: list[str], by_seed: dict[str, dict], ratios: dict[str, float],
                         pretrained: float) -> dict:
    """KO3: final accuracy per method (mean bar, one dot per seed), the starting level dashed."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    means = []
    for i, m in enumerate(methods):
        vals = list(by_seed[m].values())
        means.append(sum(vals) / len(vals))
        ax.bar(i, means[-1], color=ADDED if "circuit" in m else "#8FA8C0", alpha=0.8)
        ax.plot([i] * len(vals), vals, "o", color="black", markersize=4)
    ax.axhline(pretrained, ls="--", color=NOISE, label=f"start (step 0) {pretrained:.1f}%")
    ax.set_xticks(range(len(methods)), [f"{m}\n{ratios[m]:.2f}% params" for m in methods], fontsize=8)
    ax.set_ylabel("accuracy %")
    ax.set_ylim(0, 100)
    ax.set_title("Final accuracy by method (dots: seeds)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, out, "ko3_accuracy", {"methods": methods, "means": means,
                                             "bars": [float(h.get_height()) for h in ax.patches]})


def plot_overlap_null(out: Path, rows: list[dict]) -> dict:
    """KO4: per k, the random-control histogram of Overlap_k and the union's observed overlap."""
    fig, axes = plt.subplots(1, len(rows), figsize=(3.4 * len(rows), 3.2), squeeze=False)
    drawn = {"k": [], "observed": []}
    for ax, r in zip(axes[0], rows):
        null = r["null"]
        ax.hist(null, bins=range(min(null), max(null) + 2), color=NOISE, alpha=0.8, label="random sets")
        ax.axvline(r["overlap"], color=REMOVED, lw=2, label=f"union: {r['overlap']}")
        ax.set_title(f"Overlap_{r['k']} (p = {r['p']:.3g})", fontsize=9)
        ax.set_xlabel("shared top-k edges")
        ax.legend(fontsize=7)
        drawn["k"].append(r["k"])
        drawn["observed"].append(float(ax.get_lines()[0].get_xdata()[0]))
    return _save(fig, out, "ko4_overlap", drawn)
