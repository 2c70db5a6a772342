"""Tune SASRec's default config on VALIDATION data only (never on test), as HRNN-meta's was (tune_hrnn.py).

For each protocol on an ml-100k snapshot: ``split = build_split(protocol, snapshot)``; every candidate fits
``SASRecScorer`` on the split's ``valid_train`` part (early stopping on the last event of up to 1,000 of its
owners, held out of training, as HRNN-meta's tuning did) and scores ``split.valid`` through the harness
(``score_cases``: full ranking, the protocol's seen-item exclusion). Test cases are never scored.

Candidates set fields of ``SASRecConfig`` on top of BASE (the paper's settings at d = 64); every other field
keeps its default. Results are cached per (protocol, candidate, seed) in the JSON, so an interrupted run
resumes; ``--force`` refits. One fit at a time, torch threads = 1 (shared 2-core machine). Each fit runs to
early stopping (``--max-seconds`` caps it: a bounded run, recorded as ``stopped_by_time``).

    .venv/bin/python research/tuning/tune_sasrec.py --snapshot data/snapshots/<id>             # every candidate
    .venv/bin/python research/tuning/tune_sasrec.py --snapshot ... --protocols temporal --only base,h128
    .venv/bin/python research/tuning/tune_sasrec.py --snapshot ... --only h128 --max-seconds 1500    # capped
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch

from hrnn_core.evaluation.harness import score_cases, train_data
from research.baselines.sasrec import SASRecConfig, SASRecScorer
from research.tuning.tune_hrnn import open_report, run_grid, table

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "tune_sasrec.json"

# The paper's settings (2 blocks, one head, dropout 0.2 for MovieLens, lr 1e-3) at d = 64; n from the data
# (max_len 0: the 90th percentile of training history lengths, capped at 200, the paper's n for MovieLens)
BASE = {"hidden": 64, "blocks": 2, "heads": 1, "dropout": 0.2, "lr": 1e-3, "max_len": 0}

# name -> overrides of BASE: one change at a time (the grid: hidden, blocks, dropout, lr, max_len)
GRID: dict[str, dict] = {
    "base": {},
    "h128": {"hidden": 128},
    "b1": {"blocks": 1},
    "drop0.5": {"dropout": 0.5},
    "lr3e-3": {"lr": 3e-3},
    "n50": {"max_len": 50},
    # stage 2, around lr 3e-3 (stage 1's lr 1e-3 was still climbing when stopped: docs/evaluation/sasrec.md)
    "lr3e-3_n50": {"lr": 3e-3, "max_len": 50},
    "lr3e-3_h128": {"lr": 3e-3, "hidden": 128},
    "lr3e-3_b1": {"lr": 3e-3, "blocks": 1},
    "lr3e-3_drop0.5": {"lr": 3e-3, "dropout": 0.5},
    # stage 3 (uncapped fits): a larger step, and larger batches at lr 3e-3
    "lr1e-2": {"lr": 1e-2},
    "lr3e-3_bs256": {"lr": 3e-3, "batch_size": 256},
    # stage 4 (uncapped, 2026-12-07): around the chosen one, towards HRNN-meta's tuning budget (sasrec.md)
    "lr3e-3_n50_h128": {"lr": 3e-3, "max_len": 50, "hidden": 128},
    "lr3e-3_n50_drop0.5": {"lr": 3e-3, "max_len": 50, "dropout": 0.5},
    "lr3e-3_n25": {"lr": 3e-3, "max_len": 25},
    "lr3e-3_n100": {"lr": 3e-3, "max_len": 100},
    "lr1e-2_n50": {"lr": 1e-2, "max_len": 50},
    "lr3e-3_n50_b3": {"lr": 3e-3, "max_len": 50, "blocks": 3},
    "lr3e-3_n50_bs256": {"lr": 3e-3, "max_len": 50, "batch_size": 256},
    # stage 5 (uncapped, 2026-12-07): the knobs stage 4 left, one at a time around the default, on both ml-100k protocols
    "lr3e-3_n50_wd0.1": {"lr": 3e-3, "max_len": 50, "weight_decay": 0.1},
    "lr3e-3_n50_heads2": {"lr": 3e-3, "max_len": 50, "heads": 2},
    "lr3e-3_n50_drop0.1": {"lr": 3e-3, "max_len": 50, "dropout": 0.1},
    "lr3e-3_n50_drop0.3": {"lr": 3e-3, "max_len": 50, "dropout": 0.3},
    "lr2e-3_n50": {"lr": 2e-3, "max_len": 50},
    "lr5e-3_n50": {"lr": 5e-3, "max_len": 50},
    # stage 6 (uncapped, 2026-12-07): one change at a time around the stage-5 default (dropout 0.3), on every
    # cell including ml-latest-small, towards HRNN-meta's tuning budget
    "d0.3_heads2": {"lr": 3e-3, "max_len": 50, "dropout": 0.3, "heads": 2},
    "d0.3_n100": {"lr": 3e-3, "max_len": 100, "dropout": 0.3},
    "d0.3_lr1e-2": {"lr": 1e-2, "max_len": 50, "dropout": 0.3},
    "d0.3_bs256": {"lr": 3e-3, "max_len": 50, "dropout": 0.3, "batch_size": 256},
    "d0.3_b1": {"lr": 3e-3, "max_len": 50, "dropout": 0.3, "blocks": 1},
}
CHOSEN = "lr3e-3_n50_drop0.3"  # the candidate whose settings are SASRecConfig's defaults (docs/evaluation/sasrec.md)


def config(name: str, max_seconds: float = 0.0) -> SASRecConfig:
    """Candidate ``name``'s config; ``max_seconds`` 0: no time cap, early stopping ends the fit."""
    return SASRecConfig(**{**BASE, **GRID[name], "threads": 1, "progress": True, "max_seconds": max_seconds})


