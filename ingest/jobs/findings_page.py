"""The findings page: one Markdown file (and the same as plain HTML) with the figures, from the
findings document alone (the document is what the store holds, so the page can be redrawn from it).

Rates, accuracies and faithfulness are in percent; Jaccard similarities stay in 0-1 (the paper's 0.9).
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

from analysis import findings as F
from analysis.figures import plot_robustness
from analysis.findings_figures import plot_churn_vs_noise, plot_method_accuracy, plot_overlap_null


def _num(x, digits=1, unit=""):
    return "n/a" if x is None else f"{x:.{digits}f}{unit}"


def _interval(m: dict, digits=1) -> str:
    if m["low"] is None:
        return f"none ({m['spread']})"
    sd = "" if m["sd"] is None else f", sd {m['sd']:.{digits}f}"
    return f"{m['low']:.{digits}f} to {m['high']:.{digits}f}{m['unit']} ({m['spread']}, n={m['n']}{sd})"


def _table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(str(c) for c in r) + " |" for r in rows], ""]


def summary_rows(doc: dict) -> list[dict]:
    """One row per sub-claim: what the CLI prints and the page's first table."""
    rows = []
    for ko in doc["observations"]:
        for v in ko["subclaims"]:
            m = v["measure"]
            digits = 3 if "Jaccard" in v["claim"] else 1
            rows.append({"KO": ko["key"], "claim": v["claim"], "measured": _num(m["value"], digits, m["unit"]),
                         "interval": _interval(m, digits), "verdict": v["outcome"]})
    return rows


def _subclaims(ko: dict) -> list[str]:
    rows = []
    for v in ko["subclaims"]:
        m = v["measure"]
        digits = 3 if "Jaccard" in v["claim"] else 1
        side = ">" if v["above"] else "<"
        rows.append([v["claim"], _num(m["value"], digits, m["unit"]), _interval(m, digits),
                     f"{side} {v['threshold']:g}", f"**{v['outcome']}**", v["reason"]])
    return _table(["sub-claim", "measured", "interval", "claim holds if", "verdict", "why"], rows)


def _ko1(ko: dict, fig: Path) -> list[str]:
    levels = ko["levels_%"]
    series = {lb: [1.0] + [m["level_jaccard"][str(lv)] for lv in levels[1:]] for lb, m in ko["models"].items()}
    splits = {lb: sum(m["split_jaccard"]) / len(m["split_jaccard"]) for lb, m in ko["models"].items()}
    plot_robustness(fig, levels, series, splits, title="KO1: edge Jaccard to the clean circuit")
    rows = [[lb, _num(m["faithfulness"]["value"], 1, "%"), _interval(m["faithfulness"]),
             _num(m["accuracy_%"]["value"], 1, "%"),
             ", ".join(f"{lv}%: {m['level_jaccard'][str(lv)]:.3f}" for lv in levels[1:]),
             f"{splits[lb]:.3f}"] for lb, m in ko["models"].items()]
    pert = ", ".join(f"{lv}%: {st['perturbed']} of {st['chosen']} rows"
                     for lv, st in ko.get("perturbed_rows", {}).items()) or "not recorded"
    contrast = []
    rnd, trained = ko["models"].get("random"), [m for lb, m in ko["models"].items() if lb != "random"]
    if rnd and trained and splits["random"] >= min(sum(m["split_jaccard"]) / len(m["split_jaccard"]) for m in trained):
        contrast = [f"**The random model does not fall behind**: its circuits' Jaccard across disjoint splits is "
                    f"{splits['random']:.3f} and their faithfulness {rnd['faithfulness']['value']:.1f}%, at or "
                    "above the trained models'; the paper (and method.md 7) reports the random model much lower. "
                    "A near-uniform random model's circuit is its strongest fixed edges whatever the data, so "
                    "high Jaccard and faithfulness alone do not show that a circuit reflects the task.", ""]
    return [*contrast, "The random model is the contrast, not judged: its circuits are judged against nothing the "
            "paper claims. Jaccard is a similarity (0-1), as in the paper's Fig. 2. KO1 has its own Add/Sub(100) "
            f"dataset (fewer rows than exist, so perturbed prompts can be new; perturbed: {pert}); its rows may "
            "include the fine-tuned model's training rows, so the accuracy column is not a held-out figure.", "",
            "![KO1 robustness](figures/robustness.png)", "",
            *_table(["model", "faithfulness", "interval", "accuracy", "Jaccard vs level", "Jaccard, disjoint splits"],
                    rows)]


