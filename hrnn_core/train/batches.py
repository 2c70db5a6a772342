"""The training data and its batches (the first phases of ``hrnn_core.train.trainer.train``).

1. **data** (``prepare_data``): fit the feature space on the snapshot, encode all events, cap each
   owner's history at a length percentile (most recent events kept) and hold out each of up to
   ``val_owners`` owners' last event for validation (or, when the snapshot names its own
   validation targets in ``holdout.parquet``, hold out all of those and validate on them).
2. **batches** (``user_parallel_windows``, GRU4Rec session-parallel, per owner): B slots each follow
   one owner through windows of T events; when an owner's events run out *inside* a window the
   slot takes the next owner at once and its state restarts from the learned initial state there.
   Each epoch trains the events of one owner that share a timestamp in a fresh order
   (``tie_order``), and ``seen_masks`` tracks the items each slot's owner had so far.
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


def prepare_data(snapshot_dir: Path, model_cfg: ModelConfig, train_cfg: TrainConfig,
                 features: FeatureSpace | None = None) -> TrainData:
    """Phase 1: features fit on this snapshot (or ``features``: a warm start's, ``hrnn_core.train.warm``),
    encoded events, capped histories, validation split."""
    fs = features if features is not None else FeatureSpace.fit(snapshot_dir, model_cfg)
    ev = encode_events(snapshot_dir, fs, train_cfg.max_impressions)
    item_cat, item_num = fs.item_table(snapshot_dir)
    start, end = ev.owner_start[:-1], ev.owner_start[1:]
    lengths = end - start
    max_len = max(2, int(math.ceil(np.quantile(lengths, train_cfg.max_len_percentile))))
    start = np.maximum(start, end - max_len)  # keep the most recent events
    rng = np.random.default_rng(np.random.SeedSequence(train_cfg.seed, spawn_key=(1,)))
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
        val = np.sort(rng.permutation(eligible)[: train_cfg.val_owners])
        train_end[val] -= 1  # the held-out last event is never trained on
    keep = train_end > start
    owner_of = np.repeat(np.arange(ev.n_owners), np.diff(ev.owner_start))
    return TrainData(
        features=fs, events=ev, item_cat=item_cat, item_num=item_num,
        train_segments=np.stack([start[keep], train_end[keep]], axis=1),
        val_segments=np.stack([start[val], end[val]], axis=1), max_len=max_len,
        event_user=torch.from_numpy(ev.owner_user[owner_of]),
    )


def user_parallel_windows(segments: np.ndarray, batch_size: int, bptt: int
                          ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Phase 2: (B, T) event indices (-1 = padding) and reset flags, owners packed per slot.

    Slots take segments in the given order; a slot whose owner ends mid-window continues with
    the next owner in the same window (reset flag at that position). Padding appears only when
    no owner is left.
    """
    queue = iter(segments.tolist())
    cur = [[0, 0] for _ in range(batch_size)]  # per slot: [cursor, end]
    alive = True
    while True:
        idx = np.full((batch_size, bptt), -1, dtype=np.int64)
        reset = np.zeros((batch_size, bptt), dtype=bool)
        for b in range(batch_size):
            pos = 0
            while pos < bptt:
                if cur[b][0] >= cur[b][1]:
                    nxt = next(queue, None) if alive else None
                    if nxt is None:
                        alive = False
                        break
                    cur[b] = list(nxt)
                    reset[b, pos] = True
                m = min(bptt - pos, cur[b][1] - cur[b][0])
                idx[b, pos:pos + m] = np.arange(cur[b][0], cur[b][0] + m)
                cur[b][0] += m
                pos += m
        if (idx < 0).all():
            return
        yield idx, reset


def gather_inputs(data: TrainData, idx: torch.Tensor, reset: torch.Tensor) -> StepInputs:
    """(B, T) event indices (-1 padding) -> model inputs (``hrnn_core.model.steps.gather_steps``)."""
    return gather_steps(data.events, idx, data.event_user[idx.clamp(min=0)], reset)


def repeat_share(data: TrainData) -> float:
    """Share of training events whose item their owner already had in its training events."""
    seg = data.train_segments
    n = int((seg[:, 1] - seg[:, 0]).sum())
    if n == 0:
        return 0.0
    lengths = seg[:, 1] - seg[:, 0]
    owner = np.repeat(np.arange(len(seg), dtype=np.int64), lengths)  # segment of each training event
    idx = seg[owner, 0] + np.arange(n) - (np.cumsum(lengths) - lengths)[owner]  # its event index
    keys = owner * (data.features.n_items + 1) + data.events.target.numpy()[idx]
    return float(1.0 - len(np.unique(keys)) / n)


def repeat_rate(data: TrainData) -> float:
    """Share of the training events with an earlier event of their owner whose item that owner already had,
    add-one smoothed: the repeat term's calibration target (``hrnn_core.model.scoring.calibrate_repeat_prior``)."""
    seg = data.train_segments
    n = int((seg[:, 1] - seg[:, 0]).sum())
    with_history = n - int((seg[:, 1] > seg[:, 0]).sum())
    return (repeat_share(data) * n + 1.0) / (with_history + 2.0)


def seen_masks(seen: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, reset: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, n_items) items each slot's owner had before each position (``resolve_exclude_seen``).

    ``seen`` (B, n_items) is carried from the previous window (like the hidden state), ``target``
    (B, T) the events' items, ``valid`` (B, T) real positions, ``reset`` (B, T) a new owner starts.
    Returns the masks and the state to carry into the next window.
    """
    rows = torch.arange(seen.shape[0], device=seen.device)
    steps = []
    for k in range(target.shape[1]):
        seen = seen & ~reset[:, k, None]  # a new owner has seen nothing
        steps.append(seen)
        seen = seen.index_put((rows, target[:, k]), seen[rows, target[:, k]] | valid[:, k])
    return torch.stack(steps, dim=1), seen


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
