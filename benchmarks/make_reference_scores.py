"""Store hannamw/EAP-IG's own scores of a tiny model, so `tests/test_compat.py` can check
``analysis.eap.score(..., compat="hannamw")`` against the reference's exact numbers.

Run it with the python of a virtualenv that has transformer-lens 3.9.0 (the last version with the
``HookedTransformer`` the reference needs), on a checkout of hannamw/EAP-IG at 795f560 that you bring
(its code is copied to a temporary folder and run from there, never into this repository)::

    git --git-dir=<hannamw/EAP-IG clone>/.git archive 795f560 | tar -x -C /tmp/eapig
    python3.11 -m venv /tmp/eapref-venv && /tmp/eapref-venv/bin/pip install transformer-lens==3.9.0
    /tmp/eapref-venv/bin/python benchmarks/make_reference_scores.py --reference /tmp/eapig

What it does: builds a 2-layer, 4-head, d_model 32 GPT-NeoX with :func:`analysis.tiny.build_tiny_model`
(seeded, so the test rebuilds the same weights; their sha256 is stored to prove it), loads it into a
``HookedTransformer`` with TransformerLens' own ``convert_neox_weights`` and no weight processing, and
runs the reference's ``attribute`` with each of ``EAP``, ``EAP-IG-inputs``, ``clean-corrupted`` and
``EAP-IG-activations`` (m = 3, batch 3 on 8 pairs of mixed lengths, so the batches are padded and the
last one is partial: 3, 3, 2), in float64, with two metrics written as the reference's users write
them (batch means): the paper's KL (vocabulary mean) and logit-diff. One JSON file per method goes to
``tests/data/hannamw/`` with the pairs, the model recipe and every edge's score per metric.

The reference hard-codes ``device='cuda'`` for its score matrix; the temporary copy is patched to the
model's device (the only change).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analysis.provenance import weights_sha256  # noqa: E402

REFERENCE_COMMIT = "795f560"
OUT = ROOT / "tests" / "data" / "hannamw"
METHODS = {"eap": "EAP", "eap-ig-inputs": "EAP-IG-inputs", "clean-corrupted": "clean-corrupted",
           "eap-ig-activations": "EAP-IG-activations"}
MODEL = dict(arch="gpt_neox", n_layers=2, n_heads=4, d_model=32, d_mlp=64, seed=7, max_number=20, init_std=0.3)
STEPS, BATCH = 3, 3
PFX = "Calculate the result of the following arithmetic expression and provide only the final answer:"
PAIRS = [  # clean, corrupted, label, corrupted_label (single tokens: the reference has no multi-token answers)
    [f"{PFX} 9 + 4 =", f"{PFX} 9 - 4 =", "13", "5"],
    [f"{PFX} 7 + 2 =", f"{PFX} 7 - 2 =", "9", "5"],
    ["LCM(4, 6) =", "LCM(3, 5) =", "12", "15"],
    [f"{PFX} 5 + 5 =", f"{PFX} 5 - 5 =", "10", "0"],
    ["Derive the following sequence: 1, 2, 3,", "Derive the following sequence: 1, 2, 5,", "4", "6"],
    [f"{PFX} 8 + 3 =", f"{PFX} 8 - 3 =", "11", "5"],
    ["LCM(2, 3) =", "LCM(4, 5) =", "6", "20"],
    [f"{PFX} 6 + 1 =", f"{PFX} 6 - 1 =", "7", "5"],
]


def copy_reference(ref: Path, work: Path) -> Path:
    """The reference's ``eap`` package copied to ``work`` with its hard-coded cuda device patched."""
    src = ref / "src" if (ref / "src" / "eap").exists() else ref
    if not (src / "eap" / "attribute.py").exists():
        raise SystemExit(f"--reference {ref}: no eap/attribute.py (expected a hannamw/EAP-IG checkout)")
    shutil.copytree(src / "eap", work / "eap")
    for f in (work / "eap").glob("*.py"):
        f.write_text(f.read_text().replace("device='cuda'", "device=model.cfg.device"))
    return work


