"""Seeded synthetic interaction logs whose ground truth is known (the paper's "toy" column, Table 1).

Real logs cannot isolate a claim ("sessions matter", "metadata helps", "popularity drifts"); here
each effect is planted on purpose, so a model can be checked against the generator itself.

Generative process (every draw comes from numpy Generators seeded by ``SynthConfig.seed``):

1. **Items.** G genres. Each item has 1-3 genres (multi-hot, genre sizes uneven), a log-normal
   price depending on its primary genre, and a creation time: a ``cold_items_fraction`` of items is
   created inside the log's span and becomes sampleable from the start of the first drift bucket
   at or after its creation (so never before it); the others exist from the start. Base
   popularity is Zipf, ``w0 = rank^-zipf_exponent`` over a random permutation of items.
2. **Popularity drift.** Within time bucket ``b`` (a day by default) item ``i`` has weight
   ``w0_i * exp(A * sin(2 pi t_b / P_i + phi_i))`` with a per-item period ``P_i`` of 1-3 log spans
   and a random phase: a low-rank function of time, so no (items x time) matrix exists.
3. **Users.** Age and segment. Taste over genres ~ Dirichlet(alpha_u) with
   ``log alpha_u = log(c / G) + segment_shift[segment] + age_slope * z(age)``: segments favour
   a few genres, age tilts others. Activity (event count) is log-normal across users.
4. **Sessions.** Each event after a user's first starts a new session with probability
   ``1 / mean_session_events``. Within a session gaps are short (exponential, mean 60 s, capped
   below 30 min); between sessions long (at least ``min_between_gap_s``, plus a uniform share of
   the span). Every session has one intent genre, redrawn from the user's taste at each new
   session and kept for the whole session.
5. **Events.** With prob ``1 - epsilon`` the item is drawn from the intent genre's items, with
   prob ``epsilon`` from all items, in both cases proportional to the drifting popularity of the
   event's bucket among items already available. Affinity = the user's taste mass on the item's
   genres; it raises the chance of cart/buy and the rating ``event_value`` (1-5). The ``device``
   context comes from a per-user distribution.

Sampling uses rejection from the static Zipf weights (one cumulative array over all
genre pools, ``np.searchsorted``), accepted with probability ``exp(A (sin - 1)) * available``,
which is exact for the drifting per-bucket distribution. Users are processed in chunks of about
``CHUNK_EVENTS`` events streamed to Parquet, so memory is bounded by the catalogue, not the log.

Outputs (contract files, ``hrnn_core.data.contract``): ``interactions.parquet`` (user_id, item_id,
timestamp, event_type, event_value, device; no session_id: sessions must be inferred from gaps),
``users.parquet`` (user_id, age, segment), ``items.parquet`` (item_id, genres, price,
creation_timestamp), ``truth.json`` (config, seed, planted parameters; ``build_world(cfg)``
recomputes every latent quantity) and, with ``write_truth``, ``truth_events.parquet`` in the same
row order: ``true_logp`` = log P(item | latent intent, bucket) under the generator (a floor for any
model's PPL), ``true_logp_user`` = the same with the intent marginalised over the user's taste (no
session knowledge), ``intent_genre`` and ``session_index`` (the user's true session number).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import typer

from hrnn_core.data.contract import MULTI_VALUE_SEPARATOR
from hrnn_core.errors import ConfigError

VERSION = 1  # bump when the process changes, so old truth.json files are recognisably stale
EVENT_TYPES = ("view", "cart", "buy")
DEVICES = ("mobile", "desktop", "tablet", "tv")
DEVICE_BASE = np.array([0.55, 0.30, 0.10, 0.05])
CHUNK_EVENTS = 50_000  # events per streamed chunk; part of the seed stream layout, do not change
ITEM_CHUNK = 200_000  # items per genre-assignment block (bounds the items x genres key matrix)
GENRES_PER_ITEM_P = (0.5, 0.35, 0.15)  # P(1, 2, 3 genres)


@dataclass(frozen=True)
class SynthConfig:
    n_users: int = 1_000  # users in users.parquet; each has >= min_events_per_user events
    n_items: int = 5_000  # catalogue size (>= n_genres: every genre keeps an always-present item)
    n_events: int = 50_000  # exact number of interaction rows
    n_genres: int = 20  # G
    seed: int = 0  # the only source of randomness
    days: float = 30.0  # span of the log; timestamps lie in [start_time, start_time + days)
    cold_items_fraction: float = 0.0  # share of items created during the span (cold start)
    write_truth: bool = False  # also write truth_events.parquet (per-event true log-probs)
    start_time: int = 1_700_000_000  # epoch seconds of the log's start
    n_segments: int = 4  # user segments, each favouring a few genres
    segment_boost: float = 1.5  # log-concentration added to a segment's favoured genres
    age_effect: float = 0.5  # std of the per-genre slope of log-concentration on standardised age
    taste_concentration: float = 5.0  # Dirichlet total concentration before shifts (low = peaked)
    zipf_exponent: float = 1.0  # base popularity w0 = rank^-exponent
    drift_amplitude: float = 1.5  # A: log-weight amplitude of the popularity sinusoid (0 = static)
    drift_bucket_seconds: int = 86_400  # popularity is constant within a bucket (a day)
    epsilon: float = 0.05  # probability an event ignores the intent (global popularity draw)
    mean_session_events: float = 6.0  # expected events per session
    within_gap_mean_s: float = 60.0  # mean gap inside a session
    within_gap_max_s: int = 1_200  # cap, well below a 30 min session-inference threshold
    min_between_gap_s: int = 7_200  # every gap between sessions is at least this
    min_events_per_user: int = 2

    def __post_init__(self) -> None:
        checks = [
            (self.n_users >= 1, f"n_users must be >= 1, got {self.n_users}"),
            (self.n_genres >= 1, f"n_genres must be >= 1, got {self.n_genres}"),
            (self.n_items >= self.n_genres, f"n_items must be >= n_genres ({self.n_genres}), got {self.n_items}"),
            (self.n_events >= self.n_users * self.min_events_per_user,
             f"n_events must be >= n_users * min_events_per_user ({self.n_users * self.min_events_per_user}), "
             f"got {self.n_events}"),
            (0.0 <= self.cold_items_fraction < 1.0, f"cold_items_fraction must be in [0, 1), got {self.cold_items_fraction}"),
            (0.0 <= self.epsilon <= 1.0, f"epsilon must be in [0, 1], got {self.epsilon}"),
            (self.span_seconds > 4 * self.min_between_gap_s,
             f"days ({self.days}) too short for min_between_gap_s ({self.min_between_gap_s} s)"),
            (self.mean_session_events >= 1.0, f"mean_session_events must be >= 1, got {self.mean_session_events}"),
            (self.seed >= 0, f"seed must be >= 0, got {self.seed}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"SynthConfig: {msg}")

    @property
    def span_seconds(self) -> int:
        return int(self.days * 86_400)

    @property
    def n_buckets(self) -> int:
        return math.ceil(self.span_seconds / self.drift_bucket_seconds)


def _rng(cfg: SynthConfig, *key: int) -> np.random.Generator:
    # Independent streams per purpose (and per chunk) so changing one size does not shift others.
    return np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=key))


@dataclass
class World:
    """All latent parameters of one generator run; ``build_world(cfg)`` rebuilds it exactly."""

    cfg: SynthConfig
    item_genres: np.ndarray  # (n_items, 3) int16 ascending genre ids, -1 padded
    primary: np.ndarray  # (n_items,) primary genre
    price: np.ndarray
    creation: np.ndarray  # int64 epoch seconds
    avail_from: np.ndarray  # first bucket in which the item may be drawn
    log_w0: np.ndarray  # log Zipf weight
    period_days: np.ndarray
    phase: np.ndarray
    pool_item: np.ndarray  # items of genre 0, then genre 1, ... (multi-genre items repeat)
    pool_cum: np.ndarray  # cumulative w0 over pool_item
    gstart: np.ndarray  # (G + 1,) offsets of each genre in the pool
    item_cum: np.ndarray  # cumulative w0 over all items (the epsilon draw)
    age: np.ndarray
    segment: np.ndarray
    segment_favs: np.ndarray  # (S, k) favoured genres per segment
    age_slope: np.ndarray  # (G,)
    taste: np.ndarray  # (n_users, G) rows sum to 1
    device_cum: np.ndarray  # (n_users, n_devices) cumulative device probabilities
    counts: np.ndarray  # events per user (sums to n_events)

    def log_multiplier(self, items: np.ndarray, buckets: np.ndarray) -> np.ndarray:
        """Drift log-multiplier ``A sin(2 pi t_b / P_i + phi_i)`` at bucket midpoints."""
        t_days = (buckets + 0.5) * (self.cfg.drift_bucket_seconds / 86_400)
        theta = 2 * np.pi * t_days / self.period_days[items] + self.phase[items]
        return self.cfg.drift_amplitude * np.sin(theta)

    def normalizers(self) -> tuple[np.ndarray, np.ndarray]:
        """Z[b, g] (intent-genre pools) and Zall[b] (all items): sums of available drifted weights."""
        g, nb = self.cfg.n_genres, self.cfg.n_buckets
        pool_genre = np.repeat(np.arange(g), np.diff(self.gstart))
        z, zall = np.empty((nb, g)), np.empty(nb)
        items = np.arange(self.cfg.n_items)
        for b in range(nb):  # one bucket at a time: O(items) memory
            w = np.exp(self.log_w0 + self.log_multiplier(items, np.full_like(items, b)))
            w[self.avail_from > b] = 0.0
            zall[b] = w.sum()
            z[b] = np.bincount(pool_genre, weights=w[self.pool_item], minlength=g)
        return z, zall


def _items(cfg: SynthConfig) -> dict[str, np.ndarray]:
    rng = _rng(cfg, 0)
    n, g = cfg.n_items, cfg.n_genres
    genre_w = rng.dirichlet(np.full(g, 2.0))  # uneven genre sizes, like real catalogues
    k = np.minimum(rng.choice(3, size=n, p=GENRES_PER_ITEM_P) + 1, g)
    ig = np.full((n, 3), -1, dtype=np.int16)
    primary = np.empty(n, dtype=np.int16)
    for a in range(0, n, ITEM_CHUNK):  # Gumbel top-3 = weighted draw without replacement
        keys = np.log(genre_w) + rng.gumbel(size=(min(ITEM_CHUNK, n - a), g))
        top = np.argsort(-keys, axis=1)[:, :3] if g <= 3 else np.argpartition(-keys, 2, axis=1)[:, :3]
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(keys, top, 1), 1), 1)
        primary[a:a + len(top)] = top[:, 0]
        slot = np.arange(top.shape[1])[None, :] < k[a:a + len(top), None]
        ig[a:a + len(top), : top.shape[1]] = np.where(slot, top, -1)
    ig[:g] = -1  # items 0..G-1: one per genre, single-genre and never cold, so no pool is empty
    ig[:g, 0] = primary[:g] = np.arange(g)
    ig = np.sort(np.where(ig < 0, g, ig), axis=1)
    ig[ig == g] = -1
    price_offset = rng.normal(0.0, 0.6, g)
    price = np.round(np.exp(3.0 + price_offset[primary] + rng.normal(0.0, 0.5, n)), 2)
    creation = cfg.start_time - rng.integers(0, 2 * 365 * 86_400, n)
    avail_from = np.zeros(n, dtype=np.int32)
    n_cold = min(round(cfg.cold_items_fraction * n), n - g)
    cold = g + rng.choice(n - g, size=n_cold, replace=False)
    creation[cold] = cfg.start_time + rng.integers(0, cfg.span_seconds, n_cold)
    avail_from[cold] = -(-(creation[cold] - cfg.start_time) // cfg.drift_bucket_seconds)
    rank = rng.permutation(n) + 1
    return {
        "item_genres": ig, "primary": primary, "price": price, "creation": creation,
        "avail_from": avail_from, "log_w0": -cfg.zipf_exponent * np.log(rank.astype(np.float64)),
        "period_days": cfg.days * rng.uniform(1.0, 3.0, n), "phase": rng.uniform(0, 2 * np.pi, n),
    }


def _users(cfg: SynthConfig) -> dict[str, np.ndarray]:
    rng = _rng(cfg, 1)
    u, g, s = cfg.n_users, cfg.n_genres, cfg.n_segments
    favs = np.stack([rng.choice(g, size=min(3, g), replace=False) for _ in range(s)])
    shift = np.zeros((s, g))
    np.put_along_axis(shift, favs, cfg.segment_boost, axis=1)
    age_slope = rng.normal(0.0, cfg.age_effect, g)
    age = rng.integers(18, 76, u)
    segment = rng.integers(0, s, u)
    z_age = (age - 46.0) / 16.0
    log_alpha = math.log(cfg.taste_concentration / g) + shift[segment] + age_slope * z_age[:, None]
    taste = rng.gamma(np.exp(log_alpha)) + 1e-12  # Dirichlet via normalised gammas; no 0/0
    taste /= taste.sum(axis=1, keepdims=True)
    device_p = rng.gamma(2.0 * DEVICE_BASE, size=(u, len(DEVICES))) + 1e-12
    device_cum = np.cumsum(device_p / device_p.sum(axis=1, keepdims=True), axis=1)
    # Heavy-tailed activity, with an exact total: a floor per user plus a multinomial remainder.
    act = rng.lognormal(0.0, 1.0, u)
    rest = cfg.n_events - u * cfg.min_events_per_user
    counts = cfg.min_events_per_user + rng.multinomial(rest, act / act.sum())
    return {"age": age, "segment": segment, "segment_favs": favs, "age_slope": age_slope,
            "taste": taste, "device_cum": device_cum, "counts": counts.astype(np.int64)}


def build_world(cfg: SynthConfig) -> World:
    """Recreate every latent parameter of the run ``cfg`` (deterministic in ``cfg.seed``)."""
    it, us = _items(cfg), _users(cfg)
    ig = it["item_genres"]
    rows, slots = np.nonzero(ig >= 0)
    order = np.lexsort((rows, ig[rows, slots]))  # by genre, then item
    pool_item = rows[order].astype(np.int64)
    pool_genre = ig[rows, slots][order]
    w0 = np.exp(it["log_w0"])
    gstart = np.searchsorted(pool_genre, np.arange(cfg.n_genres + 1))
    return World(cfg=cfg, pool_item=pool_item, pool_cum=np.cumsum(w0[pool_item]), gstart=gstart,
                 item_cum=np.cumsum(w0), **it, **us)


def _sample_items(
    w: World, rng: np.random.Generator, genre: np.ndarray, bucket: np.ndarray, glob: np.ndarray
) -> np.ndarray:
    """Exact draws from the drifting, availability-masked distribution by rejection."""
    envelope = w.cfg.drift_amplitude  # max of the log-multiplier: the rejection envelope
    out = np.empty(len(genre), dtype=np.int64)
    todo = np.arange(len(genre))
    lo_g = np.concatenate([[0.0], w.pool_cum])[w.gstart[:-1]]
    hi_g = w.pool_cum[w.gstart[1:] - 1]
    for _ in range(100_000):
        if todo.size == 0:
            return out
        g, gl = genre[todo], glob[todo]
        lo = np.where(gl, 0.0, lo_g[g])
        hi = np.where(gl, w.item_cum[-1], hi_g[g])
        x = lo + rng.random(todo.size) * (hi - lo)
        cand = np.empty(todo.size, dtype=np.int64)
        pi = np.searchsorted(w.pool_cum, x[~gl], side="right")
        pi = np.clip(pi, w.gstart[g[~gl]], w.gstart[g[~gl] + 1] - 1)  # float edge guard
        cand[~gl] = w.pool_item[pi]
        cand[gl] = np.minimum(np.searchsorted(w.item_cum, x[gl], side="right"), w.cfg.n_items - 1)
        b = bucket[todo]
        p_acc = np.exp(w.log_multiplier(cand, b) - envelope)
        ok = (w.avail_from[cand] <= b) & (rng.random(todo.size) < p_acc)
        out[todo[ok]] = cand[ok]
        todo = todo[~ok]
    raise RuntimeError("synth: rejection sampling did not converge")  # unreachable in practice


def _ids(prefix: str, idx: np.ndarray) -> pa.Array:
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(idx), pa.string()), "")


class _Sessions(NamedTuple):
    """A chunk's session layout: the user and session of each event, and its within-session gap."""

    local: np.ndarray  # (n,) event -> user index within the chunk
    first_ev: np.ndarray  # (nu,) each user's first event
    sess: np.ndarray  # (n,) event -> session index within the chunk
    user: np.ndarray  # (n_s,) session -> user index within the chunk
    first: np.ndarray  # (n_s,) session -> its first event
    gap: np.ndarray  # (n,) seconds since the previous event of the session (0 at a session start)


