"""The TransformerLens backend (analysis.tl_adapter) as an independent oracle, and on architectures the
native adapter does not know.

* gpt_neox, gpt2, llama (GQA): every method scored through TL's TransformerBridge hooks equals the
  native adapter's scores (different code for per-head outputs and q/k/v input gradients).
* qwen2 and gemma (GQA, random weights from a small config, no hub): TL's scores equal the native
  adapter's on a Llama carrying the same function (Qwen2: q/k/v biases, zero o bias; Gemma: embedding
  pre-scaled by sqrt(d_model), norms 1 + w, gelu-tanh MLP, untied head), and the graph names their
  edges as Llama's (k/v destinations per kv-head).
* gpt_neo and opt, which TL 4.3's bridge cannot split into q/k/v inputs, are one-line errors.
"""

from __future__ import annotations

import csv
import json

import pytest
import torch

from analysis.adapter import ModelAdapter
from analysis.datasets import PromptPair
from analysis.eap import score
from analysis.errors import UserError
from analysis.graph import build_graph, expected_edge_count
from analysis.models import load_model
from analysis.tiny import build_tiny_model
from analysis.tl_adapter import load_tl_model

torch.set_num_threads(2)
pytestmark = pytest.mark.filterwarnings("ignore")

PFX = "Calculate the result of the following arithmetic expression and provide only the final answer:"
# answers of equal token length for logit-diff under any tokenizer (a Qwen2 folder's loads as Qwen2's, digit by digit)
PAIRS = [PromptPair(f"{PFX} {a} + {b} =", f"{PFX} {a} - {b} =", str(a + b), str(a - b)) for a, b in [(5, 3), (7, 2), (6, 1)]]
PAIRS += [PromptPair("LCM(4, 6) =", "LCM(3, 5) =", "12", "15"),
          PromptPair("Derive the following sequence: 1, 2, 3,", "Derive the following sequence: 1, 2, 5,", "4", "6")]
# EAP's gradient is the clean run's, where the KL to the clean run is flat: logit-diff for it
CASES = [("eap", "logit-diff"), ("eap-ig-inputs", "kl"), ("clean-corrupted", "kl"), ("eap-ig-activations", "kl")]
TOL = 1e-4  # max |TL - native| / max |native|


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _score(adapter, graph, method, metric, **kw):
    return score(adapter, graph, PAIRS, method=method, metric=metric, steps=2, batch_size=3, parity=False, **kw)


# ----------------------------------------------------------------------------------- our five
@pytest.fixture(scope="module", params=["gpt_neox", "gpt2", "llama"])
def both(request, tmp_path_factory):
    d = build_tiny_model(tmp_path_factory.mktemp(request.param), arch=request.param, n_layers=2, n_heads=4,
                         d_model=32, seed=1, max_number=20, init_std=0.3)
    native = load_model(d)
    return request.param, native, load_tl_model(d)[0], build_graph(native.spec)


@pytest.mark.parametrize("method,metric", CASES)
def test_tl_backend_equals_native(both, method, metric):
    arch, native, tl, graph = both
    ours = _score(native, graph, method, metric)
    theirs = _score(tl, graph, method, metric)
    err = rel_err(theirs.dense, ours.dense)
    print(f"{arch} {method}: max |TL - native| / max |native| = {err:.1e}")
    assert err <= TOL and theirs.settings["backend"] == "transformer-lens"


def test_backend_option_rewraps_a_native_adapter(both):
    arch, native, tl, graph = both
    via_option = _score(native, graph, "eap-ig-inputs", "kl", backend="transformer-lens")
    assert torch.equal(via_option.dense, _score(tl, graph, "eap-ig-inputs", "kl").dense)
    assert via_option.settings["backend"] == "transformer-lens"
    assert not any("transformer_lens" in type(m).__module__ for m in native.model.modules())  # not rewired


# ----------------------------------------------------------------------------------- beyond them
def _randomize(model, std: float = 0.3) -> None:
    """Random biases and norm weights too (from_config leaves them at 0 / 1), so the mappings are tested."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * std)


def build_new(arch: str, d, tokenizer_dir):
    """A random-weight Qwen2 or Gemma from a small config (2 layers, 4 heads, 2 kv-heads, d_model 32)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GemmaConfig, Qwen2Config

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    kw = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, initializer_range=0.3, rms_norm_eps=1e-6,
              bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    cfg = Qwen2Config(tie_word_embeddings=False, **kw) if arch == "qwen2" else GemmaConfig(head_dim=8, **kw)
    torch.manual_seed(5)
    model = AutoModelForCausalLM.from_config(cfg)
    _randomize(model)
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def as_llama(model):
    """A native-adapter Llama computing the same function as a Qwen2 or Gemma model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    c = model.config
    gemma = c.model_type == "gemma"
    cfg = LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
                      num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
                      num_key_value_heads=c.num_key_value_heads, head_dim=c.head_dim if gemma else None,
                      max_position_embeddings=c.max_position_embeddings, rms_norm_eps=c.rms_norm_eps,
                      rope_parameters=c.rope_parameters, hidden_act=c.hidden_act, attention_bias=not gemma,
                      tie_word_embeddings=False, bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id,
                      pad_token_id=c.pad_token_id)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    if gemma:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"].clone()
        sd["model.embed_tokens.weight"] *= torch.tensor(c.hidden_size ** 0.5, dtype=torch.float32)
        for k in sd:
            if "norm" in k:
                sd[k] = 1.0 + sd[k]
    llama = LlamaForCausalLM(cfg)
    missing, unexpected = llama.load_state_dict(sd, strict=False)
    assert not unexpected and all(k.endswith("o_proj.bias") for k in missing), (missing, unexpected)
    with torch.no_grad():
        for k in missing:
            llama.get_parameter(k).zero_()
    return llama.eval()


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tok"), arch="gpt2", n_layers=1, n_heads=1, d_model=8,
                            max_number=20)


@pytest.fixture(scope="module")
def new_dirs(tmp_path_factory, tokenizer_dir):
    """Model folders as a user has them: a Qwen2 folder's tokenizer loads as transformers' Qwen2Tokenizer
    (digit by digit, so answers are several tokens), Gemma's as the word tokenizer."""
    return {a: build_new(a, tmp_path_factory.mktemp(a), tokenizer_dir) for a in ("qwen2", "gemma")}


