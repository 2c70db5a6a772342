"""Training: user-parallel mini-batches, truncated BPTT, dense or importance-sampled softmax.

``train`` runs in named phases:

1. **prepare** (``_prepare``): the data (``hrnn_core.train.batches.prepare_data``: features, encoded
   events, capped histories, the validation split), the rules that follow from it (seen items out of
   the softmax, ``resolve_exclude_seen``; the eq. (5) term in training, ``training_trend``), the
   seeded model, its optimizers and the negative sampler; ``_resume`` then restores ``last.pt``.
2. **fit, one epoch** (``_fit_epoch``): every random stream reseeded from ``(seed, epoch)``, ties in
   a fresh order, then one truncated-BPTT step per window of the user-parallel batches
   (``hrnn_core.train.batches.owner_windows``): lambda of eq. (2) ~ U[0, 1] per batch (or
   fixed), the dense softmax over all items or the sampled softmax (shared negatives from the alias
   sampler, log-q corrected, impressions as extra negatives), reward weights (3.3) (``_step_loss``);
   AdamW, gradient clipping, warm-up + cosine LR (``_update``).
3. **validate + early stop** (``_validate_epoch``): loss/PPL/NDCG@10/Hit@10 on the held-out last
   events, scored as inference scores; the early-stopping decision.
4. **checkpoint** (``_checkpoint``): ``last.pt`` every epoch, ``best.pt`` when the metric improves.
5. **post-hoc** (``write_report``): ``report.json`` and the loss curve.

Every epoch reseeds every random stream from ``(seed, epoch)``, so a run resumed from the
last epoch's checkpoint (``resume=True``) ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from hrnn_core.config import ModelConfig, TrainConfig
from hrnn_core.model.checkpoint import CheckpointError, load_checkpoint, resolve_device, save_checkpoint
from hrnn_core.model.losses import LossOut, dense_softmax_loss, reward_weights, sampled_softmax_loss
from hrnn_core.model.network import FieldBags, HRNNMeta, StepInputs
from hrnn_core.model.sampler import AliasSampler
from hrnn_core.train import warm
from hrnn_core.train.validation import (  # noqa: F401 - evaluate, validate: re-exported for callers
    TrainTrend, _autocast, evaluate, request_states, training_new_item_rate, training_trend, validate)
from hrnn_core.train.batches import (NonFiniteLossError, TrainData, TrainError, Window, gather_inputs, owner_windows,
                                     prepare_data, repeat_rate, repeat_share, seen_pairs, tie_order)

RANK_SEED_STRIDE = 1_000_003  # hrnn_core.train.distributed: rank r's random streams are seeded + r * this

__all__ = ["TrainConfig", "TrainData", "TrainResult", "NonFiniteLossError", "TrainError",
           "prepare_data", "owner_windows", "gather_inputs", "evaluate", "train"]


EXCLUDE_SEEN_MAX_REPEATS = 0.01  # seen items leave the dense softmax when at most this share of events repeat one


def resolve_exclude_seen(cfg: TrainConfig, data: TrainData) -> tuple[bool, float]:
    """(whether each event's softmax leaves out its owner's earlier items, the data's repeat share).

    On with the dense output when at most EXCLUDE_SEEN_MAX_REPEATS of the training events repeat an
    item of their owner (ratings: the ranking never shows seen items, so the softmax need not push them
    down; +0.016 NDCG@10 on ml-100k validation); off where owners repeat items (sessions, re-clicks)
    and with the sampled output (a sampled step has no per-event catalogue mask).
    """
    share = repeat_share(data)
    return resolve_output(cfg, data.features.n_items).output == "dense" and share <= EXCLUDE_SEEN_MAX_REPEATS, share


def _optimizers(model: HRNNMeta, cfg: TrainConfig) -> list[torch.optim.Optimizer]:
    """AdamW, weight decay on matrices only (not embeddings, biases, norms).

    With the sampled output the item-indexed tables (input embedding, w_j, b_j) get sparse
    gradients and a SparseAdam of their own: a step then touches only the rows of the batch's
    items and negatives instead of every row of a million-item catalog.
    """
    item_tables = [model.item_in, model.item_w, model.item_b]
    sparse = cfg.output == "sampled"
    for emb in item_tables:
        emb.sparse = sparse
    sparse_ids = {id(e.weight) for e in item_tables} if sparse else set()
    no_decay: set[int] = set()
    for m in model.modules():
        if isinstance(m, (nn.Embedding, FieldBags)):
            no_decay.update(id(p) for p in m.parameters(recurse=False))
    params = [p for p in model.parameters() if id(p) not in sparse_ids]
    decay = [p for p in params if p.dim() >= 2 and id(p) not in no_decay]
    rest = [p for p in params if not (p.dim() >= 2 and id(p) not in no_decay)]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    opts: list[torch.optim.Optimizer] = [torch.optim.AdamW(groups, lr=cfg.lr, foreach=True)]  # one op per group, not per tensor
    if sparse:
        opts.append(torch.optim.SparseAdam([e.weight for e in item_tables], lr=cfg.lr))
    return opts


def _clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> None:
    """Global-norm clipping that also handles sparse gradients (torch's does not)."""
    grads = []
    for p in params:
        if p.grad is not None:
            if p.grad.is_sparse:
                p.grad = p.grad.coalesce()
            grads.append(p.grad)
    if not grads:
        return
    total = torch.linalg.vector_norm(torch.stack([(g.values() if g.is_sparse else g).norm() for g in grads]))
    coef = max_norm / (float(total) + 1e-6)
    if coef < 1.0:
        for g in grads:
            g.mul_(coef)


def _lr(cfg: TrainConfig, step: int, total: int) -> float:
    """Linear warm-up, then cosine decay to lr * min_lr_ratio (a function of the step only)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclass
class TrainResult:
    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    report: Path
    history: list[dict]  # one entry per epoch
    stopped_early: bool


@dataclass
class _Run:
    """What the phases of one training run share: settings, data, model and the run's position."""

    model_cfg: ModelConfig
    cfg: TrainConfig
    device: torch.device
    dist_ctx: object | None  # hrnn_core.train.distributed.DistContext, or None in a single process
    rank: int
    is_main: bool  # rank 0: validates and writes files
    rank_of: Callable[[np.ndarray], np.ndarray] | None  # slot ids -> this rank's rows (None: alone)
    data: TrainData
    exclude_seen: bool  # each event's softmax leaves out its owner's earlier items (resolve_exclude_seen)
    repeats: float  # the share of training events that repeat an item of their owner
    has_ties: bool  # some events share their owner's timestamp (tie_order has something to shuffle)
    trend: TrainTrend | None  # the eq. (5) term in every dense training score (training_trend)
    cold_rate: float  # the cold prior's calibration target (training_new_item_rate)
    repeat_rate: float | None  # the repeat term's (batches.repeat_rate); None with exclude_seen (no term)
    type_w: torch.Tensor  # reward weight per event type index (section 3.3)
    model: HRNNMeta
    opts: list[torch.optim.Optimizer]
    sampler: AliasSampler  # negatives of the sampled output, drawn from q
    steps_per_epoch: int
    total_steps: int  # the length of the LR schedule
    log_incl: dict[int, torch.Tensor] = field(default_factory=dict)  # draws per step -> log inclusion probs
    # the position, saved in every checkpoint (resume)
    history: list[dict] = field(default_factory=list)  # one metrics dict per epoch
    curve: list[tuple[int, float]] = field(default_factory=list)  # (step, mean loss of the last log_every steps)
    next_epoch: int = 0  # the first epoch not yet run
    step: int = 0
    best: float | None = None
    bad_epochs: int = 0
    warm_start: dict | None = None  # a warm start's growth counts (hrnn_core.train.warm.warm_start); None: from scratch
    as_of: float | None = None  # the snapshot's cut (saved in checkpoints: a warm start from them validates after it)
    event_w: torch.Tensor | None = None  # (E,) a warm start's loss weight per event (train.new_event_weight); None: 1

    @property
    def stopped(self) -> bool:
        return self.bad_epochs >= self.cfg.patience and self.next_epoch >= self.cfg.min_epochs


DENSE_MAX_ITEMS = 20_000  # train.output "auto": the dense softmax up to this catalogue size, sampled above


def resolve_output(cfg: TrainConfig, n_items: int) -> TrainConfig:
    """``train.output = "auto"`` made concrete for a catalogue of ``n_items``: the dense softmax while it is
    cheap, the importance-sampled one past ``DENSE_MAX_ITEMS`` (docs/benchmarks.md: at 10,000 items sampled
    trains 3x faster at equal NDCG@10, at 100,000 29x faster and better; every recorded leaderboard is below
    10,000 items, so dense)."""
    if cfg.output != "auto":
        return cfg
    return dataclasses.replace(cfg, output="dense" if n_items <= DENSE_MAX_ITEMS else "sampled")


def _prepare(snapshot_dir: Path, model_cfg: ModelConfig, cfg: TrainConfig, device: torch.device,
             dist_ctx, init_from: Path | None = None) -> _Run:
    """Phase 1: the data, the rules that follow from it, the seeded model, its optimizers and sampler;
    ``init_from``: a warm start from that checkpoint (``hrnn_core.train.warm``: its features extended, its weights)."""
    champion = warm.load_champion(init_from, model_cfg) if init_from is not None else None
    features = warm.extend_features(champion.features, snapshot_dir, model_cfg) if champion is not None else None
    champion_cut = champion.raw.get("as_of") if champion is not None else None  # the champion's snapshot cut
    data = prepare_data(snapshot_dir, model_cfg, cfg, features, champion_cut)
    n_items, ev = data.features.n_items, data.events
    cfg = resolve_output(cfg, n_items)
    n_events = int((data.train_segments[:, 1] - data.train_segments[:, 0]).sum())
    if n_events == 0:
        raise TrainError(f"snapshot {snapshot_dir} has no training events after the validation split")
    exclude_seen, repeats = resolve_exclude_seen(cfg, data)
    if cfg.output == "dense" and cfg.batch_size * cfg.bptt * n_items > cfg.max_dense_logits:
        raise TrainError(f"dense output over {n_items:,} items needs a {cfg.batch_size * cfg.bptt:,} x "
                         f"{n_items:,} score matrix; set train.output = 'sampled' (or a smaller batch)")
    trend = training_trend(snapshot_dir, data, model_cfg, cfg.output)  # eq. (5) in every dense score
    type_w = torch.tensor([cfg.default_event_weight] + [float(cfg.event_type_weights.get(t, cfg.default_event_weight))
                                                        for t in data.features.event_types], device=device)
    torch.manual_seed(cfg.seed)
    model = HRNNMeta(model_cfg, data.features, data.item_cat, data.item_num).to(device)
    with torch.no_grad():  # an item with no training event is never an input here: no random row for later
        model.item_in.weight[:n_items][torch.as_tensor(ev.item_freq == 0).to(device)] = 0.0
    if champion is not None and cfg.init_shrink != 1.0:
        warm.shrink(champion.model, cfg.init_shrink)
    grown = warm.warm_start(model, champion, data.features) if champion is not None else None
    opts = _optimizers(model, cfg)
    sampler = AliasSampler(ev.item_freq, cfg.sampler_alpha, seed=cfg.seed, device=device)
    # the LR schedule's length: this order's window count (another epoch's order differs by a window or two)
    steps_per_epoch = sum(1 for _ in owner_windows(data.train_segments, cfg.batch_size, cfg.bptt)) + 1
    rank, is_main = (dist_ctx.rank, dist_ctx.is_main) if dist_ctx is not None else (0, True)
    rank_of = dist_ctx.local_rows if dist_ctx is not None else None
    as_of = json.loads((Path(snapshot_dir) / "manifest.json").read_text()).get("as_of")  # the cut, for warm starts
    event_w = None
    if data.newer is not None and cfg.new_event_weight != 1.0:  # a warm start: events after the champion's cut
        event_w = torch.where(torch.from_numpy(data.newer), cfg.new_event_weight, 1.0).float()
    return _Run(model_cfg, cfg, device, dist_ctx, rank, is_main, rank_of, data, exclude_seen, repeats,
                warm_start=grown, as_of=as_of, event_w=event_w,
                has_ties=bool((ev.time_delta == 0).any()), trend=trend,
                cold_rate=training_new_item_rate(snapshot_dir, data, trend.times if trend else None),
                repeat_rate=None if exclude_seen else repeat_rate(data), type_w=type_w, model=model, opts=opts,
                sampler=sampler, steps_per_epoch=steps_per_epoch, total_steps=steps_per_epoch * cfg.epochs)


def _resume(run: _Run, last_path: Path) -> None:
    """Continue from ``last_path``: its weights, optimizer states and position (same snapshot and model)."""
    ck = load_checkpoint(last_path, run.device)
    if ck.snapshot_id != run.data.features.snapshot_id:
        raise TrainError(f"{last_path} was trained on snapshot {ck.snapshot_id}, not "
                         f"{run.data.features.snapshot_id}; use a new run dir")
    if ck.raw["model_config"] != dataclasses.asdict(run.model_cfg):
        raise TrainError(f"{last_path} has a different model config; use a new run dir")
    if len(ck.raw["optimizer"]) != len(run.opts):
        raise TrainError(f"{last_path} was trained with another train.output; use a new run dir")
    run.model.load_state_dict(ck.model.state_dict())
    for opt, state in zip(run.opts, ck.raw["optimizer"], strict=True):
        opt.load_state_dict(state)
    run.next_epoch, run.step = ck.raw["epoch"] + 1, ck.raw["step"]
    run.best, run.bad_epochs = ck.raw["best"], ck.raw["bad_epochs"]
    run.history, run.curve = list(ck.raw["history"]), [tuple(c) for c in ck.raw["curve"]]


def _epoch_streams(run: _Run, epoch: int) -> tuple[np.ndarray, TrainData, torch.Generator]:
    """Reseed every random stream from (seed, epoch): the epoch's owner order, its events (ties in a
    fresh order, the same on every rank) and the lambda draws. Dropout and negatives get a stream per
    rank (rank 0 = the single-process stream)."""
    cfg, data = run.cfg, run.data
    rank_seed = cfg.seed * 100_003 + epoch + run.rank * RANK_SEED_STRIDE
    torch.manual_seed(rank_seed)
    run.sampler.generator.manual_seed(rank_seed)
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(2, epoch)))
    mix_rng = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    segments = data.train_segments[rng.permutation(len(data.train_segments))]
    if run.has_ties:
        tie_rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(3, epoch)))
        ev = data.events.reordered(tie_order(data.events.time_delta, data.train_segments, tie_rng),
                                   data.features.n_items)
        data = dataclasses.replace(data, events=ev)
    return segments, data, mix_rng


