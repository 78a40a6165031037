"""What every purge step shares: its stable name, the store inputs it is given, its ledger."""

import collections

from taskflow import task
from taskflow.types import sets

from novapurge import context, faults, keys
from novapurge.flows.naming import atom_name, vm_of


class PurgeTask(task.Task):
    """A step of one VM's purge.

    Subclasses set `group` (what `--skip` names) and implement execute/revert with explicit
    parameters named after store keys. No state is kept on `self` between execute and revert.
    """

    group = None
    reversible = True

    def __init__(self, vm_uuid: str, purge_id: str, detail: str = "", **kwargs):
        inject = {keys.VM_UUID: vm_uuid, keys.PURGE_ID: purge_id}
        inject.update(kwargs.pop("inject", {}))
        super().__init__(name=atom_name(self.step(), vm_uuid, detail), inject=inject, **kwargs)

    @classmethod
    def step(cls) -> str:
        return cls.__name__

    # TaskFlow derives an atom's inputs from its execute/revert signatures (inspect.signature)
    # for every atom built; a batch builds ~17 per VM, and they depend only on the class and the
    # names injected, so each mapping is derived once.
    _arg_mappings: dict = {}

    def _build_arg_mapping(self, executor, requires=None, rebind=None, auto_extract=True,
                           ignore_list=None):
        if requires is not None or rebind is not None:
            return super()._build_arg_mapping(executor, requires, rebind, auto_extract,
                                              ignore_list)
        key = (type(self), executor.__name__, auto_extract, tuple(ignore_list or ()),
               frozenset(self.inject or ()))
        mapping = PurgeTask._arg_mappings.get(key)
        if mapping is None:
            mapping = PurgeTask._arg_mappings[key] = super()._build_arg_mapping(
                executor, requires, rebind, auto_extract, ignore_list)
        rebound, required, optional = mapping
        return collections.OrderedDict(rebound), sets.OrderedSet(required), \
            sets.OrderedSet(optional)

    @property
    def drivers(self):
        return context.current()

    def ledger(self, purge_id: str, vm_uuid: str):
        return context.current().ledger.bind(purge_id, vm_uuid)

    def fault(self, point: str) -> None:
        faults.hit(self.step(), point, vm_of(self.name))

    def delete_recorded(self, ledger, resource: str, current, delete, target: str) -> dict:
        """An irreversible API delete: the resource as it was, then whether it was deleted
        (a resource already gone, None or a 404, counts as done)."""
        ledger.record_before(self.name, resource, current, target=target)
        self.fault("before-change")
        deleted = current is not None and delete()
        self.fault("after-change")
        ledger.record_after(self.name, resource, {"deleted": deleted, "already_gone": not deleted},
                            target=target)
        return {"deleted": deleted}


class HostTask(PurgeTask):
    """A step on the instance's compute host, through the process's one runner for that host."""

    group = "host"

    def runner(self, facts):
        return self.drivers.hosts.runner(facts["host"]["name"])

    @staticmethod
    def target(facts) -> str:
        return f"host:{facts['host']['name']}"


class FinalizeTask(PurgeTask):
    """A step after the point of no return on one API resource: idempotent and irreversible.

    A failure here never reverts the reversible phase: the purge is suspended (flows.run).
    """

    reversible = False

    def __init__(self, vm_uuid, purge_id, resource_id, **kwargs):
        super().__init__(vm_uuid, purge_id, detail=resource_id,
                         inject={"resource_id": resource_id}, **kwargs)
