"""The OpenStack APIs (Nova, Neutron, Placement, Glance, Cinder) through openstacksdk.

Every call returns plain JSON-able dicts, so tasks can put results in the flow store. A missing
resource is None/False where the interface says so; every other failure is a CloudError that names
the service, the call and the HTTP status, never a header (tokens live there).
"""

from novapurge import validate
from novapurge.errors import BadInput

PLACEMENT_VERSION = "1.28"   # consumer generations in GET/PUT /allocations/{consumer}
ATTACHMENTS_VERSION = "3.27"  # Cinder's attachments API
_RAISE = object()
_PROXIES = {"compute": "compute", "network": "network", "placement": "placement",
            "image": "image", "volume": "block_storage"}
_DETAILS_MAX = 200


# What Nova removes from a kept port's binding:profile when it unbinds it (the rest stays).
NOVA_PROFILE_KEYS = ("pci_vendor_info", "pci_slot", "physical_network", "allocation", "arq_uuid",
                     "card_serial_number", "vf_num", "pf_mac_address", "device_mac_address",
                     "migrating_to")


def unbound_profile(profile: dict | None) -> dict | None:
    """The binding:profile an unbound port keeps; None when nothing of Nova's is to be removed."""
    profile = dict(profile or {})
    if not any(key in profile for key in NOVA_PROFILE_KEYS):
        return None
    return {k: v for k, v in profile.items() if k not in NOVA_PROFILE_KEYS}


class CloudError(Exception):
    """An API call failed.

    status: the HTTP status (None when no response came back); service: "compute", "network",
    "placement", "image" or "volume"; transient: worth retrying (5xx, 409, connection failures).
    """

    def __init__(self, message: str, *, service: str, status: int | None = None,
                 transient: bool | None = None):
        super().__init__(message)
        self.service = service
        self.status = status
        self.transient = (is_transient(status) if transient is None else transient)


def is_transient(status: int | None) -> bool:
    """5xx and 409 (a concurrent update, or a service still busy) are worth retrying."""
    return status is not None and (status >= 500 or status == 409)


def api_id(value, what: str) -> str:
    """A resource id (every id these APIs take is a UUID), canonical, or BadInput."""
    try:
        return validate.vm_uuid(value)
    except BadInput:
        raise BadInput(f"not a {what} id (a UUID): {value!r}") from None


def http_error(service: str, call: str, status: int, details: str = "") -> CloudError:
    """The CloudError for an HTTP error status (shared with the sandbox stand-in)."""
    text = f"{service} {call}: HTTP {status}"
    if details:
        text += f" ({details[:_DETAILS_MAX]})"
    return CloudError(text, service=service, status=status)


def _sdk_errors():
    """openstacksdk's and keystoneauth's exception modules, imported on first use: the sandbox
    and every run without a cloud share this module and never load the SDK (~0.4 s)."""
    from keystoneauth1 import exceptions as ks_exc
    from openstack import exceptions as os_exc
    return os_exc, ks_exc


def _call(service: str, call: str, fn, missing=_RAISE):
    """fn() with SDK and keystoneauth errors mapped to CloudError; a 404 returns `missing`."""
    os_exc, ks_exc = _sdk_errors()
    try:
        return fn()
    except os_exc.HttpException as error:
        status, details = error.status_code, _details(error)
    except ks_exc.HttpError as error:
        status, details = error.http_status, ""
    except ks_exc.ConnectionError as error:
        raise CloudError(f"{service} {call}: no connection ({type(error).__name__})",
                         service=service,
                         transient=not isinstance(error, ks_exc.SSLError)) from error
    except (os_exc.SDKException, ks_exc.ClientException) as error:
        raise CloudError(f"{service} {call}: {type(error).__name__}", service=service,
                         transient=False) from error
    if status == 404 and missing is not _RAISE:
        return missing
    raise http_error(service, call, status, details)


def _details(error) -> str:
    """The server's reason: the SDK's, or placement's `errors[].detail` the SDK does not read."""
    try:
        errors = error.response.json()["errors"]
        return "; ".join(str(e.get("detail") or e.get("title")) for e in errors)
    except (AttributeError, KeyError, TypeError, ValueError):
        return str(error.details or "")


def _request(method, path: str, **kwargs):
    """A raw call on a proxy (`conn.placement.get`, ...); error responses raise like the SDK's."""
    response = method(path, **kwargs)
    _sdk_errors()[0].raise_from_response(response)
    return response


