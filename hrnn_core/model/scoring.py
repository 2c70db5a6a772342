"""The one scoring function of HRNN-meta: request states -> scores over the catalogue.

Training-time validation (``hrnn_core.train.validation.evaluate``), the evaluation harness and so the
promotion gate (``hrnn_core.evaluation.hrnn_scorer``), the batch export and the online service
(``hrnn_core.serving.recommend``) all score through ``CatalogueScorer.scores``, so the number that promotes
a model describes the scorer that is served. For a request state ``h`` (the GRU's output at the
request step) at time ``t``::

    score_j = w~_j . h + b~_j  +  trend_weight * log q_j(t)

* ``w~_j, b~_j``: eq. (2)'s mixed decoder vectors at the model's inference lambda
  (``model.inference_item_meta_mix``) for items with training events, however few (leaning items with few
  events on their metadata gained nothing on ml-100k or taobao validation: docs/evaluation/cold_items.md).
* **Cold items** (no training events, and items added after training with ``add_items``): one policy.
  An item with metadata is scored from it alone (lambda = 1, its untrained id row never enters) plus the
  model's **cold prior** ``b_cold`` (``HRNNMeta.cold_log_prior``), calibrated after each validation so
  that the mean probability the softmax gives "the next event is on some cold item" equals the rate at
  which events in the later half of the training data were an item's first event
  (``new_item_rate``, ``calibrate_cold_prior``): warm and cold items compete on one probability scale.
  An item without metadata has nothing to be scored from: ``NO_SCORE``, below every other item.
* **The repeat term**: ``+ b_rep`` on the items of the request owner's own history (``seen``: what the
  service's ``UserState.seen``, the evaluation's read history and training validation's history hold),
  ``b_rep = HRNNMeta.repeat_log_prior`` calibrated after each validation so that the mean probability of
  "the next item is one the owner already had" equals the training data's repeat rate
  (``calibrate_repeat_prior``; the trainer leaves it 0 where seen items never rank, ``exclude_seen``).
  Users of a shop view, cart and buy the same product: BPR's fold-in captured that, the GRU alone did not.
* **The latest item** (the last of the owner's items, ``seen`` being oldest first): ``+ b_last`` on top,
  ``b_last = HRNNMeta.latest_log_prior`` chosen after each validation among ``LATEST_PRIORS`` for the
  validation requests' NDCG@10 (``choose_latest_prior``). A session's next click is on the item it just
  clicked about one time in five (yoochoose); the softmax's calibrated probability of that item is right on
  average but often second to another item, so ranking for NDCG@10 wants it higher than the likelihood does
  (docs/evaluation/sasrec.md).
* ``log q_j(t)``: eq. (5)'s trend term, ``q(t)`` = the add-k smoothed item shares of the events in
  ``[t_b - model.trend_window_seconds, t_b)``, ``t_b`` = ``t`` floored to ``model.trend_bucket_seconds``
  (``hrnn_core.model.trend.WindowedPopularity``); no popularity given or a weight of 0: no term.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

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


MAX_SCORE_ELEMENTS = 64_000_000  # cap on requests x items scored at once (the evaluation and the export)


def rows_per_batch(wanted: int, n_items: int) -> int:
    """Requests to score together: ``wanted``, fewer for a large catalogue (requests x items <= MAX_SCORE_ELEMENTS:
    256 MB of float32 scores; 64 requests at 1M items)."""
    return max(1, min(wanted, MAX_SCORE_ELEMENTS // max(n_items, 1)))


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
        freq = torch.as_tensor(item_freq).to(dev)[: model.n_items].float()
        self.cold = freq == 0  # (n,) no training events
        self.has_meta = model.has_metadata()  # (n,) metadata the decoder reads
        self._lam = self.mix + (1.0 - self.mix) * self.cold.float()  # (n,) eq. (2)'s lambda per item: 1 if cold
        h = cfg.hidden_size
        self._new_w, self._new_b = torch.zeros(0, h, device=dev), torch.zeros(0, device=dev)  # added items
        self._new_raw = (self._new_w, self._new_b)  # their metadata vectors before the cold policy
        self._new_meta = torch.zeros(0, dtype=torch.bool, device=dev)
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
        w, b = self.model.item_vectors(items, self._lam[items])
        return cold_policy(w.float(), b.float(), self.cold[items], self.has_meta[items], self.prior)

    @property
    def prior(self) -> float:
        """``b_cold``: the log prior added to every cold item's metadata score."""
        return float(self.model.cold_log_prior)

    def set_prior(self, value: float) -> None:
        """Set the model's cold prior (calibration) and drop the vectors formed with the old one."""
        self.model.cold_log_prior.fill_(float(value))
        self._full = None
        if len(self._new_b):
            self._new_w, self._new_b = cold_policy(*self._new_raw, torch.ones_like(self._new_meta), self._new_meta,
                                                   self.prior)

    @torch.no_grad()
    def add_items(self, cat: torch.Tensor, num: torch.Tensor) -> None:
        """Items that were not in the training catalogue, from their encoded metadata (lambda = 1)."""
        dev = self._new_b.device
        cat, num = cat.to(dev), num.to(dev)
        meta = self.model.has_metadata(cat, num)
        if self.model.meta_out is not None:
            w, b = self.model.meta_vectors(cat, num)
        else:
            w, b = torch.zeros(len(cat), self.model.cfg.hidden_size, device=dev), torch.zeros(len(cat), device=dev)
        self._new_raw = (torch.cat([self._new_raw[0], w.float()]), torch.cat([self._new_raw[1], b.float()]))
        self._new_meta = torch.cat([self._new_meta, meta])
        self._new_w, self._new_b = cold_policy(*self._new_raw, torch.ones_like(self._new_meta), self._new_meta,
                                               self.prior)
        self.cold = torch.cat([self.cold, torch.ones(len(b), dtype=torch.bool, device=self.cold.device)])
        self.has_meta = torch.cat([self.has_meta, meta])
        self._full = None

    # ------------------------------------------------------------------ the scoring function

    @property
    def uses_seen(self) -> bool:
        """Whether the request owner's own items change their scores (the repeat term or the latest item's)."""
        return bool(self.model.repeat_log_prior) or bool(self.model.latest_log_prior)

    @property
    def latest_prior(self) -> float:
        """``b_last``: added to the request owner's latest item, on top of the repeat term."""
        return float(self.model.latest_log_prior)

    @property
    def repeat_prior(self) -> float:
        """``b_rep``: the log prior added to the items of the request owner's own history."""
        return float(self.model.repeat_log_prior)

    @torch.no_grad()
    def scores(self, h: torch.Tensor, times: np.ndarray | None = None, items: torch.Tensor | None = None,
               trend_weight: float | None = None, seen: Sequence[Iterable[int]] | None = None) -> torch.Tensor:
        """(B, C) float32 scores of ``items`` (default: the whole catalogue; an ``items`` subset must be
        sorted) for request states ``h`` (B, H) at request ``times`` (B,) epoch seconds: eq. (2), eq. (5)'s
        term, and the repeat term on ``seen`` (per row: the owner's items, oldest first, catalogue indices)."""
        w, b = self.vectors(items)
        out = torch.addmm(b, h.float(), w.T)  # (B, C): one product onto the biases, no copy per term
        if seen is not None and self.uses_seen:
            add_seen_terms(out, seen, self.repeat_prior, self.latest_prior, items)
        return self.add_trend(out, times, items, trend_weight)

    @torch.no_grad()
    def add_trend(self, out: torch.Tensor, times: np.ndarray | None, items: torch.Tensor | None = None,
                  trend_weight: float | None = None) -> torch.Tensor:
        """``out`` (B, C) scores of ``items`` (default: all) plus eq. (5)'s ``weight * log q_j(t)`` at each
        row's request time, added in place (``out`` is the caller's fresh tensor); ``out`` when no term."""
        weight = self.trend_weight if trend_weight is None else trend_weight
        if not weight or self.trend is None:
            return out
        if times is None:
            raise ValueError("the trend term needs the request times")
        table, row = self.trend.log_q_rows(np.asarray(times, dtype=np.float64))  # (W, n_trend), (B,)
        table = table.to(out.device)
        if items is None:
            shift = table if table.shape[1] == out.shape[1] else _pad(table, out.shape[1])
        else:
            shift = _pad(table, self.n_items)[:, items]
        if len(shift) == 1:  # one window for every row (an export's instant, an hour's requests): broadcast it
            return out.add_(shift, alpha=weight)
        return out.add_(shift.index_select(0, row.to(out.device)), alpha=weight)

    @torch.no_grad()
    def target_scores(self, h: torch.Tensor, target: torch.Tensor, times: np.ndarray | None = None,
                      seen: Sequence[Iterable[int]] | None = None) -> torch.Tensor:
        """(B,) the score of one item per row (``target`` (B,), model items), as ``scores`` gives it."""
        w, b = self.vectors(target)
        out = (h.float() * w).sum(-1) + b
        if seen is not None and self.uses_seen:
            rows = [list(s) for s in seen]
            had = torch.tensor([int(t) in set(s) for t, s in zip(target.tolist(), rows, strict=True)], device=out.device)
            last = torch.tensor([bool(s) and int(s[-1]) == int(t) for t, s in zip(target.tolist(), rows, strict=True)],
                                device=out.device)
            out = out + self.repeat_prior * had.float() + self.latest_prior * last.float()
        if self.trend_weight and self.trend is not None:
            log_q = self.trend.log_q_at(np.asarray(times, dtype=np.float64)).to(out.device)
            out = out + self.trend_weight * log_q.gather(1, target[:, None].to(out.device)).squeeze(1)
        return out


