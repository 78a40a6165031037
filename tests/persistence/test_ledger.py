"""The change ledger: before-state reuse, redaction, hash chain, locks."""

import json
import os
import subprocess
import sys

import pytest
import sqlalchemy as sa

from novapurge.errors import Refused
from novapurge.persistence import audit, schema
from novapurge.persistence.ledger import Actor, Ledger
from novapurge.persistence.locks import VmLocks, process_started

VM = "6c1e7d0a-2b9f-4c38-9a51-0d3f7e8b1c22"


@pytest.fixture
def engine(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'journal.sqlite'}")
    yield engine
    engine.dispose()


@pytest.fixture
def ledger(engine):
    return Ledger(engine, Actor(operator="alice", ticket="CHG-1"))


def test_rerun_gets_the_first_before_state_back(ledger):
    vm = ledger.bind("p1", VM)
    first = vm.record_before("Step:x", "rows:cell1", {"in_use": 3})
    again = vm.record_before("Step:x", "rows:cell1", {"in_use": 2})
    assert again.state == {"in_use": 3} and again.id == first.id
    assert len(ledger.rows(purge_id="p1")) == 1


def test_applied_entry_carries_the_before_state_as_recorded(ledger):
    """record_after repeats the live before-state, as recorded: not the caller's object changed
    since, and after a re-run the first run's state."""
    state = {"rows": [1, 2]}
    vm = ledger.bind("p1", VM)
    vm.record_before("Step:x", "r", state)
    state["rows"].append(3)
    vm.record_after("Step:x", "r", {"rows": []})
    rerun = ledger.bind("p1", VM)
    rerun.record_before("Step:x", "r", {"rows": ["other"]})
    rerun.record_after("Step:x", "r", {"rows": []})
    fresh = ledger.bind("p1", VM)   # a revert's binding, which recorded nothing itself
    fresh.record_after("Step:x", "r", {"rows": []}, outcome="again")
    intent, *applied = ledger.rows()
    assert [json.loads(a["before"]) for a in applied] == [json.loads(intent["before"])] * 3
    assert json.loads(intent["before"]) == {"rows": [1, 2]}


def test_reverted_before_state_is_no_longer_live(ledger):
    vm = ledger.bind("p1", VM)
    vm.record_before("Step:x", "r", {"v": 1})
    vm.record_after("Step:x", "r", {"v": 0})
    assert vm.applied("Step:x", "r")
    vm.record_reverted("Step:x", "r", {"v": 1})
    assert vm.before("Step:x", "r") is None and not vm.applied("Step:x", "r")
    assert [r["phase"] for r in ledger.rows()] == ["intent", "applied", "reverted"]


def test_secrets_are_redacted_but_revert_gets_them(ledger):
    secret = "s3cr3t-chap-password"
    state = {"rows": {"block_device_mapping": [{"connection_info": json.dumps(
        {"driver_volume_type": "iscsi", "data": {"auth_password": secret, "target_lun": 1}})}],
        "instance_system_metadata": [{"key": "password_0", "value": secret}]}}
    vm = ledger.bind("p1", VM)
    vm.record_before("Step:x", "r", state)
    assert vm.before("Step:x", "r").state == state
    row = ledger.rows()[0]
    assert secret not in row["before"] and secret in row["protected"]
    for export_format in ("jsonl", "csv", "json"):
        assert secret not in audit.render(ledger.rows(), export_format)
    assert ledger.verify() == []


def test_entries_record_who_and_where(ledger):
    ledger.bind("p1", VM).note("Step:x", "group:quota", "skipped")
    row = audit.exported_row(ledger.rows()[0])
    assert row["operator"] == "alice" and row["ticket"] == "CHG-1"
    assert row["os_user"] and row["machine"] and row["ts"]
    assert "protected" not in row


def test_verify_detects_edits_removals_and_truncation(ledger, engine):
    vm = ledger.bind("p1", VM)
    for n in range(4):
        vm.note("Step:x", f"r{n}", "passed")
    assert ledger.verify() == []
    with engine.begin() as conn:
        conn.execute(sa.update(schema.ledger).where(schema.ledger.c.id == 2)
                     .values(outcome="tampered"))
    assert any("entry 2" in p for p in ledger.verify())
    with engine.begin() as conn:
        conn.execute(sa.update(schema.ledger).where(schema.ledger.c.id == 2)
                     .values(outcome="passed"))
        conn.execute(sa.delete(schema.ledger).where(schema.ledger.c.id == 4))
    assert any("removed" in p for p in ledger.verify())


def test_chain_stays_linear_under_concurrent_writers(tmp_path):
    url = f"sqlite:///{tmp_path / 'j.sqlite'}"
    Ledger(sa.create_engine(url), Actor(operator="x"))
    code = ("import sqlalchemy as sa, sys\n"
            "from novapurge.persistence.ledger import Ledger, Actor\n"
            f"l = Ledger(sa.create_engine({url!r}), Actor(operator=sys.argv[1]))\n"
            f"v = l.bind('p', {VM!r})\n"
            "for n in range(25): v.note('S:x', sys.argv[1] + str(n), 'passed')\n")
    workers = [subprocess.Popen([sys.executable, "-c", code, name]) for name in ("a", "b", "c")]
    assert [w.wait(timeout=120) for w in workers] == [0, 0, 0]
    ledger = Ledger(sa.create_engine(url), Actor(operator="x"))
    assert len(ledger.rows()) == 75 and ledger.verify() == []
    times = [row["ts"] for row in ledger.rows()]    # stamped in the chain's order
    assert times == sorted(times)


def test_lock_refuses_a_live_holder_and_takes_over_a_dead_one(engine):
    locks = VmLocks(engine)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with engine.begin() as conn:
            conn.execute(sa.insert(schema.locks).values(
                vm_uuid=VM, purge_id="mine", machine=locks._me["machine"], pid=sleeper.pid,
                pid_started=process_started(sleeper.pid), acquired_at="now"))
        with pytest.raises(Refused, match="running"):
            locks.acquire(VM, "mine")
        with pytest.raises(Refused, match="resume or roll it back"):
            locks.acquire(VM, "another-purge")
    finally:
        sleeper.kill()
        sleeper.wait()
    with pytest.raises(Refused, match="interrupted"):
        locks.acquire(VM, "another-purge")  # a dead holder of another purge still blocks
    locks.acquire(VM, "mine")  # the holder of this purge is dead: resume takes its lock
    assert locks.holder(VM).purge_id == "mine" and locks.holder(VM).pid == os.getpid()
    locks.release(VM)
    assert locks.holder(VM) is None
