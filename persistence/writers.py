"""One writer at a time per SQLite file in this process.

SQLite admits one writer per database anyway. When threads of one process contend for it, the
losers wait in SQLite's busy handler, which sleeps in steps of 1 to 100 ms and holds a pooled
connection while it sleeps: at a batch's concurrency that turned each journal save into tens of
milliseconds of sleeping while the file was free. A lock queues the writers and hands over at
once. Other processes on the same file are still handled by `busy_timeout`. MySQL/MariaDB has
row locks and needs none of this: the context is a no-op there.

Lock order: a Nova database transaction may write the journal (the ledger's before-state) while
it is open; a journal write never touches a Nova database. So the order is always Nova -> journal.
"""

import contextlib
import threading
import weakref

import sqlalchemy as sa

_LOCKS: "weakref.WeakKeyDictionary[sa.engine.Engine, threading.RLock]" = weakref.WeakKeyDictionary()
_GUARD = threading.Lock()


def _lock_of(engine: sa.engine.Engine):
    with _GUARD:
        lock = _LOCKS.get(engine)
        if lock is None:
            lock = _LOCKS[engine] = threading.RLock()
        return lock


@contextlib.contextmanager
def serialized(engine: sa.engine.Engine):
    """Hold the engine's writer lock (SQLite only) for the block."""
    if engine.dialect.name != "sqlite":
        yield
        return
    with _lock_of(engine):
        yield


@contextlib.contextmanager
def write_transaction(engine: sa.engine.Engine):
    """`engine.begin()` as the only writer of this process on a SQLite file."""
    with serialized(engine), engine.begin() as conn:
        yield conn
