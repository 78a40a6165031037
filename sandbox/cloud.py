"""A simulated cloud behind the CloudApi interface, for the demo and fast tests.

The whole cloud is ONE JSON file: every call is a read-modify-write under an fcntl lock, written
atomically (tmp + rename), so separate processes (a killed purge and its resume, a test checking
the end state) see the same cloud. It behaves like the real APIs for what the interface does,
including their refusals and conflicts, and a service can be taken down to inject failures.
"""

import contextlib
import secrets
import time
import uuid
from pathlib import Path

from novapurge import validate
from novapurge.drivers.cloud import api_id, http_error, unbound_profile
from novapurge.errors import BadInput
from novapurge.sandbox.statefile import StateFile

SERVICES = ("compute", "network", "placement", "image", "volume")
_EMPTY = {"down": [], "servers": {}, "ports": {}, "volumes": {}, "images": {}, "allocations": {}}
# Cinder deletes a volume only in these states (and never one with attachments).
_DELETABLE = {"available", "error", "error_restoring", "error_extending", "error_managing"}
# What Cinder's os-reset_status accepts.
_VOLUME_STATUSES = {"available", "in-use", "error", "error_deleting", "attaching", "detaching",
                    "creating", "deleting", "reserved", "error_restoring", "error_extending",
                    "error_managing", "maintenance", "extending", "downloading", "uploading",
                    "retyping", "backing-up", "restoring-backup", "awaiting-transfer"}
_ATTACH_STATUSES = {"attached", "detached"}