def _ko2(ko: dict, fig: Path) -> list[str]:
    ts = ko["transitions"]
    plot_churn_vs_noise(fig, [t["transition"] for t in ts], [t["node_change_%"] for t in ts],
                        [t["edge_change_%"] for t in ts], [t["edges_changed"] for t in ts],
                        [t["edge_noise_max"] for t in ts], [t["edge_noise_mean"] for t in ts])
    rows = [[t["transition"], t["nodes_changed"], _num(t["node_change_%"]), t["node_noise_max"],
             t["edges_changed"], _num(t["edge_change_%"]), _num(t["edge_noise_mean"]), t["edge_noise_max"],
             "yes" if t["edges_above_noise"] else "no"] for t in ts]
    acc = ", ".join(f"{c['step']}: {c['accuracy']:.1f}%" for c in ko["checkpoints"])
    caveat = []
    if all(t["nodes_changed"] == 0 for t in ts):
        caveat = ["No node changed in any transition: at this circuit size the circuits hold (nearly) every "
                  "node of the graph, so the node side of the comparison cannot move and the first sub-claim "
                  "holds by construction (the reviewers' point); the comparison with resampling noise (the "
                  "second) is the informative one.", ""]
    return [f"Accuracy over the run (held-out): {acc}. Change rates (method.md 6.3): nodes "
            f"{ko['node_change_rate_%']:.1f}%, edges {ko['edge_change_rate_%']:.1f}%.", "",
            *caveat, "![KO2 churn against noise](figures/ko2_churn_noise.png)", "",
            *_table(["transition", "nodes changed", "node %", "node noise max", "edges changed", "edge %",
                     "edge noise mean", "edge noise max", "edges above noise"], rows)]


def _ko3(ko: dict, fig: Path) -> list[str]:
    methods = list(ko["accuracy_by_seed_%"])
    ratios = {r["label"]: r["parameter_ratio_%"] for r in ko["table"]}
    plot_method_accuracy(fig, methods, ko["accuracy_by_seed_%"], ratios, ko["pretrained_accuracy_%"])
    rows = [[r["method"], _num(r["accuracy_mean_%"], 2, "%"), _num(r["accuracy_std_%"], 2),
             r["seeds"], f"{r['parameter_ratio_%']:.2f}%"] for r in ko["table"]]
    base = ko["base"]
    why = ko.get("base_why", "measured here, LoRA r=16 (lr 1e-2) took the pre-trained model from 3.8% to 6.2% "
                             "in 300 steps, which would compare methods that all learned nothing")
    return [f"Every KO3 run starts from the KO2 run's checkpoint at step {base['step']} ({base['accuracy_%']:.1f}% "
            f"accurate), not from the pre-trained model: {why}.", "",
            "![KO3 accuracy by method](figures/ko3_accuracy.png)", "",
            *_table(["method", "accuracy (mean)", "std", "seeds", "parameter ratio"], rows),
            f"Critical layers (phase 1): {ko['critical_layers']}; RandomLoRA's layers by seed: "
            f"{ko['random_layers']}. Why this many: {ko['why_top']}.", "",
            *[f"- Note: {n}" for n in ko["notes"]],
            f"- Note: accuracy is exact match on {ko['examples']} held-out pairs, so one pair is "
            f"{100 / ko['examples']:.2f} points.", ""]


def _ko4(ko: dict, fig: Path) -> list[str]:
    plot_overlap_null(fig, ko["overlaps"])
    alone = ko.get("subtask_alone", {})
    rows = [[r["k"], r["overlap"], _num(r["overlap_%"], 1, "%"), _num(r["random_mean_%"], 1, "%"),
             r["random_p95"], f"{r['p']:.4f}",
             *[alone.get(t, {}).get(str(r["k"]), "n/a") for t in ("compositional_add_sub", "compositional_mul_div")]]
            for r in ko["overlaps"]]
    return [f"Circuits: {ko['circuits']}; union {ko['union']} (avg-fused, top {ko['compositional_edges']} "
            f"edges = the compositional circuit's size); graph: {ko['graph_edges']} head-level edges.", "",
            "![KO4 overlap against random](figures/ko4_overlap.png)", "",
            *_table(["k", "union overlap", "overlap % of k", "random mean % of k", "random 97.5th pct",
                     "empirical p", "add_sub circuit alone", "mul_div circuit alone"], rows),
            "The random control is weak by construction: circuits of one model share their strongest edges "
            "whatever the task, so the subtask circuits alone (last two columns, not judged) say how much of "
            "the overlap the union adds.", ""]


