"""The five evaluation protocols of PROTOCOLS.md section 3, as train/valid/test splits.

Every protocol is a function ``(snapshot, **parameters) -> Split``; ``snapshot`` is a snapshot
folder (``hrnn_core.data.transforms.export_snapshot``) or a loaded ``SnapshotData``.

How a Split is laid out
    ``train``        pyarrow Table with exactly the columns of sequences.parquet (one row per owner,
                     events ordered by (timestamp, event_id)); what the model fits on for the test.
                     ``time_deltas``/``session_starts`` are recomputed only where a filter removed
                     an owner's earlier events (cold_start_items); a prefix keeps its values.
    ``item_frequency`` (n_items,) int64 events per item in ``train`` only; ``train_items`` = > 0.
                     The vocabulary is always the snapshot's whole item index (``n_items``).
    ``full``         the sequences the model may read at evaluation time, one row per snapshot
                     owner in the snapshot's row order (rows may be empty). An evaluation case
                     reads events ``[0, pos)`` of row ``row`` of its ``Cases.sequences`` (``full``
                     for test cases) and predicts the target(s). For leave_one_out, temporal,
                     rolling and user_holdout ``full`` is the owner's whole time-ordered
                     sequence, so ``[0, pos)`` is everything before the target. For
                     cold_start_items ``full`` holds only the events on warm items, so
                     ``[0, pos)`` is every warm event of the owner before the test event.
    ``valid``/``test`` ``Cases``: columnar evaluation cases (row, owner, pos, targets, target
                     timestamp, exclude set, candidate mask); ``cases[i]`` gives one ``Case``.
                     The request's own time and context (known when predicting) are the target
                     event's: ``target_timestamp``, and ``target_event_id`` to look the event up in
                     ``Split.data``; except for cold_start_items it is also event ``pos`` of the row.
    ``valid_train``  what to fit on while scoring ``valid`` (early stopping, tuning). It is
                     ``train`` itself where the protocol already keeps validation targets out of
                     training (leave_one_out). Where the protocol's training set contains the
                     validation period/users/items (temporal, rolling: the last
                     ``valid_fraction`` of pre-T events; user_holdout: validation users;
                     cold_start_items: pseudo-cold warm items) ``valid_train`` leaves them out, so
                     scoring ``valid`` never scores trained-on targets, while ``train`` stays
                     exactly what PROTOCOLS.md prescribes for the test. Recipe: tune on
                     (valid_train, valid), then fit on train and score test.
    ``exclude_seen`` on (the default everywhere; PROTOCOLS.md requires it for leave_one_out): a
                     case's exclude set is the distinct items in the history it reads; a target is
                     never excluded from its own ranking (``hrnn_core.evaluation.metrics``). Turn it off for
                     datasets where users repeat items.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hrnn_core.errors import HrnnError
from hrnn_core.model.features import HOLDOUT_FILE  # rows whose last event is validation (train_valid)

SESSION_GAP_SECONDS = 1800.0  # only for SnapshotData.from_events (the warehouse infers its own)


class ProtocolError(HrnnError):
    """A protocol cannot be built from this snapshot with these parameters."""


# --------------------------------------------------------------------------- snapshot data


@dataclass
class SnapshotData:
    """A snapshot's tables plus flat numpy views of its events (owner-contiguous)."""

    sequences: pa.Table  # sequences.parquet
    n_items: int  # catalogue size = the snapshot's item index
    snapshot_id: str = "in-memory"
    as_of: float | None = None
    folder: Path | None = None  # for items/users.parquet when writing split snapshots
    session_gap_seconds: float = SESSION_GAP_SECONDS  # the snapshot's inactivity gap (manifest)
    offsets: np.ndarray = field(init=False)  # (n_rows + 1,) row r's events are [offsets[r], offsets[r+1])
    item: np.ndarray = field(init=False)  # (E,) int64 item_idx
    timestamp: np.ndarray = field(init=False)  # (E,) float64
    event_id: np.ndarray = field(init=False)  # (E,) int64
    row: np.ndarray = field(init=False)  # (E,) row of each event
    position: np.ndarray = field(init=False)  # (E,) 0-based position in its row

    def __post_init__(self) -> None:
        self.sequences = self.sequences.combine_chunks()
        self.offsets, self.item = _flat(self.sequences, "item_idx", np.int64)
        self.timestamp = _flat(self.sequences, "timestamps", np.float64)[1]
        self.event_id = _flat(self.sequences, "event_ids", np.int64)[1]
        lengths = np.diff(self.offsets)
        self.row = np.repeat(np.arange(len(lengths)), lengths)
        self.position = np.arange(len(self.item)) - self.offsets[self.row]
        if len(self.item) and (self.item.min() < 0 or self.item.max() >= self.n_items):
            raise ProtocolError(f"item_idx outside the catalogue of {self.n_items} items; re-export the snapshot")
        same = self.row[1:] == self.row[:-1]
        dt, de = np.diff(self.timestamp), np.diff(self.event_id)
        bad = same & ((dt < 0) | ((dt == 0) & (de < 0)))
        if bad.any():
            r = int(self.row[1:][bad][0])
            raise ProtocolError(f"row {r} is not ordered by (timestamp, event_id); re-export the snapshot")

    @property
    def user_idx(self) -> np.ndarray:
        return self.sequences["user_idx"].to_numpy().astype(np.int64)

    @classmethod
    def load(cls, folder: Path | str) -> SnapshotData:
        folder = Path(folder)
        manifest = folder / "manifest.json"
        if not manifest.is_file():
            raise ProtocolError(f"{folder} is not a snapshot (no manifest.json); run `hrnn snapshot` first")
        m = json.loads(manifest.read_text())
        return cls(pq.read_table(folder / "sequences.parquet"), int(m["n_items"]), m["snapshot_id"],
                   m.get("as_of"), folder, float(m.get("session_gap_seconds", SESSION_GAP_SECONDS)))

    @classmethod
    def from_events(cls, user_idx, item_idx, timestamp, n_items: int, event_value=None, event_id=None,
                    event_type: str = "click") -> SnapshotData:
        """Build in memory from parallel arrays (tests, experiments).

        ``event_id`` defaults to file order; it breaks timestamp ties, as in the warehouse.
        """
        u, it, ts = (np.asarray(a) for a in (user_idx, item_idx, timestamp))
        ev = np.full(len(u), np.nan) if event_value is None else np.asarray(event_value, dtype=np.float64)
        eid = np.arange(len(u)) if event_id is None else np.asarray(event_id, dtype=np.int64)
        order = np.lexsort((eid, ts, u))
        u, it, ts, ev, eid = u[order], it[order], ts[order].astype(np.float64), ev[order], eid[order]
        users, start = np.unique(u, return_index=True)
        offsets = np.append(start, len(u)).astype(np.int32)
        first = np.zeros(len(u), dtype=bool)
        first[start] = True
        delta = np.where(first, np.nan, ts - np.roll(ts, 1))
        cols = {
            "event_ids": pa.array(eid, pa.int64()), "timestamps": pa.array(ts, pa.float64()),
            "item_idx": pa.array(it, pa.int32()), "event_types": pa.array([event_type] * len(u), pa.string()),
            "event_values": pa.array(ev, pa.float64(), mask=np.isnan(ev)),
            "time_deltas": pa.array(delta, pa.float64(), mask=first),
            "session_starts": pa.array(first | (delta > SESSION_GAP_SECONDS), pa.bool_()),
            "impressions": pa.nulls(len(u), pa.string()),
            "contexts": pa.nulls(len(u), pa.map_(pa.string(), pa.string())),
        }
        table = pa.table({
            "user_idx": pa.array(users, pa.int32()), "owner_id": pa.array([str(x) for x in users]),
            "n_events": pa.array(np.diff(offsets), pa.int64()),
            **{k: pa.ListArray.from_arrays(pa.array(offsets), v) for k, v in cols.items()},
        })
        return cls(table, int(n_items))


