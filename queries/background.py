"""Writes off the training path: one worker thread writes checkpoints while training goes on.

Why: writing a Pythia-1.4B checkpoint (231k edges) takes about a second, a large one much longer, and
a slow or restarting store longer still; the training loop should not wait for it. The queue is
bounded (default 1) because a checkpoint's arrays are large: when the worker falls behind, the next
`write_checkpoint` blocks instead of piling checkpoints up in memory (at most `maxsize` queued, one
being written, one being produced).

Errors are never lost: an exception in the worker is raised in the training thread at the next
`write_checkpoint`, `flush()` or `close()`. The worker keeps writing later checkpoints after an error
(each stands alone), and a checkpoint handed over is written in order. Every other call
(`ensure_run`, `complete_steps`) first waits for the queue, so the wrapped writer is only ever used
by one thread at a time. A process killed mid-write leaves what the wrapped writer's complete flag
guarantees: no partial checkpoint is visible, and a rerun writes it again.

    writer = BackgroundWriter(SpoolingWriter(CircuitWriter(driver, database)))
    ...
    writer.close()   # waits for every queued checkpoint; raises the first error, if any
"""

from __future__ import annotations

import queue
import threading

_STOP = object()


class BackgroundWriter:
    """Wraps any writer with `ensure_run`, `complete_steps` and `write_checkpoint` (and optionally
    `flush`). Do not change a `CheckpointData` after handing it to `write_checkpoint`."""

    def __init__(self, writer, maxsize: int = 1, name: str = "circuitshift-writer"):
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1 (an unbounded queue would hold every checkpoint)")
        self.writer = writer
        self.written: list[tuple[str, int, object]] = []  # (run id, step, what write_checkpoint returned)
        self._queue: queue.Queue = queue.Queue(maxsize)
        self._errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._closed = False
        # daemon: a crashed training process must not hang on this thread; close() drains it first
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                run_id, arch, data = item
                result = self.writer.write_checkpoint(run_id, arch, data)
                with self._lock:
                    self.written.append((run_id, int(data.step), result))
            except BaseException as exc:  # noqa: BLE001 - handed to the training thread
                with self._lock:
                    self._errors.append(exc)
            finally:
                self._queue.task_done()

    def _raise_pending(self) -> None:
        with self._lock:
            exc = self._errors.pop(0) if self._errors else None
        if exc is not None:
            raise exc

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this BackgroundWriter is closed")

    def ensure_run(self, run, arch) -> None:
        self._check_open()
        self._queue.join()
        self._raise_pending()
        self.writer.ensure_run(run, arch)

    def complete_steps(self, run_id: str) -> list[int]:
        self._check_open()
        self._queue.join()
        self._raise_pending()
        return self.writer.complete_steps(run_id)

    def write_checkpoint(self, run_id: str, arch, data) -> None:
        """Hand the checkpoint to the worker (blocks while the queue is full). Raises an earlier
        checkpoint's error instead, if one failed: this checkpoint is then not taken."""
        self._check_open()
        self._raise_pending()
        if not self._thread.is_alive():
            raise RuntimeError("the background writer's thread has stopped")
        self._queue.put((run_id, arch, data))

    @property
    def queued(self) -> int:
        """Checkpoints handed over and not yet written (queued or being written)."""
        return self._queue.unfinished_tasks

    def flush(self):
        """Wait until every queued checkpoint is written, then flush the wrapped writer if it can
        (a SpoolingWriter replays its spool); returns what that returns. Raises a pending error."""
        self._check_open()
        self._queue.join()
        self._raise_pending()
        inner = getattr(self.writer, "flush", None)
        return inner() if inner is not None else None

    def close(self):
        """Write everything queued, stop the worker, flush the wrapped writer, raise a pending error.
        Returns what the wrapped writer's flush returns (a SpoolingWriter: what is still spooled)."""
        if self._closed:
            self._raise_pending()
            return None
        self._queue.put(_STOP)
        self._thread.join()
        self._closed = True
        inner = getattr(self.writer, "flush", None)
        result, flush_error = None, None
        try:  # replay the spool even when a checkpoint failed: the worker's error is raised first
            result = inner() if inner is not None else None
        except Exception as exc:  # noqa: BLE001 - raised below, after the worker's
            flush_error = exc
        self._raise_pending()
        if flush_error is not None:
            raise flush_error
        return result

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:  # the caller's exception wins; still write what was handed over
            try:
                self.close()
            except Exception:  # noqa: BLE001 - secondary to the exception already propagating
                pass
        return False
