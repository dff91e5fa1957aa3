"""Keep training when the store is away: spool each checkpoint to disk, replay it when the store is back.

Why: a fine-tuning job scores a checkpoint in minutes and writes it in seconds; a store restart, a
network blip, a rotated password or a read-only database must not kill the job or lose the result.
`SpoolingWriter` has the writer interface the ingest callback uses (`ensure_run`, `complete_steps`,
`write_checkpoint`) and wraps a `CircuitWriter`:

  * a write the store cannot take (see `store_unavailable`) goes to the spool (queries/spool_files.py)
    and training goes on; a programming error or bad data still raises, spooled or not;
  * at each checkpoint and at `flush()` (the end of training) it replays what is spooled, oldest
    first, through the normal writer: idempotent (a step the store already has complete is not
    written again) and a file is removed only after its checkpoint is complete in the store;
  * `complete_steps` while the store is away is what was last known plus what is spooled, so a
    resumed job does not score again what is safe on disk;
  * the store-side `ensure_run` is done lazily, before the first write that reaches the store.

`replay(driver, database, spool_dir, run)` is the same replay by hand (`circuitshift ingest replay`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from neo4j import exceptions as nx

from analysis.errors import UserError
from queries.components import Architecture
from queries.spool_files import (SpoolEntry, default_spool_dir, load, pending, read_marker, remove,
                                 run_folder, spool_checkpoint)
from queries.writer import CheckpointData, CircuitWriter, RunRecord, ranked_arrays

__all__ = ["ReplayReport", "SpoolEntry", "SpoolingWriter", "default_spool_dir", "describe", "pending",
           "replay", "store_unavailable"]

# The store refuses writes but will take them again later (not a fault of the statement or the data).
# After a password rotation the old login also runs into the server's failed-login lock for a while.
# A server whose disk is full fails the commit, then refuses every transaction until it is restarted
# (measured: benchmarks/fault_injection.py --disk-full).
REFUSED_CODES = ("Neo.ClientError.General.WriteOnReadOnlyAccessDatabase",
                 "Neo.ClientError.General.ForbiddenOnReadOnlyDatabase",
                 "Neo.TransientError.General.ForbiddenOnReadOnlyDatabase",
                 "Neo.ClientError.Security.AuthenticationRateLimit",
                 "Neo.DatabaseError.Transaction.TransactionCommitFailed",
                 "Neo.DatabaseError.Transaction.TransactionStartFailed")


def store_unavailable(exc: BaseException) -> bool:
    """Whether `exc` means "the store cannot take writes now" (spool and retry later) rather than a bug
    or bad data (raise): unreachable, restarting, expired session, rejected credentials (a rotated
    password, the failed-login lock), a transient or unavailable database, a read-only database, a
    database that cannot commit or start transactions (its disk is full), a lost connection."""
    if isinstance(exc, (nx.ServiceUnavailable, nx.SessionExpired, nx.TransientError, nx.AuthError,
                        ConnectionError, TimeoutError)):  # IncompleteCommit is a ServiceUnavailable
        return True
    return isinstance(exc, nx.Neo4jError) and (exc.code or "") in REFUSED_CODES


def describe(exc: BaseException) -> str:
    """A short one-line reason for a log or an error message."""
    if isinstance(exc, nx.Neo4jError) and exc.code:
        text = f"{exc.code}: {exc.message or ''}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())[:200]


@dataclass(frozen=True)
class ReplayReport:
    """What a replay did: checkpoints written, found already complete (file dropped), still spooled."""

    written: tuple[SpoolEntry, ...]
    skipped: tuple[SpoolEntry, ...]
    remaining: tuple[SpoolEntry, ...]


def _replay_into(writer: CircuitWriter, entries: list[SpoolEntry], expect: RunRecord | None,
                 written: list, skipped: list) -> None:
    """Replay `entries` in order, appending to `written`/`skipped` as each one lands (so progress
    survives an exception). Store errors propagate; a bad file is a UserError naming it, kept."""
    ensured: set[tuple[str, str]] = set()
    for entry in entries:
        run, arch, data = load(entry)
        if expect is not None and run.config_hash != expect.config_hash:
            raise UserError(f"spool file {entry.path} was written by run {run.id!r} with other settings "
                            f"(config hash {run.config_hash[:12] or '-'} vs "
                            f"{expect.config_hash[:12] or '-'}): refusing to replay it into this run")
        if (run.id, run.config_hash) not in ensured:
            try:
                writer.ensure_run(run, arch)
            except UserError as exc:
                raise UserError(f"spool file {entry.path} refused: {exc}") from None
            ensured.add((run.id, run.config_hash))
        if data.step in set(writer.complete_steps(run.id)):
            writer.remove_incomplete(run.id, data.step)  # leftovers of a write cut short
            skipped.append(entry)
        else:
            writer.write_checkpoint(run.id, arch, data)  # returns once the store marked it complete
            written.append(entry)
        remove(entry)


def replay(driver, database: str | None, spool_dir: Path | None = None,
           run: str | None = None) -> ReplayReport:
    """Replay what is spooled (for `run`, or every run) into the store. An unreachable store, a
    damaged file or a file of another run is one UserError line; what was not replayed stays."""
    spool_dir = Path(spool_dir) if spool_dir is not None else default_spool_dir()
    writer = CircuitWriter(driver, database)
    written: list[SpoolEntry] = []
    skipped: list[SpoolEntry] = []
    try:
        _replay_into(writer, pending(spool_dir, run), None, written, skipped)
    except Exception as exc:
        if not store_unavailable(exc):
            raise
        left = len(pending(spool_dir, run))
        raise UserError(f"the store is unavailable ({describe(exc)}): {left} checkpoint(s) stay "
                        f"spooled in {spool_dir}; replay again when it is back") from None
    return ReplayReport(tuple(written), tuple(skipped), tuple(pending(spool_dir, run)))


class SpoolingWriter:
    """A CircuitWriter that spools what the store cannot take and replays it when the store is back.

    `echo` (optional) is told, in one line, when a checkpoint is spooled and when spooled ones land.
    `unavailable` is the reason of the last failed attempt, or None once the store answered again.
    """

    def __init__(self, writer: CircuitWriter, spool_dir: Path | None = None, echo=None):
        self.writer = writer
        self.spool_dir = Path(spool_dir) if spool_dir is not None else default_spool_dir()
        self.echo = echo
        self.unavailable: str | None = None
        self._runs: dict[str, tuple[RunRecord, Architecture]] = {}
        self._in_store: set[str] = set()  # runs whose store-side ensure_run succeeded
        self._known: dict[str, set[int]] = {}  # steps last known complete in the store

    def _attempt(self, fn):
        """(True, fn()) or (False, None) when the store is unavailable. A quick connectivity check
        first, so a server that is down costs one refused connection, not the driver's retry time."""
        try:
            self.writer.driver.verify_connectivity()
            result = fn()
        except Exception as exc:
            if not store_unavailable(exc):
                raise
            self.unavailable = describe(exc)
            return False, None
        self.unavailable = None
        return True, result

    def ensure_run(self, run: RunRecord, arch: Architecture) -> None:
        spooled = read_marker(run_folder(self.spool_dir, run.id)).get("config_hash")
        if spooled is not None and spooled != run.config_hash and pending(self.spool_dir, run.id):
            raise UserError(f"run {run.id!r} has checkpoints spooled in {self.spool_dir} with other "
                            f"settings (config hash {spooled[:12] or '-'} vs {run.config_hash[:12] or '-'}); "
                            "replay or remove them first, or choose another --run-id")
        self._runs[run.id] = (run, arch)
        ok, _ = self._attempt(lambda: self.writer.ensure_run(run, arch))
        if ok:
            self._in_store.add(run.id)
            self._flush_run(run.id)  # a rerun replays what an earlier job left spooled, first

    def complete_steps(self, run_id: str) -> list[int]:
        ok, steps = self._attempt(lambda: self.writer.complete_steps(run_id))
        if ok:
            self._known[run_id] = set(steps)
        spooled = {e.step for e in pending(self.spool_dir, run_id)}
        return sorted(self._known.get(run_id, set()) | spooled)

    def _write(self, run_id: str, arch: Architecture, data: CheckpointData) -> int:
        if run_id not in self._in_store:
            self.writer.ensure_run(*self._runs[run_id])
            self._in_store.add(run_id)
        uid = self.writer.write_checkpoint(run_id, arch, data)
        self._known.setdefault(run_id, set()).add(int(data.step))
        return uid

    def write_checkpoint(self, run_id: str, arch: Architecture, data: CheckpointData) -> int | None:
        """Write to the store (returns the uid) or, when it is unavailable, to the spool (None)."""
        if run_id not in self._runs:
            raise UserError(f"run {run_id!r}: call ensure_run before write_checkpoint")
        damaged = None
        try:
            blocked = bool(self._flush_run(run_id))  # earlier spooled checkpoints go first
        except UserError as exc:  # a damaged spool file: this checkpoint is saved, then it is raised
            blocked, damaged = False, exc
        if not blocked:
            ok, uid = self._attempt(lambda: self._write(run_id, arch, data))
            if ok:
                if damaged:
                    raise damaged
                return uid
        if not ranked_arrays(arch, data)["in_graph"]:  # bad data raises, spooled or not
            raise UserError(f"checkpoint {data.step} of run {run_id!r} has no edge in its circuit")
        entry = spool_checkpoint(self.spool_dir, self._runs[run_id][0], arch, data,
                                 self.unavailable or "store unavailable")
        if self.echo:
            self.echo(f"store unavailable ({self.unavailable}): checkpoint {data.step} spooled to "
                      f"{entry.path}")
        if damaged:
            raise damaged
        return None

    def _flush_run(self, run_id: str) -> list[SpoolEntry]:
        entries = pending(self.spool_dir, run_id)
        if not entries:
            return []
        written: list[SpoolEntry] = []
        skipped: list[SpoolEntry] = []
        self._attempt(lambda: _replay_into(self.writer, entries, self._runs[run_id][0], written, skipped))
        landed = written + skipped
        if landed:
            self._in_store.add(run_id)
            self._known.setdefault(run_id, set()).update(e.step for e in landed)
            if self.echo:
                self.echo(f"store back: {len(landed)} spooled checkpoint(s) of run {run_id!r} replayed")
        return pending(self.spool_dir, run_id)

    def flush(self) -> list[SpoolEntry]:
        """Replay what is spooled for this writer's runs; returns what is still spooled."""
        left: list[SpoolEntry] = []
        for run_id in self._runs:
            left += self._flush_run(run_id)
        return left
