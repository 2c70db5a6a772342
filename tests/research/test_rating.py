"""The rating prediction task (research.rating): rolling average, RMSE, the value decoder, the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from hrnn_core.config import ModelConfig, TrainConfig, load_config
from hrnn_core.evaluation.protocols import temporal
from hrnn_core.evaluation.splits import SnapshotData
from research.rating import mae, rated_cases, rmse, rolling_average, run_rating
from research.rating_head import RatingHead, RatingHeadConfig, event_states, fit_head, predict_head

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = ModelConfig(hidden_size=16, field_dim=8, input_size=16)
FAST = TrainConfig(epochs=2, batch_size=8, bptt=8, progress=False, val_owners=10, warmup_steps=5, device="cpu")


# --------------------------------------------------------------------------- rolling average

# (user, item, time, rating); the cut is T = 100: the first three events are training
HAND = [(0, 0, 10, 4.0), (0, 1, 20, 2.0), (1, 0, 30, 2.0),
        (0, 2, 100, 5.0),  # item 2 has no past rating -> user mean (4 + 2) / 2
        (1, 1, 110, 3.0),  # item 1: 2 (user 0's training event); user 1: 2 -> 2
        (1, 2, 120, 1.0),  # user 0's test rating of item 2 is not readable by user 1: user mean (2 + 3) / 2
        (2, 0, 130, 5.0),  # new user: item 0's training mean (4 + 2) / 2
        (2, 0, 140, 1.0),  # item 0: training (4, 2) + the user's own earlier test rating 5; user: 5
        (3, 3, 150, 4.0),  # new user, item never rated: the training mean (4 + 2 + 2) / 3
        (3, 1, 160, float("nan"))]  # no rating: left out of the task
EXPECTED = [3.0, 2.0, 2.5, 3.0, (11 / 3 + 5.0) / 2, 8 / 3]


def hand_split(values=None):
    u, it, ts, v = (np.array(col) for col in zip(*HAND))
    data = SnapshotData.from_events(u, it, ts, n_items=4, event_value=v if values is None else values)
    return temporal(data, cut_time=100.0, valid_fraction=0.0)


def test_rolling_average_hand_computed_with_fallbacks():
    split = hand_split()
    test = rated_cases(split, split.test)
    assert len(test) == 6 and test.n_unrated == 1
    np.testing.assert_allclose(test.rating, [5, 3, 1, 5, 1, 4])
    np.testing.assert_allclose(rolling_average(split.train, test, split.n_items), EXPECTED)


def test_rolling_average_never_reads_the_events_own_rating_or_later_ones():
    base = np.array([r for *_, r in HAND])
    times = np.array([t for _, _, t, _ in HAND])
    split = hand_split()
    test = rated_cases(split, split.test)
    for i, t in enumerate(test.cases.target_timestamp):
        changed = np.where(times >= t, 5.5 - base, base)  # this event and every later one (NaN stays NaN)
        split2 = hand_split(changed)
        test2 = rated_cases(split2, split2.test)
        assert rolling_average(split2.train, test2, 4)[i] == pytest.approx(EXPECTED[i])
        assert test2.rating[i] != test.rating[i]  # the target itself did change


def test_rmse_and_mae():
    assert rmse(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 5.0])) == pytest.approx(math.sqrt(4 / 3))
    assert mae(np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 5.0])) == pytest.approx(1.0)
    assert rmse(np.array([3.5]), np.array([3.5])) == 0.0
    assert math.isnan(rmse(np.zeros(0), np.zeros(0)))


# --------------------------------------------------------------------------- the value decoder


def test_head_learns_user_and_item_biases_from_the_state():
    """States carry the user's bias in one coordinate (as a feedback-encoding GRU can); ratings =
    3 + user bias + item bias + noise. The head must recover both and beat the global mean."""
    rng = np.random.default_rng(0)
    n_users, n_items, n = 50, 30, 6000
    ub, ib = rng.normal(0, 0.8, n_users), rng.normal(0, 0.8, n_items)
    users, items = rng.integers(0, n_users, n), rng.integers(0, n_items, n)
    y = 3.0 + ub[users] + ib[items] + rng.normal(0, 0.3, n)
    h = torch.tensor(np.c_[ub[users], rng.normal(0, 1, (n, 7))], dtype=torch.float32)  # (n, 8)
    tr, te = slice(0, 5000), slice(5000, n)
    cfg = RatingHeadConfig(max_epochs=30, lr=0.01, l2=0.001)
    head, _ = fit_head(lambda mu: RatingHead(n_items, 8, mu), h[tr], items[tr], y[tr], cfg)
    pred = predict_head(head, h[te], items[te])
    assert rmse(pred, y[te]) < 0.4  # close to the noise (0.3)
    assert rmse(pred, y[te]) < 0.4 * rmse(np.full(1000, y[tr].mean()), y[te])
    # without the state (h = 0) only the item biases are left: clearly worse
    blind = predict_head(head, torch.zeros_like(h[te]), items[te])
    assert rmse(blind, y[te]) > rmse(pred, y[te]) + 0.3


# --------------------------------------------------------------------------- on a tiny warehouse


N_USERS, N_ITEMS, PER_USER = 40, 24, 30


def write_planted(folder: Path, seed: int = 0) -> None:
    """Contract files: ratings = round(3 + user bias + item bias + noise); items in random order,
    so only the ratings reveal the user's bias; genres give the item bias's sign. Every user is
    active throughout, so the temporal test holds each user's last events."""
    rng = np.random.default_rng(seed)
    ub = rng.choice([-1.0, 1.0], N_USERS)
    ib = np.where(np.arange(N_ITEMS) % 2 == 0, 0.9, -0.9)
    rows = []
    for u in range(N_USERS):
        for k, j in enumerate(rng.integers(0, N_ITEMS, PER_USER)):
            r = float(np.clip(np.rint(3 + ub[u] + ib[j] + rng.normal(0, 0.3)), 1, 5))
            rows.append((f"u{u}", f"i{j}", 1_000_000 + 3_600 * k + 60 * u, r))
    u, i, t, r = zip(*rows)
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"user_id": list(u), "item_id": list(i), "timestamp": list(t),
                             "event_type": ["rating"] * len(u), "event_value": list(r)}),
                   folder / "interactions.parquet")
    pq.write_table(pa.table({"item_id": [f"i{j}" for j in range(N_ITEMS)],
                             "genres": ["good|film" if j % 2 == 0 else "bad|film" for j in range(N_ITEMS)]}),
                   folder / "items.parquet")
    pq.write_table(pa.table({"user_id": [f"u{u}" for u in range(N_USERS)],
                             "gender": ["MF"[u % 2] for u in range(N_USERS)]}), folder / "users.parquet")


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data dir with the warehouse, snapshot dir) of the planted ratings."""
    from hrnn_core.data.ingest import ingest_path
    from hrnn_core.data.transforms import export_snapshot
    from hrnn_core.data.warehouse import connect

    d = tmp_path_factory.mktemp("rating")
    write_planted(d / "raw")
    cfg = load_config(overrides={"paths": {"data_dir": str(d)}}, environ={})
    with connect(cfg) as con:
        ingest_path(cfg, d / "raw", None, con)
        snap = export_snapshot(con, cfg)
    return d, snap.path


def test_event_states_equal_the_request_states_that_rank(planted, tmp_path: Path):
    from hrnn_core.evaluation.baselines.base import ScoreBatch
    from hrnn_core.evaluation.harness import train_data
    from hrnn_core.evaluation.hrnn_scorer import HRNNScorer

    split = temporal(SnapshotData.load(planted[1]))
    scorer = HRNNScorer(model=SMALL, train=FAST, device="cpu")
    scorer.fit(train_data(split, "train", 0, tmp_path))
    states = event_states(scorer, split.train)  # (E, H)
    seq = split.train
    offsets = np.concatenate([[0], np.cumsum(seq["n_events"].to_numpy())])
    rows = np.repeat(np.arange(seq.num_rows), seq["n_events"].to_numpy())
    pos = np.arange(len(rows)) - offsets[rows]
    pick = np.random.default_rng(0).choice(len(rows), 40, replace=False)
    ts = np.concatenate(seq["timestamps"].to_pylist())[pick]
    ids = np.concatenate(seq["event_ids"].to_pylist())[pick]
    batch = ScoreBatch(seq, rows[pick], pos[pick], seq["user_idx"].to_numpy()[rows[pick]], ts, target_event_id=ids)
    torch.testing.assert_close(scorer.request_states(batch), states[torch.from_numpy(pick)], atol=1e-5, rtol=1e-4)


def with_value(table: pa.Table, flat_index: int, value: float) -> pa.Table:
    """``table`` with one event's value replaced (flat index over its rows' events)."""
    col = table["event_values"].combine_chunks()
    values = col.values.to_numpy(zero_copy_only=False).copy()
    values[flat_index] = value
    lists = pa.ListArray.from_arrays(col.offsets, pa.array(values, pa.float64()))
    return table.set_column(table.schema.get_field_index("event_values"), "event_values", lists)


def test_a_state_never_reads_its_own_events_value(planted, tmp_path: Path):
    """The value of event k reaches the states of events k+1, ... (feedback input), not event k's."""
    from hrnn_core.evaluation.harness import train_data
    from hrnn_core.evaluation.hrnn_scorer import HRNNScorer

    split = temporal(SnapshotData.load(planted[1]))
    scorer = HRNNScorer(model=SMALL, train=FAST, device="cpu")
    scorer.fit(train_data(split, "train", 0, tmp_path))
    k = 5  # the 6th event of the first row
    old = split.train["event_values"].combine_chunks().values.to_numpy(zero_copy_only=False)[k]
    before = event_states(scorer, split.train)
    after = event_states(scorer, with_value(split.train, k, 1.0 if old >= 3 else 5.0))
    torch.testing.assert_close(after[:k + 1], before[:k + 1])
    assert not torch.allclose(after[k + 1], before[k + 1])


