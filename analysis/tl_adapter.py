"""TransformerLens as the scoring engine's second backend: the engine's hooks placed through
TransformerLens 4's ``TransformerBridge`` instead of on HF module names (:mod:`analysis.adapter`).

Why a second backend:

* an **independent oracle** for the native adapter: every quantity the scores depend on comes from
  other code. Per-head outputs are TL's ``hook_result``; the per-head q/k/v input gradients come by
  autograd through TL's split q/k/v residual copies (``hook_q_input`` ...), not from our closed-form
  norm VJP; the MLP and logits input gradients from TL's ``hook_mlp_in`` / last ``hook_resid_post``.
* architectures the native adapter does not know: any decoder whose TL bridge honours split q/k/v
  inputs and per-head results. Verified here: Qwen2 and Gemma (and gpt_neox, gpt2, llama against the
  native adapter, tests/test_tl_backend.py).

Which TL API, and why: ``TransformerBridge.boot_transformers(path, hf_model=model, tokenizer=...)``
(TL 4.3.0) wraps the HF model we loaded (no hub access: the config is the model's own), then
``set_use_split_qkv_input``, ``set_use_attn_result``, ``set_use_hook_mlp_in``. HookedTransformer is not
used: it needs per-architecture weight conversion from official model names, while the bridge runs
the HF weights unconverted (logits equal HF's to ~1e-6 in float32).

What blocks, in TL 4.3.0: the bridge wraps GPT-Neo's and OPT's attention in the plain
``AttentionBridge``, and ``set_use_split_qkv_input`` / ``set_use_attn_result`` raise
``NotImplementedError`` ("none of this model's attention bridges support the requested fine-grained
attention hook"): no q/k/v input or per-head output exists for them, so they are a one-line UserError
here (the native adapter scores them).

The adapter duck-types :class:`analysis.adapter.ModelAdapter` for the engine (:mod:`analysis.eap`):
the same ``hooks(...)`` callbacks, ``embed``, ``head_outputs``, ``qkv_input_grads``, and the native
adapter's own tokenisation (``encode_pairs`` / ``make_batch`` from :class:`analysis.encoding.PairEncoding`,
so both backends score identical token batches). Two differences, both inside this module: ``on_z`` receives
TL's per-head results (B, P, H, D) rather than the o-projection input, and ``grad_qkv`` receives the
per-head input gradients (q (B, P, H, D), k and v (B, P, G, D), one per kv-head with grouped-query
attention) rather than projection output gradients; ``head_outputs`` / ``qkv_input_grads`` lay them
out as the graph's rows and columns (k/v of kv-head g at query head g*H/G, as the native Llama path).

Booting rewires the HF model in place (its blocks become bridge components), so a TLAdapter owns its
model: :meth:`TLAdapter.from_adapter` deep-copies a native adapter's.
"""

from __future__ import annotations

import copy
import warnings
from contextlib import contextmanager
from importlib.metadata import version
from typing import Callable

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from analysis.adapter import ModelAdapter
from analysis.architectures import graph_shape, lookup
from analysis.encoding import PairEncoding
from analysis.errors import UserError
from analysis.graph import GraphSpec
from analysis.models import ModelInfo, load_causal_lm, model_revision, resolve_dtype, resolve_model_source

Tensor = torch.Tensor
BACKEND = "transformer-lens"
_FLAGS = ("set_use_split_qkv_input", "set_use_attn_result", "set_use_hook_mlp_in")


