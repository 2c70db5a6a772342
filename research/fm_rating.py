"""The factorization machine of ``fm.py`` as a rating regressor (the paper's Tables 4-5 baseline).

Same features, same parameters, same feature encoders (``FMScorer._fit_features`` /
``_user_side``): user id, user metadata, request context and the history set field on the user
side; item id and item metadata on the item side. What changes is the output and the loss:

    r_hat(u, j) = mu + [lin_u + pair_u] + [lin_j + pair_j] + <U, V_j>          (Rendle 2010, eq. 1)

with ``mu`` the training mean rating (fixed: the linear terms learn the rest). The user-side
terms ``lin_u + pair_u`` that cancel in a ranking are part of a rating, so they are computed here
(``FMModel.item_side`` evaluates "linear + pairwise within one side" for any feature list).
Loss: squared error on the event's value (``event_value``); events without one are skipped.
Item-id dropout (P = ``item_id_dropout``) makes the metadata predict ratings too, so items never
seen in training get a prediction from metadata; unseen users are folded in from their history
set, metadata and context, as in the ranking FM.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import pyarrow as pa
import torch

from hrnn_core.evaluation.baselines.base import TrainData
from hrnn_core.evaluation.baselines.features import BaselineError, _list_values, flat_events, optimizer_step
from hrnn_core.evaluation.baselines.fm import FMModel, FMScorer

# Defaults for the squared loss (the ranking defaults of FMConfig otherwise): fewer item-id drops
# (the item bias carries most of a rating) and, instead of AdamW's decay, libFM's per-example L2
# (``l2``; ml-100k temporal *validation* RMSE: 0.01 -> 1.010, 0.05 -> 1.003, 0.2 -> 1.002,
# 0.5 -> 1.005, 1.0 -> 1.008). The epoch count is picked on validation in every run.
REGRESSION_DEFAULTS = {"epochs": 30, "item_id_dropout": 0.1, "weight_decay": 0.0, "lr": 0.003}


def event_values(sequences: pa.Table) -> np.ndarray:
    """(E,) float64 ``event_values`` of a sequences table, flat in row order; NaN where missing."""
    return _list_values(sequences, "event_values", np.float64)[1]


class FMRatingRegressor(FMScorer):
    """FM over the ranking FM's features, fitted with a squared loss on the event value."""

    name = "fm_rating"

    def __init__(self, device: str = "cpu", l2: float = 0.2, **config):
        super().__init__(device, **{**REGRESSION_DEFAULTS, **config})
        if l2 < 0:
            raise BaselineError(f"l2 must be >= 0, got {l2}")
        self.l2 = l2  # per-example L2 on the active features: sum_f x_f^2 (|v_f|^2 + w_f^2), as in libFM's SGD
        self.mean = 0.0  # mu: the training mean rating

    def fit(self, data: TrainData, on_epoch: Callable[[int, FMRatingRegressor], None] | None = None) -> None:
        """Fit on the training events that carry a value; ``on_epoch(epoch, self)`` after each
        epoch (validation curves: the caller picks the epoch count on validation data)."""
        t0 = time.perf_counter()
        cfg = self.config
        flat = flat_events(data.sequences)
        values = event_values(data.sequences)
        rated = np.flatnonzero(np.isfinite(values))
        if len(rated) == 0:
            raise BaselineError("no training event has an event_value: the rating FM needs rated events")
        row = flat.row
        owner = flat.owner[row]
        position = np.arange(len(row)) - flat.offsets[row]
        self._fit_features(data, flat.owner)
        self._items_cache, self._context_cache = None, None
        self.mean = float(values[rated].mean())
        model = FMModel.initialised(self.layout.n_features, cfg.factors, cfg.init_std, data.seed).to(self.device)
        self.model = model
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        item_ids, item_vals = (t.to(self.device) for t in self.item_feats)
        target = torch.as_tensor(flat.item, device=self.device)
        y_all = torch.as_tensor(values, dtype=torch.float32, device=self.device)
        rng = np.random.default_rng(data.seed)
        self.losses = []
        for epoch in range(cfg.epochs):
            model.train()
            perm = rated[rng.permutation(len(rated))]
            total, steps = 0.0, 0
            for start in range(0, len(perm), cfg.batch_size):
                idx = perm[start:start + cfg.batch_size]
                b = len(idx)
                drop_user = rng.random(b) < cfg.user_id_dropout
                uids, uvals = self._user_side(data.sequences, row[idx], position[idx], owner[idx], drop_user)
                ids, vals = item_ids[target[idx]].clone(), item_vals[target[idx]].clone()  # (B, 1 + Wi)
                drop_item = torch.as_tensor(rng.random(b) < cfg.item_id_dropout, device=self.device)
                ids[drop_item, 0], vals[drop_item, 0] = 0, 0.0  # column 0 is the item id: 0 = padding
                pred = self._predict(uids, uvals, ids, vals)  # (B,)
                penalty = self._l2(uids, uvals) + self._l2(ids, vals)  # (B,)
                loss = torch.mean((pred - y_all[idx]) ** 2) + self.l2 * penalty.mean()
                total += optimizer_step(opt, loss, "rating FM", epoch, "lower lr")
                steps += 1
            self.losses.append(total / max(steps, 1))
            model.eval()
            if on_epoch is not None:
                on_epoch(epoch, self)
        self.fit_seconds = time.perf_counter() - t0

    def _l2(self, ids: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
        """(B,) sum over a side's active features of x_f^2 (|v_f|^2 + w_f^2)."""
        norms = self.model.v.weight.pow(2).sum(1, keepdim=True) + self.model.w.weight.pow(2)  # (F, 1)
        return self.model._bag(norms, ids, vals.pow(2)).squeeze(1)

    def _predict(self, uids: torch.Tensor, uvals: torch.Tensor, ids: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
        U, user_terms = self.model.item_side(uids, uvals)  # (B, d), (B,): lin_u + pair_u
        V, item_terms = self.model.item_side(ids, vals)  # (B, d), (B,): lin_j + pair_j
        return self.mean + user_terms + item_terms + (U * V).sum(-1)  # (B,)

    @torch.no_grad()
    def predict(self, sequences: pa.Table, rows: np.ndarray, pos: np.ndarray, owners: np.ndarray,
                items: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """(N,) predicted values of requests reading events [0, pos) of ``rows`` for ``items``."""
        if self.model is None:
            raise BaselineError("predict() before fit()")
        item_ids, item_vals = (t.to(self.device) for t in self.item_feats)
        out = []
        for lo in range(0, len(rows), batch_size):
            sl = slice(lo, lo + batch_size)
            uids, uvals = self._user_side(sequences, np.asarray(rows[sl], dtype=np.int64),
                                          np.asarray(pos[sl], dtype=np.int64), owners[sl])
            j = torch.as_tensor(np.asarray(items[sl], dtype=np.int64), device=self.device)
            out.append(self._predict(uids, uvals, item_ids[j], item_vals[j]).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)

    def save(self, folder) -> None:  # the experiment refits it; nothing registers a rating FM
        raise BaselineError("the rating FM is an experiment baseline and is not saved")
