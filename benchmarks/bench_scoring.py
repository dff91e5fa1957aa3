"""Benchmark the EAP-IG scoring engine against its floor and (optionally) hannamw/EAP-IG.

    .venv/bin/python benchmarks/bench_scoring.py [--reference PATH] [--reference-python PY]
        [--before REV] [--shapes 4x4x128,6x8x256,8x8x512] [--shape pythia-1.4b] [--n-examples 64]
        [--batch-size 16] [--steps 5] [--device cpu|cuda] [--threads 2] [--repeats 3] [--ref-repeats N]

For every GPT-NeoX shape LxHxD (random weights, the offline word tokenizer, 64 add/sub prompt pairs):
* ours: ``eap-ig-inputs``, m steps, KL (vocab mean), left rule (the reference's convention);
* floor: (m+1) forward passes + m backward passes (activation gradients only) of the frozen HF
  model on the same batches, logits only at the answer positions (as ours), with nothing else (the
  table also gives it with every position's logits, as this floor was measured before issue 19);
* before (with ``--before REV``, e.g. 907633b): the engine of git revision REV (its ``analysis/``
  exported with ``git archive`` to a temporary folder) timed in a subprocess on the same model and
  data, so a before/after comparison is measured in the same run; its scores are compared with ours;
* reference (with ``--reference PATH``, a checkout of hannamw/EAP-IG at 795f560 that you bring; its
  code is never copied into this repository): copied to a temporary folder, its hard-coded
  ``device='cuda'`` patched to the model's device in that copy, and run in a separate virtualenv
  (``--reference-python``, with transformer-lens 3.9.0, the last version with HookedTransformer) on
  the same model weights, data and batches. The scores are compared up to one constant scale
  (hannamw takes a batch mean inside the metric: its scores are ours / batch size).

Timings are interleaved (each repeat runs ours, the floor, before and the reference in turn) and the
table gives MEDIANS over ``--repeats`` (the reference: ``--ref-repeats``, default the same), with the
1-minute load average seen during the shape (min-max): on a shared machine say so when it was busy.

``--shape pythia-1.4b`` benchmarks a Pythia-1.4B-shaped model (24x16x2048, d_mlp 8192, vocab 50304,
random weights) at batch 32 (use ``--device cuda``) and reports time and peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PFX = "Calculate the result of the following arithmetic expression and provide only the final answer:"
PRESETS = {"pythia-1.4b": dict(n_layers=24, n_heads=16, d_model=2048, d_mlp=8192, vocab=50304, batch=32)}

REFERENCE_DRIVER = r'''
import json, sys, time, torch
import torch.nn.functional as F
torch.set_num_threads(int(sys.argv[4]))
sys.path.insert(0, sys.argv[1])
from eap.graph import Graph
from eap.attribute import attribute
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.pretrained.weight_conversions.neox import convert_neox_weights

model_dir, job = sys.argv[2], json.load(open(sys.argv[3]))
device = job["device"]
hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
tok = AutoTokenizer.from_pretrained(model_dir)
c = hf.config
cfg = HookedTransformerConfig(
    n_layers=c.num_hidden_layers, d_model=c.hidden_size, n_ctx=c.max_position_embeddings,
    d_head=c.hidden_size // c.num_attention_heads, n_heads=c.num_attention_heads, d_mlp=c.intermediate_size,
    d_vocab=c.vocab_size, act_fn="gelu", normalization_type="LN", eps=c.layer_norm_eps,
    positional_embedding_type="rotary", rotary_dim=int(c.hidden_size // c.num_attention_heads * c.rope_parameters.get("partial_rotary_factor", 1.0)),
    rotary_base=int(c.rope_parameters.get("rope_theta", 10000)), rotary_adjacent_pairs=False,
    parallel_attn_mlp=True, original_architecture="GPTNeoXForCausalLM", default_prepend_bos=True,
    device=device, dtype=torch.float32)
model = HookedTransformer(cfg, tokenizer=tok)
model.load_and_process_state_dict(convert_neox_weights(hf, cfg), fold_ln=False, center_writing_weights=False,
                                  center_unembed=False, fold_value_biases=False)
model.to(device)
model.cfg.use_split_qkv_input = True
model.cfg.use_attn_result = True
model.cfg.use_hook_mlp_in = True
model.eval()

def kl(logits, clean_logits, input_lengths, labels):
    idx = torch.arange(logits.size(0), device=logits.device)
    lq = logits[idx, input_lengths - 1].log_softmax(-1)
    lp = clean_logits[idx, input_lengths - 1].log_softmax(-1)
    return F.kl_div(lq, lp, log_target=True, reduction="none").mean(-1).mean()

rows = job["rows"]
B = job["batch_size"]
loader = [([r[0] for r in rows[i:i + B]], [r[1] for r in rows[i:i + B]], [r[2] for r in rows[i:i + B]])
          for i in range(0, len(rows), B)]
g = Graph.from_model(model)
if device == "cuda":
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
t0, c0 = time.perf_counter(), time.process_time()
attribute(model, g, loader, kl, method="EAP-IG-inputs", ig_steps=job["steps"], quiet=True)
if device == "cuda":
    torch.cuda.synchronize()
secs, cpu = time.perf_counter() - t0, time.process_time() - c0
peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
scores = {name: float(e.score) for name, e in g.edges.items()}
json.dump({"seconds": secs, "cpu_seconds": cpu, "peak_bytes": peak, "scores": scores}, open(job["out"], "w"))
'''


BEFORE_DRIVER = r'''
import json, sys, time, torch
tree, model_dir, job = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3]))
sys.path.insert(0, tree)
torch.set_num_threads(job["threads"])
import analysis.eap
assert analysis.eap.__file__.startswith(tree), analysis.eap.__file__
from analysis.datasets import PromptPair
from analysis.eap import score
from analysis.graph import build_graph
from analysis.models import load_model
pairs = [PromptPair(*r) for r in job["rows"]]
adapter = load_model(model_dir, device=job["device"], dtype="float32")
graph = build_graph(adapter.spec)
kw = dict(method="eap-ig-inputs", metric="kl", steps=job["steps"], ig_rule="left", batch_size=job["batch_size"])
score(adapter, graph, pairs[:job["batch_size"]], **kw)  # warm-up
if job["device"].startswith("cuda"):
    torch.cuda.synchronize()
t0, c0 = time.perf_counter(), time.process_time()
res = score(adapter, graph, pairs, **kw)
if job["device"].startswith("cuda"):
    torch.cuda.synchronize()
secs, cpu = time.perf_counter() - t0, time.process_time() - c0
torch.save(res.dense, job["out"])
json.dump({"seconds": secs, "cpu_seconds": cpu}, open(job["out"] + ".json", "w"))
'''


def export_revision(rev: str, dest: Path) -> Path:
    """``analysis/`` of git revision ``rev`` into ``dest`` (read-only use of the repository)."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "analysis"], capture_output=True)
    if archive.returncode:
        raise SystemExit(f"--before {rev}: git archive failed: {archive.stderr.decode()[-500:]}")
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def run_before(tree: Path, model_dir: Path, pairs, batch_size, steps, device, threads, work: Path):
    """The engine of the exported revision on the same model and pairs: (seconds, dense scores)."""
    import torch

    job = {"rows": [[p.clean, p.corrupted, p.label, p.corrupted_label] for p in pairs], "batch_size": batch_size,
           "steps": steps, "device": device, "threads": threads, "out": str(work / "before_dense.pt")}
    (work / "before_job.json").write_text(json.dumps(job))
    (work / "before_driver.py").write_text(BEFORE_DRIVER)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH="")
    proc = subprocess.run([sys.executable, str(work / "before_driver.py"), str(tree), str(model_dir),
                           str(work / "before_job.json")], env=env, capture_output=True, text=True, cwd=str(work))
    if proc.returncode:
        raise SystemExit(f"--before run failed:\n{proc.stderr[-3000:]}")
    t = json.loads(Path(job["out"] + ".json").read_text())
    return (t["seconds"], t["cpu_seconds"]), torch.load(job["out"])


