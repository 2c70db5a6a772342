"""Snapshot -> tensors: the vocabularies and scalings the model's inputs need.

Everything here is *fit on the training snapshot only* (``FeatureSpace.fit``) and saved in the
checkpoint (``FeatureSpace.to_dict``), so inference encodes new requests exactly as training did.

Encodings (paper section 2.2-2.3):

* **categorical fields** (user, item, request context): one vocabulary per field; index 0 is
  "padding / unknown / missing". Multi-valued values ``"a|b|c"`` (e.g. genres) keep up to
  ``max_values_per_field`` values per row; the model averages their embeddings (EmbeddingBag mean).
  All fields of a group share one flat id space (field offsets), so one table serves a group.
* **numeric fields**: standardized with the training mean/std, clipped, plus a "present" flag
  (missing -> 0 with flag 0). Two columns per field; item fields then one one-hot column per quantile
  bucket (``model.item_numeric_bins``, edges fit on the catalogue; missing -> no bucket).
* **time deltas**: ``bucket = 1 + floor(log_base(1 + seconds))`` capped at ``buckets - 1``;
  bucket 0 means "no previous event" (the owner's first event).
* **event types**: vocabulary, 0 = none/unknown; **event values**: standardized + present flag.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from hrnn_core.config import ModelConfig
from hrnn_core.data.contract import MULTI_VALUE_SEPARATOR
from hrnn_core.data.contract import is_session_owner
from hrnn_core.errors import HrnnError

HOLDOUT_FILE = "holdout.parquet"  # a snapshot's validation targets (protocols.Split.write_snapshot, train.prepare_data)

USER_ID_FIELD = "_user_id"  # the user field holding the user's own id (ModelConfig.use_user_id)


class FeatureError(HrnnError):
    """The snapshot cannot be encoded (missing file, no events, inconsistent ids)."""


def _array(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _map_keys(col: pa.Array) -> list[str]:
    """Distinct keys of a map column, sorted (stable field order)."""
    arr = _array(col)
    if len(arr) == 0 or arr.null_count == len(arr):
        return []
    return sorted(k for k in pc.unique(arr.keys).to_pylist() if k is not None)


def _lookup(col: pa.Array, key: str) -> pa.Array:
    return pc.map_lookup(_array(col), query_key=key, occurrence="first")


def time_delta_bucket(seconds: np.ndarray | float | None, buckets: int, log_base: float) -> np.ndarray:
    """Log-bucketed time since the owner's previous event; NaN/None (no previous event) -> 0."""
    s = np.asarray(np.nan if seconds is None else seconds, dtype=np.float64)
    b = 1 + np.floor(np.log1p(np.maximum(np.nan_to_num(s, nan=0.0), 0.0)) / math.log(log_base))
    return np.where(np.isnan(s), 0, np.minimum(b, buckets - 1)).astype(np.int64)


