"""Evaluate what you serve: the evaluation path (and so the promotion gate), the batch export and a
live ``bentoml serve`` give the same scores and top-k for the same users, times and contexts, with and
without the eq. (5) trend term, for a warm user, a cold user and an anonymous session (hrnn_core.model.scoring);
and with the repeat term (a bias on the owner's own items) where seen items stay rankable (``exclude_seen: false``)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import bentoml
import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from hrnn_core.evaluation.baselines.base import ScoreBatch, TrainData
from hrnn_core.data.contract import owner_id
from hrnn_core.model.checkpoint import load_checkpoint
from hrnn_core.serving.export import score_model_shard
from hrnn_core.evaluation.hrnn_scorer import HRNNScorer
from hrnn_core.serving.recommend import load_serving_model
from tests.champions import TINY_MODEL, promote_tiny_champion
from tests.test_service import Server

K = 10
SESSION = "s-parity"


@pytest.fixture(params=[(0.0, 60, None), (0.5, 60, None), (0.5, 900, None), (0.5, 60, 2.0)],
                ids=["no-trend", "trend", "mostly-cold", "repeats"])
def champion(request, tmp_path_factory: pytest.TempPathFactory):
    """mostly-cold: 900 items, most without a training event (cold: metadata + the cold prior, issue 21);
    repeats: a repeat term of +2 on the owner's own items and +1.5 more on the latest one, compared with seen
    items left in the ranking: every path must know which item is the owner's latest."""
    torch.set_num_threads(1)
    trend, n_items, repeat = request.param
    model = dataclasses.replace(TINY_MODEL, trend_weight=trend)
    c = promote_tiny_champion(tmp_path_factory.mktemp("parity"), n_users=30, n_items=n_items, n_events=900, seed=11,
                              model=model, repeat_log_prior=repeat)
    if n_items > 60:
        freq = load_checkpoint(c.artifact / "model.pt").item_freq
        assert (freq == 0).float().mean() > 0.5  # most of the catalogue is cold
    yield c
    bentoml.models.delete(c.tag)


def eval_scores(c, seq: pa.Table, users: pa.Table, rows: list[int], times: list[float]) -> torch.Tensor:
    """The evaluation harness's path: HRNNScorer (pretrained: the registered checkpoint) scores cases whose
    target is a request event appended to each row (its context = the owner's latest, as served)."""
    folder = Path(str(c.snap) + "-eval")
    shutil.copytree(c.snap, folder, dirs_exist_ok=True)
    pq.write_table(users, folder / "users.parquet")
    scorer = HRNNScorer(device="cpu", checkpoint=c.artifact / "model.pt")
    freq = pq.read_table(folder / "item_frequency.parquet")
    counts = np.zeros(scorer.n_items, dtype=np.int64)
    counts[freq["item_idx"].to_numpy()] = freq["events"].to_numpy()
    scorer.fit(TrainData(seq, counts, scorer.n_items, None, None, snapshot_dir=folder))
    pos = np.array([seq["n_events"][r].as_py() - 1 for r in rows])  # the request event is the last
    target_ids = np.array([seq["event_ids"][r].as_py()[-1] for r in rows])
    batch = ScoreBatch(seq, np.array(rows), pos, np.zeros(len(rows)), np.array(times), target_ids)
    return scorer.score(batch)


def with_request(rows: list[dict], t: float, next_id: int) -> list[dict]:
    """Each row plus one request event at ``t`` with the row's latest context (the target of its case; its
    item -1 is no catalogue item, so it never counts in another case's q(t))."""
    out = []
    for i, r in enumerate(rows):
        r = {k: (list(v) if isinstance(v, list) else v) for k, v in r.items()}
        last_t = r["timestamps"][-1] if r["timestamps"] else None
        for key, value in (("event_ids", next_id + i), ("timestamps", t), ("item_idx", -1), ("event_types", "default"),
                           ("event_values", None), ("time_deltas", None if last_t is None else t - last_t),
                           ("session_starts", last_t is None), ("impressions", None),
                           ("contexts", r["contexts"][-1] if r["contexts"] else [])):
            r[key].append(value)
        r["n_events"] += 1
        out.append(r)
    return out


def top_k(scores: torch.Tensor, seen: set[int], item_ids: list[str]) -> list[tuple[str, float]]:
    s = scores.clone()
    if seen:
        s[list(seen)] = float("-inf")
    val, idx = torch.topk(s, K)
    return [(item_ids[i], float(v)) for i, v in zip(idx.tolist(), val.tolist(), strict=True)]


def assert_same(got: list[tuple[str, float]], ref: list[tuple[str, float]]) -> None:
    assert [g[0] for g in got] == [r[0] for r in ref]
    np.testing.assert_allclose([g[1] for g in got], [r[1] for r in ref], atol=1e-5, rtol=0)