def _flat(table: pa.Table, column: str, dtype) -> tuple[np.ndarray, np.ndarray]:
    col = table[column].combine_chunks() if isinstance(table[column], pa.ChunkedArray) else table[column]
    offsets = np.asarray(col.offsets, dtype=np.int64)
    values = col.values.to_numpy(zero_copy_only=False)[offsets[0]:offsets[-1]].astype(dtype)
    return offsets - offsets[0], values


def select_events(data: SnapshotData, keep: np.ndarray, drop_empty_rows: bool = True) -> pa.Table:
    """The sequences table restricted to events where ``keep`` (flat bool), same schema.

    Where a kept event's previous event in its row was dropped, its ``time_deltas`` becomes the
    gap to the previous kept event (null if none) and it starts a session when it is the owner's
    first kept event, when the previous kept event was in another session, or when that gap
    exceeds the snapshot's session gap: sessions are re-inferred on the kept events, so dropped
    events cannot bridge two kept events into one session (no leakage from dropped events).
    A given session that has a longer gap across a dropped event is split (the snapshot has no
    session ids to tell). Kept prefixes (no earlier event dropped) keep their values.
    """
    table = data.sequences
    if keep.all() and (not drop_empty_rows or (np.diff(data.offsets) > 0).all()):
        return table
    idx = np.flatnonzero(keep)
    counts = np.bincount(data.row[idx], minlength=len(table)).astype(np.int64)
    new_offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
    take = pa.array(idx)
    columns = {}
    for name in table.column_names:
        col = table[name].combine_chunks() if isinstance(table[name], pa.ChunkedArray) else table[name]
        if pa.types.is_list(col.type):
            columns[name] = pa.ListArray.from_arrays(new_offsets, pc.list_flatten(col).take(take), type=col.type)
        else:
            columns[name] = col
    columns["n_events"] = pa.array(counts, pa.int64())
    prev_dropped = np.ones(len(idx), dtype=bool)  # compare each kept event with the one kept before it
    if len(idx):
        first_kept = np.r_[True, data.row[idx][1:] != data.row[idx][:-1]]
        prev_dropped = first_kept | (np.r_[0, np.diff(idx)] != 1)
        if prev_dropped.any() and not np.array_equal(prev_dropped, first_kept & (data.position[idx] == 0)):
            starts = _flat(table, "session_starts", bool)[1] | (data.position == 0)
            session = np.cumsum(starts)[idx]  # global session number of each kept event
            ts = data.timestamp[idx]
            delta = np.where(first_kept, np.nan, ts - np.r_[np.nan, ts[:-1]])
            old_delta = pc.list_flatten(table["time_deltas"].combine_chunks()).take(take)
            old_delta = old_delta.to_numpy(zero_copy_only=False).astype(np.float64)
            new_delta = np.where(prev_dropped, delta, old_delta)
            restart = first_kept | (session != np.r_[-1, session[:-1]]) | (delta > data.session_gap_seconds)
            new_start = np.where(prev_dropped, restart,
                                 _flat(table, "session_starts", bool)[1][idx])
            columns["time_deltas"] = pa.ListArray.from_arrays(
                new_offsets, pa.array(new_delta, pa.float64(), mask=np.isnan(new_delta)))
            columns["session_starts"] = pa.ListArray.from_arrays(new_offsets, pa.array(new_start, pa.bool_()))
    out = pa.table(columns, schema=table.schema)
    return out.filter(pa.array(counts > 0)) if drop_empty_rows else out