def hooked_neox(model_dir: Path, dtype):
    """The HF GPT-NeoX as a TL 3.x HookedTransformer: same weights, no weight processing."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.neox import convert_neox_weights
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    tok = AutoTokenizer.from_pretrained(model_dir)
    c = hf.config
    d_head = c.hidden_size // c.num_attention_heads
    rope = getattr(c, "rope_parameters", None) or {}
    cfg = HookedTransformerConfig(
        n_layers=c.num_hidden_layers, d_model=c.hidden_size, n_ctx=c.max_position_embeddings, d_head=d_head,
        n_heads=c.num_attention_heads, d_mlp=c.intermediate_size, d_vocab=c.vocab_size, act_fn="gelu",
        normalization_type="LN", eps=c.layer_norm_eps, positional_embedding_type="rotary",
        rotary_dim=int(d_head * rope.get("partial_rotary_factor", getattr(c, "rotary_pct", 1.0))),
        rotary_base=int(rope.get("rope_theta", getattr(c, "rotary_emb_base", 10000))), rotary_adjacent_pairs=False,
        parallel_attn_mlp=bool(c.use_parallel_residual), original_architecture="GPTNeoXForCausalLM",
        default_prepend_bos=True, device="cpu", dtype=dtype)
    model = HookedTransformer(cfg, tokenizer=tok)
    model.load_and_process_state_dict(convert_neox_weights(hf, cfg), fold_ln=False, center_writing_weights=False,
                                      center_unembed=False, fold_value_biases=False)
    model.cfg.use_split_qkv_input = True
    model.cfg.use_attn_result = True
    model.cfg.use_hook_mlp_in = True
    return model.eval()


def _last(logits, input_lengths):
    import torch

    return logits[torch.arange(logits.size(0), device=logits.device), input_lengths - 1]


def kl_batch_mean(logits, clean_logits, input_lengths, labels):
    """The paper's KL (vocabulary mean, last real position), averaged over the batch as the reference does."""
    import torch.nn.functional as F

    lq, lp = _last(logits, input_lengths).log_softmax(-1), _last(clean_logits, input_lengths).log_softmax(-1)
    return F.kl_div(lq, lp, log_target=True, reduction="none").mean(-1).mean()


def logit_diff_batch_mean(logits, clean_logits, input_lengths, labels):
    """logit[label] - logit[corrupted_label] at the last real position, batch mean (``labels``: (B, 2) ids)."""
    last = _last(logits, input_lengths)
    return (last.gather(-1, labels[:, :1]) - last.gather(-1, labels[:, 1:])).mean()


# EAP's gradient is taken at the clean run, where the KL to the clean run has zero gradient: its KL
# scores are rounding noise, so EAP is stored with logit-diff only.
METRICS = {"kl": kl_batch_mean, "logit-diff": logit_diff_batch_mean}


def label_ids(model, row) -> list[int]:
    ids = [model.tokenizer(t, add_special_tokens=False)["input_ids"] for t in row[2:4]]
    if any(len(i) != 1 for i in ids):
        raise SystemExit(f"answers {row[2:4]} are not single tokens")
    return [i[0] for i in ids]


def run_method(model, method: str, metric: str) -> dict[str, float]:
    import torch
    from eap.attribute import attribute
    from eap.graph import Graph

    batches = [PAIRS[i:i + BATCH] for i in range(0, len(PAIRS), BATCH)]
    loader = [([r[0] for r in b], [r[1] for r in b], torch.tensor([label_ids(model, r) for r in b])) for b in batches]
    g = Graph.from_model(model)
    steps = STEPS if "IG" in METHODS[method] else None
    attribute(model, g, loader, METRICS[metric], method=METHODS[method], ig_steps=steps, quiet=True)
    return {name: float(e.score) for name, e in g.edges.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", type=Path, required=True, help=f"a hannamw/EAP-IG checkout at {REFERENCE_COMMIT}")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)

    from importlib.metadata import version

    import torch

    from analysis.tiny import build_tiny_model

    torch.set_num_threads(2)
    tl_version = version("transformer-lens")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sys.path.insert(0, str(copy_reference(args.reference, work / "ref")))
        recipe = dict(MODEL)
        model_dir = build_tiny_model(work / "model", **recipe)
        model = hooked_neox(model_dir, torch.float64)
        from transformers import AutoModelForCausalLM

        sha = weights_sha256(AutoModelForCausalLM.from_pretrained(model_dir))
        args.out.mkdir(parents=True, exist_ok=True)
        for method in METHODS:
            doc = {"reference": f"hannamw/EAP-IG {REFERENCE_COMMIT}", "transformer_lens": tl_version, "method": method,
                   "reference_method": METHODS[method], "metrics": "batch means: kl (vocabulary mean), logit-diff",
                   "steps": STEPS if "ig" in method else None, "batch_size": BATCH, "dtype": "float64",
                   "model": {**recipe, "weights_sha256": sha}, "pairs": PAIRS,
                   "scores": {m: run_method(model, method, m) for m in METRICS if not (method == "eap" and m == "kl")}}
            path = args.out / f"{method}.json"
            path.write_text(json.dumps(doc, indent=0) + "\n")
            print(f"wrote {', '.join(doc['scores'])} scores of {len(doc['scores']['logit-diff'])} edges to {path}")


if __name__ == "__main__":
    main()
