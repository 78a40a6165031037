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


class DeleteAllocations(PurgeTask):
    """Delete the instance's allocations in the placement service (DELETE /allocations/{uuid}).

    Reversion: PUT them back with the consumer's project, user and generation.
    """

    group = "placement"

    def execute(self, purge_id, vm_uuid):
        cloud, ledger = self.drivers.cloud, self.ledger(purge_id, vm_uuid)
        resource = f"allocations:{vm_uuid}"
        before = ledger.record_before(self.name, resource, cloud.allocations(vm_uuid),
                                      target="placement")
        self.fault("before-change")
        if before.state:
            cloud.delete_allocations(vm_uuid)
        self.fault("after-change")
        ledger.record_after(self.name, resource, None, target="placement")
        return {"deleted": bool(before.state)}

    def revert(self, purge_id, vm_uuid, **kwargs):
        cloud, ledger = self.drivers.cloud, self.ledger(purge_id, vm_uuid)
        resource = f"allocations:{vm_uuid}"
        before = ledger.before(self.name, resource)
        if before is None or not before.state:
            return
        current = cloud.allocations(vm_uuid)
        if not current:
            # The consumer is gone with its allocations: placement wants generation None now.
            cloud.put_allocations(vm_uuid, before.state["allocations"], before.state["project_id"],
                                  before.state["user_id"], None)
        ledger.record_reverted(self.name, resource, {"restored": True}, target="placement")

    def describe(self, facts):
        return [{"target": "placement", "command": f"DELETE /allocations/{facts['vm_uuid']}",
                 "why": "free the instance's resources on its provider"}]
