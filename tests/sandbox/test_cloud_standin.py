"""The cloud stand-in: the behaviours the purge relies on, seen through two instances on one
state file (as a killed purge and its resume, in two processes, would see it)."""

import json
import multiprocessing
import uuid

import pytest

from novapurge.drivers.cloud import CloudError
from novapurge.errors import BadInput
from novapurge.sandbox.cloud import SandboxCloud

VM = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0"
OTHER_VM = "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"
RP = "5c0ffee0-1111-4222-8333-944445555666"
PROJECT, USER = "6f1c2a0e7b5d4c3a9e8f1b2c3d4e5f60", "b7e4c3d2a1f04e5d8c6b9a0f1e2d3c4b"


@pytest.fixture
def path(tmp_path):
    return tmp_path / "cloud.json"


@pytest.fixture
def clouds(path):
    """Two stand-ins on the same state file: `a` writes, `b` observes (and the other way)."""
    return SandboxCloud(path), SandboxCloud(path)


def assert_cloud_error(error, status, service, transient):
    assert (error.status, error.service, error.transient) == (status, service, transient)


def test_a_server_is_reported_until_forgotten(clouds):
    a, b = clouds
    a.add_server(VM, name="web-err", host="cmp1", instance_name="instance-00000001",
                 project_id=PROJECT, user_id=USER, flavor={"vcpus": 2}, volumes=[VM])
    assert b.server(VM) == {
        "id": VM, "name": "web-err", "status": "ERROR", "task_state": None, "vm_state": "error",
        "host": "cmp1", "hypervisor_hostname": None, "instance_name": "instance-00000001",
        "project_id": PROJECT, "user_id": USER, "flavor": {"vcpus": 2}, "volumes": [VM],
        "addresses": {}}
    assert b.server(VM.upper()) == b.server(VM)
    b.forget_server(VM)
    assert a.server(VM) is None


def test_ports_unbind_and_delete(clouds):
    a, b = clouds
    bound = a.add_port(device_id=VM, binding_host_id="cmp1", binding_profile={"x": 1})
    kept = a.add_port(device_id=VM, binding_host_id="cmp1")
    other = a.add_port(device_id=OTHER_VM, binding_host_id="cmp2")
    assert bound["status"] == "ACTIVE" and bound["binding_vif_type"] == "ovs"
    assert sorted(p["id"] for p in b.ports_of(VM)) == sorted([bound["id"], kept["id"]])

    unbound = b.unbind_port(kept["id"])

    assert a.port(kept["id"]) == unbound == {
        **kept, "binding_host_id": "", "binding_profile": {}, "binding_vif_type": "unbound",
        "device_id": "", "device_owner": "", "status": "DOWN"}
    assert b.delete_port(bound["id"]) is True
    assert a.delete_port(bound["id"]) is False
    assert a.port(bound["id"]) is None and a.ports_of(VM) == []
    assert a.port(other["id"]) == other
    with pytest.raises(CloudError) as error:
        a.unbind_port(bound["id"])
    assert_cloud_error(error.value, 404, "network", False)


def test_an_in_use_volume_cannot_be_deleted_until_detached(clouds):
    a, b = clouds
    volume = a.add_volume(attachments=[{"server_id": VM, "host_name": "cmp1"}],
                          project_id=PROJECT)
    attachment = volume["attachments"][0]["attachment_id"]
    assert (volume["status"], volume["attach_status"]) == ("in-use", "attached")

    with pytest.raises(CloudError) as error:
        b.delete_volume(volume["id"])
    assert_cloud_error(error.value, 400, "volume", False)

    assert b.delete_attachment(attachment) is True
    assert a.volume(volume["id"]) == {**volume, "status": "available",
                                      "attach_status": "detached", "attachments": []}
    assert a.delete_attachment(attachment) is False
    assert a.delete_volume(volume["id"]) is True
    assert b.delete_volume(volume["id"]) is False and b.volume(volume["id"]) is None


def test_force_detach_and_reset_status(clouds):
    a, b = clouds
    shared = a.add_volume(multiattach=True, attachments=[
        {"server_id": VM, "host_name": "cmp1"}, {"server_id": OTHER_VM, "host_name": "cmp2"}])
    mine, theirs = (x["attachment_id"] for x in shared["attachments"])

    b.force_detach(shared["id"], mine)

    after = a.volume(shared["id"])
    assert after["status"] == "in-use" and [x["attachment_id"] for x in after["attachments"]] \
        == [theirs]
    with pytest.raises(CloudError) as error:
        a.force_detach(shared["id"], mine)
    assert_cloud_error(error.value, 400, "volume", False)

    stuck = a.add_volume(status="detaching", attachments=[{"server_id": VM}])
    b.reset_volume_status(stuck["id"])
    assert a.volume(stuck["id"]) == {**stuck, "status": "available", "attach_status": "detached",
                                     "attachments": []}
    with pytest.raises(CloudError) as error:
        a.reset_volume_status(stuck["id"], status="bogus")
    assert error.value.status == 400


