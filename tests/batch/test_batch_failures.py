"""A batch where some VMs fail: each fails on its own, exactly as it would have alone.

Eight stuck instances over three simulated hosts, plus a healthy one, purged as one batch with
faults aimed at single VMs (`fail@Step:point:VM`) and the volume API down (only one VM has a
volume): the others succeed; the failed ones are reverted (host step, DB step, quarantine) or
suspended (finalize), and each one's rows, host and cloud state and ledger are exactly those of
the same VM purged alone, with the same fault, in another copy of the same cloud.
"""

import pytest

from novapurge.sandbox.cloud import SandboxCloud


@pytest.fixture
def backend():
    return "sqlite"


# fleet index -> (fault or None, expected result, failed step)
PLAN = {
    0: (None, "succeeded", None),
    1: ("fail@UnplugVif:before-change", "reverted", "UnplugVif"),
    2: ("fail@SoftDeleteInstance:after-change", "reverted", "SoftDeleteInstance"),
    3: ("volume-down", "suspended", "DetachVolume"),
    4: (None, "succeeded", None),
    5: ("fail@QuarantineInstanceDirs:after-change", "reverted", "QuarantineInstanceDirs"),
    6: ("fail@ReleaseQuotaUsage:before-change", "reverted", "ReleaseQuotaUsage"),
    7: (None, "succeeded", None),
}
VOLUMES = (3,)


def _faults(infos, indexes) -> str:
    return ",".join(f"{PLAN[i][0]}:{infos[i]['uuid']}" for i in indexes
                    if PLAN[i][0] and PLAN[i][0].startswith("fail@"))


def test_failures_stay_with_their_vm(nova, fleet, cli, journal, templates, tmp_path, helpers,
                                     batch_helpers):
    infos = fleet(len(PLAN), hosts=3, volumes=VOLUMES)
    healthy = nova.uuids["active"]
    SandboxCloud(nova.sandbox / "cloud.json").set_down("volume")
    vms = [info["uuid"] for info in infos]
    listing = tmp_path / "vms.txt"
    listing.write_text("# the batch\n" + "\n".join(vms[:4]) + "\n\n" + healthy + "  # healthy\n")
    result = cli(["purge", "--yes", "--from-file", listing, *vms[4:], "--parallel", "4",
                  "-f", "json"], env={"NOVAPURGE_FAULTS": _faults(infos, PLAN)})
    assert result.returncode == 5, result  # the worst result: suspended
    purge_id = result.json["purge_id"]
    by_vm = {vm["vm_uuid"]: vm for vm in result.json["vms"]}
    assert list(by_vm) == vms[4:] + vms[:4] + [healthy]  # arguments first, then the file
    for i, (_fault, expected, step) in PLAN.items():
        assert (by_vm[vms[i]]["result"], by_vm[vms[i]]["failed_step"]) == (expected, step), i
    assert by_vm[healthy]["result"] == "refused" and "healthy" in by_vm[healthy]["message"]
    assert result.json["summary"] == {"refused": 1, "reverted": 4, "succeeded": 3,
                                      "suspended": 1}
    # one runner per host for the whole batch, one connection each
    assert {h: s["connections"] for h, s in result.json["hosts"].items()} == \
        {"compute-1": 1, "compute-2": 1, "compute-3": 1}
    status = cli(["status", purge_id, "-f", "json"], expect=0).json
    states = {vm["vm_uuid"]: vm["state"] for vm in status["vms"]}
    assert states[healthy] == "REFUSED" and states[vms[0]] == "SUCCESS"
    assert states[vms[3]] == "SUSPENDED" and states[vms[1]] == "REVERTED"

    # The same VMs alone, each with its own fault, in another copy of the same cloud.
    alone = templates.new_cloud("sqlite", tmp_path / "alone")
    try:
        again = batch_helpers.seed_fleet(alone, helpers.SEED_NOW, len(PLAN), 3, VOLUMES)
        assert [i["uuid"] for i in again] == vms
        SandboxCloud(alone.sandbox / "cloud.json").set_down("volume")
        for i, info in enumerate(again):
            journal_alone = helpers.new_journal("sqlite", tmp_path / f"journal-{i}")
            env = {"NOVAPURGE_DB": alone.cell_url, "NOVAPURGE_API_DB": alone.api_url,
                   "NOVAPURGE_JOURNAL": journal_alone.url,
                   "NOVAPURGE_SANDBOX": str(alone.sandbox),
                   "NOVAPURGE_FAULTS": _faults(infos, [i])}
            solo = helpers.run_cli(["purge", "--yes", info["uuid"], "-f", "json"], env,
                                   cwd=tmp_path)
            (outcome,) = solo.json["vms"]
            assert (outcome["result"], outcome["failed_step"]) == PLAN[i][1:], i
            solo_id = solo.json["purge_id"]
            assert batch_helpers.vm_end_state(nova, infos[i], purge_id, helpers) == \
                batch_helpers.vm_end_state(alone, info, solo_id, helpers), i
            assert batch_helpers.vm_ledger(journal, purge_id, info["uuid"]) == \
                batch_helpers.vm_ledger(journal_alone, solo_id, info["uuid"]), i
            journal_alone.dispose()
    finally:
        alone.dispose()
    # the reverted ones are as they were found
    assert journal.verify() == []
