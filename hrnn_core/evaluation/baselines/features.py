"""Shared helpers of the baselines: flat views of sequences tables and sparse metadata features.

``flat_events(table)``
    One sequences table (sequences.parquet layout) as flat numpy arrays (offsets, item, time,
    event id), cached for the last few tables seen, so scoring many batches over the same
    ``ScoreBatch.sequences`` flattens it once.

``FieldEncoder``
    A group of metadata fields (an items/users ``categorical`` + ``numeric`` map column pair, or
    the request ``contexts`` map) -> sparse features: per row a padded list of global feature ids
    (0 = padding) and their values, the input of the factorization machine (``fm.py``).

    * **Which categorical fields**: a field is kept when it has at most ``max_categories`` distinct
      values AND at most ``max_distinct_share`` x (number of fitted rows) distinct values. The
      second rule drops identifier-like free text (ml-100k: ``title`` has 1,664 values over 1,682
      items, ``zip_code`` 795 over 943 users) whatever the catalogue size, while low-cardinality
      fields (``genres``: 19, ``occupation``: 21, ``gender``: 2) are kept.
    * **Multi-valued** values ``"a|b"`` (items, users) are split; a row's known values each get
      value ``1 / (number of known values)`` (a mean, as for an FM's set-valued field). Context
      values are kept whole (one value per field).
    * **Numeric fields**: two kinds of features each: the standardized value (training mean/std,
      clipped to +-``clip``) and a one-hot quantile bucket (``n_bins`` bins from the training
      quantiles), so the FM can learn non-linear effects (age groups, release decades).
      Missing values give no feature.
    * Everything is **fit on the training rows only** (items with training events, users with
      training events, training events' contexts); values never seen there encode as nothing
      (id 0), so no information from after the training cut enters the vocabularies or scalings.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from hrnn_core.data.contract import MULTI_VALUE_SEPARATOR
from hrnn_core.errors import HrnnError
from hrnn_core.model.features import quantile_edges


class BaselineError(HrnnError):
    """A baseline cannot be fitted, scored, saved or loaded as asked."""


def optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor, model: str, epoch: int, hint: str) -> float:
    """One step of a baseline's fit loop on ``loss``; its value. A non-finite loss is an error
    naming ``model``, the epoch and ``hint`` (what to change)."""
    if not torch.isfinite(loss):
        raise BaselineError(f"{model} loss is {loss.item()} at epoch {epoch}; {hint}")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


# --------------------------------------------------------------------------- flat sequences


@dataclass(frozen=True)
class FlatEvents:
    """A sequences table's events, flat and row-contiguous (row r: [offsets[r], offsets[r + 1]))."""

    offsets: np.ndarray  # (n_rows + 1,) int64
    item: np.ndarray  # (E,) int64 item_idx
    timestamp: np.ndarray  # (E,) float64
    event_id: np.ndarray  # (E,) int64
    owner: np.ndarray  # (n_rows,) int64 user_idx of each row

    @property
    def row(self) -> np.ndarray:
        """(E,) row of each event."""
        return np.repeat(np.arange(len(self.offsets) - 1), np.diff(self.offsets))


def _list_values(table: pa.Table, column: str, dtype) -> tuple[np.ndarray, np.ndarray]:
    col = table[column]
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    offsets = np.asarray(col.offsets, dtype=np.int64)
    values = col.values.to_numpy(zero_copy_only=False)[offsets[0]:offsets[-1]].astype(dtype)
    return offsets - offsets[0], values


_FLAT_CACHE: list[tuple[pa.Table, FlatEvents]] = []  # (table, its flat view), most recent last
_FLAT_CACHE_SIZE = 4


def flat_events(table: pa.Table) -> FlatEvents:
    """The flat view of ``table``, cached by identity (the cache holds the table, so ids stay valid)."""
    for t, flat in _FLAT_CACHE:
        if t is table:
            return flat
    offsets, item = _list_values(table, "item_idx", np.int64)
    flat = FlatEvents(offsets, item, _list_values(table, "timestamps", np.float64)[1],
                      _list_values(table, "event_ids", np.int64)[1],
                      table["user_idx"].to_numpy().astype(np.int64))
    _FLAT_CACHE.append((table, flat))
    del _FLAT_CACHE[:-_FLAT_CACHE_SIZE]
    return flat