def test_feedback_encoding_is_what_lets_the_rnn_beat_the_rolling_average(planted):
    """Planted ratings = user bias + item bias: only the ratings reveal a user's bias. HRNN-meta
    (feedback input) + the decoder, fine-tuned, gets close to the noise; the plain GRU (no
    feedback) cannot know the user's bias and stays behind the rolling average (paper, Table 4)."""
    split = temporal(SnapshotData.load(planted[1]))
    head = RatingHeadConfig(max_epochs=40, lr=0.01, finetune_rows=4, finetune_lr=0.003, finetune_epochs=15)
    report = run_rating(split, ["global_mean", "rolling_average", "gru", "hrnn"], model_cfg=SMALL, train_cfg=FAST,
                        head_cfg=head)
    m = {name: v["rmse"] for name, v in report["models"].items()}
    assert report["n_events"] == len(split.test) > 0
    assert m["hrnn"] < 0.7 * m["rolling_average"] < 0.7 * m["global_mean"]
    assert m["gru"] > m["rolling_average"]
    assert set(report["significance"]) == {"hrnn_vs_global_mean", "hrnn_vs_rolling_average", "hrnn_vs_gru"}
    assert report["best_baseline"] == "rolling_average"
    assert report["significance"]["hrnn_vs_rolling_average"]["ci_high"] < 0  # smaller squared errors, not noise
    lo, hi = report["rating_range"]
    for sq in report["_squared_errors"].values():  # clipped to the training range
        assert len(sq) == report["n_events"] and np.all(sq <= (hi - lo) ** 2)


