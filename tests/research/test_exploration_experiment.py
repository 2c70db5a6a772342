"""The exploration experiment (research.experiments.exploration): the closed loop on a tiny world, its paired
randomness, resuming, and the rule that chooses the default."""

from __future__ import annotations

import json

import numpy as np
import pytest

from research.experiments import exploration as ex

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_draws_are_the_same_for_every_weight_and_differ_by_day() -> None:
    s = ex.SimSettings()
    a, b = ex._draws(s, 0, 50, 20, day=3), ex._draws(s, 0, 50, 20, day=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[2], ex._draws(s, 0, 50, 20, day=4)[2])
    assert not np.array_equal(a[2], ex._draws(s, 1, 50, 20, day=3)[2])


def test_closed_loop_explores_only_with_a_weight_grows_the_data_and_resumes(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(ex, "SIM_WORLD", {**ex.SIM_WORLD, "n_users": 40, "n_items": 60, "n_events": 1_500})
    monkeypatch.setattr(ex, "SIM_MODEL", {"hidden_size": 16, "field_dim": 8, "input_size": 16})
    monkeypatch.setattr(ex, "SIM_TRAIN", {**ex.SIM_TRAIN, "epochs": 1, "min_epochs": 0, "batch_size": 8, "bptt": 8,
                                          "val_owners": 5})
    s = ex.SimSettings(sim_days=2, requests_per_day=30, warm_epochs=1, seeds=1)
    report = ex.simulate(tmp_path, s, (0.0, 8.0), say=lambda m: None)
    off, on = report["weights"]["0"], report["weights"]["8"]
    assert off["explored_impression_share"] == 0 < on["explored_impression_share"]
    assert off["impressions"] == on["impressions"] == 2 * 30 * s.k  # the same users ask (paired)
    assert off["reward_vs_weight_0"]["mean_diff"] == 0
    state = json.loads((tmp_path / "seed0" / "w8" / "state.json").read_text())
    assert len(state["days"]) == 2 and "train-1" in state["checkpoint"]  # day 1 ranked with the warm retrain
    again = ex.simulate(tmp_path, s, (0.0, 8.0), say=lambda m: None)  # resumed: nothing is redone
    assert again["weights"]["8"]["cumulative_expected_reward"] == on["cumulative_expected_reward"]
    assert ex.charts({"simulation": report, "dataset": "none"}, tmp_path / "charts")


def test_the_rule_takes_the_largest_weight_within_noise_on_both_sides() -> None:
    def sim(rewards):  # weight -> paired interval of the reward difference
        return {"weights": {f"{w:g}": {"weight": w, "reward_vs_weight_0": {"ci_low": lo, "ci_high": hi}}
                            for w, (lo, hi) in rewards.items()}}

    def cost(ndcg):  # weight -> paired interval of the validation NDCG@10 difference
        return {"valid": {"weights": {f"{w:g}": {"vs_weight_0": None if w == 0 else {"ci_low": lo, "ci_high": hi}}
                                      for w, (lo, hi) in ndcg.items()}}}

    rewards = {0.0: (0, 0), 1.0: (0.1, 0.2), 2.0: (-0.1, 0.1), 4.0: (-0.5, -0.2)}
    assert ex.choose(sim(rewards), cost({0.0: (0, 0), 1.0: (-0.01, 0.01), 2.0: (-0.02, 0.001),
                                         4.0: (-0.1, 0.1)}))["chosen"] == 2.0  # 4 loses reward
    assert ex.choose(sim(rewards), cost({0.0: (0, 0), 1.0: (-0.01, -0.001), 2.0: (-0.02, -0.01),
                                         4.0: (-0.1, -0.05)}))["chosen"] == 0.0  # every weight costs NDCG
