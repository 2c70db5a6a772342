"""The service's durable event log: segments, rotation, crash recovery, and ingest of its files."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hrnn_core.data.contract import MissingOwnerError, owner_id
from hrnn_core.data import eventlog
from hrnn_core.data.eventlog import CLOSED_PREFIX, OPEN_PREFIX, EventLog, EventLogError, LoggedEvent, OwnerIndex, read_segment
from hrnn_core.data.pipeline import LANDING_SUFFIXES


def ev(i: int, user: str | None = "u1", session: str | None = None, **kw) -> LoggedEvent:
    return LoggedEvent(user, session, kw.pop("item", f"i{i}"), 1_700_000_000.0 + i + 0.25, **kw)


def ingestable(folder: Path) -> list[Path]:
    """What the ingest scan (hrnn_core.data.pipeline.find_new_files) would pick up."""
    return sorted(p for p in folder.iterdir() if p.name.endswith(LANDING_SUFFIXES) and not p.name.startswith("."))


def test_append_is_invisible_to_ingest_until_rotated(tmp_path: Path) -> None:
    log = EventLog(tmp_path, max_events=1000)
    events = [ev(1, event_type="click", event_value=2.5, context={"device": "mobile"}),
              ev(2, user=None, session="s1", impression=("a", "b")), ev(3, item='odd, "quoted" id')]
    log.append(events)
    assert log.open_segment is not None and log.open_segment.name.startswith(OPEN_PREFIX)
    assert ingestable(tmp_path) == []
    assert list(log.read_all()) == events  # the open segment is read back too (restart rebuild)
    closed = log.rotate()
    assert closed is not None and closed.name.startswith(CLOSED_PREFIX) and closed.suffix == ".csv"
    assert ingestable(tmp_path) == [closed] and log.open_segment is None
    assert list(read_segment(closed)) == events  # bit-exact floats, quoting, empty fields
    header = closed.read_text().splitlines()[0]
    assert header == "user_id,session_id,item_id,timestamp,event_type,event_value,impression,device"
    assert log.rotate() is None  # nothing open


def test_rotation_by_size_age_and_new_context_fields(tmp_path: Path) -> None:
    log = EventLog(tmp_path, max_events=3, max_seconds=60)
    log.append([ev(i) for i in range(3)])  # full: closed at once
    assert len(log.segments()) == 1 and log.open_segment is None
    log.append([ev(3, context={"device": "tv"})])
    assert log.rotate_if_old() is None
    assert log.rotate_if_old(now=time.time() + 61) is not None  # old: closed by the background check
    log.append([ev(4, context={"device": "tv"})])
    log.append([ev(5, context={"locale": "de"})])  # a field the header lacks: a wider segment
    log.close()
    segs = log.segments()
    assert len(segs) == 4
    assert segs[-1].read_text().splitlines()[0].endswith("impression,device,locale")
    assert [e.item_id for e in log.read_all()] == [f"i{i}" for i in range(6)]
    with pytest.raises(EventLogError, match="clash"):
        log.append([ev(6, context={"item_id": "x"})])


class FullDisk:
    """``os`` for the event log module, with writes that fail like a full disk (after half the bytes) while on."""

    def __init__(self) -> None:
        self.on = False

    def __getattr__(self, name: str):
        return getattr(os, name)

    def write(self, fd: int, data) -> int:
        if self.on:
            os.write(fd, bytes(data[: max(1, len(data) // 2)]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.write(fd, data)


def test_a_failed_write_acknowledges_nothing_and_the_log_recovers(tmp_path: Path, monkeypatch) -> None:
    disk = FullDisk()
    monkeypatch.setattr(eventlog, "os", disk)
    log = EventLog(tmp_path)
    log.append([ev(1)])
    disk.on = True
    with pytest.raises(EventLogError, match="No space left on device"):
        log.append([ev(2), ev(3)])
    log.rotate()  # the open segment closes with only what was acknowledged
    with pytest.raises(EventLogError, match="No space left on device"):
        log.append([ev(4)])  # not even a new segment's header fits
    assert log.open_segment is None and not list(tmp_path.glob(f"{OPEN_PREFIX}*"))
    disk.on = False  # space returns
    log.append([ev(5)])
    log.close()
    assert [e.item_id for e in log.read_all()] == ["i1", "i5"]  # nothing half-written, nothing unacknowledged
    for seg in log.segments():
        assert seg.read_text().endswith("\n")


def test_recover_closes_dead_writers_segments_and_drops_half_lines(tmp_path: Path) -> None:
    a = EventLog(tmp_path)
    a.append([ev(1), ev(2)])
    seg = a.open_segment
    with open(seg, "a", encoding="utf-8") as fh:
        fh.write("u1,,i3,17000")  # a write cut short: never acknowledged
    b = EventLog(tmp_path)
    assert b.recover() == []  # a's flock is held: a live writer's segment is left alone
    a._segment.close()  # the writer dies (its lock goes with its file descriptor)
    a._segment = None
    recovered = b.recover()
    assert len(recovered) == 1 and not seg.exists()
    assert [e.item_id for e in read_segment(recovered[0])] == ["i1", "i2"]
    empty = EventLog(tmp_path)
    empty.append([ev(9)])
    path = empty.open_segment
    empty._segment.close()
    empty._segment = None
    path.write_text(path.read_text().splitlines()[0] + "\n")  # header only
    assert b.recover() == [] and not path.exists()


def test_sigkilled_writer_loses_no_acknowledged_event(tmp_path: Path) -> None:
    """A child appends (each append returns only after fsync), reports, and is SIGKILLed."""
    code = textwrap.dedent(f"""
        import sys, time
        from hrnn_core.data.eventlog import EventLog, LoggedEvent
        log = EventLog({str(tmp_path)!r})
        for i in range(20):
            log.append([LoggedEvent("u{{}}".format(i % 3), None, "i{{}}".format(i), 1.7e9 + i)])
            print(i, flush=True)  # acknowledged
        time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    acked = [int(child.stdout.readline()) for _ in range(20)]
    os.kill(child.pid, signal.SIGKILL)
    child.wait(10)
    log = EventLog(tmp_path)
    log.recover()
    assert [e.item_id for e in log.read_all()] == [f"i{i}" for i in acked]
    assert not list(tmp_path.glob(f"{OPEN_PREFIX}*"))


