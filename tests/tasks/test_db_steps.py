"""The steps that change Nova's databases, run in-process on SQLite and MariaDB (STYLE.md: Tests).

For each step: execute changes the state; revert after success restores it byte for byte; a
failure before the change leaves nothing to undo and revert does no harm; after a failure past the
change revert restores it; re-executing and re-reverting are harmless.
"""

import pytest
from taskflow.types import failure as tf_failure

from novapurge import context, faults
from novapurge.drivers.novadb import NovaDatabases
from novapurge.persistence.ledger import Actor, Ledger
from novapurge.tasks.discovery import discover_facts
from novapurge.tasks.mapping import QueueMappingForDelete
from novapurge.tasks.novadb import SoftDeleteInstance
from novapurge.tasks.placement import DeleteDbAllocations
from novapurge.tasks.quota import ReleaseQuotaUsage

PURGE_ID = "0f0e0d0c-0b0a-4908-8706-050403020100"
# step -> the tables ("db.table") its execute changes for the seeded target
CHANGES = {
    SoftDeleteInstance: {f"cell.{t}" for t in (
        "instances", "security_group_instance_association", "instance_info_caches",
        "instance_metadata", "instance_faults", "instance_extra", "instance_system_metadata",
        "block_device_mapping", "migrations", "virtual_interfaces", "instance_id_mappings",
        "tags", "console_auth_tokens", "share_mapping", "bw_usage_cache", "volume_usage_cache",
        "consoles", "instance_group_member", "fixed_ips", "pci_devices")},
    ReleaseQuotaUsage: {"api.quota_usages"},
    QueueMappingForDelete: {"api.instance_mappings", "api.build_requests"},
    DeleteDbAllocations: {"api.allocations", "api.consumers", "cell.allocations"},
}
STEPS = list(CHANGES)


@pytest.fixture
def step_env(nova, journal, monkeypatch):
    """The purge context a flow would install (drivers and ledger), and the target's facts."""
    monkeypatch.delenv(faults.ENV, raising=False)
    novadb = NovaDatabases(nova.cell_url, nova.api_url)
    ledger = Ledger(journal.engine, Actor("tests", ticket="T-1"))
    previous = context._current
    drivers = context.install(context.PurgeContext(novadb=novadb, ledger=ledger))
    vm = nova.uuids["target"]
    yield {"purge_id": PURGE_ID, "vm_uuid": vm, "facts": discover_facts(drivers, vm)}
    context._current = previous
    novadb.dispose()


def _task(step, nova):
    return step(nova.uuids["target"], PURGE_ID)


def _changed(nova, before):
    after = nova.snap()
    return {f"{db}.{t}" for db in before for t in before[db] if before[db][t] != after[db][t]}


def _phases(journal, step, vm):
    return [r["phase"] for r in journal.ledger(PURGE_ID) if r["atom"] == f"{step.step()}:{vm}"]


@pytest.mark.parametrize("step", STEPS, ids=lambda s: s.__name__)
def test_execute_changes_and_revert_restores_exactly(step, nova, journal, step_env, helpers):
    task, before = _task(step, nova), nova.snap()
    result = task.execute(**step_env)
    assert _changed(nova, before) == CHANGES[step]
    assert journal.verify() == []
    phases = _phases(journal, step, step_env["vm_uuid"])
    assert phases.count("intent") == phases.count("applied") >= 1

    task.revert(result=result, flow_failures={}, **step_env)
    helpers.assert_same(nova.snap(), before)
    task.revert(result=result, flow_failures={}, **step_env)  # twice: still harmless
    helpers.assert_same(nova.snap(), before)
    assert _phases(journal, step, step_env["vm_uuid"])[-1] == "reverted"


@pytest.mark.parametrize("step", STEPS, ids=lambda s: s.__name__)
def test_re_execute_is_harmless(step, nova, journal, step_env, helpers):
    task, before = _task(step, nova), nova.snap()
    task.execute(**step_env)
    once = nova.snap()
    task.execute(**step_env)  # TaskFlow re-runs a step that was RUNNING at a crash
    helpers.assert_same(nova.snap(), once)
    phases = _phases(journal, step, step_env["vm_uuid"])
    intents = phases.count("intent")
    assert intents == len({r["resource"] for r in journal.ledger(PURGE_ID)})  # one per resource
    # The re-run reused the first before-state: revert still restores the original rows.
    task.revert(result=None, flow_failures={}, **step_env)
    helpers.assert_same(nova.snap(), before)


@pytest.mark.parametrize("step", STEPS, ids=lambda s: s.__name__)
def test_failure_before_the_change(step, nova, journal, step_env, helpers, monkeypatch):
    task, before = _task(step, nova), nova.snap()
    monkeypatch.setenv(faults.ENV, f"fail@{step.step()}:before-change")
    with pytest.raises(faults.InjectedFault):
        task.execute(**step_env)
    monkeypatch.delenv(faults.ENV)
    helpers.assert_same(nova.snap(), before)  # the change's transaction was rolled back
    failure = tf_failure.Failure.from_exception(faults.InjectedFault("before-change"))
    task.revert(result=failure, flow_failures={task.name: failure}, **step_env)
    helpers.assert_same(nova.snap(), before)
    assert _phases(journal, step, step_env["vm_uuid"]) == ["intent", "reverted"]


@pytest.mark.parametrize("step", STEPS, ids=lambda s: s.__name__)
def test_failure_after_the_change(step, nova, journal, step_env, helpers, monkeypatch):
    task, before = _task(step, nova), nova.snap()
    monkeypatch.setenv(faults.ENV, f"fail@{step.step()}:after-change")
    with pytest.raises(faults.InjectedFault):
        task.execute(**step_env)
    monkeypatch.delenv(faults.ENV)
    assert _changed(nova, before)  # the change was committed before the failure
    failure = tf_failure.Failure.from_exception(faults.InjectedFault("after-change"))
    task.revert(result=failure, flow_failures={task.name: failure}, **step_env)
    helpers.assert_same(nova.snap(), before)
    assert journal.verify() == []


def test_revert_keeps_a_quota_change_made_by_someone_else(nova, journal, step_env, helpers):
    """Between purge and revert Nova counted another instance: revert adds back only the share."""
    task = _task(ReleaseQuotaUsage, nova)
    usage = {r["id"]: r["in_use"] for r in nova.rows("api", "quota_usages")}
    task.execute(**step_env)
    with nova.api.begin() as conn:
        conn.exec_driver_sql("UPDATE quota_usages SET in_use = in_use + 1 WHERE resource = "
                             "'instances'")
    task.revert(result=None, flow_failures={}, **step_env)
    after = {r["id"]: (r["resource"], r["in_use"]) for r in nova.rows("api", "quota_usages")}
    for row_id, (resource, in_use) in after.items():
        assert in_use == usage[row_id] + (1 if resource == "instances" else 0), resource
