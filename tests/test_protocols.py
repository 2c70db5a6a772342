"""Evaluation protocols (hrnn_core.evaluation.protocols, splits): exact splits and no test leakage into training."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from hrnn_core.evaluation.protocols import (
    PROTOCOLS,
    build_split,
    check_protocol,
    cold_start_items,
    default_cut_time,
    leave_one_out,
    rolling,
    temporal,
    user_holdout,
)
from hrnn_core.evaluation.splits import Cases, ProtocolError, SnapshotData, repeat_share, select_events

N_ITEMS = 40


def events(seed=0, n_users=30, n_events=600):
    """Random log with timestamp ties (file order breaks them) and a few one/two-event users."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, n_events)
    users[:3] = [n_users, n_users + 1, n_users + 1]  # a 1-event and a 2-event owner
    ts = 1_000_000 + rng.integers(0, 200, n_events) * 600  # ties on purpose
    items = rng.integers(0, N_ITEMS, n_events)
    values = rng.integers(1, 6, n_events).astype(float)
    return users, items, ts, values


def data_from(users, items, ts, values=None, ids=None):
    return SnapshotData.from_events(users, items, ts, N_ITEMS, event_value=values, event_id=ids)


def owner_events(d: SnapshotData, row: int) -> np.ndarray:
    return d.item[d.offsets[row]:d.offsets[row + 1]]


def train_equal(a, b):
    assert a.train.equals(b.train)
    assert np.array_equal(a.item_frequency, b.item_frequency)
    assert a.valid_train.equals(b.valid_train)


# --------------------------------------------------------------------------- leave_one_out


def test_leave_one_out_hand_example():
    d = data_from([0, 0, 0, 0, 0, 1, 1], [3, 1, 4, 1, 5, 9, 2], [10, 20, 20, 30, 40, 5, 6])
    s = leave_one_out(d)
    assert s.train["item_idx"].to_pylist() == [[3, 1, 4], [9, 2]]  # owner 1 (2 events): training only
    assert (len(s.valid), len(s.test)) == (1, 1)
    assert (s.valid[0].pos, s.valid[0].targets.tolist()) == (3, [1])
    assert (s.test[0].pos, s.test[0].targets.tolist()) == (4, [5])
    assert s.test[0].exclude.tolist() == [1, 3, 4]  # validation event's item included
    assert s.item_frequency[[1, 2, 3, 4, 5, 9]].tolist() == [1, 1, 1, 1, 0, 1]
    assert not s.train_items[5] and s.n_items == N_ITEMS
    mask = s.test.exclude_mask([0])
    assert mask[0].nonzero()[0].tolist() == [1, 3, 4]
    off = leave_one_out(d, exclude_seen=False)
    assert off.test[0].exclude is None and not off.test.exclude_mask([0]).any()
    assert "exclude_seen off" in off.describe() and "leave_one_out" in s.describe()


def test_leave_one_out_test_targets_do_not_reach_training():
    users, items, ts, values = events()
    base = leave_one_out(data_from(users, items, ts, values))
    d = base.data
    last = d.offsets[1:] - 1
    eligible = np.diff(d.offsets) >= 3
    mutated_items, mutated_values = d.item.copy(), np.ones(len(d.item))
    mutated_items[last[eligible]] = (mutated_items[last[eligible]] + 7) % N_ITEMS
    # rebuild from the flat, already ordered events (event ids = file order = the same order)
    mutated = leave_one_out(data_from(d.user_idx[d.row], mutated_items, d.timestamp, mutated_values))
    assert base.train["item_idx"].equals(mutated.train["item_idx"])
    assert base.train["timestamps"].equals(mutated.train["timestamps"])
    assert np.array_equal(base.item_frequency, mutated.item_frequency)
    assert np.array_equal(base.valid.target, mutated.valid.target)
    assert not np.array_equal(base.test.target, mutated.test.target)
    # every test case reads exactly the owner's events before its target
    for c in base.test:
        assert c.pos == len(owner_events(d, c.row)) - 1
        assert set(c.exclude) == set(owner_events(d, c.row)[:-1])


