"""Purges on a real OpenStack: servers booted by real Nova, made stuck, purged through the APIs.

The lab (tests/labs/cloudlab.py) runs Keystone, Placement, Neutron, Glance, Cinder and Nova on
loopback; Nova's compute driver is the fake one, so there is no compute host to clean: every
purge here runs with `--skip host` (recorded as deferred), and everything else is real.
"""

import json

import pytest
from openstack import exceptions as os_exc

pytestmark = [pytest.mark.cloud, pytest.mark.slow]

CELL_DB = "nova_cell1"
API_DB = "nova_api"


@pytest.fixture
def purge_cli(cloudlab, tmp_path, helpers):
    """`purge_cli(*args, expect=None, service_token=False, env=None)`: the CLI on the lab."""
    def call(*args, expect=None, service_token=False, env=None):
        config = tmp_path / "novapurge.toml"
        config.write_text('[cloud]\nservice = "nova-service"\n' if service_token else "")
        full = {"NOVAPURGE_DB": cloudlab.nova_cell_url, "NOVAPURGE_API_DB": cloudlab.nova_api_url,
                "NOVAPURGE_JOURNAL": f"sqlite:///{tmp_path}/journal.sqlite",
                "NOVAPURGE_CONFIG": str(config), "OS_CLOUD": cloudlab.admin_cloud,
                "OS_CLIENT_CONFIG_FILE": str(cloudlab.clouds_yaml), **(env or {})}
        return helpers.run_cli(list(args), full, expect, cwd=tmp_path, timeout=600)
    return call


def _purge(purge_cli, vm, *extra, expect=0, **kwargs):
    return purge_cli("purge", "--yes", vm, "--skip", "host", *extra, "-f", "json",
                     expect=expect, **kwargs)


def _stick(cloudlab, vm, task_state=None, vm_state="error"):
    cloudlab.sql(CELL_DB, "UPDATE instances SET vm_state = :v, task_state = :t WHERE uuid = :u",
                 {"v": vm_state, "t": task_state, "u": vm})


def _allocations(conn, vm):
    """{provider: resources} of a consumer (a provider's generation moves with every consumer's
    change, so it is left out)."""
    body = conn.placement.get(f"/allocations/{vm}", microversion="1.28").json()
    return {rp: a["resources"] for rp, a in (body.get("allocations") or {}).items()}


def _consumer(conn, vm):
    """(project, user) of a consumer with allocations, None without."""
    body = conn.placement.get(f"/allocations/{vm}", microversion="1.28").json()
    return (body["project_id"], body["user_id"]) if body.get("allocations") else None


def _server_gone(conn, vm) -> bool:
    try:
        conn.compute.get_server(vm)
    except os_exc.NotFoundException:
        return True
    return False


def _port(conn, port_id):
    try:
        return conn.network.get_port(port_id)
    except os_exc.NotFoundException:
        return None


def _volume(conn, volume_id):
    try:
        return conn.block_storage.get_volume(volume_id)
    except os_exc.NotFoundException:
        return None


def assert_purged(conn, server, kept_volumes=()):
    """What the APIs must say after a purge of `server` (cloudlab.boot's description)."""
    vm = server["id"]
    assert _server_gone(conn, vm)
    assert _allocations(conn, vm) == {}
    for port_id, origin in server["ports"].items():
        port = _port(conn, port_id)
        if origin == "nova":
            assert port is None, f"Nova's port {port_id} was not deleted"
        else:
            assert port is not None and not port.device_id and not port.binding_host_id
    for volume_id, dot in server["volumes"].items():
        volume = _volume(conn, volume_id)
        if dot and volume_id not in kept_volumes:
            assert volume is None or volume.status == "deleting"
        else:
            assert volume is not None and volume.status == "available" and not volume.attachments


def assert_untouched(conn, server, allocations):
    vm = server["id"]
    assert conn.compute.get_server(vm).status == "ACTIVE"
    assert _allocations(conn, vm) == allocations
    for port_id in server["ports"]:
        port = _port(conn, port_id)
        assert port is not None and port.device_id == vm and port.binding_host_id
    for volume_id in server["volumes"]:
        volume = _volume(conn, volume_id)
        assert volume.status == "in-use" and [a["server_id"] for a in volume.attachments] == [vm]