@dataclass
class FieldGroup:
    """Vocabularies of a group's categorical fields and scalings of its numeric fields."""

    cat_fields: list[str]  # field names, in embedding-offset order
    vocabs: list[list[str]]  # per field: kept values; value i gets local index i + 1
    num_fields: list[str]
    num_mean: list[float]
    num_std: list[float]
    widths: list[int]  # per field: slots per row (most values seen in training, <= max values)
    multi_valued: bool  # split "a|b" into values (items, users) or keep whole strings (context)
    clip: float
    num_edges: list[list[float]] = dataclasses.field(default_factory=list)  # per numeric field: inner quantile
    # edges of its one-hot buckets ([] = none; groups saved before the buckets have no list: none anywhere)

    def __post_init__(self) -> None:
        if not self.num_edges:
            self.num_edges = [[] for _ in self.num_fields]

    @property
    def offsets(self) -> list[int]:
        """Global id of each field's first value (0 is the shared padding id)."""
        out, top = [], 1
        for v in self.vocabs:
            out.append(top)
            top += len(v)
        return out

    @property
    def n_tokens(self) -> int:
        return 1 + sum(len(v) for v in self.vocabs)

    @property
    def cat_width(self) -> int:
        return sum(self.widths)

    @property
    def slots(self) -> list[tuple[int, int]]:
        """Per field: its [start, end) columns in the encoded categorical matrix."""
        ends = np.cumsum(self.widths).tolist()
        return [(e - w, e) for e, w in zip(ends, self.widths, strict=True)]

    @property
    def num_width(self) -> int:
        """[value, present] per numeric field, then each bucketed field's one-hot columns."""
        return 2 * len(self.num_fields) + sum(len(e) + 1 for e in self.num_edges if e)

    @classmethod
    def fit(cls, cat: pa.Array | None, num: pa.Array | None, cfg: ModelConfig, multi_valued: bool,
            bins: int = 0) -> FieldGroup:
        """Vocabularies and scalings of the rows' fields; ``bins`` > 1: numeric fields also get that many
        quantile buckets (fewer where values repeat)."""
        max_values = cfg.max_values_per_field if multi_valued else 1
        cat_fields, vocabs, widths = [], [], []
        for key in _map_keys(cat) if cat is not None else []:
            lists = _split(_lookup(cat, key), max_values, multi_valued, flatten=False)
            values = pc.list_flatten(lists)
            counts = pc.value_counts(pc.drop_null(values)) if len(values) else []
            kept = [(c["counts"].as_py(), c["values"].as_py()) for c in counts]
            kept = [(n, v) for n, v in kept if n >= cfg.min_category_count and v != ""]
            kept.sort(key=lambda nv: (-nv[0], nv[1]))  # most frequent first, ties by value
            if kept:
                cat_fields.append(key)
                vocabs.append([v for _, v in kept[: cfg.max_categories]])
                widths.append(max(1, int(pc.max(pc.list_value_length(lists)).as_py() or 1)))
        num_fields, mean, std, edges = [], [], [], []
        for key in _map_keys(num) if num is not None else []:
            x = _lookup(num, key).to_numpy(zero_copy_only=False).astype(np.float64)
            x = x[np.isfinite(x)]
            if len(x):
                num_fields.append(key)
                mean.append(float(x.mean()))
                std.append(float(x.std()) if x.std() > 1e-12 else 1.0)
                edges.append(quantile_edges(x, bins))
        return cls(cat_fields, vocabs, num_fields, mean, std, widths, multi_valued, cfg.numeric_clip, edges)

    def encode_cat(self, cat: pa.Array | None, n: int) -> torch.Tensor:
        """(n, cat_width) int32 global ids, 0 = padding/unknown."""
        out = np.zeros((n, self.cat_width), dtype=np.int32)
        if cat is None:
            return torch.from_numpy(out)
        fields = zip(self.cat_fields, self.vocabs, self.offsets, self.slots, strict=True)
        for key, vocab, off, (lo, hi) in fields:
            lists = _split(_lookup(cat, key), hi - lo, self.multi_valued, flatten=False)
            flat = pc.list_flatten(lists)
            ids = pc.index_in(flat, value_set=pa.array(vocab, pa.string())).to_numpy(zero_copy_only=False)
            ids = np.where(np.isnan(ids.astype(np.float64)), 0, ids.astype(np.float64) + off).astype(np.int32)
            lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False)
            rows = np.repeat(np.arange(n), lengths)
            slot = np.arange(len(rows)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
            out[rows, lo + slot] = ids
        return torch.from_numpy(out)

    def with_field(self, key: str, vocab: list[str]) -> FieldGroup:
        """This group plus one single-slot categorical field ``key`` with the given values."""
        return dataclasses.replace(self, cat_fields=self.cat_fields + [key], vocabs=self.vocabs + [list(vocab)],
                                   widths=self.widths + [1])

    def encode_field(self, key: str, values: pa.Array) -> tuple[int, np.ndarray] | None:
        """(column, global ids) of one single-slot field's ``values`` (0 = unknown); None if not a field."""
        if key not in self.cat_fields:
            return None
        f = self.cat_fields.index(key)
        ids = pc.index_in(_array(pc.cast(values, pa.string())), value_set=pa.array(self.vocabs[f], pa.string()))
        ids = ids.to_numpy(zero_copy_only=False).astype(np.float64)
        return self.slots[f][0], np.where(np.isnan(ids), 0, ids + self.offsets[f]).astype(np.int32)

    def encode_num(self, num: pa.Array | None, n: int) -> torch.Tensor:
        """(n, num_width) float32: [standardized clipped value, present flag] per field, then the one-hot
        bucket of each bucketed field (all 0 where the value is missing)."""
        out = np.zeros((n, self.num_width), dtype=np.float32)
        col = 2 * len(self.num_fields)
        for f, (key, edges) in enumerate(zip(self.num_fields, self.num_edges, strict=True)):
            if num is None:
                break
            x = _lookup(num, key).to_numpy(zero_copy_only=False).astype(np.float64)
            ok = np.isfinite(x)
            z = np.clip((np.where(ok, x, 0.0) - self.num_mean[f]) / self.num_std[f], -self.clip, self.clip)
            out[:, 2 * f] = np.where(ok, z, 0.0)
            out[:, 2 * f + 1] = ok
            if edges:
                rows = np.flatnonzero(ok)
                out[rows, col + np.searchsorted(np.asarray(edges), x[rows], side="right")] = 1.0
                col += len(edges) + 1
        return torch.from_numpy(out)

    def encode_rows(self, cat_rows: list[dict | None], num_rows: list[dict | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode plain dicts (inference requests) the same way as snapshot map columns."""
        n = len(cat_rows)
        cat_t = pa.array([list((d or {}).items()) for d in cat_rows], pa.map_(pa.string(), pa.string()))
        num_items = [[(k, float(v)) for k, v in (d or {}).items() if v is not None] for d in num_rows]
        num_t = pa.array(num_items, pa.map_(pa.string(), pa.float64()))
        return self.encode_cat(cat_t, n), self.encode_num(num_t, n)

    def to_dict(self) -> dict:
        return {"cat_fields": list(self.cat_fields), "vocabs": [list(v) for v in self.vocabs],
                "num_fields": list(self.num_fields), "num_mean": list(self.num_mean),
                "num_std": list(self.num_std), "widths": list(self.widths),
                "multi_valued": self.multi_valued, "clip": self.clip, "num_edges": [list(e) for e in self.num_edges]}

    @classmethod
    def from_dict(cls, d: dict) -> FieldGroup:
        return cls(**d)


def quantile_edges(x: np.ndarray, bins: int) -> list[float]:
    """Inner edges of ``bins`` quantile buckets of the finite values ``x`` (duplicates merged; [] for
    ``bins`` < 2). A value's bucket is ``searchsorted(edges, value, side="right")``."""
    if bins < 2 or len(x) == 0:
        return []
    return [float(e) for e in np.unique(np.quantile(x, np.linspace(0, 1, bins + 1)[1:-1]))]


def _split(values: pa.Array, max_values: int, multi: bool, flatten: bool = True) -> pa.Array:
    """Strings -> lists of at most ``max_values`` values ("a|b" split when ``multi``)."""
    values = _array(pc.cast(values, pa.string()))
    if multi:
        lists = pc.list_slice(pc.split_pattern(values, MULTI_VALUE_SEPARATOR), 0, max_values)
    else:  # the whole string is one value; missing -> empty list
        valid = pc.is_valid(values).to_numpy(zero_copy_only=False)
        offsets = pa.array(np.concatenate([[0], np.cumsum(valid)]).astype(np.int32))
        lists = pa.ListArray.from_arrays(offsets, pc.drop_null(values))
    return pc.list_flatten(lists) if flatten else lists


@dataclass
class FeatureSpace:
    """Everything fit on the training snapshot; saved in the checkpoint next to the weights."""

    item_ids: list[str]  # item_idx -> item_id (the snapshot's stable item index)
    event_types: list[str]  # event type i gets index i + 1; 0 = none/unknown
    value_mean: float  # event_value standardization
    value_std: float
    users: FieldGroup  # static user features
    items: FieldGroup  # item metadata (multi-valued categorical + numeric)
    context: FieldGroup  # request context fields (single-valued categorical)
    time_delta_buckets: int
    time_delta_log_base: float
    snapshot_id: str

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_event_types(self) -> int:
        return len(self.event_types) + 1

    @classmethod
    def fit(cls, snapshot_dir: Path, cfg: ModelConfig) -> FeatureSpace:
        snap = read_snapshot(snapshot_dir)
        seq, items, users = snap["sequences"], snap["items"], snap["users"]
        types = pc.value_counts(pc.drop_null(pc.list_flatten(seq["event_types"])))
        event_types = sorted(t["values"].as_py() for t in types)
        v = pc.list_flatten(seq["event_values"]).to_numpy(zero_copy_only=False).astype(np.float64)
        v = v[np.isfinite(v)]
        mean = float(v.mean()) if len(v) else 0.0
        std = float(v.std()) if len(v) and v.std() > 1e-12 else 1.0
        ctx = pc.list_flatten(seq["contexts"])
        user_group = FieldGroup.fit(users["categorical"], users["numeric"], cfg, multi_valued=True)
        known = known_users(seq, users) if cfg.user_id_active else []
        if known:  # no field at all where every owner is an anonymous session
            user_group = user_group.with_field(USER_ID_FIELD, known)
        return cls(
            item_ids=items["item_id"].to_pylist(), event_types=event_types, value_mean=mean, value_std=std,
            users=user_group,
            items=FieldGroup.fit(items["categorical"], items["numeric"], cfg, multi_valued=True,
                                 bins=cfg.item_numeric_bins),
            context=FieldGroup.fit(ctx, None, cfg, multi_valued=False),
            time_delta_buckets=cfg.time_delta_buckets, time_delta_log_base=cfg.time_delta_log_base,
            snapshot_id=snap["manifest"]["snapshot_id"],
        )

    # ------------------------------------------------------------------ single values (inference)

    def event_type_index(self, event_type: str | None) -> int:
        try:
            return self.event_types.index(event_type) + 1 if event_type is not None else 0
        except ValueError:
            return 0

    def event_value(self, value: float | None) -> tuple[float, float]:
        """(standardized value, present flag)."""
        if value is None or not math.isfinite(value):
            return 0.0, 0.0
        clip = self.items.clip  # model.numeric_clip, as for every standardized numeric field
        return float(np.clip((value - self.value_mean) / self.value_std, -clip, clip)), 1.0

    def item_table(self, snapshot_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
        """Item metadata of the catalog: (n_items, cat width) int32, (n_items, num width) float."""
        items = read_snapshot(snapshot_dir, tables=("items",))["items"]
        return self.items.encode_cat(items["categorical"], len(items)), self.items.encode_num(items["numeric"], len(items))

    def to_dict(self) -> dict:
        return {"item_ids": list(self.item_ids), "event_types": list(self.event_types),
                "value_mean": self.value_mean, "value_std": self.value_std,
                "users": self.users.to_dict(), "items": self.items.to_dict(), "context": self.context.to_dict(),
                "time_delta_buckets": self.time_delta_buckets, "time_delta_log_base": self.time_delta_log_base,
                "snapshot_id": self.snapshot_id}

    @classmethod
    def from_dict(cls, d: dict) -> FeatureSpace:
        d = dict(d)
        for k in ("users", "items", "context"):
            d[k] = FieldGroup.from_dict(d[k])
        return cls(**d)


def known_users(seq: pa.Table, users: pa.Table) -> list[str]:
    """Ids of the users who own training events, in user_idx order; anonymous session owners
    (``contract.is_session_owner``) are not users and get no id embedding."""
    with_events = set(seq["user_idx"].to_pylist())
    rows = sorted(zip(users["user_idx"].to_pylist(), users["user_id"].to_pylist(), strict=True))
    return [str(u) for i, u in rows if i in with_events and u is not None and not is_session_owner(str(u))]


def read_snapshot(snapshot_dir: Path, tables: tuple[str, ...] = ("sequences", "items", "users", "item_frequency")) -> dict:
    """The snapshot's Parquet tables (and manifest) as pyarrow tables."""
    folder = Path(snapshot_dir)
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        raise FeatureError(f"{folder} is not a snapshot (no manifest.json); run `hrnn snapshot` first")
    out: dict = {"manifest": json.loads(manifest.read_text())}
    for t in tables:
        out[t] = pq.read_table(folder / f"{t}.parquet")
    return out


@dataclass
class EncodedEvents:
    """All events of a snapshot, flat and owner-contiguous, with each event's model inputs.

    Position ``e`` holds the request at which event ``e`` happened: inputs are what was known
    then (previous item and its feedback, time since it, this request's context) and the
    target is event ``e``'s item.
    """

    owner_start: np.ndarray  # (n_owners + 1,) offsets into the flat arrays
    owner_user: np.ndarray  # (n_owners,) user_idx of each owner
    target: torch.Tensor  # (E,) item_idx
    prev_item: torch.Tensor  # (E,) previous item_idx, or n_items for the first event
    prev_type: torch.Tensor  # (E,) previous event type index (0 for the first event)
    prev_value: torch.Tensor  # (E, 2) previous standardized event value, present flag
    time_bucket: torch.Tensor  # (E,) log-bucketed time since the previous event
    context: torch.Tensor  # (E, Fc) request context ids
    event_type: torch.Tensor  # (E,) this event's type index (reward weights)
    event_value: torch.Tensor  # (E,) this event's standardized value (0 if missing)
    impressions: torch.Tensor  # (E, K) item_idx shown at this request, -1 padded
    user_cat: torch.Tensor  # (n_users, Fu * V) user categorical ids
    user_num: torch.Tensor  # (n_users, 2 Fu)
    item_freq: np.ndarray  # (n_items,) training events per item
    value_present: torch.Tensor  # (E,) bool: this event has a value (the flag of the next position's prev_value)
    time_delta: np.ndarray  # (E,) seconds since the owner's previous event (NaN for the first)

    @property
    def n_owners(self) -> int:
        return len(self.owner_user)

    def reordered(self, order: np.ndarray, n_items: int) -> EncodedEvents:
        """The same events with position ``i`` holding event ``order[i]`` (a permutation that keeps every
        event inside its owner and moves events only among equal timestamps).

        Per-event fields move with their event; the request inputs of each position are rebuilt from
        its new predecessor (previous item, its type and value). The time-delta input stays with the
        position: inside a tie every delta is 0, and a tie's first position keeps the gap before it.
        """
        take = torch.from_numpy(np.asarray(order, dtype=np.int64))
        first = np.zeros(len(order), dtype=bool)
        first[self.owner_start[:-1]] = True
        first_t = torch.from_numpy(first)
        prev = torch.roll(torch.arange(len(order)), 1)
        target, etype = self.target[take], self.event_type[take]
        value, present = self.event_value[take], self.value_present[take]
        prev_value = torch.stack([value[prev], present[prev].float()], dim=1).masked_fill(first_t[:, None], 0.0)
        return dataclasses.replace(
            self, target=target, event_type=etype, event_value=value, value_present=present,
            prev_item=torch.where(first_t, n_items, target[prev]),  # n_items: no previous item
            prev_type=torch.where(first_t, 0, etype[prev]), prev_value=prev_value.float(),
            context=self.context[take] if self.context.shape[1] else self.context,
            # all padding (no impressions in the data): the same in any order, and E x K is big
            impressions=self.impressions if bool((self.impressions < 0).all()) else self.impressions[take],
        )


def encode_events(snapshot_dir: Path, fs: FeatureSpace, max_impressions: int = 20) -> EncodedEvents:
    """Encode every event of a snapshot folder with ``fs`` (a reader over ``encode_tables``)."""
    snap = read_snapshot(snapshot_dir, tables=("sequences", "users", "item_frequency"))
    if len(snap["sequences"]) == 0:
        raise FeatureError(f"snapshot {snapshot_dir} has no sequences; ingest interactions first")
    freq = snap["item_frequency"]
    counts = np.zeros(fs.n_items, dtype=np.int64)
    counts[freq["item_idx"].to_numpy()] = freq["events"].to_numpy()
    return encode_tables(snap["sequences"], snap["users"], fs, max_impressions, counts)


def encode_tables(seq: pa.Table, users: pa.Table, fs: FeatureSpace, max_impressions: int = 20,
                  item_frequency: np.ndarray | None = None) -> EncodedEvents:
    """Encode every event of a sequences table (``sequences.parquet`` layout) with ``fs`` (which may
    come from another snapshot); ``users`` is the ``users.parquet`` table, ``item_frequency`` the
    (n_items,) training events per item kept as ``EncodedEvents.item_freq`` (None: zeros)."""
    if len(seq) == 0:
        raise FeatureError("no sequences to encode; ingest interactions first")
    lengths = seq["n_events"].to_numpy().astype(np.int64)
    start = np.concatenate([[0], np.cumsum(lengths)])
    first = np.zeros(start[-1], dtype=bool)
    first[start[:-1][lengths > 0]] = True  # an owner with no events (a horizon-cut histories table) has no first
    n_items = fs.n_items
    item = pc.list_flatten(seq["item_idx"]).to_numpy().astype(np.int64)
    if len(item) and item.max() >= n_items:
        raise FeatureError("snapshot items are not in the feature space's catalog; refit features")
    etype = pc.index_in(pc.list_flatten(seq["event_types"]), value_set=pa.array(fs.event_types, pa.string()))
    etype = np.nan_to_num(etype.to_numpy(zero_copy_only=False).astype(np.float64), nan=-1).astype(np.int64) + 1
    v = pc.list_flatten(seq["event_values"]).to_numpy(zero_copy_only=False).astype(np.float64)
    present = np.isfinite(v)
    z = np.where(present, np.clip((np.nan_to_num(v) - fs.value_mean) / fs.value_std, -fs.items.clip, fs.items.clip), 0.0)
    dt = pc.list_flatten(seq["time_deltas"]).to_numpy(zero_copy_only=False).astype(np.float64)
    dt[first] = np.nan  # never carry a delta across owners
    prev = np.roll(np.arange(len(item)), 1)
    prev_item = np.where(first, n_items, item[prev])
    prev_type = np.where(first, 0, etype[prev])
    prev_value = np.stack([np.where(first, 0.0, z[prev]), np.where(first, 0.0, present[prev])], axis=1)
    ctx = pc.list_flatten(seq["contexts"])
    imp = _encode_impressions(pc.list_flatten(seq["impressions"]), fs.item_ids, max_impressions)
    counts = np.zeros(n_items, dtype=np.int64)
    if item_frequency is not None:
        known = np.asarray(item_frequency, dtype=np.int64)[:n_items]
        counts[:len(known)] = known
    n_users = int(users["user_idx"].to_numpy().max()) + 1 if len(users) else 0
    ucat = torch.zeros((n_users, fs.users.cat_width), dtype=torch.int32)
    unum = torch.zeros((n_users, fs.users.num_width))
    if len(users):
        uix = torch.from_numpy(users["user_idx"].to_numpy().astype(np.int64))
        ucat[uix] = fs.users.encode_cat(users["categorical"], len(users))
        unum[uix] = fs.users.encode_num(users["numeric"], len(users))
        own = fs.users.encode_field(USER_ID_FIELD, users["user_id"])
        if own is not None:
            ucat[uix, own[0]] = torch.from_numpy(own[1])
    return EncodedEvents(
        owner_start=start, owner_user=seq["user_idx"].to_numpy().astype(np.int64),
        target=torch.from_numpy(item), prev_item=torch.from_numpy(prev_item),
        prev_type=torch.from_numpy(prev_type), prev_value=torch.from_numpy(prev_value.astype(np.float32)),
        time_bucket=torch.from_numpy(time_delta_bucket(dt, fs.time_delta_buckets, fs.time_delta_log_base)),
        context=fs.context.encode_cat(ctx, len(item)).long(), event_type=torch.from_numpy(etype),
        event_value=torch.from_numpy(z.astype(np.float32)), impressions=imp, user_cat=ucat, user_num=unum,
        item_freq=counts, value_present=torch.from_numpy(present), time_delta=dt,
    )


def _encode_impressions(col: pa.Array, item_ids: list[str], k: int) -> torch.Tensor:
    """"a|b|c" item ids per event -> (E, k) item_idx, -1 padded (unknown ids dropped)."""
    n = len(col)
    out = np.full((n, k), -1, dtype=np.int64)
    if k == 0 or col.null_count == n:
        return torch.from_numpy(out)
    lists = pc.split_pattern(pc.cast(col, pa.string()), MULTI_VALUE_SEPARATOR)
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False)
    idx = pc.index_in(pc.list_flatten(lists), value_set=pa.array(item_ids, pa.string()))
    idx = np.nan_to_num(idx.to_numpy(zero_copy_only=False).astype(np.float64), nan=-1).astype(np.int64)
    rows = np.repeat(np.arange(n), lengths)
    slot = np.arange(len(rows)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    keep = (slot < k) & (idx >= 0)
    out[rows[keep], slot[keep]] = idx[keep]
    return torch.from_numpy(out)
