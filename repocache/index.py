"""The LRU index: one SQLite database (WAL) per cache root, shared by every process using the root.

It holds a row per repository on disk (URL, size, recency, last fetch), the last known size of repositories that
were evicted (so room is made before they are cloned again), byte reservations of clones in flight, and the
counters behind :class:`~repocache.models.Stats`. The total of all sizes is kept by triggers, so the budget check
never sums the table, and the eviction scan pages through an index on ``last_used``, so evicting k repositories
costs k small queries whatever the index size.

The index is advisory about the disk: a process can die between a rename and the row update, so callers treat the
directory as the truth for "is it there" and :meth:`RepoCache.verify` reconciles the two.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

__all__ = ["COUNTERS", "Index", "Row"]

COUNTERS = ("hits", "misses", "clones", "fetches", "restores", "evictions", "fetch_errors")
_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    size_bytes INTEGER NOT NULL DEFAULT 0,
    last_used REAL NOT NULL,
    last_fetched REAL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_lru ON entries (last_used, key);
CREATE TABLE IF NOT EXISTS history (
    key TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    last_size INTEGER NOT NULL DEFAULT 0,
    in_cold_store INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS reservations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    pid INTEGER NOT NULL,
    pid_started REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS cold_published (
    key TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    created REAL NOT NULL,
    generation TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS totals (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    bytes INTEGER NOT NULL,
    count INTEGER NOT NULL
);
INSERT OR IGNORE INTO totals (id, bytes, count) VALUES (1, 0, 0);
CREATE TRIGGER IF NOT EXISTS entries_ins AFTER INSERT ON entries BEGIN
    UPDATE totals SET bytes = bytes + NEW.size_bytes, count = count + 1 WHERE id = 1;
END;
CREATE TRIGGER IF NOT EXISTS entries_del AFTER DELETE ON entries BEGIN
    UPDATE totals SET bytes = bytes - OLD.size_bytes, count = count - 1 WHERE id = 1;
END;
CREATE TRIGGER IF NOT EXISTS entries_size AFTER UPDATE OF size_bytes ON entries BEGIN
    UPDATE totals SET bytes = bytes - OLD.size_bytes + NEW.size_bytes WHERE id = 1;
END;
"""


@dataclass(frozen=True)
class Row:
    """One indexed repository as stored."""

    key: str
    url: str
    size_bytes: int
    last_used: float
    last_fetched: float | None
    in_cold_store: bool


def _process_started(pid: int) -> float:
    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return -1.0


def _set_wal(conn: sqlite3.Connection) -> None:
    """Switch to WAL. The switch ignores the busy timeout, so processes opening a new root together retry it."""
    delay = 0.005
    for _attempt in range(200):
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                return
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
    conn.execute("PRAGMA journal_mode=WAL")