def _step_loss(run: _Run, data: TrainData, idx: torch.Tensor, x: StepInputs, mix: float,
               hidden: torch.Tensor | None, seen_items: torch.Tensor | None
               ) -> tuple[LossOut, torch.Tensor, torch.Tensor | None]:
    """The forward pass and loss of one (B, T) window: (loss, the hidden state to carry, the seen-item
    state to carry). ``data``: the epoch's events; ``idx`` (B, T) event indices, -1 = padding;
    ``seen_items`` (B, n_items) what each row's owner had before the window (None: nothing)."""
    cfg, model, ev, device = run.cfg, run.model, data.events, run.device
    valid = (idx >= 0).to(device)  # (B, T)
    flat = idx[idx >= 0]  # (N,) event indices of the valid positions
    target = ev.target[flat].to(device)  # (N,)
    weight = reward_weights(ev.event_type[flat].to(device), ev.event_value[flat].to(device),
                            run.type_w, cfg.event_value_weight)  # (N,)
    if run.event_w is not None:  # a warm start: the events its starting model never trained on weigh more
        weight = weight * run.event_w[flat].to(device)
    with _autocast(device):
        out, hidden = model(x, hidden)  # (B, T, H), (L, B, H)
        h = out[valid]  # (N, H)
        if cfg.output == "dense":
            w, b = model.item_vectors(None, mix)  # (n_items, H), (n_items,)
            base, base_weight, mask = None, 1.0, None
            if run.trend is not None:  # eq. (5) at each target's time: the network learns the residual
                base = run.trend.popularity.log_q_at(run.trend.times[flat.numpy()]).to(device)  # (N, n_items)
                base_weight = run.trend.weight
            if run.exclude_seen:
                if seen_items is None:
                    seen_items = torch.zeros(len(idx), model.n_items, dtype=torch.bool, device=device)
                pos, items, seen_items = seen_pairs(seen_items, ev.target[idx.clamp(min=0)].to(device), valid)
                keep = items != target[pos]  # the event's own item is never left out
                mask = pos[keep], items[keep]
            res = dense_softmax_loss(h, w, b, target, weight, base, base_weight, mask)
            return res, hidden, seen_items
        neg, _ = run.sampler.draw(cfg.n_negatives)  # (S,) shared negatives, drawn from q
        cand = torch.cat([target, neg])  # (N + S,) positives first: the diagonal
        # eq. (4) correction: the log-probability that j's column is present among the
        # N + S draws: log q_j + const for rare items, 0 for items drawn almost surely
        n_draws = len(cand)
        if n_draws not in run.log_incl:
            run.log_incl[n_draws] = run.sampler.log_inclusion(n_draws)
        extra_s = extra_i = None
        if cfg.use_impressions and (ev.impressions[flat] >= 0).any():
            extra_i = ev.impressions[flat].to(device)  # (N, K)
            w_i, b_i = model.item_vectors(extra_i.clamp(min=0).reshape(-1), mix)
            extra_s = torch.einsum("nh,nkh->nk", h, w_i.view(*extra_i.shape, -1)) + b_i.view(extra_i.shape)
        res = sampled_softmax_loss(h, *model.item_vectors(cand, mix), cand, run.log_incl[n_draws][cand], weight,
                                   extra_s, extra_i)
        return res, hidden, seen_items


