"""What an evaluation protocol reads and builds: snapshot events, evaluation cases, the Split.

``SnapshotData`` is a snapshot's sequences table plus flat numpy views of its events, and
``select_events`` restricts it to some events; ``Cases`` are columnar evaluation cases (``Case``:
one of them); ``Split`` is one protocol's train/valid/test split of a snapshot (``Frame``: one
rolling frame). The protocols that build a Split are in ``hrnn_core.evaluation.protocols``.

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


def repeat_share(sequences: pa.Table) -> float:
    """Share of a sequences table's events whose item their owner already had (0 for an empty table)."""
    from hrnn_core.train.batches import repeat_share_of  # noqa: PLC0415

    offsets, items = _flat(sequences, "item_idx", np.int64)
    return repeat_share_of(np.repeat(np.arange(len(offsets) - 1), np.diff(offsets)), items)


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

    def repeated_targets(self) -> np.ndarray:
        """(n,) bool: the case's (first) target is an item of the history it reads (a repeat)."""
        if len(self.row) == 0:
            return np.zeros(0, dtype=bool)
        row_of = np.repeat(np.arange(len(self._offsets) - 1), np.diff(self._offsets))
        keys = row_of * self.n_items + self._items  # one key per (row, item)
        uniq, first = np.unique(keys, return_index=True)  # first flat index of each (row, item)
        case_keys = self.row * self.n_items + self.target_items[self.target_offsets[:-1]]
        at = np.clip(np.searchsorted(uniq, case_keys), 0, len(uniq) - 1)
        return (uniq[at] == case_keys) & (first[at] < self._offsets[self.row] + self.pos)

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
        repeats = int(self.test.repeated_targets().sum())
        lines.append(f"  test targets that repeat an item of their history: {repeats:,} of {len(self.test):,}")
        if repeats and self.params.get("exclude_seen"):
            lines.append("  WARNING: with exclude_seen on, a repeated target is ranked among unseen items only, so a "
                         "model that scores the user's own items high ranks it first; give exclude_seen false for "
                         "data with repeats (PROTOCOLS.md)")
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