def _sessions(cfg: SynthConfig, rng: np.random.Generator, n_u: np.ndarray) -> _Sessions:
    """Cut each user's ``n_u`` events into sessions and draw the within-session gaps."""
    nu, n = len(n_u), int(n_u.sum())
    local = np.repeat(np.arange(nu), n_u)
    first_ev = np.cumsum(n_u) - n_u
    is_first = np.zeros(n, dtype=bool)
    is_first[first_ev] = True
    # Session starts: Bernoulli per event, capped so that heavy users' sessions fit the span.
    max_sessions = cfg.span_seconds // (4 * cfg.min_between_gap_s)
    p_new = np.minimum(1.0 / cfg.mean_session_events, (max_sessions - 1) / np.maximum(n_u - 1, 1))
    new = is_first | (rng.random(n) < p_new[local])
    sess = np.cumsum(new) - 1
    gap = np.minimum(np.maximum(np.rint(rng.exponential(cfg.within_gap_mean_s, n)), 1),
                     cfg.within_gap_max_s)
    gap[new] = 0
    return _Sessions(local, first_ev, sess, local[new], np.flatnonzero(new), gap)


def _time_offsets(cfg: SynthConfig, rng: np.random.Generator, s: _Sessions) -> np.ndarray:
    """(n,) seconds from the log's start to each event: every user's sessions spread over the span."""
    nu, n_s = len(s.first_ev), len(s.user)
    k = np.bincount(s.user, minlength=nu)
    mg = np.full(nu, float(cfg.min_between_gap_s))
    budget = cfg.span_seconds - 1
    w_u = np.bincount(s.local, weights=s.gap, minlength=nu)
    # Rare fallback: a user too active for the span gets all gaps shrunk proportionally.
    scale = np.minimum(1.0, 0.9 * budget / np.maximum(w_u + (k - 1) * mg, 1.0))
    gap = np.floor(s.gap * scale[s.local]).astype(np.int64)
    mg = np.floor(mg * scale).astype(np.int64)
    dur = np.bincount(s.sess, weights=gap, minlength=n_s).astype(np.int64)
    slack = budget - np.bincount(s.user, weights=dur, minlength=nu) - (k - 1) * mg
    # Between-session gaps: min gap + uniform spacing of the remaining slack (k gaps + a tail).
    e = rng.exponential(1.0, n_s)
    denom = np.bincount(s.user, weights=e, minlength=nu) + rng.exponential(1.0, nu)
    lead = np.floor(slack[s.user] * e / denom[s.user]).astype(np.int64)
    user_first_s = np.cumsum(k) - k
    not_first_s = np.ones(n_s, dtype=bool)
    not_first_s[user_first_s] = False
    lead += np.where(not_first_s, mg[s.user], 0)
    step = lead + dur
    excl = np.cumsum(step) - step
    s_start = excl - excl[user_first_s][s.user] + lead
    gc = np.cumsum(gap)
    return s_start[s.sess] + gc - gc[s.first][s.sess]


