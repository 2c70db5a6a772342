"""Adapters from the shared research datasets (and MovieLens-100k) to contract files.

Each adapter is a ``Converter``: ``convert_x(raw_dir, out_dir) -> {"interactions": path, ...}``.
It writes ``interactions.parquet`` (plus ``users.parquet`` / ``items.parquet`` when the dataset
has them) and ``conversion_report.json``, which says how many rows were read, written and
skipped (by reason) per table, so that no row disappears without a count.

Adapters only change *shape* (column names, one file per table). They never repair values:
an id or timestamp that looks wrong is written as it is, so ingest quarantines it with a reason.
Ids are written as strings; timestamps as the numbers (int or float) found in the raw data.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from hrnn_core.data.datasets import Converter
from hrnn_core.data.datasets.contract_files import (finish, numeric_or_raw, read_text_table, require_columns, strings,
                                               year_from_title)
from hrnn_core.data.datasets.ml100k import convert_ml100k
from hrnn_core.errors import DatasetError


# --------------------------------------------------------------------------------------------
# ml-latest-small: ratings.csv + movies.csv
# --------------------------------------------------------------------------------------------


def convert_ml_latest_small(raw_dir: Path, out_dir: Path) -> dict[str, Path]:
    """MovieLens latest-small: ratings become "rating" events, movies become items.

    ``tags.csv`` and ``links.csv`` are ignored: tags are free text written by users (not an
    event on an item the model can use as such), links are ids in other databases.
    """
    raw_dir = Path(raw_dir)
    ratings_path, movies_path = raw_dir / "ratings.csv", raw_dir / "movies.csv"
    ratings = read_text_table(ratings_path)
    require_columns(ratings, ("userId", "movieId", "rating", "timestamp"), ratings_path)
    movies = read_text_table(movies_path)
    require_columns(movies, ("movieId", "title", "genres"), movies_path)

    interactions = pa.table(
        {
            "user_id": strings(ratings["userId"]),
            "item_id": strings(ratings["movieId"]),
            "timestamp": numeric_or_raw(ratings["timestamp"]),
            "event_type": pa.array(["rating"] * len(ratings), type=pa.string()),
            "event_value": numeric_or_raw(ratings["rating"], (pa.float64(),)),
        }
    )
    # "(no genres listed)" is MovieLens' placeholder for "unknown", not a genre: null, counted.
    no_genres = movies["genres"] == "(no genres listed)"
    genres = movies["genres"].mask(no_genres)
    years = year_from_title(movies["title"])
    items = pa.table(
        {
            "item_id": strings(movies["movieId"]),
            "title": strings(movies["title"]),
            "genres": strings(genres),
            "year": pa.array(years, type=pa.int64(), from_pandas=True),
        }
    )
    notes = {
        "items_no_genres_listed_set_null": int(no_genres.sum()),
        "items_without_year_in_title": int(years.isna().sum()),
    }
    return finish(
        "ml-latest-small",
        raw_dir,
        out_dir,
        {
            "interactions": (interactions, len(ratings), {}, "ratings.csv"),
            "items": (items, len(movies), {}, "movies.csv"),
        },
        notes,
    )


# --------------------------------------------------------------------------------------------
# yoochoose: anonymous click sessions
# --------------------------------------------------------------------------------------------

YOOCHOOSE_FILES = ("yoochoose-clicks-100k_train_full.txt", "yoochoose-clicks-100k_test.txt")


def convert_yoochoose(raw_dir: Path, out_dir: Path) -> dict[str, Path]:
    """Yoochoose 100k: train_full + test clicks in one interactions file.

    The sessions are anonymous, so there is no ``user_id`` column at all (the contract allows
    ``session_id`` alone). The prepared train/test split is by time (every test click is later
    than every train click), so a time split of this file gives it back; train_tr/train_valid
    are subsets of train_full and are not read.
    """
    raw_dir = Path(raw_dir)
    frames = []
    for name in YOOCHOOSE_FILES:
        path = raw_dir / name
        df = read_text_table(path, sep="\t")
        require_columns(df, ("SessionId", "ItemId", "Time"), path)
        frames.append(df)
    clicks = pd.concat(frames, ignore_index=True)
    interactions = pa.table(
        {
            "session_id": strings(clicks["SessionId"]),
            "item_id": strings(clicks["ItemId"]),
            "timestamp": numeric_or_raw(clicks["Time"]),
            "event_type": pa.array(["click"] * len(clicks), type=pa.string()),
        }
    )
    notes = {f"rows_in_{name}": len(df) for name, df in zip(YOOCHOOSE_FILES, frames)}
    return finish(
        "yoochoose",
        raw_dir,
        out_dir,
        {"interactions": (interactions, len(clicks), {}, " + ".join(YOOCHOOSE_FILES))},
        notes,
    )


# --------------------------------------------------------------------------------------------
# taobao: UserBehavior, no header
# --------------------------------------------------------------------------------------------

TAOBAO_FILE = "UserBehavior_head.csv"
TAOBAO_COLUMNS = ("user", "item", "category", "behavior", "ts")


TAOBAO_WINDOW_START = 1_511_539_200  # 2017-11-25T00:00:00+08:00
TAOBAO_WINDOW_END = 1_512_316_799  # 2017-12-03T23:59:59+08:00 (inclusive)


def convert_taobao(raw_dir: Path, out_dir: Path) -> dict[str, Path]:
    """Taobao UserBehavior: every row is an event (pv/cart/fav/buy); items get their category.

    Timestamps are written as they are, including the real outliers before the 2017-11-25 ..
    12-03 window: ingest quarantines them, the adapter does not judge them.
    """
    raw_dir = Path(raw_dir)
    path = raw_dir / TAOBAO_FILE
    df = read_text_table(path, header=None, names=list(TAOBAO_COLUMNS))
    interactions = pa.table(
        {
            "user_id": strings(df["user"]),
            "item_id": strings(df["item"]),
            "timestamp": numeric_or_raw(df["ts"]),
            "event_type": strings(df["behavior"]),
        }
    )
    # Items are derived from the events. An item seen with several categories keeps the first
    # one seen (file order); the number of such items is reported. The events keep every row.
    pairs = df[["item", "category"]].dropna(subset=["item"])
    conflicts = int((pairs.groupby("item", sort=False)["category"].nunique() > 1).sum())
    first = pairs.drop_duplicates("item", keep="first")
    items = pa.table({"item_id": strings(first["item"]), "category": strings(first["category"])})
    return finish(
        "taobao",
        raw_dir,
        out_dir,
        {
            "interactions": (interactions, len(df), {}, TAOBAO_FILE),
            "items": (items, len(first), {}, f"distinct item ids in {TAOBAO_FILE}"),
        },
        {
            "items_with_several_categories_kept_first": conflicts,
            # The collection window (2017-11-25 00:00 .. 12-03 23:59:59, Beijing time, UTC+8).
            # `hrnn ingest --dataset taobao` validates timestamps against it, so the real
            # outliers (back to 2017-09) are quarantined as out of range, not trained on.
            "valid_time_range": [TAOBAO_WINDOW_START, TAOBAO_WINDOW_END],
        },
    )


# --------------------------------------------------------------------------------------------
# trivago: session logs with clickouts, impressions and request context
# --------------------------------------------------------------------------------------------

TRIVAGO_FILE = "trivago_val_100k.parquet.snappy"
TRIVAGO_CLICKOUT = "clickout item"
# The action types whose `reference` is an item (hotel) id. The others reference a
# destination, a POI, a filter or a sort order, so they are not events on an item.
TRIVAGO_ITEM_ACTIONS = (
    TRIVAGO_CLICKOUT,
    "interaction item image",
    "interaction item info",
    "interaction item deals",
    "interaction item rating",
    "search for item",
)
TRIVAGO_CONTEXT = ("platform", "city", "device")
TRIVAGO_COLUMNS = ("user_id", "session_id", "timestamp", "action_type", "reference", "impressions", *TRIVAGO_CONTEXT)


def convert_trivago(raw_dir: Path, out_dir: Path) -> dict[str, Path]:
    """trivago RecSys 2019: events on items, clickouts with their impression lists.

    Clickouts become ``clickout`` events carrying ``impression`` (the items shown); the other
    item actions keep their action_type as event_type. platform/city/device are request context
    columns. Rows whose reference is not an item id are counted as skipped, by reason.
    ``step`` is not written: many image interactions repeat in the same second, and a differing
    step would turn those exact duplicates into conflicting ones that ingest quarantines.
    ``prices`` and ``current_filters`` are not written either (no contract column for them).
    """
    raw_dir = Path(raw_dir)
    path = raw_dir / TRIVAGO_FILE
    if not path.is_file():
        raise DatasetError(f"{path} is missing; the raw dataset folder must contain it (see ../shared/data/README.md)")
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DatasetError(f"{path} is not a readable Parquet file ({exc}); is it the raw file?") from exc
    missing = [c for c in TRIVAGO_COLUMNS if c not in schema.names]
    if missing:
        raise DatasetError(f"{path}: missing columns {missing} (found {schema.names}); is it the raw file?")
    df = pq.read_table(path, columns=list(TRIVAGO_COLUMNS)).to_pandas()

    action = df["action_type"].astype("str")
    ref = df["reference"]
    is_item_action = action.isin(TRIVAGO_ITEM_ACTIONS)
    # Item ids are numeric; a few item actions reference "unknown", which is not an item.
    is_item_ref = ref.astype("str").str.fullmatch(r"\d+") & ref.notna()
    keep = is_item_action & is_item_ref
    skipped: dict[str, int] = {}
    for at, n in action[~is_item_action].value_counts().items():
        skipped[f"reference is not an item ({at})"] = int(n)
    for at, n in action[is_item_action & ~is_item_ref].value_counts().items():
        skipped[f"reference is not an item id ({at})"] = int(n)

    ev = df[keep]
    is_clickout = ev["action_type"] == TRIVAGO_CLICKOUT
    columns: dict[str, pa.Array] = {
        "user_id": strings(ev["user_id"]),
        "session_id": strings(ev["session_id"]),
        "item_id": strings(ev["reference"]),
        "timestamp": numeric_or_raw(pa.array(ev["timestamp"], from_pandas=True)),
        "event_type": strings(ev["action_type"].mask(is_clickout, "clickout")),
        # Only a clickout shows a list; other rows have none in the raw data either.
        "impression": strings(ev["impressions"].where(is_clickout)),
    }
    for c in TRIVAGO_CONTEXT:
        columns[c] = strings(ev[c])
    interactions = pa.table(columns)
    notes = {
        "clickouts": int(is_clickout.sum()),
        "clickouts_without_impressions": int(ev["impressions"][is_clickout].isna().sum()),
    }
    return finish(
        "trivago",
        raw_dir,
        out_dir,
        {"interactions": (interactions, len(df), skipped, TRIVAGO_FILE)},
        notes,
    )


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


ADAPTERS: dict[str, Converter] = {
    "ml-100k": convert_ml100k,
    "ml-latest-small": convert_ml_latest_small,
    "yoochoose": convert_yoochoose,
    "taobao": convert_taobao,
    "trivago": convert_trivago,
}