def test_owner_index_and_owner_ids() -> None:
    idx = OwnerIndex()
    idx.add([ev(1), ev(2, user=None, session="s"), ev(3)])
    assert [e.item_id for e in idx.events_of("u1")] == ["i1", "i3"]
    assert [e.item_id for e in idx.events_of(owner_id(None, "s"))] == ["i2"]
    assert owner_id("u", "s") == "u" and idx.n_events == 3 and len(idx) == 2
    with pytest.raises(MissingOwnerError):
        owner_id(None, None)


def test_closed_segment_is_a_valid_contract_file(tmp_path: Path) -> None:
    """The real ingest loads a closed segment: every row accepted, context and types kept."""
    from hrnn_core.config import load_config
    from hrnn_core.data.ingest import ingest_file
    from hrnn_core.data.warehouse import connect

    log = EventLog(tmp_path / "landing")
    log.append([ev(1, event_type="click", event_value=4.0, context={"device": "mobile"}),
                ev(2, user=None, session="s1", impression=("i7", "i8")), ev(3, item='comma, "quote"')])
    path = log.rotate()
    cfg = load_config(overrides={"paths": {"data_dir": str(tmp_path)}}, environ={})
    report = ingest_file(cfg, path, "interactions")
    assert report.rows_in == 3 and report.accepted == 3 and report.quarantined == 0
    with connect(cfg, read_only=True) as con:
        rows = con.execute('select user_id, session_id, item_id, "timestamp", event_type, event_value, '
                           'impression, context from interactions order by "timestamp"').fetchall()
    assert rows[0][:6] == ("u1", None, "i1", 1_700_000_001.25, "click", 4.0)
    assert dict(rows[0][7]) == {"device": "mobile"}
    assert rows[1][1] == "s1" and rows[1][6] == "i7|i8" and rows[1][4] == cfg.ingest.default_event_type
    assert rows[2][2] == 'comma, "quote"'