def run_one(split, name: str, seed: int, max_seconds: float = 0.0) -> dict:
    """Fit candidate ``name`` on (valid_train, its own held-out events), score ``split.valid``: one row."""
    cfg = config(name, max_seconds)
    with tempfile.TemporaryDirectory(prefix="tune-sasrec-") as work:
        data = train_data(split, "valid_train", seed, Path(work))
        scorer = SASRecScorer(device="cpu", **dataclasses.asdict(cfg))
        t = time.perf_counter()
        scorer.fit(data)
        fit_s = time.perf_counter() - t
        acc, score_s = score_cases(scorer, split.valid, split.n_items)
    s, hist = acc.summary(), scorer.history
    best = max(hist, key=lambda h: h.get("ndcg@10", -1.0))
    return {
        "protocol": split.protocol, "config": name, "seed": seed, "overrides": GRID[name],
        "valid_ndcg@10": s.get("ndcg@10"), "valid_recall@10": s.get("recall@10"), "valid_mrr@10": s.get("mrr@10"),
        "valid_ppl": s.get("ppl"), "valid_cases": len(split.valid),
        "fit_seconds": round(fit_s, 1), "score_seconds": round(score_s, 1),
        "epochs_run": len(hist), "best_epoch": best["epoch"], "max_len": scorer.model.max_len,
        "max_seconds": max_seconds,
        "stopped_by_time": bool(max_seconds) and hist[-1]["seconds"] > max_seconds,
        "stopped_by_early_stopping": len(hist) < cfg.epochs and not (bool(max_seconds) and hist[-1]["seconds"] > max_seconds),
        "exclude_seen_in_training": scorer.exclude_seen,
        "es_val_ndcg@10_per_epoch": [round(h.get("ndcg@10", float("nan")), 4) for h in hist],
        "config_full": dataclasses.asdict(cfg),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--snapshot", type=Path, required=True, help="snapshot folder (ml-100k)")
    ap.add_argument("--protocols", default="leave_one_out,temporal")
    ap.add_argument("--only", default="", help="comma-separated candidate names (default: all of GRID)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--force", action="store_true", help="refit candidates already in --out")
    ap.add_argument("--max-seconds", type=float, default=0.0,
                    help="stop each fit after the epoch that passes this many seconds (default 0: no cap, "
                         "early stopping ends the fit)")
    ap.add_argument("--params", default="{}", help='protocol parameters as JSON, e.g. \'{"exclude_seen": false}\'')
    args = ap.parse_args()
    torch.set_num_threads(1)
    names = [n for n in args.only.split(",") if n] or list(GRID)
    unknown = set(names) - set(GRID)
    if unknown:
        raise SystemExit(f"unknown candidates {sorted(unknown)}; known: {list(GRID)}")
    report = open_report(args.out, args.snapshot, base=BASE)
    run_grid(report, args.out, args.snapshot, args.protocols, args.params, names, args.seed, args.force,
             lambda split, name: [run_one(split, name, args.seed, args.max_seconds)])
    order = {n: i for i, n in enumerate(GRID)}
    print(table(sorted(report["runs"], key=lambda r: (r["protocol"], order.get(r["config"], -1), r["seed"])), width=16))
    same = config(CHOSEN) == SASRecConfig(threads=1, progress=True)
    print(f"chosen: {CHOSEN} = {GRID[CHOSEN]}; equal to the current defaults: {same}")


if __name__ == "__main__":
    main()
