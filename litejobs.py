"""litejobs: background jobs for Python on one SQLite file, or on PostgreSQL.

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

The same jobs, workers and command line run on PostgreSQL with only the URL
changed (``connect("postgresql://...")``, with psycopg 3 installed), for
workers on many hosts.

Released under the MIT licence (see LICENSE).
"""

from __future__ import annotations

__version__ = "0.2.0"
__all__ = [
    "Abort",
    "Backoff",
    "Connecting",
    "Count",
    "Event",
    "EventKind",
    "Exponential",
    "Infinite",
    "Job",
    "JobContext",
    "JobDefinitionError",
    "JobFailed",
    "JobInfo",
    "JobStat",
    "JobState",
    "Linear",
    "LiteJobsError",
    "MaxRetries",
    "NewJob",
    "QueueStats",
    "Retry",
    "SerializationError",
    "Store",
    "StoreError",
    "SyncStore",
    "Worker",
    "connect",
    "connect_sync",
    "current",
    "enqueue_in",
    "main",
    "new_job",
]

import asyncio
import contextlib
import contextvars
import dataclasses
import functools
import inspect
import logging
import math
import os
import re
import select
import signal
import socket
import sqlite3
import sys
import textwrap
import threading
import time
import traceback
import urllib.parse
from collections.abc import Callable, Collection, Generator, Iterable, Sequence
from datetime import datetime, timedelta, timezone
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Protocol, TypeGuard, cast

import aiosqlite
import orjson

logger = logging.getLogger("litejobs")
logger.addHandler(logging.NullHandler())


# --------------------------------------------------------------------------
# Constants and SQL
# --------------------------------------------------------------------------

# The claim needs UPDATE ... RETURNING (SQLite 3.35); the outcome batch needs
# UPDATE ... FROM (3.33) and json_each.  Python builds since 2021 have them;
# an older SQLite fails at connect with a plain message, not mid-claim.
_SQLITE_HAS_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)

# Bumped whenever the tables change; a file of a newer version is refused
# rather than half-understood, and an older one is brought up to date by the
# steps in _MIGRATIONS (run before _DDL, in the same transaction).
_SCHEMA_VERSION = 4

# How long one statement waits for another connection's write lock before
# SQLite reports "database is locked"; _with_retries then tries again, so
# users only see a StoreError after _GIVE_UP_AFTER seconds of contention.
_BUSY_TIMEOUT_MS = 5_000
_GIVE_UP_AFTER = 60.0

# The loop's own connection (see Store._insert) never checkpoints; after it
# wrote this many rows, the database thread does.  It takes batches of up to
# _QUICK_ROWS rows (a bigger one would hold up the loop), and a caller alone
# on the loop waits one turn after every _YIELD_EVERY of its commits.
_CHECKPOINT_ROWS = 256
_QUICK_ROWS = 100
_YIELD_EVERY = 16

_IN_MODIFY = 0x2  # inotify's "file was written to", from <sys/inotify.h>
_NOTICE_GAP = 0.001
_OWN_ECHO = 0.002  # a change this soon after one of the store's own calls is taken for its echo
_OWN_ECHO_PAUSE = 0.005  # then the watcher looks again this much later

# The limits on what a job row may hold.  SQLite integers are 64-bit, and a
# due time must read back as a datetime (years 1 to 9999), so values beyond
# these are refused when the job is built, with an error naming the job:
# refused, never capped in silence, because a date or a limit the caller
# wrote must not quietly become another.  A century is the same "as good as
# never" that _retry_decision caps retry delays at.
_MAX_DELAY = 3.2e9  # seconds, about a century: delay= and every()'s interval
_LATEST_DUE = 221_845_392_000.0  # 9000-01-01 UTC: run_at= and schedule(at=) must be earlier;
#                                  the margin keeps read-back times convertible to any time zone
_MAX_TIMEOUT_MS = 3_200_000_000_000  # a century of milliseconds: TIMEOUT and timeout()
_MAX_COUNT = 2**63 - 1  # Count(n): SQLite's largest integer

# The watchdog fails a running attempt this long after its TIMEOUT ran out.
# The grace covers the owning worker's own in-process timeout, which records
# the failure itself; the watchdog is for processes that died or froze.
_WATCHDOG_GRACE = 2.0
_WATCHDOG_INTERVAL = 1.0
_WATCHDOG_CONFIRM = 2.5

# How far the wall clock may move against the monotonic one before a worker
# re-expresses its running attempts' deadlines in the new wall-clock time.
_CLOCK_STEP = 0.5

# What a job row must satisfy, column by column, and what a broken value is
# replaced with when the row is quarantined (see _quarantine_broken_rows).
# Written once: the table's CHECKs and the quarantine are built from it.
_JOB_CHECKS = {
    "state": ("state IN ('pending', 'running', 'done', 'dead', 'cancelled')", "'dead'"),
    "priority": ("typeof(priority) = 'integer'", "0"),
    "run_at": ("typeof(run_at) = 'real'", "?1"),
    "attempts": ("typeof(attempts) = 'integer' AND attempts >= 0", "0"),
    "max_retries": ("max_retries IS NULL OR (typeof(max_retries) = 'integer' AND max_retries >= 0)", "0"),
    "backoff": ("backoff IN ('linear', 'exponential')", "'linear'"),
    "backoff_value": ("typeof(backoff_value) = 'real' AND backoff_value >= 0", "0.0"),
    "timeout_ms": ("typeof(timeout_ms) = 'integer' AND timeout_ms > 0", "1000"),
    # Checked on their columns, not the table (see _ON_COLUMNS).
    "concurrency_limit": ("concurrency_limit IS NULL OR (typeof(concurrency_limit) = 'integer' "
                          "AND concurrency_limit >= 1)", "1"),
    "parked": ("parked IN (0, 1)", "0"),
}
# Columns that a migration added carry their checks on the column: ALTER
# TABLE can add them that way only, and new and migrated files must agree.
_ON_COLUMNS = ("concurrency_limit", "parked")

# The job indexes both stores make with the same words.
_JOB_INDEXES = [
    # Finds when the next job scheduled for later falls due, so that an idle
    # worker can sleep exactly until then.  Only jobs due after their
    # creation (delayed, scheduled, retried) are in it: an enqueue due at
    # once, the common case, writes no page of this index.
    """CREATE INDEX IF NOT EXISTS litejobs_jobs_scheduled
        ON litejobs_jobs (run_at) WHERE state = 'pending' AND run_at > created_at""",
    """CREATE INDEX IF NOT EXISTS litejobs_jobs_deadline
        ON litejobs_jobs (deadline) WHERE state = 'running'""",
    """CREATE INDEX IF NOT EXISTS litejobs_jobs_cancel
        ON litejobs_jobs (id) WHERE state = 'running' AND cancel_requested = 1""",
    # Retention and purge find old finished rows without a scan.
    """CREATE INDEX IF NOT EXISTS litejobs_jobs_finished
        ON litejobs_jobs (finished_at) WHERE state IN ('done', 'dead', 'cancelled')""",
    """CREATE UNIQUE INDEX IF NOT EXISTS litejobs_jobs_unique_key
        ON litejobs_jobs (unique_key)
        WHERE unique_key IS NOT NULL AND state IN ('pending', 'running')""",
    # Concurrency limits: the claim counts a key's running jobs here, and a
    # release finds the best of the jobs parked for want of a free slot.
    """CREATE INDEX IF NOT EXISTS litejobs_jobs_running_key
        ON litejobs_jobs (concurrency_key) WHERE state = 'running' AND concurrency_key IS NOT NULL""",
    """CREATE INDEX IF NOT EXISTS litejobs_jobs_parked
        ON litejobs_jobs (concurrency_key, priority DESC, run_at, id) WHERE state = 'pending' AND parked = 1""",
    # Rate limits: when each of the latest attempts of a job name started.
    """CREATE INDEX IF NOT EXISTS litejobs_starts_by_name ON litejobs_starts (name, started_at)""",
]

_DDL = [
    """CREATE TABLE IF NOT EXISTS litejobs_meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
    # AUTOINCREMENT: an id is never reused after its row is pruned, so an
    # old id held by a caller can never name somebody else's job.  The CHECKs
    # refuse hand edits that would leave a job unclaimable or crash a worker.
    # progress is what the running (or last) attempt reported, 0 to 1.
    # (No comments inside the statements: SQLite keeps their text, and
    # rewrites it when a column is dropped.)
    """CREATE TABLE IF NOT EXISTS litejobs_jobs (
        id               INTEGER PRIMARY KEY AUTOINCREMENT,
        name             TEXT NOT NULL,
        queue            TEXT NOT NULL,
        payload          TEXT NOT NULL,
        state            TEXT NOT NULL DEFAULT 'pending',
        priority         INTEGER NOT NULL DEFAULT 0,
        run_at           REAL NOT NULL,
        attempts         INTEGER NOT NULL DEFAULT 0,
        max_retries      INTEGER,
        backoff          TEXT NOT NULL,
        backoff_value    REAL NOT NULL,
        timeout_ms       INTEGER NOT NULL,
        unique_key       TEXT,
        lease            INTEGER NOT NULL DEFAULT 0,
        deadline         REAL,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        created_at       REAL NOT NULL,
        started_at       REAL,
        finished_at      REAL,
        last_error       TEXT,
        result           TEXT,
        progress         REAL,
        progress_note    TEXT,
        concurrency_key  TEXT,
        concurrency_limit INTEGER CHECK (""" + _JOB_CHECKS["concurrency_limit"][0] + """),
        parked           INTEGER NOT NULL DEFAULT 0 CHECK (""" + _JOB_CHECKS["parked"][0] + """),
        """ + ",\n        ".join(f"CHECK ({check})" for column, (check, _) in _JOB_CHECKS.items()
                                 if column not in _ON_COLUMNS) + """
    )""",
    # The claim walks this index in exactly its ORDER BY, one job name at a
    # time (the rowid, which is the id, is the index's hidden last column):
    # pending jobs of names a worker does not know are never walked past,
    # nor are jobs parked until their concurrency key has a free slot.
    """CREATE INDEX IF NOT EXISTS litejobs_jobs_claimable
        ON litejobs_jobs (queue, name, priority DESC, run_at) WHERE state = 'pending' AND parked = 0""",
    """CREATE TABLE IF NOT EXISTS litejobs_starts (
        name       TEXT NOT NULL,
        started_at REAL NOT NULL
    )""",
    *_JOB_INDEXES,
    # Done and dead counts per queue and hour: kept apart from the rows so
    # that the statistics stay right after retention deletes them.
    """CREATE TABLE IF NOT EXISTS litejobs_counts (
        queue TEXT NOT NULL,
        state TEXT NOT NULL,
        hour  INTEGER NOT NULL,
        n     INTEGER NOT NULL,
        PRIMARY KEY (queue, state, hour)
    ) WITHOUT ROWID""",
    # last_id: the job of the latest tick (while it waits, ticks coalesce);
    # cron: a cron schedule instead of the interval (then 0), in time zone tz.
    """CREATE TABLE IF NOT EXISTS litejobs_recurring (
        key           TEXT PRIMARY KEY,
        interval      REAL NOT NULL,
        next_run      REAL NOT NULL,
        name          TEXT NOT NULL,
        queue         TEXT NOT NULL,
        payload       TEXT NOT NULL,
        priority      INTEGER NOT NULL,
        max_retries   INTEGER,
        backoff       TEXT NOT NULL,
        backoff_value REAL NOT NULL,
        timeout_ms    INTEGER NOT NULL,
        last_id       INTEGER,
        cron          TEXT,
        tz            TEXT,
        concurrency_key   TEXT,
        concurrency_limit INTEGER
    )""",
    # Running workers and the job names they know, so that the statistics
    # can tell pending jobs that no worker will ever claim.
    """CREATE TABLE IF NOT EXISTS litejobs_workers (
        id         TEXT PRIMARY KEY,
        host       TEXT NOT NULL,
        pid        INTEGER NOT NULL,
        names      TEXT NOT NULL,
        started_at REAL NOT NULL
    )""",
    # Queues with a setting of their own: for now, paused ones.
    """CREATE TABLE IF NOT EXISTS litejobs_queues (
        queue  TEXT PRIMARY KEY,
        paused INTEGER NOT NULL DEFAULT 0
    )""",
    # Where imported jobs came from (see _import_records): kept after the
    # jobs are pruned, so that importing a file again adds nothing again.
    """CREATE TABLE IF NOT EXISTS litejobs_imported (
        origin TEXT PRIMARY KEY
    )""",
]

# What turns a file of schema version N - 1 into version N.
_MIGRATIONS: dict[int, list[str]] = {
    # Version 2: claims look one job name at a time; only jobs scheduled for
    # later are indexed by due time; recurring ticks coalesce while their
    # last job still waits.
    2: [
        "DROP INDEX IF EXISTS litejobs_jobs_claim",
        "DROP INDEX IF EXISTS litejobs_jobs_next_due",
        "ALTER TABLE litejobs_recurring ADD COLUMN last_id INTEGER",
    ],
    # Version 3: queues can be paused (litejobs_queues, made by _DDL),
    # running jobs report their progress, and schedules may be cron's.
    3: [
        "ALTER TABLE litejobs_jobs ADD COLUMN progress REAL",
        "ALTER TABLE litejobs_jobs ADD COLUMN progress_note TEXT",
        "ALTER TABLE litejobs_recurring ADD COLUMN cron TEXT",
        "ALTER TABLE litejobs_recurring ADD COLUMN tz TEXT",
    ],
    # Version 4: concurrency limits (a key per job, and jobs parked until
    # their key has a free slot, out of the claim's index) and rate limits
    # (litejobs_starts, made by _DDL).
    4: [
        "ALTER TABLE litejobs_jobs ADD COLUMN concurrency_key TEXT",
        f"ALTER TABLE litejobs_jobs ADD COLUMN concurrency_limit INTEGER "
        f"CHECK ({_JOB_CHECKS['concurrency_limit'][0]})",
        f"ALTER TABLE litejobs_jobs ADD COLUMN parked INTEGER NOT NULL DEFAULT 0 CHECK ({_JOB_CHECKS['parked'][0]})",
        "ALTER TABLE litejobs_recurring ADD COLUMN concurrency_key TEXT",
        "ALTER TABLE litejobs_recurring ADD COLUMN concurrency_limit INTEGER",
        "DROP INDEX IF EXISTS litejobs_jobs_claim_by_name",
    ],
}

_JOB_COLUMNS = (
    "id, name, queue, payload, state, priority, run_at, attempts, max_retries,"
    " backoff, backoff_value, timeout_ms, unique_key, lease, created_at,"
    " started_at, finished_at, last_error, result, progress, progress_note, concurrency_key,"
    " concurrency_limit, parked"
)

_SQL_INSERT_JOB = """
    INSERT INTO litejobs_jobs (name, queue, payload, priority, run_at, max_retries, backoff, backoff_value,
                               timeout_ms, unique_key, created_at, concurrency_key, concurrency_limit)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""

_SQL_FIND_UNIQUE = """
    SELECT id FROM litejobs_jobs
    WHERE unique_key = ? AND state IN ('pending', 'running')"""

_SQL_GET_JOB = f"SELECT {_JOB_COLUMNS} FROM litejobs_jobs WHERE id = ?"


# A paused queue claims nothing.  Not correlated with the row: evaluated once
# per claim, one primary-key lookup.
_NOT_PAUSED = "NOT EXISTS (SELECT 1 FROM litejobs_queues WHERE queue = ?2 AND paused = 1)"

# Past this many job names the per-name claim costs more than it saves (and
# SQLite allows 500 terms in one compound SELECT): a worker with more names
# claims with one IN list instead, walking past jobs of other names.
_MAX_NAMES_PER_CLAIM = 64


# Which of the jobs a claim chose may start now, and which must wait for a
# free slot of their concurrency key: the key's running jobs and those
# before it in this claim (ranked as the claim orders them) must leave room
# under its limit.  Both stores claim through it; ``chosen`` is the claim's
# choice, with each job's key and limit.
_CLAIM_VERDICTS = """
    SELECT id, CASE WHEN concurrency_key IS NULL THEN 1 = 1
                    ELSE (SELECT count(*) FROM litejobs_jobs AS r
                           WHERE r.state = 'running' AND r.concurrency_key = chosen.concurrency_key)
                         + row_number() OVER (PARTITION BY concurrency_key ORDER BY priority DESC, run_at, id)
                         <= coalesce(concurrency_limit, 1) END AS fits
      FROM chosen"""

# The verdicts of a worker none of whose classes has a limit, the common
# case: they cost nothing (the ranking above costs a sort per claim).  A job
# with a concurrency key (enqueued by a class that declares a limit the
# worker's class lacks) is parked, never run unlimited; the worker then
# claims with _CLAIM_VERDICTS, and housekeeping lets the job through.
_UNLIMITED_VERDICTS = "SELECT id, concurrency_key IS NULL AS fits FROM chosen"

# What a claimed job's row becomes.  A job that does not fit is parked
# instead: it stays pending, but leaves the claim's index until a job of its
# key ends (_SQL_RELEASE), so that no claim walks past it again meanwhile.
_CLAIM_SETS = f"""
    state = CASE WHEN fits THEN 'running' ELSE 'pending' END,
    parked = CASE WHEN fits THEN 0 ELSE 1 END,
    attempts = attempts + CASE WHEN fits THEN 1 ELSE 0 END,
    lease = lease + CASE WHEN fits THEN 1 ELSE 0 END,
    progress = CASE WHEN fits THEN NULL ELSE progress END,
    progress_note = CASE WHEN fits THEN NULL ELSE progress_note END,
    started_at = CASE WHEN fits THEN :now ELSE started_at END,
    deadline = CASE WHEN fits THEN :now + timeout_ms / 1000.0 + {_WATCHDOG_GRACE} ELSE deadline END"""

# What a claim returns of each row it chose: _Claimed's columns, then
# whether it was parked rather than claimed.
def _claim_returns(table: str, payload: str) -> str:
    columns = ("id", "name", "queue", payload, "attempts", "lease", "max_retries", "backoff", "backoff_value",
               "timeout_ms", "priority", "run_at", "concurrency_key", "parked")
    return ", ".join(column if column == payload else f"{table}.{column}" for column in columns)


@functools.cache
def _sql_claim(plain: int, capped: int, limited: bool = True) -> str:
    """The claim: one statement picks and takes up to ?3 due jobs of a queue.

    Two workers can never take the same row, because the choice and the
    write happen in one statement under SQLite's single write lock.  Every
    claim bumps ``lease``, the fencing token an outcome must present.

    Each job name's best ?3 come from the claim index; only those (at most
    names x ?3 rows) are sorted together, so the cost does not grow with the
    pending jobs of other names.  The ``plain`` names come first in the
    parameters, then the ``capped`` ones (rate-limited: each takes at most
    its cap, given after the names).  Placeholders are generated from the
    counts, never from the names.  ``limited``: whether the worker's classes
    have concurrency limits (see _UNLIMITED_VERDICTS).
    """
    def arm(name_test: str, limit: str) -> str:
        return f"""SELECT id, priority, run_at, concurrency_key, concurrency_limit FROM litejobs_jobs
                    WHERE state = 'pending' AND parked = 0 AND queue = :queue AND {name_test} AND run_at <= :now
                    ORDER BY priority DESC, run_at, id LIMIT {limit}"""

    first_capped = 4 + plain
    if plain > _MAX_NAMES_PER_CLAIM:  # past SQLite's limit on UNION terms
        arms = [arm(f"name IN ({', '.join(f'?{n}' for n in range(4, first_capped))})", ":limit")]
    else:
        arms = [arm(f"name = ?{n}", ":limit") for n in range(4, first_capped)]
    arms += [arm(f"name = ?{n}", f"min(:limit, ?{n + capped})") for n in range(first_capped, first_capped + capped)]
    if len(arms) == 1:
        choose = arms[0]
    else:
        choose = "SELECT * FROM (" + ")\n UNION ALL SELECT * FROM (".join(arms) + ")"
        choose = f"SELECT * FROM ({choose}) ORDER BY priority DESC, run_at, id LIMIT :limit"
    sql = f"""
        WITH chosen AS ({choose}), verdicts AS ({_CLAIM_VERDICTS if limited else _UNLIMITED_VERDICTS})
        UPDATE litejobs_jobs SET {_CLAIM_SETS}
          FROM verdicts
         WHERE litejobs_jobs.id = verdicts.id AND {_NOT_PAUSED}
        RETURNING {_claim_returns("litejobs_jobs", "CAST(payload AS BLOB)")}"""
    # Numbered parameters throughout: ?1 the time, ?2 the queue, ?3 the limit.
    return sql.replace(":now", "?1").replace(":queue", "?2").replace(":limit", "?3")


# Records a whole batch of outcomes in one statement, the batch passed as one
# JSON array of [id, lease, state, run_at, finished_at, error, result, uncount]:
# one statement instead of one per job is three times faster in SQLite.
# An outcome is written only while its attempt still owns the row: same
# lease, still running.  A worker that comes back after the watchdog took its
# job away therefore changes nothing.  A job whose cancellation was asked for
# and that then fails, however (retry, death, the watchdog), ends cancelled.
_SQL_RECORD_OUTCOMES = """
    UPDATE litejobs_jobs
       SET state = CASE WHEN o.state IN ('pending', 'dead') AND litejobs_jobs.cancel_requested
                        THEN 'cancelled' ELSE o.state END,
           run_at = coalesce(o.run_at, litejobs_jobs.run_at),
           finished_at = CASE WHEN o.state IN ('pending', 'dead') AND litejobs_jobs.cancel_requested
                              THEN ?1 ELSE o.finished_at END,
           last_error = coalesce(o.error, litejobs_jobs.last_error), result = o.result,
           attempts = litejobs_jobs.attempts - o.uncount, deadline = NULL
      FROM (SELECT json_extract(value, '$[0]') AS id, json_extract(value, '$[1]') AS lease,
                   json_extract(value, '$[2]') AS state, json_extract(value, '$[3]') AS run_at,
                   json_extract(value, '$[4]') AS finished_at, json_extract(value, '$[5]') AS error,
                   json_extract(value, '$[6]') AS result, json_extract(value, '$[7]') AS uncount
              FROM json_each(?2)) AS o
     WHERE litejobs_jobs.id = o.id AND litejobs_jobs.lease = o.lease AND litejobs_jobs.state = 'running'
    RETURNING litejobs_jobs.id, litejobs_jobs.lease, litejobs_jobs.state"""

# The watchdog in two steps.  A housekeeping trip reads the attempts whose
# deadline passed; the worker fails one only when a later trip, at least
# _WATCHDOG_CONFIRM seconds later on its own monotonic clock, finds the same
# attempt with the same deadline still expired.  Owners re-express their
# deadlines when the wall clock steps (_SQL_RENEW_DEADLINE), so a step makes
# a live attempt look expired for a moment at most, never long enough.
_SQL_EXPIRED = "SELECT id, lease, deadline FROM litejobs_jobs WHERE state = 'running' AND deadline <= ?"

_SQL_REAPABLE = """
    SELECT id, name, queue, CAST(payload AS BLOB), attempts, lease, max_retries, backoff, backoff_value, timeout_ms,
           priority, run_at, concurrency_key
      FROM litejobs_jobs
     WHERE id = ? AND lease = ? AND deadline = ? AND state = 'running' AND deadline <= ?"""

_SQL_RENEW_DEADLINE = f"""
    UPDATE litejobs_jobs SET deadline = ?1 + ?4 + {_WATCHDOG_GRACE}
     WHERE id = ?2 AND lease = ?3 AND state = 'running'"""

# Progress rides the round trip, fenced like an outcome: the latest report
# of each running attempt, in one statement for all of them.
_SQL_PROGRESS = """
    UPDATE litejobs_jobs SET progress = ?, progress_note = ?
     WHERE id = ? AND lease = ? AND state = 'running'"""

_SQL_CANCEL_REQUESTED = "SELECT id, lease FROM litejobs_jobs WHERE state = 'running' AND cancel_requested = 1"

_SQL_NEXT_DUE = """
    SELECT min(due) FROM (
        SELECT min(run_at) AS due FROM litejobs_jobs
         WHERE state = 'pending' AND run_at > created_at AND run_at > ?1
        UNION ALL
        SELECT min(next_run) FROM litejobs_recurring WHERE next_run > ?1) AS due_times"""

_SQL_COUNT_OUTCOME = """
    INSERT INTO litejobs_counts (queue, state, hour, n) VALUES (?, ?, ?, ?)
    ON CONFLICT (queue, state, hour) DO UPDATE SET n = litejobs_counts.n + excluded.n"""

# Retention and purge find old finished rows through the partial index on
# finished_at.  Each repeats that index's own WHERE (state IN ('done', 'dead',
# 'cancelled')), or SQLite would not use the index and would scan; each
# deletes in batches, so that the write lock is never held for long.
_SQL_ANY_TO_PRUNE = """
    SELECT 1 FROM litejobs_jobs
     WHERE state IN ('done', 'dead', 'cancelled') AND state IN ('done', 'cancelled') AND finished_at <= ?
     LIMIT 1"""

_SQL_PRUNE = """
    DELETE FROM litejobs_jobs WHERE id IN (
        SELECT id FROM litejobs_jobs
         WHERE state IN ('done', 'dead', 'cancelled') AND state IN ('done', 'cancelled') AND finished_at <= ?
         LIMIT ?)"""

_SQL_PURGE = """
    DELETE FROM litejobs_jobs WHERE id IN (
        SELECT id FROM litejobs_jobs
         WHERE state IN ('done', 'dead', 'cancelled') AND state = ? AND finished_at <= ?
         LIMIT ?)"""
_PRUNE_BATCH = 1000

# Hourly counts older than two months fold into one all-time row, hour 0.
_SQL_COMPACT_COUNTS = """
    INSERT INTO litejobs_counts (queue, state, hour, n)
    SELECT queue, state, 0, sum(n) FROM litejobs_counts WHERE hour > 0 AND hour < ? GROUP BY 1, 2
    ON CONFLICT (queue, state, hour) DO UPDATE SET n = litejobs_counts.n + excluded.n"""

_SQL_RECURRING_DUE = """
    SELECT key, interval, next_run, name, queue, payload, priority, max_retries,
           backoff, backoff_value, timeout_ms, last_id, cron, tz, concurrency_key, concurrency_limit
      FROM litejobs_recurring WHERE next_run <= ?"""

_SQL_ANY_RECURRING_DUE = "SELECT 1 FROM litejobs_recurring WHERE next_run <= ? LIMIT 1"

# The last tick's job has not started yet: a new tick would only wait beside it.
_SQL_NOT_STARTED = "SELECT 1 FROM litejobs_jobs WHERE id = ? AND state = 'pending' AND attempts = 0"

# The parked jobs of concurrency key {key} that a free slot may go to: not
# those of paused queues (a slot given to one would go unused), best first.
_LETTABLE = """
        SELECT id FROM litejobs_jobs AS p
         WHERE state = 'pending' AND parked = 1 AND concurrency_key = {key}
           AND NOT EXISTS (SELECT 1 FROM litejobs_queues AS q WHERE q.queue = p.queue AND q.paused = 1)
         ORDER BY priority DESC, run_at, id"""

# How many slots key {key} has free (NULL: no job to give one to), by the
# limit of the job it would go to first.
_FREE_SLOTS = """
        ((SELECT coalesce(concurrency_limit, 1) FROM litejobs_jobs WHERE id = ({lettable} LIMIT 1))
         - (SELECT count(*) FROM litejobs_jobs WHERE state = 'running' AND concurrency_key = {key}))"""


def _let_through(key: str, greatest: str) -> str:
    """A job of concurrency ``key`` (an SQL expression) ended, or a waiting
    one was cancelled: as many of the key's parked jobs as it has free
    slots go back to the claim's index.  A released job that then finds its
    key full again (another claim was quicker) is parked again, behind a
    running job whose end releases it in turn.  ``greatest`` is max or
    greatest, as the store says."""
    lettable = _LETTABLE.format(key=key)
    return f"{lettable} LIMIT {greatest}(0, coalesce({_FREE_SLOTS.format(key=key, lettable=lettable)}, 0))"


_SQL_RELEASE = f"UPDATE litejobs_jobs SET parked = 0 WHERE id IN ({_let_through('?1', 'max')})"

# The safety net under _SQL_RELEASE, read with housekeeping: keys with
# parked jobs and a free slot.  A key gets there when its last running job
# ended some way that released nothing (a hand edit), when a worker without
# limits parked its jobs, when its queue was resumed, or when a release and
# a claim crossed on PostgreSQL.  The keys are walked in the parked index,
# one step per key, never row by row (a key's parked jobs in paused queues
# excepted: it passes over them).
_SQL_STRANDED_KEYS = f"""
    WITH RECURSIVE parked_keys(k) AS (
        SELECT min(concurrency_key) FROM litejobs_jobs WHERE state = 'pending' AND parked = 1
        UNION ALL
        SELECT (SELECT min(concurrency_key) FROM litejobs_jobs
                 WHERE state = 'pending' AND parked = 1 AND concurrency_key > parked_keys.k)
          FROM parked_keys WHERE k IS NOT NULL)
    SELECT k FROM parked_keys
     WHERE k IS NOT NULL
       AND {_FREE_SLOTS.format(key="parked_keys.k", lettable=_LETTABLE.format(key="parked_keys.k"))} > 0"""

# Rate limits: the starts of a rate-limited name in its window.  Starts
# older than the window are forgotten; starts "in the future" (the wall
# clock stepped back) count as starting now, so a step stalls the name for
# one window at most.
_SQL_FORGET_STARTS = "DELETE FROM litejobs_starts WHERE name = ? AND started_at <= ?"
_SQL_CLAMP_STARTS = "UPDATE litejobs_starts SET started_at = ?2 WHERE name = ?1 AND started_at > ?2"
_SQL_COUNT_STARTS = "SELECT count(*) FROM litejobs_starts WHERE name = ?"
_SQL_NTH_LATEST_START = """
    SELECT started_at FROM litejobs_starts WHERE name = ? ORDER BY started_at DESC LIMIT 1 OFFSET ?"""
_SQL_RECORD_START = "INSERT INTO litejobs_starts (name, started_at) VALUES (?, ?)"


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


class JobFailed(LiteJobsError):
    """``Store.wait`` found the job dead or cancelled; ``.job`` is its JobInfo."""

    def __init__(self, job: JobInfo) -> None:
        self.job = job
        reason = job.last_error.splitlines()[-1] if job.last_error else "no error recorded"
        super().__init__(f"job {job.id} ({job.name}) is {job.state.value}: {reason}")


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
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= _MAX_COUNT:
            raise JobDefinitionError(f"Count(n) needs a whole number from 0 to 2**63 - 1 "
                                     f"(SQLite's largest integer), got {n!r}")
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
    return min(delay, _MAX_DELAY)


class _Word(str, Enum):
    """An enum whose members are their own words: ``str(member)`` is its value."""

    def __str__(self) -> str:
        return self.value


class JobState(_Word):
    """Where a job is in its life."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    DEAD = "dead"
    CANCELLED = "cancelled"


def _is_storable(text: str) -> bool:
    """False for a str that some store cannot hold: one with a lone surrogate
    like '\\ud800' (not UTF-8) or a NUL character (PostgreSQL's text has none).
    Refused on both stores, so that jobs can move from one to the other."""
    if "\x00" in text:
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _is_timeout(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= _MAX_TIMEOUT_MS


def _check_job_constants(cls: type[Job]) -> None:
    """Raise JobDefinitionError for a class constant of the wrong kind."""
    where = f"job class {cls.__qualname__}"
    name = cls.__dict__.get("NAME")
    if name is not None and (not isinstance(name, str) or not name or not _is_storable(name)):
        raise JobDefinitionError(f"{where}: NAME must be a non-empty str a database can store "
                                 f"(no lone surrogate, no NUL), got {name!r}")
    queue = cls.QUEUE
    if not isinstance(queue, str) or not queue or not _is_storable(queue):
        raise JobDefinitionError(f"{where}: QUEUE must be a non-empty str a database can store "
                                 f"(no lone surrogate, no NUL), got {queue!r}")
    if not isinstance(cls.MAX_RETRIES, MaxRetries):
        raise JobDefinitionError(
            f"{where}: MAX_RETRIES must be litejobs.Count(n) or litejobs.Infinite, got {cls.MAX_RETRIES!r}"
        )
    if not isinstance(cls.BACKOFF, Backoff):
        raise JobDefinitionError(
            f"{where}: BACKOFF must be litejobs.Linear(secs) or litejobs.Exponential(base), got {cls.BACKOFF!r}"
        )
    timeout = cls.TIMEOUT
    if not _is_timeout(timeout):
        raise JobDefinitionError(f"{where}: TIMEOUT must be a positive int of milliseconds, "
                                 f"at most {_MAX_TIMEOUT_MS} (a century), got {timeout!r}")
    limit, key = cls.CONCURRENCY_LIMIT, cls.CONCURRENCY_KEY
    if limit is not None and not (type(limit) is int and 1 <= limit <= _MAX_COUNT):
        raise JobDefinitionError(f"{where}: CONCURRENCY_LIMIT must be a positive int, or None, got {limit!r}")
    if key is not None and (not isinstance(key, str) or not key or not _is_storable(key)):
        raise JobDefinitionError(f"{where}: CONCURRENCY_KEY must be a non-empty str a database can store, "
                                 f"or None, got {key!r}")
    if not callable(cls.concurrency_key):
        raise JobDefinitionError(f"{where}: concurrency_key must be a method; for one key for the class, "
                                 "write CONCURRENCY_KEY = '...'")
    if limit is None and (key is not None or "concurrency_key" in cls.__dict__):
        raise JobDefinitionError(f"{where}: a concurrency key needs CONCURRENCY_LIMIT = n, the number of "
                                 "jobs with one key that may run at once")
    rate = cls.RATE_LIMIT
    if rate is not None and not (isinstance(rate, tuple) and len(rate) == 2
                                 and type(rate[0]) is int and 1 <= rate[0] <= _MAX_COUNT
                                 and type(rate[1]) in (int, float) and _is_finite(rate[1])
                                 and 0 < rate[1] <= _MAX_DELAY):
        raise JobDefinitionError(f"{where}: RATE_LIMIT must be (n, seconds): at most n starts in any "
                                 f"window of that many seconds, both positive; got {rate!r}")


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
    # Limits across every worker and host (see concurrency_key()).
    CONCURRENCY_LIMIT: ClassVar[int | None] = None
    CONCURRENCY_KEY: ClassVar[str | None] = None
    RATE_LIMIT: ClassVar[tuple[int, float] | None] = None  # (n, seconds): at most n starts of NAME in any window

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

    def concurrency_key(self) -> str | None:
        """The key whose jobs may run at most CONCURRENCY_LIMIT at once, or
        None for no limit: CONCURRENCY_KEY, else NAME when the class sets a
        limit.  Override it to limit per value (a user, a tenant, a host)."""
        if self.CONCURRENCY_LIMIT is None:
            return None
        return self.NAME if self.CONCURRENCY_KEY is None else self.CONCURRENCY_KEY

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
        return {name: getattr(self, name) for name in _payload_fields(type(self))}

    @classmethod
    def from_payload(cls, data: dict) -> Job:
        """Rebuild the job from what ``to_payload`` returned."""
        if not isinstance(data, dict):
            raise TypeError(f"payload is a {type(data).__name__}, not an object")
        return cls(**data)


# Classes that passed _check_registrable: enqueueing checks each class once.
_registrable: set[type] = set()


def _check_registrable(cls: Any) -> type[Job]:
    """The checks that need the finished class: run at registration and enqueue.
    A class without ``run`` passes: a producer may describe jobs that a
    worker elsewhere runs; the worker's own check is _check_runnable."""
    if cls in _registrable:
        return cls
    if not (isinstance(cls, type) and issubclass(cls, Job)):
        raise JobDefinitionError(f"{cls!r} is not a subclass of litejobs.Job")
    where = f"job class {cls.__qualname__}"
    if "NAME" not in dir(cls):
        raise JobDefinitionError(f"{where} has no NAME: give it a unique NAME = '...'")
    if dataclasses.is_dataclass(cls) and "NAME" in {f.name for f in dataclasses.fields(cls)}:
        raise JobDefinitionError(f"{where}: NAME is a dataclass field; write NAME = '...' without a type annotation")
    overrides_payload = _overrides(cls, "to_payload") and _overrides(cls, "from_payload")
    if not dataclasses.is_dataclass(cls) and not overrides_payload:
        raise JobDefinitionError(
            f"{where} is not a dataclass: make it one, or override to_payload() and from_payload()"
        )
    _registrable.add(cls)
    return cls


def _check_runnable(cls: Any) -> type[Job]:
    """What a worker needs of a class besides _check_registrable: a run()."""
    cls = _check_registrable(cls)
    if cls.run is Job.run:
        raise JobDefinitionError(f"job class {cls.__qualname__} does not define run(self, state): a worker "
                                 "cannot register it (a class without run may only be enqueued)")
    return cls


@functools.cache
def _payload_fields(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls) if f.init)


def _overrides(cls: type[Job], method: str) -> bool:
    """True when ``cls``, or a class between it and Job, defines ``method``."""
    return any(method in klass.__dict__ for klass in cls.__mro__[:cls.__mro__.index(Job)])


# Job classes whose limits no per-instance override can change, so that
# enqueueing can skip checking what was checked when the class was created.
_fixed_limits: dict[type[Job], bool] = {}


def _limits_are_class_constants(cls: type[Job]) -> bool:
    fixed = _fixed_limits.get(cls)
    if fixed is None:
        fixed = _fixed_limits[cls] = not any(
            _overrides(cls, method) for method in ("queue", "max_retries", "backoff_strategy", "timeout"))
    return fixed


_PAYLOAD_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def _encode_payload(job: Job) -> str:
    """The job's payload as JSON text; SerializationError names the bad field."""
    payload = job.to_payload()
    if not isinstance(payload, dict):
        raise SerializationError(f"job {job.NAME!r}: to_payload() returned {type(payload).__name__}, not dict")
    try:
        text = orjson.dumps(payload, option=_PAYLOAD_OPTIONS)
        # orjson writes NaN and infinities as null; refuse them rather than
        # hand the job a None it never had.  Only payloads with a null pay.
        if b"null" in text:
            for value in payload.values():
                _refuse_non_finite(value)
        return text.decode()
    except TypeError as exc:
        for field, value in payload.items():
            try:
                orjson.dumps({field: value}, option=_PAYLOAD_OPTIONS)
                _refuse_non_finite(value)
            except TypeError as field_exc:
                raise SerializationError(
                    f"job {job.NAME!r}, field {field!r}: {field_exc} (payloads hold JSON types only: "
                    "str, int, float, bool, None, and lists and dicts with str keys of those)") from None
        raise SerializationError(f"job {job.NAME!r}: {exc}") from None


def _refuse_non_finite(value: Any) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise TypeError(f"{value!r} is not a JSON number and would come back as None")
    if isinstance(value, dict):
        for item in value.values():
            _refuse_non_finite(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _refuse_non_finite(item)


def _seconds(value: Any, what: str) -> float:
    """A delay given as seconds or a timedelta, as float seconds >= 0."""
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not _is_finite(value):
        raise ValueError(f"{what} must be seconds or a timedelta, got {value!r}")
    if value < 0:
        raise ValueError(f"{what} must not be negative, got {value!r}")
    return float(value)


def _is_finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for any float
        return False


def _delay_seconds(value: Any, what: str) -> float:
    """A delay as for ``_seconds``, at most _MAX_DELAY, so that the due time reads back."""
    seconds = _seconds(value, what)
    if seconds > _MAX_DELAY:
        raise ValueError(f"{what} of {seconds:g}s is too long: the limit is {_MAX_DELAY:g}s (about a "
                         "century); a job that should never run need not be stored")
    return seconds


def _due_epoch(when: Any, where: str) -> float:
    """run_at= as epoch seconds, refused at or after _LATEST_DUE so that it reads back."""
    epoch = _epoch(when, f"{where}: run_at")
    if epoch >= _LATEST_DUE:
        raise ValueError(f"{where}: run_at {when.isoformat()} is too late: due times must be before "
                         "the year 9000 (UTC)")
    return epoch


def _epoch(when: datetime, what: str) -> float:
    if not isinstance(when, datetime):
        raise ValueError(f"{what} must be a datetime, got {when!r}")
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"{what} must be an aware datetime, like datetime(2030, 1, 1, tzinfo=timezone.utc); "
                         f"got naive {when!r}")
    return when.timestamp()


def _checked_at(at: Any) -> datetime:
    if not isinstance(at, datetime) or at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"schedule(at=...) needs an aware datetime, like datetime(2030, 1, 1, "
                         f"tzinfo=timezone.utc); got {at!r}")
    return at


