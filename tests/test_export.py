"""Batch export: shapes, counts, checksums, atomic re-runs, shards, exclude-seen, and equality with
the service's /recommend (the same scoring code)."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import bentoml
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from hrnn_core.data.contract import is_session_owner
from hrnn_core.serving.export import ExportError, export_all, merge_shards, score_shard
from tests.champions import promote_tiny_champion

REPO = Path(__file__).resolve().parents[1]
K = 5


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory):
    """A tiny HRNN-meta trained on a synthetic snapshot, registered and promoted."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    c = promote_tiny_champion(tmp_path_factory.mktemp("export"), n_users=50, n_items=120, n_events=1_500, seed=4)
    yield c.cfg, c.tag, c.snap
    torch.set_num_threads(threads)
    bentoml.models.delete(c.tag)  # the test session shares one store: leave no champion behind


def _csv(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _history(snap: Path) -> dict[str, set[str]]:
    seq = pq.read_table(snap / "sequences.parquet", columns=["owner_id", "item_idx"]).to_pydict()
    items = pq.read_table(snap / "items.parquet", columns=["item_idx", "item_id"]).to_pydict()
    id_of = dict(zip(items["item_idx"], items["item_id"], strict=True))
    return {o: {id_of[i] for i in idx} for o, idx in zip(seq["owner_id"], seq["item_idx"], strict=True)}


def test_export_files_counts_checksums_and_exclude_seen(champion, tmp_path: Path) -> None:
    cfg, tag, snap = champion
    m = export_all(cfg, tag, k=K, n_shards=1, out_dir=tmp_path / "exp")
    out = tmp_path / "exp"
    history = _history(snap)
    users = sorted(o for o in history if not is_session_owner(o))
    assert m["model_tag"] == tag and m["n_users"] == len(users) and m["k"] == K
    rows = _csv(out / "recommendations.csv")
    assert list(rows[0]) == ["user_id", "rank", "item_id", "score"]
    assert len(rows) == len(users) * K == m["files"]["recommendations.csv"]["rows"]
    by_user: dict[str, list[dict]] = {}
    for r in rows:
        by_user.setdefault(r["user_id"], []).append(r)
    assert sorted(by_user) == users
    for u, rs in by_user.items():
        assert [int(r["rank"]) for r in rs] == list(range(1, K + 1))
        scores = [float(r["score"]) for r in rs]
        assert scores == sorted(scores, reverse=True)
        assert not {r["item_id"] for r in rs} & history[u], "exclude-seen"
    lines = (out / "recommendations.jsonl").read_text().splitlines()
    assert len(lines) == len(users) == m["files"]["recommendations.jsonl"]["rows"]
    first = json.loads(lines[0])
    assert set(first) == {"input", "output", "error"} and first["error"] is None
    assert set(first["output"]) == {"recommendedItems", "scores"} and len(first["output"]["recommendedItems"]) == K
    assert first["output"]["recommendedItems"] == [r["item_id"] for r in by_user[first["input"]["userId"]]]
    manifest = json.loads((out / "manifest.json").read_text())
    for name, f in manifest["files"].items():
        assert _sha(out / name) == f["sha256"] and (out / name).stat().st_size == f["bytes"]
    assert manifest["data_interval"][1] == m["at_time"]


def test_shards_merge_to_the_single_shard_result_and_reruns_replace_atomically(champion, tmp_path: Path) -> None:
    cfg, tag, _ = champion
    one = export_all(cfg, tag, k=K, n_shards=1, out_dir=tmp_path / "one")
    work = tmp_path / "work"
    files = [score_shard(cfg, tag, s, 3, K, work) for s in range(3)]
    assert all(pq.read_table(f).num_rows > 0 for f in files)
    three = merge_shards(cfg, tag, files, tmp_path / "three", (None, one["at_time"]))
    # Same users, items and ranks; scores equal up to float32 rounding (a batch of other users
    # changes the matrix kernels' summation order, so bytes may differ in the last digit).
    a, b = _csv(tmp_path / "one" / "recommendations.csv"), _csv(tmp_path / "three" / "recommendations.csv")
    assert [(r["user_id"], r["rank"], r["item_id"]) for r in a] == [(r["user_id"], r["rank"], r["item_id"]) for r in b]
    assert [float(r["score"]) for r in a] == pytest.approx([float(r["score"]) for r in b], abs=1e-5)
    assert three["n_users"] == one["n_users"] and three["n_shards"] == 3
    with pytest.raises(ExportError, match="each of the 3 shards"):
        merge_shards(cfg, tag, files[:2], tmp_path / "bad", (None, None))
    with pytest.raises(ExportError, match="scored with"):
        merge_shards(cfg, "hrnn-meta:other", files, tmp_path / "bad", (None, None))

    out = tmp_path / "one"
    before = out.resolve()
    again = export_all(cfg, tag, k=K, n_shards=1, out_dir=out)  # the same interval again
    assert out.is_symlink() and out.resolve() != before and not before.exists()  # switched, old version gone
    assert again["files"] == one["files"]  # same content, byte for byte
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".") and ".v-" not in p.name]
    assert leftovers == []


