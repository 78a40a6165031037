"""Validation of every identifier before it reaches SQL, a shell or a path."""

import re
import uuid as _uuid

from novapurge.errors import BadInput

_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_IDENT_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,255}$")
_GROUPS = ("db", "quota", "mapping", "placement", "host", "console", "volumes", "ports", "images")


def vm_uuid(value: str) -> str:
    """Return the canonical lower-case form of an instance UUID, or raise BadInput."""
    text = str(value).strip().lower()
    if _UUID_RE.match(text):
        return text
    try:
        return str(_uuid.UUID(text))
    except ValueError:
        raise BadInput(f"not an instance UUID: {value!r}") from None


def purge_id(value: str) -> str:
    """Purge ids are logbook UUIDs."""
    try:
        return vm_uuid(value)
    except BadInput:
        raise BadInput(f"not a purge id (a UUID printed by `novapurge purge`): {value!r}") from None


def identifier(value: str, what: str) -> str:
    """A plain identifier (project id, host name, table name): letters, digits and `_.:@-`."""
    text = str(value)
    if not _IDENT_RE.match(text):
        raise BadInput(f"invalid {what}: {value!r}")
    return text


def skip_groups(values) -> list:
    """The step groups `--skip` may name."""
    groups = []
    for value in values:
        for name in filter(None, (part.strip() for part in value.split(","))):
            if name not in _GROUPS:
                raise BadInput(f"unknown step group {name!r}; known: {', '.join(_GROUPS)}")
            groups.append(name)
    groups = sorted(set(groups))
    if "db" in groups and not {"quota", "mapping"} <= set(groups):
        raise BadInput("--skip db leaves the instance live: releasing its quota or queueing its "
                       "mapping would then be wrong; skip quota and mapping too")
    return groups



_DEVICE_RE = re.compile(r"^(tap|qbr|qvb|qvo|brq)[0-9a-f-]{11}$")
_IQN_RE = re.compile(r"^(iqn\.\d{4}-\d{2}\.[a-z0-9][a-z0-9.-]*(:[A-Za-z0-9.:_-]+)?"
                     r"|eui\.[0-9A-Fa-f]{16}|naa\.[0-9A-Fa-f]{16,32})$")
_PORTAL_RE = re.compile(r"^(\d{1,3}(\.\d{1,3}){3}|\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*)"
                        r":\d{1,5}(,\d{1,5})?$")
_HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.:-]{0,252}[A-Za-z0-9])?$")
_PATH_RE = re.compile(r"^(/[A-Za-z0-9_.+-]+)+/?$")
_DOMAIN_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def device(value: str) -> str:
    """A host network device named after a Neutron id (tap/qbr/qvb/qvo/brq + 11 characters)."""
    text = str(value)
    if not _DEVICE_RE.match(text):
        raise BadInput(f"refusing device name {value!r}: not tap|qbr|qvb|qvo|brq followed by "
                       f"11 characters of a Neutron id")
    return text


def iqn(value: str) -> str:
    text = str(value)
    if not _IQN_RE.match(text):
        raise BadInput(f"refusing iSCSI target name {value!r}: not an iqn./eui./naa. name")
    return text


def portal(value: str) -> str:
    text = str(value)
    if not _PORTAL_RE.match(text):
        raise BadInput(f"refusing iSCSI portal {value!r}: not ADDRESS:PORT")
    return text


def hostname(value: str) -> str:
    """A compute host's name or address as Nova and SSH know it."""
    text = str(value)
    if not _HOST_RE.match(text) or ".." in text:
        raise BadInput(f"invalid host name {value!r}")
    return text


def domain_name(value: str) -> str:
    text = str(value)
    if not _DOMAIN_RE.match(text):
        raise BadInput(f"refusing libvirt domain name {value!r}")
    return text


def absolute_path(value: str, what: str = "path") -> str:
    """A normalised absolute path of plain components (no `..`, `.`, spaces or shell characters)."""
    text = str(value).rstrip("/") or "/"
    parts = text.split("/")[1:]
    if not _PATH_RE.match(text) or any(p in ("", ".", "..") for p in parts):
        raise BadInput(f"refusing {what} {value!r}: not a plain absolute path")
    return text
