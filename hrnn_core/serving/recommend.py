"""The one scoring path of the online service (bento/service.py) and the batch export
(hrnn_core.serving.export): filters, reasons, the trend term and the popular fallback.

Given a user's ``UserState`` (``hrnn_core.model.inference``), a request is scored by
``hrnn_core.model.scoring.CatalogueScorer`` (the function the evaluation, and so the gate, scores with):
eq. (2) for every catalog item from the tentative step at ``at_time``, plus the eq. (5) trend term
``w * log q_j(t)`` with the model's weight, window and bucket, ``q(t)`` counted over the snapshot's
events and the live events logged since (``LiveTrend``). Then the filters: exclude the user's items
(``exclude_seen``), include/exclude lists, item metadata (categorical field value in a set, numeric
field in a range); then the top k, young items ranked with their exploration bonus (when on).

Each item gets a reason, in the spirit of Amazon Personalize's User-Personalization-v2:

* ``personalized``: ranked from the user's own events, the item by its learned embedding;
* ``cold_start_metadata``: the user has no events (learned initial state from the user's
  features and the request context) or the item has none (its metadata plus the cold prior,
  ``hrnn_core.model.scoring``);
* ``trending``: the trend term put the item in the top k (it is not there without it);
* ``exploration``: the exploration bonus of a young item with few events put it in the top k
  (``hrnn_core.serving.exploration``; ``serve.exploration_weight`` > 0, and the request did not
  switch it off); its ``score`` is the ranking score, bonus included, so scores stay in rank order;
* ``popular_fallback``: a placeholder after the filters left fewer than k scorable items: items
  the model cannot score (not in its catalog, e.g. new items seen only in live events), most
  popular in the trend window first, with no relevance score (``score`` is None).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from hrnn_core.data.contract import MULTI_VALUE_SEPARATOR
from hrnn_core.data.eventlog import LoggedEvent
from hrnn_core.model.features import USER_ID_FIELD
from hrnn_core.model.inference import Event, InferenceEngine, InferenceError, UserState
from hrnn_core.model.scoring import popularity
from hrnn_core.serving.exploration import Exploration, exploration_from_config

log = logging.getLogger(__name__)

PERSONALIZED, COLD_START, TRENDING, POPULAR = "personalized", "cold_start_metadata", "trending", "popular_fallback"
EXPLORATION = "exploration"
SIMILAR = "similar"
NEG_INF = float("-inf")


class RecommendError(InferenceError):
    """A request the scoring path cannot serve (unknown filter field, unknown item)."""


class UnknownItemError(RecommendError):
    """The item is not in the model's catalog."""


@dataclass(frozen=True)
class Filters:
    exclude_seen: bool = True  # drop items of the user's events
    include_items: tuple[str, ...] | None = None  # only these items (None: the whole catalog)
    exclude_items: tuple[str, ...] = ()  # never these items
    metadata: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # categorical field -> any of these values
    numeric: Mapping[str, tuple[float | None, float | None]] = field(default_factory=dict)  # field -> [min, max]


@dataclass(frozen=True)
class Recommendation:
    item_id: str
    score: float | None  # the ranking score (eq. 2 + eq. 5, + a young item's exploration bonus); None for placeholders
    reason: str


@dataclass
class Request:
    state: UserState
    k: int
    filters: Filters = field(default_factory=Filters)
    context: Mapping[str, str] | None = None  # None: the user's latest context
    at_time: float | None = None  # None: now
    seen_ids: frozenset[str] = frozenset()  # the owner's items outside the catalog (exclude_seen)
    explore: bool = True  # False: no exploration bonus for this request (serve.exploration_weight applies otherwise)


# --------------------------------------------------------------------------- user history