def _frequency(data: SnapshotData, keep: np.ndarray) -> np.ndarray:
    return np.bincount(data.item[keep], minlength=data.n_items).astype(np.int64)


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """One evaluation case: read events [0, pos) of ``sequences`` row ``row``, predict ``targets``."""

    owner: int  # user_idx
    row: int  # row in the Cases' sequences (``Split.full`` for test cases)
    pos: int  # history length: events [0, pos) are readable
    targets: np.ndarray  # distinct target item(s)
    target_timestamp: float  # time of the (first) target event
    exclude: np.ndarray | None  # items excluded from the ranking (seen items), None when off


class Cases:
    """Evaluation cases, columnar. Indexing gives a ``Case``; ``batch(idx)`` gives arrays."""

    def __init__(self, sequences: pa.Table, row, pos, target_offsets, target_items, target_timestamp,
                 target_event_id, n_items: int, exclude_seen: bool, candidate_mask: np.ndarray | None = None):
        self.sequences = sequences  # the table whose rows the histories index
        self.row = np.asarray(row, dtype=np.int64)
        self.pos = np.asarray(pos, dtype=np.int64)
        self.target_offsets = np.asarray(target_offsets, dtype=np.int64)  # (n + 1,) into target_items
        self.target_items = np.asarray(target_items, dtype=np.int64)
        self.target_timestamp = np.asarray(target_timestamp, dtype=np.float64)
        self.target_event_id = np.asarray(target_event_id, dtype=np.int64)  # (first) target event
        self.n_items = int(n_items)
        self.exclude_seen = exclude_seen
        self.candidate_mask = candidate_mask  # (n_items,) bool; None = the whole catalogue
        self._offsets, self._items = _flat(sequences, "item_idx", np.int64)
        self.owner = sequences["user_idx"].to_numpy().astype(np.int64)[self.row] if len(self.row) else self.row

    def __len__(self) -> int:
        return len(self.row)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __getitem__(self, i: int) -> Case:
        return Case(int(self.owner[i]), int(self.row[i]), int(self.pos[i]), self.targets(i),
                    float(self.target_timestamp[i]), self.exclude_items(i) if self.exclude_seen else None)

    @property
    def single_target(self) -> bool:
        return bool(np.all(np.diff(self.target_offsets) == 1))

    @property
    def target(self) -> np.ndarray:
        """(n,) the one target per case; raises for multi-target cases."""
        if not self.single_target:
            raise ProtocolError("these cases have several targets each; use targets(i) or batch()")
        return self.target_items

    @property
    def n_users(self) -> int:
        return len(np.unique(self.owner))

    def targets(self, i: int) -> np.ndarray:
        return self.target_items[self.target_offsets[i]:self.target_offsets[i + 1]]

    def history_items(self, i: int) -> np.ndarray:
        start = self._offsets[self.row[i]]
        return self._items[start:start + self.pos[i]]

    def exclude_items(self, i: int) -> np.ndarray:
        return np.unique(self.history_items(i))

    def exclude_mask(self, idx) -> np.ndarray:
        """(len(idx), n_items) bool: seen items (if exclude_seen) or items outside the candidates."""
        idx = np.asarray(idx, dtype=np.int64)
        mask = np.zeros((len(idx), self.n_items), dtype=bool)
        if self.exclude_seen:
            lengths = self.pos[idx]
            starts = self._offsets[self.row[idx]]
            flat = np.arange(lengths.sum()) + np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
            mask[np.repeat(np.arange(len(idx)), lengths), self._items[flat]] = True
        if self.candidate_mask is not None:
            mask |= ~self.candidate_mask
        return mask

    def batch(self, idx) -> dict:
        """Arrays for cases ``idx``: rows, pos, owners, targets ((B,) or a list), exclude mask."""
        idx = np.asarray(idx, dtype=np.int64)
        targets = (self.target_items[self.target_offsets[idx]] if self.single_target
                   else [self.targets(i) for i in idx])
        return {"rows": self.row[idx], "pos": self.pos[idx], "owners": self.owner[idx],
                "targets": targets, "target_timestamp": self.target_timestamp[idx],
                "exclude": self.exclude_mask(idx)}

    def subset(self, idx) -> Cases:
        idx = np.asarray(idx, dtype=np.int64)
        counts = np.diff(self.target_offsets)[idx]
        items = [self.targets(i) for i in idx]
        return Cases(self.sequences, self.row[idx], self.pos[idx], np.concatenate([[0], np.cumsum(counts)]),
                     np.concatenate(items) if items else np.zeros(0, np.int64), self.target_timestamp[idx],
                     self.target_event_id[idx], self.n_items, self.exclude_seen, self.candidate_mask)