def _boot(model, tokenizer, source: str | None):
    """The TL bridge around ``model`` with the hooks EAP-IG needs, or a one-line UserError."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # imported here: transformer_lens is heavy and only this backend needs it; its import warnings
        # are silenced with the boot's
        from transformer_lens.model_bridge import TransformerBridge

        arch = getattr(model.config, "model_type", None)
        first = next(model.parameters())
        try:
            bridge = TransformerBridge.boot_transformers(
                source or getattr(model.config, "_name_or_path", "") or arch, hf_model=model,
                tokenizer=tokenizer, device=str(first.device), dtype=first.dtype)
        except (ValueError, KeyError, NotImplementedError, OSError) as exc:  # TL's, per architecture
            raise UserError(f"TransformerLens cannot load {arch!r}: {' '.join(str(exc).split())[:200]}") from None
        for flag in _FLAGS:
            try:
                getattr(bridge, flag)(True)
            except NotImplementedError as exc:
                raise UserError(f"--backend transformer-lens cannot score {arch!r}: TransformerLens "
                                f"{_tl_version()} {flag}: {' '.join(str(exc).split())[:160]}") from None
    return bridge


def _tl_version() -> str:
    return version("transformer-lens")


def _grad_hook(cb: Callable[[Tensor], None]):
    """A TL forward hook that reports the gradient of ONE use of its hook point's output: it returns an
    alias that only the hooked consumer reads. Needed because TL 4.3's bridge ``hook_mlp_in`` (and
    ``hook_resid_post``) pass the residual-stream tensor itself through, not a copy as HookedTransformer
    did, so a gradient hook on that tensor would see every use of the residual stream."""

    def hook(t, hook):
        if not t.requires_grad:
            return None
        y = t.view_as(t)
        y.register_hook(cb)
        return y

    return hook


def _observe(layer: int, on_out, override):
    """A TL forward hook on a node group's output: report it, optionally replace it."""

    def hook(t, hook):
        if on_out is not None:
            on_out(layer, t.detach())
        return None if override is None else override(layer, t)

    return hook


