"""Two (or more) CPU processes in one gloo group, for the distributed tests: each rank's worker
pickles its results to `out.RANK`, and the test reads them back in rank order."""

from __future__ import annotations

import os
import pickle

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from queries.server.local import free_port


def join_gloo(rank: int, world: int, port: int) -> None:
    """Join the group on 127.0.0.1:`port`, one torch thread per process (the machine has 2 cores)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)


def spawn_ranks(worker, world: int, model_dir: str, out: str) -> list:
    """Run `worker(rank, world, port, model_dir, out)` in `world` processes; their pickled results."""
    mp.spawn(worker, args=(world, free_port(), model_dir, out), nprocs=world, join=True)
    ranks = []
    for r in range(world):
        with open(f"{out}.{r}", "rb") as f:
            ranks.append(pickle.load(f))
    return ranks
