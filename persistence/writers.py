"""One writer at a time per SQLite file, among the threads of a process and among processes.

SQLite admits one writer per database anyway. When writers contend for it, the losers wait in
SQLite's busy handler, which sleeps in steps of 1 to 100 ms and holds a pooled connection while
it sleeps: at a batch's concurrency that turned each journal save into tens of milliseconds of
sleeping while the file was free. Two processes on one journal (two `purge --from-file` runs,
or conductors beside each other) lost a third of their speed the same way. So the writers queue
instead: a thread lock within the process, and an `flock` on a lock file beside the database
between processes; the kernel wakes the next waiter as soon as the lock is released. A writer
that does not take part (sqlite3, another tool) is still handled by `busy_timeout`.
MySQL/MariaDB has row locks and needs none of this: the context is a no-op there.

Lock order: a Nova database transaction may write the journal (the ledger's before-state) while
it is open; a journal write never touches a Nova database. So the order is always Nova -> journal.
"""

import contextlib
import fcntl
import logging
import os
import threading
import weakref

import sqlalchemy as sa

LOG = logging.getLogger(__name__)
LOCK_SUFFIX = "-writer.lock"    # beside the database, as SQLite's own -wal and -shm files


class _FileWriterLock:
    """A re-entrant lock held by one thread of one process at a time (for one SQLite file)."""

    def __init__(self, database: str | None):
        self._threads = threading.RLock()
        self._path = None if database in (None, "", ":memory:") else database + LOCK_SUFFIX
        self._fd = None
        self._pid = os.getpid()
        self._depth = 0

    def _file(self):
        """The lock file's descriptor, opened by this process (a forked child shares its
        parent's lock through an inherited one, so it opens its own); None without a file."""
        if self._pid != os.getpid():
            self._fd, self._pid = None, os.getpid()
        if self._fd is None and self._path is not None:
            try:
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as err:   # a read-only directory: SQLite's busy handler remains
                LOG.debug("no writer lock file %s (%s); other processes are not queued",
                          self._path, err.strerror)
                self._path = None
        return self._fd

    def __enter__(self):
        self._threads.acquire()
        try:
            if self._depth == 0:
                fd = self._file()
                if fd is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            self._threads.release()
            raise
        self._depth += 1
        return self

    def __exit__(self, *exc):
        self._depth -= 1
        try:
            if self._depth == 0 and self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


_LOCKS: "weakref.WeakKeyDictionary[sa.engine.Engine, _FileWriterLock]" = \
    weakref.WeakKeyDictionary()
_GUARD = threading.Lock()


def _lock_of(engine: sa.engine.Engine) -> _FileWriterLock:
    with _GUARD:
        lock = _LOCKS.get(engine)
        if lock is None:
            lock = _LOCKS[engine] = _FileWriterLock(engine.url.database)
            weakref.finalize(engine, lock.close)
        return lock


@contextlib.contextmanager
def serialized(engine: sa.engine.Engine):
    """Hold the SQLite file's writer lock (this process's threads and other processes) for the
    block; a no-op on MySQL/MariaDB."""
    if engine.dialect.name != "sqlite":
        yield
        return
    with _lock_of(engine):
        yield


@contextlib.contextmanager
def write_transaction(engine: sa.engine.Engine):
    """`engine.begin()` as the only writer of a SQLite file."""
    with serialized(engine), engine.begin() as conn:
        yield conn
