"""Full-ranking metrics on hand-computed cases (hrnn_core.evaluation.metrics)."""

import math

import numpy as np
import pytest
import torch

from hrnn_core.evaluation.metrics import (
    Accumulator,
    MetricError,
    multi_target_positions,
    nll,
    paired_test,
    rank_metrics,
    target_ranks,
)


def test_rank_is_one_plus_items_scoring_at_least_as_high():
    scores = np.array([[0.1, 0.9, 0.5, 0.3], [4.0, 3.0, 2.0, 1.0]])
    assert target_ranks(scores, np.array([2, 0])).tolist() == [2, 1]
    assert target_ranks(torch.tensor(scores), torch.tensor([0, 3])).tolist() == [4, 4]


def test_constant_scorer_ranks_target_last():
    scores = torch.zeros((3, 7))
    assert target_ranks(scores, [0, 3, 6]).tolist() == [7, 7, 7]
    m = rank_metrics(target_ranks(scores, [0, 3, 6]), ks=(5, 10))
    assert m["hit@5"].tolist() == [0, 0, 0]
    assert m["hit@10"].tolist() == [1, 1, 1]
    assert m["ndcg@10"][0].item() == pytest.approx(1 / math.log2(8))


def test_exact_tie_with_one_other_item_counts_against_target():
    scores = np.array([[0.2, 0.8, 0.8, 0.1]])
    assert target_ranks(scores, [1]).item() == 2
    assert target_ranks(scores, [2]).item() == 2
    m = rank_metrics(target_ranks(scores, [1]), ks=(1, 2))
    assert m["hit@1"].item() == 0 and m["hit@2"].item() == 1
    assert m["mrr@2"].item() == pytest.approx(0.5)
    assert m["precision@2"].item() == pytest.approx(0.5)
    assert m["ndcg@2"].item() == pytest.approx(1 / math.log2(3))


def test_exclusion_as_mask_or_index_lists_and_target_never_excluded():
    scores = np.array([[0.9, 0.8, 0.7, 0.6], [0.9, 0.8, 0.7, 0.6]])
    targets = [3, 2]
    mask = np.zeros((2, 4), dtype=bool)
    mask[0, [0, 1]] = True
    mask[1, [2, 0]] = True  # the target itself is marked: it is still ranked
    assert target_ranks(scores, targets, mask).tolist() == [2, 2]
    assert target_ranks(scores, targets, [np.array([0, 1]), np.array([2, 0])]).tolist() == [2, 2]
    assert target_ranks(scores, targets, [np.array([], dtype=int), np.array([0])]).tolist() == [4, 2]


def test_single_target_metric_values():
    ranks = torch.tensor([1, 3, 11])
    m = rank_metrics(ranks, ks=(10,))
    assert m["hit@10"].tolist() == [1, 1, 0]
    assert m["recall@10"].tolist() == [1, 1, 0]
    assert m["precision@10"].tolist() == pytest.approx([0.1, 0.1, 0.0])
    assert m["mrr@10"].tolist() == pytest.approx([1.0, 1 / 3, 0.0])
    assert m["ndcg@10"].tolist() == pytest.approx([1.0, 0.5, 0.0])


def test_multi_target_positions_and_ndcg():
    # Items 0..5; targets {1, 4}. Order by score: 0 (.9), 1 (.8), 2 (.7), 4 (.6), 3, 5.
    scores = np.array([[0.9, 0.8, 0.7, 0.3, 0.6, 0.1]])
    pos = multi_target_positions(scores, [np.array([4, 1])])
    assert pos.tolist() == [[2, 4]]
    m = rank_metrics(pos, ks=(3, 5))
    assert m["recall@3"].item() == pytest.approx(0.5)
    assert m["recall@5"].item() == pytest.approx(1.0)
    assert m["precision@5"].item() == pytest.approx(2 / 5)
    assert m["hit@3"].item() == 1
    assert m["mrr@5"].item() == pytest.approx(0.5)
    idcg = 1 + 1 / math.log2(3)
    assert m["ndcg@5"].item() == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / idcg)
    assert m["ndcg@3"].item() == pytest.approx((1 / math.log2(3)) / idcg)


def test_multi_target_pessimistic_ties_and_exclusion():
    # Constant scorer, 5 items, targets {0, 2}: positions 4 and 5 (after the 3 non-targets).
    assert multi_target_positions(np.zeros((1, 5)), [np.array([0, 2])]).tolist() == [[4, 5]]
    # Excluding two non-targets moves both up by two.
    pos = multi_target_positions(np.zeros((1, 5)), [np.array([0, 2])], [np.array([1, 3])])
    assert pos.tolist() == [[2, 3]]
    # Ideal DCG is capped at K: three targets, K = 1, the best target first gives ndcg 1.
    scores = np.array([[0.9, 0.8, 0.7, 0.1]])
    m = rank_metrics(multi_target_positions(scores, [np.array([0, 1, 2])]), ks=(1,))
    assert m["ndcg@1"].item() == pytest.approx(1.0) and m["recall@1"].item() == pytest.approx(1 / 3)


def test_multi_target_with_one_target_matches_single():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(20, 9)).astype(np.float32)  # many ties
    t = rng.integers(0, 9, size=20)
    single = rank_metrics(target_ranks(scores, t), ks=(3,))
    multi = rank_metrics(multi_target_positions(scores, [np.array([x]) for x in t]), ks=(3,))
    for k in single:
        assert torch.allclose(single[k], multi[k])


