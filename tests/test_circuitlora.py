"""CircuitLoRA plans (method.md 4): the paper's parameter ratios from shapes alone, module names for five
architectures, a plan equal to a hand computation from two stored circuits, trainable counts equal to the
formula, unmatched pattern keys refused, RandomLoRA reproducible by seed."""

from __future__ import annotations

import json
import random

import pytest

from conftest import run_cli
from analysis.circuitlora import (CircuitLoRAPlan, ModelShape, build_plan, check_pattern_keys, lora_ratio,
                                  module_key, peft_key_matches, random_layers)
from analysis.errors import UserError
from queries.api import CircuitDefinition, Store, store_union
from queries.components import Architecture
from queries.writer import CheckpointData, CircuitWriter, RunRecord


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from analysis.tiny import build_tiny_model
    return build_tiny_model(tmp_path_factory.mktemp("cl") / "model", arch="gpt_neox", n_layers=2, n_heads=2,
                            d_model=32, seed=0)


def test_paper_parameter_ratios_from_shapes():
    """Pythia-1.4B (method.md 3.2): every ratio of Tables 1, 3, 4 from the formula, no weights needed."""
    from transformers import GPTNeoXConfig
    shape = ModelShape.from_config(GPTNeoXConfig(vocab_size=50304, hidden_size=2048, num_hidden_layers=24,
                                                 num_attention_heads=16, intermediate_size=8192,
                                                 tie_word_embeddings=False))
    assert shape.base_parameters == 1_414_647_808 and len(shape.modules) == 96
    assert [f"{100 * lora_ratio(shape, r):.4f}" for r in (2, 8, 16, 32)] == ["0.1111", "0.4428", "0.8816", "1.7479"]
    layers = [0, 4, 6, 5, 2]  # the rebuttal's Add/Sub critical layers
    assert f"{100 * build_plan(shape, layers, 8, 32, 3e-4, 4e-4).parameter_ratio:.4f}" == "0.7175"
    assert f"{100 * build_plan(shape, layers, 16, 64, 3e-4, 4e-4).parameter_ratio:.4f}" == "1.4248"


