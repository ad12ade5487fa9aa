"""Tests for litejobs: one file, temp databases, no shared state, no sleeping through backoff."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import litejobs

HERE = os.path.dirname(os.path.abspath(__file__))
T0 = 1_800_000_000.0  # the fake clock's start: an arbitrary fixed instant


class FakeClock:
    """Injected as connect(clock=...): time moves only when a test says so."""

    def __init__(self, start: float = T0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def run(coro):
    return asyncio.run(coro)


async def wait_until(check, what: str, timeout: float = 15.0):
    """Poll ``await check()`` until truthy.  The timeout only guards against a
    hang; it never decides a pass."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def wait_state(store, job_id, state, attempts=None, timeout=15.0):
    async def check():
        info = await store.get(job_id)
        ok = info.state == state and (attempts is None or info.attempts == attempts)
        return info if ok else None

    return await wait_until(check, f"job {job_id} to be {state} (attempts={attempts})", timeout)


async def _true_when(value):
    return value


async def _open_and_close(db):
    async with litejobs.connect(db):
        pass


def _cli(capsys, *argv):
    code = litejobs.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def orjson_loads(text):
    import json

    return json.loads(text)


# -- the two stores ------------------------------------------------------------
# Every test that takes ``db`` runs twice: on an SQLite file, and on a
# PostgreSQL database of its own (made from a template that litejobs set up
# once per run).  Tests of what only a file has (the WAL, file modes,
# hand edits through sqlite3) take ``sqlite_db``.

POSTGRES = os.environ.get("LITEJOBS_TEST_POSTGRES")
NO_POSTGRES = ("the PostgreSQL half: set LITEJOBS_TEST_POSTGRES=postgresql://127.0.0.1/postgres "
               "(a server you may create databases on) to run it")


def _postgres_admin():
    import psycopg

    return psycopg.connect(POSTGRES, autocommit=True)


def _database_url(name):
    import psycopg.conninfo

    return psycopg.conninfo.make_conninfo(POSTGRES, dbname=name) if "://" not in POSTGRES else \
        POSTGRES.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(scope="session")
def postgres_template():
    template = f"litejobs_test_template_{os.getpid()}"
    with _postgres_admin() as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {template} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {template}")
    litejobs.connect_sync(_database_url(template)).close()
    yield template
    with _postgres_admin() as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {template} WITH (FORCE)")


_databases = iter(range(1, 10**9))


@pytest.fixture
def postgresql_db(request):
    if not POSTGRES:
        pytest.skip(NO_POSTGRES)
    template = request.getfixturevalue("postgres_template")
    name = f"litejobs_test_{os.getpid()}_{next(_databases)}"
    with _postgres_admin() as admin:
        admin.execute(f"CREATE DATABASE {name} TEMPLATE {template} STRATEGY FILE_COPY")
    yield _database_url(name)
    with _postgres_admin() as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def sqlite_db(tmp_path):
    return str(tmp_path / "jobs.db")


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request):
    """A store's address: an SQLite file, then a PostgreSQL database."""
    return request.getfixturevalue(f"{request.param}_db")


def on_postgres(db):
    return db.startswith("postgresql://")


def query(db, sql, params=()):
    """Rows read (or an edit made) straight in either store's database, around litejobs."""
    if on_postgres(db):
        import psycopg

        with psycopg.connect(db) as conn:
            cursor = conn.execute(sql.replace("%", "%%").replace("?", "%s"), params)
            return [tuple(row) for row in cursor] if cursor.description else []
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(sql, params).fetchall()
        conn.commit()  # an edit, if it was one
        return rows
    finally:
        conn.close()


# -- the internals tests reach, each in one place ------------------------------
# What a worker and its store say to each other (requests, answers, claimed
# rows, outcomes), the planner that decides what to say, and the watchdog's
# timings are private.  Tests that need them go through these helpers, so a
# change of that seam is made here once, not in dozens of tests; the few that
# must name another internal (a query plan, a function they monkeypatch on
# purpose) name it where they use it.

WATCHDOG_GRACE = litejobs._WATCHDOG_GRACE  # past a deadline, before a watchdog counts the attempt expired
WATCHDOG_INTERVAL = litejobs._WATCHDOG_INTERVAL  # between a worker's housekeeping passes
WATCHDOG_CONFIRM = litejobs._WATCHDOG_CONFIRM  # how long an expiry is seen before the watchdog fails it


def worker_request(**fields):
    """What a worker asks of its store in one round trip."""
    return litejobs._Request(**fields)


async def round_trip(store, **fields):
    """One worker round trip on an async store: outcomes in, housekeeping, claims out; the store's answer."""
    return await store.exchange(worker_request(**fields))


def round_trip_sync(store, **fields):
    """The same round trip on the sync twin, which serves no worker itself."""
    return store._run(litejobs._exchange, worker_request(**fields), store.clock)


async def claim(store, n, names, queue="default", limited=False):
    """Claim up to ``n`` due jobs of ``names`` in ``queue``, as a worker does (one with classes that
    have limits, if ``limited``); the claimed rows, best first."""
    return (await round_trip(store, wants={queue: n}, names=names, limited=limited)).claimed[queue]


async def reap_expired(store):
    """What another worker's watchdog does once it has seen attempts stay
    expired: it looks (housekeeping), then fails them (reap).  Returns what it saw."""
    expired = (await round_trip(store, housekeeping=True)).expired
    await round_trip(store, reap=expired)
    return expired


def make_round_trips_fail(store, error):
    """From now on every round trip between the store and its workers raises ``error``."""

    async def broken(request):
        raise error

    store.exchange = broken


def claimed_row(job_id, name="noop", queue="default", attempts=1, lease=1, max_retries=5, backoff=None,
                timeout_ms=10_000, run_at=T0):
    """A job as a claim hands it to a worker (``attempts`` counts the attempt it starts)."""
    backoff = litejobs.Linear(0) if backoff is None else backoff
    return litejobs._Claimed(job_id, name, queue, b"{}", attempts, lease, max_retries, backoff.kind,
                             float(backoff.value), timeout_ms, 0, run_at, None)


def success(row, **fields):
    """The outcome of an attempt at ``row`` that succeeded."""
    return row.outcome("done", "success", **fields)


def failure(row, error="boom", **fields):
    """The outcome of an attempt at ``row`` that failed: retried or dead, as the row's limits say."""
    return litejobs._failure_outcome(row, error, "failure", **fields)


def expiry(job_id, lease, deadline):
    """An attempt past its deadline, as a watchdog saw it."""
    return litejobs._Expiry(job_id, lease, deadline)


def new_planner(capacity=None, keep_done=86_400):
    """The worker's planner, which decides without I/O, for a worker of the noop job."""
    capacity = {"default": 2, "email": 1} if capacity is None else capacity
    return litejobs._Planner(capacity, ["noop"], keep_done)


def store_answer(now, claimed=None, next_due=None, expired=(), written=()):
    """The store's answer to a round trip, as the planner takes it."""
    return litejobs._Exchange(now=now, data_version=1, claimed=claimed or {}, next_due=next_due,
                              expired=list(expired), written=list(written))


def running_attempt(job_id, started, lease=1, timeout_ms=10_000):
    """An attempt the worker runs, as the planner sees it."""
    return SimpleNamespace(claimed=claimed_row(job_id, lease=lease, timeout_ms=timeout_ms),
                           timeout=timeout_ms / 1000, started=started, given_up=None)


async def by_hand(store, statement, params=()):
    """SQL on the store's own connection: a hand edit, or a PRAGMA that holds on that connection only."""
    if isinstance(store._db, litejobs._PgThread):
        def execute(conn):
            cursor = conn.execute(statement, params)
            return cursor.fetchall() if cursor.description else []

        return await store._db._execute(execute, store._db.conn)
    return await store._db.execute_fetchall(statement, params)


async def fill_the_disk(store, spare_pages=0):
    """From now on the store's file may grow by ``spare_pages`` pages only
    (max_page_count is per connection: every connection of the store hears it)."""
    pages = (await by_hand(store, "PRAGMA page_count"))[0][0]
    await _set_max_pages(store, pages + spare_pages)


async def make_room_on_the_disk(store):
    """Let the store's file grow again."""
    await _set_max_pages(store, 1073741823)


async def _set_max_pages(store, pages):
    await by_hand(store, f"PRAGMA max_page_count = {pages}")
    if store._quick is not None:  # the event loop's own connection
        store._quick.execute(f"PRAGMA max_page_count = {pages}")


# -- job classes used across tests ---------------------------------------------


@dataclass
class Noop(litejobs.Job):
    NAME = "noop"

    async def run(self, state):
        return None


@dataclass
class Echo(litejobs.Job):
    NAME = "echo"
    value: object = None

    async def run(self, state):
        return self.value


@dataclass
class AlwaysFails(litejobs.Job):
    NAME = "always_fails"
    MAX_RETRIES = litejobs.Count(3)
    BACKOFF = litejobs.Exponential(2)

    async def run(self, state):
        raise ValueError("boom")


def failing_job(max_retries, backoff=None):
    @dataclass
    class Failing(litejobs.Job):
        NAME = "failing"
        MAX_RETRIES = max_retries
        BACKOFF = litejobs.Linear(0) if backoff is None else backoff

        async def run(self, state):
            raise RuntimeError(f"failure number {litejobs.current().attempt}")

    return Failing


# -- the job model and its definitions -----------------------------------------


def test_all_is_exactly_the_public_names():
    public = {
        name for name, value in vars(litejobs).items()
        if not name.startswith("_") and getattr(value, "__module__", None) == "litejobs"
    }
    public |= {"Infinite"}
    assert set(litejobs.__all__) == public
    assert litejobs.__all__ == sorted(litejobs.__all__)


def test_backoff_formulas():
    assert [litejobs.Linear(5).delay(k) for k in (1, 2, 3)] == [5, 5, 5]
    assert [litejobs.Exponential(2).delay(k) for k in (1, 2, 3, 4)] == [2, 4, 8, 16]
    assert litejobs.Exponential(3).delay(2) == 9


@pytest.mark.parametrize(
    "attrs, message",
    [
        ({"TIMEOUT": 0}, "TIMEOUT must be a positive int"),
        ({"TIMEOUT": -5}, "TIMEOUT must be a positive int"),
        ({"TIMEOUT": 1.5}, "TIMEOUT must be a positive int"),
        ({"TIMEOUT": True}, "TIMEOUT must be a positive int"),
        ({"TIMEOUT": "10s"}, "TIMEOUT must be a positive int"),
        ({"MAX_RETRIES": 3}, "MAX_RETRIES must be litejobs.Count(n) or litejobs.Infinite"),
        ({"BACKOFF": 2}, "BACKOFF must be litejobs.Linear(secs) or litejobs.Exponential(base)"),
        ({"QUEUE": ""}, "QUEUE must be a non-empty str"),
        ({"NAME": 7}, "NAME must be a non-empty str"),
    ],
)
def test_definition_errors_at_class_creation(attrs, message):
    with pytest.raises(litejobs.JobDefinitionError, match="Broken") as info:
        type("Broken", (litejobs.Job,), dict(attrs, NAME=attrs.get("NAME", "broken")))
    assert message in str(info.value)


def test_negative_count_is_a_definition_error():
    with pytest.raises(litejobs.JobDefinitionError, match="Count"):
        litejobs.Count(-1)
    with pytest.raises(litejobs.JobDefinitionError, match="base >= 1"):
        litejobs.Exponential(0.5)
    with pytest.raises(litejobs.JobDefinitionError, match="secs >= 0"):
        litejobs.Linear(-1)


def test_limits_beyond_sqlite_integers_are_definition_errors():
    with pytest.raises(litejobs.JobDefinitionError, match="Count\\(n\\) needs a whole number from 0 to 2\\*\\*63 - 1"):
        litejobs.Count(2**63)
    assert litejobs.Count(2**63 - 1).as_column() == 2**63 - 1
    for timeout in (2**63, 10**30, litejobs._MAX_TIMEOUT_MS + 1):
        with pytest.raises(litejobs.JobDefinitionError, match="TIMEOUT must be a positive int of milliseconds, at"):
            type("Broken", (litejobs.Job,), {"NAME": "broken", "TIMEOUT": timeout})

    @dataclass
    class HugeTimeout(litejobs.Job):
        NAME = "huge_timeout"

        def timeout(self):
            return 2**63

        async def run(self, state):
            pass

    with pytest.raises(litejobs.JobDefinitionError, match="timeout\\(\\) returned 9223372036854775808, not a positive"):
        litejobs.new_job(HugeTimeout())


def test_definition_errors_at_registration(db):
    @dataclass
    class NoName(litejobs.Job):
        async def run(self, state):
            pass

    @dataclass
    class First(litejobs.Job):
        NAME = "same"

        async def run(self, state):
            pass

    @dataclass
    class Second(litejobs.Job):
        NAME = "same"

        async def run(self, state):
            pass

    @dataclass
    class NoRun(litejobs.Job):
        NAME = "no_run"

    class NotADataclass(litejobs.Job):
        NAME = "plain"

        async def run(self, state):
            pass

    @dataclass
    class AnnotatedName(litejobs.Job):
        NAME: str = "annotated"

        async def run(self, state):
            pass

    async def main():
        async with litejobs.connect(db) as store:
            cases = [
                ([NoName], "NoName has no NAME"),
                ([First, Second], "First and .*Second both have NAME 'same'"),
                ([NoRun], "does not define run"),
                ([NotADataclass], "not a dataclass"),
                ([AnnotatedName], "NAME is a dataclass field"),
                ([], "at least one Job class"),
                ([str], "not a subclass of litejobs.Job"),
            ]
            for jobs, message in cases:
                with pytest.raises(litejobs.JobDefinitionError, match=message):
                    litejobs.Worker(store, jobs)
            with pytest.raises(litejobs.JobDefinitionError, match="has no NAME"):
                await store.enqueue(NoName())
            assert await store.jobs() == []

    run(main())


def test_a_class_without_run_is_enqueued_by_a_producer_and_run_by_a_worker_that_knows_it(db):
    @dataclass
    class Resize(litejobs.Job):  # what a web process knows of the job: its name and its fields
        NAME = "resize"
        MAX_RETRIES = litejobs.Count(1)
        image: str

    @dataclass
    class ResizeForReal(litejobs.Job):  # what the worker's process defines
        NAME = "resize"
        image: str

        async def run(self, state):
            return f"resized {self.image}"

    async def main():
        async with litejobs.connect(db) as store:
            job_id = await store.enqueue(Resize("cat.png"))
            assert (await store.get(job_id)).max_retries == litejobs.Count(1)
            with pytest.raises(litejobs.JobDefinitionError, match="does not define run.*may only be enqueued"):
                litejobs.Worker(store, [Resize])
            async with litejobs.Worker(store, [ResizeForReal], poll_interval=0.01):
                assert await store.wait(job_id, timeout=15) == "resized cat.png"

    run(main())


def test_instance_overrides_are_used_and_checked(db):
    @dataclass
    class Custom(litejobs.Job):
        NAME = "custom"
        urgent: bool

        def queue(self):
            return "fast" if self.urgent else "slow"

        def max_retries(self):
            return litejobs.Infinite if self.urgent else litejobs.Count(1)

        def backoff_strategy(self):
            return litejobs.Linear(7)

        def timeout(self):
            return 1234

        async def run(self, state):
            pass

    row = litejobs.new_job(Custom(True))
    limits = (row.queue, row.max_retries, row.backoff, row.timeout)
    assert limits == ("fast", litejobs.Infinite, litejobs.Linear(7), 1234)
    assert litejobs.new_job(Custom(False)).max_retries == litejobs.Count(1)

    @dataclass
    class BadOverride(litejobs.Job):
        NAME = "bad_override"

        def timeout(self):
            return "soon"

        async def run(self, state):
            pass

    with pytest.raises(litejobs.JobDefinitionError, match="timeout\\(\\) returned 'soon'"):
        litejobs.new_job(BadOverride())


def test_new_job_builds_the_row_without_a_database():
    row = litejobs.new_job(Echo({"a": [1, 2]}), delay=timedelta(seconds=30), priority=3, unique_key="k")
    assert row.name == "echo" and row.queue == "default" and row.priority == 3
    assert row.payload == '{"value":{"a":[1,2]}}'
    assert row.delay == 30 and row.unique_key == "k"
    assert row.max_retries == litejobs.Count(5) and row.backoff == litejobs.Exponential(2) and row.timeout == 15_000


def test_current_outside_a_job_is_an_error():
    with pytest.raises(litejobs.LiteJobsError, match="outside a running job"):
        litejobs.current()


# -- the store: connecting, the file's schema and privacy, its loop and process ---


def test_connect_creates_wal_database_and_enqueue_get(db):
    clock = FakeClock()

    async def main():
        store = await litejobs.connect(db, clock=clock)
        try:
            job_id = await store.enqueue(Echo("hi"), priority=2)
            info = await store.get(job_id)
            assert info.name == "echo" and info.payload == {"value": "hi"}
            assert info.state is litejobs.JobState.PENDING and info.attempts == 0
            assert info.run_at == info.created_at == datetime.fromtimestamp(T0, timezone.utc)
            assert info.priority == 2 and info.max_retries == litejobs.Count(5)
            assert await store.get(job_id + 100) is None
            later = datetime.fromtimestamp(T0 + 3600, timezone.utc)
            scheduled = await store.get(await store.schedule(Echo("x"), at=later))
            assert scheduled.run_at == later
            delayed = await store.get(await store.enqueue(Echo("y"), delay=60))
            assert delayed.run_at.timestamp() == T0 + 60
        finally:
            await store.close()

    run(main())
    assert query(db, "SELECT value FROM litejobs_meta WHERE key = 'schema_version'") == [("4",)]
    if not on_postgres(db):
        assert query(db, "PRAGMA journal_mode") == [("wal",)]


def test_connect_rejects_unknown_options(db):
    async def main():
        with pytest.raises(TypeError, match="unknown option\\(s\\): sync"):
            await litejobs.connect(db, sync="FULL")
        with pytest.raises(ValueError, match="synchronous must be"):
            await litejobs.connect(db, synchronous="OFF")

    run(main())


def test_a_file_of_schema_version_1_is_migrated_and_keeps_its_jobs(sqlite_db):
    conn = sqlite3.connect(sqlite_db)  # the version 1 tables, as 0.1.0 made them
    conn.executescript("""
        CREATE TABLE litejobs_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO litejobs_meta VALUES ('schema_version', '1');
        CREATE TABLE litejobs_jobs (
            id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, queue TEXT NOT NULL,
            payload TEXT NOT NULL, state TEXT NOT NULL DEFAULT 'pending', priority INTEGER NOT NULL DEFAULT 0,
            run_at REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, max_retries INTEGER,
            backoff TEXT NOT NULL, backoff_value REAL NOT NULL, timeout_ms INTEGER NOT NULL,
            unique_key TEXT, lease INTEGER NOT NULL DEFAULT 0, deadline REAL,
            cancel_requested INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL,
            started_at REAL, finished_at REAL, last_error TEXT, result TEXT);
        CREATE INDEX litejobs_jobs_claim ON litejobs_jobs (queue, priority DESC, run_at) WHERE state = 'pending';
        CREATE TABLE litejobs_recurring (
            key TEXT PRIMARY KEY, interval REAL NOT NULL, next_run REAL NOT NULL, name TEXT NOT NULL,
            queue TEXT NOT NULL, payload TEXT NOT NULL, priority INTEGER NOT NULL, max_retries INTEGER,
            backoff TEXT NOT NULL, backoff_value REAL NOT NULL, timeout_ms INTEGER NOT NULL);
        INSERT INTO litejobs_jobs (name, queue, payload, run_at, backoff, backoff_value, timeout_ms, created_at)
            VALUES ('echo', 'default', '{"value": 7}', 0, 'linear', 0, 1000, 0);
    """)
    conn.close()

    async def main():
        async with litejobs.connect(sqlite_db) as store:
            await store.every(60, Noop())
            async with litejobs.Worker(store, [Echo, Noop]):
                info = await wait_state(store, 1, "done")
                assert info.result == 7

    run(main())
    conn = sqlite3.connect(sqlite_db)
    assert conn.execute("SELECT value FROM litejobs_meta WHERE key = 'schema_version'").fetchone()[0] == "4"
    indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "litejobs_jobs_claim" not in indexes and "litejobs_jobs_claimable" in indexes


def test_not_a_database_is_refused_and_untouched(tmp_path):
    path = tmp_path / "notes.db"
    content = b"these are my notes, not a database\n" * 200
    path.write_bytes(content)

    async def main():
        with pytest.raises(litejobs.StoreError, match="not an SQLite database"):
            await litejobs.connect(str(path))

    run(main())
    assert path.read_bytes() == content


