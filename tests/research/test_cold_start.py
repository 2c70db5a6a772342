"""Cold start (Table 7): the uniform-random baseline against its analytic expectation, and
HRNN-meta scoring the cold items from metadata only (lambda = 1), via the experiment's code."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from hrnn_core.evaluation.baselines.base import TrainData
from research.baselines.uniform import UniformRandomScorer, expected_random_metrics
from hrnn_core.model.checkpoint import load_checkpoint
from hrnn_core.config import ModelConfig, TrainConfig
from hrnn_core.evaluation.harness import make_scorer, train_data
from research.experiments.cold_start import KS, cold_lambda, per_user_cases, score_cold_start
from research.synth import synthetic_snapshot
from hrnn_core.evaluation.protocols import build_split
from hrnn_core.evaluation.splits import SnapshotData
from hrnn_core.model.scoring import CatalogueScorer

torch.set_num_threads(1)

TINY_MODEL = ModelConfig(hidden_size=16, field_dim=8, input_size=16, dropout=0.0)
TINY_TRAIN = TrainConfig(epochs=2, batch_size=16, bptt=16, val_owners=20, progress=False, threads=1)


def test_expected_random_metrics_by_hand() -> None:
    one = expected_random_metrics(4, (1, 2, 4))
    assert one["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    assert one["mrr@2"] == pytest.approx((1 + 1 / 2) / 4)
    assert one["hit@2"] == pytest.approx(0.5) and one["precision@2"] == pytest.approx(0.25)
    assert one["ndcg@2"] == pytest.approx((1 + 1 / math.log2(3)) / 4)
    # 3 items, 2 targets: the first target is at 1 w.p. 2/3, at 2 w.p. 1/3
    two = expected_random_metrics(3, (1, 2), n_targets=2)
    assert two["mrr"] == pytest.approx(2 / 3 + 1 / 6)
    assert two["precision@2"] == pytest.approx(2 / 3) and two["recall@1"] == pytest.approx(1 / 3)
    # E[DCG@2] = (2/3)(1 + 1/log2 3), ideal DCG@2 = 1 + 1/log2 3
    assert two["ndcg@2"] == pytest.approx(2 / 3)


def _big_cold_split(n_items: int = 2000, n_events: int = 40_000):
    rng = np.random.default_rng(0)
    users = rng.integers(0, 400, n_events)
    return build_split("cold_start_items", SnapshotData.from_events(
        users, rng.integers(0, n_items, n_events), rng.uniform(0, 1e6, n_events), n_items))


def test_random_scorer_measures_its_analytic_expectation() -> None:
    split = _big_cold_split()
    n_cold = int(split.candidate_mask.sum())
    assert n_cold == 1000 and len(split.test) > 15_000
    data = TrainData(split.train, split.item_frequency, split.n_items, None, None, seed=3)
    scorer = make_scorer("random")
    scorer.fit(data)
    accs = score_cold_start(split, {"random": scorer})["random"]
    users = per_user_cases(split.test)  # one case per user: whole warm history, all cold items as targets
    assert len(users) == split.test.n_users
    for i in range(0, len(users), 37):
        c, mine = users[i], split.test.row == users.row[i]
        assert c.pos == split.full["n_events"][c.row].as_py() and c.target_timestamp >= split.test.target_timestamp[mine].max()
        assert np.array_equal(c.targets, np.unique(split.test.target_items[mine]))
        assert split.candidate_mask[c.targets].all() and not split.candidate_mask[users.history_items(i)].any()
    for view, cases in (("per_event", split.test), ("per_user", users)):
        acc = accs[view]
        m = np.diff(cases.target_offsets)
        sizes, counts = np.unique(m, return_counts=True)
        exp = {k: np.average([expected_random_metrics(n_cold, KS, int(s))[k] for s in sizes], weights=counts)
               for k in ("mrr", "mrr@25", "precision@5", "precision@25", "ndcg@5", "ndcg@25")}
        for key, expected in exp.items():
            values = acc.per_event(f"mrr@{n_cold}" if key == "mrr" else key)
            se = values.std(ddof=1) / math.sqrt(len(values))
            assert abs(values.mean() - expected) < 4 * se + 1e-12, (view, key, values.mean(), expected, se)
        # every case is ranked among the cold items only: the first target's rank is <= n_cold
        assert acc.per_event(f"mrr@{n_cold}").min() >= 1.0 / n_cold
    # seeded: the same seed gives the same scores, another seed others
    again = UniformRandomScorer()
    again.fit(data)
    assert np.array_equal(score_cold_start(split, {"r": again})["r"]["per_event"].per_event("mrr@25"),
                          accs["per_event"].per_event("mrr@25"))
    other = UniformRandomScorer(seed=4)
    other.fit(data)
    assert not np.array_equal(score_cold_start(split, {"r": other})["r"]["per_event"].per_event("mrr@25"),
                              accs["per_event"].per_event("mrr@25"))


@pytest.fixture(scope="module")
def cold_snapshot(tmp_path_factory):
    return synthetic_snapshot(tmp_path_factory.mktemp("cold"), n_users=150, n_items=80, n_events=4_000,
                              n_genres=6, seed=5)


def test_cold_items_are_scored_from_metadata_only(cold_snapshot, tmp_path) -> None:
    """Garbage id embeddings do not change a single cold-start rank: lambda = 1 on cold items."""
    split = build_split("cold_start_items", SnapshotData.load(cold_snapshot), seed=1)
    cold = split.candidate_mask
    scorer = make_scorer("hrnn", model=TINY_MODEL, train=TINY_TRAIN, device="cpu")
    scorer.fit(train_data(split, "train", 0, tmp_path))
    lam = cold_lambda(scorer)
    assert np.all(lam[cold] == 1.0) and np.all(lam[~cold] == TINY_MODEL.inference_item_meta_mix)
    item_freq = load_checkpoint(scorer.checkpoint_path).item_freq  # the cold items have none

    def ranks() -> dict[str, np.ndarray]:
        accs = score_cold_start(split, {"hrnn": scorer})["hrnn"]
        n_cold = int(cold.sum())
        return {v: accs[v].per_event(f"mrr@{n_cold}") for v in accs} | {"ndcg": accs["per_event"].per_event("ndcg@5")}

    before = ranks()
    with torch.no_grad():  # the id part of eq. (2): garbage for every item
        scorer.model.item_w.weight.normal_(0.0, 10.0)
        scorer.model.item_b.weight.normal_(0.0, 10.0)
    scorer.scorer = CatalogueScorer(scorer.model, item_freq)  # the scorer keeps its item vectors: form them again
    after = ranks()
    for key in before:
        np.testing.assert_allclose(after[key], before[key], err_msg=key)
    # lambda < 1 on cold items (the scorer told every item has training events) reads the garbage
    scorer.scorer = CatalogueScorer(scorer.model, torch.ones_like(item_freq))
    assert np.all(cold_lambda(scorer) == TINY_MODEL.inference_item_meta_mix)
    assert not np.allclose(ranks()["per_event"], before["per_event"])


def test_cold_start_command_writes_both_views(cold_snapshot, tmp_path) -> None:
    from research.cli import app

    config = tmp_path / "tiny.toml"
    config.write_text("[model]\nhidden_size = 16\nfield_dim = 8\ninput_size = 16\ndropout = 0.0\n"
                      "[train]\nepochs = 2\nbatch_size = 16\nbptt = 16\nval_owners = 20\nprogress = false\n"
                      "threads = 1\ndevice = \"cpu\"\n")
    out = tmp_path / "cold.json"
    res = CliRunner().invoke(app, ["cold-start", "--snapshot", str(cold_snapshot), "--config",
                                   str(config), "--data-dir", str(tmp_path), "--output", str(out)])
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert report["n_cold_items"] == 40 and report["lambda"]["cold_items_checked"] == 40
    assert report["train_config"]["item_meta_mix"] is None  # lambda ~ U[0, 1] in training
    for view in ("per_event", "per_user"):
        block = report[view]
        assert set(block["models"]) == {"hrnn", "random"}
        for model in block["models"].values():
            assert {"mrr", "precision@5", "precision@25", "ndcg@5", "ndcg@25", "mrr@25"} <= set(model)
            assert model["n_events"] == block["n_cases"]
        assert block["random_expected"]["mrr"] > 0
        assert set(block["significance"]["hrnn_vs_random"]) == {"mrr", "ndcg@25", "precision@5"}
    assert report["per_event"]["n_cases"] == report["n_events"]
    assert "per user" in res.output and "expected" in res.output


def test_the_scoring_sweep_splits_by_target_and_pairs_against_the_configured_setting(tmp_path, monkeypatch) -> None:
    """research.experiments.cold_items --mix: one fit, each scoring setting through the serving scorer; the cold and
    warm groups partition the validation cases, the configured setting is the zero of the paired tests."""
    from research.experiments.cold_items import mix_sweep  # noqa: PLC0415

    snap = synthetic_snapshot(tmp_path, n_users=40, n_items=60, n_events=1_500, n_genres=4, seed=5)
    for key, value in {"MODEL__HIDDEN_SIZE": 16, "MODEL__FIELD_DIM": 8, "MODEL__INPUT_SIZE": 16, "TRAIN__EPOCHS": 1,
                       "TRAIN__BATCH_SIZE": 16, "TRAIN__BPTT": 16, "TRAIN__THREADS": 1, "TRAIN__PROGRESS": "false"}.items():
        monkeypatch.setenv(f"HRNN__{key}", str(value))
    out = mix_sweep(snap, {}, mixes=(0.0, 0.15, 1.0), trend_weights=(0.0,))
    assert out["configured"] == {"mix": 0.15, "trend_weight": 0.5} and set(out["mix"]) == {"0.0", "0.15", "1.0"}
    for rows in (*out["mix"].values(), *out["trend_weight"].values()):
        n_all, n_cold, n_warm = (rows[g]["n"] for g in ("all", "cold targets", "warm targets"))
        assert n_all == out["valid_cases"] > 0 and n_cold + n_warm == n_all
        parts = sum(rows[g]["ndcg@10"] * rows[g]["n"] for g in ("cold targets", "warm targets") if rows[g]["n"])
        assert parts / n_all == pytest.approx(rows["all"]["ndcg@10"])
    same = out["paired"]["mix 0.15 - configured all ndcg@10"]
    assert same["mean_diff"] == 0.0 and same["p_value"] == 1.0
    assert out["mix"]["0.0"]["all"] != out["mix"]["1.0"]["all"]  # lambda changes the scores it ranks by