def _config(arch, n_layers):
    from transformers import GPT2Config, GPTNeoConfig, GPTNeoXConfig, LlamaConfig, OPTConfig
    d, v = 16, 64
    return {
        "gpt_neox": lambda: GPTNeoXConfig(vocab_size=v, hidden_size=d, num_hidden_layers=n_layers,
                                          num_attention_heads=2, intermediate_size=4 * d),
        "gpt2": lambda: GPT2Config(vocab_size=v, n_embd=d, n_layer=n_layers, n_head=2),
        "gpt_neo": lambda: GPTNeoConfig(vocab_size=v, hidden_size=d, num_layers=n_layers, num_heads=2,
                                        attention_types=[[["global", "local"], n_layers // 2]]),
        "opt": lambda: OPTConfig(vocab_size=v, hidden_size=d, num_hidden_layers=n_layers, num_attention_heads=2,
                                 ffn_dim=4 * d, word_embed_proj_dim=d),
        "llama": lambda: LlamaConfig(vocab_size=v, hidden_size=d, num_hidden_layers=n_layers,
                                     num_attention_heads=2, num_key_value_heads=1, intermediate_size=3 * d),
    }[arch]()


LAYER_1 = {
    "gpt_neox": ["gpt_neox.layers.1.attention.query_key_value", "gpt_neox.layers.1.attention.dense",
                 "gpt_neox.layers.1.mlp.dense_h_to_4h", "gpt_neox.layers.1.mlp.dense_4h_to_h"],
    "gpt2": ["transformer.h.1.attn.c_attn", "transformer.h.1.attn.c_proj", "transformer.h.1.mlp.c_fc",
             "transformer.h.1.mlp.c_proj"],
    "gpt_neo": ["transformer.h.1.attn.attention.k_proj", "transformer.h.1.attn.attention.v_proj",
                "transformer.h.1.attn.attention.q_proj", "transformer.h.1.attn.attention.out_proj",
                "transformer.h.1.mlp.c_fc", "transformer.h.1.mlp.c_proj"],
    "opt": ["model.decoder.layers.1.self_attn.k_proj", "model.decoder.layers.1.self_attn.v_proj",
            "model.decoder.layers.1.self_attn.q_proj", "model.decoder.layers.1.self_attn.out_proj",
            "model.decoder.layers.1.fc1", "model.decoder.layers.1.fc2"],
    "llama": ["model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.k_proj",
              "model.layers.1.self_attn.v_proj", "model.layers.1.self_attn.o_proj",
              "model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj", "model.layers.1.mlp.down_proj"],
}


@pytest.mark.parametrize("arch", list(LAYER_1))
def test_module_names_and_peft_ranks_per_architecture(arch):
    """Keys are exact: layer 1's keys match layer 1's modules and not layer 11's (peft's own rule), and
    a real peft model gets exactly the planned ranks and alphas and the planned trainable count."""
    from transformers import AutoModelForCausalLM

    from analysis.training import TrainConfig, trainable_parameters, wrap_for_training
    shape = ModelShape.from_config(_config(arch, 12))
    assert sorted(m.name for m in shape.layer_modules(1)) == sorted(LAYER_1[arch])
    plan = build_plan(shape, [1], 2, 4, 1e-3, 2e-3)
    names = [m.name for m in shape.modules]
    for key in plan.rank_pattern:
        hits = [n for n in names if peft_key_matches(key, n)]
        assert len(hits) == 1 and ".1." in hits[0]
    import torch
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_config(arch, 2))
    small = build_plan(ModelShape.from_model(model), [1], 2, 4, 1e-3, 2e-3)
    wrapped = wrap_for_training(model, TrainConfig(max_steps=4, checkpoints=1, **small.train_overrides()), 4)
    trainable, total = trainable_parameters(wrapped)
    assert trainable == small.trainable_parameters
    assert small.parameter_ratio == pytest.approx(trainable / total)
    ranks = {n.split("base_model.model.")[-1]: m.r["default"] for n, m in wrapped.named_modules()
             if isinstance(getattr(m, "r", None), dict) and "default" in m.r}
    assert {n: r for n, r in ranks.items() if r == 4} == {n: 4 for n in LAYER_1[arch]}
    assert set(ranks.values()) == {2, 4}


# -- a plan from two stored, hand-written circuits -------------------------------------------------

ARCH = Architecture(2, 2, True)  # the tiny GPT-NeoX below: parallel attention and MLP


def _cp(step, edges):
    return CheckpointData(step=step, names=list(edges), scores=list(edges.values()),
                          in_graph=[True] * len(edges), level="head")


BEFORE = {"input->a0.h0": 1.0, "a0.h0->m1": 2.0, "m1->logits": 0.5}
AFTER = {"input->a0.h0": 1.5, "a0.h0->m1": -1.0, "m0->a1.h1": 3.0, "m1->logits": 0.5, "a1.h0->logits": 8.0}
# Deltas over the union of edge keys, edge layer = source layer (input = 0):
#   layer 0: |1.5 - 1.0| + |-1.0 - 2.0| + |3.0| (m0->a1.h1 only after) = 0.5 + 3 + 3 = 6.5
#   layer 1: |0.5 - 0.5| + |8.0| (a1.h0->logits only after)             = 8.0
# so the top-1 critical layer is 1 (delta 8.0), then layer 0 (6.5).


@pytest.fixture
def hand(db, tiny):
    driver, database = db
    writer = CircuitWriter(driver, database)
    writer.ensure_run(RunRecord(id="hand", model=str(tiny), task="add_sub", seed=1), ARCH)
    writer.write_checkpoint("hand", ARCH, _cp(0, BEFORE))
    writer.write_checkpoint("hand", ARCH, _cp(10, AFTER))
    return driver, database


def test_plan_equals_hand_computation(hand, tiny):
    from transformers import AutoModelForCausalLM

    from ingest.jobs.circuitlora import load_stored_plan, plan_from_circuits, store_plan
    driver, database = hand
    store = Store(driver, database)
    plan = plan_from_circuits(store, "hand:0", "hand:10", top=1, r_o=2, r_c=4, lr_other=1e-3, lr_critical=2e-3)
    assert plan.critical_layers == [1] and plan.source["deltas"] == [8.0]
    assert plan.source["all_layers"] == [1, 0] and plan.source["all_deltas"] == [8.0, 6.5]
    assert plan.model == str(tiny) and plan.task == "add_sub"
    mods = ["attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h"]
    keys = ["^gpt_neox\\.layers\\.1\\." + m.replace(".", "\\.") + "$" for m in mods]
    assert plan.rank_pattern == {k: 4 for k in keys}
    assert plan.alpha_pattern == {k: 8 for k in keys}
    assert (plan.r_o, plan.alpha_o, plan.r_c, plan.alpha_c) == (2, 4, 4, 8)
    assert plan.lr_groups[0]["lr"] == 2e-3 and plan.lr_other == 1e-3
    # d = 32: qkv 32->96, dense 32->32, h_to_4h 32->128, 4h_to_h 128->32: r (in + out) = 512 r per layer
    base = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(str(tiny)).parameters())
    assert plan.trainable_parameters == 512 * 2 + 512 * 4 == 3072
    assert plan.base_parameters == base
    assert plan.parameter_ratio == pytest.approx(3072 / (base + 3072))

    pid = store_plan(driver, database, plan)
    recs, _, _ = driver.execute_query(
        "MATCH (p:Plan {id: $id})-[f:FROM_CIRCUIT]->(c:Checkpoint) RETURN f.role AS role, c.step AS step "
        "ORDER BY role", id=pid, database_=database)
    assert [(r["role"], r["step"]) for r in recs] == [("after", 10), ("before", 0)]
    assert load_stored_plan(store, pid).to_dict() == plan.to_dict()
    assert CircuitLoRAPlan.from_dict(json.loads(plan.to_json())).to_dict() == plan.to_dict()

    # the paper's default learning rates: critical 4e-4 / other 3e-4 for Add/Sub
    paper = plan_from_circuits(store, "hand:0", "hand:10", top=2, r_o=8, r_c=32)
    assert paper.critical_layers == [0, 1] and (paper.lr_critical, paper.lr_other) == (4e-4, 3e-4)


def test_trainable_count_and_lr_groups_follow_the_plan(tiny):
    from transformers import AutoModelForCausalLM

    from analysis.training import TrainConfig, build_optimizer, trainable_parameters, wrap_for_training
    model = AutoModelForCausalLM.from_pretrained(str(tiny))
    plan = build_plan(ModelShape.from_model(model), [0], 2, 8, 1e-3, 5e-3)
    cfg = TrainConfig(max_steps=4, checkpoints=1, **plan.train_overrides())
    wrapped = wrap_for_training(model, cfg, 4)
    trainable, _ = trainable_parameters(wrapped)
    # formula: layer 0 at r_c = 8, layer 1 at r_o = 2, 512 parameters per unit of rank per layer
    assert trainable == plan.trainable_parameters == 512 * 8 + 512 * 2
    opt = build_optimizer(wrapped, cfg)
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["critical"]["lr"] == 5e-3 and groups["default"]["lr"] == 1e-3
    assert len(groups["critical"]["params"]) == 8  # lora_A and lora_B of 4 modules
    assert sum(p.numel() for p in groups["critical"]["params"]) == 512 * 8
    assert build_optimizer(wrapped, TrainConfig()) is None


def test_unmatched_pattern_key_raises(tiny):
    from transformers import AutoModelForCausalLM

    from analysis.training import TrainConfig, wrap_for_training
    model = AutoModelForCausalLM.from_pretrained(str(tiny))
    names = [m.name for m in ModelShape.from_model(model).modules]
    bad = module_key("gpt_neox.layers.7.attention.dense")  # the tiny model has 2 layers
    with pytest.raises(UserError, match="matches none"):
        check_pattern_keys([bad], names)
    with pytest.raises(UserError, match="matches none"):  # `$`: a prefix of a module name is no match
        check_pattern_keys(["gpt_neox\\.layers\\.1\\.attention"], names)
    with pytest.raises(UserError, match="rank_pattern key .* matches none"):
        wrap_for_training(model, TrainConfig(rank=2, max_steps=4, checkpoints=1, rank_pattern={bad: 8}), 4)
    with pytest.raises(UserError, match="alpha_pattern key .* matches none"):
        wrap_for_training(model, TrainConfig(rank=2, max_steps=4, checkpoints=1, alpha_pattern={bad: 8}), 4)
    with pytest.raises(UserError, match="does not exist"):
        build_plan(ModelShape.from_model(model), [2], 2, 4, 1e-3, 1e-3)
    assert peft_key_matches(module_key(names[0]), names[0])


def test_random_lora_is_reproducible_by_seed(tiny):
    from ingest.jobs.circuitlora import random_plan
    assert random_layers(24, 5, 3) == random_layers(24, 5, 3) == random.Random(3).sample(range(24), 5)
    assert len({tuple(random_layers(24, 5, s)) for s in range(10)}) > 1
    a = random_plan(str(tiny), 1, seed=7, r_o=2, r_c=4, lr_other=1e-3)
    b = random_plan(str(tiny), 1, seed=7, r_o=2, r_c=4, lr_other=1e-3)
    assert a.to_json() == b.to_json() and a.kind == "random" and a.label == "randomlora-2-4"
    assert a.critical_layers == sorted(random.Random(7).sample(range(2), 1))
    with pytest.raises(UserError):
        random_layers(2, 3, 0)


def test_plan_files_load_with_the_shared_messages(tiny, tmp_path):
    """CircuitLoRAPlan.load reads through analysis.errors.read_json_file: one line naming the file."""
    plan = build_plan(ModelShape.from_config(tiny), [0], 2, 4, 1e-3, 2e-3, model=str(tiny))
    assert CircuitLoRAPlan.load(plan.save(tmp_path / "plan.json")) == plan
    with pytest.raises(UserError, match=r"missing\.json: no such CircuitLoRA plan"):
        CircuitLoRAPlan.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match=r"bad\.json: not valid JSON \(.* at line 1\)"):
        CircuitLoRAPlan.load(tmp_path / "bad.json")
    for other in ("[1, 2]", json.dumps({"format": "something/else"})):
        (tmp_path / "other.json").write_text(other)
        with pytest.raises(UserError, match="not a CircuitLoRA plan"):
            CircuitLoRAPlan.load(tmp_path / "other.json")