def test_the_gate_the_export_and_the_service_score_alike(champion, tmp_path: Path) -> None:
    c = champion
    repeats = c.repeat_log_prior is not None
    snap_seq = pq.read_table(c.snap / "sequences.parquet")
    users = pq.read_table(c.snap / "users.parquet")
    as_of = json.loads((c.snap / "manifest.json").read_text())["as_of"]
    item_ids = pq.read_table(c.snap / "items.parquet", columns=["item_id"])["item_id"].to_pylist()
    warm = snap_seq.slice(0, 1).to_pylist()[0]  # a user with events
    t_session = as_of + 7200.0  # a later bucket: the session's live events (after the cut) count in q(t)
    session_events = [(item_ids[j], as_of + 60.0 * (j + 1), {"device": "mobile"}) for j in (3, 7, 5)]
    next_user = int(users["user_idx"].to_numpy().max()) + 1
    cold_user, session_owner = "stranger-parity", owner_id(None, SESSION)
    extra_users = pa.Table.from_pylist([
        {"user_idx": next_user, "user_id": cold_user, "categorical": [], "numeric": []},
        {"user_idx": next_user + 1, "user_id": session_owner, "categorical": [], "numeric": []}], schema=users.schema)
    empty = {k: ([] if isinstance(v, list) else v) for k, v in warm.items()}
    session_row = {**empty, "user_idx": next_user + 1, "owner_id": session_owner, "n_events": 3,
                   "event_ids": [10**9 + j for j in range(3)], "timestamps": [t for _, t, _ in session_events],
                   "item_idx": [item_ids.index(i) for i, _, _ in session_events], "event_types": ["default"] * 3,
                   "event_values": [None] * 3, "time_deltas": [],
                   "session_starts": [True, False, False], "impressions": [None] * 3,
                   "contexts": [list(ctx.items()) for _, _, ctx in session_events]}
    session_row["time_deltas"] = [None] + list(np.diff(session_row["timestamps"]))
    rows = (with_request([warm], as_of, 2 * 10**9)  # the warm user's own row, its request appended
            + with_request([{**empty, "user_idx": next_user, "owner_id": cold_user, "n_events": 0}], as_of, 2 * 10**9 + 1)
            + with_request([session_row], t_session, 2 * 10**9 + 2))
    seq = pa.concat_tables([pa.Table.from_pylist(rows, schema=snap_seq.schema), snap_seq.slice(1)])
    scores = eval_scores(c, seq, pa.concat_tables([users, extra_users]), [0, 1, 2], [as_of, as_of, t_session])
    seen = [set(warm["item_idx"]), set(), set(session_row["item_idx"])]
    exported_gate = top_k(scores[0], seen[0], item_ids)  # the export drops seen items
    if repeats:  # seen items stay in the ranking: the repeat term decides some of the top-k
        seen = [set(), set(), set()]
    gate = {o: top_k(scores[i], seen[i], item_ids) for i, o in enumerate(["warm", "cold", "session"])}
    if repeats:
        own = {item_ids[j] for j in warm["item_idx"]}
        assert any(i in own for i, _ in gate["warm"]), "the repeat term should lift some of the user's own items"

    # the batch export (the same user at the snapshot's cut, latest context)
    m = load_serving_model(c.cfg, c.tag, device="cpu")
    shard = pq.read_table(score_model_shard(c.cfg, m, 0, 1, K, tmp_path / "export")).to_pylist()
    exported = [(r["item_id"], r["score"]) for r in shard if r["user_id"] == warm["owner_id"]]
    assert_same(exported, exported_gate)

    # a live `bentoml serve` on 127.0.0.1
    data = tmp_path / "data"
    data.mkdir()
    (data / "snapshots").symlink_to(c.cfg.paths.snapshots_dir)
    server = Server(data, tmp_path / "serve.log")
    try:
        def ask(body: dict) -> list[tuple[str, float]]:
            if repeats:
                body = {**body, "filters": {"exclude_seen": False}}
            r = server.client.post("/recommend", json={"num_results": K, **body})
            assert r.status_code == 200, r.text
            assert r.json()["model_tag"] == c.tag
            return [(i["item_id"], i["score"]) for i in r.json()["items"]]

        assert_same(ask({"user_id": warm["owner_id"], "at_time": as_of}), gate["warm"])
        assert_same(ask({"user_id": cold_user, "at_time": as_of}), gate["cold"])
        r = server.client.post("/events", json={"session_id": SESSION, "events": [
            {"item_id": i, "timestamp": t, "event_type": "default", "context": ctx} for i, t, ctx in session_events]})
        assert r.status_code == 200, r.text
        assert_same(ask({"session_id": SESSION, "at_time": t_session}), gate["session"])
    except httpx.HTTPError as exc:  # pragma: no cover - the log says why
        raise AssertionError((tmp_path / "serve.log").read_text()[-3000:]) from exc
    finally:
        server.kill(15)
