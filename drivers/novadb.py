"""Nova's databases: the API DB (optional) and the cell DB(s), read and written with raw values.

Reflection decides what a schema has (legacy quota tables, console_auth_tokens, cells v2), never a
release name. Columns are untyped on purpose: values pass through the DB-API untouched, so a row
read before a change can be written back byte for byte.
"""

import datetime
import logging
import random
import threading
import time
import urllib.parse

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from novapurge import validate
from novapurge.errors import BadInput
from novapurge.persistence import writers

LOG = logging.getLogger(__name__)
POOL_SIZE, POOL_OVERFLOW, POOL_TIMEOUT_S = 8, 24, 120
TRANSACTION_ATTEMPTS = 5
TRANSACTION_BACKOFF_S = 0.05
_RETRIED_MYSQL_ERRORS = {1205, 1213}   # lock wait timeout, deadlock (the server rolled back)


def safe_url(url) -> str:
    """A URL fit for messages: the password is masked."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa_exc.ArgumentError:
        return "<unparseable URL>"


def make_engine(url: str) -> sa.engine.Engine:
    """An engine for a Nova or journal URL; a bad URL is BadInput without its password."""
    try:
        parsed = sa.engine.make_url(url)
    except sa_exc.ArgumentError:
        raise BadInput("not a database URL (expected e.g. mysql+pymysql://user:pw@host/nova)") from None
    if parsed.get_backend_name() not in ("sqlite", "mysql"):
        raise BadInput(f"unsupported database {safe_url(url)}: use mysql+pymysql:// or sqlite:///")
    # a batch runs --parallel engines (8 by default, more on request) against the same database
    pool = {"pool_size": POOL_SIZE, "max_overflow": POOL_OVERFLOW, "pool_timeout": POOL_TIMEOUT_S}
    if parsed.get_backend_name() == "mysql":
        return sa.create_engine(parsed, pool_pre_ping=True, pool_recycle=3600, **pool)
    in_memory = parsed.database in (None, "", ":memory:")   # one connection: no pool to size
    return sa.create_engine(parsed, connect_args={"timeout": 30}, **({} if in_memory else pool))


class NovaDatabase:
    """One Nova database: the API DB or one cell DB."""

    def __init__(self, url: str, label: str):
        self.label = label
        self.engine = make_engine(url)
        self._clauses = {}   # table name -> its TableClause (built once: statements reuse it)
        self._statements = {}  # statement shape -> statement (see _statement)
        try:
            self._reflect()
        except sa_exc.SQLAlchemyError as error:
            raise BadInput(f"cannot reach Nova database {label} at {safe_url(url)}: "
                           f"{type(error.orig or error).__name__}") from None

    def _reflect(self) -> None:
        """Every table's columns and primary key, read once here (15 ms on SQLite): reflecting
        on first use would check out a second pooled connection while the caller holds one, and
        a batch's threads doing that at once exhaust the pool and wait on each other."""
        inspector = sa.inspect(self.engine)
        self._tables = set(inspector.get_table_names())
        self._columns = {table: [c["name"] for c in columns] for (_schema, table), columns
                         in inspector.get_multi_columns().items()}
        self._keys = {table: pk["constrained_columns"] or self._columns.get(table, [])
                      for (_schema, table), pk in inspector.get_multi_pk_constraint().items()}

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def has_table(self, name: str) -> bool:
        return name in self._tables

    def columns(self, name: str) -> list:
        if name not in self._columns:
            self._columns[name] = [c["name"] for c in sa.inspect(self.engine).get_columns(name)]
        return self._columns[name]

    def has_column(self, table: str, column: str) -> bool:
        return self.has_table(table) and column in self.columns(table)

    def primary_key(self, name: str) -> list:
        if name not in self._keys:
            pk = sa.inspect(self.engine).get_pk_constraint(name)["constrained_columns"]
            self._keys[name] = pk or self.columns(name)
        return self._keys[name]

    def table(self, name: str) -> sa.TableClause:
        """The table with untyped columns (raw values in, raw values out).

        On SQLite a table keyed by anything but `id` also shows its hidden rowid, so a deleted
        row is re-inserted where it was (the file's own order stays byte-identical).
        """
        clause = self._clauses.get(name)
        if clause is None:
            validate.identifier(name, "table name")
            columns = list(self.columns(name))
            if self.dialect == "sqlite" and self.primary_key(name) != ["id"]:
                columns.append("rowid")
            clause = self._clauses[name] = sa.table(name, *(sa.column(c) for c in columns))
        return clause

    def transaction(self):
        """A write transaction (`engine.begin()`), the process's only writer on a SQLite file."""
        return writers.write_transaction(self.engine)

    def run_transaction(self, work):
        """`work(conn)` in a write transaction, run again when MySQL/MariaDB picked it as a
        deadlock victim or it waited too long for a row lock: the server rolled it back, so
        running it again is what Nova's own DB API does (oslo.db's `wrap_db_retry`). Concurrent
        purges of instances of one project meet on its quota rows and the tables' gap locks."""
        for attempt in range(1, TRANSACTION_ATTEMPTS + 1):
            try:
                with self.transaction() as conn:
                    return work(conn)
            except sa_exc.OperationalError as error:
                code = (getattr(error.orig, "args", None) or (None,))[0]
                if code not in _RETRIED_MYSQL_ERRORS or attempt == TRANSACTION_ATTEMPTS:
                    raise
                LOG.info("%s: transaction rolled back by the server (%s), attempt %d of %d",
                         self.label, code, attempt + 1, TRANSACTION_ATTEMPTS)
                time.sleep(random.uniform(0, TRANSACTION_BACKOFF_S * 2 ** attempt))

    def select(self, conn, name: str, where: dict, *, for_update=False) -> list:
        """Rows of `name` matching `where` in key order: column: value, None meaning IS NULL, a
        tuple meaning IN (one statement for many keys)."""
        lock = for_update and self.dialect == "mysql"

        def build(table):
            query = (sa.select(table).where(*_conditions(table, where))
                     .order_by(*(table.c[k] for k in self.primary_key(name))))
            return query.with_for_update() if lock else query
        query = self._statement(("select", name, _shape(where), lock), build)
        return [dict(row._mapping) for row in conn.execute(query, _where_params(where))]

    def update(self, conn, name: str, where: dict, values: dict) -> int:
        statement = self._statement(("update", name, _shape(where), tuple(values)),
                                    lambda table: sa.update(table)
                                    .where(*_conditions(table, where))
                                    .values({k: sa.bindparam(f"v_{k}") for k in values}))
        params = {**_where_params(where), **{f"v_{k}": v for k, v in values.items()}}
        return conn.execute(statement, params).rowcount

    def delete(self, conn, name: str, where: dict) -> int:
        statement = self._statement(("delete", name, _shape(where)), lambda table: sa.delete(
            table).where(*_conditions(table, where)))
        return conn.execute(statement, _where_params(where)).rowcount

    def insert(self, conn, name: str, row: dict) -> None:
        statement = self._statement(("insert", name, tuple(row)), lambda table: sa.insert(
            table).values({k: sa.bindparam(f"v_{k}") for k in row}))
        conn.execute(statement, {f"v_{k}": v for k, v in row.items()})

    def _statement(self, key: tuple, build):
        """A statement built once per shape (table, columns compared, columns set): values
        travel as bound parameters, so SQLAlchemy compiles each shape once."""
        statement = self._statements.get(key)
        if statement is None:
            statement = self._statements[key] = build(self.table(key[1]))
        return statement

    def key_of(self, name: str, row: dict) -> dict:
        return {k: row[k] for k in self.primary_key(name)}

    def restore(self, conn, name: str, row: dict) -> None:
        """Put `row` back exactly: update it where it still exists, insert it where it was deleted."""
        key = self.key_of(name, row)
        if self.select(conn, name, key):
            self.update(conn, name, key, row)
        else:
            self.insert(conn, name, row)

    def now(self):
        """The current UTC time as Nova's SQLAlchemy models store it in this dialect."""
        now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
        if self.dialect == "sqlite":
            return now.strftime("%Y-%m-%d %H:%M:%S.%f")
        return now.replace(microsecond=0)

    def dispose(self):
        self.engine.dispose()