def test_cli_export(champion, tmp_path: Path) -> None:
    from hrnn_core.cli.main import app

    cfg, tag, _ = champion
    res = CliRunner().invoke(app, ["export", "--model", tag, "--k", "3", "--out", str(tmp_path / "cli"),
                                   "--data-dir", str(cfg.paths.data_dir)])
    assert res.exit_code == 0, res.output
    assert "users x k=3" in res.output and (tmp_path / "cli" / "manifest.json").is_file()
    res = CliRunner().invoke(app, ["export", "--model", "hrnn-meta:missing", "--data-dir", str(cfg.paths.data_dir)])
    assert res.exit_code != 0 and "not in the model store" in res.output


def test_export_scores_equal_the_service(champion, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, tag, _ = champion
    m = export_all(cfg, tag, k=K, out_dir=tmp_path / "exp")
    rows = _csv(tmp_path / "exp" / "recommendations.csv")
    monkeypatch.setenv("HRNN_DATA_DIR", str(tmp_path / "svc-data"))
    (tmp_path / "svc-data").mkdir()
    (tmp_path / "svc-data" / "snapshots").symlink_to(cfg.paths.snapshots_dir)
    monkeypatch.setenv("HRNN_MODEL_TAG", tag)
    spec = importlib.util.spec_from_file_location("hrnn_bento_service_export", REPO / "bento" / "service.py")
    service = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = service  # pydantic resolves the models' annotations through it
    spec.loader.exec_module(service)
    svc = service.HRNNService()
    try:
        for user in sorted({r["user_id"] for r in rows})[:5]:
            resp = svc.recommend(service.RecommendRequest(user_id=user, num_results=K, at_time=m["at_time"]))
            expected = [r for r in rows if r["user_id"] == user]
            assert [i.item_id for i in resp.items] == [r["item_id"] for r in expected]
            for i, r in zip(resp.items, expected, strict=True):
                assert i.score == pytest.approx(float(r["score"]), abs=1e-4)
    finally:
        svc.shutdown()


def test_a_large_catalogue_scores_fewer_users_at_once(champion, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """export.batch_users shrinks so that users x items stays under the scoring cap (as the evaluation's batches):
    with a cap of 3 users' worth of items the export scores 3 users at a time and writes the same ranking."""
    from hrnn_core.model import scoring
    from hrnn_core.serving import export as export_mod
    from hrnn_core.serving.recommend import Recommender

    cfg, tag, _ = champion
    full = score_shard(cfg, tag, 0, 1, K, tmp_path / "full")
    sizes: list[int] = []
    original = Recommender.recommend_many

    def counting(self, requests):
        sizes.append(len(requests))
        return original(self, requests)

    n_items = export_mod._load(cfg, tag).engine.n_items
    monkeypatch.setattr(scoring, "MAX_SCORE_ELEMENTS", 3 * n_items)
    monkeypatch.setattr(Recommender, "recommend_many", counting)
    capped = score_shard(cfg, tag, 0, 1, K, tmp_path / "capped")
    assert max(sizes) == 3 and sum(sizes) == pq.read_table(full).num_rows // K
    a, b = pq.read_table(full).to_pydict(), pq.read_table(capped).to_pydict()
    assert a["item_id"] == b["item_id"] and a["score"] == pytest.approx(b["score"], abs=1e-5)


def test_history_counts_events_without_building_them(champion) -> None:
    """The export orders owners by ``n_events`` and builds one batch's events at a time: the count is each
    owner's number of events as ``events_of`` builds them."""
    from hrnn_core.serving.recommend import load_serving_model

    cfg, tag, _ = champion
    history = load_serving_model(cfg, tag).history
    owners = [o for _, o in history.owners()]
    assert owners and all(history.n_events(o) == len(history.events_of(o)) for o in owners)
    assert len({history.n_events(o) for o in owners}) > 1 and history.n_events("no-such-owner") == 0
