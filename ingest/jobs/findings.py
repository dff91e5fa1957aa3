"""`circuitshift experiment findings`: the paper's four Key Observations, run and judged (issue 16 item 2).

    run_findings: setup (ingest/findings_setup.py: one pre-trained model, Add/Sub(100) with perturbed
    copies and disjoint splits) -> KO2 (ingest/findings_ko12.py; its fine-tuned model feeds KO1 and
    KO4) -> KO1 -> KO3 and KO4 (ingest/findings_ko34.py) -> the findings document in the store
    (queries/findings.py), tied to the KO3 experiment and every run used -> one page
    (ingest/findings_page.py).

Every circuit is a normal stored run with provenance; every figure is read back from the store.
"""

from __future__ import annotations

import time
from pathlib import Path

from analysis import robustness as R
from analysis.models import load_model
from ingest.jobs.findings_ko12 import Ctx, ko1_robustness, ko2_edges_vs_nodes
from ingest.jobs.findings_ko34 import ko3_circuitlora, ko4_union
from ingest.jobs.findings_page import model_line, write_page
from ingest.jobs.findings_setup import FindingsPreset, dataset, pretrained_model
from ingest.jobs.finetune import export_model
from queries import findings as QF


def model_arch(preset: FindingsPreset, model_dir: Path) -> dict:
    """Name and architecture of a preset's real model (empty for the GPT-NeoX pre-trained here, whose
    documents stay as they were)."""
    if preset.model is None:
        return {}
    import json

    from analysis.models import resolve_model_source
    source = resolve_model_source(preset.model)
    name = (source.gguf_file or Path(source.path).name).removesuffix(".gguf")
    return {"name": name, "type": json.loads((model_dir / "config.json").read_text()).get("model_type", "?")}


def run_findings(driver, database, preset: FindingsPreset, fid: str, state: Path, out: Path,
                 device: str = "cpu", echo=print) -> dict:
    """Run and judge the four Key Observations; store the findings; write the page. Returns the doc."""
    t0 = time.perf_counter()
    ctx = Ctx(driver, database, preset, fid, Path(state), device, echo)
    root = ctx.state / "findings"
    model_dir = pretrained_model(root, preset, device, echo)
    arch = model_arch(preset, model_dir)
    if arch:
        echo(f"model: {model_line({'preset': preset.record(), 'model': str(model_dir), 'model_arch': arch})}")
    # the perturbed copies and splits of `data` are not used (KO1 has its own): kept so runs stay comparable
    data = dataset(model_dir, "add_sub", root / f"data-add_sub-{model_dir.name}-{preset.count}-{preset.examples}",
                   preset.count, preset.seed, perturb=preset.perturb_levels, disjoint=preset.disjoint,
                   disjoint_size=preset.examples)
    ko1_data = dataset(model_dir, "add_sub", root / f"data-ko1-{model_dir.name}-{preset.ko1_count}-{preset.examples}",
                       preset.ko1_count, preset.seed + 1, perturb=preset.perturb_levels, disjoint=preset.disjoint,
                       disjoint_size=preset.examples)
    timings = {}

    def timed(key, fn, *args):
        t = time.perf_counter()
        res = fn(*args)
        timings[key] = round(time.perf_counter() - t, 1)
        echo(f"{key}: {res['verdict']} ({timings[key]:.0f} s)")
        return res

    ko2 = timed("KO2", ko2_edges_vs_nodes, ctx, model_dir, data)
    finetuned_dir = root / f"finetuned-{fid}"
    if not (finetuned_dir / "config.json").exists():
        export_model(ctx.state, ko2["run"], finetuned_dir)
    pre, ft = load_model(str(model_dir)), load_model(str(finetuned_dir))
    models = {"pretrained": (pre.model, pre.tokenizer), "finetuned": (ft.model, ft.tokenizer),
              "random": (R.random_model_like(pre.model, preset.seed), pre.tokenizer)}
    ko1 = timed("KO1", ko1_robustness, ctx, models, ko1_data)
    ko3 = timed("KO3", ko3_circuitlora, ctx, Path(ko2["ko3_base"]["model"]), data, ko2["ko3_base"])
    ko4 = timed("KO4", ko4_union, ctx, model_dir, ft)
    timings["total"] = round(time.perf_counter() - t0, 1)
    doc = {"id": fid, "preset": preset.record(), "model": str(model_dir), "data": str(data), "ko1_data": str(ko1_data),
           **({"model_arch": arch} if arch else {}), "observations": [ko1, ko2, ko3, ko4], "seconds": timings,
           "verdict_rule": "a sub-claim reproduces when its whole interval lies on the claimed side of the "
                           "threshold, does not when it lies wholly on the other side, and is inconclusive "
                           "otherwise; a Key Observation reproduces when all its sub-claims do"}
    QF.write_findings(driver, database, fid, preset.name, doc, ko3.get("experiment"), ctx.used)
    doc["page"] = str(write_page(doc, Path(out)))
    return doc