NO_SCORE = -1e9  # the score of an item with nothing to score it from: below every scored item


def cold_policy(w: torch.Tensor, b: torch.Tensor, cold: torch.Tensor, has_meta: torch.Tensor, prior: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder vectors (C, H), (C,) with the cold-item policy applied: a cold item's (lambda = 1, metadata)
    bias gets the cold prior; a cold item without metadata gets a zero vector and ``NO_SCORE``."""
    if not bool(cold.any()):
        return w, b
    blank = cold & ~has_meta
    w = w.masked_fill(blank[:, None], 0.0)
    b = torch.where(blank, torch.full_like(b, NO_SCORE), torch.where(cold, b + prior, b))
    return w, b


def new_item_rate(times: np.ndarray, items: np.ndarray) -> float:
    """The rate at which an event is an item's first: over the later half (in time) of training events
    ``times``, ``items``, (first events + 1) / (events + 2) (add-one smoothed, never 0 or 1). What the cold
    prior is calibrated to: how often the next event lands on an item with no earlier event."""
    if len(items) == 0:
        return 0.5
    order = np.argsort(times, kind="stable")
    first = np.zeros(len(items), dtype=bool)
    first[order[np.unique(np.asarray(items)[order], return_index=True)[1]]] = True
    late = times >= np.median(times)
    return float((first[late].sum() + 1) / (late.sum() + 2))


@torch.no_grad()
def calibrate_cold_prior(scorer: CatalogueScorer, h: torch.Tensor, times: np.ndarray | None, rate: float,
                         rows: int = 256) -> float:
    """Set (and return) the cold prior so that the mean over request states ``h`` (N, H) at ``times`` of
    P(next item is cold) = sum over cold items of softmax(scores) equals ``rate``. One bisection on the
    prior over per-request log-sum-exps of the warm and the cold (metadata) scores; with no warm or no
    scorable cold item, or no states, the prior is left as it is."""
    usable = scorer.cold & scorer.has_meta
    if len(h) == 0 or not bool(usable.any()) or bool(scorer.cold.all()):
        return scorer.prior
    warm_lse, cold_lse = [], []
    for lo in range(0, len(h), rows):
        s = scorer.scores(h[lo:lo + rows], None if times is None else times[lo:lo + rows])  # (r, C)
        warm_lse.append(torch.logsumexp(s[:, ~scorer.cold], dim=1))
        cold_lse.append(torch.logsumexp(s[:, usable], dim=1) - scorer.prior)
    gap = (torch.cat(cold_lse) - torch.cat(warm_lse)).double()  # (N,) log odds of "cold" at prior 0
    scorer.set_prior(_solve_log_prior(gap, rate))
    return scorer.prior


def _solve_log_prior(gap: torch.Tensor, rate: float) -> float:
    """The b with mean(sigmoid(gap + b)) = rate (``gap``: per-request log odds at b = 0), by bisection on
    [-100, 100] (the mean is increasing in b)."""
    gap = gap.double().cpu()
    lo_b, hi_b = -100.0, 100.0
    for _ in range(60):
        mid = (lo_b + hi_b) / 2
        if float(torch.sigmoid(gap + mid).mean()) < rate:
            lo_b = mid
        else:
            hi_b = mid
    return (lo_b + hi_b) / 2


def _seen_cells(seen: Sequence[Iterable[int]], items: torch.Tensor | None, device
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, columns, is-the-latest) of the score matrix cells holding each row's seen items (oldest first;
    columns of ``items`` when given)."""
    rows, cols, latest = [], [], []
    for i, s in enumerate(seen):
        s = [int(j) for j in s]
        idx = sorted(set(s))
        rows += [i] * len(idx)
        cols += idx
        latest += [j == s[-1] for j in idx]
    rows_t, cols_t = torch.tensor(rows, dtype=torch.long, device=device), torch.tensor(cols, dtype=torch.long, device=device)
    latest_t = torch.tensor(latest, dtype=torch.bool, device=device)
    if items is None:
        return rows_t, cols_t, latest_t
    pos = torch.searchsorted(items.to(device), cols_t).clamp(max=max(len(items) - 1, 0))
    hit = items.to(device)[pos] == cols_t if len(items) else torch.zeros_like(cols_t, dtype=torch.bool)
    return rows_t[hit], pos[hit], latest_t[hit]


def add_seen_terms(out: torch.Tensor, seen: Sequence[Iterable[int]], repeat_prior: float, latest_prior: float,
                   items: torch.Tensor | None = None) -> torch.Tensor:
    """``out`` (B, C) with ``b_rep`` added in place to each row's seen items and ``b_last`` to its latest one
    (``seen``: per row, oldest first; columns of ``items`` when given): the one rule for every decoder."""
    rows, cols, latest = _seen_cells(seen, items, out.device)
    out[rows, cols] += repeat_prior + latest_prior * latest
    return out


@torch.no_grad()
def calibrate_repeat_prior(scorer: CatalogueScorer, h: torch.Tensor, times: np.ndarray | None,
                           seen: Sequence[Iterable[int]], rate: float, rows: int = 64) -> float:
    """Set (and return) the repeat prior so that, over the requests with a history, the mean probability of
    "the next item is one of the owner's own" under the full softmax equals ``rate``; like
    ``calibrate_cold_prior``, one bisection over per-request log-sum-exps (seen vs the rest)."""
    keep = [i for i, s in enumerate(seen) if len(set(s))]
    if not keep:
        return scorer.repeat_prior
    gaps = []
    for lo in range(0, len(keep), rows):
        block = keep[lo:lo + rows]
        idx = torch.tensor(block)
        s = scorer.scores(h[idx], None if times is None else np.asarray(times)[block])  # (r, C), without the term
        mask = torch.zeros(s.shape, dtype=torch.bool, device=s.device)
        r, c, _ = _seen_cells([seen[i] for i in block], None, s.device)
        mask[r, c] = True
        gaps.append(torch.logsumexp(s.masked_fill(~mask, float("-inf")), 1)
                    - torch.logsumexp(s.masked_fill(mask, float("-inf")), 1))
    gap = torch.cat(gaps).double().cpu()
    scorer.model.repeat_log_prior.fill_(_solve_log_prior(gap, rate))
    return scorer.repeat_prior


def _pad(log_q: torch.Tensor, width: int) -> torch.Tensor:
    """Trend columns for items beyond the popularity's catalogue (added items): the add-k floor."""
    if log_q.shape[1] >= width:
        return log_q[:, :width]
    floor = log_q.min(dim=1, keepdim=True).values if log_q.shape[1] else torch.zeros(len(log_q), 1)
    return torch.cat([log_q, floor.expand(-1, width - log_q.shape[1])], dim=1)


LATEST_PRIORS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)  # b_last's candidates (log odds)


