"""The sandbox's hosts and cloud, filled to match the instances seeded in its Nova databases.

What Nova, os-vif and os-brick leave on a compute host, and what Neutron, Cinder, Glance and
placement hold, is derived from the rows Nova wrote (network_info, BDM connection_info,
allocations), so the simulated hosts and APIs agree with the databases as a real cloud's would.
"""

import json
import pathlib

import sqlalchemy as sa

from novapurge.sandbox.cloud import SandboxCloud
from novapurge.sandbox.hosts import SimHosts

_CLASSES = {0: "VCPU", 1: "MEMORY_MB", 2: "DISK_GB"}
_STOPPED = ("stopped", "shelved", "shelved_offloaded", "suspended")
_STATUS = {"error": "ERROR", "active": "ACTIVE", "stopped": "SHUTOFF",
           "shelved_offloaded": "SHELVED_OFFLOADED"}


def _rows(conn, sql, **params):
    return [dict(r._mapping) for r in conn.execute(sa.text(sql), params)]


def instance_traces(cell_engine, vm_uuid) -> tuple:
    """(network_info, volume BDMs with connection_info) of a live instance, as Nova keeps them."""
    with cell_engine.connect() as conn:
        cache = _rows(conn, "SELECT network_info FROM instance_info_caches "
                            "WHERE instance_uuid = :u AND deleted = 0", u=vm_uuid)
        bdms = _rows(conn, "SELECT volume_id, connection_info, attachment_id FROM "
                           "block_device_mapping WHERE instance_uuid = :u AND deleted = 0 "
                           "AND destination_type = 'volume'", u=vm_uuid)
    return (json.loads(cache[0]["network_info"]) if cache else []), bdms


def populate_estate(directory, cell_engine, api_engine, instances,
                    instances_path="/var/lib/nova/instances") -> None:
    """Give every seeded, live instance its host traces and API resources in `directory`."""
    directory = pathlib.Path(directory)
    hosts, cloud = SimHosts(directory / "hosts"), SandboxCloud(directory / "cloud.json")
    placement = api_engine if api_engine is not None else cell_engine
    for vm in instances:
        if vm["vm_state"] == "deleted":
            continue
        network_info, bdms = instance_traces(cell_engine, vm["uuid"])
        if vm["host"]:
            hosts.host(vm["host"]).add_instance(
                vm["uuid"], vm["instance_name"], network_info, bdms,
                running=vm["vm_state"] not in _STOPPED, instances_path=instances_path)
        cloud.add_server(vm["uuid"], name=vm["name"], vm_state=vm["vm_state"],
                         status=_STATUS.get(vm["vm_state"], "ERROR"), task_state=vm["task_state"],
                         host=vm["host"], hypervisor_hostname=vm["host"],
                         instance_name=vm["instance_name"], project_id=vm["project_id"],
                         user_id=vm["user_id"], volumes=[b["volume_id"] for b in bdms])
        for vif in network_info:
            cloud.add_port(port_id=vif["id"], device_id=vm["uuid"], mac_address=vif["address"],
                           binding_host_id=vm["host"] or "", network_id=vif["network"]["id"],
                           project_id=vm["project_id"])
        for bdm in bdms:
            cloud.add_volume(volume_id=bdm["volume_id"], project_id=vm["project_id"],
                             attachments=[{"server_id": vm["uuid"], "host_name": vm["host"],
                                           "attachment_id": bdm["attachment_id"]}])
        if vm.get("shelved_image_id"):
            cloud.add_image(image_id=vm["shelved_image_id"], name=f"{vm['name']}-shelved",
                            instance_uuid=vm["uuid"], owner=vm["project_id"])
        _allocations(cloud, placement, vm)


def _allocations(cloud, engine, vm) -> None:
    """Placement's allocations for the instance, as the seeded allocation rows say."""
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table("allocations"):
            return
        rows = _rows(conn, "SELECT rp.uuid AS rp, a.resource_class_id AS rc, a.used AS used "
                           "FROM allocations a JOIN resource_providers rp "
                           "ON rp.id = a.resource_provider_id WHERE a.consumer_id = :u",
                     u=vm["uuid"])
    if not rows:
        return
    allocations = {}
    for row in rows:
        resources = allocations.setdefault(row["rp"], {"resources": {}})["resources"]
        resources[_CLASSES.get(row["rc"], f"CUSTOM_{row['rc']}")] = row["used"]
    cloud.set_allocations(vm["uuid"], allocations, project_id=vm["project_id"],
                          user_id=vm["user_id"])
