"""The value decoder of the rating task (``research.rating``) and how it is fitted.

The value decoder (section 5: "jointly outputs multiple rating predictions on multiple items"):
the state ``h_k`` that ranks event k's item (previous item and its feedback = the previous
event's rating, time delta, user, context; ``HRNNScorer.request_states``) is decoded for item j as

    r_hat(h, j) = mu + b_j + b(f_j) + (w + a_j + a(f_j)) . h

mu the training mean; a_j, b_j per-item parameters (the item id part of eq. 2); a(f_j), b(f_j)
the item-metadata part (``model.ItemMeta``, as in eq. 2); w a shared direction (the user's
rating level read off the state applies to every item). The id and metadata parts are summed,
not mixed with a lambda: items without training events keep a_j = b_j = 0, so they are decoded
from metadata alone (eq. 2 with lambda = 1).

Fitting, in two phases, both by MSE on the training events' values (L2 on the batch's a_j and b_j):
(1) the head alone on the frozen ranking network's states; (2) ``finetune_epochs`` > 0: the
network and the head together (whole owner sequences, back-propagated end to end). Phase 2 is
what the paper's rating models are: a network trained to predict ratings. A ranking-trained
state has no reason to keep the user's rating level (a ranking does not depend on it), so the
frozen head alone cannot show what feedback encoding gives (tests/research/test_rating.py plants exactly
that case). Early stopping in both phases: the training events that are the protocol's
validation targets are left out of the losses and the epoch with the lowest RMSE on them is
kept. Each event is predicted from its own request state, so no event's value reaches its own
prediction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from hrnn_core.evaluation.baselines.features import flat_events
from hrnn_core.evaluation.hrnn_scorer import HRNNScorer
from hrnn_core.evaluation.splits import Split
from research.fm_rating import event_values
from research.rating_cases import RatedCases, RatingError, rmse


@dataclass(frozen=True)
class RatingHeadConfig:
    """The value decoder on a recurrent state, and how it and the network are fitted."""

    max_epochs: int = 30  # head on the frozen states: at most this many epochs (best validation epoch kept)
    batch_size: int = 1024  # training events per step (frozen phase)
    lr: float = 0.003  # Adam learning rate of the head
    l2: float = 10.0  # L2 on the batch's per-item vectors a_j: strong, 128 numbers per item overfit (ml-100k
    # temporal validation RMSE after fine-tuning: 0.01 -> 1.10, 0.1 -> 1.07, 1.0 -> 0.94, 10 -> 0.92)
    l2_bias: float = 0.001  # L2 on the batch's per-item biases b_j
    use_item_meta: bool = True  # add the metadata part a(f_j), b(f_j) (cold items: metadata only)
    finetune_epochs: int = 10  # then the network and head together by MSE, at most this many epochs; 0 = off
    finetune_lr: float = 0.001  # Adam learning rate of the network's parameters while fine-tuning
    finetune_rows: int = 8  # owners per fine-tuning step (whole sequences, back-propagated end to end)
    finetune_dropout: bool = True  # keep the network's dropout on while fine-tuning (validation: 0.920 with, 0.942
    # without at l2 = 10); the settings above were picked on ml-100k temporal validation events, never on test
    grad_clip: float = 1.0  # max gradient norm while fine-tuning
    seed: int = 0  # init and shuffling

    def __post_init__(self) -> None:
        if (self.max_epochs < 1 or self.batch_size < 1 or self.finetune_rows < 1 or self.lr <= 0
                or self.finetune_lr <= 0 or min(self.l2, self.l2_bias, self.finetune_epochs) < 0):
            raise RatingError("rating head: max_epochs, batch_size, finetune_rows >= 1; lr, finetune_lr > 0; "
                              "l2, l2_bias, finetune_epochs >= 0")


class RatingHead(nn.Module):
    """r_hat(h, j) = mu + b_j + b(f_j) + (w + a_j + a(f_j)) . h  (module docstring)."""

    def __init__(self, n_items: int, hidden: int, mean: float, item_meta: nn.Module | None = None,
                 item_cat: torch.Tensor | None = None, item_num: torch.Tensor | None = None):
        super().__init__()
        self.mean = mean  # mu, fixed
        self.item_a = nn.Embedding(n_items, hidden)  # a_j
        self.item_b = nn.Embedding(n_items, 1)  # b_j
        nn.init.zeros_(self.item_a.weight)
        nn.init.zeros_(self.item_b.weight)
        self.w = nn.Parameter(torch.zeros(hidden))  # shared direction
        self.meta = item_meta  # ItemMeta(group, hidden + 1): a(f_j), b(f_j)
        if item_meta is not None:
            self.register_buffer("item_cat", item_cat)
            self.register_buffer("item_num", item_num)

    def forward(self, h: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """h (N, H), items (N,) -> predictions (N,), |a_j|^2 (N,) and b_j^2 (N,) (for the L2 terms)."""
        a, b = self.item_a(items), self.item_b(items).squeeze(-1)  # (N, H), (N,)
        penalty = (a.pow(2).sum(-1), b.pow(2))
        if self.meta is not None:
            wb = self.meta(self.item_cat[items], self.item_num[items])  # (N, H + 1)
            a, b = a + wb[:, :-1], b + wb[:, -1]
        return self.mean + b + ((self.w + a) * h).sum(-1), *penalty


class _Best:
    """Keeps copies of the modules' weights at the lowest validation RMSE seen (early stopping)."""

    def __init__(self, *modules: nn.Module):
        self.modules, self.rmse, self.epoch, self.state = modules, float("inf"), 0, None

    def update(self, value: float, epoch: int) -> None:
        if value < self.rmse:
            self.rmse, self.epoch = value, epoch
            self.state = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in self.modules]

    def restore(self) -> None:
        if self.state is not None:
            for m, s in zip(self.modules, self.state, strict=True):
                m.load_state_dict(s)