class SnapshotHistory:
    """The snapshot's event sequences and user features, readable per owner (no warehouse)."""

    def __init__(self, engine: InferenceEngine, snapshot_dir: Path | None):
        self.path = snapshot_dir
        self.snapshot_id = ""
        self.as_of = -math.inf
        self._row: dict[str, int] = {}
        self._users: dict[str, dict] = {}
        self._item_map = np.zeros(0, dtype=np.int64)
        self._id_of = []
        self.times, self.items = np.zeros(0), np.zeros(0, dtype=np.int64)  # all events, for the trend
        self._lengths = np.zeros(0, dtype=np.int64)  # events per row of seq
        if snapshot_dir is None:
            return
        manifest = json.loads((snapshot_dir / "manifest.json").read_text())
        self.snapshot_id, self.as_of = manifest["snapshot_id"], float(manifest["as_of"])
        self.seq = pq.read_table(snapshot_dir / "sequences.parquet", columns=[
            "user_idx", "owner_id", "timestamps", "item_idx", "event_types", "event_values", "contexts"])
        self._row = {o: i for i, o in enumerate(self.seq["owner_id"].to_pylist())}
        self._lengths = pc.list_value_length(self.seq["timestamps"]).to_numpy(zero_copy_only=False).astype(np.int64)
        items = pq.read_table(snapshot_dir / "items.parquet", columns=["item_idx", "item_id"]).to_pydict()
        size = max(items["item_idx"], default=-1) + 1
        self._item_map = np.full(size, -1, dtype=np.int64)  # snapshot item_idx -> engine index
        self._id_of: list[str] = [""] * size  # snapshot item_idx -> item_id
        for idx, item in zip(items["item_idx"], items["item_id"], strict=True):
            self._item_map[idx] = engine.item_index.get(item, -1)
            self._id_of[idx] = item
        users = pq.read_table(snapshot_dir / "users.parquet", columns=["user_id", "categorical", "numeric"])
        for u, c, n in zip(*(users[k].to_pylist() for k in ("user_id", "categorical", "numeric")), strict=True):
            if c or n:
                self._users[u] = {"categorical": dict(c or []), "numeric": dict(n or [])}
        self.times = pc.list_flatten(self.seq["timestamps"]).to_numpy(zero_copy_only=False).astype(np.float64)
        flat = pc.list_flatten(self.seq["item_idx"]).to_numpy(zero_copy_only=False).astype(np.int64)
        self.items = self._item_map[flat] if len(flat) else flat

    def owners(self) -> list[tuple[int, str]]:
        """(user_idx, owner_id) of every owner with events."""
        return list(zip(self.seq["user_idx"].to_pylist(), self.seq["owner_id"].to_pylist(), strict=True)) \
            if self._row else []

    def user_features(self, user_id: str | None) -> dict | None:
        """The user's stored features plus its id (``USER_ID_FIELD``, read by models with use_user_id)."""
        if not user_id:
            return None
        f = self._users.get(user_id) or {"categorical": {}, "numeric": {}}
        return {"categorical": {**f["categorical"], USER_ID_FIELD: user_id}, "numeric": f["numeric"]}

    def n_events(self, owner: str) -> int:
        """The owner's number of snapshot events (0 if it has none), without building them."""
        i = self._row.get(owner)
        return 0 if i is None else int(self._lengths[i])

    def events_of(self, owner: str) -> list[Event]:
        i = self._row.get(owner)
        if i is None:
            return []
        r = self.seq.slice(i, 1).to_pylist()[0]
        return [Event(self._id_of[j], t, et, v, dict(c or []))
                for j, t, et, v, c in zip(r["item_idx"], r["timestamps"], r["event_types"], r["event_values"],
                                          r["contexts"], strict=True)]


def logged_to_event(e: LoggedEvent, default_event_type: str) -> Event:
    """A log row as the engine's event; a missing type becomes the one ingest will give it."""
    return Event(e.item_id, e.timestamp, e.event_type or default_event_type, e.event_value, dict(e.context))


def history_with_log(history: SnapshotHistory, owner: str, logged: Iterable[LoggedEvent],
                     default_event_type: str) -> list[Event]:
    """The owner's snapshot events, then the logged events the snapshot does not hold yet (by
    the contract's key: item, timestamp, event type), in log order."""
    events = history.events_of(owner)
    known = {(e.item_id, float(e.timestamp), e.event_type) for e in events}
    for le in logged:
        e = logged_to_event(le, default_event_type)
        if (e.item_id, float(e.timestamp), e.event_type) not in known:
            events.append(e)
    return events


