"""The TaskFlow journal: TaskFlow's SQLAlchemy persistence backend, made fast enough to journal
every transition.

The journal is the resume source of truth, so TaskFlow's tables and semantics are kept (stock
TaskFlow reads what we write); only the cost is cut:

- one `Connection` object (one MetaData/Table set) is reused across `get_connection()` calls, so
  SQLAlchemy's compiled-statement cache hits, and the hot statements are built once;
- SQLite files get a real pool (TaskFlow uses NullPool and reopens the file for every statement)
  and each new DBAPI connection gets `journal_mode=WAL`, `synchronous=FULL`, `busy_timeout` and
  `foreign_keys=ON`; `check_same_thread=False`, since the engine serves many threads;
- MySQL connections are pinged on checkout only after they sat idle (TaskFlow pings on every
  checkout), and are not rolled back on return when they come straight from our own commit;
- `update_atom_details` is one UPDATE instead of SELECT + merge + UPDATE (none at all for a
  save that changes only the task's progress: TaskFlow makes two per task), and
  `update_flow_details` writes only new and changed atoms (see `JournalConnection`).
- on SQLite, saves made while another is being written are committed together with it
  (`writers.commit`: one transaction and one fsync for the group, each save returning only once
  its group committed).
A save is then two round trips on MySQL (UPDATE, COMMIT) and at most one fsync on SQLite.

Durability: every TaskFlow save is committed before it returns, as its own transaction (MySQL)
or in a group of saves (SQLite). SQLite runs WAL with `synchronous=FULL`, which fsyncs the WAL on
every commit, so a committed transition survives the death of the process *and* of the machine.
NORMAL would survive only the process (WAL pages sit in the OS cache until a checkpoint); it was
not needed: FULL costs one fsync (0.25-1.3 ms on the test VM) per commit, and the journal stays
at about 1-2 ms per task (TaskFlow saves a task four times, two of which are written).
MySQL/MariaDB commits normally (InnoDB's `innodb_flush_log_at_trx_commit` decides the fsync).
"""

import collections
import os
import threading
import time

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy import pool as sa_pool
from taskflow import exceptions as tf_exc
from taskflow.persistence import models
from taskflow.persistence.backends import impl_sqlalchemy

from novapurge.errors import BadInput
from novapurge.persistence import writers

SQLITE_SYNCHRONOUS = "FULL"
SQLITE_BUSY_TIMEOUT_MS = 30_000
SQLITE_POOL_SIZE = 8           # TaskFlow's parallel engine and several engines share the pool
SQLITE_MAX_OVERFLOW = 24
MYSQL_POOL_SIZE = 8
MYSQL_MAX_OVERFLOW = 24
MYSQL_CONNECT_TIMEOUT_S = 5
MYSQL_PING_AFTER_IDLE_S = 30.0  # well under MariaDB's wait_timeout (8 h) and any proxy's idle cut
POOL_RECYCLE_S = 3600
# Atoms whose last write is remembered, to skip their progress-only saves. TaskFlow makes those
# right after the same atom's state save, and at most MAX_STEP_THREADS (512) atoms run at once,
# so the entry is still there when it is needed; an entry evicted early costs one UPDATE, never a
# lost write. The rows hold the atoms' results (a VM's facts): a bigger cache was most of what a
# batch kept in memory after its VMs ended.
WRITTEN_REMEMBERED = 1024
_PROGRESS_KEYS = ("progress", "progress_details")
POOL_TIMEOUT_S = 60

_ACCEPTED = "sqlite:///PATH, sqlite:// (in memory) or mysql+pymysql://USER@HOST[:PORT]/DB"
_CHECKED_IN_AT = "novapurge_checked_in_at"