class CloudApi:
    """The cloud seen by an admin: discovery and the changes a purge makes through the APIs.

    service_conn: a Connection of the nova service user; when given, Cinder attachment deletes and
    force-detaches carry its X-Service-Token, which Cinder requires before it lets an admin remove
    an attachment Nova still knows.
    """

    def __init__(self, conn, service_conn=None):
        """conn, service_conn: openstack.connection.Connection objects."""
        self._conn = conn
        self._service_conn = service_conn
        self._volume_auth = {}
        if service_conn is not None:
            from keystoneauth1 import service_token
            self._volume_auth["auth"] = service_token.ServiceTokenAuthWrapper(
                user_auth=conn.session.auth, service_auth=service_conn.session.auth)

    @classmethod
    def from_config(cls, cloud: str | None, service_cloud: str | None = None) -> "CloudApi":
        """A driver for a cloud of clouds.yaml (None: OS_CLOUD or the OS_* variables)."""
        conn = _connect(cloud)
        service_conn = _connect(service_cloud) if service_cloud else None
        return cls(conn, service_conn)

    # ---- compute --------------------------------------------------------------------------
    def server(self, vm_uuid) -> dict | None:
        vm = validate.vm_uuid(vm_uuid)
        found = self._api("compute", f"GET server {vm}", lambda api: api.get_server(vm),
                          missing=None)
        if found is None:
            return None
        flavor = found.flavor.to_dict(computed=False) if found.flavor else {}
        return {
            "id": found.id, "name": found.name, "status": found.status,
            "task_state": found.task_state, "vm_state": found.vm_state,
            "host": found.compute_host, "hypervisor_hostname": found.hypervisor_hostname,
            "instance_name": found.instance_name, "project_id": found.project_id,
            "user_id": found.user_id,
            "flavor": {k: v for k, v in flavor.items() if v is not None},
            "volumes": [v.id for v in found.attached_volumes or []],
            "addresses": found.addresses or {},
        }

    # ---- network --------------------------------------------------------------------------
    def ports_of(self, vm_uuid) -> list[dict]:
        vm = validate.vm_uuid(vm_uuid)
        ports = self._api("network", f"GET ports of {vm}",
                          lambda api: list(api.ports(device_id=vm)))
        return [_port(p) for p in ports]

    def port(self, port_id) -> dict | None:
        port_id = api_id(port_id, "port")
        found = self._api("network", f"GET port {port_id}", lambda api: api.get_port(port_id),
                          missing=None)
        return None if found is None else _port(found)

    def delete_port(self, port_id) -> bool:
        port_id = api_id(port_id, "port")
        return self._delete("network", f"DELETE port {port_id}",
                            lambda api: api.delete_port(port_id, ignore_missing=False))

    def unbind_port(self, port_id, binding_profile: dict | None = None) -> dict:
        """Release the port from the instance and its host, as Nova does for a kept port.

        binding_profile: the port's current one; the keys Nova put there for the host are
        removed (`unbound_profile`), and the profile is only sent when that changes it: Neutron
        lets only the service role write it. With a service cloud configured the update is
        made as that user, as Nova makes it.
        """
        port_id = api_id(port_id, "port")
        changes = {"binding_host_id": None, "device_id": "", "device_owner": ""}
        profile = unbound_profile(binding_profile)
        if profile is not None:
            changes["binding_profile"] = profile
        conn = self._service_conn or self._conn
        updated = _call("network", f"PUT port {port_id}",
                        lambda: conn.network.update_port(port_id, **changes))
        return _port(updated)

    # ---- placement ------------------------------------------------------------------------
    def allocations(self, consumer) -> dict | None:
        consumer = validate.vm_uuid(consumer)
        body = self._api("placement", f"GET allocations {consumer}", lambda api: _request(
            api.get, f"/allocations/{consumer}", microversion=PLACEMENT_VERSION).json())
        if not body.get("allocations"):
            return None
        return {
            "allocations": {rp: {"resources": dict(a["resources"])}
                            for rp, a in body["allocations"].items()},
            "consumer_generation": body.get("consumer_generation"),
            "project_id": body.get("project_id"), "user_id": body.get("user_id"),
        }

    def delete_allocations(self, consumer) -> bool:
        consumer = validate.vm_uuid(consumer)
        return self._delete("placement", f"DELETE allocations {consumer}", lambda api: _request(
            api.delete, f"/allocations/{consumer}", microversion=PLACEMENT_VERSION))

    def put_allocations(self, consumer, allocations: dict, project_id, user_id,
                        consumer_generation) -> None:
        """Write a consumer's allocations; consumer_generation None means "a new consumer"."""
        consumer = validate.vm_uuid(consumer)
        body = {"allocations": allocations, "consumer_generation": consumer_generation,
                "project_id": project_id, "user_id": user_id}
        self._api("placement", f"PUT allocations {consumer}", lambda api: _request(
            api.put, f"/allocations/{consumer}", json=body, microversion=PLACEMENT_VERSION))

    # ---- image ----------------------------------------------------------------------------
    def image(self, image_id) -> dict | None:
        image_id = api_id(image_id, "image")
        found = self._api("image", f"GET image {image_id}", lambda api: api.get_image(image_id),
                          missing=None)
        return None if found is None else _image(found)

    def images_of_instance(self, vm_uuid) -> list[dict]:
        vm = validate.vm_uuid(vm_uuid)
        images = self._api("image", f"GET images of {vm}",
                           lambda api: list(api.images(instance_uuid=vm)))
        return [_image(i) for i in images]

    def deactivate_image(self, image_id) -> None:
        image_id = api_id(image_id, "image")
        self._api("image", f"POST deactivate image {image_id}",
                  lambda api: api.deactivate_image(image_id))

    def reactivate_image(self, image_id) -> None:
        image_id = api_id(image_id, "image")
        self._api("image", f"POST reactivate image {image_id}",
                  lambda api: api.reactivate_image(image_id))

    def delete_image(self, image_id) -> bool:
        image_id = api_id(image_id, "image")
        return self._delete("image", f"DELETE image {image_id}",
                            lambda api: api.delete_image(image_id, ignore_missing=False))

    # ---- volume ---------------------------------------------------------------------------
    def volume(self, volume_id) -> dict | None:
        """The volume; Cinder does not show attach_status, so it follows from the attachments."""
        volume_id = api_id(volume_id, "volume")
        found = self._api("volume", f"GET volume {volume_id}",
                          lambda api: api.get_volume(volume_id), missing=None)
        if found is None:
            return None
        attachments = [{"attachment_id": a.get("attachment_id"), "server_id": a.get("server_id"),
                        "host_name": a.get("host_name")} for a in found.attachments or []]
        return {"id": found.id, "status": found.status,
                "attach_status": "attached" if attachments else "detached",
                "multiattach": bool(found.is_multiattach), "project_id": found.project_id,
                "attachments": attachments}

    def volume_attachments_of(self, vm_uuid) -> list[dict]:
        """Cinder's attachments to the instance, in every project: also those Nova forgot."""
        vm = validate.vm_uuid(vm_uuid)
        body = self._api("volume", f"GET attachments of {vm}", lambda api: _request(
            api.get, "/attachments", params={"all_tenants": 1, "instance_id": vm},
            microversion=ATTACHMENTS_VERSION).json())
        return [{"attachment_id": a["id"], "volume_id": a["volume_id"], "status": a.get("status")}
                for a in body.get("attachments", []) if a.get("instance") == vm]

    def delete_attachment(self, attachment_id) -> bool:
        attachment_id = api_id(attachment_id, "attachment")
        return self._delete("volume", f"DELETE attachment {attachment_id}", lambda api: _request(
            api.delete, f"/attachments/{attachment_id}", microversion=ATTACHMENTS_VERSION,
            **self._volume_auth))

    def force_detach(self, volume_id, attachment_id) -> None:
        volume_id = api_id(volume_id, "volume")
        attachment_id = api_id(attachment_id, "attachment")
        body = {"os-force_detach": {"attachment_id": attachment_id}}
        self._api("volume", f"POST force-detach volume {volume_id}", lambda api: _request(
            api.post, f"/volumes/{volume_id}/action", json=body, **self._volume_auth))

    def reset_volume_status(self, volume_id, status="available",
                            attach_status="detached") -> None:
        volume_id = api_id(volume_id, "volume")
        self._api("volume", f"POST reset-status volume {volume_id}",
                  lambda api: api.reset_volume_status(volume_id, status=status,
                                                      attach_status=attach_status))

    def delete_volume(self, volume_id) -> bool:
        volume_id = api_id(volume_id, "volume")
        return self._delete("volume", f"DELETE volume {volume_id}",
                            lambda api: api.delete_volume(volume_id, ignore_missing=False))

    def close(self) -> None:
        for conn in filter(None, (self._conn, self._service_conn)):
            conn.close()

    # ---- helpers ----------------------------------------------------------------------------
    def _api(self, service: str, call: str, fn, missing=_RAISE):
        """fn(the service's SDK proxy), with errors mapped; a 404 returns `missing`.

        The proxy is looked up inside: building it already talks to Keystone.
        """
        return _call(service, call, lambda: fn(getattr(self._conn, _PROXIES[service])), missing)

    def _delete(self, service: str, call: str, fn) -> bool:
        """fn(proxy) deletes: True once it has, False when the resource was already gone."""
        def delete(proxy):
            fn(proxy)
            return True
        return self._api(service, call, delete, missing=False)


def _connect(cloud: str | None):
    import openstack
    os_exc, ks_exc = _sdk_errors()
    try:
        return openstack.connect(cloud=cloud, app_name="novapurge")
    except (os_exc.SDKException, ks_exc.ClientException) as error:
        name = cloud or "from OS_CLOUD / OS_* variables"
        raise BadInput(f"cannot configure cloud {name}: {error}") from None


def _port(port) -> dict:
    return {"id": port.id, "status": port.status, "device_id": port.device_id,
            "device_owner": port.device_owner, "binding_host_id": port.binding_host_id,
            "binding_profile": port.binding_profile or {},
            "binding_vif_type": port.binding_vif_type, "mac_address": port.mac_address,
            "network_id": port.network_id, "project_id": port.project_id}


def _image(image) -> dict:
    return {"id": image.id, "name": image.name, "status": image.status,
            "instance_uuid": image.instance_uuid, "owner": image.owner}
