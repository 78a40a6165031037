"""The sandbox Nova databases: real Nova 34 DDL on SQLite and MariaDB, seeded like a real cloud."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import secrets

import pytest
import sqlalchemy as sa

from novapurge.sandbox import novadb
from novapurge.sandbox.novadb import NovaSeeder

SERVER = "mysql+pymysql://root@127.0.0.1:3306"
NOW = dt.datetime(2025, 6, 1, 12, 0, 0)
_DB_NUMBERS = itertools.count(1)
FULL = dict(fault=True, console_tokens=2, build_request=True, legacy_quota=True,
            volumes=("iscsi", {"kind": "iscsi-multipath", "delete_on_termination": True}, "rbd"),
            vifs=("ovs-hybrid", "ovs-native", {"kind": "linuxbridge", "preserve_on_delete": True}))


def _mysql_up() -> bool:
    engine = sa.create_engine(SERVER, poolclass=sa.pool.NullPool)
    try:
        with engine.connect():
            return True
    except sa.exc.OperationalError:
        return False
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def mysql_names():
    """Throw-away database names on the MariaDB server, dropped in teardown."""
    assert _mysql_up(), "MariaDB on 127.0.0.1:3306 must be up (`make test` starts it)"
    base = f"np_test_sandbox_{secrets.token_hex(4)}"
    names = []

    def make(suffix: str) -> str:
        names.append(f"{base}_{suffix}")
        return novadb.mysql_database(SERVER, names[-1])

    yield make
    for name in names:
        novadb.drop_mysql_database(SERVER, name)


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def cloud(request, tmp_path):
    """(cell engine, api engine, cell url) with the full Nova 34 schema on each backend."""
    if request.param == "sqlite":
        cell_url, api_url = f"sqlite:///{tmp_path}/cell.sqlite", f"sqlite:///{tmp_path}/api.sqlite"
    else:
        make = request.getfixturevalue("mysql_names")
        number = next(_DB_NUMBERS)
        cell_url, api_url = make(f"{number}_cell"), make(f"{number}_api")
    cell, api = sa.create_engine(cell_url), sa.create_engine(api_url)
    novadb.create_schema(cell, "main")
    novadb.create_schema(api, "api")
    yield cell, api, cell_url
    cell.dispose()
    api.dispose()


def _rows(engine, table: str, column: str, value) -> list:
    t = sa.Table(table, sa.MetaData(), autoload_with=engine)
    with engine.connect() as conn:
        query = sa.select(t).where(t.c[column] == value).order_by(*t.primary_key.columns)
        return conn.execute(query).mappings().all()


@pytest.mark.parametrize("which,dialect,tables", [
    ("main", "sqlite", 111), ("main", "mysql", 111), ("api", "sqlite", 32), ("api", "mysql", 32)])
def test_statements_split_cleanly(which, dialect, tables):
    statements = novadb.schema_statements(which, dialect)
    creates = [s for s in statements if s.upper().startswith("CREATE TABLE")]
    assert len(creates) == tables
    assert not [s for s in statements if "/*" in s or s.startswith("--") or s.endswith(";")]


def test_split_handles_quotes_comments_and_delimiter():
    text = ("-- c\nSET @a='x;y' /* no; */;\n/*!40101 SET NAMES utf8mb4 */;\n/*M!999999\\- sandbox */\n"
            "DELIMITER $$\nCREATE TRIGGER t BEFORE INSERT ON x FOR EACH ROW BEGIN SET @b=1; END$$\n"
            "DELIMITER ;\nSELECT `a;b`, 'it''s', \"q;\";")
    assert novadb.split_sql(text, "mysql") == [
        "SET @a='x;y'", "SET NAMES utf8mb4",
        "CREATE TRIGGER t BEFORE INSERT ON x FOR EACH ROW BEGIN SET @b=1; END",
        "SELECT `a;b`, 'it''s', \"q;\""]


def test_schema_builds_on_sqlite_and_mariadb(cloud):
    cell, api, _ = cloud
    assert len(sa.inspect(cell).get_table_names()) == 111
    assert len(sa.inspect(api).get_table_names()) == 32


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def test_kilo_schema_has_no_console_tokens_nor_placement(backend, request):
    url = "sqlite://" if backend == "sqlite" else request.getfixturevalue("mysql_names")("kilo")
    engine = sa.create_engine(url)
    novadb.create_schema(engine, "main", legacy="kilo")
    names = set(sa.inspect(engine).get_table_names())
    assert {"instances", "shadow_instances", "tags", "quota_usages", "instance_extra"} <= names
    assert not names & {"console_auth_tokens", "allocations", "resource_providers", "share_mapping"}
    assert all(n.startswith("shadow_") or n in novadb.kilo_tables() for n in names)
    seeder = NovaSeeder(engine, now=NOW)
    first = seeder.add_instance(legacy_quota=True, vcpus=2, memory_mb=4096, volumes=("iscsi",))
    seeder.add_instance(legacy_quota=True)
    usage = {r["resource"]: r["in_use"] for r in _rows(engine, "quota_usages", "project_id",
                                                         first["project_id"])}
    assert usage == {"instances": 2, "cores": 3, "ram": 6144}
    assert len(_rows(engine, "quotas", "project_id", first["project_id"])) == 3
    assert _rows(engine, "instance_types", "id", 1)
    engine.dispose()
    with pytest.raises(ValueError):
        novadb.schema_statements("api", "sqlite", legacy="kilo")


def test_add_instance_fills_every_instance_table(cloud):
    cell, api, cell_url = cloud
    seeder = NovaSeeder(cell, api, cell_url=cell_url, now=NOW)
    vm = seeder.add_instance(**FULL)
    refs = novadb.instance_ref_tables()
    for engine, which in ((cell, "main"), (api, "api")):
        present = set(sa.inspect(engine).get_table_names())
        for table, column in refs[which].items():
            if table in present:
                assert _rows(engine, table, column, vm["uuid"]), f"{which}.{table} has no row"
    actions = _rows(cell, "instance_actions", "instance_uuid", vm["uuid"])
    assert {a["action"] for a in actions} == {"create", "delete"}
    for action in actions:
        assert len(_rows(cell, "instance_actions_events", "action_id", action["id"])) == 1
    assert _rows(api, "consumers", "uuid", vm["uuid"])
    mapping = _rows(api, "instance_mappings", "instance_uuid", vm["uuid"])[0]
    assert mapping["cell_id"] is not None and not mapping["queued_for_delete"]
    cells = _rows(api, "cell_mappings", "uuid", seeder.cell_uuid)
    assert cells[0]["database_connection"] == cell_url


def test_instance_blobs_have_nova_shapes(cloud):
    cell, api, cell_url = cloud
    vm = NovaSeeder(cell, api, cell_url=cell_url, now=NOW).add_instance(**FULL)
    nw_info = json.loads(_rows(cell, "instance_info_caches", "instance_uuid", vm["uuid"])[0]["network_info"])
    assert [v["id"] for v in nw_info] == vm["ports"]
    hybrid, native, bridge = nw_info
    assert hybrid["devname"] == "tap" + vm["ports"][0][:11] and hybrid["type"] == "ovs"
    assert hybrid["details"]["ovs_hybrid_plug"] and not native["details"]["ovs_hybrid_plug"]
    assert bridge["type"] == "bridge" and bridge["network"]["bridge"].startswith("brq")
    assert bridge["preserve_on_delete"] and not hybrid["preserve_on_delete"]
    bdms = _rows(cell, "block_device_mapping", "instance_uuid", vm["uuid"])
    root = [b for b in bdms if b["boot_index"] == 0]
    assert root[0]["source_type"] == "image" and root[0]["destination_type"] == "local"
    infos = {b["volume_id"]: json.loads(b["connection_info"]) for b in bdms if b["volume_id"]}
    iscsi, multi, rbd = (infos[v] for v in vm["volumes"])
    assert iscsi["data"]["target_iqn"].endswith(vm["volumes"][0]) and iscsi["data"]["auth_password"]
    assert len(multi["data"]["target_portals"]) == 2 and rbd["driver_volume_type"] == "rbd"
    assert [b["delete_on_termination"] for b in bdms if b["volume_id"]] in ([0, 1, 0],
                                                                              [False, True, False])


def test_shelved_offloaded_and_deleted_instances(cloud):
    cell, api, cell_url = cloud
    seeder = NovaSeeder(cell, api, cell_url=cell_url, now=NOW)
    shelved = seeder.add_instance(vm_state="shelved_offloaded")
    assert shelved["host"] is None and shelved["shelved_image_id"]
    sysmeta = {r["key"]: r["value"] for r in
               _rows(cell, "instance_system_metadata", "instance_uuid", shelved["uuid"])}
    assert sysmeta["shelved_image_id"] == shelved["shelved_image_id"]
    assert not _rows(cell, "allocations", "consumer_id", shelved["uuid"])
    gone = seeder.add_instance(deleted=True)
    row = _rows(cell, "instances", "uuid", gone["uuid"])[0]
    assert row["deleted"] == row["id"] and row["vm_state"] == "deleted" and row["deleted_at"]
    assert not _rows(cell, "tags", "resource_id", gone["uuid"])
    assert all(r["deleted"] for r in _rows(cell, "block_device_mapping", "instance_uuid", gone["uuid"]))
    assert _rows(api, "instance_mappings", "instance_uuid", gone["uuid"])[0]["queued_for_delete"]


def test_api_legacy_quota_increments_and_snapshot_is_stable(cloud):
    cell, api, cell_url = cloud
    seeder = NovaSeeder(cell, api, cell_url=cell_url, now=NOW)
    first = seeder.add_instance(legacy_quota=True, vcpus=2, memory_mb=4096)
    seeder.add_instance(legacy_quota=True)
    seeder.add_instance()  # counted quotas: no usage row change
    usage = {r["resource"]: r["in_use"] for r in _rows(api, "quota_usages", "project_id",
                                                         first["project_id"])}
    assert usage == {"instances": 2, "cores": 3, "ram": 6144}
    for engine in (cell, api):
        assert novadb.snapshot(engine) == novadb.snapshot(engine)
    assert len(novadb.snapshot(cell)["instances"]) == 3


def test_seeding_is_reproducible(tmp_path):
    snaps = []
    for n in range(2):
        engine = sa.create_engine(f"sqlite:///{tmp_path}/c{n}.sqlite")
        novadb.create_schema(engine, "main")
        seeder = NovaSeeder(engine, seed=7, now=NOW)
        uuids = [seeder.add_instance(volumes=("iscsi",))["uuid"] for _ in range(3)]
        assert len(set(uuids)) == 3
        snaps.append(novadb.snapshot(engine))
        engine.dispose()
    assert snaps[0] == snaps[1]


def test_build_sandbox(tmp_path):
    for _ in range(2):  # a second build replaces the files
        cloud = novadb.build_sandbox(tmp_path)
    assert len(cloud["stuck"]) == 4 and len(cloud["healthy"]) == 3
    states = {u: (i["vm_state"], i["task_state"], i["host"]) for u, i in cloud["instances"].items()}
    assert ("shelved_offloaded", None, None) in states.values()
    assert ("active", "deleting", "compute-1") in states.values()
    engine = sa.create_engine(cloud["cell_url"])
    assert len(novadb.snapshot(engine)["instances"]) == 7
    engine.dispose()
    api = sa.create_engine(cloud["api_url"])
    assert len(novadb.snapshot(api)["instance_mappings"]) == 7
    api.dispose()


def test_mysql_database_validates_names():
    with pytest.raises(ValueError):
        novadb.mysql_database(SERVER, "bad-name; DROP DATABASE mysql")
