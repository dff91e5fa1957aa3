"""How much memory one scoring batch takes, and the micro-batch (chunk) that fits a budget.

Scores are sums over examples, so a batch may be scored in chunks of C examples whose sums are added:
the result is the unchunked one up to float rounding (hannamw's batch mean still divides by the whole
batch's size, analysis.eap.score). Everything but the weights scales with C, so the chunk for a budget
is the largest C whose :func:`estimate_memory` fits.
"""

from __future__ import annotations

import torch

from analysis.errors import UserError

#: share of the free device memory a chosen chunk may fill (the rest: allocator slack, fragmentation)
BUDGET_SHARE = 0.9


def estimate_memory(adapter, graph, batch_size: int, n_pos: int) -> dict[str, int]:
    """Rough peak memory (bytes) of one batch (or chunk) of ``batch_size`` examples: weights,
    activation differences, stored gradients, per-layer contraction temporaries and autograd
    activations."""
    B, P, D, L, H = batch_size, n_pos, adapter.d_model, adapter.n_layers, adapter.n_heads
    wb = torch.finfo(adapter.dtype).bits // 8
    ab = 8 if adapter.dtype == torch.float64 else 4
    n_params = sum(p.numel() for p in adapter.model.parameters())
    config = adapter.model.config
    d_mlp = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * D
    out = {
        "weights": n_params * wb,
        "activation_differences": graph.n_src * B * P * D * ab,
        # per pass: q/k/v output gradients and outputs, LayerNorm inputs, MLP / logits input gradients
        "gradients": L * B * P * (8 * D) * wb,
        # one layer's (3H + 2) x B x P x D destination gradients, and the (L, 3H, B*P, dh) summed /
        # per-pass scaled head gradients and their xhat projections, plus the summed MLP gradients
        "contraction": ((3 * H + 2) + 10 * L) * B * P * D * ab,
        "autograd_activations": L * B * P * (12 * D + 2 * d_mlp + 2 * H * P) * wb,
    }
    out["total"] = sum(out.values())
    return out


def device_budget(adapter) -> int | None:
    """Bytes a scoring batch may use on the adapter's accelerator (its free memory plus what torch
    holds already, the weights among it, times BUDGET_SHARE); None on the CPU: no automatic chunking."""
    device = torch.device(adapter.device)
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int((free + torch.cuda.memory_allocated(device)) * BUDGET_SHARE)


def choose_chunk(adapter, graph, batch_size: int, n_pos: int, budget: int | None) -> int:
    """The largest chunk C <= batch_size whose estimate fits ``budget`` bytes (None: the whole batch).
    The estimate is weights + C x (the per-example rest), so C follows from one estimate."""
    if budget is None:
        return batch_size
    one = estimate_memory(adapter, graph, 1, n_pos)
    per_example = one["total"] - one["weights"]
    room = budget - one["weights"]
    if room < per_example:
        raise UserError(f"scoring one example of {n_pos} positions needs ~{format_bytes(one['total'])}, "
                        f"more than the budget {format_bytes(budget)}; shorten the prompts or use a larger device")
    return max(1, min(batch_size, room // per_example))


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"
