"""Gather the facts of one instance, once, from the Nova databases and the APIs (read-only)."""

import json
import logging

from novapurge import keys
from novapurge.drivers.cloud import CloudError
from novapurge.errors import BadInput
from novapurge.persistence.redact import redact
from novapurge.tasks.base import PurgeTask
from novapurge.tasks.hostfacts import host_facts, iscsi_targets, target_key

LOG = logging.getLogger(__name__)
_INSTANCE_COLUMNS = ("id", "uuid", "display_name", "hostname", "host", "node", "project_id",
                     "user_id", "vm_state", "task_state", "power_state", "vcpus", "memory_mb",
                     "root_gb", "ephemeral_gb", "instance_type_id", "launched_on", "deleted",
                     "image_ref")
_BDM_COLUMNS = ("id", "volume_id", "device_name", "source_type", "destination_type",
                "delete_on_termination", "boot_index", "attachment_id")
DOMAIN_NAME_TEMPLATE = "instance-%08x"  # Nova's default [DEFAULT] instance_name_template


def _json(text):
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def _plain(value):
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)


def _flavor(extra_rows, instance):
    blob = _json(extra_rows[0].get("flavor")) if extra_rows else None
    current = ((blob or {}).get("cur") or {}).get("nova_object.data") or {}
    return {"name": current.get("name"), "flavorid": current.get("flavorid"),
            "vcpus": current.get("vcpus", instance["vcpus"]),
            "memory_mb": current.get("memory_mb", instance["memory_mb"])}


def _iscsi_paths(bdms) -> set:
    """The iSCSI paths (target keys) of block device mapping rows."""
    return {target_key(t) for t in iscsi_targets(
        [dict(b, connection_info=_json(b.get("connection_info"))) for b in bdms])}


def _shared_targets(db, conn, host, vm_uuid, own_bdms) -> set:
    """iSCSI paths of `vm_uuid` that other live instances on `host` also use (kept): looked up
    only when the instance has iSCSI paths, in one statement for all its neighbours."""
    own = _iscsi_paths(own_bdms)
    if not own:
        return set()
    others = tuple(r["uuid"] for r in db.select(conn, "instances", {"host": host, "deleted": 0})
                   if r["uuid"] != vm_uuid)
    bdms = db.select(conn, "block_device_mapping",
                     {"instance_uuid": others, "deleted": 0}) if others else []
    return own & _iscsi_paths(bdms)


def discover_facts(drivers, vm_uuid: str) -> dict:
    """Everything later steps act on, as JSON; secrets in connection_info are redacted.

    `drivers` is the process's PurgeContext: the Nova DBs, and the cloud API when configured.
    """
    facts = _db_facts(drivers.novadb, vm_uuid, drivers.instances_path)
    if drivers.cloud is not None:
        _merge_api_facts(drivers.cloud, facts)
    return facts


def _merge_api_facts(cloud, facts) -> None:
    """`nova show` and Neutron/Glance lookups; on an API error the DB facts stand, and say so."""
    vm_uuid = facts["vm_uuid"]
    try:
        server = cloud.server(vm_uuid)
        neutron_ports = cloud.ports_of(vm_uuid)
        attachments = cloud.volume_attachments_of(vm_uuid)
        if facts["shelved_image"] is None and facts["instance"].get("vm_state") in SHELVED:
            facts["shelved_image"] = next(
                (i["id"] for i in cloud.images_of_instance(vm_uuid)
                 if str(i.get("name") or "").endswith("-shelved")), None)
    except CloudError as error:
        facts["api"] = {"server": None, "error": str(error)}
        return
    facts["api"] = {"server": server, "error": None}
    facts["sources"].append("api")
    known = {p["port_id"] for p in facts["ports"]}
    facts["ports"] += [{"port_id": p["id"], "preserve": False, "source": "neutron"}
                       for p in neutron_ports if p["id"] not in known]
    # Volumes Nova lists, and attachments only Cinder still has (Nova forgot them): detached too
    known = {v["volume_id"] for v in facts["volumes"]}
    extra = {a["volume_id"]: a["attachment_id"] for a in attachments}
    extra.update({v: extra.get(v) for v in (server or {}).get("volumes", [])})
    facts["volumes"] += [{"volume_id": v, "attachment_id": a, "delete_on_termination": False,
                          "source": "cinder" if a else "nova-api"}
                         for v, a in extra.items() if v not in known]
    if server and server.get("instance_name") and facts["host"]:
        facts["host"]["domain"] = server["instance_name"]


