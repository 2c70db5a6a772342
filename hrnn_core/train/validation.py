"""Training-time validation: the model's states at validation requests, the metrics of one epoch, and the
calibration of the cold prior and the repeat term on those requests (``hrnn_core.model.scoring``), all through
the one scoring function; the eq. (5) term training adds to every dense score (``training_trend``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hrnn_core.config import ModelConfig
from hrnn_core.model.network import HRNNMeta
from hrnn_core.model.scoring import (CatalogueScorer, calibrate_cold_prior, calibrate_repeat_prior, choose_latest_prior,
                                     new_item_rate)
from hrnn_core.model.trend import WindowedPopularity
from hrnn_core.model.steps import gather_steps
from hrnn_core.train.batches import TrainData, snapshot_times


def _autocast(device: torch.device):
    if device.type == "cuda":  # bf16 on GPU; fp32 on CPU (bf16 matmuls are slow there)
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


@torch.no_grad()
def request_states(model: HRNNMeta, data: TrainData, segments: np.ndarray, device: torch.device,
                   times: np.ndarray | None = None, batch_size: int = 64):
    """Yield, per block of ``segments`` (similar lengths together), the block's segments, the model's state
    (b, H) at the request of each segment's last event, its target items (b,) and request times (b,) or
    None, and the block's flat event indices (b, t) (-1 = padding)."""
    model.eval()
    order = np.argsort(segments[:, 1] - segments[:, 0], kind="stable")  # similar lengths together
    for lo in range(0, len(order), batch_size):
        seg = segments[order[lo:lo + batch_size]]
        lengths = seg[:, 1] - seg[:, 0]
        t = int(lengths.max())
        idx = seg[:, :1] + np.arange(t)[None, :]
        idx = np.where(np.arange(t)[None, :] < lengths[:, None], idx, -1)  # (b, t)
        x = gather_steps(data.events, idx, data.event_user[torch.from_numpy(seg[:, 0])], lengths=lengths).to(device)
        with _autocast(device):
            out, _ = model(x)  # (b, t, H)
        h = out[torch.arange(len(seg)), torch.from_numpy(lengths - 1)].float()  # (b, H)
        target = data.events.target[torch.from_numpy(seg[:, 1] - 1)].to(device)  # (b,)
        yield seg, h, target, None if times is None else times[seg[:, 1] - 1], idx


@torch.no_grad()
def evaluate(model: HRNNMeta, data: TrainData, segments: np.ndarray, device: torch.device,
             scorer: CatalogueScorer | None = None, times: np.ndarray | None = None, k: int = 10,
             batch_size: int = 64, item_chunk: int = 65_536, exclude_seen: bool = False,
             cold_rate: float | None = None, repeat_rate: float | None = None) -> dict[str, float]:
    """Validation on each segment's last event given the rest: loss (mean CE), PPL, NDCG@k, Hit@k.

    Scores come from ``scorer`` (``hrnn_core.model.scoring``: the evaluation's and the service's scoring
    function; default: the model's own settings without a trend term), at each target's time
    (``times``: each event's timestamp), over the full catalogue in chunks (never a rows x all-items
    matrix larger than a chunk). ``exclude_seen``: the owner's earlier items (never the target) leave
    the ranking and the softmax, as in training (``resolve_exclude_seen``). ``cold_rate``, ``repeat_rate``:
    first calibrate the model's cold prior and repeat term on these requests to these rates
    (``calibrate_cold_prior``, ``calibrate_repeat_prior``); the repeat term scores the owner's earlier items.
    """
    if len(segments) == 0:
        return {}
    scorer = scorer or CatalogueScorer(model, data.events.item_freq)
    blocks = list(request_states(model, data, segments, device, times, batch_size))
    histories = _calibrate(scorer, data, blocks, times, cold_rate, repeat_rate)
    ce_sum = ndcg = hits = 0.0
    for (seg, h, target, at, _), hist_items in zip(blocks, histories, strict=True):
        seen = None
        if exclude_seen:  # (b, n_items): items of the events before the target, never the target itself
            seen = torch.zeros(len(seg), model.n_items, dtype=torch.bool, device=device)
            for r, items in enumerate(hist_items):
                seen[r, items] = True
            seen[torch.arange(len(seg), device=device), target] = False
        pos = scorer.target_scores(h, target, at, hist_items)  # (b,)
        lse = torch.full_like(pos, float("-inf"))
        rank = torch.zeros_like(pos)
        for a in range(0, model.n_items, item_chunk):
            items = torch.arange(a, min(a + item_chunk, model.n_items), device=device)
            s = scorer.scores(h, at, items, seen=hist_items)  # (b, chunk)
            if seen is not None:
                s = s.masked_fill(seen[:, a:a + len(items)], float("-inf"))
            lse = torch.logaddexp(lse, torch.logsumexp(s, dim=1))
            above = s > pos[:, None]  # the target's own column never counts (its two roundings may differ)
            mine = torch.nonzero((target >= a) & (target < a + len(items))).flatten()
            above[mine, target[mine] - a] = False
            rank += above.sum(1)
        ce_sum += float((lse - pos).sum())
        top = rank < k
        ndcg += float(torch.where(top, 1.0 / torch.log2(rank + 2.0), torch.zeros_like(rank)).sum())
        hits += float(top.sum())
    n = len(segments)
    loss = ce_sum / n
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)), f"ndcg@{k}": ndcg / n, f"hit@{k}": hits / n,
            "cold_log_prior": scorer.prior, "repeat_log_prior": scorer.repeat_prior,
            "latest_log_prior": scorer.latest_prior}