def _events_table(w: World, rng: np.random.Generator, users: np.ndarray, item: np.ndarray,
                  ts: np.ndarray, aff: np.ndarray) -> pa.Table:
    """The interaction rows; affinity ``aff`` raises the chance of cart/buy and the rating."""
    n = len(item)
    r = rng.random(n)
    p_buy, p_cart = 0.02 + 0.10 * aff, 0.08 + 0.12 * aff
    etype = np.where(r < p_buy, 2, np.where(r < p_buy + p_cart, 1, 0))
    value = np.clip(np.rint(1.5 + 4.0 * aff + rng.normal(0.0, 0.8, n)), 1.0, 5.0)
    dev = (w.device_cum[users] < rng.random(n)[:, None]).sum(axis=1)
    dev = np.minimum(dev, len(DEVICES) - 1)
    return pa.table({
        "user_id": _ids("u", users), "item_id": _ids("i", item),
        "timestamp": pa.array(ts, pa.int64()),
        "event_type": pa.array(EVENT_TYPES).take(pa.array(etype)),
        "event_value": pa.array(value, pa.float64()),
        "device": pa.array(DEVICES).take(pa.array(dev)),
    })


def _truth_table(w: World, norm: tuple[np.ndarray, np.ndarray], s: _Sessions, item: np.ndarray,
                 bucket: np.ndarray, intent: np.ndarray, ig: np.ndarray, tg: np.ndarray) -> pa.Table:
    """truth_events rows: the generator's log P(item) given the intent, and marginalised over taste."""
    cfg, (z, zall) = w.cfg, norm
    wi = np.exp(w.log_w0[item] + w.log_multiplier(item, bucket))
    member = (ig == intent[:, None]).any(axis=1)
    p_glob = cfg.epsilon * wi / zall[bucket]
    p_int = (1 - cfg.epsilon) * member * wi / z[bucket, intent] + p_glob
    zg = z[bucket[:, None], np.maximum(ig, 0)]
    p_user = (1 - cfg.epsilon) * (tg * wi[:, None] / zg).sum(axis=1) + p_glob
    return pa.table({
        "true_logp": pa.array(np.log(p_int), pa.float64()),
        "true_logp_user": pa.array(np.log(p_user), pa.float64()),
        "intent_genre": pa.array(intent.astype(np.int16)),
        "session_index": pa.array((s.sess - s.sess[s.first_ev][s.local]).astype(np.int32)),
    })


