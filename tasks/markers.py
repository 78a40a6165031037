"""Steps that change nothing but the record: skipped groups, the point of no return."""

from novapurge import keys
from novapurge.tasks.base import PurgeTask


class NoteSkippedGroups(PurgeTask):
    """Record in the ledger which step groups the operator skipped (`--skip`).

    Reversion: none (a record of a decision).
    """

    def __init__(self, vm_uuid, purge_id, groups, **kwargs):
        super().__init__(vm_uuid, purge_id, inject={"skipped_groups": list(groups)}, **kwargs)

    def execute(self, purge_id, vm_uuid, skipped_groups):
        ledger = self.ledger(purge_id, vm_uuid)
        for group in skipped_groups:
            ledger.note(self.name, f"group:{group}", "skipped", {"skipped_by": "--skip"})
        return {"skipped": list(skipped_groups)}


class PassPointOfNoReturn(PurgeTask):
    """Record that the reversible phase completed; what follows is not undone on failure.

    Reversion: none; `rollback` refuses once a step after this one changed anything.
    """

    default_provides = keys.PASSED_NO_RETURN
    reversible = False

    def execute(self, purge_id, vm_uuid):
        self.ledger(purge_id, vm_uuid).note(self.name, f"instance:{vm_uuid}", "passed")
        return True
