"""The lab itself: a server booted as a user would is real everywhere (Nova, Neutron, Cinder,
Placement), shelve offload leaves a snapshot, archiving works. (nova-compute going down and up
is exercised by the compute-down purge in test_service_purge.py.)"""

from __future__ import annotations

import secrets

import pytest

pytestmark = [pytest.mark.cloud, pytest.mark.slow]

RUN = secrets.token_hex(3)       # server names of this session (a kept lab outlives sessions)


def allocations(conn, consumer: str) -> dict:
    return conn.placement.get(f"/allocations/{consumer}", microversion="1.28").json()["allocations"]


def test_boot_with_both_port_kinds_and_a_volume(cloudlab):
    booted = cloudlab.boot(f"smoke-{RUN}", user_port=True, volume_size=1,
                           delete_on_termination=False)
    conn = cloudlab.connection()

    assert conn.compute.get_server(booted["id"]).status == "ACTIVE"
    assert sorted(booted["ports"].values()) == ["nova", "user"]
    for port_id in booted["ports"]:
        port = conn.network.get_port(port_id)
        assert (port.binding_host_id, port.device_id, port.status) == \
            (cloudlab.compute_host, booted["id"], "ACTIVE")
        assert port.binding_vif_type == "ovs"
    [(volume_id, dot)] = booted["volumes"].items()
    volume = conn.block_storage.get_volume(volume_id)
    assert volume.status == "in-use"
    assert [a["server_id"] for a in volume.attachments] == [booted["id"]]
    assert [(a.volume_id, a.delete_on_termination)
            for a in conn.compute.volume_attachments(booted["id"])] == [(volume_id, False)]
    [usage] = allocations(conn, booted["id"]).values()
    assert usage["resources"] == {"VCPU": 1, "MEMORY_MB": 64, "DISK_GB": 1}


def test_shelve_offload_leaves_a_snapshot_and_no_allocations(cloudlab):
    server_id = cloudlab.boot(f"shelve-{RUN}")["id"]
    conn = cloudlab.connection()

    image_id = cloudlab.shelve_offload(server_id)

    assert conn.compute.get_server(server_id).status == "SHELVED_OFFLOADED"
    assert conn.image.get_image(image_id).instance_uuid == server_id
    assert allocations(conn, server_id) == {}


def test_archive_deleted_rows_moves_a_deleted_server(cloudlab):
    server_id = cloudlab.boot(f"archive-{RUN}", nova_port=False)["id"]
    conn = cloudlab.connection()
    conn.compute.delete_server(server_id)
    conn.compute.wait_for_delete(conn.compute.get_server(server_id), wait=120)

    result = cloudlab.nova_manage("db", "archive_deleted_rows", "--until-complete")

    # rc 1: rows were archived; 0: there was nothing to archive (nova-manage's documented codes)
    assert result.returncode in (0, 1), result.stderr
    query = "SELECT COUNT(*) AS n FROM {} WHERE uuid = :uuid"
    assert cloudlab.sql("nova_cell1", query.format("instances"), {"uuid": server_id}) == [{"n": 0}]
    assert cloudlab.sql("nova_cell1", query.format("shadow_instances"),
                        {"uuid": server_id}) == [{"n": 1}]