def test_newer_schema_is_refused_and_untouched(sqlite_db):
    run(_open_and_close(sqlite_db))
    conn = sqlite3.connect(sqlite_db)
    conn.execute("UPDATE litejobs_meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    before = open(sqlite_db, "rb").read()

    async def main():
        with pytest.raises(litejobs.StoreError, match="schema version 99.*upgrade litejobs"):
            await litejobs.connect(sqlite_db)

    run(main())
    assert open(sqlite_db, "rb").read() == before


def test_users_own_database_is_left_alone(sqlite_db):
    conn = sqlite3.connect(sqlite_db)
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO customers (name) VALUES ('ada')")
    conn.commit()
    conn.close()
    run(_open_and_close(sqlite_db))
    conn = sqlite3.connect(sqlite_db)
    assert conn.execute("SELECT name FROM customers").fetchall() == [("ada",)]
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {t for t in tables if t != "sqlite_sequence"} - {"customers"} == {
        t for t in tables if t.startswith("litejobs_")
    }


def test_database_of_another_program_is_refused_and_untouched(sqlite_db):
    conn = sqlite3.connect(sqlite_db)
    conn.execute("CREATE TABLE litejobs_jobs (id INTEGER PRIMARY KEY, whatever TEXT)")  # not ours
    conn.commit()
    conn.close()
    before = open(sqlite_db, "rb").read()

    async def main():
        with pytest.raises(litejobs.StoreError, match="litejobs_ tables that litejobs did not create"):
            await litejobs.connect(sqlite_db)

    run(main())
    assert open(sqlite_db, "rb").read() == before


def test_an_old_sqlite_is_refused_at_connect_with_a_plain_message(sqlite_db, monkeypatch):
    monkeypatch.setattr(litejobs, "_SQLITE_HAS_RETURNING", False)

    async def main():
        with pytest.raises(litejobs.StoreError, match="needs SQLite 3.35 or newer"):
            await litejobs.connect(sqlite_db)

    run(main())


def test_file_uri_paths_are_refused_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for uri in (f"file:{tmp_path / 'jobs.db'}?mode=rwc", "file:jobs.db"):
        with pytest.raises(litejobs.StoreError, match="is a file: URI, which litejobs does not take: give the plain"):
            run(_open_and_close(uri))
        with pytest.raises(litejobs.StoreError, match="is a file: URI"):
            litejobs.connect_sync(uri)
    assert os.listdir(tmp_path) == []  # nothing created, under either name


def test_new_database_files_are_private_to_their_owner(tmp_path):
    db = str(tmp_path / "secret.db")
    old_umask = os.umask(0o022)
    try:
        async def main():
            async with litejobs.connect(db) as store:
                await store.enqueue(Echo("api-key-123"))
                modes = {suffix: os.stat(db + suffix).st_mode & 0o777 for suffix in ("", "-wal", "-shm")}
            return modes

        assert run(main()) == {"": 0o600, "-wal": 0o600, "-shm": 0o600}
    finally:
        os.umask(old_umask)


def test_a_database_opened_through_a_symlink_is_watched_and_private(tmp_path, monkeypatch):
    # No housekeeping pass after the first: only the watcher of the -wal file
    # (beside the real file, not the link) can see another connection's job.
    monkeypatch.setattr(litejobs, "_WATCHDOG_INTERVAL", 3600)
    (tmp_path / "real").mkdir()
    target, link = tmp_path / "real" / "jobs.db", tmp_path / "link.db"
    link.symlink_to(target)  # dangling until litejobs creates the file
    old_umask = os.umask(0o022)
    try:
        async def main():
            async with litejobs.connect(str(link)) as store:
                async with litejobs.Worker(store, [Noop], poll_interval=0.01):
                    await asyncio.sleep(0.05)
                    async with litejobs.connect(str(target)) as other:
                        job_id = await other.enqueue(Noop())
                    await wait_state(store, job_id, "done")

        run(main())
        assert os.stat(target).st_mode & 0o777 == 0o600
    finally:
        os.umask(old_umask)


def test_a_store_used_from_another_event_loop_says_so(db):
    async def open_store():
        return await litejobs.connect(db)

    store = run(open_store())
    outcome = []

    def second_loop():
        for call in (store.enqueue(Noop()), store.get(1)):
            try:
                outcome.append(asyncio.run(call))
            except BaseException as exc:
                outcome.append(exc)

    thread = threading.Thread(target=second_loop, daemon=True)
    thread.start()
    thread.join(10)  # guards against a hang; never decides a pass
    assert len(outcome) == 2, "the calls from a second event loop hung"
    for exc in outcome:
        assert isinstance(exc, litejobs.StoreError), exc
        assert str(exc) == f"the store for {db!r} belongs to another event loop: connect again in this one"
    run(store.close())  # closing works from any loop


def test_a_store_opened_before_a_fork_says_so_in_the_child(db):
    import warnings

    async def main():
        async with litejobs.connect(db) as store:
            await store.enqueue(Noop())
            read, write = os.pipe()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
            if pid == 0:  # the child
                try:
                    os.close(read)
                    try:
                        message = f"enqueued {asyncio.run(store.enqueue(Noop()))}"
                    except BaseException as exc:
                        message = f"{type(exc).__name__}: {exc}"
                    asyncio.run(store.close())  # leaves the parent's connection alone
                    os.write(write, message.encode())
                finally:
                    os._exit(0)
            os.close(write)
            give_up = time.monotonic() + 10  # a hang fails the test instead of hanging the suite
            while os.waitpid(pid, os.WNOHANG) == (0, 0):
                if time.monotonic() > give_up:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    break
                time.sleep(0.01)
            with os.fdopen(read) as pipe:
                message = pipe.read()
            assert message == (f"StoreError: the store for {db!r} was opened in another process (this one "
                               "was forked from it): connect again in this process")
            assert len(await store.jobs()) == 1  # the parent's store is unharmed

    run(main())


# -- rows edited by hand: refused by the schema, quarantined, never trusted ----


def test_hand_edits_that_would_break_a_job_are_refused_by_the_schema(sqlite_db):
    run(_open_and_close(sqlite_db))
    with litejobs.connect_sync(sqlite_db) as store:
        job_id = store.enqueue(Noop())
    conn = sqlite3.connect(sqlite_db)
    for edit in ["state = 'zombie'", "attempts = -3", "run_at = NULL", "run_at = 'tomorrow'",
                 "backoff = 'random'", "timeout_ms = 0", "max_retries = -1", "priority = 'high'"]:
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute(f"UPDATE litejobs_jobs SET {edit} WHERE id = ?", (job_id,))
    conn.close()


def test_hostile_rows_fail_their_job_and_others_keep_flowing(sqlite_db):
    @dataclass
    class Other(litejobs.Job):
        NAME = "other"
        different: int

        async def run(self, state):
            pass

    async def main():
        async with litejobs.connect(sqlite_db) as store:
            wrong_shape = await store.enqueue(Echo(1))
            renamed = await store.enqueue(Echo(2))
            negative = await store.enqueue(Echo(3))
            weird_backoff = await store.enqueue(Echo(4))
            zombie = await store.enqueue(Echo(5))
            fine = await store.enqueue_many([Echo(i) for i in range(20)])
            edits = [("payload = '[1, 2, 3]'", wrong_shape), ("name = 'other'", renamed),
                     ("attempts = -7", negative), ("backoff = 'random'", weird_backoff), ("state = 'zombie'", zombie)]
            await by_hand(store, "PRAGMA ignore_check_constraints = ON")  # a determined hand editor
            for edit, job_id in edits:
                await by_hand(store, f"UPDATE litejobs_jobs SET {edit} WHERE id = ?", (job_id,))
            await by_hand(store, "PRAGMA ignore_check_constraints = OFF")
            async with litejobs.Worker(store, [Echo, Other], poll_interval=0.01) as worker:
                for job_id in fine:
                    await wait_state(store, job_id, "done")
                errors = {job_id: (await wait_state(store, job_id, "dead")).last_error
                          for job_id in (wrong_shape, renamed, negative, weird_backoff)}
                claims = worker.claims
                await asyncio.sleep(0.3)
                assert worker.claims - claims <= 2  # no spinning on the rows it cannot run
            assert "payload is a list, not an object" in errors[wrong_shape]
            assert "job 'other'" in errors[renamed] and "unexpected keyword argument 'value'" in errors[renamed]
            assert "quarantined: the row was edited by hand and broke its checks: attempts=-7" in errors[negative]
            assert "backoff='random'" in errors[weird_backoff]
            # Quarantined with the others once a write tripped over a broken row.
            assert "state='zombie'" in (await store.get(zombie)).last_error

    run(main())


def test_a_row_can_only_name_a_registered_class(db):
    async def main():
        async with litejobs.connect(db) as store:
            job_id = await store.enqueue(Noop())
            # Someone with write access to the file names a dangerous callable.
            await by_hand(store, "UPDATE litejobs_jobs SET name = 'os.system', "
                                 "payload = '{\"command\": \"touch pwned\"}' WHERE id = ?", (job_id,))
            async with litejobs.Worker(store, [Noop], poll_interval=0.01):
                await asyncio.sleep(0.2)
            assert (await store.get(job_id)).state == "pending"  # never claimed, never imported
            assert not os.path.exists("pwned")

    run(main())


def test_a_hand_edited_time_beyond_datetime_still_reads(capsys, sqlite_db):
    async def main():
        async with litejobs.connect(sqlite_db) as store:
            ids = [await store.enqueue(Noop()) for _ in range(3)]
            # Far future, infinity, far past: none can be a datetime.
            for job_id, run_at in zip(ids, ("1e20", "9e999", "-1e20"), strict=False):
                await by_hand(store, f"UPDATE litejobs_jobs SET run_at = {run_at} WHERE id = {job_id}")
            infos = [await store.get(job_id) for job_id in ids]
            utc_max = datetime.max.replace(tzinfo=timezone.utc)
            assert [info.run_at for info in infos] == [utc_max, utc_max, datetime.min.replace(tzinfo=timezone.utc)]
            assert len(await store.jobs()) == 3
            with pytest.raises(TimeoutError):
                await store.wait(ids[0], timeout=0)
            return ids

    ids = run(main())
    code, out, err = _cli(capsys, "--db", sqlite_db, "jobs")
    assert code == 0 and err == "" and len(out.splitlines()) == 4
    code, out, _ = _cli(capsys, "--db", sqlite_db, "show", str(ids[0]))
    assert code == 0 and "9999-12-31T23:59:59.999999+00:00" in out


def test_a_payload_edited_into_bad_utf8_makes_its_job_dead_and_others_flow(db):
    async def main():
        async with litejobs.connect(db) as store:
            broken, fine = await store.enqueue_many([Echo("broken"), Echo("fine")])
            await by_hand(store, "UPDATE litejobs_jobs SET payload = CAST(x'7b2276616c7565223a22ff227d' AS TEXT) "
                                 "WHERE id = ?", (broken,))
            async with litejobs.Worker(store, [Echo]):
                assert (await wait_state(store, fine, "done")).result == "fine"
                await wait_until(lambda: _state_by_hand(store, broken, "dead"), "the broken job to be dead")

    run(main())


async def _state_by_hand(store, job_id, state):
    return (await by_hand(store, "SELECT state FROM litejobs_jobs WHERE id = ?", (job_id,)))[0][0] == state


# -- enqueueing: unique keys, group commit, bad input, odd names ---------------


def test_enqueue_many_is_one_transaction(db):
    async def main():
        async with litejobs.connect(db) as store:
            ids = await store.enqueue_many([Echo(i) for i in range(50)])
            assert ids == list(range(ids[0], ids[0] + 50))
            assert [(await store.get(i)).payload["value"] for i in ids] == list(range(50))

    run(main())


def test_enqueue_does_not_depend_on_sqlite_sequence(sqlite_db):
    async def main():
        async with litejobs.connect(sqlite_db) as store:
            first = await store.enqueue_many([Echo(1), Echo(2)])
            await by_hand(store, "DELETE FROM sqlite_sequence")  # "reset the counter"
            more = await store.enqueue_many([Echo(3), Echo(4)])
            assert more[0] > first[-1]
            assert [(await store.get(i)).payload["value"] for i in first + more] == [1, 2, 3, 4]

    run(main())


def test_unique_key_returns_the_existing_job_while_pending_or_running(db):
    async def main():
        async with litejobs.connect(db) as store:
            first = await store.enqueue(Echo(1), unique_key="report:42")
            again = await store.enqueue(Echo(2), unique_key="report:42")
            other = await store.enqueue(Echo(3), unique_key="report:43")
            assert again == first and other != first
            assert (await store.get(first)).payload == {"value": 1}
            async with litejobs.Worker(store, [Echo]):
                await wait_state(store, first, "done")
            after_done = await store.enqueue(Echo(4), unique_key="report:42")
            assert after_done not in (first, other)

    run(main())


def test_concurrent_enqueues_share_transactions(sqlite_db, monkeypatch):
    transactions = []
    insert = litejobs._insert_jobs

    def counting_insert(conn, rows, clock):
        transactions.append(len(rows))
        return insert(conn, rows, clock)

    monkeypatch.setattr(litejobs, "_insert_jobs", counting_insert)

    async def main():
        async with litejobs.connect(sqlite_db) as store:
            ids = await asyncio.gather(*(store.enqueue(Echo(i)) for i in range(100)))
            assert len(set(ids)) == 100
            assert [(await store.get(job_id)).payload["value"] for job_id in ids] == list(range(100))
            assert sum(transactions) == 100 and len(transactions) < 10  # group commit

            # A failed transaction fails every caller in it, and stores nothing.
            await fill_the_disk(store)
            results = await asyncio.gather(*(store.enqueue(Echo("x" * 3000)) for _ in range(20)),
                                           return_exceptions=True)
            await make_room_on_the_disk(store)
            assert all(isinstance(r, litejobs.StoreError) for r in results[1:])
            assert len(await store.jobs(limit=1000)) == 100 + sum(isinstance(r, int) for r in results)

    run(main())


def _loop_error_reports():
    """Collect what the running loop would print (such as "Task exception was never retrieved")."""
    reports = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, context: reports.append(context["message"]))
    return reports


def test_one_bad_value_in_a_group_commit_fails_only_its_caller(db):
    async def main():
        async with litejobs.connect(db) as store:
            reports = _loop_error_reports()
            results = await asyncio.gather(
                *(store.enqueue(Echo(i), unique_key="\ud800" if i == 5 else None) for i in range(10)),
                return_exceptions=True)
            assert isinstance(results[5], litejobs.SerializationError), results
            assert "job 'echo': unique_key '\\ud800' is not text a database can store" in str(results[5])
            stored = sorted([(await store.get(r)).payload["value"] for r in results if isinstance(r, int)])
            assert stored == [0, 1, 2, 3, 4, 6, 7, 8, 9]
            gc.collect()
            await asyncio.sleep(0)
            assert reports == []

    run(main())


def test_any_error_in_a_shared_transaction_fails_only_the_caller_whose_rows_caused_it(db, monkeypatch):
    insert = litejobs._insert_jobs

    def picky_insert(conn, rows, clock):
        if any("poison" in row.payload for row in rows):  # not a StoreError: what binding a bad value raises
            raise OverflowError("Python int too large to convert to SQLite INTEGER")
        return insert(conn, rows, clock)

    monkeypatch.setattr(litejobs, "_insert_jobs", picky_insert)

    async def main():
        async with litejobs.connect(db) as store:
            reports = _loop_error_reports()
            results = await asyncio.gather(*(store.enqueue(Echo("poison" if i == 5 else i)) for i in range(10)),
                                           return_exceptions=True)
            assert [type(r).__name__ for r in results] == ["int"] * 5 + ["OverflowError"] + ["int"] * 4
            stored = sorted([(await store.get(r)).payload["value"] for r in results if isinstance(r, int)])
            assert stored == [0, 1, 2, 3, 4, 6, 7, 8, 9]
            gc.collect()
            await asyncio.sleep(0)
            assert reports == []

    run(main())


def test_a_caller_whose_rows_break_a_shared_transaction_fails_alone(db, monkeypatch):
    insert = litejobs._insert_jobs

    def picky_insert(conn, rows, clock):
        if any("poison" in row.payload for row in rows):
            raise sqlite3.IntegrityError("poisoned row")
        return insert(conn, rows, clock)

    monkeypatch.setattr(litejobs, "_insert_jobs", picky_insert)

    async def main():
        async with litejobs.connect(db) as store:
            results = await asyncio.gather(*(store.enqueue(Echo("poison" if i == 5 else i)) for i in range(20)),
                                           return_exceptions=True)
            assert [type(r).__name__ for r in results].count("StoreError") == 1
            assert isinstance(results[5], litejobs.StoreError)
            stored = sorted([(await store.get(r)).payload["value"] for r in results if isinstance(r, int)])
            assert stored == [i for i in range(20) if i != 5]

    run(main())


def test_unencodable_payload_names_job_and_field(db):
    @dataclass
    class Holder(litejobs.Job):
        NAME = "holder"
        fine: int
        bad: object

        async def run(self, state):
            pass

    for bad in (object(), {1, 2}, datetime.now(timezone.utc), 2**70):
        with pytest.raises(litejobs.SerializationError, match="job 'holder', field 'bad'"):
            litejobs.new_job(Holder(1, bad))

    async def main():
        async with litejobs.connect(db) as store:
            with pytest.raises(litejobs.SerializationError):
                await store.enqueue_many([Holder(1, 2), Holder(1, object())])
            assert await store.get(1) is None

    run(main())


@pytest.mark.parametrize("bad, message", [
    ({1: "a"}, "str"),
    (2**64, "Integer exceeds 64-bit range"),
    (float("nan"), "not a JSON number"),
    (object(), "not JSON serializable: object"),
    (b"bytes", "not JSON serializable: bytes"),
])
def test_payloads_json_cannot_carry_are_refused(db, bad, message):
    async def main():
        async with litejobs.connect(db) as store:
            with pytest.raises(litejobs.SerializationError, match=message):
                await store.enqueue(Echo(bad))
            assert await store.jobs() == []

    run(main())


def test_non_finite_floats_are_refused():
    for bad in (float("nan"), float("inf"), [1.0, float("-inf")], {"deep": {"x": float("nan")}}):
        with pytest.raises(litejobs.SerializationError, match="field 'value'.*not a JSON number"):
            litejobs.new_job(Echo(bad))
    assert litejobs.new_job(Echo([None, 1.5])).payload == '{"value":[null,1.5]}'


def test_deep_nesting_is_refused():
    deep = []
    for _ in range(300):
        deep = [deep]
    with pytest.raises(litejobs.SerializationError, match="job 'echo', field 'value': Recursion limit"):
        litejobs.new_job(Echo(deep))


def test_strings_sqlite_cannot_store_are_refused_when_the_job_is_built(db):
    surrogate = "\ud800"

    @dataclass
    class QueueFromPayload(litejobs.Job):
        NAME = "queue_from_payload"
        target: str

        def queue(self):
            return self.target

        async def run(self, state):
            pass

    for build in (lambda: litejobs.new_job(Noop(), queue=surrogate),
                  lambda: litejobs.new_job(Noop(), unique_key="key-" + surrogate),
                  lambda: litejobs.new_job(QueueFromPayload(surrogate))):
        with pytest.raises(litejobs.SerializationError, match="is not text a database can store"):
            build()
    with pytest.raises(litejobs.SerializationError, match="job 'echo', field 'value'"):
        litejobs.new_job(Echo(["fine", surrogate]))
    with pytest.raises(litejobs.JobDefinitionError, match="QUEUE must be a non-empty str a database can store"):
        type("Broken", (litejobs.Job,), {"NAME": "broken", "QUEUE": surrogate})

    async def main():
        async with litejobs.connect(db) as store:
            with pytest.raises(litejobs.SerializationError, match="key '\\\\ud800' is not text a database can store"):
                await store.every(60, Noop(), key=surrogate)
            with pytest.raises(litejobs.SerializationError):
                await store.enqueue(Noop(), queue=surrogate)
            assert await store.jobs() == []

    run(main())


def test_bad_enqueue_arguments_are_clear(db):
    async def main():
        async with litejobs.connect(db) as store:
            with pytest.raises(ValueError, match="aware datetime"):
                await store.schedule(Noop(), at=datetime(2030, 1, 1))
            with pytest.raises(ValueError, match="delay must not be negative"):
                await store.enqueue(Noop(), delay=-1)
            with pytest.raises(ValueError, match="priority must be an int"):
                await store.enqueue(Noop(), priority="high")
            with pytest.raises(TypeError, match="expected a litejobs.Job instance, got str"):
                await store.enqueue("noop")
            assert await store.get(1) is None

    run(main())


def test_bad_priorities_are_refused_even_when_falsy():
    for bad in (None, "", 0.0, [], True, 2**63):
        with pytest.raises(ValueError, match="priority must be an int"):
            litejobs.new_job(Noop(), priority=bad)


def test_options_cannot_change_a_prebuilt_new_job(db):
    async def main():
        async with litejobs.connect(db) as store:
            with pytest.raises(ValueError, match="cannot change a NewJob"):
                await store.enqueue(litejobs.new_job(Noop()), delay=3600)
            assert await store.get(1) is None

    run(main())


def test_due_times_datetime_cannot_read_back_are_refused_at_enqueue(db):
    async def main():
        async with litejobs.connect(db) as store:
            with pytest.raises(ValueError, match="job 'noop': delay of 1e\\+12s is too long: the limit is 3.2e\\+09s"):
                await store.enqueue(Noop(), delay=10**12)
            with pytest.raises(ValueError, match="delay must be seconds or a timedelta"):
                await store.enqueue(Noop(), delay=10**400)  # beyond any float
            with pytest.raises(ValueError, match="job 'noop': run_at 9999-12-31T23:59:00\\+00:00 is too late: due "
                                                 "times must be before the year 9000"):
                await store.schedule(Noop(), at=datetime(9999, 12, 31, 23, 59, tzinfo=timezone.utc))
            with pytest.raises(ValueError, match="interval of 1e\\+12s is too long"):
                await store.every(10**12, Noop())
            assert await store.jobs() == []
            # Up to the limits, every due time reads back.
            await store.enqueue(Noop(), delay=litejobs._MAX_DELAY)
            last = datetime(8999, 12, 31, 23, 59, tzinfo=timezone.utc)
            assert (await store.get(await store.schedule(Noop(), at=last))).run_at == last
            assert len(await store.jobs()) == 2

    run(main())


def test_odd_names_keys_and_queues_are_stored_and_matched_literally(db):
    odd = ["it's", 'say "hi"', "100%", "a_b", "%", "_", "x" * 10_000, "'; DROP TABLE litejobs_jobs; --", "?", "?1"]

    async def main():
        async with litejobs.connect(db) as store:
            ids = {}
            for text in odd:
                job_class = type("Odd", (Echo,), {"NAME": text})
                job_class = dataclass(job_class)
                ids[text] = (await store.enqueue(job_class(text), queue=text, unique_key=text), job_class)
            for text, (job_id, job_class) in ids.items():
                assert await store.enqueue(job_class("again"), queue=text, unique_key=text) == job_id
                info = await store.get(job_id)
                assert (info.name, info.queue, info.unique_key, info.payload["value"]) == (text, text, text, text)
                assert [j.id for j in await store.jobs(name=text, queue=text)] == [job_id]
            classes = [cls for _, cls in ids.values()]
            async with litejobs.Worker(store, classes, queues=odd, poll_interval=0.01):
                for job_id, _ in ids.values():
                    await wait_state(store, job_id, "done")
            assert set(await store.stats()) == set(odd)
            # A NUL character no PostgreSQL text can hold: refused on both
            # stores, so that jobs can always move from one to the other.
            for options in ({"queue": "nul\x00byte"}, {"unique_key": "nul\x00byte"}):
                with pytest.raises(litejobs.SerializationError, match="a lone surrogate or a NUL character"):
                    await store.enqueue(Echo(1), **options)
            with pytest.raises(ValueError, match="no NUL"):
                await store.jobs(name="nul\x00byte")
        with pytest.raises(litejobs.JobDefinitionError, match="no NUL"):
            type("Nul", (Echo,), {"NAME": "nul\x00byte"})

    run(main())


# -- claiming: which job runs next, and when -----------------------------------


def test_priority_then_due_time_then_insertion_order(db):
    clock = FakeClock()
    order = []

    @dataclass
    class Ordered(litejobs.Job):
        NAME = "ordered"
        label: str

        async def run(self, state):
            order.append(self.label)

    async def main():
        async with litejobs.connect(db, clock=clock) as store:
            await store.enqueue(Ordered("low"), priority=-1)
            await store.enqueue(Ordered("normal-2"))
            await store.enqueue(Ordered("normal-1"), run_at=datetime.fromtimestamp(T0 - 10, timezone.utc))
            await store.enqueue(Ordered("normal-3"))
            await store.enqueue(Ordered("high"), priority=10)
            async with litejobs.Worker(store, [Ordered], concurrency=1):
                await wait_until(lambda: _true_when(len(order) == 5), "all five ran")
        assert order == ["high", "normal-1", "normal-2", "normal-3", "low"]

    run(main())


def test_job_not_claimed_before_it_is_due(db):
    clock = FakeClock()

    async def main():
        async with litejobs.connect(db, clock=clock) as store:
            job_id = await store.enqueue(Noop(), delay=60)
            answer = await round_trip(store, wants={"default": 10}, names=["noop"])
            assert answer.claimed["default"] == [] and answer.next_due == T0 + 60
            clock.advance(60)
            assert [row.id for row in await claim(store, 10, ["noop"])] == [job_id]

    run(main())


def test_delayed_job_starts_when_due(db):
    clock = FakeClock()

    async def main():
        async with litejobs.connect(db, clock=clock) as store:
            job_id = await store.enqueue(Noop(), delay=3600)
            async with litejobs.Worker(store, [Noop], poll_interval=0.01) as worker:
                claims = worker.claims
                await asyncio.sleep(0.1)
                assert (await store.get(job_id)).state == "pending"
                clock.advance(3600)
                await wait_state(store, job_id, "done")
                assert worker.claims > claims

    run(main())


def test_claim_that_waited_for_the_lock_starts_at_the_time_it_got_it(sqlite_db):
    clock = FakeClock()

    async def main():
        async with litejobs.connect(sqlite_db, clock=clock) as store:
            job_id = await store.enqueue(Noop(), delay=50)
            async with litejobs.Worker(store, [Noop], poll_interval=0.01) as worker:
                # Its first round trip has come back (a claim counts when it is sent).
                await wait_until(lambda: _true_when(worker._planner.next_due == T0 + 50), "the worker to be up")
                blocker = sqlite3.connect(sqlite_db, isolation_level=None)
                blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
                clock.advance(50)  # the job falls due; a claim waits for the lock
                await wait_until(lambda: _true_when(worker._in_flight is not None and worker._in_flight[0].wants),
                                 "a claim waiting for the lock")
                await asyncio.sleep(0.1)
                clock.advance(100)  # time passes while the claim waits
                blocker.execute("COMMIT")
                blocker.close()
                info = await wait_state(store, job_id, "done")
            assert info.started_at.timestamp() == T0 + 150

    run(main())


def test_unknown_names_stay_pending_and_do_not_spin(db):
    @dataclass
    class FromNewerRelease(litejobs.Job):
        NAME = "from_newer_release"

        async def run(self, state):
            pass

    async def main():
        async with litejobs.connect(db) as store:
            unknown = await store.enqueue(FromNewerRelease())
            known = await store.enqueue(Noop())
            async with litejobs.Worker(store, [Noop], poll_interval=0.01) as worker:
                await wait_state(store, known, "done")
                await asyncio.sleep(0.05)
                claims = worker.claims
                await asyncio.sleep(0.3)  # thirty poll intervals
                assert worker.claims == claims
            assert (await store.get(unknown)).state == "pending"

    run(main())


def test_claim_uses_the_index_not_a_scan(sqlite_db):
    run(_open_and_close(sqlite_db))
    conn = sqlite3.connect(sqlite_db)
    plan = conn.execute("EXPLAIN QUERY PLAN " + litejobs._sql_claim(1, 0), (T0, "default", 10, "a")).fetchall()
    text = " | ".join(row[-1] for row in plan)
    assert "USING INDEX litejobs_jobs_claimable (queue=? AND name=?)" in text
    # A key's running jobs are counted from their own index.
    assert "USING INDEX litejobs_jobs_running_key (concurrency_key=?)" in text
    assert "SCAN litejobs_jobs" not in text and "SCAN r" not in text, text


def test_claim_never_walks_past_jobs_of_names_the_worker_does_not_know(sqlite_db):
    # Each name's best N come straight from the index; only those few rows
    # are sorted together.  (bench_litejobs.py measures the cost.)
    run(_open_and_close(sqlite_db))
    conn = sqlite3.connect(sqlite_db)
    plan = conn.execute("EXPLAIN QUERY PLAN " + litejobs._sql_claim(3, 0),
                        (T0, "default", 10, "a", "b", "c")).fetchall()
    searches = sorted(row[-1] for row in plan if "litejobs_jobs" in row[-1])
    assert searches == ["SEARCH litejobs_jobs USING INDEX litejobs_jobs_claimable (queue=? AND name=?)"] * 3 \
        + ["SEARCH litejobs_jobs USING INTEGER PRIMARY KEY (rowid=?)",
           "SEARCH r USING INDEX litejobs_jobs_running_key (concurrency_key=?)"], plan

    async def main():  # and it still takes the best jobs across names
        async with litejobs.connect(sqlite_db, clock=FakeClock()) as store:
            low = await store.enqueue(Noop(), priority=1)
            high = await store.enqueue(Echo(1), priority=5)
            await store.enqueue_many([AlwaysFails()] * 50, priority=9)  # a name nobody asks for
            claimed = await claim(store, 2, ["echo", "noop"])
            assert [row.id for row in claimed] == [high, low]

    run(main())


# -- the worker: running jobs, wake-ups and concurrency ------------------------


def test_job_runs_with_state_context_and_result(db):
    seen = {}

    @dataclass
    class Inspect(litejobs.Job):
        NAME = "inspect"
        x: int

        async def run(self, state):
            ctx = litejobs.current()
            seen.update(state=state, id=ctx.id, attempt=ctx.attempt, queue=ctx.queue, store=ctx.store)
            return {"double": self.x * 2}

    async def main():
        async with litejobs.connect(db) as store:
            job_id = await store.enqueue(Inspect(21))
            async with litejobs.Worker(store, [Inspect], state="app-state"):
                info = await wait_state(store, job_id, "done")
            assert info.result == {"double": 42} and info.attempts == 1
            assert info.started_at is not None and info.finished_at is not None
            assert seen == dict(state="app-state", id=job_id, attempt=1, queue="default", store=store)

    run(main())


def test_state_factory_receives_the_store(db):
    got = []

    @dataclass
    class UsesState(litejobs.Job):
        NAME = "uses_state"

        async def run(self, state):
            got.append(state)

    async def make_state(store):
        return {"store": store}

    async def main():
        async with litejobs.connect(db) as store:
            job_id = await store.enqueue(UsesState())
            async with litejobs.Worker(store, [UsesState], state=make_state):
                await wait_state(store, job_id, "done")
            assert got == [{"store": store}]

    run(main())


def test_sync_run_goes_to_a_thread(db):
    threads = []

    @dataclass
    class Blocking(litejobs.Job):
        NAME = "blocking"

        def run(self, state):
            threads.append((threading.current_thread().name, litejobs.current().id))
            return "from thread"

    async def main():
        async with litejobs.connect(db) as store:
            job_id = await store.enqueue(Blocking())
            async with litejobs.Worker(store, [Blocking]):
                info = await wait_state(store, job_id, "done")
            assert info.result == "from thread"
            assert threads[0][0] != threading.current_thread().name and threads[0][1] == job_id

    run(main())


def test_span_is_entered_around_run_sync_and_async(db):
    log = []

    class SyncSpan:
        def __enter__(self):
            log.append("enter sync")

        def __exit__(self, *exc):
            log.append("exit sync")

    class AsyncSpan:
        async def __aenter__(self):
            log.append("enter async")

        async def __aexit__(self, *exc):
            log.append("exit async")

    @dataclass
    class Traced(litejobs.Job):
        NAME = "traced"
        use_async: bool

        def span(self):
            return AsyncSpan() if self.use_async else SyncSpan()

        async def run(self, state):
            log.append("run")

    async def main():
        async with litejobs.connect(db) as store:
            a = await store.enqueue(Traced(False))
            async with litejobs.Worker(store, [Traced], concurrency=1):
                await wait_state(store, a, "done")
                b = await store.enqueue(Traced(True))
                await wait_state(store, b, "done")
        assert log == ["enter sync", "run", "exit sync", "enter async", "run", "exit async"]

    run(main())


