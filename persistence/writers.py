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

Group commit (`commit`): the journal's own writes (TaskFlow's saves, ledger entries) are small
units of work, each of which used to be a transaction of its own: a pooled connection, BEGIN,
its statements, COMMIT and an fsync, with the file's lock held throughout. Writers that queue
for the lock now leave their work with it; the thread that holds the lock runs every work left
so far in one transaction, so one COMMIT and one fsync make all of them durable, and each
caller returns only after that commit, as before. Should the group fail, each work is run again
in a transaction of its own, so only the caller of a failing work sees its error.

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
COMMITTED = "novapurge_committed"  # a pooled connection's info: it comes back from a commit


class _FileWriterLock:
    """A re-entrant lock held by one thread of one process at a time (for one SQLite file)."""

    def __init__(self, database: str | None):
        self._threads = threading.RLock()
        self._path = None if database in (None, "", ":memory:") else database + LOCK_SUFFIX
        self._fd = None
        self._pid = os.getpid()
        self._depth = 0
        self._queue = []                  # works waiting for the next group commit
        self._queue_lock = threading.Lock()

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

    def commit(self, engine, work):
        """Run `work(conn)` in a committed transaction, with any other work left meanwhile."""
        pending = _Pending(work)
        with self._queue_lock:
            self._queue.append(pending)
        with self._threads:
            if pending.done:          # a thread before us committed it: no file lock needed
                return pending.outcome()
            with self:
                with self._queue_lock:
                    group, self._queue = self._queue, []
                _commit_group(engine, group)
        return pending.outcome()

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class _Pending:
    """One caller's work and, once its group ended, its result or error."""

    __slots__ = ("work", "done", "result", "error")

    def __init__(self, work):
        self.work, self.done, self.result, self.error = work, False, None, None

    def outcome(self):
        if self.error is not None:
            raise self.error
        return self.result


def _commit_group(engine, group) -> None:
    """The works of `group` in one transaction; if that fails, each in its own."""
    try:
        try:
            with _immediate_transaction(engine) as conn:
                results = [pending.work(conn) for pending in group]
        except Exception:
            if len(group) == 1:
                raise
            for pending in group:   # the failing one fails alone; the others commit
                try:
                    with _immediate_transaction(engine) as conn:
                        pending.result = pending.work(conn)
                except Exception as error:
                    pending.error = error
                pending.done = True
            return
        for pending, result in zip(group, results):
            pending.result, pending.done = result, True
    except BaseException as error:      # also a failure of a single work: its caller's error
        for pending in group:
            if not pending.done:
                pending.error, pending.done = error, True
        if not isinstance(error, Exception):
            raise


@contextlib.contextmanager
def _immediate_transaction(engine):
    """A transaction that takes SQLite's write lock at BEGIN (not at its first write after a
    read, which fails with SQLITE_BUSY when another writer committed in between), with a fresh
    `transaction_state()`; committed at the end of the block, rolled back on an error."""
    with engine.connect() as conn, _fresh_state():
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        yield conn
        conn.commit()


_STATE = threading.local()


@contextlib.contextmanager
def _fresh_state():
    _STATE.current = {}
    try:
        yield
    finally:
        _STATE.current = None


def transaction_state() -> dict:
    """Scratch space of the transaction a work runs in (`commit`), shared by the works grouped
    in it and gone with it: what one work learnt of the database (the ledger's chain head) the
    next may reuse instead of reading it again. Empty outside a work."""
    current = getattr(_STATE, "current", None)
    return {} if current is None else current


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


def commit(engine: sa.engine.Engine, work):
    """Run `work(conn)` in a committed transaction and return what it returned (or raise what it
    raised). On SQLite, group-committed with the works other threads left meanwhile (see the
    module's docstring): `work` must do nothing but statements on `conn`, and may be run twice.
    On MySQL/MariaDB, a transaction of its own."""
    if engine.dialect.name == "sqlite":
        return _lock_of(engine).commit(engine, work)
    with engine.connect() as conn, _fresh_state():
        with conn.begin():
            result = work(conn)
        conn.info[COMMITTED] = True
    return result


@contextlib.contextmanager
def write_transaction(engine: sa.engine.Engine):
    """`engine.begin()` as the only writer of a SQLite file."""
    with serialized(engine), engine.begin() as conn:
        yield conn