def open_backend(url: str) -> "JournalBackend":
    """Validate the journal URL, connect, create or upgrade TaskFlow's schema, return the backend.

    Raises BadInput (one line, never with the password) for a URL we do not accept, a SQLite file
    whose directory cannot be created, a database that cannot be reached, or a schema that cannot
    be created.
    """
    parsed = _parse(url)
    shown = parsed.render_as_string(hide_password=True)
    if parsed.get_backend_name() == "sqlite" and not _sqlite_in_memory(parsed):
        directory = os.path.dirname(os.path.abspath(parsed.database))
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as err:
            raise BadInput(f"cannot create the journal directory {directory}: "
                           f"{err.strerror}") from None
    backend = JournalBackend({"connection": parsed.render_as_string(hide_password=False)})
    try:
        with backend.engine.connect():
            pass
    except sa_exc.DBAPIError as err:
        backend.close()
        raise BadInput(f"cannot connect to the journal database {_where(parsed)} ({shown}): "
                       f"{_reason(err, parsed)}") from None
    try:
        with writers.serialized(backend.engine):   # two processes opening a new SQLite file
            backend.get_connection().upgrade()
    except tf_exc.StorageFailure as err:
        backend.close()
        cause = err.cause if isinstance(err.cause, Exception) else err
        raise BadInput(f"cannot create the journal tables in {shown}: "
                       f"{_reason(cause, parsed)}") from None
    return backend


def engine_of(backend: impl_sqlalchemy.SQLAlchemyBackend) -> sa.engine.Engine:
    """The SQLAlchemy engine the journal writes through (the ledger may share it)."""
    return backend.engine


class JournalBackend(impl_sqlalchemy.SQLAlchemyBackend):
    """TaskFlow's SQLAlchemy backend with a tuned engine and one shared, thread-safe Connection.

    Configured like its parent (`{"connection": url}`); `engine=` may be given to share an engine.
    """

    def __init__(self, conf, engine=None):
        super().__init__(conf, engine=engine)
        self._connection = None
        self._connection_lock = threading.Lock()

    @staticmethod
    def _create_engine(conf):
        return _create_engine(sa.engine.make_url(conf["connection"]))

    def get_connection(self) -> "JournalConnection":
        """The backend's single Connection (its methods each check out a pooled DB connection)."""
        connection = self._connection
        if connection is None:
            with self._connection_lock:
                if self._connection is None:
                    fresh = JournalConnection(self, upgrade_lock=self._upgrade_lock)
                    fresh.validate(max_retries=self._max_retries)
                    self._validated = True
                    self._connection = fresh
                connection = self._connection
        return connection


