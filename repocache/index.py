"""The LRU index: one SQLite database (WAL) per cache root, shared by every process using the root.

It holds a row per repository on disk (URL, size, recency, last fetch), the last known size of repositories that
were evicted (so room is made before they are cloned again), byte reservations of clones in flight, and the
counters behind :class:`~repocache.models.Stats`. The total of all sizes is kept by triggers, so the budget check
never sums the table, and the eviction scan pages through an index on ``last_used``, so evicting k repositories
costs k small queries whatever the index size.

The index is advisory about the disk: a process can die between a rename and the row update, so callers treat the
directory as the truth for "is it there" and :meth:`RepoCache.verify` reconciles the two.

The schema's version is the database's ``PRAGMA user_version``; opening an older index runs the missing steps of
:data:`MIGRATIONS` in one transaction. A damaged file (not a database, truncated, corrupt pages, or emptied:
shorter than a header while mirrors are on disk, which SQLite alone would read as a new empty database) is moved
aside as ``index.sqlite.damaged-<time>`` and a fresh index is built from the mirrors on disk, by one process at a
time; the cache reports it with one warning and in ``verify()``. Every wait on the database (busy, the switch to
WAL, another process's rebuild) is bounded by the ``timeout`` the cache passes: its ``lock_timeout``.

The index's files (``index.sqlite`` and its ``-wal``, ``-shm`` and ``-journal``) must be regular files: a FIFO, a
device, a directory or a symbolic link at one of those paths is refused with
:class:`~repocache.errors.UnsafeFileError` before SQLite opens it, instead of blocking forever or being "rebuilt".
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sqlite3
import threading
import time
import urllib.parse
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import psutil

from repocache import locks
from repocache.counters import Counter
from repocache.errors import ReadOnlyRootError, RepoCacheError
from repocache.safe_read import check_regular

__all__ = [
    "COUNTERS",
    "MIGRATIONS",
    "RECENCY_GRANULARITY",
    "SCHEMA_VERSION",
    "WAL_CHECKPOINT_BYTES",
    "Freshness",
    "Index",
    "Row",
]

logger = logging.getLogger("repocache")

COUNTERS = tuple(counter.value for counter in Counter)

RECENCY_GRANULARITY = 1.0
"""Seconds a hit's recency (``last_used``) and its count may wait in this process's memory before they reach the
index: hits are written by a flusher thread at most once a second, in one transaction for every repository hit
meanwhile, never on the hit's own path. LRU order is exact to this granularity; a process killed by SIGKILL loses
at most the last second of its hits' recency and counts (nothing else: rows, sizes and fetches are written at
once). :meth:`Index.counters`, :meth:`Index.rows` and :meth:`Index.lru` flush first, so this process always reads
its own hits."""

WAL_CHECKPOINT_BYTES = 4 * 1024 * 1024
"""The write-ahead log is checkpointed by the flusher thread, never by a hit, once it holds more than this:
``PASSIVE`` (never waits), then, when everything was copied, ``TRUNCATE`` (waiting at most 0.1 s), so the log
stays near this size plus what the root writes in one :data:`RECENCY_GRANULARITY`. SQLite's own auto-checkpoint
(which ran on whichever commit crossed 1,000 pages: 15-18 ms on that hit) is off."""

_IDENTITY_RECHECK = 1.0  # seconds between checks that the index file is still the one a connection has open

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 0 -> 1: the first schema. Written with IF NOT EXISTS, so roots made before the version was kept in
    # user_version (they have the tables and user_version 0) pass through it unchanged.
    (
        "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY, url TEXT NOT NULL, "
        "size_bytes INTEGER NOT NULL DEFAULT 0, last_used REAL NOT NULL, last_fetched REAL, created REAL NOT NULL)",
        "CREATE INDEX IF NOT EXISTS entries_lru ON entries (last_used, key)",
        "CREATE TABLE IF NOT EXISTS history (key TEXT PRIMARY KEY, url TEXT NOT NULL, "
        "last_size INTEGER NOT NULL DEFAULT 0, in_cold_store INTEGER NOT NULL DEFAULT 0)",
        "CREATE TABLE IF NOT EXISTS reservations (id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, "
        "size_bytes INTEGER NOT NULL, pid INTEGER NOT NULL, pid_started REAL NOT NULL)",
        "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
        "CREATE TABLE IF NOT EXISTS totals (id INTEGER PRIMARY KEY CHECK (id = 1), bytes INTEGER NOT NULL, "
        "count INTEGER NOT NULL)",
        "INSERT OR IGNORE INTO totals (id, bytes, count) VALUES (1, 0, 0)",
        "CREATE TRIGGER IF NOT EXISTS entries_ins AFTER INSERT ON entries BEGIN "
        "UPDATE totals SET bytes = bytes + NEW.size_bytes, count = count + 1 WHERE id = 1; END",
        "CREATE TRIGGER IF NOT EXISTS entries_del AFTER DELETE ON entries BEGIN "
        "UPDATE totals SET bytes = bytes - OLD.size_bytes, count = count - 1 WHERE id = 1; END",
        "CREATE TRIGGER IF NOT EXISTS entries_size AFTER UPDATE OF size_bytes ON entries BEGIN "
        "UPDATE totals SET bytes = bytes - OLD.size_bytes + NEW.size_bytes WHERE id = 1; END",
        "INSERT OR IGNORE INTO meta (name, value) VALUES ('schema', '1')",
    ),
    # 1 -> 2: freshness per repository (stale marks, when the last good fetch began, when upstream last changed),
    # apart from ``entries`` so that it outlives an eviction.
    (
        "CREATE TABLE IF NOT EXISTS freshness (key TEXT PRIMARY KEY, stale_since REAL, fetch_started REAL, "
        "last_changed REAL)",
    ),
    # 2 -> 3: the cold store artifact this root last uploaded or restored per repository (fleet publishing).
    (
        "CREATE TABLE IF NOT EXISTS cold_published (key TEXT PRIMARY KEY, url TEXT NOT NULL, created REAL NOT NULL, "
        "generation TEXT NOT NULL)",
    ),
)
"""Migration steps: ``MIGRATIONS[n]`` takes an index from version ``n`` to ``n + 1``. Append, never edit."""

SCHEMA_VERSION = len(MIGRATIONS)
"""The schema version this repocache writes (``PRAGMA user_version``)."""

# SQLITE_CORRUPT and SQLITE_NOTADB: the file is damaged (unlike SQLITE_BUSY and the like, which pass).
_DAMAGE_CODES = (11, 26)
_DAMAGE_NOTE = "rebuilt_from"

Adopt = Callable[[], Iterable[tuple[str, str, int]]]
"""What a rebuilt index adopts: (key, url, size in bytes) of every valid mirror on disk."""

_P = ParamSpec("_P")
_T = TypeVar("_T")


@dataclass(frozen=True)
class Row:
    """One indexed repository as stored."""

    key: str
    url: str
    size_bytes: int
    last_used: float
    last_fetched: float | None
    in_cold_store: bool


@dataclass(frozen=True)
class Freshness:
    """What the index knows about a repository's freshness beyond its last fetch (table ``freshness``).

    Attributes:
        key: the repository key.
        stale_since: epoch seconds of the newest :meth:`Index.mark_stale`, or None.
        fetch_started: epoch seconds at which the last successful fetch (or clone) began, or None.
        last_changed: epoch seconds at which upstream was last seen to change, or None when never observed.
    """

    key: str
    stale_since: float | None
    fetch_started: float | None
    last_changed: float | None

    @property
    def marked_stale(self) -> bool:
        """Whether a mark arrived that no successful fetch begun after it has consumed yet."""
        if self.stale_since is None:
            return False
        return self.fetch_started is None or self.stale_since >= self.fetch_started


def _process_started(pid: int) -> float:
    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return -1.0


class _EmptiedIndex(sqlite3.DatabaseError):
    """The index file is shorter than a database header (0 bytes after a full disk or ``> index.sqlite``) while
    mirrors are on disk: SQLite would read it as a new, empty database and forget them all."""


def _is_damage(exc: sqlite3.DatabaseError) -> bool:
    """True when ``exc`` says the database file is damaged (not merely busy, locked or read-only)."""
    if isinstance(exc, _EmptiedIndex):
        return True
    if isinstance(exc, sqlite3.OperationalError):
        # Every connection is opened on a migrated schema: a table gone is a file emptied or replaced under it.
        return "no such table" in str(exc)
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _DAMAGE_CODES
    text = str(exc)
    return "malformed" in text or "not a database" in text


def _recovering(method: Callable[Concatenate[Index, _P], _T]) -> Callable[Concatenate[Index, _P], _T]:
    """Run ``method``; if the database turns out to be damaged, rebuild the index and run it once more."""

    def wrapper(self: Index, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as exc:
            if not _is_damage(exc):
                raise
            self._recover(exc)
        return method(self, *args, **kwargs)

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper


def _bump(db: sqlite3.Connection, name: str, amount: int = 1) -> None:
    """Add ``amount`` to the counter ``name`` (created at 0 the first time)."""
    db.execute(
        "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = value + ?",
        (name, amount, amount),
    )


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _is_read_only(path: Path) -> bool:
    """Whether the index at ``path`` cannot be written: its directory (where the journal goes) or the file itself.

    ``os.access`` answers for a read-only mount even for root, which permissions never stop.
    """
    if not path.parent.exists():
        return False  # created by the layout; a failure there is an OSError of its own
    if not os.access(path.parent, os.W_OK):
        return True
    return path.exists() and not os.access(path, os.W_OK)


_SQLITE_FILES = ("", "-wal", "-shm", "-journal")


def _check_files(path: Path) -> None:
    """Refuse an index whose database, WAL, shared-memory or journal file is not a regular file (or missing).

    SQLite opens them by name and would block forever reading a FIFO (retrying on EINTR, so no signal frees it),
    read a link to ``/dev/zero`` as a damaged database, or write through a link to a file elsewhere.

    Raises:
        UnsafeFileError: one of them is a FIFO, a device, a directory or a symbolic link.
    """
    for suffix in _SQLITE_FILES:
        check_regular(f"{path}{suffix}")


def _set_wal(conn: sqlite3.Connection, timeout: float) -> None:
    """Switch to WAL. The switch ignores the busy timeout, so processes opening a new root together retry it, for
    at most ``timeout`` seconds in all (then the last busy error is raised)."""
    delay = 0.005
    deadline = time.monotonic() + timeout
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                return
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.1)


_HEADER_BYTES = 100  # an SQLite file shorter than its header holds no database


class _Recency:
    """The hits of this process not yet written: the latest use of each repository, and the counts.

    A daemon thread (the flusher) writes them every :data:`RECENCY_GRANULARITY` seconds and checkpoints the
    write-ahead log when it has grown; it holds the index only weakly, so an index nobody closed is still
    collected, and whatever is pending is written at interpreter exit. A forked child starts with nothing
    pending (its parent writes its own hits) and its own flusher.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._touches: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._pid = os.getpid()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, index: Index) -> None:
        ref = weakref.ref(index)

        def run() -> None:
            while not self._stopped.wait(RECENCY_GRANULARITY):
                alive = ref()
                if alive is None:
                    return
                try:
                    alive.flush()
                    alive.checkpoint_if_large()
                except Exception:  # the next round tries again; a damaged index is repaired by the next caller
                    logger.debug("writing recency to %s failed", alive.path, exc_info=True)
                del alive

        self._thread = threading.Thread(target=run, name="repocache-recency", daemon=True)
        self._thread.start()
        _live.add(index)

    def note(self, index: Index, key: str, now: float, counter: str | None) -> None:
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's hits are the parent's to write
                self._pid = os.getpid()
                self._touches, self._counts = {}, {}
                self._stopped = threading.Event()
                self.start(index)
            if now > self._touches.get(key, 0.0):
                self._touches[key] = now
            if counter:
                self._counts[counter] = self._counts.get(counter, 0) + 1

    def take(self) -> tuple[dict[str, float], dict[str, int]]:
        with self._lock:
            if self._pid != os.getpid():
                return {}, {}
            touches, counts = self._touches, self._counts
            self._touches, self._counts = {}, {}
            return touches, counts

    def give_back(self, touches: dict[str, float], counts: dict[str, int]) -> None:
        with self._lock:
            for key, used in touches.items():
                self._touches[key] = max(used, self._touches.get(key, 0.0))
            for name, amount in counts.items():
                self._counts[name] = self._counts.get(name, 0) + amount

    def stop(self) -> None:
        self._stopped.set()