SHELVED = ("shelved", "shelved_offloaded")


def _db_facts(novadb, vm_uuid: str, instances_path: str) -> dict:
    cell, db, mapping = novadb.locate(vm_uuid)
    with db.engine.connect() as conn:
        rows = db.select(conn, "instances", {"uuid": vm_uuid})
        if not rows:
            raise BadInput(f"unknown instance {vm_uuid}: not in the {db.label} database")
        row = rows[0]
        if row.get("deleted"):
            raise BadInput(f"instance {vm_uuid} is already deleted (deleted={row['deleted']})")
        live = {"instance_uuid": vm_uuid, "deleted": 0}
        pick = (lambda table: db.select(conn, table, live) if db.has_table(table) else [])
        caches, bdms = pick("instance_info_caches"), pick("block_device_mapping")
        sysmeta, faults, extra = pick("instance_system_metadata"), pick("instance_faults"), \
            pick("instance_extra")
        shared = _shared_targets(db, conn, row["host"], vm_uuid, bdms) if row.get("host") \
            else set()
    instance = {k: _plain(row.get(k)) for k in _INSTANCE_COLUMNS if k in row}
    network_info = _json(caches[0]["network_info"]) or [] if caches else []
    bdm_facts = [dict({k: _plain(b.get(k)) for k in _BDM_COLUMNS},
                      connection_info=redact(_json(b.get("connection_info")))) for b in bdms]
    metadata = {m["key"]: m["value"] for m in sysmeta}
    return {
        "vm_uuid": vm_uuid,
        "cell": cell,
        "instance": instance,
        "domain_name": DOMAIN_NAME_TEMPLATE % row["id"],
        "network_info": network_info,
        "bdms": bdm_facts,
        "system_metadata": redact(metadata),
        "host": host_facts(instance, network_info, bdm_facts, DOMAIN_NAME_TEMPLATE % row["id"],
                           instances_path, shared),
        "volumes": [{"volume_id": b["volume_id"], "attachment_id": b.get("attachment_id"),
                     "delete_on_termination": bool(b.get("delete_on_termination"))}
                    for b in bdm_facts if b.get("volume_id")
                    and b.get("destination_type") == "volume"],
        "ports": [{"port_id": v["id"], "preserve": bool(v.get("preserve_on_delete")),
                   "source": "network_info"} for v in network_info if v.get("id")],
        "shelved_image": metadata.get("shelved_image_id") or None,
        "api": None,
        "flavor": _flavor(extra, row),
        "faults": len(faults),
        "mapping": None if mapping is None else {
            "cell_id": mapping.get("cell_id"),
            "queued_for_delete": _plain(mapping.get("queued_for_delete"))},
        "api_db": novadb.api is not None,
        "sources": ["cell-db"] + (["api-db"] if novadb.api is not None else []),
    }


class DiscoverInstance(PurgeTask):
    """Read the instance's facts from the Nova databases; changes nothing.

    Reversion: none (read-only). On resume the journaled facts are used, never re-discovered.
    """

    default_provides = keys.FACTS

    def execute(self, purge_id, vm_uuid):
        facts = discover_facts(self.drivers, vm_uuid)
        if facts["api"] and facts["api"]["error"]:
            self.ledger(purge_id, vm_uuid).note(self.name, f"instance:{vm_uuid}",
                                                "api-unavailable",
                                                {"error": facts["api"]["error"],
                                                 "used": "database facts"}, target="nova-api")
        return facts
