"""The service's durable, append-only event log: contract CSV segments in the landing folder.

Every ``/events`` call is written to the *open segment* and fsync'ed before the service answers,
so an acknowledged event survives a crash. The ingest DAG loads the log from the landing folder
(``hrnn_core.data.pipeline``), which skips names starting with '.' or ending in '.tmp'. So:

* the open segment is ``<landing>/.events-<pid>-<token>-<n>.csv.tmp``: invisible to ingest;
* a full (``max_events``) or old (``max_seconds``) segment, and the open one at shutdown, is
  *closed* by an atomic rename to ``interactions_events_<utc time>_<pid>_<token>_<n>.csv``
  (directory fsync'ed): ingest sees a whole file or nothing, and loads it once (by checksum);
* the writer holds an exclusive ``flock`` on its open segment. A process killed with SIGKILL
  leaves its ``.tmp`` behind; the next start finds it unlocked, drops a half-written last line
  (an event that was never acknowledged), and closes it (``recover``).

The file format is the data contract's interactions CSV (../shared/PROTOCOLS.md section 1):
``user_id, session_id, item_id, timestamp, event_type, event_value, impression`` plus one column
per request-context field. A segment's header is fixed when it opens; an event that brings a
context field the header lacks closes the segment and opens one with the wider header.

Linux/POSIX only (``fcntl.flock``, directory fsync). One writer process per log folder name
prefix: the service runs one worker (see bento/README.md).
"""

from __future__ import annotations

import csv
import fcntl
import io
import os
import secrets
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from hrnn_core.data.contract import MULTI_VALUE_SEPARATOR, owner_id
from hrnn_core.errors import HrnnError

BASE_COLUMNS = ("user_id", "session_id", "item_id", "timestamp", "event_type", "event_value", "impression")
OPEN_PREFIX = ".events-"
OPEN_SUFFIX = ".csv.tmp"
CLOSED_PREFIX = "interactions_events_"


class EventLogError(HrnnError):
    """The event log cannot be written or read (disk full, bad segment, invalid event)."""


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    """One interaction as the log stores it (one CSV row)."""

    user_id: str | None
    session_id: str | None
    item_id: str
    timestamp: float  # epoch seconds
    event_type: str | None = None
    event_value: float | None = None
    context: Mapping[str, str] = field(default_factory=dict)  # request context fields
    impression: tuple[str, ...] = ()  # items shown at that request

    @property
    def owner(self) -> str:
        return owner_id(self.user_id, self.session_id)

    def row(self, columns: Sequence[str]) -> list[str]:
        base = {
            "user_id": self.user_id or "", "session_id": self.session_id or "", "item_id": self.item_id,
            "timestamp": repr(float(self.timestamp)),  # repr: the float reads back bit for bit
            "event_type": self.event_type or "",
            "event_value": "" if self.event_value is None else repr(float(self.event_value)),
            "impression": MULTI_VALUE_SEPARATOR.join(self.impression),
        }
        return [base[c] if c in base else self.context.get(c, "") for c in columns]


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _utc_stamp(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


class _Segment:
    """The open segment: a locked file with a fixed header."""

    def __init__(self, path: Path, columns: tuple[str, ...], opened_at: float):
        self.path = path
        self.columns = columns
        self.opened_at = opened_at
        self.n_events = 0
        self.first_event_at: float | None = None
        self.size = 0  # bytes durably written (header + acknowledged events)
        # O_APPEND on a raw descriptor: no user-space buffer that could re-send a failed write later
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.write(_csv_line(columns).encode())
        except BaseException:
            os.close(self.fd)
            path.unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)  # the new name itself survives a crash

    def write(self, data: bytes) -> None:
        """Append ``data`` and fsync, all or nothing: a failed write (disk full, I/O error) is cut back off
        the file, so events that were not acknowledged never reach ingest, and the next write starts clean."""
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view):]
            os.fsync(self.fd)
        except OSError:
            try:
                os.ftruncate(self.fd, self.size)
                os.fsync(self.fd)
            except OSError:
                pass  # the segment is closed by the caller; recover() drops a partial last line
            raise
        self.size += len(data)

    def close(self) -> None:
        os.close(self.fd)  # releases the flock