def _single_cases(data: SnapshotData, sequences: pa.Table, events: np.ndarray, pos: np.ndarray,
                  exclude_seen: bool, candidate_mask: np.ndarray | None = None) -> Cases:
    """One case per flat event index in ``events`` (of ``data``), histories in ``sequences``."""
    events = np.asarray(events, dtype=np.int64)
    return Cases(sequences, data.row[events], pos, np.arange(len(events) + 1), data.item[events],
                 data.timestamp[events], data.event_id[events], data.n_items, exclude_seen, candidate_mask)


# --------------------------------------------------------------------------- split


class Frame(NamedTuple):
    start: float  # frame covers target times in [start, end)
    end: float
    cases: Cases


@dataclass
class Split:
    """A protocol's train/valid/test split of one snapshot (see the module docstring)."""

    protocol: str
    params: dict
    data: SnapshotData
    full: pa.Table
    train: pa.Table
    item_frequency: np.ndarray  # (n_items,) training events per item
    valid: Cases
    test: Cases
    valid_train: pa.Table
    valid_item_frequency: np.ndarray
    notes: list[str]  # the filtering and counts, for describe()
    cut_time: float | None = None  # temporal / rolling: T
    candidate_mask: np.ndarray | None = None  # cold_start_items: test ranks among these only
    frames: list[Frame] | None = None  # rolling
    # leave_one_out: train plus each validation target as its owner's last event, and the rows
    # (owners) whose last event is that target. A trainer that early-stops may train on ``train``
    # and stop on the protocol's own validation events (RecBole's recipe) instead of holding out
    # training events of its own; write_snapshot(part="train_valid") marks them (holdout.parquet).
    train_valid: pa.Table | None = None
    train_valid_holdout: np.ndarray | None = None

    @property
    def n_items(self) -> int:
        return self.data.n_items

    @property
    def train_items(self) -> np.ndarray:
        """(n_items,) bool: the item occurs in ``train`` (others are still in the catalogue)."""
        return self.item_frequency > 0

    def describe(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in self.params.items())
        lines = [f"protocol {self.protocol}({params}) on snapshot {self.data.snapshot_id}",
                 *(f"  {n}" for n in self.notes),
                 f"  train: {self.train.num_rows:,} owners, {int(self.item_frequency.sum()):,} events, "
                 f"{int(self.train_items.sum()):,} of {self.n_items:,} items seen",
                 f"  valid: {len(self.valid):,} cases ({self.valid.n_users:,} users); "
                 f"test: {len(self.test):,} cases ({self.test.n_users:,} users)",
                 "  ranking: full catalogue" + (" restricted to candidate items" if self.candidate_mask is not None
                                                 else "") +
                 (", seen items excluded (exclude_seen on)" if self.params.get("exclude_seen") else
                  ", seen items NOT excluded (exclude_seen off)")]
        return "\n".join(lines)

    def sequences_before(self, t: float) -> pa.Table:
        """Events of ``full`` strictly before ``t`` (rolling: what a model may train on for a frame)."""
        full = SnapshotData(self.full, self.n_items, session_gap_seconds=self.data.session_gap_seconds)
        return select_events(full, full.timestamp < t)

    def write_snapshot(self, folder: Path | str, part: str = "train") -> Path:
        """Write ``part`` (train | valid_train | full | train_valid) as a snapshot folder the trainer can read.

        ``train_valid`` (leave_one_out): the training events plus each validation target, with
        ``holdout.parquet`` naming the rows whose last event is a validation target; the trainer
        never trains on those events and early-stops on them (``hrnn_core.train.trainer.prepare_data``).

        item_frequency.parquet holds the matching training counts (train's for train and full),
        items/users.parquet are copied from the source snapshot.
        """
        tables = {"train": (self.train, self.item_frequency), "full": (self.full, self.item_frequency),
                  "valid_train": (self.valid_train, self.valid_item_frequency)}
        if self.train_valid is not None:  # the validation targets are events, not training: train's counts
            tables["train_valid"] = (self.train_valid, self.item_frequency)
        if part not in tables:
            raise ProtocolError(f"part must be one of {sorted(tables)}, got {part!r}")
        if self.data.folder is None:
            raise ProtocolError("write_snapshot needs a split built from a snapshot folder (items/users.parquet)")
        seq, freq = tables[part]
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        items = pq.read_table(self.data.folder / "items.parquet")
        for name in ("items", "users"):
            pq.write_table(pq.read_table(self.data.folder / f"{name}.parquet"), folder / f"{name}.parquet")
        pq.write_table(seq, folder / "sequences.parquet")
        if part == "train_valid":  # rows of sequences.parquet whose last event is a validation target
            pq.write_table(pa.table({"row": pa.array(self.train_valid_holdout, pa.int64())}), folder / HOLDOUT_FILE)
        nz = np.flatnonzero(freq)
        item_ids = items["item_id"].to_numpy(zero_copy_only=False)
        pq.write_table(pa.table({"item_idx": pa.array(nz, pa.int32()), "item_id": pa.array(item_ids[nz]),
                                 "events": pa.array(freq[nz], pa.int64())}), folder / "item_frequency.parquet")
        key = json.dumps({"protocol": self.protocol, "params": self.params, "part": part}, sort_keys=True, default=str)
        manifest = {"snapshot_id": f"{self.data.snapshot_id}-{self.protocol}-{part}-"
                                   f"{hashlib.sha256(key.encode()).hexdigest()[:8]}",
                    "as_of": self.cut_time if self.cut_time is not None else self.data.as_of,
                    "n_events": int(seq["n_events"].to_numpy().sum()), "n_owners": seq.num_rows,
                    "n_items": self.n_items, "source_snapshot": self.data.snapshot_id, "part": part,
                    "protocol": self.describe()}
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
        return folder


