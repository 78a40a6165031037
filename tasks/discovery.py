"""Gather the facts of one instance, once, from the Nova databases (read-only)."""

import json
import logging

from novapurge import keys
from novapurge.errors import BadInput
from novapurge.persistence.redact import redact
from novapurge.tasks.base import PurgeTask

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


def discover_facts(novadb, vm_uuid: str) -> dict:
    """Everything later steps act on, as JSON; secrets in connection_info are redacted."""
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
    instance = {k: _plain(row.get(k)) for k in _INSTANCE_COLUMNS if k in row}
    return {
        "vm_uuid": vm_uuid,
        "cell": cell,
        "instance": instance,
        "domain_name": DOMAIN_NAME_TEMPLATE % row["id"],
        "network_info": _json(caches[0]["network_info"]) or [] if caches else [],
        "bdms": [dict({k: _plain(b.get(k)) for k in _BDM_COLUMNS},
                      connection_info=redact(_json(b.get("connection_info"))))
                 for b in bdms],
        "system_metadata": redact({m["key"]: m["value"] for m in sysmeta}),
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

    def execute(self, vm_uuid):
        return discover_facts(self.drivers.novadb, vm_uuid)