class SandboxCloud:
    """The simulated cloud stored at `state_path` (created empty when missing)."""

    def __init__(self, state_path):
        self.path = Path(state_path)
        self._state = StateFile(self.path, _EMPTY)

    # ---- compute --------------------------------------------------------------------------
    def server(self, vm_uuid) -> dict | None:
        vm = validate.vm_uuid(vm_uuid)
        return self._up(self._read(), "compute", f"GET server {vm}")["servers"].get(vm)

    # ---- network --------------------------------------------------------------------------
    def ports_of(self, vm_uuid) -> list[dict]:
        vm = validate.vm_uuid(vm_uuid)
        ports = self._up(self._read(), "network", f"GET ports of {vm}")["ports"]
        return [port for _, port in sorted(ports.items()) if port["device_id"] == vm]

    def port(self, port_id) -> dict | None:
        port_id = api_id(port_id, "port")
        return self._up(self._read(), "network", f"GET port {port_id}")["ports"].get(port_id)

    def delete_port(self, port_id) -> bool:
        port_id = api_id(port_id, "port")
        with self._change() as state:
            ports = self._up(state, "network", f"DELETE port {port_id}")["ports"]
            return ports.pop(port_id, None) is not None

    def unbind_port(self, port_id, binding_profile: dict | None = None) -> dict:
        """As Neutron does it: Nova's keys leave the binding profile, the rest stays."""
        port_id = api_id(port_id, "port")
        call = f"PUT port {port_id}"
        with self._change() as state:
            port = self._up(state, "network", call)["ports"].get(port_id)
            if port is None:
                raise http_error("network", call, 404, "port not found")
            profile = unbound_profile(port["binding_profile"])
            port.update(binding_host_id="", binding_vif_type="unbound", device_id="",
                        device_owner="", status="DOWN")
            if profile is not None:
                port["binding_profile"] = profile
            return dict(port)

    # ---- placement ------------------------------------------------------------------------
    def allocations(self, consumer) -> dict | None:
        consumer = validate.vm_uuid(consumer)
        state = self._up(self._read(), "placement", f"GET allocations {consumer}")
        return state["allocations"].get(consumer)

    def delete_allocations(self, consumer) -> bool:
        consumer = validate.vm_uuid(consumer)
        with self._change() as state:
            found = self._up(state, "placement", f"DELETE allocations {consumer}")["allocations"]
            return found.pop(consumer, None) is not None

    def put_allocations(self, consumer, allocations: dict, project_id, user_id,
                        consumer_generation) -> None:
        """Placement 1.28: the generation must match the consumer's (None for a new consumer)."""
        consumer = validate.vm_uuid(consumer)
        call = f"PUT allocations {consumer}"
        _check_allocations(call, allocations)
        with self._change() as state:
            found = self._up(state, "placement", call)["allocations"]
            current = found.get(consumer)
            expected = None if current is None else current["consumer_generation"]
            if consumer_generation != expected:
                raise http_error("placement", call, 409,
                                 f"consumer generation conflict: expected {expected}, "
                                 f"got {consumer_generation}")
            if not allocations:
                found.pop(consumer, None)
                return
            found[consumer] = _allocations(allocations, project_id, user_id,
                                           (expected or 0) + 1)

    # ---- image ----------------------------------------------------------------------------
    def image(self, image_id) -> dict | None:
        image_id = api_id(image_id, "image")
        return self._up(self._read(), "image", f"GET image {image_id}")["images"].get(image_id)

    def images_of_instance(self, vm_uuid) -> list[dict]:
        vm = validate.vm_uuid(vm_uuid)
        images = self._up(self._read(), "image", f"GET images of {vm}")["images"]
        return [image for _, image in sorted(images.items()) if image["instance_uuid"] == vm]

    def deactivate_image(self, image_id) -> None:
        self._set_image_status(image_id, "deactivate", "deactivated")

    def reactivate_image(self, image_id) -> None:
        self._set_image_status(image_id, "reactivate", "active")

    def delete_image(self, image_id) -> bool:
        image_id = api_id(image_id, "image")
        with self._change() as state:
            images = self._up(state, "image", f"DELETE image {image_id}")["images"]
            return images.pop(image_id, None) is not None

    def _set_image_status(self, image_id, action: str, status: str) -> None:
        """Glance moves only between active and deactivated (again is a no-op), else 403."""
        image_id = api_id(image_id, "image")
        call = f"POST {action} image {image_id}"
        with self._change() as state:
            image = self._up(state, "image", call)["images"].get(image_id)
            if image is None:
                raise http_error("image", call, 404, "image not found")
            if image["status"] not in ("active", "deactivated"):
                raise http_error("image", call, 403, f"image is {image['status']}")
            image["status"] = status

    # ---- volume ---------------------------------------------------------------------------
    def volume(self, volume_id) -> dict | None:
        volume_id = api_id(volume_id, "volume")
        return self._up(self._read(), "volume", f"GET volume {volume_id}")["volumes"].get(volume_id)

    def volume_attachments_of(self, vm_uuid) -> list[dict]:
        vm = validate.vm_uuid(vm_uuid)
        volumes = self._up(self._read(), "volume", f"GET attachments of {vm}")["volumes"]
        return [{"attachment_id": a["attachment_id"], "volume_id": volume_id,
                 "status": "attached"}
                for volume_id, volume in sorted(volumes.items())
                for a in volume["attachments"] if a["server_id"] == vm]

    def delete_attachment(self, attachment_id) -> bool:
        attachment_id = api_id(attachment_id, "attachment")
        with self._change() as state:
            volumes = self._up(state, "volume", f"DELETE attachment {attachment_id}")["volumes"]
            for volume in volumes.values():
                if _detach(volume, attachment_id):
                    return True
            return False

    def force_detach(self, volume_id, attachment_id) -> None:
        volume_id = api_id(volume_id, "volume")
        attachment_id = api_id(attachment_id, "attachment")
        call = f"POST force-detach volume {volume_id}"
        with self._change() as state:
            volume = self._up(state, "volume", call)["volumes"].get(volume_id)
            if volume is None:
                raise http_error("volume", call, 404, "volume not found")
            if not _detach(volume, attachment_id):
                raise http_error("volume", call, 400, "attachment not found")

    def reset_volume_status(self, volume_id, status="available",
                            attach_status="detached") -> None:
        """Cinder's os-reset_status: attach_status "detached" also drops the attachments."""
        volume_id = api_id(volume_id, "volume")
        call = f"POST reset-status volume {volume_id}"
        with self._change() as state:
            volume = self._up(state, "volume", call)["volumes"].get(volume_id)
            if volume is None:
                raise http_error("volume", call, 404, "volume not found")
            if status not in _VOLUME_STATUSES or attach_status not in _ATTACH_STATUSES:
                raise http_error("volume", call, 400, "invalid status")
            volume.update(status=status, attach_status=attach_status)
            if attach_status == "detached":
                volume["attachments"] = []

    def delete_volume(self, volume_id) -> bool:
        volume_id = api_id(volume_id, "volume")
        call = f"DELETE volume {volume_id}"
        with self._change() as state:
            volumes = self._up(state, "volume", call)["volumes"]
            volume = volumes.get(volume_id)
            if volume is None:
                return False
            if volume["status"] not in _DELETABLE or volume["attachments"]:
                raise http_error("volume", call, 400,
                                 f"volume is {volume['status']}, must be available or error "
                                 f"and have no attachments")
            del volumes[volume_id]
            return True

    def close(self) -> None:
        """Nothing stays open between calls."""

    # ---- seeding and fault injection ------------------------------------------------------
    def add_server(self, vm_uuid, *, name="", status="ERROR", vm_state="error", task_state=None,
                   host=None, hypervisor_hostname=None, instance_name=None, project_id=None,
                   user_id=None, flavor=None, volumes=(), addresses=None) -> dict:
        """A server the compute API reports (while its cell row is live: see forget_server)."""
        vm = validate.vm_uuid(vm_uuid)
        server = {"id": vm, "name": name, "status": status, "task_state": task_state,
                  "vm_state": vm_state, "host": host, "hypervisor_hostname": hypervisor_hostname,
                  "instance_name": instance_name, "project_id": project_id, "user_id": user_id,
                  "flavor": dict(flavor or {}),
                  "volumes": [api_id(v, "volume") for v in volumes],
                  "addresses": dict(addresses or {})}
        with self._change() as state:
            state["servers"][vm] = server
        return server

    def forget_server(self, vm_uuid) -> None:
        """The compute API stops reporting the server (its instance row was deleted)."""
        vm = validate.vm_uuid(vm_uuid)
        with self._change() as state:
            state["servers"].pop(vm, None)

    def add_port(self, *, port_id=None, device_id="", device_owner="compute:nova",
                 binding_host_id="", binding_profile=None, binding_vif_type=None,
                 mac_address=None, network_id=None, project_id=None, status=None) -> dict:
        """A Neutron port; bound (ACTIVE, vif type ovs) when it has a binding host."""
        bound = bool(binding_host_id)
        port = {"id": api_id(port_id or str(uuid.uuid4()), "port"),
                "status": status or ("ACTIVE" if bound else "DOWN"),
                "device_id": device_id, "device_owner": device_owner,
                "binding_host_id": binding_host_id, "binding_profile": dict(binding_profile or {}),
                "binding_vif_type": binding_vif_type or ("ovs" if bound else "unbound"),
                "mac_address": mac_address or "fa:16:3e:" + ":".join(
                    f"{b:02x}" for b in secrets.token_bytes(3)),
                "network_id": api_id(network_id or str(uuid.uuid4()), "network"),
                "project_id": project_id}
        with self._change() as state:
            state["ports"][port["id"]] = port
        return port

    def add_volume(self, *, volume_id=None, status=None, multiattach=False, project_id=None,
                   attachments=()) -> dict:
        """A Cinder volume; attachments: [{"server_id", "host_name"[, "attachment_id"]}]."""
        attached = [{"attachment_id": api_id(a.get("attachment_id") or str(uuid.uuid4()),
                                             "attachment"),
                     "server_id": validate.vm_uuid(a["server_id"]),
                     "host_name": a.get("host_name")} for a in attachments]
        volume = {"id": api_id(volume_id or str(uuid.uuid4()), "volume"),
                  "status": status or ("in-use" if attached else "available"),
                  "attach_status": "attached" if attached else "detached",
                  "multiattach": bool(multiattach), "project_id": project_id,
                  "attachments": attached}
        with self._change() as state:
            state["volumes"][volume["id"]] = volume
        return volume

    def add_image(self, *, image_id=None, name="", status="active", instance_uuid=None,
                  owner=None) -> dict:
        """A Glance image (a shelved instance's snapshot carries its instance_uuid)."""
        image = {"id": api_id(image_id or str(uuid.uuid4()), "image"), "name": name,
                 "status": status,
                 "instance_uuid": validate.vm_uuid(instance_uuid) if instance_uuid else None,
                 "owner": owner}
        with self._change() as state:
            state["images"][image["id"]] = image
        return image

    def set_allocations(self, consumer, allocations: dict, *, project_id, user_id,
                        consumer_generation=1) -> dict:
        """Seed a consumer's allocations ({rp_uuid: {"resources": {class: amount}}})."""
        consumer = validate.vm_uuid(consumer)
        _check_allocations(f"seed allocations {consumer}", allocations)
        entry = _allocations(allocations, project_id, user_id, consumer_generation)
        with self._change() as state:
            state["allocations"][consumer] = entry
        return entry

    def set_down(self, service: str, down: bool = True) -> None:
        """Every call of `service` fails with 503 (transient) until set up again."""
        if service not in SERVICES:
            raise ValueError(f"unknown service {service!r}; known: {', '.join(SERVICES)}")
        with self._change() as state:
            others = [s for s in state["down"] if s != service]
            state["down"] = sorted(others + [service]) if down else others

    def set_latency(self, seconds: float) -> None:
        """Every later call takes `seconds` longer, spent outside the lock (benchmarks)."""
        with self._change() as state:
            state["latency"] = float(seconds)

    def snapshot(self) -> dict:
        """The whole state, for tests asserting exact end states."""
        return {k: v for k, v in self._read().items() if k != "latency"}

    # ---- the state file -------------------------------------------------------------------
    def _read(self) -> dict:
        state = self._state.read()
        self._pause(state)
        return state

    @contextlib.contextmanager
    def _change(self):
        """The state to modify in place; written back only when the block succeeds."""
        with self._state.change() as state:
            yield state
        self._pause(state)

    @staticmethod
    def _pause(state: dict) -> None:
        """The simulated API latency (set_latency), after the lock is released."""
        if state.get("latency"):
            time.sleep(state["latency"])

    @staticmethod
    def _up(state: dict, service: str, call: str) -> dict:
        if service in state["down"]:
            raise http_error(service, call, 503, "service unavailable (sandbox fault injection)")
        return state


def _check_allocations(call: str, allocations) -> None:
    """Placement's schema: {rp_uuid: {"resources": {class: positive int}}}, else 400."""
    try:
        for rp, entry in allocations.items():
            api_id(rp, "resource provider")
            resources = entry["resources"]
            if not resources or not all(isinstance(v, int) and v > 0 for v in resources.values()):
                raise ValueError
    except (AttributeError, KeyError, TypeError, ValueError, BadInput):
        raise http_error("placement", call, 400, "allocations do not match the schema") from None


def _allocations(allocations: dict, project_id, user_id, generation) -> dict:
    return {"allocations": {rp: {"resources": dict(a["resources"])}
                            for rp, a in allocations.items()},
            "consumer_generation": generation, "project_id": project_id, "user_id": user_id}


def _detach(volume: dict, attachment_id: str) -> bool:
    """Remove one attachment; the last one leaves the volume available and detached."""
    kept = [a for a in volume["attachments"] if a["attachment_id"] != attachment_id]
    if len(kept) == len(volume["attachments"]):
        return False
    volume["attachments"] = kept
    if not kept:
        volume.update(status="available", attach_status="detached")
    return True
