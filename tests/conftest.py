"""Shared fixtures: seeded Nova clouds on SQLite and MariaDB, journals, and the CLI as a subprocess.

- `backend` ("sqlite" | "mysql") picks where the Nova DBs and the journal live; a test module
  overrides it (a plain fixture returning "sqlite") or parametrizes it directly.
- `nova` is a cloud seeded from the real Nova 34 DDL: a stuck ERROR instance (the target), one stuck
  in task_state "deleting", one shelved_offloaded, healthy neighbours (active, stopped) in the same
  project, and one Nova already deleted. Seeding runs once per session and backend; each test gets
  a copy (file copy for SQLite, `SHOW CREATE TABLE` + `INSERT ... SELECT` for MariaDB).
- `journal` / `journal_url`: an empty journal: a SQLite file the first command creates, or a
  MariaDB database copied from one whose (TaskFlow and ledger) tables were created once.
- `cli(args, env=None, expect=None)`: `python -m novapurge ...` with NOVAPURGE_DB/API_DB/JOURNAL
  set, returning `CliResult(returncode, stdout, stderr, json)`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import NamedTuple

import pytest
import sqlalchemy as sa

from novapurge.persistence.ledger import Actor, Ledger
from novapurge.sandbox import novadb
from novapurge.sandbox.cloud import SandboxCloud
from novapurge.sandbox.estate import populate_estate
from novapurge.sandbox.hosts import SimHosts
from novapurge.sandbox.seed import DEFAULT_PROJECT, DEFAULT_USER, NovaSeeder

SERVER = "mysql+pymysql://root@127.0.0.1:3306"
SEED_NOW = dt.datetime(2025, 6, 1, 12, 0, 0)  # every seeded timestamp is at or before this
PROJECT, USER = DEFAULT_PROJECT, DEFAULT_USER
RUN_ID = secrets.token_hex(3)  # keeps MariaDB names of concurrent sessions apart
_NUMBERS = itertools.count(1)

# role -> NovaSeeder.add_instance arguments (seeded in this order, with a fixed seed and clock)
INSTANCES = {
    "target": dict(name="web-err", vm_state="error", fault=True, volumes=("iscsi",),
                   vifs=("ovs-hybrid",), console_tokens=2, legacy_quota=True, vcpus=2,
                   memory_mb=4096, build_request=True),
    "deleting": dict(name="db-deleting", vm_state="active", task_state="deleting",
                     legacy_quota=True, volumes=("rbd",)),
    "shelved": dict(name="batch-shelved", vm_state="shelved_offloaded", legacy_quota=True),
    "active": dict(name="web-ok", vm_state="active", legacy_quota=True, volumes=("iscsi",)),
    "stopped": dict(name="web-stopped", vm_state="stopped", legacy_quota=True),
    "gone": dict(name="old-deleted", vm_state="active", deleted=True),
}
STUCK = ("target", "deleting", "shelved")
HEALTHY = ("active", "stopped")

# The target's purge steps, in flow order (sandbox hosts and cloud), and those that change
# something before the point of no return (each records a before-state and reverts it).
STEPS = ("DiscoverInstance", "GuardInstance", "VerifyDomainIdentity", "DeleteDbAllocations",
         "DeleteAllocations", "DestroyDomain", "UnplugVif", "DisconnectIscsiTarget",
         "QuarantineInstanceDirs", "UndefineDomain", "SoftDeleteInstance", "ReleaseQuotaUsage",
         "QueueMappingForDelete", "PassPointOfNoReturn", "DetachVolume", "DeletePort",
         "EmptyQuarantine")
MUTATING = ("DeleteDbAllocations", "DeleteAllocations", "DestroyDomain", "UnplugVif",
            "DisconnectIscsiTarget", "QuarantineInstanceDirs", "UndefineDomain",
            "SoftDeleteInstance", "ReleaseQuotaUsage", "QueueMappingForDelete")
FINALIZE = ("DetachVolume", "DeletePort", "EmptyQuarantine")

_DATETIME_TEXT = re.compile(r"^\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(\.\d+)?$")


# ---- values ------------------------------------------------------------------------------------
def as_datetime(value):
    """A datetime for a DB value (datetime, or SQLite's text form), else None."""
    if isinstance(value, dt.datetime):
        return value
    if isinstance(value, str) and _DATETIME_TEXT.match(value):
        return dt.datetime.fromisoformat(value.replace(" ", "T"))
    return None


def is_fresh(value) -> bool:
    """True for a timestamp written after seeding (i.e. by the purge)."""
    when = as_datetime(value)
    return when is not None and when > SEED_NOW


def normalize(snap: dict, replacements: dict) -> dict:
    """A snapshot with purge-written timestamps as "<now>" and per-copy strings replaced."""
    def value(v):
        if is_fresh(v):
            return "<now>"
        if isinstance(v, str) and v in replacements:
            return replacements[v]
        return v
    return {db: {table: [tuple(value(v) for v in row) for row in rows]
                 for table, rows in tables.items()} for db, tables in snap.items()}


def diff_tables(before: dict, after: dict) -> list:
    """Names of the tables whose rows differ between two snapshots of one database."""
    return sorted(t for t in set(before) | set(after) if before.get(t) != after.get(t))


def snapshot_diff(actual: dict, expected: dict) -> dict:
    """{"db.table": {"missing": rows, "unexpected": rows}} for every table that differs."""
    found = {}
    for db in sorted(set(actual) | set(expected)):
        mine, theirs = actual.get(db, {}), expected.get(db, {})
        for table in diff_tables(mine, theirs):
            a, e = mine.get(table, []), theirs.get(table, [])
            found[f"{db}.{table}"] = {"missing": [r for r in e if r not in a],
                                      "unexpected": [r for r in a if r not in e]}
    return found


def assert_same(actual: dict, expected: dict, what: str = "snapshot") -> None:
    """Snapshots equal, or a failure naming each differing table and its rows."""
    if actual != expected:
        diff = snapshot_diff(actual, expected)
        lines = [f"{what} differs in {len(diff)} table(s):"]
        for table, rows in diff.items():
            lines.append(f"  {table}: missing {rows['missing']}\n"
                         f"    unexpected {rows['unexpected']}")
        pytest.fail("\n".join(lines), pytrace=False)


def read_secret(nova) -> str:
    """The CHAP password in the target's iSCSI connection_info (the secret nothing may leak)."""
    rows = nova.rows("cell", "block_device_mapping", instance_uuid=nova.uuids["target"])
    infos = [json.loads(r["connection_info"]) for r in rows if r["connection_info"]]
    secrets_found = [i["data"]["auth_password"] for i in infos if i["data"].get("auth_password")]
    assert len(secrets_found) == 1 and len(secrets_found[0]) >= 16
    return secrets_found[0]


# ---- the cloud ---------------------------------------------------------------------------------
def _engine(url: str) -> sa.Engine:
    # Pooled (reflection opens a connection per call: NullPool makes a MariaDB snapshot 15x
    # slower); every owner disposes its engines before a database is dropped.
    return sa.create_engine(url)


def seed_cloud(cell: sa.Engine, api: sa.Engine | None, cell_url: str) -> dict:
    """Seed the instances of INSTANCES; returns {role: add_instance facts}."""
    seeder = NovaSeeder(cell, api, cell_url=cell_url, seed=0, now=SEED_NOW)
    return {role: seeder.add_instance(**kwargs) for role, kwargs in INSTANCES.items()}


@dataclasses.dataclass
class Cloud:
    """One seeded Nova cloud: its URLs, engines, instances by role and comparison helpers."""

    backend: str
    cell_url: str
    api_url: str | None
    info: dict                  # role -> add_instance facts
    mysql_names: list = dataclasses.field(default_factory=list)
    sandbox: Path | None = None  # simulated hosts and cloud matching the seeded instances

    def __post_init__(self):
        self.cell = _engine(self.cell_url)
        self.api = _engine(self.api_url) if self.api_url else None
        self.uuids = {role: facts["uuid"] for role, facts in self.info.items()}

    @property
    def engines(self) -> dict:
        return {"cell": self.cell, **({"api": self.api} if self.api is not None else {})}

    def snap(self) -> dict:
        """Every row of both databases, raw values (`novadb.snapshot`), keyed "cell"/"api", and
        the simulated hosts and cloud (`estate`)."""
        return {**{label: novadb.snapshot(engine) for label, engine in self.engines.items()},
                "estate": self.estate()}

    def env(self, journal_url: str) -> dict:
        """The NOVAPURGE_* variables of a CLI run on this cloud (its DBs, hosts, APIs)."""
        return {"NOVAPURGE_DB": self.cell_url, "NOVAPURGE_API_DB": self.api_url,
                "NOVAPURGE_JOURNAL": journal_url, "NOVAPURGE_SANDBOX": str(self.sandbox)}

    def estate(self) -> dict:
        """The simulated hosts' and cloud's state, as one pseudo-database of JSON rows."""
        hosts = SimHosts(self.sandbox / "hosts")
        names = sorted(p.stem for p in (self.sandbox / "hosts").glob("*.json"))
        rows = {f"host:{n}": [(json.dumps(hosts.host(n).snapshot(), sort_keys=True),)]
                for n in names}
        rows["cloud"] = [(json.dumps(SandboxCloud(self.sandbox / "cloud.json").snapshot(),
                                     sort_keys=True),)]
        return rows

    def normalized(self) -> dict:
        """`snap()` and the estate, comparable across copies (purge timestamps, URL replaced)."""
        return normalize(self.snap(), {self.cell_url: "<cell-url>"})

    def rows(self, db: str, table: str, **where) -> list:
        """Rows of one table as dicts of raw values, in primary-key order."""
        engine = self.engines[db]
        quote = engine.dialect.identifier_preparer.quote
        pk = sa.inspect(engine).get_pk_constraint(table).get("constrained_columns") or []
        sql = f"SELECT * FROM {quote(table)}"
        if where:
            sql += " WHERE " + " AND ".join(f"{quote(k)} = :{k}" for k in where)
        if pk:
            sql += " ORDER BY " + ", ".join(quote(c) for c in pk)
        with engine.connect() as conn:
            return [dict(r) for r in conn.execute(sa.text(sql), where).mappings()]

    def tables(self, db: str) -> set:
        return set(sa.inspect(self.engines[db]).get_table_names())

    def columns(self, db: str, table: str) -> list:
        return [c["name"] for c in sa.inspect(self.engines[db]).get_columns(table)]

    def referencing(self, uuid: str) -> dict:
        """Every row that references instance `uuid` (raw tuples), per "db.table".

        The tables of instance_refs_nova34.txt present in the schema, plus the events of the
        instance's actions.
        """
        refs = novadb.instance_ref_tables()
        found = {}
        for db in self.engines:
            present = self.tables(db)
            for table, column in refs["main" if db == "cell" else "api"].items():
                if table in present:
                    found[f"{db}.{table}"] = [tuple(r.values()) for r in
                                              self.rows(db, table, **{column: uuid})]
            if db == "cell" and "instance_actions_events" in present:
                actions = [r["id"] for r in self.rows(db, "instance_actions", instance_uuid=uuid)]
                found["cell.instance_actions_events"] = [
                    tuple(r.values()) for a in actions
                    for r in self.rows(db, "instance_actions_events", action_id=a)]
        return found

    def dispose(self):
        for engine in self.engines.values():
            engine.dispose()


class _Templates:
    """Seeded databases built once per session and backend, copied for each test."""

    def __init__(self, factory):
        self._factory = factory
        self._built = {}
        self._mysql_names = []

    def template(self, backend: str) -> dict:
        if backend not in self._built:
            self._built[backend] = (self._build_sqlite() if backend == "sqlite"
                                    else self._build_mysql())
        return self._built[backend]

    def _build_sqlite(self) -> dict:
        directory = self._factory.mktemp("nova-template")
        urls = {w: f"sqlite:///{directory}/{w}.sqlite" for w in ("cell", "api")}
        return {"dir": directory, **self._seed(urls, directory / "sandbox")}

    def _build_mysql(self) -> dict:
        _require_mysql()
        names = {w: f"np_t_{RUN_ID}_tpl_{w}" for w in ("cell", "api")}
        self._mysql_names += names.values()
        urls = {w: novadb.mysql_database(SERVER, n) for w, n in names.items()}
        return {"names": names, **self._seed(urls, self._factory.mktemp("sandbox-template"))}

    @staticmethod
    def _seed(urls: dict, sandbox: Path) -> dict:
        cell, api = _engine(urls["cell"]), _engine(urls["api"])
        try:
            novadb.create_schema(cell, "main")
            novadb.create_schema(api, "api")
            info = seed_cloud(cell, api, urls["cell"])
            populate_estate(sandbox, cell, api, info.values())
        finally:
            cell.dispose()
            api.dispose()
        return {"urls": urls, "info": info, "sandbox": sandbox}

    def new_cloud(self, backend: str, directory: Path) -> Cloud:
        """A fresh copy of the seeded cloud (its cell mapping pointing at the copy)."""
        tpl = self.template(backend)
        if backend == "sqlite":
            directory.mkdir(parents=True, exist_ok=True)
            urls = {}
            for which in ("cell", "api"):
                target = directory / f"{which}.sqlite"
                shutil.copyfile(tpl["dir"] / f"{which}.sqlite", target)
                urls[which] = f"sqlite:///{target}"
            names = []
        else:
            number = next(_NUMBERS)
            names = [f"np_t_{RUN_ID}_{number}_{w}" for w in ("cell", "api")]
            urls = {w: _copy_mysql_database(tpl["names"][w], n)
                    for w, n in zip(("cell", "api"), names)}
        api = _engine(urls["api"])
        try:
            with api.begin() as conn:
                conn.execute(sa.text("UPDATE cell_mappings SET database_connection = :url "
                                     "WHERE database_connection = :old"),
                             {"url": urls["cell"], "old": tpl["urls"]["cell"]})
        finally:
            api.dispose()
        sandbox = directory.parent / f"{directory.name}-sandbox"
        shutil.copytree(tpl["sandbox"], sandbox)
        return Cloud(backend, urls["cell"], urls["api"], tpl["info"], names, sandbox)

    def journal(self, backend: str, directory: Path) -> JournalDb:
        """An empty journal; on MariaDB a copy of one whose tables were created once (TaskFlow's
        migrations take a second there), on SQLite a file the first command creates."""
        template = None
        if backend == "mysql":
            if "journal" not in self._built:
                from novapurge.persistence.journal import Journal
                name = f"np_t_{RUN_ID}_tpl_journal"
                self._mysql_names.append(name)
                Journal(novadb.mysql_database(SERVER, name), Actor("tests")).close()
                self._built["journal"] = name
            template = self._built["journal"]
        return new_journal(backend, directory, template)

    def close(self):
        for name in self._mysql_names:
            novadb.drop_mysql_database(SERVER, name)


def _require_mysql():
    engine = sa.create_engine(SERVER, poolclass=sa.pool.NullPool)
    try:
        with engine.connect():
            pass
    except sa.exc.OperationalError as error:
        pytest.fail(f"MariaDB on 127.0.0.1:3306 must be up (`make services`): {error}")
    finally:
        engine.dispose()


_TEMPLATE_TABLES: dict = {}  # source database -> [(table, CREATE TABLE ..., has rows)]


def _copy_mysql_database(source: str, name: str) -> str:
    """Copy every table of `source` (DDL with its foreign keys, then rows) into a new `name`.

    A template never changes once built, so its DDL and which tables hold rows are read once.
    """
    url = novadb.mysql_database(SERVER, name)
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            if source not in _TEMPLATE_TABLES:
                tables = [r[0] for r in conn.exec_driver_sql(f"SHOW TABLES FROM `{source}`")]
                _TEMPLATE_TABLES[source] = [
                    (table,
                     conn.exec_driver_sql(f"SHOW CREATE TABLE `{source}`.`{table}`").one()[1],
                     conn.exec_driver_sql(f"SELECT 1 FROM `{source}`.`{table}` LIMIT 1").first()
                     is not None)
                    for table in tables]
            conn.exec_driver_sql("SET FOREIGN_KEY_CHECKS=0")
            for table, ddl, has_rows in _TEMPLATE_TABLES[source]:
                conn.exec_driver_sql(ddl)
                if has_rows:
                    conn.exec_driver_sql(
                        f"INSERT INTO `{table}` SELECT * FROM `{source}`.`{table}`")
            conn.exec_driver_sql("SET FOREIGN_KEY_CHECKS=1")
    finally:
        engine.dispose()
    return url


# ---- the journal -------------------------------------------------------------------------------
class JournalDb:
    """Read access to a journal database from the test process (logbooks, ledger, locks)."""

    def __init__(self, url: str, mysql_name: str | None = None):
        self.url = url
        self.mysql_name = mysql_name
        self.engine = _engine(url)

    def logbooks(self) -> list:
        """Uuids of the logbooks (purges) in the journal; [] before TaskFlow created its tables."""
        if "logbooks" not in sa.inspect(self.engine).get_table_names():
            return []
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(sa.text("SELECT uuid FROM logbooks"))]

    def ledger(self, purge_id: str | None = None) -> list:
        if "novapurge_ledger" not in sa.inspect(self.engine).get_table_names():
            return []
        return Ledger(self.engine, Actor("tests")).rows(purge_id=purge_id)

    def verify(self) -> list:
        return Ledger(self.engine, Actor("tests")).verify()

    def dispose(self):
        self.engine.dispose()


