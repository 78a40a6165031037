"""API steps on the sandbox's stand-in cloud, and legacy console tokens on real memcached.

The stand-in (sandbox/cloud.py) keeps its state in a file the purge process and the test share,
so a test can take a service down, purge, bring it back and resume, and read the end state.
"""

import json
import socket

import pytest

import memcachelab
from novapurge.sandbox.cloud import SandboxCloud

pytestmark = pytest.mark.slow


@pytest.fixture
def backend():
    return "sqlite"


@pytest.fixture
def cloud(nova):
    return SandboxCloud(nova.sandbox / "cloud.json")


def test_finalize_failure_suspends_and_resume_completes(nova, cli, journal, cloud, helpers):
    vm = nova.uuids["target"]
    cloud.set_down("volume")
    result = cli(["purge", "--yes", vm, "-f", "json"])
    assert result.returncode == 5, result
    (outcome,) = result.json["vms"]
    assert (outcome["result"], outcome["failed_step"]) == ("suspended", "DetachVolume")
    assert "503" in outcome["message"]
    # Nothing of the reversible phase was undone: the instance is deleted, its host traces gone.
    assert nova.rows("cell", "instances", uuid=vm)[0]["deleted"] != 0
    purge_id = result.json["purge_id"]
    status = cli(["status", purge_id, "-f", "json"], expect=0).json
    assert status["state"] == "SUSPENDED"
    assert (status["vms"][0]["failed_step"], "503" in status["vms"][0]["reason"]) == \
        ("DetachVolume", True)
    assert not [r for r in journal.ledger(purge_id) if r["phase"] == "reverted"]
    # rollback is refused past the point of no return once a finalize step ran
    cli(["rollback", "--yes", purge_id], expect=3)

    cloud.set_down("volume", False)
    resumed = cli(["resume", purge_id, "-f", "json"], expect=0)
    assert [v["result"] for v in resumed.json["vms"]] == ["succeeded"]
    volume_id = nova.info["target"]["volumes"][0]
    volume = cloud.volume(volume_id)
    assert volume is None or (volume["status"] == "available" and not volume["attachments"])
    again = cli(["resume", purge_id, "-f", "json"], expect=0)
    assert [v["result"] for v in again.json["vms"]] == ["nothing-to-do"]
    assert cli(["status", purge_id, "-f", "json"], expect=0).json["state"] == "SUCCESS"


def test_api_down_during_discovery_uses_database_facts(nova, cli, journal, cloud):
    cloud.set_down("compute")
    result = cli(["purge", "--yes", nova.uuids["target"], "-f", "json"], expect=0)
    purge_id = result.json["purge_id"]
    notes = [r for r in journal.ledger(purge_id) if r["outcome"] == "api-unavailable"]
    assert len(notes) == 1 and "503" in json.loads(notes[0]["after"])["error"]


@pytest.mark.parametrize("policy", ["dot", "all", "none"])
def test_delete_volumes_policy(nova, cli, cloud, policy):
    vm = nova.uuids["target"]
    volume_id = nova.info["target"]["volumes"][0]
    dot = bool(nova.rows("cell", "block_device_mapping", volume_id=volume_id)[0]
               ["delete_on_termination"])
    cli(["purge", "--yes", vm, "--delete-volumes", policy, "-f", "json"], expect=0)
    deleted = policy == "all" or (policy == "dot" and dot)
    volume = cloud.volume(volume_id)
    if deleted:
        assert volume is None
    else:
        assert (volume["status"], volume["attachments"]) == ("available", [])


def test_nova_ports_deleted_user_ports_unbound(tmp_path, helpers):
    """The demo sandbox's db-deleting instance has one Nova port and one preserved user port."""
    from novapurge.sandbox.novadb import build_sandbox
    built = build_sandbox(tmp_path / "sandbox")
    vm = next(u for u, i in built["instances"].items() if i["name"] == "db-deleting")
    cloud = SandboxCloud(tmp_path / "sandbox" / "cloud.json")
    ports = {p["id"]: p for p in cloud.ports_of(vm)}
    env = {"NOVAPURGE_DB": built["cell_url"], "NOVAPURGE_API_DB": built["api_url"],
           "NOVAPURGE_JOURNAL": f"sqlite:///{tmp_path}/journal.sqlite",
           "NOVAPURGE_SANDBOX": str(tmp_path / "sandbox")}
    helpers.run_cli(["purge", "--yes", vm, "-f", "json"], env, expect=0, cwd=tmp_path)
    import sqlalchemy as sa
    engine = sa.create_engine(built["cell_url"])
    with engine.connect() as conn:
        cache = conn.execute(sa.text("SELECT network_info FROM instance_info_caches WHERE "
                                     "instance_uuid = :u"), {"u": vm}).scalar()
    engine.dispose()
    preserve = {v["id"]: v["preserve_on_delete"] for v in json.loads(cache)}
    assert sorted(preserve.values()) == [False, True]
    for port_id, kept in preserve.items():
        port = cloud.port(port_id)
        if kept:
            assert port is not None and port["device_id"] == "" and not port["binding_host_id"]
        else:
            assert port is None
    assert set(ports) == set(preserve)


