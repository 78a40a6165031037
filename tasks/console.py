"""Legacy nova-consoleauth tokens in memcached, on every configured controller.

Current Nova keeps tokens in `console_auth_tokens` (removed by SoftDeleteInstance).
"""

from novapurge.tasks.base import PurgeTask


class DeleteConsoleTokens(PurgeTask):
    """Delete the instance's token keys, then its token-list key, on every memcached server.

    Reversion: set every key back with its value and the TTL it had left.
    """

    group = "console"

    def execute(self, purge_id, vm_uuid):
        store, ledger = self.drivers.consoles, self.ledger(purge_id, vm_uuid)
        resource = f"console-tokens:{vm_uuid}"
        found = store.read(vm_uuid)
        # The token keys are secrets (each opens the console): only the count is exported.
        state = {"console_tokens": found,
                 "count": {server: len(s["tokens"]) for server, s in found.items()}}
        before = ledger.record_before(self.name, resource, state, target="memcached")
        self.fault("before-change")
        store.delete(vm_uuid, before.state["console_tokens"])
        self.fault("after-change")
        count = sum(before.state["count"].values())
        ledger.record_after(self.name, resource, {"tokens_deleted": count}, target="memcached")
        return {"tokens": count}

    def revert(self, purge_id, vm_uuid, **kwargs):
        ledger, resource = self.ledger(purge_id, vm_uuid), f"console-tokens:{vm_uuid}"
        before = ledger.before(self.name, resource)
        if before is None:
            return
        self.drivers.consoles.restore(before.state["console_tokens"])
        ledger.record_reverted(self.name, resource, {"restored": True}, target="memcached")

    def describe(self, facts):
        return [{"target": "memcached", "command": f"get {facts['vm_uuid']}; delete <each token>; "
                 f"delete {facts['vm_uuid']}", "why": "legacy nova-consoleauth tokens"}]
