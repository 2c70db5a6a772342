"""Issue 21: a catalogue where most items have no training events, and users who repeat items. One cold-item policy in the one scoring
path (hrnn_core.model.scoring): cold items are scored from metadata plus a calibrated prior, their untrained id
rows never decide a rank, and the prior puts cold and warm items on one probability scale. (The evaluation,
export and service agreeing on such a catalogue: tests/test_parity.py, "mostly-cold".)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from research.synth import synthetic_snapshot
from hrnn_core.evaluation.baselines.base import ScoreBatch
from hrnn_core.evaluation.harness import make_scorer, train_data
from hrnn_core.evaluation.protocols import build_split
from hrnn_core.evaluation.splits import SnapshotData
from hrnn_core.model.checkpoint import load_checkpoint
from hrnn_core.model.scoring import (LATEST_PRIORS, CatalogueScorer, calibrate_cold_prior, calibrate_repeat_prior,
                                     choose_latest_prior, new_item_rate)
from tests.champions import ONE_EPOCH, TINY_MODEL


def test_new_item_rate_counts_first_events_in_the_later_half() -> None:
    times = np.arange(8, dtype=float)
    items = np.array([0, 1, 0, 1, 2, 0, 3, 3])  # later half (t >= 3.5): 2 and the first 3 are new
    assert new_item_rate(times, items) == pytest.approx((2 + 1) / (4 + 2))
    shuffled = np.random.default_rng(0).permutation(8)  # the order of the arrays does not matter, time does
    assert new_item_rate(times[shuffled], items[shuffled]) == pytest.approx((2 + 1) / (4 + 2))


@pytest.fixture(scope="module")
def mostly_cold(tmp_path_factory):
    """A temporal split of a 1,200-item synthetic catalogue with 1,500 events (most items never occur)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("mostly-cold")
    snap = synthetic_snapshot(root / "data", n_users=60, n_items=1_200, n_events=1_500, n_genres=5, seed=3)
    split = build_split("temporal", SnapshotData.load(snap))
    scorer = make_scorer("hrnn", model=TINY_MODEL, train=ONE_EPOCH, device="cpu")
    scorer.fit(train_data(split, "train", 0, root / "work"))
    return split, scorer


def test_calibration_puts_the_rate_of_new_items_on_cold_items(mostly_cold) -> None:
    _, scorer = mostly_cold
    cs: CatalogueScorer = scorer.scorer
    assert float(cs.cold.float().mean()) > 0.5  # most of the catalogue has no training event
    h = torch.randn(40, scorer.model.cfg.hidden_size)
    for rate in (0.02, 0.3):
        calibrate_cold_prior(cs, h, None, rate)
        p = torch.softmax(cs.scores(h), dim=1)
        assert float(p[:, cs.cold].sum(1).mean()) == pytest.approx(rate, abs=1e-4)
    assert scorer.model.cold_log_prior.item() == cs.prior  # the prior lives in the model (saved with it)


def test_trained_models_carry_a_calibrated_prior_and_no_random_input_rows(mostly_cold) -> None:
    _, scorer = mostly_cold
    ck = load_checkpoint(scorer.checkpoint_path)
    assert ck.raw["history"][-1]["cold_log_prior"] == pytest.approx(float(ck.model.cold_log_prior))
    assert float(ck.model.cold_log_prior) != 0.0
    cold = torch.as_tensor(ck.item_freq) == 0
    assert (ck.model.item_in.weight[:-1][cold] == 0).all()  # never an input in training: no random row


def test_untrained_id_rows_never_decide_a_rank(mostly_cold) -> None:
    split, scorer = mostly_cold
    cases = split.test
    idx = np.arange(min(64, len(cases)))
    b = cases.batch(idx)
    batch = ScoreBatch(cases.sequences, b["rows"], b["pos"], b["owners"], b["target_timestamp"],
                       target_event_id=cases.target_event_id[idx])
    before = scorer.score(batch)
    cold = scorer.scorer.cold
    with torch.no_grad():  # garbage in every id row of the cold items: decoder and input
        scorer.model.item_w.weight[cold] = torch.randn(int(cold.sum()), scorer.model.cfg.hidden_size) * 100
        scorer.model.item_b.weight[cold] = torch.randn(int(cold.sum()), 1) * 100
    scorer.scorer._full = None
    torch.testing.assert_close(scorer.score(batch), before)
    warm_best = before[:, ~cold[: before.shape[1]]].max(dim=1).values
    blank = cold & ~scorer.scorer.has_meta
    if bool(blank.any()):  # a cold item without metadata ranks below every trained item
        assert (before[:, blank[: before.shape[1]]].max(dim=1).values < warm_best).all()