def assert_archived(cloudlab, vm):
    result = cloudlab.nova_manage("db", "archive_deleted_rows", "--until-complete", "--verbose")
    assert result.returncode in (0, 1), result.stderr
    assert cloudlab.sql(CELL_DB, "SELECT id FROM instances WHERE uuid = :u", {"u": vm}) == []
    assert cloudlab.sql(CELL_DB, "SELECT id FROM shadow_instances WHERE uuid = :u", {"u": vm})
    for table in ("instance_extra", "instance_info_caches", "block_device_mapping",
                  "instance_system_metadata", "instance_actions"):
        assert cloudlab.sql(CELL_DB, f"SELECT 1 FROM {table} WHERE instance_uuid = :u",
                            {"u": vm}) == [], table
    assert cloudlab.sql(API_DB, "SELECT 1 FROM instance_mappings WHERE instance_uuid = :u",
                        {"u": vm}) == []
    assert cloudlab.sql(API_DB, "SELECT 1 FROM request_specs WHERE instance_uuid = :u",
                        {"u": vm}) == []


def test_error_instance_purged_neighbour_kept_and_archive_clean(cloudlab, purge_cli):
    conn = cloudlab.connection()
    target = cloudlab.boot("np-target", user_port=True, volume_size=1,
                           delete_on_termination=False, extra_volumes=[(1, True)])
    neighbour = cloudlab.boot("np-neighbour", volume_size=1)
    kept_allocations = _allocations(conn, neighbour["id"])
    assert _allocations(conn, target["id"]) and kept_allocations
    conn.compute.reset_server_state(target["id"], "error")
    result = _purge(purge_cli, target["id"])
    assert [v["result"] for v in result.json["vms"]] == ["succeeded"]
    assert_purged(conn, target)
    assert_untouched(conn, neighbour, kept_allocations)
    assert_archived(cloudlab, target["id"])


def test_deleting_stuck_while_compute_is_up(cloudlab, purge_cli):
    """Nova ignores a repeated delete of an instance whose task_state is stuck in deleting."""
    conn = cloudlab.connection()
    server = cloudlab.boot("np-deleting", volume_size=1)
    _stick(cloudlab, server["id"], task_state="deleting", vm_state="active")
    conn.compute.delete_server(server["id"])
    assert not _server_gone(conn, server["id"])
    _purge(purge_cli, server["id"])
    assert_purged(conn, server)
    assert_archived(cloudlab, server["id"])


def test_instance_whose_mapping_is_gone(cloudlab, purge_cli):
    """The API answers 404 while the cell rows remain: Nova cannot delete it at all."""
    conn = cloudlab.connection()
    server = cloudlab.boot("np-unmapped", user_port=True)
    cloudlab.sql(API_DB, "DELETE FROM instance_mappings WHERE instance_uuid = :u",
                 {"u": server["id"]})
    assert _server_gone(conn, server["id"])
    _purge(purge_cli, server["id"])
    assert_purged(conn, server)
    assert cloudlab.sql(CELL_DB, "SELECT deleted FROM instances WHERE uuid = :u",
                        {"u": server["id"]})[0]["deleted"] != 0


def test_resources_already_gone_count_as_done(cloudlab, purge_cli):
    conn = cloudlab.connection()
    server = cloudlab.boot("np-oob", volume_size=1, delete_on_termination=True)
    conn.compute.reset_server_state(server["id"], "error")
    for port_id in server["ports"]:
        conn.network.delete_port(port_id)
    for volume_id in server["volumes"]:
        # how an operator removes an attached volume by hand: reset it, then delete it
        conn.block_storage.reset_volume_status(volume_id, status="available",
                                               attach_status="detached", migration_status=None)
        conn.block_storage.delete_volume(volume_id)
        conn.block_storage.wait_for_delete(conn.block_storage.get_volume(volume_id), wait=120)
    _purge(purge_cli, server["id"])
    assert_purged(conn, server)


def test_attachment_nova_no_longer_knows(cloudlab, purge_cli):
    """Cinder still has an attachment whose BDM Nova dropped: Nova's delete would leave the
    volume in-use for ever; the purge finds it through Cinder and detaches it (kept: it was
    not Nova's to delete)."""
    conn = cloudlab.connection()
    server = cloudlab.boot("np-forgotten", volume_size=1, delete_on_termination=True)
    [volume_id] = server["volumes"]
    cloudlab.sql(CELL_DB, "UPDATE block_device_mapping SET deleted = id, deleted_at = NOW() "
                          "WHERE instance_uuid = :u AND volume_id = :v",
                 {"u": server["id"], "v": volume_id})
    assert list(conn.compute.volume_attachments(server["id"])) == []
    assert _volume(conn, volume_id).status == "in-use"
    conn.compute.reset_server_state(server["id"], "error")
    _purge(purge_cli, server["id"])
    assert_purged(conn, server, kept_volumes=[volume_id])
    assert_archived(cloudlab, server["id"])


