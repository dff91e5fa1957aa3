"""Presets, model and data of `circuitshift experiment findings` (the paper's Key Observations).

One pre-trained model serves all four observations. In the default and tiny presets it is a GPT-NeoX
built and pre-trained as the demo's (analysis/pretrain.py: word-level, digit-splitting tokenizer;
small-number arithmetic, arithmetic in words, counting, copying), but with 8 layers in the default
preset so that KO3's critical layers and random layers can differ; it is built once per recipe and
cached under the state folder. A preset with `model` (smollm2) uses a real pretrained model as is
(README, "The real model": a shipped GGUF is converted once into the model cache).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from analysis.errors import UserError


@dataclass(frozen=True)
class FindingsPreset:
    """Sizes of one findings run (every field is recorded with the findings)."""

    name: str = field(metadata={"help": "Preset name (tiny: tests; default: the evidence; smollm2: the real model)."})
    model: str | None = field(default=None, metadata={
        "help": "A pretrained model used as is (a shipped name such as smollm2, a .gguf file or a model folder; "
                "no pre-training; n_layers, n_heads and d_model must be its own). None: build and pre-train "
                "the GPT-NeoX below."})
    n_layers: int = field(default=8, metadata={"help": "Layers of the model (KO3 needs critical != random)."})
    n_heads: int = field(default=4, metadata={"help": "Attention heads per layer."})
    d_model: int = field(default=128, metadata={"help": "Residual width."})
    pretrain_steps: int = field(default=1500, metadata={"help": "Pre-training steps (analysis/pretrain.py; 0 with model)."})
    separator: str = field(default=" ", metadata={
        "help": "Between prompt and answer in the fine-tuning text (KO2, KO3): ' ' for the word-level tokenizer "
                "(where ' ' is no token), '' for a BPE tokenizer such as SmolLM2's, whose ' ' before a digit "
                "is a token of its own: circuits and accuracy read the answer right after '='."})
    batch_size: int = field(default=32, metadata={"help": "KO2 and KO3 training batch."})
    count: int = field(default=4000, metadata={"help": "Add/Sub(100) pairs (80% fine-tune, 20% circuit)."})
    ko1_count: int = field(default=1500, metadata={
        "help": "KO1's own Add/Sub(100) rows (perturbed copies, disjoint splits): fewer than all there are. "
                "Add/Sub(100) with equal-length clean and corrupted answers has about 4,000 pairs, so the "
                "4,000-row set is exhaustive and no perturbed prompt can avoid it (measured: 0 of 720 "
                "perturbed at 90%)."})
    finetune_steps: int = field(default=1200, metadata={"help": "KO2 full fine-tuning steps (batch 32)."})
    finetune_lr: float = field(default=2e-3, metadata={"help": "KO2 full fine-tuning learning rate (the demo's)."})
    checkpoints: int = field(default=5, metadata={"help": "KO2 scored checkpoints after step 0."})
    examples: int = field(default=80, metadata={"help": "Circuit-split pairs every circuit is scored on."})
    top_frac: float = field(default=0.4, metadata={
        "help": "Circuit = top fraction of edges, pruned (the demo's 40%: 5% of a small graph is not faithful)."})
    ig_steps: int = field(default=5, metadata={"help": "EAP-IG steps m (the paper's 5)."})
    noise_samples: int = field(default=3, metadata={"help": "KO2: bootstrap resamples per checkpoint."})
    perturb_levels: tuple = field(default=(0.3, 0.6, 0.9), metadata={"help": "KO1 perturbation levels."})
    disjoint: int = field(default=3, metadata={"help": "KO1 disjoint splits (each of `examples` pairs)."})
    ko3_seeds: int = field(default=3, metadata={"help": "KO3 seeds per method (>= 3 for the evidence)."})
    ko3_steps: int = field(default=200, metadata={"help": "KO3 steps per run (phase 1 too)."})
    ko3_lr: float = field(default=5e-3, metadata={"help": "KO3 LoRA learning rate (non-critical modules too)."})
    ko3_base_accuracy: float = field(default=15.0, metadata={
        "help": "KO3 starts from the first KO2 checkpoint at or above this accuracy (%), else the last but one: "
                "from the pre-trained model LoRA r=16 (lr 1e-2) went 3.8% -> 6.2% in 300 steps, a comparison "
                "of nothing."})
    ko3_top: int = field(default=2, metadata={
        "help": "KO3 critical layers: 2 of 8 = 25%, the paper's share (5 of Pythia-1.4B's 24 = 21%), and "
                "C(8,2) = 28 possible random draws, so RandomLoRA's layers differ from the critical ones."})
    ko3_methods: tuple = field(default=("lora-r16", "circuitlora-8-32", "randomlora-8-32"), metadata={
        "help": "KO3 methods: CircuitLoRA (8,32) against LoRA r=16 (higher ratio) and RandomLoRA (8,32)."})
    ko4_count: int = field(default=1000, metadata={"help": "KO4 compositional rows (subtasks derived from them)."})
    ko4_draws: int = field(default=2000, metadata={"help": "KO4 random control draws per k."})
    ko4_k_fracs: tuple = field(default=(0.25, 0.5, 1.0), metadata={
        "help": "KO4 k as fractions of the compositional circuit's head-level size (k scaled to the graph)."})
    seed: int = field(default=42, metadata={"help": "Seed of the model, data and first run."})

    def __post_init__(self):
        if self.model is not None and self.pretrain_steps:
            raise UserError(f"preset {self.name}: a preset with a model is not pre-trained (pretrain_steps 0)")
        if self.n_layers < 2 or self.ko3_top >= self.n_layers:
            raise UserError(f"preset {self.name}: need 2+ layers and fewer critical layers than layers")
        if self.noise_samples < 2 or self.disjoint < 2:
            raise UserError(f"preset {self.name}: noise and disjoint splits need 2+ samples")

    def record(self) -> dict:
        d = asdict(self)
        for k in ADDED_FIELDS:  # fields added after the default run: left out at their defaults, so the
            if d[k] == ADDED_FIELDS[k]:  # default and tiny presets' stored documents stay as they were
                del d[k]
        return d


ADDED_FIELDS = {"model": None, "separator": " ", "batch_size": 32}


PRESETS = {
    "default": FindingsPreset(name="default"),
    # for tests: seconds of compute, every Key Observation end to end
    "tiny": FindingsPreset(name="tiny", n_layers=4, n_heads=2, d_model=32, pretrain_steps=30, count=400,
                           ko1_count=400, finetune_steps=24, checkpoints=2, examples=12, noise_samples=2,
                           perturb_levels=(0.5,), disjoint=2, ko3_seeds=2, ko3_steps=6, ko3_top=1, ko3_base_accuracy=0.0,
                           ko4_count=200, ko4_draws=200),
    # the real model (README, "The real model"), sized for 2 CPU cores and 1 torch thread. Measured probes
    # (2 cores shared with ~6 other jobs, so times are loaded): at step 0 SmolLM2 answers 0 of 100 held-out
    # Add/Sub(100) pairs (the digits right after '='); full fine-tuning, batch 8: lr 2e-4 -> 3.1%, 34.4%,
    # 31.2% of 32 held-out pairs at steps 10, 20, 30 (~5 s/step unloaded, 28 s loaded), hence 30 steps with
    # checkpoints at 10, 20, 30 and KO3 from step 20. Circuit size on 8 pairs (70,651 edges, 301 nodes):
    # top 5% (the paper's) keeps 228 nodes at 34% faithfulness, 10% 271 nodes at 68%, 20% 295 nodes
    # (71%), 40% all 301 (90%): 10% is the smallest share that is faithful-ish and still leaves nodes out,
    # so that KO2's node side can move. Two disjoint 8-pair sets share 0.61 of their top-10% edges.
    # 6 of 30 layers critical = 20%, the paper's share.
    "smollm2": FindingsPreset(name="smollm2", model="smollm2", n_layers=30, n_heads=9, d_model=576, pretrain_steps=0,
                              separator="", batch_size=8, count=1000, ko1_count=1500, finetune_steps=30,
                              finetune_lr=2e-4, checkpoints=3, examples=8, top_frac=0.1, noise_samples=2,
                              perturb_levels=(0.5, 0.9), disjoint=3, ko3_seeds=3, ko3_steps=20, ko3_lr=2e-3,
                              ko3_top=6, ko3_base_accuracy=15.0, ko4_count=1000, ko4_draws=2000),
}


def preset_named(name: str) -> FindingsPreset:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def model_folder(p: FindingsPreset) -> Path:
    """The HF folder of the preset's `model` (a shipped or .gguf model: its converted cache folder, made
    once), checked against the preset's n_layers, n_heads and d_model (KO3's share of critical layers
    and the page's description are computed from them)."""
    from transformers import AutoConfig

    from analysis.gguf import converted_folder
    from analysis.models import resolve_model_source

    source = resolve_model_source(p.model)
    if source.gguf_file:
        folder = converted_folder(source.gguf_path)
    elif source.kind == "folder":
        folder = Path(source.path)
    else:
        raise UserError(f"preset {p.name}: model {p.model!r} is not a shipped name, .gguf file or model folder")
    cfg = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    have = (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.hidden_size)
    if have != (p.n_layers, p.n_heads, p.d_model):
        raise UserError(f"preset {p.name}: {p.model} has (layers, heads, d_model) {have}, the preset says "
                        f"{(p.n_layers, p.n_heads, p.d_model)}")
    return folder