def test_undecodable_payload_is_dead_at_once(db):
    @dataclass
    class V1(litejobs.Job):
        NAME = "versioned"
        old_field: int

        async def run(self, state):
            pass

    @dataclass
    class V2(litejobs.Job):
        NAME = "versioned"
        new_field: int

        async def run(self, state):
            pass

    async def main():
        async with litejobs.connect(db) as store:
            old = await store.enqueue(V1(1))
            garbled = await store.enqueue(V2(2))
            ok = await store.enqueue(V2(3))
            await by_hand(store, "UPDATE litejobs_jobs SET payload = '{not json' WHERE id = ?", (garbled,))
            async with litejobs.Worker(store, [V2]):
                info_old = await wait_state(store, old, "dead")
                info_garbled = await wait_state(store, garbled, "dead")
                await wait_state(store, ok, "done")
            assert info_old.attempts == 1
            assert "cannot decode the payload of job 'versioned'" in info_old.last_error
            assert "old_field" in info_old.last_error
            assert "JSONDecodeError" in info_garbled.last_error

    run(main())


def test_bad_worker_options_are_clear(db):
    async def main():
        async with litejobs.connect(db) as store:
            with pytest.raises(ValueError, match="poll_interval must be more than 0"):
                litejobs.Worker(store, [Noop], poll_interval=0)
            with pytest.raises(ValueError, match="concurrency for queue 'default' must be an int >= 1"):
                litejobs.Worker(store, [Noop], concurrency=0)
            with pytest.raises(TypeError, match="queues must be a list"):
                litejobs.Worker(store, [Noop], queues="email")

    run(main())


def test_queues_and_concurrency_limits(db):
    peak = {"email": 0, "default": 0}
    running = {"email": 0, "default": 0}

    @dataclass
    class Counted(litejobs.Job):
        NAME = "counted"

        async def run(self, state):
            queue = litejobs.current().queue
            running[queue] += 1
            peak[queue] = max(peak[queue], running[queue])
            await asyncio.sleep(0.01)
            running[queue] -= 1

    async def main():
        async with litejobs.connect(db) as store:
            ids = await store.enqueue_many([Counted() for _ in range(12)], queue="email")
            ids += await store.enqueue_many([Counted() for _ in range(12)])
            ignored = await store.enqueue(Counted(), queue="nobody_serves_this")
            async with litejobs.Worker(store, [Counted], concurrency={"email": 2}):
                for job_id in ids:
                    await wait_state(store, job_id, "done")
            assert peak == {"email": 2, "default": 4}
            assert (await store.get(ignored)).state == "pending"

    run(main())


def test_wakes_at_once_for_a_job_enqueued_in_process(db):
    async def main():
        async with litejobs.connect(db) as store:
            async with litejobs.Worker(store, [Noop], poll_interval=3600):
                await asyncio.sleep(0.05)  # idle, waiting on an hour-long poll
                job_id = await store.enqueue(Noop())
                await wait_state(store, job_id, "done", timeout=10)

    run(main())


@pytest.mark.parametrize("watch", ["kernel notices", "stat"])
def test_sees_a_job_enqueued_by_another_connection(db, monkeypatch, watch):
    # No housekeeping pass after the first: only the watcher can see it,
    # told by the kernel (inotify, on Linux) or looking at the -wal file.
    monkeypatch.setattr(litejobs, "_WATCHDOG_INTERVAL", 3600)
    if watch == "stat":
        monkeypatch.setattr(litejobs, "_file_change_notices", lambda path: None)
    elif not sys.platform.startswith("linux"):
        pytest.skip("kernel notices are read on Linux only")

    async def main():
        async with litejobs.connect(db) as store, litejobs.connect(db) as other:
            async with litejobs.Worker(store, [Noop], poll_interval=0.02):
                await asyncio.sleep(0.05)
                job_id = await other.enqueue(Noop())
                await wait_state(store, job_id, "done")

    run(main())


def test_worker_on_a_relative_path_still_sees_other_processes_after_chdir(tmp_path, monkeypatch):
    monkeypatch.setattr(litejobs, "_WATCHDOG_INTERVAL", 3600)  # only the watcher can see it
    monkeypatch.chdir(tmp_path)

    async def main():
        async with litejobs.connect("relative.db") as store:
            async with litejobs.Worker(store, [Noop], poll_interval=0.01):
                await asyncio.sleep(0.05)
                os.chdir("/")
                async with litejobs.connect(str(tmp_path / "relative.db")) as other:
                    job_id = await other.enqueue(Noop())
                await wait_state(store, job_id, "done")

    run(main())


def test_retry_retry_dead_and_every_wake_the_stores_own_workers_at_once(db):
    failed = set()

    @dataclass
    class FailsOnce(litejobs.Job):
        NAME = "fails_once"
        MAX_RETRIES = litejobs.Count(0)
        tag: str

        async def run(self, state):
            if self.tag not in failed:
                failed.add(self.tag)
                raise RuntimeError(f"{self.tag} fails the first time")

    async def main():
        async with litejobs.connect(db) as store:
            first, second = await store.enqueue(FailsOnce("first")), await store.enqueue(FailsOnce("second"))
            # An idle worker that only looks at the file every 30 s: only a
            # wake-up from the store can get it to claim sooner.
            async with litejobs.Worker(store, [FailsOnce, Noop], poll_interval=30):
                await wait_state(store, first, "dead")
                await wait_state(store, second, "dead")
                await asyncio.sleep(0.1)
                await store.retry(first)
                await wait_state(store, first, "done", timeout=10)
                await store.retry_dead()
                await wait_state(store, second, "done", timeout=10)
                await store.every(3600, Noop())
                await wait_until(lambda: store.jobs(name="noop", state="done"), "the first tick to run", timeout=10)

    run(main())


def test_idle_worker_writes_nothing(sqlite_db):
    async def main():
        async with litejobs.connect(sqlite_db) as store:
            await store.enqueue(Noop(), delay=3600)
            job_id = await store.enqueue(Noop())
            async with litejobs.Worker(store, [Noop], poll_interval=0.01):
                await wait_state(store, job_id, "done")
                observer = sqlite3.connect(sqlite_db)
                before = observer.execute("PRAGMA data_version").fetchone()[0]
                await asyncio.sleep(WATCHDOG_INTERVAL * 1.5)  # polls and a watchdog pass
                after = observer.execute("PRAGMA data_version").fetchone()[0]
                observer.close()
            assert before == after

    run(main())


def test_saturated_worker_does_not_spin_when_a_job_falls_due(db):
    calls = []
    clock = FakeClock()

    def counting_clock():
        calls.append(1)
        return clock()

    @dataclass
    class Busy(litejobs.Job):
        NAME = "busy"

        async def run(self, state):
            await asyncio.sleep(30)

    async def main():
        async with litejobs.connect(db, clock=counting_clock) as store:
            busy = await store.enqueue(Busy())
            await store.enqueue(Busy(), delay=10)
            async with litejobs.Worker(store, [Busy], concurrency=1, poll_interval=0.02, shutdown_timeout=0):
                await wait_state(store, busy, "running")
                clock.advance(20)  # the second job is due, but the only slot is taken
                await asyncio.sleep(0.05)
                before = len(calls)
                await asyncio.sleep(0.3)
                # A spinning loop reads the clock tens of thousands of times here.
                assert len(calls) - before < 500

    run(main())


# -- failures: retries, backoff and timeouts -----------------------------------


@pytest.mark.parametrize("max_retries, attempts", [(litejobs.Count(0), 1), (litejobs.Count(2), 3)])
def test_count_n_allows_n_retries(db, max_retries, attempts):
    Failing = failing_job(max_retries)

    async def main():
        async with litejobs.connect(db) as store:
            job_id = await store.enqueue(Failing())
            async with litejobs.Worker(store, [Failing], poll_interval=0.01):
                info = await wait_state(store, job_id, "dead")
            assert info.attempts == attempts
            assert f"RuntimeError: failure number {attempts}" in info.last_error
            assert "Traceback (most recent call last)" in info.last_error
            assert info.finished_at is not None

    run(main())


def test_infinite_keeps_retrying(db):
    Failing = failing_job(litejobs.Infinite)

    async def main():
        async with litejobs.connect(db) as store:
            job_id = await store.enqueue(Failing())
            async with litejobs.Worker(store, [Failing], poll_interval=0.01):
                async def many_attempts():
                    info = await store.get(job_id)
                    return info if info.attempts >= 12 else None

                info = await wait_until(many_attempts, "12 attempts")
            assert info.state in ("pending", "running")
            assert (await store.get(job_id)).state == "pending"

    run(main())


def test_exponential_backoff_schedule_with_injected_time(db):
    clock = FakeClock()

    async def main():
        async with litejobs.connect(db, clock=clock) as store:
            job_id = await store.enqueue(AlwaysFails())
            async with litejobs.Worker(store, [AlwaysFails], poll_interval=0.01):
                for failures, delay in [(1, 2), (2, 4), (3, 8)]:
                    info = await wait_state(store, job_id, "pending", attempts=failures)
                    # Counted from the moment the failure was recorded: the
                    # frozen clock's "now".
                    assert info.run_at.timestamp() == clock.now + delay
                    clock.advance(delay)
                info = await wait_state(store, job_id, "dead", attempts=4)
            assert "ValueError: boom" in info.last_error

    run(main())


def test_linear_backoff_schedule_with_injected_time(db):
    clock = FakeClock()
    Failing = failing_job(litejobs.Count(2), litejobs.Linear(30))

    async def main():
        async with litejobs.connect(db, clock=clock) as store:
            job_id = await store.enqueue(Failing())
            async with litejobs.Worker(store, [Failing], poll_interval=0.01):
                for failures in (1, 2):
                    info = await wait_state(store, job_id, "pending", attempts=failures)
                    assert info.run_at.timestamp() == clock.now + 30
                    clock.advance(31)
                await wait_state(store, job_id, "dead", attempts=3)

    run(main())


def test_abort_makes_the_job_dead_at_once(db):
    @dataclass
    class Gives_up(litejobs.Job):
        NAME = "gives_up"
        MAX_RETRIES = litejobs.Count(5)

        async def run(self, state):
            raise litejobs.Abort("the account was deleted")

    async def main():
        async with litejobs.connect(db) as store:
            job_id = await store.enqueue(Gives_up())
            async with litejobs.Worker(store, [Gives_up]):
                info = await wait_state(store, job_id, "dead")
            assert info.attempts == 1 and "Abort: the account was deleted" in info.last_error

    run(main())


def test_retry_reschedules_with_its_own_delay_and_counts(db):
    clock = FakeClock()

    @dataclass
    class Later(litejobs.Job):
        NAME = "later"
        MAX_RETRIES = litejobs.Count(1)
        BACKOFF = litejobs.Linear(1)

        async def run(self, state):
            raise litejobs.Retry(delay=timedelta(minutes=5))

    async def main():
        async with litejobs.connect(db, clock=clock) as store:
            job_id = await store.enqueue(Later())
            async with litejobs.Worker(store, [Later], poll_interval=0.01):
                info = await wait_state(store, job_id, "pending", attempts=1)
                assert info.run_at.timestamp() == clock.now + 300
                clock.advance(300)
                info = await wait_state(store, job_id, "dead", attempts=2)
            assert "Retry: retry requested in 300s" in info.last_error

    run(main())


def test_a_retry_due_while_a_round_trip_is_late_is_still_claimed(db, monkeypatch):
    clock = FakeClock()
    Failing = failing_job(litejobs.Count(1), litejobs.Linear(1))
    real_exchange = litejobs._exchange
    late = []

    def exchange_reaching_the_store_late(conn, request, clock_, **options):
        waiting = conn.execute("SELECT state, attempts FROM litejobs_jobs").fetchone() == ("pending", 1)
        # The first trip after the failure, whatever it asks (a housekeeping
        # trip also claims now; the planner's own test covers one that does not).
        if waiting and not late:
            late.append(request)
            clock.advance(2)  # the trip arrives after the retry fell due
        return real_exchange(conn, request, clock_, **options)

    monkeypatch.setattr(litejobs, "_exchange", exchange_reaching_the_store_late)

    async def main():
        async with litejobs.connect(db, clock=clock) as store:
            job_id = await store.enqueue(Failing())
            async with litejobs.Worker(store, [Failing]):
                await wait_state(store, job_id, "dead", attempts=2)
            assert late

    run(main())


def test_error_text_with_a_nul_character_is_kept_whole(db):
    @dataclass
    class Nul(litejobs.Job):
        NAME = "nul_error"
        MAX_RETRIES = litejobs.Count(0)

        async def run(self, state):
            raise ValueError("before\x00after")

    async def main():
        async with litejobs.connect(db) as store:
            job_id = await store.enqueue(Nul())
            async with litejobs.Worker(store, [Nul]):
                info = await wait_state(store, job_id, "dead")
            assert "before\\x00after" in info.last_error

    run(main())


def test_error_text_with_an_undecodable_file_name_is_kept_and_the_worker_goes_on(db):
    file_name = os.fsdecode(b"caf\xe9.txt")  # Python's own name for an undecodable file: a lone surrogate

    @dataclass
    class Surrogates(litejobs.Job):
        NAME = "surrogates"
        MAX_RETRIES = litejobs.Count(0)
        how: str

        async def run(self, state):
            if self.how == "raise":
                raise ValueError(f"cannot process {file_name}")
            if self.how == "abort":
                raise litejobs.Abort(f"bad file {file_name}")
            raise litejobs.Retry(0, f"again {file_name}")

    async def main():
        async with litejobs.connect(db) as store:
            ids = [await store.enqueue(Surrogates(how)) for how in ("raise", "abort", "retry")]
            after = await store.enqueue(Echo("still serving"))
            async with litejobs.Worker(store, [Surrogates, Echo]):
                for job_id in ids:
                    info = await wait_state(store, job_id, "dead", attempts=1)
                    assert "caf\\udce9.txt" in info.last_error
                assert (await wait_state(store, after, "done")).result == "still serving"

    run(main())


def test_timeout_cancels_then_retries_then_dead(db):
    cancelled = []

    @dataclass
    class Slow(litejobs.Job):
        NAME = "slow"
        TIMEOUT = 50
        MAX_RETRIES = litejobs.Count(1)
        BACKOFF = litejobs.Linear(0)

        async def run(self, state):
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.append(litejobs.current().attempt)
                raise

    async def main():
        async with litejobs.connect(db) as store:
            events = []
            store.on_event(lambda e: events.append(e.kind))
            job_id = await store.enqueue(Slow())
            async with litejobs.Worker(store, [Slow], poll_interval=0.01):
                info = await wait_state(store, job_id, "dead", attempts=2)
            assert "exceeded its timeout of 50 ms" in info.last_error
            assert cancelled == [1, 2]
            assert events == ["enqueue", "start", "timeout", "retry", "start", "timeout", "death"]

    run(main())


def test_job_ignoring_cancellation_still_times_out_and_frees_its_slot(db):
    kept_going = []

    @dataclass
    class Stubborn(litejobs.Job):
        NAME = "stubborn"
        TIMEOUT = 50
        MAX_RETRIES = litejobs.Count(0)

        async def run(self, state):
            try:
                await asyncio.sleep(1)
            except asyncio.CancelledError:
                await asyncio.sleep(1)  # swallows the cancellation and carries on
                kept_going.append(True)

    async def main():
        async with litejobs.connect(db) as store:
            stubborn = await store.enqueue(Stubborn())
            after = await store.enqueue(Noop())
            async with litejobs.Worker(store, [Stubborn, Noop], concurrency=1, shutdown_timeout=0):
                info = await wait_state(store, stubborn, "dead")
                await wait_state(store, after, "done")  # the one slot was handed on
                assert not kept_going  # the job is still going, yet its failure is recorded
            assert "exceeded its timeout of 50 ms" in info.last_error

    run(main())


def test_job_blocking_the_event_loop_past_its_timeout_fails(db):
    @dataclass
    class Blocker(litejobs.Job):
        NAME = "blocker"
        TIMEOUT = 50
        MAX_RETRIES = litejobs.Count(0)

        async def run(self, state):
            time.sleep(0.2)  # a sync call inside async def: the loop is blocked
            return "too late"

    async def main():
        async with litejobs.connect(db) as store:
            job_id = await store.enqueue(Blocker())
            async with litejobs.Worker(store, [Blocker]):
                info = await wait_state(store, job_id, "dead")
            assert "exceeded its timeout of 50 ms" in info.last_error and "blocking the event loop" in info.last_error
            assert info.result is None

    run(main())


def test_stuck_sync_job_does_not_hold_up_the_next(db):
    release = threading.Event()

    @dataclass
    class Stuck(litejobs.Job):
        NAME = "stuck"
        TIMEOUT = 100
        MAX_RETRIES = litejobs.Count(0)

        def run(self, state):
            release.wait(10)

    @dataclass
    class Quick(litejobs.Job):
        NAME = "quick"

        def run(self, state):
            return "quick"

    async def main():
        async with litejobs.connect(db) as store:
            stuck = await store.enqueue(Stuck())
            quick = await store.enqueue(Quick())
            async with litejobs.Worker(store, [Stuck, Quick], concurrency=1):
                assert "exceeded its timeout" in (await wait_state(store, stuck, "dead")).last_error
                info = await wait_state(store, quick, "done")
            release.set()
            assert (info.attempts, info.result) == (1, "quick")

    run(main())


# -- the watchdog, fencing and clock steps -------------------------------------


def test_fencing_a_late_outcome_changes_nothing(db, monkeypatch):
    clock = FakeClock()
    # Attempt 1 stands for a process that froze: it never re-expresses its
    # deadline, so the watchdog may take its job away.
    monkeypatch.setattr(litejobs, "_CLOCK_STEP", float("inf"))
    release_first = asyncio.Event
    runs = []

    @dataclass
    class Frozen(litejobs.Job):
        NAME = "frozen"
        TIMEOUT = 60_000
        BACKOFF = litejobs.Linear(0)

        async def run(self, state):
            attempt = litejobs.current().attempt
            runs.append(attempt)
            await state[attempt].wait()  # attempt 1 stands for a process that froze
            return f"result of attempt {attempt}"

    async def main():
        release = {1: release_first(), 2: release_first()}
        async with litejobs.connect(db, clock=clock) as store:
            job_id = await store.enqueue(Frozen())
            async with litejobs.Worker(store, [Frozen], state=release, poll_interval=0.01):
                await wait_state(store, job_id, "running", attempts=1)
                clock.advance(61 + WATCHDOG_GRACE)
                # Another worker's watchdog sees the attempt expired, and
                # again once it has stayed so: it takes the job away.
                reaped = await reap_expired(store)
                assert [e.job_id for e in reaped] == [job_id]
                info = await wait_state(store, job_id, "running", attempts=2)
                assert "failed by the watchdog" in info.last_error
                release[1].set()  # attempt 1 comes back late, while attempt 2 owns the row
                await asyncio.sleep(0.1)
                info = await store.get(job_id)
                assert (info.state, info.attempts, info.result) == ("running", 2, None)
                release[2].set()
                info = await wait_state(store, job_id, "done", attempts=2)
            info = await store.get(job_id)
            assert (info.state, info.attempts, info.result) == ("done", 2, "result of attempt 2")
            assert runs == [1, 2]

    run(main())


def test_own_outcome_wins_over_the_watchdog_in_one_batch(db):
    clock = FakeClock()

    async def main():
        async with litejobs.connect(db, clock=clock) as store:
            job_id = await store.enqueue(Echo(42))
            [row] = await claim(store, 1, ["echo"])
            clock.advance(60)  # the outcome reaches the store after the deadline
            answer = await round_trip(store, outcomes=[success(row, result="42")], names=["echo"], housekeeping=True)
            assert [(o.event, o.state) for o in answer.written] == [("success", "done")]
            info = await store.get(job_id)
            assert (info.state, info.result, info.attempts) == ("done", 42, 1)
            stats = (await store.stats())["default"]
            assert (stats.done_counts.all_time, stats.dead_counts.all_time) == (1, 0)

    run(main())


def test_a_wall_clock_step_forward_never_gets_a_live_attempt_reaped(db):
    clock = FakeClock()
    runs = []

    @dataclass
    class Long(litejobs.Job):
        NAME = "long"
        TIMEOUT = 60_000

        async def run(self, state):
            runs.append(litejobs.current().attempt)
            state.started.set()
            await state.release.wait()

    async def main():
        state = type("State", (), {})()
        state.started, state.release = asyncio.Event(), asyncio.Event()
        async with litejobs.connect(db, clock=clock) as store:
            job_id = await store.enqueue(Long())
            async with litejobs.Worker(store, [Long], state=state):
                await state.started.wait()
                clock.advance(120)  # the wall clock steps two minutes ahead: the deadline looks gone
                async with litejobs.Worker(store, [Long], state=state):  # another worker's watchdog looks
                    await asyncio.sleep(WATCHDOG_CONFIRM + 3 * WATCHDOG_INTERVAL)
                assert ((await store.get(job_id)).state, runs) == ("running", [1])
                state.release.set()
                await wait_state(store, job_id, "done", attempts=1)
        assert runs == [1]

    run(main())


def test_a_job_due_at_once_before_the_clock_stepped_back_runs_when_the_clock_catches_up(db):
    clock = FakeClock()

    async def main():
        async with litejobs.connect(db, clock=clock) as store:
            job_id = await store.enqueue(Echo("on time"))  # due at once, at T0
            clock.advance(-5)  # the wall clock steps back: the job is due in 5 s
            async with litejobs.Worker(store, [Echo]) as worker:
                # Its first claim has come back empty-handed: the job is not due yet.
                await wait_until(lambda: _true_when(not worker._planner.to_ask), "a first look")
                await asyncio.sleep(0.2)  # the echoes of its own first writes have woken it and gone
                assert (await store.get(job_id)).state == "pending"
                clock.advance(6)  # the clock has caught up: no wake-up says so, housekeeping looks
                assert (await wait_state(store, job_id, "done")).result == "on time"

    run(main())


def test_a_wall_clock_step_backward_does_not_pause_the_watchdog(db):
    clock = FakeClock()

    @dataclass
    class Quick(litejobs.Job):
        NAME = "quick"
        TIMEOUT = 1000
        BACKOFF = litejobs.Linear(3600)

        async def run(self, state):
            return None

    async def main():
        async with litejobs.connect(db, clock=clock) as store:
            async with litejobs.Worker(store, [Noop]) as worker:
                # Its first housekeeping is behind it: the next is due by the schedule.
                await wait_until(lambda: _true(worker._planner.next_housekeeping > 0), "a first housekeeping")
                clock.advance(-600)  # the wall clock steps ten minutes back
                # A process that claims a job and dies at once.
                job_id = await store.enqueue(Quick())
                await claim(store, 1, ["quick"])
                clock.advance(1 + WATCHDOG_GRACE)
                info = await wait_state(store, job_id, "pending", attempts=1)
                assert "failed by the watchdog" in info.last_error

    run(main())


# -- stopping: graceful stop, signals, cancelling run() ------------------------


def test_graceful_stop_returns_running_job_unspent(db):
    started = []

    @dataclass
    class Long(litejobs.Job):
        NAME = "long"

        async def run(self, state):
            started.append(1)
            await asyncio.sleep(60)

    async def main():
        async with litejobs.connect(db) as store:
            job_id = await store.enqueue(Long())
            worker = litejobs.Worker(store, [Long], shutdown_timeout=0.1)
            task = asyncio.ensure_future(worker.run())
            await wait_state(store, job_id, "running", attempts=1)
            worker.stop()
            await asyncio.wait_for(task, 10)  # run() returns normally
            info = await store.get(job_id)
            assert (info.state, info.attempts) == ("pending", 0)

    run(main())


def test_graceful_stop_lets_short_jobs_finish(db):
    @dataclass
    class Short(litejobs.Job):
        NAME = "short"

        async def run(self, state):
            await asyncio.sleep(0.2)
            return "finished"

    async def main():
        async with litejobs.connect(db) as store:
            job_id = await store.enqueue(Short())
            async with litejobs.Worker(store, [Short], shutdown_timeout=10):
                await wait_state(store, job_id, "running")
            info = await store.get(job_id)
            assert (info.state, info.result) == ("done", "finished")

    run(main())


def test_graceful_stop_waits_for_a_thread_job_rather_than_run_it_twice(db, caplog):
    release = threading.Event()
    runs = []

    @dataclass
    class InAThread(litejobs.Job):
        NAME = "in_a_thread"
        TIMEOUT = 30_000

        def run(self, state):
            runs.append(litejobs.current().attempt)
            release.wait(20)
            return "finished"

    async def main():
        async with litejobs.connect(db) as store:
            job_id = await store.enqueue(InAThread())
            async with litejobs.Worker(store, [InAThread], shutdown_timeout=0.05) as worker:
                await wait_state(store, job_id, "running")
                worker.stop()

                async def shutdown_timeout_passed():
                    return any("shutdown timeout" in record.getMessage() for record in caplog.records)

                await wait_until(shutdown_timeout_passed, "the shutdown timeout to pass")
                release.set()  # the thread could not be stopped; it finishes now
            info = await store.get(job_id)
            assert (info.state, info.attempts, info.result) == ("done", 1, "finished")
            assert runs == [1]

    with caplog.at_level("WARNING", logger="litejobs"):
        run(main())


def test_stop_before_the_worker_task_starts_is_not_lost(db):
    async def main():
        async with litejobs.connect(db) as store:
            worker = litejobs.Worker(store, [Noop])
            async with worker:
                pass  # the block ends before run() ever got the loop
            assert worker._task.done()

    run(main())


def test_stopping_worker_gives_up_on_a_store_that_keeps_failing(db):
    @dataclass
    class Short(litejobs.Job):
        NAME = "short_job"

        async def run(self, state):
            await asyncio.sleep(0.05)

    async def main():
        async with litejobs.connect(db) as store:
            job_id = await store.enqueue(Short())
            worker = litejobs.Worker(store, [Short], shutdown_timeout=0.1)
            task = asyncio.ensure_future(worker.run(handle_signals=False))
            await wait_state(store, job_id, "running")

            make_round_trips_fail(store, litejobs.StoreError("disk I/O error"))
            worker.stop()
            await asyncio.wait_for(task, 15)  # returns instead of retrying forever

    run(main())


def test_closing_the_store_under_a_running_worker_ends_run_with_a_clear_error(db):
    @dataclass
    class Slow(litejobs.Job):
        NAME = "slow"

        async def run(self, state):
            await asyncio.sleep(30)

    async def main():
        store = await litejobs.connect(db)
        job_id = await store.enqueue(Slow())
        task = asyncio.ensure_future(litejobs.Worker(store, [Slow]).run(handle_signals=False))
        await wait_state(store, job_id, "running")
        await store.close()
        with pytest.raises(litejobs.StoreError, match="closed while its worker ran"):
            await asyncio.wait_for(task, 15)

    run(main())


def test_cancelling_run_hands_running_jobs_back_at_once(db):
    @dataclass
    class Long(litejobs.Job):
        NAME = "long_job"

        async def run(self, state):
            await asyncio.sleep(60)

    async def main():
        async with litejobs.connect(db) as store:
            job_id = await store.enqueue(Long())
            task = asyncio.ensure_future(litejobs.Worker(store, [Long]).run(handle_signals=False))
            await wait_state(store, job_id, "running")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            info = await store.get(job_id)
            assert (info.state, info.attempts) == ("pending", 0)

    run(main())


