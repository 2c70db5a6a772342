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


def _scores(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor, col_bias: torch.Tensor | None = None,
            base: torch.Tensor | None = None, base_weight: float = 1.0
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.dtype]:
    """float32 scores ``h w^T + b + col_bias + base_weight * base`` (N, C) in as few passes as one product
    allows, and the operands the backward needs: h1 = [h, 1] (N, H + 1), w1 = [w, b + col_bias] (C, H + 1)
    (the biases as one more column), and the product's dtype (autocast's, else float32). ``base`` is
    written over (the caller passes a fresh tensor)."""
    dev = h.device.type
    dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else torch.float32
    h1 = torch.cat([h, torch.ones_like(h[:, :1])], dim=1)
    if dtype == torch.float32:  # one gemm, onto the base when there is one: beta * base + h1 w1^T
        bias = b if col_bias is None else b + col_bias
        w1 = torch.cat([w, bias[:, None].to(w.dtype)], dim=1)
        h1, w1 = h1.float(), w1.float()
        logits = torch.mm(h1, w1.t()) if base is None else base.addmm_(h1, w1.t(), beta=base_weight)
        return logits, h1, w1, dtype
    # under autocast the product runs in its lower precision, the additive terms and the softmax in float32
    w1 = torch.cat([w, b[:, None].to(w.dtype)], dim=1)
    logits = torch.mm(h1, w1.t()).float()
    if col_bias is not None:
        logits.add_(col_bias[None, :].float())
    if base is not None:
        logits.add_(base, alpha=base_weight)
    return logits, h1, w1, dtype