def fit_head(make_head: Callable[[float], RatingHead], states: torch.Tensor, items: np.ndarray, y: np.ndarray,
             cfg: RatingHeadConfig, valid: tuple[torch.Tensor, np.ndarray, np.ndarray] | None = None
             ) -> tuple[RatingHead, list[float]]:
    """Fit a head on fixed states by MSE for ``cfg.max_epochs``; with ``valid`` = (states, items,
    ratings) keep the epoch with the lowest validation RMSE. Returns the head and that curve."""
    torch.manual_seed(cfg.seed)
    head = make_head(float(np.mean(y)))
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr)
    items_t = torch.as_tensor(items, dtype=torch.long)
    y_t = torch.as_tensor(y, dtype=torch.float32)
    rng = np.random.default_rng(cfg.seed)
    best, curve = _Best(head), []
    for epoch in range(1, cfg.max_epochs + 1):
        head.train()
        perm = torch.from_numpy(rng.permutation(len(y)))
        for lo in range(0, len(perm), cfg.batch_size):
            idx = perm[lo:lo + cfg.batch_size]
            pred, a2, b2 = head(states[idx], items_t[idx])
            loss = torch.mean((pred - y_t[idx]) ** 2) + torch.mean(cfg.l2 * a2 + cfg.l2_bias * b2)
            if not torch.isfinite(loss):
                raise RatingError(f"rating head loss is {loss.item()}; lower its lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if valid is not None:
            curve.append(rmse(predict_head(head, valid[0], valid[1]), valid[2]))
            best.update(curve[-1], epoch)
    best.restore()
    head.eval()
    return head, curve


@torch.no_grad()
def predict_head(head: RatingHead, states: torch.Tensor, items: np.ndarray, batch_size: int = 8192) -> np.ndarray:
    head.eval()
    items_t = torch.as_tensor(items, dtype=torch.long)
    out = [head(states[lo:lo + batch_size], items_t[lo:lo + batch_size])[0] for lo in range(0, len(items), batch_size)]
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)


def head_factory(scorer, cfg: RatingHeadConfig) -> Callable[[float], RatingHead]:
    """A head builder for a fitted ``HRNNScorer`` (its hidden size, catalogue and item metadata)."""
    from hrnn_core.model.network import ItemMeta  # noqa: PLC0415

    model, fs = scorer.model, scorer.features
    hidden = model.cfg.hidden_size

    def make(mean: float) -> RatingHead:
        meta = ItemMeta(fs.items, hidden + 1) if cfg.use_item_meta else None
        if meta is None or not meta.enabled:
            return RatingHead(fs.n_items, hidden, mean)
        # the catalogue's encoded metadata (the model's buffers; the last row is "no item")
        return RatingHead(fs.n_items, hidden, mean, meta, model.item_cat[:-1].long().cpu(), model.item_num[:-1].cpu())

    return make


def _validation_states(scorer, split: Split, valid: RatedCases) -> Callable[[], torch.Tensor]:
    """How to get the validation cases' states from the current network: from one pass over the
    training table when the validation targets are training events (temporal, rolling: the
    state reads the same prefix), else case by case (``request_states``)."""
    ids = flat_events(split.train).event_id
    order = np.argsort(ids, kind="stable")
    k = np.minimum(np.searchsorted(ids[order], valid.cases.target_event_id), max(len(ids) - 1, 0))
    if len(ids) and np.array_equal(ids[order[k]], valid.cases.target_event_id):
        where = torch.from_numpy(order[k])
        return lambda: event_states(scorer, split.train)[where]
    return lambda: scorer.request_states(valid.batch())


