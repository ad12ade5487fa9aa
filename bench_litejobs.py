"""How fast is litejobs, next to a raw SQLite loop doing the same work?

    python bench_litejobs.py                  # the full run: about 7 minutes on 2 cores
    python bench_litejobs.py --quick          # a reduced run, under 30 seconds
    python bench_litejobs.py --only drain,e2e --json figures.json
    python bench_litejobs.py --db postgresql://127.0.0.1/postgres   # on a PostgreSQL server

Prints one line per figure, each the median of several runs.  In the same run
it measures two raw loops doing the same work without litejobs: the stdlib
``sqlite3`` module and ``aiosqlite``, on a hand-written jobs table with a
partial index, claiming batches of 64 with one UPDATE ... RETURNING and
completing each batch in one transaction.  Each litejobs figure is printed
with its ratio to the raw loops (litejobs / raw: above 1 is faster for
rates, slower for latencies and sizes).

Every database is a durable file in WAL mode with synchronous=NORMAL, the
litejobs defaults.  Scratch files go in a fresh folder under --dir and are
removed at the end.  Nothing here asserts anything about time: it only prints.

Groups (for --only): enqueue, drain, e2e, latency, scale, size, claim, progress, limits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import inspect
import multiprocessing
import os
import platform
import queue
import random
import resource
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import aiosqlite
import orjson

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import litejobs  # noqa: E402  (imported from this script's own folder)

GROUPS = ("enqueue", "drain", "e2e", "latency", "scale", "size", "claim", "progress", "limits")


@dataclasses.dataclass(frozen=True)
class Plan:
    """How much work each figure does."""

    runs: int = 3  # each figure is the median of this many runs
    one_by_one: int = 3_000  # enqueues, one call after another
    tasks: int = 100  # concurrent enqueuing tasks ...
    concurrent: int = 5_000  # ... enqueuing this many jobs between them
    many: int = 10_000  # jobs in one enqueue_many / executemany
    drain: int = 20_000  # pending no-op jobs drained per run
    e2e_seconds: float = 10.0  # how long the producer enqueues
    pickups: int = 50  # idle pick-ups timed per run
    idle_seconds: float = 10.0  # idle worker's CPU measured over this long
    big: int = 1_000_000  # scale and size: the big queue (measured once)
    small: int = 10_000  # ... against this one (median of `runs`)
    strangers: int = 200_000  # claim: pending jobs of a name the worker does not know
    claims: int = 200  # claim: enqueue-and-claim round trips timed per run
    reports: int = 100_000  # progress: calls to progress() in one job


FULL = Plan()
QUICK = Plan(runs=1, one_by_one=300, concurrent=1_000, many=2_000, drain=1_000, e2e_seconds=1.0,
             pickups=10, idle_seconds=1.0, big=20_000, small=2_000, strangers=20_000, claims=50, reports=10_000)
# Tiny sizes, for the test suite's check that the script still runs end to end.
SMOKE = Plan(runs=1, one_by_one=20, concurrent=100, many=100, drain=100, e2e_seconds=0.3,
             pickups=3, idle_seconds=0.2, big=1_000, small=200, strangers=200, claims=5, reports=100)

DRAIN_CONCURRENCIES = (1, 16, 256)
# limits: half the jobs drained carry one of LIMITED_KEYS concurrency keys,
# each allowed LIMIT_PER_KEY at once (64 at most in all, of 256 slots).
LIMITED_KEYS, LIMIT_PER_KEY = 16, 4
WORKER_CONCURRENCY = 256  # the worker's concurrency in e2e, two processes and scale
POLL_INTERVAL = inspect.signature(litejobs.Worker).parameters["poll_interval"].default
# Pick-up latency: each job is enqueued this long (uniform, seconds) after the
# previous one started.  The window spans a whole poll interval, so that the
# enqueue falls at a random moment of a polling worker's cycle.
PICKUP_GAP = (0.002, 0.002 + POLL_INTERVAL)


# --------------------------------------------------------------------------
# The jobs
# --------------------------------------------------------------------------


class Starts:
    """Enqueue-to-start latencies seen by jobs in this process, and a hook called at each start."""

    latencies: list[float] = []
    hook: Callable[[], Any] | None = None

    @classmethod
    def reset(cls, hook: Callable[[], Any] | None = None) -> None:
        cls.latencies, cls.hook = [], hook

    @classmethod
    def record(cls, enqueued_at: float) -> None:
        cls.latencies.append(time.time() - enqueued_at)
        if cls.hook is not None:
            cls.hook()


@dataclasses.dataclass
class Noop(litejobs.Job):
    NAME = "bench.noop"
    n: int = 0

    async def run(self, state: Any) -> None:
        return None


@dataclasses.dataclass
class Limited(litejobs.Job):
    """A no-op whose key (one of LIMITED_KEYS) runs LIMIT_PER_KEY at once, across workers."""

    NAME = "bench.limited"
    CONCURRENCY_LIMIT = LIMIT_PER_KEY
    n: int = 0

    def concurrency_key(self) -> str:
        return f"key{self.n % LIMITED_KEYS}"

    async def run(self, state: Any) -> None:
        return None


@dataclasses.dataclass
class Stamped(litejobs.Job):
    """Carries the time.time() of its enqueue (comparable across processes)."""

    NAME = "bench.stamped"
    t: float = 0.0

    async def run(self, state: Any) -> None:
        Starts.record(self.t)


# --------------------------------------------------------------------------
# The raw loops: a hand-written table, the same work, nothing else
# --------------------------------------------------------------------------

RAW_DDL = (
    """CREATE TABLE IF NOT EXISTS jobs (
        id          INTEGER PRIMARY KEY,
        queue       TEXT NOT NULL,
        payload     TEXT NOT NULL,
        state       TEXT NOT NULL DEFAULT 'pending',
        priority    INTEGER NOT NULL DEFAULT 0,
        run_at      REAL NOT NULL,
        attempts    INTEGER NOT NULL DEFAULT 0,
        created_at  REAL NOT NULL,
        started_at  REAL,
        finished_at REAL)""",
    "CREATE INDEX IF NOT EXISTS jobs_claim ON jobs (queue, priority DESC, run_at) WHERE state = 'pending'",
)
RAW_INSERT = "INSERT INTO jobs (queue, payload, run_at, created_at) VALUES ('default', ?, ?, ?)"
RAW_CLAIM = """
    UPDATE jobs SET state = 'running', attempts = attempts + 1, started_at = ?1
     WHERE id IN (SELECT id FROM jobs
                   WHERE state = 'pending' AND queue = 'default' AND run_at <= ?1
                   ORDER BY priority DESC, run_at, id LIMIT 64)
    RETURNING id, payload"""
RAW_DONE = "UPDATE jobs SET state = 'done', finished_at = ? WHERE id = ?"
RAW_IDLE_POLL = 0.001  # an idle raw loop checks PRAGMA data_version this often


def raw_row(job: dict) -> tuple:
    now = time.time()
    return (orjson.dumps(job).decode(), now, now)


def raw_run(payload: str) -> None:
    """The raw loop's job: decode the payload; a stamped one records its latency."""
    job = orjson.loads(payload)
    if "t" in job:
        Starts.record(job["t"])


