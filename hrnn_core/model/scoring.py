"""The one scoring function of HRNN-meta: request states -> scores over the catalogue.

Training-time validation (``hrnn_core.train.trainer.evaluate``), the evaluation harness and so the
promotion gate (``hrnn_core.evaluation.hrnn_scorer``), the batch export and the online service
(``hrnn_core.serving.recommend``) all score through ``CatalogueScorer.scores``, so the number that promotes
a model describes the scorer that is served. For a request state ``h`` (the GRU's output at the
request step) at time ``t``::

    score_j = w~_j . h + b~_j  +  trend_weight * log q_j(t)

* ``w~_j, b~_j``: eq. (2)'s mixed decoder vectors at the model's inference lambda
  (``model.inference_item_meta_mix``). **Cold items** (no training events) follow the one policy
  ``model.cold_item_score``: "trained" scores them like every item (with the dense softmax their id rows
  were trained as negatives of every event), "metadata" with lambda = 1 (their metadata only). Items
  added after training (``add_items``) have no id row: always lambda = 1.
* ``log q_j(t)``: eq. (5)'s trend term, ``q(t)`` = the add-k smoothed item shares of the events in
  ``[t_b - model.trend_window_seconds, t_b)``, ``t_b`` = ``t`` floored to ``model.trend_bucket_seconds``
  (``hrnn_core.model.trend.WindowedPopularity``); no popularity given or a weight of 0: no term.
"""

from __future__ import annotations

import numpy as np
import torch

from hrnn_core.model.network import HRNNMeta
from hrnn_core.model.trend import WindowedPopularity

ITEM_CHUNK = 65_536  # items whose vectors are formed at once


def popularity(model: HRNNMeta, times: np.ndarray, items: np.ndarray, n_items: int | None = None
               ) -> WindowedPopularity:
    """The model's ``q(t)`` over events (``times``, ``items``): its window, bucket and smoothing."""
    cfg = model.cfg
    return WindowedPopularity(times, items, model.n_items if n_items is None else n_items,
                              window_seconds=cfg.trend_window_seconds, bucket_seconds=cfg.trend_bucket_seconds,
                              smoothing=cfg.trend_smoothing)


class CatalogueScorer:
    """Scores of a model's catalogue (plus items added after training) for request states."""

    def __init__(self, model: HRNNMeta, item_freq: torch.Tensor, mix: float | None = None,
                 trend: WindowedPopularity | None = None, trend_weight: float | None = None):
        self.model = model
        cfg = model.cfg
        self.mix = float(cfg.inference_item_meta_mix if mix is None else mix)
        self.trend = trend
        self.trend_weight = cfg.trend_weight if trend_weight is None else float(trend_weight)
        dev = model.item_w.weight.device
        self.cold = (torch.as_tensor(item_freq).to(dev) == 0)[: model.n_items]  # (n,) no training events
        self._lam: float | torch.Tensor = self.mix  # eq. (2)'s lambda, per item where cold items differ
        if cfg.cold_item_score == "metadata" and model.meta_out is not None and self.mix < 1.0 and bool(self.cold.any()):
            self._lam = torch.where(self.cold, 1.0, self.mix).float()
        h = cfg.hidden_size
        self._new_w, self._new_b = torch.zeros(0, h, device=dev), torch.zeros(0, device=dev)  # added items
        self._full: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def n_items(self) -> int:
        return self.model.n_items + len(self._new_b)

    def uses_trend(self) -> bool:
        return self.trend is not None and self.trend_weight > 0

    # ------------------------------------------------------------------ item vectors

    @torch.no_grad()
    def vectors(self, items: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. (2) vectors (C, H), (C,) of ``items`` (indices into the model's catalogue) or of all
        items, added ones last; the full table is formed once and kept (the model must not change)."""
        if items is not None:
            return self._model_vectors(items)
        if self._full is None:
            all_items = torch.arange(self.model.n_items, device=self._new_b.device)
            parts = [self._model_vectors(c) for c in all_items.split(ITEM_CHUNK)]
            self._full = (torch.cat([p[0] for p in parts] + [self._new_w]),
                          torch.cat([p[1] for p in parts] + [self._new_b]))
        return self._full

    def _model_vectors(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lam = self._lam if isinstance(self._lam, float) else self._lam[items]
        w, b = self.model.item_vectors(items, lam)
        return w.float(), b.float()

    @torch.no_grad()
    def add_items(self, cat: torch.Tensor, num: torch.Tensor) -> None:
        """Items that were not in the training catalogue, from their encoded metadata (lambda = 1)."""
        w, b = self.model.meta_vectors(cat.to(self._new_b.device), num.to(self._new_b.device))
        self._new_w, self._new_b = torch.cat([self._new_w, w.float()]), torch.cat([self._new_b, b.float()])
        self.cold = torch.cat([self.cold, torch.ones(len(b), dtype=torch.bool, device=self.cold.device)])
        self._full = None

    # ------------------------------------------------------------------ the scoring function

    @torch.no_grad()
    def scores(self, h: torch.Tensor, times: np.ndarray | None = None, items: torch.Tensor | None = None,
               trend_weight: float | None = None) -> torch.Tensor:
        """(B, C) float32 scores of ``items`` (default: the whole catalogue) for request states
        ``h`` (B, H) at request ``times`` (B,) epoch seconds: eq. (2) plus eq. (5)'s term."""
        w, b = self.vectors(items)
        out = h.float() @ w.T + b
        weight = self.trend_weight if trend_weight is None else trend_weight
        if weight and self.trend is not None:
            if times is None:
                raise ValueError("the trend term needs the request times")
            log_q = self.trend.log_q_at(np.asarray(times, dtype=np.float64)).to(out.device)  # (B, n_trend)
            width = log_q.shape[1]
            if items is None:
                shift = log_q if width == out.shape[1] else _pad(log_q, out.shape[1])
            else:
                shift = _pad(log_q, self.n_items)[:, items]
            out = out + weight * shift
        return out

    @torch.no_grad()
    def target_scores(self, h: torch.Tensor, target: torch.Tensor, times: np.ndarray | None = None) -> torch.Tensor:
        """(B,) the score of one item per row (``target`` (B,), model items), as ``scores`` gives it."""
        w, b = self.vectors(target)
        out = (h.float() * w).sum(-1) + b
        if self.trend_weight and self.trend is not None:
            log_q = self.trend.log_q_at(np.asarray(times, dtype=np.float64)).to(out.device)
            out = out + self.trend_weight * log_q.gather(1, target[:, None].to(out.device)).squeeze(1)
        return out


def _pad(log_q: torch.Tensor, width: int) -> torch.Tensor:
    """Trend columns for items beyond the popularity's catalogue (added items): the add-k floor."""
    if log_q.shape[1] >= width:
        return log_q[:, :width]
    floor = log_q.min(dim=1, keepdim=True).values if log_q.shape[1] else torch.zeros(len(log_q), 1)
    return torch.cat([log_q, floor.expand(-1, width - log_q.shape[1])], dim=1)
