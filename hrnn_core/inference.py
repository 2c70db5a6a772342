"""Real-time inference: O(1) state updates and catalog scoring for one user at a time.

A user's ``UserState`` is the GRU state after the requests of all events seen so far, plus the
last event itself (its item, type, value and time are the *inputs* of the next request; see
``hrnn_core.model``). So:

* ``update(state, event)`` runs exactly one GRU step (the request at which ``event`` happened)
  and remembers ``event``: O(1), no history replay;
* ``score(state, context, at_time)`` runs one *tentative* step for a request at ``at_time``
  (the time-delta control input is ``at_time - last event time``, so recommendations change
  with the gap, Table 2) and scores every item with eq. (2), plus the trend term of eq. (5);
* a cold user (no events) starts from the learned initial state conditioned on their user
  features and the request context.

Trend correction (section 3.2, eq. 5): ``score += trend_weight * log q_j(t)`` where ``q(t)`` is
recent item popularity (add-k smoothed; ``set_trend``). ``trend_weight`` is 1 / temperature of
the paper's Figure 4: 0.0 means temperature = infinity, i.e. no trend term. The engine starts with
the checkpoint's ``ModelConfig.trend_weight`` and no recent popularity (no term until ``set_trend``);
``hrnn_core.recommend`` adds the term per user instead, from its ``TrendIndex``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from hrnn_core.checkpoint import Checkpoint, load_checkpoint, resolve_device
from hrnn_core.errors import HrnnError
from hrnn_core.model import StepInputs


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
    seen: set[int] = field(default_factory=set)  # item_idx of every event
    n_events: int = 0

    def to_dict(self) -> dict:
        """Plain JSON-able values (e.g. to keep states in a cache between requests)."""
        return {"user_cat": self.user_cat.cpu().tolist(), "user_num": self.user_num.cpu().tolist(),
                "context": dict(self.context), "hidden": None if self.hidden is None else self.hidden.cpu().tolist(),
                "last_item": self.last_item, "last_type": self.last_type, "last_value": list(self.last_value),
                "last_time": self.last_time, "seen": sorted(self.seen), "n_events": self.n_events}

    @classmethod
    def from_dict(cls, d: Mapping, device: str | torch.device = "cpu") -> UserState:
        hidden = None if d["hidden"] is None else torch.tensor(d["hidden"], dtype=torch.float32, device=device)
        return cls(user_cat=torch.tensor(d["user_cat"], dtype=torch.int32, device=device),
                   user_num=torch.tensor(d["user_num"], dtype=torch.float32, device=device),
                   context=dict(d["context"]), hidden=hidden, last_item=int(d["last_item"]),
                   last_type=int(d["last_type"]), last_value=(float(d["last_value"][0]), float(d["last_value"][1])),
                   last_time=d["last_time"], seen=set(d["seen"]), n_events=int(d["n_events"]))


class InferenceEngine:
    """Scores the catalog for users from a trained HRNN-meta checkpoint."""

    def __init__(self, ck: Checkpoint, device: str | torch.device = "auto", item_meta_mix: float | None = None,
                 trend_weight: float | None = None, cold_items_use_metadata: bool = True):
        self.device = resolve_device(device)
        self.model = ck.model.to(self.device).eval()
        self.features = fs = ck.features
        self.item_ids: list[str] = list(fs.item_ids)
        self.item_index = {item: i for i, item in enumerate(self.item_ids)}
        self.n_items = len(self.item_ids)
        self.item_freq = ck.item_freq.to(self.device)  # (n_items,) training events per item
        cfg = ck.model_config
        self.item_meta_mix = cfg.inference_item_meta_mix if item_meta_mix is None else item_meta_mix
        self.trend_weight = cfg.trend_weight if trend_weight is None else trend_weight
        self.trend_smoothing = cfg.trend_smoothing
        self.trend_window_seconds = cfg.trend_window_seconds  # q(t)'s window (hrnn_core.recommend.TrendIndex)
        self.cold_items_use_metadata = cold_items_use_metadata and self.model.meta_out is not None
        h = self.model.cfg.hidden_size
        self._new_w, self._new_b = torch.zeros(0, h, device=self.device), torch.zeros(0, device=self.device)
        self.set_trend(None)
        self._w, self._b = self._catalog_vectors(self.item_meta_mix)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "auto", **kwargs) -> InferenceEngine:
        return cls(load_checkpoint(Path(path), resolve_device(device)), device=device, **kwargs)

    # ------------------------------------------------------------------ catalog vectors

    @torch.no_grad()
    def _catalog_vectors(self, mix: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. (2) item vectors of the whole catalog (n_items, H), (n_items,), computed once.

        With ``cold_items_use_metadata`` items never seen in training use lambda = 1.
        """
        lam: float | torch.Tensor = mix
        if self.cold_items_use_metadata and mix < 1.0:
            cold = self.item_freq == 0
            if bool(cold.any()):
                lam = torch.where(cold, 1.0, mix).float()  # (n_items,)
        chunks = [self.model.item_vectors(items, lam if isinstance(lam, float) else lam[items])
                  for items in torch.arange(self.model.n_items, device=self.device).split(65_536)]
        # items added after training (add_items) have metadata only: lambda = 1 whatever ``mix``
        return (torch.cat([c[0] for c in chunks] + [self._new_w]), torch.cat([c[1] for c in chunks] + [self._new_b]))

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
        w, b = self.model.meta_vectors(cat.to(self.device), num.to(self.device))
        self._new_w, self._new_b = torch.cat([self._new_w, w]), torch.cat([self._new_b, b])
        for it in new:
            self.item_index[it["item_id"]] = len(self.item_ids)
            self.item_ids.append(it["item_id"])
        self.n_items = len(self.item_ids)
        self.item_freq = torch.cat([self.item_freq, self.item_freq.new_zeros(len(new))])
        counts = self._trend_counts
        if counts is not None and not isinstance(counts, Mapping):  # an array: new items have 0 counts
            counts = np.concatenate([np.asarray(counts, dtype=np.float64), np.zeros(len(new))])
        self.set_trend(counts)
        self._w, self._b = self._catalog_vectors(self.item_meta_mix)
        return len(new)

    def set_trend(self, counts: Mapping[str, float] | np.ndarray | torch.Tensor | None) -> None:
        """Recent item popularity for the eq. (5) trend term: counts per item id (a mapping, e.g.
        from ``transforms.popularity_window``) or an (n_items,) array; None: none known, no term
        (the training-window popularity is already in the model's scores; adding it again would
        count it twice)."""
        self._trend_counts = counts
        if counts is None:
            self.log_q = torch.zeros(self.n_items, device=self.device)
            return
        if isinstance(counts, Mapping):
            c = torch.zeros(self.n_items, dtype=torch.float64, device=self.device)
            for item, n in counts.items():
                if item in self.item_index:
                    c[self.item_index[item]] = float(n)
        else:
            c = torch.as_tensor(np.asarray(counts), dtype=torch.float64, device=self.device)
            if c.shape != (self.n_items,):
                raise InferenceError(f"trend counts must have one entry per item ({self.n_items}), got {tuple(c.shape)}")
        c = c + self.trend_smoothing  # add-k smoothing: no item gets log 0
        self.log_q = torch.log(c / c.sum()).float()  # (n_items,) log q_j(t) of eq. (5)

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
        """One request per state (B = len(states), T = 1)."""
        fs, none = self.features, self.model.n_items
        prev = [s.last_item if 0 <= s.last_item < none else none for s in states]  # no embedding: none
        dts = [None if s.last_time is None else t - s.last_time for s, t in zip(states, times, strict=True)]
        ctx = fs.context.encode_rows(list(contexts), [{}] * len(states))[0].long()
        dev = self.device
        return StepInputs(
            prev_item=torch.tensor(prev, device=dev)[:, None],
            prev_type=torch.tensor([s.last_type for s in states], device=dev)[:, None],
            prev_value=torch.tensor([s.last_value for s in states], device=dev)[:, None],
            time_bucket=torch.tensor([fs.bucket(d) for d in dts], device=dev)[:, None],
            context=ctx.to(dev)[:, None],
            user_cat=torch.cat([s.user_cat for s in states])[:, None],
            user_num=torch.cat([s.user_num for s in states])[:, None],
            reset=torch.tensor([s.hidden is None for s in states], device=dev)[:, None],
        )

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
        if item >= 0:
            state.seen.add(item)
        return state

    @torch.no_grad()
    def state_from_history(self, events: Sequence[Event], user_features: Mapping | None = None,
                           context: Mapping[str, str] | None = None) -> UserState:
        """The state after ``events`` computed in one batched forward pass (same result as
        ``update`` event by event; used for batch export and as its test reference)."""
        state = self.init_state(user_features, context)
        if not events:
            return state
        fs, n = self.features, len(events)
        items = [self.item_index.get(e.item_id, -1) for e in events]
        none = self.model.n_items
        prev = [none] + [i if 0 <= i < none else none for i in items[:-1]]
        ts = [float(e.timestamp) for e in events]
        ctxs, c = [], dict(context or {})
        for e in events:
            c = dict(e.context) if e.context is not None else c
            ctxs.append(c)
        dev = self.device
        x = StepInputs(
            prev_item=torch.tensor(prev, device=dev)[None],
            prev_type=torch.tensor([0] + [fs.event_type_index(e.event_type) for e in events[:-1]], device=dev)[None],
            prev_value=torch.tensor([(0.0, 0.0)] + [fs.event_value(e.event_value) for e in events[:-1]], device=dev)[None],
            time_bucket=torch.tensor([0] + [fs.bucket(b - a) for a, b in zip(ts[:-1], ts[1:], strict=True)], device=dev)[None],
            context=fs.context.encode_rows(ctxs, [{}] * n)[0].long().to(dev)[None],
            user_cat=state.user_cat[:, None].expand(1, n, -1), user_num=state.user_num[:, None].expand(1, n, -1),
            reset=torch.zeros(1, n, dtype=torch.bool, device=dev),
        )
        _, hidden = self.model(x)  # (L, 1, H)
        last = events[-1]
        state.hidden, state.last_item, state.last_time, state.context = hidden, items[-1], ts[-1], ctxs[-1]
        state.last_type = fs.event_type_index(last.event_type)
        state.last_value = fs.event_value(last.event_value)
        state.seen.update(i for i in items if i >= 0)
        state.n_events = n
        return state

    # ------------------------------------------------------------------ scoring

    @torch.no_grad()
    def score_many(self, states: Sequence[UserState], contexts: Sequence[Mapping[str, str] | None] | None = None,
                   at_times: Sequence[float | None] | None = None, item_meta_mix: float | None = None) -> torch.Tensor:
        """(B, n_items) scores for a batch of requests (one per state)."""
        now = time.time()
        ctxs = [dict(c) if c is not None else s.context for s, c in zip(states, contexts or [None] * len(states), strict=True)]
        times = [now if t is None else float(t) for t in (at_times or [None] * len(states))]
        h, _ = self._step(states, ctxs, times)  # (B, H): tentative step, states unchanged
        if item_meta_mix is None or item_meta_mix == self.item_meta_mix:
            w, b = self._w, self._b
        else:
            w, b = self._catalog_vectors(item_meta_mix)
        scores = h @ w.T + b  # eq. (2) for every item: (B, n_items)
        if self.trend_weight:
            scores = scores + self.trend_weight * self.log_q  # eq. (5): + (1 / temperature) log q_j(t)
        return scores

    def score(self, state: UserState, context: Mapping[str, str] | None = None, at_time: float | None = None,
              item_meta_mix: float | None = None) -> torch.Tensor:
        """(n_items,) scores of a request at ``at_time`` (default: now) with ``context``
        (default: the latest known one). Does not change ``state``."""
        return self.score_many([state], [context], [at_time], item_meta_mix)[0]

    def top_k(self, state: UserState, k: int = 10, exclude_seen: bool = True, include: Iterable[str] | None = None,
              exclude: Iterable[str] | None = None, context: Mapping[str, str] | None = None,
              at_time: float | None = None, item_meta_mix: float | None = None) -> list[tuple[str, float]]:
        """The ``k`` best (item_id, score) pairs, best first; ``include`` restricts the candidates,
        ``exclude`` and (with ``exclude_seen``) the user's past items are removed."""
        if k < 1:
            raise InferenceError(f"k must be >= 1, got {k}")
        scores = self.score(state, context, at_time, item_meta_mix).clone()
        if include is not None:
            keep = torch.zeros_like(scores, dtype=torch.bool)
            keep[[self.item_index[i] for i in include if i in self.item_index]] = True
            scores[~keep] = float("-inf")
        drop = [self.item_index[i] for i in exclude or () if i in self.item_index]
        if exclude_seen:
            drop += list(state.seen)
        if drop:
            scores[drop] = float("-inf")
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