def last_items(flat: FlatEvents, rows: np.ndarray, pos: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """The last ``length`` readable items of each case: (B, length) item ids (-1 padded), (B,) counts.

    Case i reads events [0, pos[i]) of row rows[i]; the newest readable item is in the last column.
    """
    rows, pos = np.asarray(rows, dtype=np.int64), np.asarray(pos, dtype=np.int64)
    n = np.minimum(pos, length)  # (B,)
    out = np.full((len(rows), length), -1, dtype=np.int64)
    if length == 0 or n.sum() == 0:
        return out, n
    case = np.repeat(np.arange(len(rows)), n)
    k = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)  # 0..n_i-1 within each case
    src = flat.offsets[rows][case] + pos[case] - n[case] + k
    out[case, length - n[case] + k] = flat.item[src]
    return out, n


# --------------------------------------------------------------------------- metadata fields


def _array(col) -> pa.Array:
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _map_keys(col: pa.Array | None) -> list[str]:
    if col is None or len(col) == 0 or col.null_count == len(col):
        return []
    return sorted(k for k in pc.unique(_array(col).keys).to_pylist() if k is not None)


def _values(col: pa.Array, key: str, multi_valued: bool, max_values: int) -> pa.ListArray:
    """Per row the list of string values of field ``key`` (empty when missing)."""
    v = pc.cast(pc.map_lookup(_array(col), query_key=key, occurrence="first"), pa.string())
    v = _array(v)
    if multi_valued:
        lists = pc.list_slice(pc.split_pattern(v, MULTI_VALUE_SEPARATOR), 0, max_values)
        return _array(pc.fill_null(lists, pa.scalar([], pa.list_(pa.string())))) if lists.null_count else lists
    valid = pc.is_valid(v).to_numpy(zero_copy_only=False)
    offsets = pa.array(np.concatenate([[0], np.cumsum(valid)]).astype(np.int32))
    return pa.ListArray.from_arrays(offsets, pc.drop_null(v))


def _numbers(col: pa.Array, key: str) -> np.ndarray:
    v = pc.map_lookup(_array(col), query_key=key, occurrence="first")
    return _array(v).to_numpy(zero_copy_only=False).astype(np.float64)


