"""Fault injection: SIGKILL the Neo4j server at random moments while a job writes checkpoints.

Each trial starts a writer thread that does what the ingest callback does (ensure the run, skip stored
steps, write a checkpoint every `--pace` seconds through SpoolingWriter(CircuitWriter), optionally in a
BackgroundWriter), SIGKILLs the server at a random moment, restarts it, and waits until the store again
holds every checkpoint produced. It then checks every checkpoint against an uninterrupted write of the
same data and counts what was lost, duplicated or different (all must be 0).

    .venv/bin/python benchmarks/fault_injection.py --trials 10 --checkpoints 16
    .venv/bin/python benchmarks/fault_injection.py --trials 10 --retry 30    # open_driver's retry budget

downtime: from the kill until the user database answers again; recover: from then until the store
holds every checkpoint produced so far (spooled ones replayed). --retry is the driver's transaction retry budget: with 2 s a kill shows as errors and checkpoints are
spooled; with 30 s (open_driver's) a write mostly waits out the restart instead. Prints a Markdown
table; --json FILE also writes the figures.

    .venv/bin/python benchmarks/fault_injection.py --disk-full --checkpoints 12   # needs root (tmpfs)

fills the server's data folder instead (see `disk_full`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from faults import ARCH, PrivateServer, census, contents, run_record, synthetic, train_like  # noqa: E402
from queries.cypher import admin as S  # noqa: E402
from queries.background import BackgroundWriter  # noqa: E402
from queries.components import Architecture  # noqa: E402
from queries.spool import SpoolingWriter, pending  # noqa: E402
from queries.writer import CircuitWriter  # noqa: E402

DB = "neo4j"


def wait_until_answering(ps, timeout: float = 180.0) -> float:
    """The moment the user database answers a query again (its port opens earlier)."""
    deadline = time.perf_counter() + timeout
    with ps.driver(retry_s=0) as drv:
        while time.perf_counter() < deadline:
            try:
                with drv.session(database=DB) as session:
                    session.run(S.PING).consume()
                return time.perf_counter()
            except Exception:  # noqa: BLE001 - not yet
                time.sleep(0.1)
    raise RuntimeError("the restarted server never answered")


def trial(ps, monitor, spool, run_id, steps, args, rng, ref) -> dict:
    spooled: list[str] = []
    with ps.driver(retry_s=args.retry) as drv:
        writer = SpoolingWriter(CircuitWriter(drv, DB), spool, echo=lambda m: spooled.append(m))
        outer = BackgroundWriter(writer) if args.background else writer
        produced: list[int] = []
        errors: list[str] = []
        thread = threading.Thread(target=train_like, args=(outer, run_id, steps, args.pace, errors, produced))
        t0 = time.perf_counter()
        thread.start()
        kill_at = rng.uniform(0.1, args.kill_within)
        time.sleep(kill_at)
        ps.kill()
        killed = time.perf_counter()
        time.sleep(rng.uniform(0.0, 1.0))
        ps.start()
        ready = wait_until_answering(ps)
        recovered, deadline = None, ready + args.timeout
        while recovered is None and time.perf_counter() < deadline:  # until the store holds every
            if not thread.is_alive() and pending(spool, run_id):      # checkpoint produced so far
                outer.flush()
            stored = set(CircuitWriter(monitor, DB).complete_steps(run_id))
            if produced and set(produced) <= stored and not pending(spool, run_id):
                recovered = time.perf_counter()
            else:
                time.sleep(0.05)
        if recovered is None:
            errors.append(f"not recovered within {args.timeout:g} s")
            recovered = time.perf_counter()
        thread.join()
        left = outer.close() if args.background else writer.flush()
        rows = census(monitor, DB, run_id)
        got = contents(monitor, DB, run_id)
    per_step: dict[int, int] = {}
    for r in rows:
        per_step[r["step"]] = per_step.get(r["step"], 0) + 1
    return {"run": run_id, "kill_at_s": round(kill_at, 2), "spooled": sum("spooled to" in m for m in spooled),
            "downtime_s": round(ready - killed, 2), "recover_s": round(recovered - ready, 2),
            "trial_s": round(time.perf_counter() - t0, 1), "left": len(left or []),
            "lost": len(set(steps) - set(got)),
            "duplicates": sum(n - 1 for n in per_step.values()) + sum(r["rels"] != r["n_in_graph"] for r in rows),
            "different": sum(got[s] != ref[s] for s in got), "errors": [e if isinstance(e, str) else repr(e) for e in errors]}


def disk_full(args) -> int:
    """The server's data folder fills up (a tmpfs under the home, nearly filled): the writes the
    server fails are spooled with the server's reason; after space is freed and the server restarted,
    the spool is replayed: nothing lost, nothing partial, nothing twice."""
    arch = Architecture(12, 12, False)  # 32,491 edges: a few MB of transaction log per checkpoint
    steps = [10 * i for i in range(args.checkpoints)]
    with tempfile.TemporaryDirectory(prefix="circuitshift-diskfull-") as tmp:
        home = Path(tmp) / "neo4j"
        home.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400m", "tmpfs", str(home)]).returncode:
            print("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN): not tested")
            return 2
        lines: list[str] = []
        try:  # small log files, so the full disk shows within a few checkpoints, not after 64 MB
            ps = PrivateServer(home, extra_conf={"db.tx_log.rotation.size": "2M"})
            ps.start()
            st = os.statvfs(home)
            (home / "filler").write_bytes(b"\0" * (st.f_bavail * st.f_frsize - 3 * 2 ** 20))
            with ps.driver() as drv:
                w = SpoolingWriter(CircuitWriter(drv, DB), Path(tmp) / "spool", echo=lines.append)
                w.ensure_run(run_record("full"), arch)
                stored = [s for s in steps if w.write_checkpoint("full", arch, synthetic(arch, s)) is not None]
                (home / "filler").unlink()
                ps.restart()
                t0 = time.perf_counter()
                left = w.flush()
                replay_s = time.perf_counter() - t0
                CircuitWriter(drv, DB).ensure_run(run_record("ref"), arch)
                for step in steps:
                    CircuitWriter(drv, DB).write_checkpoint("ref", arch, synthetic(arch, step))
                rows, got, ref = census(drv, DB, "full"), contents(drv, DB, "full"), contents(drv, DB, "ref")
            ps.stop()
        finally:
            subprocess.run(["umount", str(home)], check=False)
    spooled = [m for m in lines if "spooled to" in m]
    print(f"server data folder full: {len(stored)} of {len(steps)} checkpoints stored before, "
          f"{len(spooled)} spooled; replayed after freeing space and a restart in {replay_s:.1f} s; "
          f"left {len(left)}, lost {len(set(steps) - set(got))}, "
          f"partial or twice {sum(r['rels'] != r['n_in_graph'] or not r['complete'] for r in rows) + len(rows) - len(got)}, "
          f"different {sum(got[s] != ref[s] for s in got)}")
    for m in dict.fromkeys(m.split("): checkpoint")[0] + ")" for m in spooled):
        print("  the job was told:", m)
    return 0 if not left and got == ref else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--checkpoints", type=int, default=16, help="checkpoints per trial")
    ap.add_argument("--pace", type=float, default=0.75, help="seconds of 'training' between checkpoints")
    ap.add_argument("--kill-within", type=float, default=3.0, help="kill at a random moment in [0.1, this] s")
    ap.add_argument("--retry", type=float, default=2.0, help="driver transaction retry budget, seconds")
    ap.add_argument("--background", action="store_true", help="wrap the writer in a BackgroundWriter")
    ap.add_argument("--timeout", type=float, default=180.0, help="give up a trial after this many s")
    ap.add_argument("--seed", type=int, default=20)
    ap.add_argument("--disk-full", action="store_true", help="instead: fill the server's data folder")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.disk_full:
        return disk_full(args)
    steps = [10 * i for i in range(args.checkpoints)]
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="circuitshift-faults-") as tmp:
        ps = PrivateServer(Path(tmp) / "neo4j")
        ps.start()
        try:
            with ps.driver(retry_s=30) as monitor:
                writer = CircuitWriter(monitor, DB)
                writer.ensure_run(run_record("ref"), ARCH)
                for step in steps:
                    writer.write_checkpoint("ref", ARCH, synthetic(ARCH, step))
                ref = contents(monitor, DB, "ref")
                rows = [trial(ps, monitor, Path(tmp) / "spool", f"trial{i}", steps, args, rng, ref)
                        for i in range(args.trials)]
        finally:
            ps.stop()
    print(f"{args.trials} trials x {args.checkpoints} checkpoints, retry budget {args.retry:g} s"
          f"{', background writer' if args.background else ''}\n")
    print("| trial | kill at s | spooled | downtime s | recover s | lost | duplicates | different |")
    print("|---|---|---|---|---|---|---|---|")
    for i, r in enumerate(rows):
        print(f"| {i} | {r['kill_at_s']} | {r['spooled']} | {r['downtime_s']} | {r['recover_s']} | "
              f"{r['lost']} | {r['duplicates']} | {r['different']} |" + (f" {r['errors']}" if r["errors"] else ""))
    total = {k: sum(r[k] for r in rows) for k in ("spooled", "lost", "duplicates", "different", "left")}
    rec = sorted(r["recover_s"] for r in rows)
    print(f"\ntotal: {args.trials * args.checkpoints} checkpoints, {total['spooled']} spooled, "
          f"lost {total['lost']}, duplicates {total['duplicates']}, different {total['different']}, "
          f"left spooled {total['left']}, errors {sum(len(r['errors']) for r in rows)}; "
          f"recover median {rec[len(rec) // 2]:.2f} s, max {rec[-1]:.2f} s")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "trials": rows, "total": total}, indent=2))
    bad = total["lost"] or total["duplicates"] or total["different"] or total["left"]
    return 1 if bad or any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
