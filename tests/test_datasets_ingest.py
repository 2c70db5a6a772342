"""`hrnn ingest --dataset NAME --path DIR` end to end on the shared research datasets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HRNN = [sys.executable, "-m", "hrnn_core.cli.main"]

# dataset -> (folder, interactions read, duplicates, quarantined): fixed by the data itself.
CASES = {
    "ml-latest-small": ("ml-latest-small", 100_836, 0, 0),
    "yoochoose": ("yoochoose-100k-sessionrec", 83_846, 1, 0),  # one exact duplicate click
    # taobao: 35 real timestamps before the collection window are quarantined as out of range
    "taobao": ("taobao-userbehavior-head", 84_474, 0, 35),
    # trivago: repeated item interactions within the same second share the interaction key
    "trivago": ("trivago-rsc19-100k", 87_608, 52_748, 0),
}


@pytest.mark.shared_data
@pytest.mark.parametrize("name", sorted(CASES))
def test_ingest_shared_dataset(name, tmp_path):
    folder, rows_in, dups, quarantined = CASES[name]
    raw = SHARED / folder
    if not raw.exists():
        pytest.skip(f"{raw} is absent")
    proc = subprocess.run(
        [*HRNN, "ingest", "--dataset", name, "--path", str(raw), "--data-dir", str(tmp_path), "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    inter = next(f for f in out["files"] if f["table"] == "interactions")
    assert inter["rows_in"] == rows_in
    assert inter["duplicates"] == dups
    assert inter["quarantined"] == quarantined
    assert inter["accepted"] == rows_in - dups - quarantined
    assert out["rows_in"] == out["accepted"] + out["duplicates"] + out["quarantined"]

    transform = subprocess.run(
        [*HRNN, "transform", "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert transform.returncode == 0, transform.stderr
    assert "checks: all passed" in transform.stdout
