"""What the CLI refuses, and that a refusal changes nothing (SQLite; the fast tier).

Bad input exits 2 and a guard's refusal 3, each leaving both Nova databases byte-identical and the
journal without a logbook. `plan` reads only; `--skip` leaves its group's rows alone and says so in
the ledger.
"""

import uuid as uuidlib

import pydot
import pytest
import sqlalchemy as sa

from novapurge.persistence.locks import VmLocks



@pytest.fixture
def backend():
    return "sqlite"


@pytest.fixture
def locks(journal):
    """The journal's VM locks, held from this (live) test process."""
    engine = sa.create_engine(journal.url)
    yield VmLocks(engine)
    engine.dispose()


@pytest.fixture
def unchanged(nova, journal, helpers):
    """Call it at the end of a test: both Nova DBs as seeded, and no purge in the journal."""
    before = nova.snap()

    def check():
        helpers.assert_same(nova.snap(), before)
        assert journal.logbooks() == []
        assert journal.ledger() == []
    return check


def _error(result):
    assert result.json and set(result.json) == {"error", "exit_code"}, result
    assert result.json["exit_code"] == result.returncode
    return result.json["error"]


@pytest.mark.parametrize("which", ["not-a-uuid", "unknown", "gone"])
def test_bad_instance_is_rejected(nova, cli, unchanged, which):
    vm = {"not-a-uuid": "not-a-uuid", "unknown": str(uuidlib.uuid4()),
          "gone": nova.uuids.get("gone")}[which]
    for command in (["purge", "--yes"], ["plan"]):
        error = _error(cli([*command, vm, "-f", "json"], expect=2))
        expected = {"not-a-uuid": "not an instance UUID", "unknown": "unknown instance",
                    "gone": "already deleted"}[which]
        assert expected in error, error
    unchanged()


def test_gone_instance_really_was_deleted_by_nova(nova):
    row, = nova.rows("cell", "instances", uuid=nova.uuids["gone"])
    assert row["deleted"] == row["id"] and row["vm_state"] == "deleted"


@pytest.mark.parametrize("journal_url,shown", [
    ("postgresql://np:s3cr3t-pw@127.0.0.1/novapurge", "unsupported journal URL"),
    ("mysql+pymysql://root:s3cr3t-pw@127.0.0.1:1/novapurge", "cannot connect to the journal"),
    ("not a url at all", "not a database URL"),
])
def test_bad_journal_is_rejected(nova, cli, unchanged, journal_url, shown):
    result = cli(["purge", "--yes", nova.uuids["target"], "-f", "json"],
                 env={"NOVAPURGE_JOURNAL": journal_url}, expect=2)
    error = _error(result)
    assert shown in error, error
    assert "s3cr3t-pw" not in result.stdout + result.stderr
    unchanged()


def test_bad_nova_database_is_rejected(nova, cli, unchanged):
    result = cli(["purge", "--yes", nova.uuids["target"], "-f", "json"],
                 env={"NOVAPURGE_API_DB": "mysql+pymysql://nova:s3cr3t-pw@127.0.0.1:1/nova_api"},
                 expect=2)
    assert "database api" in _error(result)
    assert "s3cr3t-pw" not in result.stdout + result.stderr
    unchanged()


@pytest.mark.parametrize("role", ["active", "stopped"])
def test_healthy_instance_needs_force(nova, cli, journal, helpers, role):
    vm, before = nova.uuids[role], nova.snap()
    error = _error(cli(["purge", "--yes", vm, "-f", "json"], expect=3))
    assert "looks healthy" in error and "--force" in error
    helpers.assert_same(nova.snap(), before)
    assert journal.logbooks() == []

    forced = cli(["purge", "--yes", "--force", vm, "-f", "json"], expect=0).json
    assert [(v["vm_uuid"], v["result"]) for v in forced["vms"]] == [(vm, "succeeded")]
    instance, = nova.rows("cell", "instances", uuid=vm)
    assert instance["deleted"] == instance["id"] and instance["vm_state"] == "deleted"
    assert journal.logbooks() == [forced["purge_id"]]


