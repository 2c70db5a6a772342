"""Per-event metrics of a leaderboard split by test user: returning (events in training) or new.

Reads the seed reports' ``.per_event.npz`` (cases in the same order in every run), averages each
model's per-event metric over the seeds and prints the mean over the test events of returning users
(the user owns training events, so models with ``model.use_user_id`` know their id) and of new users.
``--before`` names the same reports at an earlier git commit, for the HRNN-meta rows of then.
``--popularity`` adds the groups by the target's training popularity (``breakdowns.popularity_buckets``, the
HTML report's buckets); ``--repeats`` the groups by whether the target repeats an item of the owner's history
(``Cases.repeated_targets``; sessions that repeat items: yoochoose; with ``--popularity`` also crossed with the
buckets); ``--models hrnn,sasrec`` compares other
models (issue 20); ``--json FILE`` writes the group means and, per group, the paired tests of the first model
against each other one on the seed-mean per-event values (per event, and with whole owners resampled).

    .venv/bin/python research/leaderboards/returning_users.py data/snapshots/a6e23c1cae551bc8 --protocol temporal \\
        bench/results/leaderboard_ml-100k_temporal{,.seed1,.seed2,.seed3,.seed4}.json --before b28e1f1
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
from pathlib import Path

import numpy as np

from hrnn_core.evaluation.breakdowns import popularity_buckets, user_segments
from hrnn_core.evaluation.metrics import paired_test
from hrnn_core.evaluation.protocols import build_split
from hrnn_core.evaluation.splits import SnapshotData


def per_event(paths: list[Path], model: str, metric: str, commit: str | None = None) -> np.ndarray:
    runs = []
    for p in paths:
        npz = p.with_suffix(".per_event.npz")
        if commit:
            blob = subprocess.run(["git", "show", f"{commit}:{npz}"], check=True, capture_output=True).stdout
            z = np.load(io.BytesIO(blob))
        else:
            z = np.load(npz)
        runs.append(z[f"{model}__{metric}"])
    return np.mean(runs, axis=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("snapshot", type=Path)
    ap.add_argument("reports", type=Path, nargs="+", help="seed reports of one dataset/protocol")
    ap.add_argument("--protocol", default="temporal")
    ap.add_argument("--params", default="{}")
    ap.add_argument("--models", default="hrnn,gru")
    ap.add_argument("--before", default=None, help="git commit of earlier reports (HRNN-meta rows of then)")
    ap.add_argument("--popularity", action="store_true", help="also by the target's training popularity")
    ap.add_argument("--repeats", action="store_true", help="also by whether the target repeats a history item")
    ap.add_argument("--json", type=Path, default=None, help="write the group means and paired tests here")
    args = ap.parse_args()
    split = build_split(args.protocol, SnapshotData.load(args.snapshot), **json.loads(args.params))
    segments = user_segments(split)  # the one definition (hrnn_core.evaluation.breakdowns), as in the HTML report
    returning = segments["returning users"]
    groups = {"returning": returning, "new": segments["new users"]}
    if args.popularity:
        groups.update({f"{k} ({int(m.sum())})": m for k, m in (popularity_buckets(split) or {}).items()})
    if args.repeats:
        repeated = split.test.repeated_targets()
        groups.update({f"repeat of history ({int(repeated.sum())})": repeated,
                       f"new to the owner ({int((~repeated).sum())})": ~repeated})
        if args.popularity:  # the two crossed: is a gap on rare targets the repeats' or not?
            for k, m in (popularity_buckets(split) or {}).items():
                for label, r in (("repeat", repeated), ("new", ~repeated)):
                    if (m & r).any():
                        groups[f"{k}, {label} ({int((m & r).sum())})"] = m & r
    print(f"{args.protocol}: {len(returning):,} test events; returning users "
          f"{len(set(split.test.owner[returning].tolist()))} ({int(returning.sum()):,} events), new users "
          f"{len(set(split.test.owner[~returning].tolist()))} ({int((~returning).sum()):,} events); "
          f"means over {len(args.reports)} seeds")
    out = {"reports": [str(p) for p in args.reports], "groups": {g: int(m.sum()) for g, m in groups.items()},
           "means": {}, "tests": {}}
    for metric in ("ndcg@10", "recall@10"):
        cols = {m: per_event(args.reports, m, metric) for m in args.models.split(",")}
        if args.json:
            ref, *rivals = list(cols)
            for name, mask in groups.items():
                if not mask.any():
                    continue
                out["means"].setdefault(metric, {})[name] = {m: float(v[mask].mean()) for m, v in cols.items()}
                for rival in rivals:
                    out["tests"].setdefault(metric, {}).setdefault(name, {})[f"{ref}_vs_{rival}"] = {
                        "per_event": paired_test(cols[ref][mask], cols[rival][mask]),
                        "by_owner": paired_test(cols[ref][mask], cols[rival][mask], clusters=split.test.owner[mask])}
        if args.before:
            cols[f"hrnn@{args.before[:7]}"] = per_event(args.reports, "hrnn", metric, args.before)
        width = max(len(g) for g in groups) + 1
        print(f"{metric:<10}{'users':<{width}}" + "".join(f"{c:>16}" for c in cols))
        for name, mask in groups.items():
            print(f"{'':<10}{name:<{width}}" + "".join(f"{v[mask].mean() if mask.any() else float('nan'):>16.4f}"
                                                        for v in cols.values()))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