@pytest.fixture
def demo(tmp_path, helpers):
    """The demo sandbox (its db-deleting instance has every kind of volume and port) and
    `run(*args, env=None, expect=None)`, the CLI on it."""
    from novapurge.sandbox.novadb import build_sandbox
    built = build_sandbox(tmp_path / "sandbox")
    env = {"NOVAPURGE_DB": built["cell_url"], "NOVAPURGE_API_DB": built["api_url"],
           "NOVAPURGE_JOURNAL": f"sqlite:///{tmp_path}/journal.sqlite",
           "NOVAPURGE_SANDBOX": str(tmp_path / "sandbox")}

    def run(*args, env_extra=None, expect=None):
        return helpers.run_cli(list(args), {**env, **(env_extra or {})}, expect, cwd=tmp_path)
    by_name = {i["name"]: uuid for uuid, i in built["instances"].items()}
    return built, by_name, SandboxCloud(tmp_path / "sandbox" / "cloud.json"), run


@pytest.mark.parametrize("name,step", [("db-deleting", "DetachVolume"),
                                       ("db-deleting", "DeleteVolume"),
                                       ("db-deleting", "DeletePort"),
                                       ("db-deleting", "UnbindPort"),
                                       ("batch-shelved", "DeleteShelvedImage")])
def test_each_finalize_step_failing_suspends_and_resume_completes(demo, name, step):
    """A finalize step that fails after its change: nothing reverted, SUSPENDED; resume re-runs
    it (the change already made counts as done) and completes; a second resume does nothing."""
    built, by_name, cloud, run = demo
    vm = by_name[name]
    ports = {p["id"] for p in cloud.ports_of(vm)}
    volumes = [a["volume_id"] for a in cloud.volume_attachments_of(vm)]
    image = built["instances"][vm].get("shelved_image_id")
    failed = run("purge", "--yes", vm, "--delete-volumes", "all", "-f", "json",
                 env_extra={"NOVAPURGE_FAULTS": f"fail@{step}:after-change"}, expect=5).json
    [outcome] = failed["vms"]
    assert (outcome["result"], outcome["failed_step"]) == ("suspended", step)
    status = run("status", failed["purge_id"], "-f", "json", expect=0).json
    assert (status["state"], status["vms"][0]["failed_step"]) == ("SUSPENDED", step)
    assert cloud.allocations(vm) is None          # the reversible phase stays done

    resumed = run("resume", failed["purge_id"], "-f", "json", expect=0).json
    assert [v["result"] for v in resumed["vms"]] == ["succeeded"]
    again = run("resume", failed["purge_id"], "-f", "json", expect=0).json
    assert [v["result"] for v in again["vms"]] == ["nothing-to-do"]
    assert cloud.ports_of(vm) == [] and cloud.volume_attachments_of(vm) == []
    assert all(cloud.volume(v) is None for v in volumes)
    kept = [p for p in ports if cloud.port(p) is not None]
    assert all(cloud.port(p)["device_id"] == "" for p in kept)
    assert image is None or cloud.image(image) is None


def _legacy_tokens(server, vm_uuid, tokens, ttl=600):
    """Write nova-consoleauth's legacy keys: each token's data, and the instance's token list."""
    host, port = server.split(":")
    with socket.create_connection((host, int(port))) as conn:
        def put(key, value):
            data = value.encode()
            conn.sendall(f"set {key} 0 {ttl} {len(data)}\r\n".encode() + data + b"\r\n")
            assert conn.recv(64).startswith(b"STORED")
        for token in tokens:
            put(token, json.dumps({"instance_uuid": vm_uuid, "host": "127.0.0.1", "port": 5900}))
        put(vm_uuid, json.dumps(tokens))


def _keys(server, keys):
    host, port = server.split(":")
    with socket.create_connection((host, int(port))) as conn:
        conn.sendall(("get " + " ".join(keys) + "\r\n").encode())
        data = b""
        while not data.endswith(b"END\r\n"):
            data += conn.recv(65536)
    return {line.split()[1] for line in data.decode().splitlines() if line.startswith("VALUE")}


@pytest.mark.parametrize("failure", [None, "fail@DeleteConsoleTokens:after-change"])
def test_console_tokens_on_every_controller(nova, cli, tmp_path, failure):
    with memcachelab.memcached_servers(2) as lab:
        config = tmp_path / "memcache.toml"
        config.write_text(f"[memcache]\nservers = {json.dumps(lab.servers)}\n")
        target, other = nova.uuids["target"], nova.uuids["active"]
        mine = {s: [f"tok-{i}-{target[:8]}-{n}" for n in range(2)]
                for i, s in enumerate(lab.servers)}
        theirs = {s: [f"tok-{i}-{other[:8]}"] for i, s in enumerate(lab.servers)}
        for server in lab.servers:
            _legacy_tokens(server, target, mine[server])
            _legacy_tokens(server, other, theirs[server])
        env = {"NOVAPURGE_CONFIG": str(config)}
        if failure:
            env["NOVAPURGE_FAULTS"] = failure
        result = cli(["purge", "--yes", target, "-f", "json"], env=env)
        assert result.returncode == (4 if failure else 0), result
        for server in lab.servers:
            assert _keys(server, theirs[server] + [other]) == set(theirs[server] + [other])
            left = _keys(server, mine[server] + [target])
            assert left == (set(mine[server] + [target]) if failure else set())