def test_ppl_of_uniform_scorer_is_catalog_size():
    acc = Accumulator(n_items=50, ks=(10,))
    logits = torch.zeros((8, 50))
    acc.add(logits, torch.arange(8), logits=logits)
    assert acc.summary()["ppl"] == pytest.approx(50.0)
    assert nll(torch.tensor([[0.0, math.log(3.0)]]), [1]).item() == pytest.approx(-math.log(0.75))


def test_ppl_is_infinite_not_an_error_when_a_target_cannot_be_scored():
    """A model without metadata scores items it never trained on NO_SCORE (-1e9): such a target makes the
    PPL infinite (taobao's cold targets for the plain GRU and HGRU), not an OverflowError."""
    acc = Accumulator(n_items=4, ks=(2,))
    logits = torch.tensor([[3.0, 2.0, 1.0, -1e9], [3.0, 2.0, 1.0, -1e9]])
    acc.add(logits, [0, 3], logits=logits)
    summary = acc.summary()
    assert summary["ppl"] == math.inf and summary["hit@2"] == pytest.approx(0.5)


def test_coverage_and_summary_keys():
    acc = Accumulator(n_items=6, ks=(2,))
    scores = torch.tensor([[6.0, 5, 4, 3, 2, 1], [6.0, 5, 4, 3, 2, 1]])
    acc.add(scores, [0, 1], exclude=[np.array([], dtype=int), np.array([0, 1])], owners=[7, 7])
    s = acc.summary()
    assert s["coverage@2"] == pytest.approx(4 / 6)  # {0, 1} and {2, 3}
    assert s["n_events"] == 2 and s["n_users"] == 1
    assert s["hit@2"] == pytest.approx(1.0)
    assert {"ndcg@2", "recall@2", "precision@2", "mrr@2", "hit@2", "coverage@2"} <= set(s)
    assert "ppl" not in s
    acc.add(scores, [5, 5], owners=[8, 9])
    assert acc.per_event("hit@2").tolist() == [1, 1, 0, 0]
    assert acc.summary()["n_users"] == 3


def test_accumulator_multi_target_batches():
    acc = Accumulator(n_items=6, ks=(5,))
    scores = np.array([[0.9, 0.8, 0.7, 0.3, 0.6, 0.1]])
    acc.add(scores, [np.array([4, 1])])
    assert acc.summary()["recall@5"] == pytest.approx(1.0)


def test_nan_scores_and_bad_targets_raise():
    with pytest.raises(MetricError):
        target_ranks(np.array([[np.nan, 1.0]]), [0])
    with pytest.raises(MetricError):
        target_ranks(np.zeros((1, 3)), [3])


def test_full_ranking_ml100k_size_is_fast():
    import time

    scores = torch.randn(943, 1682)
    targets = torch.randint(0, 1682, (943,))
    exclude = torch.rand(943, 1682) < 0.06
    started = time.perf_counter()
    acc = Accumulator(n_items=1682)
    acc.add(scores, targets, exclude, owners=np.arange(943), logits=scores)
    acc.summary()
    assert time.perf_counter() - started < 1.0


def test_paired_test():
    rng = np.random.default_rng(1)
    a = rng.random(300)
    same = paired_test(a, a)
    assert same["mean_diff"] == 0 and same["p_value"] == 1.0
    r = paired_test(a + 0.1 + rng.normal(0, 0.01, 300), a, n_boot=500)
    assert r["mean_diff"] == pytest.approx(0.1, abs=0.01)
    assert r["ci_low"] < r["mean_diff"] < r["ci_high"] and r["ci_low"] > 0.09
    assert r["p_value"] < 1e-6
    with pytest.raises(MetricError):
        paired_test(a, a[:-1])


def test_paired_test_by_cluster_counts_clusters_not_events():
    """One user's many events are one piece of evidence: with the difference constant inside each of
    few users, the event-level test is overconfident and the cluster test is not."""
    rng = np.random.default_rng(2)
    per_user = np.array([0.05, -0.03, 0.04, -0.02, 0.06, -0.04, 0.03, 0.01])  # 8 users' own effects
    users = np.repeat(np.arange(8), 200)
    d = per_user[users] + rng.normal(0, 0.001, len(users))
    a, b = d, np.zeros_like(d)
    events, by_user = paired_test(a, b), paired_test(a, b, clusters=users)
    assert events["mean_diff"] == pytest.approx(by_user["mean_diff"]) and by_user["n_clusters"] == 8
    assert events["p_value"] < 1e-6 < by_user["p_value"]  # 1,600 "independent" events vs 8 users
    assert by_user["ci_high"] - by_user["ci_low"] > 5 * (events["ci_high"] - events["ci_low"])
    # hand check: CR1 standard error of the mean, t with G - 1 = 7 degrees of freedom
    from scipy import stats
    sums = np.bincount(users, weights=d)
    resid = sums - 200 * d.mean()
    se = np.sqrt(8 / 7 * (resid ** 2).sum()) / len(d)
    assert by_user["p_value"] == pytest.approx(2 * stats.t.sf(abs(d.mean() / se), 7))
    # a real effect shared by every user stays significant
    strong = paired_test(d + 0.2, b, clusters=users)
    assert strong["p_value"] < 1e-4 and strong["ci_low"] > 0.1
    with pytest.raises(MetricError):
        paired_test(a, b, clusters=users[:-1])