def _carry(prev: Window | None, window: Window, hidden: torch.Tensor | None, seen_items: torch.Tensor | None
           ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The carried hidden state (L, B, H) and seen items (B, n_items) in ``window``'s row order: the rows of
    continuing owners (found by slot id in the previous window) take theirs, new owners zeros (their
    ``reset`` starts them from the initial state)."""
    if prev is None or hidden is None or not len(window.slot) or window.reset.all():
        return None, None
    where = {int(s): r for r, s in enumerate(prev.slot)}
    rows = torch.tensor([where.get(int(s), 0) for s in window.slot], device=hidden.device)
    keep = torch.from_numpy(~window.reset).to(hidden.device)
    hidden = torch.where(keep[None, :, None], hidden.detach()[:, rows], 0.0)
    if seen_items is not None:
        seen_items = seen_items[rows] & keep[:, None]
    return hidden, seen_items


def _empty_loss(device: torch.device) -> LossOut:
    zero = torch.zeros((), device=device)
    return LossOut(zero, zero.reshape(1)[:0])


def _update(run: _Run, res: LossOut, n: int, params: list[nn.Parameter], sparse_ids: set[int], epoch: int
            ) -> tuple[float, float, int]:
    """Backward (summed over ranks in a data-parallel run), clipping and the optimizer step:
    (the step's mean loss, its summed cross-entropy, its events over all ranks)."""
    cfg = run.cfg
    for opt in run.opts:
        opt.zero_grad(set_to_none=True)
    if run.dist_ctx is None:
        step_loss, step_ce = float(res.loss.detach()), float(res.ce.detach().sum())
        if math.isfinite(step_loss):
            res.loss.backward()
    else:  # gradient of the rank's loss sum; the all-reduce turns it into the global mean's
        if n:
            (res.loss * n).backward()
        total = run.dist_ctx.all_reduce_step(params, sparse_ids, torch.stack([
            torch.tensor(float(n)), res.loss.detach().float().cpu() * max(n, 1), res.ce.detach().float().sum().cpu()]))
        n = int(total[0])
        step_loss, step_ce = float(total[1]) / max(n, 1), float(total[2])
    if not math.isfinite(step_loss):
        raise NonFiniteLossError(f"loss is {step_loss} at epoch {epoch + 1}, step {run.step}; "
                                 f"lower train.lr (now {cfg.lr}) or check event values/features")
    if cfg.grad_clip > 0:
        _clip_grad_norm(params, cfg.grad_clip)
    for opt in run.opts:
        opt.step()
    return step_loss, step_ce, n


def _fit_epoch(run: _Run, epoch: int) -> dict:
    """Phase 2: one pass over the training events, one truncated-BPTT step per window; the epoch's
    training metrics."""
    cfg, model = run.cfg, run.model
    segments, data, mix_rng = _epoch_streams(run, epoch)
    params = list(model.parameters())
    sparse_ids = {id(e.weight) for e in (model.item_in, model.item_w, model.item_b) if e.sparse}
    model.train()
    hidden, seen_items, t0, seen, loss_sum, ce_sum, recent, lr = None, None, time.time(), 0, 0.0, 0.0, [], cfg.lr
    prev: Window | None = None  # this process's rows of the previous window
    bar = tqdm(total=run.steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not cfg.progress,
               leave=False, unit="step")
    for window in owner_windows(segments, cfg.batch_size, cfg.bptt):
        if run.rank_of is not None:
            window = window.rows(run.rank_of(window.slot))
        lr = _lr(cfg, run.step, run.total_steps)
        for opt in run.opts:
            for g in opt.param_groups:
                g["lr"] = lr
        hidden, seen_items = _carry(prev, window, hidden, seen_items)  # detached: truncated BPTT
        prev = window
        idx = torch.from_numpy(window.idx)
        mix = cfg.item_meta_mix if cfg.item_meta_mix is not None else float(torch.rand(1, generator=mix_rng))
        if len(idx):
            x = gather_inputs(data, window).to(run.device)
            res, hidden, seen_items = _step_loss(run, data, idx, x, mix, hidden, seen_items)
        else:  # a rank with no rows in this window still joins the step's all-reduce
            res, hidden, seen_items = _empty_loss(run.device), None, None
        step_loss, step_ce, n = _update(run, res, int((idx >= 0).sum()), params, sparse_ids, epoch)
        run.step += 1
        seen += n
        loss_sum += step_loss * n
        recent.append(step_loss)
        ce_sum += step_ce
        if run.step % cfg.log_every == 0:
            run.curve.append((run.step, sum(recent) / len(recent)))  # mean over the last log_every steps
            recent = []
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.3f}", ev_s=f"{seen / max(time.time() - t0, 1e-9):,.0f}")
    bar.close()
    seconds = time.time() - t0
    return {"epoch": epoch + 1, "step": run.step, "train_loss": loss_sum / max(seen, 1),
            "train_ppl": math.exp(min(ce_sum / max(seen, 1), 50.0)), "events": seen,
            "seconds": seconds, "events_per_s": seen / max(seconds, 1e-9), "lr": lr}


def _validate_epoch(run: _Run, epoch: int, metrics: dict) -> tuple[dict, bool]:
    """Phase 3: the epoch's validation (rank 0) and early stopping: (the epoch's metrics, whether they
    improved the early-stopping metric)."""
    cfg = run.cfg
    if run.is_main:
        metrics.update(validate(run.model, run.model_cfg, run.data, run.device, run.exclude_seen, run.trend,
                                run.cold_rate, run.repeat_rate))
    if run.dist_ctx is not None:
        metrics = run.dist_ctx.broadcast(metrics)  # every rank takes rank 0's early-stopping decision
    run.model.train()
    run.history.append(metrics)
    value = metrics.get(cfg.early_stopping_metric)
    lower_better = cfg.early_stopping_metric == "val_loss"
    improved = value is None or run.best is None or (value < run.best if lower_better else value > run.best)
    if improved:
        run.best, run.bad_epochs = value, 0
    else:
        run.bad_epochs += 1
    run.next_epoch = epoch + 1
    return metrics, improved


def _checkpoint(run: _Run, epoch: int, improved: bool, last_path: Path, best_path: Path) -> None:
    """Phase 4: ``last.pt`` every epoch (with the optimizers, for resume), ``best.pt`` when it improved."""
    if not run.is_main:
        return
    common = dict(epoch=epoch, step=run.step, best=run.best, bad_epochs=run.bad_epochs, history=run.history,
                  curve=[list(c) for c in run.curve], as_of=run.as_of)
    features, cfg, freq = run.data.features, run.cfg, run.data.events.item_freq
    if improved:
        save_checkpoint(best_path, run.model, features, cfg, freq, **common)
    save_checkpoint(last_path, run.model, features, cfg, freq, optimizer=[o.state_dict() for o in run.opts], **common)


def train(snapshot_dir: Path, run_dir: Path, model_cfg: ModelConfig | None = None,
          train_cfg: TrainConfig | None = None, resume: bool = False,
          on_epoch_end: Callable[[int, dict], None] | None = None, dist_ctx=None,
          init_from: Path | None = None) -> TrainResult:
    """Train HRNN-meta on a snapshot; checkpoints and the report go to ``run_dir``.

    ``resume=True`` continues from ``run_dir/last.pt`` (same snapshot and configs required);
    without it an existing ``last.pt`` is an error. ``on_epoch_end(epoch, metrics)`` is called
    after each epoch's checkpoint is written.

    ``dist_ctx`` (a :class:`hrnn_core.train.distributed.DistContext`, set by ``python -m
    hrnn_core.train.distributed`` under torchrun) makes this process one rank of a data-parallel run:
    it trains its share of each global batch's slots, gradients are summed over ranks, and only
    rank 0 validates and writes files. Without it (or with one process) the loop is unchanged.

    ``init_from`` (a checkpoint with the same model config, e.g. the champion's) starts from its weights
    instead of a random network: a warm start (``hrnn_core.train.warm``).
    """
    model_cfg, cfg = model_cfg or ModelConfig(), train_cfg or TrainConfig()
    run_dir = Path(run_dir)
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    if last_path.exists() and not resume:
        raise TrainError(f"{run_dir} already holds a run; pass resume=True (--resume) or use another run dir")
    device = dist_ctx.device if dist_ctx is not None else resolve_device(cfg.device)
    from hrnn_core.threads import apply_torch_threads  # noqa: PLC0415 - the one thread policy

    apply_torch_threads(cfg.threads)  # 0: automatic (hrnn_core.threads)
    run = _prepare(snapshot_dir, model_cfg, cfg, device, dist_ctx, init_from)
    cfg = run.cfg  # train.output resolved for this catalogue
    if resume and last_path.exists():
        _resume(run, last_path)
    for epoch in range(run.next_epoch, cfg.epochs):
        if run.stopped:
            break
        metrics, improved = _validate_epoch(run, epoch, _fit_epoch(run, epoch))
        _checkpoint(run, epoch, improved, last_path, best_path)
        if cfg.progress:
            shown = {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}
            tqdm.write(f"epoch {epoch + 1}: {shown}{' (best)' if improved else ''}")
        if on_epoch_end is not None:
            on_epoch_end(epoch, metrics)
    # ---- phase 5: post-hoc (rank 0)
    if not run.is_main:
        return TrainResult(run_dir, best_path, last_path, run_dir / "report.json", run.history, run.stopped)
    if not last_path.exists():
        raise CheckpointError(f"{run_dir}: no epoch finished, nothing to report")
    report = write_report(run_dir, run.history, run.curve, model_cfg, cfg, run.data, run.stopped,
                          world=dist_ctx.world if dist_ctx is not None else 1,
                          extra={"exclude_seen": run.exclude_seen, "repeat_share": round(run.repeats, 6),
                                 "warm_start": run.warm_start})
    return TrainResult(run_dir, best_path, last_path, report, run.history, run.stopped)


def write_report(run_dir: Path, history: list[dict], curve: list[tuple[int, float]], model_cfg: ModelConfig,
                 cfg: TrainConfig, data: TrainData, stopped: bool, world: int = 1, extra: dict | None = None) -> Path:
    """``report.json`` (configs, data sizes, per-epoch metrics) and ``loss_curve.png``."""
    from matplotlib.figure import Figure  # noqa: PLC0415 - no pyplot: no global backend state

    report = {
        "snapshot_id": data.features.snapshot_id, "n_items": data.features.n_items,
        "n_owners": int(data.events.n_owners), "train_owners": len(data.train_segments),
        "val_owners": len(data.val_segments), "max_len": data.max_len,
        "model_config": dataclasses.asdict(model_cfg), "train_config": dataclasses.asdict(cfg),
        "stopped_early": stopped, "epochs": history, "processes": world, "curve": [list(c) for c in curve],
        "best_epoch": best_epoch(history, cfg), "loss_curve": "loss_curve.png",
        "torch": torch.__version__, **(extra or {}),
    }
    path = run_dir / "report.json"
    path.write_text(json.dumps(report, indent=2))
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    if curve:
        ax.plot([c[0] for c in curve], [c[1] for c in curve], lw=0.8, label=f"train loss (mean of {cfg.log_every} steps)")
    ends = [h["step"] for h in history]
    ax.plot(ends, [h["train_loss"] for h in history], "o-", label="train loss (epoch mean)")
    if history and "val_loss" in history[0]:
        ax.plot(ends, [h["val_loss"] for h in history], "s-", label="validation loss (last events)")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats)")
    ax.set_title(f"HRNN-meta, {cfg.output} softmax, snapshot {data.features.snapshot_id}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "loss_curve.png", dpi=100)
    return path


def best_epoch(history: list[dict], cfg: TrainConfig) -> int | None:
    """The epoch (1-based) early stopping kept: best ``cfg.early_stopping_metric`` (else the last)."""
    vals = [(h.get(cfg.early_stopping_metric), h["epoch"]) for h in history if cfg.early_stopping_metric in h]
    if not vals:
        return history[-1]["epoch"] if history else None
    pick = min if cfg.early_stopping_metric == "val_loss" else max
    return pick(vals, key=lambda v: v[0])[1]  # the first of equal values, as training keeps it
