"""Reliability under faults, load and fuzzing (issue 22): the fast variants run in `make test`, the long ones are
marked slow. The scenarios live in tests/reliability.py, which also writes the figures of docs/reliability.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability import crash_under_load, fuzz, load

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


def check_fuzz(result: dict) -> None:
    assert result["responses_5xx"] == 0 and result["failures"] == 0, result["failure_details"]
    assert result["operations"] == 10  # 5 POST endpoints, GET /model and /metrics, 3 health probes
    assert result["server_log_tracebacks"] == 0
    served = {k for k, v in result["statuses"].items() if 200 in v or "200" in v}  # the model was reached
    assert served & {"POST /events positive", "POST /recommend positive", "POST /recommend_batch positive"}


def test_api_fuzzing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """schemathesis, every operation of /docs.json, 10 requests per operation and mode: no 5xx, no answer the
    schema does not declare."""
    monkeypatch.delenv("HRNN_DATA_DIR", raising=False)
    check_fuzz(fuzz(tmp_path, examples=10))


@pytest.mark.slow
def test_api_fuzzing_long(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HRNN_DATA_DIR", raising=False)
    check_fuzz(fuzz(tmp_path, examples=200, seed=1))


def check_load(result: dict, clients: int) -> None:
    assert result["errors"] == 0, result["by_path"]
    assert result["clients"] == clients and result["requests"] >= 2 * clients, result
    assert set(result["by_path"]) == {"/recommend", "/events"}


def test_load_16_clients(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """16 loopback clients for 4 s (/recommend and /events): every request answered 200."""
    monkeypatch.delenv("HRNN_DATA_DIR", raising=False)
    check_load(load(tmp_path, clients=16, seconds=4), 16)


@pytest.mark.slow
def test_load_64_clients_long(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HRNN_DATA_DIR", raising=False)
    check_load(load(tmp_path, clients=64, seconds=30), 64)