_DATETIME_MAX = datetime.max.replace(tzinfo=timezone.utc)
_DATETIME_MIN = datetime.min.replace(tzinfo=timezone.utc)


def _datetime(epoch: float) -> datetime:
    try:
        return datetime.fromtimestamp(epoch, timezone.utc)
    except (OverflowError, OSError, ValueError):
        # Beyond datetime's years 1 to 9999: only a row edited by hand (new
        # jobs are refused such times).  Clamped, so that the row can still
        # be read, listed, retried or purged.
        return _DATETIME_MAX if epoch > 0 else _DATETIME_MIN


def _optional_datetime(epoch: float | None) -> datetime | None:
    return None if epoch is None else _datetime(epoch)


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
    concurrency_key: str | None = None
    concurrency_limit: int | None = None  # set exactly when concurrency_key is

    def _row(self, now: float) -> tuple:
        due = self.run_at if self.run_at is not None else now + self.delay
        return (self.name, self.queue, self.payload, self.priority, due,
                self.max_retries.as_column(), self.backoff.kind, self.backoff.value,
                self.timeout, self.unique_key, now, self.concurrency_key, self.concurrency_limit)


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
    if queue is not None and (not isinstance(queue, str) or not queue):
        raise ValueError(f"{where}: queue must be a non-empty str, got {queue!r}")
    if type(priority) is not int or not -2**63 <= priority < 2**63:
        raise ValueError(f"{where}: priority must be an int, got {priority!r}")
    if unique_key is not None and not isinstance(unique_key, str):
        raise ValueError(f"{where}: unique_key must be a str, got {unique_key!r}")
    if unique_key is not None and not _is_storable(unique_key):
        raise SerializationError(f"{where}: unique_key {unique_key!r} is not text a database can store "
                                 "(it holds a lone surrogate or a NUL character)")
    if queue is not None and not _is_storable(queue):
        raise SerializationError(f"{where}: queue {queue!r} is not text a database can store "
                                 "(it holds a lone surrogate or a NUL character)")
    if _limits_are_class_constants(cls):
        queue = cls.QUEUE if queue is None else queue
        max_retries, backoff, timeout = cls.MAX_RETRIES, cls.BACKOFF, cls.TIMEOUT
    else:
        max_retries, backoff, timeout = job.max_retries(), job.backoff_strategy(), job.timeout()
        if queue is None:
            queue = job.queue()
            if not isinstance(queue, str) or not queue:
                raise JobDefinitionError(f"{where}: queue() returned {queue!r}, not a non-empty str")
            if not _is_storable(queue):
                raise SerializationError(f"{where}: queue() returned {queue!r}, which is not text a database "
                                         "can store (it holds a lone surrogate or a NUL character)")
        if not isinstance(max_retries, MaxRetries):
            raise JobDefinitionError(f"{where}: max_retries() returned {max_retries!r}, not Count(n) or Infinite")
        if not isinstance(backoff, Backoff):
            raise JobDefinitionError(f"{where}: backoff_strategy() returned {backoff!r}, not Linear or Exponential")
        if not _is_timeout(timeout):
            raise JobDefinitionError(f"{where}: timeout() returned {timeout!r}, not a positive int of "
                                     f"milliseconds up to {_MAX_TIMEOUT_MS} (a century)")
    key = None
    if cls.CONCURRENCY_LIMIT is not None:
        key = job.concurrency_key()
        if key is not None and (not isinstance(key, str) or not key):
            raise JobDefinitionError(f"{where}: concurrency_key() returned {key!r}, not None or a non-empty str")
        if key is not None and not _is_storable(key):
            raise SerializationError(f"{where}: concurrency_key() returned {key!r}, which is not text a database "
                                     "can store (it holds a lone surrogate or a NUL character)")
    return NewJob(
        name=cls.NAME,
        queue=queue,
        payload=_encode_payload(job),
        max_retries=max_retries,
        backoff=backoff,
        timeout=timeout,
        priority=priority,
        unique_key=unique_key,
        run_at=None if run_at is None else _due_epoch(run_at, where),
        delay=0.0 if delay is None else _delay_seconds(delay, f"{where}: delay"),
        concurrency_key=key,
        concurrency_limit=None if key is None else cls.CONCURRENCY_LIMIT,
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
    progress: float | None = None  # 0 to 1, as the running (or last) attempt reported it
    progress_note: str | None = None
    concurrency_key: str | None = None  # at most concurrency_limit jobs with this key run at once
    concurrency_limit: int | None = None
    waiting_for_slot: bool = False  # pending, parked until a job of its key ends

    @classmethod
    def _from_row(cls, row: Sequence) -> JobInfo:
        try:
            return cls._from_row_unchecked(row)
        except (KeyError, TypeError, ValueError, LiteJobsError) as exc:
            raise StoreError(f"job {row[0]} has a row litejobs cannot read (edited by hand?): {exc!r}") from None

    @classmethod
    def _from_row_unchecked(cls, row: Sequence) -> JobInfo:
        (id_, name, queue, payload, state, priority, run_at, attempts, max_retries,
         backoff, backoff_value, timeout_ms, unique_key, _lease, created_at,
         started_at, finished_at, last_error, result, progress, progress_note, concurrency_key,
         concurrency_limit, parked) = row
        return cls(
            id=id_, name=name, queue=queue, payload=_loads_or_raw(payload),
            state=JobState(state), attempts=attempts,
            max_retries=MaxRetries.from_column(max_retries),
            backoff=Backoff.from_column(backoff, backoff_value), timeout=timeout_ms,
            priority=priority, unique_key=unique_key, run_at=_datetime(run_at),
            created_at=_datetime(created_at), started_at=_optional_datetime(started_at),
            finished_at=_optional_datetime(finished_at), last_error=last_error,
            result=None if result is None else _loads_or_raw(result),
            progress=progress, progress_note=progress_note, concurrency_key=concurrency_key,
            concurrency_limit=concurrency_limit, waiting_for_slot=state == "pending" and parked == 1,
        )


@dataclasses.dataclass(frozen=True)
class JobStat:
    """How many jobs ended one way: this hour, today, this month (UTC) and ever."""

    this_hour: int = 0
    today: int = 0
    this_month: int = 0
    all_time: int = 0


@dataclasses.dataclass(frozen=True)
class QueueStats:
    """One queue's counts, as ``Store.stats()`` returns them."""

    pending: int = 0  # due now
    scheduled: int = 0  # pending, due later
    running: int = 0
    done: int = 0  # rows kept (see keep_done)
    dead: int = 0
    cancelled: int = 0
    unregistered: int | None = None  # pending jobs no running worker knows; None: no worker to ask
    done_counts: JobStat = JobStat()
    dead_counts: JobStat = JobStat()
    paused: bool = False  # no worker claims its jobs until it is resumed


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
    _report: Callable[[float, str | None], None] = dataclasses.field(default=lambda f, n: None, repr=False,
                                                                     compare=False)

    async def progress(self, fraction: float, note: str | None = None) -> None:
        """Record how far the job has got (0 to 1), with an optional note.

        Costs no round trip of its own: the worker writes the latest report
        of each of its jobs with its next round trip (within a second), all
        in one statement, and emits a ``progress`` event now."""
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
            raise ValueError(f"progress must be a number from 0 to 1, got {fraction!r}")
        if note is not None and not (isinstance(note, str) and _is_storable(note)):
            raise ValueError(f"note must be a str a database can store (no lone surrogate, no NUL), got {note!r}")
        self._report(float(fraction), note)


# Holds the running attempt; its JobContext is built only when asked for.
_current_job: contextvars.ContextVar[Any] = contextvars.ContextVar("litejobs_current_job")


def current() -> JobContext:
    """The running job's context: id, attempt number and store."""
    try:
        return _current_job.get().context()
    except LookupError:
        raise LiteJobsError("litejobs.current() was called outside a running job") from None


class EventKind(_Word):
    """What happened to a job.  A failed attempt gives two events: ``failure``
    (or ``timeout``), then ``retry`` or ``death``."""

    ENQUEUE = "enqueue"
    START = "start"
    SUCCESS = "success"
    FAILURE = "failure"
    TIMEOUT = "timeout"
    RETRY = "retry"
    DEATH = "death"
    CANCELLATION = "cancellation"
    PROGRESS = "progress"


@dataclasses.dataclass(frozen=True)
class Event:
    """One thing that happened to a job, for ``Store.on_event`` callbacks."""

    kind: EventKind
    job_id: int
    name: str
    queue: str
    attempt: int = 0
    duration: float | None = None
    error: str | None = None
    progress: float | None = None  # for ``progress`` events: the fraction, and the note if any
    note: str | None = None


# --------------------------------------------------------------------------
# The store protocol: what a worker needs of a store, and what crosses
# between them in a round trip, as named rows
# --------------------------------------------------------------------------


class _WorkerStore(Protocol):
    """All a worker needs of a store, written once.  The SQLite ``Store``
    fills it in; a server's store would fill in the same."""

    path: str  # names the store in logs
    clock: Callable[[], float]  # epoch seconds: due times and deadlines are on this clock
    keep_done: float  # seconds done and cancelled rows are kept
    closed: bool

    @property
    def listening(self) -> bool:
        """Whether anyone listens to events (none is built otherwise)."""

    def emit(self, event: Event) -> None:
        """Hand an event to the listeners."""

    def subscribe(self, callback: Callable[[], None], poll_interval: float) -> Callable[[], None]:
        """Call ``callback()`` when jobs may have changed; returns an unsubscribe function."""

    async def exchange(self, request: _Request) -> _Exchange:
        """One round trip: outcomes in, watchdog and housekeeping, claims out.
        If the caller is cancelled meanwhile, the trip still ends, and its
        answer is left in ``request.answer``; ``settle()`` waits for that."""

    async def settle(self) -> None:
        """Return once every round trip begun before has ended."""

    async def register_worker(self, worker_id: str, names: Sequence[str]) -> None:
        """Record a running worker and the job names it knows (for the statistics)."""

    async def unregister_worker(self, worker_id: str) -> None:
        """Forget a worker that stopped."""


def _storable_text(text: str) -> str:
    """Text that JSON and SQLite can carry.  A lone surrogate (Python's
    stand-in for an undecodable byte in a file name) is kept, escaped."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclasses.dataclass
class _Outcome:
    """What became of one attempt, waiting to be written with the next batch."""

    job_id: int
    lease: int
    state: str  # the row's new state
    event: str  # success, failure, timeout, cancellation, requeue: for on_event
    name: str
    queue: str
    attempt: int
    delay: float | None = None  # for pending: seconds from the write until due
    error: str | None = None
    result: str | None = None
    uncount: int = 0  # 1 when a graceful stop hands the attempt back unspent
    duration: float | None = None
    concurrency_key: str | None = None  # its end frees a slot of this key

    def __post_init__(self) -> None:
        if self.error is not None:
            self.error = _storable_text(self.error)

    def as_json_row(self, now: float) -> list:
        finished = now if self.state in ("done", "dead", "cancelled") else None
        run_at = now + self.delay if self.delay is not None else None
        # SQLite's json_extract stops at a NUL character: spell it out.
        error = None if self.error is None else self.error.replace("\x00", "\\x00")
        return [self.job_id, self.lease, self.state, run_at, finished, error, self.result, self.uncount]


class _Claimed(NamedTuple):
    """A job as a claim (or the watchdog) took it: what an attempt needs.
    The claim's and the watchdog's SELECTs return exactly these columns."""

    id: int
    name: str
    queue: str
    payload: bytes  # as stored: bytes, so that a row edited into bad UTF-8 cannot break the claim
    attempts: int  # counting this one
    lease: int  # the fencing token its outcome must present
    max_retries: int | None
    backoff: str
    backoff_value: float
    timeout_ms: int
    priority: int
    run_at: float
    concurrency_key: str | None
    parked: int = 0  # a claim's row only: 1 when the claim parked the job instead (see _CLAIM_SETS)

    def outcome(self, state: str, event: str, **fields: Any) -> _Outcome:
        return _Outcome(self.id, self.lease, state, event, self.name, self.queue, self.attempts,
                        concurrency_key=self.concurrency_key, **fields)


def _failure_outcome(job: _Claimed, error: str, event: str, requested_delay: float | None = None,
                     dead_now: bool = False, duration: float | None = None) -> _Outcome:
    """Decide retry or death for a failed attempt of ``job``."""
    delay = None
    if not dead_now:
        try:
            delay = _retry_decision(job.attempts, job.max_retries, Backoff.from_column(job.backoff, job.backoff_value),
                                    requested_delay)
        except (KeyError, TypeError, ValueError, LiteJobsError) as exc:
            # Only a row edited by hand gets here; it must fail, not crash us.
            error += f"\n(not retried: the row's retry limits are unreadable: {exc!r})"
    return job.outcome("dead" if delay is None else "pending", event, delay=delay, error=error, duration=duration)


class _Expiry(NamedTuple):
    """An attempt whose deadline has passed, as the watchdog saw it."""

    job_id: int
    lease: int
    deadline: float


@dataclasses.dataclass
class _Request:
    """What a worker asks of the store in one round trip."""

    outcomes: Sequence[_Outcome] = ()
    wants: dict[str, int] = dataclasses.field(default_factory=dict)  # queue -> free slots
    names: Sequence[str] = ()  # the job names the worker can run
    rates: dict[str, tuple[int, float]] = dataclasses.field(default_factory=dict)  # name -> RATE_LIMIT
    limited: bool = False  # some of the names have limits: on PostgreSQL, claim under the limits lock
    housekeeping: bool = False  # look for expired attempts, recurring ticks and retention this time
    reap: Sequence[_Expiry] = ()  # expired attempts to fail, if they are still exactly so
    renew: Sequence[tuple[int, int, float]] = ()  # (id, lease, seconds left): deadlines to re-express
    look_for_cancels: bool = False
    progress: Sequence[tuple[float, str | None, int, int]] = ()  # (fraction, note, id, lease)
    prune_before: float | None = None  # delete done/cancelled rows finished before this
    compact: bool = False
    # Not asked, but answered: the store leaves its answer here too, so that
    # a worker whose wait for the answer was cancelled still learns what it claimed.
    answer: _Exchange | None = None

    # What the worker is, as against what it asks: these alone ask for nothing.
    TOLD: ClassVar[tuple[str, ...]] = ("names", "rates", "limited", "answer")

    def asks_nothing(self) -> bool:
        """True when a round trip would be for nothing.  Every field that
        asks counts, so a new kind of request can never be left out here."""
        blank = _Request()
        for field in dataclasses.fields(self):
            if field.name in _Request.TOLD:
                continue
            value = getattr(self, field.name)
            if value != getattr(blank, field.name) and not (isinstance(value, (list, tuple, dict)) and not value):
                return False
        return True


@dataclasses.dataclass
class _Exchange:
    """What the store answers."""

    now: float  # the store's clock when the transaction ran
    data_version: int
    claimed: dict[str, list[_Claimed]] = dataclasses.field(default_factory=dict)
    parked: dict[str, int] = dataclasses.field(default_factory=dict)  # queue -> jobs the claim parked
    released: int = 0  # parked jobs let through again, in any queue
    written: list[_Outcome] = dataclasses.field(default_factory=list)
    cancels: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # (id, lease)
    enqueued: list[tuple[int, str, str]] = dataclasses.field(default_factory=list)
    expired: list[_Expiry] = dataclasses.field(default_factory=list)
    next_due: float | None = None
    more_to_prune: bool = False


# --------------------------------------------------------------------------
# The SQLite store: every SQL statement runs in one of the functions below,
# on a plain sqlite3 connection.  The async Store runs them on aiosqlite's
# thread, one hop per transaction, so no transaction stays open across an
# await; the sync twin runs the same functions under a lock.
# --------------------------------------------------------------------------

# -- connections and schema --------------------------------------------------


def _is_busy(exc: sqlite3.Error) -> bool:
    text = str(exc)
    return "locked" in text or "busy" in text


def _with_retries(conn: sqlite3.Connection | _PgConnection, fn: Callable, *args: Any, write: bool = False,
                  patient: bool = True) -> Any:
    """Run ``fn(conn, *args)``, in a BEGIN IMMEDIATE transaction when ``write``.

    Writes take the lock up front, so a transaction never fails half-way on
    an upgrade from reader to writer.  SQLite's busy handler waits up to
    _BUSY_TIMEOUT_MS; beyond that, and in the few cases where SQLite reports
    busy at once, we roll back and start again until _GIVE_UP_AFTER.  With
    ``patient`` false a busy database raises at once (the loop's own
    connection, which must never block the event loop).
    """
    if _on_postgres(conn):  # its own transactions and reconnection
        return conn.run(fn, *args, write=write)
    conn = cast(sqlite3.Connection, conn)
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
            if not _is_busy(exc) or not patient or time.monotonic() > give_up:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.1)


def _refuse_uri(path: str) -> None:
    """Refuse a ``file:`` URI, with a message saying to give the plain path.

    Refused rather than supported: whether SQLite reads "file:..." as a URI
    or as a file of that name depends on how it was built, its parameters
    (mode=ro, mode=memory, immutable=1, vfs=...) would change what the store
    is behind litejobs' back, and the file's private mode and the WAL
    watcher need the file's own path, which the URI only hides.  A plain
    path does everything a URI could do here.
    """
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", path):
        raise StoreError(f"{_redacted(path)!r} is not a URL litejobs knows: give a file path, or a PostgreSQL "
                         "URL that starts with postgresql:// or postgres://")
    if path.startswith("file:"):
        raise StoreError(f"{path!r} is a file: URI, which litejobs does not take: give the plain path to "
                         "the database file, like '/data/jobs.db' (for a file named 'file:...', write './file:...')")


def _create_private_file(path: str) -> None:
    """Create the database file readable by its owner only: payloads may hold secrets.

    SQLite gives the -wal and -shm files the same permissions as the database.
    """
    if path == ":memory:":
        return
    try:
        # The real path: O_EXCL does not follow a symlink, and SQLite would
        # create the file it points to with the default mode.
        os.close(os.open(os.path.realpath(path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        pass
    except FileNotFoundError:
        folder = os.path.dirname(os.path.realpath(path))
        raise StoreError(f"cannot create {path!r}: folder {folder!r} does not exist") from None
    except OSError as exc:
        raise StoreError(f"cannot create {path!r}: {exc.strerror}") from None


def _open_error(path: str, exc: sqlite3.Error) -> StoreError:
    """Say in plain words why a database could not be opened for jobs."""
    text = str(exc)
    if "readonly" in text or "unable to open" in text:
        return StoreError(f"{path}: cannot write to the database: the file or its folder is read-only ({text})")
    if "not a database" in text:
        return StoreError(f"{path}: not an SQLite database ({text})")
    return StoreError(f"{path}: {text}")


def _refuse_newer_schema(path: str, version: int) -> None:
    if version > _SCHEMA_VERSION:
        raise StoreError(f"{path} has litejobs schema version {version}, but this litejobs "
                         f"{__version__} knows only up to {_SCHEMA_VERSION}: upgrade litejobs")


def _older_schema(path: str, version: int) -> StoreError:
    return StoreError(f"{path} has litejobs schema version {version}, older than this litejobs' "
                      f"{_SCHEMA_VERSION}: open it once read-write (a worker, connect(), or any command that "
                      "changes something) to bring it up to date")


def _open_schema(conn: sqlite3.Connection, path: str, synchronous: str, create: bool = True,
                 migrate: bool = True) -> None:
    """Check the file, switch to WAL and create the tables: reads first, so a
    file that is not ours to change is refused before anything is written.
    With ``create`` false the file must already be a litejobs database, and
    nothing is written unless an older one is to be brought up to date
    (``migrate``): that is how the command line opens it."""
    if not _SQLITE_HAS_RETURNING:
        raise StoreError(f"litejobs needs SQLite 3.35 or newer (for UPDATE ... RETURNING); "
                         f"this Python has SQLite {sqlite3.sqlite_version}")
    conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
    try:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        raise _open_error(path, exc) from None
    if "litejobs_meta" not in tables and any(t.startswith("litejobs_") for t in tables):
        raise StoreError(f"{path} has litejobs_ tables that litejobs did not create; not touching them")
    if "litejobs_meta" in tables:
        row = conn.execute("SELECT value FROM litejobs_meta WHERE key = 'schema_version'").fetchone()
        version = int(row[0]) if row and str(row[0]).isdigit() else None
        if version is None:
            raise StoreError(f"{path}: litejobs_meta has no valid schema_version (was it edited by hand?)")
        _refuse_newer_schema(path, version)
        if version < _SCHEMA_VERSION and not migrate:
            raise _older_schema(path, version)
        if not create and version == _SCHEMA_VERSION:
            return
    elif not create:
        raise StoreError(f"{path}: not a litejobs database (it has no litejobs tables)")
    try:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise _open_error(path, exc) from None
    if mode not in ("wal", "memory"):
        raise StoreError(f"{path}: could not switch to WAL mode (it stays in {mode!r} mode)")
    conn.execute(f"PRAGMA synchronous = {synchronous}")

    def create_tables(conn: sqlite3.Connection) -> None:
        # Read again under the write lock: another process may have
        # migrated the file since the check above.
        row = conn.execute("SELECT value FROM litejobs_meta WHERE key = 'schema_version'").fetchone() \
            if "litejobs_meta" in tables else None
        found = _SCHEMA_VERSION if row is None else int(row[0])
        _refuse_newer_schema(path, found)
        for version in range(found + 1, _SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[version]:
                conn.execute(statement)
        for statement in _DDL:
            conn.execute(statement)
        conn.execute("INSERT OR REPLACE INTO litejobs_meta (key, value) VALUES ('schema_version', ?)",
                     (str(_SCHEMA_VERSION),))

    _with_retries(conn, create_tables, write=True)


# -- enqueue -----------------------------------------------------------------


def _insert_jobs(conn: sqlite3.Connection, rows: Sequence[NewJob],
                 clock: Callable[[], float]) -> list[tuple[int, bool]]:
    """Insert jobs, all or nothing, as (id, inserted) pairs: a unique_key
    already pending or running gives the existing id and inserts nothing."""
    now = clock()
    if _on_postgres(conn):
        return _pg_insert_jobs(conn, rows, now)
    if len(rows) == 1 and rows[0].unique_key is None:  # the most common call of all
        return [(_inserted_id(conn.execute(_SQL_INSERT_JOB, rows[0]._row(now))), True)]
    if all(row.unique_key is None for row in rows):
        # The common case, in one executemany.  AUTOINCREMENT under the write
        # lock hands out consecutive ids, so the last one gives them all.
        conn.executemany(_SQL_INSERT_JOB, [row._row(now) for row in rows])
        last = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
        return [(job_id, True) for job_id in range(last - len(rows) + 1, last + 1)]
    ids = []
    for row in rows:
        if row.unique_key is not None:
            existing = conn.execute(_SQL_FIND_UNIQUE, (row.unique_key,)).fetchone()
            if existing is not None:
                ids.append((existing[0], False))
                continue
        ids.append((_inserted_id(conn.execute(_SQL_INSERT_JOB, row._row(now))), True))
    return ids


def _inserted_id(cursor: sqlite3.Cursor) -> int:
    """The id an INSERT gave its row (the DB-API types it as maybe None)."""
    return cast(int, cursor.lastrowid)


def _new_jobs(jobs: Iterable[Job | NewJob], options: dict[str, Any]) -> list[NewJob]:
    rows = []
    for job in jobs:
        if isinstance(job, NewJob):
            if options:
                raise ValueError(f"options {sorted(options)} cannot change a NewJob: pass them to new_job()")
            rows.append(job)
        else:
            rows.append(new_job(job, **options))
    return rows


# -- inspection and repair ---------------------------------------------------


def _get_job(conn: sqlite3.Connection, job_id: int) -> JobInfo | None:
    row = conn.execute(_SQL_GET_JOB, (job_id,)).fetchone()
    return None if row is None else JobInfo._from_row(row)


def _list_jobs(conn: sqlite3.Connection, state: str | None, queue: str | None, name: str | None,
               limit: int, offset: int) -> list[JobInfo]:
    filters = {"state": state, "queue": queue, "name": name}
    where = " AND ".join(f"{column} = ?" for column, value in filters.items() if value is not None) or "TRUE"
    rows = conn.execute(
        f"SELECT {_JOB_COLUMNS} FROM litejobs_jobs WHERE {where} ORDER BY id DESC LIMIT ? OFFSET ?",
        (*[value for value in filters.values() if value is not None], limit, offset),
    ).fetchall()
    return [JobInfo._from_row(row) for row in rows]


def _retry_jobs(conn: sqlite3.Connection, job_id: int | None, queue: str | None,
                clock: Callable[[], float]) -> int:
    """Back to pending with attempts reset: one finished job, or every dead one.

    UPDATE OR IGNORE leaves a dead job dead when another job with its
    unique_key is pending or running, rather than failing the whole batch.
    """
    if job_id is not None:
        row = conn.execute("SELECT state, unique_key FROM litejobs_jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise LookupError(f"no job with id {job_id}")
        if row[0] in ("pending", "running"):
            return 0
        if row[1] is not None and conn.execute(_SQL_FIND_UNIQUE, (row[1],)).fetchone():
            raise LiteJobsError(f"job {job_id} cannot be retried: another job with unique_key {row[1]!r} is waiting")
    if _on_postgres(conn):
        retried = conn.execute(_PG_RETRY_JOBS, {"now": clock(), "id": job_id, "queue": queue}).rowcount
        if retried:
            conn.notify()
        return retried
    cursor = conn.execute(
        """UPDATE OR IGNORE litejobs_jobs
              SET state = 'pending', attempts = 0, run_at = ?1, finished_at = NULL,
                  deadline = NULL, cancel_requested = 0, result = NULL, parked = 0
            WHERE CASE WHEN ?2 IS NULL THEN state = 'dead' AND (?3 IS NULL OR queue = ?3)
                       ELSE id = ?2 AND state IN ('done', 'dead', 'cancelled') END""",
        (clock(), job_id, queue),
    )
    return cursor.rowcount


def _cancel_job(conn: sqlite3.Connection, job_id: int, clock: Callable[[], float]) -> tuple[JobState, Event | None]:
    """Pending: cancelled at once (with its event).  Running: flagged for its
    worker to stop, which then records the cancellation."""
    key = conn.execute("SELECT concurrency_key FROM litejobs_jobs WHERE id = ? AND state = 'pending'",
                       (job_id,)).fetchone()
    if key and key[0] is not None and _on_postgres(conn):
        _pg_lock_limits(conn)  # it may hold a free slot of its key, which it passes on
    row = conn.execute(
        """UPDATE litejobs_jobs SET state = 'cancelled', finished_at = ?, parked = 0
            WHERE id = ? AND state = 'pending' RETURNING name, queue, attempts, concurrency_key""",
        (clock(), job_id),
    ).fetchone()
    if row is not None:
        if row[3] is not None:
            _release(conn, [row[3]])
        return JobState.CANCELLED, Event(EventKind.CANCELLATION, job_id, *row[:3])
    conn.execute("UPDATE litejobs_jobs SET cancel_requested = 1 WHERE id = ? AND state = 'running'", (job_id,))
    if _on_postgres(conn):  # its worker may be on another host
        conn.notify()
    row = conn.execute("SELECT state FROM litejobs_jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None:
        raise LookupError(f"no job with id {job_id}")
    return JobState(row[0]), None


def _purge_jobs(conn: sqlite3.Connection, state: str, before: float) -> int:
    """Delete finished jobs of ``state`` that finished before ``before``, one
    transaction per batch, so that the write lock is never held for long."""
    def delete_batch(conn: sqlite3.Connection) -> int:
        return conn.execute(_SQL_PURGE, (state, before, _PRUNE_BATCH)).rowcount

    total = 0
    while True:
        deleted = _with_retries(conn, delete_batch, write=True)
        total += deleted
        if deleted < _PRUNE_BATCH:
            return total


def _set_paused(conn: Any, queue: str, paused: bool) -> bool:
    """Pause or resume ``queue``; True if that changed anything."""
    was = conn.execute("SELECT paused FROM litejobs_queues WHERE queue = ?", (queue,)).fetchone()
    conn.execute("""INSERT INTO litejobs_queues (queue, paused) VALUES (?, ?)
                    ON CONFLICT (queue) DO UPDATE SET paused = excluded.paused""", (queue, int(paused)))
    if not paused and _on_postgres(conn):  # its jobs may be claimed again, on any host
        conn.notify()
    return bool(was and was[0]) != paused


def _paused_queues(conn: Any) -> list[str]:
    try:
        return [queue for queue, in conn.execute("SELECT queue FROM litejobs_queues WHERE paused = 1")]
    except Exception as exc:  # a file of schema version 2, opened read-only (the CLI): nothing is paused there
        if "litejobs_queues" not in str(exc):
            raise
        return []


# -- statistics --------------------------------------------------------------


def _hour_marks(now: float) -> tuple[int, int, int]:
    """The hour numbers (epoch hours, UTC) where this hour, today and this month begin."""
    moment = datetime.fromtimestamp(now, timezone.utc)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return int(now // 3600), int(day.timestamp() // 3600), int(day.replace(day=1).timestamp() // 3600)


def _stats(conn: sqlite3.Connection, clock: Callable[[], float]) -> dict[str, QueueStats]:
    now = clock()
    counts: dict[str, dict[str, Any]] = {}
    for queue, state, later, n in conn.execute(
        "SELECT queue, state, run_at > ?, count(*) FROM litejobs_jobs GROUP BY 1, 2, 3", (now,)
    ):
        key = "scheduled" if state == "pending" and later else state
        per_queue = counts.setdefault(queue, {})
        per_queue[key] = per_queue.get(key, 0) + n
    known: set[str] = set()
    host = socket.gethostname()
    workers = [names for names, worker_host, pid in conn.execute("SELECT names, host, pid FROM litejobs_workers")
               if worker_host != host or _process_alive(pid)]  # a killed worker of this host knows nothing
    for names in workers:
        known.update(_loads_or_raw(names))
    if workers:
        for queue, name, n in conn.execute(
            "SELECT queue, name, count(*) FROM litejobs_jobs WHERE state = 'pending' GROUP BY 1, 2"
        ):
            if name not in known:
                per_queue = counts.setdefault(queue, {})
                per_queue["unregistered"] = per_queue.get("unregistered", 0) + n
    hour, day, month = _hour_marks(now)
    for queue, state, this_hour, today, this_month, all_time in conn.execute(
        # (CAST: PostgreSQL sums integers as numeric)
        """SELECT queue, state, CAST(sum(CASE WHEN hour >= ?1 THEN n ELSE 0 END) AS BIGINT),
                  CAST(sum(CASE WHEN hour >= ?2 THEN n ELSE 0 END) AS BIGINT),
                  CAST(sum(CASE WHEN hour >= ?3 THEN n ELSE 0 END) AS BIGINT), CAST(sum(n) AS BIGINT)
             FROM litejobs_counts GROUP BY 1, 2""",
        (hour, day, month),
    ):
        counts.setdefault(queue, {})[f"{state}_counts"] = JobStat(this_hour, today, this_month, all_time)
    for queue in _paused_queues(conn):
        counts.setdefault(queue, {})["paused"] = True
    stats = {}
    for queue in sorted(counts):
        fields = counts[queue]
        if workers:
            fields.setdefault("unregistered", 0)
        fields = {k: v for k, v in fields.items() if k in QueueStats.__dataclass_fields__}
        stats[queue] = QueueStats(**fields)
    return stats


def _compact_counts(conn: sqlite3.Connection, now: float) -> None:
    """Fold hourly counts older than two months into one all-time row (hour 0)."""
    cutoff = int(now // 3600) - 24 * 62
    conn.execute(_SQL_COMPACT_COUNTS, (cutoff,))
    conn.execute("DELETE FROM litejobs_counts WHERE hour > 0 AND hour < ?", (cutoff,))


# -- cron schedules ----------------------------------------------------------
# Five fields (minute, hour, day of month, month, day of week) with ranges,
# lists, steps and names, and the usual @ forms.  As in Vixie cron, when both
# day fields are restricted a day matches either.  Times are wall-clock
# times in the schedule's time zone: a time that a spring-forward change
# skips runs as if the clock had not yet moved (02:30 runs at 03:30), and a
# time that a fall-back change repeats runs once, at its first occurrence.

_CRON_MACROS = {"@hourly": "0 * * * *", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
                "@weekly": "0 0 * * 0", "@monthly": "0 0 1 * *", "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *"}
_CRON_NAMES = {
    "month": {name: n for n, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)},
    "day of week": {name: n for n, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))},
}
_CRON_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12),
                ("day of week", 0, 7))


def _cron_text(cron: _Cron) -> str:
    return repr(getattr(cron, "expression", "?"))


class _Cron(NamedTuple):
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 is Sunday
    any_day: bool  # the day-of-month field starts with *
    any_weekday: bool  # the day-of-week field starts with *
    expression: str = ""


@functools.lru_cache(maxsize=256)
def _parse_cron(expression: str) -> _Cron:
    """The sets of minutes, hours, days, months and weekdays that match, or a
    ValueError naming the field that is wrong."""
    if not isinstance(expression, str):
        raise ValueError(f"a cron expression must be a str, got {expression!r}")
    text = _CRON_MACROS.get(expression.strip().lower(), expression)
    fields = text.split()
    if len(fields) != 5:
        raise ValueError(f"cron expression {expression!r} has {len(fields)} fields; it needs 5 "
                         "(minute hour day-of-month month day-of-week) or one of " + ", ".join(_CRON_MACROS))
    sets = []
    for field, (what, low, high) in zip(fields, _CRON_FIELDS, strict=True):
        names = _CRON_NAMES.get(what, {})

        def value(text: str, what: str = what, low: int = low, high: int = high, names: dict = names) -> int:
            number = int(text) if text.isascii() and text.isdigit() else names.get(text.lower())
            if number is None or not low <= number <= high:
                article = "an" if what[0] in "aeiouh" else "a"
                raise ValueError(f"cron expression {expression!r}: {text!r} is not {article} {what} ({low}-{high}"
                                 + (", or a name like " + next(iter(names)) if names else "") + ")")
            return number

        chosen: set[int] = set()
        for part in field.split(","):
            span, _, step_text = part.partition("/")
            if step_text and (not (step_text.isascii() and step_text.isdigit()) or int(step_text) == 0):
                raise ValueError(f"cron expression {expression!r}: step {step_text!r} in the {what} field "
                                 "is not a whole number above 0")
            step = int(step_text) if step_text else 1
            if span == "*":
                first, last = low, high
            elif "-" in span:
                start, _, end = span.partition("-")
                first, last = value(start), value(end)
                if first > last:
                    raise ValueError(f"cron expression {expression!r}: range {span!r} in the {what} field "
                                     "runs backwards")
            else:
                first = value(span)
                last = high if step_text else first
            chosen.update(range(first, last + 1, step))
        sets.append(frozenset(chosen))
    minutes, hours, days, months, weekdays = sets
    weekdays = frozenset(day % 7 for day in weekdays)  # 7 is Sunday too
    # As Vixie cron: a day field is unrestricted when it starts with "*" (so "*/2" too).
    return _Cron(minutes, hours, days, months, weekdays, fields[2].startswith("*"), fields[4].startswith("*"),
                 expression)


@functools.lru_cache(maxsize=64)
def _time_zone(name: str) -> Any:
    import zoneinfo

    if not isinstance(name, str) or not name:
        raise ValueError(f"tz must be the name of a time zone like 'Europe/Paris', got {name!r}")
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}: give an IANA name like 'Europe/Paris' or 'UTC' "
                         "(on Windows, pip install tzdata)") from None


def _cron_day_matches(cron: _Cron, moment: datetime) -> bool:
    day_ok = moment.day in cron.days
    weekday_ok = (moment.isoweekday() % 7) in cron.weekdays
    if cron.any_day or cron.any_weekday:
        return day_ok and weekday_ok
    return day_ok or weekday_ok  # both restricted: either, as in Vixie cron


def _cron_next(cron: _Cron, tz: Any, after: float) -> float:
    """The first matching minute strictly after the epoch time ``after``."""
    start = datetime.fromtimestamp(after, tz)
    earlier = datetime.fromtimestamp(after - 3 * 3600, tz)
    if earlier.utcoffset() != start.utcoffset():
        # The clocks moved in the last hours: wall times they skipped (which
        # run late, at fold 0) may still be ahead of ``after`` though their
        # wall time is behind it.  Look from before the change.
        start = earlier
    moment = start.replace(tzinfo=None, second=0, microsecond=0) + timedelta(minutes=1)
    give_up = moment.year + 9  # 29 February comes back within eight years
    while moment.year <= give_up:
        if moment.month not in cron.months:
            moment = (moment.replace(day=1, hour=0, minute=0) + timedelta(days=32)).replace(day=1)
        elif not _cron_day_matches(cron, moment):
            moment = moment.replace(hour=0, minute=0) + timedelta(days=1)
        elif moment.hour not in cron.hours:
            moment = moment.replace(minute=0) + timedelta(hours=1)
        elif moment.minute not in cron.minutes:
            moment += timedelta(minutes=1)
        else:
            epoch = moment.replace(tzinfo=tz).timestamp()  # fold=0: the first of a repeated time
            if epoch > after:
                return _cron_repeated_hour(cron, tz, after, epoch)
            moment += timedelta(minutes=1)  # a repeated time, already past
    raise ValueError(f"cron expression {_cron_text(cron)} never matches a real date (like 30 February)")


def _cron_repeated_hour(cron: _Cron, tz: Any, after: float, found: float) -> float:
    """``found``, or an earlier match in the hour that a fall-back repeats.

    A schedule for every hour runs in both passes of the repeated hour (it
    counts real hours); one for a given hour runs once, at the first.
    """
    start = datetime.fromtimestamp(after, tz)
    if len(cron.hours) < 24 or (start.fold == 0 and start.utcoffset() == datetime.fromtimestamp(found, tz).utcoffset()):
        return found
    minute = math.floor(after / 60) * 60 + 60
    while minute < min(found, after + 2 * 86_400):  # minutes of real time, through the change
        local = datetime.fromtimestamp(minute, tz)
        if local.minute in cron.minutes and local.hour in cron.hours and local.month in cron.months \
                and _cron_day_matches(cron, local):
            return minute
        minute += 60
    return found


# -- recurring jobs ----------------------------------------------------------


def _set_recurring(conn: sqlite3.Connection, key: str, interval: float, row: NewJob,
                   clock: Callable[[], float], cron: str | None = None, tz: str | None = None) -> None:
    """Store a recurring schedule: an interval's first tick is due at once, a
    cron schedule's at its next matching minute.  Declaring the same
    schedule again (as an app does at every start) keeps its place."""
    now = clock()
    first = now if cron is None else _cron_next(_parse_cron(cron), _time_zone(cast(str, tz)), now)
    conn.execute(
        """INSERT INTO litejobs_recurring (key, interval, next_run, name, queue, payload, priority, max_retries,
                                           backoff, backoff_value, timeout_ms, cron, tz, concurrency_key,
                                           concurrency_limit)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
           ON CONFLICT (key) DO UPDATE SET
               next_run = CASE WHEN litejobs_recurring.interval = excluded.interval
                                    AND coalesce(litejobs_recurring.cron, '') = coalesce(excluded.cron, '')
                                    AND coalesce(litejobs_recurring.tz, '') = coalesce(excluded.tz, '')
                               THEN litejobs_recurring.next_run ELSE excluded.next_run END,
               cron = excluded.cron, tz = excluded.tz,
               last_id = CASE WHEN litejobs_recurring.name = excluded.name AND litejobs_recurring.queue = excluded.queue
                                   AND litejobs_recurring.payload = excluded.payload
                              THEN litejobs_recurring.last_id END,
               interval = excluded.interval, name = excluded.name, queue = excluded.queue,
               payload = excluded.payload, priority = excluded.priority, max_retries = excluded.max_retries,
               backoff = excluded.backoff, backoff_value = excluded.backoff_value, timeout_ms = excluded.timeout_ms,
               concurrency_key = excluded.concurrency_key, concurrency_limit = excluded.concurrency_limit""",
        (key, interval, first, row.name, row.queue, row.payload, row.priority, row.max_retries.as_column(),
         row.backoff.kind, row.backoff.value, row.timeout, cron, tz, row.concurrency_key, row.concurrency_limit),
    )
    if _on_postgres(conn):  # its first tick may be due now
        conn.notify()


def _list_schedules(conn: Any) -> list[tuple[str, float, str | None, str | None, str, str, float]]:
    """Every schedule: key, interval, cron, tz, job name, queue, next run."""
    return conn.execute("SELECT key, interval, cron, tz, name, queue, next_run FROM litejobs_recurring "
                        "ORDER BY next_run, key").fetchall()


def _unset_recurring(conn: sqlite3.Connection, key: str) -> bool:
    return conn.execute("DELETE FROM litejobs_recurring WHERE key = ?", (key,)).rowcount > 0


def _enqueue_recurring(conn: sqlite3.Connection, now: float) -> list[tuple[int, str, str]]:
    """Enqueue each due recurring tick, inside the caller's write transaction.

    The transaction moves ``next_run`` past now as it enqueues, so a tick is
    enqueued exactly once however many workers look.  Ticks missed while no
    worker ran become one run, due at the latest missed tick; so do ticks that
    fall due while the last tick's job still waits to start (no worker that
    knows it is up, or its queue is busy): one run, not a pile.
    """
    enqueued = []
    due = _PG_RECURRING_DUE if _on_postgres(conn) else _SQL_RECURRING_DUE
    for (key, interval, next_run, name, queue, payload, priority, max_retries, backoff, value, timeout, last_id,
         cron, tz, concurrency_key, concurrency_limit) in conn.execute(due, (now,)).fetchall():
        try:
            if cron is None:
                missed = math.floor((now - next_run) / interval)
                tick, following = next_run + missed * interval, next_run + (missed + 1) * interval
            else:
                tick, following = _cron_ticks(cron, tz, next_run, now)
        except (ValueError, ZeroDivisionError, OverflowError, TypeError) as exc:
            # Edited by hand, or a time zone this host's zone data lacks: the
            # schedule waits an hour and says why; every other job goes on.
            logger.error("recurring schedule %r cannot be computed here, trying again in an hour: %s", key, exc)
            conn.execute("UPDATE litejobs_recurring SET next_run = ? WHERE key = ?", (now + 3600, key))
            continue
        if last_id is None or conn.execute(_SQL_NOT_STARTED, (last_id,)).fetchone() is None:
            last_id = conn.execute(
                _SQL_INSERT_JOB + " RETURNING id",
                (name, queue, payload, priority, tick, max_retries, backoff, value, timeout, None, now,
                 concurrency_key, concurrency_limit),
            ).fetchone()[0]
            enqueued.append((last_id, name, queue))
        conn.execute("UPDATE litejobs_recurring SET next_run = ?, last_id = ? WHERE key = ?",
                     (following, last_id, key))
    return enqueued


def _cron_ticks(cron: str, tz: str, next_run: float, now: float) -> tuple[float, float]:
    """The latest tick due by ``now`` (missed ones coalesce into it) and the one after.

    Walks tick by tick from a day before ``now`` at most (a day of ticks
    for a schedule of every minute); a schedule with no tick in that day
    is sparse, so walking from ``next_run`` is short."""
    schedule, zone = _parse_cron(cron), _time_zone(tz)
    tick = next_run
    candidate = next_run
    if now - next_run > 86_400:
        candidate = _cron_next(schedule, zone, now - 86_400)
        if candidate > now:
            candidate = next_run
    while True:
        following = _cron_next(schedule, zone, candidate)
        if candidate <= now:
            tick = candidate
        if following > now:
            return tick, following
        candidate = following


# -- moving jobs between stores ------------------------------------------------
# ``litejobs export`` writes JSON lines: a header, then one line per pending,
# scheduled or dead job and one per recurring schedule, each column as
# stored (the payload as its JSON text, times as epoch seconds).  A job's
# line carries its origin, the source row's id and creation time: the
# target remembers every origin it imported (litejobs_imported), so that a
# file imported again adds nothing again, even after the jobs it brought
# ran and were pruned.  A schedule is there when its key is.  Importing
# checks every line first, then writes all or nothing.

_EXPORT_HEADER = {"litejobs": "export", "version": 1}
_EXPORT_JOB_FIELDS = ("name", "queue", "payload", "state", "priority", "run_at", "attempts", "max_retries",
                      "backoff", "backoff_value", "timeout_ms", "unique_key", "created_at", "finished_at",
                      "last_error", "concurrency_key", "concurrency_limit")
_EXPORT_RECURRING_FIELDS = ("key", "interval", "next_run", "name", "queue", "payload", "priority", "max_retries",
                            "backoff", "backoff_value", "timeout_ms", "cron", "tz", "concurrency_key",
                            "concurrency_limit")
# Fields that exports of older versions lack, and what they mean there.
_EXPORT_DEFAULTS = {"concurrency_key": None, "concurrency_limit": None}


def _export_records(conn: Any) -> list[dict[str, Any]]:
    running = conn.execute("SELECT count(*) FROM litejobs_jobs WHERE state = 'running'").fetchone()[0]
    if running:
        raise LiteJobsError(f"{running} job(s) are running: stop the workers first, then export "
                            "(a running attempt cannot move)")
    records: list[dict[str, Any]] = [dict(_EXPORT_HEADER)]
    for job_id, *row in conn.execute(f"SELECT id, {', '.join(_EXPORT_JOB_FIELDS)} FROM litejobs_jobs "
                                     "WHERE state IN ('pending', 'dead') ORDER BY id"):
        job = dict(zip(_EXPORT_JOB_FIELDS, row, strict=True))
        records.append({"job": job, "origin": f"{job_id}@{job['created_at']!r}"})
    for row in conn.execute(f"SELECT {', '.join(_EXPORT_RECURRING_FIELDS)} FROM litejobs_recurring ORDER BY key"):
        records.append({"recurring": dict(zip(_EXPORT_RECURRING_FIELDS, row, strict=True))})
    return records


def _import_records(conn: Any, records: Sequence[tuple[int, dict[str, Any]]]) -> tuple[int, int, int]:
    """Add what ``records`` (line number, checked record) hold and the store
    does not; returns (jobs added, jobs already there, schedules added)."""
    added = already = scheduled = 0
    insert_job = (f"INSERT INTO litejobs_jobs ({', '.join(_EXPORT_JOB_FIELDS)}) "
                  f"VALUES ({', '.join('?' for _ in _EXPORT_JOB_FIELDS)}) ON CONFLICT DO NOTHING RETURNING id")
    insert_schedule = (f"INSERT INTO litejobs_recurring ({', '.join(_EXPORT_RECURRING_FIELDS)}) "
                       f"VALUES ({', '.join('?' for _ in _EXPORT_RECURRING_FIELDS)}) "
                       "ON CONFLICT DO NOTHING RETURNING key")
    for line, record in records:
        try:
            if "recurring" in record:
                schedule = record["recurring"]
                scheduled += conn.execute(insert_schedule, [schedule[f] for f in _EXPORT_RECURRING_FIELDS]
                                          ).fetchone() is not None
                continue
            new = conn.execute("INSERT INTO litejobs_imported (origin) VALUES (?) ON CONFLICT DO NOTHING "
                               "RETURNING origin", (record["origin"],)).fetchone()
            job_id = None if new is None else conn.execute(
                insert_job, [record["job"][f] for f in _EXPORT_JOB_FIELDS]).fetchone()
        except Exception as exc:  # a type or a check the database refuses
            raise ValueError(f"line {line}: cannot be stored: {exc}") from None
        if job_id is None:  # imported before, or its unique_key is taken by a job waiting here
            already += 1
        else:
            added += 1
    if (added or scheduled) and _on_postgres(conn):
        conn.notify()
    return added, already, scheduled


def _check_exported(kind: str, body: dict[str, Any]) -> str | None:
    """What is wrong with an exported job or schedule, if anything: the
    rules new_job and every() apply, so that no line can break a worker."""
    def whole(value: Any, low: int, high: int) -> bool:
        return type(value) is int and low <= value <= high

    def seconds(value: Any) -> bool:
        return type(value) in (int, float) and _is_finite(value) and 0 <= value < _LATEST_DUE

    for field in ("name", "queue", "payload", "key", "concurrency_key"):
        if field in body and not (isinstance(body[field], str) and body[field] and _is_storable(body[field])):
            if field == "concurrency_key" and body[field] is None:
                continue
            return f"{field} must be non-empty text a database can store, got {body[field]!r}"
    for field in ("unique_key", "last_error"):
        if body.get(field) is not None and not (isinstance(body[field], str) and _is_storable(body[field])):
            return f"{field} must be text a database can store, or null, got {body[field]!r}"
    try:
        orjson.loads(body["payload"])
    except orjson.JSONDecodeError:
        return f"payload is not JSON text: {body['payload'][:80]!r}"
    checks = {
        "priority": whole(body["priority"], -2**63, 2**63 - 1),
        "max_retries": body["max_retries"] is None or whole(body["max_retries"], 0, _MAX_COUNT),
        "backoff": body["backoff"] in ("linear", "exponential"),
        "backoff_value": seconds(body["backoff_value"]) and (body["backoff"] != "exponential"
                                                              or body["backoff_value"] >= 1),
        "timeout_ms": _is_timeout(body["timeout_ms"]),
        "concurrency_limit": (body["concurrency_limit"] is None if body["concurrency_key"] is None
                              else whole(body["concurrency_limit"], 1, _MAX_COUNT)),
    }
    if kind == "job":
        checks.update(state=body["state"] in ("pending", "dead"), run_at=seconds(body["run_at"]),
                      created_at=seconds(body["created_at"]), attempts=whole(body["attempts"], 0, _MAX_COUNT),
                      finished_at=body["finished_at"] is None or seconds(body["finished_at"]))
    elif body["cron"] is not None:
        try:
            _cron_next(_parse_cron(body["cron"]), _time_zone(body["tz"]), 0)
        except ValueError as exc:
            return str(exc)
        checks.update(next_run=seconds(body["next_run"]), interval=body["interval"] == 0)
    else:
        checks.update(interval=seconds(body["interval"]) and 1 <= body["interval"] <= _MAX_DELAY,
                      next_run=seconds(body["next_run"]), tz=body["tz"] is None)
    wrong = [field for field, ok in checks.items() if not ok]
    return None if not wrong else f"{wrong[0]} cannot be {body[wrong[0]]!r}"


def _read_export(lines: Iterable[str]) -> list[tuple[int, dict[str, Any]]]:
    """The records of an export, every line checked before anything is written."""
    records = []
    seen_header = False
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            record = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"line {number}: not JSON ({exc})") from None
        if not seen_header:
            if record != _EXPORT_HEADER:
                raise ValueError(f"line {number}: not a litejobs export (it starts with "
                                 f"{orjson.dumps(_EXPORT_HEADER).decode()})")
            seen_header = True
            continue
        kind, fields = ("job", _EXPORT_JOB_FIELDS) if isinstance(record, dict) and "job" in record else \
                       ("recurring", _EXPORT_RECURRING_FIELDS)
        body = record.get(kind) if isinstance(record, dict) else None
        if not isinstance(body, dict) or (kind == "job" and not isinstance(record.get("origin"), str)):
            raise ValueError(f"line {number}: expected a job (with its origin) or a recurring schedule, "
                             f"got {text.strip()[:80]}")
        body = {**_EXPORT_DEFAULTS, **body}
        missing = [field for field in fields if field not in body]
        if missing:
            raise ValueError(f"line {number}: the {kind} lacks {', '.join(missing)}")
        body = {field: body[field] for field in fields}
        problem = _check_exported(kind, body)
        if problem:
            raise ValueError(f"line {number}: {problem}")
        records.append((number, {kind: body, "origin": record.get("origin")}))
    if not seen_header:
        raise ValueError("the input is empty: not a litejobs export")
    return records


# -- workers and their round trip --------------------------------------------


def _nothing(conn: sqlite3.Connection) -> None:
    pass


def _checkpoint_wal(conn: sqlite3.Connection) -> None:
    # RESTART, not PASSIVE: it waits (here, on the database thread) until the
    # next writer can start the WAL file from its beginning.  A passive one
    # copies pages but, with the loop's connection appending all the while,
    # the file never restarts and grows without bound.
    conn.execute("PRAGMA wal_checkpoint(RESTART)")


def _register_worker(conn: sqlite3.Connection, worker_id: str, names: Sequence[str],
                     clock: Callable[[], float]) -> None:
    """Record a worker and its job names; forget workers of this host whose process is gone."""
    host = socket.gethostname()
    for other_id, pid in conn.execute("SELECT id, pid FROM litejobs_workers WHERE host = ?", (host,)).fetchall():
        if not _process_alive(pid):
            conn.execute("DELETE FROM litejobs_workers WHERE id = ?", (other_id,))
    conn.execute(
        """INSERT INTO litejobs_workers (id, host, pid, names, started_at) VALUES (?, ?, ?, ?, ?)
           ON CONFLICT (id) DO UPDATE SET host = excluded.host, pid = excluded.pid, names = excluded.names,
                                          started_at = excluded.started_at""",
        (worker_id, host, os.getpid(), orjson.dumps(list(names)).decode(), clock()),
    )


def _unregister_worker(conn: sqlite3.Connection, worker_id: str) -> None:
    conn.execute("DELETE FROM litejobs_workers WHERE id = ?", (worker_id,))


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # alive, but somebody else's
        return True
    return True


def _exchange(conn: sqlite3.Connection, request: _Request, clock: Callable[[], float]) -> _Exchange:
    """A worker's whole round trip: record finished attempts, fail expired
    ones the worker confirmed (the watchdog), re-express its deadlines after
    a clock step, enqueue recurring ticks, prune old rows, claim new jobs,
    and see when the next scheduled one falls due.

    Reads come first; the write transaction is begun only when there is
    something to write, so an idle worker writes nothing.
    """
    postgres = _on_postgres(conn)
    # SQLite's data_version tells a worker of commits its watcher missed;
    # PostgreSQL's notices need no such net.
    answer = _Exchange(clock(), 0 if postgres else conn.execute("PRAGMA data_version").fetchone()[0])
    if request.look_for_cancels:
        answer.cancels = conn.execute(_SQL_CANCEL_REQUESTED).fetchall()
    recurring = prune = False
    stranded: list[str] = []  # concurrency keys with parked jobs and a free slot
    if request.housekeeping:
        answer.expired = [_Expiry(*row) for row in conn.execute(_SQL_EXPIRED, (answer.now,))]
        stranded = [key for key, in conn.execute(_SQL_STRANDED_KEYS)]
    if request.housekeeping or request.wants:  # a worker woken at a tick's time fires it then
        recurring = conn.execute(_SQL_ANY_RECURRING_DUE, (answer.now,)).fetchone() is not None
    if request.prune_before is not None:
        prune = conn.execute(_SQL_ANY_TO_PRUNE, (request.prune_before,)).fetchone() is not None
    if not (request.outcomes or request.wants or request.reap or request.renew or recurring or prune
            or request.compact or request.progress or stranded):
        answer.next_due = conn.execute(_SQL_NEXT_DUE, (answer.now,)).fetchone()[0]
        return answer

    def write(conn: sqlite3.Connection) -> None:
        # Runs again from the top if the transaction is retried after "busy".
        # The clock is read once the write lock is held: a claim that waited
        # for the lock must not start with a deadline already gone by.
        now = answer.now = clock()
        answer.written, answer.claimed, answer.parked, answer.enqueued = [], {}, {}, []
        conn.executemany(_SQL_RENEW_DEADLINE, [(now, job_id, lease, left) for job_id, lease, left in request.renew])
        conn.executemany(_SQL_PROGRESS, request.progress)
        todo = list(request.outcomes)
        # One outcome per attempt: the worker's own, when it has one, wins
        # over the watchdog's (an UPDATE ... FROM would apply either).
        reported = {(outcome.job_id, outcome.lease) for outcome in todo}
        for expiry in request.reap:
            row = conn.execute(_PG_REAPABLE if postgres else _SQL_REAPABLE, (*expiry, now)).fetchone()
            if row is not None and (row[0], row[5]) not in reported:
                job = _Claimed(*row)
                error = (f"TimeoutError: attempt {job.attempts} did not finish within {job.timeout_ms} ms "
                         "(failed by the watchdog)")
                todo.append(_failure_outcome(job, error, "timeout"))
        finished: dict[tuple[str, str], int] = {}
        if todo:
            rows = [outcome.as_json_row(now) for outcome in todo]
            if _on_postgres(conn):
                # Planned each time, never prepared: a generic plan, blind to
                # the arrays' length, may join them to the whole table.
                columns = [list(column) for column in zip(*rows, strict=True)]
                recorded = conn.execute(_PG_RECORD_OUTCOMES, (now, *columns), prepare=False)
            else:
                recorded = conn.execute(_SQL_RECORD_OUTCOMES, (now, orjson.dumps(rows).decode()))
            # Outcomes missing from the answer were fenced out: their attempt
            # no longer owns the row.
            states = {(job_id, lease): state for job_id, lease, state in recorded}
            for outcome in todo:
                state = states.get((outcome.job_id, outcome.lease))
                if state is None:
                    continue
                if state != outcome.state:  # a failure of a job whose cancellation was asked for
                    outcome = dataclasses.replace(outcome, state=state, event="cancellation")
                answer.written.append(outcome)
                if state in ("done", "dead"):
                    finished[outcome.queue, state] = finished.get((outcome.queue, state), 0) + 1
        hour = int(now // 3600)
        conn.executemany(_SQL_COUNT_OUTCOME, [(q, s, hour, n) for (q, s), n in finished.items()])
        # From here on slots are counted: on PostgreSQL, under the limits lock.
        ended_keys = {outcome.concurrency_key for outcome in answer.written if outcome.concurrency_key}
        ended_keys.update(stranded)
        if _on_postgres(conn) and (request.limited or ended_keys):
            _pg_lock_limits(conn)
        answer.released = _release(conn, ended_keys)
        if recurring:
            answer.enqueued = _enqueue_recurring(conn, now)
        if prune:
            pruned = conn.execute(_SQL_PRUNE, (request.prune_before, _PRUNE_BATCH)).rowcount
            answer.more_to_prune = pruned == _PRUNE_BATCH
        if request.compact:
            _compact_counts(conn, now)
        if _on_postgres(conn) and (answer.enqueued or any(outcome.state == "pending" for outcome in answer.written)):
            conn.notify()  # retries and ticks: other hosts' workers learn when they fall due
        wake = _claim(conn, request, answer, now)
        answer.next_due = _earliest(conn.execute(_SQL_NEXT_DUE, (now,)).fetchone()[0], wake)

    try:
        _with_retries(conn, write, write=True)
    except sqlite3.IntegrityError:
        if not _with_retries(conn, _quarantine_broken_rows, clock, write=True):
            raise
        _with_retries(conn, write, write=True)
    request.answer = answer
    return answer


def _claim(conn: Any, request: _Request, answer: _Exchange, now: float) -> float | None:
    """Claim in every queue the request wants, inside the round trip's
    transaction: into ``answer.claimed`` (and ``answer.parked``).  Returns
    when to claim again because of a rate limit, if that is sooner than any
    due time: now, when a queue's share of a window ran out with starts left,
    or when a spent window lets the next start through."""
    postgres = _on_postgres(conn)
    plain, rated = list(request.names), []
    if request.rates and request.wants:
        rated = [name for name in request.names if name in request.rates]
        plain = [name for name in request.names if name not in request.rates]
    caps = {name: _starts_left(conn, name, *request.rates[name], now) for name in rated}
    left_at_first = dict(caps)
    wake = None
    for turn, (queue, limit) in enumerate(sorted(request.wants.items())):
        # A window's starts are shared out among the queues claimed, so
        # that no queue takes them all.
        share = [-(-caps[name] // (len(request.wants) - turn)) for name in rated]
        if postgres:
            found = conn.execute(_pg_claim(limit, bool(rated), request.limited), {
                "names": plain + rated, "caps": [limit] * len(plain) + share, "queue": queue, "now": now})
        else:
            found = conn.execute(_sql_claim(len(plain), len(rated), request.limited),
                                 (now, queue, limit, *plain, *rated, *share))
        claimed = []
        for job in map(_Claimed._make, found):
            if job.parked:
                answer.parked[queue] = answer.parked.get(queue, 0) + 1
                continue
            claimed.append(job)
            if job.name in caps:
                caps[job.name] -= 1
        for name, allowed in zip(rated, share, strict=True):
            taken = sum(job.name == name for job in claimed)
            if 0 < allowed == taken < limit and caps[name]:
                # Its share ran out, not the window: there may be more to
                # start here at once, which the planner must not forget.
                wake = now
        # RETURNING gives rows in no promised order: restore the claim's.
        claimed.sort(key=lambda job: (-job.priority, job.run_at, job.id))
        answer.claimed[queue] = claimed
    for name in rated:
        wake = _earliest(wake, _record_starts(conn, name, *request.rates[name], left_at_first[name] - caps[name],
                                              caps[name] == 0, now))
    return wake


def _starts_left(conn: Any, name: str, n: int, seconds: float, now: float) -> int:
    """How many attempts of rate-limited ``name`` may start now: ``n`` less
    those started in the window of ``seconds`` that ends now."""
    conn.execute(_SQL_FORGET_STARTS, (name, now - seconds))
    conn.execute(_SQL_CLAMP_STARTS, (name, now))
    return max(0, n - conn.execute(_SQL_COUNT_STARTS, (name,)).fetchone()[0])


def _record_starts(conn: Any, name: str, n: int, seconds: float, started: int, spent: bool,
                   now: float) -> float | None:
    """Record ``started`` starts of ``name`` at ``now``.  When the window is
    ``spent``, the time its next start is allowed: when the n-th latest
    start leaves it.  A worker sleeps until then, rather than polling."""
    conn.executemany(_SQL_RECORD_START, [(name, now)] * started)
    if not spent:
        return None
    row = conn.execute(_SQL_NTH_LATEST_START, (name, n - 1)).fetchone()
    return None if row is None else row[0] + seconds


def _release(conn: Any, keys: Iterable[str]) -> int:
    """Free slots of concurrency ``keys``: their parked jobs may be claimed
    again.  Returns how many were let through."""
    if not keys:
        return 0
    if not _on_postgres(conn):
        return sum(conn.execute(_SQL_RELEASE, (key,)).rowcount for key in sorted(keys))
    released = conn.execute(_PG_RELEASE, (sorted(keys),)).rowcount
    if released:  # the released jobs' workers may be on other hosts
        conn.notify()
    return released


def _pg_lock_limits(conn: _PgConnection) -> None:
    """Take the limits lock for the rest of the transaction.

    A claim counts a key's running jobs, or a name's recent starts, in its
    snapshot; on PostgreSQL two hosts' claims could both count a last free
    slot and both take it.  Every write that starts, parks or releases
    limited jobs takes this lock before it counts, in a statement of its
    own, so that the counting statements that follow see every such write
    committed before.  Workers with no limits never take it.  One lock per
    schema: stores in other schemas of the database do not wait for it.
    """
    conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(current_schema()))", (_PG_LIMITS_LOCK,))


def _quarantine_broken_rows(conn: sqlite3.Connection, clock: Callable[[], float]) -> list[int]:
    """Make dead every row that breaks the table's CHECKs, mending the broken
    values so that the row can be written at all.

    Such a row was edited with the checks switched off; any UPDATE of it
    fails, so without this one row would stall every claim of its queue.
    """
    broken = " OR ".join(f"NOT ({check})" for check, _ in _JOB_CHECKS.values())
    repairs = ", ".join(f"{column} = CASE WHEN {check} THEN {column} ELSE {fix} END"
                        for column, (check, fix) in _JOB_CHECKS.items() if column != "state")
    reasons = " || ".join(f"CASE WHEN {check} THEN '' ELSE ' {column}=' || quote({column}) END"
                          for column, (check, _) in _JOB_CHECKS.items())
    rows = conn.execute(
        f"""UPDATE litejobs_jobs
               SET {repairs}, state = 'dead', finished_at = ?1, deadline = NULL,
                   last_error = 'quarantined: the row was edited by hand and broke its checks:' || {reasons}
             WHERE {broken}
         RETURNING id, last_error""",
        (clock(),),
    ).fetchall()
    for job_id, error in rows:
        logger.error("job %s %s", job_id, error)
    return [job_id for job_id, _ in rows]


# -- the async store and the calls it shares with the sync twin --------------


def _answer_batch(batch: list[tuple[list[NewJob], asyncio.Future]], ids: list[tuple[int, bool]]) -> None:
    """Hand each caller of a shared insert its own ids."""
    start = 0
    for caller_rows, waiter in batch:
        _set_future(waiter, ids[start:start + len(caller_rows)], None)
        start += len(caller_rows)


def _others_ready(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether other callbacks wait to run in this turn of the event loop.
    Then an enqueue lets them run first: they may enqueue too, and share its
    transaction.  (asyncio keeps them in ``_ready``; a loop that does not
    say is taken to be busy, which costs one turn, never correctness.)"""
    ready = getattr(loop, "_ready", None)
    return ready is None or bool(ready)


