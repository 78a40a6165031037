"""The instance's rows in its cell database: soft-deleted the way Nova's `instance_destroy` does."""

from novapurge.tasks.base import PurgeTask
from novapurge.tasks.rowchanges import NOW, RowChange, RowChangesTask

# Nova's instance_destroy soft-deletes these children by instance_uuid (and instance_id_mappings by
# uuid), then hard-deletes tags and console_auth_tokens, which have no `deleted` column.
NOVA_SOFT_DELETED = ("security_group_instance_association", "instance_info_caches",
                     "instance_metadata", "instance_faults", "instance_extra",
                     "instance_system_metadata", "block_device_mapping", "migrations",
                     "virtual_interfaces")
# Rows other delete paths of Nova clean (network deallocation, resource tracker, usage audits);
# a purge that bypasses them must clean them too. instance_actions(+_events) are kept on purpose,
# as Nova keeps them: they are the instance's history and are archived with it.
LEFTOVER_SOFT_DELETED = (("bw_usage_cache", "uuid"), ("volume_usage_cache", "instance_uuid"),
                         ("consoles", "instance_uuid"), ("instance_group_member", "instance_id"),
                         ("volumes", "instance_uuid"))
RESTORE_ORDER = ("instances",) + NOVA_SOFT_DELETED


def instance_changes(vm_uuid: str) -> list:
    """Every row change of the soft delete, in Nova's order (the instance first)."""
    live = {"deleted": 0}
    changes = [RowChange("instances", {"uuid": vm_uuid, **live}, "soft-delete",
                         {"vm_state": "deleted", "task_state": None, "power_state": 0,
                          "terminated_at": NOW, "updated_at": NOW},
                         "what compute's delete saves, then instance_destroy")]
    changes += [RowChange(t, {"instance_uuid": vm_uuid, **live}, "soft-delete",
                          reason="instance_destroy") for t in NOVA_SOFT_DELETED]
    changes += [RowChange("instance_id_mappings", {"uuid": vm_uuid, **live}, "soft-delete",
                          reason="instance_destroy"),
                RowChange("tags", {"resource_id": vm_uuid}, "hard-delete",
                          reason="instance_destroy"),
                RowChange("console_auth_tokens", {"instance_uuid": vm_uuid}, "hard-delete",
                          reason="instance_destroy (current console tokens)"),
                RowChange("share_mapping", {"instance_uuid": vm_uuid}, "hard-delete",
                          reason="no deleted column; its foreign key would block archiving")]
    changes += [RowChange(t, {column: vm_uuid, **live}, "soft-delete", reason="leftover")
                for t, column in LEFTOVER_SOFT_DELETED]
    changes += [RowChange("fixed_ips", {"instance_uuid": vm_uuid, **live}, "update",
                          {"instance_uuid": None, "virtual_interface_id": None,
                           "allocated": False, "leased": False},
                          "nova-network deallocation returns the address to its pool"),
                RowChange("pci_devices", {"instance_uuid": vm_uuid, **live}, "update",
                          {"instance_uuid": None, "request_id": None, "status": "available"},
                          "the resource tracker frees the device")]
    return changes


class SoftDeleteInstance(RowChangesTask, PurgeTask):
    """Soft-delete the instance and its rows in one cell-DB transaction, as `instance_destroy` does.

    The instance gets vm_state 'deleted', task_state NULL, power_state 0 (NOSTATE), terminated_at,
    deleted=id and deleted_at; children get deleted=id and deleted_at; tags and console_auth_tokens
    are deleted; nova-network fixed IPs and PCI devices are released.

    Reversion: every recorded row is written back exactly (updated back, or re-inserted).
    """

    group = "db"

    def targets(self, facts):
        db = self.drivers.novadb.cell(facts["cell"])
        return [(db, [c for c in instance_changes(facts["vm_uuid"]) if c.applies_to(db)],
                 RESTORE_ORDER)]
