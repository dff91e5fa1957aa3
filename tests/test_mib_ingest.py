"""`ingest run --mib`: each checkpoint stores MIB's CPR and CMD (and the per-fraction faithfulness),
equal to `analysis.mib.mib_curve` on the same stored scores; runs without it store neither and keep
their config hashes."""

from __future__ import annotations

import json

import pytest

from analysis.checkpoint import ScoringConfig
from analysis.datasets import load_split
from analysis.models import load_model
from analysis.mib import mib_curve
from ingested import EXAMPLES, ingest, known_accuracy_data, tiny_model
from queries.api import Store


def test_ingest_mib_stores_cpr_and_cmd(db, tmp_path):
    driver, database = db
    model = tiny_model(tmp_path)
    data = tmp_path / "data"
    known_accuracy_data(model, data)
    ingest(driver, database, model, data, tmp_path, "mib", max_steps=2, checkpoints=1, mib=True)
    recs, _, _ = driver.execute_query(
        "MATCH (c:Checkpoint {run: 'mib', step: 0}) RETURN c.cpr AS cpr, c.cmd AS cmd, c.mib_faithfulness AS f, "
        "c.scoring AS scoring", database_=database)
    rec = recs[0]
    assert rec["cpr"] is not None and rec["cmd"] is not None
    adapter = load_model(model, dtype="float32")  # step 0: LoRA's B = 0, the base model's weights
    pairs = load_split(data, "circuit")[:EXAMPLES]
    stored = Store(driver, database).checkpoint_edges("mib:0")
    expected = mib_curve(adapter, dict(zip(stored.names, stored.scores)), pairs, "kl", 16)
    assert rec["cpr"] == pytest.approx(expected.cpr, abs=1e-5)
    assert rec["cmd"] == pytest.approx(expected.cmd, abs=1e-5)
    assert json.loads(rec["f"]) == pytest.approx(list(expected.faithfulness), abs=1e-3, nan_ok=True)
    assert json.loads(rec["scoring"])["mib"]["metric"] == "kl"


def test_mib_off_keeps_the_record():
    assert "mib" not in ScoringConfig().record() and "chunk" not in ScoringConfig(chunk=4).record()
    assert ScoringConfig(mib=True).record()["mib"] is True
