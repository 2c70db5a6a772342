"""Real-time inference: O(1) state updates and catalog scoring for one user at a time.

A user's ``UserState`` is the GRU state after the requests of all events seen so far, plus the
last event itself (its item, type, value and time are the *inputs* of the next request; see
``hrnn_core.model.network``). So:

* ``update(state, event)`` runs exactly one GRU step (the request at which ``event`` happened)
  and remembers ``event``: O(1), no history replay;
* ``score(state, context, at_time)`` runs one *tentative* step for a request at ``at_time``
  (the time-delta control input is ``at_time - last event time``, so recommendations change
  with the gap, Table 2) and scores every item with eq. (2), plus the trend term of eq. (5);
* a cold user (no events) starts from the learned initial state conditioned on their user
  features and the request context.

Scores come from ``hrnn_core.model.scoring.CatalogueScorer`` (eq. 2 and the eq. 5 trend term), the function
the evaluation harness, and so the promotion gate, scores with; ``hrnn_core.serving.recommend`` gives it the
service's recent popularity and adds filters and reasons.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from hrnn_core.model.checkpoint import Checkpoint, load_checkpoint, resolve_device
from hrnn_core.errors import HrnnError
from hrnn_core.model.features import time_delta_bucket
from hrnn_core.model.network import StepInputs
from hrnn_core.model.scoring import CatalogueScorer


class InferenceError(HrnnError):
    """A request the engine cannot serve (bad event, unknown option)."""


@dataclass(frozen=True)
class Event:
    """One observed interaction, as the engine receives it."""

    item_id: str
    timestamp: float  # epoch seconds
    event_type: str | None = None
    event_value: float | None = None
    context: Mapping[str, str] | None = None  # request context (e.g. {"device": "mobile"})


@dataclass
class UserState:
    """Everything the engine keeps per user; updated in place by ``InferenceEngine.update``."""

    user_cat: torch.Tensor  # (1, Wu) encoded user categorical features
    user_num: torch.Tensor  # (1, 2 Fu) encoded user numeric features
    context: dict[str, str]  # latest request context (default for the next request)
    hidden: torch.Tensor | None = None  # (L, 1, H) GRU state after the last event's request
    last_item: int = -1  # item_idx of the last event (-1: none yet, or an unknown item)
    last_type: int = 0
    last_value: tuple[float, float] = (0.0, 0.0)  # standardized value, present flag
    last_time: float | None = None
    # item_idx of every event, ordered by each item's last event, oldest first (the repeat term's recency)
    seen: dict[int, None] = field(default_factory=dict)
    n_events: int = 0

    def saw(self, item: int) -> None:
        """Record an event on ``item`` (-1, an unknown item: nothing) as the owner's latest."""
        if item >= 0:
            self.seen.pop(item, None)
            self.seen[item] = None

    def to_dict(self) -> dict:
        """Plain JSON-able values (e.g. to keep states in a cache between requests)."""
        return {"user_cat": self.user_cat.cpu().tolist(), "user_num": self.user_num.cpu().tolist(),
                "context": dict(self.context), "hidden": None if self.hidden is None else self.hidden.cpu().tolist(),
                "last_item": self.last_item, "last_type": self.last_type, "last_value": list(self.last_value),
                "last_time": self.last_time, "seen": list(self.seen), "n_events": self.n_events}

    @classmethod
    def from_dict(cls, d: Mapping, device: str | torch.device = "cpu") -> UserState:
        hidden = None if d["hidden"] is None else torch.tensor(d["hidden"], dtype=torch.float32, device=device)
        return cls(user_cat=torch.tensor(d["user_cat"], dtype=torch.int32, device=device),
                   user_num=torch.tensor(d["user_num"], dtype=torch.float32, device=device),
                   context=dict(d["context"]), hidden=hidden, last_item=int(d["last_item"]),
                   last_type=int(d["last_type"]), last_value=(float(d["last_value"][0]), float(d["last_value"][1])),
                   last_time=d["last_time"], seen=dict.fromkeys(d["seen"]), n_events=int(d["n_events"]))


