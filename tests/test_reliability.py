"""Reliability under faults (issue 22): the fast variants run in `make test`, the long ones are marked slow.
The scenarios live in tests/reliability.py, which also writes the figures of docs/reliability.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability import crash_under_load

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def check_crash(result: dict) -> None:
    assert result["events_acknowledged"] > 0
    assert result["acknowledged_lost"] == 0 and result["acknowledged_twice"] == 0, result
    assert result["owners_state_mismatch"] == 0, result
    assert not {k for k in result["client_errors"] if k.startswith("http 5")}, result


def test_crash_under_load_loses_no_acknowledged_event(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HRNN_DATA_DIR", raising=False)
    check_crash(crash_under_load(tmp_path, kills=2, clients=8, load_seconds=(0.5, 1.5)))


@pytest.mark.slow
def test_crash_under_load_long(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HRNN_DATA_DIR", raising=False)
    check_crash(crash_under_load(tmp_path, kills=10, clients=16))
