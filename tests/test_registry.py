"""Model registry: BentoML store + DuckDB history, gated promotion, rollback."""

from __future__ import annotations

import json

import pytest

from hrnn_core import registry
from hrnn_core.config import load_config
from hrnn_core.data.warehouse import connect


@pytest.fixture()
def con(tmp_path):
    cfg = load_config(overrides={"paths": {"data_dir": str(tmp_path)}}, environ={})
    with connect(cfg) as c:
        yield c


def artifact(tmp_path, name, payload):
    d = tmp_path / name
    d.mkdir()
    (d / "model.json").write_text(json.dumps(payload))
    return d


def test_register_promote_rollback(con, tmp_path):
    assert registry.champion_from_store("no-such-model") is None
    a = registry.register(con, "hrnn", artifact(tmp_path, "a", {"v": 1}), metrics={"ndcg@10": 0.1},
                          protocol="temporal", snapshot_id="s1", data_interval=(0.0, 100.0))
    b = registry.register(con, "hrnn", artifact(tmp_path, "b", {"v": 2}), metrics={"ndcg@10": 0.2},
                          protocol="temporal", snapshot_id="s2", data_interval=(0.0, 200.0))
    assert registry.champion(con) is None
    assert registry.champion_from_store() is None
    assert registry.promote(con, a) is None
    assert registry.champion(con) == a == registry.champion_from_store()
    assert registry.promote(con, b) == a
    assert registry.champion(con) == b == registry.champion_from_store()
    stages = {e.tag: e.stage for e in registry.entries(con)}
    assert stages == {a: "archived", b: "champion"}
    info = registry.show(con, b)
    assert info["labels"]["stage"] == "champion" and info["labels"]["kind"] == "hrnn"
    assert info["metadata"]["metrics"] == {"ndcg@10": 0.2}
    assert [e["action"] for e in info["events"]] == ["register", "promote"]
    # rollback brings a back, recorded
    assert registry.rollback(con) == a
    assert registry.champion(con) == a == registry.champion_from_store()
    assert {e.tag: e.stage for e in registry.entries(con)} == {a: "champion", b: "archived"}
    actions = [r[0] for r in con.execute("select action from model_events order by event_seq").fetchall()]
    assert actions == ["register", "register", "promote", "promote", "rollback"]


def test_failed_promotion_leaves_champion_unchanged(con, tmp_path, monkeypatch):
    a = registry.register(con, "hrnn", artifact(tmp_path, "a", {}), metrics={"ndcg@10": 0.1})
    b = registry.register(con, "hrnn", artifact(tmp_path, "b", {}), metrics={"ndcg@10": 0.2})
    registry.promote(con, a)
    real = registry._set_stage
    calls = []

    def flaky(tag, stage):
        calls.append((tag, stage))
        if len(calls) == 2:  # the old champion's label update fails mid-promotion
            raise OSError("disk full")
        real(tag, stage)

    monkeypatch.setattr(registry, "_set_stage", flaky)
    with pytest.raises(OSError):
        registry.promote(con, b)
    monkeypatch.setattr(registry, "_set_stage", real)
    assert registry.champion(con) == a == registry.champion_from_store()
    assert {e.tag: e.stage for e in registry.entries(con)} == {a: "champion", b: "candidate"}


def test_gate():
    ok, why = registry.gate({"ndcg@10": 0.3}, {"champion": {"ndcg@10": 0.2}, "pop": {"ndcg@10": 0.1}}, "ndcg@10")
    assert ok and "beats" in why
    ok, why = registry.gate({"ndcg@10": 0.3}, {"pop": {"ndcg@10": 0.3}}, "ndcg@10")
    assert not ok and "pop" in why  # a tie is not a win
    ok, _ = registry.gate({}, {}, "ndcg@10")
    assert not ok


def test_errors(con, tmp_path):
    with pytest.raises(registry.RegistryError, match="unknown model kind"):
        registry.register(con, "xgb", tmp_path)
    with pytest.raises(registry.RegistryError, match="no registered model"):
        registry.promote(con, "hrnn-meta:nope")
    with pytest.raises(registry.RegistryError, match="no champion"):
        registry.rollback(con)
