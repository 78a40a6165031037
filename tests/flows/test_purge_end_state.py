"""After `purge --yes` the instance is gone from Nova's databases the way Nova's delete leaves it.

Checked on SQLite and MariaDB for each stuck instance of the seeded cloud: no live row anywhere
references it (except what Nova itself keeps), the soft-deleted rows carry exactly the values of
Nova's `instance_destroy`, legacy quota usage is lowered by exactly the instance's share, and no
row that does not belong to the instance changed.

Each (backend, instance) is purged once per module (`purged`); the tests read its end state.
"""

import types

import pytest

from novapurge.sandbox import novadb
from novapurge.sandbox.novadb import instance_ref_tables

# Rows Nova keeps after a delete: the instance's history (archived with it), and the API-DB rows
# `nova-manage db archive_deleted_rows` removes once the instance is archived.
KEPT = {("cell", "instance_actions"), ("api", "instance_mappings"), ("api", "request_specs"),
        ("api", "instance_group_member")}
# Tables Nova's instance_destroy (and the delete paths a purge stands in for) soft-delete.
SOFT_DELETED_CHILDREN = {
    "security_group_instance_association": "instance_uuid",
    "instance_info_caches": "instance_uuid", "instance_metadata": "instance_uuid",
    "instance_faults": "instance_uuid", "instance_extra": "instance_uuid",
    "instance_system_metadata": "instance_uuid", "block_device_mapping": "instance_uuid",
    "migrations": "instance_uuid", "virtual_interfaces": "instance_uuid",
    "instance_id_mappings": "uuid", "instance_group_member": "instance_id",
    "bw_usage_cache": "uuid", "volume_usage_cache": "instance_uuid",
    "consoles": "instance_uuid",
}
QUOTA_RESOURCES = ("instances", "cores", "ram")
ROLES = ["target", "deleting", "shelved"]


@pytest.fixture(scope="module")
def purged(templates, tmp_path_factory, helpers):
    """`purged(backend, role)`: a cloud whose `role` instance was purged, with its before-state."""
    cache = {}

    def get(backend, role):
        if (backend, role) not in cache:
            directory = tmp_path_factory.mktemp(f"purged-{backend}-{role}")
            cloud = templates.new_cloud(backend, directory / "nova")
            journal = templates.journal(backend, directory / "journal")
            done = types.SimpleNamespace(cloud=cloud, journal=journal, uuid=cloud.uuids[role],
                                         role=role)
            cache[(backend, role)] = done
            done.before = {db: {t: cloud.rows(db, t) for t in cloud.tables(db)}
                           for db in cloud.engines}
            done.refs = {r: cloud.referencing(u) for r, u in cloud.uuids.items()}
            env = cloud.env(journal.url)
            result = helpers.run_cli(["purge", "--yes", done.uuid, "-f", "json"], env, expect=0,
                                     cwd=directory)
            assert [(vm["vm_uuid"], vm["result"]) for vm in result.json["vms"]] == \
                [(done.uuid, "succeeded")]
            done.purge_id = result.json["purge_id"]
        return cache[(backend, role)]

    yield get
    for done in cache.values():
        done.cloud.dispose()
        done.journal.dispose()
        for name in done.cloud.mysql_names + [done.journal.mysql_name]:
            if name:
                novadb.drop_mysql_database(helpers.SERVER, name)


def _by_id(rows):
    return {row["id"]: row for row in rows}


def _quota_usage(rows, project):
    """{(resource, user_id): in_use} of a project's instances/cores/ram usage rows."""
    return {(r["resource"], r["user_id"]): r["in_use"] for r in rows
            if r["project_id"] == project and r["resource"] in QUOTA_RESOURCES}


