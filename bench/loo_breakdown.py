"""HRNN-meta minus GRU on leave_one_out, by the target's training popularity: the real test events
(each user's last) against the shifted run's (each user's second-to-last, ``bench/loo_shifted.py``).

Per-event NDCG@10 averaged over the seeds of each run; popularity = the target's training events
in that run's split (log1p buckets).

    .venv/bin/python bench/loo_breakdown.py data/snapshots/<id>
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from hrnn_core.protocols import SnapshotData, build_split

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loo_shifted import shifted_snapshot  # noqa: E402 - the sibling script

R = Path(__file__).resolve().parent / "results"
RUNS = {"last events (test, 5 seeds)": ("leaderboard_ml-100k_leave_one_out", ["", ".seed1", ".seed2", ".seed3", ".seed4"]),
        "second-to-last (shifted, 3 seeds)": ("leaderboard_ml-100k_leave_one_out_shifted", ["", ".seed1", ".seed2"])}
BUCKETS = [(0, 3), (3, 4), (4, 5), (5, 99)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("snapshot", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        splits = {"last events (test, 5 seeds)": build_split("leave_one_out", SnapshotData.load(args.snapshot)),
                  "second-to-last (shifted, 3 seeds)": build_split(
                      "leave_one_out", SnapshotData.load(shifted_snapshot(args.snapshot, Path(tmp) / "s")))}
        print(f"{'targets':<36}{'log1p(training events)':>24}{'cases':>7}{'HRNN-meta':>11}{'GRU':>8}{'diff':>9}")
        for name, (base, seeds) in RUNS.items():
            arrays = [np.load(R / f"{base}{s}.per_event.npz") for s in seeds]
            h = np.mean([a["hrnn__ndcg@10"] for a in arrays], axis=0)
            g = np.mean([a["gru__ndcg@10"] for a in arrays], axis=0)
            split = splits[name]
            pop = np.log1p(split.item_frequency[split.test.target])
            print(f"{name:<36}{'all':>24}{len(h):>7}{h.mean():>11.4f}{g.mean():>8.4f}{(h - g).mean():>+9.4f}")
            for lo, hi in BUCKETS:
                m = (pop >= lo) & (pop < hi)
                print(f"{'':<36}{f'[{lo}, {hi})':>24}{m.sum():>7}{h[m].mean():>11.4f}{g[m].mean():>8.4f}"
                      f"{(h - g)[m].mean():>+9.4f}")


if __name__ == "__main__":
    main()