class Index:
    """Access to ``<root>/index.sqlite``; thread-safe (a connection per thread) and fork-safe."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._pid_started = _process_started(os.getpid())
        conn = self._conn()
        conn.executescript(_SCHEMA)
        conn.execute("INSERT OR IGNORE INTO meta (name, value) VALUES ('schema', ?)", (str(_SCHEMA_VERSION),))
        for name in COUNTERS:
            conn.execute("INSERT OR IGNORE INTO counters (name, value) VALUES (?, 0)", (name,))

    # -- connections -------------------------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            return conn
        conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None, check_same_thread=False)
        _set_wal(conn)
        conn.execute("PRAGMA synchronous=NORMAL")
        # An unbounded WAL grew to 950 MiB under two busy writers in our measurements: cap it.
        conn.execute("PRAGMA journal_size_limit=67108864")
        conn.execute("PRAGMA wal_autocheckpoint=1000")
        self._local.conn = conn
        self._local.pid = os.getpid()
        return conn

    class _Tx:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn = conn

        def __enter__(self) -> sqlite3.Connection:
            self.conn.execute("BEGIN IMMEDIATE")
            return self.conn

        def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
            self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")

    def _transaction(self) -> Index._Tx:
        return Index._Tx(self._conn())

    def close(self) -> None:
        """Close this thread's connection (other threads' connections close when they are collected)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            conn.close()
        self._local.conn = None

    # -- reads ------------------------------------------------------------------------------------------------

    _ROW_SQL = (
        "SELECT e.key, e.url, e.size_bytes, e.last_used, e.last_fetched, COALESCE(h.in_cold_store, 0) "
        "FROM entries e LEFT JOIN history h ON h.key = e.key"
    )

    @staticmethod
    def _row(values: tuple[str, str, int, float, float | None, int]) -> Row:
        return Row(values[0], values[1], values[2], values[3], values[4], bool(values[5]))

    def get(self, key: str) -> Row | None:
        """The row of ``key``, or None."""
        found = self._conn().execute(self._ROW_SQL + " WHERE e.key = ?", (key,)).fetchone()
        return None if found is None else self._row(found)

    def rows(self) -> list[Row]:
        """Every row, most recently used first."""
        cursor = self._conn().execute(self._ROW_SQL + " ORDER BY e.last_used DESC, e.key DESC")
        return [self._row(values) for values in cursor]

    def lru(self, batch: int = 64) -> Iterator[Row]:
        """Rows from least to most recently used, read in small pages so a caller may delete as it goes."""
        after: tuple[float, str] = (float("-inf"), "")
        while True:
            page = (
                self._conn()
                .execute(
                    self._ROW_SQL + " WHERE (e.last_used, e.key) > (?, ?) ORDER BY e.last_used, e.key LIMIT ?",
                    (*after, batch),
                )
                .fetchall()
            )
            for values in page:
                yield self._row(values)
            if len(page) < batch:
                return
            after = (page[-1][3], page[-1][0])

    def known_size(self, key: str) -> int:
        """The last measured size of ``key`` (on disk or evicted), 0 when never seen."""
        conn = self._conn()
        found = conn.execute("SELECT size_bytes FROM entries WHERE key = ?", (key,)).fetchone()
        if found is None:
            found = conn.execute("SELECT last_size FROM history WHERE key = ?", (key,)).fetchone()
        return int(found[0]) if found else 0

    def totals(self) -> tuple[int, int]:
        """(bytes of all indexed mirrors, number of indexed mirrors)."""
        found = self._conn().execute("SELECT bytes, count FROM totals WHERE id = 1").fetchone()
        return int(found[0]), int(found[1])

    def reserved_bytes(self, *, exclude: int | None = None) -> int:
        """Bytes reserved by clones in flight in live processes (reservations of dead processes are dropped)."""
        conn = self._conn()
        rows = conn.execute("SELECT id, size_bytes, pid, pid_started FROM reservations").fetchall()
        total = 0
        dead = []
        for ident, size, pid, started in rows:
            if ident == exclude:
                continue
            if _process_started(pid) != started:
                dead.append(ident)
            else:
                total += size
        if dead:
            conn.executemany("DELETE FROM reservations WHERE id = ?", [(d,) for d in dead])
        return total

    def counters(self) -> dict[str, int]:
        """The shared counters by name."""
        return dict(self._conn().execute("SELECT name, value FROM counters").fetchall())

    # -- writes -----------------------------------------------------------------------------------------------

    def touch(self, key: str, now: float, *, counter: str | None = "hits") -> None:
        """Mark ``key`` used at ``now`` and count the hit."""
        with self._transaction() as db:
            db.execute("UPDATE entries SET last_used = ? WHERE key = ?", (now, key))
            if counter:
                db.execute("UPDATE counters SET value = value + 1 WHERE name = ?", (counter,))

    def count(self, name: str, amount: int = 1) -> None:
        """Add ``amount`` to a counter."""
        with self._transaction() as db:
            db.execute("UPDATE counters SET value = value + ? WHERE name = ?", (amount, name))

    def put(
        self,
        key: str,
        url: str,
        size_bytes: int,
        now: float,
        *,
        counter: str | None,
        fetched: bool = True,
        reservation: int | None = None,
    ) -> None:
        """Record a repository now on disk and count it under ``counter``.

        ``fetched`` says whether it matches upstream as of ``now`` (a clone) or not (an adopted orphan).
        ``reservation`` is dropped in the same transaction, so the bytes are never counted twice.
        """
        with self._transaction() as db:
            if reservation is not None:
                db.execute("DELETE FROM reservations WHERE id = ?", (reservation,))
            db.execute(
                "INSERT INTO entries (key, url, size_bytes, last_used, last_fetched, created) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET url = excluded.url, "
                "size_bytes = excluded.size_bytes, last_used = excluded.last_used, "
                "last_fetched = excluded.last_fetched",
                (key, url, size_bytes, now, now if fetched else None, now),
            )
            if counter:
                db.execute("UPDATE counters SET value = value + 1 WHERE name = ?", (counter,))

    def fetched(self, key: str, size_bytes: int, finished: float) -> None:
        """Record a successful fetch that finished at ``finished`` and the new size."""
        with self._transaction() as db:
            db.execute(
                "UPDATE entries SET last_fetched = ?, size_bytes = ? WHERE key = ?",
                (finished, size_bytes, key),
            )
            db.execute("UPDATE counters SET value = value + 1 WHERE name = 'fetches'")

    def set_size(self, key: str, size_bytes: int) -> None:
        """Correct the recorded size of ``key``."""
        with self._transaction() as db:
            db.execute("UPDATE entries SET size_bytes = ? WHERE key = ?", (size_bytes, key))

    def remove(self, key: str, *, counter: str | None = "evictions") -> None:
        """Drop ``key``'s row, remembering its size (and URL) so a later clone can make room first."""
        with self._transaction() as db:
            found = db.execute("SELECT url, size_bytes FROM entries WHERE key = ?", (key,)).fetchone()
            if found is None:
                return
            db.execute(
                "INSERT INTO history (key, url, last_size) VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
                "url = excluded.url, last_size = excluded.last_size",
                (key, found[0], found[1]),
            )
            db.execute("DELETE FROM entries WHERE key = ?", (key,))
            if counter:
                db.execute("UPDATE counters SET value = value + 1 WHERE name = ?", (counter,))

    def remember_size(self, key: str, url: str, size_bytes: int) -> None:
        """Remember the size of a repository that is not on disk, so a later clone can make room first."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO history (key, url, last_size) VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
                "url = excluded.url, last_size = excluded.last_size",
                (key, url, size_bytes),
            )

    def set_in_cold_store(self, key: str, url: str, value: bool, *, size_bytes: int | None = None) -> None:
        """Remember whether the cold store holds ``key`` (and the mirror size its manifest gives)."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO history (key, url, last_size, in_cold_store) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET in_cold_store = excluded.in_cold_store, "
                "last_size = CASE WHEN ? IS NULL THEN history.last_size ELSE excluded.last_size END",
                (key, url, size_bytes or 0, int(value), size_bytes),
            )

    def set_published(self, key: str, url: str, created: float, generation: str) -> None:
        """Remember the cold store artifact this root last uploaded or restored for ``key`` (and when it was made)."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO cold_published (key, url, created, generation) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET url = excluded.url, created = excluded.created, "
                "generation = excluded.generation",
                (key, url, created, generation),
            )

    def published(self, key: str) -> tuple[float, str] | None:
        """(created, generation) of the artifact recorded by :meth:`set_published`, or None."""
        found = self._conn().execute("SELECT created, generation FROM cold_published WHERE key = ?", (key,)).fetchone()
        return None if found is None else (float(found[0]), str(found[1]))

    def forget_published(self, key: str) -> None:
        """Forget the artifact of ``key`` (it was pruned from the store)."""
        with self._transaction() as db:
            db.execute("DELETE FROM cold_published WHERE key = ?", (key,))

    def reserve(self, key: str, size_bytes: int) -> int:
        """Reserve ``size_bytes`` for a clone of ``key`` by this process; returns the reservation id."""
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO reservations (key, size_bytes, pid, pid_started) VALUES (?, ?, ?, ?)",
                (key, size_bytes, os.getpid(), _process_started(os.getpid())),
            )
            return int(cursor.lastrowid or 0)

    def unreserve(self, ident: int) -> None:
        """Drop a reservation."""
        with self._transaction() as db:
            db.execute("DELETE FROM reservations WHERE id = ?", (ident,))

    def checkpoint(self) -> None:
        """Fold the WAL back into the database and truncate it."""
        self._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def now(self) -> float:
        """The clock used for recency (wall time, comparable across processes)."""
        return time.time()