def _shape(where: dict) -> tuple:
    """The columns a WHERE compares, and how: to NULL or to a tuple (IN) need their own SQL."""
    return tuple((k, v is None, isinstance(v, tuple)) for k, v in where.items())


def _condition(column, value):
    if value is None:
        return column.is_(None)
    if isinstance(value, tuple):
        return column.in_(sa.bindparam(f"w_{column.name}", expanding=True))
    return column == sa.bindparam(f"w_{column.name}")


def _conditions(table, where: dict) -> list:
    return [_condition(table.c[k], v) for k, v in where.items()]


def _where_params(where: dict) -> dict:
    return {f"w_{k}": list(v) if isinstance(v, tuple) else v
            for k, v in where.items() if v is not None}


def render_cell_url(template: str, base_url: str | None) -> str:
    """Fill a templated cell_mappings.database_connection the way Nova does, from [database]."""
    if "{" not in template:
        return template
    if not base_url:
        raise BadInput("a cell's database_connection is a template and no [database] connection "
                       "was given to fill it")
    parts = urllib.parse.urlsplit(base_url)
    fields = {
        "scheme": parts.scheme, "username": parts.username or "", "password": parts.password or "",
        "hostname": parts.hostname or "", "port": parts.port or "", "path": parts.path.lstrip("/"),
        "query": parts.query, "fragment": parts.fragment,
    }
    try:
        return template.format(**fields)
    except (KeyError, IndexError):
        raise BadInput("a cell's database_connection template has unknown fields") from None