def _chunk(
    w: World, u0: int, u1: int, chunk: int, norm: tuple[np.ndarray, np.ndarray] | None
) -> tuple[pa.Table, pa.Table | None, int]:
    """Events of users [u0, u1): sessions, times, intents, items, feedback, context.

    The draws from the chunk's stream keep this order (it is the seed layout): session starts,
    within gaps, between gaps, intents, epsilon flags, items, feedback, device.
    """
    cfg, rng = w.cfg, _rng(w.cfg, 3, chunk)
    s = _sessions(cfg, rng, w.counts[u0:u1])
    n, n_s = len(s.sess), len(s.user)
    t_off = _time_offsets(cfg, rng, s)
    bucket = np.minimum(t_off // cfg.drift_bucket_seconds, cfg.n_buckets - 1)
    users = u0 + s.local
    s_cum = np.cumsum(w.taste[u0 + s.user], axis=1)  # one intent per session, from the taste
    intent_s = (s_cum < rng.random(n_s)[:, None] * s_cum[:, -1:]).sum(axis=1)
    intent = np.minimum(intent_s, cfg.n_genres - 1)[s.sess]
    glob = rng.random(n) < cfg.epsilon
    item = _sample_items(w, rng, intent, bucket, glob)
    ig = w.item_genres[item].astype(np.int64)
    tg = np.where(ig >= 0, w.taste[users[:, None], np.maximum(ig, 0)], 0.0)
    aff = tg.sum(axis=1)  # taste mass on the item's genres: what metadata reveals
    events = _events_table(w, rng, users, item, cfg.start_time + t_off, aff)
    if norm is None:
        return events, None, n_s
    return events, _truth_table(w, norm, s, item, bucket, intent, ig, tg), n_s


def _write(table: pa.Table, path: Path) -> Path:
    pq.write_table(table, path, compression="zstd")
    return path


def generate(out_dir: Path, cfg: SynthConfig | None = None, /, **overrides: Any) -> dict[str, Path]:
    """Write a synthetic dataset into ``out_dir``; returns the paths by table name.

    Call as ``generate(out, n_users=..., seed=...)`` or ``generate(out, cfg)`` (keyword overrides
    then replace fields of ``cfg``). Same config -> byte-identical files.
    """
    cfg = dataclasses.replace(cfg, **overrides) if cfg else SynthConfig(**overrides)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    w = build_world(cfg)
    paths = {
        "interactions": out_dir / "interactions.parquet",
        "users": out_dir / "users.parquet", "items": out_dir / "items.parquet",
        "truth": out_dir / "truth.json",
    }
    g = cfg.n_genres
    # Genre strings: encode each sorted genre set as one integer, format each distinct set once.
    code = ((w.item_genres.astype(np.int64) + 1) * (g + 1) ** np.arange(3)).sum(axis=1)
    _, first, inv = np.unique(code, return_index=True, return_inverse=True)
    names = [MULTI_VALUE_SEPARATOR.join(f"g{x}" for x in row if x >= 0)
             for row in w.item_genres[first].tolist()]
    _write(pa.table({
        "item_id": _ids("i", np.arange(cfg.n_items)),
        "genres": pa.array(names, pa.string()).take(pa.array(inv.ravel())),
        "price": pa.array(w.price), "creation_timestamp": pa.array(w.creation, pa.int64()),
    }), paths["items"])
    _write(pa.table({
        "user_id": _ids("u", np.arange(cfg.n_users)), "age": pa.array(w.age, pa.int64()),
        "segment": pa.array([f"s{s}" for s in range(cfg.n_segments)]).take(pa.array(w.segment)),
    }), paths["users"])
    norm = w.normalizers() if cfg.write_truth else None
    # Chunks: consecutive users whose first event falls in the same CHUNK_EVENTS window.
    ev_start = np.cumsum(w.counts) - w.counts
    bounds = np.append(np.unique(ev_start // CHUNK_EVENTS, return_index=True)[1], cfg.n_users)
    ev_writer = tr_writer = None
    sum_lp = sum_lpu = 0.0
    n_sessions = 0
    try:
        for c, (u0, u1) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            events, truth, n_s = _chunk(w, int(u0), int(u1), c, norm)
            n_sessions += n_s
            if ev_writer is None:
                ev_writer = pq.ParquetWriter(paths["interactions"], events.schema, compression="zstd")
            ev_writer.write_table(events)
            if truth is not None:
                if tr_writer is None:
                    paths["truth_events"] = out_dir / "truth_events.parquet"
                    tr_writer = pq.ParquetWriter(paths["truth_events"], truth.schema,
                                                 compression="zstd")
                tr_writer.write_table(truth)
                sum_lp += float(pc.sum(truth["true_logp"]).as_py())
                sum_lpu += float(pc.sum(truth["true_logp_user"]).as_py())
    finally:
        for wr in (ev_writer, tr_writer):
            if wr is not None:
                wr.close()
    info: dict[str, Any] = {
        "generator": "research.synth", "version": VERSION,
        "config": dataclasses.asdict(cfg),
        "genres": [f"g{x}" for x in range(g)], "event_types": list(EVENT_TYPES),
        "devices": list(DEVICES), "device_base": DEVICE_BASE.tolist(),
        "segment_favoured_genres": {f"s{s}": [f"g{x}" for x in fav]
                                    for s, fav in enumerate(w.segment_favs.tolist())},
        "age_slope": dict(zip([f"g{x}" for x in range(g)], w.age_slope.round(6).tolist(),
                              strict=True)),
        "recompute": "research.synth.build_world(SynthConfig(**config))",
        "files": {k: p.name for k, p in paths.items()},
    }
    info["n_sessions"] = n_sessions
    if cfg.write_truth:
        info["oracle_ppl_intent"] = math.exp(-sum_lp / cfg.n_events)
        info["oracle_ppl_user"] = math.exp(-sum_lpu / cfg.n_events)
    paths["truth"].write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
    return paths


def synthetic_snapshot(data_dir: Path, **synth_options) -> Path:
    """Generate a synthetic log (``generate``), ingest it into a warehouse under ``data_dir`` and export a
    snapshot; returns the snapshot folder (reused when it exists). Tests, benchmarks and experiments use it."""
    from hrnn_core.config import load_config  # noqa: PLC0415 - heavy imports only when used
    from hrnn_core.data.ingest import ingest_path  # noqa: PLC0415
    from hrnn_core.data.transforms import export_snapshot  # noqa: PLC0415
    from hrnn_core.data.warehouse import connect  # noqa: PLC0415

    data_dir = Path(data_dir)
    done = data_dir / "snapshot_path.txt"
    if done.exists():
        return Path(done.read_text().strip())
    cfg = load_config(overrides={"paths": {"data_dir": str(data_dir)}}, environ={})
    generate(data_dir / "raw", **synth_options)
    with connect(cfg) as con:
        ingest_path(cfg, data_dir / "raw", None, con)
        snap = export_snapshot(con, cfg)
    done.write_text(str(snap.path))
    return snap.path


def synth_command(
    out: Annotated[Path, typer.Option(help="Output folder for the contract files.")],
    users: Annotated[int, typer.Option(help="Number of users.")] = 1000,
    items: Annotated[int, typer.Option(help="Number of items.")] = 2000,
    events: Annotated[int, typer.Option(help="Number of events (exact).")] = 50_000,
    genres: Annotated[int, typer.Option(help="Number of genres.")] = 20,
    days: Annotated[int, typer.Option(help="Days the log spans.")] = 30,
    cold_items: Annotated[float, typer.Option(help="Fraction of items created during the log.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Random seed (>= 0).")] = 0,
    truth: Annotated[bool, typer.Option(help="Also write per-event true log-probabilities.")] = False,
) -> None:
    """Generate a seeded synthetic log with known ground truth (streamed to Parquet contract files)."""
    from hrnn_core.cli import checks as argcheck  # noqa: PLC0415

    argcheck.check_not_file(out, "--out")  # the sizes are checked by SynthConfig before it writes
    paths = generate(out, n_users=users, n_items=items, n_events=events, n_genres=genres, days=days,
                     cold_items_fraction=cold_items, seed=seed, write_truth=truth)
    for table, path in paths.items():
        typer.echo(f"{table}: {path}")
