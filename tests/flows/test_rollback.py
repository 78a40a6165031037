"""Reversal: a step failing mid-purge, `rollback` of a finished purge and of a killed one.

Every path must leave both Nova databases byte-identical to what the purge found (raw values,
`novadb.snapshot`), on SQLite and MariaDB, and the ledger must show each recorded change reverted.
"""

import json
import collections

import pytest

pytestmark = pytest.mark.slow

MUTATING = ("DeleteDbAllocations", "SoftDeleteInstance", "ReleaseQuotaUsage",
            "QueueMappingForDelete")
# `fail@` is accepted inside a step only: at the step boundaries (start, end) TaskFlow's listeners
# swallow exceptions, so faults.py rejects those (tested in tests/cli/test_guards_and_input.py).
FAIL_POINTS = [(step, point) for step in MUTATING for point in ("before-change", "after-change")]
KILL_POINTS = [("DeleteDbAllocations", "after-change"), ("SoftDeleteInstance", "after-change"),
               ("ReleaseQuotaUsage", "after-change"), ("QueueMappingForDelete", "end"),
               ("PassPointOfNoReturn", "end")]


def assert_every_change_reverted(journal, purge_id):
    """Intact chain; each (step, resource) with a before-state has a later `reverted` entry."""
    assert journal.verify() == []
    rows = journal.ledger(purge_id)
    intents = collections.Counter((r["atom"], r["resource"]) for r in rows
                                  if r["phase"] == "intent")
    assert intents, "nothing was recorded: the failure came before any change"
    for key in intents:
        phases = [r["phase"] for r in rows if (r["atom"], r["resource"]) == key]
        assert phases[-1] == "reverted", f"{key}: {phases}"
    return rows


def _status(cli, purge_id):
    status = cli(["status", purge_id, "-f", "json"], expect=0).json
    return status["state"], [v["state"] for v in status["vms"]]


@pytest.mark.parametrize("step,point", FAIL_POINTS, ids=[f"{s}-{p}" for s, p in FAIL_POINTS])
def test_failing_step_reverts_everything(nova, cli, journal, helpers, step, point):
    before = nova.snap()
    result = cli(["purge", "--yes", nova.uuids["target"], "-f", "json"],
                 env={"NOVAPURGE_FAULTS": f"fail@{step}:{point}"})
    assert result.returncode == 4, result
    vm, = result.json["vms"]
    assert (vm["result"], vm["failed_step"]) == ("reverted", step)
    assert f"{step}:{point}" in vm["message"]
    helpers.assert_same(nova.snap(), before)
    assert _status(cli, result.json["purge_id"]) == ("REVERTED", ["REVERTED"])
    rows = assert_every_change_reverted(journal, result.json["purge_id"])
    failed_atom = f"{step}:{nova.uuids['target']}"
    assert any(r["atom"] == failed_atom and r["phase"] == "intent" for r in rows)
    assert not any(r["atom"].startswith("PassPointOfNoReturn:") for r in rows)


def test_rollback_of_a_purge_held_at_the_point_of_no_return(nova, cli, journal, helpers):
    before = nova.snap()
    neighbours = {role: nova.referencing(nova.uuids[role]) for role in helpers.HEALTHY}
    purged = cli(["purge", "--yes", "--hold", nova.uuids["target"], "-f", "json"], expect=5)
    purge_id = purged.json["purge_id"]
    assert [v["result"] for v in purged.json["vms"]] == ["suspended"]
    assert _status(cli, purge_id) == ("SUSPENDED", ["SUSPENDED"])
    assert nova.snap() != before
    for role, rows in neighbours.items():
        assert nova.referencing(nova.uuids[role]) == rows, role

    result = cli(["rollback", "--yes", purge_id, "-f", "json"])
    helpers.assert_same(nova.snap(), before)
    for role, rows in neighbours.items():
        assert nova.referencing(nova.uuids[role]) == rows, role
    assert [(v["vm_uuid"], v["result"]) for v in result.json["vms"]] == \
        [(nova.uuids["target"], "reverted")]
    assert _status(cli, purge_id) == ("REVERTED", ["REVERTED"])
    assert_every_change_reverted(journal, purge_id)
    assert result.returncode == 0, result

    # Rolling back again changes nothing; a new purge of the VM is possible again.
    again = cli(["rollback", "--yes", purge_id, "-f", "json"], expect=0)
    assert [v["result"] for v in again.json["vms"]] == ["nothing-to-do"]
    helpers.assert_same(nova.snap(), before)
    second = cli(["purge", "--yes", nova.uuids["target"], "-f", "json"], expect=0).json
    assert second["purge_id"] != purge_id
    assert [v["result"] for v in second["vms"]] == ["succeeded"]
    instance, = nova.rows("cell", "instances", uuid=nova.uuids["target"])
    assert instance["deleted"] == instance["id"]

    # Past the point of no return (ports deleted, volumes detached) rollback is refused and
    # changes nothing.
    finished = nova.snap()
    refused = cli(["rollback", "--yes", second["purge_id"], "-f", "json"], expect=3)
    assert "point of no return" in refused.json["error"]
    helpers.assert_same(nova.snap(), finished)


def test_resume_of_a_held_purge_finalizes_it(nova, cli, journal, helpers):
    held = cli(["purge", "--yes", "--hold", nova.uuids["target"], "-f", "json"], expect=5).json
    resumed = cli(["resume", held["purge_id"], "-f", "json"], expect=0).json
    assert [v["result"] for v in resumed["vms"]] == ["succeeded"]
    assert _status(cli, held["purge_id"]) == ("SUCCESS", ["SUCCESS"])
    cloud = json.loads(nova.estate()["cloud"][0][0])
    vm = nova.uuids["target"]
    assert not [p for p in cloud["ports"].values() if p["device_id"] == vm]
    assert not [v for v in cloud["volumes"].values()
                if any(a["server_id"] == vm for a in v["attachments"])]


@pytest.mark.parametrize("step,point", KILL_POINTS, ids=[f"{s}-{p}" for s, p in KILL_POINTS])
def test_rollback_of_a_killed_purge(nova, cli, journal, helpers, step, point):
    before = nova.snap()
    killed = cli(["purge", "--yes", nova.uuids["target"]],
                 env={"NOVAPURGE_FAULTS": f"kill@{step}:{point}"})
    assert killed.returncode == -9, killed
    status = helpers.newest_purge(cli)
    assert status["state"] == "INTERRUPTED"
    assert nova.snap() != before

    result = cli(["rollback", "--yes", status["purge_id"], "-f", "json"], expect=0)
    assert [v["result"] for v in result.json["vms"]] == ["reverted"]
    helpers.assert_same(nova.snap(), before)
    assert _status(cli, status["purge_id"]) == ("REVERTED", ["REVERTED"])
    assert_every_change_reverted(journal, status["purge_id"])


def test_neighbours_untouched_by_a_failed_purge(nova, cli, helpers):
    """The healthy instances' rows (and the other stuck ones') never change, whatever happens."""
    others = [r for r in helpers.INSTANCES if r != "target"]
    rows = {role: nova.referencing(nova.uuids[role]) for role in others}
    cli(["purge", "--yes", nova.uuids["target"]],
        env={"NOVAPURGE_FAULTS": "fail@QueueMappingForDelete:after-change"}, expect=4)
    for role in others:
        assert nova.referencing(nova.uuids[role]) == rows[role], role