def test_second_purge_of_a_purged_vm_has_nothing_to_do(nova, cli, journal, helpers):
    vm = nova.uuids["target"]
    first = cli(["purge", "--yes", vm, "-f", "json"], expect=0).json
    after_first, ledger = nova.snap(), journal.ledger()

    second = cli(["purge", "--yes", vm, "-f", "json"], expect=0).json
    assert second["purge_id"] is None
    assert [(v["vm_uuid"], v["result"]) for v in second["vms"]] == [(vm, "nothing-to-do")]
    assert first["purge_id"] in second["vms"][0]["message"]
    helpers.assert_same(nova.snap(), after_first)
    assert journal.logbooks() == [first["purge_id"]]
    assert journal.ledger() == ledger
    plan = cli(["plan", vm, "-f", "json"], expect=0).json
    assert plan == [{"vm_uuid": vm, "already_purged_by": first["purge_id"], "steps": []}]


def test_purge_refused_while_another_process_holds_the_vm(nova, cli, journal, helpers, locks):
    vm, before = nova.uuids["target"], nova.snap()
    locks.acquire(vm, "some-purge-id")
    try:
        result = cli(["purge", "--yes", vm, "-f", "json"], expect=3)
        assert "some-purge-id" in _error(result) and "running" in _error(result)
        helpers.assert_same(nova.snap(), before)
        assert journal.logbooks() == []
        assert locks.holder(vm).purge_id == "some-purge-id"  # not taken from a live holder
    finally:
        locks.release(vm)
    cli(["purge", "--yes", vm], expect=0)


def _interrupt(cli, helpers, vm):
    killed = cli(["purge", "--yes", vm], env={"NOVAPURGE_FAULTS": "kill@SoftDeleteInstance:end"})
    assert killed.returncode == -9
    status = helpers.newest_purge(cli)
    assert status["state"] == "INTERRUPTED"
    return status["purge_id"]


def test_interrupted_purge_held_by_a_live_process(nova, cli, journal, helpers, locks):
    """status says RUNNING while a live process holds the lock; resume waits for it to let go."""
    vm = nova.uuids["target"]
    purge_id = _interrupt(cli, helpers, vm)
    locks.acquire(vm, purge_id)  # takes over the dead process's lock, as a resume would
    try:
        running = cli(["status", purge_id, "-f", "json"], expect=0).json
        assert running["state"] == "RUNNING"
        assert running["vms"][0]["runner"]["pid"] == locks.holder(vm).pid
        during = nova.snap()
        assert "running" in _error(cli(["resume", purge_id, "-f", "json"], expect=3))
        assert "running" in _error(cli(["purge", "--yes", vm, "-f", "json"], expect=3))
        helpers.assert_same(nova.snap(), during)
    finally:
        locks.release(vm)
    assert cli(["status", purge_id, "-f", "json"], expect=0).json["state"] == "INTERRUPTED"
    resumed = cli(["resume", purge_id, "-f", "json"], expect=0).json
    assert [v["result"] for v in resumed["vms"]] == ["succeeded"]
    assert cli(["status", purge_id, "-f", "json"], expect=0).json["state"] == "SUCCESS"
    assert journal.logbooks() == [purge_id]


def test_refused_rollback_leaves_the_purge_as_it_was(nova, cli, journal, helpers, locks):
    """A rollback refused because a live process holds the VM must not journal anything: the
    purge stays INTERRUPTED and the next `resume` completes it (it does not roll it back)."""
    vm = nova.uuids["target"]
    purge_id = _interrupt(cli, helpers, vm)
    locks.acquire(vm, purge_id)
    try:
        during = nova.snap()
        error = _error(cli(["rollback", "--yes", purge_id, "-f", "json"], expect=3))
        assert "running" in error
        helpers.assert_same(nova.snap(), during)
    finally:
        locks.release(vm)
    assert cli(["status", purge_id, "-f", "json"], expect=0).json["state"] == "INTERRUPTED"
    resumed = cli(["resume", purge_id, "-f", "json"])
    assert [v["result"] for v in resumed.json["vms"]] == ["succeeded"], resumed
    instance, = nova.rows("cell", "instances", uuid=vm)
    assert instance["deleted"] == instance["id"]