def test_cli_writes_a_report_of_the_right_shape(planted, tmp_path: Path):
    from research.cli import app

    conf = tmp_path / "tiny.toml"
    conf.write_text("[model]\nhidden_size = 16\nfield_dim = 8\ninput_size = 16\n"
                    "[train]\nepochs = 2\nbatch_size = 8\nbptt = 8\nprogress = false\nval_owners = 10\n"
                    "warmup_steps = 5\nthreads = 1\ndevice = \"cpu\"\n")
    out = tmp_path / "rating.json"
    res = CliRunner().invoke(app, ["rating", "--snapshot", str(planted[1]), "--config", str(conf),
                                   "--models", "global_mean,rolling_average,fm,gru,hrnn", "--output", str(out),
                                   "--data-dir", str(planted[0])])
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert report["protocol"] == "temporal" and report["n_events"] > 0
    assert set(report["models"]) == {"global_mean", "rolling_average", "fm", "gru", "hrnn"}
    for m in report["models"].values():
        assert 0.0 < m["mae"] <= m["rmse"] < 5.0
    assert "hrnn_vs_fm" in report["significance"] and report["best_baseline"] in ("rolling_average", "fm", "global_mean")
    assert "RMSE" in res.output and "rolling_average" in res.output
    bad = CliRunner().invoke(app, ["rating", "--snapshot", str(planted[1]), "--models", "nope",
                                   "--data-dir", str(planted[0])])
    assert bad.exit_code == 2 and "unknown model" in bad.output
