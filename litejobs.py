"""litejobs: background jobs for Python on one SQLite file.

One file: copy ``litejobs.py`` into your project, or ``pip install litejobs``.
It needs ``aiosqlite`` and ``orjson`` and nothing else, and no server::

    import asyncio
    from dataclasses import dataclass
    import litejobs

    @dataclass
    class Greet(litejobs.Job):
        NAME = "greet"
        MAX_RETRIES = litejobs.Count(3)      # retried with exponential backoff
        who: str

        async def run(self, state):
            print("hello", self.who)

    async def main():
        async with litejobs.connect("jobs.db") as store:
            await store.enqueue(Greet("world"))
            async with litejobs.Worker(store, [Greet]):
                await asyncio.sleep(1)

    asyncio.run(main())

A job is claimed by one atomic ``UPDATE ... RETURNING``, bounded by its
TIMEOUT, retried with backoff, and never stuck: every worker runs a watchdog
that fails attempts whose process died. Delivery is at least once.

Released under the MIT licence (see LICENSE).
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = [
    "Abort",
    "Backoff",
    "Count",
    "Event",
    "Exponential",
    "Infinite",
    "Job",
    "JobContext",
    "JobDefinitionError",
    "JobInfo",
    "JobState",
    "Linear",
    "LiteJobsError",
    "MaxRetries",
    "NewJob",
    "Retry",
    "SerializationError",
    "Store",
    "StoreError",
    "Worker",
    "connect",
    "current",
    "main",
    "new_job",
]

import asyncio
import contextvars
import dataclasses
import functools
import inspect
import logging
import math
import os
import signal
import sqlite3
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from enum import Enum
from typing import Any, Awaitable, Callable, ClassVar, Iterable, Sequence

import aiosqlite
import orjson

logger = logging.getLogger("litejobs")
logger.addHandler(logging.NullHandler())


# --------------------------------------------------------------------------
# Constants and SQL
# --------------------------------------------------------------------------

# Bumped whenever the tables change; a file of a newer version is refused
# rather than half-understood.
_SCHEMA_VERSION = 1

# How long one statement waits for another connection's write lock before
# SQLite reports "database is locked"; _with_retries then tries again, so
# users only see a StoreError after _GIVE_UP_AFTER seconds of contention.
_BUSY_TIMEOUT_MS = 5_000
_GIVE_UP_AFTER = 60.0

# The watchdog fails a running attempt this long after its TIMEOUT ran out.
# The grace covers the owning worker's own in-process timeout, which records
# the failure itself; the watchdog is for processes that died or froze.
_WATCHDOG_GRACE = 2.0
_WATCHDOG_INTERVAL = 1.0

_DDL = [
    """CREATE TABLE IF NOT EXISTS litejobs_meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
    # AUTOINCREMENT: an id is never reused after its row is pruned, so an
    # old id held by a caller can never name somebody else's job.
    """CREATE TABLE IF NOT EXISTS litejobs_jobs (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        name          TEXT NOT NULL,
        queue         TEXT NOT NULL,
        payload       TEXT NOT NULL,
        state         TEXT NOT NULL DEFAULT 'pending',
        priority      INTEGER NOT NULL DEFAULT 0,
        run_at        REAL NOT NULL,
        attempts      INTEGER NOT NULL DEFAULT 0,
        max_retries   INTEGER,
        backoff       TEXT NOT NULL,
        backoff_value REAL NOT NULL,
        timeout_ms    INTEGER NOT NULL,
        unique_key    TEXT,
        lease         INTEGER NOT NULL DEFAULT 0,
        deadline      REAL,
        created_at    REAL NOT NULL,
        started_at    REAL,
        finished_at   REAL,
        last_error    TEXT,
        result        TEXT
    )""",
    # The claim walks this index in exactly its ORDER BY (the rowid, which is
    # the id, is the index's hidden last column), so it never sorts or scans.
    """CREATE INDEX IF NOT EXISTS litejobs_jobs_claim
        ON litejobs_jobs (queue, priority DESC, run_at) WHERE state = 'pending'""",
    # Finds when the next scheduled job falls due, so an idle worker can
    # sleep exactly until then.
    """CREATE INDEX IF NOT EXISTS litejobs_jobs_next_due
        ON litejobs_jobs (run_at) WHERE state = 'pending'""",
    """CREATE INDEX IF NOT EXISTS litejobs_jobs_deadline
        ON litejobs_jobs (deadline) WHERE state = 'running'""",
    """CREATE UNIQUE INDEX IF NOT EXISTS litejobs_jobs_unique_key
        ON litejobs_jobs (unique_key)
        WHERE unique_key IS NOT NULL AND state IN ('pending', 'running')""",
]

_JOB_COLUMNS = (
    "id, name, queue, payload, state, priority, run_at, attempts, max_retries,"
    " backoff, backoff_value, timeout_ms, unique_key, lease, created_at,"
    " started_at, finished_at, last_error, result"
)

_SQL_INSERT_JOB = """
    INSERT INTO litejobs_jobs (name, queue, payload, priority, run_at, max_retries,
                               backoff, backoff_value, timeout_ms, unique_key, created_at)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""

_SQL_FIND_UNIQUE = """
    SELECT id FROM litejobs_jobs
    WHERE unique_key = ? AND state IN ('pending', 'running')"""

_SQL_GET_JOB = f"SELECT {_JOB_COLUMNS} FROM litejobs_jobs WHERE id = ?"


@functools.lru_cache(maxsize=None)
def _sql_claim(name_count: int) -> str:
    """The claim: one statement picks and takes up to N due jobs of a queue.

    Two workers can never take the same row, because the choice and the
    write happen in one statement under SQLite's single write lock.  Every
    claim bumps ``lease``, the fencing token an outcome must present.
    Placeholders are generated from a count, never from the names.
    """
    names = ", ".join(f"?{n}" for n in range(4, 4 + name_count))
    return f"""
        UPDATE litejobs_jobs
           SET state = 'running', attempts = attempts + 1, lease = lease + 1,
               started_at = ?1, deadline = ?1 + timeout_ms / 1000.0 + {_WATCHDOG_GRACE}
         WHERE id IN (SELECT id FROM litejobs_jobs
                       WHERE state = 'pending' AND queue = ?2 AND run_at <= ?1
                         AND name IN ({names})
                       ORDER BY priority DESC, run_at, id
                       LIMIT ?3)
        RETURNING id, name, queue, payload, attempts, lease, max_retries,
                  backoff, backoff_value, timeout_ms, priority, run_at"""


# An outcome is written only while the attempt still owns the row: same
# lease, still running.  A worker that comes back after the watchdog took its
# job away therefore changes nothing.
_SQL_RECORD_OUTCOME = """
    UPDATE litejobs_jobs
       SET state = ?, run_at = coalesce(?, run_at), finished_at = ?,
           last_error = coalesce(?, last_error), result = ?,
           attempts = attempts - ?, deadline = NULL
     WHERE id = ? AND lease = ? AND state = 'running'"""

_SQL_EXPIRED = """
    SELECT id, name, queue, attempts, lease, max_retries, backoff, backoff_value, timeout_ms
      FROM litejobs_jobs WHERE state = 'running' AND deadline <= ?"""

_SQL_NEXT_DUE = "SELECT min(run_at) FROM litejobs_jobs WHERE state = 'pending' AND run_at > ?"


# --------------------------------------------------------------------------
# Exceptions
# --------------------------------------------------------------------------


class LiteJobsError(Exception):
    """Base class of every error litejobs raises."""


class JobDefinitionError(LiteJobsError, TypeError):
    """A Job class is defined or registered wrongly."""


class SerializationError(LiteJobsError, ValueError):
    """A job's payload cannot be encoded as JSON."""


