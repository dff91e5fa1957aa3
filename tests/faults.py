"""Fault-injection helpers shared by tests/test_spool.py, tests/test_background.py and the benchmarks.

A `PrivateServer` is a real Neo4j 5.26 server of our own (queries.server.local, free loopback ports, a
throw-away home) that a test may SIGKILL, restart, or rotate the password of, without disturbing the
session's shared server. Checkpoints are small and synthetic, but carry the real producer's units:
accuracy, circuit accuracy and faithfulness in percent, the scoring settings as a dict.
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from pathlib import Path

import numpy as np
from neo4j import GraphDatabase

from queries.cypher import admin as S
from queries.components import Architecture
from queries.connection import set_initial_password
from queries.server.local import LocalServer, free_port
from queries.writer import CheckpointData, RunRecord

ARCH = Architecture(2, 2, True)  # 2 layers x 2 heads: 42 q/k/v-level edges

ROTATE = "ALTER CURRENT USER SET PASSWORD FROM $old TO $new"
BOLT_CONNECTIONS = "CALL dbms.listConnections() YIELD connectionId, connector"
KILL_CONNECTIONS = "CALL dbms.killConnections($ids) YIELD connectionId RETURN connectionId"


def qkv_names(arch: Architecture) -> list[str]:
    return [n for n in arch.key_of if n.endswith(">") or not n.split("->")[1].startswith("a")]


def synthetic(arch: Architecture, step: int, seed: int = 0, frac: float = 0.1) -> CheckpointData:
    """One checkpoint as the ingest callback builds it: every q/k/v-level edge scored, the top `frac`
    by |score| in the circuit, and the metrics the producer stores (percent, like analysis.evaluate)."""
    names = qkv_names(arch)
    rng = np.random.default_rng([seed, step])
    scores = rng.standard_normal(len(names)) * np.exp(rng.standard_normal(len(names)))
    k = max(1, int(frac * len(names)))
    flags = np.zeros(len(names), dtype=bool)
    flags[np.argsort(-np.abs(scores), kind="stable")[:k]] = True
    acc = float(np.round(rng.uniform(5, 95), 2))
    meta = {"accuracy": acc, "circuit_accuracy": float(np.round(acc * rng.uniform(0.5, 1), 2)),
            "faithfulness": float(np.round(rng.uniform(10, 100), 3)), "f_model": float(rng.uniform(1, 3)),
            "f_circuit": float(rng.uniform(0, 3)), "parity_max_abs_logit_diff": 1e-6,
            "n_circuit_edges": k, "n_circuit_nodes": k + 1, "n_examples": 200,
            "score_seconds": 1.5, "eval_seconds": 0.4, "epoch": step / 100, "train_loss": 2.0 / (1 + step),
            "scoring": {"method": "eap-ig-inputs", "steps": 5, "ig_rule": "right", "metric": "kl",
                        "top_frac": frac, "selection": f"top_frac {frac:g} then prune"},
            "checkpoint_seconds": 2.1}
    return CheckpointData(step=step, names=names, scores=scores.tolist(), in_graph=flags.tolist(),
                          level="qkv", meta=meta)


def run_record(run_id: str, config_hash: str = "cfg-a") -> RunRecord:
    return RunRecord(id=run_id, model="synthetic-2x2", revision="sha256:test", task="add_sub_100",
                     dataset_hash="sha256:data", data_split="circuit", method="lora",
                     hparams={"rank": 32, "learning_rate": 1e-4}, seed=42, code_version="test",
                     extra={"checkpoint_steps": [0, 25, 50]}, config_hash=config_hash)


def train_like(writer, run_id: str, steps, pace: float, errors: list, produced: list | None = None) -> None:
    """What the ingest callback does, without torch: ensure the run, skip stored steps, write each
    checkpoint, `pace` seconds of "training" between them. Errors go to `errors` (the caller reports
    them); `produced` collects the steps handed to the writer."""
    try:
        writer.ensure_run(run_record(run_id), ARCH)
        done = set(writer.complete_steps(run_id))
        for step in steps:
            if step not in done:
                writer.write_checkpoint(run_id, ARCH, synthetic(ARCH, step))
            if produced is not None:
                produced.append(step)
            time.sleep(pace)
    except Exception as exc:  # noqa: BLE001 - reported by the caller
        errors.append(exc)


def contents(driver, database, run: str) -> dict[int, dict]:
    """A run's complete checkpoints as stored, without what differs between two writes of the same
    data (uid, run id, timestamps): two runs written from the same checkpoints compare equal."""
    records, _, _ = driver.execute_query(S.CHECKPOINT_CONTENTS, run=run, database_=database, routing_="r")
    out = {}
    for r in records:
        props = {k: v for k, v in r["props"].items() if k not in ("uid", "run", "started", "finished")}
        out[r["step"]] = {"props": props, "circuit": [tuple(x) for x in r["circuit"]]}
    return out


def census(driver, database, run: str) -> list[dict]:
    """Every checkpoint node of a run (complete or not) with its circuit relationships counted."""
    records, _, _ = driver.execute_query(S.CHECKPOINT_CENSUS, run=run, database_=database, routing_="r")
    return [r.data() for r in records]


def server_heap(driver, database=None) -> dict:
    """The server JVM's heap in bytes (used, committed, max) and `old_used`, its G1 old generation."""
    records, _, _ = driver.execute_query(S.SERVER_HEAP, bean="java.lang:type=Memory", database_=database,
                                         routing_="r")
    heap = dict(records[0]["heap"])
    records, _, _ = driver.execute_query(S.SERVER_MEMORY_POOL, bean="java.lang:type=MemoryPool,name=G1 Old Gen",
                                         database_=database, routing_="r")
    heap["old_used"] = records[0]["usage"]["used"] if records else None
    return heap