@pytest.fixture(scope="module", params=["qwen2", "gemma"])
def new_arch(request, new_dirs):
    d = new_dirs[request.param]
    tl = load_tl_model(d)[0]
    from transformers import AutoModelForCausalLM

    llama = as_llama(AutoModelForCausalLM.from_pretrained(d))
    return request.param, tl, ModelAdapter(llama, tl.tokenizer)


def test_new_architecture_graph_is_llamas(new_arch):
    arch, tl, native_llama = new_arch
    spec = tl.spec
    assert (spec.n_layers, spec.n_heads, spec.kv_heads, spec.parallel_attn_mlp) == (2, 4, 2, False)
    graph = build_graph(spec)
    assert spec == native_llama.spec and len(graph.edges) == expected_edge_count(spec) == 82
    names = {e.name for e in graph.edges}
    assert "input->a1.h2<k>" in names and "input->a1.h1<k>" not in names and "a0.h3->a1.h1<q>" in names
    with pytest.raises(UserError, match=f"unsupported architecture '{arch}'"):
        ModelAdapter(tl.model, tl.tokenizer)  # the native adapter does not know it


@pytest.mark.parametrize("method,metric", [CASES[0], CASES[1], CASES[3]])
def test_new_architecture_equals_native_llama(new_arch, method, metric):
    arch, tl, native_llama = new_arch
    graph = build_graph(tl.spec)
    theirs = _score(tl, graph, method, metric)
    ours = _score(native_llama, graph, method, metric)
    err = rel_err(theirs.dense, ours.dense)
    print(f"{arch} {method}: max |TL - native Llama| / max |native| = {err:.1e}")
    assert err <= TOL


# ----------------------------------------------------------------------------------- errors and CLI
@pytest.mark.parametrize("arch", ["gpt_neo", "opt"])
def test_architectures_tl_cannot_split_are_one_line_errors(arch, tmp_path):
    d = build_tiny_model(tmp_path / arch, arch=arch, n_layers=1, n_heads=2, d_model=8, max_number=20)
    with pytest.raises(UserError, match=f"--backend transformer-lens cannot score '{arch}': TransformerLens") as exc:
        load_tl_model(d)
    assert "\n" not in str(exc.value)
    native = load_model(d)
    with pytest.raises(UserError, match="cannot score"):
        score(native, build_graph(native.spec), PAIRS, backend="transformer-lens")


def test_unknown_backend(both):
    _, native, _, graph = both
    with pytest.raises(UserError, match="unknown backend 'tl'; choose one of native, transformer-lens"):
        score(native, graph, PAIRS, backend="tl")


def _cli(argv, capsys):
    from ingest.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code, capsys.readouterr().err


def test_cli_scores_qwen2_through_transformer_lens(new_dirs, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = new_dirs["qwen2"]
    native_llama = ModelAdapter(as_llama(AutoModelForCausalLM.from_pretrained(d)), AutoTokenizer.from_pretrained(d))
    data = tmp_path / "d.csv"
    with open(data, "w", newline="") as fh:
        csv.writer(fh).writerows([("clean", "corrupted", "label")] + [(p.clean, p.corrupted, p.label) for p in PAIRS])
    base = ["score", "--model", str(d), "--data", str(data), "--quiet", "--steps", "2", "--batch-size", "3"]
    code, err = _cli(base + ["--out", str(tmp_path / "o.json"), "--backend", "transformer-lens"], capsys)
    assert code == 0, err
    doc = json.loads((tmp_path / "o.json").read_text())
    assert doc["provenance"]["architecture"] == "qwen2" and doc["provenance"]["settings"]["backend"] == "transformer-lens"
    graph = build_graph(native_llama.spec)
    assert len(doc["scores"]) == len(graph.edges)
    ours = _score(native_llama, graph, "eap-ig-inputs", "kl").to_dict()
    assert max(abs(doc["scores"][k] - v) for k, v in ours.items()) <= TOL * max(abs(v) for v in ours.values())
    code, err = _cli(base + ["--out", str(tmp_path / "x.json")], capsys)
    assert code == 2 and "unsupported architecture 'qwen2'" in err and err.count("\n") == 1
    code, err = _cli(base + ["--out", str(tmp_path / "x.json"), "--backend", "jax"], capsys)
    assert code == 2 and "unknown backend 'jax'" in err and err.count("\n") == 1