# --------------------------------------------------------------------------- catalog and trend


class Catalog:
    """Item metadata of the engine's catalog, for filters (masks over item indices)."""

    def __init__(self, engine: InferenceEngine, snapshot_dir: Path | None):
        self.n = n = engine.n_items
        self.categorical: dict[str, dict[str, list[int]]] = {}  # field -> value -> item indices
        self.numeric: dict[str, np.ndarray] = {}  # field -> (n,) values, NaN = missing
        self.cold = engine.scorer.cold[:n].cpu()  # (n,) no training events (scored by the cold-item policy)
        self._masks: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        if snapshot_dir is None:
            return
        t = pq.read_table(snapshot_dir / "items.parquet", columns=["item_id", "categorical", "numeric"]).to_pydict()
        for item, cat, num in zip(t["item_id"], t["categorical"], t["numeric"], strict=True):
            i = engine.item_index.get(item)
            if i is None:
                continue
            for key, value in cat or []:
                for v in (value or "").split(MULTI_VALUE_SEPARATOR):
                    if v:
                        self.categorical.setdefault(key, {}).setdefault(v, []).append(i)
            for key, value in num or []:
                if value is not None:
                    self.numeric.setdefault(key, np.full(n, np.nan))[i] = value

    def _field_mask(self, key: tuple) -> torch.Tensor:
        with self._lock:
            if key in self._masks:
                self._masks.move_to_end(key)
                return self._masks[key]
        kind, name, spec = key
        m = torch.zeros(self.n, dtype=torch.bool)
        if kind == "cat":
            values = self.categorical[name]
            idx = [i for v in spec for i in values.get(v, ())]
            if idx:
                m[idx] = True
        else:
            x, (lo, hi) = self.numeric[name], spec
            ok = ~np.isnan(x)
            if lo is not None:
                ok &= x >= lo
            if hi is not None:
                ok &= x <= hi
            m = torch.from_numpy(ok)
        with self._lock:
            self._masks[key] = m
            while len(self._masks) > 256:
                self._masks.popitem(last=False)
        return m

    def check(self, filters: Filters) -> None:
        """Raise RecommendError for metadata fields the catalog does not have."""
        for name in filters.metadata:
            if name not in self.categorical:
                raise RecommendError(f"unknown categorical item field {name!r} in the metadata filter; "
                                     f"known: {sorted(self.categorical)}")
        for name in filters.numeric:
            if name not in self.numeric:
                raise RecommendError(f"unknown numeric item field {name!r} in the numeric filter; "
                                     f"known: {sorted(self.numeric)}")

    def allowed(self, filters: Filters, index: Mapping[str, int], drop: Iterable[int] = ()) -> torch.Tensor | None:
        """(n,) bool mask of the items the filters let through (None: all of them)."""
        self.check(filters)
        mask = None
        for name, values in sorted(filters.metadata.items()):
            m = self._field_mask(("cat", name, tuple(sorted(values))))
            mask = m.clone() if mask is None else mask & m
        for name, bounds in sorted(filters.numeric.items()):
            m = self._field_mask(("num", name, tuple(bounds)))
            mask = m.clone() if mask is None else mask & m
        if filters.include_items is not None:
            inc = torch.zeros(self.n, dtype=torch.bool)
            inc[[index[i] for i in filters.include_items if i in index]] = True
            mask = inc if mask is None else mask & inc
        out = [index[i] for i in filters.exclude_items if i in index] + list(drop)
        if out:
            mask = torch.ones(self.n, dtype=torch.bool) if mask is None else mask
            mask[out] = False
        return mask


