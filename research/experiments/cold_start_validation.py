"""Choose cold-start designs on validation only (docs/evaluation/cold_items.md, "Table 7").

The cold_start_items protocol's default validation has 84 pseudo-cold ml-100k items, too few to choose on. Here
the same protocol is built with ``valid_fraction = 0.5`` (420 of the warm items pseudo-cold), HRNN-meta is fitted on
``valid_train`` with the cold-start command's settings (lambda ~ U[0, 1], no trend term) and the validation cases
are ranked among the pseudo-cold items; the test cases are never scored. Prints per-event MRR and its ratio to
the analytic uniform-random MRR per item split.

    PYTHONPATH=. python research/experiments/cold_start_validation.py data/snapshots/<ml-100k> --seeds 0,1,2 \
        [--bins 10] [--meta-mix 1.0] --output R.json
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


def main() -> None:
    from hrnn_core.config import ModelConfig, TrainConfig  # noqa: PLC0415
    from hrnn_core.evaluation.harness import make_scorer, score_cases, train_data  # noqa: PLC0415
    from hrnn_core.evaluation.protocols import build_split  # noqa: PLC0415
    from hrnn_core.evaluation.splits import SnapshotData  # noqa: PLC0415

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("snapshot", type=Path)
    ap.add_argument("--seeds", default="0,1,2", help="item-split (and training) seeds")
    ap.add_argument("--bins", type=int, default=None, help="model.item_numeric_bins (default: the config's)")
    ap.add_argument("--meta-mix", type=float, default=None, help="train.item_meta_mix (default: U[0, 1] per batch)")
    ap.add_argument("--output", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model_cfg = dataclasses.replace(ModelConfig(), trend_weight=0.0)
    if args.bins is not None:
        model_cfg = dataclasses.replace(model_cfg, item_numeric_bins=args.bins)
    train_cfg = dataclasses.replace(TrainConfig(), item_meta_mix=args.meta_mix, threads=1, progress=False)
    data = SnapshotData.load(args.snapshot)
    report = {"snapshot_id": data.snapshot_id, "valid_fraction": 0.5, "model_config": dataclasses.asdict(model_cfg),
              "train_config": dataclasses.asdict(train_cfg), "seeds": {}}
    for seed in [int(s) for s in args.seeds.split(",")]:
        split = build_split("cold_start_items", data, cold_fraction=0.5, valid_fraction=0.5, seed=seed)
        scorer = make_scorer("hrnn", model=model_cfg, train=dataclasses.replace(train_cfg, seed=seed))
        t = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="cold-valid-") as work:
            scorer.fit(train_data(split, "valid_train", seed, Path(work)))
        n_c = int(np.asarray(split.valid.candidate_mask).sum())
        acc, _ = score_cases(scorer, split.valid, split.n_items, 512, n_c, (n_c,))
        mrr = acc.summary()[f"mrr@{n_c}"]
        random_mrr = float(np.mean(1.0 / np.arange(1, n_c + 1)))
        report["seeds"][str(seed)] = {"mrr": mrr, "x_random": mrr / random_mrr, "cases": len(split.valid),
                                      "candidates": n_c, "epochs": len(scorer.history),
                                      "fit_seconds": round(time.perf_counter() - t, 1)}
        print(seed, report["seeds"][str(seed)], flush=True)
    report["mean_x_random"] = float(np.mean([r["x_random"] for r in report["seeds"].values()]))
    print("mean x random", round(report["mean_x_random"], 3))
    args.output.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