def load1() -> float:
    return os.getloadavg()[0]


def median(xs):
    import statistics

    return statistics.median(xs) if xs else None


def parse_shape(s: str) -> dict:
    L, H, D = (int(x) for x in s.lower().split("x"))
    return dict(n_layers=L, n_heads=H, d_model=D, d_mlp=4 * D, vocab=None, batch=None)


def make_pairs(n: int):
    import random

    from analysis.datasets import PromptPair

    rng = random.Random(0)
    out = []
    while len(out) < n:
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        a, b = max(a, b), min(a, b)
        out.append(PromptPair(f"{PFX} {a} + {b} =", f"{PFX} {a} - {b} =", str(a + b), str(a - b)))
    return out


def build_model(out: Path, shape: dict, seed: int = 0) -> Path:
    from analysis.tiny import build_tiny_model

    # a preset has a real vocabulary size (Pythia: 50,304 rows); the word tokenizer uses the first ones
    return build_tiny_model(out, "gpt_neox", shape["n_layers"], shape["n_heads"], shape["d_model"], seed,
                            d_mlp=shape["d_mlp"], vocab_size=shape.get("vocab"))


def sync(device):
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def time_floor(adapter, pairs, batch_size, steps, device, all_logits: bool = False) -> tuple[float, float]:
    """(m+1) forwards + m backwards of the frozen model (activation gradients only), same batches:
    (wall-clock, process CPU) seconds. ``all_logits``: the logits of every position, as this floor was
    measured before issue 19 (the engine computes them only at the answer positions)."""
    import torch

    from analysis.metrics import kl_vocab_mean

    enc = adapter.encode_pairs(pairs)
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    for st in range(0, len(pairs), batch_size):
        b = adapter.make_batch(enc, range(st, min(len(pairs), st + batch_size)))
        idx = torch.arange(len(b.last), device=b.last.device)
        ones = torch.ones_like(b.clean)
        keep = b.keep  # logits only where the metric reads them (the answer positions), as ours
        last = torch.searchsorted(keep, b.last)
        if all_logits:
            keep, last = 0, b.last  # logits_to_keep=0: every position
        with torch.no_grad():
            target = adapter.model(input_ids=b.clean, attention_mask=ones, use_cache=False,
                                   logits_to_keep=keep).logits[idx, last]
        emb = adapter.embed(b.corrupted)
        for _ in range(steps):
            e = emb.detach().requires_grad_(True)
            logits = adapter.model(inputs_embeds=e, attention_mask=ones, use_cache=False,
                                   logits_to_keep=keep).logits[idx, last]
            kl_vocab_mean(logits, target).sum().backward()
    sync(device)
    return time.perf_counter() - t0, time.process_time() - c0