class LiveTrend:
    """The service's eq. (5) popularity: the snapshot's events plus the events it logs, counted by the
    model's ``q(t)`` (``hrnn_core.model.scoring.popularity``: the evaluation's window, bucket and smoothing).

    Live events count only from the snapshot's cut time on (earlier ones are in the snapshot or are
    late arrivals), so an event is never counted twice. Items the model cannot score are counted by id
    for the popular fallback.
    """

    def __init__(self, engine: InferenceEngine, history: SnapshotHistory, exploration: Exploration | None = None):
        self.engine, self.as_of = engine, history.as_of
        self.exploration = exploration  # its event counts and first events follow the live events too
        self.popularity = popularity(engine.model, history.times, history.items, engine.n_items)
        self._unknown: list[tuple[float, str]] = []  # (timestamp, item_id) of live events outside the catalog
        self._popular: dict[float, list[tuple[str, int]]] = {}  # window end -> popular_unknown (cleared on add)
        self._lock = threading.Lock()

    def add_live(self, events: Iterable[LoggedEvent]) -> None:
        new = [e for e in events if e.timestamp >= self.as_of]
        if not new:
            return
        idx = np.array([self.engine.item_index.get(e.item_id, -1) for e in new], dtype=np.int64)
        times = np.array([float(e.timestamp) for e in new])
        self.popularity.add(times, idx)
        if self.exploration is not None:
            self.exploration.add_live(times, idx)
        unknown = [(float(e.timestamp), e.item_id) for e, i in zip(new, idx, strict=True) if i < 0]
        if unknown:
            with self._lock:
                self._unknown.extend(unknown)
                self._popular.clear()

    def prune(self, now: float) -> None:
        """Forget live events too old for any window ending at ``now`` or later."""
        oldest = now - 2 * self.popularity.window
        self.popularity.forget_before(oldest)
        with self._lock:
            self._unknown = [ev for ev in self._unknown if ev[0] >= oldest]
            self._popular.clear()

    def popular_unknown(self, t: float) -> list[tuple[str, int]]:
        """[(item outside the catalog, count)] in the window of ``t``, most popular first."""
        end = float(self.popularity.window_end(t))
        with self._lock:
            if end not in self._popular:  # counted once per window until an event outside the catalog arrives
                counts: dict[str, int] = {}
                for ts, item in self._unknown:
                    if end - self.popularity.window <= ts < end:
                        counts[item] = counts.get(item, 0) + 1
                if len(self._popular) > 16:
                    self._popular.clear()
                self._popular[end] = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
            return self._popular[end]


# --------------------------------------------------------------------------- the recommender