@pytest.mark.parametrize("role", ROLES)
def test_no_live_row_references_the_purged_instance(purged, backend, role):
    done = purged(backend, role)
    nova, uuid, before = done.cloud, done.uuid, done.refs[role]
    assert sum(map(len, before.values())) > 20  # the seed really spread the instance around

    refs = instance_ref_tables()
    checked, left = [], {}
    for db in ("cell", "api"):
        present = nova.tables(db)
        for table, column in refs["main" if db == "cell" else "api"].items():
            if table not in present:
                continue
            rows = nova.rows(db, table, **{column: uuid})
            if (db, table) in KEPT:
                # Kept as Nova keeps them: unchanged, except the mapping queued for delete.
                if table != "instance_mappings":
                    assert [tuple(r.values()) for r in rows] == before[f"{db}.{table}"], table
                continue
            live = [r for r in rows if "deleted" not in r or r["deleted"] == 0]
            if live:
                left[f"{db}.{table}"] = live
            checked.append(f"{db}.{table}")
    assert not left, f"live rows of {uuid} left behind: {left}"
    assert {"cell.instances", "cell.block_device_mapping", "cell.tags", "api.build_requests",
            "cell.share_mapping"} <= set(checked)
    # The history stays, events included.
    assert nova.referencing(uuid)["cell.instance_actions_events"] == \
        before["cell.instance_actions_events"]
    mapping, = nova.rows("api", "instance_mappings", instance_uuid=uuid)
    assert mapping["queued_for_delete"] in (1, True)
    assert done.journal.logbooks() == [done.purge_id]


@pytest.mark.parametrize("role", ROLES)
def test_rows_carry_the_values_of_nova_instance_destroy(purged, backend, helpers, role):
    done = purged(backend, role)
    nova, uuid = done.cloud, done.uuid

    instance, = nova.rows("cell", "instances", uuid=uuid)
    assert instance["deleted"] == instance["id"] != 0
    assert instance["vm_state"] == "deleted"
    assert instance["task_state"] is None
    assert instance["power_state"] == 0
    for column in ("deleted_at", "terminated_at", "updated_at"):
        assert helpers.is_fresh(instance[column]), column
    old_instance, = [r for r in done.before["cell"]["instances"] if r["uuid"] == uuid]
    untouched = set(instance) - {"deleted", "deleted_at", "vm_state", "task_state",
                                 "power_state", "terminated_at", "updated_at"}
    assert {k: instance[k] for k in untouched} == {k: old_instance[k] for k in untouched}

    for table, column in SOFT_DELETED_CHILDREN.items():
        old_rows = _by_id(r for r in done.before["cell"][table] if r[column] == uuid)
        after = _by_id(nova.rows("cell", table, **{column: uuid}))
        assert set(after) == set(old_rows), table
        for row_id, old in old_rows.items():
            new = after[row_id]
            assert new["deleted"] == row_id, f"{table} {row_id}: deleted={new['deleted']}"
            assert helpers.is_fresh(new["deleted_at"]), f"{table} {row_id}"
            assert new.get("updated_at") == old.get("updated_at"), \
                f"{table} {row_id}: a soft delete keeps updated_at"
            same = {k: v for k, v in new.items() if k not in ("deleted", "deleted_at")}
            assert same == {k: v for k, v in old.items() if k not in ("deleted", "deleted_at")}
    for table in ("instance_extra", "block_device_mapping", "instance_system_metadata",
                  "instance_info_caches", "instance_id_mappings"):
        assert any(r[SOFT_DELETED_CHILDREN[table]] == uuid for r in done.before["cell"][table])

    assert any(r["resource_id"] == uuid for r in done.before["cell"]["tags"])
    assert not nova.rows("cell", "tags", resource_id=uuid)
    assert not nova.rows("cell", "console_auth_tokens", instance_uuid=uuid)
    for db in ("cell", "api"):
        assert not nova.rows(db, "allocations", consumer_id=uuid), db
    assert not nova.rows("api", "consumers", uuid=uuid)
    assert not nova.rows("api", "build_requests", instance_uuid=uuid)


def test_console_tokens_and_allocations_existed_and_are_gone(purged, backend):
    done = purged(backend, "target")
    uuid, before = done.uuid, done.before
    assert len([r for r in before["cell"]["console_auth_tokens"]
                if r["instance_uuid"] == uuid]) == 2
    assert len([r for r in before["api"]["allocations"] if r["consumer_id"] == uuid]) == 3
    assert len([r for r in before["cell"]["allocations"] if r["consumer_id"] == uuid]) == 3
    assert [r for r in before["api"]["build_requests"] if r["instance_uuid"] == uuid]
    nova = done.cloud
    assert not nova.rows("cell", "console_auth_tokens", instance_uuid=uuid)
    for db in ("cell", "api"):
        assert not nova.rows(db, "allocations", consumer_id=uuid)
        others = [r for r in before[db]["allocations"] if r["consumer_id"] != uuid]
        assert others and nova.rows(db, "allocations") == others, db