class StoreError(LiteJobsError):
    """The database could not be opened, read or written."""


class Abort(Exception):
    """Raised inside ``run``: fail the job permanently, with no retry."""


class Retry(Exception):
    """Raised inside ``run``: try again after ``delay`` seconds instead of the backoff."""

    def __init__(self, delay: float | timedelta = 0, message: str = "") -> None:
        self.delay = _seconds(delay, "Retry(delay=...)")
        super().__init__(message or f"retry requested in {self.delay:g}s")


# --------------------------------------------------------------------------
# The job model
# --------------------------------------------------------------------------


class MaxRetries:
    """How many times a failed job is tried again: ``Count(n)`` or ``Infinite``."""

    __slots__ = ()

    def as_column(self) -> int | None:
        raise NotImplementedError

    @staticmethod
    def from_column(value: int | None) -> MaxRetries:
        return Infinite if value is None else Count(value)


class Count(MaxRetries):
    """Retry at most ``n`` times: at most ``n + 1`` attempts in all."""

    __slots__ = ("n",)

    def __init__(self, n: int) -> None:
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise JobDefinitionError(f"Count(n) needs a whole number >= 0, got {n!r}")
        self.n = n

    def as_column(self) -> int:
        return self.n

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Count) and other.n == self.n

    def __hash__(self) -> int:
        return hash(("Count", self.n))

    def __repr__(self) -> str:
        return f"Count({self.n})"


class _InfiniteRetries(MaxRetries):
    __slots__ = ()

    def as_column(self) -> None:
        return None

    def __repr__(self) -> str:
        return "Infinite"


Infinite = _InfiniteRetries()


class Backoff:
    """How long a failed job waits before its next attempt."""

    __slots__ = ("value",)
    kind: ClassVar[str]

    def __init__(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise JobDefinitionError(f"{type(self).__name__}() needs a number, got {value!r}")
        self.value = value

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failed attempt (1, 2, ...)."""
        raise NotImplementedError

    @staticmethod
    def from_column(kind: str, value: float) -> Backoff:
        cls = {"linear": Linear, "exponential": Exponential}[kind]
        return cls(int(value) if float(value).is_integer() else value)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.value == self.value  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((self.kind, self.value))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.value!r})"


class Linear(Backoff):
    """Wait the same number of seconds after every failure."""

    __slots__ = ()
    kind = "linear"

    def __init__(self, secs: float) -> None:
        super().__init__(secs)
        if secs < 0:
            raise JobDefinitionError(f"Linear(secs) needs secs >= 0, got {secs!r}")

    def delay(self, failures: int) -> float:
        return float(self.value)


class Exponential(Backoff):
    """Wait ``base ** k`` seconds after the k-th failure: 2, 4, 8, ... for base 2."""

    __slots__ = ()
    kind = "exponential"

    def __init__(self, base: float) -> None:
        super().__init__(base)
        if base < 1:
            raise JobDefinitionError(f"Exponential(base) needs base >= 1, got {base!r}")

    def delay(self, failures: int) -> float:
        try:
            return float(self.value) ** failures
        except OverflowError:
            return math.inf


def _retry_decision(
    attempts: int, max_retries: int | None, backoff: Backoff, requested_delay: float | None
) -> float | None:
    """After failed attempt number ``attempts``: seconds until the next one, or None if dead.

    ``Count(n)`` allows n retries, so attempt n + 1 is the last.  The delay is
    the backoff's unless the job asked for one with ``Retry(delay=...)``.
    """
    if max_retries is not None and attempts > max_retries:
        return None
    delay = backoff.delay(attempts) if requested_delay is None else requested_delay
    # A delay beyond a century is as good as never; keep the column finite.
    return min(delay, 3.2e9)


class JobState(str, Enum):
    """Where a job is in its life."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    DEAD = "dead"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


def _check_job_constants(cls: type) -> None:
    """Raise JobDefinitionError for a class constant of the wrong kind."""
    where = f"job class {cls.__qualname__}"
    name = cls.__dict__.get("NAME")
    if name is not None and (not isinstance(name, str) or not name):
        raise JobDefinitionError(f"{where}: NAME must be a non-empty str, got {name!r}")
    queue = cls.QUEUE
    if not isinstance(queue, str) or not queue:
        raise JobDefinitionError(f"{where}: QUEUE must be a non-empty str, got {queue!r}")
    if not isinstance(cls.MAX_RETRIES, MaxRetries):
        raise JobDefinitionError(
            f"{where}: MAX_RETRIES must be litejobs.Count(n) or litejobs.Infinite, got {cls.MAX_RETRIES!r}"
        )
    if not isinstance(cls.BACKOFF, Backoff):
        raise JobDefinitionError(
            f"{where}: BACKOFF must be litejobs.Linear(secs) or litejobs.Exponential(base), got {cls.BACKOFF!r}"
        )
    timeout = cls.TIMEOUT
    if not isinstance(timeout, int) or isinstance(timeout, bool) or timeout <= 0:
        raise JobDefinitionError(f"{where}: TIMEOUT must be a positive int of milliseconds, got {timeout!r}")


class Job:
    """A unit of background work: a serializable value with a ``run`` coroutine.

    Subclass it as a ``@dataclass``; its fields are the payload.  Class
    constants give the defaults, and the methods ``queue()``,
    ``max_retries()``, ``backoff_strategy()``, ``timeout()`` and ``span()``
    may be overridden to decide per instance.
    """

    NAME: ClassVar[str]
    QUEUE: ClassVar[str] = "default"
    MAX_RETRIES: ClassVar[MaxRetries] = Count(5)
    BACKOFF: ClassVar[Backoff] = Exponential(2)
    TIMEOUT: ClassVar[int] = 15_000

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _check_job_constants(cls)

    async def run(self, state: Any) -> Any:
        """Do the work.  ``state`` is the worker's shared state object."""
        raise NotImplementedError

    def queue(self) -> str:
        return self.QUEUE

    def max_retries(self) -> MaxRetries:
        return self.MAX_RETRIES

    def backoff_strategy(self) -> Backoff:
        return self.BACKOFF

    def timeout(self) -> int:
        """Milliseconds one attempt may run."""
        return self.TIMEOUT

    def span(self) -> Any:
        """A context manager (sync or async) entered around ``run``, or None."""
        return None

    def to_payload(self) -> dict:
        """The job's fields as a JSON-able dict; a dataclass needs no override."""
        if not dataclasses.is_dataclass(self):
            raise JobDefinitionError(
                f"job class {type(self).__qualname__} is not a dataclass: "
                "make it one, or override to_payload() and from_payload()"
            )
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}

    @classmethod
    def from_payload(cls, data: dict) -> Job:
        """Rebuild the job from what ``to_payload`` returned."""
        if not isinstance(data, dict):
            raise TypeError(f"payload is a {type(data).__name__}, not an object")
        return cls(**data)