class JournalConnection(impl_sqlalchemy.Connection):
    """TaskFlow's Connection, with the two per-transition methods cut to the writes they imply.

    TaskFlow's versions read the stored detail, `merge()` the incoming one into it and write the
    merged result back. `AtomDetail.merge` (Task and Retry) takes *every* mutable field from the
    incoming detail (state, intention, results, failure, revert_results, revert_failure, meta,
    version) and `FlowDetail.merge` takes state and meta, so the merged row is exactly the incoming
    detail's values with the stored name and type: an UPDATE of those fields writes the same row
    without reading it. What the read still provides is kept: NotFound when the row is missing,
    and atoms another writer added to the flow are returned so Storage sees them, as before.
    The returned details are the caller's own (Storage copies their fields back), not re-read
    ones, like TaskFlow's memory and file backends.
    """

    def __init__(self, backend, upgrade_lock):
        super().__init__(backend, upgrade_lock)
        # what was last written per atom (progress left out), for the atoms most recently saved
        self._written = collections.OrderedDict()
        self._written_lock = threading.Lock()
        atoms, flows = self._tables.atomdetails, self._tables.flowdetails
        self._update_atom = atoms.update().where(atoms.c.uuid == sa.bindparam("match_uuid"))
        self._insert_atom = atoms.insert()
        self._update_flow = flows.update().where(flows.c.uuid == sa.bindparam("match_uuid"))
        self._flow_atoms = sa.select(atoms).where(
            atoms.c.parent_uuid == sa.bindparam("parent_uuid"))

    def update_atom_details(self, atom_detail):
        """Persist an atom detail: one UPDATE in its own transaction; NotFound if it is unknown.

        A save that changes nothing but the task's progress is not written: TaskFlow's engine
        saves progress 0.0 right after RUNNING and 1.0 right after SUCCESS, two writes (and two
        fsyncs) per task that resume never reads (it goes by state, intention and results).
        """
        row = _atom_row(atom_detail)
        unchanged = _but_progress(row)
        with self._written_lock:
            if self._written.get(row["match_uuid"]) == unchanged:
                self._written.move_to_end(row["match_uuid"])
                return atom_detail
        try:
            updated = writers.commit(self._engine,
                                     lambda conn: conn.execute(self._update_atom, row).rowcount)
        except sa_exc.SQLAlchemyError:
            tf_exc.raise_with_cause(tf_exc.StorageFailure, "Failed updating atom details with"
                                    f" uuid '{atom_detail.uuid}'")
        if updated == 0:
            raise tf_exc.NotFound(f"No atom details found with uuid '{atom_detail.uuid}'")
        with self._written_lock:
            self._written[row["match_uuid"]] = unchanged
            if len(self._written) > WRITTEN_REMEMBERED:
                self._written.popitem(last=False)
        return atom_detail

    def add_flow_details(self, book_uuid: str, flow_detail) -> None:
        """Add one flow detail (and its atoms) to a saved logbook, without reading the others.

        `save_logbook` reads and merges every flow detail of the book (and their atoms) first: for
        a batch that adds its VMs one by one that is quadratic.
        """
        try:
            writers.commit(self._engine,
                           lambda conn: self._insert_flow_details(conn, flow_detail, book_uuid))
        except sa_exc.SQLAlchemyError:
            tf_exc.raise_with_cause(tf_exc.StorageFailure, "Failed adding flow details with"
                                    f" uuid '{flow_detail.uuid}'")

    def update_flow_details(self, flow_detail):
        """Persist a flow detail and its atoms, in one transaction.

        Reads the flow's stored atoms once (TaskFlow reads and converts them all, then rewrites
        every one), INSERTs the new atoms and UPDATEs only those whose stored fields differ from
        the incoming ones: the rows end up as TaskFlow's would, without a write per atom for every
        flow state change. Returns a copy of the flow detail that also holds any atom stored for
        this flow that the caller did not know of, as TaskFlow's version does.
        """
        flow_uuid = flow_detail.uuid
        try:
            stored = writers.commit(self._engine, lambda conn: self._write_flow(conn, flow_detail))
        except sa_exc.SQLAlchemyError:
            tf_exc.raise_with_cause(tf_exc.StorageFailure, "Failed updating flow details with"
                                    f" uuid '{flow_uuid}'")
        if stored is None:
            raise tf_exc.NotFound(f"No flow details found with uuid '{flow_uuid}'")
        merged = flow_detail.copy()
        for row in stored.values():  # what is left: atoms only the database knew of
            merged.add(self._converter.convert_atom_detail(row))
        return merged

    def _write_flow(self, conn, flow_detail):
        """update_flow_details' statements; the stored atoms the caller did not know of, or None
        when the flow is not stored."""
        flow_uuid = flow_detail.uuid
        flow_row = {"meta": flow_detail.meta, "state": flow_detail.state, "match_uuid": flow_uuid}
        if conn.execute(self._update_flow, flow_row).rowcount == 0:
            return None
        stored = {row.uuid: row._mapping
                  for row in conn.execute(self._flow_atoms, {"parent_uuid": flow_uuid})}
        changed, new = [], []
        for ad in flow_detail:
            row = _atom_row(ad)
            have = stored.pop(ad.uuid, None)
            if have is None:
                new.append(_new_atom_row(ad, flow_uuid))
            elif any(have[key] != value for key, value in row.items() if key != "match_uuid"):
                changed.append(row)
        if changed:
            conn.execute(self._update_atom, changed)
        if new:
            conn.execute(self._insert_atom, new)
        return stored


def _atom_row(atom_detail) -> dict:
    """The UPDATE parameters of an atom detail: every mutable field (not name, uuid, type)."""
    row = atom_detail.to_dict()
    del row["name"]
    row["match_uuid"] = row.pop("uuid")
    return row


def _but_progress(row: dict) -> dict:
    """An atom's UPDATE parameters without its progress (meta.progress, progress_details).

    Always a new meta dict: the row's is the atom detail's own, which TaskFlow changes in place
    (it adds the progress right after the RUNNING save), and a remembered row sharing it would
    no longer match the next save, which would then be written for nothing.
    """
    meta = row.get("meta")
    if not isinstance(meta, dict):
        return row
    return dict(row, meta={k: v for k, v in meta.items() if k not in _PROGRESS_KEYS})


def _new_atom_row(atom_detail, parent_uuid: str) -> dict:
    row = atom_detail.to_dict()
    row["parent_uuid"] = parent_uuid
    row["atom_type"] = models.atom_detail_type(atom_detail)
    return row


