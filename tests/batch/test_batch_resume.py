"""Resume, rollback and signals act per VM of a batch.

- A batch process killed mid-way (SIGKILL while one VM is inside a step) leaves VMs done,
  interrupted and never started; `resume` of the batch id finishes each one, and every VM ends
  as in an uninterrupted batch.
- SIGTERM suspends the running VMs after their current steps and starts no more (exit 5);
  `resume` completes them.
- `rollback` of a batch held at its point of no return (`--hold`) restores every VM.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from novapurge.sandbox.hosts import SimHosts


@pytest.fixture
def backend():
    return "sqlite"


def _results(result) -> dict:
    return {vm["vm_uuid"]: vm["result"] for vm in result.json["vms"]}


def test_killed_batch_resumes_each_vm(nova, fleet, cli, journal, templates, tmp_path, helpers,
                                      batch_helpers):
    infos = fleet(6, hosts=3)
    vms = [i["uuid"] for i in infos]
    # the fourth VM kills the whole process in the middle of its domain's destruction
    killed = cli(["purge", "--yes", *vms, "--parallel", "2", "-f", "json"],
                 env={"NOVAPURGE_FAULTS": f"kill@DestroyDomain:after-change:{vms[3]}"})
    assert killed.returncode == -signal.SIGKILL
    status = helpers.newest_purge(cli)
    purge_id = status["purge_id"]
    states = {vm["vm_uuid"]: vm["state"] for vm in status["vms"]}
    assert states[vms[3]] == "INTERRUPTED"
    assert "SUCCESS" in states.values() and "NOT STARTED" in states.values(), states

    resumed = cli(["resume", purge_id, "--parallel", "3", "-f", "json"], expect=0)
    results = _results(resumed)
    assert {results[vm] for vm, state in states.items() if state == "SUCCESS"} == \
        {"nothing-to-do"}
    assert {results[vm] for vm, state in states.items() if state != "SUCCESS"} == \
        {"succeeded"}
    assert cli(["status", purge_id, "-f", "json"], expect=0).json["state"] == "SUCCESS"

    # every VM ends as in an uninterrupted batch on another copy of the same cloud
    clean = templates.new_cloud("sqlite", tmp_path / "clean")
    try:
        batch_helpers.seed_fleet(clean, helpers.SEED_NOW, 6, 3)
        clean_journal = helpers.new_journal("sqlite", tmp_path / "clean-journal")
        env = {"NOVAPURGE_DB": clean.cell_url, "NOVAPURGE_API_DB": clean.api_url,
               "NOVAPURGE_JOURNAL": clean_journal.url, "NOVAPURGE_SANDBOX": str(clean.sandbox)}
        done = helpers.run_cli(["purge", "--yes", *vms, "-f", "json"], env, expect=0,
                               cwd=tmp_path)
        for info in infos:
            assert batch_helpers.vm_end_state(nova, info, purge_id, helpers) == \
                batch_helpers.vm_end_state(clean, info, done.json["purge_id"], helpers)
        clean_journal.dispose()
    finally:
        clean.dispose()
    assert journal.verify() == []


def test_sigterm_suspends_the_batch_and_resume_completes(nova, fleet, cli_env, cli, journal,
                                                         tmp_path):
    infos = fleet(6, hosts=2)
    vms = [i["uuid"] for i in infos]
    for host in ("compute-1", "compute-2"):
        SimHosts(nova.sandbox / "hosts").host(host).set_latency(0.2)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOVAPURGE_")}
    env.update(cli_env)
    proc = subprocess.Popen([sys.executable, "-m", "novapurge", "purge", "--yes", *vms,
                             "--parallel", "2", "-f", "json"], env=env, cwd=tmp_path,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any(r["phase"] == "applied" and r["atom"].startswith("UnplugVif:")
                  for r in journal.ledger()):
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 5, err
    stopped = json.loads(out)
    results = {vm["vm_uuid"]: vm["result"] for vm in stopped["vms"]}
    assert "suspended" in results.values() and "not-started" in results.values(), results
    assert set(results.values()) <= {"suspended", "not-started", "succeeded"}
    purge_id = stopped["purge_id"]
    status = {vm["vm_uuid"]: vm["state"] for vm in
              cli(["status", purge_id, "-f", "json"], expect=0).json["vms"]}
    assert {status[vm] for vm, r in results.items() if r == "not-started"} <= \
        {"NOT STARTED", "INTERRUPTED"}
    resumed = cli(["resume", purge_id, "--parallel", "6", "-f", "json"], expect=0)
    assert {r for vm, r in _results(resumed).items() if results[vm] != "succeeded"} == \
        {"succeeded"}
    assert cli(["status", purge_id, "-f", "json"], expect=0).json["state"] == "SUCCESS"


def test_rollback_of_a_held_batch_restores_each_vm(nova, fleet, cli, journal, batch_helpers,
                                                  helpers):
    infos = fleet(4, hosts=2)
    vms = [i["uuid"] for i in infos]
    before = [batch_helpers.vm_end_state(nova, i, None, helpers) for i in infos]
    held = cli(["purge", "--yes", *vms, "--hold", "-f", "json"])
    assert held.returncode == 5 and set(_results(held).values()) == {"suspended"}, held
    purge_id = held.json["purge_id"]
    assert [batch_helpers.vm_end_state(nova, i, purge_id, helpers) for i in infos] != before
    rollback = cli(["rollback", "--yes", purge_id, "--parallel", "4", "-f", "json"], expect=0)
    assert _results(rollback) == {vm: "reverted" for vm in vms}
    after = [batch_helpers.vm_end_state(nova, i, purge_id, helpers) for i in infos]
    for vm, was, now in zip(vms, before, after):
        assert now == was, vm
    again = cli(["rollback", "--yes", purge_id, "-f", "json"], expect=0)
    assert set(_results(again).values()) == {"nothing-to-do"}
    assert journal.verify() == []
