"""The instance's volumes (finalize): detached, and deleted where Nova would have deleted them."""

import logging

from novapurge.drivers.cloud import CloudError
from novapurge.tasks.base import FinalizeTask

LOG = logging.getLogger(__name__)


class DetachVolume(FinalizeTask):
    """Delete the volume's attachments to this instance; force-detach and reset when that fails.

    Runs after the instance is deleted in Nova's DB, so Cinder's check with Nova finds no server.
    Reversion: none.
    """

    group = "volumes"

    def execute(self, purge_id, vm_uuid, resource_id):
        cloud, ledger = self.drivers.cloud, self.ledger(purge_id, vm_uuid)
        resource = f"volume:{resource_id}"
        volume = cloud.volume(resource_id)
        ledger.record_before(self.name, resource, volume, target="cinder")
        self.fault("before-change")
        ours = [a for a in (volume or {}).get("attachments", []) if a.get("server_id") == vm_uuid]
        forced = []
        for attachment in ours:
            try:
                cloud.delete_attachment(attachment["attachment_id"])
            except CloudError as error:
                if error.transient and error.status != 500:
                    raise
                LOG.warning("volume %s: attachment delete failed (%s); force-detaching",
                            resource_id, error)
                cloud.force_detach(resource_id, attachment["attachment_id"])
                forced.append(attachment["attachment_id"])
        after = cloud.volume(resource_id)
        others = [a for a in (after or {}).get("attachments", []) if a.get("server_id") != vm_uuid]
        if after and not others and (after["status"] != "available"
                                      or after.get("attach_status") == "attached"):
            cloud.reset_volume_status(resource_id)
        self.fault("after-change")
        ledger.record_after(self.name, resource, {"detached": [a["attachment_id"] for a in ours],
                                                  "forced": forced, "gone": volume is None},
                            target="cinder")
        return {"detached": len(ours)}

    def describe(self, facts):
        return [{"target": "cinder", "command": f"DELETE /attachments (volume {self.inject['resource_id']})",
                 "why": "irreversible; force-detach + reset-state if refused"}]


class DeleteVolume(FinalizeTask):
    """Delete a volume of the instance (delete_on_termination, or as --delete-volumes says).

    A volume still attached to another server is kept and noted. Reversion: none.
    """

    group = "volumes"

    def execute(self, purge_id, vm_uuid, resource_id):
        cloud, ledger = self.drivers.cloud, self.ledger(purge_id, vm_uuid)
        resource = f"volume:{resource_id}"
        volume = cloud.volume(resource_id)
        if volume and any(a.get("server_id") != vm_uuid for a in volume.get("attachments", [])):
            ledger.note(self.name, resource, "kept", {"reason": "attached to another server"},
                        target="cinder")
            return {"deleted": False}
        return self.delete_recorded(ledger, resource, volume,
                                    lambda: cloud.delete_volume(resource_id), target="cinder")

    def describe(self, facts):
        return [{"target": "cinder", "command": f"DELETE /volumes/{self.inject['resource_id']}",
                 "why": "irreversible"}]