def test_repeat_term_puts_the_repeat_rate_on_the_owners_items(mostly_cold) -> None:
    """The repeat term: + b_rep on each request's own items, calibrated so that the mean softmax mass on them
    is the training data's repeat rate; a model trained where owners repeat items carries one."""
    _, scorer = mostly_cold
    cs: CatalogueScorer = scorer.scorer
    ck = load_checkpoint(scorer.checkpoint_path)
    assert ck.raw["history"][-1]["repeat_log_prior"] == pytest.approx(float(ck.model.repeat_log_prior))
    assert float(ck.model.repeat_log_prior) != 0.0  # the synthetic owners repeat items: calibrated
    rng = np.random.default_rng(0)
    h = torch.randn(30, scorer.model.cfg.hidden_size)
    seen = [rng.choice(cs.n_items, size=int(rng.integers(1, 6)), replace=False).tolist() for _ in range(30)]
    for rate in (0.05, 0.4):
        calibrate_repeat_prior(cs, h, None, seen, rate)
        p = torch.softmax(cs.scores(h, seen=seen), dim=1)
        mass = torch.stack([p[i, s].sum() for i, s in enumerate(seen)])
        assert float(mass.mean()) == pytest.approx(rate, abs=1e-4)
        target = torch.tensor([s[0] for s in seen])
        torch.testing.assert_close(cs.target_scores(h, target, None, seen), cs.scores(h, seen=seen)[torch.arange(30), target])
        chunk = torch.arange(5, 400)  # a sorted subset of the catalogue scores the same as the whole
        torch.testing.assert_close(cs.scores(h, items=chunk, seen=seen), cs.scores(h, seen=seen)[:, chunk])


def test_the_latest_items_prior_is_chosen_for_ndcg(mostly_cold) -> None:
    """b_last: the candidate whose NDCG@10 over the requests is highest, computed as the one scoring function ranks
    (checked against scoring every candidate); 0 when the next item is never the latest one."""
    _, scorer = mostly_cold
    cs: CatalogueScorer = scorer.scorer
    saved = (float(cs.model.repeat_log_prior), float(cs.model.latest_log_prior))
    rng = np.random.default_rng(1)
    h = torch.randn(60, scorer.model.cfg.hidden_size)
    seen = [rng.choice(cs.n_items, size=int(rng.integers(1, 6)), replace=False).tolist() for _ in range(60)]
    try:
        cs.model.repeat_log_prior.fill_(0.5)

        def ndcg(b: float, target: torch.Tensor) -> float:
            cs.model.latest_log_prior.fill_(b)
            s = cs.scores(h, seen=seen)
            rank = (s > s[torch.arange(60), target][:, None]).sum(1)
            return float(torch.where(rank < 10, 1 / torch.log2(rank + 2.0), 0.0).mean())

        for share in (0.0, 0.5, 1.0):  # the next item is the latest one for that share of requests
            target = torch.tensor([s[-1] if rng.random() < share else int(rng.integers(cs.n_items)) for s in seen])
            chosen = choose_latest_prior(cs, h, None, seen, target)
            assert chosen == float(cs.model.latest_log_prior) and chosen in LATEST_PRIORS
            by_b = {b: ndcg(b, target) for b in LATEST_PRIORS}
            assert by_b[chosen] == pytest.approx(max(by_b.values()), abs=1e-9)
            assert chosen == min(b for b, v in by_b.items() if v >= max(by_b.values()) - 1e-9)  # ties: the smaller
            if share == 0.0:
                assert chosen == 0.0
            if share == 1.0:
                assert chosen > 0.0
            cs.model.latest_log_prior.fill_(chosen)
            torch.testing.assert_close(cs.target_scores(h, target, None, seen), cs.scores(h, seen=seen)[torch.arange(60), target])
    finally:
        cs.model.repeat_log_prior.fill_(saved[0])
        cs.model.latest_log_prior.fill_(saved[1])