def test_a_claim_in_flight_when_the_event_loop_shuts_down_is_handed_back(db, monkeypatch):
    # asyncio.run() ending cancels every task at once: the worker's, and the
    # task waiting for its round trip too.
    Failing = failing_job(litejobs.Count(0))
    claimed, release = threading.Event(), threading.Event()
    real_exchange = litejobs._exchange

    def exchange_that_stalls_after_claiming(conn, request, clock, **options):
        answer = real_exchange(conn, request, clock, **options)
        if any(answer.claimed.values()):
            claimed.set()
            release.wait(10)
        return answer

    monkeypatch.setattr(litejobs, "_exchange", exchange_that_stalls_after_claiming)

    async def main():
        store = await litejobs.connect(db)
        await store.enqueue(Failing())
        asyncio.ensure_future(litejobs.Worker(store, [Failing]).run(handle_signals=False))
        assert await asyncio.to_thread(claimed.wait, 10)
        threading.Timer(0.2, release.set).start()
        return store  # the application ends, its worker in the background mid-claim

    store = run(main())
    run(store.close())
    with litejobs.connect_sync(db) as sync:
        assert [(job.state, job.attempts) for job in sync.jobs()] == [("pending", 0)]


def test_cancelling_run_while_a_claim_is_in_flight_leaves_nothing_running(db, monkeypatch):
    Failing = failing_job(litejobs.Count(0))
    claimed, release = threading.Event(), threading.Event()
    real_exchange = litejobs._exchange

    def exchange_that_stalls_after_claiming(conn, request, clock, **options):
        answer = real_exchange(conn, request, clock, **options)
        if any(answer.claimed.values()):  # committed: the worker is cancelled before it hears back
            claimed.set()
            release.wait(10)
        return answer

    monkeypatch.setattr(litejobs, "_exchange", exchange_that_stalls_after_claiming)

    async def main():
        async with litejobs.connect(db) as store:
            job_id = await store.enqueue(Failing())
            task = asyncio.ensure_future(litejobs.Worker(store, [Failing]).run(handle_signals=False))
            assert await asyncio.to_thread(claimed.wait, 10)
            task.cancel()
            release.set()
            with pytest.raises(asyncio.CancelledError):
                await task
            info = await store.get(job_id)
            assert (info.state, info.attempts) == ("pending", 0)  # handed back unspent, never run

    run(main())


def test_one_sigterm_stops_every_worker_of_the_process(tmp_path, db):
    script = tmp_path / "two_workers.py"
    script.write_text(textwrap.dedent(f"""
        import asyncio, sys
        from dataclasses import dataclass
        sys.path.insert(0, {HERE!r})
        import litejobs

        @dataclass
        class Slow(litejobs.Job):
            NAME = "slow"
            QUEUE = "a"
            async def run(self, state):
                await asyncio.sleep(0.5)

        @dataclass
        class SlowToo(Slow):
            NAME = "slow_too"
            QUEUE = "b"

        async def main():
            async with litejobs.connect({db!r}) as store:
                await asyncio.gather(litejobs.Worker(store, [Slow]).run(), litejobs.Worker(store, [SlowToo]).run())

        asyncio.run(main())
    """))
    with litejobs.connect_sync(db) as store:  # the jobs, as a process without their classes describes them
        ids = store.enqueue_many([litejobs.NewJob(name, queue, "{}", litejobs.Count(0), litejobs.Linear(0), 15_000)
                                  for name, queue in (("slow", "a"), ("slow_too", "b"))])
    proc = subprocess.Popen([sys.executable, str(script)], stderr=subprocess.PIPE, text=True)
    try:
        with litejobs.connect_sync(db) as store:
            deadline = time.monotonic() + 15
            while any(store.get(job_id).state != "running" for job_id in ids) and time.monotonic() < deadline:
                time.sleep(0.02)
            proc.send_signal(signal.SIGTERM)  # once, while both workers run a job
            assert proc.wait(timeout=15) == 0, proc.stderr.read()
            assert [(store.get(job_id).state, store.get(job_id).attempts) for job_id in ids] == [("done", 1)] * 2
    finally:
        proc.kill()


def test_a_worker_that_fails_to_start_leaves_no_signal_handlers(db):
    async def main():
        store = await litejobs.connect(db)
        await store.close()
        before = [signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)]
        with pytest.raises(litejobs.StoreError):
            await litejobs.Worker(store, [Noop]).run()
        assert [signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)] == before

    run(main())


def test_a_second_stop_forces_even_a_thread_job_back_at_once(db):
    release = threading.Event()

    @dataclass
    class InAThread(litejobs.Job):
        NAME = "in_a_thread"
        TIMEOUT = 3_600_000

        def run(self, state):
            release.wait(20)

    async def main():
        async with litejobs.connect(db) as store:
            job_id = await store.enqueue(InAThread())
            worker = litejobs.Worker(store, [InAThread], shutdown_timeout=3600)
            task = asyncio.ensure_future(worker.run(handle_signals=False))
            await wait_state(store, job_id, "running")
            worker.stop()  # would wait for the thread, up to its TIMEOUT of an hour
            worker.stop(force=True)  # a second Ctrl-C
            await asyncio.wait_for(task, 10)
            info = await store.get(job_id)
            assert (info.state, info.attempts) == ("pending", 0)
        release.set()

    run(main())


def test_cancelling_run_hands_back_a_thread_job_too(db):
    release = threading.Event()

    @dataclass
    class InAThread(litejobs.Job):
        NAME = "in_a_thread"
        MAX_RETRIES = litejobs.Count(0)

        def run(self, state):
            release.wait(20)

    async def main():
        async with litejobs.connect(db) as store:
            job_id = await store.enqueue(InAThread())
            task = asyncio.ensure_future(litejobs.Worker(store, [InAThread]).run(handle_signals=False))
            await wait_state(store, job_id, "running")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            info = await store.get(job_id)
            assert (info.state, info.attempts) == ("pending", 0)  # not left for the watchdog to kill
        release.set()

    run(main())


def test_a_loop_without_signal_handling_still_runs_workers(db):
    async def main():
        loop = asyncio.get_running_loop()

        def no_signals(*args):
            raise NotImplementedError  # as on Windows

        loop.add_signal_handler = loop.remove_signal_handler = no_signals
        async with litejobs.connect(db) as store:
            job_id = await store.enqueue(Echo("ran"))
            worker = litejobs.Worker(store, [Echo])
            task = asyncio.ensure_future(worker.run())  # handle_signals=True
            assert (await wait_state(store, job_id, "done")).result == "ran"
            worker.stop()
            await task

    run(main())


# -- cancelling jobs -----------------------------------------------------------


def test_cancel_pending_job_at_once(db):
    async def main():
        async with litejobs.connect(db) as store:
            job_id = await store.enqueue(Noop(), unique_key="k")
            assert await store.cancel(job_id) == litejobs.JobState.CANCELLED
            info = await store.get(job_id)
            assert info.state == "cancelled" and info.finished_at is not None
            assert await store.enqueue(Noop(), unique_key="k") != job_id  # the key is free again
            assert await store.cancel(job_id) == litejobs.JobState.CANCELLED
            with pytest.raises(LookupError):
                await store.cancel(12345)

    run(main())


def test_cancel_running_job_stops_it_and_does_not_retry(db):
    stopped = []

    @dataclass
    class Long(litejobs.Job):
        NAME = "cancellable"

        async def run(self, state):
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                stopped.append(litejobs.current().id)
                raise

    async def main():
        async with litejobs.connect(db) as store:
            events = []
            store.on_event(lambda e: events.append(e.kind))
            here = await store.enqueue(Long())
            there = await store.enqueue(Long())
            async with litejobs.Worker(store, [Long], poll_interval=0.02):
                await wait_state(store, here, "running")
                await wait_state(store, there, "running")
                assert await store.cancel(here) == litejobs.JobState.RUNNING
                info = await wait_state(store, here, "cancelled")
                # and from another process, through the file alone:
                with litejobs.connect_sync(db) as other:
                    assert other.cancel(there) == litejobs.JobState.RUNNING
                await wait_state(store, there, "cancelled")
            assert info.attempts == 1 and sorted(stopped) == [here, there]
            assert events.count("cancellation") == 2 and "retry" not in events

    run(main())


def test_a_job_asked_to_stop_ends_cancelled_even_with_no_retry_left(db):
    clock = FakeClock()
    Failing = failing_job(litejobs.Count(0))

    async def main():
        async with litejobs.connect(db, clock=clock) as store:
            first, second = await store.enqueue_many([Failing(), Failing()])
            rows = await claim(store, 2, ["failing"])
            assert await store.cancel(first) == await store.cancel(second) == "running"
            # The first fails before its worker sees the request; the second's
            # process dies and the watchdog fails it.
            await round_trip(store, outcomes=[failure(rows[0])])
            clock.advance(60)
            await reap_expired(store)
            assert [(await store.get(i)).state for i in (first, second)] == ["cancelled", "cancelled"]
            assert (await store.stats())["default"].dead_counts.all_time == 0

    run(main())





# -- inspection, repair and results --------------------------------------------


def test_jobs_lists_newest_first_with_filters(db):
    async def main():
        async with litejobs.connect(db) as store:
            ids = await store.enqueue_many([Echo(i) for i in range(5)])
            other = await store.enqueue(Echo(9), queue="other")
            await store.cancel(ids[0])
            assert [j.id for j in await store.jobs()] == [other, *reversed(ids)]
            assert [j.id for j in await store.jobs(queue="other")] == [other]
            assert [j.id for j in await store.jobs(state="cancelled")] == [ids[0]]
            page = await store.jobs(state=litejobs.JobState.PENDING, limit=2, offset=1)
            assert [j.id for j in page] == [ids[4], ids[3]]
            assert [j.id for j in await store.jobs(name="noop")] == []
            with pytest.raises(ValueError, match="state must be one of"):
                await store.jobs(state="finished")

    run(main())


def test_retry_and_retry_dead(db):
    Failing = failing_job(litejobs.Count(0))

    async def main():
        async with litejobs.connect(db) as store:
            ids = await store.enqueue_many([Failing(), Failing()])
            other = await store.enqueue(Failing(), queue="other")
            async with litejobs.Worker(store, [Failing], queues=["other"], poll_interval=0.01):
                for job_id in [*ids, other]:
                    await wait_state(store, job_id, "dead")
            assert await store.retry(ids[0]) == 1
            info = await store.get(ids[0])
            assert (info.state, info.attempts, info.finished_at) == ("pending", 0, None)
            assert await store.retry(ids[0]) == 0  # already pending
            assert await store.retry_dead(queue="default") == 1
            assert (await store.get(other)).state == "dead"
            assert await store.retry_dead() == 1
            with pytest.raises(LookupError, match="no job with id 999"):
                await store.retry(999)

    run(main())


def test_retry_refuses_to_duplicate_a_unique_key(db):
    async def main():
        async with litejobs.connect(db) as store:
            first = await store.enqueue(Noop(), unique_key="k")
            await store.cancel(first)
            await store.enqueue(Noop(), unique_key="k")
            with pytest.raises(litejobs.LiteJobsError, match="another job with unique_key 'k'"):
                await store.retry(first)
            assert await store.retry_dead() == 0

    run(main())


def test_purge_by_state_and_age(db):
    clock = FakeClock()

    async def main():
        async with litejobs.connect(db, clock=clock) as store:
            old = await store.enqueue(Noop())
            await store.cancel(old)
            clock.advance(3 * 86_400)
            recent = await store.enqueue(Noop())
            await store.cancel(recent)
            assert await store.purge(state="cancelled", older_than=timedelta(days=2)) == 1
            assert await store.get(old) is None and await store.get(recent) is not None
            with pytest.raises(ValueError, match="purge state must be one of done, dead, cancelled"):
                await store.purge(state="pending")
            many = await store.enqueue_many([Noop() for _ in range(2500)])
            await by_hand(store, "UPDATE litejobs_jobs SET state = 'cancelled', finished_at = 0 WHERE id >= ?",
                          (many[0],))
            assert await store.purge(state="cancelled") == 2501  # three batches, and the recent one

    run(main())


def test_wait_returns_result_or_raises(db):
    @dataclass
    class Fails(litejobs.Job):
        NAME = "fails_for_wait"
        MAX_RETRIES = litejobs.Count(0)

        async def run(self, state):
            raise KeyError("missing invoice")

    async def main():
        async with litejobs.connect(db) as store:
            ok = await store.enqueue(Echo({"total": 3}))
            bad = await store.enqueue(Fails())
            never = await store.enqueue(Echo(1), delay=3600)
            async with litejobs.Worker(store, [Echo, Fails]):
                assert await store.wait(ok, timeout=10) == {"total": 3}
                with pytest.raises(litejobs.JobFailed, match="missing invoice") as info:
                    await store.wait(bad, timeout=10)
                assert info.value.job.state == "dead"
                with pytest.raises(TimeoutError, match=f"job {never} is still pending"):
                    await store.wait(never, timeout=0.05)
                with pytest.raises(LookupError):
                    await store.wait(4242)

    run(main())


def test_result_that_cannot_be_stored_is_reported_not_fatal(db):
    async def main():
        async with litejobs.connect(db) as store:
            job_id = await store.enqueue(Echo())

            @dataclass
            class Weird(litejobs.Job):
                NAME = "weird_result"

                async def run(self, state):
                    return object()

            weird = await store.enqueue(Weird())
            async with litejobs.Worker(store, [Echo, Weird]):
                info = await wait_state(store, weird, "done")
                await wait_state(store, job_id, "done")
            assert info.result is None and "result could not be stored" in info.last_error

    run(main())


def test_looking_for_text_no_row_can_hold_is_a_plain_error(db):
    async def main():
        async with litejobs.connect(db) as store:
            for call in (lambda: store.jobs(queue="\ud800"), lambda: store.jobs(name="\udce9"),
                         lambda: store.retry_dead(queue="\ud800"), lambda: store.unschedule("\ud800")):
                with pytest.raises(ValueError, match="no lone surrogate"):
                    await call()

    run(main())


# -- statistics and retention --------------------------------------------------


async def _done_and_dead(store, done, dead):
    stats = await store.stats()
    s = stats.get("default")
    return s is not None and s.done == done and s.dead == dead


def test_stats_per_queue_and_counts_by_period(db):
    clock = FakeClock(datetime(2030, 5, 31, 23, 30, tzinfo=timezone.utc).timestamp())
    Failing = failing_job(litejobs.Count(0))

    async def main():
        async with litejobs.connect(db, clock=clock) as store:
            await store.enqueue_many([Noop(), Noop()])
            await store.enqueue(Failing())
            async with litejobs.Worker(store, [Noop, Failing], poll_interval=0.01):
                await wait_until(lambda: _done_and_dead(store, 2, 1), "two done, one dead")
            clock.advance(3600)  # 00:30 on June 1st: a new hour, day and month
            ok = await store.enqueue(Noop())
            async with litejobs.Worker(store, [Noop], poll_interval=0.01):
                await wait_state(store, ok, "done")
            await store.enqueue(Noop())
            await store.enqueue(Noop(), delay=600)
            await store.enqueue(Noop(), queue="other")
            await store.cancel(await store.enqueue(Noop()))
            stats = await store.stats()
            assert set(stats) == {"default", "other"}
            s = stats["default"]
            assert (s.pending, s.scheduled, s.running, s.done, s.dead, s.cancelled) == (1, 1, 0, 3, 1, 1)
            assert s.done_counts == litejobs.JobStat(this_hour=1, today=1, this_month=1, all_time=3)
            assert s.dead_counts == litejobs.JobStat(this_hour=0, today=0, this_month=0, all_time=1)
            assert stats["other"].pending == 1
            assert await store.purge(state="done") == 3
            after = (await store.stats())["default"]
            assert after.done == 0 and after.done_counts == s.done_counts  # counters outlive the rows

    run(main())


def test_stats_tell_jobs_no_running_worker_knows(db):
    async def main():
        async with litejobs.connect(db) as store:
            await store.enqueue(Echo(1))
            assert (await store.stats())["default"].unregistered is None  # no worker to ask
            async with litejobs.Worker(store, [Noop]):
                await asyncio.sleep(0.05)
                assert (await store.stats())["default"].unregistered == 1
            assert (await store.stats())["default"].unregistered is None

    run(main())


def test_a_killed_worker_of_this_host_knows_no_names(db):
    async def main():
        async with litejobs.connect(db) as store:
            await store.enqueue(Echo(1))
            dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                                      capture_output=True, text=True).stdout.strip()
            await by_hand(store, "INSERT INTO litejobs_workers VALUES ('ghost', ?, ?, '[\"echo\"]', 0)",
                          (__import__("socket").gethostname(), int(dead_pid)))
            assert (await store.stats())["default"].unregistered is None

    run(main())


def test_compaction_folds_old_hourly_counts_and_keeps_the_totals(db):
    clock = FakeClock()

    async def main():
        async with litejobs.connect(db, clock=clock) as store:
            await store.enqueue_many([Echo(1), Echo(2)])
            async with litejobs.Worker(store, [Echo]):
                await wait_state(store, 2, "done")
            clock.advance(70 * 86_400)  # past the two months that keep hourly detail
            await round_trip(store, compact=True)
            assert (await store.stats())["default"].done_counts == litejobs.JobStat(0, 0, 0, 2)

    run(main())
    assert query(db, "SELECT hour FROM litejobs_counts") == [(0,)]


async def _gone(store, job_id):
    return await store.get(job_id) is None


def test_retention_prunes_done_rows_after_keep_done(db):
    clock = FakeClock()

    async def main():
        async with litejobs.connect(db, clock=clock, keep_done=timedelta(hours=1)) as store:
            old = await store.enqueue(Noop())
            dead = await store.enqueue(failing_job(litejobs.Count(0))())
            async with litejobs.Worker(store, [Noop, failing_job(litejobs.Count(0))], poll_interval=0.01):
                await wait_state(store, old, "done")
                await wait_state(store, dead, "dead")
                clock.advance(3601)
                await wait_until(lambda: _gone(store, old), "the old done row to be pruned")
            assert (await store.get(dead)).state == "dead"  # dead rows stay until purged

    run(main())


async def _all_done(store, n):
    stats = (await store.stats()).get("default")
    return stats is not None and stats.done_counts.all_time >= n


def test_row_count_stays_bounded_under_steady_load(db):
    async def main():
        async with litejobs.connect(db, keep_done=0) as store:
            async with litejobs.Worker(store, [Noop], concurrency=16):
                for round_number in range(1, 31):
                    await store.enqueue_many([Noop() for _ in range(200)])
                    # Not store.wait(): with keep_done=0 a done row may be gone already.
                    await wait_until(lambda n=200 * round_number: _all_done(store, n), "the round to finish")
                await asyncio.sleep(WATCHDOG_INTERVAL * 2.5)
                rows = len(await store.jobs(limit=10_000))  # in every state
            assert rows < 1000  # 6,000 jobs ran; only the last batch may still be kept
            assert (await store.stats())["default"].done_counts.all_time == 6000

    run(main())


def test_retention_and_purge_use_the_finished_index_not_a_scan(sqlite_db):
    run(_open_and_close(sqlite_db))
    conn = sqlite3.connect(sqlite_db)
    for sql, params in [(litejobs._SQL_PRUNE, (T0, 1000)), (litejobs._SQL_ANY_TO_PRUNE, (T0,)),
                        (litejobs._SQL_PURGE, ("dead", T0, 1000))]:
        plan = " | ".join(row[-1] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params))
        assert "USING INDEX litejobs_jobs_finished" in plan and "SCAN litejobs_jobs" not in plan, plan


# -- recurring jobs ------------------------------------------------------------


async def _count(store, n):
    return len(await store.jobs(state="done")) == n


def test_every_enqueues_each_tick_and_coalesces_missed_ones(db):
    clock = FakeClock()

    async def main():
        async with litejobs.connect(db, clock=clock) as store:
            with pytest.raises(ValueError, match="at least 1 second"):
                await store.every(0.5, Noop())
            await store.every(60, Noop())
            await store.every(60, Noop())  # declared again at the next start: one schedule
            async with litejobs.Worker(store, [Noop], poll_interval=0.01):
                await wait_until(lambda: _count(store, 1), "the first tick, due at once")
                clock.advance(60)
                await wait_until(lambda: _count(store, 2), "the second tick")
            clock.advance(600)  # ten ticks missed while no worker ran
            async with litejobs.Worker(store, [Noop], poll_interval=0.01):
                await wait_until(lambda: _count(store, 3), "one run for the missed ticks")
                await asyncio.sleep(0.1)
                assert len(await store.jobs()) == 3
                ticks = sorted(j.run_at.timestamp() - T0 for j in await store.jobs())
                assert ticks == [0, 60, 660]
                assert await store.unschedule("noop") is True
                clock.advance(60)
                await asyncio.sleep(0.1)
            assert len(await store.jobs()) == 3
            assert await store.unschedule("noop") is False

    run(main())


async def _listed(listing, n):
    return len(await listing) == n


def test_ticks_coalesce_while_only_workers_of_other_jobs_are_up(db):
    clock = FakeClock()

    async def main():
        async with litejobs.connect(db, clock=clock) as store:
            await store.every(60, Echo("tick"))
            for _ in range(6):  # an hour's worth of a worker that knows only noop, in short
                await round_trip(store, housekeeping=True, names=["noop"])
                clock.advance(60)
            assert len(await store.jobs(name="echo", state="pending")) == 1
            async with litejobs.Worker(store, [Echo]):  # a worker that knows it runs it once
                await wait_until(lambda: _listed(store.jobs(name="echo", state="done"), 1), "the tick to run")
                clock.advance(60)
                await wait_until(lambda: _listed(store.jobs(name="echo", state="done"), 2), "the next tick")

    run(main())


TICK_JOBS = """
@dataclass
class Tick(litejobs.Job):
    NAME = "tick"
    async def run(self, state):
        pass

def clock():  # {speed} seconds go by every second, the same in every process
    return {start!r} + (time.time() - {base!r}) * {speed!r}
"""


def _ticks_of_three_processes(tmp_path, db, schedule, speed=1):
    """Three worker processes each declare ``schedule`` and serve it for
    4.5 s, on one clock running ``speed`` times as fast as the real one;
    the due times of the jobs its ticks enqueued."""
    now = time.time()
    script = tmp_path / "recurring.py"
    script.write_text(worker_script(TICK_JOBS, "Tick", connect=", clock=clock",
                                    setup=f"await store.every({schedule!r}, Tick(), key='tick')").format(
        here=HERE, db=db, start=T0 if speed != 1 else now, base=now, speed=speed))
    processes = [subprocess.Popen([sys.executable, str(script)]) for _ in range(3)]
    try:
        time.sleep(4.5)
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            assert process.wait(timeout=30) == 0
    return [row[0] for row in query(db, "SELECT run_at FROM litejobs_jobs ORDER BY run_at")]


@pytest.mark.slow
def test_recurring_ticks_enqueued_exactly_once_across_three_processes(tmp_path, db):
    ticks = _ticks_of_three_processes(tmp_path, db, 1)
    assert len(ticks) >= 3
    steps = [round(b - a, 6) for a, b in zip(ticks, ticks[1:], strict=False)]
    # One job per tick: never two for one tick.  (A worker stalled past a
    # whole interval would coalesce, so a step of 2 s is allowed, not 0.)
    assert all(step >= 1.0 and step == int(step) for step in steps), steps
    assert steps.count(1.0) >= len(steps) - 1


@pytest.mark.slow
def test_cron_ticks_fire_once_per_matching_minute_across_three_processes(tmp_path, db):
    ticks = _ticks_of_three_processes(tmp_path, db, "* * * * *", speed=60)  # a minute every second
    assert len(ticks) >= 2 and len(set(ticks)) == len(ticks)  # never two jobs for one minute
    assert all((tick - T0) % 60 == 0 for tick in ticks), ticks  # each on a matching minute


@dataclass
class Report(litejobs.Job):
    NAME = "report"
    BACKOFF = litejobs.Linear(3600)
    to_queue: str = "default"

    def queue(self):
        return self.to_queue

    async def run(self, state):
        return None


def test_a_schedule_declared_anew_elsewhere_is_not_held_back_by_its_old_tick(db):
    clock = FakeClock()

    async def main():
        async with litejobs.connect(db, clock=clock) as store:
            await store.every(60, Report("nobody_serves_this"), key="report")  # version 1 of the app
            await round_trip(store, housekeeping=True, names=["noop"])
            await store.every(60, Report("reports"), key="report")  # version 2 fixes the queue
            clock.advance(60)
            await round_trip(store, housekeeping=True, names=["noop"])
            assert [job.queue for job in await store.jobs(name="report")] == ["reports", "nobody_serves_this"]

    run(main())


def test_a_tick_waiting_for_its_retry_does_not_hold_back_the_next(db):
    clock = FakeClock()

    async def main():
        async with litejobs.connect(db, clock=clock) as store:
            await store.every(60, Report(), key="report")
            await round_trip(store, housekeeping=True, names=["noop"])
            row = (await claim(store, 1, ["report"]))[0]
            await round_trip(store, outcomes=[failure(row)])  # retried in an hour
            clock.advance(60)
            await round_trip(store, housekeeping=True, names=["noop"])
            assert sorted(job.attempts for job in await store.jobs(name="report", state="pending")) == [0, 1]

    run(main())


# -- events --------------------------------------------------------------------


def test_events_for_success_failure_retry_death(db):
    async def main():
        async with litejobs.connect(db) as store:
            events = []
            store.on_event(lambda e: events.append((e.kind, e.attempt)))
            store.on_event(lambda e: 1 / 0)  # a broken callback hurts nobody
            Failing = failing_job(litejobs.Count(1))
            ok = await store.enqueue(Noop())
            bad = await store.enqueue(Failing())
            async with litejobs.Worker(store, [Noop, Failing], poll_interval=0.01, concurrency=1):
                await wait_state(store, ok, "done")
                await wait_state(store, bad, "dead")
            assert events == [
                ("enqueue", 0), ("enqueue", 0),
                ("start", 1), ("success", 1),
                ("start", 1), ("failure", 1), ("retry", 1),
                ("start", 2), ("failure", 2), ("death", 2),
            ]

    run(main())


def test_duplicate_unique_key_emits_no_enqueue_event(db):
    async def main():
        async with litejobs.connect(db) as store:
            events = []
            store.on_event(lambda e: events.append(e.job_id))
            first = await store.enqueue(Noop(), unique_key="once")
            await store.enqueue(Noop(), unique_key="once")
            assert events == [first]

    run(main())


def test_cancelling_a_pending_job_is_an_event(db):
    async def main():
        async with litejobs.connect(db) as store:
            events = []
            store.on_event(lambda e: events.append((e.kind, e.job_id, e.name)))
            job_id = await store.enqueue(Noop())
            await store.cancel(job_id)
            await store.cancel(job_id)  # already cancelled: nothing new happens
            assert events == [("enqueue", job_id, "noop"), ("cancellation", job_id, "noop")]

    run(main())