def new_journal(backend: str, directory: Path, template: str | None = None) -> JournalDb:
    """An empty journal: a SQLite file not yet created, or a MariaDB database (a copy of
    `template`, a journal whose tables exist, when given; else an empty database)."""
    if backend == "sqlite":
        directory.mkdir(parents=True, exist_ok=True)
        return JournalDb(f"sqlite:///{directory}/journal.sqlite")
    _require_mysql()
    name = f"np_t_{RUN_ID}_{next(_NUMBERS)}_journal"
    url = _copy_mysql_database(template, name) if template else novadb.mysql_database(SERVER, name)
    return JournalDb(url, name)


# ---- the CLI -----------------------------------------------------------------------------------
class CliResult(NamedTuple):
    returncode: int
    stdout: str
    stderr: str
    json: object  # parsed stdout when `-f json` was given (None when stdout was empty)


def run_cli(args, env: dict, expect: int | None = None, cwd=None, timeout=180) -> CliResult:
    """Run `python -m novapurge ARGS` with exactly `env`'s NOVAPURGE_* variables."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("NOVAPURGE_")}
    full_env.update({k: v for k, v in env.items() if v is not None})
    proc = subprocess.run([sys.executable, "-m", "novapurge", *map(str, args)], env=full_env,
                          cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout)
    data = None
    args = list(map(str, args))
    wants_json = any(a in ("-f", "--output-format") and args[i + 1:i + 2] == ["json"]
                     for i, a in enumerate(args))
    if wants_json and proc.stdout.strip():
        data = json.loads(proc.stdout)
    result = CliResult(proc.returncode, proc.stdout, proc.stderr, data)
    if expect is not None:
        assert proc.returncode == expect, (
            f"novapurge {' '.join(args)}: exit {proc.returncode}, expected {expect}\n"
            f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    return result


def newest_purge(cli) -> dict:
    """`status -f json` of the newest purge in the journal (how a killed run's id is found)."""
    books = cli(["status", "-f", "json"], expect=0).json
    assert books, "the journal has no purge"
    return books[-1]


# ---- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def templates(tmp_path_factory):
    built = _Templates(tmp_path_factory)
    yield built
    built.close()


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def backend(request):
    """Where the Nova databases and the journal live."""
    return request.param


@pytest.fixture
def nova(backend, templates, tmp_path):
    """A freshly seeded cloud (see INSTANCES) on `backend`; its MariaDB copies dropped after."""
    cloud = templates.new_cloud(backend, tmp_path / "nova")
    yield cloud
    cloud.dispose()
    for name in cloud.mysql_names:
        novadb.drop_mysql_database(SERVER, name)


@pytest.fixture
def journal(backend, templates, tmp_path):
    """An empty journal on `backend` (see `_Templates.journal`)."""
    db = templates.journal(backend, tmp_path / "journal")
    yield db
    db.dispose()
    if db.mysql_name:
        novadb.drop_mysql_database(SERVER, db.mysql_name)


@pytest.fixture
def journal_url(journal):
    return journal.url


@pytest.fixture
def cli_env(nova, journal_url, tmp_path):
    """NOVAPURGE_* for the CLI: this test's cloud and journal, and an empty config file."""
    config = tmp_path / "novapurge.toml"
    config.write_text("")
    return {**nova.env(journal_url), "NOVAPURGE_CONFIG": str(config)}


@pytest.fixture
def cli(cli_env, tmp_path):
    """`cli(args, env=None, expect=None)` -> CliResult; `env` adds or (value None) removes vars."""
    def call(args, env=None, expect=None):
        merged = dict(cli_env)
        merged.update(env or {})
        return run_cli(args, {k: v for k, v in merged.items() if v is not None}, expect,
                       cwd=tmp_path)
    return call


@pytest.fixture(scope="session")
def reference_purge(templates, tmp_path_factory):
    """`get(backend, role="target")`: the normalized snapshot after an uninterrupted purge.

    Computed once per session and backend on its own copy of the seeded cloud.
    """
    cache, made = {}, []

    def get(backend: str, role: str = "target") -> dict:
        key = (backend, role)
        if key not in cache:
            directory = tmp_path_factory.mktemp(f"reference-{backend}-{role}")
            cloud = templates.new_cloud(backend, directory / "nova")
            journal = templates.journal(backend, directory / "journal")
            made.append((cloud, journal))
            env = cloud.env(journal.url)
            result = run_cli(["purge", "--yes", cloud.uuids[role], "-f", "json"], env, expect=0,
                             cwd=directory)
            assert [vm["result"] for vm in result.json["vms"]] == ["succeeded"]
            cache[key] = cloud.normalized()
        return cache[key]

    yield get
    for cloud, journal in made:
        cloud.dispose()
        journal.dispose()
        for name in cloud.mysql_names + ([journal.mysql_name] if journal.mysql_name else []):
            novadb.drop_mysql_database(SERVER, name)


@pytest.fixture(scope="session")
def helpers():
    """This conftest's constants and functions, for the test modules (conftest is not importable
    under --import-mode=importlib)."""
    return types.SimpleNamespace(
        SEED_NOW=SEED_NOW, PROJECT=PROJECT, USER=USER, INSTANCES=INSTANCES, STUCK=STUCK,
        HEALTHY=HEALTHY, STEPS=STEPS, MUTATING=MUTATING, FINALIZE=FINALIZE, SERVER=SERVER, is_fresh=is_fresh,
        as_datetime=as_datetime, normalize=normalize, diff_tables=diff_tables,
        snapshot_diff=snapshot_diff, assert_same=assert_same,
        read_secret=read_secret, run_cli=run_cli, newest_purge=newest_purge,
        new_journal=new_journal, seed_cloud=seed_cloud)