def test_plan_changes_nothing_and_lists_the_steps(nova, cli, unchanged, helpers):
    vm = nova.uuids["target"]
    result = cli(["plan", vm, "-f", "json"], expect=0)
    plan, = result.json
    assert plan["vm_uuid"] == vm
    assert [s["step"] for s in plan["steps"]] == list(helpers.STEPS)
    vif, = nova.info["target"]["ports"]
    assert [s["atom"] for s in plan["steps"]][:5] == [f"{s}:{vm}" for s in helpers.STEPS[:5]]
    assert f"UnplugVif:{vm}:{vif}" in [s["atom"] for s in plan["steps"]]
    by_step = {s["step"]: s for s in plan["steps"]}
    host_commands = [c["command"] for c in by_step["UnplugVif"]["changes"]]
    assert any(c.startswith(f"ip link del dev qbr{vif[:11]}") for c in host_commands)
    assert by_step["DestroyDomain"]["changes"][0]["command"] == \
        f"virsh destroy {nova.info['target']['instance_name']}"
    assert {s["step"] for s in plan["steps"] if not s["reversible"]} == \
        {"PassPointOfNoReturn", *helpers.FINALIZE}
    by_step = {s["step"]: s for s in plan["steps"]}
    assert {c["table"] for c in by_step["SoftDeleteInstance"]["changes"] if c["rows"]} >= {
        "instances", "block_device_mapping", "tags", "console_auth_tokens", "share_mapping"}
    quota = by_step["ReleaseQuotaUsage"]["changes"]
    assert len(quota) == 3 and all(c["target"] == "api" for c in quota)
    assert by_step["PassPointOfNoReturn"]["reversible"] is False
    assert helpers.read_secret(nova) not in result.stdout + result.stderr

    table = cli(["plan", vm], expect=0)
    for step in helpers.STEPS:
        assert step in table.stdout
    unchanged()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pydot's parser on new pyparsing
def test_plan_graph_writes_the_step_graph(nova, cli, unchanged, tmp_path, helpers):
    path = tmp_path / "steps.dot"
    cli(["plan", nova.uuids["target"], "--graph", path], expect=0)
    graph, = pydot.graph_from_dot_file(str(path))
    nodes = {n.get_name().strip('"') for n in graph.get_nodes()} - {"node", "graph", "edge"}
    assert {n.split(":", 1)[0] for n in nodes} == set(helpers.STEPS)
    edges = {(e.get_source().strip('"').split(":", 1)[0],
              e.get_destination().strip('"').split(":", 1)[0]) for e in graph.get_edges()}
    # the host chain, then the database chain; API steps beside them; finalize after no return
    assert {("DiscoverInstance", "GuardInstance"), ("GuardInstance", "VerifyDomainIdentity"),
            ("VerifyDomainIdentity", "DeleteDbAllocations"),
            ("VerifyDomainIdentity", "DeleteAllocations"),
            ("VerifyDomainIdentity", "DestroyDomain"), ("DestroyDomain", "UnplugVif"),
            ("UnplugVif", "DisconnectIscsiTarget"),
            ("DisconnectIscsiTarget", "QuarantineInstanceDirs"),
            ("QuarantineInstanceDirs", "UndefineDomain"), ("UndefineDomain", "SoftDeleteInstance"),
            ("SoftDeleteInstance", "ReleaseQuotaUsage"),
            ("ReleaseQuotaUsage", "QueueMappingForDelete"),
            ("QueueMappingForDelete", "PassPointOfNoReturn"),
            ("DeleteDbAllocations", "PassPointOfNoReturn"),
            ("DeleteAllocations", "PassPointOfNoReturn"),
            ("PassPointOfNoReturn", "DetachVolume"), ("PassPointOfNoReturn", "DeletePort"),
            ("PassPointOfNoReturn", "EmptyQuarantine")} == edges
    unchanged()