class NovaDatabases:
    """The API DB and the cell DBs, found through cell mappings when there is an API DB.

    cell_url: the `[database] connection` (the only cell on a cloud without an API DB).
    overrides: cell uuid or name -> URL, for cells whose mapping names a host unreachable from here.
    """

    def __init__(self, cell_url=None, api_url=None, overrides=None):
        self._cell_url = cell_url
        self._api_url = api_url
        self._api = None
        self._overrides = dict(overrides or {})
        self._cells = {}
        # one NovaDatabase (one engine, one pool, one SQLite writer lock) per database, also
        # when a batch's threads ask for it at once
        self._opening = threading.RLock()

    @property
    def api(self) -> NovaDatabase | None:
        """The API database (connected on first use), or None on a cloud without one."""
        if self._api is None and self._api_url:
            with self._opening:
                if self._api is None:
                    self._api = NovaDatabase(self._api_url, "api")
        return self._api

    def cell(self, ref: dict | None) -> NovaDatabase:
        """The cell database named by a facts' cell reference ({"uuid","name"} or None)."""
        key = (ref or {}).get("uuid") or "default"
        if key not in self._cells:
            with self._opening:
                if key not in self._cells:
                    self._cells[key] = NovaDatabase(self._cell_url_for(ref),
                                                    self._cell_label(ref))
        return self._cells[key]

    def locate(self, vm_uuid: str):
        """(cell reference, cell database, mapping row or None) of an instance, or BadInput."""
        if not self._cell_url and not self._api_url:
            raise BadInput("no Nova database given: use --db/--api-db, --nova-conf or the "
                           "[database] section of novapurge.toml")
        if self.api is None:
            db = self.cell(None)
            return None, db, None
        with self.api.engine.connect() as conn:
            mappings = self.api.select(conn, "instance_mappings", {"instance_uuid": vm_uuid})
            mapping = mappings[0] if mappings else None
            cells = self.api.select(conn, "cell_mappings", {})
        by_id = {cell["id"]: cell for cell in cells}
        if mapping and mapping.get("cell_id") in by_id:
            ref = self._ref(by_id[mapping["cell_id"]])
            return ref, self.cell(ref), mapping
        for cell in cells:  # no usable mapping: look in every cell (the API answers 404 here)
            ref = self._ref(cell)
            try:
                db = self.cell(ref)
            except BadInput as error:
                LOG.warning("skipping %s while searching for %s: %s", ref["name"], vm_uuid, error)
                continue
            with db.engine.connect() as conn:
                if db.has_table("instances") and db.select(conn, "instances", {"uuid": vm_uuid}):
                    return ref, db, mapping
        if self._cell_url:
            db = self.cell(None)
            with db.engine.connect() as conn:
                if db.select(conn, "instances", {"uuid": vm_uuid}):
                    return None, db, mapping
        raise BadInput(f"unknown instance {vm_uuid}: no cell database has it")

    def _ref(self, cell: dict) -> dict:
        return {"uuid": cell["uuid"], "name": cell["name"]}

    @staticmethod
    def _cell_label(ref):
        return (ref or {}).get("name") or (ref or {}).get("uuid") or "default"

    def _cell_url_for(self, ref: dict | None) -> str:
        if ref is None:
            if not self._cell_url:
                raise BadInput("no cell database: set [database] connection")
            return self._cell_url
        for key in (ref["uuid"], ref.get("name")):
            if key and key in self._overrides:
                return self._overrides[key]
        with self.api.engine.connect() as conn:
            rows = self.api.select(conn, "cell_mappings", {"uuid": ref["uuid"]})
        if not rows or not rows[0].get("database_connection"):
            raise BadInput(f"cell {self._cell_label(ref)} has no database_connection; "
                           f"set one under [cells] in the config")
        return render_cell_url(rows[0]["database_connection"], self._cell_url)

    def dispose(self):
        for db in list(self._cells.values()) + ([self._api] if self._api else []):
            db.dispose()
