"""Recent item popularity ``log q_j(t)`` for the eq. (5) trend term, leak-free for evaluation.

Section 3.2, eq. (5): ``p(a | h, t) ∝ p(a | h) q(a | t)``. At inference the model's logits get
``+ w log q_j(t)``, ``w`` = ``trend_weight`` = 1 / temperature (Figure 4), where ``q(t)`` estimates
item exposure "from its global popularity in the last time period".

Here ``q(t)`` is each item's add-k smoothed share of the events in the window
``[t_b - window, t_b)``, where ``t_b`` is the request time ``t`` floored to ``bucket_seconds``
counted from ``origin``. Only events strictly before ``t_b <= t`` count, so nothing at or after
the request leaks in. Two settings matter:

* ``bucket_seconds`` = the frame length and ``origin`` = the first frame's start (the rolling
  protocol's cut time): ``t_b`` is the start of the request's frame, so every request of a frame
  sees the same ``q``, computed from the events before that frame only -- the paper's Figure 5
  ("we calculate item popularity on an hourly basis and feed it into the model").
* ``origin`` = 0 with ``model.trend_bucket_seconds`` (an hour): the product's setting, used alike by
  training (``hrnn_core.train.trainer.training_trend``), training-time validation, the evaluation
  harness (and so the gate), the batch export and the service (``hrnn_core.model.scoring``). The
  service adds the events it logs after the snapshot (``add``), so ``q(t)`` is the same function of
  the events known before ``t_b`` everywhere.

This class is the one popularity window of the project: the eq. (5) term, the ``recent_pop``
baseline and the serving path all count with it.
"""

from __future__ import annotations

import math
import threading

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from hrnn_core.errors import HrnnError


class TrendError(HrnnError):
    """The trend (recent popularity) term cannot be computed with these settings."""


def smoothed_log_share(counts: np.ndarray, smoothing: float) -> np.ndarray:
    """log((c_j + k) / (sum_j c_j + k n)) as float64: the log q_j of eq. (5); add-k keeps log finite."""
    c = np.asarray(counts, dtype=np.float64)
    return np.log(c + smoothing) - math.log(c.sum() + smoothing * len(c))


