"""Paired tests on per-event metrics averaged over training seeds (docs/evaluation/leaderboards.md).

A leaderboard run (``hrnn evaluate ... --seed S --output F.json``) compares one trained instance
of each model: its paired test counts event sampling only, while a second seed can move one
model's per-event NDCG a lot. Given runs of the same dataset/protocol/snapshot with different
``--seed``, this averages each model's per-event arrays over the runs (the ``.per_event.npz``
files next to the JSONs; cases are in the same order in every run) and repeats the paired test
of ``hrnn`` against every other model on the seed means. It also prints each run's own test.

With ``--snapshot`` (the runs' snapshot folder; ``--params`` as given to ``hrnn evaluate``) it
rebuilds the protocol's test cases to learn each event's owner and repeats the tests with whole
owners resampled (``metrics.paired_test(..., clusters=owners)``): on ``temporal`` one user's many
test events are not independent, so the per-event p-value is optimistic (on leave_one_out every
event is its own user and nothing changes).

    .venv/bin/python research/leaderboards/seed_mean_test.py bench/results/leaderboard_ml-100k_leave_one_out.json \\
        bench/results/leaderboard_ml-100k_leave_one_out.seed1.json ... [--output FILE.json] \\
        [--snapshot data/snapshots/<id> [--params '{"exclude_seen": false}']]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from hrnn_core.evaluation.metrics import paired_test

METRICS = ("ndcg@10", "recall@10")


def load(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    arrays = path.with_suffix(".per_event.npz")
    if not path.is_file() or not arrays.is_file():
        raise SystemExit(f"{path}: needs the report and its {arrays.name} (hrnn evaluate --output writes both)")
    report = json.loads(path.read_text())
    npz = np.load(arrays)
    return report, {k: npz[k] for k in npz.files}


def test_owners(snapshot: Path, report: dict, params: dict) -> np.ndarray:
    """(n_events,) owner of each test case, in the reports' case order (the protocol rebuilt)."""
    from hrnn_core.evaluation.protocols import build_split  # noqa: PLC0415
    from hrnn_core.evaluation.splits import SnapshotData  # noqa: PLC0415

    data = SnapshotData.load(snapshot)
    if data.snapshot_id != report["snapshot_id"]:
        raise SystemExit(f"{snapshot} is snapshot {data.snapshot_id}, the reports are on {report['snapshot_id']}")
    cases = build_split(report["protocol"], data, **params).test
    if len(cases) != report["n_events"]:
        raise SystemExit(f"the rebuilt protocol has {len(cases)} test cases, the reports {report['n_events']}: "
                         "pass the runs' --params")
    return cases.owner


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reports", nargs="+", type=Path, help="leaderboard JSONs of one dataset/protocol, one per seed")
    ap.add_argument("--reference", default="hrnn")
    ap.add_argument("--output", type=Path)
    ap.add_argument("--snapshot", type=Path, help="the runs' snapshot: also test with whole owners resampled")
    ap.add_argument("--by-owner", action="store_true", help="the same, with the snapshot found in the data dir "
                    "($HRNN_DATA_DIR/snapshots/<the reports' snapshot id>)")
    ap.add_argument("--params", default="{}", help="protocol parameters of the runs (JSON), with --snapshot")
    ap.add_argument("--metrics", default=",".join(METRICS), help="per-event metrics to test (those in the .per_event.npz)")
    args = ap.parse_args()
    metrics = [m for m in args.metrics.split(",") if m]
    runs = [load(p) for p in args.reports]
    first = runs[0][0]
    for report, _ in runs[1:]:
        same = all(report[k] == first[k] for k in ("dataset", "protocol", "snapshot_id", "n_events"))
        if not same:
            raise SystemExit("the reports must share dataset, protocol, snapshot and test events")
    # models present in every run
    models = sorted(set.intersection(*[set(r["models"]) for r, _ in runs]))
    if args.reference not in models:
        raise SystemExit(f"{args.reference} is not in every report")
    means = {m: {k: np.mean([arr[f"{m}__{k}"] for _, arr in runs], axis=0) for k in metrics} for m in models}
    out = {"dataset": first["dataset"], "protocol": first["protocol"], "snapshot_id": first["snapshot_id"],
           "n_events": first["n_events"], "runs": [str(p) for p in args.reports], "n_runs": len(runs),
           "per_run": {m: {k: [float(r["models"][m][k]) for r, _ in runs] for k in metrics} for m in models},
           "seed_mean": {m: {k: float(means[m][k].mean()) for k in metrics} for m in models},
           "tests": {}}
    print(f"{first['dataset']} / {first['protocol']}: {first['n_events']:,} events, {len(runs)} seeds")
    for m in models:
        cells = "  ".join(f"{k} " + " ".join(f"{v:.4f}" for v in out["per_run"][m][k]) +
                          f" (mean {out['seed_mean'][m][k]:.4f})" for k in metrics)
        print(f"  {m:<12}{cells}")
    if args.by_owner and not args.snapshot:
        from hrnn_core.config import default_data_dir  # noqa: PLC0415

        args.snapshot = default_data_dir() / "snapshots" / first["snapshot_id"]
    owners = test_owners(args.snapshot, first, json.loads(args.params)) if args.snapshot else None
    for m in models:
        if m == args.reference:
            continue
        for k in metrics:
            t = paired_test(means[args.reference][k], means[m][k])
            out["tests"][f"{args.reference}_vs_{m}__{k}"] = t
            print(f"  {args.reference} - {m} {k}: {t['mean_diff']:+.4f} (95% CI {t['ci_low']:+.4f}..{t['ci_high']:+.4f}, "
                  f"p={t['p_value']:.2g}) on seed-mean per-event values")
            if owners is not None:
                c = paired_test(means[args.reference][k], means[m][k], clusters=owners)
                out.setdefault("tests_by_owner", {})[f"{args.reference}_vs_{m}__{k}"] = c
                print(f"  {'':{len(args.reference) + len(m) + 3}} {k}: 95% CI {c['ci_low']:+.4f}..{c['ci_high']:+.4f}, "
                      f"p={c['p_value']:.2g} with whole owners resampled ({c['n_clusters']} owners)")
    if args.output:
        args.output.write_text(json.dumps(out, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
