"""Crash tests: a purge SIGKILLed at every step boundary and change point, resumed by another.

`NOVAPURGE_FAULTS=kill@Step:point` makes the purge process kill itself there. The killed purge must
show as INTERRUPTED, block a new purge of the same VM, and `resume` must finish it with both Nova
databases exactly as an uninterrupted purge of an identically seeded cloud leaves them (timestamps
written by the purge normalized), with one before-state per change in an intact ledger.
"""

import collections

import pytest

pytestmark = pytest.mark.slow

# Every boundary and change point of the database steps; the change points of the host and API
# steps (simulated hosts and cloud); the start of each finalize step.
STEPS = ("DiscoverInstance", "GuardInstance", "DeleteDbAllocations", "SoftDeleteInstance",
         "ReleaseQuotaUsage", "QueueMappingForDelete", "PassPointOfNoReturn")
MUTATING = ("DeleteDbAllocations", "SoftDeleteInstance", "ReleaseQuotaUsage",
            "QueueMappingForDelete")
HOST_AND_API = ("DeleteAllocations", "DestroyDomain", "UnplugVif", "DisconnectIscsiTarget",
                "QuarantineInstanceDirs", "UndefineDomain")
FINALIZE = ("DetachVolume", "DeletePort", "EmptyQuarantine")
KILL_POINTS = [(step, point) for step in STEPS for point in ("start", "end")] + \
    [(step, point) for step in MUTATING for point in ("before-change", "after-change")] + \
    [(step, "after-change") for step in HOST_AND_API] + [(step, "start") for step in FINALIZE]
MYSQL_POINTS = [("SoftDeleteInstance", "before-change"), ("SoftDeleteInstance", "after-change"),
                ("QueueMappingForDelete", "start"), ("ReleaseQuotaUsage", "after-change")]
CASES = [pytest.param("sqlite", step, point, id=f"sqlite-{step}-{point}")
         for step, point in KILL_POINTS] + \
    [pytest.param("mysql", step, point, id=f"mysql-{step}-{point}", marks=pytest.mark.mysql)
     for step, point in MYSQL_POINTS]


def kill_purge(cli, nova, helpers, fault):
    """`purge --yes` of the target with a kill fault; returns its status as the journal has it."""
    result = cli(["purge", "--yes", nova.uuids["target"], "-f", "json"],
                 env={"NOVAPURGE_FAULTS": fault})
    assert result.returncode == -9, \
        f"expected death by SIGKILL, got {result.returncode}\n{result.stdout}\n{result.stderr}"
    return helpers.newest_purge(cli)


def assert_ledger_complete(journal, purge_id, vm_uuid, helpers):
    """Intact hash chain, one before-state per (step, resource), point of no return passed."""
    assert journal.verify() == []
    rows = journal.ledger(purge_id)
    assert rows and {r["vm_uuid"] for r in rows} == {vm_uuid}
    intents = collections.Counter((r["atom"], r["resource"]) for r in rows
                                  if r["phase"] == "intent")
    assert intents and all(n == 1 for n in intents.values()), intents
    assert not [r for r in rows if r["phase"] == "reverted"]
    applied = {(r["atom"], r["resource"]) for r in rows if r["phase"] == "applied"}
    assert applied == set(intents)
    steps_changed = {atom.split(":")[0] for atom, _resource in intents}
    assert steps_changed == set(helpers.MUTATING) | set(helpers.FINALIZE)
    assert [r["outcome"] for r in rows if r["atom"].startswith("PassPointOfNoReturn:")] == \
        ["passed"]


@pytest.mark.parametrize("backend,step,point", CASES)
def test_killed_purge_resumes_to_the_uninterrupted_end_state(nova, cli, journal, helpers,
                                                              reference_purge, backend, step,
                                                              point):
    expected = reference_purge(backend)
    vm = nova.uuids["target"]
    seeded = nova.normalized()
    assert seeded != expected

    status = kill_purge(cli, nova, helpers, f"kill@{step}:{point}")
    purge_id = status["purge_id"]
    assert status["state"] == "INTERRUPTED"
    assert [(v["vm_uuid"], v["state"]) for v in status["vms"]] == [(vm, "INTERRUPTED")]
    assert journal.logbooks() == [purge_id]

    # A second purge of the same VM is refused while this one is unfinished, and changes nothing.
    during = nova.snap()
    refused = cli(["purge", "--yes", vm, "-f", "json"])
    assert refused.returncode == 3, refused
    assert purge_id in refused.json["error"]
    assert nova.snap() == during
    assert journal.logbooks() == [purge_id]

    resumed = cli(["resume", purge_id, "-f", "json"], expect=0)
    assert [(v["vm_uuid"], v["result"]) for v in resumed.json["vms"]] == [(vm, "succeeded")]
    helpers.assert_same(nova.normalized(), expected)
    assert_ledger_complete(journal, purge_id, vm, helpers)


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def test_resume_twice_is_harmless(nova, cli, journal, helpers, reference_purge, backend):
    status = kill_purge(cli, nova, helpers, "kill@SoftDeleteInstance:after-change")
    purge_id = status["purge_id"]
    cli(["resume", purge_id], expect=0)
    after_first = nova.snap()
    ledger_first = journal.ledger(purge_id)
    helpers.assert_same(helpers.normalize(after_first, {nova.cell_url: "<cell-url>"}),
                        reference_purge(backend))

    again = cli(["resume", purge_id, "-f", "json"], expect=0)
    assert [(v["vm_uuid"], v["result"]) for v in again.json["vms"]] == \
        [(nova.uuids["target"], "nothing-to-do")]
    helpers.assert_same(nova.snap(), after_first)
    assert journal.ledger(purge_id) == ledger_first
    final = cli(["status", purge_id, "-f", "json"], expect=0).json
    assert final["state"] == "SUCCESS"
    assert [v["state"] for v in final["vms"]] == ["SUCCESS"]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_resume_killed_again_then_resumed(nova, cli, journal, helpers, reference_purge, backend):
    """A resume that is itself killed leaves a purge that the next resume still finishes."""
    purge_id = kill_purge(cli, nova, helpers, "kill@SoftDeleteInstance:after-change")["purge_id"]
    second = cli(["resume", purge_id],
                 env={"NOVAPURGE_FAULTS": "kill@QueueMappingForDelete:before-change"})
    assert second.returncode == -9
    assert helpers.newest_purge(cli)["state"] == "INTERRUPTED"
    cli(["resume", purge_id], expect=0)
    helpers.assert_same(nova.normalized(), reference_purge(backend))
    assert_ledger_complete(journal, purge_id, nova.uuids["target"], helpers)
    assert journal.logbooks() == [purge_id]