class PrivateServer:
    """A Neo4j server of our own that tests may kill -9, restart and re-key."""

    def __init__(self, home: Path, heap: str = "512m", extra_conf: dict[str, str] | None = None):
        self.extra_conf = dict(extra_conf or {})
        self.server = LocalServer(Path(home), bolt_port=free_port(), http_port=free_port(), heap=heap,
                                  extra_conf=self.extra_conf)
        self.password = secrets.token_urlsafe(12)
        self._initialised = False

    @property
    def uri(self) -> str:
        return f"bolt://127.0.0.1:{self.server.bolt_port}"

    def start(self) -> None:
        self.server.start(timeout=180)
        if not self._initialised:
            set_initial_password(self.uri, self.password)
            self._initialised = True

    def driver(self, password: str | None = None, retry_s: float = 2.0):
        """A driver like `open_driver`'s, but with a short retry budget, so a kill shows as an error
        (and a spooled checkpoint) rather than a wait; `open_driver` retries for 30 s."""
        return GraphDatabase.driver(self.uri, auth=("neo4j", password or self.password),
                                    connection_timeout=5, max_transaction_retry_time=retry_s,
                                    notifications_min_severity="OFF")

    def kill(self) -> None:
        """SIGKILL the server process (no shutdown, no checkpoint of its transaction log)."""
        pid = self.server.status().pid
        if pid is None:
            return
        os.kill(pid, signal.SIGKILL)
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass

    def stop(self) -> None:
        self.server.stop()

    def restart(self, read_only: bool = False) -> None:
        """Stop, then start again on the same home and ports; `read_only`: the user database is
        read-only (Community can only set that in the config, so it takes a restart)."""
        self.server.stop()
        extra = {**self.extra_conf, **({"server.databases.read_only": "neo4j"} if read_only else {})}
        self.server = LocalServer(self.server.home, bolt_port=self.server.bolt_port,
                                  http_port=self.server.http_port, heap=self.server.heap, extra_conf=extra)
        self.start()

    def rotate_password(self) -> str:
        """Change the password and close every Bolt connection, as an administrator rotating a
        credential would (open connections otherwise keep their old login). Returns the new one."""
        new = secrets.token_urlsafe(12)
        with self.driver() as admin:
            admin.execute_query(ROTATE, old=self.password, new=new, database_="system")
        self.password = new
        with self.driver() as admin:
            ids = [r["connectionId"] for r in admin.execute_query(BOLT_CONNECTIONS, database_="system").records
                   if r["connector"] == "bolt"]
            try:
                admin.execute_query(KILL_CONNECTIONS, ids=ids, database_="system")
            except Exception:  # noqa: BLE001 - its own connection is among those closed
                pass
        return new