def test_images_deactivate_reactivate_delete(clouds):
    a, b = clouds
    shelved = a.add_image(name="web-shelved", instance_uuid=VM, owner=PROJECT)
    a.add_image(name="other", instance_uuid=OTHER_VM)
    assert b.images_of_instance(VM) == [shelved]

    b.deactivate_image(shelved["id"])
    b.deactivate_image(shelved["id"])  # again: no change, no error
    assert a.image(shelved["id"])["status"] == "deactivated"
    a.reactivate_image(shelved["id"])
    assert b.image(shelved["id"]) == shelved

    assert a.delete_image(shelved["id"]) is True
    assert b.delete_image(shelved["id"]) is False and b.image(shelved["id"]) is None
    with pytest.raises(CloudError) as error:
        b.reactivate_image(shelved["id"])
    assert_cloud_error(error.value, 404, "image", False)
    queued = a.add_image(status="queued")
    with pytest.raises(CloudError) as error:
        a.deactivate_image(queued["id"])
    assert error.value.status == 403


def test_allocations_follow_consumer_generations(clouds):
    a, b = clouds
    resources = {RP: {"resources": {"VCPU": 2, "MEMORY_MB": 4096}}}
    a.set_allocations(VM, resources, project_id=PROJECT, user_id=USER)
    recorded = b.allocations(VM)
    assert recorded == {"allocations": resources, "consumer_generation": 1,
                        "project_id": PROJECT, "user_id": USER}

    with pytest.raises(CloudError) as error:
        b.put_allocations(VM, resources, PROJECT, USER, 0)     # stale generation
    assert_cloud_error(error.value, 409, "placement", True)
    b.put_allocations(VM, resources, PROJECT, USER, 1)
    assert a.allocations(VM)["consumer_generation"] == 2

    assert a.delete_allocations(VM) is True
    assert b.allocations(VM) is None and b.delete_allocations(VM) is False
    with pytest.raises(CloudError) as error:                 # the consumer is gone now
        b.put_allocations(VM, resources, PROJECT, USER, recorded["consumer_generation"])
    assert error.value.status == 409
    b.put_allocations(VM, resources, PROJECT, USER, None)
    assert a.allocations(VM) == recorded

    for bad in ({RP: {"resources": {"VCPU": 0}}}, {"not-a-uuid": {"resources": {"VCPU": 1}}},
                {RP: {}}):
        with pytest.raises(CloudError) as error:
            a.put_allocations(VM, bad, PROJECT, USER, 1)
        assert_cloud_error(error.value, 400, "placement", False)


CALLS = {
    "compute": lambda c: c.server(VM),
    "network": lambda c: c.ports_of(VM),
    "placement": lambda c: c.allocations(VM),
    "image": lambda c: c.images_of_instance(VM),
    "volume": lambda c: c.delete_attachment(VM),
}


@pytest.mark.parametrize("service", sorted(CALLS))
def test_a_service_that_is_down_fails_every_call_with_a_transient_503(clouds, service):
    a, b = clouds
    before = a.snapshot()
    a.set_down(service)

    with pytest.raises(CloudError) as error:
        CALLS[service](b)

    assert_cloud_error(error.value, 503, service, True)
    for other, call in CALLS.items():
        if other != service:
            call(b)
    b.set_down(service, False)
    CALLS[service](a)
    assert a.snapshot() == before


def test_a_failed_call_changes_nothing(clouds):
    a, b = clouds
    volume = a.add_volume(attachments=[{"server_id": VM}])
    a.set_allocations(VM, {RP: {"resources": {"VCPU": 1}}}, project_id=PROJECT, user_id=USER)
    before = a.snapshot()
    with pytest.raises(CloudError):
        b.delete_volume(volume["id"])
    with pytest.raises(CloudError):
        b.put_allocations(VM, {RP: {"resources": {"VCPU": 4}}}, PROJECT, USER, 7)
    assert a.snapshot() == before


def test_ids_are_validated(clouds):
    a, _ = clouds
    with pytest.raises(BadInput):
        a.server("../os-services")
    with pytest.raises(BadInput):
        a.delete_port("x")
    with pytest.raises(ValueError):
        a.set_down("dns")


def test_snapshot_is_the_whole_state_file(clouds, path):
    a, b = clouds
    a.add_server(VM)
    port = a.add_port(device_id=VM)
    b.set_down("image")
    assert a.snapshot() == json.loads(path.read_text()) == {
        "down": ["image"], "servers": {VM: b.server(VM)}, "ports": {port["id"]: port},
        "volumes": {}, "images": {}, "allocations": {}}
    assert sorted(p.name for p in path.parent.iterdir()) == ["cloud.json", "cloud.json.lock"]


def _add_ports(path, device_id, count):
    cloud = SandboxCloud(path)
    for _ in range(count):
        cloud.add_port(device_id=device_id)


def test_concurrent_processes_lose_no_update(path):
    SandboxCloud(path)
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_add_ports, args=(path, vm, 40)) for vm in (VM, OTHER_VM)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    cloud = SandboxCloud(path)
    assert (len(cloud.ports_of(VM)), len(cloud.ports_of(OTHER_VM))) == (40, 40)


def test_a_new_instance_keeps_an_existing_cloud(path):
    first = SandboxCloud(path)
    first.add_image(image_id=str(uuid.UUID(int=1)))
    assert SandboxCloud(path).image(str(uuid.UUID(int=1)))["id"] == str(uuid.UUID(int=1))