def test_skip_quota_leaves_usage_alone_and_says_so(nova, cli, journal):
    vm = nova.uuids["target"]
    usage = {db: nova.rows(db, "quota_usages") for db in ("cell", "api")}
    assert usage["api"]
    result = cli(["purge", "--yes", "--skip", "quota", vm, "-f", "json"], expect=0).json
    assert {db: nova.rows(db, "quota_usages") for db in ("cell", "api")} == usage
    instance, = nova.rows("cell", "instances", uuid=vm)
    assert instance["deleted"] == instance["id"]  # the rest of the purge happened

    rows = journal.ledger(result["purge_id"])
    notes = [(r["resource"], r["phase"], r["outcome"]) for r in rows
             if r["atom"] == f"NoteSkippedGroups:{vm}"]
    assert notes == [("group:quota", "note", "skipped")]
    assert not [r for r in rows if r["atom"].startswith("ReleaseQuotaUsage:")]
    status = cli(["status", result["purge_id"], "-f", "json"], expect=0).json
    assert status["vms"][0]["skipped_groups"] == ["quota"]


@pytest.mark.parametrize("skip,message", [("db", "skip quota and mapping too"),
                                          ("nonsense", "unknown step group")])
def test_bad_skip_is_rejected(nova, cli, unchanged, skip, message):
    assert message in _error(cli(["purge", "--yes", "--skip", skip, nova.uuids["target"],
                                  "-f", "json"], expect=2))
    unchanged()


def test_purge_without_yes_off_a_terminal_changes_nothing(nova, cli, unchanged):
    result = cli(["purge", nova.uuids["target"]], expect=2)
    assert "--yes" in result.stderr
    assert "SoftDeleteInstance" in result.stdout  # the plan was shown first
    unchanged()


@pytest.mark.parametrize("faults", ["fail@SoftDeleteInstance:start", "fail@GuardInstance:end",
                                    "explode@SoftDeleteInstance:start",
                                    "kill@SoftDeleteInstance:middle"])
def test_bad_fault_spec_is_rejected_before_anything_runs(nova, cli, unchanged, faults):
    result = cli(["purge", "--yes", nova.uuids["target"], "-f", "json"],
                 env={"NOVAPURGE_FAULTS": faults}, expect=2)
    assert "NOVAPURGE_FAULTS" in _error(result)
    unchanged()


@pytest.mark.parametrize("command", [["resume"], ["rollback", "--yes"], ["status"],
                                     ["audit", "export"]])
def test_unknown_purge_id_is_rejected(nova, cli, unchanged, command):
    assert "unknown purge id" in _error(cli([*command, str(uuidlib.uuid4()), "-f", "json"],
                                            expect=2))
    assert "not a purge id" in _error(cli([*command, "12345", "-f", "json"], expect=2))
    unchanged()


def test_resume_without_the_api_database_is_refused_before_anything(nova, cli, journal,
                                                                    helpers):
    """A purge found through the API DB cannot be resumed from the cell DB alone."""
    vm = nova.uuids["target"]
    purge_id = _interrupt(cli, helpers, vm)
    during, ledger = nova.snap(), journal.ledger(purge_id)
    for command in (["resume", purge_id], ["rollback", "--yes", purge_id]):
        error = _error(cli([*command, "-f", "json"], env={"NOVAPURGE_API_DB": None}, expect=2))
        assert "--api-db" in error
    helpers.assert_same(nova.snap(), during)
    assert journal.ledger(purge_id) == ledger
    assert cli(["status", purge_id, "-f", "json"], expect=0).json["state"] == "INTERRUPTED"
    cli(["resume", purge_id], expect=0)
    instance, = nova.rows("cell", "instances", uuid=vm)
    assert instance["deleted"] == instance["id"]