def _set_future(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if not future.done():
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)


def _text_to_match(value: str | None, what: str) -> str | None:
    """A str to look for in the file; one that no row can hold is a plain error."""
    if value is not None and not (isinstance(value, str) and _is_storable(value)):
        raise ValueError(f"{what} must be a str a database can store (no lone surrogate, no NUL), "
                         f"got {value!r}")
    return value


def _queue_name(queue: Any) -> str:
    if not isinstance(queue, str) or not queue:
        raise ValueError(f"queue must be a non-empty str, got {queue!r}")
    return cast(str, _text_to_match(queue, "queue"))


def _check_state(state: Any, allowed: Iterable[str], what: str) -> str | None:
    if state is None:
        return None
    value = state.value if isinstance(state, JobState) else state
    if value not in allowed:
        raise ValueError(f"{what} must be one of {', '.join(allowed)}; got {state!r}")
    return value


class _StoreCalls:
    """The calls the async Store and the sync twin share, written once.

    Each returns ``self._run(...)``, or ``self._run_and_wake(...)`` for a
    write that may make a job due: on the Store that is awaitable, on the
    sync twin it is the answer itself.
    """

    clock: Callable[[], float]
    _run: Callable[..., Any]
    _run_and_wake: Callable[..., Any]  # _run for a write that may make a job due now

    def get(self, job_id: int) -> Any:
        """The job's current row as a JobInfo, or None if there is no such id."""
        return self._run(_get_job, job_id)

    def stats(self) -> Any:
        """Counts per queue: a dict of queue name to QueueStats."""
        return self._run(_stats, self.clock)

    def jobs(self, *, state: str | JobState | None = None, queue: str | None = None,
             name: str | None = None, limit: int = 100, offset: int = 0) -> Any:
        """Jobs newest first, filtered by state, queue and name."""
        state = _check_state(state, [s.value for s in JobState], "state")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"limit must be an int >= 0, got {limit!r}")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ValueError(f"offset must be an int >= 0, got {offset!r}")
        return self._run(_list_jobs, state, _text_to_match(queue, "queue"), _text_to_match(name, "name"),
                         limit, offset)

    def retry(self, job_id: int) -> Any:
        """Put a done, dead or cancelled job back to pending with attempts reset; 1 if it was."""
        return self._run_and_wake(_retry_jobs, job_id, None, self.clock, write=True)

    def retry_dead(self, queue: str | None = None) -> Any:
        """Put every dead job (of ``queue``) back to pending; returns how many."""
        return self._run_and_wake(_retry_jobs, None, _text_to_match(queue, "queue"), self.clock, write=True)

    def purge(self, *, state: str | JobState, older_than: float | timedelta = 0) -> Any:
        """Delete done, dead or cancelled jobs that finished over ``older_than`` ago; returns how many."""
        finished_state = _check_state(state, ("done", "dead", "cancelled"), "purge state")
        return self._run(_purge_jobs, finished_state, self.clock() - _seconds(older_than, "older_than"))

    def every(self, interval: float | timedelta | str, job: Job, *, key: str | None = None,
              tz: str | None = None) -> Any:
        """Enqueue ``job`` every ``interval`` (at least 1 s), or at the minutes a
        cron expression like ``"0 3 * * *"`` names in time zone ``tz``
        (default UTC), under ``key`` (default: its NAME)."""
        cron = None
        if isinstance(interval, str):
            cron, tz = " ".join(interval.lower().split()), "UTC" if tz is None else tz
            _cron_next(_parse_cron(cron), _time_zone(tz), self.clock())  # a bad one stores nothing
            seconds = 0.0
        elif tz is not None:
            raise ValueError("tz= goes with a cron expression like '0 3 * * *', not with an interval")
        else:
            seconds = _delay_seconds(interval, "interval")
            if seconds < 1:
                raise ValueError(f"interval must be at least 1 second, got {seconds:g}s")
        row = new_job(job)
        key = row.name if key is None else key
        if not isinstance(key, str) or not key:
            raise ValueError(f"key must be a non-empty str, got {key!r}")
        if not _is_storable(key):
            raise SerializationError(f"key {key!r} is not text a database can store "
                                     "(it holds a lone surrogate or a NUL character)")
        return self._run_and_wake(_set_recurring, key, seconds, row, self.clock, cron, tz, write=True)

    def unschedule(self, key: str) -> Any:
        """Remove a recurring schedule; True if there was one."""
        return self._run(_unset_recurring, _text_to_match(key, "key"), write=True)

    def pause(self, queue: str) -> Any:
        """Stop every worker, on every host, from claiming ``queue``'s jobs
        until ``resume``; running jobs finish.  True if it was not paused."""
        return self._run(_set_paused, _queue_name(queue), True, write=True)

    def resume(self, queue: str) -> Any:
        """Let workers claim ``queue``'s jobs again.  True if it was paused."""
        return self._run_and_wake(_set_paused, _queue_name(queue), False, write=True)


