"""Full-catalog ranking metrics (docs: PROTOCOLS.md section 2). Never sampled.

Ranks
    The rank of a target is ``1 + number of OTHER candidate items whose score is >= the
    target's``: ties count against the target (pessimistic), so a constant scorer ranks the target
    last. Excluded items (``exclude``: the user's seen items, or items outside a candidate set)
    are not candidates. A target is never excluded from its own ranking, even when ``exclude``
    marks it (e.g. a repeated item under ``exclude_seen``): it is ranked among the non-excluded
    items.

One target per event
    hit@K = recall@K = [rank <= K], precision@K = hit / K, mrr@K = 1/rank if rank <= K else 0,
    ndcg@K = 1/log2(1 + rank) if rank <= K else 0.

Several targets per event (user_holdout), distinct items
    Each target is ranked against the candidate items that are not targets (pessimistic ties).
    The j-th best target (by score; 1-based) then sits at list position ``r_j + (j - 1)``: after
    every non-target tied with it and after the better targets. From those positions:
    recall@K = hits / |targets|, precision@K = hits / K, hit@K = [hits > 0],
    ndcg@K = DCG / ideal DCG with ideal DCG = sum_{i=1..min(|targets|, K)} 1/log2(1 + i),
    mrr@K = 1 / (position of the first target) if <= K else 0.
    With one target this is exactly the single-target definition.

PPL
    exp(mean NLL of the target under a full softmax over the whole catalog), from logits. No
    exclusion and no candidate restriction: it measures the model's distribution, not a ranking.
    With several targets, every target contributes its own NLL under the same distribution.

Coverage@K
    distinct items appearing in any top-K list (after exclusion) / catalog size.

Everything is vectorised in torch (numpy inputs are converted); ``Accumulator`` takes batches and
keeps per-event arrays for paired significance tests (``paired_test``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from hrnn_core.errors import HrnnError

DEFAULT_KS = (5, 10, 20, 25)
RANK_METRICS = ("hit", "recall", "precision", "mrr", "ndcg")


class MetricError(HrnnError):
    """Metric inputs are inconsistent (shapes, NaN scores, targets outside the catalog)."""


# --------------------------------------------------------------------------- input helpers


def _tensor(x, dtype=None) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return t.to(dtype) if dtype is not None else t


def _float(x) -> torch.Tensor:
    t = _tensor(x)
    return t if torch.is_floating_point(t) else t.float()


def exclude_mask(exclude, batch: int, n_items: int, device=None) -> torch.Tensor | None:
    """``exclude`` as a (B, n_items) bool mask: accepts a mask or a list of item-index arrays."""
    if exclude is None:
        return None
    if isinstance(exclude, (torch.Tensor, np.ndarray)) and getattr(exclude, "ndim", 0) == 2:
        mask = _tensor(exclude).to(device=device, dtype=torch.bool)
        if tuple(mask.shape) != (batch, n_items):
            raise MetricError(f"exclude mask has shape {tuple(mask.shape)}, expected {(batch, n_items)}")
        return mask
    if len(exclude) != batch:
        raise MetricError(f"exclude has {len(exclude)} rows for a batch of {batch}")
    lengths = [len(e) for e in exclude]
    mask = torch.zeros((batch, n_items), dtype=torch.bool, device=device)
    if sum(lengths):
        rows = torch.repeat_interleave(torch.arange(batch), torch.as_tensor(lengths))
        cols = torch.as_tensor(np.concatenate([np.asarray(e, dtype=np.int64) for e in exclude]))
        mask[rows.to(device), cols.to(device)] = True
    return mask


def pad_targets(targets, device=None) -> torch.Tensor:
    """Targets as (B,) for one per event, or (B, T) padded with -1 for several (distinct per row).

    Accepts a 1-D array, a 2-D array padded with -1, or a list of per-event arrays (duplicates
    inside a row are dropped: a target set).
    """
    if isinstance(targets, (torch.Tensor, np.ndarray)):
        return _tensor(targets).to(device=device, dtype=torch.long)
    if all(np.ndim(t) == 0 for t in targets):  # a plain list of ints: one target per event
        return torch.as_tensor(np.asarray(targets, dtype=np.int64), device=device)
    rows = [np.unique(np.asarray(t, dtype=np.int64)) for t in targets]
    if any(len(r) == 0 for r in rows):
        raise MetricError("every event needs at least one target")
    width = max((len(r) for r in rows), default=1)
    out = np.full((len(rows), width), -1, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return torch.as_tensor(out, device=device)


def _check(scores: torch.Tensor, targets: torch.Tensor) -> None:
    if scores.ndim != 2:
        raise MetricError(f"scores must be (B, n_items), got shape {tuple(scores.shape)}")
    if targets.shape[0] != scores.shape[0]:
        raise MetricError(f"{targets.shape[0]} targets for {scores.shape[0]} score rows")
    valid = targets[targets >= 0]
    if valid.numel() and int(valid.max()) >= scores.shape[1]:
        raise MetricError(f"target item {int(valid.max())} outside the catalog of {scores.shape[1]} items")
    if torch.isnan(scores).any():
        raise MetricError("scores contain NaN; a NaN would silently rank first or last: fix the model output")


# --------------------------------------------------------------------------- ranks


def target_ranks(scores, targets, exclude=None) -> torch.Tensor:
    """Pessimistic 1-based rank of one target per row among the non-excluded items.

    scores: (B, n_items); targets: (B,) item indices; exclude: (B, n_items) bool mask or a list of
    B item-index arrays (the target itself is never excluded). Returns (B,) int64.
    """
    s = _float(scores)
    t = pad_targets(targets, device=s.device)
    if t.ndim != 1:
        raise MetricError("target_ranks takes one target per row; use multi_target_positions for several")
    _check(s, t)
    rows = torch.arange(s.shape[0], device=s.device)
    ts = s[rows, t].unsqueeze(1)  # (B, 1)
    ge = s >= ts  # (B, N): items scored at least as high as the target, the target included
    mask = exclude_mask(exclude, s.shape[0], s.shape[1], s.device)
    if mask is not None:
        ge &= ~mask
    ge[rows, t] = False  # only OTHER items count
    return ge.sum(dim=1) + 1


def multi_target_positions(scores, targets, exclude=None) -> torch.Tensor:
    """Pessimistic list positions of several distinct targets per row (see the module docstring).

    targets: (B, T) padded with -1 (or a list of arrays). Returns (B, T) int64 positions sorted
    ascending, with padding slots set to a huge value (never inside any K).
    """
    s = _float(scores)
    t = pad_targets(targets, device=s.device)
    if t.ndim == 1:
        t = t.unsqueeze(1)
    _check(s, t)
    b, n = s.shape
    valid = t >= 0  # (B, T)
    tc = t.clamp(min=0)
    rows = torch.arange(b, device=s.device).unsqueeze(1)
    is_target = torch.zeros((b, n), dtype=torch.bool, device=s.device)
    is_target[rows.expand_as(tc)[valid], tc[valid]] = True
    mask = exclude_mask(exclude, b, n, s.device)
    not_cand = is_target if mask is None else (is_target | mask)
    # Candidates' scores sorted ascending, non-candidates pushed to +inf at the end: the number
    # of candidates scoring strictly below s is searchsorted(left), never counting the fillers.
    filled = s.masked_fill(not_cand, float("inf"))
    sorted_scores = torch.sort(filled, dim=1).values  # (B, N)
    n_cand = (~not_cand).sum(dim=1, keepdim=True)  # (B, 1)
    ts = s[rows, tc]  # (B, T)
    below = torch.searchsorted(sorted_scores.contiguous(), ts.contiguous(), right=False)
    beaten_by = n_cand - below  # candidates with score >= target's
    big = torch.iinfo(torch.int64).max // 4
    beaten_by = beaten_by.masked_fill(~valid, big)
    # Order targets best first (ties between targets: any order gives the same positions).
    order = torch.sort(beaten_by, dim=1, stable=True).values
    offsets = torch.arange(t.shape[1], device=s.device).unsqueeze(0)
    return torch.where(order >= big, big, order + 1 + offsets)


def rank_metrics(ranks_or_positions: torch.Tensor, ks: Sequence[int] = DEFAULT_KS,
                 n_targets: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per-event hit/recall/precision/mrr/ndcg at each K from ranks (B,) or positions (B, T).

    Positions are the sorted pessimistic positions from ``multi_target_positions`` (padding huge);
    n_targets (B,) defaults to the number of non-padding slots.
    """
    pos = ranks_or_positions.unsqueeze(1) if ranks_or_positions.ndim == 1 else ranks_or_positions
    big = torch.iinfo(torch.int64).max // 4
    valid = pos < big
    n_t = valid.sum(dim=1) if n_targets is None else n_targets
    gains = torch.where(valid, 1.0 / torch.log2(1.0 + pos.clamp(max=2**40).double()), 0.0)  # (B, T)
    first = pos[:, 0].double()
    out: dict[str, torch.Tensor] = {}
    for k in ks:
        inside = valid & (pos <= k)
        hits = inside.sum(dim=1).double()
        ideal = torch.tensor([sum(1.0 / math.log2(1 + i) for i in range(1, m + 1)) for m in range(k + 1)],
                             dtype=torch.float64)[n_t.clamp(max=k)]
        out[f"hit@{k}"] = (hits > 0).double()
        out[f"recall@{k}"] = hits / n_t.double()
        out[f"precision@{k}"] = hits / k
        out[f"mrr@{k}"] = torch.where(first <= k, 1.0 / first, 0.0)
        out[f"ndcg@{k}"] = (gains * inside).sum(dim=1) / ideal
    return out


