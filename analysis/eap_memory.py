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
    """Peak memory (bytes) of scoring batches (or chunks) of ``batch_size`` examples of ``n_pos``
    positions, once the engine's buffers all exist (from the second batch on). Every part but
    ``weights`` is proportional to ``batch_size`` (choose_chunk relies on it).

    The parts follow the engine (analysis.eap_fused, analysis.eap_batch); benchmarks/bench_memory.py
    checks the sum against measured peaks (CPU, float32: within 20% for Llama-3-8B-wide models of 1-3
    layers and small GPT-NeoX ones, benchmarks/results/memory.json)."""
    B, P, D, L, H = batch_size, n_pos, adapter.d_model, adapter.n_layers, adapter.n_heads
    BP = B * P
    G = getattr(adapter, "n_kv_heads", None) or H
    dh = getattr(adapter, "d_head", None) or D // H
    n_qkv = (H + 2 * G) * dh  # q/k/v projection outputs per position (grouped-query: fewer k/v heads)
    wb = torch.finfo(adapter.dtype).bits // 8
    ab = 8 if adapter.dtype == torch.float64 else 4  # the accumulation dtype (analysis.eap)
    n_params = sum(p.numel() for p in adapter.model.parameters())
    config = adapter.model.config
    d_mlp = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * D
    arch = getattr(adapter, "architecture", None)
    gated = "gate_proj" in getattr(arch, "lora_targets", ())  # SwiGLU / GeGLU: gate and up projections
    layernorm = getattr(arch, "norm", None) == "layernorm"
    # the fused path keeps each pass's q/k/v projection outputs when the model runs in the accumulation dtype
    qkv_out = 2 if layernorm and wb == ab else 1
    out = {
        # the model's, plus the engine's per-layer copies in the accumulation dtype: the q/k/v head rows
        # times the norm weight (and their stacked copy) and W_O (H, dh, D) (also kept in the model's
        # dtype when that differs)
        "weights": n_params * wb + L * D * (2 * n_qkv * ab + H * dh * (ab + (wb if wb != ab else 0))),
        # the (n_src, B, P, D) differences, and the clean / corrupted input embeddings
        "activation_differences": BP * D * (graph.n_src * ab + 2 * wb),
        # two passes' gradients alive at once (the next pass runs before the last one's are dropped):
        # q/k/v output, MLP and logits input gradients and the attention norm inputs they keep; the engine's
        # sums over the gradient points (scaled q/k/v gradients, their xhat products, MLP / logits)
        "gradients": L * BP * (2 * (qkv_out * n_qkv + 2 * D) * wb + (2 * n_qkv + D) * ab) + BP * D * ab,
        # the per-layer contraction buffer: one layer's (q/k/v heads + MLP + logits) x B*P x D gradients
        "contraction": BP * D * (n_qkv // dh + 2) * ab,
        # what autograd saves per layer (norm outputs, q/k/v and rotary copies, attention output and
        # probabilities, residuals; the MLP's 2 or, gated, 4 hidden activations), once per pass one
        # layer's backward temporaries, the input embedding's interpolation and gradient and the
        # allocator's slack (24 D + 3 d_mlp per position, measured: benchmarks/bench_memory.py), and the
        # logits at the answer positions with their softmax and gradients
        "autograd_activations": (L * BP * (6 * D + (4 if gated else 2) * d_mlp + 2 * H * P) * wb
                                 + BP * (24 * D + 3 * d_mlp) * wb + 4 * B * adapter.vocab_size * ab),
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