def _data(snapshot: SnapshotData | Path | str) -> SnapshotData:
    return snapshot if isinstance(snapshot, SnapshotData) else SnapshotData.load(snapshot)


def _check_fraction(name: str, value: float, allow_zero: bool = True) -> None:
    if not (0.0 <= value < 1.0) or (value == 0.0 and not allow_zero):
        raise ProtocolError(f"{name} must be in {'[0' if allow_zero else '(0'}, 1), got {value}")


# --------------------------------------------------------------------------- protocols


def leave_one_out(snapshot, exclude_seen: bool = True) -> Split:
    """Per owner: last event = test, the one before = validation, the rest = training.

    Owners with fewer than 3 events go to training only. The test case reads the whole history
    before the test event (validation event included); the validation case reads the events
    before the validation event. No rating threshold, no k-core filter.
    """
    data = _data(snapshot)
    lengths = np.diff(data.offsets)
    eligible = lengths >= 3
    keep = ~eligible[data.row] | (data.position < lengths[data.row] - 2)
    rows = np.flatnonzero(eligible)
    valid_ev, test_ev = data.offsets[rows] + lengths[rows] - 2, data.offsets[rows] + lengths[rows] - 1
    train = select_events(data, keep)
    freq = _frequency(data, keep)
    full = data.sequences
    keep_tv = keep.copy()
    keep_tv[valid_ev] = True  # full minus the test events
    train_valid = select_events(data, keep_tv)
    # rows of train_valid (empty rows dropped) whose last event is a validation target
    kept_rows = np.flatnonzero(np.bincount(data.row[keep_tv], minlength=len(lengths)) > 0)
    holdout = np.searchsorted(kept_rows, rows).astype(np.int64)
    notes = [f"per owner, (timestamp, event_id) order: last event test, previous validation, rest training; "
             f"{int((~eligible).sum()):,} owners with < 3 events are training only; no rating threshold, no k-core"]
    return Split("leave_one_out", {"exclude_seen": exclude_seen}, data, full, train, freq,
                 _single_cases(data, full, valid_ev, lengths[rows] - 2, exclude_seen),
                 _single_cases(data, full, test_ev, lengths[rows] - 1, exclude_seen),
                 train, freq, notes, train_valid=train_valid, train_valid_holdout=holdout)


