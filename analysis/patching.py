"""Edge-level activation patching on the unmodified HF model (the circuit run of method.md 2.5).

Circuit run, as hannamw/EAP-IG ``evaluate_graph(intervention='patching')``: run the corrupted prompt
and keep every upstream node's output; then run the clean prompt and, at the input of every
downstream node, add ``(corrupted - current) output`` of each parent edge NOT in the circuit. So each
destination sees its in-circuit parents as they are in this (patched) run and every other parent as
it was in the corrupted run.

The model shares one attention LayerNorm input between all heads of a layer, but the q, k and v inputs
of each head are patched differently. So, for a layer that needs it, a forward hook on the q/k/v
projection REPLACES its output: the residual stream captured at the attention LayerNorm's input plus
each (q|k|v, head)'s own delta goes through that LayerNorm module and that head's rows of W_qkv (+ bias)
and is written back in the projection's own layout; rotary, softmax and the output projection run in
HF as usual. MLP and final-LayerNorm inputs are patched by pre-hooks that shift only the LayerNorm's
input (the residual stream itself is untouched, as a TransformerLens ``hook_mlp_in`` would do).
Layers with no missing edge keep the HF path (``force`` makes every layer take ours, for parity checks).

``absent`` is a dense ``(n_src, n_dst)`` matrix in the layout of :class:`analysis.graph.Graph`: 1 where
an edge exists and is NOT in the circuit. Delta of destination d = sum_s absent[s, d] * diff[s], one
matmul per layer.
"""

from __future__ import annotations

import torch

from analysis.adapter import Batch, ModelAdapter
from analysis.graph import Graph, n_upstream_for_layer

Tensor = torch.Tensor


def absent_matrix(graph: Graph, qkv_edges, dtype=torch.float32) -> Tensor:
    """1.0 for every real edge of ``graph`` that is not in ``qkv_edges`` (q/k/v-level names)."""
    inside = torch.zeros(graph.n_src, graph.n_dst, dtype=torch.bool)
    if qkv_edges:
        pos = [graph.edge_position(n) for n in qkv_edges]
        rows, cols = zip(*pos)
        inside[list(rows), list(cols)] = True
    return (graph.mask & ~inside).to(dtype)


class PatchedRunner:
    """One batch: the corrupted run's node outputs and logits, the clean logits, and patched runs."""

    def __init__(self, adapter: ModelAdapter, graph: Graph, batch: Batch):
        self.a, self.g, self.b = adapter, graph, batch
        self.acc = torch.float64 if adapter.dtype == torch.float64 else torch.float32
        B, P = batch.clean.shape
        self.B = B
        self.ones = torch.ones_like(batch.clean)
        self.keep = torch.unique(batch.last)  # only the last positions' logits are computed
        self.pos_in_keep = torch.searchsorted(self.keep, batch.last)
        self.e_clean = adapter.embed(batch.clean)
        self.corr = torch.zeros(graph.n_src, B, P, adapter.d_model, dtype=self.acc, device=adapter.device)
        self.corr[0] = adapter.embed(batch.corrupted).to(self.acc)
        H = adapter.n_heads

        def on_z(l, z):
            r = self._row0(l)
            self.corr[r:r + H] = adapter.head_outputs(l, z, self.acc)

        def on_mlp(l, out):
            self.corr[self._row0(l) + H] = out.to(self.acc)

        with torch.no_grad(), adapter.hooks(on_z=on_z, on_mlp_out=on_mlp):
            self.corrupted_logits = self._logits(batch.corrupted)
        with torch.no_grad():
            self.clean_logits = self._logits(batch.clean)

    def _row0(self, l: int) -> int:
        return 1 + l * (self.a.n_heads + 1)

    def _logits(self, tokens: Tensor) -> Tensor:
        out = self.a.model(input_ids=tokens, attention_mask=self.ones, use_cache=False,
                           logits_to_keep=self.keep).logits
        return out[torch.arange(self.B, device=out.device), self.pos_in_keep]

    def run(self, absent: Tensor, force: bool = False) -> Tensor:
        """Last-position logits (B, V) of the clean run with every ``absent`` edge patched."""
        a, g, acc = self.a, self.g, self.acc
        H, L, D = a.n_heads, a.n_layers, a.d_model
        absent = absent.to(a.device, acc)
        diff = torch.empty_like(self.corr)
        diff[0] = self.corr[0] - self.e_clean.to(acc)
        shape = diff.shape[1:]
        flat = diff.view(g.n_src, -1)
        x_attn: dict[int, Tensor] = {}
        handles = []

        def delta(n_up: int, c0: int, c1: int) -> Tensor | None:
            w = absent[:n_up, c0:c1]
            if not bool(w.any()):
                return None
            return (w.T @ flat[:n_up]).view(c1 - c0, *shape)  # (n_dst, B, P, D)

        def on_z(m, args, l):
            r = self._row0(l)
            diff[r:r + H] = self.corr[r:r + H] - a.head_outputs(l, args[0], acc)

        def on_mlp(m, args, out, l):
            r = self._row0(l) + H
            diff[r] = self.corr[r] - out.to(acc)

        def on_attn_ln(m, args, l):
            x_attn[l] = args[0]

        def on_qkv(m, args, out, l):
            c0 = l * (3 * H + 1)
            d = delta(n_upstream_for_layer(g.spec, l), c0, c0 + 3 * H)
            if d is None and not force:
                return None
            x = x_attn.pop(l)
            xs = x.unsqueeze(0).expand(3 * H, *x.shape)
            if d is not None:
                xs = xs + d.to(x.dtype)
            ln = a.attn_ln(l)(xs)  # (3H, B, P, D): the same LayerNorm module, per (q|k|v, head) input
            w = a.W_qkv(l).reshape(3 * H, a.d_head, D).to(ln.dtype)
            new = torch.einsum("nbpd,nkd->bpnk", ln, w).reshape(*x.shape[:2], 3, H, a.d_head)
            res = torch.empty_like(out)
            view = a.split_qkv(res)  # the projection's own layout, as a view of ``res``
            view.copy_(new)
            if m.bias is not None:
                view += a.split_qkv(m.bias.view(1, 1, -1))
            return res

        def shift(n_up: int, col: int):
            def pre(m, args):
                d = delta(n_up, col, col + 1)
                if d is None:
                    return None
                return (args[0] + d[0].to(args[0].dtype),) + tuple(args[1:])
            return pre

        try:
            for l in range(L):
                c0 = l * (3 * H + 1)
                handles += [
                    a.o_proj(l).register_forward_pre_hook(lambda m, args, l=l: on_z(m, args, l)),
                    a.mlp(l).register_forward_hook(lambda m, args, out, l=l: on_mlp(m, args, out, l)),
                    a.attn_ln(l).register_forward_pre_hook(lambda m, args, l=l: on_attn_ln(m, args, l)),
                    a.qkv_proj(l).register_forward_hook(lambda m, args, out, l=l: on_qkv(m, args, out, l)),
                    a.mlp_ln(l).register_forward_pre_hook(
                        shift(n_upstream_for_layer(g.spec, l, mlp=True), c0 + 3 * H)),
                ]
            handles.append(a.final_ln().register_forward_pre_hook(shift(g.n_src, g.n_dst - 1)))
            with torch.no_grad():
                return self._logits(self.b.clean)
        finally:
            for h in handles:
                h.remove()