def pretrained_model(root: Path, p: FindingsPreset, device: str = "cpu", echo=print) -> Path:
    """The preset's pre-trained model: its `model` as is, else built once per recipe (cached under `root`)."""
    if p.model is not None:
        return model_folder(p)
    from analysis.pretrain import WORDS, PretrainConfig, pretrain
    from analysis.provenance import content_hash
    from analysis.tiny import build_tiny_model
    from analysis.tokenizer import build_word_tokenizer

    cfg = PretrainConfig(steps=p.pretrain_steps, seed=p.seed)
    recipe = {"pretrain": asdict(cfg), "layers": p.n_layers, "heads": p.n_heads, "d": p.d_model,
              "device": device, "recipe": 1}
    key = content_hash(recipe)[:12]
    out = root / f"pretrained-{key}"
    if not (out / "config.json").exists():
        base = root / f"base-{key}"
        echo(f"building a {p.n_layers}-layer GPT-NeoX ({p.n_heads} heads, d_model {p.d_model}); pre-training "
             f"{p.pretrain_steps} steps")
        tok = build_word_tokenizer(base, max_number=9, extra_words=WORDS)
        build_tiny_model(base, arch="gpt_neox", n_layers=p.n_layers, n_heads=p.n_heads, d_model=p.d_model,
                         seed=p.seed, tokenizer=tok)
        pretrain(base, out, cfg, device=device, progress=False)
    return out


def dataset(model: Path, task: str, out: Path, count: int, seed: int, perturb=(), disjoint=0,
            disjoint_size=200) -> Path:
    """A dataset for the model's tokenizer (answers of any token length), generated once."""
    from analysis.tasks.build import DatasetSpec, make_dataset
    if not (out / "manifest.json").exists():
        make_dataset(DatasetSpec(task=task, tokenizer=model, out=out, n=100 if task == "add_sub" else None,
                                 count=count, seed=seed, answer_tokens="any", overwrite=True,
                                 perturb_levels=tuple(perturb), disjoint=disjoint, disjoint_size=disjoint_size))
    return out