def nll(logits, targets) -> torch.Tensor:
    """Per-target negative log-likelihood under a full softmax over the catalog (no exclusion).

    targets (B,) -> (B,); targets (B, T) padded with -1 -> flat NLLs of the valid targets.
    """
    z = _tensor(logits).double()
    t = pad_targets(targets, device=z.device)
    _check(z, t)
    lse = torch.logsumexp(z, dim=1, keepdim=True)  # (B, 1)
    if t.ndim == 1:
        return (lse.squeeze(1) - z[torch.arange(z.shape[0]), t])
    valid = t >= 0
    picked = torch.gather(z, 1, t.clamp(min=0))  # (B, T)
    return (lse - picked)[valid]


def topk_items(scores, k: int, exclude=None) -> torch.Tensor:
    """(B, k) indices of the top-k non-excluded items (ties broken arbitrarily)."""
    s = _float(scores)
    mask = exclude_mask(exclude, s.shape[0], s.shape[1], s.device)
    if mask is not None:
        s = s.masked_fill(mask, float("-inf"))
    return torch.topk(s, min(k, s.shape[1]), dim=1).indices


# --------------------------------------------------------------------------- accumulation


class Accumulator:
    """Streams batches of full-catalog scores and keeps per-event metric arrays.

    ``add(scores, targets, exclude=None, owners=None, logits=None)``: scores (B, n_items);
    targets (B,) or (B, T) padded with -1 or a list of arrays; exclude as in ``target_ranks``;
    owners (B,) user indices (for n_users); logits (B, n_items) to also compute PPL (often the
    same tensor as scores). ``summary()`` gives means with lowercase keys ("ndcg@10", ...,
    "coverage@10", "ppl" when logits were given, "n_events", "n_users").
    """

    def __init__(self, n_items: int, ks: Sequence[int] = DEFAULT_KS, catalog_size: int | None = None):
        self.n_items = int(n_items)
        self.ks = tuple(sorted(int(k) for k in ks))
        self.catalog_size = int(catalog_size) if catalog_size is not None else self.n_items  # coverage denominator
        self._parts: dict[str, list[np.ndarray]] = {}
        self._nll: list[np.ndarray] = []
        self._covered = {k: torch.zeros(self.n_items, dtype=torch.bool) for k in self.ks}
        self._owners: set[int] = set()
        self._owners_given = False
        self.n_events = 0

    def add(self, scores, targets, exclude=None, owners=None, logits=None) -> None:
        s = _float(scores)
        if s.ndim != 2 or s.shape[1] != self.n_items:
            raise MetricError(f"scores have {s.shape[1]} columns for a catalog of {self.n_items} items")
        t = pad_targets(targets, device=s.device)
        mask = exclude_mask(exclude, s.shape[0], s.shape[1], s.device)
        if t.ndim == 1:
            pos = target_ranks(s, t, mask)
        else:
            pos = multi_target_positions(s, t, mask)
        for name, values in rank_metrics(pos.cpu(), self.ks).items():
            self._parts.setdefault(name, []).append(values.numpy())
        top = topk_items(s, self.ks[-1], mask)  # (B, Kmax), best first
        # A row with fewer than Kmax candidates fills its list with excluded items: skip those.
        shown = torch.ones_like(top, dtype=torch.bool) if mask is None else ~torch.gather(mask, 1, top)
        top, shown = top.cpu(), shown.cpu()
        for k in self.ks:
            self._covered[k][top[:, :k][shown[:, :k]]] = True
        if logits is not None:
            self._nll.append(nll(logits, t).cpu().numpy())
        if owners is not None:
            self._owners_given = True
            self._owners.update(np.asarray(owners).reshape(-1).tolist())
        self.n_events += s.shape[0]

    def per_event(self, name: str) -> np.ndarray:
        """The per-event values of one metric ("ndcg@10", "nll" for per-target NLLs)."""
        if name == "nll":
            return np.concatenate(self._nll) if self._nll else np.zeros(0)
        if name not in self._parts:
            raise MetricError(f"unknown metric {name!r}; have {sorted(self._parts)}")
        return np.concatenate(self._parts[name])

    def summary(self) -> dict[str, float | int | None]:
        out: dict[str, float | int | None] = {}
        for name in self._parts:
            out[name] = float(self.per_event(name).mean())
        for k in self.ks:
            out[f"coverage@{k}"] = float(self._covered[k].sum()) / self.catalog_size
        if self._nll:
            mean_nll = float(self.per_event("nll").mean())  # a target scored NO_SCORE (no way to score it): inf
            out["ppl"] = math.exp(mean_nll) if mean_nll < 709.0 else float("inf")
        out["n_events"] = self.n_events
        out["n_users"] = len(self._owners) if self._owners_given else None
        return out