def test_leave_one_out_train_valid_is_train_plus_the_validation_targets():
    """Split.train_valid (what HRNN-meta early-stops on): no test event, the holdout rows' last
    events are exactly the validation targets, everything else is ``train``."""
    users, items, ts, values = events()
    s = leave_one_out(data_from(users, items, ts, values))
    d = s.data
    tv = SnapshotData(s.train_valid, N_ITEMS)
    assert len(tv.item) == len(d.item) - len(s.test)
    assert not set(s.test.target_event_id.tolist()) & set(tv.event_id.tolist())
    last = tv.offsets[s.train_valid_holdout + 1] - 1
    assert np.array_equal(tv.event_id[last], s.valid.target_event_id)
    assert np.array_equal(tv.item[last], s.valid.target)
    rest = np.ones(len(tv.item), dtype=bool)
    rest[last] = False
    train = SnapshotData(s.train, N_ITEMS)
    assert np.array_equal(tv.event_id[rest], train.event_id)  # the rest is train, in the same order


def test_write_snapshot_train_valid_marks_the_holdout(tmp_path):
    users, items, ts, values = events()
    base = leave_one_out(data_from(users, items, ts, values))
    folder = tmp_path / "snap"
    folder.mkdir()
    pq.write_table(base.data.sequences, folder / "sequences.parquet")
    pq.write_table(pa.table({"item_idx": pa.array(np.arange(N_ITEMS), pa.int32()),
                             "item_id": [f"i{i}" for i in range(N_ITEMS)]}), folder / "items.parquet")
    pq.write_table(pa.table({"user_idx": pa.array([0], pa.int32()), "user_id": ["u"]}), folder / "users.parquet")
    s = leave_one_out(SnapshotData(base.data.sequences, N_ITEMS, folder=folder))
    out = s.write_snapshot(tmp_path / "tv", part="train_valid")
    rows = pq.read_table(out / "holdout.parquet")["row"].to_numpy()
    assert np.array_equal(rows, s.train_valid_holdout) and len(rows) == len(s.valid)
    assert pq.read_table(out / "sequences.parquet").equals(s.train_valid)
    freq = pq.read_table(out / "item_frequency.parquet")
    assert int(pc.sum(freq["events"]).as_py()) == int(s.item_frequency.sum())  # training counts only
    assert not (s.write_snapshot(tmp_path / "t", part="train") / "holdout.parquet").exists()
    with pytest.raises(ProtocolError):
        temporal(s.data).write_snapshot(tmp_path / "x", part="train_valid")


# --------------------------------------------------------------------------- temporal


def test_temporal_train_is_before_cut_and_cases_stream():
    users, items, ts, values = events(1)
    d = data_from(users, items, ts, values)
    s = temporal(d)
    t_cut = s.cut_time
    assert t_cut == default_cut_time(d.timestamp, 0.1)
    assert (d.timestamp >= t_cut).sum() >= 0.1 * len(d.timestamp)
    train_ts = np.concatenate(s.train["timestamps"].to_pylist())
    assert train_ts.max() < t_cut
    assert np.concatenate(s.valid_train["timestamps"].to_pylist()).max() < s.valid.target_timestamp.min()
    assert len(s.test) == int((d.timestamp >= t_cut).sum())
    assert np.all(s.test.target_timestamp >= t_cut) and np.all(s.valid.target_timestamp < t_cut)
    for c in s.test:  # history = all of the owner's earlier events, earlier test events included
        seq = owner_events(d, c.row)
        ev = d.offsets[c.row] + c.pos
        assert d.item[ev] == c.targets[0] and d.timestamp[ev] == c.target_timestamp
        assert set(c.exclude) == set(seq[:c.pos])
    assert np.array_equal(s.item_frequency, np.bincount(d.item[d.timestamp < t_cut], minlength=N_ITEMS))


