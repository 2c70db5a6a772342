"""HGRU (Quadrana et al., RecSys 2017, "HRNN Init") as a ``Scorer`` ("hgru"): the hierarchical model that
HRNN-meta's time-delta input replaces (paper, section 2.2, Table 3). A session GRU reads the current
session, its output scores the next item; a user GRU keeps a state ``c`` per owner, updated once per
finished session with its final state; a session starts from ``s_0 = tanh(W c + b)``, an owner from a
learned ``c_0``. Sessions are the warehouse's (``session_starts``: ``sql/sessions.sql``); a request
starts one by the target's own flag (it is the history's next event) or by the gap to the last read event.
It shares the plain GRU's input stack, sizes, ``TrainConfig`` recipe, output layer and scoring rules
(items without training events last, the calibrated repeat term, the latest item's prior): docs/evaluation/hgru.md.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from torch import nn

from hrnn_core.config import ModelConfig, TrainConfig
from hrnn_core.evaluation.baselines.base import ScoreBatch, Scorer, TrainData
from hrnn_core.evaluation.baselines.features import BaselineError, FlatEvents, flat_events
from hrnn_core.evaluation.metrics import Accumulator
from hrnn_core.evaluation.splits import SESSION_GAP_SECONDS, repeat_share
from hrnn_core.model.checkpoint import resolve_device
from hrnn_core.model.features import HOLDOUT_FILE
from hrnn_core.model.losses import dense_softmax_loss, sampled_softmax_loss
from hrnn_core.model.sampler import AliasSampler
from hrnn_core.model.scoring import NO_SCORE, add_seen_terms, calibrate_repeat_prior, choose_latest_prior

ROW_BLOCK = 256  # owners replayed at once when computing request states


class HGRUNet(nn.Module):
    """Session GRU + user GRU (module docstring); ``step`` is one request of a batch of owners."""

    def __init__(self, n_items: int, emb_dim: int, input_size: int, hidden: int, dropout: float):
        super().__init__()
        self.n_items = n_items
        self.item_in = nn.Embedding(n_items + 1, emb_dim)  # row n_items: no item
        self.inp = nn.Sequential(nn.Linear(emb_dim, input_size), nn.GELU())
        self.session = nn.GRUCell(input_size, hidden)  # GRU_ses
        self.user = nn.GRUCell(hidden, hidden)  # GRU_usr, input: a finished session's final state
        self.init = nn.Linear(hidden, hidden)  # s_0 = tanh(W_init c + b_init)
        self.user0 = nn.Parameter(torch.zeros(hidden))  # c_0: the user state before the first session
        self.drop = nn.Dropout(dropout)
        self.item_w = nn.Embedding(n_items, hidden)  # output layer: w_j . s + b_j
        self.item_b = nn.Embedding(n_items, 1)
        nn.init.normal_(self.item_w.weight, std=hidden ** -0.5)
        nn.init.zeros_(self.item_b.weight)
        self.register_buffer("repeat_log_prior", torch.zeros(()))  # scoring's b_rep; 0 = no repeat term
        self.register_buffer("latest_log_prior", torch.zeros(()))  # scoring's b_last: on the latest seen item

    def step(self, prev_item: torch.Tensor, new_session: torch.Tensor, new_owner: torch.Tensor,
             state: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor]:
        """One request per row: ``prev_item`` (B,) (ignored where ``new_owner``), ``new_session``, ``new_owner``
        (B,) bool, ``state`` (s, c) or None (all new owners) -> the new (s, c); ``s`` scores this request."""
        c0 = self.user0.expand(prev_item.shape[0], -1)
        if state is None:
            return torch.tanh(self.init(c0)), c0
        s, c = state
        s_next = self.session(self.drop(self.inp(self.item_in(prev_item))), s)  # after the previous item
        ends = (new_session & ~new_owner).nonzero().squeeze(1)  # finished sessions: the user GRU steps there only
        if len(ends):
            c = c.index_copy(0, ends, self.user(s_next[ends], c[ends]))
        c = torch.where(new_owner[:, None], c0, c)
        starts = (new_session | new_owner).nonzero().squeeze(1)
        if len(starts):
            s_next = s_next.index_copy(0, starts, torch.tanh(self.init(c[starts])))
        return s_next, c

    def forward(self, prev_item, new_session, new_owner, state=None):
        """(B, T) requests -> outputs (B, T, H) and the state to carry into the next window."""
        out = [(state := self.step(prev_item[:, k], new_session[:, k], new_owner[:, k], state))[0]
               for k in range(prev_item.shape[1])]
        return self.drop(torch.stack(out, dim=1)), state


class _Decoder:
    """States -> scores ``w_j . s + b_j``; items without training events at ``NO_SCORE``; the repeat term on
    ``seen`` items. Has what ``scoring.calibrate_repeat_prior`` reads of a ``CatalogueScorer``."""

    def __init__(self, model: HGRUNet, trained: torch.Tensor):
        self.model, self.cold = model, ~trained

    @property
    def repeat_prior(self) -> float:
        return float(self.model.repeat_log_prior)

    @property
    def latest_prior(self) -> float:
        return float(self.model.latest_log_prior)

    @property
    def uses_seen(self) -> bool:
        return bool(self.repeat_prior or self.latest_prior)

    def scores(self, h: torch.Tensor, times=None, seen: list | None = None) -> torch.Tensor:
        out = (h.float() @ self.model.item_w.weight.T + self.model.item_b.weight.T).masked_fill(self.cold, NO_SCORE)
        if seen is not None and self.uses_seen:
            add_seen_terms(out, seen, self.repeat_prior, self.latest_prior)
        return out


class _Events(NamedTuple):
    flat: FlatEvents  # offsets, item, timestamp, event_id
    session_start: np.ndarray  # (E,) bool; an owner's first event always starts one
    prev_item: np.ndarray  # (E,) the row's previous item (n_items: none, or beyond the model's catalogue)

    @classmethod
    def of(cls, table: pa.Table, n_items: int) -> _Events:
        flat = flat_events(table)
        starts = np.asarray(pc.list_flatten(table["session_starts"]).fill_null(True), dtype=bool).copy()
        firsts = flat.offsets[:-1][np.diff(flat.offsets) > 0]
        starts[firsts] = True
        prev = np.r_[n_items, flat.item[:-1]].astype(np.int64)[: len(flat.item)]
        prev[firsts] = n_items
        return cls(flat, starts, np.where(prev >= n_items, n_items, prev))

    def seen(self, rows, pos, n_items: int) -> list[np.ndarray]:
        """The model's items among each case's read events."""
        out = [self.flat.item[self.flat.offsets[r]:self.flat.offsets[r] + p] for r, p in zip(rows, pos, strict=True)]
        return [x[x < n_items] for x in out]


class HGRUScorer(Scorer):
    """HGRU behind the ``Scorer`` interface; see the module docstring."""

    name = "hgru"
    outputs_distribution = True  # softmax logits over the catalogue (+ the repeat term, as HRNN-meta's)

    def __init__(self, model: ModelConfig | dict | None = None, train: TrainConfig | dict | None = None,
                 device: str | None = None, batch_size: int = 256):
        self.model_cfg = ModelConfig(**model) if isinstance(model, dict) else model or ModelConfig()  # the GRU's
        self.train_cfg = TrainConfig(**train) if isinstance(train, dict) else train or TrainConfig()
        if device is not None:
            self.train_cfg = dataclasses.replace(self.train_cfg, device=device)
        self.device = resolve_device(self.train_cfg.device)
        self.batch_size = batch_size  # cases scored at once
        self.net: HGRUNet | None = None
        self.history: list[dict] = []  # one dict per epoch (the harness's curves and best_epoch)
        self._events: tuple[pa.Table, _Events] | None = None  # the last table scored, flat

    def fit(self, data: TrainData) -> None:
        from hrnn_core.train.trainer import resolve_output  # noqa: PLC0415 - the plain GRU's output rule

        cfg = resolve_output(dataclasses.replace(self.train_cfg, seed=data.seed), data.n_items)
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        table, val_rows, holdout = self._training_table(data, cfg)
        n, ev = data.n_items, _Events.of(table, data.n_items)
        offsets, lengths = ev.flat.offsets, np.diff(ev.flat.offsets)
        end = offsets[1:].copy()
        end[holdout] -= 1  # held-out last events are never trained on
        max_len = max(2, int(math.ceil(np.quantile(lengths, cfg.max_len_percentile)))) if len(lengths) else 2
        start = np.maximum(offsets[:-1], end - max_len)
        segments = np.stack([start, end], axis=1)[end > start]
        trained = np.zeros(len(ev.flat.item), dtype=bool)
        for a, b in segments:
            trained[a:b] = True
        if not trained.any():
            raise BaselineError("HGRU: no training events after the validation split")
        freq = np.bincount(ev.flat.item[trained], minlength=n)[:n]
        torch.manual_seed(cfg.seed)
        self.net = HGRUNet(n, self.model_cfg.field_dim, self.model_cfg.input_size, self.model_cfg.hidden_size,
                           self.model_cfg.dropout).to(self.device)
        self.decoder = _Decoder(self.net, torch.as_tensor(freq > 0, device=self.device))
        self._events = (table, ev)
        # the plain GRU's rule (trainer.resolve_exclude_seen): the repeat term calibrated to the training repeat
        # rate (batches.repeat_rate's smoothing) where owners repeat items; else seen items leave validation's ranking
        share = repeat_share(table)
        self._exclude_seen = share <= 0.01 and cfg.output == "dense"
        with_history = len(ev.flat.item) - int((lengths > 0).sum())
        repeat_rate = None if self._exclude_seen else (share * len(ev.flat.item) + 1.0) / (with_history + 2.0)
        self._train(cfg, ev, segments, val_rows, freq, repeat_rate)

    def _train(self, cfg: TrainConfig, ev: _Events, segments: np.ndarray, val_rows: np.ndarray,
               freq: np.ndarray, repeat_rate: float | None) -> None:
        """The plain GRU's loop (user-parallel windows, truncated BPTT, LR schedule, early stopping)."""
        from hrnn_core.train.batches import owner_windows  # noqa: PLC0415
        from hrnn_core.train.trainer import _lr  # noqa: PLC0415 - warm-up + cosine, a function of the step

        net, dev = self.net, self.device
        no_decay = lambda name, p: p.dim() < 2 or name.startswith(("item_", "user0"))  # noqa: E731
        opt = torch.optim.AdamW([
            {"params": [p for k, p in net.named_parameters() if not no_decay(k, p)], "weight_decay": cfg.weight_decay},
            {"params": [p for k, p in net.named_parameters() if no_decay(k, p)], "weight_decay": 0.0}], lr=cfg.lr)
        sampler = AliasSampler(freq, cfg.sampler_alpha, seed=cfg.seed, device=dev) if cfg.output == "sampled" else None
        total = (math.ceil(int((segments[:, 1] - segments[:, 0]).sum()) / (cfg.batch_size * cfg.bptt)) + 1) * cfg.epochs
        prev, starts = torch.as_tensor(ev.prev_item), torch.as_tensor(ev.session_start)
        target = torch.as_tensor(np.minimum(ev.flat.item, net.n_items - 1))
        best, best_state, bad, step, t_start, log_incl = None, None, 0, 0, time.perf_counter(), {}
        self.history = []
        for epoch in range(cfg.epochs):
            rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(2, epoch)))
            torch.manual_seed(cfg.seed * 100_003 + epoch)
            t0, seen, loss_sum, state = time.perf_counter(), 0, 0.0, None
            net.train()
            for w in owner_windows(segments[rng.permutation(len(segments))], cfg.batch_size, cfg.bptt):
                for g in opt.param_groups:
                    g["lr"] = _lr(cfg, step, total)
                idx = torch.from_numpy(w.idx)
                safe = idx.clamp(min=0)
                reset = torch.zeros(idx.shape, dtype=torch.bool)
                reset[:, 0] = torch.from_numpy(w.reset)  # one owner per row: a new one only at a row's start
                if state is not None:  # truncated BPTT: continuing rows take their state, new ones restart
                    rows, keep = torch.from_numpy(np.maximum(w.carry, 0)).to(dev), torch.from_numpy(~w.reset).to(dev)
                    state = tuple(torch.where(keep[:, None], t.detach()[rows], 0.0) for t in state)
                    state = None if w.reset.all() else state
                out, state = net(prev[safe].to(dev), starts[safe].to(dev), reset.to(dev), state)
                h, y = out[(idx >= 0).to(dev)], target[idx[idx >= 0]].to(dev)  # (N, H), (N,)
                if sampler is None:
                    res = dense_softmax_loss(h, net.item_w.weight, net.item_b.weight.squeeze(1), y)
                else:  # positives first, then negatives shared by the batch; log-q corrected
                    cand = torch.cat([y, sampler.draw(cfg.n_negatives)[0]])
                    if len(cand) not in log_incl:
                        log_incl[len(cand)] = sampler.log_inclusion(len(cand))
                    res = sampled_softmax_loss(h, net.item_w(cand), net.item_b(cand).squeeze(1), cand, log_incl[len(cand)][cand])
                if not torch.isfinite(res.loss):
                    raise BaselineError(f"HGRU loss is {float(res.loss)} at epoch {epoch + 1}; lower train.lr")
                opt.zero_grad(set_to_none=True)
                res.loss.backward()
                if cfg.grad_clip > 0:
                    nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
                opt.step()
                step, seen, loss_sum = step + 1, seen + len(y), loss_sum + float(res.loss.detach()) * len(y)
            seconds = time.perf_counter() - t0
            metrics = {"epoch": epoch + 1, "step": step, "train_loss": loss_sum / max(seen, 1), "events": seen,
                       "seconds": seconds, "events_per_s": seen / max(seconds, 1e-9),
                       **self._validate(ev, val_rows, repeat_rate)}
            metrics["elapsed_s"] = time.perf_counter() - t_start  # fit time so far, validation included
            self.history.append(metrics)
            value = metrics.get(cfg.early_stopping_metric)
            if value is None or best is None or (value < best if cfg.early_stopping_metric == "val_loss" else value > best):
                best, bad, best_state = value, 0, copy.deepcopy(net.state_dict())
            else:
                bad += 1
            if bad >= cfg.patience and epoch + 1 >= cfg.min_epochs:
                break
        net.load_state_dict(best_state)
        net.eval()

    def _training_table(self, data: TrainData, cfg: TrainConfig) -> tuple[pa.Table, np.ndarray, np.ndarray]:
        """(the table trained on, rows whose last event validates, rows whose last event is held out): the
        protocol's validation targets when it gives them (leave_one_out: all held out, up to ``val_owners``
        validate), else the last events of up to ``val_owners`` random owners with 2+ events (the trainer's)."""
        rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(1,)))
        es = data.early_stopping_snapshot_dir
        if cfg.val_owners > 0 and es is not None and (es / HOLDOUT_FILE).exists():
            holdout = np.sort(pq.read_table(es / HOLDOUT_FILE)["row"].to_numpy())
            return pq.read_table(es / "sequences.parquet"), np.sort(rng.permutation(holdout)[: cfg.val_owners]), holdout
        val = np.sort(rng.permutation(np.flatnonzero(data.sequences["n_events"].to_numpy() >= 2))[: cfg.val_owners])
        return data.sequences, val, val

    @torch.no_grad()
    def _validate(self, ev: _Events, rows: np.ndarray, repeat_rate: float | None) -> dict:
        """Loss and NDCG@10 of the held-out last events (the repeat term calibrated on them first)."""
        if len(rows) == 0:
            return {}
        self.net.eval()
        pos = np.diff(ev.flat.offsets)[rows] - 1
        target_ev = ev.flat.offsets[rows] + pos
        h = self._request_states(ev, rows, pos, ev.flat.timestamp[target_ev], ev.flat.event_id[target_ev])
        seen = ev.seen(rows, pos, self.net.n_items)
        targets = torch.as_tensor(np.minimum(ev.flat.item[target_ev], self.net.n_items - 1))
        if repeat_rate is not None:  # HRNN-meta's validation: b_rep calibrated, then b_last chosen
            calibrate_repeat_prior(self.decoder, h, None, [s.tolist() for s in seen], repeat_rate)
            choose_latest_prior(self.decoder, h, None, [s.tolist() for s in seen], targets)
        scores = self.decoder.scores(h, seen=seen if repeat_rate is not None else None).cpu()
        acc = Accumulator(self.net.n_items, ks=(10,))
        acc.add(scores, targets, exclude=seen if self._exclude_seen else None)
        val_loss = float(F.cross_entropy(scores.clamp(min=-1e4).float(), targets))
        return {"val_loss": val_loss, "ndcg@10": float(acc.summary()["ndcg@10"])}

    def _request_states(self, ev: _Events, rows: np.ndarray, pos: np.ndarray, t: np.ndarray,
                        target_ids: np.ndarray | None) -> torch.Tensor:
        """(B, H) states at each case's request step (row ``rows[i]``, events ``[0, pos[i])`` read): one causal
        pass per distinct row up to its longest read history, keeping the state after each case's last read
        event, then one request step per case, starting a session by the target's own flag (the target is
        the row's next event) or else by the inactivity gap to the last read event."""
        net, dev, n, f = self.net, self.device, self.net.n_items, ev.flat
        offsets, item, ts, ids = f.offsets, f.item, f.timestamp, f.event_id
        rows, pos = np.asarray(rows, dtype=np.int64), np.asarray(pos, dtype=np.int64)
        s_keep = torch.zeros(len(rows), net.user0.shape[0], device=dev)
        c_keep = torch.zeros_like(s_keep)
        uniq = np.unique(rows[pos > 0])
        case_row = np.searchsorted(uniq, rows)  # index into uniq (cases with pos > 0)
        need = np.zeros(len(uniq), dtype=np.int64)
        np.maximum.at(need, case_row[pos > 0], pos[pos > 0])
        order = np.argsort(need, kind="stable")
        for lo in range(0, len(order), ROW_BLOCK):
            block, slot_of = order[lo:lo + ROW_BLOCK], np.full(len(uniq) + 1, -1)
            slot_of[block] = np.arange(len(block))
            slot = np.where(pos > 0, slot_of[np.minimum(case_row, len(uniq))], -1)
            length = int(need[block].max())
            flat = np.minimum(offsets[uniq[block]][:, None] + np.arange(length)[None, :], max(len(item) - 1, 0))
            first = torch.zeros(len(block), length, dtype=torch.bool, device=dev)
            first[:, 0] = True
            prev_t, sess_t = torch.as_tensor(ev.prev_item[flat], device=dev), torch.as_tensor(ev.session_start[flat], device=dev)
            state = None
            for k in range(length):
                state = net.step(prev_t[:, k], sess_t[:, k], first[:, k], state)
                cs = np.flatnonzero((slot >= 0) & (pos - 1 == k))
                if len(cs):
                    s_keep[cs], c_keep[cs] = state[0][slot[cs]], state[1][slot[cs]]
        last, nxt = np.maximum(offsets[rows] + pos - 1, 0), np.minimum(offsets[rows] + pos, max(len(item) - 1, 0))
        is_next = (offsets[rows] + pos < offsets[rows + 1]) & (ts[nxt] == t)
        if target_ids is not None:
            is_next &= ids[nxt] == target_ids
        new_session = np.where(is_next, ev.session_start[nxt], t - ts[last] > SESSION_GAP_SECONDS) | (pos == 0)
        prev = np.where((pos > 0) & (item[last] < n), item[last], n)
        s, _ = net.step(torch.as_tensor(prev, device=dev), torch.as_tensor(new_session, device=dev),
                        torch.as_tensor(pos == 0, device=dev), (s_keep, c_keep))
        return s

    @torch.no_grad()
    def score(self, batch: ScoreBatch) -> torch.Tensor:
        if self.net is None:
            raise BaselineError("score() before fit(): fit the scorer first")
        if self._events is None or self._events[0] is not batch.sequences:
            self._events = (batch.sequences, _Events.of(batch.sequences, self.net.n_items))
        ev, out = self._events[1], []
        for lo in range(0, len(batch.rows), self.batch_size):
            sl = slice(lo, lo + self.batch_size)
            rows, pos = np.asarray(batch.rows[sl]), np.asarray(batch.pos[sl])
            ids = None if batch.target_event_id is None else np.asarray(batch.target_event_id[sl])
            h = self._request_states(ev, rows, pos, np.asarray(batch.target_timestamp[sl], dtype=np.float64), ids)
            out.append(self.decoder.scores(h, seen=ev.seen(rows, pos, self.net.n_items) if self.decoder.uses_seen else None).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.net.n_items)