class Recommender:
    """Ranks items for user states; the service and the batch export both call this."""

    def __init__(self, engine: InferenceEngine, catalog: Catalog, trend: LiveTrend):
        self.engine, self.catalog, self.trend = engine, catalog, trend
        self.exploration = trend.exploration  # None or weight 0: no bonus
        engine.scorer.trend = trend.popularity  # eq. (5)'s q(t): the snapshot's events and the live ones
        w, _ = engine.scorer.vectors()  # eq. (2) decoder vectors of the catalog, computed once
        self._unit = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)  # (n, H) for cosine similarity

    @property
    def trend_weight(self) -> float:
        return self.engine.scorer.trend_weight

    @torch.no_grad()
    def recommend_many(self, requests: Sequence[Request]) -> list[list[Recommendation]]:
        if not requests:
            return []
        for r in requests:
            if r.k < 1:
                raise RecommendError(f"k must be >= 1, got {r.k}")
            self.catalog.check(r.filters)
        h, times = self.engine.request_states([r.state for r in requests], [r.context for r in requests],
                                              [r.at_time for r in requests])
        scorer = self.engine.scorer
        seen = [r.state.seen for r in requests]  # the repeat term's items: each user's own
        scores = scorer.scores(h, times, trend_weight=0.0, seen=seen)  # (B, n): eq. (2) + repeat
        base = None
        if scorer.uses_trend():  # + eq. (5): the evaluation's function; base keeps the scores without it
            base, scores = scores, scorer.add_trend(scores.clone(), times)
        bonus = self.exploration.bonus(scores, times, [r.explore for r in requests]) \
            if self.exploration is not None and self.exploration.active else None  # (young items (C,), (B, C))
        return [self._rank(scores[i], None if base is None else base[i], r, float(times[i]),
                           None if bonus is None else (bonus[0], bonus[1][i]))
                for i, r in enumerate(requests)]

    def recommend(self, request: Request) -> list[Recommendation]:
        return self.recommend_many([request])[0]

    def _rank(self, scores: torch.Tensor, base: torch.Tensor | None, req: Request, t: float,
              bonus: tuple[torch.Tensor, torch.Tensor] | None = None) -> list[Recommendation]:
        """Top k of one request; ``scores`` and ``base`` (eq. 2 alone, for the trending reason) are
        fresh rows owned by the caller and are modified; ``bonus``: (young items, their exploration bonus)."""
        eng, st, f = self.engine, req.state, req.filters
        keep = self.catalog.allowed(dataclasses.replace(f, exclude_items=()), eng.item_index) \
            if (f.include_items is not None or f.metadata or f.numeric) else None  # (n,) bool or None
        drop = [eng.item_index[i] for i in f.exclude_items if i in eng.item_index]
        if f.exclude_seen:
            drop += st.seen

        def mask(x: torch.Tensor) -> torch.Tensor:  # in place: x is a fresh tensor
            if keep is not None:
                x.masked_fill_(~keep, NEG_INF)
            if drop:
                x[drop] = NEG_INF
            return x

        k = min(req.k, eng.n_items)
        ranked = mask(scores)
        explored: set[int] = set()
        if bonus is not None and bool((bonus[1] > 0).any()):  # young items: filtered ones stay at -inf
            ranked = ranked.clone()
            ranked[bonus[0]] += bonus[1]
        val, idx = torch.topk(ranked, k)
        picked = [(i, v) for i, v in zip(idx.tolist(), val.tolist(), strict=True) if v != NEG_INF]
        in_top = {i for i, _ in picked}
        if ranked is not scores and picked:  # items the bonus brought into the top k
            in_top = set(torch.topk(scores, k).indices.tolist())  # the top k without it
            explored = {i for i, _ in picked} - in_top
        trending: set[int] = set()
        if base is not None and picked:  # items the trend term brought into the top k
            trending = in_top - set(torch.topk(mask(base), k).indices.tolist())
        cold_user = st.n_events == 0
        out = []
        for i, v in picked:
            reason = EXPLORATION if i in explored else TRENDING if i in trending \
                else COLD_START if cold_user or bool(self.catalog.cold[i]) else PERSONALIZED
            out.append(Recommendation(eng.item_ids[i], v, reason))
        if len(out) < req.k:
            out += self._fallback(req, self.trend.popular_unknown(t), req.k - len(out))
        return out

    def _fallback(self, req: Request, popular: list[tuple[str, int]], n: int) -> list[Recommendation]:
        """Placeholders (no score) from popular items the model cannot score; they have no
        metadata, so a metadata filter lets none through."""
        f = req.filters
        if f.metadata or f.numeric:
            return []
        include = set(f.include_items) if f.include_items is not None else None
        skip = set(f.exclude_items) | (req.seen_ids if f.exclude_seen else set())
        out = []
        for item, _ in popular:
            if (include is None or item in include) and item not in skip:
                out.append(Recommendation(item, None, POPULAR))
                if len(out) == n:
                    break
        return out

    @torch.no_grad()
    def similar_items(self, item_id: str, k: int, filters: Filters | None = None) -> list[Recommendation]:
        """Items nearest ``item_id`` by cosine between eq. (2) decoder vectors."""
        i = self.engine.item_index.get(item_id)
        if i is None:
            raise UnknownItemError(f"item {item_id!r} is not in the model's catalog")
        f = filters or Filters(exclude_seen=False)
        allowed = self.catalog.allowed(f, self.engine.item_index, [i])
        sims = self._unit @ self._unit[i]  # (n,)
        if allowed is not None:
            sims = sims.masked_fill(~allowed, NEG_INF)
        val, idx = torch.topk(sims, min(k, self.engine.n_items))
        return [Recommendation(self.engine.item_ids[j], float(v), SIMILAR)
                for j, v in zip(idx.tolist(), val.tolist(), strict=True) if v != NEG_INF]


# --------------------------------------------------------------------------- loading a model