def _csv_line(values: Iterable[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(list(values))
    return buf.getvalue()


class EventLog:
    """Append-only, fsync'ed event log in ``folder`` (the landing folder); thread-safe."""

    def __init__(self, folder: Path, max_events: int = 10_000, max_seconds: float = 300.0, archive: Path | None = None):
        self.folder = Path(folder)
        self.archive = Path(archive) if archive is not None else None  # ingested segments (pipeline.archive_ingested)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_events = max_events
        self.max_seconds = max_seconds
        self._token = secrets.token_hex(4)  # distinguishes this process from an earlier one with its pid
        self._n = 0
        self._segment: _Segment | None = None
        self._lock = threading.Lock()
        self._last_columns: tuple[str, ...] = BASE_COLUMNS  # header of the last segment (kept when widening)
        self.appended = 0  # events appended by this process

    # ------------------------------------------------------------------ writing

    def append(self, events: Sequence[LoggedEvent]) -> None:
        """Write ``events`` to the open segment and fsync once; returns when they are durable."""
        if not events:
            return
        for e in events:
            clash = set(e.context) & set(BASE_COLUMNS)
            if clash:
                raise EventLogError(f"context field(s) {sorted(clash)} clash with interaction columns")
        keys = {k for e in events for k in e.context}
        with self._lock:
            seg = self._segment
            try:
                if seg is not None and not keys <= set(seg.columns):
                    self._close_locked()  # a context field the header lacks: start a wider segment
                    seg = None
                if seg is None:
                    extra = sorted(keys | (set(self._last_columns) - set(BASE_COLUMNS)))
                    seg = self._open_locked(BASE_COLUMNS + tuple(extra))
                seg.write("".join(_csv_line(e.row(seg.columns)) for e in events).encode())  # one write per call
            except OSError as exc:
                raise EventLogError(f"cannot write the event log in {self.folder}: {exc.strerror or exc}") from exc
            if seg.first_event_at is None:
                seg.first_event_at = time.time()
            seg.n_events += len(events)
            self.appended += len(events)
            if seg.n_events >= self.max_events:
                self._close_locked()

    def _open_locked(self, columns: tuple[str, ...]) -> _Segment:
        self._n += 1
        path = self.folder / f"{OPEN_PREFIX}{os.getpid()}-{self._token}-{self._n:06d}{OPEN_SUFFIX}"
        self._segment = None  # until the new segment exists (a full disk fails here: the next call retries)
        self._segment = _Segment(path, columns, time.time())
        self._last_columns = columns
        return self._segment

    def _close_locked(self) -> Path | None:
        seg, self._segment = self._segment, None
        if seg is None:
            return None
        seg.close()
        if seg.n_events == 0:
            seg.path.unlink(missing_ok=True)
            return None
        return _publish(seg.path)

    def rotate(self) -> Path | None:
        """Close the open segment now (published for ingest); its new path, or None."""
        with self._lock:
            return self._close_locked()

    def rotate_if_old(self, now: float | None = None) -> Path | None:
        """Close the open segment when its first event is older than ``max_seconds``."""
        now = time.time() if now is None else now
        with self._lock:
            seg = self._segment
            if seg is not None and seg.first_event_at is not None and now - seg.first_event_at >= self.max_seconds:
                return self._close_locked()
        return None

    def close(self) -> Path | None:
        """Shutdown: close the open segment (so ingest loads it)."""
        return self.rotate()

    @property
    def open_segment(self) -> Path | None:
        seg = self._segment
        return seg.path if seg else None

    # ------------------------------------------------------------------ recovery and reading

    def recover(self) -> list[Path]:
        """Close segments left open by processes that died (their flock is gone); returns them.

        A half-written last line (no newline: the write was interrupted, so it was never
        acknowledged) is cut off first. Segments still locked by a live writer are left alone.
        """
        closed = []
        for path in sorted(self.folder.glob(f"{OPEN_PREFIX}*{OPEN_SUFFIX}")):
            if self._segment is not None and path == self._segment.path:
                continue
            try:
                fh = open(path, "r+b")  # noqa: SIM115
            except FileNotFoundError:
                continue
            with fh:
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live writer owns it
                data = fh.read()
                end = data.rfind(b"\n") + 1
                if end < len(data):
                    fh.truncate(end)
                    fh.flush()
                    os.fsync(fh.fileno())
                n_lines = data[:end].count(b"\n")
            if n_lines <= 1:  # header only (or nothing): no event to publish
                path.unlink(missing_ok=True)
                continue
            closed.append(_publish(path))
        return closed

    def segments(self, since: float | None = None) -> list[Path]:
        """Closed segments of this log (any process; the archive's too), oldest first; with ``since``, only
        those closed at or after it (an earlier one holds no event from ``since`` on)."""
        found = list(self.folder.glob(f"{CLOSED_PREFIX}*.csv"))
        if self.archive is not None and self.archive.exists():
            found += self.archive.glob(f"*/{CLOSED_PREFIX}*.csv")
        stamped = sorted((_closed_at(p), p.name, p) for p in found)
        return [p for at, _, p in stamped if since is None or at >= since]

    def read_all(self, since: float | None = None) -> Iterator[LoggedEvent]:
        """The events of the closed segments (closed at or after ``since``) and of this process's open
        segment, in log order."""
        paths = self.segments(since)
        with self._lock:
            if self._segment is not None:
                paths.append(self._segment.path)
        for path in paths:
            yield from read_segment(path)


def _closed_at(path: Path) -> float:
    """When a closed segment was published (the UTC time in its name, see ``_publish``)."""
    stamp = path.name[len(CLOSED_PREFIX):].split("_")[0]
    return datetime.strptime(stamp, "%Y%m%dT%H%M%S%fZ").replace(tzinfo=timezone.utc).timestamp()


def _publish(path: Path) -> Path:
    """Rename an open segment to its closed (ingestable) name, atomically, and fsync the folder."""
    stem = path.name[len(OPEN_PREFIX):-len(OPEN_SUFFIX)].replace("-", "_")
    target = path.with_name(f"{CLOSED_PREFIX}{_utc_stamp(time.time())}_{stem}.csv")
    os.rename(path, target)
    _fsync_dir(path.parent)
    return target


def read_segment(path: Path) -> Iterator[LoggedEvent]:
    """The events of one segment file (complete lines only)."""
    with open(path, encoding="utf-8", newline="") as fh:
        text = fh.read()
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]  # a line being written right now
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None:
        return
    ctx_cols = [(i, c) for i, c in enumerate(header) if c not in BASE_COLUMNS]
    pos = {c: i for i, c in enumerate(header)}
    for line_no, row in enumerate(reader, start=2):
        if len(row) != len(header):
            raise EventLogError(f"{path}:{line_no}: expected {len(header)} fields, got {len(row)}")
        value = row[pos["event_value"]]
        impression = row[pos["impression"]]
        yield LoggedEvent(
            user_id=row[pos["user_id"]] or None, session_id=row[pos["session_id"]] or None,
            item_id=row[pos["item_id"]], timestamp=float(row[pos["timestamp"]]),
            event_type=row[pos["event_type"]] or None, event_value=float(value) if value else None,
            context={c: row[i] for i, c in ctx_cols if row[i]},
            impression=tuple(impression.split(MULTI_VALUE_SEPARATOR)) if impression else (),
        )


class OwnerIndex:
    """Logged events by owner, in log order (the service's source for state rebuilds); thread-safe."""

    def __init__(self) -> None:
        self._by_owner: dict[str, list[LoggedEvent]] = {}
        self._all: list[LoggedEvent] = []  # every event, in log order
        self._lock = threading.Lock()

    @property
    def n_events(self) -> int:
        return len(self._all)

    def add(self, events: Iterable[LoggedEvent]) -> None:
        with self._lock:
            for e in events:
                self._by_owner.setdefault(e.owner, []).append(e)
                self._all.append(e)

    def prepend(self, events: Iterable[LoggedEvent]) -> None:
        """Add events older than every event held (in log order), e.g. when an older model is served again."""
        events = list(events)
        with self._lock:
            older: dict[str, list[LoggedEvent]] = {}
            for e in events:
                older.setdefault(e.owner, []).append(e)
            for owner, mine in older.items():
                self._by_owner[owner] = mine + self._by_owner.get(owner, [])
            self._all = events + self._all

    def forget_before(self, t: float) -> int:
        """Drop events with a timestamp before ``t`` (the served model's history holds them); how many."""
        with self._lock:
            before = len(self._all)
            self._all = [e for e in self._all if e.timestamp >= t]
            for owner in list(self._by_owner):
                kept = [e for e in self._by_owner[owner] if e.timestamp >= t]
                if kept:
                    self._by_owner[owner] = kept
                else:
                    del self._by_owner[owner]
            return before - len(self._all)

    def all_events(self) -> list[LoggedEvent]:
        with self._lock:
            return list(self._all)

    def events_of(self, owner: str) -> list[LoggedEvent]:
        with self._lock:
            return list(self._by_owner.get(owner, ()))

    def __len__(self) -> int:
        return len(self._by_owner)