def _scores_backward(g: torch.Tensor, grad_ce: torch.Tensor, h1: torch.Tensor, w1: torch.Tensor,
                     dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of h, w and b from ``g`` = d ce / d scores (N, C) and each row's incoming gradient
    ``grad_ce`` (N,), folded into the small operand of each product instead of scaling g."""
    g = g.to(dtype)
    s = grad_ce[:, None].to(g.dtype)  # (N, 1)
    grad_h1 = (g @ w1.to(g.dtype)) * s  # (N, H + 1)
    grad_w1 = g.t() @ (h1.to(g.dtype) * s)  # (C, H + 1)
    k = h1.shape[1] - 1
    return grad_h1[:, :k], grad_w1[:, :k], grad_w1[:, k]


class _DenseSoftmaxCE(torch.autograd.Function):
    """Per-row cross-entropy of the full softmax, fused: the scores are one product written onto the base
    term, masked in place, and only their log-softmax is kept; the backward forms ``softmax - onehot`` in
    place of it. Against composing the same ops with autograd, this skips a copy of the (N, C) scores per
    term (bias, base, mask) and the autograd buffers of each, which dominate a step's memory traffic on a
    CPU."""

    @staticmethod
    def forward(ctx, h, w, b, target, base, base_weight, mask_rows, mask_items):
        logits, h1, w1, ctx.product_dtype = _scores(h, w, b, None, base, base_weight)
        if mask_rows is not None:
            logits.index_put_((mask_rows, mask_items), torch.tensor(float("-inf"), device=logits.device))
        logp = torch.log_softmax(logits, dim=1)  # (N, C)
        del logits
        ctx.save_for_backward(logp, h1, w1, target)
        return -logp.gather(1, target[:, None]).squeeze(1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_ce):
        logp, h1, w1, target = ctx.saved_tensors
        g = logp.exp_()  # softmax, in place of the saved log-probabilities (a backward runs once)
        g[torch.arange(len(g), device=g.device), target] -= 1.0  # d ce / d score = softmax - onehot(target)
        return *_scores_backward(g, grad_ce, h1, w1, ctx.product_dtype), None, None, None, None, None


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


def first_column(items: torch.Tensor) -> torch.Tensor:
    """(C,) for each column, the first column holding the same item."""
    c = items.numel()
    _, inv = torch.unique(items, return_inverse=True)
    first = torch.full((int(inv.max()) + 1 if c else 0,), c, dtype=torch.long, device=items.device)
    first = first.scatter_reduce(0, inv, torch.arange(c, device=items.device), reduce="amin")
    return first[inv]


class _SampledSoftmaxCE(torch.autograd.Function):
    """``sampled_softmax_loss``'s per-row cross-entropy, fused as ``_DenseSoftmaxCE``: -log q folded into the
    product's bias column, the masks written in place (a column fill for repeated items, one entry per row
    for an accidental hit), only the log-softmax kept for the backward."""

    @staticmethod
    def forward(ctx, h, w, b, cand_items, cand_log_q, extra_scores, extra_items):
        n = h.shape[0]
        rows = torch.arange(n, device=h.device)
        logits, h1, w1, ctx.product_dtype = _scores(h, w, b, -cand_log_q)  # eq. (4): score - log q
        diag = logits[rows, rows]  # (N,) each row's own positive (kept whatever the masks say)
        first = first_column(cand_items)
        repeated = torch.nonzero(first != torch.arange(len(first), device=first.device)).squeeze(1)
        logits.index_fill_(1, repeated, float("-inf"))  # every copy after an item's first column
        hit = first[:n] != rows  # the first column of the row's own item is elsewhere: an accidental hit
        logits[rows[hit], first[:n][hit]] = float("-inf")
        logits[rows, rows] = diag
        logp = torch.log_softmax(logits, dim=1)  # (N, C)
        del logits
        ce = -logp[rows, rows]
        ctx.extra = None
        if extra_scores is not None:  # explicit negatives join the normalisation: lse = log(e^lse_main + e^lse_x)
            bad = (extra_items < 0) | (extra_items == cand_items[:n, None])  # padding, or the positive itself
            ex = extra_scores.float().masked_fill(bad, float("-inf"))  # (N, K)
            lse_main = diag + ce
            lse = torch.logaddexp(lse_main, torch.logsumexp(ex, dim=1))
            ce = lse - diag
            ctx.extra = (ex, lse, lse_main - lse)
        ctx.save_for_backward(logp, h1, w1)
        return ce

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_ce):
        logp, h1, w1 = ctx.saved_tensors
        rows = torch.arange(len(logp), device=logp.device)
        grad_extra = None
        if ctx.extra is None:
            g = logp.exp_()  # softmax over the candidates, in place
        else:
            ex, lse, shift = ctx.extra
            g = logp.add_(shift[:, None]).exp_()  # over candidates and explicit negatives together
            grad_extra = torch.exp(ex - lse[:, None]) * grad_ce[:, None]
        g[rows, rows] -= 1.0
        return *_scores_backward(g, grad_ce, h1, w1, ctx.product_dtype), None, None, grad_extra, None


def sampled_softmax_loss(
    h: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor,
    cand_items: torch.Tensor,
    cand_log_q: torch.Tensor,
    weight: torch.Tensor | None = None,
    extra_scores: torch.Tensor | None = None,
    extra_items: torch.Tensor | None = None,
) -> LossOut:
    """Importance-sampled softmax with the log-q correction (section 3.1, eq. 4).

    ``h`` (N, H) are the rows' states, ``w`` (N + S, H) and ``b`` (N + S,) the candidates' item vectors and
    biases: the N positives of the batch first (row i's positive on the diagonal), then S negatives drawn
    from q and shared by all rows. ``cand_log_q`` (N + S,) is log q of each candidate, positives included.

    Each distinct item counts once per row: a row keeps its own positive (the diagonal) and the
    first column of every other item; other copies, and other columns holding the row's own
    positive (accidental hits), are masked. With q uniform and every item among the negatives
    this is exactly the dense softmax.

    ``extra_scores`` / ``extra_items`` (N, K): per-row explicit negatives (impressions shown
    and not chosen, section 3.3); items < 0 are padding. They are not drawn from q, so they get
    no correction.
    """
    ce = _SampledSoftmaxCE.apply(h, w, b, cand_items, cand_log_q, extra_scores, extra_items)  # (N,)
    return _weighted(ce, weight)