def test_ingest_while_the_service_writes_loads_every_event_exactly_once(tmp_path: Path) -> None:
    """Hourly ingest cycles (find_new_files + ingest_one) run while a writer keeps appending and
    rotating: every acknowledged event ends up in the warehouse exactly once."""
    import threading

    from hrnn_core.config import load_config
    from hrnn_core.data.pipeline import find_new_files, ingest_one
    from hrnn_core.data.warehouse import connect

    cfg = load_config(overrides={"paths": {"data_dir": str(tmp_path)}}, environ={})
    log = EventLog(cfg.paths.landing_dir, max_events=37)  # rotates by size while ingest runs
    n_batches, acked = 120, []
    done = threading.Event()

    def writer() -> None:
        for b in range(n_batches):
            batch = [ev(b * 3 + j, user=f"u{b % 7}") for j in range(3)]
            log.append(batch)  # returns once durable: acknowledged
            acked.extend(batch)
            if b % 25 == 24:
                log.rotate_if_old(now=time.time() + 3600)  # the background age check
            time.sleep(0.002)
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    cycles = 0
    while not done.is_set() or cycles == 0:
        for path in find_new_files(cfg):
            ingest_one(cfg, path)
        cycles += 1
    thread.join()
    log.close()  # shutdown publishes the open segment
    for path in find_new_files(cfg):
        ingest_one(cfg, path)
    for path in find_new_files(cfg):  # a repeated cycle finds nothing new
        raise AssertionError(f"{path} offered twice")
    with connect(cfg, read_only=True) as con:
        rows = con.execute('select user_id, item_id, "timestamp" from interactions').fetchall()
    assert cycles >= 2 and len(acked) == n_batches * 3
    assert sorted(rows) == sorted((e.user_id, e.item_id, e.timestamp) for e in acked)  # each once, none lost


def test_the_landing_folder_keeps_only_what_is_still_to_load(tmp_path: Path) -> None:
    """archive_ingested moves what the warehouse holds to the archive (by day) and deletes days past the
    retention; the log still reads archived segments, from a given time on."""
    from hrnn_core.config import load_config
    from hrnn_core.data.pipeline import archive_ingested, find_new_files, ingest_one

    cfg = load_config(overrides={"paths": {"data_dir": str(tmp_path)}, "ingest": {"archive_retention_days": 2}},
                      environ={})
    log = EventLog(cfg.paths.landing_dir, archive=cfg.paths.landing_archive_dir)
    log.append([ev(1)])
    first = log.rotate()
    for path in find_new_files(cfg):
        ingest_one(cfg, path)
    log.append([ev(2)])
    second = log.rotate()  # closed, not ingested yet
    now = time.time()
    assert archive_ingested(cfg, now=now) == {"archived": 1, "days_deleted": 0}
    assert [p.name for p in ingestable(cfg.paths.landing_dir)] == [second.name]  # only what is still to load
    assert [e.item_id for e in log.read_all()] == ["i1", "i2"]  # the log reads its archived segments too
    assert [p.name for p in log.segments(since=now + 3600)] == []
    assert [p.name for p in log.segments(since=now - 3600)] == [first.name, second.name]
    assert find_new_files(cfg) == [str(second)]
    assert archive_ingested(cfg, now=now + 3 * 86_400) == {"archived": 0, "days_deleted": 1}  # past retention
    assert [e.item_id for e in log.read_all()] == ["i2"]


def test_owner_index_forgets_what_the_model_holds() -> None:
    index = OwnerIndex()
    index.add([ev(1, user="a"), ev(5, user="a"), ev(2, user="b")])
    assert index.forget_before(1_700_000_003.0) == 2
    assert index.n_events == 1 and len(index) == 1 and [e.item_id for e in index.events_of("a")] == ["i5"]
    index.prepend([ev(1, user="a"), ev(2, user="b")])  # an older model is served again: its overlap comes back
    assert [e.item_id for e in index.events_of("a")] == ["i1", "i5"] and [e.item_id for e in index.all_events()] == [
        "i1", "i2", "i5"]
