"""``hrnn-research warm-start``: warm-start vs full nightly retraining on a rolling daily replay (issue 19).

The ``rolling`` protocol with daily frames (``frame_seconds`` 86,400): the test period after the cut T is cut
into days; the model that scores day k may use every event before day k's start (``PROTOCOLS.md``). Two
lines of nightly models, each retrained before every day on the events before that day:

* ``full``: HRNN-meta trained from scratch (the product's training: ``train.epochs`` with early stopping);
* ``warm``: the previous day's warm model fine-tuned on the same data (``train(..., init_from=...)``,
  ``hrnn_core.train.warm``), at most ``retrain.warm_epochs`` epochs with the same early-stopping rule; a full
  retrain replaces it every ``retrain.full_every_days`` days, as the nightly retrain does (day 0: both lines
  start from the same full model). The replay promotes every warm model (the retrain's gate, and its
  fallback to full after a failed gate, are not simulated here).

Per day: each line's training wall time (``HRNNScorer.fit``: features, encoding, epochs, validation) and
NDCG@10 / Recall@10 on that day's events; over all days: the paired test of warm vs full on the pooled
per-event NDCG@10 and Recall@10 (whole users resampled). Each day's trainings are saved in the work folder,
so the replay runs a few days per invocation (``--max-seconds``) and continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from hrnn_core.cli.options import ConfigOpt, DataDirOpt, cli_config, guard
from hrnn_core.errors import HrnnError
from research.experiments import dataset_snapshot, write_report

DAY = 86_400.0
METRICS = ("ndcg@10", "recall@10")
# the drifting synthetic stream of the trend experiment, over 10 days so that daily frames exist
SYNTH_DRIFT = {"n_users": 3000, "n_items": 1000, "n_events": 60_000, "n_genres": 20, "days": 10.0,
               "drift_amplitude": 3.0, "cold_items_fraction": 0.2, "seed": 0}


class WarmStartExperimentError(HrnnError):
    """The replay cannot run with these inputs."""


def _snapshot(cfg, dataset: str, path: Path | None) -> Path:
    if dataset == "synth-drift":
        from research.synth import synthetic_snapshot  # noqa: PLC0415

        return synthetic_snapshot(Path(cfg.paths.data_dir) / "warm-start-synth-drift", **SYNTH_DRIFT)
    return dataset_snapshot(cfg, dataset, path)


def _rolling(snapshot: Path, test_fraction: float):
    """The rolling split with daily frames; seen items leave the ranking unless owners repeat items (the
    retrain's rule, ``hrnn_core.retrain._split``)."""
    from hrnn_core.evaluation.protocols import build_split  # noqa: PLC0415
    from hrnn_core.evaluation.splits import SnapshotData, repeat_share  # noqa: PLC0415
    from hrnn_core.train.trainer import EXCLUDE_SEEN_MAX_REPEATS  # noqa: PLC0415

    data = SnapshotData.load(snapshot)
    params = {"test_fraction": test_fraction, "frame_seconds": DAY, "valid_fraction": 0.1}
    split = build_split("rolling", data, **params)
    if repeat_share(split.train) > EXCLUDE_SEEN_MAX_REPEATS:
        split = build_split("rolling", data, **params, exclude_seen=False)
    return data, split


def _fit(cfg, data, frame_start: float, run_dir: Path, init_from: Path | None, seed: int):
    """One nightly training on the events before ``frame_start``: (the fitted scorer, its wall seconds); warm
    (``init_from``) with the product's warm-start settings (``hrnn_core.retrain.warm_train_config``)."""
    from hrnn_core.evaluation.harness import train_data  # noqa: PLC0415
    from hrnn_core.evaluation.hrnn_scorer import HRNNScorer  # noqa: PLC0415
    from hrnn_core.evaluation.protocols import build_split  # noqa: PLC0415
    from hrnn_core.retrain import warm_train_config  # noqa: PLC0415

    sub = build_split("temporal", data, cut_time=frame_start, valid_fraction=0.0)
    train = dataclasses.replace(cfg.train, progress=False)
    if init_from is not None:
        train = warm_train_config(train, cfg.retrain)
    shutil.rmtree(run_dir, ignore_errors=True)
    scorer = HRNNScorer(model=cfg.model, train=train, device=cfg.train.device, run_dir=run_dir / "train",
                        init_from=init_from)
    tdata = train_data(sub, "train", seed, run_dir / "data")
    started = time.perf_counter()
    scorer.fit(tdata)
    return scorer, time.perf_counter() - started


def _score(scorer, frame, n_items: int) -> tuple[dict, dict]:
    from hrnn_core.evaluation.harness import score_cases  # noqa: PLC0415

    acc, _ = score_cases(scorer, frame.cases, n_items)
    summary = acc.summary()
    return {m: float(summary[m]) for m in METRICS}, {m: acc.per_event(m) for m in METRICS}


def _best(run_dir: Path) -> Path:
    best = run_dir / "train" / "best.pt"
    return best if best.exists() else run_dir / "train" / "last.pt"


def replay(cfg, snapshot: Path, work: Path, *, n_days: int, test_fraction: float, max_seconds: float,
           seed: int = 0, say=print) -> dict:
    """Run the replay's next days (state in ``work/state.json``) until ``n_days`` are done or ``max_seconds``
    would be passed by one more day (estimated from the slowest day so far; one day at least); the state."""
    data, split = _rolling(snapshot, test_fraction)
    frames = split.frames[: n_days + 1]
    if len(frames) < 2:
        raise WarmStartExperimentError(f"{len(split.frames)} daily test frames: need 2 or more; raise --test-fraction")
    work.mkdir(parents=True, exist_ok=True)
    state_path = work / "state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {
        "snapshot_id": data.snapshot_id, "protocol": split.describe(), "days": []}
    started, slowest = time.perf_counter(), max([d.get("seconds", 0.0) for d in state["days"]] + [0.0])
    first = len(state["days"])  # every call runs at least one day
    for k in range(len(state["days"]), len(frames)):
        if k != first and time.perf_counter() - started + slowest > max_seconds:
            say(f"stopping before day {k}: the time budget ({max_seconds:.0f} s) would be passed")
            break
        t0, frame = time.perf_counter(), frames[k]
        say(f"day {k}: {len(frame.cases):,} test events; full retrain on the events before {frame.start:.0f} ...")
        full, full_s = _fit(cfg, data, frame.start, work / f"full-{k}", None, seed)
        day = {"day": k, "start": frame.start, "n_events": len(frame.cases),
               "full": {"fit_seconds": full_s, "epochs": len(full.history)}}
        day["full"]["metrics"], per_full = _score(full, frame, split.n_items)
        base = state["days"][-1]["warm"]["full_base"] if state["days"] else frame.start
        if k == 0 or frame.start - base >= cfg.retrain.full_every_days * DAY:  # the schedule: the full model
            day["warm"] = {**day["full"], "mode": "full", "full_base": frame.start}
            per_warm = per_full
        else:
            say(f"day {k}: warm start from day {k - 1}'s warm model ...")
            warm, warm_s = _fit(cfg, data, frame.start, work / f"warm-{k}", _best(work / f"warm-{k - 1}"), seed)
            day["warm"] = {"fit_seconds": warm_s, "epochs": len(warm.history), "mode": "warm", "full_base": base}
            day["warm"]["metrics"], per_warm = _score(warm, frame, split.n_items)
        if day["warm"]["mode"] == "full":  # the next warm start begins from this day's full model
            shutil.rmtree(work / f"warm-{k}", ignore_errors=True)
            shutil.copytree(work / f"full-{k}" / "train", work / f"warm-{k}" / "train")
        owners = frame.cases.batch(np.arange(len(frame.cases)))["owners"]
        np.savez_compressed(work / f"day-{k}.npz", owners=owners, **{f"full_{m}": v for m, v in per_full.items()},
                            **{f"warm_{m}": v for m, v in per_warm.items()})
        day["seconds"] = time.perf_counter() - t0
        slowest = max(slowest, day["seconds"])
        state["days"].append(day)
        state_path.write_text(json.dumps(state, indent=2, default=float))
        say(f"day {k}: full {full_s:.0f} s ndcg@10 {day['full']['metrics']['ndcg@10']:.4f} | "
            f"{day['warm']['mode']} {day['warm']['fit_seconds']:.0f} s ndcg@10 {day['warm']['metrics']['ndcg@10']:.4f}")
    state["frames_available"] = len(split.frames)
    return state


