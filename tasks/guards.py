"""Refuse to purge what should not be purged: healthy instances, unless forced."""

from novapurge import keys
from novapurge.errors import Refused
from novapurge.tasks.base import PurgeTask

HEALTHY_STATES = ("active", "stopped")


def unreachable_by_nova(facts: dict) -> bool:
    """Nova's API cannot see the instance: no instance mapping, or the API answered 404."""
    api = facts.get("api") or {}
    return bool((facts.get("api_db") and facts.get("mapping") is None)
                or (api and not api.get("error") and api.get("server") is None))


def check_guards(facts: dict, force: bool) -> None:
    """Raise Refused when the instance looks healthy and `force` is not given."""
    instance = facts["instance"]
    healthy = (instance.get("vm_state") in HEALTHY_STATES and not instance.get("task_state")
               and not facts.get("faults") and not unreachable_by_nova(facts))
    if healthy and not force:
        raise Refused(f"instance {facts['vm_uuid']} looks healthy (vm_state "
                      f"{instance.get('vm_state')}, no task_state, no fault): use `nova delete`, "
                      f"or --force if you are sure")


class GuardInstance(PurgeTask):
    """Check the guards again inside the flow (a resumed or remote run re-checks them).

    Reversion: none (changes nothing).
    """

    default_provides = keys.GUARDED

    def __init__(self, vm_uuid, purge_id, force=False, **kwargs):
        super().__init__(vm_uuid, purge_id, inject={"force": force}, **kwargs)

    def execute(self, facts, force):
        check_guards(facts, force)
        return True