class WindowedPopularity:
    """Item popularity in ``[t_b - window, t_b)``, ``t_b`` = the request time floored to a bucket."""

    def __init__(self, timestamps: np.ndarray, items: np.ndarray, n_items: int, window_seconds: float,
                 bucket_seconds: float, origin: float = 0.0, smoothing: float = 1.0):
        if window_seconds <= 0 or bucket_seconds <= 0:
            raise TrendError(f"trend window and bucket must be > 0 seconds, got {window_seconds} and {bucket_seconds}")
        if smoothing <= 0:
            raise TrendError(f"trend smoothing must be > 0 (it keeps log q finite), got {smoothing}")
        t = np.asarray(timestamps, dtype=np.float64)
        it = np.asarray(items, dtype=np.int64)
        keep = (it >= 0) & (it < n_items)  # items outside the scored catalogue cannot get a score
        order = np.argsort(t[keep], kind="stable")
        self._times, self._items = t[keep][order], it[keep][order]
        self.n_items = int(n_items)
        self.window, self.bucket, self.origin = float(window_seconds), float(bucket_seconds), float(origin)
        self.smoothing = float(smoothing)
        self._cache: dict[tuple[str, float], np.ndarray] = {}
        self._slide: tuple[int, int, np.ndarray] | None = None  # (lo, hi, counts) of the last window counted
        self._live_t: list[float] = []  # events added after construction (the service's log), in arrival order
        self._live_i: list[int] = []
        self._lock = threading.Lock()  # the service scores and adds events from several threads

    @classmethod
    def from_sequences(cls, sequences: pa.Table, n_items: int, **kwargs) -> WindowedPopularity:
        """From a sequences.parquet-shaped table: every event of every row counts (by its time)."""
        ts = pc.list_flatten(sequences["timestamps"]).to_numpy(zero_copy_only=False)
        items = pc.list_flatten(sequences["item_idx"]).to_numpy(zero_copy_only=False)
        return cls(ts, items, n_items, **kwargs)

    def add(self, timestamps: np.ndarray, items: np.ndarray) -> None:
        """Count more events (the service's live events); cached windows they fall in are recounted."""
        t = np.asarray(timestamps, dtype=np.float64)
        it = np.asarray(items, dtype=np.int64)
        keep = (it >= 0) & (it < self.n_items)
        if not keep.any():
            return
        with self._lock:
            self._add(t[keep], it[keep])

    def _add(self, t: np.ndarray, it: np.ndarray) -> None:
        self._live_t.extend(t.tolist())
        self._live_i.extend(it.tolist())
        lo, hi = float(t.min()), float(t.max())
        self._cache = {k: v for k, v in self._cache.items() if not (k[1] - self.window <= hi and lo < k[1])}

    def forget_before(self, t: float) -> None:
        """Drop added events older than ``t`` (no window ending at ``t + window`` or later reads them)."""
        with self._lock:
            keep = [j for j, x in enumerate(self._live_t) if x >= t]
            self._live_t = [self._live_t[j] for j in keep]
            self._live_i = [self._live_i[j] for j in keep]

    def window_end(self, t: np.ndarray | float) -> np.ndarray:
        """``t_b``: ``t`` floored to the bucket grid that starts at ``origin`` (``t_b <= t``)."""
        t = np.asarray(t, dtype=np.float64)
        return self.origin + np.floor((t - self.origin) / self.bucket) * self.bucket

    def counts(self, end: float) -> np.ndarray:
        """(n_items,) events per item in ``[end - window, end)``; events at or after ``end`` never count."""
        lo, hi = (int(i) for i in np.searchsorted(self._times, [end - self.window, end], side="left"))
        last = self._slide
        if last is not None and lo >= last[0] and hi >= last[1] and (lo - last[0]) + (hi - last[1]) < hi - lo:
            # the window slid forward (windows come sorted): add the events that entered, drop those that left
            c = last[2]  # updated in place: callers only ever get the float copy below
            np.add.at(c, self._items[last[1]:hi], 1)
            np.subtract.at(c, self._items[last[0]:lo], 1)
        else:
            c = np.bincount(self._items[lo:hi], minlength=self.n_items)
        self._slide = (lo, hi, c)
        out = c.astype(np.float64)
        if self._live_t:
            lt = np.asarray(self._live_t)
            inside = (lt >= end - self.window) & (lt < end)
            out += np.bincount(np.asarray(self._live_i)[inside], minlength=self.n_items)
        return out

    def log_q(self, end: float) -> np.ndarray:
        """(n_items,) add-k smoothed log q_j for the window ending at ``end`` (cached per window)."""
        return self._cached("log_q", end, lambda c: smoothed_log_share(c, self.smoothing))

    def share(self, end: float) -> np.ndarray:
        """(n_items,) raw share c_j / sum c of the window ending at ``end`` (all zero for an empty window)."""
        return self._cached("share", end, lambda c: c / max(c.sum(), 1.0))

    def _cached(self, kind: str, end: float, fn) -> np.ndarray:
        key = (kind, float(end))
        with self._lock:
            return self._cached_locked(key, end, fn)

    def _cached_locked(self, key: tuple[str, float], end: float, fn) -> np.ndarray:
        if key not in self._cache:
            if len(self._cache) > 256:  # bounded: a rolling evaluation moves forward frame by frame
                self._cache.clear()
            self._cache[key] = fn(self.counts(float(end)))
        return self._cache[key]

    def log_q_at(self, times: np.ndarray) -> torch.Tensor:
        """(B, n_items) float32 log q_j(t) for each request time (one vector per distinct window)."""
        return self._at(times, self.log_q)

    def share_at(self, times: np.ndarray) -> torch.Tensor:
        """(B, n_items) float32 raw recent share c_j / sum c for each request time."""
        return self._at(times, self.share)

    def log_q_rows(self, times: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``log_q_at`` before its gather: (W, n_items) float32 log q_j of each distinct window among ``times``
        and (B,) each time's row (a caller adding it to scores broadcasts when W is 1)."""
        return self._rows(times, self.log_q)

    def _rows(self, times: np.ndarray, per_window) -> tuple[torch.Tensor, torch.Tensor]:
        uniq, inverse = np.unique(self.window_end(times), return_inverse=True)
        table = np.stack([per_window(e) for e in uniq]) if len(uniq) else np.zeros((0, self.n_items))
        return torch.from_numpy(table.astype(np.float32)), torch.from_numpy(inverse.reshape(-1))

    def _at(self, times: np.ndarray, per_window) -> torch.Tensor:
        table, inverse = self._rows(times, per_window)
        return table.index_select(0, inverse)  # one float32 row per window, one gather (no float64 (B, n) copy)