def default_cut_time(timestamps: np.ndarray, test_fraction: float) -> float:
    """The time T leaving the last ``test_fraction`` of events at or after T.

    T = the timestamp of the event at index floor((1 - test_fraction) * n) in time order, so at
    least that share of events is at/after T (events tied at T all go to test).
    """
    _check_fraction("test_fraction", test_fraction, allow_zero=False)
    if len(timestamps) == 0:
        raise ProtocolError("the snapshot has no events")
    ts = np.sort(timestamps)
    return float(ts[min(len(ts) - 1, int(math.floor((1.0 - test_fraction) * len(ts))))])


def _temporal_parts(data: SnapshotData, cut_time, test_fraction, horizon, valid_fraction, exclude_seen):
    _check_fraction("valid_fraction", valid_fraction)
    if horizon is not None and horizon <= 0:
        raise ProtocolError(f"horizon must be > 0 seconds, got {horizon}")
    t_cut = default_cut_time(data.timestamp, test_fraction) if cut_time is None else float(cut_time)
    end = math.inf if horizon is None else t_cut + float(horizon)
    before = data.timestamp < t_cut
    if not before.any():
        raise ProtocolError(f"no events before the cut time {t_cut}; pick a later cut_time")
    test_ev = np.flatnonzero(~before & (data.timestamp < end))
    t_valid = default_cut_time(data.timestamp[before], valid_fraction) if valid_fraction > 0 else t_cut
    fit = data.timestamp < t_valid
    valid_ev = np.flatnonzero(before & ~fit)
    full = select_events(data, data.timestamp < end, drop_empty_rows=False)  # rows = snapshot rows
    train, valid_train = select_events(data, before), select_events(data, fit)
    valid = _single_cases(data, full, valid_ev, data.position[valid_ev], exclude_seen)
    test = _single_cases(data, full, test_ev, data.position[test_ev], exclude_seen)
    freq = _frequency(data, before)
    unseen = int((freq[data.item[test_ev]] == 0).sum())
    notes = [f"cut T = {t_cut:.0f} ({'given' if cut_time is not None else f'leaves the last {test_fraction:.0%} of events'}); "
             f"training: events before T; test: every event at/after T"
             + (f" and before T + {horizon:.0f} s" if horizon is not None else "")
             + ", each predicted from all the owner's earlier events (test events included as they stream in)",
             f"validation: events in [{t_valid:.0f}, T) (last {valid_fraction:.0%} of pre-T events), scored "
             f"with valid_train = events before {t_valid:.0f}",
             f"test cases with no history: {int((test.pos == 0).sum()):,}; targets unseen in training: {unseen:,}",
             "popularity and vocabulary flags from training events only; no filtering"]
    return t_cut, full, train, freq, valid, test, valid_train, _frequency(data, fit), notes


def temporal(snapshot, cut_time: float | None = None, test_fraction: float = 0.1, horizon: float | None = None,
             valid_fraction: float = 0.1, exclude_seen: bool = True) -> Split:
    """One global cut T: train before T, every event at/after T (up to T + horizon) is a test case.

    Default T leaves the last ``test_fraction`` of events (by count) for test. Validation: the
    events in the last ``valid_fraction`` (by count) of the pre-T events, see ``Split.valid_train``.
    """
    data = _data(snapshot)
    t_cut, full, train, freq, valid, test, vtrain, vfreq, notes = _temporal_parts(
        data, cut_time, test_fraction, horizon, valid_fraction, exclude_seen)
    params = {"cut_time": t_cut, "test_fraction": test_fraction, "horizon": horizon,
              "valid_fraction": valid_fraction, "exclude_seen": exclude_seen}
    return Split("temporal", params, data, full, train, freq, valid, test, vtrain, vfreq, notes, cut_time=t_cut)