def raw_open(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    for statement in RAW_DDL:
        conn.execute(statement)
    return conn


def raw_work(conn: sqlite3.Connection, keep_waiting: Callable[[], bool] | None = None,
             limit: int | None = None) -> int:
    """Claim 64, run them, complete them in one transaction; again.  Returns how many ran.

    With nothing to claim it returns, or, while ``keep_waiting()``, polls
    PRAGMA data_version until another connection commits.  It returns
    early once ``limit`` jobs ran.
    """
    done = 0
    while limit is None or done < limit:
        version = conn.execute("PRAGMA data_version").fetchone()[0]
        rows = conn.execute(RAW_CLAIM, (time.time(),)).fetchall()
        if rows:
            for _, payload in rows:
                raw_run(payload)
            now = time.time()
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(RAW_DONE, [(now, row[0]) for row in rows])
            conn.execute("COMMIT")
            done += len(rows)
            continue
        if keep_waiting is None:
            break
        while conn.execute("PRAGMA data_version").fetchone()[0] == version:
            if not keep_waiting():
                return done
            time.sleep(RAW_IDLE_POLL)
    return done


async def araw_open(path: str) -> aiosqlite.Connection:
    db = await aiosqlite.connect(path, isolation_level=None)
    for statement in ("PRAGMA busy_timeout = 5000", "PRAGMA journal_mode = WAL",
                      "PRAGMA synchronous = NORMAL", *RAW_DDL):
        await db.execute(statement)
    return db


async def araw_work(db: aiosqlite.Connection, keep_waiting: Callable[[], bool] | None = None) -> int:
    """raw_work through aiosqlite."""
    done = 0
    while True:
        version = (await db.execute_fetchall("PRAGMA data_version"))[0][0]
        rows = await db.execute_fetchall(RAW_CLAIM, (time.time(),))
        if rows:
            for _, payload in rows:
                raw_run(payload)
            now = time.time()
            await db.execute("BEGIN IMMEDIATE")
            await db.executemany(RAW_DONE, [(now, row[0]) for row in rows])
            await db.execute("COMMIT")
            done += len(rows)
            continue
        if keep_waiting is None:
            return done
        while (await db.execute_fetchall("PRAGMA data_version"))[0][0] == version:
            if not keep_waiting():
                return done
            await asyncio.sleep(RAW_IDLE_POLL)


def raw_fill(path: str, n: int) -> None:
    conn = raw_open(path)
    for start in range(0, n, 10_000):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(RAW_INSERT, [raw_row({"n": i}) for i in range(start, min(n, start + 10_000))])
        conn.execute("COMMIT")
    conn.close()


# --------------------------------------------------------------------------
# litejobs helpers
# --------------------------------------------------------------------------


class Tally:
    """Counts the jobs a store reports done (its ``success`` events) and
    notes the moment given counts are reached."""

    def __init__(self, store: litejobs.Store, *marks: int, shared: Any = None) -> None:
        self.count = 0
        self.at: dict[int, float | None] = dict.fromkeys(marks)
        self.finished = asyncio.Event()
        self.shared = shared  # a multiprocessing.Value summed over processes
        store.on_event(self._on_event)

    def expect(self, n: int) -> None:
        """Add a mark once the total is known; the last mark sets ``finished``."""
        self.at[n] = time.perf_counter() if self.count >= n else None
        if self.count >= n:
            self.finished.set()

    def _on_event(self, event: litejobs.Event) -> None:
        if event.kind != "success":
            return
        self.count += 1
        if self.shared is not None:
            with self.shared.get_lock():
                self.shared.value += 1
        if self.count in self.at:
            self.at[self.count] = time.perf_counter()
            if self.count == max(self.at):
                self.finished.set()


@contextlib.asynccontextmanager
async def running(store: litejobs.Store, concurrency: int, limits: bool = False):
    """A worker serving in the background; stopped (outcomes flushed) on the way out.
    With ``limits``, it runs Limited jobs too (and claims as a worker with limits does)."""
    worker = litejobs.Worker(store, [Noop, Stamped, *([Limited] if limits else [])], concurrency=concurrency)
    task = asyncio.create_task(worker.run(handle_signals=False))
    try:
        yield task
    finally:
        worker.stop()
        await task


async def until(event: asyncio.Event, worker: asyncio.Task, timeout: float = 1800) -> None:
    """Wait for ``event``; fail loudly if the worker ends first."""
    waiter = asyncio.ensure_future(event.wait())
    done, _ = await asyncio.wait({waiter, worker}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    if waiter not in done:
        waiter.cancel()
        if worker.done():
            worker.result()  # raises the worker's error, if it had one
        raise RuntimeError("the worker stopped, or timed out, before the jobs were done")


async def lj_fill(path: str, n: int, limited: bool = False) -> None:
    """``n`` pending no-op jobs; with ``limited``, every other one a Limited."""
    async with litejobs.connect(path) as store:
        for start in range(0, n, 10_000):
            await store.enqueue_many([Limited(i) if limited and i % 2 else Noop(i)
                                      for i in range(start, min(n, start + 10_000))])


# --------------------------------------------------------------------------
# Child processes, files, statistics, printing
# --------------------------------------------------------------------------

# Children fork from a small, single-threaded server process, so they inherit
# no threads, event loops or open files.  Not "spawn": a process exec'd from
# this one starts with this one's ru_maxrss, which would spoil the RSS figures.
PROCESSES = multiprocessing.get_context("forkserver")


def _child_main(fn: Callable, args: tuple, ready: Any, go: Any, out: Any) -> None:
    def gate() -> None:
        ready.set()
        go.wait()

    try:
        out.put(("ok", fn(gate, *args)))
    except BaseException:
        out.put(("error", traceback.format_exc()))


class Child:
    """``fn(gate, *args)`` in another process.  The child calls ``gate()`` when
    set up; it returns when the parent calls ``go()``."""

    def __init__(self, fn: Callable, *args: Any) -> None:
        self._ready, self._go, self._out = PROCESSES.Event(), PROCESSES.Event(), PROCESSES.Queue()
        self._proc = PROCESSES.Process(target=_child_main, args=(fn, args, self._ready, self._go, self._out),
                                   daemon=True)
        self._proc.start()

    def wait_ready(self) -> None:
        while not self._ready.wait(0.05):
            if not self._proc.is_alive():
                self.result()  # raises the child's error

    def go(self) -> None:
        self._go.set()

    def finished(self) -> bool:
        return not self._proc.is_alive()

    def result(self, timeout: float = 1800) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            try:
                status, value = self._out.get(timeout=0.05)
                break
            except queue.Empty:
                if not self._proc.is_alive() and self._out.empty():
                    raise RuntimeError(f"child process died with exit code {self._proc.exitcode}") from None
                if time.monotonic() > deadline:
                    self._proc.kill()
                    raise TimeoutError("child process did not finish") from None
        self._proc.join()
        if status == "error":
            raise RuntimeError(f"in a child process:\n{value}")
        return value


def run_child(fn: Callable, *args: Any) -> Any:
    child = Child(fn, *args)
    child.wait_ready()
    child.go()
    return child.result()


def file_size(path: str) -> int:
    return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def peak_rss_mb() -> float:
    """This process's peak resident set: right for a child of PROCESSES."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def interleave(runs: int, variants: dict[str, Callable[[], Any]]) -> dict[str, list]:
    """Run every variant once per round, ``runs`` rounds, so that a busy moment
    on the machine spreads over all of them rather than hitting one."""
    samples: dict[str, list] = {key: [] for key in variants}
    for _ in range(runs):
        for key, fn in variants.items():
            samples[key].append(fn())
    return samples


UNITS = {"jobs/s": "{:,.0f}", "ms": "{:,.2f}", "MB": "{:,.1f}", "% core": "{:,.2f}", "us/job": "{:,.1f}"}


class Report:
    """Prints aligned figure lines as they come, and keeps them for --json."""

    def __init__(self) -> None:
        self.figures: dict[str, dict] = {}

    def group(self, title: str) -> None:
        print(f"\n{title}", flush=True)

    def line(self, key: str, label: str, runs: list[float], unit: str,
             vs: tuple[tuple[str, str], ...] = (), note: str = "") -> None:
        """One figure: the median of ``runs``, with its ratio to each (text, key) in ``vs``."""
        value = statistics.median(runs)
        ratios = {text: value / self.figures[other]["value"] for text, other in vs
                  if other in self.figures and self.figures[other]["value"]}
        self.figures[key] = {"label": label, "value": value, "unit": unit, "runs": runs, "ratios": ratios}
        text = "   ".join(f"{r:.2f}x {t}" for t, r in ratios.items())
        print(f"  {label:<48}{UNITS[unit].format(value):>11} {unit:<8}{text}{'   ' + note if note else ''}",
              flush=True)


class Bench:
    """What the groups share: the plan, a scratch folder and the report."""

    def __init__(self, plan: Plan, folder: str, report: Report) -> None:
        self.plan, self.folder, self.report = plan, folder, report
        self._counter = 0
        self._templates: dict[tuple[str, int], str] = {}
        self.scale_results: dict[str, list[float]] | None = None

    def path(self, name: str) -> str:
        """A new file name in the scratch folder."""
        self._counter += 1
        return os.path.join(self.folder, f"{self._counter:04d}-{name}.db")

    def pending(self, kind: str, n: int) -> str:
        """A fresh file with ``n`` pending no-op jobs: a copy of one built once."""
        key = (kind, n)
        if key not in self._templates:
            template = self._templates[key] = self.path(f"template-{kind}-{n}")
            if kind.startswith("litejobs"):
                asyncio.run(lj_fill(template, n, limited=kind == "litejobs-limited"))
            else:
                raw_fill(template, n)
        path = self.path(f"{kind}-{n}")
        for suffix in ("", "-wal"):
            if os.path.exists(self._templates[key] + suffix):
                shutil.copyfile(self._templates[key] + suffix, path + suffix)
        return path


# --------------------------------------------------------------------------
# enqueue
# --------------------------------------------------------------------------


def raw_single(path: str, n: int) -> float:
    conn = raw_open(path)
    start = time.perf_counter()
    for i in range(n):
        conn.execute(RAW_INSERT, raw_row({"n": i}))
    rate = n / (time.perf_counter() - start)
    conn.close()
    return rate


def raw_many(path: str, n: int) -> float:
    conn = raw_open(path)
    start = time.perf_counter()
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(RAW_INSERT, [raw_row({"n": i}) for i in range(n)])
    conn.execute("COMMIT")
    rate = n / (time.perf_counter() - start)
    conn.close()
    return rate


async def araw_single(path: str, n: int) -> float:
    db = await araw_open(path)
    start = time.perf_counter()
    for i in range(n):
        await db.execute(RAW_INSERT, raw_row({"n": i}))
    rate = n / (time.perf_counter() - start)
    await db.close()
    return rate


async def lj_one_by_one(path: str, n: int) -> float:
    async with litejobs.connect(path) as store:
        start = time.perf_counter()
        for i in range(n):
            await store.enqueue(Noop(i))
        return n / (time.perf_counter() - start)


async def lj_concurrent(path: str, n: int, tasks: int) -> float:
    async with litejobs.connect(path) as store:
        async def enqueuer(k: int) -> None:
            for i in range(k, n, tasks):
                await store.enqueue(Noop(i))

        start = time.perf_counter()
        await asyncio.gather(*(enqueuer(k) for k in range(tasks)))
        return n / (time.perf_counter() - start)


async def lj_many(path: str, n: int) -> float:
    async with litejobs.connect(path) as store:
        start = time.perf_counter()
        await store.enqueue_many([Noop(i) for i in range(n)])
        return n / (time.perf_counter() - start)


def lj_sync(path: str, n: int) -> float:
    store = litejobs.connect_sync(path)
    start = time.perf_counter()
    for i in range(n):
        store.enqueue(Noop(i))
    rate = n / (time.perf_counter() - start)
    store.close()
    return rate


def group_enqueue(b: Bench) -> None:
    p, line = b.plan, b.report.line
    b.report.group("enqueue (into an empty file; the raw loops encode the same payload with orjson)")
    s = interleave(p.runs, {
        "raw_single": lambda: raw_single(b.path("raw-single"), p.one_by_one),
        "araw_single": lambda: asyncio.run(araw_single(b.path("araw-single"), p.one_by_one)),
        "raw_many": lambda: raw_many(b.path("raw-many"), p.many),
        "one_by_one": lambda: asyncio.run(lj_one_by_one(b.path("lj-one"), p.one_by_one)),
        "concurrent": lambda: asyncio.run(lj_concurrent(b.path("lj-concurrent"), p.concurrent, p.tasks)),
        "many": lambda: asyncio.run(lj_many(b.path("lj-many"), p.many)),
        "sync": lambda: lj_sync(b.path("lj-sync"), p.one_by_one),
    })
    sq, aio, many = "raw sqlite3", "raw aiosqlite", "raw executemany"
    line("enqueue.raw_sqlite3_single", "raw sqlite3 single inserts", s["raw_single"], "jobs/s")
    line("enqueue.raw_aiosqlite_single", "raw aiosqlite single inserts", s["araw_single"], "jobs/s",
         vs=((sq, "enqueue.raw_sqlite3_single"),))
    line("enqueue.raw_sqlite3_executemany", f"raw sqlite3 executemany of {p.many:,}", s["raw_many"], "jobs/s")
    line("enqueue.one_by_one", "await enqueue, one after another", s["one_by_one"], "jobs/s",
         vs=((aio, "enqueue.raw_aiosqlite_single"), (sq, "enqueue.raw_sqlite3_single")))
    line("enqueue.concurrent", f"await enqueue, {p.tasks} concurrent tasks", s["concurrent"], "jobs/s",
         vs=((many, "enqueue.raw_sqlite3_executemany"), (aio, "enqueue.raw_aiosqlite_single")))
    line("enqueue.many", f"enqueue_many of {p.many:,}", s["many"], "jobs/s",
         vs=((many, "enqueue.raw_sqlite3_executemany"),))
    line("enqueue.sync", "connect_sync().enqueue, one after another", s["sync"], "jobs/s",
         vs=((sq, "enqueue.raw_sqlite3_single"),))


# --------------------------------------------------------------------------
# drain
# --------------------------------------------------------------------------


def raw_drain(path: str) -> float:
    conn = raw_open(path)
    start = time.perf_counter()
    done = raw_work(conn)
    rate = done / (time.perf_counter() - start)
    conn.close()
    return rate


async def araw_drain(path: str) -> float:
    db = await araw_open(path)
    start = time.perf_counter()
    done = await araw_work(db)
    rate = done / (time.perf_counter() - start)
    await db.close()
    return rate


async def lj_drain(path: str, n: int, concurrency: int, limits: bool = False) -> float:
    """From the worker's start until the store reports the n-th job done."""
    async with litejobs.connect(path) as store:
        tally = Tally(store, n)
        start = time.perf_counter()
        async with running(store, concurrency, limits) as worker:
            await until(tally.finished, worker)
        return n / (tally.at[n] - start)


def child_raw_drain(gate: Callable, path: str) -> float:
    conn = raw_open(path)
    gate()
    raw_work(conn)
    return time.time()


def raw_drain_two(path: str) -> float:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        n = conn.execute("SELECT count(*) FROM jobs WHERE state = 'pending'").fetchone()[0]
    return drain_rate([Child(child_raw_drain, path) for _ in range(2)], n)


def drain_rate(children: list[Child], n: int) -> float:
    """Let raw-loop children drain ``n`` jobs; the rate until the last ends
    (each returns the time.time() at which it found nothing left)."""
    for child in children:
        child.wait_ready()
    start = time.time()
    for child in children:
        child.go()
    return n / (max(child.result() for child in children) - start)


def child_lj_drain(gate: Callable, path: str, n: int, concurrency: int, shared: Any) -> None:
    async def main() -> None:
        async with litejobs.connect(path) as store:
            Tally(store, shared=shared)
            gate()
            async with running(store, concurrency) as worker:
                while shared.value < n and not worker.done():
                    await asyncio.sleep(0.002)

    asyncio.run(main())


def lj_drain_processes(url: str, n: int, concurrency: int, processes: int) -> float:
    """Worker processes; done when their success counts add up to n."""
    shared = PROCESSES.Value("q", 0)
    children = [Child(child_lj_drain, url, n, concurrency, shared) for _ in range(processes)]
    for child in children:
        child.wait_ready()
    start = time.perf_counter()
    for child in children:
        child.go()
    while shared.value < n:
        if any(child.finished() for child in children):
            break
        time.sleep(0.001)
    elapsed = time.perf_counter() - start
    for child in children:
        child.result()
    if shared.value < n:
        raise RuntimeError(f"{processes} workers stopped after {shared.value} of {n} jobs")
    return n / elapsed


def group_drain(b: Bench) -> None:
    p, line = b.plan, b.report.line
    n = p.drain
    b.report.group(f"drain ({n:,} pending no-op jobs, from the worker's start until the last is recorded done)")
    variants: dict[str, Callable[[], float]] = {
        "raw": lambda: raw_drain(b.pending("raw", n)),
        "araw": lambda: asyncio.run(araw_drain(b.pending("raw", n))),
        "raw_two": lambda: raw_drain_two(b.pending("raw", n)),
    }
    for c in DRAIN_CONCURRENCIES:
        variants[f"c{c}"] = lambda c=c: asyncio.run(lj_drain(b.pending("litejobs", n), n, c))
    variants["two"] = lambda: lj_drain_processes(b.pending("litejobs", n), n, WORKER_CONCURRENCY, 2)
    in_process = ["raw", "araw"] + [f"c{c}" for c in DRAIN_CONCURRENCIES]
    for key in in_process:  # the process's CPU time too, every thread's
        variants[key] = with_cpu(variants[key])
    s = interleave(p.runs, variants)
    cpu = {key: [used / n * 1e6 for _, used in s[key]] for key in in_process}
    s.update({key: [rate for rate, _ in s[key]] for key in in_process})
    sq, aio = (("raw sqlite3", "drain.raw_sqlite3"),), (("raw aiosqlite", "drain.raw_aiosqlite"),)
    line("drain.raw_sqlite3", "raw sqlite3 batch loop", s["raw"], "jobs/s")
    line("drain.raw_aiosqlite", "raw aiosqlite batch loop", s["araw"], "jobs/s", vs=sq)
    line("drain.raw_sqlite3_two", "raw sqlite3 batch loop, 2 processes", s["raw_two"], "jobs/s", vs=sq)
    for c in DRAIN_CONCURRENCIES:
        line(f"drain.c{c}", f"drain c={c}", s[f"c{c}"], "jobs/s", vs=sq + aio)
    line("drain.two_processes", f"drain c={WORKER_CONCURRENCY}, 2 worker processes", s["two"], "jobs/s",
         vs=(("raw sqlite3 2 processes", "drain.raw_sqlite3_two"),
             (f"1 process c={WORKER_CONCURRENCY}", f"drain.c{WORKER_CONCURRENCY}")))
    line("drain.cpu_raw_sqlite3", "CPU per job, raw sqlite3 batch loop", cpu["raw"], "us/job")
    line("drain.cpu_raw_aiosqlite", "CPU per job, raw aiosqlite batch loop", cpu["araw"], "us/job",
         vs=(("raw sqlite3", "drain.cpu_raw_sqlite3"),))
    for c in DRAIN_CONCURRENCIES:
        line(f"drain.cpu_c{c}", f"CPU per job, drain c={c}", cpu[f"c{c}"], "us/job",
             vs=(("raw sqlite3", "drain.cpu_raw_sqlite3"), ("raw aiosqlite", "drain.cpu_raw_aiosqlite")))


def group_limits(b: Bench, pending: Callable[[str, int], str] | None = None,
                 raw: tuple[str, Callable[[str], float]] | None = None) -> None:
    """On copies of a file, or of what ``pending`` makes (PostgreSQL
    databases, with ``raw`` its raw loop)."""
    p, line = b.plan, b.report.line
    n, pending = p.drain, pending or b.pending
    raw_name, raw_drain_on = raw or ("raw sqlite3", raw_drain)
    b.report.group(f"limits ({n:,} pending no-op jobs drained at c={WORKER_CONCURRENCY}; half of them with a "
                   f"concurrency limit: {LIMITED_KEYS} keys, {LIMIT_PER_KEY} at once each)")
    s = interleave(p.runs, {
        "raw": lambda: raw_drain_on(pending("raw", n)),
        "none": lambda: asyncio.run(lj_drain(pending("litejobs", n), n, WORKER_CONCURRENCY)),
        "half": lambda: asyncio.run(lj_drain(pending("litejobs-limited", n), n, WORKER_CONCURRENCY, limits=True)),
    })
    prefix = "limits" if raw is None else "pg.limits"
    raw_vs = (raw_name, f"{prefix}.raw")
    line(f"{prefix}.raw", f"{raw_name} batch loop, no limits", s["raw"], "jobs/s")
    line(f"{prefix}.none", "drain, no limits", s["none"], "jobs/s", vs=(raw_vs,))
    line(f"{prefix}.half", "drain, a concurrency limit on half the jobs", s["half"], "jobs/s",
         vs=(("no limits", f"{prefix}.none"), raw_vs))


def with_cpu(fn: Callable[[], float]) -> Callable[[], tuple[float, float]]:
    """``fn``, answering also the CPU seconds the whole process spent in it."""
    def measured() -> tuple[float, float]:
        began = time.process_time()
        rate = fn()
        return rate, time.process_time() - began

    return measured


# --------------------------------------------------------------------------
# e2e: a producer in another process enqueues while the worker drains
# --------------------------------------------------------------------------


def child_produce(gate: Callable, kind: str, path: str, seconds: float) -> int:
    """Enqueue stamped jobs one after another for ``seconds``; returns how many."""
    async def with_litejobs() -> int:
        async with litejobs.connect(path) as store:
            gate()
            n, deadline = 0, time.perf_counter() + seconds
            while time.perf_counter() < deadline:
                await store.enqueue(Stamped(time.time()))
                n += 1
            return n

    async def with_aiosqlite() -> int:
        db = await araw_open(path)
        gate()
        n, deadline = 0, time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            await db.execute(RAW_INSERT, raw_row({"t": time.time()}))
            n += 1
        await db.close()
        return n

    if kind == "litejobs":
        return asyncio.run(with_litejobs())
    if kind == "raw aiosqlite":
        return asyncio.run(with_aiosqlite())
    conn = raw_open(path)
    gate()
    n, deadline = 0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        conn.execute(RAW_INSERT, raw_row({"t": time.time()}))
        n += 1
    conn.close()
    return n


def check_count(ran: int, enqueued: int) -> None:
    if ran != enqueued:
        raise RuntimeError(f"the raw loop ran {ran} jobs, but {enqueued} were enqueued")


def latencies(n: int, elapsed: float) -> dict[str, float]:
    return {"rate": n / elapsed, "p50": percentile(Starts.latencies, 50) * 1000,
            "p99": percentile(Starts.latencies, 99) * 1000}


def raw_e2e(path: str, seconds: float) -> dict[str, float]:
    conn = raw_open(path)
    child = Child(child_produce, "raw sqlite3", path, seconds)
    Starts.reset()
    child.wait_ready()
    start = time.perf_counter()
    child.go()
    done = raw_work(conn, keep_waiting=lambda: not child.finished())
    elapsed = time.perf_counter() - start
    conn.close()
    check_count(done, child.result())
    return latencies(done, elapsed)


async def araw_e2e(path: str, seconds: float) -> dict[str, float]:
    db = await araw_open(path)
    child = Child(child_produce, "raw aiosqlite", path, seconds)
    Starts.reset()
    await asyncio.to_thread(child.wait_ready)
    start = time.perf_counter()
    child.go()
    done = await araw_work(db, keep_waiting=lambda: not child.finished())
    elapsed = time.perf_counter() - start
    await db.close()
    check_count(done, child.result())
    return latencies(done, elapsed)


async def lj_e2e(path: str, seconds: float) -> dict[str, float]:
    async with litejobs.connect(path) as store:
        child = Child(child_produce, "litejobs", path, seconds)
        tally = Tally(store)
        Starts.reset()
        async with running(store, WORKER_CONCURRENCY) as worker:
            await asyncio.to_thread(child.wait_ready)
            start = time.perf_counter()
            child.go()
            n = await asyncio.to_thread(child.result)
            tally.expect(n)
            await until(tally.finished, worker)
        return latencies(n, tally.at[n] - start)


def group_e2e(b: Bench) -> None:
    p, line = b.plan, b.report.line
    b.report.group(f"end to end (a producer process enqueues one after another for {p.e2e_seconds:g} s while "
                   f"the worker drains; jobs/s until the last is done)")
    s = interleave(p.runs, {
        "raw": lambda: raw_e2e(b.path("raw-e2e"), p.e2e_seconds),
        "araw": lambda: asyncio.run(araw_e2e(b.path("araw-e2e"), p.e2e_seconds)),
        "lj": lambda: asyncio.run(lj_e2e(b.path("lj-e2e"), p.e2e_seconds)),
    })
    for figure, unit, what in (("rate", "jobs/s", ""), ("p50", "ms", ", enqueue-to-start p50"),
                               ("p99", "ms", ", enqueue-to-start p99")):
        sq, aio = ("raw sqlite3", f"e2e.raw_sqlite3.{figure}"), ("raw aiosqlite", f"e2e.raw_aiosqlite.{figure}")
        line(sq[1], f"raw sqlite3{what}", [run[figure] for run in s["raw"]], unit)
        line(aio[1], f"raw aiosqlite{what}", [run[figure] for run in s["araw"]], unit, vs=(sq,))
        line(f"e2e.litejobs.{figure}", f"litejobs c={WORKER_CONCURRENCY}{what}", [run[figure] for run in s["lj"]],
             unit, vs=(sq, aio))


# --------------------------------------------------------------------------
# latency: pick-up by an idle worker, and its CPU use
# --------------------------------------------------------------------------


def child_enqueue_stamped(gate: Callable, kind: str, path: str, samples: int, ack: Any, seed: int) -> None:
    """Enqueue one stamped job at a time, each PICKUP_GAP after the previous one started."""
    rng = random.Random(seed)
    store = litejobs.connect_sync(path) if kind == "litejobs" else raw_open(path)
    gate()
    for _ in range(samples):
        time.sleep(rng.uniform(*PICKUP_GAP))
        if kind == "litejobs":
            store.enqueue(Stamped(time.time()))
        else:
            store.execute(RAW_INSERT, raw_row({"t": time.time()}))
        if not ack.acquire(timeout=30):
            raise RuntimeError("a job was not started within 30 s")
    store.close()


def raw_pickup_here(path: str, samples: int) -> float:
    """The raw loop in a thread; jobs enqueued from this process's main thread."""
    worker_conn, conn = raw_open(path), raw_open(path)
    started, stop = threading.Event(), threading.Event()
    Starts.reset(hook=started.set)
    thread = threading.Thread(target=raw_work, args=(worker_conn, lambda: not stop.is_set()))
    thread.start()
    rng = random.Random(1)
    for _ in range(samples):
        time.sleep(rng.uniform(*PICKUP_GAP))
        started.clear()
        conn.execute(RAW_INSERT, raw_row({"t": time.time()}))
        if not started.wait(30):
            raise RuntimeError("the raw loop did not start a job within 30 s")
    stop.set()
    thread.join()
    worker_conn.close()
    conn.close()
    return percentile(Starts.latencies, 50) * 1000


async def araw_pickup_here(path: str, samples: int) -> float:
    worker_db, db = await araw_open(path), await araw_open(path)
    started, stop = asyncio.Event(), False
    Starts.reset(hook=started.set)
    worker = asyncio.create_task(araw_work(worker_db, lambda: not stop))
    rng = random.Random(1)
    for _ in range(samples):
        await asyncio.sleep(rng.uniform(*PICKUP_GAP))
        started.clear()
        await db.execute(RAW_INSERT, raw_row({"t": time.time()}))
        await until(started, worker, timeout=30)
    stop = True
    await worker
    await worker_db.close()
    await db.close()
    return percentile(Starts.latencies, 50) * 1000


def raw_pickup_there(path: str, samples: int) -> float:
    conn, ack = raw_open(path), PROCESSES.Semaphore(0)
    child = Child(child_enqueue_stamped, "raw", path, samples, ack, 1)
    Starts.reset(hook=ack.release)
    child.wait_ready()
    child.go()
    raw_work(conn, keep_waiting=lambda: not child.finished())
    child.result()
    conn.close()
    return percentile(Starts.latencies, 50) * 1000


async def araw_pickup_there(path: str, samples: int) -> float:
    db, ack = await araw_open(path), PROCESSES.Semaphore(0)
    child = Child(child_enqueue_stamped, "raw", path, samples, ack, 1)
    Starts.reset(hook=ack.release)
    await asyncio.to_thread(child.wait_ready)
    child.go()
    await araw_work(db, keep_waiting=lambda: not child.finished())
    child.result()
    await db.close()
    return percentile(Starts.latencies, 50) * 1000


async def lj_pickup_here(path: str, samples: int) -> float:
    async with litejobs.connect(path) as store:
        started = asyncio.Event()
        Starts.reset(hook=started.set)
        async with running(store, WORKER_CONCURRENCY) as worker:
            await asyncio.sleep(0.2)  # let it settle into idling
            rng = random.Random(1)
            for _ in range(samples):
                await asyncio.sleep(rng.uniform(*PICKUP_GAP))
                started.clear()
                await store.enqueue(Stamped(time.time()))
                await until(started, worker, timeout=30)
    return percentile(Starts.latencies, 50) * 1000


async def lj_pickup_there(path: str, samples: int) -> float:
    async with litejobs.connect(path) as store:
        ack = PROCESSES.Semaphore(0)
        child = Child(child_enqueue_stamped, "litejobs", path, samples, ack, 1)
        Starts.reset(hook=ack.release)
        async with running(store, WORKER_CONCURRENCY):
            await asyncio.to_thread(child.wait_ready)
            child.go()
            await asyncio.to_thread(child.result)
    return percentile(Starts.latencies, 50) * 1000


async def lj_idle_cpu(path: str, seconds: float) -> float:
    """This process's CPU time (all threads) while its worker idles, in % of one core."""
    async with litejobs.connect(path) as store:
        async with running(store, WORKER_CONCURRENCY):
            await asyncio.sleep(0.5)
            cpu, wall = time.process_time(), time.perf_counter()
            await asyncio.sleep(seconds)
            return 100 * (time.process_time() - cpu) / (time.perf_counter() - wall)


def group_latency(b: Bench) -> None:
    p, line = b.plan, b.report.line
    b.report.group(f"pick-up latency of an idle worker (enqueue-to-start p50 of {p.pickups} jobs, each enqueued "
                   f"{PICKUP_GAP[0] * 1000:g}-{PICKUP_GAP[1] * 1000:g} ms after the previous one started; "
                   f"the raw loops poll data_version every {RAW_IDLE_POLL * 1000:g} ms)")
    s = interleave(p.runs, {
        "raw_here": lambda: raw_pickup_here(b.path("raw-pickup"), p.pickups),
        "raw_there": lambda: raw_pickup_there(b.path("raw-pickup"), p.pickups),
        "araw_here": lambda: asyncio.run(araw_pickup_here(b.path("araw-pickup"), p.pickups)),
        "araw_there": lambda: asyncio.run(araw_pickup_there(b.path("araw-pickup"), p.pickups)),
        "here": lambda: asyncio.run(lj_pickup_here(b.path("lj-pickup"), p.pickups)),
        "there": lambda: asyncio.run(lj_pickup_there(b.path("lj-pickup"), p.pickups)),
        "cpu": lambda: asyncio.run(lj_idle_cpu(b.path("lj-idle"), p.idle_seconds)),
    })
    line("latency.raw_sqlite3_same", "raw sqlite3, same process", s["raw_here"], "ms")
    line("latency.raw_sqlite3_other", "raw sqlite3, from another process", s["raw_there"], "ms")
    line("latency.raw_aiosqlite_same", "raw aiosqlite, same process", s["araw_here"], "ms")
    line("latency.raw_aiosqlite_other", "raw aiosqlite, from another process", s["araw_there"], "ms")
    line("latency.same_process", "pick-up p50, same process", s["here"], "ms",
         vs=(("raw sqlite3", "latency.raw_sqlite3_same"), ("raw aiosqlite", "latency.raw_aiosqlite_same")))
    line("latency.other_process", "pick-up p50, another process (connect_sync)", s["there"], "ms",
         vs=(("raw sqlite3", "latency.raw_sqlite3_other"), ("raw aiosqlite", "latency.raw_aiosqlite_other")),
         note=f"(default poll_interval={POLL_INTERVAL:g} s)")
    line("latency.idle_cpu", f"idle worker CPU over {p.idle_seconds:g} s", s["cpu"], "% core")


# --------------------------------------------------------------------------
# scale and size: a big queue against a small one
# --------------------------------------------------------------------------


def child_scale(gate: Callable, kind: str, path: str, first: int, total: int) -> dict[str, float]:
    """Drain every pending job; the rate over the first ``first`` and over all, and peak RSS."""
    if kind == "litejobs":
        async def main() -> tuple[float, float, float]:
            async with litejobs.connect(path) as store:
                tally = Tally(store, first, total)
                gate()
                start = time.perf_counter()
                async with running(store, WORKER_CONCURRENCY) as worker:
                    await until(tally.finished, worker)
                return start, tally.at[first], tally.at[total]

        start, at_first, at_total = asyncio.run(main())
    else:
        conn = raw_open(path)
        gate()
        start = time.perf_counter()
        first = raw_work(conn, limit=first)
        at_first = time.perf_counter()
        total = first + raw_work(conn)
        at_total = time.perf_counter()
        conn.close()
    return {"first": first / (at_first - start), "all": total / (at_total - start),
            "rss": peak_rss_mb(), "size": file_size(path) / 1e6}


def scale_experiment(b: Bench) -> dict[str, list[float]]:
    """Workers in their own processes drain a small queue (``runs`` times) and
    a big one (once); the scale and size groups share the results."""
    if b.scale_results is not None:
        return b.scale_results
    p = b.plan
    first = min(p.small, p.big)
    results: dict[str, list[float]] = {}
    small = interleave(p.runs, {
        kind: lambda kind=kind: run_child(child_scale, kind, b.pending(kind, p.small), first, p.small)
        for kind in ("raw", "litejobs")})
    for kind in ("raw", "litejobs"):
        path = b.path(f"{kind}-{p.big}")
        print(f"  (filling {p.big:,} {kind} jobs and draining them all, once ...)", flush=True)
        if kind == "litejobs":
            asyncio.run(lj_fill(path, p.big))
        else:
            raw_fill(path, p.big)
        big = run_child(child_scale, kind, path, first, p.big)
        for figure in ("first", "all", "rss", "size"):
            results[f"{kind}.small.{figure}"] = [run[figure] for run in small[kind]]
            results[f"{kind}.big.{figure}"] = [big[figure]]
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)
    b.scale_results = results
    return results


def group_scale(b: Bench) -> None:
    p, line = b.plan, b.report.line
    b.report.group(f"scale (a worker process c={WORKER_CONCURRENCY}: drain rate over the first {p.small:,} "
                   f"jobs, {p.big:,} pending measured once)")
    r = scale_experiment(b)
    once = "(1 run)" if p.runs > 1 else ""
    for kind, label in (("raw", "raw sqlite3"), ("litejobs", "litejobs")):
        small, big = f"scale.{kind}_{p.small}", f"scale.{kind}_{p.big}"
        raw_vs = () if kind == "raw" else (("raw sqlite3", f"scale.raw_{p.small}"),)
        line(small, f"{label} drain, {p.small:,} pending", r[f"{kind}.small.first"], "jobs/s", vs=raw_vs)
        line(big, f"{label} drain, {p.big:,} pending", r[f"{kind}.big.first"], "jobs/s",
             vs=((f"{p.small:,} pending", small),)
             + (() if kind == "raw" else (("raw sqlite3", f"scale.raw_{p.big}"),)), note=once)
        line(f"{big}_all", f"{label} drain all {p.big:,}", r[f"{kind}.big.all"], "jobs/s",
             vs=((f"{p.small:,} pending", small),), note=once)
    for kind, label in (("raw", "raw sqlite3"), ("litejobs", "litejobs worker")):
        raw_vs = () if kind == "raw" else (("raw sqlite3", f"scale.raw_rss_{p.small}"),)
        line(f"scale.{kind}_rss_{p.small}", f"{label} peak RSS, {p.small:,} pending",
             r[f"{kind}.small.rss"], "MB", vs=raw_vs)
        line(f"scale.{kind}_rss_{p.big}", f"{label} peak RSS, {p.big:,} pending", r[f"{kind}.big.rss"], "MB",
             vs=((f"{p.small:,} pending", f"scale.{kind}_rss_{p.small}"),)
             + (() if kind == "raw" else (("raw sqlite3", f"scale.raw_rss_{p.big}"),)), note=once)


def group_size(b: Bench) -> None:
    p, line = b.plan, b.report.line
    b.report.group("file size after every job ran (litejobs with its default retention, keep_done one day; "
                   "the raw table keeps its done rows)")
    r = scale_experiment(b)
    once = "(1 run)" if p.runs > 1 else ""
    for kind, label in (("raw", "raw sqlite3"), ("litejobs", "litejobs")):
        small, big = f"size.{kind}_{p.small}", f"size.{kind}_{p.big}"
        line(small, f"{label} file after {p.small:,} jobs", r[f"{kind}.small.size"], "MB",
             vs=() if kind == "raw" else (("raw sqlite3", f"size.raw_{p.small}"),))
        line(big, f"{label} file after {p.big:,} jobs", r[f"{kind}.big.size"], "MB",
             vs=((f"{p.small:,} jobs", small),) + (() if kind == "raw" else (("raw sqlite3", f"size.raw_{p.big}"),)),
             note=once)


# --------------------------------------------------------------------------
# claim: the cost of a claim beside many pending jobs of other names
# --------------------------------------------------------------------------


async def lj_claim_beside(path: str, strangers: int, claims: int) -> float:
    """p50 ms of one enqueue and the claim that takes it, with ``strangers``
    pending jobs of a name this worker does not know, at a higher priority."""
    async with litejobs.connect(path) as store:
        other = litejobs.NewJob("somebody_elses", "default", "{}", litejobs.Count(0), litejobs.Linear(0),
                                15_000, priority=9)
        for start in range(0, strangers, 10_000):
            await store.enqueue_many([other] * min(10_000, strangers - start))
        request = litejobs._Request(wants={"default": 1}, names=[Noop.NAME])
        times = []
        for _ in range(claims):
            began = time.perf_counter()
            await store.enqueue(Noop())
            await store.exchange(request)
            times.append((time.perf_counter() - began) * 1000)
    return percentile(times, 50)


def group_claim(b: Bench) -> None:
    p, line = b.plan, b.report.line
    b.report.group(f"claim beside strangers (enqueue + claim p50 of {p.claims}, with pending jobs of another "
                   "name at a higher priority)")
    s = interleave(p.runs, {
        "alone": lambda: asyncio.run(lj_claim_beside(b.path("claim-alone"), 0, p.claims)),
        "beside": lambda: asyncio.run(lj_claim_beside(b.path("claim-beside"), p.strangers, p.claims)),
    })
    line("claim.alone", "enqueue + claim, no other jobs", s["alone"], "ms")
    line("claim.beside", f"enqueue + claim beside {p.strangers:,} of another name", s["beside"], "ms",
         vs=(("no other jobs", "claim.alone"),))


# --------------------------------------------------------------------------
# progress: what a report costs the job that makes it
# --------------------------------------------------------------------------


async def _no_report(fraction: float) -> None:
    return None


@dataclasses.dataclass
class Reporting(litejobs.Job):
    """Calls progress() ``reports`` times (or, with reports=0, does nothing) and returns the seconds it took."""

    NAME = "bench.reporting"
    reports: int = 0
    loops: int = 0

    async def run(self, state: Any) -> float:
        context = litejobs.current()
        began = time.perf_counter()
        if self.reports:
            for n in range(self.reports):
                await context.progress(n / self.reports)
        else:
            for n in range(self.loops):
                await _no_report(n / self.loops)  # the same loop and awaits, without the report
        return time.perf_counter() - began


async def lj_progress(path: str, reports: int) -> tuple[float, float]:
    """Microseconds per progress() call, and the worker's round trips while the job ran."""
    async with litejobs.connect(path) as store:
        trips = 0
        exchange = store.exchange

        async def counted(request: Any) -> Any:
            nonlocal trips
            trips += 1
            return await exchange(request)

        store.exchange = counted  # type: ignore[method-assign]
        bare = await store.enqueue(Reporting(loops=reports))
        reporting = await store.enqueue(Reporting(reports=reports))
        async with litejobs.Worker(store, [Reporting]):
            baseline = await store.wait(bare, timeout=600)
            before = trips
            spent = await store.wait(reporting, timeout=600)
            return (spent - baseline) / reports * 1e6, trips - before


def group_progress(b: Bench, fresh: Callable[[], str] | None = None) -> None:
    """On a new file, or on what ``fresh()`` makes (a PostgreSQL database)."""
    p, line = b.plan, b.report.line
    new = fresh or (lambda: b.path("progress"))
    b.report.group(f"progress ({p.reports:,} calls to progress() in one job, less the same loop without them)")
    s = interleave(p.runs, {"lj": lambda: asyncio.run(lj_progress(new(), p.reports))})
    line("progress.per_call", "one progress() call, in the job", [cost for cost, _ in s["lj"]], "us/job",
         note=f"(round trips meanwhile: {statistics.median(trips for _, trips in s['lj']):g}, "
              "housekeeping's own)")


# --------------------------------------------------------------------------
# PostgreSQL (--db postgresql://...): the same figures against a raw psycopg loop
# --------------------------------------------------------------------------
# Each run gets a database of its own on the server, made from a template
# filled once (as the SQLite runs copy a file), dropped at the end.  The raw
# loop: INSERT + commit; executemany in one transaction; claims of 64 with
# FOR UPDATE SKIP LOCKED and one UPDATE completing each batch; an idle raw
# worker waits for NOTIFY on a connection of its own.

PG_GROUPS = ("enqueue", "drain", "latency", "progress", "limits")
PG_RAW_DDL = (
    """CREATE TABLE IF NOT EXISTS jobs (
        id          BIGSERIAL PRIMARY KEY,
        queue       TEXT NOT NULL,
        payload     TEXT NOT NULL,
        state       TEXT NOT NULL DEFAULT 'pending',
        priority    INTEGER NOT NULL DEFAULT 0,
        run_at      DOUBLE PRECISION NOT NULL,
        attempts    INTEGER NOT NULL DEFAULT 0,
        created_at  DOUBLE PRECISION NOT NULL,
        started_at  DOUBLE PRECISION,
        finished_at DOUBLE PRECISION)""",
    "CREATE INDEX IF NOT EXISTS jobs_claim ON jobs (queue, priority DESC, run_at, id) WHERE state = 'pending'",
)
PG_RAW_INSERT = "INSERT INTO jobs (queue, payload, run_at, created_at) VALUES ('default', %s, %s, %s)"
PG_RAW_CLAIM = """
    WITH chosen AS (SELECT id FROM jobs
                     WHERE state = 'pending' AND queue = 'default' AND run_at <= %(now)s
                     ORDER BY priority DESC, run_at, id LIMIT 64 FOR UPDATE SKIP LOCKED)
    UPDATE jobs SET state = 'running', attempts = attempts + 1, started_at = %(now)s
      FROM chosen WHERE jobs.id = chosen.id
    RETURNING jobs.id, jobs.payload"""
PG_RAW_DONE = "UPDATE jobs SET state = 'done', finished_at = %s WHERE id = ANY(%s)"
PG_PROCESSES = (1, 2, 4)


def pg_connect(url: str) -> Any:
    import psycopg

    return psycopg.connect(url, autocommit=True)


class PgDatabases:
    """Fresh databases on the server, each a copy of a template filled once."""

    def __init__(self, url: str) -> None:
        self.url, self.made, self.templates = url, [], {}
        self._counter = 0

    def _url(self, name: str) -> str:
        return self.url.rsplit("/", 1)[0] + "/" + name

    def _create(self, template: str | None = None) -> str:
        self._counter += 1
        name = f"litejobs_bench_{os.getpid()}_{self._counter}"
        with pg_connect(self.url) as admin:
            admin.execute(f"CREATE DATABASE {name}" + (f" TEMPLATE {template} STRATEGY FILE_COPY" if template else ""))
        self.made.append(name)
        return name

    def fresh(self, kind: str) -> str:
        url = self._url(self._create())
        if kind == "raw":
            with pg_connect(url) as conn:
                for statement in PG_RAW_DDL:
                    conn.execute(statement)
        else:
            litejobs.connect_sync(url).close()
        return url

    def pending(self, kind: str, n: int) -> str:
        if (kind, n) not in self.templates:
            url = self.fresh(kind)
            if kind == "raw":
                with pg_connect(url) as conn, conn.transaction():
                    conn.cursor().executemany(PG_RAW_INSERT, [raw_row({"n": i}) for i in range(n)])
            else:
                asyncio.run(lj_fill(url, n, limited=kind == "litejobs-limited"))
            with pg_connect(url) as conn:
                conn.execute("VACUUM ANALYZE")
            self.templates[kind, n] = url.rsplit("/", 1)[1]
        return self._url(self._create(self.templates[kind, n]))

    def drop_all(self) -> None:
        with pg_connect(self.url) as admin:
            for name in self.made:
                admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def pg_raw_single(url: str, n: int) -> float:
    with pg_connect(url) as conn:
        start = time.perf_counter()
        for i in range(n):
            conn.execute(PG_RAW_INSERT, raw_row({"n": i}))
        return n / (time.perf_counter() - start)


def pg_raw_many(url: str, n: int) -> float:
    with pg_connect(url) as conn:
        start = time.perf_counter()
        with conn.transaction():
            conn.cursor().executemany(PG_RAW_INSERT, [raw_row({"n": i}) for i in range(n)])
        return n / (time.perf_counter() - start)


def pg_raw_work(conn: Any, listener: Any = None, keep_waiting: Callable[[], bool] | None = None) -> int:
    """Claim 64, run them, mark them done; again.  With nothing to claim it
    returns, or, while ``keep_waiting()``, waits for a NOTIFY on ``listener``."""
    done = 0
    while True:
        rows = conn.execute(PG_RAW_CLAIM, {"now": time.time()}).fetchall()
        if rows:
            for _, payload in rows:
                raw_run(payload)
            conn.execute(PG_RAW_DONE, (time.time(), [row[0] for row in rows]))
            done += len(rows)
            continue
        if keep_waiting is None or not keep_waiting():
            return done
        for _ in listener.notifies(timeout=0.1, stop_after=1):
            pass


def pg_raw_drain(url: str) -> float:
    with pg_connect(url) as conn:
        start = time.perf_counter()
        return pg_raw_work(conn) / (time.perf_counter() - start)


def child_pg_raw_drain(gate: Callable, url: str) -> float:
    with pg_connect(url) as conn:
        gate()
        pg_raw_work(conn)
    return time.time()


def pg_raw_drain_processes(url: str, processes: int) -> float:
    with pg_connect(url) as conn:
        n = conn.execute("SELECT count(*) FROM jobs WHERE state = 'pending'").fetchone()[0]
    return drain_rate([Child(child_pg_raw_drain, url) for _ in range(processes)], n)


def child_pg_enqueue_stamped(gate: Callable, url: str, samples: int, ack: Any, seed: int) -> None:
    """child_enqueue_stamped for the raw loop: INSERT, then NOTIFY."""
    rng = random.Random(seed)
    with pg_connect(url) as conn:
        gate()
        for _ in range(samples):
            time.sleep(rng.uniform(*PICKUP_GAP))
            conn.execute(PG_RAW_INSERT, raw_row({"t": time.time()}))
            conn.execute("NOTIFY jobs")
            if not ack.acquire(timeout=30):
                raise RuntimeError("a job was not started within 30 s")


def pg_raw_pickup_there(url: str, samples: int) -> float:
    ack = PROCESSES.Semaphore(0)
    with pg_connect(url) as conn, pg_connect(url) as listener:
        listener.execute("LISTEN jobs")
        child = Child(child_pg_enqueue_stamped, url, samples, ack, 1)
        Starts.reset(hook=ack.release)
        child.wait_ready()
        child.go()
        pg_raw_work(conn, listener, keep_waiting=lambda: not child.finished())
        child.result()
    return percentile(Starts.latencies, 50) * 1000


def pg_groups(b: Bench, url: str, groups: tuple[str, ...]) -> None:
    p, line, dbs = b.plan, b.report.line, PgDatabases(url)
    try:
        if "enqueue" in groups:
            b.report.group("enqueue (into an empty database; fsync on, as the server is set)")
            s = interleave(p.runs, {
                "raw_single": lambda: pg_raw_single(dbs.fresh("raw"), p.one_by_one),
                "raw_many": lambda: pg_raw_many(dbs.fresh("raw"), p.many),
                "one_by_one": lambda: asyncio.run(lj_one_by_one(dbs.fresh("litejobs"), p.one_by_one)),
                "concurrent": lambda: asyncio.run(lj_concurrent(dbs.fresh("litejobs"), p.concurrent, p.tasks)),
                "many": lambda: asyncio.run(lj_many(dbs.fresh("litejobs"), p.many)),
                "sync": lambda: lj_sync(dbs.fresh("litejobs"), p.one_by_one),
            })
            single, many = ("raw psycopg", "pg.enqueue.raw_single"), ("raw executemany", "pg.enqueue.raw_many")
            line("pg.enqueue.raw_single", "raw psycopg INSERT + commit", s["raw_single"], "jobs/s")
            line("pg.enqueue.raw_many", f"raw psycopg executemany of {p.many:,}", s["raw_many"], "jobs/s")
            line("pg.enqueue.one_by_one", "await enqueue, one after another", s["one_by_one"], "jobs/s",
                 vs=(single,))
            line("pg.enqueue.concurrent", f"await enqueue, {p.tasks} concurrent tasks", s["concurrent"],
                 "jobs/s", vs=(many, single))
            line("pg.enqueue.many", f"enqueue_many of {p.many:,}", s["many"], "jobs/s", vs=(many,))
            line("pg.enqueue.sync", "connect_sync().enqueue, one after another", s["sync"], "jobs/s", vs=(single,))
        if "drain" in groups:
            n = p.drain
            b.report.group(f"drain ({n:,} pending no-op jobs, from the workers' start until the last is done)")
            variants: dict[str, Callable[[], float]] = {"raw": lambda: pg_raw_drain(dbs.pending("raw", n))}
            for k in PG_PROCESSES[1:]:
                variants[f"raw{k}"] = lambda k=k: pg_raw_drain_processes(dbs.pending("raw", n), k)
            for c in (16, WORKER_CONCURRENCY):
                variants[f"c{c}"] = lambda c=c: asyncio.run(lj_drain(dbs.pending("litejobs", n), n, c))
            for k in PG_PROCESSES[1:]:
                variants[f"lj{k}"] = lambda k=k: lj_drain_processes(dbs.pending("litejobs", n), n,
                                                                     WORKER_CONCURRENCY, k)
            s = interleave(p.runs, variants)
            raw = ("raw psycopg", "pg.drain.raw")
            line("pg.drain.raw", "raw psycopg batch loop (claims of 64)", s["raw"], "jobs/s")
            for k in PG_PROCESSES[1:]:
                line(f"pg.drain.raw{k}", f"raw psycopg batch loop, {k} processes", s[f"raw{k}"], "jobs/s", vs=(raw,))
            for c in (16, WORKER_CONCURRENCY):
                line(f"pg.drain.c{c}", f"drain c={c}", s[f"c{c}"], "jobs/s", vs=(raw,))
            for k in PG_PROCESSES[1:]:
                line(f"pg.drain.processes{k}", f"drain c={WORKER_CONCURRENCY}, {k} worker processes", s[f"lj{k}"],
                     "jobs/s", vs=((f"raw {k} processes", f"pg.drain.raw{k}"),
                                   ("1 process", f"pg.drain.c{WORKER_CONCURRENCY}")))
        if "latency" in groups:
            b.report.group(f"pick-up latency from another process (enqueue-to-start p50 of {p.pickups} jobs; "
                           "idle workers woken by LISTEN/NOTIFY)")
            s = interleave(p.runs, {
                "raw": lambda: pg_raw_pickup_there(dbs.fresh("raw"), p.pickups),
                "there": lambda: asyncio.run(lj_pickup_there(dbs.fresh("litejobs"), p.pickups)),
            })
            line("pg.latency.raw_other", "raw psycopg, LISTEN on its own connection", s["raw"], "ms")
            line("pg.latency.other_process", "pick-up p50, another process (connect_sync)", s["there"], "ms",
                 vs=(("raw psycopg", "pg.latency.raw_other"),))
        if "progress" in groups:
            group_progress(b, lambda: dbs.fresh("litejobs"))
        if "limits" in groups:
            group_limits(b, dbs.pending, ("raw psycopg", pg_raw_drain))
    finally:
        dbs.drop_all()


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a reduced run: small sizes, one run each")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes: checks that the script runs; measures nothing")
    parser.add_argument("--json", metavar="PATH", help="also write every figure to this JSON file")
    parser.add_argument("--only", metavar="NAME[,NAME]", help=f"run only these groups: {', '.join(GROUPS)}")
    parser.add_argument("--db", metavar="URL", help="measure on this PostgreSQL server instead (postgresql://...); "
                        "it makes and drops databases of its own there")
    parser.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "bench-scratch"),
                        help="where the scratch folder goes (default: %(default)s)")
    args = parser.parse_args(argv)
    known = PG_GROUPS if args.db else GROUPS
    groups = known if args.only is None else tuple(g.strip() for g in args.only.split(",") if g.strip())
    unknown = set(groups) - set(known)
    if unknown:
        parser.error(f"unknown group(s) {', '.join(sorted(unknown))}; choose from {', '.join(known)}")
    plan = SMOKE if args.smoke else QUICK if args.quick else FULL

    meta = {
        "litejobs": litejobs.__version__, "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
        "aiosqlite": getattr(aiosqlite, "__version__", "?"), "orjson": orjson.__version__,
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
        "quick": args.quick, "plan": dataclasses.asdict(plan),
    }
    if args.db:
        import psycopg

        with pg_connect(args.db) as conn:
            meta["postgresql"] = conn.execute("SHOW server_version").fetchone()[0]
            fsync = conn.execute("SHOW fsync").fetchone()[0]
        meta["psycopg"] = psycopg.__version__
        print(f"litejobs {meta['litejobs']} benchmark{' (--quick)' if args.quick else ''}: Python {meta['python']}, "
              f"PostgreSQL {meta['postgresql']} (fsync {fsync}), psycopg {meta['psycopg']}, orjson {meta['orjson']}, "
              f"{meta['machine']}")
    else:
        print(f"litejobs {meta['litejobs']} benchmark{' (--quick)' if args.quick else ''}: Python {meta['python']}, "
              f"SQLite {meta['sqlite']}, aiosqlite {meta['aiosqlite']}, orjson {meta['orjson']}, {meta['machine']}")
        print("durable files, WAL, synchronous=NORMAL")
    print(f"each figure the median of {plan.runs} run(s) unless marked; ratios are litejobs / raw")

    os.makedirs(args.dir, exist_ok=True)
    folder = tempfile.mkdtemp(prefix="run-", dir=args.dir)
    report = Report()
    bench = Bench(plan, folder, report)
    began = time.perf_counter()
    try:
        if args.db:
            pg_groups(bench, args.db, groups)
        for name in GROUPS:
            if name in groups and not args.db:
                globals()[f"group_{name}"](bench)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"\ntook {time.perf_counter() - began:.0f} s")
    if args.json:
        with open(args.json, "wb") as out:
            out.write(orjson.dumps({"meta": meta, "figures": report.figures}, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
