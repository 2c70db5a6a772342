"""How often a snapshot's events tie on their timestamp (the reason for ``train.shuffle_ties``).

Prints, for a snapshot folder: the share of events that share their timestamp with another
event of the same owner; the share of owners' last events (leave_one_out's test events) and
second-to-last events (its validation events) with the same timestamp as the event before them;
and, inside ties, the share of consecutive pairs in increasing item-id order (0.5 when the file
order of tied events is arbitrary).

    .venv/bin/python bench/tie_stats.py data/snapshots/<id>
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("snapshot", type=Path)
    args = ap.parse_args()
    seq = pq.read_table(args.snapshot / "sequences.parquet", columns=["n_events", "timestamps", "item_idx"])
    ids = pq.read_table(args.snapshot / "items.parquet", columns=["item_idx", "item_id"])
    item_id = np.zeros(len(ids), dtype=object)
    item_id[ids["item_idx"].to_numpy()] = ids["item_id"].to_numpy(zero_copy_only=False)
    n = seq["n_events"].to_numpy()
    start = np.concatenate([[0], np.cumsum(n)])[:-1]
    t = pc.list_flatten(seq["timestamps"]).to_numpy()
    items = pc.list_flatten(seq["item_idx"]).to_numpy()
    owner = np.repeat(np.arange(len(n)), n)
    same_prev = np.zeros(len(t), dtype=bool)
    same_prev[1:] = (t[1:] == t[:-1]) & (owner[1:] == owner[:-1])
    in_tie = same_prev | np.append(same_prev[1:], False)
    last, second = start + n - 1, start + n - 2
    print(f"{args.snapshot.name}: {len(t):,} events, {len(n):,} owners")
    print(f"events sharing their timestamp with another event of their owner: {in_tie.mean():.4f}")
    print(f"last events (leave_one_out test) tied with the event before: {same_prev[last[n >= 2]].mean():.4f}")
    print(f"second-to-last events (leave_one_out validation) tied with the one before: "
          f"{same_prev[second[n >= 3]].mean():.4f}")
    try:
        num = np.array([float(x) for x in item_id])
        pairs = np.flatnonzero(same_prev)
        print(f"tied neighbours in increasing item-id order: {(num[items[pairs]] > num[items[pairs - 1]]).mean():.4f} "
              f"of {len(pairs):,}")
    except ValueError:
        print("item ids are not numbers: no id-order check")


if __name__ == "__main__":
    main()
