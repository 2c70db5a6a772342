"""Alias sampler: exact tables, the right distribution (chi-square), log-probabilities, O(1) draws."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from hrnn_core.model.sampler import AliasSampler, SamplerError, alias_tables

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _q(freq: np.ndarray, alpha: float, smoothing: float) -> np.ndarray:
    w = (freq + smoothing) ** alpha
    return w / w.sum()


def _chi2_critical(df: int, z: float = 3.09) -> float:
    """Upper chi-square quantile (Wilson-Hilferty); z = 3.09 is p = 0.001."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def test_alias_tables_encode_the_distribution_exactly() -> None:
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 1000):
        p = rng.pareto(1.0, n) + 1e-3
        p /= p.sum()
        prob, alias = alias_tables(p)
        # each slot is chosen with 1/n and keeps itself with prob[i], else gives alias[i]
        got = prob / n + np.bincount(alias, weights=(1 - prob) / n, minlength=n)
        np.testing.assert_allclose(got, p, rtol=1e-9, atol=1e-12)


def test_draws_follow_freq_to_the_alpha_chi_square() -> None:
    freq = np.array([0, 1, 5, 20, 100, 3, 7, 0, 50, 2], dtype=float)
    sampler = AliasSampler(freq, alpha=0.75, smoothing=1.0, seed=1)
    n = 200_000
    ids, log_q = sampler.draw(n)
    q = _q(freq, 0.75, 1.0)
    counts = np.bincount(ids.numpy(), minlength=len(freq))
    chi2 = float(((counts - n * q) ** 2 / (n * q)).sum())
    assert chi2 < _chi2_critical(len(freq) - 1), chi2
    np.testing.assert_allclose(log_q.numpy(), np.log(q[ids.numpy()]), rtol=1e-5)
    np.testing.assert_allclose(sampler.log_q.exp().sum().item(), 1.0, rtol=1e-5)


def test_zero_smoothing_never_draws_unseen_items_and_alpha_one_is_proportional() -> None:
    freq = np.array([0.0, 1.0, 3.0, 0.0])
    sampler = AliasSampler(freq, alpha=1.0, smoothing=0.0, seed=0)
    ids, log_q = sampler.draw(50_000)
    counts = np.bincount(ids.numpy(), minlength=4)
    assert counts[0] == counts[3] == 0
    assert abs(counts[2] / counts[1] - 3.0) < 0.15
    assert torch.isinf(sampler.log_q[0]) and torch.isfinite(log_q).all()


def test_seeded_and_resumable() -> None:
    freq = np.arange(50, dtype=float)
    a, b = AliasSampler(freq, seed=3), AliasSampler(freq, seed=3)
    assert torch.equal(a.draw(100)[0], b.draw(100)[0])
    state = a.get_state()
    first = a.draw(10)[0]
    a.set_state(state)
    assert torch.equal(a.draw(10)[0], first)
    assert not torch.equal(AliasSampler(freq, seed=4).draw(100)[0], AliasSampler(freq, seed=3).draw(100)[0])


def test_bad_weights_raise() -> None:
    for bad in (np.array([]), np.array([1.0, -1.0]), np.array([np.nan, 1.0]), np.zeros((2, 2))):
        with pytest.raises(SamplerError):
            AliasSampler(bad)
    with pytest.raises(SamplerError, match="all sampler weights are 0"):
        AliasSampler(np.zeros(3), smoothing=0.0)


def test_draw_cost_does_not_grow_with_the_catalog() -> None:
    """O(1) per draw: 200k draws from 1M items cost about what they cost from 10 items."""
    small = AliasSampler(np.arange(10, dtype=float))
    big = AliasSampler(np.random.default_rng(0).zipf(1.5, 1_000_000).astype(float))
    assert big.n_items == 1_000_000

    def best_of(s: AliasSampler) -> float:
        times = []
        for _ in range(5):
            t = time.perf_counter()
            s.draw(200_000)
            times.append(time.perf_counter() - t)
        return min(times)

    t_small, t_big = best_of(small), best_of(big)
    # a binary search (O(log n)) would be ~20 lookups per draw; allow cache effects and a noisy machine
    assert t_big < 6 * t_small + 0.02, (t_small, t_big)


def test_log_inclusion_is_log_q_plus_a_constant_for_rare_items_and_saturates() -> None:
    freq = np.concatenate([np.ones(10_000), [1e7]])
    sampler = AliasSampler(freq, alpha=1.0, smoothing=0.0)
    incl = sampler.log_inclusion(100)
    rare = incl[:-1] - sampler.log_q[:-1]
    assert float(rare.max() - rare.min()) < 1e-4 and abs(float(rare[0]) - math.log(100)) < 0.05
    assert abs(float(incl[-1])) < 1e-6  # drawn almost surely: no correction
    q = sampler.log_q.double().exp()
    torch.testing.assert_close(incl.double().exp(), 1 - (1 - q) ** 100, rtol=1e-4, atol=1e-9)