def rolling(snapshot, cut_time: float | None = None, test_fraction: float = 0.1, horizon: float | None = None,
            frame_seconds: float = 3600.0, valid_fraction: float = 0.1, exclude_seen: bool = True) -> Split:
    """The temporal split with the test period cut into frames [T + k f, T + (k+1) f).

    A model scored on a frame may use every event before the frame's start (``sequences_before``);
    only frames with at least one event are listed. ``test`` holds all frames' cases.
    """
    if frame_seconds <= 0:
        raise ProtocolError(f"frame_seconds must be > 0, got {frame_seconds}")
    data = _data(snapshot)
    t_cut, full, train, freq, valid, test, vtrain, vfreq, notes = _temporal_parts(
        data, cut_time, test_fraction, horizon, valid_fraction, exclude_seen)
    k = np.floor((test.target_timestamp - t_cut) / frame_seconds).astype(np.int64)
    frames = [Frame(t_cut + f * frame_seconds, t_cut + (f + 1) * frame_seconds, test.subset(np.flatnonzero(k == f)))
              for f in np.unique(k)]
    notes.append(f"{len(frames):,} non-empty frames of {frame_seconds:.0f} s; a frame's model may use all events "
                 "before the frame start (retrain or update between frames)")
    params = {"cut_time": t_cut, "test_fraction": test_fraction, "horizon": horizon, "frame_seconds": frame_seconds,
              "valid_fraction": valid_fraction, "exclude_seen": exclude_seen}
    return Split("rolling", params, data, full, train, freq, valid, test, vtrain, vfreq, notes,
                 cut_time=t_cut, frames=frames)


def user_holdout(snapshot, test_fraction: float = 0.1, valid_fraction: float = 0.1, seed: int = 0,
                 target_fraction: float = 0.1, last_item_only: bool = False, exclude_seen: bool = True) -> Split:
    """A seeded random ``test_fraction`` of owners (with >= 2 events) are test users.

    They contribute nothing to training. Each test user's newest max(1, floor(target_fraction * n))
    events are the targets (their distinct items; one multi-target case per user) and the older
    events the input; ``last_item_only``: the last event is the only target and every earlier event
    is input (the paper's Table 8). Validation users: a further ``valid_fraction`` of owners, same
    scheme, kept in ``train`` (the protocol trains on all non-test users) and out of ``valid_train``.
    """
    _check_fraction("test_fraction", test_fraction, allow_zero=False)
    _check_fraction("valid_fraction", valid_fraction)
    _check_fraction("target_fraction", target_fraction, allow_zero=False)
    if test_fraction + valid_fraction >= 1.0:
        raise ProtocolError("test_fraction + valid_fraction must be < 1")
    data = _data(snapshot)
    lengths = np.diff(data.offsets)
    eligible = np.flatnonzero(lengths >= 2)
    perm = np.random.default_rng(seed).permutation(eligible)
    n_test = max(1, round(test_fraction * len(eligible))) if len(eligible) else 0
    n_valid = round(valid_fraction * len(eligible))
    test_rows, valid_rows = np.sort(perm[:n_test]), np.sort(perm[n_test:n_test + n_valid])
    is_test = np.zeros(len(lengths), dtype=bool)
    is_test[test_rows] = True
    is_valid = np.zeros(len(lengths), dtype=bool)
    is_valid[valid_rows] = True
    keep, fit = ~is_test[data.row], ~(is_test | is_valid)[data.row]
    full = data.sequences

    def cases(rows: np.ndarray) -> Cases:
        n = lengths[rows]
        n_targets = np.ones_like(n) if last_item_only else np.maximum(1, np.floor(target_fraction * n).astype(np.int64))
        pos = n - n_targets
        items = [np.unique(data.item[data.offsets[r] + p:data.offsets[r + 1]]) for r, p in zip(rows, pos)]
        counts = np.array([len(x) for x in items], dtype=np.int64)
        first = data.offsets[rows] + pos
        return Cases(full, rows, pos, np.concatenate([[0], np.cumsum(counts)]),
                     np.concatenate(items) if items else np.zeros(0, np.int64),
                     data.timestamp[first], data.event_id[first], data.n_items, exclude_seen)

    test, valid = cases(test_rows), cases(valid_rows)
    target_rule = "the last event" if last_item_only else f"the newest max(1, floor({target_fraction:g} n)) events"
    notes = [f"seed {seed}: {len(test_rows):,} test and {len(valid_rows):,} validation users drawn from "
             f"{len(eligible):,} owners with >= 2 events ({int((lengths < 2).sum()):,} shorter owners train only)",
             f"per held-out user: targets = distinct items of {target_rule}, input = the older events; "
             f"mean targets per test user {np.diff(test.target_offsets).mean() if len(test) else 0:.2f}",
             "test users contribute nothing to training; validation users are in train, not in valid_train"]
    params = {"test_fraction": test_fraction, "valid_fraction": valid_fraction, "seed": seed,
              "target_fraction": target_fraction, "last_item_only": last_item_only, "exclude_seen": exclude_seen}
    return Split("user_holdout", params, data, full, select_events(data, keep), _frequency(data, keep),
                 valid, test, select_events(data, fit), _frequency(data, fit), notes)


