"""The purge flow factory: what TaskFlow saves in the journal and calls again on resume.

`purge_flow(vm_uuid, options)` must need nothing from the store (per-VM values are injected),
provide the documented keys, name its atoms `Step:vm_uuid`, drop the steps of skipped groups, and
build the very same flow from the same arguments.
"""

import json

import pytest

from novapurge import keys
from novapurge.flows.purge import purge_flow, steps_in_order, tasks_and_links

VM = "6c1e7d0a-2b9f-4c38-9a51-0d3f7e8b1c22"
OTHER = "0a9b8c7d-6e5f-4a3b-2c1d-0e9f8a7b6c5d"
STEPS = ["DiscoverInstance", "GuardInstance", "DeleteDbAllocations", "SoftDeleteInstance",
         "ReleaseQuotaUsage", "QueueMappingForDelete", "PassPointOfNoReturn"]
GROUP_STEPS = {"placement": "DeleteDbAllocations", "db": "SoftDeleteInstance",
               "quota": "ReleaseQuotaUsage", "mapping": "QueueMappingForDelete"}


def _options(**extra):
    return {"purge_id": "11111111-2222-3333-4444-555555555555", "force": False, "skip": [],
            **extra}


def _steps(flow):
    return [task.name.split(":")[0] for task in steps_in_order(flow)]


def _tasks(flow):
    return tasks_and_links(flow)[0]


def _links(flow):
    """(step before, step after) of every ordering link between two tasks of the flow."""
    return {(u.name.split(":")[0], v.name.split(":")[0]) for u, v in tasks_and_links(flow)[1]}


def test_requires_nothing_and_provides_the_store_keys():
    flow = purge_flow(VM, _options())
    assert flow.requires == set()
    assert flow.provides == {keys.FACTS, keys.GUARDED, keys.PASSED_NO_RETURN}
    assert keys.PASSED_NO_RETURN == "passed_point_of_no_return"
    assert {keys.FACTS, keys.GUARDED} == {"facts", "guarded"}


def test_atoms_are_named_step_colon_vm_and_ordered():
    flow = purge_flow(VM, _options())
    assert _steps(flow) == STEPS
    assert sorted(task.name for task in _tasks(flow)) == sorted(f"{s}:{VM}" for s in STEPS)
    links = _links(flow)
    chain = ["GuardInstance", "SoftDeleteInstance", "ReleaseQuotaUsage", "QueueMappingForDelete",
             "PassPointOfNoReturn"]
    assert {("DiscoverInstance", "GuardInstance"), ("GuardInstance", "DeleteDbAllocations"),
            ("DeleteDbAllocations", "PassPointOfNoReturn")} | set(zip(chain, chain[1:])) <= links


def test_per_vm_values_are_injected_not_required():
    flow = purge_flow(VM, _options(force=True))
    for task in _tasks(flow):
        assert task.inject[keys.VM_UUID] == VM
        assert task.inject[keys.PURGE_ID] == _options()["purge_id"]
    guard = next(t for t in _tasks(flow) if t.name.startswith("GuardInstance:"))
    assert guard.inject["force"] is True


def test_only_the_point_of_no_return_is_irreversible():
    flow = purge_flow(VM, _options())
    irreversible = [t.name.split(":")[0] for t in _tasks(flow) if not t.reversible]
    assert irreversible == ["PassPointOfNoReturn"]


@pytest.mark.parametrize("skip", [["quota"], ["placement"], ["mapping"], ["quota", "mapping"],
                                  ["db", "quota", "mapping"]])
def test_skipped_groups_drop_their_steps(skip):
    flow = purge_flow(VM, _options(skip=skip))
    steps = _steps(flow)
    kept = [s for s in STEPS if s not in {GROUP_STEPS[g] for g in skip}]
    assert [s for s in steps if s != "NoteSkippedGroups"] == kept
    assert "NoteSkippedGroups" in steps
    note = next(t for t in _tasks(flow) if t.name.startswith("NoteSkippedGroups:"))
    assert note.inject["skipped_groups"] == sorted(skip)
    assert flow.requires == set()
    # What stays is still ordered: the point of no return comes after every change kept.
    assert ("GuardInstance", "NoteSkippedGroups") in _links(flow)
    order = {s: i for i, s in enumerate(steps)}
    assert all(order[s] < order["PassPointOfNoReturn"] for s in kept[:-1])


def test_no_skip_means_no_note():
    assert "NoteSkippedGroups" not in _steps(purge_flow(VM, _options()))


def test_same_arguments_build_the_same_flow():
    options = _options(skip=["quota"])
    first, second = purge_flow(VM, options), purge_flow(VM, json.loads(json.dumps(options)))
    assert [t.name for t in steps_in_order(first)] == [t.name for t in steps_in_order(second)]
    assert _links(first) == _links(second)
    assert first.name == second.name == f"purge:{VM}"
    assert options == _options(skip=["quota"])  # the factory did not change its arguments
    other = purge_flow(OTHER, options)
    assert {t.name.split(":", 1)[1] for t in steps_in_order(other)} == {OTHER}
