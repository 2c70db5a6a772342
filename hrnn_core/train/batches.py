"""The training data and its batches (the first phases of ``hrnn_core.train.trainer.train``).

1. **data** (``prepare_data``): fit the feature space on the snapshot, encode all events, cap each
   owner's history at a length percentile (most recent events kept) and hold out each of up to
   ``val_owners`` owners' last event for validation (or, when the snapshot names its own
   validation targets in ``holdout.parquet``, hold out all of those and validate on them).
2. **batches** (``owner_windows``, GRU4Rec session-parallel, per owner): each row of a window
   follows one owner through chunks of up to T events (truncated BPTT, the state carried from
   window to window); an owner starts only at a row's first step, so the network runs a window in
   one fused GRU call. A window holds the rows that continue plus new owners until it has
   ``batch_size * bptt`` events, so short owners (sessions) fill a step as long ones do.
   Each epoch trains the events of one owner that share a timestamp in a fresh order
   (``tie_order``), and ``seen_pairs`` tracks the items each row's owner had so far.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from hrnn_core.config import ModelConfig, TrainConfig
from hrnn_core.errors import HrnnError
from hrnn_core.model.features import HOLDOUT_FILE, EncodedEvents, FeatureSpace, encode_events
from hrnn_core.model.network import StepInputs
from hrnn_core.model.steps import gather_steps


class TrainError(HrnnError):
    """Training cannot start or continue (bad settings for the data, run folder conflicts)."""


class NonFiniteLossError(TrainError):
    """The loss became NaN or infinite."""


@dataclass
class TrainData:
    features: FeatureSpace
    events: EncodedEvents
    item_cat: torch.Tensor  # (n_items, Wi) item metadata ids
    item_num: torch.Tensor  # (n_items, 2 Fi)
    train_segments: np.ndarray  # (n, 2) [start, end) of each owner's training events
    val_segments: np.ndarray  # (m, 2) [start, end); the last event of each is the validation target
    max_len: int  # history cap from the length percentile
    event_user: torch.Tensor  # (E,) user_idx of each event's owner
    newer: np.ndarray | None = None  # (E,) a warm start's events at or after the champion's cut (fresh_after)


MIN_FRESH_OWNERS = 50  # a warm start validates on owners newer than its champion only if it has this many


def prepare_data(snapshot_dir: Path, model_cfg: ModelConfig, train_cfg: TrainConfig,
                 features: FeatureSpace | None = None, fresh_after: float | None = None) -> TrainData:
    """Phase 1: features fit on this snapshot (or ``features``: a warm start's, ``hrnn_core.train.warm``),
    encoded events, capped histories, validation split. ``fresh_after`` (a warm start: the champion's snapshot
    cut): validation owners are drawn among those whose last event is at or after it, events the starting
    weights never trained on (with fewer than ``MIN_FRESH_OWNERS`` of them, among all, as a full retrain)."""
    fs = features if features is not None else FeatureSpace.fit(snapshot_dir, model_cfg)
    ev = encode_events(snapshot_dir, fs, train_cfg.max_impressions)
    item_cat, item_num = fs.item_table(snapshot_dir)
    start, end = ev.owner_start[:-1], ev.owner_start[1:]
    lengths = end - start
    max_len = max(2, int(math.ceil(np.quantile(lengths, train_cfg.max_len_percentile))))
    start = np.maximum(start, end - max_len)  # keep the most recent events
    rng = np.random.default_rng(np.random.SeedSequence(train_cfg.seed, spawn_key=(1,)))
    newer = snapshot_times(snapshot_dir, len(ev.target)) >= fresh_after if fresh_after is not None else None
    train_end = end.copy()
    holdout_file = Path(snapshot_dir) / HOLDOUT_FILE
    if holdout_file.exists():
        # the snapshot's own validation targets (Split.write_snapshot(part="train_valid")): every
        # one is held out of training; up to val_owners of them measure early stopping
        rows = pq.read_table(holdout_file)["row"].to_numpy()
        if len(rows) and (rows.min() < 0 or rows.max() >= ev.n_owners or (end[rows] - start[rows] < 2).any()):
            raise TrainError(f"{holdout_file}: rows must name owners with >= 2 events of this snapshot")
        train_end[rows] -= 1
        val = np.sort(rng.permutation(rows)[: train_cfg.val_owners])
    else:
        eligible = np.flatnonzero(end - start >= 2)
        if newer is not None:  # else the warm fit is chosen on the champion's own training events
            fresh = eligible[newer[end[eligible] - 1]]
            eligible = fresh if len(fresh) >= MIN_FRESH_OWNERS else eligible
        val = np.sort(rng.permutation(eligible)[: train_cfg.val_owners])
        train_end[val] -= 1  # the held-out last event is never trained on
    keep = train_end > start
    owner_of = np.repeat(np.arange(ev.n_owners), np.diff(ev.owner_start))
    return TrainData(
        features=fs, events=ev, item_cat=item_cat, item_num=item_num,
        train_segments=np.stack([start[keep], train_end[keep]], axis=1),
        val_segments=np.stack([start[val], end[val]], axis=1), max_len=max_len,
        event_user=torch.from_numpy(ev.owner_user[owner_of]), newer=newer,
    )


@dataclass
class Window:
    """One training window: ``idx`` (B, T) event indices (-1 = padding after a row's end), ``lengths`` (B,)
    real steps per row, ``reset`` (B,) rows that start a new owner, ``slot`` (B,) each row's slot id (a
    continuing row keeps its owner's id, so the state it carries is found by id), ``carry`` (B,) the row
    of the previous window each continuing row follows (-1 for new owners)."""

    idx: np.ndarray
    lengths: np.ndarray
    reset: np.ndarray
    slot: np.ndarray
    carry: np.ndarray

    def rows(self, keep: np.ndarray) -> Window:
        """The window's rows ``keep`` (a bool mask or indices), e.g. one rank's share."""
        return Window(self.idx[keep], self.lengths[keep], self.reset[keep], self.slot[keep], self.carry[keep])


def owner_windows(segments: np.ndarray, batch_size: int, bptt: int) -> Iterator[Window]:
    """Phase 2: windows of up to ``batch_size * bptt`` events, each row one owner's next chunk of <= ``bptt``.

    Owners are taken in the given order. A row whose owner has events left continues in the next
    window (first, in the same order); then new owners join while the window has room. Padding only
    follows a row's last real step.
    """
    budget = batch_size * bptt
    queue = iter(segments.tolist())
    live: list[tuple[int, list[int]]] = []  # (row in the previous window, [cursor, end, slot])
    next_slot, pending = 0, next(queue, None)
    while live or pending is not None:
        rows, carry, total = [], [], 0
        for r, row in live:  # continuing owners keep their place and their state
            rows.append(row)
            carry.append(r)
            total += min(bptt, row[1] - row[0])
        while pending is not None and (total < budget or not rows):
            take = min(bptt, pending[1] - pending[0])
            if rows and total + take > budget:
                break
            rows.append([pending[0], pending[1], next_slot])
            carry.append(-1)
            next_slot, total = next_slot + 1, total + take
            pending = next(queue, None)
        lengths = np.array([min(bptt, e - c) for c, e, _ in rows], dtype=np.int64)
        width = int(lengths.max())
        idx = np.full((len(rows), width), -1, dtype=np.int64)
        for r, (c, _, _) in enumerate(rows):
            idx[r, :lengths[r]] = np.arange(c, c + lengths[r])
            rows[r][0] += int(lengths[r])
        carry_arr = np.array(carry, dtype=np.int64)
        yield Window(idx, lengths, carry_arr < 0, np.array([s for _, _, s in rows], dtype=np.int64), carry_arr)
        live = [(r, row) for r, row in enumerate(rows) if row[0] < row[1]]


def gather_inputs(data: TrainData, window: Window) -> StepInputs:
    """A window's event indices -> model inputs (``hrnn_core.model.steps.gather_steps``)."""
    idx = torch.from_numpy(window.idx)
    return gather_steps(data.events, idx, data.event_user[idx[:, 0].clamp(min=0)], torch.from_numpy(window.reset),
                        torch.from_numpy(window.lengths))


def repeat_share_of(owner: np.ndarray, item: np.ndarray) -> float:
    """Share of events whose item their owner already had: one (owner, item) entry per event, any order; 0 when
    there is none. The one owner of this number: training's exclude-seen rule and repeat term
    (``repeat_share``), the evaluation's splits and the retrain gate (``hrnn_core.evaluation.splits.repeat_share``)."""
    if len(item) == 0:
        return 0.0
    span = int(item.max()) - int(item.min()) + 1
    return float(1.0 - len(np.unique(owner.astype(np.int64) * span + (item - item.min()))) / len(item))


def repeat_share(data: TrainData) -> float:
    """Share of training events whose item their owner already had in its training events."""
    seg = data.train_segments
    lengths = seg[:, 1] - seg[:, 0]
    owner = np.repeat(np.arange(len(seg), dtype=np.int64), lengths)  # segment of each training event
    idx = seg[owner, 0] + np.arange(int(lengths.sum())) - (np.cumsum(lengths) - lengths)[owner]  # its event index
    return repeat_share_of(owner, data.events.target.numpy()[idx])


def repeat_rate(data: TrainData) -> float:
    """Share of the training events with an earlier event of their owner whose item that owner already had,
    add-one smoothed: the repeat term's calibration target (``hrnn_core.model.scoring.calibrate_repeat_prior``)."""
    seg = data.train_segments
    n = int((seg[:, 1] - seg[:, 0]).sum())
    with_history = n - int((seg[:, 1] > seg[:, 0]).sum())
    return (repeat_share(data) * n + 1.0) / (with_history + 2.0)


def seen_pairs(seen: torch.Tensor, target: torch.Tensor, valid: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The items each row's owner had before each real position (``resolve_exclude_seen``), as pairs.

    ``seen`` (B, n_items) is what the row's owner had before the window (carried like the hidden state;
    all False for a new owner), ``target`` (B, T) the events' items, ``valid`` (B, T) real positions.
    Returns (P,) positions (indices into the window's real events in row-major order, as ``out[valid]``),
    (P,) items, and the state to carry into the next window. Pairs may repeat (an item seen twice).
    """
    b, t = target.shape
    dev = target.device
    flat_pos = torch.cumsum(valid.reshape(-1), 0).reshape(b, t) - 1  # (B, T) index among the real events
    later, earlier = torch.triu_indices(t, t, offset=1, device=dev).flip(0)  # pairs j < k: (k, j)
    real = valid[:, earlier] & valid[:, later]  # (B, P0)
    in_pos = flat_pos[:, later][real]
    in_items = target[:, earlier][real]
    own_row, own_item = seen.nonzero(as_tuple=True)  # the items each row had before the window
    steps = valid[own_row]  # (S, T): every real position of that row
    s_idx, k_idx = steps.nonzero(as_tuple=True)
    before_pos = flat_pos[own_row[s_idx], k_idx]
    carry = seen.clone()
    carry[torch.arange(b, device=dev)[:, None].expand(b, t)[valid], target[valid]] = True
    return torch.cat([in_pos, before_pos]), torch.cat([in_items, own_item[s_idx]]), carry


def tie_order(time_delta: np.ndarray, segments: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(E,) a new event order, each run of equal timestamps inside a training segment shuffled at
    random (all other positions, held-out events included, stay put).

    Events with one timestamp have no order of their own (a page of ratings sent at once: 76 % of
    ml-100k's events); their file order is arbitrary, so each epoch presents them in a fresh one.
    """
    order = np.arange(len(time_delta))
    lengths = segments[:, 1] - segments[:, 0]
    if lengths.sum() == 0:
        return order
    seg_of = np.repeat(np.arange(len(segments)), lengths)
    pos = segments[seg_of, 0] + np.arange(len(seg_of)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    starts_group = (pos == segments[seg_of, 0]) | ~(time_delta[pos] == 0)  # NaN (an owner's first) starts one
    group = np.cumsum(starts_group)
    shuffled = pos[np.lexsort((rng.random(len(pos)), group))]  # by group, random inside each
    order[pos] = shuffled
    return order


def snapshot_times(snapshot_dir: Path, n_events: int) -> np.ndarray:
    """(E,) float64 timestamp of each encoded event (sequences.parquet's flat order, the encoder's)."""
    seq = pq.read_table(Path(snapshot_dir) / "sequences.parquet", columns=["timestamps"])
    times = pc.list_flatten(seq["timestamps"]).to_numpy(zero_copy_only=False).astype(np.float64)
    if len(times) != n_events:
        raise TrainError(f"{snapshot_dir}: {len(times)} timestamps for {n_events} encoded events")
    return times
