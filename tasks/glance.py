"""The shelved instance's snapshot image: deactivated before the point of no return, deleted after."""

from novapurge.tasks.base import PurgeTask


class DeactivateShelvedImage(PurgeTask):
    """Deactivate the image a shelve offload left (nobody can boot or download it meanwhile).

    Reversion: reactivate it when it was active.
    """

    group = "images"

    def execute(self, purge_id, vm_uuid, facts):
        image_id, cloud = facts["shelved_image"], self.drivers.cloud
        ledger, resource = self.ledger(purge_id, vm_uuid), f"image:{image_id}"
        image = cloud.image(image_id)
        before = ledger.record_before(self.name, resource, image and {"status": image["status"]},
                                      target="glance")
        self.fault("before-change")
        if before.state and before.state["status"] == "active":
            cloud.deactivate_image(image_id)
        self.fault("after-change")
        ledger.record_after(self.name, resource, {"status": "deactivated"}, target="glance")
        return {"image": image_id}

    def revert(self, purge_id, vm_uuid, facts, **kwargs):
        image_id, cloud = facts["shelved_image"], self.drivers.cloud
        ledger, resource = self.ledger(purge_id, vm_uuid), f"image:{image_id}"
        before = ledger.before(self.name, resource)
        if before is None or not before.state:
            return
        image = cloud.image(image_id)
        if before.state["status"] == "active" and image and image["status"] == "deactivated":
            cloud.reactivate_image(image_id)
        ledger.record_reverted(self.name, resource, {"status": before.state["status"]},
                               target="glance")

    def describe(self, facts):
        return [{"target": "glance", "command": f"POST /v2/images/{facts['shelved_image']}"
                 "/actions/deactivate", "why": "the shelve snapshot, until it is deleted"}]


class DeleteShelvedImage(PurgeTask):
    """Delete the shelve snapshot (finalize). Reversion: none (irreversible)."""

    group = "images"
    reversible = False

    def execute(self, purge_id, vm_uuid, facts):
        image_id, cloud = facts["shelved_image"], self.drivers.cloud
        return self.delete_recorded(self.ledger(purge_id, vm_uuid), f"image:{image_id}",
                                    cloud.image(image_id), lambda: cloud.delete_image(image_id),
                                    target="glance")

    def describe(self, facts):
        return [{"target": "glance", "command": f"DELETE /v2/images/{facts['shelved_image']}",
                 "why": "irreversible (finalize)"}]
