"""The instance's ports (finalize), as Nova's own local delete treats them."""

from novapurge.tasks.base import FinalizeTask


def _owned(port, vm_uuid) -> bool:
    return port is not None and port.get("device_id") in (vm_uuid, "", None)


class DeletePort(FinalizeTask):
    """Delete a port Nova created for the instance. Reversion: none.

    A port now owned by another device is kept and noted.
    """

    group = "ports"

    def execute(self, purge_id, vm_uuid, resource_id):
        cloud, ledger = self.drivers.cloud, self.ledger(purge_id, vm_uuid)
        resource, port = f"port:{resource_id}", cloud.port(resource_id)
        if port is not None and not _owned(port, vm_uuid):
            ledger.note(self.name, resource, "kept", {"device_id": port["device_id"]},
                        target="neutron")
            return {"deleted": False}
        return self.delete_recorded(ledger, resource, port,
                                    lambda: cloud.delete_port(resource_id), target="neutron")

    def describe(self, facts):
        return [{"target": "neutron", "command": f"DELETE /v2.0/ports/{self.inject['resource_id']}",
                 "why": "created by Nova; irreversible"}]


class UnbindPort(FinalizeTask):
    """Unbind a port the user passed in (preserve_on_delete): host, device_id, device_owner cleared.

    Reversion: none.
    """

    group = "ports"

    def execute(self, purge_id, vm_uuid, resource_id):
        cloud, ledger = self.drivers.cloud, self.ledger(purge_id, vm_uuid)
        resource, port = f"port:{resource_id}", cloud.port(resource_id)
        if port is None or port.get("device_id") != vm_uuid:
            # gone, unbound already (a re-run), or now another device's: nothing to do
            outcome = "gone" if port is None else "unbound" if not port.get("device_id") \
                else "kept"
            ledger.note(self.name, resource, outcome, port and {"device_id": port["device_id"]},
                        target="neutron")
            return {"unbound": False}
        ledger.record_before(self.name, resource, port, target="neutron")
        self.fault("before-change")
        after = cloud.unbind_port(resource_id, port.get("binding_profile"))
        self.fault("after-change")
        ledger.record_after(self.name, resource, after, target="neutron")
        return {"unbound": True}

    def describe(self, facts):
        return [{"target": "neutron", "command": f"PUT /v2.0/ports/{self.inject['resource_id']} "
                 "binding:host_id='' device_id='' device_owner=''", "why": "the user's port is kept"}]
