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