def _pooled(days: list[dict], work: Path) -> dict:
    """Time sums and ratio, per-event means and the paired tests of warm vs full, pooled over ``days``."""
    from hrnn_core.evaluation.metrics import paired_test  # noqa: PLC0415

    arrays = [np.load(work / f"day-{d['day']}.npz") for d in days]
    owners = np.concatenate([a["owners"] for a in arrays])
    tests = {m: paired_test(np.concatenate([a[f"warm_{m}"] for a in arrays]),
                            np.concatenate([a[f"full_{m}"] for a in arrays]), clusters=owners) for m in METRICS}
    means = {line: {m: float(np.mean(np.concatenate([a[f"{line}_{m}"] for a in arrays]))) for m in METRICS}
             for line in ("full", "warm")}
    full_s = sum(d["full"]["fit_seconds"] for d in days)
    warm_s = sum(d["warm"]["fit_seconds"] for d in days)
    return {"days": [d["day"] for d in days], "n_days": len(days), "n_events": int(len(owners)),
            "n_owners": int(len(np.unique(owners))), "full_fit_seconds": full_s, "warm_fit_seconds": warm_s,
            "time_ratio_full_over_warm": full_s / max(warm_s, 1e-9), "mean_per_event": means,
            "paired_test_warm_minus_full": tests}


