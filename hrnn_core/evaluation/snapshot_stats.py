"""What a snapshot holds and how it moved since the previous one: the data section of the HTML report.

``summary`` counts a snapshot folder (events, users, items, the event-type mix); ``previous_snapshot`` finds the
latest sibling snapshot cut before it (the retrain exports every night's snapshot into the same folder);
``changes`` counts what is new since then; ``popularity_shift`` is the one number for how much the items' shares
of events moved: the total variation distance between two popularity distributions.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq


def _manifest(folder: Path) -> dict:
    return json.loads((Path(folder) / "manifest.json").read_text())


def item_counts(folder: Path, n_items: int) -> np.ndarray:
    """(n_items,) events per item in a snapshot (its item_frequency.parquet; item_idx never renumbers)."""
    freq = pq.read_table(Path(folder) / "item_frequency.parquet", columns=["item_idx", "events"])
    out = np.zeros(n_items, dtype=np.int64)
    idx = freq["item_idx"].to_numpy()
    keep = idx < n_items
    out[idx[keep]] = freq["events"].to_numpy()[keep]
    return out


def summary(folder: Path) -> dict:
    """Counts of one snapshot: events, users with events, users/items in its tables, items with events, event types."""
    folder = Path(folder)
    m = _manifest(folder)
    seq = pq.read_table(folder / "sequences.parquet", columns=["owner_id", "n_events", "event_types"])
    types = pc.value_counts(pc.list_flatten(seq["event_types"])).to_pylist()
    mix = sorted(((t["values"] if t["values"] is not None else "(none)", int(t["counts"])) for t in types),
                 key=lambda kv: -kv[1])
    n_events = int(pc.sum(seq["n_events"]).as_py() or 0)
    counts = item_counts(folder, int(m["n_items"]))
    return {
        "snapshot_id": m["snapshot_id"], "as_of": m.get("as_of"), "events": n_events,
        "owners": int(pc.sum(pc.greater(seq["n_events"], 0)).as_py() or 0),
        "users_table": pq.read_metadata(folder / "users.parquet").num_rows,
        "catalogue_items": int(m["n_items"]), "items_with_events": int((counts > 0).sum()),
        "event_types": [{"type": t, "events": n, "share": n / max(n_events, 1)} for t, n in mix],
    }


def previous_snapshot(folder: Path) -> Path | None:
    """The sibling snapshot with the latest cut before this one's (None: this is the first, or cuts are unknown)."""
    folder = Path(folder)
    as_of = _manifest(folder).get("as_of")
    if as_of is None:
        return None
    best, best_as_of = None, None
    for other in folder.parent.iterdir():
        if other == folder or other.name.startswith(".") or not (other / "manifest.json").is_file():
            continue
        t = _manifest(other).get("as_of")
        if t is not None and t < as_of and (best_as_of is None or t > best_as_of):
            best, best_as_of = other, t
    return best


def changes(folder: Path, previous: Path) -> dict:
    """What is new in ``folder`` since ``previous``: events, users (owner ids), items with their first events,
    catalogue items; and each item's events before and since (for ``popularity_shift``)."""
    cur, prev = _manifest(folder), _manifest(previous)
    owners_now = pq.read_table(Path(folder) / "sequences.parquet", columns=["owner_id"])["owner_id"]
    owners_before = pq.read_table(Path(previous) / "sequences.parquet", columns=["owner_id"])["owner_id"]
    n = int(cur["n_items"])
    now, before = item_counts(folder, n), item_counts(previous, n)
    return {
        "previous_id": prev["snapshot_id"], "previous_as_of": prev.get("as_of"),
        "new_events": int(now.sum() - before.sum()),
        "new_users": int(pc.sum(pc.invert(pc.is_in(owners_now, value_set=owners_before))).as_py() or 0),
        "new_items_with_events": int(((now > 0) & (before == 0)).sum()),
        "new_catalogue_items": n - int(prev["n_items"]),
        "before": before, "since": np.maximum(now - before, 0),
    }


def popularity_shift(before: np.ndarray, after: np.ndarray) -> float | None:
    """Total variation distance between the items' shares of events in ``before`` and in ``after``:
    ``0.5 * sum_j |p_j - q_j|``, 0 (the same shares) to 1 (no item in common); None when either is empty."""
    a, b = np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64)
    if a.sum() <= 0 or b.sum() <= 0:
        return None
    return float(0.5 * np.abs(a / a.sum() - b / b.sum()).sum())