def test_compute_down_local_delete_equivalent(cloudlab, purge_cli):
    conn = cloudlab.connection()
    server = cloudlab.boot("np-computedown", user_port=True, volume_size=1)
    cloudlab.stop_service("nova-compute")
    try:
        cloudlab.wait_compute_down()
        [service] = conn.compute.services(binary="nova-compute", host=cloudlab.compute_host)
        assert service.state == "down"
        conn.compute.reset_server_state(server["id"], "error")
        _purge(purge_cli, server["id"])
    finally:
        cloudlab.start_service("nova-compute")    # later tests need it, whatever happened
    [service] = conn.compute.services(binary="nova-compute", host=cloudlab.compute_host)
    assert service.state == "up"
    assert_purged(conn, server)
    assert_archived(cloudlab, server["id"])


def test_shelved_offloaded_instance_and_its_snapshot(cloudlab, purge_cli):
    conn = cloudlab.connection()
    server = cloudlab.boot("np-shelved")
    image_id = cloudlab.shelve_offload(server["id"])
    _purge(purge_cli, server["id"], "--force")
    assert_purged(conn, server)
    with pytest.raises(os_exc.NotFoundException):
        conn.image.get_image(image_id)


@pytest.mark.parametrize("step", ["DeleteAllocations", "DeactivateShelvedImage"])
def test_failure_in_a_reversible_service_step_restores_it(cloudlab, purge_cli, step):
    conn = cloudlab.connection()
    server = cloudlab.boot(f"np-revert-{step.lower()}")
    image_id = cloudlab.shelve_offload(server["id"]) if step == "DeactivateShelvedImage" else None
    assert image_id is None or conn.image.get_image(image_id).status == "active"
    if image_id is None:
        conn.compute.reset_server_state(server["id"], "error")
    allocations, consumer = _allocations(conn, server["id"]), _consumer(conn, server["id"])
    result = _purge(purge_cli, server["id"], "--force", expect=4,
                    env={"NOVAPURGE_FAULTS": f"fail@{step}:after-change"})
    assert [v["result"] for v in result.json["vms"]] == ["reverted"]
    assert _allocations(conn, server["id"]) == allocations
    assert _consumer(conn, server["id"]) == consumer
    if image_id:
        assert conn.image.get_image(image_id).status == "active"
    assert cloudlab.sql(CELL_DB, "SELECT deleted FROM instances WHERE uuid = :u",
                        {"u": server["id"]})[0]["deleted"] == 0


@pytest.mark.parametrize("service,step", [("cinder-api", "DetachVolume"),
                                          ("neutron-api", "DeletePort")])
def test_finalize_failure_suspends_then_resume_completes(cloudlab, purge_cli, service, step):
    conn = cloudlab.connection()
    server = cloudlab.boot(f"np-suspend-{service}", volume_size=1)
    conn.compute.reset_server_state(server["id"], "error")
    allocations = _allocations(conn, server["id"])
    assert allocations
    cloudlab.stop_service(service)
    try:
        result = _purge(purge_cli, server["id"], expect=5)
    finally:
        cloudlab.start_service(service)
    (vm,) = result.json["vms"]
    assert (vm["result"], vm["failed_step"]) == ("suspended", step)
    purge_id = result.json["purge_id"]
    assert _allocations(conn, server["id"]) == {}      # reversible phase kept, not reverted
    status = purge_cli("status", purge_id, "-f", "json", expect=0).json
    assert status["state"] == "SUSPENDED" and status["vms"][0]["failed_step"] == step
    purge_cli("resume", purge_id, "-f", "json", expect=0)
    assert_purged(conn, server)
    again = purge_cli("resume", purge_id, "-f", "json", expect=0).json
    assert [v["result"] for v in again["vms"]] == ["nothing-to-do"]


def test_api_down_during_discovery_uses_the_database(cloudlab, purge_cli):
    conn = cloudlab.connection()
    server = cloudlab.boot("np-apidown", volume_size=1)
    conn.compute.reset_server_state(server["id"], "error")
    cloudlab.stop_service("nova-api")
    try:
        result = _purge(purge_cli, server["id"], service_token=True)
    finally:
        cloudlab.start_service("nova-api")
    purge_id = result.json["purge_id"]
    entries = json.loads(purge_cli("audit", "export", purge_id, "--format", "json",
                                   expect=0).stdout)
    notes = [e for e in entries if e["outcome"] == "api-unavailable"]
    assert len(notes) == 1
    assert_purged(conn, server)