def summarize(state: dict, work: Path, config: dict) -> dict:
    """Per-day lines; over the days after day 0 (where the lines may differ): the summed training times and
    their ratio, the pooled paired tests; the same over the nights the warm line trained warm only (the
    scheduled full retrains, where both lines are the same model, left out)."""
    days = [d for d in state["days"] if d["day"] > 0]
    if not days:
        raise WarmStartExperimentError("no replay day after day 0 is done yet; run the replay first")
    warm_days = [d for d in days if d["warm"]["mode"] == "warm"]
    return {**{k: v for k, v in state.items() if k != "days"}, "config": config, "days": state["days"],
            "scheduled_full_days": [d["day"] for d in days if d["warm"]["mode"] == "full"],
            "over_days_after_day_0": _pooled(days, work),
            "over_warm_nights": _pooled(warm_days, work) if warm_days else None}


def _validation_frames(data, test_cut: float, n_days: int, test_fraction: float):
    """The ``n_days + 1`` daily frames just before the test period's cut (validation frames: no test event),
    as a rolling split cut ``n_days + 1`` days before it, its horizon ending at the test cut."""
    from hrnn_core.evaluation.protocols import build_split  # noqa: PLC0415
    from hrnn_core.evaluation.splits import repeat_share  # noqa: PLC0415
    from hrnn_core.train.trainer import EXCLUDE_SEEN_MAX_REPEATS  # noqa: PLC0415

    span = (n_days + 1) * DAY
    params = {"cut_time": test_cut - span, "horizon": span, "frame_seconds": DAY, "valid_fraction": 0.1}
    split = build_split("rolling", data, **params)
    if repeat_share(split.train) > EXCLUDE_SEEN_MAX_REPEATS:
        split = build_split("rolling", data, **params, exclude_seen=False)
    if max(f.end for f in split.frames) > test_cut + 1e-6:
        raise WarmStartExperimentError("a validation frame reaches into the test period")
    return split


