"""What an instance left on its compute host, derived from Nova's records and validated.

Nova's network_info names the VIF devices (os-vif: `tap`/`qbr`/`qvb`/`qvo` + the first 11
characters of the port id, `brq` + 11 of the network id for linuxbridge), BDM connection_info
names the iSCSI targets, and the instance dirs live under `instances_path`. Every name is checked
here, during discovery, so a hostile value is refused before anything runs on a host.
"""

import json

from novapurge import validate
from novapurge.errors import BadInput

DIR_SUFFIXES = ("", "_resize", "_del")
TRASH_DIR = ".novapurge-trash"


def vif_devices(vif: dict) -> dict:
    """The devices of one VIF and how it is plugged (ovs-hybrid, ovs, linuxbridge, other)."""
    port_id = str(vif.get("id") or "")
    details, network = vif.get("details") or {}, vif.get("network") or {}
    kind = vif.get("type")
    tap = validate.device(vif.get("devname") or "tap" + port_id[:11])
    entry = {"port_id": port_id, "mac": vif.get("address"), "network_id": network.get("id"),
             "devices": {"tap": tap}, "ovs_bridge": None, "ovs_port": None}
    if kind == "ovs" and details.get("ovs_hybrid_plug", True):
        entry["plug"] = "ovs-hybrid"
        for prefix in ("qbr", "qvb", "qvo"):
            entry["devices"][prefix] = validate.device(prefix + port_id[:11])
        entry["ovs_bridge"] = details.get("bridge_name") or network.get("bridge") or "br-int"
        entry["ovs_port"] = entry["devices"]["qvo"]
    elif kind == "ovs":
        entry["plug"] = "ovs"
        entry["ovs_bridge"] = details.get("bridge_name") or network.get("bridge") or "br-int"
        entry["ovs_port"] = tap
    elif kind == "bridge":
        entry["plug"] = "linuxbridge"
        entry["devices"]["brq"] = validate.device(
            network.get("bridge") or "brq" + str(network.get("id") or "")[:11])
    else:
        entry["plug"] = "other"  # vhostuser, SR-IOV...: nothing of ours on the host
    if entry["ovs_bridge"]:
        validate.identifier(entry["ovs_bridge"], "OVS bridge name")
    return entry


def iscsi_targets(bdms: list) -> list:
    """One (iqn, portal) per iSCSI path of the instance's volumes (multipath: every portal)."""
    targets = []
    for bdm in bdms:
        info = bdm.get("connection_info") or {}
        if isinstance(info, str):
            info = json.loads(info or "{}")
        if info.get("driver_volume_type") != "iscsi":
            continue
        data = info.get("data") or {}
        iqns = data.get("target_iqns") or [data.get("target_iqn")]
        portals = data.get("target_portals") or [data.get("target_portal")]
        for iqn, portal in zip(iqns, portals):
            if not iqn or not portal:
                raise BadInput(f"volume {bdm.get('volume_id')}: iSCSI connection_info without "
                               f"target_iqn/target_portal")
            target = {"iqn": validate.iqn(iqn), "portal": validate.portal(portal),
                      "volume_id": bdm.get("volume_id")}
            if all((t["iqn"], t["portal"]) != (target["iqn"], target["portal"])
                   for t in targets):
                targets.append(target)
    return targets


def target_key(target: dict) -> str:
    return f"{target['iqn']},{target['portal']}"


def host_facts(instance: dict, network_info: list, bdms: list, domain_name: str,
               instances_path: str, shared_targets=()) -> dict | None:
    """The host part of the facts; None when the instance never landed on a host."""
    if not instance.get("host"):
        return None
    root = validate.absolute_path(instances_path, "instances_path")
    vm_uuid = validate.vm_uuid(instance["uuid"])
    targets = iscsi_targets(bdms)
    return {"name": validate.hostname(instance["host"]),
            "domain": validate.domain_name(domain_name),
            "vifs": [vif_devices(v) for v in network_info],
            "iscsi": [t for t in targets if target_key(t) not in set(shared_targets)],
            "iscsi_shared": [target_key(t) for t in targets if target_key(t) in set(shared_targets)],
            "instances_path": root,
            "dirs": [f"{root}/{vm_uuid}{suffix}" for suffix in DIR_SUFFIXES]}


def trash_dir(host: dict, purge_id: str, vm_uuid: str) -> str:
    """Where one purge quarantines one instance's dirs: beside them, so a move stays on one
    filesystem; one dir per instance, so VMs of a batch on the same host never remove the dir
    another one is moving into (each removes only its own, and its parents when empty)."""
    return (f"{host['instances_path']}/{TRASH_DIR}/{validate.purge_id(purge_id)}/"
            f"{validate.vm_uuid(vm_uuid)}")


def trash_parents(trash: str) -> list:
    """The trash dir's own parents up to the instances path: the purge's, then the root one."""
    purge = trash.rsplit("/", 1)[0]
    return [purge, purge.rsplit("/", 1)[0]]
