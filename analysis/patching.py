"""Edge-level activation patching on the unmodified HF model (the circuit run of method.md 2.5).

Circuit run, as hannamw/EAP-IG ``evaluate_graph(intervention='patching')``: run the corrupted prompt
and keep every upstream node's output; then run the clean prompt and, at the input of every
downstream node, add ``(corrupted - current) output`` of each parent edge NOT in the circuit. So each
destination sees its in-circuit parents as they are in this (patched) run and every other parent as
it was in the corrupted run.

The model shares one attention LayerNorm input between all heads of a layer, but the q, k and v inputs
of each head are patched differently. So, for a layer that needs it, a forward hook on each q/k/v
projection module (the fused one of GPT-NeoX / GPT-2, or q_proj, k_proj and v_proj of GPT-Neo, OPT and
Llama: :meth:`analysis.adapter.ModelAdapter.qkv_projs`) REPLACES its output: the residual stream
captured at the attention norm's input plus each (q|k|v, head)'s own delta goes through that norm
module and that head's weight rows (+ bias) and is written back in the projection's own layout; rotary,
local-attention windows, softmax and the output projection run in HF as usual. With grouped-query
attention (Llama, G < H kv-heads) the k and v projections have one head per kv-head; kv-head g's input
gets the delta of its graph destination ``a{l}.h{g*H/G}<k|v>``: (corrupted - current) of every parent
edge into that destination that is not in the circuit. MLP and final-LayerNorm inputs are patched by pre-hooks that shift only the LayerNorm's
input (the residual stream itself is untouched, as a TransformerLens ``hook_mlp_in`` would do).
Layers with no missing edge keep the HF path (``force`` makes every layer take ours, for parity checks).

``absent`` is a dense ``(n_src, n_dst)`` matrix in the layout of :class:`analysis.graph.Graph`: 1 where
an edge exists and is NOT in the circuit. Delta of destination d = sum_s absent[s, d] * diff[s], one
matmul per layer.
"""

from __future__ import annotations

import torch

from analysis.adapter import Batch, ModelAdapter
from analysis.graph import Graph

Tensor = torch.Tensor


def absent_matrix(graph: Graph, qkv_edges, dtype=torch.float32) -> Tensor:
    """1.0 for every real edge of ``graph`` that is not in ``qkv_edges`` (q/k/v-level names).

    With grouped-query attention a k/v name into any query head of a group means the group's shared k/v
    input (``u->a1.h3<k>`` -> ``u->a1.h2<k>`` for groups of 2), as a head-level circuit expands to."""
    inside = torch.zeros(graph.n_src, graph.n_dst, dtype=torch.bool)
    if qkv_edges:
        pos = [graph.edge_position(graph.spec.kv_representative(n)) for n in qkv_edges]
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
        self.keep = batch.keep  # only the answer positions' logits are computed
        self.e_clean = adapter.embed(batch.clean)
        self.corr = torch.zeros(graph.n_src, B, P, adapter.d_model, dtype=self.acc, device=adapter.device)
        self.corr[0] = adapter.embed(batch.corrupted).to(self.acc)
        spec, H = graph.spec, adapter.n_heads

        def on_z(l, z):
            r = spec.head_row(l)
            self.corr[r:r + H] = adapter.head_outputs(l, z, self.acc)

        def on_mlp(l, out):
            self.corr[spec.mlp_row(l)] = out.to(self.acc)

        with torch.no_grad(), adapter.hooks(on_z=on_z, on_mlp_out=on_mlp):
            self.corrupted_logits = self._logits(batch.corrupted)
        with torch.no_grad():
            self.clean_logits = self._logits(batch.clean)

    def _logits(self, tokens: Tensor) -> Tensor:
        out = self.a.model(input_ids=tokens, attention_mask=self.ones, use_cache=False,
                           logits_to_keep=self.keep).logits
        return self.b.answer_logits(out, self.keep)

    def run(self, absent: Tensor, force: bool = False) -> Tensor:
        """Answer-position logits (B, A, V) of the clean run with every ``absent`` edge patched."""
        a, g, acc = self.a, self.g, self.acc
        spec, H, L = g.spec, a.n_heads, a.n_layers
        absent = absent.to(a.device, acc)
        diff = torch.empty_like(self.corr)
        diff[0] = self.corr[0] - self.e_clean.to(acc)
        shape = diff.shape[1:]
        flat = diff.view(g.n_src, -1)
        x_attn: dict[int, Tensor] = {}
        busy: list[bool] = []
        handles = []

        def delta(n_up: int, cols) -> Tensor | None:
            w = absent[:n_up, cols]
            if not bool(w.any()):
                return None
            return (w.T @ flat[:n_up]).view(w.shape[1], *shape)  # (n_dst, B, P, D)

        def on_z(m, args, l):
            r = spec.head_row(l)
            diff[r:r + H] = self.corr[r:r + H] - a.head_outputs(l, args[0], acc)

        def on_mlp(m, args, out, l):
            r = spec.mlp_row(l)
            diff[r] = self.corr[r] - out.to(acc).view(shape)  # OPT's MLP output is (B*P, D)

        def on_attn_ln(m, args, l):
            if not busy:  # not our own per-head call of the norm below
                x_attn[l] = args[0]

        def on_qkv(m, args, out, l, p):
            d = delta(spec.n_upstream(l), spec.col0(l) + p.cols)
            if d is None and not force:
                return None
            x = x_attn[l]
            xs = x.unsqueeze(0).expand(p.n, *x.shape)
            if d is not None:
                xs = xs + d.to(x.dtype)
            busy.append(True)
            try:
                ln = a.attn_ln(l)(xs)  # (n, B, P, D): the same norm module, per (q|k|v, head) input
            finally:
                busy.pop()
            new = torch.einsum("nbpd,nkd->bpnk", ln, p.W.to(ln.dtype))
            if p.b is not None:
                new = new + p.b.to(new.dtype)
            return a.write_heads(p, out, new.to(out.dtype))

        def shift(n_up: int, col: int):
            def pre(m, args):
                d = delta(n_up, slice(col, col + 1))
                if d is None:
                    return None
                return (args[0] + d[0].to(args[0].dtype).view(args[0].shape),) + tuple(args[1:])
            return pre

        try:
            for l in range(L):
                handles += [
                    a.o_proj(l).register_forward_pre_hook(lambda m, args, l=l: on_z(m, args, l)),
                    a.mlp(l).register_forward_hook(lambda m, args, out, l=l: on_mlp(m, args, out, l)),
                    a.attn_ln(l).register_forward_pre_hook(lambda m, args, l=l: on_attn_ln(m, args, l)),
                    a.mlp_ln(l).register_forward_pre_hook(
                        shift(spec.n_upstream(l, mlp=True), spec.mlp_col(l))),
                ]
                handles += [p.module.register_forward_hook(lambda m, args, out, l=l, p=p: on_qkv(m, args, out, l, p))
                            for p in a.qkv_projs(l)]
            handles.append(a.final_ln().register_forward_pre_hook(shift(g.n_src, spec.logits_col)))
            with torch.no_grad():
                return self._logits(self.b.clean)
        finally:
            for h in handles:
                h.remove()