def test_temporal_removing_test_events_changes_nothing_in_training():
    users, items, ts, values = events(2)
    base = temporal(data_from(users, items, ts, values))
    t_cut = base.cut_time
    keep = ts < t_cut
    ids = np.arange(len(users))
    cut = temporal(data_from(users[keep], items[keep], ts[keep], values[keep], ids[keep]), cut_time=t_cut)
    train_equal(base, cut)
    assert np.array_equal(base.valid.target, cut.valid.target) and len(cut.test) == 0
    scrambled = items.copy()
    scrambled[~keep] = 0
    other = temporal(data_from(users, scrambled, ts, values), cut_time=t_cut)
    train_equal(base, other)


def test_temporal_horizon_and_no_validation():
    users, items, ts, values = events(3)
    d = data_from(users, items, ts, values)
    t_cut = float(np.quantile(ts, 0.5))
    s = temporal(d, cut_time=t_cut, horizon=3600, valid_fraction=0.0)
    assert np.all((s.test.target_timestamp >= t_cut) & (s.test.target_timestamp < t_cut + 3600))
    assert len(s.valid) == 0 and s.valid_train.equals(s.train)
    assert s.full.num_rows == d.sequences.num_rows  # full keeps the snapshot's rows
    with pytest.raises(ProtocolError):
        temporal(d, horizon=-1)


def test_rolling_frames_partition_the_test_period():
    users, items, ts, values = events(4)
    s = rolling(data_from(users, items, ts, values), frame_seconds=1800)
    assert sum(len(f.cases) for f in s.frames) == len(s.test)
    for f in s.frames:
        assert len(f.cases) and f.end - f.start == 1800 and f.start >= s.cut_time
        assert np.all((f.cases.target_timestamp >= f.start) & (f.cases.target_timestamp < f.end))
        before = s.sequences_before(f.start)
        assert np.concatenate(before["timestamps"].to_pylist()).max() < f.start
    assert [f.start for f in s.frames] == sorted(f.start for f in s.frames)


# --------------------------------------------------------------------------- user_holdout


def test_user_holdout_test_users_never_train():
    users, items, ts, values = events(5)
    d = data_from(users, items, ts, values)
    s = user_holdout(d, test_fraction=0.2, seed=3)
    test_users = set(s.test.owner.tolist())
    assert len(test_users) == len(s.test) == round(0.2 * int((np.diff(d.offsets) >= 2).sum()))
    assert test_users.isdisjoint(s.train["user_idx"].to_pylist())
    assert set(s.valid.owner.tolist()) <= set(s.train["user_idx"].to_pylist())
    assert set(s.valid.owner.tolist()).isdisjoint(s.valid_train["user_idx"].to_pylist())
    for c in s.test:
        seq = owner_events(d, c.row)
        n_targets = max(1, int(np.floor(0.1 * len(seq))))
        assert c.pos == len(seq) - n_targets
        assert c.targets.tolist() == sorted(set(seq[c.pos:].tolist()))
    # mutating the test users' events leaves training untouched
    is_test = np.isin(d.user_idx[d.row], list(test_users))
    mutated = d.item.copy()
    mutated[is_test] = 0
    other = user_holdout(data_from(d.user_idx[d.row], mutated, d.timestamp, np.zeros(len(mutated))),
                         test_fraction=0.2, seed=3)
    assert other.train["item_idx"].equals(s.train["item_idx"])
    assert np.array_equal(other.item_frequency, s.item_frequency)
    assert np.array_equal(other.test.owner, s.test.owner)
    last = user_holdout(d, test_fraction=0.2, seed=3, last_item_only=True)
    assert np.array_equal(last.test.owner, s.test.owner)
    for c in last.test:
        seq = owner_events(d, c.row)
        assert c.pos == len(seq) - 1 and c.targets.tolist() == [seq[-1]]
    assert user_holdout(d, seed=4).test.owner.tolist() != user_holdout(d, seed=5).test.owner.tolist()


# --------------------------------------------------------------------------- cold_start_items


