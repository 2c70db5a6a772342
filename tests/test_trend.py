"""Trend correction (eq. 5, Figure 5) on a tiny drifting synthetic stream: no leakage into a frame's
trend vector, a large weight reproduces recent popularity, and ``hrnn-research trend`` writes
a report of the right shape. The frame-bucketed q(t) and the "ratio" mode are research's
(``research.scorers.StudyScorer``); with its defaults it scores as the product's ``HRNNScorer``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from typer.testing import CliRunner

from hrnn_core.evaluation.baselines.base import ScoreBatch
from hrnn_core.evaluation.baselines.popularity import RecentPopularityScorer
from hrnn_core.config import ModelConfig, TrainConfig, load_config
from hrnn_core.evaluation.harness import train_data
from hrnn_core.evaluation.hrnn_scorer import HRNNScorer
from hrnn_core.evaluation.protocols import rolling
from hrnn_core.model.trend import WindowedPopularity
from research.experiments.trend import METRICS, trend_snapshot
from research.scorers import StudyScorer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# ~57 events per hour over 3 days, popularity drifting every hour (the synth-drift preset, shrunk)
TINY = {"n_users": 150, "n_items": 80, "n_events": 4000, "n_genres": 5}
HOUR = 3600.0


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("trend")


@pytest.fixture(scope="module")
def split(data_dir: Path):
    cfg = load_config(overrides={"paths": {"data_dir": str(data_dir)}}, environ={})
    snap, _ = trend_snapshot(cfg, "synth-drift", None, TINY)
    return rolling(snap, test_fraction=0.3, valid_fraction=0.15, exclude_seen=False)


@pytest.fixture(scope="module")
def fitted(split, tmp_path_factory: pytest.TempPathFactory) -> StudyScorer:
    scorer = StudyScorer(ModelConfig(hidden_size=8, field_dim=4, input_size=8, trend_weight=0.0),  # tests set it
                         TrainConfig(epochs=1, batch_size=16, bptt=8, progress=False, val_owners=10, warmup_steps=2),
                         device="cpu", trend_window_seconds=2 * HOUR, trend_bucket_seconds=HOUR,
                         trend_origin=split.cut_time)
    scorer.fit(train_data(split, "train", 0, tmp_path_factory.mktemp("work")))
    return scorer


def frame_batch(frame, sequences: pa.Table | None = None) -> ScoreBatch:
    c = frame.cases
    return ScoreBatch(c.sequences if sequences is None else sequences, c.row, c.pos, c.owner,
                      c.target_timestamp, target_event_id=c.target_event_id)


def with_items_changed(split, changed: np.ndarray) -> pa.Table:
    """``split.full`` with the item of every flat event where ``changed`` replaced by another item."""
    col = split.full["item_idx"].combine_chunks()
    items = col.values.to_numpy(zero_copy_only=False).copy()
    items[changed] = (items[changed] + 1) % split.n_items
    lists = pa.ListArray.from_arrays(col.offsets, pa.array(items, pa.int32()))
    return split.full.set_column(split.full.schema.get_field_index("item_idx"), "item_idx", lists)


def flat_times(split) -> np.ndarray:
    return split.full["timestamps"].combine_chunks().values.to_numpy(zero_copy_only=False)


def test_frame_trend_vector_uses_only_events_before_the_frame(split, fitted):
    assert len(split.frames) >= 10  # hourly frames over the last 30% of three days
    frame = split.frames[5]
    term = fitted.trend_term(frame_batch(frame))  # (B, n_items)
    assert torch.equal(term, term[:1].expand_as(term))  # one vector per frame, whatever the case's time
    # It is eq. (5)'s log q over [start - w, start), counted by hand (add-1 smoothing).
    ts = flat_times(split)
    items = split.full["item_idx"].combine_chunks().values.to_numpy(zero_copy_only=False)
    inside = (ts >= frame.start - 2 * HOUR) & (ts < frame.start)
    c = np.bincount(items[inside], minlength=split.n_items) + 1.0
    np.testing.assert_allclose(term[0].numpy(), np.log(c / c.sum()), rtol=1e-5)

    # Changing every event inside or after the frame leaves the frame's trend vector unchanged.
    later = with_items_changed(split, ts >= frame.start)
    assert torch.equal(fitted.trend_term(frame_batch(frame, later)), term)
    # ... while changing events inside the window before the frame does change it (the test has teeth).
    earlier = with_items_changed(split, inside)
    assert not torch.equal(fitted.trend_term(frame_batch(frame, earlier)), term)

    # recent_pop with the frame as its bucket follows the same rule.
    rp = RecentPopularityScorer(window_seconds=2 * HOUR, bucket_seconds=HOUR, bucket_origin=split.cut_time)
    rp.fit(train_data(split, "train"))
    counts = rp.recent_counts(frame_batch(frame))
    np.testing.assert_array_equal(counts, np.broadcast_to(c - 1.0, counts.shape))
    np.testing.assert_array_equal(rp.recent_counts(frame_batch(frame, later)), counts)


def test_trend_weight_adds_eq5_term_to_the_models_scores(split, fitted):
    batch = frame_batch(split.frames[3])
    base = fitted.score(batch)
    fitted.trend_weight = 0.7
    try:
        corrected = fitted.score(batch)
    finally:
        fitted.trend_weight = 0.0
    torch.testing.assert_close(corrected, base + 0.7 * fitted.trend_term(batch))
    fitted.trend_mode = "ratio"  # log(q~ / p): recent share shrunk half-way to the training share p
    try:
        ratio = fitted.trend_term(batch)
        fitted.trend_weight = 0.7
        corrected = fitted.score(batch)
    finally:
        fitted.trend_mode, fitted.trend_weight = "add", 0.0
    torch.testing.assert_close(corrected, base + 0.7 * ratio)
    freq = split.item_frequency + 1.0
    p = freq / freq.sum()
    start = split.frames[3].start
    ts = flat_times(split)
    items = split.full["item_idx"].combine_chunks().values.to_numpy(zero_copy_only=False)
    c = np.bincount(items[(ts >= start - 2 * HOUR) & (ts < start)], minlength=split.n_items)
    expected = np.log(0.5 * (c / c.sum() + p)) - np.log(p)
    np.testing.assert_allclose(ratio[0].numpy(), expected, rtol=1e-4, atol=1e-5)
    assert torch.equal(ratio, ratio[:1].expand_as(ratio))
    # an item with no recent event gets log(1/2) whatever its training popularity: rarity is no bonus
    np.testing.assert_allclose(ratio[0].numpy()[c == 0], np.log(0.5), rtol=1e-5)


def test_set_inference_mix_rescores_with_another_lambda_of_eq2(split, fitted):
    """The tuning script rescores one fit at several lambdas: scores are linear in lambda (eq. 2)."""
    batch = frame_batch(split.frames[2])
    base = fitted.score(batch)
    try:
        at = {m: (fitted.set_inference_mix(m), fitted.score(batch))[1] for m in (0.0, 0.5, 1.0)}
    finally:
        fitted.set_inference_mix(None)  # the model's
    torch.testing.assert_close(at[0.5], (at[0.0] + at[1.0]) / 2, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(at[0.0], at[1.0])
    torch.testing.assert_close(fitted.score(batch), base)


def test_large_trend_weight_reproduces_recent_popularity_ranking(split, fitted):
    rp = RecentPopularityScorer(window_seconds=2 * HOUR, bucket_seconds=HOUR, bucket_origin=split.cut_time)
    rp.fit(train_data(split, "train"))
    fitted.trend_weight = 1e5
    try:
        for frame in split.frames[2:6]:
            batch = frame_batch(frame)
            scores = fitted.score(batch)
            counts = rp.recent_counts(batch)
            rp_scores = rp.score(batch)
            for i in range(len(batch.rows)):
                order = torch.argsort(scores[i], descending=True).numpy()
                # the ranking is by recent count; the model only orders items of equal count
                assert (np.diff(counts[i][order]) <= 0).all()
                rp_order = torch.argsort(rp_scores[i], descending=True).numpy()
                np.testing.assert_array_equal(counts[i][order], counts[i][rp_order])
                if (counts[i] == counts[i].max()).sum() == 1:
                    assert order[0] == rp_order[0]
    finally:
        fitted.trend_weight = 0.0


def test_windowed_popularity_floors_to_the_bucket_grid():
    wp = WindowedPopularity(np.array([0.0, 50.0, 99.9, 100.0, 150.0]), np.array([0, 1, 1, 2, 2]), 3,
                            window_seconds=100.0, bucket_seconds=100.0, origin=0.0)
    np.testing.assert_array_equal(wp.window_end(np.array([100.0, 199.9, 200.0])), [100.0, 100.0, 200.0])
    np.testing.assert_array_equal(wp.counts(100.0), [1, 2, 0])  # [0, 100): the event at 100 is out
    np.testing.assert_array_equal(wp.counts(200.0), [0, 0, 2])
    q = wp.log_q_at(np.array([120.0, 180.0]))
    assert torch.equal(q[0], q[1]) and q.shape == (2, 3)


def test_command_writes_report_json_of_the_right_shape(data_dir: Path, tmp_path: Path):
    from research.cli import app

    out = tmp_path / "trend.json"
    result = CliRunner().invoke(app, [
        "trend", "--dataset", "synth-drift", "--synth", json.dumps(TINY), "--epochs", "1",
        "--hidden", "8", "--weights", "0,1", "--windows", "1,2", "--modes", "add", "--output", str(out),
        "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    r = json.loads(out.read_text())
    assert r["dataset"] == "synth-drift" and r["protocol"] == "rolling" and r["n_frames"] >= 10
    names = {"hrnn_offline", "hrnn_trend", "recent_pop", "pop"}
    assert set(r["models"]) == set(r["frames"]) == names
    for name in names:
        assert set(r["models"][name]["mean_over_frames"]) == set(METRICS)
        frames = r["frames"][name]
        assert len(frames) == r["n_frames"] and sum(f["n_events"] for f in frames) == r["n_events"]
        assert all(set(METRICS) <= set(f) and f["start"] < f["end"] for f in frames)
        assert r["models"][name]["all_events"]["n_events"] == r["n_events"]
    assert set(r["significance"]) == {"hrnn_trend_vs_hrnn_offline", "hrnn_trend_vs_recent_pop"}
    assert {"mean_diff", "ci_low", "ci_high", "p_value"} <= set(r["significance"]["hrnn_trend_vs_recent_pop"]["ndcg@10"])
    # the trend weight was chosen on validation frames, all before the test period
    v = r["validation"]
    assert v["chosen"]["trend_weight"] in (0.0, 1.0) and v["chosen"]["window_hours"] in (1.0, 2.0)
    assert v["origin"] < r["protocol_params"]["cut_time"] and len(v["rows"]) == 1 + 2 + 2  # w=0 once, w=1 x 2 windows, 2 recent_pop
    assert Path(r["chart"]).is_file() and out.with_suffix(".per_event.npz").is_file()
    per_event = np.load(out.with_suffix(".per_event.npz"))
    assert per_event["hrnn_trend__ndcg@10"].shape == (r["n_events"],)
    assert "per-frame NDCG@10" in result.output


def test_command_rejects_unknown_dataset_and_bad_grid(data_dir: Path):
    from research.cli import app

    runner = CliRunner()
    bad = runner.invoke(app, ["trend", "--dataset", "nope", "--data-dir", str(data_dir)])
    assert bad.exit_code == 2 and "synth-drift" in bad.output
    bad = runner.invoke(app, ["trend", "--dataset", "synth-drift", "--weights", "a,b",
                              "--data-dir", str(data_dir)])
    assert bad.exit_code == 2 and "--weights" in bad.output


def test_hrnn_meta_scores_with_the_trend_term_by_default_and_the_plain_gru_without():
    """The shipped HRNN-meta adds eq. (5) (ModelConfig.trend_weight, window trend_window_seconds);
    the plain-GRU ablation has no time input and no trend term."""
    hrnn, gru = HRNNScorer(device="cpu"), HRNNScorer(device="cpu", plain_gru=True)
    assert hrnn.trend_weight == ModelConfig().trend_weight > 0 and gru.trend_weight == 0.0
    assert hrnn.trend_window_seconds == ModelConfig().trend_window_seconds == 30 * 86_400.0
    assert HRNNScorer(ModelConfig(trend_window_seconds=60.0), device="cpu").trend_window_seconds == 60.0


def test_study_scorer_with_its_defaults_scores_as_the_product(split, fitted, tmp_path: Path):
    """Without settings of its own, the research scorer's q(t) and scores are the product scorer's
    (the model's window and bucket, origin 0); its settings change only its own q(t)."""
    data = train_data(split, "train", 0, tmp_path)
    product = HRNNScorer(fitted.model_cfg, device="cpu", checkpoint=fitted.checkpoint_path)
    study = StudyScorer(fitted.model_cfg, device="cpu", checkpoint=fitted.checkpoint_path)
    for s in (product, study):
        s.fit(data)  # a trained model: no training, only the data it scores against
        s.trend_weight = 0.5
    assert study.trend_window_seconds == product.trend_window_seconds == fitted.model.cfg.trend_window_seconds
    batch = frame_batch(split.frames[4])
    torch.testing.assert_close(study.score(batch), product.score(batch), rtol=0, atol=0)
    study.trend_window_seconds, study.trend_origin = 2 * HOUR, split.cut_time
    assert not torch.equal(study.score(batch), product.score(batch))
    assert product.trend_window_seconds == fitted.model.cfg.trend_window_seconds


def test_windowed_counts_slide_forward_and_match_a_fresh_count_in_any_order():
    """counts() updates the previous window when the next one slid forward; any order of windows
    gives exactly the counts of the events in [end - window, end)."""
    rng = np.random.default_rng(0)
    times = rng.uniform(0, 500 * 3600.0, 5_000)
    items = rng.integers(0, 40, 5_000)
    wp = WindowedPopularity(times, items, 40, window_seconds=30 * 3600.0, bucket_seconds=3600.0)
    ends = np.concatenate([np.arange(0, 520) * 3600.0, rng.uniform(0, 520 * 3600.0, 200)])  # sorted, then any order
    for end in ends:
        fresh = np.bincount(items[(times >= end - 30 * 3600.0) & (times < end)], minlength=40)
        assert np.array_equal(wp.counts(float(end)), fresh.astype(np.float64))