def test_network_address_and_pci_device_are_released(purged, backend):
    done = purged(backend, "target")
    nova, uuid = done.cloud, done.uuid
    fixed, = [r for r in done.before["cell"]["fixed_ips"] if r["instance_uuid"] == uuid]
    device, = [r for r in done.before["cell"]["pci_devices"] if r["instance_uuid"] == uuid]
    assert fixed["allocated"] and device["status"] == "allocated"

    fixed_after, = nova.rows("cell", "fixed_ips", id=fixed["id"])
    assert fixed_after["instance_uuid"] is None
    assert fixed_after["virtual_interface_id"] is None
    assert not fixed_after["allocated"] and not fixed_after["leased"]
    assert fixed_after["address"] == fixed["address"] and fixed_after["deleted"] == 0
    device_after, = nova.rows("cell", "pci_devices", id=device["id"])
    assert device_after["status"] == "available"
    assert device_after["instance_uuid"] is None and device_after["request_id"] is None
    assert device_after["deleted"] == 0 and device_after["address"] == device["address"]


@pytest.mark.parametrize("role", ROLES)
def test_legacy_quota_usage_lowered_by_exactly_the_instance(purged, backend, helpers, role):
    done = purged(backend, role)
    facts = done.cloud.info[role]
    share = {"instances": 1, "cores": facts["vcpus"], "ram": facts["memory_mb"]}
    before = _quota_usage(done.before["api"]["quota_usages"], helpers.PROJECT)
    # every stuck and healthy instance of the project counts (not the one Nova deleted)
    counted = [r for r in helpers.INSTANCES if r != "gone"]
    assert before[("instances", helpers.USER)] == len(counted)

    after = _quota_usage(done.cloud.rows("api", "quota_usages"), helpers.PROJECT)
    assert after == {key: value - share[key[0]] for key, value in before.items()}
    assert all(value >= 0 for value in after.values())
    # the hard limits are what they were (the runbook's mistake was to raise them)
    for db in ("cell", "api"):
        assert done.cloud.rows(db, "quotas") == done.before[db]["quotas"], db


def test_quota_usage_never_goes_below_zero(nova, cli, helpers):
    """A usage row already lower than the instance's share stops at zero."""
    with nova.api.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE quota_usages SET in_use = 1 WHERE resource = 'cores' AND project_id = "
            f"'{helpers.PROJECT}'")
    before = _quota_usage(nova.rows("api", "quota_usages"), helpers.PROJECT)
    assert before[("cores", helpers.USER)] == 1 < nova.info["target"]["vcpus"]
    cli(["purge", "--yes", nova.uuids["target"]], expect=0)
    after = _quota_usage(nova.rows("api", "quota_usages"), helpers.PROJECT)
    assert after[("cores", helpers.USER)] == 0
    assert after[("instances", helpers.USER)] == before[("instances", helpers.USER)] - 1
    assert after[("ram", helpers.USER)] == \
        before[("ram", helpers.USER)] - nova.info["target"]["memory_mb"]


@pytest.mark.parametrize("role", ROLES)
def test_nothing_else_changes(purged, backend, helpers, role):
    """Every row that changed belongs to the instance (before or after) or is its quota usage."""
    done = purged(backend, role)
    nova, uuid = done.cloud, done.uuid
    changed_tables = set()
    for db in nova.engines:
        for table in nova.tables(db):
            old_rows, new_rows = done.before[db][table], nova.rows(db, table)
            if old_rows == new_rows:
                continue
            changed_tables.add(f"{db}.{table}")
            old = {_key(r): r for r in old_rows}
            new = {_key(r): r for r in new_rows}
            for key in set(old) | set(new):
                if old.get(key) == new.get(key):
                    continue
                versions = [v for v in (old.get(key), new.get(key)) if v is not None]
                mentions = any(uuid in map(str, v.values()) for v in versions)
                own_quota = table == "quota_usages" and all(
                    v["project_id"] == helpers.PROJECT and v["resource"] in QUOTA_RESOURCES
                    for v in versions)
                assert mentions or own_quota, f"{db}.{table} row {key} changed: {versions}"
    assert {"cell.instances", "api.quota_usages", "api.instance_mappings"} <= changed_tables
    assert not {"cell.quotas", "api.quotas", "cell.instance_actions",
                "cell.instance_actions_events"} & changed_tables
    for other, rows in done.refs.items():
        if other != role:
            assert nova.referencing(nova.uuids[other]) == rows, f"neighbour {other} changed"


def _key(row: dict):
    return row["id"] if "id" in row else tuple(row.values())