def tune(cfg, snapshot: Path, work: Path, *, variants: list[tuple], n_days: int, test_fraction: float,
         seed: int = 0, with_full: bool = False, say=print) -> dict:
    """Warm-start settings on validation frames only: one full model trained before the first of the
    ``n_days + 1`` days before the test cut, then per variant (the retrain's ``warm_epochs``, ``warm_lr_scale``,
    ``warm_shrink``, ``warm_new_event_weight`` and the warm fits' ``train.min_lr_ratio``) a chain of warm
    starts over the next ``n_days`` days (each from the previous day's warm model, as the replay does),
    NDCG@10 / Recall@10 per day. ``with_full``: also a full retrain from scratch each day (``full``, the replay's
    full line on validation days: the reference a warm setting should come within noise of). Resumable
    (``work/tune.json``)."""
    data, test_split = _rolling(snapshot, test_fraction)
    split = _validation_frames(data, test_split.cut_time, n_days, test_fraction)
    frames = split.frames
    if len(frames) < 2:
        raise WarmStartExperimentError(f"{len(frames)} non-empty validation days; need 2 or more")
    work.mkdir(parents=True, exist_ok=True)
    state_path = work / "tune.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {
        "snapshot_id": data.snapshot_id, "test_cut": test_split.cut_time, "protocol": split.describe(), "runs": {}}

    def save() -> None:
        state_path.write_text(json.dumps(state, indent=2, default=float))

    if "base" not in state["runs"]:
        say(f"full model on the events before validation day 0 ({frames[0].start:.0f}) ...")
        full, secs = _fit(cfg, data, frames[0].start, work / "base", None, seed)
        per_day = []
        for k, frame in enumerate(frames):  # the base model unretrained: the 'no retrain' reference
            metrics, per = _score(full, frame, split.n_items)
            np.savez_compressed(work / f"base-day-{k}.npz", owners=frame.cases.batch(np.arange(len(frame.cases)))["owners"],
                                **per)
            per_day.append({"day": k, "start": frame.start, "n_events": len(frame.cases), "metrics": metrics})
        state["runs"]["base"] = {"fit_seconds": secs, "epochs": len(full.history), "days": per_day}
        save()
    if with_full:
        run = state["runs"].setdefault("full", {"days": []})
        for k in range(len(run["days"]) + 1, len(frames)):
            say(f"full: validation day {k} ...")
            full, secs = _fit(cfg, data, frames[k].start, work / f"full-{k}", None, seed)
            metrics, per = _score(full, frames[k], split.n_items)
            np.savez_compressed(work / f"full-day-{k}.npz", **per)
            run["days"].append({"day": k, "fit_seconds": secs, "epochs": len(full.history), "metrics": metrics})
            save()
            say(f"full: day {k} ndcg@10 {metrics['ndcg@10']:.4f}")
    for epochs, scale, shrink, new_w, min_lr in variants:
        name = variant_name(epochs, scale, shrink, new_w, min_lr)
        run = state["runs"].setdefault(name, {"warm_epochs": epochs, "warm_lr_scale": scale, "shrink": shrink,
                                              "new_event_weight": new_w, "min_lr_ratio": min_lr, "days": []})
        # the product's warm settings (hrnn_core.retrain.warm_train_config), and the cosine floor of the warm fits
        vcfg = dataclasses.replace(
            cfg, retrain=dataclasses.replace(cfg.retrain, warm_epochs=epochs, warm_lr_scale=scale, warm_shrink=shrink,
                                             warm_new_event_weight=new_w),
            train=dataclasses.replace(cfg.train, min_lr_ratio=cfg.train.min_lr_ratio if min_lr is None else min_lr))
        for k in range(len(run["days"]) + 1, len(frames)):
            start = work / "base" if k == 1 else work / f"{name}-{k - 1}"
            say(f"{name}: validation day {k} ...")
            warm, secs = _fit(vcfg, data, frames[k].start, work / f"{name}-{k}", _best(start), seed)
            metrics, per = _score(warm, frames[k], split.n_items)
            np.savez_compressed(work / f"{name}-day-{k}.npz", **per)
            run["days"].append({"day": k, "fit_seconds": secs, "epochs": len(warm.history), "metrics": metrics})
            save()
            say(f"{name}: day {k} ndcg@10 {metrics['ndcg@10']:.4f}")
    return state


