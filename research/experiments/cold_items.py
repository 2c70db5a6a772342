"""Issue 21's studies of items with no or few training events.

``breakdown``: a report written by ``hrnn evaluate --output R.json`` (and its ``R.per_event.npz``) split by
cold (no training events) and warm test targets: the same split rebuilt from the snapshot it names, per model
NDCG@10 / Recall@10 / MRR@10 on all, cold-target and warm-target cases, HRNN-meta's paired differences::

    .venv/bin/python -m research.experiments.cold_items R.json --data-dir DIR [--params JSON] [--json OUT]

(Its ``--blend`` sweep of ``model.cold_blend_events`` went with that setting, retired after it gained nothing on
ml-100k and taobao validation; the last version: ``git show 9089f26:research/experiments/cold_items.py``.)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from hrnn_core.evaluation.breakdowns import cold_targets, group_means
from hrnn_core.evaluation.metrics import paired_test
from hrnn_core.evaluation.protocols import build_split
from hrnn_core.evaluation.splits import SnapshotData

METRICS = ("ndcg@10", "recall@10", "mrr@10")


def breakdown(report: dict, per_event: dict[str, np.ndarray], snapshot: Path, params: dict,
              reference: str = "hrnn") -> dict:
    split = build_split(report["protocol"], SnapshotData.load(snapshot), **params)
    cold = cold_targets(split)
    groups = {"all": np.ones(len(cold), dtype=bool), "cold targets": cold, "warm targets": ~cold}
    models = sorted({k.split("__")[0] for k in per_event})
    out: dict = {"snapshot": snapshot.name, "cases": len(cold), "cold_share": float(cold.mean()), "models": {}}
    for m in models:
        arrays = {k: per_event[f"{m}__{k}"] for k in METRICS if f"{m}__{k}" in per_event}
        out["models"][m] = group_means(arrays, groups)
    if reference in models:
        out["paired"] = {}
        for m in models:
            if m == reference:
                continue
            for label, mask in groups.items():
                for k in ("ndcg@10", "recall@10"):
                    a, b = per_event[f"{reference}__{k}"][mask], per_event[f"{m}__{k}"][mask]
                    if len(a):
                        out["paired"][f"{reference}-{m} {label} {k}"] = paired_test(
                            a, b, clusters=split.test.owner[mask])  # by user: a user's events correlate
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--data-dir", type=Path, help="the data dir the evaluation ran in")
    parser.add_argument("--params", default="{}", help="the protocol parameters the evaluation was given (JSON)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    report = json.loads(args.report.read_text())
    npz = np.load(args.report.with_suffix(".per_event.npz"))
    snapshot = args.data_dir / "snapshots" / report["snapshot_id"]
    result = breakdown(report, {k: npz[k] for k in npz.files}, snapshot, json.loads(args.params))
    print(json.dumps(result, indent=1, default=float))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=float) + "\n")


if __name__ == "__main__":
    main()
