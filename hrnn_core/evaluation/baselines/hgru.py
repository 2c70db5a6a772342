"""HGRU (Quadrana et al., RecSys 2017, "Personalizing Session-based Recommendations with Hierarchical
Recurrent Neural Networks", the "HRNN Init" variant) as a ``Scorer`` ("hgru"): the hierarchical model
that HRNN-meta's time-delta input replaces (paper, section 2.2 and Table 3).

Two GRUs:

* a **session GRU** reads the items of the current session; its output scores the next item;
* a **user GRU** holds one state ``c`` per owner and is updated once per finished session, with that
  session's final state: ``c_m = GRU_usr(s_m^last, c_{m-1})``; ``c_0`` is learned. Each session starts
  from ``s_0 = tanh(W_init c + b_init)``, so a returning user's new session starts from what the user
  level kept of the earlier ones.

Sessions are the warehouse's: ``session_starts`` of the snapshot's sequences (``sql/sessions.sql``: a given
session id, else an inactivity gap; ``splits.select_events`` re-infers them with the same rule where a
protocol dropped events). On anonymous-session data (yoochoose) every owner is one session and the user
GRU never updates: HGRU is then a plain session GRU with a learned initial state.

One step per event ``k`` of an owner (a request: what was known when event ``k`` happened):
``s' = GRU_ses(x(item_{k-1}), s)`` consumes the previous event's item; where event ``k`` starts a new
session, ``s'`` is the finished session's final state, ``c`` is updated from it and ``s = s_0(c)``;
where ``k`` starts a new owner, ``c = c_0`` and ``s = s_0(c_0)``; else ``s = s'``. The output ``s``
scores event ``k``'s item, so every event is a target, a session's first one included (from the user
state alone). The request step of an evaluation case knows whether it starts a session: the target
event's own flag when the target is the next event of the history, else the gap to the last read event
(``splits.SESSION_GAP_SECONDS``).

What it shares with the plain GRU (``gru``: HRNN-meta's network with every extra input off), so that
the comparison is about the hierarchy: the input stack (item embedding of ``field_dim`` -> linear + GELU
to ``input_size``), ``hidden_size`` and ``dropout`` of ``ModelConfig``; the training recipe of
``TrainConfig`` (user-parallel windows of ``bptt`` events over ``batch_size`` owners, history cap at
``max_len_percentile``, AdamW with warm-up and cosine decay, gradient clipping, at most ``epochs``
epochs, early stopping on ``early_stopping_metric`` of the last events of ``val_owners`` held-out owners
(or the protocol's own validation targets, leave_one_out) with ``patience`` / ``min_epochs``, the best
epoch kept); the output layer (``train.output``: the dense softmax, or past ``DENSE_MAX_ITEMS`` the
importance-sampled softmax with the log-q correction, ``hrnn_core.model.losses``); at scoring, items
without training events rank last (``scoring.NO_SCORE``) and the repeat term (``scoring``'s ``b_rep`` on
the owner's own items, calibrated at every validation by ``calibrate_repeat_prior``) is added where
owners repeat items. Not shared: seen items are not masked out of the dense training softmax (the
trainer's ``exclude_seen``, used only on rating data where owners never repeat an item; the HGRU ranks
them in validation there as the protocol does, without the mask in training), and no tie shuffling.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch import nn

from hrnn_core.config import ModelConfig, TrainConfig
from hrnn_core.evaluation.baselines.base import ScoreBatch, Scorer, TrainData
from hrnn_core.evaluation.baselines.features import BaselineError, flat_events
from hrnn_core.evaluation.metrics import Accumulator, exclude_mask
from hrnn_core.evaluation.splits import SESSION_GAP_SECONDS, repeat_share
from hrnn_core.model.checkpoint import resolve_device
from hrnn_core.model.features import HOLDOUT_FILE
from hrnn_core.model.losses import dense_softmax_loss, sampled_softmax_loss
from hrnn_core.model.sampler import AliasSampler
from hrnn_core.model.scoring import NO_SCORE, calibrate_repeat_prior

ROW_BLOCK = 256  # owners replayed at once when computing request states


class HGRUNet(nn.Module):
    """Session GRU + user GRU (module docstring); ``step`` is one request of a batch of owners."""

    def __init__(self, n_items: int, emb_dim: int, input_size: int, hidden: int, dropout: float):
        super().__init__()
        self.n_items = n_items
        self.item_in = nn.Embedding(n_items + 1, emb_dim)  # row n_items: no item (a new owner's first step)
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
        # the repeat term's b_rep (hrnn_core.model.scoring), calibrated at each validation; 0 = no term
        self.register_buffer("repeat_log_prior", torch.zeros(()))

    def step(self, prev_item: torch.Tensor, new_session: torch.Tensor, new_owner: torch.Tensor,
             state: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor]:
        """One request per row: ``prev_item`` (B,) the owner's previous item (ignored where ``new_owner``),
        ``new_session`` / ``new_owner`` (B,) bool, ``state`` (s, c) each (B, H) or None (every row a new
        owner). Returns the new (s, c); ``s`` scores this request's item."""
        b = prev_item.shape[0]
        c0 = self.user0.expand(b, -1)
        if state is None:
            return torch.tanh(self.init(c0)), c0
        s, c = state
        x = self.drop(self.inp(self.item_in(prev_item)))  # (B, I)
        s_next = self.session(x, s)  # the session's state after its previous item
        ends = (new_session & ~new_owner).nonzero().squeeze(1)  # a session ended: the user GRU steps, only there
        if len(ends):
            c = c.index_copy(0, ends, self.user(s_next[ends], c[ends]))
        c = torch.where(new_owner[:, None], c0, c)
        starts = (new_session | new_owner).nonzero().squeeze(1)
        if len(starts):
            s_next = s_next.index_copy(0, starts, torch.tanh(self.init(c[starts])))
        return s_next, c

    def forward(self, prev_item: torch.Tensor, new_session: torch.Tensor, new_owner: torch.Tensor,
                state: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """(B, T) requests -> outputs (B, T, H) and the state to carry into the next window."""
        out = []
        for k in range(prev_item.shape[1]):
            state = self.step(prev_item[:, k], new_session[:, k], new_owner[:, k], state)
            out.append(state[0])
        return self.drop(torch.stack(out, dim=1)), state


class _Decoder:
    """Request states -> catalogue scores: ``w_j . s + b_j``, items without training events at ``NO_SCORE``,
    plus the repeat term on ``seen`` items. The attributes ``calibrate_repeat_prior`` reads (``model``
    with its ``repeat_log_prior``, ``repeat_prior``, ``scores``) are those of ``scoring.CatalogueScorer``."""

    def __init__(self, model: HGRUNet, trained: torch.Tensor):
        self.model = model
        self.cold = ~trained  # (n_items,) no training events

    @property
    def repeat_prior(self) -> float:
        return float(self.model.repeat_log_prior)

    def scores(self, h: torch.Tensor, times=None, seen: list | None = None) -> torch.Tensor:
        out = h.float() @ self.model.item_w.weight.T + self.model.item_b.weight.T  # (B, n_items)
        out = out.masked_fill(self.cold[None, :], NO_SCORE)
        if seen is not None and self.repeat_prior:
            out = out + self.repeat_prior * exclude_mask(seen, len(out), out.shape[1], out.device).float()
        return out


@dataclasses.dataclass
class _Events:
    """A sequences table as flat arrays (row r: [offsets[r], offsets[r + 1]))."""

    offsets: np.ndarray  # (n_rows + 1,)
    item: np.ndarray  # (E,) item_idx
    timestamp: np.ndarray  # (E,)
    event_id: np.ndarray  # (E,)
    session_start: np.ndarray  # (E,) bool: the event starts a session (an owner's first always does)

    @classmethod
    def of(cls, table: pa.Table) -> _Events:
        flat = flat_events(table)
        starts = pc.list_flatten(table["session_starts"]).fill_null(True).to_numpy(zero_copy_only=False)
        starts = np.asarray(starts, dtype=bool).copy()
        if len(starts) != len(flat.item):
            raise BaselineError("sequences table: session_starts and item_idx differ in length")
        lengths = np.diff(flat.offsets)
        starts[flat.offsets[:-1][lengths > 0]] = True
        return cls(flat.offsets, flat.item, flat.timestamp, flat.event_id, starts)

    def prev_items(self, n_items: int) -> np.ndarray:
        """(E,) the item of each event's previous event in its row (``n_items`` for a row's first, or an
        item beyond the model's catalogue)."""
        prev = np.r_[n_items, self.item[:-1]] if len(self.item) else self.item.copy()
        prev[self.offsets[:-1][np.diff(self.offsets) > 0]] = n_items
        return np.where(prev >= n_items, n_items, prev)


class HGRUScorer(Scorer):
    """HGRU behind the ``Scorer`` interface; see the module docstring."""

    name = "hgru"
    outputs_distribution = True  # logits of a softmax over the catalogue (plus the repeat term, as HRNN-meta's)

    def __init__(self, model: ModelConfig | dict | None = None, train: TrainConfig | dict | None = None,
                 device: str | None = None, batch_size: int = 256):
        try:
            self.model_cfg = model if isinstance(model, ModelConfig) else ModelConfig(**(model or {}))
            self.train_cfg = train if isinstance(train, TrainConfig) else TrainConfig(**(train or {}))
        except TypeError as e:
            raise BaselineError(f"HGRUScorer: {e}") from e
        if device is not None:
            self.train_cfg = dataclasses.replace(self.train_cfg, device=device)
        self.device = resolve_device(self.train_cfg.device)
        self.batch_size = batch_size  # cases scored at once
        self.net: HGRUNet | None = None
        self.decoder: _Decoder | None = None
        self.history: list[dict] = []  # one dict per epoch (the harness's training curves, best_epoch)
        self._events: tuple[pa.Table, _Events] | None = None  # the last sequences table scored, flat

    # ------------------------------------------------------------------ training

    def fit(self, data: TrainData) -> None:
        from hrnn_core.train.batches import user_parallel_windows  # noqa: PLC0415 - the plain GRU's batches,
        from hrnn_core.train.trainer import _lr, resolve_output  # noqa: PLC0415 - LR schedule and output rule

        cfg = resolve_output(dataclasses.replace(self.train_cfg, seed=data.seed), data.n_items)
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        table, val_rows, holdout = self._training_table(data, cfg)
        ev = _Events.of(table)
        n = data.n_items
        lengths = np.diff(ev.offsets)
        end = ev.offsets[1:].copy()
        end[holdout] -= 1  # held-out last events are never trained on
        max_len = max(2, int(math.ceil(np.quantile(lengths, cfg.max_len_percentile)))) if len(lengths) else 2
        start = np.maximum(ev.offsets[:-1], end - max_len)
        keep = end > start
        segments = np.stack([start[keep], end[keep]], axis=1)
        n_events = int((segments[:, 1] - segments[:, 0]).sum())
        if n_events == 0:
            raise BaselineError("HGRU: no training events after the validation split")
        freq = np.bincount(ev.item[np.concatenate([np.arange(a, b) for a, b in segments])], minlength=n)[:n]
        torch.manual_seed(cfg.seed)
        net = HGRUNet(n, self.model_cfg.field_dim, self.model_cfg.input_size, self.model_cfg.hidden_size,
                      self.model_cfg.dropout).to(self.device)
        self.net, self.decoder = net, _Decoder(net, torch.as_tensor(freq > 0, device=self.device))
        self._events = (table, ev)
        share = repeat_share(table)
        with_history = max(len(ev.item) - int((lengths > 0).sum()), 0)
        # the plain GRU's rule (trainer.resolve_exclude_seen): where owners repeat items, the repeat term
        # (calibrated to the training repeat rate, batches.repeat_rate's smoothing); else seen items leave
        # validation's ranking, as they leave the protocol's
        self._exclude_seen = share <= 0.01 and cfg.output == "dense"
        repeat_rate = None if self._exclude_seen else (share * len(ev.item) + 1.0) / (with_history + 2.0)
        decay = [p for name, p in net.named_parameters() if p.dim() >= 2 and not name.startswith(("item_", "user0"))]
        rest = [p for name, p in net.named_parameters() if not (p.dim() >= 2 and not name.startswith(("item_", "user0")))]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                 {"params": rest, "weight_decay": 0.0}], lr=cfg.lr)
        sampler = AliasSampler(freq, cfg.sampler_alpha, seed=cfg.seed, device=self.device) if cfg.output == "sampled" else None
        steps_per_epoch = math.ceil(n_events / (cfg.batch_size * cfg.bptt)) + 1
        total = steps_per_epoch * cfg.epochs
        prev = torch.as_tensor(ev.prev_items(n))
        starts = torch.as_tensor(ev.session_start)
        target = torch.as_tensor(np.minimum(ev.item, n - 1))
        best, best_state, bad, step, t_start, log_incl = None, None, 0, 0, time.perf_counter(), {}
        self.history = []
        lower = cfg.early_stopping_metric == "val_loss"
        for epoch in range(cfg.epochs):
            rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(2, epoch)))
            torch.manual_seed(cfg.seed * 100_003 + epoch)
            t0, seen, loss_sum, state = time.perf_counter(), 0, 0.0, None
            net.train()
            for idx_np, reset_np in user_parallel_windows(segments[rng.permutation(len(segments))], cfg.batch_size, cfg.bptt):
                for g in opt.param_groups:
                    g["lr"] = _lr(cfg, step, total)
                idx = torch.from_numpy(idx_np)
                safe = idx.clamp(min=0)
                state = None if state is None else (state[0].detach(), state[1].detach())  # truncated BPTT
                out, state = net(prev[safe].to(self.device), starts[safe].to(self.device),
                                 torch.from_numpy(reset_np).to(self.device), state)
                valid = (idx >= 0).to(self.device)
                h, y = out[valid], target[idx[idx >= 0]].to(self.device)  # (N, H), (N,)
                if sampler is None:
                    res = dense_softmax_loss(h @ net.item_w.weight.T + net.item_b.weight.T, y)
                else:
                    cand = torch.cat([y, sampler.draw(cfg.n_negatives)[0]])  # positives first, shared negatives
                    if len(cand) not in log_incl:
                        log_incl[len(cand)] = sampler.log_inclusion(len(cand))
                    logits = h @ net.item_w(cand).T + net.item_b(cand).T
                    res = sampled_softmax_loss(logits, cand, log_incl[len(cand)][cand])
                if not torch.isfinite(res.loss):
                    raise BaselineError(f"HGRU loss is {float(res.loss)} at epoch {epoch + 1}; lower train.lr")
                opt.zero_grad(set_to_none=True)
                res.loss.backward()
                if cfg.grad_clip > 0:
                    nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
                opt.step()
                step += 1
                seen += len(y)
                loss_sum += float(res.loss.detach()) * len(y)
            seconds = time.perf_counter() - t0
            metrics = {"epoch": epoch + 1, "step": step, "train_loss": loss_sum / max(seen, 1), "events": seen,
                       "seconds": seconds, "events_per_s": seen / max(seconds, 1e-9)}
            metrics.update(self._validate(ev, val_rows, repeat_rate))
            metrics["elapsed_s"] = time.perf_counter() - t_start  # fit time so far, validation included
            self.history.append(metrics)
            value = metrics.get(cfg.early_stopping_metric)
            if value is None or best is None or (value < best if lower else value > best):
                best, bad, best_state = value, 0, copy.deepcopy(net.state_dict())
            else:
                bad += 1
            if bad >= cfg.patience and epoch + 1 >= cfg.min_epochs:
                break
        net.load_state_dict(best_state)
        net.eval()

    def _training_table(self, data: TrainData, cfg: TrainConfig) -> tuple[pa.Table, np.ndarray, np.ndarray]:
        """(the table trained on, the rows whose last event validates, the rows whose last event is held out).

        The protocol's own validation targets when it gives them (leave_one_out's
        ``early_stopping_snapshot_dir``: all held out, up to ``val_owners`` of them validate), else the
        last events of up to ``val_owners`` random owners with two events or more (the trainer's rule)."""
        rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(1,)))
        es = data.early_stopping_snapshot_dir
        if cfg.val_owners > 0 and es is not None and (es / HOLDOUT_FILE).exists():
            table = pq.read_table(es / "sequences.parquet")
            holdout = np.sort(pq.read_table(es / HOLDOUT_FILE)["row"].to_numpy())
            return table, np.sort(rng.permutation(holdout)[: cfg.val_owners]), holdout
        table = data.sequences
        lengths = table["n_events"].to_numpy()
        val = np.sort(rng.permutation(np.flatnonzero(lengths >= 2))[: cfg.val_owners])
        return table, val, val

    @torch.no_grad()
    def _validate(self, ev: _Events, rows: np.ndarray, repeat_rate: float | None) -> dict:
        """Loss and NDCG@10 of the held-out last events (the repeat term calibrated on them first)."""
        if len(rows) == 0:
            return {}
        self.net.eval()
        pos = np.diff(ev.offsets)[rows] - 1
        target_ev = ev.offsets[rows] + pos
        h = self._request_states(ev, rows, pos, ev.timestamp[target_ev], ev.event_id[target_ev])
        seen = [ev.item[ev.offsets[r]:ev.offsets[r] + p] for r, p in zip(rows, pos, strict=True)]
        seen = [s[s < self.net.n_items] for s in seen]
        if repeat_rate is not None:
            calibrate_repeat_prior(self.decoder, h, None, [s.tolist() for s in seen], repeat_rate)
        scores = self.decoder.scores(h, seen=seen if repeat_rate is not None else None).cpu()
        targets = torch.as_tensor(np.minimum(ev.item[target_ev], self.net.n_items - 1))
        acc = Accumulator(self.net.n_items, ks=(10,))
        acc.add(scores, targets, exclude=seen if self._exclude_seen else None)
        val_loss = float(dense_softmax_loss(scores.clamp(min=-1e4), targets).loss)
        return {"val_loss": val_loss, "ndcg@10": float(acc.summary()["ndcg@10"])}

    # ------------------------------------------------------------------ scoring

    def _request_states(self, ev: _Events, rows: np.ndarray, pos: np.ndarray, t: np.ndarray,
                        target_ids: np.ndarray | None) -> torch.Tensor:
        """(B, H) states at the request step of each case (row ``rows[i]``, events ``[0, pos[i])`` read).

        One causal pass per distinct row up to the longest history asked of it, keeping the state
        after each case's last read event, then one request step per case whose session flag is the
        target's own (the target is the row's next event) or the inactivity gap to the last read event."""
        net, dev, n = self.net, self.device, self.net.n_items
        rows, pos = np.asarray(rows, dtype=np.int64), np.asarray(pos, dtype=np.int64)
        hidden = net.user0.shape[0]
        s_keep = torch.zeros(len(rows), hidden, device=dev)
        c_keep = torch.zeros(len(rows), hidden, device=dev)
        prev_all = ev.prev_items(n)
        uniq = np.unique(rows[pos > 0])
        need = np.zeros(len(uniq), dtype=np.int64)
        np.maximum.at(need, np.searchsorted(uniq, rows[pos > 0]), pos[pos > 0])
        order = np.argsort(need, kind="stable")
        for lo in range(0, len(order), ROW_BLOCK):
            block = order[lo:lo + ROW_BLOCK]
            r_block, length = uniq[block], int(need[block].max())
            flat = np.minimum(ev.offsets[r_block][:, None] + np.arange(length)[None, :], max(len(ev.item) - 1, 0))
            owner0 = np.zeros((len(block), length), dtype=bool)
            owner0[:, 0] = True
            prev_t = torch.as_tensor(prev_all[flat], device=dev)
            sess_t = torch.as_tensor(ev.session_start[flat], device=dev)
            own_t = torch.as_tensor(owner0, device=dev)
            cases = [np.flatnonzero((rows == r) & (pos > 0)) for r in r_block]
            at = {}  # step k -> (case indices, their slot in the block)
            for i, cs in enumerate(cases):
                for c in cs:
                    at.setdefault(int(pos[c]) - 1, ([], []))
                    at[int(pos[c]) - 1][0].append(int(c))
                    at[int(pos[c]) - 1][1].append(i)
            state = None
            for k in range(length):
                state = net.step(prev_t[:, k], sess_t[:, k], own_t[:, k], state)
                if k in at:
                    cs, slots = (torch.as_tensor(a, device=dev) for a in at[k])
                    s_keep[cs], c_keep[cs] = state[0][slots], state[1][slots]
        # the request step of every case
        last = ev.offsets[rows] + pos - 1  # the last read event (meaningless where pos == 0)
        nxt = ev.offsets[rows] + pos
        in_row = nxt < ev.offsets[rows + 1]
        nxt_c = np.minimum(nxt, max(len(ev.item) - 1, 0))
        is_next = in_row & (ev.timestamp[nxt_c] == t)
        if target_ids is not None:
            is_next &= ev.event_id[nxt_c] == target_ids
        gap = t - ev.timestamp[np.maximum(last, 0)]
        new_session = np.where(is_next, ev.session_start[nxt_c], gap > SESSION_GAP_SECONDS) | (pos == 0)
        prev = np.where(pos > 0, ev.item[np.maximum(last, 0)], n)
        prev = np.where(prev >= n, n, prev)
        s, _ = net.step(torch.as_tensor(prev, device=dev), torch.as_tensor(new_session, device=dev),
                        torch.as_tensor(pos == 0, device=dev), (s_keep, c_keep))
        return s

    @torch.no_grad()
    def score(self, batch: ScoreBatch) -> torch.Tensor:
        if self.net is None:
            raise BaselineError("score() before fit(): fit the scorer first")
        if self._events is None or self._events[0] is not batch.sequences:
            self._events = (batch.sequences, _Events.of(batch.sequences))
        ev = self._events[1]
        out = []
        for lo in range(0, len(batch.rows), self.batch_size):
            sl = slice(lo, lo + self.batch_size)
            rows, pos = np.asarray(batch.rows[sl]), np.asarray(batch.pos[sl])
            h = self._request_states(ev, rows, pos, np.asarray(batch.target_timestamp[sl], dtype=np.float64),
                                     None if batch.target_event_id is None else np.asarray(batch.target_event_id[sl]))
            seen = None
            if self.decoder.repeat_prior:
                seen = [ev.item[ev.offsets[r]:ev.offsets[r] + p] for r, p in zip(rows, pos, strict=True)]
                seen = [x[x < self.net.n_items] for x in seen]
            out.append(self.decoder.scores(h, seen=seen).cpu())
        n = self.net.n_items
        return torch.cat(out) if out else torch.zeros(0, n)

