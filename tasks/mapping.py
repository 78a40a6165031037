"""The instance's API-database records: its mapping queued for delete, its build request gone."""

from novapurge.tasks.base import PurgeTask
from novapurge.tasks.rowchanges import RowChange, RowChangesTask


def mapping_changes(vm_uuid: str) -> list:
    return [RowChange("instance_mappings", {"instance_uuid": vm_uuid}, "update",
                      {"queued_for_delete": True}, "what Nova's delete sets; archive removes it"),
            RowChange("build_requests", {"instance_uuid": vm_uuid}, "hard-delete",
                      reason="Nova deletes the build request of a deleted instance")]


class QueueMappingForDelete(RowChangesTask, PurgeTask):
    """Mark the API DB's instance mapping queued_for_delete and delete any build request.

    request_specs and instance_group_member rows stay, as with Nova: `nova-manage db
    archive_deleted_rows` removes them with the mapping once the instance is archived.

    Reversion: the mapping row and build requests are written back exactly.
    """

    group = "mapping"

    def targets(self, facts):
        api = self.drivers.novadb.api
        if api is None:
            return []
        changes = [c for c in mapping_changes(facts["vm_uuid"]) if c.applies_to(api)]
        return [(api, changes, ["instance_mappings", "build_requests"])] if changes else []