def run_reference(ref: Path, python: str, model_dir: Path, pairs, batch_size, steps, device, threads, work: Path):
    src = ref / "src" if (ref / "src" / "eap").exists() else ref
    if not (src / "eap" / "attribute.py").exists():
        raise SystemExit(f"--reference {ref}: no eap/attribute.py (expected a hannamw/EAP-IG checkout)")
    copy = work / "eapref"
    shutil.rmtree(copy, ignore_errors=True)  # a fresh copy per run (repeats)
    shutil.copytree(src / "eap", copy / "eap")
    for f in (copy / "eap").glob("*.py"):  # patch the copy: hard-coded device='cuda'
        f.write_text(f.read_text().replace("device='cuda'", "device=model.cfg.device"))
    job = {"rows": [[p.clean, p.corrupted, p.label] for p in pairs], "batch_size": batch_size, "steps": steps,
           "device": device, "out": str(work / "ref_out.json")}
    (work / "job.json").write_text(json.dumps(job))
    (work / "driver.py").write_text(REFERENCE_DRIVER)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH="")
    proc = subprocess.run([python, str(work / "driver.py"), str(copy), str(model_dir), str(work / "job.json"),
                           str(threads)], env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"reference run failed:\n{proc.stderr[-3000:]}")
    return json.loads((work / "ref_out.json").read_text())


def compare(ours: dict, ref: dict) -> tuple[float, float]:
    """Best single scale c (least squares, ref ~ c * ours) and max |ref - c*ours| / max |ref|."""
    import torch

    names = list(ref)
    a = torch.tensor([ours[n] for n in names], dtype=torch.float64)
    b = torch.tensor([ref[n] for n in names], dtype=torch.float64)
    c = float((a @ b) / (a @ a))
    return c, float((b - c * a).abs().max() / b.abs().max())



