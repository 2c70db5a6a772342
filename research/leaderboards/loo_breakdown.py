"""HRNN-meta minus GRU on leave_one_out, by the target's training popularity (the table in
docs/evaluation/leaderboards.md).

Per-event NDCG@10 averaged over the five seeds of ``bench/results/leaderboard_ml-100k_leave_one_out``
(``leaderboards.sh``); popularity = the target's training events in the split (log1p buckets;
``hrnn_core.evaluation.breakdowns.popularity_buckets``).
(The second-to-last-event rows of the stage-7 diagnosis came from a shifted copy of the snapshot,
``bench/loo_shifted.py``; that study was removed in the one-system redesign, its result is recorded
in leaderboards.md.)

    .venv/bin/python research/leaderboards/loo_breakdown.py data/snapshots/<id>
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from hrnn_core.evaluation.breakdowns import popularity_buckets
from hrnn_core.evaluation.protocols import build_split
from hrnn_core.evaluation.splits import SnapshotData

R = Path(__file__).resolve().parents[2] / "bench" / "results"  # where leaderboards.sh writes its reports
RUN = ("last events (test, 5 seeds)", "leaderboard_ml-100k_leave_one_out", ["", ".seed1", ".seed2", ".seed3", ".seed4"])
BUCKETS = [(0, 3), (3, 4), (4, 5), (5, 99)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("snapshot", type=Path)
    args = ap.parse_args()
    split = build_split("leave_one_out", SnapshotData.load(args.snapshot))
    name, base, seeds = RUN
    arrays = [np.load(R / f"{base}{s}.per_event.npz") for s in seeds]
    h = np.mean([a["hrnn__ndcg@10"] for a in arrays], axis=0)
    g = np.mean([a["gru__ndcg@10"] for a in arrays], axis=0)
    # log1p(training events) in [lo, hi) <=> training events in [expm1(lo), expm1(hi)); the last bucket is open
    buckets = popularity_buckets(split, edges=tuple(float(np.expm1(lo)) for lo, _ in BUCKETS))
    print(f"{'targets':<36}{'log1p(training events)':>24}{'cases':>7}{'HRNN-meta':>11}{'GRU':>8}{'diff':>9}")
    print(f"{name:<36}{'all':>24}{len(h):>7}{h.mean():>11.4f}{g.mean():>8.4f}{(h - g).mean():>+9.4f}")
    for (lo, hi), m in zip(BUCKETS, buckets.values()):
        print(f"{'':<36}{f'[{lo}, {hi})':>24}{m.sum():>7}{h[m].mean():>11.4f}{g[m].mean():>8.4f}"
              f"{(h - g)[m].mean():>+9.4f}")


if __name__ == "__main__":
    main()
