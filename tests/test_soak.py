"""Soak (issue 22 "Time"), small: three simulated days through /events with the hourly ingests and a nightly
champion each day. The service holds about one day of events whatever the log's age, the landing folder keeps
only what is still to load, and a restart does not slow down as the log ages. Figure: `python -m tests.reliability soak`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.soak import soak

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_soak_memory_and_start_up_do_not_grow_with_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HRNN_DATA_DIR", raising=False)
    per_day = 3_000
    result = soak(tmp_path, days=3, events_per_day=per_day, clients=2, batch=100)
    rows = result["rows"]
    assert [r["errors"] for r in rows] == [0, 0, 0]
    assert len({r["served_tag"] for r in rows}) == 3  # each night's champion is served
    for r in rows:
        assert r["events_held_after_new_model"] <= per_day  # the last day at most, not the whole log
        assert r["landing_files_after_ingest"] <= 1  # only the segment still being written when ingest ran
    assert rows[-1]["restart_to_ready_s"] < 3 * max(rows[0]["restart_to_ready_s"], 2.0)
