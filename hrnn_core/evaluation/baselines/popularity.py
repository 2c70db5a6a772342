"""Popularity baselines: all-time ("pop") and recent, windowed ("recent_pop").

Both output a distribution over the catalogue (``outputs_distribution = True``), so PPL is defined.

PopularityScorer ("pop")
    Counts c_j = training events of item j (``TrainData.item_frequency``: the protocol's training
    window only), N = sum c_j, n = catalogue size. Logits (additive smoothing, alpha = 1 default)::

        logit_j = log((c_j + alpha) / (N + alpha n))

    With alpha = 1 this is log(c_j + 1) minus a constant: the ranking is by log(count + 1), and
    softmax(logits) is exactly the smoothed frequency (the logits are already log-probabilities).

RecentPopularityScorer ("recent_pop")
    At a request time t, r_j(t) = events on item j in [t - w, t) (w = ``window_seconds``), counted
    over every event known strictly before t: the training events plus the events of
    ``ScoreBatch.sequences`` (the protocol's ``full`` table: any owner's events before t are known to
    a real-time system). The two are merged on ``event_id`` (the snapshot's event ids), so an event
    in both counts once. Events at or after t never count. Logits (Dirichlet smoothing towards
    the all-time distribution p_j of ``pop``, with prior strength m = ``prior_strength``)::

        logit_j = log((r_j(t) + m p_j) / (R(t) + m)),   R(t) = sum_j r_j(t)

    With m <= 1, m p_j < 1, so the all-time term only breaks ties between equal recent counts
    (zero-count items included) and never overturns a difference in recent counts.
    With ``bucket_seconds`` set, the window ends at t floored to that bucket counted from
    ``bucket_origin`` instead of at t: ``[t_b - w, t_b)``. With the rolling protocol's frame length
    and cut time that is the frame start, the paper's Figure 5 baseline ("calculates item
    popularity for each hour and uses it to predict over the next hour").
    This class is the exact, per-request-time version for offline evaluation; the model's trend
    term counts its q(t) from snapshot events (``hrnn_core.model.trend``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from hrnn_core.evaluation.baselines.base import ScoreBatch, Scorer, TrainData
from hrnn_core.evaluation.baselines.features import BaselineError, flat_events, load_files, save_files
from hrnn_core.model.checkpoint import resolve_device


def smoothed_log_frequency(counts: np.ndarray, alpha: float) -> np.ndarray:
    """log((c_j + alpha) / (N + alpha n)) as float64."""
    if alpha <= 0:
        raise BaselineError(f"alpha must be > 0 so every item has a probability, got {alpha}")
    c = np.asarray(counts, dtype=np.float64)
    return np.log(c + alpha) - math.log(c.sum() + alpha * len(c))


@dataclass(frozen=True)
class PopularityConfig:
    alpha: float = 1.0  # additive smoothing of the counts (> 0: every item gets a probability)


class PopularityScorer(Scorer):
    """All-time popularity over the training window; logits are smoothed log-frequencies."""

    name = "pop"
    outputs_distribution = True

    def __init__(self, alpha: float = 1.0, device: str = "cpu"):
        self.config = PopularityConfig(alpha=alpha)
        self.device = resolve_device(device)
        self.logits: torch.Tensor | None = None  # (n_items,)
        self.frequency: np.ndarray | None = None  # (n_items,) training counts

    def fit(self, data: TrainData) -> None:
        freq = np.asarray(data.item_frequency, dtype=np.int64)
        if len(freq) != data.n_items:
            raise BaselineError(f"item_frequency has {len(freq)} entries for a catalogue of {data.n_items} items")
        self.frequency = freq
        self.logits = torch.as_tensor(smoothed_log_frequency(freq, self.config.alpha), dtype=torch.float32,
                                      device=self.device)

    def score(self, batch: ScoreBatch) -> torch.Tensor:
        if self.logits is None:
            raise BaselineError("score() before fit(): fit the scorer or load a saved one")
        return self.logits.unsqueeze(0).expand(len(batch.rows), -1).clone()  # (B, n_items)

    def save(self, folder: Path) -> None:
        if self.frequency is None:
            raise BaselineError("save() before fit()")
        save_files(folder, self.name, {"config": asdict(self.config)},
                   {"frequency": torch.as_tensor(self.frequency)})

    @classmethod
    def load(cls, folder: Path, device: str = "cpu") -> PopularityScorer:
        meta, state = load_files(folder, cls.name)
        scorer = cls(**meta["config"], device=device)
        freq = state["frequency"].numpy()
        scorer.fit(TrainData(None, freq, len(freq), None, None))
        return scorer


@dataclass(frozen=True)
class RecentPopularityConfig:
    window_seconds: float = 86400.0  # w: count events in [t - w, t) before the request time t
    prior_strength: float = 1.0  # m: pseudo-events spread by all-time popularity (<= 1: ties only)
    alpha: float = 1.0  # additive smoothing of the all-time counts (as in PopularityScorer)
    bucket_seconds: float | None = None  # window end = t floored to this bucket (None: t itself)
    bucket_origin: float = 0.0  # where the bucket grid starts (rolling: the cut time, so t_b = frame start)


class RecentPopularityScorer(Scorer):
    """Popularity in the window [t - w, t) before each request, ties broken by all-time popularity."""

    name = "recent_pop"
    outputs_distribution = True

    def __init__(self, window_seconds: float = 86400.0, prior_strength: float = 1.0, alpha: float = 1.0,
                 bucket_seconds: float | None = None, bucket_origin: float = 0.0, device: str = "cpu"):
        if window_seconds <= 0:
            raise BaselineError(f"window_seconds must be > 0, got {window_seconds}")
        if prior_strength <= 0:
            raise BaselineError(f"prior_strength must be > 0 (it keeps every item's probability > 0), "
                                f"got {prior_strength}")
        if bucket_seconds is not None and bucket_seconds <= 0:
            raise BaselineError(f"bucket_seconds must be > 0 (or None), got {bucket_seconds}")
        self.config = RecentPopularityConfig(float(window_seconds), float(prior_strength), float(alpha),
                                             None if bucket_seconds is None else float(bucket_seconds),
                                             float(bucket_origin))
        self.device = resolve_device(device)
        self.n_items = 0
        self.frequency: np.ndarray | None = None  # (n_items,) all-time training counts
        self.prior: np.ndarray | None = None  # (n_items,) m p_j
        self._train: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # (time, item, event_id)
        self._merged: tuple[object, np.ndarray, np.ndarray] | None = None  # (sequences, times, items) cache

    def fit(self, data: TrainData) -> None:
        flat = flat_events(data.sequences)
        self._set(np.asarray(data.item_frequency, dtype=np.int64), flat.timestamp, flat.item, flat.event_id)

    def _set(self, freq: np.ndarray, time: np.ndarray, item: np.ndarray, event_id: np.ndarray) -> None:
        self.n_items = len(freq)
        self.frequency = freq
        self.prior = self.config.prior_strength * np.exp(smoothed_log_frequency(freq, self.config.alpha))
        self._train = (np.asarray(time, np.float64), np.asarray(item, np.int64), np.asarray(event_id, np.int64))
        self._merged = None

    def _events(self, sequences) -> tuple[np.ndarray, np.ndarray]:
        """Training events and ``sequences``' events, merged on event_id, sorted by time."""
        if self._merged is not None and self._merged[0] is sequences:
            return self._merged[1], self._merged[2]
        t, it, eid = self._train
        if sequences is not None:
            flat = flat_events(sequences)
            t, it, eid = (np.concatenate([a, b]) for a, b in
                          ((t, flat.timestamp), (it, flat.item), (eid, flat.event_id)))
        _, first = np.unique(eid, return_index=True)  # each event once
        t, it = t[first], it[first]
        order = np.argsort(t, kind="stable")
        self._merged = (sequences, t[order], it[order])
        return t[order], it[order]

    def recent_counts(self, batch: ScoreBatch) -> np.ndarray:
        """(B, n_items) events per item in [t_i - w, t_i) for each case i (t_i floored to the bucket, if set)."""
        times, items = self._events(batch.sequences)
        t = np.asarray(batch.target_timestamp, dtype=np.float64)
        if self.config.bucket_seconds is not None:  # window end t_b <= t on the bucket grid
            b, o = self.config.bucket_seconds, self.config.bucket_origin
            t = o + np.floor((t - o) / b) * b
        lo = np.searchsorted(times, t - self.config.window_seconds, side="left")  # first event >= t - w
        hi = np.searchsorted(times, t, side="left")  # first event >= t: excluded
        out = np.zeros((len(t), self.n_items), dtype=np.float64)
        for i, (a, b) in enumerate(zip(lo, hi, strict=True)):
            if b > a:
                out[i] = np.bincount(items[a:b], minlength=self.n_items)
        return out

    def score(self, batch: ScoreBatch) -> torch.Tensor:
        if self._train is None:
            raise BaselineError("score() before fit(): fit the scorer or load a saved one")
        r = self.recent_counts(batch)  # (B, n_items)
        logits = np.log(r + self.prior) - np.log(r.sum(axis=1, keepdims=True) + self.config.prior_strength)
        return torch.as_tensor(logits, dtype=torch.float32, device=self.device)

    def save(self, folder: Path) -> None:
        if self._train is None:
            raise BaselineError("save() before fit()")
        t, it, eid = self._train
        save_files(folder, self.name, {"config": asdict(self.config)},
                   {"frequency": torch.as_tensor(self.frequency), "train_time": torch.as_tensor(t),
                    "train_item": torch.as_tensor(it), "train_event_id": torch.as_tensor(eid)})

    @classmethod
    def load(cls, folder: Path, device: str = "cpu") -> RecentPopularityScorer:
        meta, state = load_files(folder, cls.name)
        scorer = cls(**meta["config"], device=device)
        scorer._set(state["frequency"].numpy(), state["train_time"].numpy(), state["train_item"].numpy(),
                    state["train_event_id"].numpy())
        return scorer