@dataclass
class ServingModel:
    """Everything scoring needs for one registered model, built fully before it is used."""

    tag: str
    engine: InferenceEngine
    history: SnapshotHistory
    catalog: Catalog
    trend: LiveTrend
    recommender: Recommender
    info: dict  # tag, snapshot, training interval, metrics, labels (GET /model)


def find_snapshot(snapshots_dir: Path, snapshot_id: str | None) -> Path | None:
    """The model's snapshot folder, else the newest complete snapshot (with a warning), else None."""
    if snapshot_id and (snapshots_dir / snapshot_id / "manifest.json").is_file():
        return snapshots_dir / snapshot_id
    found = sorted((p for p in snapshots_dir.glob("*/manifest.json")), key=lambda p: p.stat().st_mtime)
    if found:
        log.warning("snapshot %s of the model is missing; using the newest snapshot %s", snapshot_id,
                    found[-1].parent.name)
        return found[-1].parent
    log.warning("no snapshot under %s: users' histories are unknown (only logged events count)", snapshots_dir)
    return None


def scoring_path(serve_cfg, engine: InferenceEngine, snapshot: Path | None
                 ) -> tuple[SnapshotHistory, Catalog, LiveTrend, Recommender]:
    """The serving objects of ``engine`` over its snapshot (histories, filters' metadata, the trend and
    exploration counts, the recommender), with ``serve_cfg``'s exploration settings; the service, the
    export and research simulations (``research/experiments/exploration.py``) all rank through these."""
    history = SnapshotHistory(engine, snapshot)
    catalog = Catalog(engine, snapshot)
    exploration = exploration_from_config(serve_cfg, engine.item_index, engine.n_items, snapshot, history.times,
                                          history.items)
    trend = LiveTrend(engine, history, exploration)
    return history, catalog, trend, Recommender(engine, catalog, trend)


def load_serving_model(cfg, tag: str, model_store=None, device: str = "cpu") -> ServingModel:
    """Load ``tag`` from the BentoML model store (``model_store``: an explicit store, else the
    current one) with its snapshot, catalog metadata and trend index."""
    import bentoml  # noqa: PLC0415

    kwargs = {"_model_store": model_store} if model_store is not None else {}
    try:
        model = bentoml.models.get(tag, **kwargs)
    except bentoml.exceptions.NotFound as exc:
        raise RecommendError(f"model {tag!r} is not in the model store ({exc})") from None
    checkpoint = Path(model.path_of("model.pt"))
    if not checkpoint.is_file():
        raise RecommendError(f"model {tag} has no model.pt; only HRNN-meta models can be served")
    engine = InferenceEngine.from_checkpoint(checkpoint, device=device)
    meta, labels = dict(model.info.metadata), dict(model.info.labels)
    snapshot = find_snapshot(Path(cfg.paths.snapshots_dir), meta.get("snapshot_id") or engine.features.snapshot_id)
    history, catalog, trend, rec = scoring_path(cfg.serve, engine, snapshot)
    exploration = trend.exploration
    info = {
        "tag": str(model.tag), "snapshot_id": history.snapshot_id or None, "snapshot_as_of": history.as_of
        if history.snapshot_id else None,
        "training_interval": {"start": meta.get("data_interval_start"), "end": meta.get("data_interval_end")},
        "metrics": dict(meta.get("metrics") or {}), "labels": labels, "code_version": meta.get("code_version"),
        "created_at": model.info.creation_time.isoformat(), "n_items": engine.n_items,
        "trend_weight": rec.trend_weight, "trend_window_seconds": trend.popularity.window,
        "trend_bucket_seconds": trend.popularity.bucket,
        "exploration_weight": exploration.weight, "exploration_item_age_days": cfg.serve.exploration_item_age_days,
    }
    return ServingModel(str(model.tag), engine, history, catalog, trend, rec, info)


def copy_state(state: UserState) -> UserState:
    """A copy safe to score while the original is updated (tensors are replaced, never mutated)."""
    return dataclasses.replace(state, seen=dict(state.seen), context=dict(state.context))
