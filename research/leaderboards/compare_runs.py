"""One model before and after a change: per-event seed means of two sets of runs, paired (docs/evaluation/).

``hrnn evaluate ... --seed S --output F.json`` writes ``F.per_event.npz`` beside the report; given the runs
of the same dataset, protocol and snapshot with the same seeds before and after, this averages the model's
per-event arrays over the seeds on each side and tests the difference (``metrics.paired_test``), with whole
owners resampled when ``--snapshot`` is given (``seed_mean_test.test_owners``: the protocol rebuilt).

    .venv/bin/python research/leaderboards/compare_runs.py --model hrnn --snapshot data/snapshots/<id> \\
        --before OLD.json OLD.seed1.json ... --after NEW.json NEW.seed1.json ... [--params JSON] [--output R.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from hrnn_core.evaluation.metrics import paired_test
from research.leaderboards.seed_mean_test import METRICS, load, test_owners


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="hrnn")
    ap.add_argument("--before", type=Path, nargs="+", required=True)
    ap.add_argument("--after", type=Path, nargs="+", required=True)
    ap.add_argument("--snapshot", type=Path, help="the runs' snapshot: resample whole owners")
    ap.add_argument("--params", default="{}", help="protocol params as given to hrnn evaluate (JSON)")
    ap.add_argument("--output", type=Path)
    args = ap.parse_args()
    before, after = [load(p) for p in args.before], [load(p) for p in args.after]
    first = before[0][0]
    if any(r[k] != first[k] for r, _ in before + after for k in ("dataset", "protocol", "snapshot_id", "n_events")):
        raise SystemExit("the reports must share dataset, protocol, snapshot and test events")
    owners = test_owners(args.snapshot, first, json.loads(args.params)) if args.snapshot else None
    report = {"model": args.model, "dataset": first["dataset"], "protocol": first["protocol"],
              "before": [str(p) for p in args.before], "after": [str(p) for p in args.after], "metrics": {}}
    for metric in METRICS:
        a, b = (np.mean([arr[f"{args.model}__{metric}"] for _, arr in runs], axis=0) for runs in (after, before))
        test = paired_test(a, b, clusters=owners)
        report["metrics"][metric] = {"after": float(a.mean()), "before": float(b.mean()), **test}
        print(f"{first['protocol']} {metric}: after {a.mean():.4f} before {b.mean():.4f} diff {test['mean_diff']:+.4f} "
              f"(95% CI {test['ci_low']:+.4f}..{test['ci_high']:+.4f}, p {test['p_value']:.2g})")
    if args.output:
        args.output.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
