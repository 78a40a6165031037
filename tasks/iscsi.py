"""One iSCSI path of the instance's volumes on the compute host (one per multipath portal)."""

from novapurge.drivers import iscsi
from novapurge.tasks.base import HostTask


def split_key(key: str):
    iqn, portal = key.split(",", 1)
    return iqn, portal


class DisconnectIscsiTarget(HostTask):
    """Set the node's startup to manual, log out, delete the node record (os-brick's disconnect).

    Reversion: recreate the node record with every recorded field (CHAP secrets come from the
    ledger's protected column), and log in again when a session existed.
    """

    def __init__(self, vm_uuid, purge_id, target_key, **kwargs):
        super().__init__(vm_uuid, purge_id, detail=target_key,
                         inject={"target_key": target_key}, **kwargs)

    def execute(self, purge_id, vm_uuid, facts, target_key):
        iqn, portal = split_key(target_key)
        adm, ledger = iscsi.Iscsi(self.runner(facts)), self.ledger(purge_id, vm_uuid)
        resource = f"iscsi:{target_key}"
        state = adm.inspect(iqn, portal)
        before = ledger.record_before(self.name, resource, state, target=self.target(facts),
                                      argv=[" ".join(c) for c in self._commands(iqn, portal)])
        self.fault("before-change")
        adm.disconnect(iqn, portal, has_record=state["record"] is not None)
        self.fault("after-change")
        ledger.record_after(self.name, resource, {"record": None, "session": False},
                            target=self.target(facts))
        return {"deleted": before.state["record"] is not None}

    def revert(self, purge_id, vm_uuid, facts, target_key, **kwargs):
        iqn, portal = split_key(target_key)
        ledger, resource = self.ledger(purge_id, vm_uuid), f"iscsi:{target_key}"
        before = ledger.before(self.name, resource)
        if before is None:
            return
        adm = iscsi.Iscsi(self.runner(facts))
        if before.state["record"] is not None:
            adm.restore(iqn, portal, before.state["record"])
        if before.state["session"] and not adm.logged_in(iqn, portal):
            adm.login(iqn, portal)
        ledger.record_reverted(self.name, resource, {"record": before.state["record"] is not None},
                               target=self.target(facts))

    @staticmethod
    def _commands(iqn, portal):
        return [iscsi.startup_manual_argv(iqn, portal), iscsi.logout_argv(iqn, portal),
                iscsi.delete_argv(iqn, portal)]

    def describe(self, facts):
        iqn, portal = split_key(self.inject["target_key"])
        return [{"target": self.target(facts), "command": " ".join(c),
                 "why": "os-brick disconnect (rc 21 = no session/record: done)"}
                for c in self._commands(iqn, portal)]
