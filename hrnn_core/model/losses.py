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


class _DenseSoftmaxCE(torch.autograd.Function):
    """Per-row cross-entropy of the full softmax, fused: the scores are one product written onto the base
    term, masked in place, and only their log-softmax is kept; the backward forms ``softmax - onehot`` in
    place of it and folds each row's incoming gradient into the two small operands of the products. Against
    composing the same ops with autograd, this skips a copy of the (N, C) scores per term (bias, base, mask)
    and the autograd buffers of each, which dominate a step's memory traffic on a CPU."""

    @staticmethod
    def forward(ctx, h, w, b, target, base, base_weight, mask_rows, mask_items):
        h1 = torch.cat([h, torch.ones_like(h[:, :1])], dim=1)  # (N, H + 1): the bias as one more column
        w1 = torch.cat([w, b[:, None].to(w.dtype)], dim=1)  # (C, H + 1)
        dev = h.device.type
        dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else torch.float32
        if base is not None and dtype == torch.float32:  # one gemm onto the base: C = beta * base + h1 w1^T
            logits = base.addmm_(h1.float(), w1.float().t(), beta=base_weight)
        else:  # under autocast the product runs in its lower precision, the softmax in float32
            logits = torch.mm(h1, w1.t()).float()
            if base is not None:
                logits.add_(base, alpha=base_weight)
        if mask_rows is not None:
            logits.index_put_((mask_rows, mask_items), torch.tensor(float("-inf"), device=logits.device))
        logp = torch.log_softmax(logits, dim=1)  # (N, C)
        del logits
        ctx.product_dtype = dtype
        ctx.save_for_backward(logp, h1, w1, target)
        return -logp.gather(1, target[:, None]).squeeze(1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_ce):
        logp, h1, w1, target = ctx.saved_tensors
        g = logp.exp_()  # softmax, in place of the saved log-probabilities (a backward runs once)
        g[torch.arange(len(g), device=g.device), target] -= 1.0  # d ce / d score = softmax - onehot(target)
        g = g.to(ctx.product_dtype)
        s = grad_ce[:, None].to(g.dtype)  # (N, 1): scales rows of g, applied to the small side of each product
        grad_h1 = (g @ w1.to(g.dtype)) * s  # (N, H + 1)
        grad_w1 = g.t() @ (h1.to(g.dtype) * s)  # (C, H + 1)
        k = h1.shape[1] - 1
        return grad_h1[:, :k], grad_w1[:, :k], grad_w1[:, k], None, None, None, None, None


def dense_softmax_loss(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor, target: torch.Tensor,
                       weight: torch.Tensor | None = None, base: torch.Tensor | None = None,
                       base_weight: float = 1.0, mask: tuple[torch.Tensor, torch.Tensor] | None = None) -> LossOut:
    """Full softmax over the catalog (eq. 1) from the decoder's inputs: states h (N, H), item vectors w (C, H)
    and biases b (C,) (eq. 2's mixed ones), target (N,) item ids. The scores are ``h w^T + b``, plus
    ``base_weight * base`` when ``base`` (N, C) is given (a term with no gradient, e.g. eq. 5's trend; it is
    written over, the caller passes a fresh tensor), with -inf at the (rows, items) pairs of ``mask``."""
    rows, items = mask if mask is not None else (None, None)
    ce = _DenseSoftmaxCE.apply(h, w, b, target, base, float(base_weight), rows, items)  # (N,)
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