_live: weakref.WeakSet[Index] = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    for index in list(_live):
        with contextlib.suppress(Exception):
            index.flush()


class Index:
    """Access to ``<root>/index.sqlite``; thread-safe (a connection per thread) and fork-safe.

    Args:
        path: the database file.
        lock_path: the lock file that makes one process at a time rebuild a damaged index (default: next to it).
        adopt: what a rebuilt index starts with, called by the rebuilding process under that lock.
        timeout: the longest any one wait on the database lasts, in seconds (the cache's ``lock_timeout``, used
            between 1 and 60 s): a busy database, the switch to WAL, another process's rebuild of a damaged index.
    """

    def __init__(
        self, path: Path, *, lock_path: Path | None = None, adopt: Adopt | None = None, timeout: float = 60.0
    ) -> None:
        self.path = path
        self.lock_path = lock_path or path.with_name(path.name + ".lock")
        self._adopt = adopt
        self.read_only = _is_read_only(path)
        """Whether the root cannot be written: the database is opened read-only and every write refused."""
        # At least 1 s (SQLite writes take milliseconds; lock_timeout=0 must not make every contended write fail),
        # at most 60 s (the busy wait this index always had).
        self._timeout = min(60.0, max(1.0, float(timeout)))
        self._local = threading.local()
        self._pid_started = _process_started(os.getpid())
        self._recency = _Recency()
        self._open()
        self._recency.start(self)

    @_recovering
    def _open(self) -> None:
        self._migrate(self._conn())

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Bring the schema to :data:`SCHEMA_VERSION` (one transaction; concurrent openers wait for it)."""
        if conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
            return
        if self.read_only:
            raise self.refused("bring its index to the current schema")
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise RepoCacheError(
                    f"the index was written by a newer repocache (schema {version}; this one reads up to "
                    f"{SCHEMA_VERSION}): upgrade repocache or use another root"
                )
            for step in MIGRATIONS[version:]:
                for statement in step:
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # -- connections -------------------------------------------------------------------------------------------

    def _conn(self, *, wait: bool = True) -> sqlite3.Connection:
        """This thread's connection, opened when it has none (``wait=False``: opened without waiting for a busy
        database, the error raised instead)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            now = time.monotonic()
            if now < self._local.checked + _IDENTITY_RECHECK:
                return conn
            if self._local.file == _identity(self.path):
                self._local.checked = now
                return conn
        if conn is not None and self._local.pid == os.getpid():
            conn.close()  # the file was replaced (another process rebuilt a damaged index): use the new one
            self._local.conn = None
        _check_files(self.path)
        if self.read_only:
            conn = self._connect_read_only()
            self._local.conn = conn
            self._local.pid = os.getpid()
            self._local.file = _identity(self.path)
            self._local.checked = time.monotonic()
            return conn
        if self._emptied():
            raise _EmptiedIndex(f"the file is shorter than a database header ({_HEADER_BYTES} bytes)")
        timeout = self._timeout if wait else 0.0
        conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
        try:
            _set_wal(conn, timeout)
            if not wait:  # later users of this thread's connection wait as usual
                conn.execute(f"PRAGMA busy_timeout = {round(self._timeout * 1000)}")
        except BaseException:
            conn.close()
            raise
        self._local.conn = conn
        self._local.pid = os.getpid()
        self._local.file = _identity(self.path)
        self._local.checked = time.monotonic()
        conn.execute("PRAGMA synchronous=NORMAL")
        # An unbounded WAL grew to 950 MiB under two busy writers in our measurements: cap it.
        conn.execute(f"PRAGMA journal_size_limit={WAL_CHECKPOINT_BYTES}")
        conn.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints are the flusher's (WAL_CHECKPOINT_BYTES)
        return conn

    def refused(self, action: str) -> ReadOnlyRootError:
        """The error for a write to the index of a read-only root."""
        return ReadOnlyRootError(str(self.path.parent), action)

    def _connect_read_only(self) -> sqlite3.Connection:
        """A read-only connection: ``mode=ro`` reads the write-ahead log too when its shared memory can be used;
        where it cannot (no ``-shm`` file, and none can be made), ``immutable=1`` reads the database file alone
        (nothing can write to a read-only root, so nothing changes under it)."""
        if not self.path.exists():
            raise self.refused("create its index (it has none yet)")
        base = "file:" + urllib.parse.quote(str(self.path))
        for query in ("mode=ro", "mode=ro&immutable=1"):
            conn = sqlite3.connect(
                f"{base}?{query}", uri=True, timeout=self._timeout, isolation_level=None, check_same_thread=False
            )
            try:
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            except sqlite3.OperationalError:
                conn.close()
                continue
            return conn
        raise self.refused("open its index (sqlite cannot read it read-only)")

    class _Tx:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn = conn

        def __enter__(self) -> sqlite3.Connection:
            self.conn.execute("BEGIN IMMEDIATE")
            return self.conn

        def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
            if exc_type is None:
                self.conn.execute("COMMIT")
            else:
                with contextlib.suppress(sqlite3.Error):  # a damaged file may refuse even the rollback
                    self.conn.execute("ROLLBACK")

    def _transaction(self) -> Index._Tx:
        if self.read_only:
            raise self.refused("change its index")
        return Index._Tx(self._conn())

    def close(self) -> None:
        """Write the hits held in memory, stop the flusher, and close this thread's connection (other threads'
        connections close when they are collected)."""
        self._recency.stop()
        with contextlib.suppress(sqlite3.Error, RepoCacheError):
            self.flush()
        self._close_connection()

    def _close_connection(self) -> None:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            conn.close()
        self._local.conn = None

    # -- damage ------------------------------------------------------------------------------------------------

    def _emptied(self) -> bool:
        """True when the file is missing or shorter than a header while mirrors are on disk (a new root has none,
        so the first opener's empty file is never mistaken for damage)."""
        try:
            if os.stat(self.path).st_size >= _HEADER_BYTES:
                return False
        except FileNotFoundError:
            pass
        return self._adopt is not None and next(iter(self._adopt()), None) is not None

    def _recover(self, exc: sqlite3.DatabaseError) -> None:
        """Rebuild a damaged index, unless another process did it first; the damaged file is kept aside."""
        self._close_connection()
        handle = locks.acquire(self.lock_path, shared=False, timeout=self._timeout)
        if handle is None:
            raise RepoCacheError(f"the index {self.path} is damaged ({exc}) and another process is rebuilding it")
        with handle:
            if self._healthy():
                self._migrate(self._conn())
                return  # rebuilt by another process while we waited for the lock
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"-{os.getpid()}"
            aside = self.path.with_name(f"{self.path.name}.damaged-{stamp}")
            adopted = self._build(self.path.with_name(f"{self.path.name}.rebuild-{stamp}"), aside, exc)
            # The damaged file stays under its new name; the rebuilt one replaces it in one step, so every
            # process sees either the damaged index or the whole rebuilt one, never an empty one.
            with contextlib.suppress(FileNotFoundError):
                os.link(self.path, aside)
            for suffix in ("-wal", "-journal"):
                with contextlib.suppress(FileNotFoundError):
                    os.rename(f"{self.path}{suffix}", f"{aside}{suffix}")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{self.path}-shm")
            os.replace(self.path.with_name(f"{self.path.name}.rebuild-{stamp}"), self.path)
        message = (
            f"the repocache index {self.path} was damaged ({exc}); it was moved to {aside} and rebuilt from the "
            f"{adopted} mirrors on disk"
        )
        logger.warning("%s", message)
        warnings.warn(message, RuntimeWarning, stacklevel=2)

    def _build(self, path: Path, aside: Path, exc: sqlite3.DatabaseError) -> int:
        """Write a fresh index to ``path`` holding every mirror on disk; returns how many it adopted."""
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            self._migrate(conn)
            now = time.time()
            adopted = 0
            conn.execute("BEGIN IMMEDIATE")
            for key, url, size in self._adopt() if self._adopt is not None else ():
                conn.execute(
                    "INSERT OR IGNORE INTO entries (key, url, size_bytes, last_used, last_fetched, created) "
                    "VALUES (?, ?, ?, ?, NULL, ?)",
                    (key, url, size, now, now),
                )
                adopted += 1
            conn.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (_DAMAGE_NOTE, f"{aside}\t{exc}"))
            conn.execute("COMMIT")
        except BaseException:
            conn.close()
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            raise
        conn.close()
        return adopted

    def _healthy(self) -> bool:
        """True when the file at :attr:`path` is a sound database (a fresh connection, full page check)."""
        if not self.path.exists() or self._emptied():
            return False
        _check_files(self.path)
        try:
            conn = sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None)
        except sqlite3.DatabaseError:
            return False
        try:
            return bool(conn.execute("PRAGMA quick_check").fetchone()[0] == "ok")
        except sqlite3.DatabaseError as exc:
            return not _is_damage(exc)  # busy or locked is not damage: never rebuild a sound index over it
        finally:
            conn.close()

    @_recovering
    def damage_note(self) -> tuple[Path, str] | None:
        """(where the damaged file was kept, what was wrong) when this index was rebuilt, until acknowledged."""
        found = self._conn().execute("SELECT value FROM meta WHERE name = ?", (_DAMAGE_NOTE,)).fetchone()
        if found is None:
            return None
        path, _tab, reason = str(found[0]).partition("\t")
        return Path(path), reason

    @_recovering
    def acknowledge_damage(self) -> None:
        """Forget the note left by a rebuild (the damaged file itself is kept)."""
        with self._transaction() as db:
            db.execute("DELETE FROM meta WHERE name = ?", (_DAMAGE_NOTE,))

    # -- reads ------------------------------------------------------------------------------------------------

    _ROW_COLUMNS = "e.key, e.url, e.size_bytes, e.last_used, e.last_fetched, COALESCE(h.in_cold_store, 0)"
    _ROW_FROM = "FROM entries e LEFT JOIN history h ON h.key = e.key"
    _ROW_SQL = f"SELECT {_ROW_COLUMNS} {_ROW_FROM}"
    _ROW_AND_FRESHNESS_SQL = (
        f"SELECT {_ROW_COLUMNS}, f.key, f.stale_since, f.fetch_started, f.last_changed {_ROW_FROM} "
        "LEFT JOIN freshness f ON f.key = e.key WHERE e.key = ?"
    )

    @staticmethod
    def _row(values: tuple[str, str, int, float, float | None, int]) -> Row:
        return Row(values[0], values[1], values[2], values[3], values[4], bool(values[5]))

    @_recovering
    def get(self, key: str) -> Row | None:
        """The row of ``key``, or None."""
        found = self._conn().execute(self._ROW_SQL + " WHERE e.key = ?", (key,)).fetchone()
        return None if found is None else self._row(found)

    @_recovering
    def get_with_freshness(self, key: str) -> tuple[Row | None, Freshness | None]:
        """:meth:`get` and :meth:`freshness` of ``key`` in one query (what every hit reads)."""
        found = self._conn().execute(self._ROW_AND_FRESHNESS_SQL, (key,)).fetchone()
        if found is None:
            return None, None
        return self._row(found[:6]), None if found[6] is None else Freshness(*found[6:])

    def get_with_freshness_at_once(self, key: str) -> tuple[Row | None, Freshness | None] | None:
        """As :meth:`get_with_freshness`, or None where answering would mean a wait: a database busy (a writer
        checkpointing, another process recovering it), damaged (rebuilt by the next waiting call) or read-only (its
        connection checks the file first). What an event loop may call (:meth:`Acquirer.try_hit
        <repocache.acquire.Acquirer.try_hit>`)."""
        found = self._read_at_once(self._ROW_AND_FRESHNESS_SQL, (key,))
        if found is None:
            return None
        if not found:
            return None, None
        return self._row(found[0][:6]), None if found[0][6] is None else Freshness(*found[0][6:])

    def totals_at_once(self) -> tuple[int, int] | None:
        """As :meth:`totals`, or None where answering would mean a wait (see :meth:`get_with_freshness_at_once`)."""
        found = self._read_at_once("SELECT bytes, count FROM totals WHERE id = 1", ())
        return None if not found else (int(found[0][0]), int(found[0][1]))

    def _read_at_once(self, sql: str, parameters: tuple[object, ...]) -> list[Any] | None:
        """The rows of one read made with a busy timeout of 0, or None when it failed in any way (the waiting path
        then raises the error or repairs the index)."""
        if self.read_only:
            return None
        try:
            conn = self._conn(wait=False)
            conn.execute("PRAGMA busy_timeout = 0")
            try:
                return conn.execute(sql, parameters).fetchall()
            finally:
                conn.execute(f"PRAGMA busy_timeout = {round(self._timeout * 1000)}")
        except Exception:
            return None

    @_recovering
    def rows(self) -> list[Row]:
        """Every row, most recently used first."""
        self.flush()
        cursor = self._conn().execute(self._ROW_SQL + " ORDER BY e.last_used DESC, e.key DESC")
        return [self._row(values) for values in cursor]

    def lru(self, batch: int = 64) -> Iterator[Row]:
        """Rows from least to most recently used, read in small pages so a caller may delete as it goes."""
        self.flush()
        after: tuple[float, str] = (float("-inf"), "")
        while True:
            page = self._lru_page(after, batch)
            yield from page
            if len(page) < batch:
                return
            after = (page[-1].last_used, page[-1].key)

    @_recovering
    def _lru_page(self, after: tuple[float, str], batch: int) -> list[Row]:
        cursor = self._conn().execute(
            self._ROW_SQL + " WHERE (e.last_used, e.key) > (?, ?) ORDER BY e.last_used, e.key LIMIT ?",
            (*after, batch),
        )
        return [self._row(values) for values in cursor]

    @_recovering
    def known_size(self, key: str) -> int:
        """The last measured size of ``key`` (on disk or evicted), 0 when never seen."""
        conn = self._conn()
        found = conn.execute("SELECT size_bytes FROM entries WHERE key = ?", (key,)).fetchone()
        if found is None:
            found = conn.execute("SELECT last_size FROM history WHERE key = ?", (key,)).fetchone()
        return int(found[0]) if found else 0

    @_recovering
    def totals(self) -> tuple[int, int]:
        """(bytes of all indexed mirrors, number of indexed mirrors)."""
        found = self._conn().execute("SELECT bytes, count FROM totals WHERE id = 1").fetchone()
        return int(found[0]), int(found[1])

    @_recovering
    def reserved_bytes(self) -> int:
        """Bytes reserved by clones in flight in live processes (reservations of dead processes are dropped)."""
        conn = self._conn()
        rows = conn.execute("SELECT id, size_bytes, pid, pid_started FROM reservations").fetchall()
        total = 0
        dead = []
        for ident, size, pid, started in rows:
            if _process_started(pid) != started:
                dead.append(ident)
            else:
                total += size
        if dead:
            conn.executemany("DELETE FROM reservations WHERE id = ?", [(d,) for d in dead])
        return total

    @_recovering
    def counters(self) -> dict[str, int]:
        """The shared counters by name."""
        self.flush()
        return dict(self._conn().execute("SELECT name, value FROM counters").fetchall())

    # -- writes -----------------------------------------------------------------------------------------------

    def touch(self, key: str, now: float, *, counter: str | None = "hits") -> None:
        """Mark ``key`` used at ``now`` and count the hit, in memory: the flusher writes both within
        :data:`RECENCY_GRANULARITY` (no transaction on the hit's path)."""
        self._recency.note(self, key, now, counter)

    @_recovering
    def flush(self) -> None:
        """Write the recency and counts of this process's hits held in memory (one transaction)."""
        touches, counts = self._recency.take()
        if not touches and not counts:
            return
        try:
            with self._transaction() as db:
                db.executemany(
                    "UPDATE entries SET last_used = MAX(last_used, ?) WHERE key = ?",
                    [(used, key) for key, used in touches.items()],
                )
                for name, amount in counts.items():
                    _bump(db, name, amount)
        except BaseException:
            self._recency.give_back(touches, counts)  # written by the next flush instead
            raise

    def checkpoint_if_large(self) -> bool:
        """Checkpoint the write-ahead log (``PASSIVE``: never waits for readers) once it exceeds
        :data:`WAL_CHECKPOINT_BYTES`; True when it did."""
        if self.read_only:
            return False
        try:
            size = os.stat(f"{self.path}-wal").st_size
        except FileNotFoundError:
            return False
        if size <= WAL_CHECKPOINT_BYTES:
            return False
        conn = self._conn()
        busy, pages, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if busy == 0 and pages == copied:
            # Everything is in the database: truncating now copies nothing, and waits for a reader of an older
            # snapshot (or a writer) at most 0.1 s before giving up until the next round.
            conn.execute("PRAGMA busy_timeout=100")
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                conn.execute(f"PRAGMA busy_timeout={int(self._timeout * 1000)}")
        return True

    @_recovering
    def count(self, name: str, amount: int = 1) -> None:
        """Add ``amount`` to a counter."""
        with self._transaction() as db:
            _bump(db, name, amount)

    @_recovering
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
        fetched_at: float | None = None,
    ) -> None:
        """Record a repository now on disk and count it under ``counter``.

        ``fetched`` says whether it matches upstream as of ``now`` (a clone) or not (an adopted orphan);
        ``fetched_at``, when given, is the time it last matched upstream instead (a restore of an artifact whose
        manifest says when its mirror was fetched).
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
                (key, url, size_bytes, now, fetched_at if fetched_at is not None else now if fetched else None, now),
            )
            if counter:
                _bump(db, counter)

    @_recovering
    def fetched(
        self,
        key: str,
        size_bytes: int,
        finished: float,
        *,
        started: float | None = None,
        changed: float | None = None,
    ) -> None:
        """Record a successful fetch that finished at ``finished`` and the new size.

        ``started`` (when the fetch began) consumes the stale marks older than it; ``changed`` records that the
        fetch moved refs, as the time upstream was last seen to change.
        """
        with self._transaction() as db:
            db.execute(
                "UPDATE entries SET last_fetched = ?, size_bytes = ? WHERE key = ?",
                (finished, size_bytes, key),
            )
            _bump(db, "fetches")
            if started is not None:
                self._record_fetch(db, key, started, changed)

    @staticmethod
    def _record_fetch(db: sqlite3.Connection, key: str, started: float, changed: float | None) -> None:
        db.execute(
            "INSERT INTO freshness (key, fetch_started, last_changed) VALUES (?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET fetch_started = excluded.fetch_started, "
            "last_changed = MAX(COALESCE(freshness.last_changed, excluded.last_changed), "
            "COALESCE(excluded.last_changed, freshness.last_changed))",
            (key, started, changed),
        )

    @_recovering
    def freshness(self, key: str) -> Freshness | None:
        """The freshness row of ``key``, or None."""
        found = (
            self._conn()
            .execute("SELECT key, stale_since, fetch_started, last_changed FROM freshness WHERE key = ?", (key,))
            .fetchone()
        )
        return None if found is None else Freshness(*found)

    @_recovering
    def mark_stale(self, key: str, now: float) -> bool:
        """Mark ``key`` stale as of ``now`` if it is indexed; returns whether it is."""
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO freshness (key, stale_since) SELECT key, ? FROM entries WHERE key = ? "
                "ON CONFLICT (key) DO UPDATE SET stale_since = MAX(COALESCE(freshness.stale_since, 0), "
                "excluded.stale_since)",
                (now, key),
            )
            return cursor.rowcount > 0

    @_recovering
    def cloned(self, key: str, started: float, changed: float | None) -> None:
        """Record that a clone begun at ``started`` brought ``key`` up to date (``changed``: its newest commit)."""
        with self._transaction() as db:
            self._record_fetch(db, key, started, changed)

    @_recovering
    def set_size(self, key: str, size_bytes: int) -> None:
        """Correct the recorded size of ``key``."""
        with self._transaction() as db:
            db.execute("UPDATE entries SET size_bytes = ? WHERE key = ?", (size_bytes, key))

    @_recovering
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
                _bump(db, counter)

    @_recovering
    def hand_over(self, key: str, size_bytes: int, *, counter: str | None = "evictions") -> int | None:
        """Drop ``key``'s row as :meth:`remove` does and, in the same transaction, reserve ``size_bytes`` for this
        process: an evicted mirror still on disk while it is uploaded. Returns the reservation (None for 0 bytes)."""
        with self._transaction() as db:
            found = db.execute("SELECT url, size_bytes FROM entries WHERE key = ?", (key,)).fetchone()
            if found is not None:
                db.execute(
                    "INSERT INTO history (key, url, last_size) VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
                    "url = excluded.url, last_size = excluded.last_size",
                    (key, found[0], found[1]),
                )
                db.execute("DELETE FROM entries WHERE key = ?", (key,))
                if counter:
                    _bump(db, counter)
            if size_bytes <= 0:
                return None
            cursor = db.execute(
                "INSERT INTO reservations (key, size_bytes, pid, pid_started) VALUES (?, ?, ?, ?)",
                (key, size_bytes, os.getpid(), _process_started(os.getpid())),
            )
            return int(cursor.lastrowid or 0)

    @_recovering
    def remember_size(self, key: str, url: str, size_bytes: int) -> None:
        """Remember the size of a repository that is not on disk, so a later clone can make room first."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO history (key, url, last_size) VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
                "url = excluded.url, last_size = excluded.last_size",
                (key, url, size_bytes),
            )

    @_recovering
    def set_in_cold_store(self, key: str, url: str, value: bool, *, size_bytes: int | None = None) -> None:
        """Remember whether the cold store holds ``key`` (and the mirror size its manifest gives)."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO history (key, url, last_size, in_cold_store) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET in_cold_store = excluded.in_cold_store, "
                "last_size = CASE WHEN ? IS NULL THEN history.last_size ELSE excluded.last_size END",
                (key, url, size_bytes or 0, int(value), size_bytes),
            )

    @_recovering
    def set_published(self, key: str, url: str, created: float, generation: str) -> None:
        """Remember the cold store artifact this root last uploaded or restored for ``key`` (and when it was made)."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO cold_published (key, url, created, generation) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET url = excluded.url, created = excluded.created, "
                "generation = excluded.generation",
                (key, url, created, generation),
            )

    @_recovering
    def published(self, key: str) -> tuple[float, str] | None:
        """(created, generation) of the artifact recorded by :meth:`set_published`, or None."""
        found = self._conn().execute("SELECT created, generation FROM cold_published WHERE key = ?", (key,)).fetchone()
        return None if found is None else (float(found[0]), str(found[1]))

    @_recovering
    def forget_published(self, key: str) -> None:
        """Forget the artifact of ``key`` (it was pruned from the store)."""
        with self._transaction() as db:
            db.execute("DELETE FROM cold_published WHERE key = ?", (key,))

    @_recovering
    def reserve(self, key: str, size_bytes: int) -> int:
        """Reserve ``size_bytes`` for a clone of ``key`` by this process; returns the reservation id."""
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO reservations (key, size_bytes, pid, pid_started) VALUES (?, ?, ?, ?)",
                (key, size_bytes, os.getpid(), _process_started(os.getpid())),
            )
            return int(cursor.lastrowid or 0)

    @_recovering
    def unreserve(self, ident: int) -> None:
        """Drop a reservation."""
        with self._transaction() as db:
            db.execute("DELETE FROM reservations WHERE id = ?", (ident,))

    @_recovering
    def checkpoint(self) -> None:
        """Fold the WAL back into the database and truncate it."""
        self._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")