def test_cli_plan_from_store_and_from_a_union(hand, tiny, cli_env, tmp_path):
    driver, database = hand
    out = tmp_path / "plan.json"
    r = run_cli(["circuitlora", "plan", "--before", "hand:0", "--after", "hand:10", "--top", "1", "--r-o", "2",
                 "--r-c", "4", "--out", str(out)], env=cli_env)
    assert r.returncode == 0, r.stderr[-2000:]
    plan = json.loads(out.read_text())
    assert plan["critical_layers"] == [1] and plan["trainable_parameters"] == 3072
    assert "layers [1]" in r.stdout and "stored" in r.stdout

    # a union circuit (the compositional task's source) as the AFTER circuit; union runs name no model
    store_union(driver, database, "hand:0", "hand:10", "u:0", CircuitDefinition())
    r = run_cli(["circuitlora", "plan", "--before", "hand:0", "--after", "u:0", "--top", "1", "--json"], env=cli_env)
    assert r.returncode == 0, r.stderr[-2000:]  # falls back to the BEFORE run's model
    assert json.loads(r.stdout)["source"]["after"] == "u:0"
    r = run_cli(["circuitlora", "plan", "--before", "u:0", "--after", "u:0", "--top", "1"], env=cli_env)
    assert r.returncode == 2 and "give --model" in r.stderr
    r = run_cli(["circuitlora", "plan", "--before", "hand:0", "--after", "hand:10", "--top", "3"], env=cli_env)
    assert r.returncode == 2 and r.stderr.startswith("error:")