def test_cold_start_items_train_only_on_warm_items():
    users, items, ts, values = events(6)
    d = data_from(users, items, ts, values)
    s = cold_start_items(d, seed=1)
    cold = s.candidate_mask
    assert cold.sum() == N_ITEMS // 2
    train_items = np.concatenate(s.train["item_idx"].to_pylist())
    assert not cold[train_items].any() and not s.train_items[cold].any()
    assert len(s.test) == int(cold[d.item].sum()) and cold[s.test.target].all()
    assert s.test.exclude_mask([0])[0][~cold].all()  # only cold items are candidates
    for i in range(len(s.test)):  # reads every warm event of the owner before the test event
        c = s.test[i]
        row_ev = np.arange(d.offsets[c.row], d.offsets[c.row + 1])
        ev = row_ev[d.event_id[row_ev] == s.test.target_event_id[i]][0]
        warm_before = [x for x in d.item[d.offsets[c.row]:ev] if not cold[x]]
        assert s.test.history_items(i).tolist() == warm_before
    pseudo = s.valid.candidate_mask
    assert not (pseudo & cold).any() and s.train_items[pseudo].any()
    assert not np.isin(np.concatenate(s.valid_train["item_idx"].to_pylist()), np.flatnonzero(pseudo)).any()
    # removing every cold-item event changes nothing in training
    keep = ~cold[items]
    ids = np.arange(len(users))
    other = cold_start_items(data_from(users[keep], items[keep], ts[keep], values[keep], ids[keep]), seed=1)
    train_equal(s, other)


def test_filtered_sequences_recompute_gaps_and_sessions():
    # One inferred session (gaps 1000 s < 1800 s) whose middle event is dropped: the kept events are
    # 2000 s apart, so the dropped event must not bridge them into one session.
    d = SnapshotData.from_events([0] * 5, [0, 1, 2, 3, 4], [0, 1000, 2000, 2100, 9000], 5)
    assert d.sequences["session_starts"].to_pylist() == [[True, False, False, False, True]]
    row = select_events(d, np.array([False, True, False, True, True])).to_pylist()[0]
    assert row["timestamps"] == [1000, 2100, 9000] and row["n_events"] == 3
    assert row["time_deltas"] == [None, 1100, 6900]
    assert row["session_starts"] == [True, False, True]
    row = select_events(d, np.array([True, False, True, True, False])).to_pylist()[0]
    assert row["time_deltas"] == [None, 2000, 100] and row["session_starts"] == [True, True, False]
    prefix = select_events(d, np.array([True, True, True, False, False])).to_pylist()[0]
    assert prefix["time_deltas"] == [None, 1000, 1000] and prefix["session_starts"] == [True, False, False]


# --------------------------------------------------------------------------- plumbing


def test_build_split_rejects_unknown_names_and_keys():
    d = data_from(*events(7)[:3])
    with pytest.raises(ProtocolError):
        build_split("random", d)
    with pytest.raises(ProtocolError):
        build_split("temporal", d, test_frac=0.2)
    assert build_split("leave_one_out", d, exclude_seen=False).params == {"exclude_seen": False}


@pytest.mark.parametrize("name, params, words", [
    ("sasrec", {}, ["unknown protocol 'sasrec'"]),
    ("temporal", {"test_frac": 0.2}, ["test_frac"]),
    ("temporal", {"test_fraction": "0.2"}, ["test_fraction", "'0.2'"]),
    ("temporal", {"test_fraction": 1.0}, ["test_fraction", "1.0"]),
    ("temporal", {"cut_time": float("nan")}, ["cut_time", "nan"]),
    ("temporal", {"horizon": 0}, ["horizon", "0"]),
    ("rolling", {"frame_seconds": -1}, ["frame_seconds", "-1"]),
    ("user_holdout", {"seed": 1.5}, ["seed", "1.5"]),
    ("user_holdout", {"seed": -1}, ["seed", "-1"]),
    ("user_holdout", {"test_fraction": 0.6, "valid_fraction": 0.5}, ["test_fraction + valid_fraction"]),
    ("cold_start_items", {"cold_fraction": 0}, ["cold_fraction"]),
    ("leave_one_out", {"exclude_seen": 1}, ["exclude_seen"]),
])
def test_check_protocol_needs_no_data(tmp_path: Path, name, params, words):
    """The CLI and the retrain DAG check a protocol before any ingest; build_split checks before it reads."""
    with pytest.raises(ProtocolError) as info:
        check_protocol(name, params)
    for word in words:
        assert word in str(info.value)
    with pytest.raises(ProtocolError):
        build_split(name, tmp_path / "no-such-snapshot", **params)  # not a missing-file error: checked first