def finetune(scorer, head: RatingHead, split: Split, fit_mask: np.ndarray, valid: RatedCases | None,
             valid_states: Callable[[], torch.Tensor] | None, cfg: RatingHeadConfig,
             say: Callable[[str], None]) -> list[float]:
    """Train the network and the head together by MSE on the training events in ``fit_mask``.

    Whole owner sequences in length-sorted blocks of ``finetune_rows`` (full back-propagation
    through each sequence; every event is predicted from its own request state, so no event's
    value reaches its own prediction). Keeps the epoch with the lowest validation RMSE.
    """
    model = scorer.model
    enc = scorer._encode(split.train)[0]
    y = torch.as_tensor(np.nan_to_num(event_values(split.train)), dtype=torch.float32)
    target = enc.target.long()
    use = torch.from_numpy(fit_mask)
    lengths = np.diff(enc.owner_start)
    order = np.argsort(lengths, kind="stable")
    order = order[lengths[order] > 0]
    blocks = [order[lo:lo + cfg.finetune_rows] for lo in range(0, len(order), cfg.finetune_rows)]
    opt = torch.optim.Adam([{"params": model.parameters(), "lr": cfg.finetune_lr},
                            {"params": head.parameters(), "lr": cfg.lr}])
    rng = np.random.default_rng(cfg.seed)
    best, curve = _Best(model, head), []
    if valid is not None and len(valid):
        best.update(rmse(predict_head(head, valid_states(), valid.item), valid.rating), 0)  # the frozen fit
    for epoch in range(1, cfg.finetune_epochs + 1):
        model.train(cfg.finetune_dropout)
        head.train()
        for b in rng.permutation(len(blocks)):
            x, flat, real = scorer.row_inputs(enc, blocks[b])
            sel = torch.from_numpy(flat[real])
            keep = use[sel]
            if not keep.any():
                continue
            h, _ = model(x)  # (B, L, H)
            h = h[torch.from_numpy(real).to(h.device)].float().cpu()[keep]  # (N, H) the events that count
            pred, a2, b2 = head(h, target[sel][keep])
            loss = torch.mean((pred - y[sel][keep]) ** 2) + torch.mean(cfg.l2 * a2 + cfg.l2_bias * b2)
            if not torch.isfinite(loss):
                raise RatingError(f"rating fine-tuning loss is {loss.item()}; lower finetune_lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(list(model.parameters()) + list(head.parameters()), cfg.grad_clip)
            opt.step()
        model.eval()
        head.eval()
        if valid is not None and len(valid):
            curve.append(rmse(predict_head(head, valid_states(), valid.item), valid.rating))
            best.update(curve[-1], epoch)
            say(f"  fine-tune epoch {epoch}: validation RMSE {curve[-1]:.4f}")
    best.restore()
    model.eval()
    head.eval()
    scorer._encoded.clear()  # nothing cached may outlive the weights it was computed with
    return curve


def fit_recurrent_rating(scorer, split: Split, valid: RatedCases, cfg: RatingHeadConfig,
                         say: Callable[[str], None]) -> tuple[RatingHead, dict]:
    """Fit the value decoder on a fitted scorer: first on its frozen training-event states, then
    (``finetune_epochs`` > 0) together with the network by MSE.

    Validation: the training events that are validation targets are left out of both losses and
    the epoch with the lowest RMSE on them is kept (early stopping, no refit).
    """
    flat = flat_events(split.train)
    y = event_values(split.train)
    fit = np.isfinite(y) & ~np.isin(flat.event_id, valid.cases.target_event_id)
    if not fit.any():
        raise RatingError("no rated training event is left to fit the rating head on")
    v_states = _validation_states(scorer, split, valid) if len(valid) else None
    states = event_states(scorer, split.train)  # (E, H): each training event's request state
    head, curve = fit_head(head_factory(scorer, cfg), states[torch.from_numpy(fit)], flat.item[fit], y[fit], cfg,
                           valid=(v_states(), valid.item, valid.rating) if v_states else None)
    info = {"head_epochs": int(np.argmin(curve)) + 1 if curve else cfg.max_epochs,
            "head_valid_rmse": min(curve) if curve else None}
    if curve:
        say(f"  head on the frozen state: best validation RMSE {min(curve):.4f} after {info['head_epochs']} epochs")
    if cfg.finetune_epochs:
        ft = finetune(scorer, head, split, fit, valid if v_states else None, v_states, cfg, say)
        info.update(finetune_epochs=int(np.argmin(ft)) + 1 if ft and min(ft) < min(curve or [np.inf]) else 0,
                    finetune_valid_rmse=min(ft) if ft else None)
    return head, info


@torch.no_grad()
def event_states(scorer: HRNNScorer, sequences: pa.Table, block_rows: int = 64) -> torch.Tensor:
    """(E, H) state of every event of ``sequences`` (flat, row order) at its own request step: the rating head's
    input.

    One causal pass per row instead of one per event: event k's state reads events [0, k) and event k's request
    inputs, exactly what ``HRNNScorer.request_states`` returns for a case (row, pos=k) whose target is event k
    (the whole history is read, as with ``max_history=None``).
    """
    enc, _, _ = scorer._encode(sequences)  # noqa: SLF001 - research reads the scorer's encoding
    lengths = np.diff(enc.owner_start)
    out = torch.zeros(int(enc.owner_start[-1]), scorer.model.cfg.hidden_size)
    order = np.argsort(lengths, kind="stable")  # similar lengths share a block: little padding
    order = order[lengths[order] > 0]
    for lo in range(0, len(order), block_rows):
        x, flat, valid = scorer.row_inputs(enc, order[lo:lo + block_rows])
        h, _ = scorer.model(x)  # (B, L, H); padding after a row's end is never computed
        out[torch.from_numpy(flat[valid])] = h[torch.from_numpy(valid).to(scorer.device)].float().cpu()
    return out
