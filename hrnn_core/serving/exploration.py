"""Exploration for new items: an optimism bonus that gives young items with few events some slots of
a top k (the service's ``/recommend`` and ``/recommend_batch`` and the batch export, through
``hrnn_core.serving.recommend.Recommender``). The reasoning is in ``docs/exploration.md``.

For a request with scores ``s`` over the catalogue (``CatalogueScorer.scores``: eq. 2 + eq. 5, softmax
logits) at time ``t``, a **young** item ``j`` (``0 <= t - born_j < serve.exploration_item_age_days``,
``born_j`` = its ``creation_timestamp``, else its first event) ranks by::

    s_j + exploration_weight * std(s) / sqrt(1 + n_j)

``n_j`` = the item's events so far (the snapshot's plus those the service logged since). Other items
rank by ``s_j``. An upper confidence bound: a logit estimated from ``n`` events is uncertain to about
``1 / sqrt(n)`` (the standard error of a log-rate), and the bonus is measured in standard deviations of the
request's own scores, so one weight means the same thing for every model, catalogue and request (a logit's
scale is arbitrary: softmax is unchanged by a shift, and training sets the spread). Items with neither a
creation time nor an event have no known age and are not explored (an item table with
``creation_timestamp`` lets new items be shown before their first event).

The bonus is applied in the serving layer on top of the scores, never inside them: the evaluation, and so
the promotion gate, scores the model without it. With a weight of 0 nothing here runs.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from hrnn_core.model.scoring import NO_SCORE

DAY_SECONDS = 86_400.0


class Exploration:
    """Item ages and event counts of one served model's catalogue, and the bonus of a batch of requests."""

    def __init__(self, item_index: dict[str, int], n_items: int, snapshot_dir: Path | None,
                 event_times: np.ndarray, event_items: np.ndarray, weight: float, item_age_days: float):
        """``event_times``, ``event_items`` (engine item indices, -1 = outside the catalogue): the
        snapshot's events; ``snapshot_dir``'s ``items.parquet`` gives the creation times."""
        self.weight = float(weight)
        self.age_seconds = float(item_age_days) * DAY_SECONDS
        self.n = n_items
        self._lock = threading.Lock()
        born = np.full(n_items, np.inf)  # (n,) epoch seconds; inf = age unknown
        items = np.asarray(event_items if self.active else [], dtype=np.int64)  # off: nothing to count
        known = items >= 0
        times, items = np.asarray(event_times, dtype=np.float64)[known], items[known]
        np.minimum.at(born, items, times)  # first event
        if snapshot_dir is not None and self.active:
            path = Path(snapshot_dir) / "items.parquet"
            if "creation_timestamp" in pq.read_schema(path).names:
                t = pq.read_table(path, columns=["item_id", "creation_timestamp"]).to_pydict()
                for item, created in zip(t["item_id"], t["creation_timestamp"], strict=True):
                    i = item_index.get(item)
                    if i is not None and i < n_items and created is not None and math.isfinite(created):
                        born[i] = float(created)  # the item table's creation time wins over the first event
        self._born = torch.from_numpy(born)  # (n,) float64
        self._count = torch.from_numpy(np.bincount(items, minlength=n_items)[:n_items].astype(np.float64))  # (n,)

    @property
    def active(self) -> bool:
        return self.weight > 0

    def add_live(self, times: np.ndarray, items: np.ndarray) -> None:
        """Events the service logged (engine item indices, -1 = outside the catalogue): counts, and a
        first event for items without a known age."""
        keep = items >= 0
        if not self.active or not keep.any():
            return
        idx, t = torch.from_numpy(items[keep].astype(np.int64)), torch.from_numpy(times[keep].astype(np.float64))
        with self._lock:
            count = self._count.clone()  # replaced, never changed in place: a request may be reading it
            count.index_add_(0, idx, torch.ones(len(idx), dtype=torch.float64))
            first = self._born.clone().scatter_reduce_(0, idx, t, reduce="amin")
            born = torch.where(torch.isinf(self._born), first, self._born)  # a known age (creation, first event) stays
            self._count, self._born = count, born

    def item_age_seconds(self, item: int, at_time: float) -> float:
        """The item's age at ``at_time`` (inf when unknown)."""
        return float(at_time - self._born[item]) if math.isfinite(self._born[item]) else math.inf

    def events(self, item: int) -> int:
        return int(self._count[item])

    @torch.no_grad()
    def bonus(self, scores: torch.Tensor, times: np.ndarray, enabled: list[bool]
              ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(items (C,), bonus (B, C)) for requests ``scores`` (B, n) at ``times`` (B,): the young items of
        any request and each request's bonus on them (0 where the item is not young at that request's time
        or the request switched exploration off); None when no request explores anything."""
        if not self.active or not any(enabled):
            return None
        born, count = self._born, self._count
        t = torch.from_numpy(np.asarray(times, dtype=np.float64))  # (B,)
        on = torch.tensor(enabled)
        lo, hi = float(t[on].min()) - self.age_seconds, float(t[on].max())
        cand = torch.nonzero((born > lo) & (born <= hi)).squeeze(1)  # (C,) young for some request
        if not len(cand):
            return None
        scored = scores > NO_SCORE / 2  # (B, n) items the model can score (NO_SCORE: no metadata, no events)
        age = t[:, None] - born[cand][None, :]  # (B, C) seconds
        young = (age >= 0) & (age < self.age_seconds) & on[:, None] & scored[:, cand.to(scores.device)].cpu()
        optimism = (1.0 / torch.sqrt(1.0 + count[cand])).float()[None, :]  # (1, C) ~ standard error of a log-rate
        b = torch.where(young, self.weight * spread(scores, scored).cpu() * optimism, 0.0)  # (B, C)
        return cand.to(scores.device), b.to(scores.device)


def spread(scores: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    """(B, 1) the standard deviation of each request's scores over the items it can score (0 for fewer
    than two): the scale the bonus is measured in (a NO_SCORE of -1e9 would swamp a plain std)."""
    x = scores.float()
    if bool(scored.all()):  # the usual case: one pass
        return x.std(dim=1, keepdim=True).nan_to_num(0.0, posinf=0.0, neginf=0.0) if x.shape[1] > 1 \
            else torch.zeros(len(x), 1, device=x.device)
    n = scored.sum(dim=1, keepdim=True)  # (B, 1)
    mean = torch.where(scored, x, 0.0).sum(dim=1, keepdim=True) / n.clamp_min(1)
    var = torch.where(scored, (x - mean) ** 2, 0.0).sum(dim=1, keepdim=True) / (n - 1).clamp_min(1)
    return torch.where(n > 1, var.sqrt(), 0.0).nan_to_num(0.0, posinf=0.0, neginf=0.0)


def exploration_from_config(serve_cfg, item_index: dict[str, int], n_items: int, snapshot_dir: Path | None,
                            event_times: np.ndarray, event_items: np.ndarray) -> Exploration:
    """The exploration of a served model with ``serve.exploration_weight`` and ``serve.exploration_item_age_days``."""
    return Exploration(item_index, n_items, snapshot_dir, event_times, event_items, serve_cfg.exploration_weight,
                       serve_cfg.exploration_item_age_days)