def _check_registrable(cls: Any) -> type[Job]:
    """The checks that need the finished class: run at registration and enqueue."""
    if not (isinstance(cls, type) and issubclass(cls, Job)):
        raise JobDefinitionError(f"{cls!r} is not a subclass of litejobs.Job")
    where = f"job class {cls.__qualname__}"
    if "NAME" not in dir(cls):
        raise JobDefinitionError(f"{where} has no NAME: give it a unique NAME = '...'")
    if dataclasses.is_dataclass(cls) and "NAME" in {f.name for f in dataclasses.fields(cls)}:
        raise JobDefinitionError(f"{where}: NAME is a dataclass field; write NAME = '...' without a type annotation")
    if cls.run is Job.run:
        raise JobDefinitionError(f"{where} does not define run(self, state)")
    overrides_payload = cls.to_payload is not Job.to_payload and cls.from_payload.__func__ is not Job.from_payload.__func__
    if not dataclasses.is_dataclass(cls) and not overrides_payload:
        raise JobDefinitionError(
            f"{where} is not a dataclass: make it one, or override to_payload() and from_payload()"
        )
    return cls


_PAYLOAD_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def _refuse_unencodable(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not a JSON type and would not come back as itself")


def _encode_payload(job: Job) -> str:
    """The job's payload as JSON text; SerializationError names the bad field."""
    payload = job.to_payload()
    if not isinstance(payload, dict):
        raise SerializationError(f"job {job.NAME!r}: to_payload() returned {type(payload).__name__}, not dict")
    try:
        return orjson.dumps(payload, default=_refuse_unencodable, option=_PAYLOAD_OPTIONS).decode()
    except TypeError as exc:
        for field, value in payload.items():
            try:
                orjson.dumps({field: value}, default=_refuse_unencodable, option=_PAYLOAD_OPTIONS)
            except TypeError as field_exc:
                raise SerializationError(f"job {job.NAME!r}, field {field!r}: {field_exc}") from None
        raise SerializationError(f"job {job.NAME!r}: {exc}") from None


def _seconds(value: Any, what: str) -> float:
    """A delay given as seconds or a timedelta, as float seconds >= 0."""
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what} must be seconds or a timedelta, got {value!r}")
    if value < 0:
        raise ValueError(f"{what} must not be negative, got {value!r}")
    return float(value)


def _epoch(when: datetime, what: str) -> float:
    if not isinstance(when, datetime):
        raise ValueError(f"{what} must be a datetime, got {when!r}")
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"{what} must be an aware datetime (with tzinfo), got naive {when!r}")
    return when.timestamp()


def _datetime(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, timezone.utc)


@dataclasses.dataclass(frozen=True)
class NewJob:
    """A job ready to insert: what ``new_job`` builds, without touching the database."""

    name: str
    queue: str
    payload: str
    max_retries: MaxRetries
    backoff: Backoff
    timeout: int
    priority: int = 0
    unique_key: str | None = None
    run_at: float | None = None
    delay: float = 0.0

    def _row(self, now: float) -> tuple:
        due = self.run_at if self.run_at is not None else now + self.delay
        return (self.name, self.queue, self.payload, self.priority, due,
                self.max_retries.as_column(), self.backoff.kind, self.backoff.value,
                self.timeout, self.unique_key, now)


def new_job(
    job: Job,
    *,
    delay: float | timedelta | None = None,
    run_at: datetime | None = None,
    queue: str | None = None,
    priority: int = 0,
    unique_key: str | None = None,
) -> NewJob:
    """Build the row for ``job``: name, queue, encoded payload, limits and due time."""
    if not isinstance(job, Job):
        raise TypeError(f"expected a litejobs.Job instance, got {type(job).__name__}")
    cls = _check_registrable(type(job))
    where = f"job {cls.NAME!r}"
    if delay is not None and run_at is not None:
        raise ValueError(f"{where}: give delay or run_at, not both")
    queue = job.queue() if queue is None else queue
    if not isinstance(queue, str) or not queue:
        raise ValueError(f"{where}: queue must be a non-empty str, got {queue!r}")
    if isinstance(priority, bool) or not isinstance(priority, int) or abs(priority) >= 2**63:
        raise ValueError(f"{where}: priority must be an int, got {priority!r}")
    if unique_key is not None and not isinstance(unique_key, str):
        raise ValueError(f"{where}: unique_key must be a str, got {unique_key!r}")
    max_retries, backoff, timeout = job.max_retries(), job.backoff_strategy(), job.timeout()
    if not isinstance(max_retries, MaxRetries):
        raise JobDefinitionError(f"{where}: max_retries() returned {max_retries!r}, not Count(n) or Infinite")
    if not isinstance(backoff, Backoff):
        raise JobDefinitionError(f"{where}: backoff_strategy() returned {backoff!r}, not Linear or Exponential")
    if not isinstance(timeout, int) or isinstance(timeout, bool) or timeout <= 0:
        raise JobDefinitionError(f"{where}: timeout() returned {timeout!r}, not a positive int of milliseconds")
    return NewJob(
        name=cls.NAME,
        queue=queue,
        payload=_encode_payload(job),
        max_retries=max_retries,
        backoff=backoff,
        timeout=timeout,
        priority=priority,
        unique_key=unique_key,
        run_at=None if run_at is None else _epoch(run_at, f"{where}: run_at"),
        delay=0.0 if delay is None else _seconds(delay, f"{where}: delay"),
    )