def summarize_tuning(state: dict, work: Path, variants: list[tuple], config: dict) -> dict:
    """Per variant: pooled NDCG@10 / Recall@10 over validation days 1..n, paired tests against the current
    setting (the first variant) and the unretrained base; the choice: the highest pooled NDCG@10."""
    from hrnn_core.evaluation.metrics import paired_test  # noqa: PLC0415

    n = len(state["runs"]["base"]["days"])
    owners = np.concatenate([np.load(work / f"base-day-{k}.npz")["owners"] for k in range(1, n)])
    per = {"base": {m: np.concatenate([np.load(work / f"base-day-{k}.npz")[m] for k in range(1, n)]) for m in METRICS}}
    names = [variant_name(*v) for v in variants]
    for name in names:
        per[name] = {m: np.concatenate([np.load(work / f"{name}-day-{k}.npz")[m] for k in range(1, n)]) for m in METRICS}
    table = {}
    for name in ["base", *names]:
        run = state["runs"][name]
        table[name] = {**{k: v for k, v in run.items() if k != "days"}, "days": run["days"],
                       "mean_per_event": {m: float(per[name][m].mean()) for m in METRICS}}
        if name != "base":
            table[name]["warm_fit_seconds"] = sum(d["fit_seconds"] for d in run["days"])
            table[name]["paired_test_vs_current"] = {m: paired_test(per[name][m], per[names[0]][m], clusters=owners)
                                                     for m in METRICS}
            table[name]["paired_test_vs_no_retrain"] = {m: paired_test(per[name][m], per["base"][m], clusters=owners)
                                                        for m in METRICS}
    if "full" in state["runs"] and len(state["runs"]["full"]["days"]) == n - 1:  # the reference, never chosen
        per["full"] = {m: np.concatenate([np.load(work / f"full-day-{k}.npz")[m] for k in range(1, n)]) for m in METRICS}
        run = state["runs"]["full"]
        table["full"] = {"days": run["days"], "full_fit_seconds": sum(d["fit_seconds"] for d in run["days"]),
                         "mean_per_event": {m: float(per["full"][m].mean()) for m in METRICS}}
        for name in names:
            table[name]["paired_test_vs_full"] = {m: paired_test(per[name][m], per["full"][m], clusters=owners)
                                                  for m in METRICS}
            table[name]["time_ratio_full_over_warm"] = table["full"]["full_fit_seconds"] / max(
                table[name]["warm_fit_seconds"], 1e-9)
    chosen = max(names, key=lambda k: table[k]["mean_per_event"]["ndcg@10"])
    return {**{k: v for k, v in state.items() if k != "runs"}, "config": config, "n_validation_days": n - 1,
            "n_validation_events": int(len(owners)), "current": names[0], "variants": table,
            "rule": "highest pooled validation NDCG@10 over validation days 1..n", "chosen": chosen,
            "chosen_settings": {k: table[chosen].get(k) for k in ("warm_epochs", "warm_lr_scale", "shrink",
                                                                  "new_event_weight", "min_lr_ratio")}}