def cold_start_items(snapshot, cold_fraction: float = 0.5, valid_fraction: float = 0.1, seed: int = 0,
                     exclude_seen: bool = True) -> Split:
    """Hold out a seeded random ``cold_fraction`` of the catalogue; train only on the other items.

    Every event on a cold item is a test case, ranked among the cold items only
    (``candidate_mask``); it reads all of the owner's events on warm items before it (``full`` =
    warm-only sequences, one row per snapshot owner, possibly empty). Cold events are never
    readable. Validation: a further ``valid_fraction`` of the warm items are pseudo-cold (in
    ``train``, out of ``valid_train``; valid cases rank among them and read the other warm items).
    exclude_seen has no effect here: histories hold warm items only, candidates are cold.
    """
    _check_fraction("cold_fraction", cold_fraction, allow_zero=False)
    _check_fraction("valid_fraction", valid_fraction)
    data = _data(snapshot)
    perm = np.random.default_rng(seed).permutation(data.n_items)
    n_cold = max(1, round(cold_fraction * data.n_items))
    n_valid = round(valid_fraction * (data.n_items - n_cold))
    cold = np.zeros(data.n_items, dtype=bool)
    cold[perm[:n_cold]] = True
    pseudo = np.zeros(data.n_items, dtype=bool)
    pseudo[perm[n_cold:n_cold + n_valid]] = True
    warm_ev, fit_ev = ~cold[data.item], ~(cold | pseudo)[data.item]

    def readable_before(readable: np.ndarray, events: np.ndarray) -> np.ndarray:
        c = np.concatenate([[0], np.cumsum(readable)])  # readable events before each flat index
        return c[events] - c[data.offsets[data.row[events]]]

    full = select_events(data, warm_ev, drop_empty_rows=False)
    valid_hist = select_events(data, fit_ev, drop_empty_rows=False)
    test_ev, valid_ev = np.flatnonzero(~warm_ev), np.flatnonzero(pseudo[data.item])
    test = _single_cases(data, full, test_ev, readable_before(warm_ev, test_ev), exclude_seen, cold)
    valid = _single_cases(data, valid_hist, valid_ev, readable_before(fit_ev, valid_ev), exclude_seen, pseudo)
    notes = [f"seed {seed}: {n_cold:,} of {data.n_items:,} items cold (uniform at random); training: events on "
             f"warm items only; test: all {len(test_ev):,} events on cold items, each ranked among the cold items",
             "history readable by a test case: the owner's events on warm items before it (cold events never); "
             f"{int((test.pos == 0).sum()):,} test cases have no history; model uses item metadata (lambda = 1, eq. 2)",
             f"validation: {n_valid:,} warm items pseudo-cold (in train, not in valid_train), ranked among themselves"]
    params = {"cold_fraction": cold_fraction, "valid_fraction": valid_fraction, "seed": seed,
              "exclude_seen": exclude_seen}
    return Split("cold_start_items", params, data, full, select_events(data, warm_ev), _frequency(data, warm_ev),
                 valid, test, select_events(data, fit_ev), _frequency(data, fit_ev), notes, candidate_mask=cold)


PROTOCOLS = {"leave_one_out": leave_one_out, "temporal": temporal, "user_holdout": user_holdout,
             "cold_start_items": cold_start_items, "rolling": rolling}


def build_split(name: str, snapshot, **params) -> Split:
    """The protocol ``name`` (one of PROTOCOLS) with ``params``; unknown names or keys are errors."""
    if name not in PROTOCOLS:
        raise ProtocolError(f"unknown protocol {name!r}; choose one of {sorted(PROTOCOLS)}")
    import inspect  # noqa: PLC0415

    allowed = set(inspect.signature(PROTOCOLS[name]).parameters) - {"snapshot"}
    unknown = set(params) - allowed
    if unknown:
        raise ProtocolError(f"{name} has no parameter(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    return PROTOCOLS[name](snapshot, **params)
