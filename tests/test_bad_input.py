"""Bad input across the CLI: one clear `error:` line, a non-zero exit, no traceback, nothing written.

The commands run in-process through the real entry point (`ingest.cli.main`), against the test server.
"""

from __future__ import annotations

import json

import pytest

from conftest import SHARED
from ingest.cli import main

REF = SHARED / "reference-circuits" / "graph_add_sub_mul_div_1.4b_epoch0.json"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from analysis.tiny import build_tiny_model
    root = tmp_path_factory.mktemp("bad")
    model = build_tiny_model(root / "model", arch="gpt_neox", n_layers=2, n_heads=2, d_model=32, seed=0)
    good = root / "good.csv"
    good.write_text("clean,corrupted,label\n1 + 2 =,1 - 2 =,3\n")
    unequal = root / "unequal.csv"
    unequal.write_text("clean,corrupted,label\n1 + 2 =,1 - 2 - 5 =,3\n")
    # answers may have several tokens, but the logit-diff metric needs clean and corrupted answers of
    # equal token length ("3 4" is two tokens, "1" one); an answer of only spaces is empty
    multitoken = root / "multi.csv"
    multitoken.write_text("clean,corrupted,label,corrupted_label\n1 + 2 =,1 - 2 =,3 4,1\n")
    blank = root / "blank.csv"
    blank.write_text('clean,corrupted,label\n1 + 2 =,1 - 2 =,"  "\n')
    nan_scores = root / "nan.json"
    nan_scores.write_text('{"scores": {"input->m0": NaN}}')
    inf_json = root / "inf.json"
    inf_json.write_text('{"cfg": {"n_layers": 2, "n_heads": 1, "parallel_attn_mlp": true}, "nodes": {}, '
                        '"edges": {"input->m0": {"score": Infinity, "in_graph": true}}}')
    notjson = root / "notjson.json"
    notjson.write_text("{{{")
    scores = root / "scores.json"
    scores.write_text(json.dumps({"graph": {"n_layers": 2, "n_heads": 2, "parallel_attn_mlp": True},
                                  "scores": {"input->m0": 1.0}}))
    return {"model": str(model), "root": root, "good": str(good), "unequal": str(unequal),
            "multi": str(multitoken), "blank": str(blank), "nan": str(nan_scores), "inf": str(inf_json),
            "notjson": str(notjson), "scores": str(scores)}


def cases(t):
    m, r = t["model"], t["root"]
    score = ["score", "--model", m, "--out", str(r / "o.json"), "--quiet"]
    return [
        (["data", "make", "no_such_task", "--tokenizer", m, "--out", str(r / "d1")], "unknown"),
        (["data", "make", "add_sub", "--n", "700", "--tokenizer", m, "--out", str(r / "d2")], "100"),
        (["data", "make", "add_sub", "--finetune-frac", "1.5", "--tokenizer", m, "--out", str(r / "d3")], "frac"),
        (["data", "make", "add_sub", "--tokenizer", str(r / "nope"), "--out", str(r / "d4")], "nope"),
        (["score", "--model", str(r / "nope"), "--data", t["good"], "--out", str(r / "o.json")], "does not exist"),
        (score + ["--data", t["good"], "--steps", "0"], "steps"),
        (score + ["--data", t["good"], "--method", "bogus"], "bogus"),
        (score + ["--data", t["good"], "--metric", "bogus"], "bogus"),
        (score + ["--data", t["unequal"]], "row"),
        (score + ["--data", t["multi"], "--metric", "logit-diff"], "token"),
        (score + ["--data", t["blank"]], "empty"),
        (score + ["--data", str(r / "missing.csv")], "does not exist"),
        (["circuit", "select", t["scores"], "--top-frac", "2", "--out", str(r / "c.json")], "frac"),
        (["circuit", "select", t["scores"], "--top-n", "0", "--out", str(r / "c.json")], "top"),
        (["circuit", "select", t["nan"], "--out", str(r / "c.json")], ""),
        (["import", "eap-json", t["notjson"], "--run", "x", "--step", "0"], "not valid JSON"),
        (["import", "eap-json", t["inf"], "--run", "x", "--step", "0"], "finite"),
        (["import", "eap-json", str(REF), t["notjson"], "--run", "x", "--step", "0"], "notjson"),
        (["import", "eap-json", str(REF), "--run", "x", "--step", "0", "--step", "1"], "--step"),
        (["import", "eap-json", str(REF), "--run", "x", "--step", "0", "--model-config", "{bad"], "model-config"),
        (["query", "churn", "no-such-run"], "no run"),
        (["query", "overlap", "a:0", "b:0", "--k", "0"], "k"),
        (["query", "critical-layers", "a:0", "b:0", "--top", "0"], "top"),
        (["query", "churn", "x", "--top-n", "5", "--top-frac", "0.1"], "choose one"),
        (["query", "churn", "x", "--percentile", "150"], "percentile"),
        (["query", "churn", "x", "--threshold", "-1"], "threshold"),
        (["query", "churn", "x", "--top-n", "0"], "top-n"),
        (["query", "jaccard", "nostep", "x:1"], "RUN:STEP"),
        (["query", "union", "a:0", "b:0", "--as", "nostep"], "RUN:STEP"),
        (["cypher", "CREATE (n:Evil) RETURN n"], "read-only"),
        (["cypher", "MATCH (n RETURN n"], "syntax"),
        (["cypher", "RETURN 1", "--param", "no-equals"], "NAME=JSON"),
        (["ingest", "run", "--model", m, "--task", "add_sub", "--method", "bogus"], "bogus"),
        (["ingest", "run", "--model", m, "--task", "add_sub", "--rank", "0"], "rank"),
        (["ingest", "run", "--model", m, "--task", "add_sub", "--data", str(r)], "exactly one"),
        (["ingest", "run", "--model", str(r / "nope"), "--data", str(r / "nodata")], "does not exist"),
        (["ingest", "run", "--model", m, "--task", "add_sub", "--checkpoints", "0"], "checkpoints"),
        (["ingest", "run", "--model", m, "--task", "add_sub", "--top-frac", "0"], "top-frac"),
    ]


def _counts(driver, database):
    recs, _, _ = driver.execute_query("MATCH (n) RETURN count(n) AS n", database_=database)
    return recs[0]["n"]


def test_bad_input_cases(db, cli_env, tiny, capsys):
    driver, database = db
    all_cases = cases(tiny)
    assert len(all_cases) >= 30
    before = _counts(driver, database)
    failures = []
    for args, needle in all_cases:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            main(args)
        err = capsys.readouterr().err.strip()
        lines = [ln for ln in err.splitlines() if ln.strip()]
        ok = (exc.value.code not in (0, None) and len(lines) == 1 and "Traceback" not in err
              and needle.lower() in err.lower())
        if not ok:
            failures.append((args, exc.value.code, err[-400:]))
    assert failures == []
    assert _counts(driver, database) == before  # nothing written by any of them