class InferenceEngine:
    """User states of a trained HRNN-meta checkpoint: initial state, one-event update, batched
    replay of histories, and request scores through ``hrnn_core.model.scoring`` (the evaluation's function)."""

    def __init__(self, ck: Checkpoint, device: str | torch.device = "auto"):
        self.device = resolve_device(device)
        self.model = ck.model.to(self.device).eval()
        self.features = ck.features
        self.item_ids: list[str] = list(self.features.item_ids)
        self.item_index = {item: i for i, item in enumerate(self.item_ids)}
        self.item_freq = ck.item_freq.to(self.device)  # (n_items,) training events per item
        self.scorer = CatalogueScorer(self.model, self.item_freq)  # its trend: set by hrnn_core.serving.recommend

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "auto") -> InferenceEngine:
        return cls(load_checkpoint(Path(path), resolve_device(device)), device=device)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @torch.no_grad()
    def add_items(self, items: Sequence[Mapping]) -> int:
        """Add cold-start items that were not in the training catalog, scored from their metadata
        alone (eq. 2 with lambda = 1; no id embedding exists for them). Each item is
        {"item_id": ..., "categorical": {...}, "numeric": {...}}; known ids are skipped.
        Returns the number added."""
        if self.model.meta_out is None:
            raise InferenceError("this model has no item metadata decoder (use_item_meta = false or no item features)")
        new = [it for it in items if it["item_id"] not in self.item_index]
        if not new:
            return 0
        cat, num = self.features.items.encode_rows([it.get("categorical") for it in new], [it.get("numeric") for it in new])
        self.scorer.add_items(cat, num)
        for it in new:
            self.item_index[it["item_id"]] = len(self.item_ids)
            self.item_ids.append(it["item_id"])
        self.item_freq = torch.cat([self.item_freq, self.item_freq.new_zeros(len(new))])
        return len(new)

    # ------------------------------------------------------------------ state

    def init_state(self, user_features: Mapping | None = None, context: Mapping[str, str] | None = None) -> UserState:
        """A user with no events: ``user_features`` = {"categorical": {...}, "numeric": {...}}
        (or one flat dict; numbers go to numeric fields, strings to categorical ones). A returning
        user's own id is the categorical field ``USER_ID_FIELD`` (``SnapshotHistory.user_features``
        adds it); without it a model with ``use_user_id`` scores the user as one it never trained on."""
        cat, num = _split_user_features(user_features)
        ucat, unum = self.features.users.encode_rows([cat], [num])
        return UserState(user_cat=ucat.to(self.device), user_num=unum.to(self.device), context=dict(context or {}))

    def _inputs(self, states: Sequence[UserState], contexts: Sequence[Mapping[str, str]], times: Sequence[float]) -> StepInputs:
        """One request per state (B = len(states), T = 1): the state's last event is the previous one."""
        none = self.model.n_items
        prev = [[s.last_item if 0 <= s.last_item < none else none] for s in states]  # no embedding: none
        dts = np.array([np.nan if s.last_time is None else t - s.last_time for s, t in zip(states, times, strict=True)])
        bucket = time_delta_bucket(dts, self.features.time_delta_buckets, self.features.time_delta_log_base)  # NaN: 0
        return self._live_inputs(
            np.array(prev, dtype=np.int64), np.array([[s.last_type] for s in states], dtype=np.int64),
            np.array([[s.last_value] for s in states], dtype=np.float32), bucket[:, None].astype(np.int64),
            [dict(c) for c in contexts], torch.cat([s.user_cat for s in states]), torch.cat([s.user_num for s in states]),
            np.array([s.hidden is None for s in states]))

    def _live_inputs(self, prev: np.ndarray, ptype: np.ndarray, pval: np.ndarray, bucket: np.ndarray,
                     ctx_rows: list[dict], ucat: torch.Tensor, unum: torch.Tensor, reset: np.ndarray,
                     lengths: np.ndarray | None = None) -> StepInputs:
        """StepInputs of live events (the engine's one builder; training and evaluation gather theirs from an
        encoded table): (B, T) previous item/type/bucket, (B, T, 2) values, B*T context dicts row-major,
        (B, W) user fields repeated over T, (B,) reset flags, (B,) real steps per row (None: all)."""
        b, t_max = prev.shape
        ctx = self.features.context.encode_rows(ctx_rows, [{}] * len(ctx_rows))[0].long().reshape(b, t_max, -1)
        return StepInputs(
            prev_item=torch.from_numpy(prev), prev_type=torch.from_numpy(ptype), prev_value=torch.from_numpy(pval),
            time_bucket=torch.from_numpy(bucket), context=ctx,
            user_cat=ucat.cpu()[:, None].expand(b, t_max, -1), user_num=unum.cpu()[:, None].expand(b, t_max, -1),
            reset=torch.from_numpy(reset), lengths=None if lengths is None else torch.from_numpy(lengths),
        ).to(self.device)

    @torch.no_grad()
    def _step(self, states: Sequence[UserState], contexts: Sequence[Mapping[str, str]], times: Sequence[float]
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """One GRU step for each state: (B, H) output and (L, B, H) new hidden."""
        x = self._inputs(states, contexts, times)
        hs = [s.hidden if s.hidden is not None else torch.zeros_like(self._h_template()) for s in states]
        out, hidden = self.model(x, torch.cat(hs, dim=1))  # reset flags pick the initial state
        return out[:, 0], hidden

    def _h_template(self) -> torch.Tensor:
        return torch.zeros(self.model.cfg.num_layers, 1, self.model.cfg.hidden_size, device=self.device)

    def update(self, state: UserState, event: Event) -> UserState:
        """Advance ``state`` by one event: one GRU step, O(1). Updates in place and returns it."""
        if not np.isfinite(event.timestamp):
            raise InferenceError(f"event timestamp must be finite, got {event.timestamp}")
        ctx = dict(event.context) if event.context is not None else state.context
        _, hidden = self._step([state], [ctx], [float(event.timestamp)])
        item = self.item_index.get(event.item_id, -1)
        state.hidden = hidden
        state.last_item = item
        state.last_type = self.features.event_type_index(event.event_type)
        state.last_value = self.features.event_value(event.event_value)
        state.last_time = float(event.timestamp)
        state.context = ctx
        state.n_events += 1
        state.saw(item)
        return state

    @torch.no_grad()
    def replay(self, histories: Sequence[tuple[Sequence[Event], Mapping | None]]) -> list[UserState]:
        """The state after each (events, user_features) history in one batched forward pass.

        Histories are right-padded to a common length and packed by their lengths (the network's one
        window call: padding is never computed, each row's state is its last real step's): the result
        equals ``update`` event by event (tested). The batch export and the service's cold cache read
        histories through it.
        """
        fs, none, dev = self.features, self.model.n_items, self.device
        rows = [_split_user_features(f) for _, f in histories]
        ucat, unum = fs.users.encode_rows([c for c, _ in rows], [n for _, n in rows])  # (B, Wu), (B, 2 Fu)
        states = [UserState(user_cat=ucat[b:b + 1].to(dev), user_num=unum[b:b + 1].to(dev), context={})
                  for b in range(len(histories))]
        busy = [b for b, (events, _) in enumerate(histories) if events]
        if not busy:
            return states
        n_b, t_max = len(busy), max(len(histories[b][0]) for b in busy)
        prev = np.full((n_b, t_max), none, dtype=np.int64)
        ptype = np.zeros((n_b, t_max), dtype=np.int64)
        pval = np.zeros((n_b, t_max, 2), dtype=np.float32)
        bucket = np.zeros((n_b, t_max), dtype=np.int64)
        lengths = np.array([len(histories[b][0]) for b in busy], dtype=np.int64)
        ctx_rows: list[dict] = [{}] * (n_b * t_max)
        last: list[tuple[list[int], dict]] = []
        for r, b in enumerate(busy):
            events = histories[b][0]
            n = len(events)
            items = [self.item_index.get(e.item_id, -1) for e in events]
            prev[r, 1:n] = [i if 0 <= i < none else none for i in items[:-1]]
            ptype[r, 1:n] = [fs.event_type_index(e.event_type) for e in events[:-1]]
            if n > 1:
                pval[r, 1:n] = [fs.event_value(e.event_value) for e in events[:-1]]
                ts = np.array([float(e.timestamp) for e in events])
                bucket[r, 1:n] = time_delta_bucket(np.diff(ts), fs.time_delta_buckets, fs.time_delta_log_base)
            c: dict = {}
            for j, e in enumerate(events):
                c = dict(e.context) if e.context is not None else c
                ctx_rows[r * t_max + j] = c
            last.append((items, c))
        idx = torch.tensor(busy)
        x = self._live_inputs(prev, ptype, pval, bucket, ctx_rows, ucat[idx], unum[idx], np.ones(n_b, dtype=bool),
                              lengths)
        _, hidden = self.model(x)  # (L, n_b, H): each row's state after its last real event
        for r, b in enumerate(busy):
            events, (items, c) = histories[b][0], last[r]
            s, e = states[b], events[-1]
            s.hidden = hidden[:, r:r + 1].clone()
            s.last_item, s.last_time, s.context = items[-1], float(e.timestamp), c
            s.last_type, s.last_value = fs.event_type_index(e.event_type), fs.event_value(e.event_value)
            s.seen = {}
            for i in items:
                s.saw(i)
            s.n_events = len(events)
        return states

    # ------------------------------------------------------------------ scoring

    @torch.no_grad()
    def request_states(self, states: Sequence[UserState], contexts: Sequence[Mapping[str, str] | None] | None = None,
                       times: Sequence[float] | None = None) -> tuple[torch.Tensor, np.ndarray]:
        """(B, H) the tentative request step of each state (states unchanged) and the (B,) request times
        (default: now); a context of None is the state's latest one."""
        now = time.time()
        ctxs = [dict(c) if c is not None else s.context for s, c in zip(states, contexts or [None] * len(states), strict=True)]
        at = np.array([now if t is None else float(t) for t in (times or [None] * len(states))], dtype=np.float64)
        h, _ = self._step(states, ctxs, at.tolist())
        return h, at

    @torch.no_grad()
    def score_many(self, states: Sequence[UserState], contexts: Sequence[Mapping[str, str] | None] | None = None,
                   at_times: Sequence[float | None] | None = None) -> torch.Tensor:
        """(B, n_items) scores for a batch of requests (one per state): ``hrnn_core.model.scoring``'s function."""
        h, at = self.request_states(states, contexts, at_times)
        return self.scorer.scores(h, at, seen=[s.seen for s in states])

    def score(self, state: UserState, context: Mapping[str, str] | None = None, at_time: float | None = None
              ) -> torch.Tensor:
        """(n_items,) scores of a request at ``at_time`` (default: now) with ``context``
        (default: the latest known one). Does not change ``state``."""
        return self.score_many([state], [context], [at_time])[0]

    def top_k(self, state: UserState, k: int = 10, exclude_seen: bool = True, context: Mapping[str, str] | None = None,
              at_time: float | None = None) -> list[tuple[str, float]]:
        """The ``k`` best (item_id, score) pairs, best first, the user's past items removed with
        ``exclude_seen`` (filters, reasons and fallbacks: ``hrnn_core.serving.recommend``)."""
        if k < 1:
            raise InferenceError(f"k must be >= 1, got {k}")
        scores = self.score(state, context, at_time).clone()
        if exclude_seen and state.seen:
            scores[list(state.seen)] = float("-inf")
        val, idx = torch.topk(scores, min(k, self.n_items))
        return [(self.item_ids[i], float(v)) for i, v in zip(idx.tolist(), val.tolist(), strict=True)
                if v != float("-inf")]


def _split_user_features(features: Mapping | None) -> tuple[dict, dict]:
    if not features:
        return {}, {}
    if "categorical" in features or "numeric" in features:
        return dict(features.get("categorical") or {}), dict(features.get("numeric") or {})
    cat = {k: str(v) for k, v in features.items() if isinstance(v, str)}
    num = {k: float(v) for k, v in features.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return cat, num