def chart(report: dict, path: Path, title: str) -> None:
    """Two panels, one line per retraining mode: training seconds and NDCG@10 per replay day (dotted: the
    warm line's scheduled full retrains)."""
    from matplotlib.figure import Figure  # noqa: PLC0415

    days = report["days"]
    xs = [d["day"] for d in days]
    fig = Figure(figsize=(8, 6))
    top, bottom = fig.subplots(2, 1, sharex=True)
    for line, style in (("full", "o-"), ("warm", "s-")):
        top.plot(xs, [d[line]["fit_seconds"] for d in days], style, label=line)
        bottom.plot(xs, [d[line]["metrics"]["ndcg@10"] for d in days], style, label=line)
    for k in report.get("scheduled_full_days", []):  # the weekly full retrain: both lines the same model
        for ax in (top, bottom):
            ax.axvline(k, color="grey", linestyle=":", linewidth=1)
        top.annotate("scheduled full", (k, 0), xycoords=("data", "axes fraction"), fontsize=8,
                     xytext=(3, 3), textcoords="offset points")
    top.set_ylabel("training wall time (s)")
    bottom.set_ylabel("NDCG@10 of the day")
    bottom.set_xticks(xs)
    bottom.set_xlabel("replay day (day 0: both lines are the same full model)")
    top.set_title(title)
    top.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def warm_start_command(
    dataset: Annotated[str, typer.Option(help="ml-100k | synth-drift | another adapter's dataset (with --path).")],
    work: Annotated[Path, typer.Option(help="Work folder: the replay's state and trainings (resumable).")],
    output: Annotated[Path, typer.Option(help="Report JSON (the chart beside it, .png).")],
    days: Annotated[int, typer.Option(help="Replay days after day 0.")] = 4,
    test_fraction: Annotated[float, typer.Option(help="Share of events in the rolling test period.")] = 0.1,
    max_seconds: Annotated[float, typer.Option(help="Stop before a day that would pass this wall time.")] = 540.0,
    path: Annotated[Optional[Path], typer.Option(help="Raw dataset folder (datasets other than ml-100k).")] = None,
    snapshot: Annotated[Optional[Path], typer.Option(help="An existing snapshot folder (skips the ingest).")] = None,
    seed: Annotated[int, typer.Option(help="Training seed.")] = 0,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Rolling daily replay: warm-start vs full nightly retraining, training time and NDCG@10 / Recall@10."""
    if days < 1 or not 0 < test_fraction < 1 or max_seconds <= 0:
        raise WarmStartExperimentError("--days must be >= 1, --test-fraction in (0, 1), --max-seconds > 0")
    cfg = cli_config(config, None, data_dir)
    snap = Path(snapshot) if snapshot is not None else _snapshot(cfg, dataset, path)
    state = replay(cfg, snap, work, n_days=days, test_fraction=test_fraction, max_seconds=max_seconds, seed=seed,
                   say=lambda m: typer.echo(m, err=True))
    if len(state["days"]) < 2:
        typer.echo(f"{len(state['days'])} day(s) done; run the command again to continue")
        return
    config_used = {"model": dataclasses.asdict(cfg.model), "retrain": dataclasses.asdict(cfg.retrain),
                   "train": {k: v for k, v in dataclasses.asdict(cfg.train).items() if k != "event_type_weights"},
                   "dataset": dataset, "test_fraction": test_fraction, "seed": seed}
    report = summarize(state, work, config_used)
    write_report(output, report)
    chart(report, output.with_suffix(".png"), f"warm start vs full retrain, {dataset}, rolling daily replay")
    over = report["over_days_after_day_0"]
    typer.echo(f"days 1-{over['n_days']}: full {over['full_fit_seconds']:.0f} s, warm {over['warm_fit_seconds']:.0f} s "
               f"({over['time_ratio_full_over_warm']:.1f}x); NDCG@10 warm - full "
               f"{over['paired_test_warm_minus_full']['ndcg@10']['mean_diff']:+.4f} "
               f"(p {over['paired_test_warm_minus_full']['ndcg@10']['p_value']:.3f})")


def variant_name(epochs: int, scale: float, shrink: float = 1.0, new_w: float = 1.0, min_lr: float | None = None) -> str:
    return (f"warm_e{epochs}_lr{scale:g}" + (f"_s{shrink:g}" if shrink != 1.0 else "")
            + (f"_w{new_w:g}" if new_w != 1.0 else "") + (f"_m{min_lr:g}" if min_lr is not None else ""))


# retrain.warm_epochs, warm_lr_scale, warm_shrink, warm_new_event_weight; train.min_lr_ratio of the warm fits
VARIANT_FORMAT = "EPOCHS:LR_SCALE[:SHRINK[:NEW_EVENT_WEIGHT[:MIN_LR_RATIO]]]"


def _parse_variants(text: str) -> list[tuple]:
    try:
        parts = [[float(x) for x in v.split(":")] for v in text.split(",")]
        out = [(int(p[0]), *(p[1:] + [1.0, 1.0, None][len(p) - 2:])) for p in parts if 2 <= len(p) <= 5]
    except (ValueError, OverflowError) as err:  # not numbers, nan or inf epochs
        raise WarmStartExperimentError(f"--variants: {VARIANT_FORMAT},... expected, got {text!r}") from err
    whole = all(p[0] == int(p[0]) for p in parts)
    if len(out) != len(parts) or not out or not whole or any(
            e < 1 or not 0 < s <= 4 or not 0 < k <= 1 or w <= 0 or (m is not None and not 0 < m <= 1)
            for e, s, k, w, m in out):
        raise WarmStartExperimentError(f"--variants: {VARIANT_FORMAT} with epochs >= 1, learning-rate scale in "
                                       "(0, 4], shrink and min-LR ratio in (0, 1], new-event weight > 0")
    return out


def warm_start_tune_command(
    dataset: Annotated[str, typer.Option(help="ml-100k | synth-drift | another adapter's dataset (with --path).")],
    work: Annotated[Path, typer.Option(help="Work folder: the tuning's state and trainings (resumable).")],
    output: Annotated[Path, typer.Option(help="Report JSON: every variant's validation metrics and the choice.")],
    variants: Annotated[str, typer.Option(help=f"{VARIANT_FORMAT} (the fine-tune's peak LR = train.lr x LR_SCALE; "
                                                "the retrain's warm_shrink and warm_new_event_weight; the warm fits' "
                                                "train.min_lr_ratio); the first is the current setting.")]
    = "3:1,3:0.3,5:1,5:0.3,8:0.3",
    days: Annotated[int, typer.Option(help="Validation days of warm starts (after the base model's day).")] = 3,
    with_full: Annotated[bool, typer.Option(help="Also retrain from scratch each validation day (the reference).")]
    = False,
    test_fraction: Annotated[float, typer.Option(help="Share of events in the rolling test period (not read).")] = 0.1,
    path: Annotated[Optional[Path], typer.Option(help="Raw dataset folder (datasets other than ml-100k).")] = None,
    snapshot: Annotated[Optional[Path], typer.Option(help="An existing snapshot folder (skips the ingest).")] = None,
    seed: Annotated[int, typer.Option(help="Training seed.")] = 0,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Choose retrain.warm_epochs and the fine-tune's learning rate on the days just before the test period."""
    if days < 1 or not 0 < test_fraction < 1:
        raise WarmStartExperimentError("--days must be >= 1 and --test-fraction in (0, 1)")
    chosen_variants = _parse_variants(variants)
    cfg = cli_config(config, None, data_dir)
    snap = Path(snapshot) if snapshot is not None else _snapshot(cfg, dataset, path)
    state = tune(cfg, snap, work, variants=chosen_variants, n_days=days, test_fraction=test_fraction, seed=seed,
                 with_full=with_full,
                 say=lambda m: typer.echo(m, err=True))
    config_used = {"model": dataclasses.asdict(cfg.model), "retrain": dataclasses.asdict(cfg.retrain),
                   "train": {k: v for k, v in dataclasses.asdict(cfg.train).items() if k != "event_type_weights"},
                   "dataset": dataset, "test_fraction": test_fraction, "seed": seed}
    report = summarize_tuning(state, work, chosen_variants, config_used)
    write_report(output, report)
    for name, row in report["variants"].items():
        typer.echo(f"{name}: validation NDCG@10 {row['mean_per_event']['ndcg@10']:.4f} "
                   f"Recall@10 {row['mean_per_event']['recall@10']:.4f}")
    typer.echo(f"chosen: {report['chosen']}")


def register(app: typer.Typer) -> None:
    app.command("warm-start")(guard(warm_start_command))
    app.command("warm-start-tune")(guard(warm_start_tune_command))
