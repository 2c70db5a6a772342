"""The warm-start replay (research.experiments.warm_start): daily frames, the warm line's schedule, resuming."""

from __future__ import annotations

import json

import pytest

from hrnn_core.config import load_config
from research.synth import synthetic_snapshot
from research.experiments.warm_start import (WarmStartExperimentError, _parse_variants, chart, replay, summarize,
                                             summarize_tuning, tune)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_replay_trains_both_lines_follows_the_full_schedule_and_resumes(tmp_path) -> None:
    snap = synthetic_snapshot(tmp_path / "data", n_users=40, n_items=60, n_events=1500, n_genres=5, seed=5, days=10)
    cfg = load_config(overrides={
        "paths": {"data_dir": str(tmp_path / "data")}, "model": {"hidden_size": 16, "field_dim": 8, "input_size": 16},
        "train": {"epochs": 2, "batch_size": 8, "bptt": 8, "progress": False, "val_owners": 5, "threads": 1},
        "retrain": {"warm_epochs": 1, "full_every_days": 2}}, environ={})
    work = tmp_path / "work"
    state = replay(cfg, snap, work, n_days=3, test_fraction=0.4, max_seconds=1e-9)  # one day per call: resumes
    assert len(state["days"]) == 1
    state = replay(cfg, snap, work, n_days=3, test_fraction=0.4, max_seconds=1e9)
    days = state["days"]
    assert [d["day"] for d in days] == [0, 1, 2, 3]
    assert days[0]["warm"]["mode"] == "full" and days[1]["warm"]["mode"] == "warm"
    assert days[1]["warm"]["epochs"] == 1 and days[1]["full"]["epochs"] == 2
    assert days[2]["warm"]["mode"] == "full" and days[2]["warm"]["metrics"] == days[2]["full"]["metrics"]  # 2 days on
    assert days[3]["warm"]["mode"] == "warm" and days[3]["warm"]["full_base"] == days[2]["start"]
    report = summarize(state, work, {})
    over = report["over_days_after_day_0"]
    assert over["n_days"] == 3 and over["n_events"] == sum(d["n_events"] for d in days[1:])
    assert set(over["paired_test_warm_minus_full"]) == {"ndcg@10", "recall@10"}
    assert report["scheduled_full_days"] == [2] and over["days"] == [1, 2, 3]
    assert report["over_warm_nights"]["days"] == [1, 3]
    assert report["over_warm_nights"]["n_events"] == days[1]["n_events"] + days[3]["n_events"]
    chart(report, tmp_path / "chart.png", "test")
    assert (tmp_path / "chart.png").stat().st_size > 0
    assert json.loads((work / "state.json").read_text())["days"] == json.loads(json.dumps(days, default=float))


def test_tuning_reads_only_the_days_before_the_test_period_and_chooses_the_best_variant(tmp_path) -> None:
    snap = synthetic_snapshot(tmp_path / "data", n_users=40, n_items=60, n_events=1500, n_genres=5, seed=5, days=10)
    cfg = load_config(overrides={
        "paths": {"data_dir": str(tmp_path / "data")}, "model": {"hidden_size": 16, "field_dim": 8, "input_size": 16},
        "train": {"epochs": 2, "batch_size": 8, "bptt": 8, "progress": False, "val_owners": 5, "threads": 1}},
        environ={})
    work, variants = tmp_path / "tune", _parse_variants("1:1,2:0.3:0.5:2:1")
    state = tune(cfg, snap, work, variants=variants, n_days=2, test_fraction=0.3)
    base_days = state["runs"]["base"]["days"]
    assert len(base_days) == 3 and base_days[-1]["start"] + 86_400 <= state["test_cut"]  # validation frames only
    assert [d["epochs"] for d in state["runs"]["warm_e1_lr1"]["days"]] == [1, 1]
    assert [d["day"] for d in state["runs"]["warm_e2_lr0.3_s0.5_w2_m1"]["days"]] == [1, 2]
    state = tune(cfg, snap, work, variants=variants, n_days=2, test_fraction=0.3, with_full=True)  # resumed
    assert [d["epochs"] for d in state["runs"]["full"]["days"]] == [2, 2]  # the reference: from scratch each day
    report = summarize_tuning(state, work, variants, {})
    assert "paired_test_vs_full" in report["variants"]["warm_e1_lr1"] and report["variants"]["full"]["full_fit_seconds"] > 0
    means = {k: v["mean_per_event"]["ndcg@10"] for k, v in report["variants"].items() if k not in ("base", "full")}
    assert report["chosen"] == max(means, key=means.get) and report["current"] == "warm_e1_lr1"
    assert report["chosen_settings"] == {k: report["variants"][report["chosen"]][k]
                                         for k in ("warm_epochs", "warm_lr_scale", "shrink",
                                                   "new_event_weight", "min_lr_ratio")}
    with pytest.raises(WarmStartExperimentError):
        _parse_variants("5:1:0")  # a shrink of 0 would erase the champion
    with pytest.raises(WarmStartExperimentError):
        _parse_variants("5.5:1")  # epochs are whole


def test_the_choice_over_streams_takes_the_best_mean_among_variants_run_on_every_stream() -> None:
    from research.tuning.warm_start_choice import choose  # noqa: PLC0415

    def report(ndcg: dict[str, float]) -> dict:
        test = {"mean_diff": 0.0, "ci_low": -0.01, "ci_high": 0.01, "p_value": 1.0}
        return {"variants": {name: {"mean_per_event": {"ndcg@10": v, "recall@10": v}, "warm_epochs": 5,
                                    "warm_lr_scale": 1.0, "days": [], "paired_test_vs_full": {"ndcg@10": test}}
                             for name, v in ndcg.items()}}
    out = choose({"a": report({"full": 0.3, "x": 0.20, "y": 0.30, "only_a": 0.9}),
                  "b": report({"full": 0.3, "x": 0.30, "y": 0.21})})
    assert set(out["variants"]) == {"x", "y"}  # only_a ran on one stream; full is the reference
    assert out["chosen"] == "y" and out["variants"]["y"]["mean_ndcg@10"] == pytest.approx(0.255)
    assert out["chosen_settings"] == {"warm_epochs": 5, "warm_lr_scale": 1.0}