def test_check_protocol_fills_in_the_defaults():
    assert check_protocol("temporal", {"test_fraction": 0.2}) == {
        "cut_time": None, "test_fraction": 0.2, "horizon": None, "valid_fraction": 0.1, "exclude_seen": True}
    assert check_protocol("user_holdout", {"seed": np.int64(3)})["seed"] == 3  # numpy scalars are numbers too
    for name in PROTOCOLS:
        check_protocol(name)


def test_write_snapshot_and_load_from_folder(tmp_path: Path):
    d = data_from(*events(8))
    src = tmp_path / "snap"
    src.mkdir()
    pq.write_table(d.sequences, src / "sequences.parquet")
    pq.write_table(pa.table({"item_idx": pa.array(range(N_ITEMS), pa.int32()),
                             "item_id": [f"i{i}" for i in range(N_ITEMS)]}), src / "items.parquet")
    pq.write_table(pa.table({"user_idx": pa.array([0], pa.int32()), "user_id": ["u0"]}), src / "users.parquet")
    (src / "manifest.json").write_text(json.dumps({"snapshot_id": "abc", "as_of": 0, "n_items": N_ITEMS}))
    s = temporal(src)
    out = s.write_snapshot(tmp_path / "train")
    m = json.loads((out / "manifest.json").read_text())
    assert m["snapshot_id"].startswith("abc-temporal-train-") and m["as_of"] == s.cut_time
    assert pq.read_table(out / "sequences.parquet").equals(s.train)
    freq = pq.read_table(out / "item_frequency.parquet")
    assert freq["events"].to_pylist() == s.item_frequency[s.item_frequency > 0].tolist()
    assert freq["item_id"][0].as_py() == f"i{int(np.flatnonzero(s.item_frequency)[0])}"
    with pytest.raises(ProtocolError):
        s.write_snapshot(tmp_path / "x", part="test")


ML100K = Path(__file__).resolve().parents[1] / "data" / "snapshots"


@pytest.mark.skipif(not any(ML100K.glob("*/manifest.json")), reason="no exported snapshot (run `hrnn demo`)")
def test_on_exported_snapshot_if_present():
    folder = sorted(ML100K.glob("*/manifest.json"))[0].parent
    s = leave_one_out(folder)
    lengths = np.diff(s.data.offsets)
    assert len(s.test) == int((lengths >= 3).sum())
    assert int(s.item_frequency.sum()) == int(lengths.sum() - 2 * len(s.test))


def test_repeated_targets_are_counted_and_exclude_seen_warns() -> None:
    """A target that repeats an item of its history survives exclude_seen (a target is never excluded), so a
    model that scores seen items high ranks it first among the unseen rest: the split says so (issue 21's
    e-commerce log, taobao: BPR looked 10x better than it is)."""
    seq = pa.table({"item_idx": [[1, 2, 1, 3], [4, 4]], "user_idx": [0, 1]})
    cases = Cases(seq, row=[0, 0, 0, 1, 1], pos=[1, 2, 3, 0, 1], target_offsets=[0, 1, 2, 3, 4, 5],
                  target_items=[2, 1, 3, 4, 4], target_timestamp=np.zeros(5), target_event_id=np.zeros(5),
                  n_items=5, exclude_seen=True)
    assert cases.repeated_targets().tolist() == [False, True, False, False, True]
    assert repeat_share(seq) == pytest.approx(2 / 6)  # the second 1 of row 0 and the second 4 of row 1
