"""The five evaluation protocols of PROTOCOLS.md section 3, as train/valid/test splits.

Every protocol is a function ``(snapshot, **parameters) -> Split``; ``snapshot`` is a snapshot
folder (``hrnn_core.data.transforms.export_snapshot``) or a loaded ``SnapshotData``;
``build_split(name, snapshot, **parameters)`` picks one by name. What a Split holds and how each
protocol fills it (``train``, ``full``, the ``valid``/``test`` cases, ``valid_train``,
``exclude_seen``) is described in ``hrnn_core.evaluation.splits``, where the containers live.
``check_protocol(name, parameters)`` checks a name and its parameters without any data.
"""

from __future__ import annotations

import inspect
import math
import numbers
from pathlib import Path

import numpy as np
import pyarrow as pa

from hrnn_core.evaluation.splits import Cases, Frame, ProtocolError, SnapshotData, Split, select_events


def _frequency(data: SnapshotData, keep: np.ndarray) -> np.ndarray:
    return np.bincount(data.item[keep], minlength=data.n_items).astype(np.int64)


def _single_cases(data: SnapshotData, sequences: pa.Table, events: np.ndarray, pos: np.ndarray,
                  exclude_seen: bool, candidate_mask: np.ndarray | None = None) -> Cases:
    """One case per flat event index in ``events`` (of ``data``), histories in ``sequences``."""
    events = np.asarray(events, dtype=np.int64)
    return Cases(sequences, data.row[events], pos, np.arange(len(events) + 1), data.item[events],
                 data.timestamp[events], data.event_id[events], data.n_items, exclude_seen, candidate_mask)


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
    check_protocol("leave_one_out", {"exclude_seen": exclude_seen})
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
    # the parameters were checked by the caller (check_protocol)
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
    check_protocol("temporal", {"cut_time": cut_time, "test_fraction": test_fraction, "horizon": horizon,
                                "valid_fraction": valid_fraction, "exclude_seen": exclude_seen})
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
    check_protocol("rolling", {"cut_time": cut_time, "test_fraction": test_fraction, "horizon": horizon,
                               "frame_seconds": frame_seconds, "valid_fraction": valid_fraction,
                               "exclude_seen": exclude_seen})
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
    check_protocol("user_holdout", {"test_fraction": test_fraction, "valid_fraction": valid_fraction, "seed": seed,
                                    "target_fraction": target_fraction, "last_item_only": last_item_only,
                                    "exclude_seen": exclude_seen})
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
    check_protocol("cold_start_items", {"cold_fraction": cold_fraction, "valid_fraction": valid_fraction,
                                        "seed": seed, "exclude_seen": exclude_seen})
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


def _check_type(protocol: str, key: str, value, annotation: str) -> None:
    """``value`` fits the parameter's annotation ("float", "float | None", "int", "bool")."""
    optional = annotation.endswith("| None")
    kind = annotation.removesuffix("| None").strip()
    if value is None and optional:
        return
    if kind == "bool":
        ok = isinstance(value, (bool, np.bool_))
    elif kind == "int":
        ok = isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))
    else:  # float
        ok = (isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
              and math.isfinite(float(value)))
    if not ok:
        want = {"bool": "true or false", "int": "an integer"}.get(kind, "a finite number")
        raise ProtocolError(f"{protocol}: {key} must be {want}{' or null' if optional else ''}, got {value!r}")


def _check_values(protocol: str, p: dict) -> None:
    """The range checks that need no data, on the full parameter set ``p`` (defaults filled in)."""
    for key, allow_zero in (("test_fraction", False), ("cold_fraction", False), ("target_fraction", False),
                            ("valid_fraction", True)):
        if key in p:
            _check_fraction(key, p[key], allow_zero=allow_zero)
    if p.get("horizon") is not None and p["horizon"] <= 0:
        raise ProtocolError(f"horizon must be > 0 seconds, got {p['horizon']}")
    if "frame_seconds" in p and p["frame_seconds"] <= 0:
        raise ProtocolError(f"frame_seconds must be > 0, got {p['frame_seconds']}")
    if "seed" in p and p["seed"] < 0:
        raise ProtocolError(f"seed must be >= 0, got {p['seed']}")
    if protocol == "user_holdout" and p["test_fraction"] + p["valid_fraction"] >= 1.0:
        raise ProtocolError("test_fraction + valid_fraction must be < 1")


def check_protocol(name: str, params: dict | None = None) -> dict:
    """Check a protocol and its parameters before any data is read; returns them with defaults filled in.

    ``name`` must be one of PROTOCOLS, every key a parameter of that protocol, every value of the
    parameter's type (JSON types: numbers, true/false, null where the default is null) and in its
    range. ProtocolError says which is wrong. ``build_split`` and every protocol call this first,
    so the CLI and the DAGs can check a protocol before they ingest, snapshot or train.
    """
    if name not in PROTOCOLS:
        raise ProtocolError(f"unknown protocol {name!r}; choose one of {sorted(PROTOCOLS)}")
    params = dict(params or {})
    signature = inspect.signature(PROTOCOLS[name])
    allowed = {k: v for k, v in signature.parameters.items() if k != "snapshot"}
    unknown = set(params) - set(allowed)
    if unknown:
        raise ProtocolError(f"{name} has no parameter(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    full = {k: params.get(k, v.default) for k, v in allowed.items()}
    for key, value in full.items():
        _check_type(name, key, value, str(allowed[key].annotation))
    try:
        _check_values(name, full)
    except ProtocolError as exc:
        raise ProtocolError(f"{name}: {exc}") from None
    return full


def build_split(name: str, snapshot, **params) -> Split:
    """The protocol ``name`` (one of PROTOCOLS) with ``params``; unknown names, keys or bad values
    are errors (``check_protocol``), raised before the snapshot is read."""
    check_protocol(name, params)
    return PROTOCOLS[name](snapshot, **params)