def test_a_callback_that_unsubscribes_itself_makes_nobody_miss_an_event(db):
    async def main():
        async with litejobs.connect(db) as store:
            seen = []

            def once(event):
                seen.append(("once", event.job_id))
                unsubscribe_once()

            unsubscribe_once = store.on_event(once)
            store.on_event(lambda event: seen.append(("every", event.job_id)))
            first, second = await store.enqueue(Noop()), await store.enqueue(Noop())
            assert seen == [("once", first), ("every", first), ("every", second)]
            unsubscribe_once()  # a second call does nothing

    run(main())


# -- processes: kills, crashes and contention ----------------------------------


# A worker process's script: SCRIPT_HEAD, the source of its job classes (a
# format string like it: {here}, {db}, {log}), then the main of worker_script.
SCRIPT_HEAD = """
import asyncio, os, sys, time
from dataclasses import dataclass
sys.path.insert(0, {here!r})
import litejobs
"""


def worker_script(jobs, classes, until_empty=False, options="concurrency=8", connect="", setup=""):
    """A script whose worker runs ``classes`` until stopped or, with
    ``until_empty``, until its default queue holds nothing more to do.
    ``connect``: more arguments to connect(); ``setup``: a statement run first."""
    serve = """
        async with worker:
            while True:
                s = (await store.stats()).get("default")
                if s is None or s.pending + s.scheduled + s.running == 0:
                    break
                await asyncio.sleep(0.05)""" if until_empty else """
        await worker.run()"""
    return SCRIPT_HEAD + jobs + f"""
async def main():
    async with litejobs.connect({{db!r}}{connect}) as store:
        {setup or "pass"}
        worker = litejobs.Worker(store, [{classes}], {options}, poll_interval=0.01)""" + serve + """

asyncio.run(main())
"""


def script_jobs(jobs, **fields):
    """The job classes a worker script defines, here too, for the test to enqueue."""
    namespace = {}
    exec(compile((SCRIPT_HEAD + jobs).format(here=HERE, **fields), "jobs", "exec"), namespace)
    return namespace


RECORDED_JOBS = """
LOG = {log!r}

@dataclass
class Recorded(litejobs.Job):
    NAME = "recorded"
    TIMEOUT = 1000
    BACKOFF = litejobs.Linear(0)
    hang: bool = False

    async def run(self, state):
        # O_APPEND writes of one short line are atomic between processes.
        fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, f"{{litejobs.current().id}} {{litejobs.current().attempt}} {{os.getpid()}}\\n".encode())
        os.close(fd)
        if self.hang and litejobs.current().attempt == 1:
            await asyncio.sleep(3600)
"""


def _worker_process(tmp_path, db, log, until_empty):
    script = tmp_path / f"worker_{until_empty}.py"
    script.write_text(worker_script(RECORDED_JOBS, "Recorded", until_empty).format(here=HERE, db=db, log=str(log)))
    return subprocess.Popen([sys.executable, str(script)])


def _log_lines(log):
    if not log.exists():
        return []
    return [tuple(map(int, line.split())) for line in log.read_text().splitlines()]


@pytest.mark.slow
def test_killed_worker_job_is_finished_by_another_after_timeout(tmp_path, db):
    log = tmp_path / "runs.log"
    Recorded = script_jobs(RECORDED_JOBS, db=db, log=str(log))["Recorded"]

    async def enqueue():
        async with litejobs.connect(db) as store:
            return await store.enqueue(Recorded(hang=True))

    job_id = run(enqueue())
    first = _worker_process(tmp_path, db, log, until_empty=False)
    try:
        deadline = time.monotonic() + 30
        while not _log_lines(log):
            assert time.monotonic() < deadline and first.poll() is None, "first worker never ran the job"
            time.sleep(0.01)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()

    async def finish():
        async with litejobs.connect(db) as store:
            assert (await store.get(job_id)).state == "running"
            async with litejobs.Worker(store, [Recorded], poll_interval=0.01):
                return await wait_state(store, job_id, "done", timeout=30)

    info = run(finish())
    assert info.attempts == 2  # the killed attempt counted
    assert "failed by the watchdog" in info.last_error
    assert [attempt for _, attempt, _ in _log_lines(log)] == [1, 2]


@pytest.mark.slow
def test_two_worker_processes_run_every_job_exactly_once(tmp_path, db):
    log = tmp_path / "runs.log"
    Recorded = script_jobs(RECORDED_JOBS, db=db, log=str(log))["Recorded"]

    async def enqueue():
        async with litejobs.connect(db) as store:
            return await store.enqueue_many([Recorded() for _ in range(2000)])

    ids = run(enqueue())
    workers = [_worker_process(tmp_path, db, log, until_empty=True) for _ in range(2)]
    for process in workers:
        assert process.wait(timeout=90) == 0
    lines = _log_lines(log)
    ran = sorted(job_id for job_id, _, _ in lines)
    assert ran == sorted(ids)  # every job once: none lost, none twice
    assert {attempt for _, attempt, _ in lines} == {1}
    assert query(db, "SELECT state, count(*) FROM litejobs_jobs GROUP BY state") == [("done", 2000)]


CRASH_WORKER = """
import asyncio, os, sys
sys.path.insert(0, {here!r})
sys.path.insert(0, {folder!r})
import litejobs
from crash_jobs import Step

async def main():
    async with litejobs.connect({db!r}) as store:
        await litejobs.Worker(store, [Step], concurrency=8, poll_interval=0.01).run()

asyncio.run(main())
"""


CRASH_JOBS = """
import asyncio, os
from dataclasses import dataclass
import litejobs

@dataclass
class Step(litejobs.Job):
    NAME = "step"
    TIMEOUT = 300
    MAX_RETRIES = litejobs.Count(8)
    BACKOFF = litejobs.Linear(0)
    n: int

    async def run(self, state):
        # Recorded outside the engine: one atomic O_APPEND line per execution.
        fd = os.open({log!r}, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, f"{{self.n}}\\n".encode())
        os.close(fd)
        await asyncio.sleep(0.002 * (self.n % 5))
        return self.n
"""


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing(tmp_path, db):
    import random

    log = tmp_path / "executions.log"
    (tmp_path / "crash_jobs.py").write_text(CRASH_JOBS.format(log=str(log)))
    script = tmp_path / "crash_worker.py"
    script.write_text(CRASH_WORKER.format(here=HERE, folder=str(tmp_path), db=db))
    sys.path.insert(0, str(tmp_path))
    try:
        import crash_jobs
    finally:
        sys.path.remove(str(tmp_path))
    with litejobs.connect_sync(db) as store:
        ids = store.enqueue_many([crash_jobs.Step(n) for n in range(400)])

    rng = random.Random(20261129)
    for _ in range(24):  # kill points spread over start-up, claiming, running and committing
        process = subprocess.Popen([sys.executable, str(script)])
        time.sleep(rng.uniform(0.05, 0.6))
        process.send_signal(signal.SIGKILL)
        process.wait()

    process = subprocess.Popen([sys.executable, str(script)])  # a last worker finishes the rest
    try:
        deadline = time.monotonic() + 60
        with litejobs.connect_sync(db) as store:
            while True:
                stats = store.stats()["default"]
                if stats.pending + stats.scheduled + stats.running == 0:
                    break
                assert time.monotonic() < deadline, stats
                time.sleep(0.1)
            infos = [store.get(job_id) for job_id in ids]
    finally:
        process.kill()  # it may still be starting up; its clean stop is tested elsewhere
        process.wait()

    executions = [int(line) for line in log.read_text().split()]
    assert set(executions) == set(range(400))  # every job ran at least once
    for info in infos:  # none lost, none stuck
        assert info.state in ("done", "dead"), info
        if info.state == "done":
            assert info.result == info.payload["n"]
        else:
            assert info.last_error and info.attempts == 9
    assert sum(info.state == "done" for info in infos) >= 390
    if not on_postgres(db):
        assert query(db, "PRAGMA integrity_check") == [("ok",)]


CONTENTION_ENQUEUER = """
import sys, time
sys.path.insert(0, {here!r})
sys.path.insert(0, {folder!r})
import litejobs
from contention_jobs import Quick, Sleepy

with litejobs.connect_sync({db!r}) as store:
    end = time.monotonic() + {seconds}
    i = 0
    while time.monotonic() < end:
        i += 1
        if i % 5 == 0:
            store.enqueue_many([Quick() for _ in range(20)])
        else:
            store.enqueue(Sleepy() if i % 2 else Quick())
"""


CONTENTION_JOBS = """
import asyncio, os
from dataclasses import dataclass
import litejobs

def record():
    fd = os.open({log!r}, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, f"{{litejobs.current().id}}\\n".encode())
    os.close(fd)

@dataclass
class Quick(litejobs.Job):
    NAME = "quick"
    async def run(self, state):
        record()

@dataclass
class Sleepy(litejobs.Job):
    NAME = "sleepy"
    async def run(self, state):
        record()
        await asyncio.sleep(0.005)
"""


CONTENTION_WORKER = """
import asyncio, sys
sys.path.insert(0, {here!r})
sys.path.insert(0, {folder!r})
import litejobs
from contention_jobs import Quick, Sleepy

async def main():
    async with litejobs.connect({db!r}) as store:
        await litejobs.Worker(store, [Quick, Sleepy], concurrency=16, poll_interval=0.01).run()

asyncio.run(main())
"""


@pytest.mark.slow
def test_four_workers_two_enqueuers_no_lock_errors_every_job_once(tmp_path, db):
    log = tmp_path / "runs.log"
    (tmp_path / "contention_jobs.py").write_text(CONTENTION_JOBS.format(log=str(log)))
    for name, text in [("enqueuer.py", CONTENTION_ENQUEUER), ("worker.py", CONTENTION_WORKER)]:
        (tmp_path / name).write_text(text.format(here=HERE, folder=str(tmp_path), db=db, seconds=10))
    run(_open_and_close(db))

    def start(name):
        return subprocess.Popen([sys.executable, str(tmp_path / name)], stderr=subprocess.PIPE, text=True)

    workers = [start("worker.py") for _ in range(4)]
    enqueuers = [start("enqueuer.py") for _ in range(2)]
    try:
        for process in enqueuers:
            assert process.wait(timeout=120) == 0, process.stderr.read()
        deadline = time.monotonic() + 60
        with litejobs.connect_sync(db) as store:
            while True:
                s = store.stats()["default"]
                if s.pending + s.running == 0:
                    break
                assert time.monotonic() < deadline, s
                time.sleep(0.1)
    finally:
        for process in workers:
            process.send_signal(signal.SIGTERM)
    errors = []
    for process in workers:
        assert process.wait(timeout=30) == 0
        errors.append(process.stderr.read())
    errors += [process.stderr.read() for process in enqueuers]
    assert not any(("locked" in text or "Traceback" in text or "WARNING" in text or "ERROR" in text)
                   for text in errors), errors
    [(total,)] = query(db, "SELECT count(*) FROM litejobs_jobs")
    ran = [int(line) for line in log.read_text().split()]
    assert total > 1000
    assert len(ran) == len(set(ran)) == total  # every job exactly once
    assert query(db, "SELECT count(*) FROM litejobs_jobs WHERE state != 'done'") == [(0,)]
    with litejobs.connect_sync(db) as store:
        s = store.stats()["default"]
    assert s.done == total == s.done_counts.all_time


# -- enqueueing inside the caller's own transaction -----------------------------


def _own_connection(db):
    """The connection an application already has: sqlite3's, or psycopg's."""
    if on_postgres(db):
        import psycopg

        return psycopg.connect(db)
    return sqlite3.connect(db)


def test_enqueue_in_writes_inside_the_callers_transaction_and_only_a_commit_keeps_it(db):
    async def main():
        async with litejobs.connect(db) as store:
            conn = _own_connection(db)
            try:
                conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT)")
                conn.commit()
                conn.execute("INSERT INTO orders (id, item) VALUES (1, 'lost')")
                dropped = litejobs.enqueue_in(conn, Echo("lost"))
                assert await store.get(dropped) is None  # not before the commit
                conn.rollback()
                conn.execute("INSERT INTO orders (id, item) VALUES (2, 'kept')")
                kept = litejobs.enqueue_in(conn, Echo("kept"), priority=3)
                assert await store.get(kept) is None
                conn.commit()
                assert [row[0] for row in conn.execute("SELECT id FROM orders")] == [2]
                with pytest.raises(litejobs.SerializationError):  # bad input: a clear error, nothing written
                    litejobs.enqueue_in(conn, Echo(1), queue="nul\x00")
                conn.rollback()
            finally:
                conn.close()
            # Only the committed job exists (SQLite may give it the id the rolled-back one had).
            assert [(job.id, job.payload, job.priority) for job in await store.jobs()] == [(kept, {"value": "kept"}, 3)]
            async with litejobs.Worker(store, [Echo], poll_interval=0.01):
                assert await store.wait(kept, timeout=15) == "kept"
            assert [job.id for job in await store.jobs()] == [kept]

    run(main())


def test_enqueue_in_on_a_database_without_litejobs_tables_says_so(db, tmp_path):
    if on_postgres(db):
        import psycopg

        conn = psycopg.connect(db)
        conn.execute("DROP TABLE litejobs_jobs CASCADE")
        conn.commit()
    else:
        conn = sqlite3.connect(str(tmp_path / "app.db"))
    with pytest.raises(litejobs.StoreError, match="no litejobs tables: open it once with litejobs.connect"):
        litejobs.enqueue_in(conn, Echo(1))
    with pytest.raises(TypeError, match="needs a sqlite3.Connection or a psycopg connection, got str"):
        litejobs.enqueue_in("jobs.db", Echo(1))
    conn.close()


def test_enqueue_in_on_an_async_psycopg_connection(postgresql_db):
    import psycopg

    async def main():
        async with litejobs.connect(postgresql_db) as store:
            async with await psycopg.AsyncConnection.connect(postgresql_db) as conn:
                dropped = await litejobs.enqueue_in(conn, Echo("lost"))
                await conn.rollback()
                kept = await litejobs.enqueue_in(conn, Echo("kept"), unique_key="once")
                assert await litejobs.enqueue_in(conn, Echo("again"), unique_key="once") == kept
                await conn.commit()
            assert await store.get(dropped) is None
            assert (await store.get(kept)).payload == {"value": "kept"}

    run(main())


# -- the synchronous twin ------------------------------------------------------


def test_sync_twin_enqueues_and_reads(db):
    clock = FakeClock()
    with litejobs.connect_sync(db, clock=clock) as store:
        job_id = store.enqueue(Echo("from flask"), priority=5)
        more = store.enqueue_many([Echo(1), Echo(2)])
        later = store.schedule(Echo(3), at=datetime.fromtimestamp(T0 + 60, timezone.utc))
        info = store.get(job_id)
        assert (info.payload, info.priority, info.state) == ({"value": "from flask"}, 5, "pending")
        assert len(more) == 2 and store.get(later).run_at.timestamp() == T0 + 60
        assert store.stats()["default"].pending == 3 and store.stats()["default"].scheduled == 1
    with pytest.raises(litejobs.StoreError, match="does not exist" if on_postgres(db) else "no such file"):
        litejobs.connect_sync(db + "_missing", create=False)
    assert not os.path.exists(db + "_missing")


def test_sync_twin_uses_the_same_sql_as_the_async_store():
    # Shared by construction: the inspection calls are one implementation.
    for name in ("get", "stats", "jobs", "retry", "retry_dead", "purge", "every", "unschedule"):
        assert getattr(litejobs.SyncStore, name) is getattr(litejobs.Store, name)


SYNC_ENQUEUER = """
import sys
sys.path.insert(0, {here!r})
sys.path.insert(0, {folder!r})
import litejobs
from jobs_module import Recorded

with litejobs.connect_sync({db!r}) as store:   # as a Flask view would
    for i in range(20):
        store.enqueue(Recorded())
"""


@pytest.mark.slow
def test_sync_enqueuer_process_with_async_worker_process(tmp_path, db):
    log = tmp_path / "runs.log"
    (tmp_path / "jobs_module.py").write_text((SCRIPT_HEAD + RECORDED_JOBS).format(here=HERE, db=db, log=str(log)))
    run(_open_and_close(db))
    worker = _worker_process(tmp_path, db, log, until_empty=False)
    try:
        enqueuer = tmp_path / "enqueuer.py"
        enqueuer.write_text(SYNC_ENQUEUER.format(here=HERE, folder=str(tmp_path), db=db))
        subprocess.run([sys.executable, str(enqueuer)], check=True, timeout=60)
        deadline = time.monotonic() + 30
        while len(_log_lines(log)) < 20:
            assert time.monotonic() < deadline, "the worker did not run the jobs"
            time.sleep(0.02)
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
    assert len(_log_lines(log)) == 20


SYNC_CLOSE_SCRIPT = """
import sys, threading
from dataclasses import dataclass
sys.path.insert(0, {here!r})
import litejobs

@dataclass
class Noop(litejobs.Job):
    NAME = "noop"

    async def run(self, state):
        pass

for round_no in range(20):
    store = litejobs.connect_sync({folder!r} + f"/close{{round_no}}.db")
    busy, seen = threading.Event(), []

    def hammer():
        try:
            while True:
                store.enqueue(Noop())
                store.stats()
                busy.set()
        except Exception as exc:
            seen.append(exc)
            busy.set()

    thread = threading.Thread(target=hammer)
    thread.start()
    busy.wait(10)
    store.close()
    store.close()  # a second close does nothing
    thread.join(10)
    for exc in seen + [None]:
        if exc is None:
            try:
                store.get(1)
            except Exception as later:
                exc = later
        assert isinstance(exc, litejobs.StoreError) and "is closed" in str(exc), repr(exc)
print("ok")
"""


def test_closing_a_sync_store_while_another_thread_calls_it(tmp_path):
    # In a process of its own: closing under a call in flight used to crash it.
    script = SYNC_CLOSE_SCRIPT.format(here=HERE, folder=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stdout, result.stderr) == (0, "ok\n", "")


# -- full disks and read-only files --------------------------------------------


def test_full_disk_enqueue_fails_cleanly_and_stores_nothing(sqlite_db):
    async def main():
        async with litejobs.connect(sqlite_db) as store:
            kept = await store.enqueue(Echo("kept"))
            await fill_the_disk(store)
            with pytest.raises(litejobs.StoreError, match="database or disk is full"):
                await store.enqueue_many([Echo("x" * 5000) for _ in range(50)])
            await make_room_on_the_disk(store)
            assert [j.id for j in await store.jobs()] == [kept]  # nothing partial
            assert (await store.get(kept)).payload == {"value": "kept"}

    run(main())


def test_worker_keeps_retrying_an_outcome_write_until_the_disk_has_room(sqlite_db, caplog):
    @dataclass
    class BigResult(litejobs.Job):
        NAME = "big_result"

        async def run(self, state):
            return "r" * 200_000  # the outcome write needs new pages

    async def main():
        async with litejobs.connect(sqlite_db) as store:
            job_id = await store.enqueue(BigResult())
            await fill_the_disk(store, spare_pages=2)
            async with litejobs.Worker(store, [BigResult]):
                await wait_until(lambda: _true_when("database or disk is full" in caplog.text),
                                 "a failed outcome write")
                assert (await store.get(job_id)).state == "running"
                await make_room_on_the_disk(store)  # room again
                info = await wait_state(store, job_id, "done")
            assert len(info.result) == 200_000 and info.attempts == 1

    caplog.set_level("WARNING", logger="litejobs")
    run(main())