def _parse(url: str) -> sa.engine.URL:
    """The URL, if it is one we accept; BadInput (without the password) otherwise."""
    try:
        parsed = sa.engine.make_url(str(url))
    except (sa_exc.ArgumentError, ValueError, TypeError):
        raise BadInput(f"the journal URL is not a database URL; use {_ACCEPTED}") from None
    shown = parsed.render_as_string(hide_password=True)
    if parsed.drivername == "sqlite":
        if parsed.host or parsed.username or parsed.password or parsed.port or parsed.query:
            raise BadInput(f"unsupported SQLite journal URL {shown}; use {_ACCEPTED}")
        return parsed
    if parsed.drivername == "mysql+pymysql":
        if not parsed.host or not parsed.database:
            raise BadInput(f"the journal URL {shown} needs a host and a database name; "
                           f"use {_ACCEPTED}")
        return parsed
    raise BadInput(f"unsupported journal URL {shown}; use {_ACCEPTED}")


def _sqlite_in_memory(url: sa.engine.URL) -> bool:
    return url.database in (None, "", ":memory:")


def _where(url: sa.engine.URL) -> str:
    if url.get_backend_name() == "sqlite":
        return f"file {url.database}" if not _sqlite_in_memory(url) else "in memory"
    return f"at {url.host}:{url.port or 3306}"


def _reason(err: Exception, url: sa.engine.URL) -> str:
    """The driver's own message, on one line, with the password (if any) masked."""
    original = getattr(err, "orig", None) or err
    args = getattr(original, "args", ())
    if len(args) == 2 and isinstance(args[1], str):  # pymysql: (errno, message)
        text = f"{args[1]} (error {args[0]})"
    else:
        text = str(original)
    text = " ".join(text.split())
    if url.password:
        text = text.replace(str(url.password), "***")
    return text


def _create_engine(url: sa.engine.URL) -> sa.engine.Engine:
    if url.get_backend_name() == "sqlite":
        return _create_sqlite_engine(url)
    return _create_mysql_engine(url)


def _create_sqlite_engine(url: sa.engine.URL) -> sa.engine.Engine:
    connect_args = {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
    if _sqlite_in_memory(url):
        # One shared connection, as TaskFlow does: a second one would be a different database.
        engine = sa.create_engine(url, poolclass=sa_pool.StaticPool, connect_args=connect_args)
        wal = False
    else:
        engine = sa.create_engine(url, poolclass=sa_pool.QueuePool, pool_size=SQLITE_POOL_SIZE,
                                  max_overflow=SQLITE_MAX_OVERFLOW, pool_timeout=POOL_TIMEOUT_S,
                                  connect_args=connect_args)
        wal = True

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        cursor = dbapi_conn.cursor()
        try:
            if wal:
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={SQLITE_SYNCHRONOUS}")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    return engine


def _create_mysql_engine(url: sa.engine.URL) -> sa.engine.Engine:
    # pool_reset_on_return=None: the "reset" listener below rolls back instead, unless the
    # connection comes back straight from one of our commits (a ROLLBACK round trip saved per save).
    engine = sa.create_engine(url, pool_size=MYSQL_POOL_SIZE, max_overflow=MYSQL_MAX_OVERFLOW,
                              pool_timeout=POOL_TIMEOUT_S, pool_recycle=POOL_RECYCLE_S,
                              pool_reset_on_return=None, isolation_level="READ COMMITTED",
                              connect_args={"connect_timeout": MYSQL_CONNECT_TIMEOUT_S})

    @sa.event.listens_for(engine, "reset")
    def _on_reset(dbapi_conn, record, state):
        committed = record is not None and record.info.pop(writers.COMMITTED, False)
        if not (state.terminate_only or state.transaction_was_reset or committed):
            dbapi_conn.rollback()

    @sa.event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_conn, record):
        if record is not None:
            record.info[_CHECKED_IN_AT] = time.monotonic()

    @sa.event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_conn, record, _proxy):
        record.info.pop(writers.COMMITTED, None)
        # A connection used within the last seconds is alive; ping only those that sat idle,
        # so the server (or a proxy) closing idle connections is caught before the statement.
        checked_in_at = record.info.get(_CHECKED_IN_AT)
        if checked_in_at is None or time.monotonic() - checked_in_at < MYSQL_PING_AFTER_IDLE_S:
            return
        try:
            dbapi_conn.ping(reconnect=False)
        except Exception as err:
            raise sa_exc.DisconnectionError(f"journal database connection went away: {err}")

    return engine
