"""Validation-only choices of the rating task's defaults (docs/evaluation/rating.md).

On ml-100k ``temporal``: fits the rating FM for each ``--fm`` option set (epochs picked on the
validation cases, as ``hrnn-research rating`` does) and, for each ``--heads`` entry
``[model, RatingHeadConfig overrides]``, the value decoder (frozen state, then fine-tuning) on a
recurrent model trained once with the shipped config (cached in ``--work``). Prints the
validation RMSE of each; never reads the test split. Run it under the shared CPU lock:

    flock /tmp/hrnn-heavy.lock .venv/bin/python research/tuning/tune_rating.py \
        --fm '[{"l2": 0.2}]' --heads '[["hrnn", {"l2": 10.0}]]' --output /tmp/tune_rating.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from hrnn_core.cli.options import cli_config
from hrnn_core.data.datasets.load import ingest_dataset
from hrnn_core.evaluation.harness import train_data
from hrnn_core.evaluation.hrnn_scorer import HRNNScorer
from hrnn_core.evaluation.protocols import build_split
from hrnn_core.evaluation.splits import SnapshotData
from hrnn_core.data.transforms import export_snapshot
from hrnn_core.data.warehouse import connect
from research.rating import (fit_fm_rating, rated_cases, recurrent_options, rmse, rolling_average,
                             training_ratings)
from research.rating_head import RatingHeadConfig, fit_recurrent_rating


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fm", default="[]", help="JSON list of FMRatingRegressor option dicts")
    ap.add_argument("--heads", default="[]", help='JSON list of [model, RatingHeadConfig overrides], model in '
                                                  'gru | hrnn | hrnn_no_feedback')
    ap.add_argument("--work", type=Path, default=Path("/tmp/tune_rating"), help="cache of the trained networks")
    ap.add_argument("--output", type=Path, help="write the results as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = cli_config(None)
    dcfg = ingest_dataset(cfg, "ml-100k", None)
    with connect(dcfg) as con:
        snap = export_snapshot(con, dcfg).path
    split = build_split("temporal", SnapshotData.load(snap))
    valid = rated_cases(split, split.valid)
    print(f"snapshot {snap.name}: {len(valid):,} rated validation events", flush=True)
    args.work.mkdir(parents=True, exist_ok=True)
    # the references on validation: fitted on valid_train, reading the validation cases' histories
    mean = float(training_ratings(split.valid_train).mean())
    results: list[dict] = [
        {"model": "global_mean", "valid_rmse": rmse(np.full(len(valid), mean), valid.rating)},
        {"model": "rolling_average",
         "valid_rmse": rmse(np.clip(rolling_average(split.valid_train, valid, split.n_items), 1, 5), valid.rating)}]
    for r in results:
        print(r, flush=True)

    for options in json.loads(args.fm):
        t = time.perf_counter()
        _, info = fit_fm_rating(split, valid, 0, options, lambda _m: None)
        results.append({"model": "fm", "options": options, **info, "seconds": round(time.perf_counter() - t, 1)})
        print(results[-1], flush=True)

    def scorer_for(name: str) -> HRNNScorer:
        """The recurrent network, trained once per model name (a fine-tuning run changes its copy)."""
        ck = args.work / f"{name}.pt"
        opts = recurrent_options(name, cfg.model, cfg.train)
        opts["train"] = dataclasses.replace(opts["train"], progress=False, threads=1)
        if ck.exists():
            scorer = HRNNScorer(device="cpu", checkpoint=ck, **opts)
            scorer._snapshot_dir = args.work / f"snap_{name}" / "train"  # what fit() would have set
            scorer.catalog_size = split.n_items
            return scorer
        scorer = HRNNScorer(device="cpu", **opts)
        scorer.fit(train_data(split, "train", 0, args.work / f"snap_{name}"))
        shutil.copy2(scorer.checkpoint_path, ck)
        return scorer

    for name, overrides in json.loads(args.heads):
        scorer = scorer_for(name)
        t = time.perf_counter()
        _, info = fit_recurrent_rating(scorer, split, valid, RatingHeadConfig(**overrides), lambda _m: None)
        results.append({"model": name, "options": overrides, **info, "seconds": round(time.perf_counter() - t, 1)})
        print(results[-1], flush=True)

    if args.output:
        args.output.write_text(json.dumps({"snapshot": snap.name, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