@dataclasses.dataclass(frozen=True)
class JobInfo:
    """A snapshot of one job's row."""

    id: int
    name: str
    queue: str
    payload: dict
    state: JobState
    attempts: int
    max_retries: MaxRetries
    backoff: Backoff
    timeout: int
    priority: int
    unique_key: str | None
    run_at: datetime
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    last_error: str | None
    result: Any

    @classmethod
    def _from_row(cls, row: Sequence) -> JobInfo:
        (id_, name, queue, payload, state, priority, run_at, attempts, max_retries,
         backoff, backoff_value, timeout_ms, unique_key, _lease, created_at,
         started_at, finished_at, last_error, result) = row
        return cls(
            id=id_, name=name, queue=queue, payload=_loads_or_raw(payload),
            state=JobState(state), attempts=attempts,
            max_retries=MaxRetries.from_column(max_retries),
            backoff=Backoff.from_column(backoff, backoff_value), timeout=timeout_ms,
            priority=priority, unique_key=unique_key, run_at=_datetime(run_at),
            created_at=_datetime(created_at), started_at=_datetime(started_at),
            finished_at=_datetime(finished_at), last_error=last_error,
            result=None if result is None else _loads_or_raw(result),
        )


def _loads_or_raw(text: str) -> Any:
    """Decode JSON from the file; a row damaged behind our back comes back as its text."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


@dataclasses.dataclass(frozen=True)
class JobContext:
    """What ``litejobs.current()`` returns inside ``run``."""

    id: int
    name: str
    queue: str
    attempt: int
    store: Store


_current_job: contextvars.ContextVar[JobContext] = contextvars.ContextVar("litejobs_current_job")


def current() -> JobContext:
    """The running job's context: id, attempt number and store."""
    try:
        return _current_job.get()
    except LookupError:
        raise LiteJobsError("litejobs.current() was called outside a running job") from None


@dataclasses.dataclass(frozen=True)
class Event:
    """One thing that happened to a job, for ``Store.on_event`` callbacks.

    ``kind`` is one of: enqueue, start, success, failure, timeout, retry, death.
    """

    kind: str
    job_id: int
    name: str
    queue: str
    attempt: int = 0
    duration: float | None = None
    error: str | None = None


# --------------------------------------------------------------------------
# The store: every SQL statement runs in one of the functions below, on a
# plain sqlite3 connection.  The async Store runs them on aiosqlite's thread,
# one hop per transaction, so no transaction stays open across an await.
# --------------------------------------------------------------------------


def _is_busy(exc: sqlite3.Error) -> bool:
    text = str(exc)
    return "locked" in text or "busy" in text


def _with_retries(conn: sqlite3.Connection, fn: Callable, *args: Any, write: bool = False) -> Any:
    """Run ``fn(conn, *args)``, in a BEGIN IMMEDIATE transaction when ``write``.

    Writes take the lock up front, so a transaction never fails half-way on
    an upgrade from reader to writer.  SQLite's busy handler waits up to
    _BUSY_TIMEOUT_MS; beyond that, and in the few cases where SQLite reports
    busy at once, we roll back and start again until _GIVE_UP_AFTER.
    """
    give_up = time.monotonic() + _GIVE_UP_AFTER
    pause = 0.001
    while True:
        try:
            if not write:
                return fn(conn, *args)
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn, *args)
                conn.execute("COMMIT")
                return result
            except BaseException:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:  # the original error says more
                        pass
                raise
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or time.monotonic() > give_up:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.1)


def _create_private_file(path: str) -> None:
    """Create the database file readable by its owner only: payloads may hold secrets.

    SQLite gives the -wal and -shm files the same permissions as the database.
    """
    if path == ":memory:" or path.startswith("file:") or os.path.exists(path):
        return
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise StoreError(f"cannot create {path!r}: folder {folder!r} does not exist")
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        pass
    except OSError as exc:
        raise StoreError(f"cannot create {path!r}: {exc.strerror}") from None


def _open_schema(conn: sqlite3.Connection, synchronous: str) -> None:
    """Check the file, switch to WAL and create the tables: reads first, so a
    file that is not ours to change is refused before anything is written."""
    conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
    try:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"not an SQLite database ({exc})") from None
    if "litejobs_meta" in tables:
        row = conn.execute("SELECT value FROM litejobs_meta WHERE key = 'schema_version'").fetchone()
        version = int(row[0]) if row and str(row[0]).isdigit() else None
        if version is None:
            raise StoreError("litejobs_meta has no valid schema_version: the file was changed by hand")
        if version > _SCHEMA_VERSION:
            raise StoreError(
                f"the database has litejobs schema version {version}, but this litejobs "
                f"{__version__} knows only up to {_SCHEMA_VERSION}: upgrade litejobs"
            )
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode not in ("wal", "memory"):
        raise StoreError(f"could not switch the database to WAL mode (it stays in {mode!r} mode)")
    conn.execute(f"PRAGMA synchronous = {synchronous}")

    def create(conn: sqlite3.Connection) -> None:
        for statement in _DDL:
            conn.execute(statement)
        conn.execute(
            "INSERT OR IGNORE INTO litejobs_meta (key, value) VALUES ('schema_version', ?)",
            (str(_SCHEMA_VERSION),),
        )

    _with_retries(conn, create, write=True)