class Store(_StoreCalls):
    """Jobs in an SQLite file or a PostgreSQL database.  Get one with
    ``litejobs.connect(path)`` or ``litejobs.connect("postgresql://...")``."""

    if TYPE_CHECKING:  # the calls shared through _StoreCalls, as they are here: coroutines
        async def get(self, job_id: int) -> JobInfo | None: ...
        async def stats(self) -> dict[str, QueueStats]: ...
        async def jobs(self, *, state: str | JobState | None = None, queue: str | None = None,
                       name: str | None = None, limit: int = 100, offset: int = 0) -> list[JobInfo]: ...
        async def retry(self, job_id: int) -> int: ...
        async def retry_dead(self, queue: str | None = None) -> int: ...
        async def purge(self, *, state: str | JobState, older_than: float | timedelta = 0) -> int: ...
        async def every(self, interval: float | timedelta | str, job: Job, *, key: str | None = None,
                        tz: str | None = None) -> None: ...
        async def unschedule(self, key: str) -> bool: ...
        async def pause(self, queue: str) -> bool: ...
        async def resume(self, queue: str) -> bool: ...


    def __init__(self, db: aiosqlite.Connection | _PgThread, path: str, clock: Callable[[], float],
                 keep_done: float) -> None:
        self._db = db
        self.path = path
        self._postgres = db if isinstance(db, _PgThread) else None
        self.clock = clock
        self.keep_done = keep_done
        # The real path: SQLite follows a symlink and keeps the WAL beside
        # the file it points to.  Absolute, because the process may chdir.
        self._wal_path = os.path.realpath(path) + "-wal"
        # A tuple, replaced whenever a callback comes or goes: emit walks a
        # snapshot, so one that unsubscribes itself makes nobody miss an event.
        self._event_callbacks: tuple[Callable[[Event], Any], ...] = ()
        self._wakers: dict[Callable[[], None], float] = {}  # subscribers, and the poll interval each asked for
        self._watching: threading.Event | None = None  # set to stop the -wal watcher thread
        self._watch_interval = _WATCHDOG_INTERVAL
        # This store's own calls, for the watcher: a change of the file while
        # one runs, or just after, is most likely this process's own commit.
        self._own_calls = 0
        self._own_calls_ended = 0.0
        self._data_version: int | None = None  # as the last round trip saw it
        self._insert_queue: list[tuple[list[NewJob], asyncio.Future]] = []
        self._insert_busy = False  # the database thread is writing a batch
        self._flush_soon = False  # a batch is to be written later in this turn of the loop
        self._quick: sqlite3.Connection | None = None  # the loop's own connection, see _insert
        self._quick_commits = 0
        self._quick_rows = 0  # written through it since the last checkpoint
        self._checkpointing = False  # while one waits, enqueues go the database thread's way
        self.closed = False
        # Where the store may be used: aiosqlite's thread does not survive a
        # fork, and the group commit's futures belong to this loop.
        self._pid = os.getpid()
        self._loop = asyncio.get_running_loop()

    def _check_caller(self) -> None:
        """Refuse, at once, a call that would hang: from a forked child or another event loop."""
        if os.getpid() != self._pid:
            raise StoreError(f"the store for {self.path!r} was opened in another process (this one was "
                             "forked from it): connect again in this process")
        if asyncio.get_running_loop() is not self._loop:
            raise StoreError(f"the store for {self.path!r} belongs to another event loop: "
                             "connect again in this one")

    async def _run(self, fn: Callable, *args: Any, write: bool = False) -> Any:
        """Run ``fn(conn, *args)`` on the connection's thread; one hop, one transaction.

        aiosqlite has no public call for running a function on its thread;
        its ``_execute`` has done exactly that, unchanged, since 0.12.
        """
        self._check_caller()
        try:
            conn = self._db._conn
        except ValueError:
            raise StoreError(f"the store for {self.path!r} is closed") from None
        self._own_calls += 1
        try:
            return await self._db._execute(_with_retries, conn, fn, *args, write=write)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from exc
        finally:
            self._own_calls -= 1
            self._own_calls_ended = time.monotonic()

    async def _run_and_wake(self, fn: Callable, *args: Any, write: bool = False) -> Any:
        """``_run``, then wake this store's workers: the write may have made a
        job due now, and a worker never sees its own connection's commits
        in data_version, nor, where there is no -wal file, in the file."""
        result = await self._run(fn, *args, write=write)
        self._wake_workers()
        return result

    async def close(self) -> None:
        """Close the connection; every acknowledged write is already committed."""
        if self._watching is not None:
            self._watching.set()
            self._watching = None
        if self._quick is not None and os.getpid() == self._pid:
            self._quick.close()
            self._quick = None
        if os.getpid() != self._pid:
            # A forked child: aiosqlite's thread stayed in the parent, which
            # owns the connection and closes it.  Waiting here would hang.
            return
        self.closed = True
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
        return await self.enqueue(job, run_at=_checked_at(at), **options)

    async def enqueue_many(self, jobs: Iterable[Job | NewJob], **options: Any) -> list[int]:
        """Store many jobs in one transaction: all of them or none."""
        rows = _new_jobs(jobs, options)
        if not rows:
            return []
        ids = await self._insert(rows)
        if self._event_callbacks:
            for (job_id, inserted), row in zip(ids, rows, strict=False):
                if inserted:
                    self.emit(Event(EventKind.ENQUEUE, job_id, row.name, row.queue))
        self._wake_workers()
        return [job_id for job_id, _ in ids]

    async def _insert(self, rows: list[NewJob]) -> list[tuple[int, bool]]:
        """Group commit.  An enqueue that has the event loop to itself is
        written at once, on the loop's own thread, by a second connection
        that never waits for a lock: no thread hop, no suspension.  Enqueues
        that come together (other tasks ready to run this turn, or a write
        under way) wait for one transaction that writes them all.  When
        another connection holds the write lock, the batch goes to the
        database thread, which waits for it.  Each caller's rows are still
        all or nothing."""
        self._check_caller()  # before joining a queue that another loop's task would serve
        waiter = self._loop.create_future()
        self._insert_queue.append((rows, waiter))
        if not self._insert_busy:
            # Now and then the caller waits one turn of the loop even when
            # alone, so that a producer enqueuing in a loop lets timers,
            # sockets and other tasks run.
            alone = len(self._insert_queue) == 1 and not _others_ready(self._loop)
            if alone and self._quick_commits % _YIELD_EVERY:
                self._flush_inserts()
            elif not self._flush_soon:
                self._flush_soon = True
                self._loop.call_soon(self._flush_inserts)
        return await waiter

    def _flush_inserts(self) -> None:
        """Write what waits: here on the loop's thread when the write lock is
        free, else on the database thread."""
        self._flush_soon = False
        if self._insert_busy or not self._insert_queue:
            return
        batch, self._insert_queue = self._insert_queue, []
        rows = [row for rows, _ in batch for row in rows]
        if self._quick is not None and len(rows) <= _QUICK_ROWS and not self._checkpointing:
            # (a big batch would hold up the loop; during a checkpoint the
            # loop's writes would keep it from ever finding the lock free)
            try:
                ids = _with_retries(self._quick, _insert_jobs, rows, self.clock, write=True, patient=False)
            except Exception:  # busy, or someone's bad row: the database thread sorts it out
                pass
            else:
                self._own_calls_ended = time.monotonic()
                self._count_quick_commit(len(rows))
                _answer_batch(batch, ids)
                return
        self._insert_busy = True
        asyncio.ensure_future(self._write_inserts(batch))

    async def _write_inserts(self, batch: list[tuple[list[NewJob], asyncio.Future]]) -> None:
        try:
            await self._write_insert_batch(batch)
            while self._insert_queue:  # what came meanwhile, while the lock is likely still taken
                batch, self._insert_queue = self._insert_queue, []
                await self._write_insert_batch(batch)
        finally:
            self._insert_busy = False

    def _count_quick_commit(self, rows: int) -> None:
        self._quick_commits += 1
        self._quick_rows += rows
        if self._quick_rows >= _CHECKPOINT_ROWS:
            self._quick_rows = 0
            self._checkpointing = True
            asyncio.ensure_future(self._checkpoint())

    async def _checkpoint(self) -> None:
        """Copy the WAL back into the database file, on the database thread:
        the loop's connection never checkpoints, so that an enqueue never
        waits for one."""
        try:
            await self._run(_checkpoint_wal)
        except StoreError as exc:
            logger.debug("checkpoint skipped: %s", exc)
        finally:
            self._checkpointing = False

    async def _write_insert_batch(self, batch: list[tuple[list[NewJob], asyncio.Future]]) -> None:
        """Write the batch in one transaction and tell every caller.  Errors
        go to the callers, never out of the task, which nobody awaits."""
        rows = [row for rows, _ in batch for row in rows]
        try:
            try:
                ids = await self._run(_insert_jobs, rows, self.clock, write=True)
            except Exception as exc:  # StoreError, or a value the driver cannot bind
                if len(batch) == 1:
                    _set_future(batch[0][1], None, exc)
                    return
                # Someone's rows broke the shared transaction: write each
                # caller's alone, so that only the guilty one hears of it.
                for caller_rows, waiter in batch:
                    try:
                        caller_ids = await self._run(_insert_jobs, caller_rows, self.clock, write=True)
                    except Exception as caller_exc:
                        _set_future(waiter, None, caller_exc)
                    else:
                        _set_future(waiter, caller_ids, None)
                return
        except BaseException as exc:  # cancelled: every caller not yet answered hears of it
            for _, waiter in batch:
                _set_future(waiter, None, exc)
            raise
        _answer_batch(batch, ids)

    # -- inspection and repair ---------------------------------------------

    async def cancel(self, job_id: int) -> JobState:
        """Cancel a job: a pending one at once; a running one is asked to stop,
        and its worker cancels it within its poll interval.  Returns the state now."""
        state, event = await self._run(_cancel_job, job_id, self.clock, write=True)
        if event is not None:
            self.emit(event)
        self._wake_workers()
        return state

    async def wait(self, job_id: int, timeout: float | None = None) -> Any:
        """Wait for the job to finish and return its result.

        Raises JobFailed if it ended dead or cancelled, TimeoutError after
        ``timeout`` seconds, LookupError if there is no such job.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + _seconds(timeout, "timeout")
        pause = 0.005
        while True:
            info = await self.get(job_id)
            if info is None:
                raise LookupError(f"no job with id {job_id}")
            if info.state is JobState.DONE:
                return info.result
            if info.state in (JobState.DEAD, JobState.CANCELLED):
                raise JobFailed(info)
            if deadline is not None and loop.time() >= deadline:
                raise TimeoutError(f"job {job_id} is still {info.state.value} after {timeout}s")
            await asyncio.sleep(pause if deadline is None else min(pause, max(deadline - loop.time(), 0)))
            pause = min(pause * 2, 0.1)

    # -- events and wake-ups ----------------------------------------------

    def on_event(self, callback: Callable[[Event], Any]) -> Callable[[], None]:
        """Call ``callback(event)`` for everything that happens to jobs here,
        from this store and its workers; returns a function that unsubscribes."""
        self._event_callbacks += (callback,)
        subscribed = True

        def unsubscribe() -> None:
            nonlocal subscribed
            if subscribed:  # a second call does nothing
                subscribed = False
                callbacks = list(self._event_callbacks)
                callbacks.remove(callback)
                self._event_callbacks = tuple(callbacks)

        return unsubscribe

    # -- what a worker needs: the _WorkerStore protocol ---------------------

    @property
    def listening(self) -> bool:
        """True when someone listens to events: a worker builds none otherwise."""
        return bool(self._event_callbacks)

    def emit(self, event: Event) -> None:
        """Hand ``event`` to every ``on_event`` callback; a failing one is logged, never raised."""
        for callback in self._event_callbacks:
            try:
                result = callback(event)
                if result is not None and inspect.isawaitable(result):
                    asyncio.ensure_future(result)
            except Exception:
                logger.exception("on_event callback %r failed on %s", callback, event)

    def subscribe(self, callback: Callable[[], None], poll_interval: float) -> Callable[[], None]:
        """Call ``callback()`` on the store's event loop whenever jobs may have
        changed: at once after a write through this store, and within
        ``poll_interval`` after another connection's commit.  Returns a
        function that unsubscribes.

        Other connections' commits are seen by a thread that looks at the
        size and time of the ``-wal`` file, to which every commit appends: a
        stat in a thread costs a few microseconds, where waking the event
        loop as often would cost far more.  It only stats, never opens:
        closing any descriptor of a file drops every POSIX lock this process
        holds on it, SQLite's included.  Where the file system keeps coarse
        times a commit can go unseen there; ``exchange`` also compares
        ``PRAGMA data_version``, once a second at the latest.
        """
        self._wakers[callback] = poll_interval
        self._watch_interval = min(self._wakers.values())
        if self._watching is None and self._postgres is not None:
            self._watching = self._listen_for_notices(self._postgres.conn)
        elif self._watching is None and self.path != ":memory:":
            self._watching = self._watch_wal()

        def unsubscribe() -> None:
            if self._wakers.pop(callback, None) is not None and self._wakers:
                self._watch_interval = min(self._wakers.values())
            elif not self._wakers and self._watching is not None:
                self._watching.set()  # the thread ends within a poll interval
                self._watching = None

        return unsubscribe

    def _watch_wal(self) -> threading.Event:
        stop, loop = threading.Event(), self._loop
        notices = _file_change_notices(self._wal_path)

        def wake() -> bool:
            try:
                loop.call_soon_threadsafe(self._wake_workers)
            except RuntimeError:  # the loop has closed
                return False
            return True

        def watch_notices(fd: int) -> None:
            # The kernel says when the file changes: no cost while nothing
            # does.  A change while this store's own calls run, or just
            # after, is most likely its own commit, which its workers know
            # of already: then the thread looks again only a few
            # milliseconds later, and wakes the loop once for everything
            # in between.  (Waking for each of a busy worker's own
            # commits cost it a third of its speed.)  A second's timeout lets
            # the thread see ``stop``.
            try:
                poller = select.poll()  # not select(): it fails on descriptors past 1023
                poller.register(fd, select.POLLIN)
                while not stop.is_set():
                    if not poller.poll(1000):
                        continue
                    if self._own_calls > 0 or time.monotonic() - self._own_calls_ended < _OWN_ECHO:
                        time.sleep(_OWN_ECHO_PAUSE)
                    with contextlib.suppress(BlockingIOError):
                        while os.read(fd, 65536):
                            pass
                    if not wake():
                        return
                    time.sleep(_NOTICE_GAP)  # a burst of commits wakes the loop once a millisecond at most
            finally:
                os.close(fd)

        def watch_by_stat() -> None:
            seen = self._wal_signature()
            while not stop.is_set():
                time.sleep(self._watch_interval)  # cheaper than stop.wait() per wake-up
                signature = self._wal_signature()
                if signature != seen:
                    seen = signature
                    if not wake():
                        return

        if notices is not None:
            thread = threading.Thread(target=watch_notices, args=(notices,), name="litejobs-watch", daemon=True)
        else:
            thread = threading.Thread(target=watch_by_stat, name="litejobs-watch", daemon=True)
        thread.start()
        return stop

    def _listen_for_notices(self, conn: _PgConnection) -> threading.Event:
        stop, loop = threading.Event(), self._loop

        def wake() -> bool:
            try:
                loop.call_soon_threadsafe(self._wake_workers)
            except RuntimeError:  # the loop has closed
                return False
            return True

        threading.Thread(target=_listen, args=(conn.url, conn.channel, stop, wake, lambda: conn.pid),
                         name="litejobs-listen", daemon=True).start()
        return stop

    def _wal_signature(self) -> tuple[int, int] | None:
        try:
            stat = os.stat(self._wal_path)
        except (OSError, ValueError):
            return None
        return stat.st_mtime_ns, stat.st_size

    def _wake_workers(self) -> None:
        for wake in list(self._wakers):
            wake()

    async def exchange(self, request: _Request) -> _Exchange:
        """One worker round trip: outcomes in, watchdog and housekeeping, claims out.

        Always on the database thread, never on the loop's own connection
        (see Store._insert): a trip writes a whole batch, and when other
        processes write too, only a connection that waits for the lock gets
        its turn.  Subscribers hear of
        other connections' commits that this trip saw before it returns, so
        that a claim in the answer counts as having looked.
        """
        self._check_caller()
        answer = await self._run(_exchange, request, self.clock)
        if answer.data_version != self._data_version:
            seen_before, self._data_version = self._data_version is not None, answer.data_version
            if seen_before:
                self._wake_workers()
        return answer

    async def settle(self) -> None:
        """Return once every round trip begun before has ended: the database
        thread runs one call at a time, in order."""
        await self._run(_nothing)

    async def register_worker(self, worker_id: str, names: Sequence[str]) -> None:
        await self._run(_register_worker, worker_id, names, self.clock, write=True)

    async def unregister_worker(self, worker_id: str) -> None:
        await self._run(_unregister_worker, worker_id, write=True)


def _file_change_notices(path: str) -> int | None:
    """A descriptor that becomes readable when the file at ``path`` is
    written to (Linux's inotify), or None where there is no such thing and
    the watcher stats the file instead.  inotify watches a path: it opens
    no descriptor of the file itself, which would drop SQLite's locks."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, AttributeError):
        return None
    if fd < 0:
        return None
    if libc.inotify_add_watch(fd, os.fsencode(path), _IN_MODIFY) < 0:
        os.close(fd)
        return None
    return fd


def _open_quick_connection(path: str) -> sqlite3.Connection | None:
    """A second connection, for the event loop's own thread: it never waits
    for a lock (a busy database sends the write to the database thread) and
    never checkpoints, so a write through it costs the loop no more than the
    write.  Only with synchronous=NORMAL, where a commit does not fsync."""
    try:
        # check_same_thread=False: only the loop's thread uses it, but
        # close() may come from another.
        conn = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA wal_autocheckpoint = 0")
    except sqlite3.Error as exc:
        logger.debug("no quick connection for %s: %s", path, exc)
        return None
    return conn


def _parse_options(options: dict[str, Any]) -> tuple[str, Callable[[], float], float]:
    options = dict(options)
    synchronous = str(options.pop("synchronous", "NORMAL")).upper()
    if synchronous not in ("NORMAL", "FULL"):
        raise ValueError(f"synchronous must be 'NORMAL' or 'FULL', got {synchronous!r}")
    clock = options.pop("clock", time.time)
    keep_done = _seconds(options.pop("keep_done", 86_400), "keep_done")
    if options:
        raise TypeError(f"connect() got unknown option(s): {', '.join(sorted(options))}")
    return synchronous, clock, keep_done


class Connecting:
    """What ``connect`` returns: await it for a ``Store`` (close it yourself),
    or use it as ``async with connect(path) as store:``."""

    def __init__(self, path: str | os.PathLike, options: dict[str, Any]) -> None:
        self._path = path
        self._options = options
        self._store: Store | None = None

    async def _open(self) -> Store:
        synchronous, clock, keep_done = _parse_options(self._options)
        path = os.fspath(self._path)
        if _is_postgres_url(path):
            return await self._open_postgres(path, clock, keep_done)
        _refuse_uri(path)
        _create_private_file(path)
        try:
            db = await aiosqlite.connect(path, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {path!r}: {exc}") from None
        store = Store(db, path, clock, keep_done)
        try:
            await store._run(_open_schema, path, synchronous)
            if path != ":memory:" and synchronous == "NORMAL":
                store._quick = _open_quick_connection(path)
        except BaseException:
            await db.close()
            raise
        return store

    async def _open_postgres(self, url: str, clock: Callable[[], float], keep_done: float) -> Store:
        server_clock = None if "clock" in self._options else _ServerClock()
        loop = asyncio.get_running_loop()
        conn = await loop.run_in_executor(None, functools.partial(_PgConnection, url, clock=server_clock))
        store = Store(_PgThread(conn), conn.path, server_clock or clock, keep_done)
        try:
            await store._run(_open_pg_schema, conn.path, "")
        except BaseException:
            await store._db.close()
            raise
        return store

    def __await__(self) -> Generator[Any, None, Store]:
        return self._open().__await__()

    async def __aenter__(self) -> Store:
        self._store = await self._open()
        return self._store

    async def __aexit__(self, *exc_info: Any) -> None:
        if self._store is not None:
            await self._store.close()


def connect(path: str | os.PathLike, **options: Any) -> Connecting:
    """Open (and create) the job database at ``path``: an SQLite file, or a
    ``postgresql://`` URL (with psycopg 3 installed), whose tables go in the
    connection's schema.

    Options: ``synchronous`` ("NORMAL", or "FULL" to survive power loss),
    ``keep_done`` (seconds or timedelta to keep done and cancelled jobs,
    default one day) and ``clock`` (a function returning epoch seconds, for tests).
    """
    return Connecting(path, options)


# --------------------------------------------------------------------------
# The synchronous twin, for code with no event loop
# --------------------------------------------------------------------------


class SyncStore(_StoreCalls):
    """The store without asyncio (stdlib ``sqlite3``, or psycopg), for a Flask
    view or a cron script.

    Same database, same schema, same SQL as ``Store``; get one with
    ``litejobs.connect_sync(path)``.  Workers in other processes see its
    jobs within their poll interval.
    """

    if TYPE_CHECKING:  # the calls shared through _StoreCalls, as they are here: plain calls
        def get(self, job_id: int) -> JobInfo | None: ...
        def stats(self) -> dict[str, QueueStats]: ...
        def jobs(self, *, state: str | JobState | None = None, queue: str | None = None,
                 name: str | None = None, limit: int = 100, offset: int = 0) -> list[JobInfo]: ...
        def retry(self, job_id: int) -> int: ...
        def retry_dead(self, queue: str | None = None) -> int: ...
        def purge(self, *, state: str | JobState, older_than: float | timedelta = 0) -> int: ...
        def every(self, interval: float | timedelta | str, job: Job, *, key: str | None = None,
                  tz: str | None = None) -> None: ...
        def unschedule(self, key: str) -> bool: ...
        def pause(self, queue: str) -> bool: ...
        def resume(self, queue: str) -> bool: ...


    def __init__(self, path: str | os.PathLike, *, create: bool = True, read_only: bool = False,
                 **options: Any) -> None:
        """``create=False``: the file must already be a litejobs database, and
        opening it changes nothing.  ``read_only=True``: open it read-only too."""
        synchronous, self.clock, self.keep_done = _parse_options(options)
        self.path = os.fspath(path)
        self._lock = threading.Lock()  # held by every call, close() included
        self._closed = False
        self._pid = os.getpid()
        self._conn: sqlite3.Connection | _PgConnection
        if _is_postgres_url(self.path):
            server_clock = None if "clock" in options else _ServerClock()
            self._conn = _PgConnection(self.path, read_only=read_only, clock=server_clock)
            self.path, self.clock = self._conn.path, server_clock or self.clock
            try:
                self._run(_open_pg_schema, self.path, synchronous, create, not read_only)
            except BaseException:
                self._conn.close()
                raise
            return
        _refuse_uri(self.path)
        if not create and not os.path.exists(self.path):
            raise StoreError(f"{self.path}: no such file")
        if create:
            _create_private_file(self.path)
        self._conn = self._connect(read_only)
        try:
            self._run(_open_schema, self.path, synchronous, create, not read_only)
        except StoreError:
            self._conn.close()
            if not read_only or os.path.exists(os.path.realpath(self.path) + "-wal"):
                raise
            # A read-only folder, where SQLite cannot make the -shm file it
            # reads WAL files with; with no -wal file, the database file
            # alone is the whole truth and may be read as immutable.
            self._conn = self._connect(read_only, immutable=True)
            try:
                self._run(_open_schema, self.path, synchronous, create, not read_only)
            except BaseException:
                self._conn.close()
                raise
        except BaseException:
            self._conn.close()
            raise

    def _connect(self, read_only: bool, immutable: bool = False) -> sqlite3.Connection:
        try:
            if not read_only:
                return sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            uri = "file:" + urllib.parse.quote(os.path.abspath(self.path)) + "?mode=ro"
            uri += "&immutable=1" if immutable else ""
            return sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {self.path!r}: {exc}") from None

    def _run(self, fn: Callable, *args: Any, write: bool = False) -> Any:
        with self._lock:
            if self._closed:
                raise StoreError(f"the store for {self.path!r} is closed")
            if os.getpid() != self._pid:  # a connection shared across a fork mixes up both processes' answers
                raise StoreError(f"the store for {self.path!r} was opened in another process (this one was "
                                 "forked from it): connect_sync again in this process")
            try:
                return _with_retries(self._conn, fn, *args, write=write)
            except sqlite3.ProgrammingError as exc:
                raise StoreError(f"{self.path}: {exc}") from exc
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: {exc}") from exc

    # No workers to wake here: those of other processes see the commit.
    _run_and_wake = _run

    def close(self) -> None:
        """Close the connection, once any call in flight in another thread is
        done (closing under it could crash the process); closing twice is fine."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    def __enter__(self) -> SyncStore:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def enqueue(self, job: Job | NewJob, **options: Any) -> int:
        """Store one job and return its id.  Options are those of ``new_job``."""
        return self.enqueue_many([job], **options)[0]

    def schedule(self, job: Job | NewJob, *, at: datetime, **options: Any) -> int:
        """Store a job due at the aware datetime ``at``."""
        return self.enqueue(job, run_at=_checked_at(at), **options)

    def enqueue_many(self, jobs: Iterable[Job | NewJob], **options: Any) -> list[int]:
        """Store many jobs in one transaction: all of them or none."""
        rows = _new_jobs(jobs, options)
        if not rows:
            return []
        return [job_id for job_id, _ in self._run(_insert_jobs, rows, self.clock, write=True)]

    def cancel(self, job_id: int) -> JobState:
        """Cancel a pending job, or ask the worker running it to stop."""
        return self._run(_cancel_job, job_id, self.clock, write=True)[0]


def connect_sync(path: str | os.PathLike, **options: Any) -> SyncStore:
    """Open (and create) the job database at ``path`` (a file, or a
    ``postgresql://`` URL) without asyncio."""
    return SyncStore(path, **options)


# --------------------------------------------------------------------------
# The PostgreSQL store: the same calls, worker and CLI on many machines
# --------------------------------------------------------------------------
#
# The functions above run unchanged on a _PgConnection, which speaks the
# part of sqlite3's interface they use.  Where PostgreSQL needs other SQL
# (the claim, the outcome batch, inserts, the recurring ticks), the function
# asks _on_postgres(conn) and takes the statement below.  Three things differ
# in kind, not in spelling:
#
# - Time is the server's: every store's clock is the database server's time,
#   read off this host's monotonic clock (see _ServerClock), so hosts whose
#   clocks disagree agree on when a job is due and when an attempt expired.
# - Wake-ups come by LISTEN/NOTIFY on a connection of their own: writes
#   that make a job due send a notice on the schema's channel.
# - A lost connection is a StoreError to the caller; the next call
#   connects again.  A worker retries its round trip with backoff, and
#   fencing makes a late or repeated outcome harmless.

_PG_DDL = [
    """CREATE TABLE IF NOT EXISTS litejobs_meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
    # The CHECKs are those of the SQLite table; PostgreSQL's column types
    # keep out what SQLite's typeof() checks there.
    """CREATE TABLE IF NOT EXISTS litejobs_jobs (
        id               BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        name             TEXT NOT NULL,
        queue            TEXT NOT NULL,
        payload          TEXT NOT NULL,
        state            TEXT NOT NULL DEFAULT 'pending'
                         CHECK (state IN ('pending', 'running', 'done', 'dead', 'cancelled')),
        priority         BIGINT NOT NULL DEFAULT 0,
        run_at           DOUBLE PRECISION NOT NULL,
        attempts         BIGINT NOT NULL DEFAULT 0 CHECK (attempts >= 0),
        max_retries      BIGINT CHECK (max_retries >= 0),
        backoff          TEXT NOT NULL CHECK (backoff IN ('linear', 'exponential')),
        backoff_value    DOUBLE PRECISION NOT NULL CHECK (backoff_value >= 0),
        timeout_ms       BIGINT NOT NULL CHECK (timeout_ms > 0),
        unique_key       TEXT,
        lease            BIGINT NOT NULL DEFAULT 0,
        deadline         DOUBLE PRECISION,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        created_at       DOUBLE PRECISION NOT NULL,
        started_at       DOUBLE PRECISION,
        finished_at      DOUBLE PRECISION,
        last_error       TEXT,
        result           TEXT,
        progress         DOUBLE PRECISION,
        progress_note    TEXT,
        concurrency_key  TEXT,
        concurrency_limit BIGINT CHECK (concurrency_limit >= 1),
        parked           INTEGER NOT NULL DEFAULT 0 CHECK (parked IN (0, 1))
    )""",
    # What versions 3 and 4 added to a table made by version 2.
    "ALTER TABLE litejobs_jobs ADD COLUMN IF NOT EXISTS progress DOUBLE PRECISION",
    "ALTER TABLE litejobs_jobs ADD COLUMN IF NOT EXISTS progress_note TEXT",
    "ALTER TABLE litejobs_jobs ADD COLUMN IF NOT EXISTS concurrency_key TEXT",
    "ALTER TABLE litejobs_jobs ADD COLUMN IF NOT EXISTS concurrency_limit BIGINT CHECK (concurrency_limit >= 1)",
    "ALTER TABLE litejobs_jobs ADD COLUMN IF NOT EXISTS parked INTEGER NOT NULL DEFAULT 0 CHECK (parked IN (0, 1))",
    "DROP INDEX IF EXISTS litejobs_jobs_claim_by_name",
    # The claim walks this index per job name, in its ORDER BY, and locks
    # only the rows it takes (see _pg_claim).
    """CREATE INDEX IF NOT EXISTS litejobs_jobs_claimable
        ON litejobs_jobs (queue, name, priority DESC, run_at, id) WHERE state = 'pending' AND parked = 0""",
    """CREATE TABLE IF NOT EXISTS litejobs_starts (
        name       TEXT NOT NULL,
        started_at DOUBLE PRECISION NOT NULL
    )""",
    *_JOB_INDEXES,
    """CREATE TABLE IF NOT EXISTS litejobs_counts (
        queue TEXT NOT NULL,
        state TEXT NOT NULL,
        hour  BIGINT NOT NULL,
        n     BIGINT NOT NULL,
        PRIMARY KEY (queue, state, hour)
    )""",
    """CREATE TABLE IF NOT EXISTS litejobs_recurring (
        key           TEXT PRIMARY KEY,
        interval      DOUBLE PRECISION NOT NULL,
        next_run      DOUBLE PRECISION NOT NULL,
        name          TEXT NOT NULL,
        queue         TEXT NOT NULL,
        payload       TEXT NOT NULL,
        priority      BIGINT NOT NULL,
        max_retries   BIGINT,
        backoff       TEXT NOT NULL,
        backoff_value DOUBLE PRECISION NOT NULL,
        timeout_ms    BIGINT NOT NULL,
        last_id       BIGINT,
        cron          TEXT,
        tz            TEXT,
        concurrency_key   TEXT,
        concurrency_limit BIGINT
    )""",
    "ALTER TABLE litejobs_recurring ADD COLUMN IF NOT EXISTS cron TEXT",
    "ALTER TABLE litejobs_recurring ADD COLUMN IF NOT EXISTS tz TEXT",
    "ALTER TABLE litejobs_recurring ADD COLUMN IF NOT EXISTS concurrency_key TEXT",
    "ALTER TABLE litejobs_recurring ADD COLUMN IF NOT EXISTS concurrency_limit BIGINT",
    """CREATE TABLE IF NOT EXISTS litejobs_workers (
        id         TEXT PRIMARY KEY,
        host       TEXT NOT NULL,
        pid        BIGINT NOT NULL,
        names      TEXT NOT NULL,
        started_at DOUBLE PRECISION NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS litejobs_queues (
        queue  TEXT PRIMARY KEY,
        paused INTEGER NOT NULL DEFAULT 0
    )""",
    """CREATE TABLE IF NOT EXISTS litejobs_imported (
        origin TEXT PRIMARY KEY
    )""",
]

# Rows come from arrays, one per column: one statement and one round trip
# for a whole batch, whatever its size.  The arrays go in binary (%b):
# PostgreSQL's text form of an array of JSON payloads costs twice the time
# to quote and parse.  The ids come back in the arrays'
# order (WITH ORDINALITY), and the notice reaches listeners at commit.
_PG_INSERT_JOBS = """
    WITH rows AS (
        SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::bigint[], %b::float8[], %b::bigint[],
                             %b::text[], %b::float8[], %b::bigint[], %b::text[], %b::text[], %b::bigint[])
               WITH ORDINALITY AS r(name, queue, payload, priority, run_at, max_retries, backoff,
                                    backoff_value, timeout_ms, unique_key, concurrency_key, concurrency_limit, n)
    ), inserted AS (
        INSERT INTO litejobs_jobs (name, queue, payload, priority, run_at, max_retries, backoff, backoff_value,
                                   timeout_ms, unique_key, concurrency_key, concurrency_limit, created_at)
        SELECT name, queue, payload, priority, run_at, max_retries, backoff, backoff_value,
               timeout_ms, unique_key, concurrency_key, concurrency_limit, %s FROM rows ORDER BY n
        RETURNING id
    )
    SELECT id FROM inserted, (SELECT pg_notify(%s, '')) AS notice ORDER BY id"""

# One job, the most common call of all: arrays cost more than they save.
_PG_INSERT_ONE = f"""
    WITH inserted AS ({_SQL_INSERT_JOB.replace("?", "%s")} RETURNING id)
    SELECT id FROM inserted, (SELECT pg_notify(%s, '')) AS notice"""

# A job with a unique_key: inserted unless one with its key waits or runs.
_PG_INSERT_UNIQUE = f"""
    {_SQL_INSERT_JOB.replace("?", "%s")}
    ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND state IN ('pending', 'running') DO NOTHING
    RETURNING id"""


@functools.cache
def _pg_claim(limit: int, capped: bool, limited: bool = True) -> str:
    """The claim: per job name, the best ``limit`` due jobs from the claim
    index (or fewer: a rate-limited name's cap, when ``capped``), each
    locked with SKIP LOCKED (a row another worker is taking is passed over,
    never waited for); the best ``limit`` of those are chosen, and those
    that fit their concurrency limits are taken (see _CLAIM_VERDICTS, and
    _UNLIMITED_VERDICTS for a worker with no ``limited`` classes).

    The limit is written into the statement, not passed: with LIMIT as a
    parameter PostgreSQL may fall back to a generic plan that scans.
    """
    per_name = f"least({int(limit)}, wanted.cap)" if capped else str(int(limit))
    sql = f"""
        WITH chosen AS (
            SELECT job.* FROM unnest(%(names)s::text[], %(caps)s::bigint[]) AS wanted(name, cap)
            CROSS JOIN LATERAL (
                SELECT id, priority, run_at, concurrency_key, concurrency_limit FROM litejobs_jobs
                 WHERE state = 'pending' AND parked = 0 AND queue = %(queue)s AND name = wanted.name
                   AND run_at <= %(now)s
                 ORDER BY priority DESC, run_at, id
                 LIMIT {per_name}
                 FOR UPDATE SKIP LOCKED) AS job
            WHERE NOT EXISTS (SELECT 1 FROM litejobs_queues WHERE queue = %(queue)s AND paused = 1)
            ORDER BY job.priority DESC, job.run_at, job.id
            LIMIT {int(limit)}),
        verdicts AS ({_CLAIM_VERDICTS if limited else _UNLIMITED_VERDICTS})
        UPDATE litejobs_jobs AS j SET {_CLAIM_SETS}
          FROM verdicts WHERE j.id = verdicts.id
        RETURNING {_claim_returns("j", "convert_to(j.payload, 'UTF8')")}"""
    return sql.replace(":now", "%(now)s")


# The outcome batch, as _SQL_RECORD_OUTCOMES, from one array per column.
_PG_RECORD_OUTCOMES = """
    UPDATE litejobs_jobs AS j
       SET state = CASE WHEN o.state IN ('pending', 'dead') AND j.cancel_requested = 1
                        THEN 'cancelled' ELSE o.state END,
           run_at = coalesce(o.run_at, j.run_at),
           finished_at = CASE WHEN o.state IN ('pending', 'dead') AND j.cancel_requested = 1
                              THEN %s ELSE o.finished_at END,
           last_error = coalesce(o.error, j.last_error), result = o.result,
           attempts = j.attempts - o.uncount, deadline = NULL
      FROM unnest(%b::bigint[], %b::bigint[], %b::text[], %b::float8[], %b::float8[], %b::text[], %b::text[],
                  %b::int[]) AS o(id, lease, state, run_at, finished_at, error, result, uncount)
     WHERE j.id = o.id AND j.lease = o.lease AND j.state = 'running'
    RETURNING j.id, j.lease, j.state"""

_PG_REAPABLE = """
    SELECT id, name, queue, convert_to(payload, 'UTF8'), attempts, lease, max_retries, backoff, backoff_value,
           timeout_ms, priority, run_at, concurrency_key
      FROM litejobs_jobs
     WHERE id = %s AND lease = %s AND deadline = %s AND state = 'running' AND deadline <= %s"""

# Two hosts' workers may look at once: the row lock makes one of them fire
# the tick, and the other pass it over (PostgreSQL re-reads a locked row's
# next_run before it returns it).
_PG_RECURRING_DUE = _SQL_RECURRING_DUE + " FOR UPDATE SKIP LOCKED"

# UPDATE OR IGNORE, spelled out: a dead job whose unique_key a waiting job
# holds stays dead, and of dead jobs sharing a key only the first returns.
_PG_RETRY_JOBS = """
    UPDATE litejobs_jobs AS j
       SET state = 'pending', attempts = 0, run_at = %(now)s, finished_at = NULL,
           deadline = NULL, cancel_requested = 0, result = NULL, parked = 0
     WHERE CASE WHEN %(id)s::bigint IS NULL THEN state = 'dead' AND (%(queue)s::text IS NULL OR queue = %(queue)s)
                ELSE id = %(id)s AND state IN ('done', 'dead', 'cancelled') END
       AND (unique_key IS NULL
            OR (NOT EXISTS (SELECT 1 FROM litejobs_jobs AS o WHERE o.unique_key = j.unique_key
                                                               AND o.state IN ('pending', 'running'))
                AND (%(id)s::bigint IS NOT NULL
                     OR j.id = (SELECT min(d.id) FROM litejobs_jobs AS d
                                 WHERE d.unique_key = j.unique_key AND d.state = 'dead'
                                   AND (%(queue)s::text IS NULL OR d.queue = %(queue)s)))))"""

_PG_FIND_UNIQUE = _SQL_FIND_UNIQUE.replace("?", "%s")

# _SQL_RELEASE for many keys in one statement: a round trip to the server
# costs more than the statement.
_PG_RELEASE = f"""
    UPDATE litejobs_jobs AS j SET parked = 0
      FROM unnest(%s::text[]) AS ended(key)
     CROSS JOIN LATERAL ({_let_through("ended.key", "greatest")}) AS let_through
     WHERE j.id = let_through.id"""

# What an enqueue on a caller's own connection reads first: the server's
# time, and the channel of the connection's schema.
# (A channel name holds 63 bytes: a long schema name is hashed.)
_PG_NOW_AND_CHANNEL = """
    SELECT extract(epoch FROM clock_timestamp())::float8,
           'litejobs.' || CASE WHEN octet_length(current_schema()) <= 48 THEN current_schema()
                               ELSE md5(current_schema()) END"""

_PG_SCHEMA_LOCK = 0x6C6974656A6F6273  # "litejobs": an advisory lock while tables are made
_PG_LIMITS_LOCK = 0x6C6A  # "lj": with the schema's hash, held by writes that start, park or release limited jobs


def _on_postgres(conn: Any) -> TypeGuard[_PgConnection]:
    return isinstance(conn, _PgConnection)


def _is_postgres_url(path: Any) -> bool:
    """True for a ``postgresql://`` or ``postgres://`` URL."""
    return isinstance(path, str) and path.startswith(("postgresql://", "postgres://"))


def _import_psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise StoreError("a PostgreSQL URL needs psycopg 3: pip install 'litejobs[postgres]' "
                         "(or pip install 'psycopg[binary]')") from None
    return psycopg


def _passwords(url: str) -> list[str]:
    """The passwords a URL holds: after the user name, or as ?password=."""
    parts = urllib.parse.urlsplit(url)
    found = [value for key, value in urllib.parse.parse_qsl(parts.query) if key == "password" and value]
    return ([parts.password] if parts.password else []) + found


def _redacted(url: str) -> str:
    """The URL with every password replaced by ***: for logs and errors."""
    for password in _passwords(url):
        url = url.replace(":" + urllib.parse.quote(password, safe="") + "@", ":***@")
        url = url.replace(":" + password + "@", ":***@")
        url = re.sub(r"([?&]password=)[^&]*", r"\1***", url)
    return url


class _ServerClock:
    """The database server's time, read off this host's monotonic clock.

    Measured when a connection opens and again every _SERVER_CLOCK_CHECK
    seconds: a read of the server's clock costs a round trip, which every
    enqueue and claim would otherwise pay.  The error is half a round trip.
    """

    def __init__(self) -> None:
        self.offset = 0.0
        self.measured_at: float | None = None

    def __call__(self) -> float:
        return time.monotonic() + self.offset

    def measure(self, conn: Any) -> None:
        before = time.monotonic()
        server_time = conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()[0]
        after = time.monotonic()
        self.offset = server_time - (before + after) / 2
        self.measured_at = after

    def stale(self) -> bool:
        return self.measured_at is None or time.monotonic() - self.measured_at > _SERVER_CLOCK_CHECK


_SERVER_CLOCK_CHECK = 30.0


class _PgConnection:
    """A psycopg connection that speaks what the store's functions use of
    sqlite3's: ``execute`` (with ``?`` and ``?N`` placeholders) and
    ``executemany``.  It opens the connection again after one was lost."""

    def __init__(self, url: str, *, read_only: bool = False, clock: _ServerClock | None = None) -> None:
        self.psycopg = _import_psycopg()
        self.url = url
        self.path = _redacted(url)
        self.read_only = read_only
        self.server_clock = clock
        self.channel = "litejobs"
        self._conn: Any = None
        self.closed = False
        self.connect()

    @staticmethod
    def borrowing(conn: Any) -> tuple[_PgConnection, float]:
        """Wrap a caller's open psycopg connection, as it is (its transaction
        stays the caller's, its rows come as tuples whatever its row
        factory); and the server's time."""
        wrapper = _PgConnection.__new__(_PgConnection)
        wrapper.psycopg = sys.modules["psycopg"]
        wrapper.url = wrapper.path = "the caller's connection"
        wrapper.read_only, wrapper.server_clock, wrapper.closed = False, None, False
        wrapper._conn = _TupleRows(conn, wrapper.psycopg.rows.tuple_row)
        now, wrapper.channel = wrapper.execute(_PG_NOW_AND_CHANNEL).fetchone()
        return wrapper, now

    def connect(self) -> None:
        try:
            self._conn = self.psycopg.connect(self.url, **_pg_options(self.psycopg, self.url, "litejobs"))
            if self.read_only:
                self._conn.execute("SET default_transaction_read_only = on")
            self.channel = _pg_channel(self._conn)
            if self.server_clock is not None:
                self.server_clock.measure(self._conn)
        except self.psycopg.Error as exc:
            self._conn = None
            raise self.error(exc) from None

    def error(self, exc: BaseException) -> StoreError:
        """A StoreError naming the database, its password never shown."""
        text = _first_line(exc)
        for password in _passwords(self.url) if "://" in self.url else []:
            text = text.replace(password, "***")
        return StoreError(f"{self.path}: {text}")

    @property
    def pid(self) -> int | None:
        """The server process of this connection, whose own notices its
        listener ignores.  Read from the listener's thread, while this
        connection may be closing or opening again on its own."""
        conn = self._conn
        try:
            return None if conn is None else conn.info.backend_pid
        except Exception:
            return None

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = (), *, prepare: bool | None = None) -> Any:
        if not params or "%(" in sql or "%s" in sql or "%b" in sql:  # PostgreSQL's own, or none to bind
            return self._conn.execute(sql, params or None, prepare=prepare)
        translated, order = _pyformat(sql)
        if order is not None:
            params = [cast(Sequence[Any], params)[i] for i in order]
        return self._conn.execute(translated, params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        rows = list(rows)
        if rows:
            translated, order = _pyformat(sql)
            if order is not None:
                rows = [[row[i] for i in order] for row in rows]
            self._conn.cursor().executemany(translated, rows)

    def notify(self) -> None:
        """Wake listening workers of every host once this transaction commits."""
        self._conn.execute("SELECT pg_notify(%s, '')", (self.channel,))

    def run(self, fn: Callable, *args: Any, write: bool = False) -> Any:
        """``fn(self, *args)``, in one transaction when ``write``.  A lost
        connection is a StoreError now, and the next call opens a new one."""
        if self.closed:
            raise StoreError(f"the store for {self.path!r} is closed")
        if self._conn is None or self._conn.closed:
            self.connect()
        if self.server_clock is not None and self.server_clock.stale():
            try:
                self.server_clock.measure(self._conn)
            except self.psycopg.Error as exc:
                self._lost()
                raise self.error(exc) from None
        try:
            if not write or _one_statement(fn, args):
                return fn(self, *args)
            with self._conn.transaction():
                return fn(self, *args)
        except (self.psycopg.OperationalError, self.psycopg.InterfaceError) as exc:
            if self._conn.closed or self._conn.broken:
                self._lost()
                raise self.error(exc) from None
            raise self.error(exc) from exc
        except self.psycopg.Error as exc:
            raise self.error(exc) from exc

    def _lost(self) -> None:
        with contextlib.suppress(Exception):
            self._conn.close()
        self._conn = None

    def close(self) -> None:
        self.closed = True
        if self._conn is not None:
            self._conn.close()


@functools.lru_cache(maxsize=256)
def _pyformat(sql: str) -> tuple[str, tuple[int, ...] | None]:
    """sqlite3's ``?`` and ``?N`` placeholders as psycopg's ``%s``, and
    which parameter each ``%s`` takes (None: in order)."""
    order: list[int] = []
    plain = []

    def placeholder(match: re.Match) -> str:
        if match.group(1):
            order.append(int(match.group(1)) - 1)
        else:
            plain.append(match)
        return "%s"

    translated = re.sub(r"\?(\d*)", placeholder, sql.replace("%", "%%"))
    if order and plain:
        raise ValueError(f"a statement mixes ? and ?N placeholders: {sql}")
    return translated, (tuple(order) if order else None)


def _first_line(exc: BaseException) -> str:
    """libpq's messages run over several lines; the first says what happened."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _pg_options(psycopg: Any, url: str, application_name: str) -> dict[str, Any]:
    """Connection options the URL does not set itself.  A cut network shows
    as a dead connection within half a minute, not the operating system's
    quarter of an hour."""
    given = psycopg.conninfo.conninfo_to_dict(url)
    defaults = {"application_name": application_name, "connect_timeout": 10, "keepalives": 1,
                "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}
    return {"autocommit": True, **{key: value for key, value in defaults.items() if key not in given}}


def _one_statement(fn: Callable, args: tuple) -> bool:
    """A write PostgreSQL does in one statement, atomic on its own: it goes
    without BEGIN and COMMIT, one round trip instead of three."""
    return fn is _insert_jobs and all(row.unique_key is None for row in args[0])


def _pg_channel(conn: Any) -> str:
    """The channel of the connection's schema: apps sharing a database in
    different schemas do not wake each other's workers."""
    return conn.execute(_PG_NOW_AND_CHANNEL).fetchone()[1]


class _TupleRows:
    """A caller's psycopg connection whose statements answer tuples, as the
    store's functions expect, whatever row factory the caller chose."""

    def __init__(self, conn: Any, tuple_row: Any) -> None:
        self._conn, self._tuple_row = conn, tuple_row

    def execute(self, sql: str, params: Any = None, **options: Any) -> Any:
        return self._conn.cursor(row_factory=self._tuple_row).execute(sql, params, **options)

    def cursor(self) -> Any:
        return self._conn.cursor(row_factory=self._tuple_row)


def _open_pg_schema(conn: _PgConnection, path: str, synchronous: str, create: bool = True,
                    migrate: bool = True) -> None:
    """The tables, made once under an advisory lock (two hosts starting at
    once would race to make them).  With ``create`` false nothing is written."""
    def tables() -> set[str]:
        return {row[0] for row in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() AND tablename LIKE 'litejobs%'")}

    found = tables()
    if "litejobs_meta" not in found and found:
        raise StoreError(f"{path} has litejobs_ tables that litejobs did not create; not touching them")
    if "litejobs_meta" in found:
        row = conn.execute("SELECT value FROM litejobs_meta WHERE key = 'schema_version'").fetchone()
        if row is None or not str(row[0]).isdigit():
            raise StoreError(f"{path}: litejobs_meta has no valid schema_version (was it edited by hand?)")
        _refuse_newer_schema(path, int(row[0]))
        if int(row[0]) < _SCHEMA_VERSION and not migrate:
            raise _older_schema(path, int(row[0]))
        if int(row[0]) == _SCHEMA_VERSION:
            return
    elif not create:
        raise StoreError(f"{path}: not a litejobs database (it has no litejobs tables)")

    def create_tables(conn: _PgConnection) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_SCHEMA_LOCK,))
        for statement in _PG_DDL:
            conn.execute(statement)
        # Every version so far added tables, indexes and columns, which the
        # DDL makes where they are missing.
        conn.execute("""INSERT INTO litejobs_meta (key, value) VALUES ('schema_version', %s)
                        ON CONFLICT (key) DO UPDATE SET value = excluded.value""", (str(_SCHEMA_VERSION),))

    conn.run(create_tables, write=True)


def _pg_insert_arguments(rows: Sequence[NewJob], now: float, channel: str) -> tuple:
    """_PG_INSERT_JOBS's arguments: one array per column, the time, the channel."""
    columns = [list(column) for column in zip(*(row._row(now) for row in rows), strict=True)]
    del columns[10]  # created_at: one value for all
    return (*columns, now, channel)


def _pg_insert_jobs(conn: _PgConnection, rows: Sequence[NewJob], now: float) -> list[tuple[int, bool]]:
    if len(rows) == 1 and rows[0].unique_key is None:
        return [(conn.execute(_PG_INSERT_ONE, (*rows[0]._row(now), conn.channel)).fetchone()[0], True)]
    if all(row.unique_key is None for row in rows):
        return [(job_id, True) for job_id, in conn.execute(_PG_INSERT_JOBS, _pg_insert_arguments(rows, now,
                                                                                                  conn.channel))]
    ids = []
    for row in rows:
        while True:
            inserted = conn.execute(_PG_INSERT_UNIQUE, row._row(now)).fetchone()
            if inserted is not None:
                ids.append((inserted[0], True))
                break
            existing = conn.execute(_PG_FIND_UNIQUE, (row.unique_key,)).fetchone()
            if existing is not None:  # else it finished just now: try again
                ids.append((existing[0], False))
                break
    conn.notify()
    return ids


async def _pg_insert_jobs_async(conn: Any, rows: Sequence[NewJob]) -> list[tuple[int, bool]]:
    """_pg_insert_jobs on a caller's psycopg AsyncConnection."""
    async def one(sql: str, params: Any = None) -> Any:
        cursor = conn.cursor(row_factory=sys.modules["psycopg"].rows.tuple_row)
        return await (await cursor.execute(sql, params)).fetchone()

    now, channel = await one(_PG_NOW_AND_CHANNEL)
    if len(rows) == 1 and rows[0].unique_key is None:
        return [((await one(_PG_INSERT_ONE, (*rows[0]._row(now), channel)))[0], True)]
    ids = []
    for row in rows:
        while True:
            inserted = await one(_PG_INSERT_UNIQUE, row._row(now))
            if inserted is not None:
                ids.append((inserted[0], True))
                break
            existing = await one(_PG_FIND_UNIQUE, (row.unique_key,))
            if existing is not None:
                ids.append((existing[0], False))
                break
    await one("SELECT pg_notify(%s, '')", (channel,))
    return ids


class _PgThread:
    """A _PgConnection with a thread of its own, for the async Store: its
    calls run there one at a time, in order, as aiosqlite runs SQLite's.
    It answers to the two names the Store uses of aiosqlite's connection."""

    def __init__(self, conn: _PgConnection) -> None:
        import concurrent.futures

        self.conn = conn
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="litejobs-postgres")

    @property
    def _conn(self) -> _PgConnection:
        if self.conn.closed:
            raise ValueError("closed")
        return self.conn

    async def _execute(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, functools.partial(fn, *args, **kwargs))

    async def close(self) -> None:
        try:
            await self._execute(self.conn.close)
        finally:
            self._executor.shutdown(wait=False)


def _listen(url: str, channel: str, stop: threading.Event, wake: Callable[[], bool],
            own_pid: Callable[[], int | None]) -> None:
    """LISTEN on a connection of its own, and wake the loop at each notice
    from another connection (the store's own writes wake its workers
    already).  A lost connection is made again with backoff, and the loop
    woken after, since notices may have been missed meanwhile."""
    psycopg = _import_psycopg()
    pause = 0.1
    while not stop.is_set():
        try:
            with psycopg.connect(url, **_pg_options(psycopg, url, "litejobs-listen")) as conn:
                conn.execute(f"LISTEN {psycopg.sql.Identifier(channel).as_string(conn)}")
                pause = 0.1
                if not wake():
                    return
                while not stop.is_set():
                    # One notice at a time, so the loop is woken at the first;
                    # the timeout lets the thread see ``stop``.
                    for notice in conn.notifies(timeout=1.0, stop_after=1):
                        if notice.pid != own_pid() and not wake():
                            return
                    time.sleep(_NOTICE_GAP)  # a burst of notices wakes the loop once a millisecond at most
        except psycopg.Error as exc:
            if stop.is_set():  # the store closed, or its database went away with it
                return
            logger.warning("listening for new jobs on %s failed, trying again in %.1fs: %s",
                           _redacted(url), pause, _first_line(exc))
            stop.wait(pause)
            pause = min(pause * 2, 5.0)


# --------------------------------------------------------------------------
# Enqueueing inside your own transaction
# --------------------------------------------------------------------------


def enqueue_in(conn: Any, job: Job | NewJob, **options: Any) -> Any:
    """Write ``job`` with your own open connection, inside your own
    transaction, without committing: the job exists if and only if your
    transaction commits, and workers wake once it does.  Returns its id.

    ``conn`` is a ``sqlite3.Connection`` on the job database, or a psycopg 3
    connection to the PostgreSQL one; with a psycopg ``AsyncConnection``,
    await the call.  Options are those of ``new_job``.
    """
    rows = _new_jobs([job], options)
    module = type(conn).__module__.split(".")[0]
    if isinstance(conn, sqlite3.Connection):
        cursor = conn.cursor()
        cursor.row_factory = None  # tuples, whatever the caller's connection makes
        try:
            return _insert_jobs(cast(sqlite3.Connection, cursor), rows, time.time)[0][0]
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                raise StoreError("enqueue_in: this connection's database has no litejobs tables: open it "
                                 "once with litejobs.connect() first") from None
            raise StoreError(f"enqueue_in: {exc}") from exc
    if module == "psycopg" and inspect.iscoroutinefunction(getattr(conn, "execute", None)):
        return _enqueue_in_async(conn, rows)
    if module == "psycopg":
        psycopg = _import_psycopg()
        try:
            wrapper, now = _PgConnection.borrowing(conn)
            return _pg_insert_jobs(wrapper, rows, now)[0][0]
        except psycopg.Error as exc:
            raise _enqueue_in_error(psycopg, exc) from None
    raise TypeError(f"enqueue_in needs a sqlite3.Connection or a psycopg connection, got {type(conn).__name__}")


async def _enqueue_in_async(conn: Any, rows: list[NewJob]) -> int:
    psycopg = _import_psycopg()
    try:
        return (await _pg_insert_jobs_async(conn, rows))[0][0]
    except psycopg.Error as exc:
        raise _enqueue_in_error(psycopg, exc) from None


def _enqueue_in_error(psycopg: Any, exc: BaseException) -> StoreError:
    if isinstance(exc, psycopg.errors.UndefinedTable):
        return StoreError("enqueue_in: this connection's database has no litejobs tables: open it "
                          "once with litejobs.connect() first")
    return StoreError(f"enqueue_in: {_first_line(exc)}")


# --------------------------------------------------------------------------
# The worker
# --------------------------------------------------------------------------


class _Attempt:
    """One claimed job running in this worker (slots: one is made per job)."""

    __slots__ = ("claimed", "job", "store", "started", "in_thread", "task", "timer", "settled", "stopping",
                 "report", "given_up")

    def __init__(self, claimed: _Claimed, job: Job, store: Store, in_thread: bool,
                 report: Callable[[_Attempt, float, str | None], None]) -> None:
        self.report = report
        self.claimed = claimed
        self.job = job
        self.store = store
        self.started = time.monotonic()
        self.in_thread = in_thread  # a ``def run``: its thread cannot be cancelled
        self.task: asyncio.Task  # set by Worker._start, which needs the attempt to make it
        self.timer: _TimeoutGroup | None = None
        self.settled = False  # its outcome is decided and its slot free
        self.stopping = False  # a graceful stop hands it back unspent
        # Timed out or cancelled while a job with a concurrency key: its
        # outcome, written only once its code has really stopped.
        self.given_up: _Outcome | None = None

    def context(self) -> JobContext:
        claimed = self.claimed
        return JobContext(claimed.id, claimed.name, claimed.queue, claimed.attempts, self.store,
                          functools.partial(self.report, self))

    @property
    def timeout(self) -> float:
        """Seconds the attempt may run."""
        return self.claimed.timeout_ms / 1000


class _TimeoutGroup:
    """One timer for the attempts that started together with the same TIMEOUT:
    they share a deadline, and a timer per job costs a claim's worth of time."""

    __slots__ = ("attempts", "live", "timer")

    def __init__(self) -> None:
        self.attempts: list[_Attempt] = []
        self.live = 0  # attempts not yet settled; at 0 the timer is cancelled
        self.timer: asyncio.TimerHandle | None = None


def _format_error(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()


def _earliest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


# The workers that SIGINT and SIGTERM stop, per event loop.  A loop has one
# handler per signal, so it is installed with the first worker of the loop
# and removed with the last: one Ctrl-C stops them all.
_signal_workers: dict[asyncio.AbstractEventLoop, set[Worker]] = {}
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _stop_on_signals(loop: asyncio.AbstractEventLoop, worker: Worker) -> bool:
    """Have SIGINT and SIGTERM stop ``worker``; False where signals cannot be handled."""
    if threading.current_thread() is not threading.main_thread():
        return False
    workers = _signal_workers.get(loop)
    if workers is None:
        def stop_all() -> None:  # a second signal forces the stop
            for each in list(_signal_workers.get(loop, ())):
                each.stop(force=each._planner.stopping)

        try:
            for sig in _STOP_SIGNALS:
                loop.add_signal_handler(sig, stop_all)
        except (NotImplementedError, RuntimeError):  # Windows, or a loop without signals
            for sig in _STOP_SIGNALS:
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
            return False
        workers = _signal_workers[loop] = set()
    workers.add(worker)
    return True


def _forget_signals(loop: asyncio.AbstractEventLoop, worker: Worker) -> None:
    workers = _signal_workers.get(loop, set())
    workers.discard(worker)
    if not workers and _signal_workers.pop(loop, None) is not None:
        for sig in _STOP_SIGNALS:
            loop.remove_signal_handler(sig)


def _time_left(attempt: _Attempt, mono: float) -> float:
    """Seconds until the attempt's deadline, as its row should say; an
    attempt given up but still running gets a few more each time."""
    left = attempt.timeout - (mono - attempt.started)
    return left if attempt.given_up is None else max(left, 3 * _WATCHDOG_INTERVAL)


class _Planner:
    """The worker's decisions, with no I/O: what to ask of the store in each
    round trip, what to remember from the answer, and how long to sleep.

    Every call takes the time it happens at: ``now`` on the store's clock
    (due times) and ``mono`` on the monotonic one (the worker's own
    schedule, which no wall-clock step moves).  Tests step it call by call.
    """

    def __init__(self, capacity: dict[str, int], names: Sequence[str], keep_done: float) -> None:
        self.capacity = capacity
        self.names = names
        self.keep_done = keep_done
        self.running = dict.fromkeys(capacity, 0)
        self.stopping = False
        # Queues that may hold due jobs: asked at their next free slot, and
        # forgotten only when a claim there came back with fewer than asked.
        self.to_ask: set[str] = set(capacity)
        self.check_cancels = False  # a cancellation may have been asked for
        self.next_due: float | None = None  # store clock
        self.next_housekeeping = 0.0  # monotonic, like next_compact
        self.next_compact = 0.0
        self.more_to_prune = False
        # Expired attempts of other workers, (id, lease) -> (deadline, first
        # seen): failed only once seen expired for _WATCHDOG_CONFIRM seconds.
        self.suspects: dict[tuple[int, int], tuple[float, float]] = {}
        self.clock_offset: float | None = None  # store clock - monotonic when deadlines were last right
        self.rates: dict[str, tuple[int, float]] = {}  # the names' RATE_LIMITs
        # Some names have limits, or a claim met a job with a concurrency key
        # (enqueued by a class that declares a limit this worker's lacks).
        self.limited = False


    def something_changed(self) -> None:
        """Jobs may have been enqueued, retried or cancelled: look everywhere."""
        self.to_ask.update(self.capacity)
        self.check_cancels = True

    def plan(self, now: float, mono: float, attempts: Collection[_Attempt],
             outcomes: Sequence[_Outcome]) -> _Request:
        """What to ask of the store this time round."""
        request = _Request(outcomes=outcomes, names=self.names, rates=self.rates, limited=self.limited)
        housekeeping = mono >= self.next_housekeeping
        if housekeeping:
            self.next_housekeeping = mono + _WATCHDOG_INTERVAL
        if not self.stopping:
            if housekeeping:
                # Once a second every queue is looked at, whatever this
                # worker heard: a safety net for a missed wake-up, and the
                # only way to see jobs that were due at once when the wall
                # clock stepped back (the due-time index holds only jobs due
                # after their creation).  An empty claim writes nothing.
                self.to_ask.update(self.capacity)
                request.housekeeping = True
                request.reap = [_Expiry(job_id, lease, deadline)
                                for (job_id, lease), (deadline, seen) in self.suspects.items()
                                if mono - seen >= _WATCHDOG_CONFIRM]
            if self.next_due is not None and now >= self.next_due:
                self.to_ask.update(self.capacity)
                self.next_due = None
            for queue in self.to_ask:
                free = self.capacity[queue] - self.running[queue]
                if free > 0:
                    request.wants[queue] = free
            if housekeeping or self.more_to_prune:
                request.prune_before = now - self.keep_done
            if mono >= self.next_compact:
                self.next_compact = mono + 6 * 3600
                request.compact = True
        # The wall clock stepped (or an injected one moved): say again, in
        # its new time, when each running attempt runs out, so that no
        # watchdog takes a live attempt for a dead one.
        offset = now - mono
        if not attempts:
            self.clock_offset = offset
        elif self.clock_offset is None or abs(offset - self.clock_offset) > _CLOCK_STEP:
            request.renew = [(a.claimed.id, a.claimed.lease, _time_left(a, mono)) for a in attempts]
            self.clock_offset = offset
        elif housekeeping:
            # Attempts given up whose code still runs keep their row, and
            # their key's slot, until it stops: no watchdog may take them.
            request.renew = [(a.claimed.id, a.claimed.lease, _time_left(a, mono))
                             for a in attempts if a.given_up is not None]
        request.look_for_cancels = self.check_cancels and bool(attempts)
        self.check_cancels = False
        return request

    def failed(self, request: _Request) -> None:
        """Nothing of ``request`` was written: ask for all of it again."""
        self.to_ask.update(request.wants)
        self.check_cancels |= request.look_for_cancels
        if request.renew:
            self.clock_offset = None
        if request.housekeeping:
            self.next_housekeeping = 0.0

    def took(self, request: _Request, answer: _Exchange, mono: float, attempts: Collection[_Attempt]) -> None:
        """Remember what the store answered to ``request``."""
        # The store's next_due only sees jobs due later than its now.  A due
        # time known here stays known unless this trip claimed in every
        # queue: a trip that reached the store late must not erase it.
        known = None if len(request.wants) == len(self.capacity) else self.next_due
        self.next_due = _earliest(known, answer.next_due)
        for outcome in answer.written:
            if outcome.state == "pending" and outcome.delay is not None:  # a retry, maybe due before next_due
                self.next_due = _earliest(self.next_due, answer.now + outcome.delay)
        self.more_to_prune = answer.more_to_prune
        for queue, claimed in answer.claimed.items():
            # Jobs parked for want of a free slot took room in the claim:
            # the jobs behind them may still be claimed.
            if len(claimed) + answer.parked.get(queue, 0) < request.wants[queue]:
                self.to_ask.discard(queue)
            self.limited |= any(job.concurrency_key is not None for job in claimed)
        self.limited |= bool(answer.parked)
        if answer.released:  # jobs that waited for a free slot, in queues this worker may serve
            self.to_ask.update(self.capacity)
        for _job_id, _name, queue in answer.enqueued:  # recurring ticks, due now
            if queue in self.capacity:
                self.to_ask.add(queue)
        if request.housekeeping:
            own = {(a.claimed.id, a.claimed.lease) for a in attempts}
            suspects = {}
            for job_id, lease, deadline in answer.expired:
                if (job_id, lease) not in own:
                    seen_deadline, seen = self.suspects.get((job_id, lease), (None, mono))
                    suspects[job_id, lease] = (deadline, seen if seen_deadline == deadline else mono)
            self.suspects = suspects

    def go_again(self) -> bool:
        """True when another round trip is worth making before any sleep."""
        return self.more_to_prune or not self.stopping and any(
            self.running[queue] < self.capacity[queue] for queue in self.to_ask)

    def sleep_for(self, now: float, mono: float) -> float:
        """Seconds to sleep, unless woken: until housekeeping or the next due time."""
        timeout = max(self.next_housekeeping - mono, 0.0)
        if self.next_due is not None and not self.stopping:
            timeout = min(timeout, max(self.next_due - now, 0.0))
        return timeout


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
        poll_interval: float = 0.015,
        shutdown_timeout: float = 10.0,
    ) -> None:
        self.store = store
        # The worker uses only what the _WorkerStore protocol names; the type
        # checker holds it to that.
        self._store: _WorkerStore = store
        self._registry: dict[str, type[Job]] = {}
        for cls in jobs:
            cls = _check_runnable(cls)
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
        self._has_span = {name: cls.span is not Job.span for name, cls in self._registry.items()}
        per_queue = 4
        if isinstance(concurrency, int) and not isinstance(concurrency, bool):
            per_queue, concurrency = concurrency, {}
        elif concurrency is None:
            concurrency = {}
        elif not isinstance(concurrency, dict):
            raise TypeError(f"concurrency must be an int or a dict of queue -> int, got {concurrency!r}")
        if isinstance(queues, str):
            raise TypeError(f"queues must be a list of queue names, not the str {queues!r}")
        served = {cls.QUEUE for cls in self._registry.values()} | set(queues) | set(concurrency)
        self._capacity = {queue: concurrency.get(queue, per_queue) for queue in sorted(served)}
        for queue, slots in self._capacity.items():
            if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
                raise ValueError(f"concurrency for queue {queue!r} must be an int >= 1, got {slots!r}")
        self.poll_interval = _seconds(poll_interval, "poll_interval")
        if self.poll_interval <= 0:
            raise ValueError("poll_interval must be more than 0 seconds")
        self.shutdown_timeout = _seconds(shutdown_timeout, "shutdown_timeout")
        self._state_source = state
        self.state: Any = None
        self._id = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._planner = _Planner(self._capacity, self._names, store.keep_done)
        self._planner.rates = {name: (cls.RATE_LIMIT[0], float(cls.RATE_LIMIT[1]))
                               for name, cls in self._registry.items() if cls.RATE_LIMIT is not None}
        self._planner.limited = bool(self._planner.rates) or any(
            cls.CONCURRENCY_LIMIT is not None for cls in self._registry.values())
        # A set, not a dict by id: after the watchdog takes a job away from a
        # frozen attempt, this worker may claim the same job again.
        self._attempts: set[_Attempt] = set()
        self._outcomes: list[_Outcome] = []  # decided, not yet written
        self._progress: dict[tuple[int, int], tuple[float, str | None, int, int]] = {}  # latest, not yet written
        self._in_flight: tuple[_Request, asyncio.Future] | None = None
        self._forced = False  # stop(force=True): hand everything back now
        self._waiter: asyncio.Future | None = None
        self._woken = False
        self._task: asyncio.Task | None = None
        self._loop = cast(asyncio.AbstractEventLoop, None)  # set by run()
        self.claims = 0  # round trips that asked the store for jobs; tests watch it

    # -- lifecycle ---------------------------------------------------------

    def stop(self, *, force: bool = False) -> None:
        """Stop claiming, let running jobs finish (up to shutdown_timeout), then return.

        ``force=True`` (and a second SIGINT or SIGTERM) stops at once: every
        running job is handed back to pending unspent, ``def run`` jobs too,
        whose threads cannot be stopped: such a job may still finish its
        work, and run again elsewhere.
        """
        self._forced |= force
        self._planner.stopping = True
        self._wakeup()

    async def __aenter__(self) -> Worker:
        self._task = asyncio.ensure_future(self.run(handle_signals=False))
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        self.stop()
        if self._task is not None:
            await self._task

    async def run(self, *, handle_signals: bool = True) -> None:
        """Serve jobs until ``stop()``, SIGINT or SIGTERM, then stop gracefully."""
        loop = self._loop = asyncio.get_running_loop()
        self.state = await self._make_state()
        unsubscribe = self._store.subscribe(self._notify, self.poll_interval)
        signals = False
        try:
            await self._store.register_worker(self._id, self._names)
            # Only once the start succeeded: a worker that failed to start
            # must not leave the process deaf to Ctrl-C.
            signals = handle_signals and _stop_on_signals(loop, self)
            logger.info("worker started on %s: queues %s, jobs %s", self._store.path, self._capacity, self._names)
            try:
                await self._serve()
            except asyncio.CancelledError:
                # run() itself was cancelled: hand back what runs and record what
                # finished, so that nothing waits for the watchdog.
                await asyncio.shield(self._hand_back_all())
                raise
        finally:
            unsubscribe()
            if signals:
                _forget_signals(loop, self)
            for attempt in self._attempts:  # only after an error: nothing can record them now
                attempt.task.cancel()
            try:
                await asyncio.shield(self._store.unregister_worker(self._id))
            except (StoreError, asyncio.CancelledError):
                pass
            self._planner.stopping = self._forced = False
            logger.info("worker stopped")

    async def _make_state(self) -> Any:
        source = self._state_source
        if not callable(source):
            return source
        state = source(self.store)
        return await state if inspect.isawaitable(state) else state

    def _wakeup(self) -> None:
        self._woken = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(True)

    async def _sleep(self, timeout: float) -> None:
        """Sleep until woken or ``timeout`` seconds pass.

        A future and a timer, not wait_for: this runs every time an idle
        worker wakes, and should cost next to nothing.
        """
        if not self._woken:
            self._waiter = waiter = self._loop.create_future()
            timer = self._loop.call_later(timeout, _set_future, waiter, False, None)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        self._woken = False

    def _notify(self) -> None:
        """The store says jobs may have changed: look now."""
        self._planner.something_changed()
        self._wakeup()

    # -- the loop: one round trip to the store at a time -------------------

    async def _serve(self) -> None:
        planner, store, loop = self._planner, self._store, self._loop
        stop_deadline: float | None = None
        failures = 0
        while True:
            if planner.stopping:
                if stop_deadline is None:
                    stop_deadline = loop.time() + self.shutdown_timeout
                    logger.info("stopping: waiting for %d running job(s)", len(self._attempts))
                if self._attempts and (self._forced or loop.time() >= stop_deadline):
                    await self._abandon_running(threads_too=self._forced)
                if not self._attempts and not self._outcomes:
                    return
            outcomes, self._outcomes = self._outcomes, []
            request = planner.plan(store.clock(), time.monotonic(), self._attempts, outcomes)
            if self._progress and not request.asks_nothing():  # housekeeping asks once a second at least
                request.progress, self._progress = list(self._progress.values()), {}
            if not request.asks_nothing():
                self.claims += bool(request.wants)
                try:
                    answer = await self._round_trip(request)
                except Exception as exc:
                    self._in_flight = None
                    self._outcomes[:0] = outcomes  # nothing was written: ask again
                    for report in request.progress:  # unless a newer report came meanwhile
                        self._progress.setdefault((report[2], report[3]), report)
                    planner.failed(request)
                    failures += 1
                    if self._give_up(exc, failures, stop_deadline):
                        return
                    await asyncio.sleep(min(0.05 * 2**failures, 2.0))
                    continue
                failures = 0
                planner.took(request, answer, time.monotonic(), self._attempts)
                self._carry_out(answer)
                if self._outcomes or planner.go_again():
                    await asyncio.sleep(0)  # let finished jobs report, then go again
                    continue
            timeout = planner.sleep_for(store.clock(), time.monotonic())
            if stop_deadline is not None and stop_deadline > loop.time():
                timeout = min(timeout, stop_deadline - loop.time())
            await self._sleep(timeout)

    async def _round_trip(self, request: _Request) -> _Exchange:
        """The store's answer to ``request``.  Shielded: if run() is cancelled
        meanwhile, the trip still ends, and _hand_back_all hands back what it
        claimed instead of leaving those jobs running for the watchdog."""
        trip = asyncio.ensure_future(self._store.exchange(request))
        self._in_flight = (request, trip)
        answer = await asyncio.shield(trip)  # raising, it leaves _in_flight for _hand_back_all
        self._in_flight = None
        return answer

    def _give_up(self, exc: Exception, failures: int, stop_deadline: float | None) -> bool:
        """A round trip failed; nothing was written.  Raise if it never can
        succeed, True to stop trying, False to try again (fencing makes a
        late write harmless, so nothing is lost by waiting)."""
        if self._store.closed:
            raise StoreError(f"the store for {self._store.path!r} was closed while its worker ran: "
                             "stop the worker first, then close the store") from None
        if stop_deadline is not None and self._loop.time() >= stop_deadline and failures >= 3:
            logger.error("giving up on recording %d outcome(s) while stopping: %s; the watchdog "
                         "will retry those jobs", len(self._outcomes), exc)
            self._outcomes.clear()
            return True
        if isinstance(exc, StoreError):
            logger.warning("store round trip failed (try %d), retrying: %s", failures, exc)
        else:  # a bug of ours: say all there is, but keep serving
            logger.exception("store round trip failed (try %d), retrying", failures)
        return False

    def _carry_out(self, answer: _Exchange) -> None:
        """Do what the answer says: report, stop cancelled jobs, start claimed ones."""
        emit = self._store.emit
        for job_id, name, queue in answer.enqueued:
            emit(Event(EventKind.ENQUEUE, job_id, name, queue))
        for outcome in answer.written:
            self._emit_outcome(outcome)
        if answer.cancels:
            asked = set(answer.cancels)
            for attempt in list(self._attempts):
                if (attempt.claimed.id, attempt.claimed.lease) in asked:
                    self._cancel_attempt(attempt)
        groups: dict[int, _TimeoutGroup] = {}
        for claimed in answer.claimed.values():
            for job in claimed:
                group = groups.get(job.timeout_ms)
                if group is None:
                    group = groups[job.timeout_ms] = _TimeoutGroup()
                self._start(job, group)
        for timeout_ms, group in groups.items():
            if group.live:
                group.timer = self._loop.call_later(timeout_ms / 1000, self._group_timed_out, group)

    # -- running one attempt -----------------------------------------------

    def _start(self, claimed: _Claimed, group: _TimeoutGroup) -> None:
        cls = self._registry[claimed.name]
        try:
            job = cls.from_payload(orjson.loads(claimed.payload))
            if not isinstance(job, cls):
                raise TypeError(f"from_payload() returned {type(job).__name__}, not {cls.__name__}")
        except Exception as exc:
            # It can never succeed, so retrying would only repeat the error.
            error = (f"cannot decode the payload of job {claimed.name!r} (id {claimed.id}): "
                     f"{type(exc).__name__}: {exc}")
            logger.error("%s", error)
            self._record(_failure_outcome(claimed, error, "failure", dead_now=True))
            return
        attempt = _Attempt(claimed, job, self.store, self._sync_run[claimed.name], self._report_progress)
        self._planner.running[claimed.queue] += 1
        self._attempts.add(attempt)
        if self._store.listening:
            self._store.emit(Event(EventKind.START, claimed.id, claimed.name, claimed.queue, claimed.attempts))
        attempt.task = task = self._loop.create_task(self._call_run(attempt))
        task.add_done_callback(functools.partial(self._finished, attempt))
        attempt.timer = group
        group.attempts.append(attempt)
        group.live += 1

    def _report_progress(self, attempt: _Attempt, fraction: float, note: str | None) -> None:
        """Keep the attempt's latest report for the next round trip."""
        if attempt.settled:
            return
        job = attempt.claimed
        self._progress[job.id, job.lease] = (fraction, note, job.id, job.lease)
        if self._store.listening:
            self._store.emit(Event(EventKind.PROGRESS, job.id, job.name, job.queue, job.attempts,
                                   progress=fraction, note=note))

    async def _call_run(self, attempt: _Attempt) -> Any:
        _current_job.set(attempt)
        job, name = attempt.job, attempt.claimed.name
        span = job.span() if self._has_span[name] else None
        if span is None:
            if not attempt.in_thread:  # the common case, one coroutine frame fewer
                return await job.run(self.state)
            return await self._call_run_bare(attempt)
        if hasattr(span, "__aenter__"):
            async with span:
                return await self._call_run_bare(attempt)
        with span:
            return await self._call_run_bare(attempt)

    async def _call_run_bare(self, attempt: _Attempt) -> Any:
        if not attempt.in_thread:
            return await attempt.job.run(self.state)
        # A job with a concurrency key holds its slot until its thread ends.
        result = await self._run_in_thread(attempt.job.run, self.state,
                                           outlive=attempt.claimed.concurrency_key is None)
        return await result if inspect.isawaitable(result) else result

    @staticmethod
    async def _run_in_thread(fn: Callable, *args: Any, outlive: bool = True) -> Any:
        """Run a plain ``def run`` in a thread of its own.

        Not a pool: a job stuck past its timeout keeps its thread, and in a
        pool it would hold up the jobs queued behind it.  The thread is a
        daemon, so a stuck one never keeps the process from exiting.  When
        cancelled, the task ends at once (``outlive``), or once the thread does.
        """
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        context = contextvars.copy_context()

        def target() -> None:
            result, error = None, None
            try:
                result = context.run(fn, *args)
            except BaseException as exc:  # handed to the awaiting task
                error = exc
            try:
                loop.call_soon_threadsafe(_set_future, future, result, error)
            except RuntimeError:  # the loop closed while the job ran
                pass

        threading.Thread(target=target, name="litejobs-sync-job", daemon=True).start()
        if outlive:
            return await future
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            with contextlib.suppress(BaseException):
                await future  # until the thread ends (a second cancel, a forced stop, ends this wait)
            raise

    def _settle(self, attempt: _Attempt) -> bool:
        """Mark the attempt decided, once; frees its slot for the next claim."""
        if attempt.settled:
            return False
        attempt.settled = True
        group = attempt.timer
        if group is not None:
            group.live -= 1
            if group.live == 0 and group.timer is not None:
                group.timer.cancel()
        self._planner.running[attempt.claimed.queue] -= 1
        self._attempts.discard(attempt)
        return True

    def _finished(self, attempt: _Attempt, task: asyncio.Task) -> None:
        claimed = attempt.claimed
        if attempt.given_up is not None and self._settle(attempt):
            self._record(attempt.given_up)  # its code stopped at last: now its key's slot frees
            return
        if not self._settle(attempt):
            if not task.cancelled() and task.exception() is not None:
                logger.debug("job %s ended after its attempt was given up: %r", claimed.id, task.exception())
            return
        duration = time.monotonic() - attempt.started
        error = None if task.cancelled() else task.exception()
        if task.cancelled():
            if attempt.stopping:
                outcome = claimed.outcome("pending", "requeue", uncount=1)
            else:
                outcome = _failure_outcome(claimed, "CancelledError: the job's task was cancelled",
                                           "failure", duration=duration)
        elif duration > attempt.timeout:
            # It blocked the event loop past its TIMEOUT, so the timer could
            # not fire first; it still broke its limit.
            timeout_error = (f"TimeoutError: job {claimed.name!r} (id {claimed.id}) exceeded its timeout of "
                             f"{claimed.timeout_ms} ms (it ran {duration * 1000:.0f} ms, blocking the event loop)")
            outcome = _failure_outcome(claimed, timeout_error, "timeout", duration=duration)
        elif error is None:
            outcome = claimed.outcome("done", "success", duration=duration)
            result = task.result()
            if result is not None:
                try:
                    outcome.result = orjson.dumps(result).decode()
                except TypeError as exc:
                    outcome.error = f"the job succeeded, but its result could not be stored: {exc}"
        else:
            outcome = _failure_outcome(
                claimed, _format_error(error), "failure", duration=duration,
                dead_now=isinstance(error, Abort),
                requested_delay=error.delay if isinstance(error, Retry) else None)
        self._record(outcome)

    def _group_timed_out(self, group: _TimeoutGroup) -> None:
        for attempt in group.attempts:
            if not attempt.settled:
                self._timed_out(attempt)

    def _timed_out(self, attempt: _Attempt) -> None:
        claimed = attempt.claimed
        error = f"TimeoutError: job {claimed.name!r} (id {claimed.id}) exceeded its timeout of {claimed.timeout_ms} ms"
        if self._stop_attempt(attempt, lambda: _failure_outcome(claimed, error, "timeout",
                                                                duration=time.monotonic() - attempt.started)):
            logger.warning("%s", error)

    def _cancel_attempt(self, attempt: _Attempt) -> None:
        """``cancel(id)`` was asked for a job running here: stop it, do not retry it."""
        self._stop_attempt(attempt, lambda: attempt.claimed.outcome(
            "cancelled", "cancellation", error="CancelledError: cancelled on request",
            duration=time.monotonic() - attempt.started))

    def _stop_attempt(self, attempt: _Attempt, outcome: Callable[[], _Outcome]) -> bool:
        """Cancel the attempt and record ``outcome()``, without waiting: a job
        that swallows the cancellation (or runs in a thread, which cannot be
        stopped) must not hold its slot, nor keep its end from being recorded.
        Unless it has a concurrency key: then its code still uses what the
        limit protects, so its outcome waits until the code really stops, and
        meanwhile the row stays running (its deadline renewed) and counted,
        and it keeps its slot in this worker too.  Not while the worker stops:
        a stop waits for no job past its TIMEOUT."""
        if attempt.settled or attempt.given_up is not None:
            return False
        attempt.task.cancel()
        if attempt.claimed.concurrency_key is not None and not attempt.task.done() and not self._planner.stopping:
            attempt.given_up = outcome()
        elif self._settle(attempt):
            self._record(outcome())
        return True

    def _record(self, outcome: _Outcome) -> None:
        self._outcomes.append(outcome)
        self._wakeup()

    async def _abandon_running(self, threads_too: bool) -> None:
        """Shutdown timeout passed (or the stop was forced): cancel what still
        runs and hand it back unspent.

        Unless forced, a ``def run`` job is left to finish: its thread cannot
        be stopped, and handing the job back could run it twice.  Its TIMEOUT
        still bounds it, so the stop still ends.
        """
        for attempt in list(self._attempts):  # given up (past TIMEOUT) already: done waiting for them
            if attempt.given_up is not None and self._settle(attempt):
                self._record(attempt.given_up)
        if threads_too:
            attempts, threads = list(self._attempts), []
        else:
            attempts = [a for a in self._attempts if not a.stopping and not a.in_thread]
            threads = [a for a in self._attempts if not a.stopping and a.in_thread]
        for attempt in threads:
            attempt.stopping = True
        if threads:
            logger.warning("shutdown timeout: waiting for %d job(s) running in threads, which cannot be "
                           "cancelled; each stops at its TIMEOUT at the latest", len(threads))
        if not attempts:
            return
        logger.warning("shutdown timeout: returning %d running job(s) to pending", len(attempts))
        for attempt in attempts:
            attempt.stopping = True
            attempt.task.cancel()
        await asyncio.wait([a.task for a in attempts], timeout=1.0)
        for attempt in attempts:  # those that ignored the cancellation
            if self._settle(attempt):
                self._record(attempt.claimed.outcome("pending", "requeue", uncount=1))

    async def _hand_back_all(self) -> None:
        """run() was cancelled: hand back every attempt, those of a claim
        still in flight too, and record what finished."""
        if self._in_flight is not None:
            request, trip = self._in_flight
            self._in_flight = None
            try:
                await trip
            except BaseException:
                # Failed, or cancelled too (the event loop is shutting down
                # and cancels every task): the database may still be at it.
                try:
                    await self._store.settle()
                except StoreError:
                    pass
            if request.answer is None:
                self._outcomes[:0] = request.outcomes
            else:
                self._outcomes.extend(job.outcome("pending", "requeue", uncount=1)
                                      for claimed in request.answer.claimed.values() for job in claimed)
        for attempt in list(self._attempts):  # a def run job too: its outcome could never be written now
            attempt.stopping = True
            attempt.task.cancel()
            if self._settle(attempt):
                self._record(attempt.given_up or attempt.claimed.outcome("pending", "requeue", uncount=1))
        outcomes, self._outcomes = self._outcomes, []
        if outcomes:
            try:
                await self._store.exchange(_Request(outcomes=outcomes, names=self._names))
            except StoreError as exc:
                logger.error("could not record %d outcome(s) on the way out: %s", len(outcomes), exc)

    def _emit_outcome(self, outcome: _Outcome) -> None:
        if outcome.event == "requeue" or (outcome.event == "success" and not self._store.listening):
            return
        if outcome.event in ("failure", "timeout"):
            summary = (outcome.error or "").splitlines()[-1:] or [""]
            if outcome.state == "pending":
                logger.warning("job %s (%s) attempt %s failed, retrying in %.3gs: %s", outcome.job_id,
                               outcome.name, outcome.attempt, outcome.delay or 0, summary[0])
            else:
                logger.error("job %s (%s) is dead after %s attempt(s): %s", outcome.job_id, outcome.name,
                             outcome.attempt, summary[0])
        emit = self._store.emit
        base = (outcome.job_id, outcome.name, outcome.queue, outcome.attempt, outcome.duration)
        emit(Event(EventKind(outcome.event), *base, error=None if outcome.event == "success" else outcome.error))
        if outcome.event in ("failure", "timeout"):
            emit(Event(EventKind.RETRY if outcome.state == "pending" else EventKind.DEATH, *base, error=outcome.error))


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
        error = f"  ({(event.error or '').splitlines()[-1]})" if event.kind in ("failure", "timeout") else ""
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
                infos = [info for info in [await store.get(job_id) for job_id in ids] if info is not None]
                if all(info.state in (JobState.DONE, JobState.DEAD) for info in infos):
                    break
                await asyncio.sleep(0.05)
        print("What happened to each:")
        for info in infos:
            outcome = repr(info.result) if info.state is JobState.DONE else (info.last_error or "").splitlines()[-1]
            print(f"  job {info.id:<3} {info.name:<20} {info.state.value:<5} "
                  f"after {info.attempts} attempt(s): {outcome}")
    return 0


# --------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def _parse_duration(text: str) -> float:
    """'90s', '15m', '2h', '7d', '1w' or plain seconds, as seconds."""
    number, unit = (text[:-1], text[-1]) if text and text[-1] in _DURATION_UNITS else (text, "s")
    try:
        seconds = float(number) * _DURATION_UNITS[unit]
    except ValueError:
        raise ValueError(f"bad duration {text!r}: use a number with s, m, h, d or w, like 90s or 7d") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"bad duration {text!r}: it must be a positive number")
    return seconds


def _relative(when: datetime | None, now: float) -> str:
    """'3m ago', 'in 2h', 'now': a time as people read it in a table."""
    if when is None:
        return "-"
    delta = when.timestamp() - now
    seconds = abs(delta)
    if seconds < 1:
        return "now"
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            amount = f"{int(seconds // size)}{unit}"
            break
    return f"in {amount}" if delta > 0 else f"{amount} ago"


def _when(moment: datetime | None, now: float) -> str:
    """'2030-01-01T00:00:00+00:00 (in 3d)', or '-' for no time."""
    return "-" if moment is None else f"{moment.isoformat()} ({_relative(moment, now)})"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Plain aligned columns: text to the left, numbers to the right."""
    cells = [list(map(str, headers))] + [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [all(isinstance(row[i], int) for row in rows) and bool(rows) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [cell.rjust(w) if num else cell.ljust(w) for cell, w, num in zip(row, widths, numeric, strict=False)]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _percent(fraction: Any) -> str:
    if fraction is None:
        return "-"
    return f"{fraction:.0%}" if isinstance(fraction, (int, float)) else repr(fraction)  # edited by hand


def _info_as_json(info: JobInfo) -> dict:
    data = dataclasses.asdict(info)
    data.update(state=info.state.value, max_retries=info.max_retries.as_column(),
                backoff={"kind": info.backoff.kind, "value": info.backoff.value})
    for key in ("run_at", "created_at", "started_at", "finished_at"):
        data[key] = None if data[key] is None else data[key].isoformat()
    return data


def _print_json(value: Any) -> None:
    print(orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode())


def _render_stats(stats: dict[str, QueueStats]) -> str:
    if not stats:
        return "no jobs yet"
    rows = []
    for queue, s in stats.items():
        name = queue + (" (paused)" if s.paused else "")
        rows.append([name, s.pending, s.scheduled, s.running, s.done, s.dead, s.cancelled,
                     "-" if s.unregistered is None else s.unregistered,
                     f"{s.done_counts.this_hour}/{s.done_counts.today}/{s.done_counts.this_month}/{s.done_counts.all_time}",
                     f"{s.dead_counts.this_hour}/{s.dead_counts.today}/{s.dead_counts.this_month}/{s.dead_counts.all_time}"])
    headers = ["QUEUE", "PENDING", "SCHEDULED", "RUNNING", "DONE", "DEAD", "CANCELLED", "UNKNOWN",
               "DONE hour/day/month/all", "DEAD hour/day/month/all"]
    return _table(headers, rows)


def _command_stats(store: SyncStore, args: Any) -> int:
    while True:
        stats = store.stats()
        if args.json:
            _print_json({queue: dataclasses.asdict(s) for queue, s in stats.items()})
        else:
            if args.watch:
                print("\x1b[H\x1b[2J", end="")  # clear the screen, cursor home
                print(f"{store.path}  {datetime.now().strftime('%H:%M:%S')}  (Ctrl-C to stop)\n")
            print(_render_stats(stats), flush=True)
        if not args.watch:
            return 0
        time.sleep(1)


def _command_jobs(store: SyncStore, args: Any) -> int:
    infos = store.jobs(state=args.state, queue=args.queue, name=args.name, limit=args.limit, offset=args.offset)
    if args.json:
        _print_json([_info_as_json(info) for info in infos])
        return 0
    if not infos:
        print("no jobs match")
        return 0
    now = store.clock()
    rows = []
    for info in infos:
        error = info.last_error.splitlines()[-1][:70] if info.last_error else ""
        rows.append([info.id, info.name, info.queue, info.state.value, info.attempts, _percent(info.progress),
                     _relative(info.run_at, now), _relative(info.finished_at, now), error])
    print(_table(["ID", "NAME", "QUEUE", "STATE", "ATTEMPTS", "PROGRESS", "DUE", "FINISHED", "LAST ERROR"], rows))
    return 0


def _command_show(store: SyncStore, args: Any) -> int:
    info = store.get(args.id)
    if info is None:
        raise LookupError(f"no job with id {args.id}")
    if args.json:
        _print_json(_info_as_json(info))
        return 0
    now = store.clock()
    limit = info.max_retries.as_column()
    retries = "infinite" if limit is None else limit
    lines = [
        ("id", info.id), ("name", info.name), ("queue", info.queue), ("state", info.state.value),
        ("attempts", f"{info.attempts} (retries allowed: {retries})"),
        ("backoff", repr(info.backoff)), ("timeout", f"{info.timeout} ms"), ("priority", info.priority),
        ("unique_key", info.unique_key or "-"),
        ("limit", "-" if info.concurrency_key is None else
         f"key {info.concurrency_key!r}, {info.concurrency_limit} at once"
         + (" (waiting for a free slot)" if info.waiting_for_slot else "")),
        ("created", f"{info.created_at.isoformat()} ({_relative(info.created_at, now)})"),
        ("due", _when(info.run_at, now)),
        ("started", _when(info.started_at, now)),
        ("finished", _when(info.finished_at, now)),
        ("progress", _percent(info.progress) + (f" ({info.progress_note})" if info.progress_note else "")),
        ("payload", orjson.dumps(info.payload).decode()),
        ("result", "-" if info.result is None else orjson.dumps(info.result).decode()),
    ]
    width = max(len(key) for key, _ in lines)
    for key, value in lines:
        print(f"{key.ljust(width)}  {value}")
    if info.last_error:
        print(f"{'last_error'.ljust(width)}\n" + textwrap.indent(info.last_error, "    "))
    return 0


def _command_retry(store: SyncStore, args: Any) -> int:
    if args.dead:
        if args.ids:
            raise ValueError("give job ids or --dead, not both")
        print(f"{store.retry_dead(args.queue)} dead job(s) back to pending")
        return 0
    if not args.ids:
        raise ValueError("give one or more job ids, or --dead")
    for job_id in args.ids:
        if store.retry(job_id):
            print(f"job {job_id}: back to pending")
        else:
            info = store.get(job_id)
            print(f"job {job_id}: not retried, it is still {info.state.value if info else 'unknown'}")
    return 0


def _command_cancel(store: SyncStore, args: Any) -> int:
    for job_id in args.ids:
        state = store.cancel(job_id)
        if state is JobState.RUNNING:
            print(f"job {job_id}: running; its worker will cancel it")
        elif state is JobState.CANCELLED:
            print(f"job {job_id}: cancelled")
        else:
            print(f"job {job_id}: already {state.value}, left alone")
    return 0


def _command_purge(store: SyncStore, args: Any) -> int:
    deleted = store.purge(state=args.state, older_than=args.older_than)
    print(f"{deleted} {args.state} job(s) deleted")
    return 0


def _command_schedules(store: SyncStore, args: Any) -> int:
    schedules = store._run(_list_schedules)
    if args.json:
        _print_json([{"key": key, "interval": None if cron else interval, "cron": cron, "tz": tz, "name": name,
                      "queue": queue, "next_run": _datetime(next_run).isoformat()}
                     for key, interval, cron, tz, name, queue, next_run in schedules])
        return 0
    if not schedules:
        print("no schedules")
        return 0
    now = store.clock()
    rows = [[key, f"{cron} ({tz})" if cron else f"every {interval:g}s", name, queue,
             f"{_datetime(next_run).isoformat(timespec='seconds')} ({_relative(_datetime(next_run), now)})"]
            for key, interval, cron, tz, name, queue, next_run in schedules]
    print(_table(["KEY", "SCHEDULE", "JOB", "QUEUE", "NEXT RUN"], rows))
    return 0


def _command_pause(store: SyncStore, args: Any) -> int:
    changed = store.pause(args.queue)
    print(f"queue {args.queue!r}: paused" + ("" if changed else " already") + "; running jobs finish")
    return 0


def _command_resume(store: SyncStore, args: Any) -> int:
    changed = store.resume(args.queue)
    print(f"queue {args.queue!r}: " + ("resumed" if changed else "was not paused"))
    return 0


def _command_export(store: SyncStore, args: Any) -> int:
    records = store._run(_export_records)
    for record in records:
        sys.stdout.write(orjson.dumps(record).decode() + "\n")
    jobs = sum("job" in record for record in records)
    print(f"exported {jobs} job(s) and {len(records) - 1 - jobs} schedule(s)", file=sys.stderr)
    return 0


def _command_import(store: SyncStore, args: Any) -> int:
    try:
        if args.file == "-":
            records = _read_export(sys.stdin)
        else:
            with open(args.file, encoding="utf-8") as lines:
                records = _read_export(lines)
    except UnicodeDecodeError:
        raise ValueError(f"{args.file}: not a litejobs export (not UTF-8 text)") from None
    except OSError as exc:
        raise ValueError(f"{args.file}: {exc.strerror}") from None
    added, already, scheduled = store._run(_import_records, records, write=True)
    print(f"imported {added} job(s) ({already} already there) and {scheduled} new schedule(s)")
    return 0


async def _command_worker(args: Any) -> int:
    module_name, _, attr = args.target.partition(":")
    if not module_name or not attr:
        raise ValueError(f"worker needs MODULE:ATTR, like myapp.jobs:worker; got {args.target!r}")
    import importlib

    if os.getcwd() not in sys.path:  # as `python -m` would, so a local module is found
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # a missing module or one that fails while importing
        raise ValueError(f"cannot import {module_name!r}: {type(exc).__name__}: {exc}") from None
    try:
        target = getattr(module, attr)
    except AttributeError:
        raise ValueError(f"module {module_name!r} has no attribute {attr!r}") from None
    if isinstance(target, type) and issubclass(target, Job):
        raise ValueError(f"{args.target} is a Job class; give a list of Job classes (like JOBS = "
                         f"[{target.__name__}]) or a function that takes the store and returns a Worker")
    if not _is_postgres_url(args.db) and not os.path.exists(args.db):
        logger.warning("%s does not exist yet: creating an empty job database", args.db)
    async with connect(args.db) as store:
        if isinstance(target, (list, tuple)):
            options = {} if args.concurrency is None else {"concurrency": args.concurrency}
            worker = Worker(store, target, **options)
        elif callable(target):
            if args.concurrency is not None:
                raise ValueError("--concurrency applies to a list of job classes; your factory sets its own")
            worker = target(store)
            if inspect.isawaitable(worker):
                worker = await worker
            if not isinstance(worker, Worker):
                raise ValueError(f"{args.target} returned {type(worker).__name__}, not a litejobs.Worker")
        else:
            raise ValueError(f"{args.target} is a {type(target).__name__}: give a list of Job classes "
                             "or a function taking the store and returning a Worker")
        await worker.run()
    return 0


def _parser() -> Any:
    import argparse

    parser = argparse.ArgumentParser(prog="litejobs", description="Background jobs on SQLite or PostgreSQL.")
    parser.add_argument("--db", default=os.environ.get("LITEJOBS_DB", "litejobs.db"),
                        help="the database (default: $LITEJOBS_DB, else litejobs.db)")
    parser.add_argument("--version", action="version", version=f"litejobs {__version__}")
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("--json", action="store_true", help="print JSON instead of a table")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    stats = commands.add_parser("stats", parents=[output], help="counts per queue")
    stats.add_argument("--watch", action="store_true", help="redraw every second until Ctrl-C")

    jobs = commands.add_parser("jobs", parents=[output], help="list jobs, newest first")
    jobs.add_argument("--state", choices=[s.value for s in JobState])
    jobs.add_argument("--queue")
    jobs.add_argument("--name")
    jobs.add_argument("--limit", type=int, default=20)
    jobs.add_argument("--offset", type=int, default=0)

    show = commands.add_parser("show", parents=[output], help="one job in full")
    show.add_argument("id", type=int)

    retry = commands.add_parser("retry", help="put finished jobs back to pending")
    retry.add_argument("ids", type=int, nargs="*", metavar="ID")
    retry.add_argument("--dead", action="store_true", help="every dead job")
    retry.add_argument("--queue", help="with --dead: only this queue")

    cancel = commands.add_parser("cancel", help="cancel pending or running jobs")
    cancel.add_argument("ids", type=int, nargs="+", metavar="ID")

    purge = commands.add_parser("purge", help="delete finished jobs")
    purge.add_argument("--state", required=True, choices=["done", "dead", "cancelled"])
    purge.add_argument("--older-than", type=_duration_argument, default=0.0, metavar="DURATION",
                       help="like 90s, 15m, 2h, 7d (default: all)")

    commands.add_parser("schedules", parents=[output], help="recurring schedules and their next run")

    for verb, text in (("pause", "stop workers on every host from claiming a queue's jobs"),
                       ("resume", "let workers claim a paused queue's jobs again")):
        commands.add_parser(verb, help=text).add_argument("queue", metavar="QUEUE")

    commands.add_parser("export", help="write pending, scheduled and dead jobs and schedules as JSON lines")
    load = commands.add_parser("import", help="add the jobs and schedules of an export (FILE, default stdin)")
    load.add_argument("file", nargs="?", default="-", metavar="FILE")

    worker = commands.add_parser("worker", help="run a worker until Ctrl-C or SIGTERM")
    worker.add_argument("target", metavar="MODULE:ATTR",
                        help="a list of Job classes, or a function (store) -> Worker")
    worker.add_argument("--concurrency", type=int, help="slots per queue (default 4)")

    demo = commands.add_parser("demo", help="a short demo: retries, an abort and a delayed job")
    demo.add_argument("--db", dest="demo_db", default="litejobs-demo.db", help="where to write the demo's database")
    return parser


def _duration_argument(text: str) -> float:
    import argparse

    try:
        return _parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: ``python -m litejobs`` or ``litejobs``.  Returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            if os.path.exists(args.demo_db):
                with SyncStore(args.demo_db, create=False, read_only=True) as old:
                    if any(not job.name.startswith("demo.") for job in old.jobs(limit=1_000_000)):
                        raise StoreError(f"{args.demo_db} holds jobs that are not the demo's; "
                                         "give the demo a new file with --db")
                for suffix in ("", "-wal", "-shm"):  # a fresh start, every time
                    if os.path.exists(args.demo_db + suffix):
                        os.remove(args.demo_db + suffix)
            return asyncio.run(_demo(args.demo_db))
        if not _is_postgres_url(args.db):
            _refuse_uri(args.db)  # a URL of another kind is not a file name
        if args.command == "worker":
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
            return asyncio.run(_command_worker(args))
        creates = args.command == "import"  # moving up may begin with an empty store
        if not creates and not _is_postgres_url(args.db) and not os.path.exists(args.db):  # inspecting never creates
            raise StoreError(f"{args.db}: no such file (use --db PATH or set LITEJOBS_DB)")
        read_only = args.command in ("stats", "jobs", "show", "export", "schedules")
        with SyncStore(args.db, create=creates, read_only=read_only) as store:
            command = globals()[f"_command_{args.command}"]
            return command(store, args)
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # `litejobs jobs | head`: the reader has seen enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (LiteJobsError, LookupError, ValueError) as exc:
        message = exc.args[0] if isinstance(exc, LookupError) and exc.args else exc
        print(f"litejobs: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    # Under `python -m litejobs` this module is __main__; a job module that
    # imports litejobs must get this same module, or its Job classes would
    # subclass a second copy of Job.
    sys.modules.setdefault(__spec__.name if __spec__ else "litejobs", sys.modules[__name__])
    raise SystemExit(main())