@dataclass
class FieldEncoder:
    """Vocabularies and scalings of one group of fields; ids are global from ``offset`` on."""

    cat_fields: list[str]  # kept categorical fields, in id order
    vocabs: list[list[str]]  # per kept field: its values (most frequent first)
    num_fields: list[str]  # numeric fields
    num_mean: list[float]  # training mean per numeric field
    num_std: list[float]  # training std per numeric field (1 when constant)
    num_edges: list[list[float]]  # inner quantile bucket edges per numeric field
    multi_valued: bool  # split "a|b" values (items, users) or keep whole strings (context)
    max_values: int  # most values kept per multi-valued field and row
    offset: int  # global id of this group's first feature (0 is the shared padding id)
    clip: float  # standardized numbers are clipped to [-clip, clip]

    @property
    def n_features(self) -> int:
        """Ids used by this group: offset .. offset + n_features - 1."""
        return sum(len(v) for v in self.vocabs) + sum(2 + len(e) for e in self.num_edges)

    @property
    def end(self) -> int:
        """The first id after this group (the next group's offset)."""
        return self.offset + self.n_features

    @classmethod
    def fit(cls, cat: pa.Array | None, num: pa.Array | None, offset: int, multi_valued: bool,
            max_categories: int = 1000, max_distinct_share: float = 0.5, n_bins: int = 5,
            max_values: int = 8, clip: float = 5.0) -> FieldEncoder:
        """Fit on the training rows ``cat``/``num`` (map columns; either may be None)."""
        n_rows = max(len(cat) if cat is not None else 0, len(num) if num is not None else 0)
        cat_fields, vocabs = [], []
        for key in _map_keys(cat):
            values = pc.list_flatten(_values(cat, key, multi_valued, max_values))
            counts = pc.value_counts(values) if len(values) else []
            kept = sorted(((c["counts"].as_py(), c["values"].as_py()) for c in counts), key=lambda nv: (-nv[0], nv[1]))
            kept = [v for _, v in kept if v not in ("", None)]
            if 0 < len(kept) <= max_categories and len(kept) <= max_distinct_share * n_rows:
                cat_fields.append(key)
                vocabs.append(kept)
        num_fields, mean, std, edges = [], [], [], []
        for key in _map_keys(num):
            x = _numbers(num, key)
            x = x[np.isfinite(x)]
            if len(x):
                num_fields.append(key)
                mean.append(float(x.mean()))
                std.append(float(x.std()) if x.std() > 1e-12 else 1.0)
                edges.append(quantile_edges(x, n_bins))
        return cls(cat_fields, vocabs, num_fields, mean, std, edges, multi_valued, max_values, offset, clip)

    def encode(self, cat: pa.Array | None, num: pa.Array | None, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(n, W) int64 feature ids (0 = padding) and (n, W) float32 values, W >= 1."""
        rows_l, ids_l, vals_l = [], [], []
        top = self.offset
        for key, vocab in zip(self.cat_fields, self.vocabs, strict=True):
            if cat is not None and len(cat):
                lists = _values(cat, key, self.multi_valued, self.max_values)
                idx = pc.index_in(pc.list_flatten(lists), value_set=pa.array(vocab, pa.string()))
                idx = idx.to_numpy(zero_copy_only=False).astype(np.float64)
                lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False)
                row = np.repeat(np.arange(n), lengths)
                known = np.isfinite(idx)
                per_row = np.bincount(row[known], minlength=n)
                rows_l.append(row[known])
                ids_l.append(idx[known].astype(np.int64) + top)
                vals_l.append(1.0 / per_row[row[known]])
            top += len(vocab)
        for f, key in enumerate(self.num_fields):
            if num is not None and len(num):
                x = _numbers(num, key)
                ok = np.flatnonzero(np.isfinite(x))
                z = np.clip((x[ok] - self.num_mean[f]) / self.num_std[f], -self.clip, self.clip)
                bucket = np.searchsorted(np.asarray(self.num_edges[f]), x[ok], side="right")
                rows_l += [ok, ok]
                ids_l += [np.full(len(ok), top, dtype=np.int64), top + 1 + bucket]
                vals_l += [z, np.ones(len(ok))]
            top += 2 + len(self.num_edges[f])
        return _pad(rows_l, ids_l, vals_l, n)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> FieldEncoder:
        return cls(**d)


def _pad(rows_l: list, ids_l: list, vals_l: list, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Scatter (row, id, value) triples into padded (n, W) matrices, rows in order."""
    rows = np.concatenate(rows_l).astype(np.int64) if rows_l else np.zeros(0, np.int64)
    ids = np.concatenate(ids_l).astype(np.int64) if ids_l else np.zeros(0, np.int64)
    vals = np.concatenate(vals_l).astype(np.float32) if vals_l else np.zeros(0, np.float32)
    order = np.argsort(rows, kind="stable")
    rows, ids, vals = rows[order], ids[order], vals[order]
    counts = np.bincount(rows, minlength=n)
    width = max(1, int(counts.max()) if n else 1)
    slot = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
    out_ids = np.zeros((n, width), dtype=np.int64)
    out_vals = np.zeros((n, width), dtype=np.float32)
    out_ids[rows, slot] = ids
    out_vals[rows, slot] = vals
    return out_ids, out_vals


def entity_table(table: pa.Table | None, key: str, n: int) -> tuple[pa.Array | None, pa.Array | None, np.ndarray]:
    """An items/users table reordered by its index column ``key`` into ``n`` slots.

    Returns the categorical and numeric map columns (row i = entity i; entities missing from the
    table are null rows) and a bool (n,) "present" mask.
    """
    present = np.zeros(n, dtype=bool)
    if table is None or table.num_rows == 0:
        return None, None, present
    idx = table[key].to_numpy().astype(np.int64)
    keep = (idx >= 0) & (idx < n)
    present[idx[keep]] = True
    where = np.full(n, -1, dtype=np.int64)
    where[idx[keep]] = np.flatnonzero(keep)
    take = pa.array(where, mask=where < 0)
    cols = []
    for name in ("categorical", "numeric"):
        cols.append(_array(table[name]).take(take) if name in table.column_names else None)
    return cols[0], cols[1], present


# --------------------------------------------------------------------------- saving


CONFIG_FILE = "config.json"  # {"scorer": name, "config": {...}, plus scorer-specific metadata}
STATE_FILE = "state.pt"  # a dict of tensors (state_dict), loadable with torch.load(weights_only=True)


def save_files(folder, scorer_name: str, meta: dict, state: dict) -> None:
    """Write ``meta`` (JSON-able) and ``state`` (name -> tensor) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(json.dumps({"scorer": scorer_name, **meta}, indent=2, sort_keys=True))
    torch.save({k: v.detach().cpu() for k, v in state.items()}, folder / STATE_FILE)


def load_files(folder, scorer_name: str, map_location="cpu") -> tuple[dict, dict]:
    """(meta, state) written by ``save_files``; checks the folder holds a ``scorer_name`` scorer."""
    folder = Path(folder)
    if not (folder / CONFIG_FILE).is_file() or not (folder / STATE_FILE).is_file():
        raise BaselineError(f"{folder} has no {CONFIG_FILE}/{STATE_FILE}; save the scorer there first")
    meta = json.loads((folder / CONFIG_FILE).read_text())
    if meta.get("scorer") != scorer_name:
        raise BaselineError(f"{folder} holds a {meta.get('scorer')!r} scorer, not {scorer_name!r}")
    return meta, torch.load(folder / STATE_FILE, map_location=map_location, weights_only=True)