def _insert_jobs(conn: sqlite3.Connection, rows: Sequence[NewJob], now: float) -> list[int]:
    """Insert jobs, all or nothing; a unique_key already pending or running
    returns the existing id instead of inserting."""
    ids = []
    for row in rows:
        if row.unique_key is not None:
            existing = conn.execute(_SQL_FIND_UNIQUE, (row.unique_key,)).fetchone()
            if existing is not None:
                ids.append(existing[0])
                continue
        ids.append(conn.execute(_SQL_INSERT_JOB, row._row(now)).lastrowid)
    return ids


def _get_job(conn: sqlite3.Connection, job_id: int) -> JobInfo | None:
    row = conn.execute(_SQL_GET_JOB, (job_id,)).fetchone()
    return None if row is None else JobInfo._from_row(row)


@dataclasses.dataclass
class _Outcome:
    """What became of one attempt, waiting to be written with the next batch."""

    job_id: int
    lease: int
    state: str  # the row's new state
    event: str  # success, failure, timeout, retry, death ... for on_event
    name: str
    queue: str
    attempt: int
    delay: float | None = None  # for pending: seconds from the write until due
    error: str | None = None
    result: str | None = None
    uncount: int = 0  # 1 when a graceful stop hands the attempt back unspent
    duration: float | None = None

    def as_params(self, now: float) -> tuple:
        finished = now if self.state in ("done", "dead", "cancelled") else None
        run_at = now + self.delay if self.delay is not None else None
        return (self.state, run_at, finished, self.error, self.result, self.uncount, self.job_id, self.lease)


def _failure_outcome(row: Sequence, error: str, event: str, requested_delay: float | None = None,
                     dead_now: bool = False, duration: float | None = None) -> _Outcome:
    """Decide retry or death for a failed attempt of a claimed ``row``."""
    job_id, name, queue, attempts, lease, max_retries, backoff, backoff_value = row[:8]
    delay = None if dead_now else _retry_decision(
        attempts, max_retries, Backoff.from_column(backoff, backoff_value), requested_delay)
    return _Outcome(job_id, lease, "dead" if delay is None else "pending", event, name, queue,
                    attempts, delay=delay, error=error, duration=duration)


@dataclasses.dataclass
class _Exchange:
    """The result of one worker round trip to the store."""

    claimed: dict[str, list[tuple]]
    written: list[_Outcome]
    next_due: float | None
    data_version: int


def _exchange(conn: sqlite3.Connection, outcomes: Sequence[_Outcome], wants: dict[str, int],
              names: Sequence[str], reap: bool, now: float) -> _Exchange:
    """A worker's whole round trip in one transaction: record finished
    attempts, fail expired ones (the watchdog), claim new ones, and see when
    the next scheduled job falls due."""
    version = conn.execute("PRAGMA data_version").fetchone()[0]
    expired = conn.execute(_SQL_EXPIRED, (now,)).fetchall() if reap else []
    written: list[_Outcome] = []
    claimed: dict[str, list[tuple]] = {}
    if not (outcomes or expired or wants):
        next_due = conn.execute(_SQL_NEXT_DUE, (now,)).fetchone()[0]
        return _Exchange(claimed, written, next_due, version)

    def write(conn: sqlite3.Connection) -> float | None:
        # Runs again from the top if the transaction is retried after "busy".
        written.clear()
        claimed.clear()
        todo = list(outcomes)
        for row in conn.execute(_SQL_EXPIRED, (now,)).fetchall() if expired else ():
            error = f"TimeoutError: attempt {row[3]} did not finish within {row[8]} ms (failed by the watchdog)"
            todo.append(_failure_outcome(row, error, "timeout"))
        for outcome in todo:
            if conn.execute(_SQL_RECORD_OUTCOME, outcome.as_params(now)).rowcount:
                written.append(outcome)
        for queue, limit in wants.items():
            rows = conn.execute(_sql_claim(len(names)), (now, queue, limit, *names)).fetchall()
            # RETURNING gives rows in no promised order: restore the claim's.
            rows.sort(key=lambda r: (-r[10], r[11], r[0]))
            claimed[queue] = rows
        return conn.execute(_SQL_NEXT_DUE, (now,)).fetchone()[0]

    next_due = _with_retries(conn, write, write=True)
    return _Exchange(claimed, written, next_due, version)


