"""Inference engine: O(1) updates equal the training forward, scoring options, cold start, trend."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from hrnn_core.model.checkpoint import load_checkpoint
from hrnn_core.config import ModelConfig, TrainConfig
from hrnn_core.model.features import USER_ID_FIELD
from hrnn_core.model.inference import Event, InferenceEngine, InferenceError, UserState
from hrnn_core.model.scoring import NO_SCORE, CatalogueScorer, popularity
from hrnn_core.model.steps import gather_steps
from hrnn_core.train.trainer import prepare_data, train
from research.synth import synthetic_snapshot

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODEL = ModelConfig(hidden_size=16, field_dim=8, input_size=16, num_layers=2)
TRAIN = TrainConfig(epochs=1, batch_size=8, bptt=8, progress=False, val_owners=5)

@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("inference")
    snap = synthetic_snapshot(d / "data", n_users=40, n_items=60, n_events=1_500, n_genres=5, seed=2)
    res = train(snap, d / "run", MODEL, TRAIN)
    return snap, res.last_checkpoint


def _rows(snap: Path, n: int) -> tuple[list[dict], dict[str, dict]]:
    seq = pq.read_table(snap / "sequences.parquet").slice(0, n).to_pylist()
    # each user's features plus its own id, as the service reads them (SnapshotHistory.user_features): the
    # model's id vector (ModelConfig.use_user_id) needs it
    users = {u["user_id"]: {"categorical": {**dict(u["categorical"] or []), USER_ID_FIELD: u["user_id"]},
                            "numeric": dict(u["numeric"] or [])}
             for u in pq.read_table(snap / "users.parquet").to_pylist()}
    return seq, users


def _events(engine: InferenceEngine, row: dict) -> list[Event]:
    return [Event(engine.item_ids[i], t, et, v, dict(c) if c else None)
            for i, t, et, v, c in zip(row["item_idx"], row["timestamps"], row["event_types"],
                                      row["event_values"], row["contexts"], strict=True)]


def test_update_event_by_event_equals_the_batched_training_forward(trained) -> None:
    snap, ckpt = trained
    engine = InferenceEngine.from_checkpoint(ckpt, device="cpu")
    data = prepare_data(snap, MODEL, TRAIN)  # the training path's encoding of the same events
    seq, users = _rows(snap, 6)
    for o, row in enumerate(seq):
        events = _events(engine, row)
        state = engine.init_state(users[row["owner_id"]])
        request_scores = []
        for e in events:
            request_scores.append(engine.score(state, e.context, e.timestamp))  # the request of e
            engine.update(state, e)
        batched = engine.replay([(events, users[row["owner_id"]])])[0]
        torch.testing.assert_close(state.hidden, batched.hidden, atol=1e-5, rtol=0)
        assert list(state.seen) == list(batched.seen) and state.n_events  # the same items, the same recency order
        assert state.n_events == batched.n_events == len(events)

        s, e = int(data.events.owner_start[o]), int(data.events.owner_start[o + 1])
        x = gather_steps(data.events, torch.arange(s, e)[None], data.event_user[[s]])
        with torch.no_grad():
            out, hidden = engine.model(x)
            seen = [[engine.item_index[e.item_id] for e in events[:k]] for k in range(len(events))]  # before each
            ref = engine.scorer.scores(out[0], seen=seen)  # the one scoring function over the batched states
        torch.testing.assert_close(state.hidden, hidden, atol=1e-5, rtol=0)
        torch.testing.assert_close(torch.stack(request_scores), ref, atol=1e-4, rtol=0)


def test_score_does_not_change_the_state_and_depends_on_the_gap(trained) -> None:
    snap, ckpt = trained
    engine = InferenceEngine.from_checkpoint(ckpt, device="cpu")
    seq, users = _rows(snap, 1)
    state = engine.replay([(_events(engine, seq[0]), None)])[0]
    before = state.hidden.clone()
    t = state.last_time
    copy = UserState.from_dict(json.loads(json.dumps(state.to_dict())))  # e.g. through a cache
    torch.testing.assert_close(engine.score(copy, at_time=t + 10), engine.score(state, at_time=t + 10))
    near, far = engine.score(state, at_time=t + 10), engine.score(state, at_time=t + 5 * 86_400)
    assert torch.equal(state.hidden, before) and state.last_time == t
    assert near.shape == (engine.n_items,) and not torch.allclose(near, far)
    torch.testing.assert_close(engine.score(state, at_time=t + 10), near)
    many = engine.score_many([state, state], at_times=[t + 10, t + 5 * 86_400])
    torch.testing.assert_close(many, torch.stack([near, far]))


def test_top_k_filters_and_orders(trained) -> None:
    snap, ckpt = trained
    engine = InferenceEngine.from_checkpoint(ckpt, device="cpu")
    seq, _ = _rows(snap, 1)
    state = engine.replay([(_events(engine, seq[0])[:5], None)])[0]
    seen_ids = {engine.item_ids[i] for i in state.seen}
    t = state.last_time + 60
    top = engine.top_k(state, 10, at_time=t)
    scores = [s for _, s in top]
    assert len(top) == 10 and scores == sorted(scores, reverse=True)
    assert not seen_ids & {i for i, _ in top}
    with_seen = engine.top_k(state, engine.n_items, exclude_seen=False, at_time=t)
    assert len(with_seen) == engine.n_items
    with pytest.raises(InferenceError):
        engine.top_k(state, 0)


def test_cold_users_start_from_features_and_context(trained) -> None:
    _, ckpt = trained
    engine = InferenceEngine.from_checkpoint(ckpt, device="cpu")
    young = engine.init_state({"segment": "s0", "age": 20})
    old = engine.init_state({"categorical": {"segment": "s3"}, "numeric": {"age": 70.0}})
    assert young.hidden is None and young.n_events == 0
    a, b = engine.score(young, at_time=1e9), engine.score(old, at_time=1e9)
    assert torch.isfinite(a).all() and not torch.allclose(a, b)
    mobile, desktop = engine.score(young, {"device": "mobile"}, 1e9), engine.score(young, {"device": "desktop"}, 1e9)
    assert not torch.allclose(mobile, desktop)
    assert len(engine.top_k(engine.init_state(), 5, at_time=1e9)) == 5  # no features at all
    first = Event(engine.item_ids[0], 1e9, "view", 3.0, {"device": "mobile"})
    one = engine.update(engine.init_state({"segment": "s0", "age": 20}), first)
    torch.testing.assert_close(one.hidden, engine.replay([([first], {"segment": "s0", "age": 20})])[0].hidden)


def _with(ck, **changes):
    ck.model.cfg = dataclasses.replace(ck.model.cfg, **changes)
    return ck


def test_lambda_one_scores_without_id_embeddings(trained) -> None:
    _, ckpt = trained
    ck = load_checkpoint(ckpt)
    with torch.no_grad():
        ck.model.item_w.weight.fill_(float("nan"))
        ck.model.item_b.weight.fill_(float("nan"))
    engine = InferenceEngine(_with(ck, inference_item_meta_mix=1.0), device="cpu")
    state = engine.init_state({"segment": "s1"})
    assert torch.isfinite(engine.score(state, at_time=1e9)).all()
    engine.scorer = CatalogueScorer(ck.model, ck.item_freq, mix=0.0)
    scores, warm = engine.score(state, at_time=1e9), torch.as_tensor(ck.item_freq) > 0
    assert torch.isnan(scores[warm]).all() and torch.isfinite(scores[~warm]).all()  # cold items: metadata only


def test_the_cold_item_policy_is_the_models(trained) -> None:
    """Items without training events are scored from their metadata alone (lambda = 1) plus the model's cold
    prior, or NO_SCORE without metadata; warm items at the model's lambda (hrnn_core.model.scoring: the one
    policy of every scoring path)."""
    _, ckpt = trained
    ck = load_checkpoint(ckpt)
    ck.item_freq[:3] = 0  # pretend items 0-2 never occurred in training
    warm = torch.as_tensor(ck.item_freq) > 0
    ck.model.item_cat[1] = 0  # ... and item 1 has no metadata
    ck.model.item_num[1] = 0
    ck.model.cold_log_prior.fill_(-2.5)
    items = torch.arange(ck.model.n_items)
    with torch.no_grad():
        wm, bm = ck.model.item_vectors(items, 1.0)
        wx, bx = ck.model.item_vectors(items, MODEL.inference_item_meta_mix)
    engine = InferenceEngine(ck, device="cpu")
    w, b = engine.scorer.vectors()
    meta = torch.tensor([True, False, True])
    torch.testing.assert_close(w[:3][meta], wm[:3][meta])
    torch.testing.assert_close(b[:3][meta], bm[:3][meta] - 2.5)
    assert (w[1] == 0).all() and float(b[1]) == NO_SCORE
    torch.testing.assert_close(w[warm], wx[warm])
    torch.testing.assert_close(b[warm], bx[warm])
    with torch.no_grad():  # the untrained id rows of cold items never enter a score
        ck.model.item_w.weight[:3].normal_(0.0, 100.0)
        ck.model.item_b.weight[:3].normal_(0.0, 100.0)
    torch.testing.assert_close(InferenceEngine(ck, device="cpu").scorer.vectors()[0], w)


def test_trend_term_of_eq5(trained) -> None:
    """The engine adds eq. (5) once it has a popularity (hrnn_core.serving.recommend gives it the service's):
    + trend_weight * log q_j(t), q = the add-k smoothed shares of the window before t's bucket."""
    _, ckpt = trained
    engine = InferenceEngine.from_checkpoint(ckpt, device="cpu")
    assert engine.scorer.trend_weight == MODEL.trend_weight == 0.5  # the model's weight ...
    state = engine.init_state()
    base = engine.score(state, at_time=1e9)  # ... and no term without a popularity
    t = np.array([1e9 - 7200.0] * 100 + [1e9 - 5000.0] * 10 + [1e9 + 10.0] * 50)  # the last: after t_b
    items = np.array([0] * 100 + [1] * 10 + [2] * 50)
    engine.scorer.trend = popularity(engine.model, t, items)
    counts = np.zeros(engine.n_items)
    counts[:2] = [100, 10]
    q = (counts + 1.0) / (counts + 1.0).sum()
    diff = engine.score(state, at_time=1e9) - base
    torch.testing.assert_close(diff, torch.tensor(0.5 * np.log(q), dtype=torch.float32), atol=1e-5, rtol=0)
    engine.scorer.trend_weight = 0.0
    torch.testing.assert_close(engine.score(state, at_time=1e9), base)  # trend_weight 0: off


def test_unknown_items_and_bad_events(trained) -> None:
    _, ckpt = trained
    engine = InferenceEngine.from_checkpoint(ckpt, device="auto")
    state = engine.update(engine.init_state(), Event("brand-new-item", 1e9, "view"))
    assert state.n_events == 1 and not state.seen and state.last_item == -1
    engine.update(state, Event(engine.item_ids[4], 1e9 + 60, "never-seen-type", None))
    assert list(state.seen) == [4] and math.isfinite(float(engine.score(state, at_time=1e9 + 120).sum()))
    with pytest.raises(InferenceError, match="finite"):
        engine.update(state, Event(engine.item_ids[4], float("nan")))


def test_new_items_are_added_and_scored_from_metadata_only(trained) -> None:
    snap, ckpt = trained
    ck = load_checkpoint(ckpt)
    with torch.no_grad():
        ck.model.item_w.weight.fill_(float("nan"))  # the new items must not need id embeddings
        ck.model.item_b.weight.fill_(float("nan"))
    engine = InferenceEngine(_with(ck, inference_item_meta_mix=1.0), device="cpu")
    n = engine.n_items
    twin = pq.read_table(snap / "items.parquet").slice(3, 1).to_pylist()[0]  # copy item 3's metadata
    new = [{"item_id": "brand-new", "categorical": dict(twin["categorical"]), "numeric": dict(twin["numeric"])},
           {"item_id": "no-metadata"}, {"item_id": engine.item_ids[0]}]
    assert engine.add_items(new) == 2 and engine.n_items == n + 2
    state = engine.init_state({"segment": "s2"})
    scores = engine.score(state, at_time=1e9)
    assert scores.shape == (n + 2,) and torch.isfinite(scores).all()
    # same metadata, same lambda = 1 score, plus the cold prior (item 3 has training events, the new one none)
    torch.testing.assert_close(scores[n], scores[3] + engine.scorer.prior)
    assert float(scores[n + 1]) == NO_SCORE  # nothing to score it from: below every other item
    ids = [i for i, _ in engine.top_k(state, n + 2, exclude_seen=False, at_time=1e9)]
    assert "brand-new" in ids and ids[-1] == "no-metadata"
    engine.update(state, Event("brand-new", 1e9, "view"))  # no input embedding: fed as "no item"
    assert list(state.seen) == [n] and "brand-new" not in [i for i, _ in engine.top_k(state, n + 2, at_time=1e9 + 5)]


def test_the_trend_term_is_each_rows_window_whether_rows_share_one_or_not(trained) -> None:
    """``CatalogueScorer.scores`` adds eq. (5)'s ``w log q_j(t)`` of each row's own window: broadcast when every
    row falls in one window (an export's instant), gathered per row otherwise; with an ``items`` subset too."""
    _, ckpt = trained
    ck = load_checkpoint(ckpt)
    rng = np.random.default_rng(0)
    hours = np.sort(rng.uniform(0, 72, 400)) * 3600.0
    pop = popularity(ck.model, hours, rng.integers(0, ck.model.n_items, 400))
    scorer = CatalogueScorer(ck.model, ck.item_freq, trend=pop, trend_weight=0.7)
    h = torch.randn(5, ck.model.cfg.hidden_size, generator=torch.Generator().manual_seed(0))
    items = torch.tensor([1, 4, 9, 20])
    for times in (np.full(5, 50 * 3600.0 + 10), np.array([5, 20, 20, 40, 70]) * 3600.0 + 10):
        plain = scorer.scores(h, times, trend_weight=0.0)
        torch.testing.assert_close(scorer.scores(h, times), plain + 0.7 * pop.log_q_at(times))
        torch.testing.assert_close(scorer.scores(h, times, items), plain[:, items] + 0.7 * pop.log_q_at(times)[:, items])
    assert not torch.allclose(pop.log_q_at(np.array([5 * 3600.0]))[0], pop.log_q_at(np.array([70 * 3600.0]))[0])