class TLAdapter(PairEncoding):
    """A frozen HF causal LM scored through TransformerLens hooks (the module docstring). Its
    tokenisation is the native adapter's (:class:`analysis.encoding.PairEncoding`): identical token
    batches for both backends."""

    backend = BACKEND

    def __init__(self, model, tokenizer, source: str | None = None):
        cfg = model.config
        self.spec = GraphSpec.from_hf_config(cfg)  # the graph must know the architecture first
        self.architecture = lookup(cfg.model_type)  # the registry entry, as ModelAdapter.architecture
        self.arch: str = cfg.model_type
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.tokenizer, self.source = tokenizer, source
        self.bridge = _boot(self.model, tokenizer, source)
        self.n_layers, self.n_heads, self.n_kv_heads = self.spec.n_layers, self.spec.n_heads, self.spec.kv_heads
        self.d_model = cfg.hidden_size
        self.vocab_size = cfg.vocab_size
        first = next(self.model.parameters())
        self.device, self.dtype = first.device, first.dtype

    @classmethod
    def from_adapter(cls, adapter: ModelAdapter) -> "TLAdapter":
        """The TL backend on a deep copy of a native adapter's model (booting rewires the model)."""
        return cls(copy.deepcopy(adapter.model), adapter.tokenizer, adapter.source)

    # ---------------------------------------------------------------- running
    def embed(self, tokens: Tensor) -> Tensor:
        """The input node's output (TL's ``hook_embed``: the token embedding) (B, P, D), no grad."""
        with torch.no_grad():
            return self.bridge.embed(tokens.to(self.device))

    def run_logits(self, tokens: Tensor, keep: Tensor) -> Tensor:
        """The bridge's forward (hooks fire): logits at positions ``keep`` (B, |keep|, V)."""
        tokens = tokens.to(self.device)
        return self.bridge(tokens, attention_mask=torch.ones_like(tokens))[:, keep.to(self.device)]

    def forward_logits(self, tokens: Tensor) -> Tensor:
        """The HF model's own forward (through the bridge's wrapped modules, no hooks): (B, P, V)."""
        tokens = tokens.to(self.device)
        return self.model(input_ids=tokens, attention_mask=torch.ones_like(tokens), use_cache=False).logits

    # ---------------------------------------------------------------- per-head maths
    def head_outputs(self, l: int, result: Tensor, out_dtype=None) -> Tensor:
        """TL's per-head results (B, P, H, D) -> (H, B, P, D), the graph's row order."""
        out = result.permute(2, 0, 1, 3)
        return out if out_dtype is None else out.to(out_dtype)

    def qkv_input_grads(self, l: int, grads: tuple[Tensor, Tensor, Tensor], x=None, out_dtype=None) -> Tensor:
        """TL's q/k/v input gradients -> (3H, B, P, D) in the graph's column order; with grouped-query
        attention kv-head g's k/v sit at query head g*H/G and the other heads' k/v rows are zero."""
        gq, gk, gv = (g.permute(2, 0, 1, 3) for g in grads)
        dt = out_dtype or gq.dtype
        H, G = self.n_heads, self.n_kv_heads
        if G == H:
            return torch.cat([gq, gk, gv]).to(dt)
        full = gq.new_zeros((3 * H, *gq.shape[1:]), dtype=dt)
        full[:H] = gq
        kv = torch.arange(G, device=gq.device) * (H // G)
        full[H + kv], full[2 * H + kv] = gk.to(dt), gv.to(dt)
        return full

    # ---------------------------------------------------------------- hooks
    def _qkv_hooks(self, l: int, grad_qkv) -> list:
        """Forward hooks on layer l's q/k/v input copies whose gradients reach ``grad_qkv`` together."""
        buf: dict[int, Tensor] = {}

        def got(i):
            def cb(g):
                buf[i] = g
                if len(buf) == 3:
                    grad_qkv(l, (buf.pop(0), buf.pop(1), buf.pop(2)))
            return cb

        return [(f"blocks.{l}.hook_{x}_input", _grad_hook(got(i))) for i, x in enumerate("qkv")]

    @contextmanager
    def hooks(self, *, embed_override=None, on_z=None, on_mlp_out=None, on_attn_out=None, on_attn_ln_in=None,
              attn_out_override=None, mlp_out_override=None, grad_qkv=None, grad_mlp_in=None, grad_final_in=None):
        """The native adapter's hook callbacks (:meth:`ModelAdapter.hooks`) as TL hooks, for one pass.
        ``on_attn_ln_in`` is not needed (TL gives input gradients directly) and never called."""
        fwd: list = []
        if embed_override is not None:
            fwd.append(("hook_embed", lambda t, hook: embed_override(t)))
        for l in range(self.n_layers):
            p = f"blocks.{l}."
            if on_z is not None:
                fwd.append((p + "attn.hook_result", lambda t, hook, l=l: on_z(l, t.detach())))
            if on_attn_out is not None or attn_out_override is not None:
                fwd.append((p + "hook_attn_out", _observe(l, on_attn_out, attn_out_override)))
            if on_mlp_out is not None or mlp_out_override is not None:
                fwd.append((p + "hook_mlp_out", _observe(l, on_mlp_out, mlp_out_override)))
            if grad_qkv is not None:
                fwd += self._qkv_hooks(l, grad_qkv)
            if grad_mlp_in is not None:
                fwd.append((p + "hook_mlp_in", _grad_hook(lambda g, l=l: grad_mlp_in(l, g))))
        if grad_final_in is not None:
            fwd.append((f"blocks.{self.n_layers - 1}.hook_resid_post", _grad_hook(grad_final_in)))
        with self.bridge.hooks(fwd_hooks=fwd):
            yield


def load_tl_model(name_or_path, dtype="float32", device="cpu"):
    """``(TLAdapter, ModelInfo)``: a frozen model for the TL backend, of any architecture the graph and
    TL's bridge know. Architectures the native adapter also knows load through
    :func:`analysis.models.load_causal_lm` (GGUF and shipped models too); others from a local folder
    (or the hub) with transformers directly."""
    source = resolve_model_source(name_or_path)
    if source.gguf_file:
        model, tok, info = load_causal_lm(name_or_path, dtype=dtype, device=device)
        return TLAdapter(model, tok, source=info.path), info
    local = source.kind != "hub"
    try:
        config = AutoConfig.from_pretrained(source.path, local_files_only=local)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load model {source.label!r}: {' '.join(str(exc).split())[:300]}") from None
    graph_shape(config)  # a UserError naming the architectures the graph knows
    if not lookup(config.model_type).tl_only:
        model, tok, info = load_causal_lm(name_or_path, dtype=dtype, device=device)
        return TLAdapter(model, tok, source=info.path), info
    torch_dtype = resolve_dtype(dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch_dtype, local_files_only=local)
        tok = AutoTokenizer.from_pretrained(source.path, local_files_only=local)
        model = model.to(device)
    except (OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"cannot load model {source.label!r}: {' '.join(str(exc).split())[:300]}") from None
    info = ModelInfo(kind=source.kind, path=source.path, gguf_file=None, revision=model_revision(source, config),
                     dtype=str(torch_dtype).replace("torch.", ""), label=source.label, loaded_from=source.path)
    return TLAdapter(model, tok, source=source.path), info