def _as_nobody(fn, *args):
    """Run fn(*args) in a forked child without root's power to ignore file modes."""
    import warnings

    read, write = os.pipe()
    # fork, not spawn: the user nobody may not read root's Python to start a
    # new one.  The child only drops privileges and opens a database.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child
        try:
            os.close(read)
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            os.write(write, str(fn(*args)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        result = pipe.read()
    os.waitpid(pid, 0)
    return result


def _connect_error(path):
    async def attempt():
        try:
            async with litejobs.connect(path):
                return "opened"
        except litejobs.StoreError as exc:
            return f"StoreError: {exc}"

    return asyncio.run(attempt())


@pytest.fixture
def open_folder():
    """A folder any user may enter (pytest's own tmp folders are private to root)."""
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="litejobs-test-")
    os.chmod(folder, 0o755)
    yield folder
    os.chmod(folder, 0o755)
    shutil.rmtree(folder)


def test_read_only_file_or_folder_gives_a_clear_error(open_folder):
    folder = os.path.join(open_folder, "data")
    os.mkdir(folder)
    db = os.path.join(folder, "jobs.db")
    run(_open_and_close(db))
    os.chmod(db, 0o444)
    message = _as_nobody(_connect_error, db)
    assert message.startswith(f"StoreError: {db}: cannot write to the database: the file or its folder is read-only")
    os.chmod(db, 0o666)
    os.chmod(folder, 0o555)
    try:
        assert "read-only" in _as_nobody(_connect_error, db)
        assert "Permission denied" in _as_nobody(_connect_error, os.path.join(folder, "new.db"))
    finally:
        os.chmod(folder, 0o755)


# -- the command line ----------------------------------------------------------


@pytest.fixture
def demo_db(db):
    """A database with a done, a dead, a pending and a scheduled job, on each store."""
    path = db

    async def fill():
        async with litejobs.connect(path) as store:
            ok = await store.enqueue(Echo("ok"))
            bad = await store.enqueue(failing_job(litejobs.Count(0))())
            async with litejobs.Worker(store, [Echo, failing_job(litejobs.Count(0))]):
                await wait_state(store, ok, "done")
                await wait_state(store, bad, "dead")
            await store.enqueue(Noop())
            await store.enqueue(Noop(), delay=7200)
            return ok, bad

    ok, bad = run(fill())
    return path, ok, bad


def test_cli_stats_and_jobs(capsys, demo_db):
    path, ok, bad = demo_db
    code, out, _ = _cli(capsys, "--db", path, "stats")
    assert code == 0
    header, row = out.splitlines()
    assert header.split()[:7] == ["QUEUE", "PENDING", "SCHEDULED", "RUNNING", "DONE", "DEAD", "CANCELLED"]
    assert row.split()[:7] == ["default", "1", "1", "0", "1", "1", "0"]
    code, out, _ = _cli(capsys, "--db", path, "stats", "--json")
    assert orjson_loads(out)["default"]["dead_counts"]["all_time"] == 1
    code, out, _ = _cli(capsys, "--db", path, "jobs", "--state", "dead")
    lines = out.splitlines()
    assert len(lines) == 2 and lines[1].split()[:4] == [str(bad), "failing", "default", "dead"]
    assert "RuntimeError: failure number 1" in lines[1] and ("ago" in lines[1] or "now" in lines[1])
    code, out, _ = _cli(capsys, "--db", path, "jobs", "--json", "--limit", "1")
    assert [job["state"] for job in orjson_loads(out)] == ["pending"]
    code, out, _ = _cli(capsys, "--db", path, "jobs")
    assert "in 1h" in out or "in 2h" in out


def test_cli_show_retry_cancel_purge(capsys, demo_db):
    path, ok, bad = demo_db
    code, out, _ = _cli(capsys, "--db", path, "show", str(bad))
    assert code == 0 and "state       dead" in out and "Traceback" in out
    assert orjson_loads(_cli(capsys, "--db", path, "show", str(ok), "--json")[1])["result"] == "ok"
    code, out, _ = _cli(capsys, "--db", path, "retry", str(bad))
    assert code == 0 and out.strip() == f"job {bad}: back to pending"
    code, out, _ = _cli(capsys, "--db", path, "retry", "--dead")
    assert out.strip() == "0 dead job(s) back to pending"
    code, out, _ = _cli(capsys, "--db", path, "cancel", str(bad), str(ok))
    assert out.splitlines() == [f"job {bad}: cancelled", f"job {ok}: already done, left alone"]
    code, out, _ = _cli(capsys, "--db", path, "purge", "--state", "done", "--older-than", "0s")
    assert code == 0 and out.strip() == "1 done job(s) deleted"
    code, out, _ = _cli(capsys, "--db", path, "purge", "--state", "cancelled", "--older-than", "7d")
    assert out.strip() == "0 cancelled job(s) deleted"


def test_cli_user_mistakes_are_one_line_errors(capsys, tmp_path, demo_db, monkeypatch):
    path, ok, bad = demo_db
    (tmp_path / "broken_module.py").write_text("JOBS = [\n")
    monkeypatch.chdir(tmp_path)
    missing = str(tmp_path / "nothing-here.db")
    for argv, expected in [
        (["--db", missing, "stats"], "no such file (use --db PATH or set LITEJOBS_DB)"),
        (["--db", path, "show", "999"], "no job with id 999"),
        (["--db", path, "cancel", "999"], "no job with id 999"),
        (["--db", path, "retry"], "give one or more job ids"),
        (["--db", path, "worker", "no_colon_here"], "needs MODULE:ATTR"),
        (["--db", path, "worker", "no_such_module_xyz:jobs"], "cannot import 'no_such_module_xyz'"),
        (["--db", path, "worker", "litejobs:no_such_attr"], "has no attribute 'no_such_attr'"),
        (["--db", path, "worker", "litejobs:__version__"], "give a list of Job classes"),
        (["--db", path, "worker", "test_litejobs:Noop"], "is a Job class; give a list of Job classes"),
        (["--db", path, "worker", "broken_module:JOBS"], "cannot import 'broken_module': SyntaxError"),
    ]:
        code, out, err = _cli(capsys, *argv)
        assert code == 1 and out == "", argv
        assert err.startswith("litejobs: error: ") and expected in err and err.count("\n") == 1, err
    assert not os.path.exists(missing)  # inspecting never creates a file
    with pytest.raises(SystemExit) as exit_info:
        litejobs.main(["--db", path, "purge", "--state", "done", "--older-than", "7 days"])
    assert exit_info.value.code == 2
    assert "bad duration '7 days'" in capsys.readouterr().err


def _table_dump(db):
    return [query(db, f"SELECT * FROM {table} ORDER BY 1") for table in
            ("litejobs_jobs", "litejobs_counts", "litejobs_recurring", "litejobs_workers", "litejobs_meta")]


def test_cli_inspection_changes_nothing_on_either_store(capsys, demo_db):
    path, ok, bad = demo_db
    before = _table_dump(path)
    for argv in (["stats"], ["jobs"], ["show", str(bad)], ["export"], ["jobs", "--json"]):
        assert _cli(capsys, "--db", path, *argv)[0] == 0
    assert _table_dump(path) == before
    with litejobs.connect_sync(path, create=False, read_only=True) as store:  # what the CLI opens
        with pytest.raises(litejobs.StoreError, match="read-only|readonly"):
            store.retry(bad)


@dataclass
class Doomed(litejobs.Job):
    NAME = "doomed"

    async def run(self, state):
        raise litejobs.Abort("no point trying again")


def test_export_and_import_move_waiting_dead_and_scheduled_work_once(capsys, tmp_path, db):
    clock = FakeClock()
    source = str(tmp_path / "old.db")

    async def fill():
        async with litejobs.connect(source, clock=clock) as store:
            bad = failing_job(litejobs.Count(1), litejobs.Linear(30))
            twice = [await store.enqueue(Echo("same")) for _ in range(2)]  # two identical jobs stay two
            retried = await store.enqueue(bad())
            dead = await store.enqueue(Doomed())
            later = await store.enqueue(Echo("later"), delay=3600, priority=7, unique_key="nightly")
            async with litejobs.Worker(store, [bad, Doomed], poll_interval=0.01):
                await wait_state(store, retried, "pending", attempts=1)
                await wait_state(store, dead, "dead")
            await store.every(60, Noop(), key="tick")
            return twice, retried, dead, later

    twice, retried, dead, later = run(fill())
    code, exported, err = _cli(capsys, "--db", source, "export")
    assert code == 0 and err.strip() == "exported 5 job(s) and 1 schedule(s)"
    (tmp_path / "jobs.jsonl").write_text(exported)

    def moved():
        columns = "name, queue, payload, state, priority, run_at, attempts, unique_key, created_at, last_error"
        return sorted(query(db, f"SELECT {columns} FROM litejobs_jobs"), key=repr), \
            query(db, "SELECT key, interval, next_run, payload FROM litejobs_recurring")

    for attempt in range(2):  # the same file twice adds nothing twice (a third time below)
        code, out, _ = _cli(capsys, "--db", db, "import", str(tmp_path / "jobs.jsonl"))
        assert code == 0
        assert out.strip() == ("imported 5 job(s) (0 already there) and 1 new schedule(s)" if attempt == 0 else
                               "imported 0 job(s) (5 already there) and 0 new schedule(s)")
        assert moved() == (sorted(query(source, "SELECT name, queue, payload, state, priority, run_at, attempts, "
                                                "unique_key, created_at, last_error FROM litejobs_jobs"), key=repr),
                           query(source, "SELECT key, interval, next_run, payload FROM litejobs_recurring"))
    with litejobs.connect_sync(db, clock=FakeClock()) as store:
        imported = {job.payload.get("value"): job for job in store.jobs()}
        assert imported["later"].run_at == datetime.fromtimestamp(T0 + 3600, timezone.utc)
        assert store.stats()["default"].dead == 1 and store.stats()["default"].scheduled == 2

    # Once the imported jobs ran and were purged, the file still adds nothing.
    async def run_them():
        async with litejobs.connect(db, clock=clock) as store:
            async with litejobs.Worker(store, [Echo], poll_interval=0.01):
                await wait_state(store, imported["same"].id, "done")
            await store.purge(state="done")

    run(run_them())
    code, out, _ = _cli(capsys, "--db", db, "import", str(tmp_path / "jobs.jsonl"))
    assert out.strip() == "imported 0 job(s) (5 already there) and 0 new schedule(s)"

    # Bad input: a clear error naming the line, and nothing stored.
    before = moved()
    lines = exported.splitlines()
    job_line, schedule_line = lines[1], lines[-1]
    for number, (bad, expected) in enumerate([
        ('{"job": {"name": "x"}, "origin": "1@1.0"}', "line 3: the job lacks queue, payload"),
        ('{"job": {"name": "x"}}', "line 3: expected a job (with its origin)"),
        (schedule_line.replace('"interval":60.0', '"interval":0'), "line 3: interval cannot be 0"),
        (schedule_line.replace('"backoff":"exponential"', '"backoff":"weird"'), "line 3: backoff cannot be 'weird'"),
        (job_line.replace('"priority":0', '"priority":1.7'), "line 3: priority cannot be 1.7"),
        (job_line.replace('"timeout_ms":15000', '"timeout_ms":0'), "line 3: timeout_ms cannot be 0"),
        (job_line.replace('"state":"pending"', '"state":"running"'), "line 3: state cannot be 'running'"),
        (job_line.replace('"payload":"{', '"payload":"not json{'), "line 3: payload is not JSON text"),
    ]):
        broken = [*lines[:2], bad.replace('"origin":"', f'"origin":"new{number}-'), *lines[2:]]
        (tmp_path / "broken.jsonl").write_text("\n".join(broken) + "\n")
        code, _, err = _cli(capsys, "--db", db, "import", str(tmp_path / "broken.jsonl"))
        assert code == 1 and expected in err and err.count("\n") == 1, (bad, err)
    for file, expected in (("old.db", "not a litejobs export (not UTF-8 text)"),
                           ("missing.jsonl", "No such file or directory")):
        code, _, err = _cli(capsys, "--db", db, "import", str(tmp_path / file))
        assert code == 1 and expected in err and err.count("\n") == 1, err
    assert moved() == before

    # Running jobs do not move: stop the workers first.
    async def start_one():
        async with litejobs.connect(source, clock=clock) as store:
            await claim(store, 1, ["echo"])

    run(start_one())
    code, out, err = _cli(capsys, "--db", source, "export")
    assert code == 1 and out == "" and "1 job(s) are running: stop the workers first" in err


def test_durations_and_relative_times():
    assert [litejobs._parse_duration(t) for t in ("90s", "15m", "2h", "7d", "1w", "30")] == [
        90, 900, 7200, 604800, 604800, 30]
    now = T0
    def at(s):
        return datetime.fromtimestamp(T0 + s, timezone.utc)
    assert [litejobs._relative(at(s), now) for s in (-180, 7200, 0.2, -90000)] == ["3m ago", "in 2h", "now", "1d ago"]


def subprocess_free_main(argv):
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        litejobs.main(argv)
    return out.getvalue()


def test_cli_inspection_changes_nothing_and_reads_read_only_files(capsys, tmp_path, open_folder):
    app_db = str(tmp_path / "app.db")
    conn = sqlite3.connect(app_db)
    conn.execute("CREATE TABLE users (name TEXT)")
    conn.commit()
    conn.close()
    before = open(app_db, "rb").read()
    code, out, err = _cli(capsys, "--db", app_db, "stats")
    assert code == 1 and "not a litejobs database" in err
    assert open(app_db, "rb").read() == before

    db = os.path.join(open_folder, "jobs.db")
    with litejobs.connect_sync(db) as store:
        store.enqueue(Noop())
    os.chmod(db, 0o444)
    os.chmod(open_folder, 0o555)
    try:
        def stats_line(path):
            return subprocess_free_main(["--db", path, "jobs"])

        assert "noop" in _as_nobody(stats_line, db)
    finally:
        os.chmod(open_folder, 0o755)


def test_demo_never_deletes_a_file_it_did_not_make(capsys, tmp_path):
    app_db = str(tmp_path / "app.db")
    with litejobs.connect_sync(app_db) as store:
        job_id = store.enqueue(Noop())
    code, out, err = _cli(capsys, "demo", "--db", app_db)
    assert code == 1 and "not the demo's" in err
    with litejobs.connect_sync(app_db) as store:
        assert store.get(job_id).name == "noop"


JOBS_FOR_CLI = """
import asyncio
import dataclasses
from dataclasses import dataclass
import litejobs

@dataclass
class Hello(litejobs.Job):
    NAME = "hello"
    who: str = "cli"
    async def run(self, state):
        return "hello " + self.who

JOBS = [Hello]

def make_worker(store):
    return litejobs.Worker(store, JOBS, concurrency=2, poll_interval=0.01)
"""


def _hello_job(folder):
    sys.path.insert(0, str(folder))
    try:
        import cli_jobs
    finally:
        sys.path.remove(str(folder))
    return cli_jobs.Hello()


@pytest.mark.slow
@pytest.mark.parametrize("target", ["cli_jobs:JOBS", "cli_jobs:make_worker"])
def test_cli_worker_runs_jobs_and_stops_cleanly_on_sigterm(tmp_path, target):
    (tmp_path / "cli_jobs.py").write_text(JOBS_FOR_CLI)
    db = str(tmp_path / "cli.db")
    with litejobs.connect_sync(db) as store:
        job_id = store.enqueue_many([litejobs.new_job(_hello_job(tmp_path))])[0]
    process = subprocess.Popen(
        [sys.executable, "-m", "litejobs", "--db", db, "worker", target],
        cwd=tmp_path, env=dict(os.environ, PYTHONPATH=HERE), stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        with litejobs.connect_sync(db) as store:
            while store.get(job_id).state != "done":
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.02)
            assert store.get(job_id).result == "hello cli"
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
    err = process.stderr.read()
    assert code == 0, err
    assert "worker started" in err and "worker stopped" in err and "Traceback" not in err


@pytest.mark.slow
def test_cli_through_a_real_process_and_stats_watch(demo_db):
    path, ok, bad = demo_db
    result = subprocess.run([sys.executable, "-m", "litejobs", "--db", path, "jobs", "--state", "dead"],
                            capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=HERE), timeout=60)
    assert result.returncode == 0 and f"{bad}  failing" in result.stdout
    result = subprocess.run([sys.executable, "-m", "litejobs", "--db", path, "show", "777"],
                            capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=HERE), timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (1, "", "litejobs: error: no job with id 777\n")
    piped = subprocess.run(f"{sys.executable} -m litejobs --db {path} jobs --limit 100 | head -n 1", shell=True,
                           capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=HERE), timeout=60)
    assert piped.stdout.startswith("ID") and "Traceback" not in piped.stderr
    watch = subprocess.Popen([sys.executable, "-m", "litejobs", "--db", path, "stats", "--watch"],
                             stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=HERE))
    first_screen = ""
    while "default" not in first_screen:
        first_screen += watch.stdout.readline()
    watch.send_signal(signal.SIGINT)
    assert watch.wait(timeout=30) == 0
    assert "QUEUE" in first_screen and "Ctrl-C" in first_screen


# -- the worker's decisions, stepped on injected time (no I/O) -----------------


def test_every_kind_of_request_counts_as_something_to_send():
    assert worker_request(names=["x"]).asks_nothing()
    assert not worker_request(prune_before=0.0).asks_nothing()  # a falsy value still asks
    for field in dataclasses.fields(worker_request()):
        if field.name not in litejobs._Request.TOLD:  # what it asks, not what it is told
            value = {"bool": True, "float | None": 1.0}.get(field.type, [1])
            if field.name == "wants":
                value = {"default": 1}
            assert not worker_request(**{field.name: value}).asks_nothing(), field.name


def test_planner_claims_everywhere_at_first_then_only_where_claims_came_back_full():
    planner = new_planner()
    request = planner.plan(T0, 100.0, (), ())
    assert request.wants == {"default": 2, "email": 1} and request.housekeeping
    planner.took(request, store_answer(T0, {"default": [claimed_row(1), claimed_row(2)], "email": []}), 100.0, ())
    planner.running["default"] = 2  # the worker started both
    assert planner.to_ask == {"default"} and not planner.go_again()  # full, and no slot free
    assert planner.plan(T0, 100.1, (), ()).wants == {}
    planner.running["default"] = 1  # one finished: its queue may hold more
    assert planner.go_again() and planner.plan(T0, 100.2, (), ()).wants == {"default": 1}


def test_planner_asks_again_where_parked_jobs_took_room_or_were_let_through():
    planner = new_planner()
    request = planner.plan(T0, 100.0, (), ())
    answer = store_answer(T0, {"default": [claimed_row(1)], "email": []})
    answer.parked = {"default": 1}  # the claim was full: one taken, one parked
    planner.took(request, answer, 100.0, ())
    assert planner.to_ask == {"default"} and planner.limited
    request = planner.plan(T0, 100.1, (), ())
    planner.took(request, store_answer(T0, {"default": []}), 100.1, ())
    assert planner.to_ask == set()
    request = planner.plan(T0, 100.2, (), [success(claimed_row(1))])
    answer = store_answer(T0, {})
    answer.released = 1  # the outcome freed a slot: its parked jobs are due again
    planner.took(request, answer, 100.2, ())
    assert planner.to_ask == {"default", "email"} and planner.go_again()


def test_planner_asks_a_full_queue_again_when_a_slot_frees_after_a_wake_up():
    planner = new_planner({"default": 1})
    planner.running["default"] = 1
    planner.something_changed()  # an enqueue while the only slot is busy
    assert planner.plan(T0, 0.0, (), ()).wants == {}
    planner.running["default"] = 0
    assert planner.plan(T0, 0.1, (), ()).wants == {"default": 1}  # not forgotten meanwhile


def test_planner_looks_in_every_queue_at_every_housekeeping():
    planner = new_planner()
    request = planner.plan(T0, 0.0, (), ())
    planner.took(request, store_answer(T0, {"default": [], "email": []}), 0.0, ())
    assert planner.plan(T0, 0.5, (), ()).wants == {}  # nothing heard, nothing due
    assert planner.plan(T0, 1.0, (), ()).wants == {"default": 2, "email": 1}  # the once-a-second look


def test_planner_housekeeping_and_sleep_run_on_the_monotonic_clock():
    planner = new_planner()
    assert planner.plan(T0, 10.0, (), ()).housekeeping
    assert not planner.plan(T0 - 600, 10.5, (), ()).housekeeping  # a wall-clock step back changes nothing
    assert planner.sleep_for(T0 - 600, 10.5) == pytest.approx(0.5)
    assert planner.plan(T0 - 600, 11.0, (), ()).housekeeping  # a second later on the monotonic clock


def test_planner_sleeps_until_the_next_due_time_it_knows():
    planner = new_planner()
    request = planner.plan(T0, 0.0, (), ())
    planner.took(request, store_answer(T0, {"default": [], "email": []}, next_due=T0 + 0.25), 0.0, ())
    assert planner.sleep_for(T0, 0.0) == pytest.approx(0.25)
    assert planner.plan(T0 + 0.25, 0.25, (), ()).wants == {"default": 2, "email": 1}


def test_planner_keeps_a_due_time_that_a_late_trip_did_not_claim_for():
    planner = new_planner()
    answer = store_answer(T0, {"default": [], "email": []}, next_due=T0 + 1)
    planner.took(planner.plan(T0, 0.0, (), ()), answer, 0.0, ())
    request = planner.plan(T0 + 0.5, 0.5, (), ())  # no claim: nothing due yet
    assert request.wants == {}
    planner.took(request, store_answer(T0 + 2, next_due=None), 2.0, ())  # answered after the due time
    assert planner.plan(T0 + 2, 2.0, (), ()).wants == {"default": 2, "email": 1}


def test_planner_fails_an_expired_attempt_only_once_seen_so_for_the_confirm_time():
    planner = new_planner()
    expired = [expiry(7, 1, T0 - 5)]
    request = planner.plan(T0, 0.0, (), ())
    planner.took(request, store_answer(T0, expired=expired), 0.0, ())
    assert planner.plan(T0, 1.0, (), ()).reap == []  # seen once: a suspect
    planner.took(planner.plan(T0, 2.0, (), ()), store_answer(T0, expired=expired), 2.0, ())
    assert planner.plan(T0, 3.0, (), ()).reap == expired  # seen expired since 0.0, and it is 3.0
    # Its owner wrote a new deadline meanwhile: the watch starts again.
    planner = new_planner()
    planner.took(planner.plan(T0, 0.0, (), ()), store_answer(T0, expired=expired), 0.0, ())
    renewed = [expiry(7, 1, T0 - 1)]
    planner.took(planner.plan(T0, 2.0, (), ()), store_answer(T0, expired=renewed), 2.0, ())
    assert planner.plan(T0, 3.0, (), ()).reap == []


def test_planner_never_suspects_its_own_attempts():
    planner = new_planner()
    own = [running_attempt(7, started=0.0)]
    planner.took(planner.plan(T0, 0.0, own, ()), store_answer(T0, expired=[expiry(7, 1, T0 - 5)]), 0.0, own)
    assert planner.suspects == {}


def test_planner_re_expresses_running_deadlines_after_a_clock_step():
    planner = new_planner()
    planner.plan(T0, 0.0, (), ())
    attempt = running_attempt(7, started=0.0, timeout_ms=10_000)  # claimed then
    assert planner.plan(T0 + 0.1, 0.1, [attempt], ()).renew == ()  # the clock is where it was
    assert planner.plan(T0 + 0.2, 0.2, [attempt], ()).renew == ()
    request = planner.plan(T0 + 64, 4.0, [attempt], ())  # the wall clock jumped a minute ahead
    assert request.renew == [(7, 1, pytest.approx(6.0))]  # 10 s of TIMEOUT, 4 s of them gone
    assert planner.plan(T0 + 64.5, 4.5, [attempt], ()).renew == ()


def test_planner_asks_nothing_of_a_stopping_worker_but_its_outcomes():
    planner = new_planner()
    planner.plan(T0, 0.0, (), ())
    planner.stopping = True
    request = planner.plan(T0 + 5, 5.0, (), ())
    assert request.wants == {} and not request.housekeeping and request.asks_nothing()
    outcome = success(claimed_row(1))
    assert planner.plan(T0 + 5, 5.1, (), [outcome]).outcomes == [outcome]


# -- what litejobs relies on in aiosqlite --------------------------------------


def test_what_litejobs_relies_on_in_aiosqlite(sqlite_db):
    # Store runs each transaction as one function on aiosqlite's thread,
    # through Connection._execute and _conn, which aiosqlite does not
    # document.  A release that changes them fails here, not in a worker.
    import aiosqlite

    async def main():
        conn = await aiosqlite.connect(sqlite_db, isolation_level=None)
        raw = conn._conn
        assert isinstance(raw, sqlite3.Connection)
        where = await conn._execute(lambda a, b=0: (threading.current_thread(), a + b), 1, b=2)
        assert where[0] is not threading.current_thread() and where[1] == 3
        with pytest.raises(ZeroDivisionError):
            await conn._execute(lambda: 1 / 0)
        await conn.close()
        with pytest.raises(ValueError):
            conn._conn  # noqa: B018 (the property raises once closed)

    run(main())


# -- a property test: the store against a model of SPEC section 2 --------------


class StoreAgainstModel(RuleBasedStateMachine):
    """Drives the store's own operations with injected time and checks every
    job's state, attempt count and due time against a plain model."""

    def __init__(self):
        super().__init__()
        import tempfile

        self.folder = tempfile.mkdtemp(prefix="litejobs-model-")
        self.clock = FakeClock()
        self.store = litejobs.connect_sync(os.path.join(self.folder, "model.db"), clock=self.clock)
        self.model = {}  # id -> dict(state, attempts, run_at, max_retries, backoff, lease, cancel)
        self.stale = []  # (id, lease) of attempts that lost their row

    def teardown(self):
        import shutil

        self.store.close()
        shutil.rmtree(self.folder)

    def exchange(self, **request):
        request.setdefault("names", ["m"])
        return round_trip_sync(self.store, **request)

    def running(self):
        return sorted(i for i, job in self.model.items() if job["state"] == "running")

    def claimed(self, job_id):
        """The job as its claim returned it, from the model."""
        job = self.model[job_id]
        return claimed_row(job_id, name="m", queue="q", attempts=job["attempts"], lease=job["lease"],
                           max_retries=job["max_retries"], backoff=job["backoff"], timeout_ms=1000,
                           run_at=job["run_at"])

    def fail_in_model(self, job, delay=None, dead_now=False):
        retries_left = job["max_retries"] is None or job["attempts"] <= job["max_retries"]
        if job["cancel"]:  # a job asked to stop is not retried, and ends as asked
            job["state"] = "cancelled"
        elif dead_now or not retries_left:
            job["state"] = "dead"
        else:
            job["state"] = "pending"
            if delay is None:  # SPEC section 2, written out again rather than borrowed from the module
                value, k = job["backoff"].value, job["attempts"]
                delay = value if isinstance(job["backoff"], litejobs.Linear) else value ** k
            job["run_at"] = self.clock.now + delay

    @precondition(lambda self: len(self.model) < 8)
    @rule(max_retries=st.sampled_from([None, 0, 1, 3]),
          backoff=st.sampled_from([litejobs.Linear(5), litejobs.Exponential(2), litejobs.Exponential(3)]),
          delay=st.sampled_from([0, 10, 100]))
    def enqueue(self, max_retries, backoff, delay):
        limit = litejobs.Infinite if max_retries is None else litejobs.Count(max_retries)
        row = litejobs.NewJob("m", "q", "{}", limit, backoff, 1000, delay=delay)
        job_id = self.store.enqueue(row)
        self.model[job_id] = dict(state="pending", attempts=0, run_at=self.clock.now + delay,
                                  max_retries=max_retries, backoff=backoff, lease=None, cancel=False)

    @rule(seconds=st.sampled_from([0.5, 2, 5, 30, 200]))
    def advance(self, seconds):
        self.clock.advance(seconds)

    @rule(n=st.integers(1, 4))
    def claim(self, n):
        due = sorted((job["run_at"], i) for i, job in self.model.items()
                     if job["state"] == "pending" and job["run_at"] <= self.clock.now)
        expected = [i for _, i in due[:n]]
        claimed = self.exchange(wants={"q": n}).claimed["q"]
        assert [row.id for row in claimed] == expected
        for row in claimed:
            job = self.model[row.id]
            job.update(state="running", attempts=job["attempts"] + 1, lease=row.lease,
                       deadline=self.clock.now + 1 + WATCHDOG_GRACE)
            assert row.attempts == job["attempts"]

    @precondition(lambda self: self.running())
    @rule(data=st.data(), how=st.sampled_from(["success", "failure", "retry_now", "retry_later", "abort"]))
    def finish(self, data, how):
        job_id = data.draw(st.sampled_from(self.running()))
        job = self.model[job_id]
        limits = self.claimed(job_id)
        if how == "success":
            outcome = success(limits)
            job["state"] = "done"
        else:
            delay = {"retry_now": 0, "retry_later": 7}.get(how)
            outcome = failure(limits, requested_delay=delay, dead_now=how == "abort")
            self.fail_in_model(job, delay, dead_now=how == "abort")
        assert len(self.exchange(outcomes=[outcome]).written) == 1

    @rule(seconds=st.sampled_from([0, 3, 9, 27, 81]))
    def a_round_of_failures(self, seconds):
        """Time passes, then every due job is claimed and fails: walks the backoff schedule."""
        self.clock.advance(seconds)
        self.claim(100)
        outcomes = []
        for job_id in self.running():
            job = self.model[job_id]
            limits = self.claimed(job_id)
            outcomes.append(failure(limits))
            self.fail_in_model(job)
        self.exchange(outcomes=outcomes)

    @precondition(lambda self: self.running())
    @rule(then_claim_again=st.booleans())
    def watchdog(self, then_claim_again):
        self.clock.advance(1 + WATCHDOG_GRACE)
        for job_id in self.running():
            job = self.model[job_id]
            if job["deadline"] <= self.clock.now:
                self.stale.append((job_id, job["lease"]))
                self.fail_in_model(job)
        expired = self.exchange(housekeeping=True).expired
        self.exchange(reap=expired)
        if then_claim_again:  # so that late outcomes meet jobs running again
            self.clock.advance(100)
            self.claim(100)

    @precondition(lambda self: self.running())
    @rule(data=st.data(), left=st.sampled_from([0.5, 1, 30]))
    def owner_renews_its_deadline(self, data, left):
        """The owner says again how long its attempt may still run, as after a clock step."""
        job_id = data.draw(st.sampled_from(self.running()))
        job = self.model[job_id]
        self.exchange(renew=[(job_id, job["lease"], left)])
        job["deadline"] = self.clock.now + left + WATCHDOG_GRACE

    def stale_of_running_jobs(self):
        return [(i, lease) for i, lease in self.stale if self.model.get(i, {}).get("state") == "running"]

    @precondition(lambda self: self.stale_of_running_jobs())
    @rule(data=st.data())
    def late_outcome_while_the_job_runs_again(self, data):
        job_id, lease = data.draw(st.sampled_from(self.stale_of_running_jobs()))
        outcome = success(claimed_row(job_id, name="m", queue="q", lease=lease))
        assert self.exchange(outcomes=[outcome]).written == []

    @precondition(lambda self: self.stale)
    @rule(data=st.data())
    def late_outcome_changes_nothing(self, data):
        job_id, lease = data.draw(st.sampled_from(self.stale))
        outcome = success(claimed_row(job_id, name="m", queue="q", lease=lease))
        assert self.exchange(outcomes=[outcome]).written == []

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def cancel(self, data):
        job_id = data.draw(st.sampled_from(sorted(self.model)))
        job = self.model[job_id]
        self.store.cancel(job_id)
        if job["state"] == "pending":
            job["state"] = "cancelled"
        elif job["state"] == "running":
            job["cancel"] = True

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def retry(self, data):
        job_id = data.draw(st.sampled_from(sorted(self.model)))
        job = self.model[job_id]
        changed = self.store.retry(job_id)
        assert changed == (job["state"] in ("done", "dead", "cancelled"))
        if changed:
            job.update(state="pending", attempts=0, run_at=self.clock.now, cancel=False)

    @rule()
    def prune(self):
        self.exchange(prune_before=self.clock.now)
        for job_id in [i for i, job in self.model.items() if job["state"] in ("done", "cancelled")]:
            del self.model[job_id]

    @invariant()
    def store_agrees_with_model(self):
        rows = {job.id: job for job in self.store.jobs(limit=10_000)}
        assert set(rows) == set(self.model)
        for job_id, job in self.model.items():
            info = rows[job_id]
            assert (info.state.value, info.attempts) == (job["state"], job["attempts"]), job_id
            if job["state"] == "pending":
                assert info.run_at.timestamp() == pytest.approx(job["run_at"]), job_id


StoreAgainstModel.TestCase.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
test_store_against_model = StoreAgainstModel.TestCase


# -- the benchmark script ------------------------------------------------------


