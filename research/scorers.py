"""HRNN-meta rescored in ways the product does not serve: the research studies' scorer.

``StudyScorer`` is ``hrnn_core.evaluation.hrnn_scorer.HRNNScorer`` (same training, same request states, same
scoring function ``hrnn_core.model.scoring.CatalogueScorer``) whose scoring settings can be changed on a
fitted model, so one fit is scored many ways without retraining:

* ``set_inference_mix(mix)``: eq. (2) at another lambda (the model's cold-item policy kept);
* ``trend_window_seconds``, ``trend_bucket_seconds``, ``trend_origin``: eq. (5)'s ``q(t)`` counted
  over ``[t_b - window, t_b)`` with ``t_b`` the request time floored to ``bucket`` from ``origin``
  (default: the model's window and bucket, origin 0, as the product scores). The paper's Figure 5
  (``research.experiments.trend``) uses bucket = the frame length and origin = the cut time, so a
  frame's trend vector comes only from events before the frame;
* ``trend_mode``: ``"add"`` (eq. 5 as written, ``+ w log q_j(t)``) or ``"ratio"``
  (``+ w log(q~_j(t) / p_j)``, ``q~ = (r(t) + p) / 2``, ``r(t)`` the raw recent share and ``p`` the
  add-k smoothed training-window share: the correction also removes the training popularity the
  offline model absorbed, and an item with no recent event gets ``log 1/2`` whatever its rarity).

The trend term counts the events of ``ScoreBatch.sequences`` (as ``HRNNScorer``), over the evaluated
catalogue (``catalog_size``), before the case's bucket.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from hrnn_core.evaluation.baselines.base import ScoreBatch, TrainData
from hrnn_core.model.checkpoint import load_checkpoint
from hrnn_core.errors import HrnnError
from hrnn_core.evaluation.hrnn_scorer import HRNNScorer
from hrnn_core.model.scoring import CatalogueScorer
from hrnn_core.model.trend import WindowedPopularity, smoothed_log_share

TREND_MODES = ("add", "ratio")


class StudyScorer(HRNNScorer):
    """``HRNNScorer`` with settable eq. (2) lambda and eq. (5) window, bucket grid, origin and mode."""

    def __init__(self, *args, trend_window_seconds: float | None = None, trend_bucket_seconds: float | None = None,
                 trend_origin: float = 0.0, trend_mode: str = "add", **kwargs):
        super().__init__(*args, **kwargs)
        self._window = trend_window_seconds  # None: the model's
        self._bucket = trend_bucket_seconds  # None: the model's
        self.trend_origin = float(trend_origin)
        self.trend_mode = trend_mode
        self._train_log_p: np.ndarray | None = None  # (catalogue,) log p_j of the training window ("ratio")
        self._pop: tuple[tuple, pa.Table, WindowedPopularity] | None = None  # (settings, table kept alive, q(t))

    # ------------------------------------------------------------------ settings

    @property
    def trend_mode(self) -> str:
        return self._mode

    @trend_mode.setter
    def trend_mode(self, mode: str) -> None:
        if mode not in TREND_MODES:
            raise HrnnError(f"trend_mode must be 'add' or 'ratio', got {mode!r}")
        self._mode = mode

    @property
    def trend_window_seconds(self) -> float:
        return super().trend_window_seconds if self._window is None else self._window

    @trend_window_seconds.setter
    def trend_window_seconds(self, seconds: float | None) -> None:
        self._window = None if seconds is None else float(seconds)

    @property
    def trend_bucket_seconds(self) -> float:
        if self._bucket is not None:
            return self._bucket
        return self.model.cfg.trend_bucket_seconds if hasattr(self, "model") else self.model_cfg.trend_bucket_seconds

    @trend_bucket_seconds.setter
    def trend_bucket_seconds(self, seconds: float | None) -> None:
        self._bucket = None if seconds is None else float(seconds)

    def set_inference_mix(self, mix: float | None) -> None:
        """Score with eq. (2) at lambda = ``mix`` (None: the model's); the trend term is kept."""
        old = self.scorer
        item_freq = load_checkpoint(self.checkpoint_path, self.device).item_freq
        self.scorer = CatalogueScorer(self.model, item_freq, mix=mix, trend=old.trend, trend_weight=old.trend_weight)

    # ------------------------------------------------------------------ fit and q(t)

    def fit(self, data: TrainData) -> None:
        self._train_log_p = smoothed_log_share(np.asarray(data.item_frequency), self.model_cfg.trend_smoothing)
        super().fit(data)

    def popularity(self, sequences: pa.Table) -> WindowedPopularity:
        """q(t) over every event of ``sequences`` with this scorer's window, bucket grid and origin
        (one per table and settings, kept until either changes)."""
        width = self.catalog_size or self.n_items
        smoothing = self.model.cfg.trend_smoothing if hasattr(self, "model") else self.model_cfg.trend_smoothing
        key = (id(sequences), width, self.trend_window_seconds, self.trend_bucket_seconds, self.trend_origin, smoothing)
        if self._pop is None or self._pop[0] != key or self._pop[1] is not sequences:
            pop = WindowedPopularity.from_sequences(sequences, width, window_seconds=self.trend_window_seconds,
                                                    bucket_seconds=self.trend_bucket_seconds, origin=self.trend_origin,
                                                    smoothing=smoothing)
            self._pop = (key, sequences, pop)
        return self._pop[2]

    def trend_term(self, batch: ScoreBatch) -> torch.Tensor:
        """(B, catalogue) the term eq. (5) adds per unit weight: ``log q_j(t_b)``, or in "ratio" mode
        ``log(q~_j(t_b) / p_j)``; counts are the events of ``batch.sequences`` strictly before ``t_b``."""
        return self._term(self.popularity(batch.sequences), batch.target_timestamp)

    def _term(self, pop: WindowedPopularity, times: np.ndarray) -> torch.Tensor:
        if self.trend_mode == "add":
            return pop.log_q_at(times)
        if self._train_log_p is None:
            raise HrnnError("trend_mode 'ratio' needs the training popularity: fit the scorer first")
        log_p = torch.from_numpy(self._train_log_p.astype(np.float32))[None, :]  # (1, catalogue)
        recent = pop.share_at(times)  # (B, catalogue) raw r(t)
        return torch.log(0.5 * (recent + log_p.exp())) - log_p  # log(q~(t) / p), q~ = (r + p) / 2

    # ------------------------------------------------------------------ scoring

    @torch.no_grad()
    def score(self, batch: ScoreBatch) -> torch.Tensor:
        if self.scorer.trend_weight:  # q(t) of this table under the current settings (cached)
            self.scorer.trend = self.popularity(batch.sequences)
        return super().score(batch)

    def _scores(self, h_req: torch.Tensor, times: np.ndarray, seen: list[list[int]] | None = None) -> torch.Tensor:
        weight = self.scorer.trend_weight
        if self.trend_mode == "add" or not weight:
            return super()._scores(h_req, times, seen)  # eq. (5) as the product adds it, with this scorer's q(t)
        trend, self.scorer.trend = self.scorer.trend, None  # eq. (2) only, then the ratio term
        try:
            scores = super()._scores(h_req, times, seen)
        finally:
            self.scorer.trend = trend
        term = self._term(trend, times)
        width = min(scores.shape[1], term.shape[1])
        scores[:, :width] += weight * term[:, :width]
        return scores
