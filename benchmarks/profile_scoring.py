"""Where the scoring engine's time goes beyond its floor, in process CPU seconds (issue 19).

    .venv/bin/python benchmarks/profile_scoring.py [--shape 4x4x128] [--repeats 7] [--against REV]

Same model, data and settings as ``bench_scoring.py`` (random-weight GPT-NeoX, 64 add/sub pairs, batch
16, eap-ig-inputs m = 5, KL, left rule), one thread. Every repeat runs ``score`` and the floor
((m+1) forwards + m backwards of the frozen model) in turn, unprobed; then a few repeats with probes
give, for the fastest of each, the CPU time of its parts: the model's own forward (hooked runs and the
parity forward), the backward passes, the per-pass accumulation, the per-batch flush, the parity
forward, tokenising.
Process CPU time (``time.process_time``) with one thread is what a loaded machine leaves least
distorted: the wall-clock of the same code moved by 2x between runs on the 2-core VM under load 5-13.

``--against REV``: also time the engine of git revision REV in the SAME process (its ``analysis/``
exported with ``git archive`` and imported under another package name), interleaved with ours and the
floor, and compare the scores. Neither this nor ``bench_scoring.py --before`` (the old engine in a
subprocess) resolves a few per cent under load: on the 2-core VM at load 4-6, two bit-identical
engines differed by 0.13 (here, min / floor min) and 0.23 (``--before``, CPU ours/floor). Compare
engines on a quiet machine, or by many repeats and an exact-scores check.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def export_as(rev: str, dest: Path, name: str) -> None:
    """``analysis/`` of ``rev`` as the package ``name`` under ``dest`` (its imports rewritten)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "analysis"], capture_output=True)
    if archive.returncode:
        raise SystemExit(f"--against {rev}: git archive failed: {archive.stderr.decode()[-500:]}")
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    pkg = dest / name
    (dest / "analysis").rename(pkg)
    for f in pkg.rglob("*.py"):
        f.write_text(re.sub(r"\b(from|import) analysis\b", rf"\1 {name}", f.read_text()))


class Parts:
    """CPU seconds spent inside wrapped callables, by label (nested calls count in each label)."""

    def __init__(self):
        self.t = collections.defaultdict(float)

    def wrap(self, obj, attr: str, label: str) -> None:
        f = getattr(obj, attr)

        def timed(*a, **k):
            c0 = time.process_time()
            try:
                return f(*a, **k)
            finally:
                self.t[label] += time.process_time() - c0

        setattr(obj, attr, timed)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="4x4x128", help="GPT-NeoX shape LxHxD")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--against", metavar="REV", help="also time the engine of git revision REV in this process")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    import bench_scoring as bs

    import analysis.eap as eap
    import analysis.eap_batch as eap_batch
    import analysis.eap_fused as eap_fused
    from analysis.graph import build_graph
    from analysis.models import load_model

    work = Path(tempfile.mkdtemp(prefix="profile_scoring_"))
    model_dir = bs.build_model(work / "model", bs.parse_shape(args.shape))
    adapter = load_model(model_dir, device="cpu", dtype="float32")
    graph = build_graph(adapter.spec)
    pairs = bs.make_pairs(64)
    kw = dict(method="eap-ig-inputs", metric="kl", steps=5, ig_rule="left", batch_size=16)
    runs = {"ours": lambda: eap.score(adapter, graph, pairs, **kw),
            "floor": lambda: bs.time_floor(adapter, pairs, 16, 5, "cpu")}
    if args.against:
        export_as(args.against, work, "analysis_against")
        sys.path.insert(0, str(work))
        import analysis_against.eap as old_eap
        from analysis_against.graph import build_graph as old_build_graph
        from analysis_against.models import load_model as old_load_model

        old = old_load_model(model_dir, device="cpu", dtype="float32")
        old_graph = old_build_graph(old.spec)
        runs[args.against] = lambda: old_eap.score(old, old_graph, pairs, **kw)
        new, ref = runs["ours"]().dense, runs[args.against]().dense
        print(f"scores: max |ours - {args.against}| / max |{args.against}| = "
              f"{float((new - ref).abs().max() / ref.abs().max()):.2e}")

    for f in runs.values():
        f()  # warm-up
    times = {k: [] for k in runs}
    loads = [os.getloadavg()[0]]
    for _ in range(args.repeats):  # timings first, without the probes (they cost ~15 calls per pass)
        for k, f in runs.items():
            c0 = time.process_time()
            f()
            times[k].append(time.process_time() - c0)
        loads.append(os.getloadavg()[0])
    parts = Parts()
    parts.wrap(eap_fused.FusedContraction, "_accumulate", "per-pass accumulate")
    parts.wrap(eap_fused.FusedContraction, "flush", "per-batch flush")
    parts.wrap(eap, "_parity", "parity forward")
    parts.wrap(adapter.model, "forward", "model forward")
    parts.wrap(torch.Tensor, "backward", "backward")
    parts.wrap(adapter, "encode_pairs", "tokenise")
    parts.wrap(adapter, "make_batch", "make batch")
    parts.wrap(eap_batch.BatchScorer, "__init__", "batch setup")
    best: dict[str, tuple[float, dict]] = {}
    for _ in range(max(3, args.repeats // 2)):  # then the parts, with the probes
        for k in ("ours", "floor"):
            parts.t.clear()
            c0 = time.process_time()
            runs[k]()
            t = time.process_time() - c0
            if k not in best or t < best[k][0]:
                best[k] = (t, dict(parts.t))
    floor = min(times["floor"])
    print(f"{args.shape}, 1 thread, {args.repeats} interleaved repeats, CPU seconds, load (1-min) "
          f"{min(loads):.1f}-{max(loads):.1f}")
    print("| run | min (s) | median (s) | min / floor min | median / floor median |")
    print("|---|---|---|---|---|")
    for k, v in times.items():
        print(f"| {k} | {min(v):.3f} | {statistics.median(v):.3f} | {min(v) / floor:.3f} | "
              f"{statistics.median(v) / statistics.median(times['floor']):.3f} |")
    print()
    print("fastest probed repeat, by part (ms; the model forward includes the parity forward; the probes "
          "add a little to ours):")
    labels = sorted(set(best["ours"][1]) | set(best["floor"][1]), key=lambda s: -best["ours"][1].get(s, 0))
    print("| part | ours (ms) | floor (ms) |")
    print("|---|---|---|")
    for s in labels:
        print(f"| {s} | {best['ours'][1].get(s, 0) * 1e3:.1f} | {best['floor'][1].get(s, 0) * 1e3:.1f} |")
    print(f"| total | {best['ours'][0] * 1e3:.1f} | {best['floor'][0] * 1e3:.1f} |")


if __name__ == "__main__":
    main()
