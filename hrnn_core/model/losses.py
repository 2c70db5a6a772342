"""Output layers' losses: dense softmax cross-entropy and importance-sampled softmax.

Both return the reward-weighted mean loss used for the gradient and the per-event
cross-entropy (unweighted; ``exp(mean)`` is the perplexity of the paper's tables).

Reward weights (section 3.3): each event's loss is weighted by a non-negative reward from its
event type and value, ``r = type_weight[type] * max(0, 1 + value_weight * z(value))``; with all
weights 1 this is plain maximum likelihood (eq. 3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LossOut:
    loss: torch.Tensor  # scalar: sum(weight * ce) / N, the training objective
    ce: torch.Tensor  # (N,) unweighted cross-entropy of each event (log-perplexity terms)


def reward_weights(event_type: torch.Tensor, event_value: torch.Tensor, type_weights: torch.Tensor,
                   value_weight: float) -> torch.Tensor:
    """Section 3.3 reward weights: (N,) event types and standardized values -> (N,) weights >= 0."""
    w = type_weights[event_type]  # (N,)
    if value_weight:
        w = w * torch.clamp(1.0 + value_weight * event_value, min=0.0)
    return w


def _weighted(ce: torch.Tensor, weight: torch.Tensor | None) -> LossOut:
    loss = ce.mean() if weight is None else (weight * ce).sum() / max(ce.numel(), 1)
    return LossOut(loss=loss, ce=ce)


def dense_softmax_loss(scores: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> LossOut:
    """Full softmax over the catalog (eq. 1): scores (N, n_items), target (N,) item ids."""
    ce = F.cross_entropy(scores.float(), target, reduction="none")  # (N,)
    return _weighted(ce, weight)


def first_occurrence(items: torch.Tensor) -> torch.Tensor:
    """(C,) bool: True at the first column holding each distinct item."""
    c = items.numel()
    _, inv = torch.unique(items, return_inverse=True)
    first = torch.full((int(inv.max()) + 1 if c else 0,), c, dtype=torch.long, device=items.device)
    first = first.scatter_reduce(0, inv, torch.arange(c, device=items.device), reduce="amin")
    return first[inv] == torch.arange(c, device=items.device)


def sampled_softmax_loss(
    scores: torch.Tensor,
    cand_items: torch.Tensor,
    cand_log_q: torch.Tensor,
    weight: torch.Tensor | None = None,
    extra_scores: torch.Tensor | None = None,
    extra_items: torch.Tensor | None = None,
) -> LossOut:
    """Importance-sampled softmax with the log-q correction (section 3.1, eq. 4).

    ``scores`` (N, N + S) holds each row's scores of the candidates: the N positives of the
    batch first (row i's positive on the diagonal), then S negatives drawn from q and shared by
    all rows. ``cand_log_q`` (N + S,) is log q of each candidate, positives included.

    Each distinct item counts once per row: a row keeps its own positive (the diagonal) and the
    first column of every other item; other copies, and other columns holding the row's own
    positive (accidental hits), are masked. With q uniform and every item among the negatives
    this is exactly the dense softmax.

    ``extra_scores`` / ``extra_items`` (N, K): per-row explicit negatives (impressions shown
    and not chosen, section 3.3); items < 0 are padding. They are not drawn from q, so they get
    no correction.
    """
    n = scores.shape[0]
    rows = torch.arange(n, device=scores.device)
    target = cand_items[:n]  # (N,) positives on the diagonal
    logits = scores.float() - cand_log_q[None, :]  # eq. (4): subtract log q from every score
    keep = first_occurrence(cand_items)[None, :] & (cand_items[None, :] != target[:, None])  # (N, C)
    keep[rows, rows] = True
    logits = logits.masked_fill(~keep, float("-inf"))
    if extra_scores is not None:
        bad = (extra_items < 0) | (extra_items == target[:, None])  # padding, or the positive itself
        logits = torch.cat([logits, extra_scores.float().masked_fill(bad, float("-inf"))], dim=1)
    ce = torch.logsumexp(logits, dim=1) - logits[rows, rows]  # (N,)
    return _weighted(ce, weight)
