"""Placement allocations kept in Nova's own databases (placement before its extraction).

Nova 34 keeps allocations in the separate placement service (its API step arrives later); clouds
from Newton to Stein have them in the API DB, and older ones in the cell DB, as rows.
"""

from novapurge.tasks.base import PurgeTask
from novapurge.tasks.rowchanges import RowChange, RowChangesTask


def allocation_changes(vm_uuid: str) -> list:
    return [RowChange("allocations", {"consumer_id": vm_uuid}, "hard-delete",
                      reason="placement DELETE /allocations/{consumer}"),
            RowChange("consumers", {"uuid": vm_uuid}, "hard-delete",
                      reason="placement drops a consumer with no allocations")]


class DeleteDbAllocations(RowChangesTask, PurgeTask):
    """Delete the instance's allocations (and consumer record) held in Nova's databases.

    Reversion: the allocation and consumer rows are re-inserted exactly.
    """

    group = "placement"

    def targets(self, facts):
        novadb = self.drivers.novadb
        targets = []
        for db in filter(None, (novadb.api, novadb.cell(facts["cell"]))):
            changes = [c for c in allocation_changes(facts["vm_uuid"]) if c.applies_to(db)]
            if changes:
                targets.append((db, changes, ["consumers", "allocations"]))
        return targets