@pytest.mark.slow
def test_benchmark_script_still_runs(tmp_path):
    out = tmp_path / "figures.json"
    result = subprocess.run([sys.executable, os.path.join(HERE, "bench_litejobs.py"), "--smoke",
                             "--dir", str(tmp_path), "--json", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    figures = orjson_loads(out.read_text())["figures"]
    assert len(figures) > 20
    for line in ("drain c=256", "await enqueue, 100 concurrent tasks", "pick-up p50, same process"):
        assert line in result.stdout


def test_benchmark_script_still_runs_on_postgresql(tmp_path):
    if not POSTGRES:
        pytest.skip(NO_POSTGRES)
    result = subprocess.run([sys.executable, os.path.join(HERE, "bench_litejobs.py"), "--smoke", "--db", POSTGRES,
                             "--dir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for line in ("raw psycopg batch loop", "drain c=256, 4 worker processes", "pick-up p50, another process"):
        assert line in result.stdout
    leftovers = query(POSTGRES, "SELECT datname FROM pg_database WHERE datname LIKE 'litejobs_bench_%'")
    assert leftovers == []  # it drops the databases it made


# -- the enqueue path: the loop's own connection, batching, checkpoints ------------


def test_an_enqueue_waits_for_another_connections_write_lock_instead_of_failing(sqlite_db):
    async def main():
        async with litejobs.connect(sqlite_db) as store:
            other = sqlite3.connect(sqlite_db, isolation_level=None)
            other.execute("BEGIN IMMEDIATE")  # another process is writing
            enqueued = asyncio.ensure_future(store.enqueue(Echo("waited")))
            await asyncio.sleep(0.2)
            assert not enqueued.done()  # it waits on the database thread, not failing, not blocking the loop
            other.execute("COMMIT")
            job_id = await asyncio.wait_for(enqueued, 10)
            assert (await store.get(job_id)).payload == {"value": "waited"}

    run(main())


def test_the_wal_stays_bounded_when_only_the_loops_connection_writes(sqlite_db):
    async def main():
        async with litejobs.connect(sqlite_db) as store:
            for n in range(3000):  # a producer-only process, one enqueue after another
                await store.enqueue(Echo(n))
            await store.settle()  # the last checkpoint, too
            # 3,000 commits of a few pages each make a WAL of about 40 MB
            # when it never restarts; restarted every 256 rows, about 4 MB.
            assert os.path.getsize(sqlite_db + "-wal") < 15_000_000

    run(main())


def test_a_big_batch_is_written_off_the_event_loop(sqlite_db, monkeypatch):
    monkeypatch.setattr(litejobs, "_QUICK_ROWS", 10)

    async def main():
        async with litejobs.connect(sqlite_db) as store:
            await store.enqueue(Echo(0))  # the loop's turn to wait once, at the first commit
            await store.enqueue(Echo(1))
            quick = store._quick_commits
            assert quick >= 1
            await store.enqueue_many([Echo(n) for n in range(11)])
            assert store._quick_commits == quick  # went to the database thread
            assert len(await store.jobs()) == 13

    run(main())


def test_enqueueing_in_a_loop_lets_other_tasks_run(db):
    async def main():
        async with litejobs.connect(db) as store:
            done, turns = False, 0

            async def other_task():
                nonlocal turns
                while not done:
                    turns += 1
                    await asyncio.sleep(0)

            ticker = asyncio.ensure_future(other_task())
            await asyncio.sleep(0)
            turns = 0
            for n in range(160):
                await store.enqueue(Echo(n))
            done = True
            await ticker
            assert turns >= 160 // litejobs._YIELD_EVERY

    run(main())


def test_a_store_closed_from_another_thread_closes(db):
    holder = {}

    def open_in_a_thread():
        async def main():
            holder["store"] = await litejobs.connect(db)
            await holder["store"].enqueue(Echo(1))

        asyncio.run(main())

    thread = threading.Thread(target=open_in_a_thread)
    thread.start()
    thread.join()
    run(holder["store"].close())
    assert holder["store"].closed


async def _true(value):
    return value


def test_only_jobs_due_later_than_their_creation_are_indexed_by_due_time(sqlite_db):
    clock = FakeClock()

    async def main():
        async with litejobs.connect(sqlite_db, clock=clock) as store:
            await store.enqueue_many([Echo(1), Echo(2)])
            later = await store.enqueue(Echo(3), delay=60)
            answer = await round_trip(store, wants={"default": 0}, names=["echo"])
            assert answer.next_due == T0 + 60
            return later

    later = run(main())
    conn = sqlite3.connect(sqlite_db)
    indexed = conn.execute("SELECT id FROM litejobs_jobs INDEXED BY litejobs_jobs_scheduled "
                           "WHERE state = 'pending' AND run_at > created_at").fetchall()
    assert indexed == [(later,)]
    plan = " | ".join(row[-1] for row in conn.execute("EXPLAIN QUERY PLAN " + litejobs._SQL_NEXT_DUE, (T0,)))
    assert "USING INDEX litejobs_jobs_scheduled" in plan and "SCAN litejobs_jobs" not in plan, plan


# -- PostgreSQL: what only a server brings ---------------------------------------
# Connections that die, a server that restarts, hosts whose clocks disagree,
# and the driver an SQLite user never installs.

@dataclass
class Logged(litejobs.Job):
    """Writes one line per execution, outside the engine: "id attempt"."""

    NAME = "logged"
    TIMEOUT = 1000
    MAX_RETRIES = litejobs.Count(20)
    BACKOFF = litejobs.Linear(0)
    log: str
    pause: float = 0.0

    async def run(self, state):
        fd = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, f"{litejobs.current().id} {litejobs.current().attempt}\n".encode())
        os.close(fd)
        await asyncio.sleep(self.pause)


async def _drain_through(store, ids, disrupt, log):
    """Run a worker on ``ids`` while ``disrupt()`` (a blocking function, run
    in a thread) breaks the connections; then check that every job ended
    done and ran more than once only where an attempt was really cut."""
    async with litejobs.Worker(store, [Logged], concurrency=16, poll_interval=0.01):
        await asyncio.to_thread(disrupt)

        async def all_done():
            try:
                return (await store.stats())["default"].done == len(ids)
            except litejobs.StoreError:  # the server may still be coming back
                return False

        await wait_until(all_done, "every job to finish", timeout=60)
    infos = [await store.get(job_id) for job_id in ids]
    runs: dict[int, int] = {}
    for line in open(log).read().splitlines():
        job_id, _ = map(int, line.split())
        runs[job_id] = runs.get(job_id, 0) + 1
    assert all(info.state == "done" for info in infos)
    assert set(runs) == set(ids)  # every job ran
    # Twice only after a cut: each extra run is an attempt the watchdog failed
    # (its answer, or its outcome, was lost with the connection).
    assert all(runs[info.id] <= info.attempts for info in infos), [
        (info.id, runs[info.id], info.attempts) for info in infos if runs[info.id] > info.attempts]
    return runs


def _kill_litejobs_backends(db):
    name = db.rsplit("/", 1)[1]
    with _postgres_admin() as admin:
        return admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                             "WHERE datname = %s AND pid <> pg_backend_pid()", (name,)).fetchone()[0]


@pytest.mark.slow
def test_backends_killed_mid_drain_lose_nothing(tmp_path, postgresql_db):
    log = str(tmp_path / "runs.log")

    async def main():
        async with litejobs.connect(postgresql_db) as store:
            ids = await store.enqueue_many([Logged(log, pause=0.002) for _ in range(1500)])

            def disrupt():
                killed = 0
                for _ in range(5):
                    time.sleep(0.3)
                    killed += _kill_litejobs_backends(postgresql_db)
                assert killed >= 5  # the store's, the listener's: they were really cut

            return await _drain_through(store, ids, disrupt, log)

    run(main())


@pytest.mark.slow
def test_a_server_restart_mid_drain_loses_nothing(tmp_path, postgresql_db):
    restart = os.environ.get("LITEJOBS_TEST_POSTGRES_RESTART")
    if not restart:
        pytest.skip("set LITEJOBS_TEST_POSTGRES_RESTART to a command that restarts the server (.ci/run does)")
    log = str(tmp_path / "runs.log")

    async def main():
        async with litejobs.connect(postgresql_db) as store:
            ids = await store.enqueue_many([Logged(log, pause=0.002) for _ in range(1500)])

            def disrupt():
                time.sleep(0.3)
                subprocess.run(restart, shell=True, check=True, capture_output=True)

            await _drain_through(store, ids, disrupt, log)
            # Calls made while the server was away failed with a StoreError
            # (see _drain_through); now they work again.
            assert (await store.stats())["default"].done == len(ids)

    run(main())


SKEWED_WORKER = """
import asyncio, sys, time
real_time = time.time
time.time = lambda: real_time() + {skew}  # this host's clock is {skew:+} s off
sys.path.insert(0, {here!r})
sys.path.insert(0, {folder!r})
import litejobs
from skew_jobs import Stamp

async def main():
    async with litejobs.connect({db!r}) as store:
        await litejobs.Worker(store, [Stamp], poll_interval=0.01).run()

asyncio.run(main())
"""

SKEW_JOBS = """
import asyncio, os, time
from dataclasses import dataclass
import litejobs

@dataclass
class Stamp(litejobs.Job):
    NAME = "stamp"
    TIMEOUT = 10_000
    seconds: float

    async def run(self, state):
        # The monotonic clock is the same for every process of this machine.
        fd = os.open({log!r}, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, f"{{litejobs.current().id}} {{time.monotonic()}}\\n".encode())
        os.close(fd)
        await asyncio.sleep(self.seconds)
"""


@pytest.mark.slow
def test_hosts_whose_clocks_are_two_minutes_off_run_jobs_on_time_and_reap_nothing_live(tmp_path, postgresql_db):
    log = tmp_path / "stamps.log"
    (tmp_path / "skew_jobs.py").write_text(SKEW_JOBS.format(log=str(log)))
    sys.path.insert(0, str(tmp_path))
    try:
        import skew_jobs
    finally:
        sys.path.remove(str(tmp_path))
    processes = []

    def start_worker(skew):
        script = tmp_path / f"worker{skew}.py"
        script.write_text(SKEWED_WORKER.format(skew=skew, here=HERE, folder=str(tmp_path), db=postgresql_db))
        processes.append(subprocess.Popen([sys.executable, str(script)]))
        deadline = time.monotonic() + 30
        while len(query(postgresql_db, "SELECT id FROM litejobs_workers")) < len(processes):
            assert time.monotonic() < deadline, "the worker never started"
            time.sleep(0.05)

    try:
        with litejobs.connect_sync(postgresql_db) as store:
            # The worker two minutes behind runs long jobs; the one two
            # minutes ahead, if it believed its own clock, would find them
            # past their deadline and fail them, and run them again.
            start_worker(-120)
            long_ones = store.enqueue_many([skew_jobs.Stamp(6.0) for _ in range(4)])
            deadline = time.monotonic() + 30
            while store.stats()["default"].running < 4:
                assert time.monotonic() < deadline, store.stats()
                time.sleep(0.05)
            start_worker(120)
            # A job due in 3 s: the worker ahead would run it at once.
            enqueued = time.monotonic()
            later = store.enqueue(skew_jobs.Stamp(0), delay=3)
            deadline = time.monotonic() + 60
            while not all(store.get(job_id).state == "done" for job_id in [*long_ones, later]):
                assert time.monotonic() < deadline, [store.get(job_id) for job_id in [*long_ones, later]]
                time.sleep(0.1)
            infos = [store.get(job_id) for job_id in long_ones]
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            assert process.wait(timeout=30) == 0
    stamps = [line.split() for line in log.read_text().splitlines()]
    assert sorted(int(job_id) for job_id, _ in stamps) == sorted([*long_ones, later])  # each ran once
    assert all(info.attempts == 1 and info.last_error is None for info in infos)
    started = next(float(at) for job_id, at in stamps if int(job_id) == later)
    assert started - enqueued >= 3 - 0.05  # not early, on a clock two minutes ahead


def test_a_postgresql_url_without_psycopg_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if it were not installed
    expected = "pip install 'litejobs\\[postgres\\]'"
    with pytest.raises(litejobs.StoreError, match=expected):
        litejobs.connect_sync("postgresql://127.0.0.1/jobs")
    with pytest.raises(litejobs.StoreError, match=expected):
        run(_open_and_close("postgres://127.0.0.1/jobs"))
    run(_open_and_close(str(tmp_path / "jobs.db")))  # SQLite never needs it


def test_a_password_in_the_url_is_never_shown(capsys, caplog):
    url = "postgresql://app:s3cret-Pa55@127.0.0.1:1/jobs"  # nothing listens on port 1
    with pytest.raises(litejobs.StoreError) as raised:
        litejobs.connect_sync(url)
    assert "s3cret" not in str(raised.value) and "postgresql://app:***@127.0.0.1:1/jobs" in str(raised.value)
    with pytest.raises(litejobs.StoreError) as raised:
        run(_open_and_close(url))
    assert "s3cret" not in str(raised.value)
    code, out, err = _cli(capsys, "--db", url, "stats")
    assert code == 1 and "s3cret" not in out + err and "app:***@" in err
    assert "s3cret" not in caplog.text


def test_the_claim_walks_the_index_even_with_a_generic_plan(postgresql_db):
    import psycopg

    with litejobs.connect_sync(postgresql_db) as store:
        store.enqueue_many([Noop() for _ in range(20_000)])
        store.enqueue_many([Echo(n) for n in range(20_000)])
    plans = []
    for capped in (False, True):
        sql = litejobs._pg_claim(64, capped)
        for n, name in enumerate(("names", "caps", "queue", "now"), 1):
            sql = sql.replace(f"%({name})s", f"${n}")
        with psycopg.connect(postgresql_db, autocommit=True) as conn:
            conn.execute("ANALYZE litejobs_jobs")
            conn.execute("SET plan_cache_mode = force_generic_plan")  # as a prepared claim may fall back to
            conn.execute(f"PREPARE claim (text[], bigint[], text, float8) AS {sql}")
            plans.append("\n".join(row[0] for row in conn.execute(
                "EXPLAIN EXECUTE claim (ARRAY['echo'], ARRAY[3], 'default', 1e12)")))
    for plan in plans:
        assert "litejobs_jobs_claimable" in plan and "Seq Scan on litejobs_jobs" not in plan, plan


# -- pausing a queue ---------------------------------------------------------------


def test_a_paused_queue_claims_nothing_anywhere_until_resumed_and_running_jobs_finish(capsys, db):
    async def main():
        async with litejobs.connect(db) as store, litejobs.connect(db) as elsewhere:
            release = asyncio.Event()

            @dataclass
            class Slow(litejobs.Job):
                NAME = "slow"

                async def run(self, state):
                    await release.wait()
                    return "finished"

            running = await store.enqueue(Slow())
            async with litejobs.Worker(store, [Slow, Echo], poll_interval=0.01):
                await wait_state(store, running, "running")
                assert await elsewhere.pause("default") is True  # another connection, as another host
                assert await elsewhere.pause("default") is False
                waiting = await store.enqueue(Echo("later"))
                other_queue = await store.enqueue(Echo("urgent"), queue="urgent")
                async with litejobs.Worker(elsewhere, [Echo], queues=["default", "urgent"], poll_interval=0.01):
                    assert await elsewhere.wait(other_queue, timeout=15) == "urgent"  # other queues flow
                    release.set()
                    assert await store.wait(running, timeout=15) == "finished"  # a running job finishes
                    for _ in range(3):  # housekeeping looks at every queue once a second
                        await round_trip(store, wants={"default": 5}, names=["echo"])
                    assert (await store.get(waiting)).state == "pending"
                    stats = await store.stats()
                    assert stats["default"].paused and not stats["urgent"].paused
                    assert await store.resume("default") is True
                    assert await store.wait(waiting, timeout=15) == "later"
            assert not (await store.stats())["default"].paused

    run(main())
    code, out, _ = _cli(capsys, "--db", db, "pause", "reports")
    assert code == 0 and out.strip() == "queue 'reports': paused; running jobs finish"
    code, out, _ = _cli(capsys, "--db", db, "stats")
    assert "reports (paused)" in out
    assert orjson_loads(_cli(capsys, "--db", db, "stats", "--json")[1])["reports"]["paused"] is True
    code, out, _ = _cli(capsys, "--db", db, "resume", "reports")
    assert out.strip() == "queue 'reports': resumed"
    with pytest.raises(ValueError, match="queue must be a non-empty str"):
        litejobs.connect_sync(db).pause("")


MARK_JOBS = """
@dataclass
class Mark(litejobs.Job):
    NAME = "mark"
    to: str = "default"

    def queue(self):
        return self.to

    async def run(self, state):
        return self.to
"""


@pytest.mark.slow
def test_a_worker_in_another_process_sees_a_pause_and_a_resume(tmp_path, capsys, db):
    script = tmp_path / "pause_worker.py"
    script.write_text(worker_script(MARK_JOBS, "Mark", options="queues=['default', 'urgent']").format(here=HERE, db=db))
    Mark = script_jobs(MARK_JOBS, db=db)["Mark"]
    worker = subprocess.Popen([sys.executable, str(script)])
    try:
        async def main():
            async with litejobs.connect(db) as store:
                assert await store.wait(await store.enqueue(Mark()), timeout=30) == "default"  # it serves
                assert _cli(capsys, "--db", db, "pause", "default")[0] == 0
                held = await store.enqueue(Mark())
                # The worker claims in every queue it serves each time it looks:
                # once the urgent job is done, it has looked since the pause.
                for _ in range(3):
                    assert await store.wait(await store.enqueue(Mark("urgent")), timeout=30) == "urgent"
                assert (await store.get(held)).state == "pending"
                assert _cli(capsys, "--db", db, "resume", "default")[0] == 0
                assert await store.wait(held, timeout=30) == "default"

        run(main())
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0


# -- progress ------------------------------------------------------------------------


def test_progress_rides_the_worker_round_trip_and_shows_everywhere(capsys, db):
    release = asyncio.Event()

    @dataclass
    class Crunch(litejobs.Job):
        NAME = "crunch"

        async def run(self, state):
            context = litejobs.current()
            for step in range(1, 1001):  # a tight loop: no round trip per call
                await context.progress(step / 2000, note=f"row {step}")
            with pytest.raises(ValueError, match="progress must be a number from 0 to 1, got 1.5"):
                await context.progress(1.5)
            with pytest.raises(ValueError, match="note must be a str"):
                await context.progress(0.5, note=b"bytes")
            await release.wait()
            return "crunched"

    async def main():
        async with litejobs.connect(db) as store:
            events = []
            store.on_event(lambda event: events.append(event) if event.kind == "progress" else None)
            trips = 0
            exchange = store.exchange

            async def counted(request):
                nonlocal trips
                trips += 1
                return await exchange(request)

            store.exchange = counted
            job_id = await store.enqueue(Crunch())
            async with litejobs.Worker(store, [Crunch], poll_interval=0.01):
                async def reported():
                    info = await store.get(job_id)
                    return info if info.progress == 0.5 else None

                info = await wait_until(reported, "the last progress to be written")
                assert info.progress_note == "row 1000" and info.state == "running"
                assert trips < 20  # a second's housekeeping or two, not a thousand writes
                code, out, _ = _cli(capsys, "--db", db, "jobs")
                assert "50%" in out.splitlines()[1]
                code, out, _ = _cli(capsys, "--db", db, "show", str(job_id))
                assert "progress    50% (row 1000)" in out
                release.set()
                assert await store.wait(job_id, timeout=15) == "crunched"
            assert len(events) == 1000 and events[-1].progress == 0.5 and events[-1].note == "row 1000"
            # A new attempt starts from nothing.
            await store.retry(job_id)
            row = (await claim(store, 1, ["crunch"]))[0]
            assert row.id == job_id and (await store.get(job_id)).progress is None

    run(main())


def test_a_retry_of_a_dead_job_whose_key_a_finished_job_reused_works_on_both_stores(db):
    Failing = failing_job(litejobs.Count(0))

    async def main():
        async with litejobs.connect(db) as store:
            first = await store.enqueue(Failing(), unique_key="K")
            async with litejobs.Worker(store, [Failing, Echo], poll_interval=0.01):
                await wait_state(store, first, "dead")
                later = await store.enqueue(Echo("same key"), unique_key="K")
                await wait_state(store, later, "done")
                second = await store.enqueue(Failing(), unique_key="K")
                await wait_state(store, second, "dead")
            # Two dead jobs share the key: one goes back (the first), the other stays dead.
            assert await store.retry_dead() == 1
            assert [(await store.get(i)).state for i in (first, second)] == ["pending", "dead"]

    run(main())


def test_a_sync_store_used_in_a_forked_child_says_so(db):
    store = litejobs.connect_sync(db)
    store.enqueue(Echo(1))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: gunicorn --preload hands every worker the parent's store
        try:
            store.get(1)
            os.write(write, b"no error")
        except litejobs.StoreError as exc:
            os.write(write, str(exc).encode()[:500])
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    message = os.read(read, 1000).decode()
    assert "was opened in another process (this one was forked from it)" in message, message
    assert store.get(1).payload == {"value": 1}  # the parent's store still works
    store.close()


def test_what_a_caller_chose_for_its_own_connection_does_not_matter_to_enqueue_in(db):
    def dict_rows(cursor, row):
        return {column[0]: value for column, value in zip(cursor.description, row, strict=True)}

    litejobs.connect_sync(db).close()  # the tables
    if on_postgres(db):
        import psycopg
        import psycopg.rows

        conn = psycopg.connect(db, row_factory=psycopg.rows.dict_row)
    else:
        conn = sqlite3.connect(db)
        conn.row_factory = dict_rows
    first = litejobs.enqueue_in(conn, Echo(1), unique_key="once")
    assert litejobs.enqueue_in(conn, Echo(2), unique_key="once") == first
    second = litejobs.enqueue_in(conn, Echo(3))
    conn.commit()
    conn.close()
    assert [row[0] for row in query(db, "SELECT id FROM litejobs_jobs ORDER BY id")] == [first, second]


def test_urls_litejobs_does_not_know_and_passwords_in_the_query_string(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for url in ("mysql://app@db/jobs", "postgresql+psycopg://app@db/jobs", "PostgreSQL://app@db/jobs"):
        with pytest.raises(litejobs.StoreError, match="is not a URL litejobs knows: give a file path, or"):
            litejobs.connect_sync(url)
        code, _, err = _cli(capsys, "--db", url, "stats")
        assert code == 1 and "not a URL litejobs knows" in err
    assert os.listdir(tmp_path) == []  # no file named like a URL
    url = "postgresql://127.0.0.1:1/jobs?user=app&password=Tops3cret"
    code, out, err = _cli(capsys, "--db", url, "stats")
    assert code == 1 and "Tops3cret" not in out + err and "password=***" in err
    assert litejobs._redacted("postgresql://u:p%40ss@h/db?password=x&sslmode=require") == \
        "postgresql://u:***@h/db?password=***&sslmode=require"


def test_a_long_schema_name_still_gets_a_channel(postgresql_db):
    import psycopg

    schema = "s" * 60
    with psycopg.connect(postgresql_db, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    url = postgresql_db + f"?options=-csearch_path%3D{schema}"

    async def main():
        async with litejobs.connect(url) as store:
            job_id = await store.enqueue(Echo("deep"))
            async with litejobs.Worker(store, [Echo], poll_interval=0.01):
                assert await store.wait(job_id, timeout=15) == "deep"

    run(main())


# -- cron schedules --------------------------------------------------------------------


def _cron_times(expression, start, tz="UTC", n=4):
    """The next ``n`` ticks after ``start`` (ISO), as ISO times in ``tz``."""
    schedule, zone = litejobs._parse_cron(expression), litejobs._time_zone(tz)
    moment, times = datetime.fromisoformat(start).timestamp(), []
    for _ in range(n):
        moment = litejobs._cron_next(schedule, zone, moment)
        times.append(datetime.fromtimestamp(moment, zone).isoformat())
    return times


def test_cron_expressions_match_the_minutes_they_name():
    assert _cron_times("*/15 * * * *", "2026-01-01T00:00:00+00:00") == [
        "2026-01-01T00:15:00+00:00", "2026-01-01T00:30:00+00:00", "2026-01-01T00:45:00+00:00",
        "2026-01-01T01:00:00+00:00"]
    assert _cron_times("0 3 * * mon-fri", "2026-01-01T00:00:00+00:00") == [  # 1 January 2026 is a Thursday
        "2026-01-01T03:00:00+00:00", "2026-01-02T03:00:00+00:00", "2026-01-05T03:00:00+00:00",
        "2026-01-06T03:00:00+00:00"]
    assert _cron_times("5,35 9-10 * jan,jul 0", "2026-01-01T00:00:00+00:00", n=3) == [
        "2026-01-04T09:05:00+00:00", "2026-01-04T09:35:00+00:00", "2026-01-04T10:05:00+00:00"]
    assert _cron_times("@monthly", "2026-01-15T00:00:00+00:00", n=2) == [
        "2026-02-01T00:00:00+00:00", "2026-03-01T00:00:00+00:00"]
    assert _cron_times("@weekly", "2026-01-01T00:00:00+00:00", n=1) == ["2026-01-04T00:00:00+00:00"]
    assert _cron_times("0 0 29 2 *", "2026-01-01T00:00:00+00:00", n=2) == [
        "2028-02-29T00:00:00+00:00", "2032-02-29T00:00:00+00:00"]
    # Both day fields restricted: either matches, as in Vixie cron.
    assert _cron_times("0 0 13 * fri", "2026-01-01T00:00:00+00:00", n=3) == [
        "2026-01-02T00:00:00+00:00", "2026-01-09T00:00:00+00:00", "2026-01-13T00:00:00+00:00"]
    assert _cron_times("0 12 * * 7", "2026-01-01T00:00:00+00:00", n=1) == ["2026-01-04T12:00:00+00:00"]
    # A day field that starts with * is no restriction (Vixie cron): odd days that are Mondays.
    assert _cron_times("0 0 */2 * 1", "2024-05-01T00:00:00+00:00", n=2) == [
        "2024-05-13T00:00:00+00:00", "2024-05-27T00:00:00+00:00"]
    assert _cron_times("  0   3 * * MON ", "2026-01-01T00:00:00+00:00", n=1) == ["2026-01-05T03:00:00+00:00"]
    for bad, message in [("0 \u0661 * * *", "is not an hour"), ("0 0 31 4 *", "'0 0 31 4 \\*' never matches"),
                         ("0 \u00b2 * * *", "is not an hour")]:
        with pytest.raises(ValueError, match=message):
            _cron_times(bad, "2026-01-01T00:00:00+00:00")


def test_catching_up_a_cron_schedule_after_a_long_outage_is_quick_and_takes_the_latest_tick():
    now = datetime(2024, 6, 1, 0, 0, 30, tzinfo=timezone.utc).timestamp()
    begun = time.process_time()
    tick, following = litejobs._cron_ticks("* * * * *", "Europe/Paris", now - 100 * 86_400, now)
    assert (tick, following) == (now - 30, now + 30)
    tick, following = litejobs._cron_ticks("0 0 1 * *", "UTC", now - 400 * 86_400, now)
    assert datetime.fromtimestamp(tick, timezone.utc).isoformat() == "2024-06-01T00:00:00+00:00"
    assert time.process_time() - begun < 5  # a guard against a walk of months, not a timing claim


def test_cron_across_daylight_saving_changes():
    # Paris springs forward at 02:00 on 29 March 2026: 02:30 that day runs at 03:30, once.
    assert _cron_times("30 2 * * *", "2026-03-27T00:00:00+00:00", "Europe/Paris") == [
        "2026-03-27T02:30:00+01:00", "2026-03-28T02:30:00+01:00", "2026-03-29T03:30:00+02:00",
        "2026-03-30T02:30:00+02:00"]
    # It falls back at 03:00 on 25 October: 01:30 and 02:30 run once, at their first occurrence ...
    assert _cron_times("30 2 * * *", "2026-10-23T00:00:00+00:00", "Europe/Paris") == [
        "2026-10-23T02:30:00+02:00", "2026-10-24T02:30:00+02:00", "2026-10-25T02:30:00+02:00",
        "2026-10-26T02:30:00+01:00"]
    # ... while a schedule for every hour counts real hours, both passes of the repeated one.
    assert _cron_times("*/30 * * * *", "2026-10-25T00:15:00+00:00", "Europe/Paris", n=5) == [
        "2026-10-25T02:30:00+02:00", "2026-10-25T02:00:00+01:00", "2026-10-25T02:30:00+01:00",
        "2026-10-25T03:00:00+01:00", "2026-10-25T03:30:00+01:00"]
    # Every minute the clocks skip runs, late, once: 02:00 at 03:00 and 02:30 at 03:30.
    assert _cron_times("0,30 2 * * *", "2026-03-28T23:00:00+00:00", "Europe/Paris", n=3) == [
        "2026-03-29T03:00:00+02:00", "2026-03-29T03:30:00+02:00", "2026-03-30T02:00:00+02:00"]
    assert _cron_times("0 9 * * *", "2026-03-07T15:00:00+00:00", "America/New_York", n=2) == [
        "2026-03-08T09:00:00-04:00", "2026-03-09T09:00:00-04:00"]  # New York sprang forward on 8 March


def test_cron_ticks_fire_once_per_matching_minute_across_stores(capsys, db):
    clock = FakeClock()  # T0 is 2027-01-15 08:00 UTC

    async def main():
        async with litejobs.connect(db, clock=clock) as one, litejobs.connect(db, clock=clock) as other:
            for bad, message in [("61 * * * *", "'61' is not a minute"), ("0 0 30 2 *", "never matches"),
                                 ("* * *", "has 3 fields")]:
                with pytest.raises(ValueError, match=message):
                    await one.every(bad, Report(), key="bad")
            with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
                await one.every("0 3 * * *", Report(), key="bad", tz="Mars/Olympus")
            with pytest.raises(ValueError, match="tz= goes with a cron expression"):
                await one.every(60, Report(), key="bad", tz="UTC")
            await one.every("*/15 * * * *", Report(), key="report")
            await one.every("0 9 * * *", Report("paris"), key="paris", tz="Europe/Paris")
            await other.every("*/15 * * * *", Report(), key="report")  # declared again elsewhere: same place
            for _ in range(70):  # seventy minutes of two hosts' workers, each taking what is due
                clock.advance(60)
                for store in (one, other):
                    await round_trip(store, housekeeping=True, wants={"default": 10}, names=["report"])
            ticks = sorted(job.run_at for job in await one.jobs(name="report", limit=1000))
            return ticks

    ticks = run(main())
    assert [t.isoformat() for t in ticks] == [
        "2027-01-15T08:15:00+00:00", "2027-01-15T08:30:00+00:00", "2027-01-15T08:45:00+00:00",
        "2027-01-15T09:00:00+00:00"]  # 09:00 UTC is 10:00 in Paris: that one is not due yet
    code, out, _ = _cli(capsys, "--db", db, "schedules")
    assert code == 0 and "*/15 * * * * (UTC)" in out and "0 9 * * * (Europe/Paris)" in out
    assert "2027-01-16T08:00:00+00:00" in out  # 09:00 in Paris, the next morning
    assert query(db, "SELECT key FROM litejobs_recurring ORDER BY key") == [("paris",), ("report",)]


def test_missed_cron_ticks_coalesce_into_the_latest(db):
    clock = FakeClock()

    async def main():
        async with litejobs.connect(db, clock=clock) as store:
            await store.every("*/10 * * * *", Report(), key="report")
            clock.advance(3 * 3600 + 5 * 60)  # three hours with no worker up
            await round_trip(store, housekeeping=True, names=["noop"])
            jobs = await store.jobs(name="report")
            assert [job.run_at.isoformat() for job in jobs] == ["2027-01-15T11:00:00+00:00"]
            clock.advance(5 * 60)
            await round_trip(store, housekeeping=True, names=["noop"])
            # The first tick's job still waits (no worker knows it): the next coalesces with it.
            assert len(await store.jobs(name="report")) == 1

    run(main())


def test_a_schedule_this_host_cannot_compute_waits_and_every_other_job_goes_on(db, caplog):
    async def main():
        async with litejobs.connect(db) as store:
            await store.every("* * * * *", Report(), key="report", tz="Europe/Paris")
            # Declared on a host whose zone data knew a zone this one does not.
            await by_hand(store, "UPDATE litejobs_recurring SET tz = 'Mars/Olympus', next_run = 0")
            job_id = await store.enqueue(Echo("still runs"))
            async with litejobs.Worker(store, [Echo], poll_interval=0.01):
                assert await store.wait(job_id, timeout=15) == "still runs"
            [(next_run,)] = await by_hand(store, "SELECT next_run FROM litejobs_recurring")
            assert next_run > store.clock() + 3000  # it tries again in an hour
        assert "recurring schedule 'report' cannot be computed here" in caplog.text

    run(main())


def test_a_file_of_schema_version_2_is_refused_by_inspection_and_brought_up_by_a_change(capsys, sqlite_db):
    litejobs.connect_sync(sqlite_db).close()
    conn = sqlite3.connect(sqlite_db)  # what litejobs 0.2.0 made: no pauses, progress, cron or limits
    for statement in ("DROP INDEX litejobs_jobs_claimable", "DROP INDEX litejobs_jobs_parked",
                      "DROP INDEX litejobs_jobs_running_key", "DROP TABLE litejobs_starts",
                      "ALTER TABLE litejobs_jobs DROP COLUMN concurrency_key",
                      "ALTER TABLE litejobs_jobs DROP COLUMN concurrency_limit",
                      "ALTER TABLE litejobs_jobs DROP COLUMN parked",
                      "ALTER TABLE litejobs_recurring DROP COLUMN concurrency_key",
                      "ALTER TABLE litejobs_recurring DROP COLUMN concurrency_limit",
                      "CREATE INDEX litejobs_jobs_claim_by_name ON litejobs_jobs (queue, name, priority DESC, run_at) "
                      "WHERE state = 'pending'",
                      "DROP TABLE litejobs_queues", "ALTER TABLE litejobs_jobs DROP COLUMN progress",
                      "ALTER TABLE litejobs_jobs DROP COLUMN progress_note",
                      "ALTER TABLE litejobs_recurring DROP COLUMN cron",
                      "ALTER TABLE litejobs_recurring DROP COLUMN tz",
                      "UPDATE litejobs_meta SET value = '2' WHERE key = 'schema_version'"):
        conn.execute(statement)
    conn.commit()
    conn.close()
    for command in (["stats"], ["jobs"], ["schedules"], ["export"]):
        code, out, err = _cli(capsys, "--db", sqlite_db, *command)
        assert code == 1 and "schema version 2, older than this litejobs' 4: open it once read-write" in err
        assert err.count("\n") == 1
    code, out, _ = _cli(capsys, "--db", sqlite_db, "pause", "default")  # a change: it brings the file up
    assert code == 0
    assert _cli(capsys, "--db", sqlite_db, "jobs")[0] == 0
    assert query(sqlite_db, "SELECT value FROM litejobs_meta WHERE key = 'schema_version'") == [("4",)]


# -- concurrency and rate limits ---------------------------------------------------------


@dataclass
class PerUser(litejobs.Job):
    """At most two at once per user; user 0 is not limited."""

    NAME = "per_user"
    CONCURRENCY_LIMIT = 2
    user: int = 1

    def concurrency_key(self):
        return None if self.user == 0 else f"user:{self.user}"

    async def run(self, state):
        return None


@dataclass
class Throttled(litejobs.Job):
    NAME = "throttled"
    RATE_LIMIT = (3, 10)

    async def run(self, state):
        return None


def ran_one_at_a_time(db):
    """Whether every job in the store started after the one before it finished."""
    spans = query(db, "SELECT started_at, finished_at FROM litejobs_jobs ORDER BY started_at")
    return all(end <= start for (_, end), (start, _) in zip(spans, spans[1:], strict=False))


def test_a_concurrency_key_runs_at_most_its_limit_and_the_rest_wait_parked_out_of_the_claim(capsys, db):
    clock = FakeClock()
    names = ["noop", "per_user"]

    async def main():
        async with litejobs.connect(db, clock=clock) as store:
            first_user = await store.enqueue_many([PerUser(1) for _ in range(5)])
            await store.enqueue_many([PerUser(2), PerUser(2), PerUser(0)])
            answer = await round_trip(store, wants={"default": 10}, names=names, limited=True)
            claimed = answer.claimed["default"]
            keys = sorted(str(job.concurrency_key) for job in claimed)
            assert keys == ["None", "user:1", "user:1", "user:2", "user:2"]
            assert answer.parked == {"default": 3}  # user 1's other three: pending, out of the claim
            parked = [job_id for job_id, in query(db, "SELECT id FROM litejobs_jobs WHERE parked = 1 ORDER BY id")]
            assert parked == first_user[2:]
            infos = [await store.get(job_id) for job_id in parked]
            assert {(info.state, info.waiting_for_slot, info.concurrency_key, info.concurrency_limit)
                    for info in infos} == {(litejobs.JobState.PENDING, True, "user:1", 2)}
            code, out, _ = _cli(capsys, "--db", db, "show", str(parked[0]))
            assert code == 0 and "key 'user:1', 2 at once (waiting for a free slot)" in out
            again = await round_trip(store, wants={"default": 10}, names=names, limited=True)
            assert again.claimed["default"] == [] and again.parked == {}  # never walked past again

            # A user-1 job ends: one slot, one parked job back, the best first.
            ended = next(job for job in claimed if job.concurrency_key == "user:1")
            await round_trip(store, outcomes=[success(ended)])
            taken = await claim(store, 10, names, limited=True)
            assert [job.id for job in taken] == [first_user[2]]
            # A failed attempt frees its slot too, though the job waits for a retry.
            await round_trip(store, outcomes=[failure(taken[0])])
            assert [job.id for job in await claim(store, 10, names, limited=True)] == [first_user[3]]
            # So does cancelling a job that was let through but not yet claimed.
            running = [job.id for job in claimed if job.concurrency_key == "user:1" and job.id != ended.id]
            await round_trip(store, outcomes=[success(claimed_row(running[0], name="per_user"))])
            await store.cancel(first_user[4])  # released, then cancelled before any claim
            clock.advance(60)
            assert [job.id for job in await claim(store, 10, names, limited=True)] == [first_user[2]]  # its retry
            states = {job_id: (await store.get(job_id)).state for job_id in first_user}
            assert states[first_user[4]] is litejobs.JobState.CANCELLED
            assert query(db, "SELECT count(*) FROM litejobs_jobs WHERE parked = 1") == [(0,)]

    run(main())


def test_a_free_slot_goes_to_a_queue_that_can_use_it_and_a_resumed_queue_gets_its_turn(db):
    @dataclass
    class Crm(litejobs.Job):
        NAME = "crm"
        CONCURRENCY_LIMIT = 1
        CONCURRENCY_KEY = "crm"
        to: str = "urgent"

        def queue(self):
            return self.to

    async def main():
        async with litejobs.connect(db, clock=FakeClock()) as store:
            first = await store.enqueue(Crm("urgent"))
            bulk = [await store.enqueue(Crm("bulk"), priority=9) for _ in range(3)]
            running = await claim(store, 1, ["crm"], "urgent", limited=True)
            assert [job.id for job in running] == [first]
            await round_trip(store, wants={"bulk": 10}, names=["crm"], limited=True)  # all three parked
            await store.pause("bulk")
            urgent = await store.enqueue(Crm("urgent"))
            assert await claim(store, 1, ["crm"], "urgent", limited=True) == []  # parked too
            await round_trip(store, outcomes=[success(running[0])])  # the slot goes past the paused queue
            assert [job.id for job in await claim(store, 1, ["crm"], "urgent", limited=True)] == [urgent]
            await round_trip(store, outcomes=[success(claimed_row(urgent, name="crm", queue="urgent"))])
            await store.resume("bulk")  # nothing of the key runs: housekeeping lets the bulk jobs through
            await round_trip(store, housekeeping=True, names=["crm"])
            assert [job.id for job in await claim(store, 10, ["crm"], "bulk", limited=True)] == bulk[:1]

    run(main())


def test_a_parked_job_whose_key_runs_nothing_is_let_through_by_housekeeping(db):
    # A safety net: a running job ended some way that released nothing
    # (here a hand edit); housekeeping finds the key with nothing running.
    clock = FakeClock()

    async def main():
        async with litejobs.connect(db, clock=clock) as store:
            ids = await store.enqueue_many([PerUser(1) for _ in range(3)])
            assert len(await claim(store, 10, ["per_user"], limited=True)) == 2
            await by_hand(store, "UPDATE litejobs_jobs SET state = 'done' WHERE state = 'running'")
            assert await claim(store, 10, ["per_user"], limited=True) == []
            await round_trip(store, housekeeping=True, names=["per_user"])
            assert [job.id for job in await claim(store, 10, ["per_user"], limited=True)] == [ids[2]]

    run(main())


def test_a_rate_limit_allows_n_starts_in_any_window_and_says_when_the_next_may_start(db):
    clock = FakeClock()
    rates = {"throttled": (3, 10.0)}

    async def main():
        async with litejobs.connect(db, clock=clock) as store:
            await store.enqueue_many([Throttled() for _ in range(7)])
            await store.enqueue(Noop())

            async def take(n=10):
                answer = await round_trip(store, wants={"default": n}, names=["noop", "throttled"], rates=rates,
                                           limited=True)
                return [job.name for job in answer.claimed["default"]], answer.next_due

            assert await take() == (["throttled", "throttled", "throttled", "noop"], T0 + 10)
            clock.advance(9.5)
            assert await take() == ([], T0 + 10)  # the window still holds three starts
            clock.advance(0.5)
            assert await take(2) == (["throttled", "throttled"], None)  # one start left in this window
            clock.advance(1)
            assert await take() == (["throttled"], T0 + 20)
            clock.advance(10)
            assert await take() == (["throttled"], None)
            # Only the starts still in a window are kept.
            assert query(db, "SELECT count(*) FROM litejobs_starts") == [(1,)]
            # A worker's own concurrency still bounds a claim of rate-limited jobs only.
            clock.advance(10)
            await store.enqueue_many([Throttled() for _ in range(3)])
            answer = await round_trip(store, wants={"default": 2}, names=["throttled"], rates=rates, limited=True)
            assert len(answer.claimed["default"]) == 2
            assert await take() == (["throttled"], clock.now + 10)
            # The wall clock steps back an hour: the name waits one window, not an hour.
            clock.advance(-3600)
            await store.enqueue(Throttled())
            assert await take() == ([], clock.now + 10)
            clock.advance(10)
            assert await take() == (["throttled"], None)

    run(main())


def test_a_rate_limited_name_shares_its_window_among_the_queues_it_runs_in(db):
    async def main():
        async with litejobs.connect(db, clock=FakeClock()) as store:
            for queue in ("bulk", "urgent"):
                await store.enqueue_many([litejobs.new_job(Throttled(), queue=queue) for _ in range(5)])
            for _ in range(2):  # whichever queue comes first
                answer = await round_trip(store, wants={"urgent": 10, "bulk": 10}, names=["throttled"],
                                          rates={"throttled": (4, 10.0)}, limited=True)
                assert {queue: len(jobs) for queue, jobs in answer.claimed.items()} == {"bulk": 2, "urgent": 2}
                for jobs in answer.claimed.values():
                    await round_trip(store, outcomes=[success(job) for job in jobs])
                by_hand_rows = await by_hand(store, "DELETE FROM litejobs_starts")
                assert by_hand_rows == []
            # A queue that used its share while the window has starts left is asked again at once.
            answer = await round_trip(store, wants={"urgent": 10, "bulk": 10}, names=["throttled"],
                                      rates={"throttled": (4, 10.0)}, limited=True)
            assert {queue: len(jobs) for queue, jobs in answer.claimed.items()} == {"bulk": 1, "urgent": 1}
            await store.enqueue_many([litejobs.new_job(Throttled(), queue="bulk") for _ in range(5)])
            answer = await round_trip(store, wants={"urgent": 10, "bulk": 10}, names=["throttled"],
                                      rates={"throttled": (4, 10.0)}, limited=True)
            assert len(answer.claimed["bulk"]) == 1 and answer.next_due == answer.now

    run(main())


def test_limits_are_checked_where_they_are_written_and_bad_ones_store_nothing(db):
    with pytest.raises(litejobs.JobDefinitionError, match="CONCURRENCY_LIMIT must be a positive int"):
        type("Zero", (litejobs.Job,), {"NAME": "zero", "CONCURRENCY_LIMIT": 0})
    with pytest.raises(litejobs.JobDefinitionError, match="needs CONCURRENCY_LIMIT = n"):
        type("KeyOnly", (litejobs.Job,), {"NAME": "key_only", "CONCURRENCY_KEY": "api"})
    with pytest.raises(litejobs.JobDefinitionError, match="needs CONCURRENCY_LIMIT = n"):
        type("MethodOnly", (litejobs.Job,), {"NAME": "method_only", "concurrency_key": lambda self: "api"})
    with pytest.raises(litejobs.JobDefinitionError, match="concurrency_key must be a method"):
        type("Attribute", (litejobs.Job,), {"NAME": "attribute", "CONCURRENCY_LIMIT": 1, "concurrency_key": "x"})
    for rate in ((0, 1), (3, 0), (3,), [3, 1], (3, float("inf")), (2.5, 1)):
        with pytest.raises(litejobs.JobDefinitionError, match="RATE_LIMIT must be \\(n, seconds\\)"):
            type("Rated", (litejobs.Job,), {"NAME": "rated", "RATE_LIMIT": rate})

    @dataclass
    class BadKey(litejobs.Job):
        NAME = "bad_key"
        CONCURRENCY_LIMIT = 1

        def concurrency_key(self):
            return 42

    @dataclass
    class NulKey(BadKey):
        def concurrency_key(self):
            return "user\x00"

    async def main():
        async with litejobs.connect(db) as store:
            kept = await store.enqueue(PerUser(3))
            with pytest.raises(litejobs.JobDefinitionError, match="concurrency_key\\(\\) returned 42"):
                await store.enqueue_many([PerUser(4), BadKey()])
            with pytest.raises(litejobs.SerializationError, match="not text a database can store"):
                await store.enqueue(NulKey())
            assert [job.id for job in await store.jobs()] == [kept]
            assert (await store.get(kept)).payload == {"user": 3}

    run(main())
    assert query(db, "SELECT concurrency_key, concurrency_limit FROM litejobs_jobs") == [("user:3", 2)]


def test_a_limit_without_a_key_limits_the_name_and_schedules_and_exports_keep_keys(capsys, tmp_path, db):
    @dataclass
    class Report(litejobs.Job):
        NAME = "limited_report"
        CONCURRENCY_LIMIT = 1

        async def run(self, state):
            return None

    clock = FakeClock()

    async def main():
        async with litejobs.connect(db, clock=clock) as store:
            await store.every(60, Report(), key="report")
            await round_trip(store, housekeeping=True, names=["limited_report"])  # the first tick
            await store.enqueue(Report())
            taken = await claim(store, 10, ["limited_report"], limited=True)
            assert len(taken) == 1 and taken[0].concurrency_key == "limited_report"
            assert query(db, "SELECT concurrency_key, concurrency_limit, parked FROM litejobs_jobs ORDER BY id") \
                == [("limited_report", 1, 0), ("limited_report", 1, 1)]
            await round_trip(store, outcomes=[success(taken[0])])

    run(main())
    code, out, _ = _cli(capsys, "--db", db, "export")
    assert code == 0
    exported = [orjson_loads(line) for line in out.splitlines()]
    assert [record["job"]["concurrency_key"] for record in exported if "job" in record] == ["limited_report"]
    assert [record["recurring"]["concurrency_limit"] for record in exported if "recurring" in record] == [1]
    (tmp_path / "jobs.jsonl").write_text(out)
    (tmp_path / "bad.jsonl").write_text(out.replace('"concurrency_limit":1', '"concurrency_limit":0'))
    target = str(tmp_path / "target.db")
    code, _, err = _cli(capsys, "--db", target, "import", str(tmp_path / "bad.jsonl"))
    assert code == 1 and "line 2: concurrency_limit cannot be 0" in err
    assert _cli(capsys, "--db", target, "import", str(tmp_path / "jobs.jsonl"))[0] == 0
    assert query(target, "SELECT concurrency_key, concurrency_limit FROM litejobs_jobs") == [("limited_report", 1)]


def test_a_worker_whose_class_lacks_the_limit_still_never_runs_a_limited_job_past_it(db):
    @dataclass
    class Described(litejobs.Job):  # the producer's class, with the limit
        NAME = "mixed"
        CONCURRENCY_LIMIT = 1

    @dataclass
    class Run(litejobs.Job):  # the worker's, without
        NAME = "mixed"

        async def run(self, state):
            await asyncio.sleep(0.01)

    async def main():
        async with litejobs.connect(db, clock=FakeClock()) as store:
            await store.enqueue_many([Described() for _ in range(3)])
            answer = await round_trip(store, wants={"default": 10}, names=["mixed"])  # an unlimited claim
            assert answer.claimed["default"] == [] and answer.parked == {"default": 3}
            await round_trip(store, housekeeping=True, names=["mixed"])  # the key runs nothing: one let through
            assert len(await claim(store, 10, ["mixed"], limited=True)) == 1
        query(db, "UPDATE litejobs_jobs SET state = 'pending', parked = 0, attempts = 0, run_at = 0")
        async with litejobs.connect(db) as store:
            async with litejobs.Worker(store, [Run], poll_interval=0.01):
                for job in await store.jobs():
                    await wait_state(store, job.id, "done")
        assert ran_one_at_a_time(db)

    run(main())


def test_jobs_waiting_for_a_slot_cost_an_idle_worker_no_round_trips(db):
    gate = asyncio.Event()

    @dataclass
    class OneAtATime(litejobs.Job):
        NAME = "one_at_a_time"
        CONCURRENCY_LIMIT = 1
        n: int = 0

        async def run(self, state):
            await gate.wait()
            return self.n

    async def main():
        async with litejobs.connect(db) as store:
            ids = await store.enqueue_many([OneAtATime(n) for n in range(30)])
            async with litejobs.Worker(store, [OneAtATime], concurrency=8, poll_interval=0.01) as worker:
                await wait_state(store, ids[0], "running")
                await wait_until(lambda: _true_when(worker.claims > 0), "a claim")
                await asyncio.sleep(0.05)
                claims = worker.claims
                await asyncio.sleep(0.3)  # thirty poll intervals, with 29 jobs due
                assert worker.claims - claims <= 1  # housekeeping's once a second at most
                assert [job.state for job in await store.jobs(state="running")] == ["running"]
                gate.set()  # each end lets the next one through, in the same round trip
                for job_id in ids:
                    await wait_state(store, job_id, "done")
        assert ran_one_at_a_time(db)

    run(main())


def test_a_limited_job_that_overruns_its_timeout_holds_its_slot_until_its_code_stops(db):
    release = threading.Event()
    ran = []

    @dataclass
    class Stuck(litejobs.Job):
        NAME = "stuck"
        CONCURRENCY_LIMIT = 1
        TIMEOUT = 50
        MAX_RETRIES = litejobs.Count(0)
        n: int = 0

        def run(self, state):  # a thread: its timeout cannot stop it
            ran.append(self.n)
            if self.n == 0:
                release.wait(30)

    async def main():
        async with litejobs.connect(db) as store:
            first, second = await store.enqueue_many([Stuck(0), Stuck(1)])
            async with litejobs.Worker(store, [Stuck], poll_interval=0.01):
                await wait_until(lambda: _true_when(ran == [0]), "the first job to start")
                await asyncio.sleep(0.5)  # ten timeouts, and housekeeping, go by
                assert ran == [0] and (await store.get(first)).state == "running"  # still counted
                assert (await store.get(second)).state == "pending"
                release.set()
                assert "exceeded its timeout" in (await wait_state(store, first, "dead")).last_error
                await wait_state(store, second, "done")
            assert ran == [0, 1]

    run(main())


def test_a_stop_does_not_wait_for_a_limited_job_past_its_timeout_and_keeps_its_failure(db):
    release = threading.Event()

    @dataclass
    class Stuck(litejobs.Job):
        NAME = "stuck_forever"
        CONCURRENCY_LIMIT = 1
        TIMEOUT = 50
        MAX_RETRIES = litejobs.Count(0)

        def run(self, state):
            release.wait(30)

    async def main():
        async with litejobs.connect(db) as store:
            job_id = await store.enqueue(Stuck())
            worker = litejobs.Worker(store, [Stuck], poll_interval=0.01, shutdown_timeout=0.2)
            task = asyncio.create_task(worker.run(handle_signals=False))
            await wait_state(store, job_id, "running")
            await asyncio.sleep(0.3)  # past its TIMEOUT: given up, still running
            worker.stop()
            await asyncio.wait_for(task, 10)  # a guard against a hang, never a measure
            info = await store.get(job_id)
            assert info.state == "dead" and "exceeded its timeout" in info.last_error  # not handed back
        release.set()

    run(main())


LIMITED_JOBS = """
LOG = {log!r}

@dataclass
class Shared(litejobs.Job):
    NAME = "shared"
    CONCURRENCY_LIMIT = 2
    account: str = "a"

    def concurrency_key(self):
        return "account:" + self.account

    async def run(self, state):
        started = time.monotonic()
        await asyncio.sleep(0.01)
        line = f"{{self.account}} {{started!r}} {{time.monotonic()!r}} {{os.getpid()}}\\n"
        fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, line.encode())
        os.close(fd)

@dataclass
class Paced(litejobs.Job):
    NAME = "paced"
    RATE_LIMIT = (4, 0.3)

    async def run(self, state):
        return None
"""


@pytest.mark.slow
def test_two_worker_processes_never_exceed_a_concurrency_or_rate_limit(tmp_path, db):
    log = tmp_path / "runs.log"
    script = tmp_path / "limits.py"
    script.write_text(worker_script(LIMITED_JOBS, "Shared, Paced", until_empty=True).format(
        here=HERE, db=db, log=str(log)))
    jobs = script_jobs(LIMITED_JOBS, db=db, log=str(log))

    async def enqueue():
        async with litejobs.connect(db) as store:
            await store.enqueue_many([jobs["Shared"](account) for _ in range(60) for account in "ab"])
            await store.enqueue_many([jobs["Paced"]() for _ in range(16)])

    run(enqueue())
    workers = [subprocess.Popen([sys.executable, str(script)]) for _ in range(2)]
    for process in workers:
        assert process.wait(timeout=120) == 0
    assert query(db, "SELECT state, count(*) FROM litejobs_jobs GROUP BY state") == [("done", 136)]
    runs = [line.split() for line in log.read_text().splitlines()]
    assert len(runs) == 120 and len({pid for *_, pid in runs}) == 2  # both processes ran some
    for account in "ab":
        events = sorted([(float(start), 1) for key, start, _, _ in runs if key == account]
                        + [(float(end), -1) for key, _, end, _ in runs if key == account])
        running = peak = 0
        for _, step in events:
            running += step
            peak = max(peak, running)
        assert peak == 2  # at most two at once, and the limit was reached
    # The store's own record of each start: never five in 0.3 s.
    starts = [row[0] for row in query(db, "SELECT started_at FROM litejobs_jobs WHERE name = 'paced' "
                                          "ORDER BY started_at")]
    assert all(later - earlier >= 0.3 for earlier, later in zip(starts, starts[4:], strict=False)), starts
