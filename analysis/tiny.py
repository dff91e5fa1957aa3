"""Small random-weight models for tests, demos and benchmarks, built from a config (no hub needed).

``build_tiny_model(out_dir, arch=...)`` writes a model of one of ``TINY_ARCHS`` and the offline
word-level tokenizer of :mod:`analysis.tokenizer` into ``out_dir`` with ``save_pretrained``;
``load_model(out_dir)`` loads it:

* ``gpt_neox``: Pythia-like (parallel residual, partial rotary, untied embeddings);
* ``gpt2``;
* ``gpt_neo``: layers alternate global and local attention, with a small ``window_size`` (default 8)
  so that the local layers really differ from global ones on short prompts;
* ``opt``: pre-LN (as OPT-125m and OPT >= 1.3b), ReLU MLP, word_embed_proj_dim = d_model;
* ``llama``: RMSNorm, rotary, SwiGLU, grouped-query attention with ``n_kv_heads`` kv-heads (default
  n_heads // 2 when n_heads is even, so tiny Llamas exercise GQA);
* ``qwen2`` and ``gemma`` (only the TransformerLens backend scores them): Llama's shape, Qwen2 with
  q/k/v biases, Gemma with (1 + weight) RMSNorms and a scaled, tied embedding.
"""

from __future__ import annotations

from pathlib import Path

from analysis.errors import UserError

TINY_ARCHS = ("gpt_neox", "gpt2", "gpt_neo", "opt", "llama", "qwen2", "gemma")


def tiny_config(arch: str, n_layers: int, n_heads: int, d_model: int, vocab_size: int, n_ctx: int = 256,
                d_mlp: int | None = None, n_kv_heads: int | None = None, window_size: int = 8):
    """A transformers config of the given shape (random init; dropout off)."""
    if d_model % n_heads:
        raise UserError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
    d_mlp = d_mlp or 4 * d_model
    if arch == "gpt_neox":
        from transformers import GPTNeoXConfig

        return GPTNeoXConfig(vocab_size=vocab_size, hidden_size=d_model, num_hidden_layers=n_layers,
                             num_attention_heads=n_heads, intermediate_size=d_mlp,
                             max_position_embeddings=n_ctx, use_parallel_residual=True,
                             rotary_pct=0.25, rotary_emb_base=10000, hidden_act="gelu",
                             attention_dropout=0.0, hidden_dropout=0.0, tie_word_embeddings=False,
                             bos_token_id=0, eos_token_id=0, pad_token_id=0)
    if arch == "gpt2":
        from transformers import GPT2Config

        return GPT2Config(vocab_size=vocab_size, n_embd=d_model, n_layer=n_layers, n_head=n_heads,
                          n_inner=d_mlp, n_positions=n_ctx, resid_pdrop=0.0, embd_pdrop=0.0,
                          attn_pdrop=0.0, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    if arch == "gpt_neo":
        from transformers import GPTNeoConfig

        types = [[["global", "local"], n_layers // 2]] + ([[["global"], 1]] if n_layers % 2 else [])
        return GPTNeoConfig(vocab_size=vocab_size, hidden_size=d_model, num_layers=n_layers, num_heads=n_heads,
                            intermediate_size=d_mlp, max_position_embeddings=n_ctx, attention_types=types,
                            window_size=window_size, resid_dropout=0.0, embed_dropout=0.0, attention_dropout=0.0,
                            bos_token_id=0, eos_token_id=0, pad_token_id=0)
    if arch == "opt":
        from transformers import OPTConfig

        return OPTConfig(vocab_size=vocab_size, hidden_size=d_model, num_hidden_layers=n_layers,
                         num_attention_heads=n_heads, ffn_dim=d_mlp, max_position_embeddings=n_ctx,
                         word_embed_proj_dim=d_model, do_layer_norm_before=True, dropout=0.0, attention_dropout=0.0,
                         activation_function="relu", enable_bias=True, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    if arch in ("llama", "qwen2", "gemma"):
        from transformers import GemmaConfig, LlamaConfig, Qwen2Config

        if n_kv_heads is None:
            n_kv_heads = n_heads // 2 if n_heads % 2 == 0 else n_heads
        if n_kv_heads <= 0 or n_heads % n_kv_heads:
            raise UserError(f"n_kv_heads {n_kv_heads} must divide n_heads {n_heads}")
        shape = dict(vocab_size=vocab_size, hidden_size=d_model, intermediate_size=d_mlp, num_hidden_layers=n_layers,
                     num_attention_heads=n_heads, num_key_value_heads=n_kv_heads, max_position_embeddings=n_ctx,
                     rms_norm_eps=1e-6, attention_dropout=0.0, bos_token_id=0, eos_token_id=0, pad_token_id=0)
        if arch == "gemma":  # Gemma's default head_dim (256) is not d_model / n_heads; it ties embeddings
            return GemmaConfig(head_dim=d_model // n_heads, **shape)
        return (LlamaConfig if arch == "llama" else Qwen2Config)(tie_word_embeddings=False, **shape)
    raise UserError(f"unknown tiny architecture {arch!r}; choose one of {', '.join(TINY_ARCHS)}")


def build_tiny_model(out_dir: Path | str, arch: str = "gpt_neox", n_layers: int = 2, n_heads: int = 4,
                     d_model: int = 64, seed: int = 0, tokenizer=None, max_number: int = 999,
                     d_mlp: int | None = None, n_ctx: int = 256, init_std: float | None = None,
                     vocab_size: int | None = None, n_kv_heads: int | None = None, window_size: int = 8) -> Path:
    """Build a random-init model + tokenizer and ``save_pretrained`` both into ``out_dir``.

    ``tokenizer``: an HF tokenizer to save beside the model; default: the offline word-level tokenizer
    (:func:`analysis.tokenizer.build_word_tokenizer`, numbers 0..max_number are single tokens).
    ``init_std``: weight init std (default: the config's initializer_range, 0.02). Larger values give
    less uniform output distributions, which makes scoring tests more discriminating.
    ``vocab_size``: embedding rows (default: the tokenizer's size; larger values give a model with a
    realistic vocabulary for benchmarks, the extra rows are never produced by the tokenizer).
    ``n_kv_heads`` (Llama) and ``window_size`` (GPT-Neo local attention): see :func:`tiny_config`.
    """
    import torch
    from transformers import AutoModelForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer is None:
        from analysis.tokenizer import build_word_tokenizer

        tokenizer = build_word_tokenizer(out, max_number=max_number)
    else:
        tokenizer.save_pretrained(str(out))
    vocab = max(len(tokenizer), vocab_size or 0)
    cfg = tiny_config(arch, n_layers, n_heads, d_model, vocab, n_ctx=n_ctx, d_mlp=d_mlp, n_kv_heads=n_kv_heads,
                      window_size=window_size)
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    cfg.bos_token_id = cfg.eos_token_id = bos
    cfg.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else bos
    if init_std is not None:
        cfg.initializer_range = init_std
        if arch == "opt":
            cfg.init_std = init_std
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(str(out))
    return out
