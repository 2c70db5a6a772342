"""``hrnn evaluate`` on an existing snapshot with per-model options (``hrnn evaluate`` fits every model with its
default config): the same ``run_evaluation`` call, so the report, its per-event arrays and its chart have the
layout ``merge_leaderboard.py`` reads. Used to add SASRec to the leaderboards with a fit-time cap (issue 20:
one locked command on the shared 2-core machine stays under 10 minutes; docs/evaluation/sasrec.md).

    .venv/bin/python research/leaderboards/evaluate_with_options.py --snapshot data/snapshots/<id> --dataset ml-100k \\
        --protocol leave_one_out --models sasrec --seed 0 --options '{"sasrec": {"max_seconds": 480}}' --output R.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import research  # noqa: F401 - registers the research baselines (sasrec, hgru, random) with the harness
from hrnn_core.evaluation.harness import leaderboard, run_evaluation


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--snapshot", type=Path, required=True)
    ap.add_argument("--dataset", required=True, help="the dataset name the leaderboard reports carry")
    ap.add_argument("--protocol", required=True)
    ap.add_argument("--models", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--params", default="{}", help="protocol parameters (JSON), as hrnn evaluate --params")
    ap.add_argument("--options", default="{}", help='model options (JSON): {"sasrec": {"max_seconds": 480}}')
    ap.add_argument("--output", type=Path, required=True)
    args = ap.parse_args()
    report = run_evaluation(args.snapshot, args.protocol, args.models.split(","), dataset=args.dataset,
                            protocol_params=json.loads(args.params), model_options=json.loads(args.options),
                            seed=args.seed, output=args.output, chart_path=args.output.with_suffix(".png"),
                            progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    print(leaderboard(report["_results"]))


if __name__ == "__main__":
    main()
