"""Steps that change nothing but the record: skipped groups, the point of no return."""

from novapurge import keys
from novapurge.tasks.base import PurgeTask


class NoteSkippedGroups(PurgeTask):
    """Record in the ledger which step groups the operator skipped (`--skip`).

    A skipped host cleanup is recorded as deferred, with what is left on the host, so `status`
    can list it. Reversion: none (a record of a decision).
    """

    def __init__(self, vm_uuid, purge_id, groups, **kwargs):
        super().__init__(vm_uuid, purge_id, inject={"skipped_groups": list(groups)}, **kwargs)

    def execute(self, purge_id, vm_uuid, skipped_groups, facts):
        ledger = self.ledger(purge_id, vm_uuid)
        for group in skipped_groups:
            ledger.note(self.name, f"group:{group}", "skipped", {"skipped_by": "--skip"})
        host = facts.get("host")
        if "host" in skipped_groups and host:
            ledger.note(self.name, f"host:{host['name']}", "deferred",
                        {"domain": host["domain"], "dirs": host["dirs"],
                         "devices": sorted(d for v in host["vifs"] for d in v["devices"].values()),
                         "iscsi": [f"{t['iqn']},{t['portal']}" for t in host["iscsi"]]},
                        target=f"host:{host['name']}")
        return {"skipped": list(skipped_groups)}


class PassPointOfNoReturn(PurgeTask):
    """Record that the reversible phase completed; what follows is not undone on failure.

    With `hold` (`purge --hold`) the purge stops here, SUSPENDED: the operator checks the
    reversible phase's result, then `resume` finalizes or `rollback` restores everything.
    Reversion: none; `rollback` refuses once a step after this one changed anything.
    """

    default_provides = keys.PASSED_NO_RETURN
    reversible = False

    def __init__(self, vm_uuid, purge_id, hold=False, **kwargs):
        super().__init__(vm_uuid, purge_id, inject={"hold": bool(hold)}, **kwargs)

    def execute(self, purge_id, vm_uuid, hold):
        self.ledger(purge_id, vm_uuid).note(self.name, f"instance:{vm_uuid}",
                                            "held" if hold else "passed")
        return {"hold": hold}
