"""One model before and after a change: per-event seed means of two sets of runs, paired (docs/evaluation/).

``hrnn evaluate ... --seed S --output F.json`` writes ``F.per_event.npz`` beside the report; given the runs
of the same dataset, protocol and snapshot with the same seeds before and after, this averages the model's
per-event arrays over the seeds on each side and tests the difference (``metrics.paired_test``), with whole
owners resampled when ``--snapshot`` is given (the protocol's test cases are rebuilt to learn each event's owner).

    .venv/bin/python research/leaderboards/compare_runs.py --model hrnn --protocol temporal \\
        --snapshot data/snapshots/<id> --before OLD.json OLD.seed1.json ... --after NEW.json NEW.seed1.json ... \\
        [--output R.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from hrnn_core.evaluation.metrics import paired_test

METRICS = ("ndcg@10", "recall@10")


def seed_mean(paths: list[Path], model: str, metric: str) -> np.ndarray:
    arrays = []
    for path in paths:
        npz = path.with_suffix(".per_event.npz")
        if not npz.is_file():
            raise SystemExit(f"{path}: needs its {npz.name} (hrnn evaluate --output writes it)")
        arrays.append(np.load(npz)[f"{model}__{metric}"])
    return np.mean(arrays, axis=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="hrnn")
    ap.add_argument("--protocol", required=True)
    ap.add_argument("--before", type=Path, nargs="+", required=True)
    ap.add_argument("--after", type=Path, nargs="+", required=True)
    ap.add_argument("--snapshot", type=Path, help="the runs' snapshot: resample whole owners")
    ap.add_argument("--params", default="{}", help="protocol params as given to hrnn evaluate (JSON)")
    ap.add_argument("--output", type=Path)
    args = ap.parse_args()
    owners = None
    if args.snapshot:
        from hrnn_core.evaluation.protocols import build_split  # noqa: PLC0415
        from hrnn_core.evaluation.splits import SnapshotData  # noqa: PLC0415
        owners = build_split(args.protocol, SnapshotData.load(args.snapshot), **json.loads(args.params)).test.owner
    report = {"model": args.model, "protocol": args.protocol, "before": [str(p) for p in args.before],
              "after": [str(p) for p in args.after], "metrics": {}}
    for metric in METRICS:
        after, before = seed_mean(args.after, args.model, metric), seed_mean(args.before, args.model, metric)
        test = paired_test(after, before, clusters=owners)
        report["metrics"][metric] = {"after": float(after.mean()), "before": float(before.mean()), **test}
        print(f"{args.protocol} {metric}: after {after.mean():.4f} before {before.mean():.4f} "
              f"diff {test['mean_diff']:+.4f} (95% CI {test['ci_low']:+.4f}..{test['ci_high']:+.4f}, p {test['p_value']:.2g})")
    if args.output:
        args.output.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