def _data_version(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA data_version").fetchone()[0]


class Store:
    """Jobs in one SQLite file.  Get one with ``litejobs.connect(path)``."""

    def __init__(self, db: aiosqlite.Connection, path: str, clock: Callable[[], float]) -> None:
        self._db = db
        self.path = path
        self.clock = clock
        self._event_callbacks: list[Callable[[Event], Any]] = []
        self._wakers: set[Callable[[], None]] = set()

    async def _run(self, fn: Callable, *args: Any, write: bool = False) -> Any:
        """Run ``fn(conn, *args)`` on the connection's thread; one hop, one transaction.

        aiosqlite has no public call for running a function on its thread;
        its ``_execute`` has done exactly that, unchanged, since 0.12.
        """
        try:
            conn = self._db._conn
        except ValueError:
            raise StoreError(f"the store for {self.path!r} is closed") from None
        try:
            return await self._db._execute(_with_retries, conn, fn, *args, write=write)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from exc

    async def close(self) -> None:
        """Close the connection; pending writes have all been committed."""
        await self._db.close()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    # -- enqueueing --------------------------------------------------------

    async def enqueue(self, job: Job | NewJob, **options: Any) -> int:
        """Store one job and return its id.  Options are those of ``new_job``."""
        return (await self.enqueue_many([job], **options))[0]

    async def schedule(self, job: Job | NewJob, *, at: datetime, **options: Any) -> int:
        """Store a job due at the aware datetime ``at``."""
        return await self.enqueue(job, run_at=at, **options)

    async def enqueue_many(self, jobs: Iterable[Job | NewJob], **options: Any) -> list[int]:
        """Store many jobs in one transaction: all of them or none."""
        rows = [job if isinstance(job, NewJob) else new_job(job, **options) for job in jobs]
        if not rows:
            return []
        ids = await self._run(_insert_jobs, rows, self.clock(), write=True)
        for job_id, row in zip(ids, rows):
            self._emit(Event("enqueue", job_id, row.name, row.queue))
        self._wake_workers()
        return ids

    async def get(self, job_id: int) -> JobInfo | None:
        """The job's current row, or None if there is no such id."""
        return await self._run(_get_job, job_id)

    # -- events and wake-ups ----------------------------------------------

    def on_event(self, callback: Callable[[Event], Any]) -> Callable[[], None]:
        """Call ``callback(event)`` for everything that happens to jobs here;
        returns a function that unsubscribes it."""
        self._event_callbacks.append(callback)
        return lambda: self._event_callbacks.remove(callback)

    def _emit(self, event: Event) -> None:
        for callback in self._event_callbacks:
            try:
                result = callback(event)
                if inspect.isawaitable(result):
                    asyncio.ensure_future(result)
            except Exception:
                logger.exception("on_event callback %r failed on %s", callback, event)

    def _wake_workers(self) -> None:
        for wake in self._wakers:
            wake()

    # -- the seam the worker uses; a PostgreSQL store implements the same --

    async def exchange(self, outcomes: Sequence[_Outcome], wants: dict[str, int],
                       names: Sequence[str], reap: bool) -> _Exchange:
        """Record outcomes, run the watchdog, claim up to ``wants[queue]`` due jobs."""
        return await self._run(_exchange, outcomes, wants, names, reap, self.clock())

    async def data_version(self) -> int:
        """A number that changes whenever another connection commits: the cheap check."""
        return await self._run(_data_version)


class _Connector:
    """What ``connect`` returns: awaitable, and an async context manager."""

    def __init__(self, path: str, options: dict[str, Any]) -> None:
        self._path = path
        self._options = options
        self._store: Store | None = None

    async def _open(self) -> Store:
        options = dict(self._options)
        synchronous = str(options.pop("synchronous", "NORMAL")).upper()
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be 'NORMAL' or 'FULL', got {synchronous!r}")
        clock = options.pop("clock", time.time)
        if options:
            raise TypeError(f"connect() got unknown option(s): {', '.join(sorted(options))}")
        path = os.fspath(self._path)
        _create_private_file(path)
        try:
            db = await aiosqlite.connect(path, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {path!r}: {exc}") from None
        store = Store(db, path, clock)
        try:
            await store._run(_open_schema, synchronous)
        except BaseException:
            await db.close()
            raise
        return store

    def __await__(self) -> Any:
        return self._open().__await__()

    async def __aenter__(self) -> Store:
        self._store = await self._open()
        return self._store

    async def __aexit__(self, *exc_info: Any) -> None:
        if self._store is not None:
            await self._store.close()


def connect(path: str | os.PathLike, **options: Any) -> _Connector:
    """Open (and create) the job database at ``path``.

    Options: ``synchronous`` ("NORMAL", or "FULL" to survive power loss) and
    ``clock`` (a function returning epoch seconds, for tests).
    """
    return _Connector(path, options)


# --------------------------------------------------------------------------
# The worker
# --------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class _Attempt:
    row: tuple
    job: Job | None
    started: float
    task: asyncio.Task | None = None
    timer: asyncio.TimerHandle | None = None
    settled: bool = False
    stopping: bool = False

    @property
    def job_id(self) -> int:
        return self.row[0]

    @property
    def queue(self) -> str:
        return self.row[2]


def _format_error(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()


class Worker:
    """Runs the registered jobs from a store, with per-queue concurrency.

    ``await worker.run()`` serves until ``stop()``, SIGINT or SIGTERM;
    ``async with worker:`` serves in the background of the block.
    """

    def __init__(
        self,
        store: Store,
        jobs: Iterable[type[Job]],
        *,
        state: Any = None,
        concurrency: int | dict[str, int] | None = None,
        queues: Iterable[str] = (),
        poll_interval: float = 0.05,
        shutdown_timeout: float = 10.0,
    ) -> None:
        self.store = store
        self._registry: dict[str, type[Job]] = {}
        for cls in jobs:
            cls = _check_registrable(cls)
            other = self._registry.get(cls.NAME)
            if other is not None and other is not cls:
                raise JobDefinitionError(
                    f"job classes {other.__qualname__} and {cls.__qualname__} both have NAME {cls.NAME!r}"
                )
            self._registry[cls.NAME] = cls
        if not self._registry:
            raise JobDefinitionError("Worker needs at least one Job class to run")
        self._names = sorted(self._registry)
        self._sync_run = {name: not inspect.iscoroutinefunction(cls.run) for name, cls in self._registry.items()}
        per_queue = 4
        if isinstance(concurrency, int) and not isinstance(concurrency, bool):
            per_queue, concurrency = concurrency, {}
        elif concurrency is None:
            concurrency = {}
        elif not isinstance(concurrency, dict):
            raise TypeError(f"concurrency must be an int or a dict of queue -> int, got {concurrency!r}")
        served = {cls.QUEUE for cls in self._registry.values()} | set(queues) | set(concurrency)
        self._capacity = {queue: concurrency.get(queue, per_queue) for queue in sorted(served)}
        for queue, slots in self._capacity.items():
            if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
                raise ValueError(f"concurrency for queue {queue!r} must be an int >= 1, got {slots!r}")
        self.poll_interval = _seconds(poll_interval, "poll_interval")
        self.shutdown_timeout = _seconds(shutdown_timeout, "shutdown_timeout")
        self._state_source = state
        self.state: Any = None
        self._running: dict[str, int] = dict.fromkeys(self._capacity, 0)
        # A set, not a dict by id: after the watchdog takes a job away from a
        # frozen attempt, this worker may claim the same job again.
        self._attempts: set[_Attempt] = set()
        self._outcomes: list[_Outcome] = []
        self._wake = asyncio.Event()
        self._check_due = True  # something may be claimable: ask the store
        self._backlog: set[str] = set()  # queues whose last claim came back full
        self._next_due: float | None = None
        self._next_reap = 0.0
        self._stopping = False
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task | None = None
        self.claims = 0  # round trips that asked the store for jobs; tests watch it

    # -- lifecycle ---------------------------------------------------------

    def stop(self) -> None:
        """Stop claiming, let running jobs finish (up to shutdown_timeout), then return."""
        self._stopping = True
        self._wake.set()

    async def __aenter__(self) -> Worker:
        self._task = asyncio.ensure_future(self.run(handle_signals=False))
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        self.stop()
        if self._task is not None:
            await self._task

    async def run(self, *, handle_signals: bool = True) -> None:
        """Serve jobs until ``stop()``, SIGINT or SIGTERM, then stop gracefully."""
        loop = asyncio.get_running_loop()
        self._stopping = False
        self._wake = asyncio.Event()
        self.state = await self._make_state()
        signals = self._install_signal_handlers(loop) if handle_signals else []
        self.store._wakers.add(self._notify)
        logger.info("worker started: queues %s, jobs %s", self._capacity, self._names)
        try:
            await self._serve()
        finally:
            self.store._wakers.discard(self._notify)
            for sig in signals:
                loop.remove_signal_handler(sig)
            if self._executor is not None:
                self._executor.shutdown(wait=False)
                self._executor = None
            logger.info("worker stopped")

    async def _make_state(self) -> Any:
        source = self._state_source
        if not callable(source):
            return source
        state = source(self.store)
        return await state if inspect.isawaitable(state) else state

    def _install_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> list[int]:
        if threading.current_thread() is not threading.main_thread():
            return []
        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self.stop)
                installed.append(sig)
            except (NotImplementedError, RuntimeError):  # Windows, or a loop without signals
                pass
        return installed

    def _notify(self) -> None:
        """A job was enqueued in this process: look now, not at the next poll."""
        self._check_due = True
        self._wake.set()

    # -- the loop: one round trip to the store at a time -------------------

    async def _serve(self) -> None:
        store = self.store
        loop = asyncio.get_running_loop()
        last_version: int | None = None
        stop_deadline: float | None = None
        failures = 0
        while True:
            now = store.clock()
            if self._stopping and stop_deadline is None:
                stop_deadline = loop.time() + self.shutdown_timeout
                logger.info("stopping: waiting for %d running job(s)", len(self._attempts))
            if stop_deadline is not None and loop.time() >= stop_deadline and self._attempts:
                await self._abandon_running()
            if self._stopping and not self._attempts and not self._outcomes:
                return

            if self._next_due is not None and now >= self._next_due:
                self._check_due = True
            wants = {}
            if not self._stopping:
                for queue, capacity in self._capacity.items():
                    free = capacity - self._running[queue]
                    if free > 0 and (self._check_due or queue in self._backlog):
                        wants[queue] = free
            reap = now >= self._next_reap
            outcomes, self._outcomes = self._outcomes, []
            if outcomes or wants or reap:
                self._check_due = False
                if wants:
                    self.claims += 1
                try:
                    result = await store.exchange(outcomes, wants, self._names, reap)
                except StoreError as exc:
                    # Nothing was written: keep the outcomes and try again.
                    # Fencing makes a late write harmless, so none is lost.
                    failures += 1
                    self._outcomes[:0] = outcomes
                    self._check_due = self._check_due or bool(wants)
                    logger.warning("store round trip failed (try %d), retrying: %s", failures, exc)
                    await asyncio.sleep(min(0.05 * 2**failures, 2.0))
                    continue
                failures = 0
                if reap:
                    self._next_reap = now + _WATCHDOG_INTERVAL
                if last_version is not None and result.data_version != last_version:
                    self._check_due = True
                last_version = result.data_version
                self._next_due = result.next_due
                for outcome in result.written:
                    self._emit_outcome(outcome)
                    if outcome.state == "pending" and outcome.delay is not None:
                        # The store's next_due only sees jobs due later than
                        # now; a retry due at once must wake us too.
                        due = now + outcome.delay
                        self._next_due = due if self._next_due is None else min(self._next_due, due)
                for queue, rows in result.claimed.items():
                    if len(rows) == wants[queue]:
                        self._backlog.add(queue)
                    else:
                        self._backlog.discard(queue)
                    for row in rows:
                        self._start(row)
                if self._outcomes or any(q in self._backlog and self._running[q] < c
                                         for q, c in self._capacity.items()):
                    await asyncio.sleep(0)  # let finished jobs report, then go again
                    continue

            timeout = self.poll_interval
            if self._next_due is not None:
                timeout = min(timeout, max(self._next_due - store.clock(), 0.0))
            if stop_deadline is not None:
                timeout = min(timeout, max(stop_deadline - loop.time(), 0.0))
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except asyncio.TimeoutError:
                if not self._stopping and any(
                        c > self._running[q] for q, c in self._capacity.items()):
                    try:
                        version = await store.data_version()
                    except StoreError as exc:
                        logger.warning("could not check the database for changes: %s", exc)
                    else:
                        if version != last_version:
                            self._check_due = True
                            last_version = version
            self._wake.clear()

    # -- running one attempt -----------------------------------------------

    def _start(self, row: tuple) -> None:
        job_id, name, queue, payload, attempt_no = row[:5]
        cls = self._registry[name]
        loop = asyncio.get_running_loop()
        try:
            job = cls.from_payload(orjson.loads(payload))
            if not isinstance(job, cls):
                raise TypeError(f"from_payload() returned {type(job).__name__}, not {cls.__name__}")
        except Exception as exc:
            # It can never succeed, so retrying would only repeat the error.
            error = f"cannot decode the payload of job {name!r} (id {job_id}): {type(exc).__name__}: {exc}"
            logger.error("%s", error)
            self._record(_failure_outcome(self._limits(row), error, "failure", dead_now=True))
            return
        attempt = _Attempt(row, job, time.monotonic())
        self._running[queue] += 1
        self._attempts.add(attempt)
        self.store._emit(Event("start", job_id, name, queue, attempt_no))
        attempt.task = loop.create_task(self._call_run(attempt))
        attempt.task.add_done_callback(functools.partial(self._finished, attempt))
        attempt.timer = loop.call_later(row[9] / 1000, self._timed_out, attempt)

    @staticmethod
    def _limits(row: tuple) -> tuple:
        """The claimed row in the order _failure_outcome reads it."""
        job_id, name, queue, _payload, attempts, lease, max_retries, backoff, backoff_value = row[:9]
        return (job_id, name, queue, attempts, lease, max_retries, backoff, backoff_value)

    async def _call_run(self, attempt: _Attempt) -> Any:
        job = attempt.job
        assert job is not None
        _current_job.set(JobContext(attempt.job_id, attempt.row[1], attempt.queue, attempt.row[4], self.store))
        span = job.span()
        if span is None:
            return await self._call_run_bare(job, attempt.row[1])
        if hasattr(span, "__aenter__"):
            async with span:
                return await self._call_run_bare(job, attempt.row[1])
        with span:
            return await self._call_run_bare(job, attempt.row[1])

    async def _call_run_bare(self, job: Job, name: str) -> Any:
        if self._sync_run[name]:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(sum(self._capacity.values()), "litejobs")
            context = contextvars.copy_context()
            result = await asyncio.get_running_loop().run_in_executor(
                self._executor, context.run, job.run, self.state)
        else:
            result = await job.run(self.state)
        return await result if inspect.isawaitable(result) else result

    def _settle(self, attempt: _Attempt) -> bool:
        """Mark the attempt decided, once; frees its slot for the next claim."""
        if attempt.settled:
            return False
        attempt.settled = True
        if attempt.timer is not None:
            attempt.timer.cancel()
        self._running[attempt.queue] -= 1
        self._attempts.discard(attempt)
        return True

    def _finished(self, attempt: _Attempt, task: asyncio.Task) -> None:
        if not self._settle(attempt):
            if not task.cancelled() and task.exception() is not None:
                logger.debug("job %s ended after its attempt was given up: %r", attempt.job_id, task.exception())
            return
        row = attempt.row
        duration = time.monotonic() - attempt.started
        limits = self._limits(row)
        if task.cancelled():
            if attempt.stopping:
                outcome = _Outcome(row[0], row[5], "pending", "requeue", row[1], row[2], row[4], uncount=1)
            else:
                outcome = _failure_outcome(limits, "CancelledError: the job's task was cancelled", "failure",
                                           duration=duration)
        elif task.exception() is None:
            outcome = _Outcome(row[0], row[5], "done", "success", row[1], row[2], row[4], duration=duration)
            try:
                outcome.result = orjson.dumps(task.result()).decode()
            except TypeError as exc:
                outcome.error = f"the result could not be stored: {exc}"
        else:
            exc = task.exception()
            error = _format_error(exc)
            if isinstance(exc, Abort):
                outcome = _failure_outcome(limits, error, "failure", dead_now=True, duration=duration)
            elif isinstance(exc, Retry):
                outcome = _failure_outcome(limits, error, "failure", requested_delay=exc.delay, duration=duration)
            else:
                outcome = _failure_outcome(limits, error, "failure", duration=duration)
        self._record(outcome)

    def _timed_out(self, attempt: _Attempt) -> None:
        if not self._settle(attempt):
            return
        row = attempt.row
        # Cancel, but do not wait: a job that swallows the cancellation must
        # not hold its slot, nor keep the failure from being recorded.
        attempt.task.cancel()
        error = f"TimeoutError: job {row[1]!r} (id {row[0]}) exceeded its timeout of {row[9]} ms"
        logger.warning("%s", error)
        self._record(_failure_outcome(self._limits(row), error, "timeout",
                                      duration=time.monotonic() - attempt.started))

    def _record(self, outcome: _Outcome) -> None:
        self._outcomes.append(outcome)
        self._wake.set()

    async def _abandon_running(self) -> None:
        """Shutdown timeout passed: cancel what still runs and hand it back unspent."""
        attempts = list(self._attempts)
        logger.warning("shutdown timeout: returning %d running job(s) to pending", len(attempts))
        for attempt in attempts:
            attempt.stopping = True
            attempt.task.cancel()
        await asyncio.wait([a.task for a in attempts], timeout=1.0)
        for attempt in attempts:  # those that ignored the cancellation
            if self._settle(attempt):
                row = attempt.row
                self._record(_Outcome(row[0], row[5], "pending", "requeue", row[1], row[2], row[4], uncount=1))

    def _emit_outcome(self, outcome: _Outcome) -> None:
        emit = self.store._emit
        base = (outcome.job_id, outcome.name, outcome.queue, outcome.attempt, outcome.duration)
        if outcome.event == "requeue":
            return
        emit(Event(outcome.event, *base, error=outcome.error if outcome.event != "success" else None))
        if outcome.event in ("failure", "timeout"):
            emit(Event("retry" if outcome.state == "pending" else "death", *base, error=outcome.error))


# --------------------------------------------------------------------------
# The demo: ``litejobs demo`` shows retries, an abort and a delayed job
# --------------------------------------------------------------------------


@dataclasses.dataclass
class _DemoGreet(Job):
    NAME = "demo.greet"
    who: str

    async def run(self, state: Any) -> str:
        return f"hello, {self.who}"


@dataclasses.dataclass
class _DemoFlaky(Job):
    NAME = "demo.flaky_upload"
    BACKOFF = Linear(0.5)
    file: str

    async def run(self, state: Any) -> str:
        if current().attempt < 3:
            raise ConnectionError(f"storage not reachable (attempt {current().attempt})")
        return f"uploaded {self.file}"


@dataclasses.dataclass
class _DemoCharge(Job):
    NAME = "demo.charge_card"
    card: str

    async def run(self, state: Any) -> None:
        raise Abort(f"card {self.card} was declined")


async def _demo(path: str) -> int:
    def show(event: Event) -> None:
        error = f"  ({event.error.splitlines()[-1]})" if event.kind in ("failure", "timeout") else ""
        print(f"  job {event.job_id:<3} {event.name:<20} {event.kind:<8} attempt {event.attempt}{error}")

    async with connect(path) as store:
        store.on_event(show)
        print(f"Enqueueing four jobs into {path}:")
        ids = [
            await store.enqueue(_DemoGreet("world")),
            await store.enqueue(_DemoFlaky("report.pdf")),
            await store.enqueue(_DemoCharge("4242")),
            await store.enqueue(_DemoGreet("the future"), delay=2),
        ]
        print("Running a worker until all four are finished:")
        async with Worker(store, [_DemoGreet, _DemoFlaky, _DemoCharge], poll_interval=0.05):
            while True:
                infos = [await store.get(job_id) for job_id in ids]
                if all(info.state in (JobState.DONE, JobState.DEAD) for info in infos):
                    break
                await asyncio.sleep(0.05)
        print("What happened to each:")
        for info in infos:
            outcome = repr(info.result) if info.state is JobState.DONE else info.last_error.splitlines()[-1]
            print(f"  job {info.id:<3} {info.name:<20} {info.state.value:<5} after {info.attempts} attempt(s): {outcome}")
    return 0


# --------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: ``litejobs demo``; see ``litejobs --help``."""
    import argparse

    parser = argparse.ArgumentParser(prog="litejobs", description="Background jobs on one SQLite file.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run a short demo: retries, an abort and a delayed job")
    demo.add_argument("--db", default="litejobs-demo.db", help="where to write the demo's database")
    args = parser.parse_args(argv)
    if args.command == "demo":
        for suffix in ("", "-wal", "-shm"):  # a fresh start, every time
            if os.path.exists(args.db + suffix):
                os.remove(args.db + suffix)
        return asyncio.run(_demo(args.db))
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