@torch.no_grad()
def choose_latest_prior(scorer: CatalogueScorer, h: torch.Tensor, times: np.ndarray | None,
                        seen: Sequence[Sequence[int]], targets: torch.Tensor, k: int = 10, rows: int = 64) -> float:
    """Set (and return) ``b_last``: the candidate of ``LATEST_PRIORS`` with the highest NDCG@``k`` of the requests
    (states ``h`` at ``times``, histories ``seen`` oldest first, next items ``targets``), the repeat term as it
    is; ties go to the smaller. Requests without a history do not depend on it; none with one: unchanged."""
    keep = [i for i, s in enumerate(seen) if len(s)]
    if not keep:
        return scorer.latest_prior
    scorer.model.latest_log_prior.fill_(0.0)
    grid = torch.tensor(LATEST_PRIORS, dtype=torch.float64)
    gain = torch.zeros(len(grid), dtype=torch.float64)
    for lo in range(0, len(keep), rows):
        block = keep[lo:lo + rows]
        hist = [list(seen[i]) for i in block]
        s = scorer.scores(h[torch.tensor(block)], None if times is None else np.asarray(times)[block], seen=hist).double()
        idx = torch.arange(len(block))
        last = torch.tensor([int(x[-1]) for x in hist], device=s.device)
        t = targets[torch.tensor(block)].to(s.device)
        s_last, s_t = s[idx, last], s[idx, t]
        above_t = (s > s_t[:, None]).sum(1)  # (r,) items above the target at b_last = 0
        others = s.clone()
        others[idx, last] = float("-inf")  # the rest of the row, for a target that is the latest item
        top = torch.topk(others, min(k, others.shape[1]), dim=1).values  # (r, k)
        is_last = t == last
        for g, b in enumerate(grid.tolist()):
            rank = torch.where(is_last, (top > (s_last + b)[:, None]).sum(1),
                               above_t - (s_last > s_t).long() + (s_last + b > s_t).long())
            gain[g] += torch.where(rank < k, 1.0 / torch.log2(rank.double() + 2), torch.zeros_like(s_t)).sum().cpu()
    best = int(torch.nonzero(gain >= gain.max() - 1e-12)[0])
    scorer.model.latest_log_prior.fill_(float(grid[best]))
    return scorer.latest_prior