def ref_header(label: str, before: bool) -> str:
    """The reference's table columns: its time, our speed-up, and (with --before) the old speed-up."""
    return f" {label} | speed-up |" + (" before speed-up |" if before else "")


def ref_cells(r: dict, time_key: str, speedup_key: str, before: bool) -> str:
    cells = f" {r[time_key]:.1f} | {r[speedup_key]:.1f}x |"
    return cells + (f" {r['before_' + speedup_key]:.1f}x |" if before else "")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="4x4x128,6x8x256,8x8x512", help="GPT-NeoX shapes LxHxD")
    ap.add_argument("--shape", choices=sorted(PRESETS), help="a preset instead of --shapes")
    ap.add_argument("--n-examples", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=None, help="default 16 (32 for a preset)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="time everything N times, report medians")
    ap.add_argument("--ref-repeats", type=int, default=None, help="reference runs per shape (default --repeats)")
    ap.add_argument("--before", metavar="REV", help="also time the engine of git revision REV (e.g. 907633b)")
    ap.add_argument("--reference", type=Path, help="a hannamw/EAP-IG checkout (commit 795f560)")
    ap.add_argument("--reference-python", default="/tmp/eapref-venv/bin/python",
                    help="python of a virtualenv with transformer-lens 3.9.0")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from analysis.eap import score
    from analysis.graph import build_graph
    from analysis.models import load_model

    if args.reference is None:
        print("no --reference PATH given: running ours and the floor only (pass a hannamw/EAP-IG checkout "
              "at 795f560 to compare)")
    shapes = ([(args.shape, PRESETS[args.shape])] if args.shape
              else [(s, parse_shape(s)) for s in args.shapes.split(",")])
    pairs = make_pairs(args.n_examples)
    ref_repeats = args.repeats if args.ref_repeats is None else args.ref_repeats
    cuda = args.device.startswith("cuda")
    results = []
    with tempfile.TemporaryDirectory() as top:
        tree = export_revision(args.before, Path(top) / "before") if args.before else None
        for name, shape in shapes:
            B = args.batch_size or shape.get("batch") or 16
            with tempfile.TemporaryDirectory() as tmp:
                work = Path(tmp)
                model_dir = build_model(work / "model", shape)
                adapter = load_model(model_dir, device=args.device, dtype="float32")
                graph = build_graph(adapter.spec)
                kw = dict(method="eap-ig-inputs", metric="kl", steps=args.steps, ig_rule="left", batch_size=B)
                score(adapter, graph, pairs[:B], **kw)  # warm-up
                loads = [load1()]
                t_ours, t_floor, t_before, t_ref = [], [], [], []
                c_ours, c_floor, c_before, c_ref = [], [], [], []
                t_floor_all = []
                res = peak = ref = before_dense = None
                for rep in range(args.repeats):
                    if cuda:
                        torch.cuda.synchronize()
                        torch.cuda.reset_peak_memory_stats()
                    t0, c0 = time.perf_counter(), time.process_time()
                    res = score(adapter, graph, pairs, **kw)
                    sync(args.device)
                    t_ours.append(time.perf_counter() - t0)
                    c_ours.append(time.process_time() - c0)
                    peak = torch.cuda.max_memory_allocated() if cuda else None
                    w, c = time_floor(adapter, pairs, B, args.steps, args.device)
                    t_floor.append(w)
                    c_floor.append(c)
                    t_floor_all.append(time_floor(adapter, pairs, B, args.steps, args.device, all_logits=True)[0])
                    loads.append(load1())
                    if tree is not None:
                        (w, c), before_dense = run_before(tree, model_dir, pairs, B, args.steps, args.device,
                                                          args.threads, work)
                        t_before.append(w)
                        c_before.append(c)
                        loads.append(load1())
                    if args.reference is not None and rep < ref_repeats:
                        ref = run_reference(args.reference, args.reference_python, model_dir, pairs, B,
                                            args.steps, args.device, args.threads, work)
                        t_ref.append(ref["seconds"])
                        c_ref.append(ref["cpu_seconds"])
                        loads.append(load1())
                ours, floor = median(t_ours), median(t_floor)
                row = {"shape": name, "edges": len(graph.edges), "batch": B, "n": len(pairs), "steps": args.steps,
                       "threads": args.threads, "repeats": args.repeats,
                       "ours_s": ours, "floor_s": floor, "ratio_to_floor": ours / floor,
                       "ours_all_s": t_ours, "floor_all_s": t_floor, "load1_min": min(loads), "load1_max": max(loads),
                       "floor_all_logits_s": median(t_floor_all),
                       "ours_cpu_s": median(c_ours), "floor_cpu_s": median(c_floor),
                       "cpu_ratio_to_floor": median(c_ours) / median(c_floor),
                       "peak_bytes": peak, "parity": res.parity}
                if tree is not None:
                    dense = res.dense.to(torch.float64)
                    row.update(before_rev=args.before, before_s=median(t_before), before_all_s=t_before,
                               before_ratio_to_floor=median(t_before) / floor, before_cpu_s=median(c_before),
                               before_cpu_ratio_to_floor=median(c_before) / median(c_floor),
                               before_max_rel_diff=float((dense - before_dense.to(torch.float64)).abs().max()
                                                         / before_dense.abs().max()))
                if args.reference is not None:
                    c, err = compare(res.to_dict(), ref["scores"])
                    row.update(ref_s=median(t_ref), ref_all_s=t_ref, speedup=median(t_ref) / ours, scale=c,
                               max_rel_diff=err, ref_peak_bytes=ref["peak_bytes"], ref_cpu_s=median(c_ref),
                               cpu_speedup=median(c_ref) / median(c_ours))
                    if tree is not None:
                        row["before_speedup"] = median(t_ref) / row["before_s"]
                        row["before_cpu_speedup"] = median(c_ref) / row["before_cpu_s"]
                results.append(row)
                print(json.dumps(row), flush=True)
    print()
    before = args.before is not None
    refd = args.reference is not None
    print(f"medians of {args.repeats} interleaved repeats ({ref_repeats} for the reference), {args.threads} "
          f"thread(s), device {args.device}")
    hdr = "| model (LxHxD) | edges | batch | ours (s) | floor (s) | ours/floor | floor, all logits (s) |"
    if before:
        hdr += f" before {args.before} (s) | before/floor |"
    if refd:
        hdr += ref_header("reference (s)", before) + " scale | max rel. diff |"
    if before:
        hdr += " ours vs before |"
    if cuda:
        hdr += " peak mem (GiB) |"
    hdr += " load (1-min) |"
    print(hdr)
    print("|" + "---|" * (hdr.count("|") - 1))
    for r in results:
        line = (f"| {r['shape']} | {r['edges']:,} | {r['batch']} | {r['ours_s']:.2f} | {r['floor_s']:.2f} | "
                f"{r['ratio_to_floor']:.2f} | {r['floor_all_logits_s']:.2f} |")
        if before:
            line += f" {r['before_s']:.2f} | {r['before_ratio_to_floor']:.2f} |"
        if refd:
            line += ref_cells(r, "ref_s", "speedup", before) + f" {r['scale']:.4g} | {r['max_rel_diff']:.1e} |"
        if before:
            line += f" {r['before_max_rel_diff']:.1e} |"
        if cuda:
            line += f" {r['peak_bytes'] / 2**30:.2f} |"
        line += f" {r['load1_min']:.1f}-{r['load1_max']:.1f} |"
        print(line)
    if not cuda:
        print()
        print("the same runs in process CPU seconds (time.process_time: robust to other jobs on a shared "
              "machine when --threads 1)")
        hdr = "| model (LxHxD) | ours CPU (s) | floor CPU (s) | ours/floor |"
        if before:
            hdr += " before CPU (s) | before/floor |"
        if refd:
            hdr += ref_header("reference CPU (s)", before)
        print(hdr)
        print("|" + "---|" * (hdr.count("|") - 1))
        for r in results:
            line = f"| {r['shape']} | {r['ours_cpu_s']:.2f} | {r['floor_cpu_s']:.2f} | {r['cpu_ratio_to_floor']:.2f} |"
            if before:
                line += f" {r['before_cpu_s']:.2f} | {r['before_cpu_ratio_to_floor']:.2f} |"
            if refd:
                line += ref_cells(r, "ref_cpu_s", "cpu_speedup", before)
            print(line)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
