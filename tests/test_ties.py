"""Events of one owner with equal timestamps are trained in a fresh order each epoch (``tie_order``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from hrnn_core.train import trainer as train_mod
from hrnn_core.config import ModelConfig, TrainConfig
from research import synth
from hrnn_core.train.trainer import prepare_data, tie_order, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = ModelConfig(hidden_size=16, field_dim=8, input_size=16)
FAST = TrainConfig(epochs=2, batch_size=8, bptt=8, progress=False, val_owners=20, warmup_steps=5)


@pytest.fixture(scope="module")
def tied(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A snapshot whose timestamps are coarsened to 2,000 s, so most events tie with a neighbour."""
    from hrnn_core.config import load_config
    from hrnn_core.data.ingest import ingest_path
    from hrnn_core.data.transforms import export_snapshot
    from hrnn_core.data.warehouse import connect

    d = tmp_path_factory.mktemp("ties")
    paths = synth.generate(d / "raw", n_users=40, n_items=60, n_events=2_000, n_genres=4, seed=3)
    t = pq.read_table(paths["interactions"])
    coarse = pc.multiply(pc.floor(pc.divide(pc.cast(t["timestamp"], pa.float64()), 2000.0)), 2000.0)
    t = t.set_column(t.schema.get_field_index("timestamp"), "timestamp", pc.cast(coarse, pa.int64()))
    pq.write_table(t, paths["interactions"])
    cfg = load_config(overrides={"paths": {"data_dir": str(d)}}, environ={})
    with connect(cfg) as con:
        ingest_path(cfg, d / "raw", None, con)
        return export_snapshot(con, cfg).path


def test_tie_order_moves_events_only_among_equal_timestamps_of_training_segments() -> None:
    # owner A: events 0-5 at times 0, 5, 5, 5, 9, 9; owner B: 6-10 at 1, 1, 1, 2, 2
    times = np.array([0, 5, 5, 5, 9, 9, 1, 1, 1, 2, 2], dtype=float)
    owner_start = np.array([0, 6, 11])
    dt = np.diff(times, prepend=np.nan)
    dt[owner_start[:-1]] = np.nan
    # A's last event is held out (validation); B's history is capped at its last 4 events (7-10)
    segments = np.array([[0, 5], [7, 11]])
    orders = {tuple(tie_order(dt, segments, np.random.default_rng(s))) for s in range(40)}
    assert len(orders) > 1
    for order in map(np.array, orders):
        assert sorted(order) == list(range(11))
        assert (times[order] == times).all()  # same timestamp at every position
        assert order[5] == 5 and order[6] == 6  # the held-out event and the capped one stay put
        assert set(order[1:4]) == {1, 2, 3} and set(order[7:9]) == {7, 8} and set(order[9:11]) == {9, 10}
        assert order[4] == 4  # its tie partner (5) is held out, so it has nothing to swap with
    # every arrangement of the tie 1-3 shows up
    assert {o[1:4] for o in orders} == {(1, 2, 3), (1, 3, 2), (2, 1, 3), (2, 3, 1), (3, 1, 2), (3, 2, 1)}


def test_reordered_events_rebuild_each_positions_request_inputs(tied) -> None:
    data = prepare_data(tied, SMALL, FAST)
    ev, n = data.events, data.features.n_items
    assert (data.events.time_delta[~np.isnan(ev.time_delta)] == 0).mean() > 0.3  # the fixture has ties
    same = ev.reordered(np.arange(len(ev.target)), n)
    for f in ("target", "prev_item", "prev_type", "prev_value", "context", "event_value", "impressions"):
        assert torch.equal(getattr(same, f), getattr(ev, f)), f
    order = tie_order(ev.time_delta, data.train_segments, np.random.default_rng(0))
    r = ev.reordered(order, n)
    moved = np.flatnonzero(order != np.arange(len(order)))
    assert len(moved) > 0.2 * len(order)
    first = set(ev.owner_start[:-1].tolist())
    for i in moved:
        assert int(r.target[i]) == int(ev.target[order[i]]) and torch.equal(r.context[i], ev.context[order[i]])
        if i in first:
            assert int(r.prev_item[i]) == n and int(r.prev_type[i]) == 0
        else:  # the request inputs come from the event now before it
            j = order[i - 1]
            assert int(r.prev_item[i]) == int(ev.target[j]) and int(r.prev_type[i]) == int(ev.event_type[j])
            assert float(r.prev_value[i, 0]) == pytest.approx(float(ev.event_value[j]))
            assert float(r.prev_value[i, 1]) == float(ev.value_present[j])
        if i + 1 < len(order) and i + 1 not in first:
            assert int(r.prev_item[i + 1]) == int(r.target[i])
    assert torch.equal(r.time_bucket, ev.time_bucket)  # inside a tie every delta is 0


def test_ties_train_every_training_event_once_per_epoch_in_a_new_order(tied, tmp_path, monkeypatch) -> None:
    orders, targets = [], []
    real_order, real_loss = train_mod.tie_order, train_mod.dense_softmax_loss

    def spy_order(*args):
        orders.append(real_order(*args))
        targets.append([])
        return orders[-1]

    def spy_loss(h, w, b, target, *args):
        targets[-1].append(target.clone())
        return real_loss(h, w, b, target, *args)

    monkeypatch.setattr(train_mod, "tie_order", spy_order)
    monkeypatch.setattr(train_mod, "dense_softmax_loss", spy_loss)
    res = train(tied, tmp_path / "run", SMALL, FAST)
    assert len(orders) == 2 and not np.array_equal(orders[0], orders[1])
    data = prepare_data(tied, SMALL, FAST)
    expected = np.sort(np.concatenate([data.events.target[a:b].numpy() for a, b in data.train_segments]))
    for epoch in targets:  # the training events (no held-out validation target), each once
        assert np.array_equal(np.sort(torch.cat(epoch).numpy()), expected)
    assert np.isfinite(res.history[-1]["val_loss"])


def test_tie_order_moves_nothing_where_timestamps_never_repeat() -> None:
    dt = np.array([np.nan, 1.0, 2.0, np.nan, 5.0])
    assert np.array_equal(tie_order(dt, np.array([[0, 3], [3, 5]]), np.random.default_rng(0)), np.arange(5))