# --------------------------------------------------------------------------- significance


def paired_test(a, b, n_boot: int = 2000, seed: int = 0, clusters=None) -> dict[str, float]:
    """Paired comparison of two per-event metric arrays (same events, same order).

    mean_diff = mean(a - b); ci_low/ci_high = 95% percentile interval of the mean difference over
    ``n_boot`` bootstrap resamples of the events (seeded); p_value from a paired t-test (scipy)
    or, without scipy, its normal approximation.

    ``clusters`` (one label per event, e.g. its user): events of one cluster are correlated (the
    temporal protocol scores every later event of a few users), so resample whole clusters instead
    and take p from the cluster-robust t statistic of the mean (CR1 standard error, G - 1 degrees
    of freedom for G clusters). The result then also has ``n_clusters``.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise MetricError(f"paired_test needs two 1-D arrays of the same length, got {a.shape} and {b.shape}")
    d = a - b
    n = len(d)
    if n == 0:
        raise MetricError("paired_test needs at least one event")
    if clusters is not None:
        return _cluster_paired_test(d, np.asarray(clusters), n_boot, seed)
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for start in range(0, n_boot, 256):  # chunks bound memory at 256 x n
        stop = min(n_boot, start + 256)
        means[start:stop] = d[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    sd = d.std(ddof=1) if n > 1 else 0.0
    if sd == 0.0:
        p = 1.0 if d.mean() == 0.0 else 0.0
    else:
        try:
            from scipy import stats  # noqa: PLC0415 - optional dependency

            p = float(stats.ttest_rel(a, b).pvalue)
        except ImportError:
            z = d.mean() / (sd / math.sqrt(n))
            p = math.erfc(abs(z) / math.sqrt(2.0))
    return {"mean_diff": float(d.mean()), "ci_low": float(lo), "ci_high": float(hi), "p_value": float(p)}


def _cluster_paired_test(d: np.ndarray, clusters: np.ndarray, n_boot: int, seed: int) -> dict[str, float]:
    """``paired_test`` with whole clusters resampled (see there)."""
    if clusters.shape != d.shape:
        raise MetricError(f"clusters must label every event: {clusters.shape} for {d.shape}")
    _, cid = np.unique(clusters, return_inverse=True)
    g = int(cid.max()) + 1
    sums, sizes = np.bincount(cid, weights=d, minlength=g), np.bincount(cid, minlength=g).astype(np.float64)
    mean = float(d.mean())
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    step = max(1, 8_000_000 // g)  # draws per chunk: bounds memory at ~64 MB of indices (10^5 sessions, 2,000 draws)
    for start in range(0, n_boot, step):  # the same random stream as drawing (n_boot, g) at once
        pick = rng.integers(0, g, size=(min(n_boot, start + step) - start, g))  # clusters with replacement
        means[start:start + len(pick)] = sums[pick].sum(axis=1) / sizes[pick].sum(axis=1)  # event-weighted mean
    lo, hi = np.percentile(means, [2.5, 97.5])
    resid = sums - sizes * mean  # per-cluster score of the mean
    se = math.sqrt(g / max(g - 1, 1) * float((resid ** 2).sum())) / len(d)
    if se == 0.0 or g < 2:
        p = 1.0 if mean == 0.0 else 0.0
    else:
        t = mean / se
        try:
            from scipy import stats  # noqa: PLC0415 - optional dependency

            p = float(2 * stats.t.sf(abs(t), df=g - 1))
        except ImportError:
            p = math.erfc(abs(t) / math.sqrt(2.0))
    return {"mean_diff": mean, "ci_low": float(lo), "ci_high": float(hi), "p_value": float(p), "n_clusters": g}


def mean_interval(values, n_boot: int = 2000, seed: int = 0, clusters=None) -> dict[str, float]:
    """The mean of per-event ``values`` and its 95% bootstrap interval: ``paired_test`` against zero (the same
    resampling, by event or by whole ``clusters``), so a leaderboard's intervals and its paired tests agree."""
    a = np.asarray(values, dtype=np.float64)
    test = paired_test(a, np.zeros_like(a), n_boot=n_boot, seed=seed, clusters=clusters)
    return {"mean": test["mean_diff"], "ci_low": test["ci_low"], "ci_high": test["ci_high"]}
