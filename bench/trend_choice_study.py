"""Which of the trainer's validation events should ``model.trend_auto`` choose the trend term on?

Validation only (test cases are never scored). Per seed: fit HRNN-meta with the shipped defaults on
the protocol's ``valid_train`` part (the tuning recipe of ``bench/tune_hrnn.py``), then score the
same network with every trend choice ``model.trend_auto`` tries (off, ``trend_weight`` x each window
of ``TREND_WINDOW_GRID``) on

* the trainer's own validation events (each validation owner's last event), all of them and only the
  latest fraction by target time (``--fractions``), as ``hrnn_core.train.choose_trend`` would see them;
* the protocol's validation cases (``split.valid``), the events the choice should do well on.

The JSON keeps every number; the printed table says, per fraction, which choice the trainer would make
and what that choice scores on the protocol's validation against the shipped fixed 30-day window.

    .venv/bin/python bench/trend_choice_study.py --snapshot data/snapshots/<id> --protocol temporal --seeds 0,1 \
        [--params '{"exclude_seen": false}'] [--config FILE.toml] --out bench/results/trend_choice_<d>_<p>.json

``--config`` (a TOML file, as ``hrnn --config`` reads) sets the model and training config; the default is
the current shipped one. The recorded runs used ``bench/configs/defaults-2026-12-04.toml``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hrnn_core.config import INFERENCE_MIX_FALLBACK, ModelConfig, TrainConfig, load_config
from hrnn_core.evaluate import score_cases, train_data
from hrnn_core.hrnn_scorer import HRNNScorer
from hrnn_core.protocols import SnapshotData, build_split
from hrnn_core.train import evaluate, prepare_data, resolve_exclude_seen, snapshot_times, trend_choices
from hrnn_core.trend import WindowedPopularity


def choices(weight: float, window_seconds: float) -> list[tuple[str, float, float]]:
    """(label, weight, window seconds) of each choice ``choose_trend`` tries, in its order."""
    return [("off" if w == 0 else f"{w:g}x{win / 3600:g}h", w, win) for w, win in trend_choices(weight, window_seconds)]


def latest(segments: np.ndarray, times: np.ndarray, fraction: float) -> np.ndarray:
    """The ceil(fraction * m) segments whose target (last event) is latest in time (ties: later index)."""
    m = len(segments)
    keep = max(1, int(np.ceil(fraction * m)))
    order = np.lexsort((segments[:, 1], times[segments[:, 1] - 1]))  # by target time, then index
    return segments[np.sort(order[m - keep:])]


def run_seed(split, seed: int, fractions: list[float], model_cfg: ModelConfig, train_cfg: TrainConfig,
             epochs: int | None = None) -> dict:
    train_cfg = dataclasses.replace(train_cfg, threads=1, progress=False, device="cpu")
    if epochs:  # a quick check of the script, not a study
        train_cfg = dataclasses.replace(train_cfg, epochs=epochs, min_epochs=0)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="trend-choice-") as work:
        data = train_data(split, "valid_train", seed, Path(work))
        scorer = HRNNScorer(model_cfg, train_cfg, device="cpu")
        t0 = time.perf_counter()
        scorer.fit(data)
        fit_s = time.perf_counter() - t0
        snap = data.snapshot_dir  # the folder the trainer read (valid_train: no early-stopping snapshot)
        cfg = dataclasses.replace(train_cfg, seed=seed)
        td = prepare_data(snap, model_cfg, cfg)  # the trainer's own split: seeded, so the same owners
        exclude_seen, _ = resolve_exclude_seen(cfg, td)
        times = snapshot_times(snap, len(td.events.target))
        model = scorer.model
        mix = INFERENCE_MIX_FALLBACK if model.cfg.inference_item_meta_mix is None else model.cfg.inference_item_meta_mix
        trainer: dict[str, dict[str, float]] = {}
        protocol: dict[str, float] = {}
        pops: dict[float, WindowedPopularity] = {}
        for label, w, win in choices(model_cfg.trend_weight, model_cfg.trend_window_seconds):
            trend = None
            if w > 0:
                pops[win] = WindowedPopularity(times, td.events.target.numpy(), model.n_items, window_seconds=win,
                                               bucket_seconds=3600.0, smoothing=model_cfg.trend_smoothing)
                trend = (w, pops[win], times)
            for f in fractions:
                segs = latest(td.val_segments, times, f)
                r = evaluate(model, td, segs, torch.device("cpu"), mix=mix, exclude_seen=exclude_seen, trend=trend)
                trainer.setdefault(f"{f:g}", {})[label] = r["ndcg@10"]
            scorer.trend_weight, scorer.trend_window_seconds = w, win
            acc, _ = score_cases(scorer, split.valid, split.n_items)
            protocol[label] = acc.summary()["ndcg@10"]
    val_times = times[td.val_segments[:, 1] - 1]
    return {"seed": seed, "fit_seconds": round(fit_s, 1), "trainer_val_events": len(td.val_segments),
            "trainer_val_time_range": [float(val_times.min()), float(val_times.max())],
            "trainer_val_ndcg@10": trainer, "protocol_valid_ndcg@10": protocol}


def summary(rows: list[dict], fractions: list[float], shipped: str) -> str:
    lines = [f"{'fraction':>9}{'seed':>6}  {'choice':<12}{'protocol valid':>15}{'shipped ' + shipped:>22}"]
    for f in fractions:
        got, ref = [], []
        for r in rows:
            tv = r["trainer_val_ndcg@10"][f"{f:g}"]
            pick = max(tv, key=lambda k: (tv[k], -list(tv).index(k)))  # the first of equal values
            got.append(r["protocol_valid_ndcg@10"][pick])
            ref.append(r["protocol_valid_ndcg@10"][shipped])
            lines.append(f"{f:>9g}{r['seed']:>6d}  {pick:<12}{got[-1]:>15.4f}{ref[-1]:>22.4f}")
        lines.append(f"{f:>9g}{'mean':>6}  {'':<12}{np.mean(got):>15.4f}{np.mean(ref):>22.4f}")
    best = [max(r["protocol_valid_ndcg@10"].items(), key=lambda kv: kv[1]) for r in rows]
    lines.append("best on protocol validation per seed: " + ", ".join(f"{k} {v:.4f}" for k, v in best))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--snapshot", type=Path, required=True)
    ap.add_argument("--protocol", default="temporal")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--params", default="{}", help="protocol parameters as JSON")
    ap.add_argument("--fractions", default="1,0.5,0.25,0.1", help="latest shares of the trainer's validation events")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--config", type=Path, default=None, help="TOML config (model/train sections); default: shipped")
    ap.add_argument("--epochs", type=int, default=None, help="cap the fit (a quick check of the script only)")
    args = ap.parse_args()
    fractions = [float(x) for x in args.fractions.split(",")]
    cfg = load_config(args.config, environ={})  # the file alone: no HRNN__* variables
    model_cfg, train_cfg = cfg.model, cfg.train
    split = build_split(args.protocol, SnapshotData.load(args.snapshot), **json.loads(args.params))
    report = json.loads(args.out.read_text()) if args.out.exists() else {"runs": []}
    report.update({"snapshot": str(args.snapshot), "protocol": args.protocol, "params": json.loads(args.params),
                   "fractions": fractions, "model_config": dataclasses.asdict(model_cfg),
                   "config_file": str(args.config) if args.config else None})
    done = {r["seed"] for r in report["runs"]}
    for seed in (int(s) for s in args.seeds.split(",")):
        if seed in done:
            continue
        report["runs"].append(run_seed(split, seed, fractions, model_cfg, train_cfg, args.epochs))
        args.out.write_text(json.dumps(report, indent=1))
    shipped = f"{model_cfg.trend_weight:g}x{model_cfg.trend_window_seconds / 3600:g}h"
    print(summary(sorted(report["runs"], key=lambda r: r["seed"]), fractions, shipped))


if __name__ == "__main__":
    main()