SECTIONS = {"KO1": _ko1, "KO2": _ko2, "KO3": _ko3, "KO4": _ko4}


def model_line(doc: dict) -> str:
    """What model the findings are of (the page's first line; run_findings echoes it too)."""
    p = doc["preset"]
    if p.get("model"):  # a real pretrained model, used as is
        arch = doc.get("model_arch", {})
        return (f"the pretrained {arch.get('name', p['model'])} ({arch.get('type', '?')}, {p['n_layers']} layers, "
                f"{p['n_heads']} heads, d_model {p['d_model']}; `{p['model']}`, loaded from {doc['model']}), not "
                "pre-trained here")
    return (f"a {p['n_layers']}-layer GPT-NeoX ({p['n_heads']} heads, d_model {p['d_model']}) pre-trained "
            f"{p['pretrain_steps']} steps")


def page_markdown(doc: dict, fig: Path) -> str:
    p = doc["preset"]
    lines = [f"# The paper's Key Observations, measured ({doc['id']})", "",
             f"Preset `{p['name']}`: {model_line(doc)}, Add/Sub(100); circuits = top "
             f"{100 * p['top_frac']:.0f}% of edges, pruned, EAP-IG m={p['ig_steps']}, on {p['examples']} "
             f"held-out pairs. Time: {doc['seconds']['total']:.0f} s. {doc['verdict_rule']}.", "",
             *_table(["KO", "claim", "measured", "interval", "verdict"],
                     [[r["KO"], r["claim"], r["measured"], r["interval"], f"**{r['verdict']}**"]
                      for r in summary_rows(doc)])]
    failed = [(ko["key"], v) for ko in doc["observations"] for v in ko["subclaims"] if v["outcome"] != F.REPRODUCES]
    lines += ["## Where the paper does not reproduce (or cannot be judged at this size)", ""]
    lines += [f"- {k}: {v['claim']}: **{v['outcome']}** ({v['reason']})." for k, v in failed] or \
             ["- Every sub-claim reproduced at this size."]
    lines.append("")
    for ko in doc["observations"]:
        lines += [f"## {ko['key']}: {ko['title']} ({ko['verdict']})", "", f"> {ko['quote']}", "",
                  *_subclaims(ko), *SECTIONS[ko["key"]]({**ko, "examples": p["examples"]}, fig)]
    return "\n".join(lines) + "\n"


def markdown_to_html(md: str, title: str) -> str:
    """Just enough Markdown for this page: headings, tables, images, quotes, bullets, bold."""
    def inline(t):
        t = html.escape(t)
        t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
        return re.sub(r"`(.+?)`", r"<code>\1</code>", t)
    out, in_table = [], False
    for line in md.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-"):
                continue
            if not in_table:
                out.append("<table border=1 cellspacing=0 cellpadding=3>")
                in_table = True
            out.append("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in cells) + "</tr>")
            continue
        if in_table:
            out.append("</table>")
            in_table = False
        m = re.match(r"!\[(.*)\]\((.*)\)", line)
        if m:
            out.append(f'<p><img src="{html.escape(m[2])}" alt="{html.escape(m[1])}"></p>')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{inline(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("> "):
            out.append(f"<blockquote>{inline(line[2:])}</blockquote>")
        elif line.startswith("- "):
            out.append(f"<li>{inline(line[2:])}</li>")
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
    if in_table:
        out.append("</table>")
    return f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title>\n" + "\n".join(out) + "\n"


def write_page(doc: dict, out: Path) -> Path:
    """Write out/findings.md, out/findings.html and out/figures/*.png; returns the Markdown path."""
    out.mkdir(parents=True, exist_ok=True)
    # drawn from the document as the store keeps it (keys sorted), so a page drawn right after the run and
    # one redrawn later from the store (--page-only) are the same, byte for byte
    doc = json.loads(json.dumps(doc, sort_keys=True, default=str))
    md = page_markdown(doc, out / "figures")
    (out / "findings.md").write_text(md)
    (out / "findings.html").write_text(markdown_to_html(md, f"findings {doc['id']}"))
    return out / "findings.md"
