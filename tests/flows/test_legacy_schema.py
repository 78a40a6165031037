"""A Kilo-era cloud: one cell database of the Kilo table set, no API database (SQLite; fast).

Reflection, not a release name, decides what the purge touches: no console_auth_tokens, no
placement tables, no instance mappings; legacy quota usage lives in the cell database.
"""

import pytest
import sqlalchemy as sa

from novapurge.sandbox import novadb
from novapurge.sandbox.estate import populate_estate
from novapurge.sandbox.novadb import NovaSeeder

QUOTA_RESOURCES = ("instances", "cores", "ram")


@pytest.fixture
def kilo(tmp_path, helpers):
    """A seeded Kilo cell DB (a stuck ERROR instance and a healthy one), its journal and CLI."""
    url = f"sqlite:///{tmp_path}/kilo.sqlite"
    engine = sa.create_engine(url)
    novadb.create_schema(engine, "main", legacy="kilo")
    seeder = NovaSeeder(engine, seed=1, now=helpers.SEED_NOW)
    target = seeder.add_instance(name="legacy-err", vm_state="error", fault=True,
                                 volumes=("iscsi",), vifs=("ovs-hybrid",), console_tokens=2,
                                 legacy_quota=True, vcpus=2, memory_mb=4096)
    healthy = seeder.add_instance(name="legacy-ok", vm_state="active", legacy_quota=True)
    populate_estate(tmp_path / "sandbox", engine, None, [target, healthy])
    config = tmp_path / "novapurge.toml"
    config.write_text("")
    env = {"NOVAPURGE_DB": url, "NOVAPURGE_JOURNAL": f"sqlite:///{tmp_path}/journal.sqlite",
           "NOVAPURGE_CONFIG": str(config), "NOVAPURGE_SANDBOX": str(tmp_path / "sandbox")}

    def cli(args, expect=None, faults=None):
        extra = {"NOVAPURGE_FAULTS": faults} if faults else {}
        return helpers.run_cli(args, {**env, **extra}, expect, cwd=tmp_path)

    def rows(table, **where):
        t = sa.Table(table, sa.MetaData(), autoload_with=engine)
        with engine.connect() as conn:
            query = sa.select(t).where(*(t.c[k] == v for k, v in where.items()))
            return [dict(r) for r in conn.execute(query.order_by(*t.primary_key)).mappings()]

    yield type("Kilo", (), dict(engine=engine, target=target, healthy=healthy, cli=cli,
                                rows=staticmethod(rows),
                                snap=staticmethod(lambda: novadb.snapshot(engine))))
    engine.dispose()


def _usage(kilo, project):
    return {(r["resource"], r["user_id"]): r["in_use"]
            for r in kilo.rows("quota_usages", project_id=project, deleted=0)
            if r["resource"] in QUOTA_RESOURCES}


def test_kilo_schema_is_what_the_test_claims(kilo):
    tables = set(sa.inspect(kilo.engine).get_table_names())
    assert {"instances", "quota_usages", "instance_types", "block_device_mapping"} <= tables
    assert not tables & {"console_auth_tokens", "allocations", "share_mapping",
                         "instance_mappings"}
    assert kilo.rows("quota_usages", project_id=kilo.target["project_id"])


def test_purge_and_rollback_without_api_database(kilo, helpers):
    vm, before = kilo.target["uuid"], kilo.snap()
    usage = _usage(kilo, kilo.target["project_id"])
    assert usage[("instances", kilo.target["user_id"])] == 2
    neighbour = {t: rows for t, rows in before.items()
                 if any(kilo.healthy["uuid"] in map(str, r) for r in rows)}
    assert "instances" in neighbour

    plan = kilo.cli(["plan", vm, "-f", "json"], expect=0).json[0]
    steps = {s["step"]: s for s in plan["steps"]}
    assert [c["target"] for c in steps["ReleaseQuotaUsage"]["changes"]] == ["default"] * 3
    assert not [c for c in steps["QueueMappingForDelete"]["changes"] if c["rows"]]

    # held at the point of no return: the database steps are done, nothing irreversible is
    result = kilo.cli(["purge", "--yes", "--hold", vm, "-f", "json"], expect=5).json
    assert [v["result"] for v in result["vms"]] == ["suspended"]
    instance, = kilo.rows("instances", uuid=vm)
    assert instance["deleted"] == instance["id"] and instance["vm_state"] == "deleted"
    assert instance["task_state"] is None and helpers.is_fresh(instance["deleted_at"])
    for table in ("block_device_mapping", "instance_info_caches", "instance_system_metadata",
                  "instance_extra", "virtual_interfaces", "instance_faults"):
        rows = kilo.rows(table, instance_uuid=vm)
        assert rows and all(r["deleted"] == r["id"] for r in rows), table
    assert not kilo.rows("tags", resource_id=vm)
    share = {"instances": 1, "cores": 2, "ram": 4096}
    assert _usage(kilo, kilo.target["project_id"]) == \
        {key: value - share[key[0]] for key, value in usage.items()}
    after = kilo.snap()
    assert after["quotas"] == before["quotas"]
    for table, rows in neighbour.items():  # the healthy instance's own rows
        assert [r for r in after[table] if kilo.healthy["uuid"] in map(str, r)] == \
            [r for r in rows if kilo.healthy["uuid"] in map(str, r)], table

    rolled = kilo.cli(["rollback", "--yes", result["purge_id"], "-f", "json"], expect=0).json
    assert [v["result"] for v in rolled["vms"]] == ["reverted"]
    helpers.assert_same({"cell": kilo.snap()}, {"cell": before})


@pytest.mark.parametrize("fault", ["fail@SoftDeleteInstance:after-change",
                                   "fail@ReleaseQuotaUsage:after-change"])
def test_failure_reverts_on_kilo(kilo, helpers, fault):
    before = kilo.snap()
    failed = kilo.cli(["purge", "--yes", kilo.target["uuid"], "-f", "json"], expect=4,
                      faults=fault).json
    assert [v["result"] for v in failed["vms"]] == ["reverted"]
    helpers.assert_same({"cell": kilo.snap()}, {"cell": before})
