"""Scoring and evaluation split across the processes of a distributed run (torchrun / accelerate).

Every rank takes whole batches of the circuit split, round robin (rank r scores batches r, r + N, ...),
runs the unchanged single-process engine on them, and the per-batch sums are all-reduced. Because the
batches are exactly the single-process run's batches, every per-batch quantity is the same (including
hannamw's batch-mean normalisation and padding); only the order of the final sum differs, so sharded
scores equal single-process scores to float rounding. Each rank then holds the global result; the
caller decides who writes (rank 0).

Without an initialised process group (or with one process) these are the plain `analysis.eap.score` and
`analysis.evaluate.evaluate_many`. `analysis.mib.mib_curve` evaluates its circuits through
:func:`sharded_evaluate_many`, so a MIB curve (`ingest run --mib` under torchrun) is sharded the same way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

import torch
import torch.distributed as dist

from analysis.eap import ScoreResult, score
from analysis.errors import UserError
from analysis.evaluate import EvalResult, Faithfulness, evaluate_many, percent

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """This process's place in the run: `rank` of `world` processes."""

    rank: int = 0
    world: int = 1

    def indices(self, n: int, batch_size: int) -> list[int]:
        """The example indices of this rank's batches (whole batches, round robin)."""
        starts = range(self.rank * batch_size, n, self.world * batch_size)
        return [i for st in starts for i in range(st, min(n, st + batch_size))]


def current_shard() -> Shard:
    """The shard of this process: its rank in the initialised process group, else the only one."""
    if dist.is_available() and dist.is_initialized():
        return Shard(dist.get_rank(), dist.get_world_size())
    return Shard()


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    # gloo and nccl both reduce float64; the tensor travels on the backend's device
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    out = t.to(device)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.cpu()


def sharded_score(adapter, graph, pairs: Sequence, shard: Shard | None = None, **kwargs):
    """`analysis.eap.score` over this rank's batches, all-reduced into the whole split's scores."""
    shard = shard or current_shard()
    if shard.world == 1:
        return score(adapter, graph, pairs, **kwargs)
    batch_size = kwargs.get("batch_size", 16)
    mine = [pairs[i] for i in shard.indices(len(pairs), batch_size)]
    local = score(adapter, graph, mine, **kwargs) if mine else None
    # a result is total / (n_local * points): undo the 1/n_local, sum, divide by the global n
    part = local.dense * len(mine) if local else torch.zeros(graph.n_src, graph.n_dst, dtype=torch.float64)
    seconds = torch.tensor([local.seconds if local else 0.0], dtype=torch.float64)
    dense = _all_reduce(part) / len(pairs)
    seconds = float(_all_reduce(seconds)) / shard.world
    first = [None]
    if shard.rank == 0:  # rank 0 always has the first batch: its settings and parity are the run's
        first = [(local.settings, local.parity)]
    dist.broadcast_object_list(first, src=0)
    settings, parity = first[0]
    settings = {**settings, "n_examples": len(pairs), "shards": shard.world}
    dense[~graph.mask] = 0.0
    return ScoreResult(dense, graph.mask.clone(), graph, settings, parity, seconds)


def sharded_evaluate_many(adapter, circuits, pairs: Sequence, metrics: Sequence[str] = ("kl",),
                          batch_size: int = 16, prune: bool = True, shard: Shard | None = None,
                          progress: bool = False) -> list[EvalResult]:
    """`analysis.evaluate.evaluate_many` over this rank's batches, recombined into the whole split's
    faithfulness and accuracies (every F is a mean over examples, so the global one is the
    example-weighted mean of the ranks')."""
    shard = shard or current_shard()
    if shard.world == 1:
        return evaluate_many(adapter, circuits, pairs, metrics, batch_size, prune, progress)
    metrics = tuple(metrics)
    mine = [pairs[i] for i in shard.indices(len(pairs), batch_size)]
    local = evaluate_many(adapter, circuits, mine, metrics, batch_size, prune, progress) if mine else None
    n_local, n = len(mine), len(pairs)
    # per circuit: [circuit_correct, model_correct, (f_model, f_circuit) per metric, seconds], all * n_local
    width = 2 + 2 * len(metrics) + 1
    part = torch.zeros(len(circuits), width, dtype=torch.float64)
    if local:
        for i, r in enumerate(local):
            row = [r.circuit_accuracy, r.model_accuracy]
            for m in metrics:
                row += [r.by_metric[m].f_model, r.by_metric[m].f_circuit]
            part[i, :-1] = torch.tensor(row, dtype=torch.float64) * n_local
            part[i, -1] = r.seconds
    total = _all_reduce(part)
    n_edges = [None]
    if shard.rank == 0:
        n_edges = [[r.n_edges for r in local]]
    dist.broadcast_object_list(n_edges, src=0)
    out = []
    for i in range(len(circuits)):
        row = (total[i, :-1] / n).tolist()
        by = {}
        for j, m in enumerate(metrics):
            fm, fc = row[2 + 2 * j], row[3 + 2 * j]
            by[m] = Faithfulness(m, fm, fc, percent(fm, fc))
        first = by[metrics[0]]
        out.append(EvalResult(first.percent, first.f_model, first.f_circuit, row[0], row[1], n, n_edges[0][i],
                              metrics[0], by, float(total[i, -1]) / shard.world))
    return out


def is_main_process() -> bool:
    """Rank 0 (or the only process): the one that writes to the store. Before the process group is
    initialised, the rank a launcher (torchrun, accelerate launch) put in the environment."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return launched_shard().rank == 0


def launched_shard() -> Shard:
    """The shard a launcher describes in the environment (RANK / WORLD_SIZE; both torchrun and
    accelerate launch set them), whether or not the process group is initialised yet."""
    return Shard(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")))


def join_launched_group(device: str) -> Shard:
    """Initialise the process group of a launched run (gloo on the CPU, nccl on CUDA) if there is one
    and it is not initialised yet; the Trainer (accelerate) then uses this group. Returns the shard."""
    launched = launched_shard()
    if launched.world > 1 and dist.is_available() and not dist.is_initialized():
        cuda = str(device).startswith("cuda")
        if cuda:  # one GPU per process, before nccl starts
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
    return current_shard()


def from_rank0(fn: Callable[[], T]) -> T:
    """``fn()`` run on rank 0 alone (e.g. a read of the store), its value broadcast to every rank; a
    UserError on rank 0 is raised on every rank (so no rank waits for a collective that never comes)."""
    if current_shard().world == 1:
        return fn()
    box: list = [None]
    if dist.get_rank() == 0:
        try:
            box = [("ok", fn())]
        except UserError as e:
            box = [("error", str(e))]
        except BaseException as e:  # tell the others before dying, then re-raise here
            dist.broadcast_object_list([("error", f"rank 0 failed: {e!r}")], src=0)
            raise
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise UserError(value)
    return value


def barrier() -> None:
    """Wait for every rank (a no-op outside a distributed run)."""
    if current_shard().world > 1:
        dist.barrier()


__all__ = ["Shard", "current_shard", "sharded_score", "sharded_evaluate_many", "is_main_process",
           "launched_shard", "join_launched_group", "from_rank0", "barrier"]