def _calibrate(scorer: CatalogueScorer, data: TrainData, blocks: list, times: np.ndarray | None,
               cold_rate: float | None, repeat_rate: float | None) -> list[list[list[int]]]:
    """Calibrate the cold prior and the repeat term on ``request_states`` blocks (either rate None: left as it
    is); returns each block's per-row histories (the owner's items before the request)."""
    histories = [_histories(data, b[0], b[4]) for b in blocks]
    if not blocks:
        return histories
    all_h = torch.cat([b[1] for b in blocks])
    all_t = None if times is None else np.concatenate([b[3] for b in blocks])
    if cold_rate is not None:
        calibrate_cold_prior(scorer, all_h, all_t, cold_rate)
    if repeat_rate is not None:
        seen = [s for hs in histories for s in hs]
        calibrate_repeat_prior(scorer, all_h, all_t, seen, repeat_rate)
        choose_latest_prior(scorer, all_h, all_t, seen, torch.cat([b[2] for b in blocks]))
    return histories


def _histories(data: TrainData, seg: np.ndarray, idx: np.ndarray) -> list[list[int]]:
    """Per segment of a ``request_states`` block: the items of its events before the last (the request's)."""
    items = data.events.target.numpy()
    lengths = seg[:, 1] - seg[:, 0]
    return [items[idx[r, : lengths[r] - 1]].tolist() for r in range(len(seg))]


CALIBRATION_OWNERS = 1_000  # without validation owners, the cold prior is calibrated on this many training owners


def validate(model: HRNNMeta, model_cfg: ModelConfig, data: TrainData, device: torch.device,
             exclude_seen: bool, trend: TrainTrend | None = None, cold_rate: float | None = None,
             repeat_rate: float | None = None) -> dict:
    """One epoch's validation metrics, scored as inference scores (eq. 2 at ``model.inference_item_meta_mix``);
    ``trend``: the eq. (5) term a model trained with it is scored with. ``cold_rate``: the cold prior is
    calibrated first (on the validation requests, else on the last events of some training owners)."""
    scorer = CatalogueScorer(model, data.events.item_freq, model_cfg.inference_item_meta_mix,
                             trend.popularity if trend else None, trend.weight if trend else 0.0)
    times = trend.times if trend else None
    if len(data.val_segments) == 0 and cold_rate is not None:
        blocks = list(request_states(model, data, data.train_segments[:CALIBRATION_OWNERS], device, times))
        _calibrate(scorer, data, blocks, times, cold_rate, repeat_rate)
        return {"cold_log_prior": scorer.prior, "repeat_log_prior": scorer.repeat_prior,
                "latest_log_prior": scorer.latest_prior}
    return evaluate(model, data, data.val_segments, device, scorer, times, exclude_seen=exclude_seen,
                    cold_rate=cold_rate, repeat_rate=repeat_rate)


def training_new_item_rate(snapshot_dir: Path, data: TrainData, times: np.ndarray | None = None) -> float:
    """``new_item_rate`` of the training events (the validation targets left out): the cold prior's target."""
    times = snapshot_times(snapshot_dir, len(data.events.target)) if times is None else times
    a, b = data.train_segments[:, 0], data.train_segments[:, 1]
    lengths = b - a
    idx = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths) + np.repeat(a, lengths)
    return new_item_rate(times[idx], data.events.target.numpy()[idx])


@dataclass
class TrainTrend:
    """The eq. (5) term training adds to every dense score (``training_trend``)."""

    weight: float
    popularity: WindowedPopularity  # q(t) over the snapshot's events (hrnn_core.model.scoring.popularity)
    times: np.ndarray  # (E,) each encoded event's timestamp: a target's request time


def training_trend(snapshot_dir: Path, data: TrainData, model_cfg: ModelConfig, output: str = "dense"
                   ) -> TrainTrend | None:
    """The eq. (5) term training adds to every score: with the dense output and a trend weight > 0, so the
    network learns the residual p(a | h) of eq. (5) instead of absorbing popularity (section 3.2 feeds the
    hourly popularity into the model; on ml-100k validation +0.006 NDCG@10 on leave_one_out, PPL 30 % lower);
    None otherwise (the sampled softmax's log-q correction has no room for it). ``q(t)`` counts the snapshot's
    events before the target's bucket (``model.trend_bucket_seconds``, as every scoring path), never the
    target itself or anything later."""
    if model_cfg.trend_weight <= 0.0 or output != "dense":
        return None
    times = snapshot_times(snapshot_dir, len(data.events.target))
    pop = WindowedPopularity(times, data.events.target.numpy(), data.features.n_items,
                             window_seconds=model_cfg.trend_window_seconds,
                             bucket_seconds=model_cfg.trend_bucket_seconds, smoothing=model_cfg.trend_smoothing)
    return TrainTrend(model_cfg.trend_weight, pop, times)
