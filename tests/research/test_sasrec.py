"""SASRec (``research.baselines.sasrec``): causal, learns a deterministic sequence with the dense and
the sampled softmax, leaves seen items out of training where asked, saves and loads, and runs in `hrnn evaluate`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from hrnn_core.evaluation.baselines.base import ScoreBatch, TrainData
from hrnn_core.evaluation.baselines.features import BaselineError
from research.baselines.sasrec import SASRec, SASRecConfig, SASRecScorer, first_positions, make_windows
from hrnn_core.evaluation.splits import SnapshotData

pytestmark = pytest.mark.usefixtures("one_torch_thread")

K, USERS, LENGTH = 12, 60, 20  # items 0..K-1 in a cycle; K..K+2 never trained (cold)
SMALL = {"hidden": 16, "blocks": 1, "epochs": 40, "batch_size": 16, "lr": 5e-3, "dropout": 0.0, "val_owners": 20}


def cycle_data() -> SnapshotData:
    """Each user walks the cycle 0 -> 1 -> ... -> K-1 -> 0 from a random start, one event a minute."""
    rng = np.random.default_rng(0)
    u, it, ts = [], [], []
    for user in range(USERS):
        start = int(rng.integers(K))
        u += [user] * LENGTH
        it += [(start + k) % K for k in range(LENGTH)]
        ts += [1_000 + 60 * k + user for k in range(LENGTH)]
    return SnapshotData.from_events(u, it, ts, K + 3)


def fit(data: SnapshotData, **options) -> SASRecScorer:
    scorer = SASRecScorer(device="cpu", **{**SMALL, **options})
    scorer.fit(TrainData(data.sequences, np.bincount(data.item, minlength=data.n_items), data.n_items, None, None))
    return scorer


def cases(data: SnapshotData, pos: int) -> tuple[ScoreBatch, np.ndarray]:
    n = data.sequences.num_rows
    batch = ScoreBatch(data.sequences, np.arange(n), np.full(n, pos), data.user_idx, np.zeros(n))
    return batch, data.item[data.offsets[:-1] + pos]  # the next item of each case


def test_a_future_item_never_changes_an_earlier_position():
    torch.manual_seed(0)
    model = SASRec(20, 8, SASRecConfig(hidden=16, blocks=2, heads=2, dropout=0.0)).eval()
    seq = torch.randint(0, 20, (3, 8))
    seq[0, :3] = 20  # left padding
    out = model(seq)
    for t in range(7):
        changed = seq.clone()
        changed[:, t + 1:] = (changed[:, t + 1:] + 7) % 20
        again = model(changed)
        assert torch.allclose(out[:, : t + 1], again[:, : t + 1], atol=1e-6)
        assert not torch.allclose(out[:, t + 1:], again[:, t + 1:], atol=1e-4)


def test_scores_read_only_the_history_before_the_case():
    data = cycle_data()
    scorer = fit(data, epochs=1)
    batch, _ = cases(data, 5)
    later = SnapshotData.from_events(np.repeat(np.arange(USERS), LENGTH), (data.item + 5) % K * (data.position >= 5)
                                     + data.item * (data.position < 5), data.timestamp, data.n_items)
    changed = ScoreBatch(later.sequences, batch.rows, batch.pos, batch.owners, batch.target_timestamp)
    assert torch.allclose(scorer.score(batch), scorer.score(changed))
    empty = scorer.score(ScoreBatch(data.sequences, np.arange(3), np.zeros(3, int), data.user_idx[:3], np.zeros(3)))
    assert empty.shape == (3, data.n_items) and torch.isfinite(empty).all()
    assert torch.allclose(empty[0], empty[1])  # no history: one state, whoever asks


@pytest.mark.parametrize("output", ["dense", "sampled"])
def test_learns_a_deterministic_sequence(output: str):
    data = cycle_data()
    scorer = fit(data, output=output, n_negatives=8)
    batch, nxt = cases(data, 7)
    scores = scorer.score(batch)
    # early stopping keeps the first epoch with all 20 validation targets first (NDCG@10 = 1): by then most
    # users' next item at an earlier step is first too (chance: 1 / 12)
    assert (scores.argmax(1).numpy() == nxt).mean() >= 0.85
    assert (scores[:, K:] < scores[:, :K].min(1, keepdim=True).values).all()  # never-trained items: below every trained one
    assert scorer.history[-1]["epoch"] < SMALL["epochs"]  # early stopping on validation ended it
    assert max(h["ndcg@10"] for h in scorer.history) >= 0.95


def test_windows_and_seen_items_leave_the_training_softmax():
    # one owner rated items 3, 5, 1, 4 (positions 0..3); windows of 3 steps, the newest first
    offsets, items, ends = np.array([0, 4]), np.array([3, 5, 1, 4]), np.array([4])
    win = make_windows(offsets, items, ends, n_items=6, n=3)
    assert win.targets.tolist() == [[5, 1, 4], [-1, -1, 3]]  # -1: no target (left padding)
    assert win.inputs.tolist() == [[3, 5, 1], [6, 6, 6]]  # padding = n_items; the first event's step reads nothing
    assert win.position.tolist() == [[1, 2, 3], [-1, -1, 0]] and win.row.tolist() == [0, 0]
    scorer = SASRecScorer(device="cpu", hidden=8)
    scorer.model = SASRec(6, 3, scorer.config)
    sel = np.array([0])
    valid = torch.as_tensor(win.targets[sel] >= 0)
    y = torch.as_tensor(win.targets[sel])[valid]
    mask = scorer._seen_mask(first_positions(offsets, items, ends, 6), win.row[sel], win.position[sel], valid, y)
    assert [sorted(np.flatnonzero(m).tolist()) for m in mask.numpy()] == [[3], [3, 5], [1, 3, 5]]


def test_exclude_seen_follows_the_repeat_rule():
    ratings = SnapshotData.from_events(np.repeat(np.arange(10), 6), np.tile(np.arange(6), 10), np.arange(60), 6)
    assert fit(ratings, epochs=1).exclude_seen  # nobody repeats an item: seen items leave the softmax
    assert not fit(cycle_data(), epochs=1).exclude_seen  # the cycle repeats items


def test_save_load_round_trip_and_bad_config(tmp_path: Path):
    data = cycle_data()
    scorer = fit(data, epochs=2)
    batch, _ = cases(data, 7)
    scorer.save(tmp_path / "sasrec")
    assert torch.equal(SASRecScorer.load(tmp_path / "sasrec").score(batch), scorer.score(batch))
    with pytest.raises(BaselineError, match="multiple of heads"):
        SASRecScorer(hidden=10, heads=3)
    with pytest.raises(BaselineError, match="valid keys"):
        SASRecScorer(hiden=10)


def test_hrnn_evaluate_runs_sasrec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from research.cli import app  # noqa: PLC0415 - hrnn-research evaluate: the product's with sasrec/hgru
    from research.synth import synthetic_snapshot  # noqa: PLC0415

    synthetic_snapshot(tmp_path, n_users=30, n_items=40, n_events=900, n_genres=4, seed=3)
    monkeypatch.setenv("HRNN_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("HRNN__TRAIN__THREADS", "1")
    monkeypatch.setenv("HRNN__TRAIN__DEVICE", "cpu")
    out = tmp_path / "report.json"
    res = CliRunner().invoke(app, ["evaluate", "--protocol", "leave_one_out", "--models", "pop,sasrec", "--output", str(out)])
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    sasrec = report["models"]["sasrec"]
    assert sasrec["n_events"] == report["models"]["pop"]["n_events"] > 0
    assert 0.0 <= sasrec["ndcg@10"] <= 1.0 and sasrec["epochs_run"] >= 1 and sasrec["ppl"] > 1
    assert out.with_suffix(".html").exists()
