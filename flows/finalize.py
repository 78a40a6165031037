"""A finalize step that gave up suspends the purge instead of reverting it (DESIGN §1).

TaskFlow reverts only the failed step's own subflow (its retry controller said REVERT; the step
is irreversible, so nothing is undone) and ends the flow REVERTED. Past the point of no return
that is wrong: here the flow is marked SUSPENDED, the finalize atoms are made runnable again,
and the step and reason are kept in the flow's metadata for `status`; `resume` continues.
"""

from taskflow import atom as tf_atom
from taskflow import retry, states

from novapurge.flows.naming import step_of
from novapurge.tasks.markers import PassPointOfNoReturn


def _atoms(engine) -> list:
    return [n for n in engine.compilation.execution_graph.nodes if isinstance(n, tf_atom.Atom)]


def finalize_atoms(engine) -> list:
    """The atoms after the point of no return: irreversible steps and their retry controllers."""
    return [a for a in _atoms(engine) if isinstance(a, retry.Retry)
            or (not getattr(a, "reversible", True) and not isinstance(a, PassPointOfNoReturn))]


def suspend_failed_finalize(engine) -> dict | None:
    """{step, reason} when a finalize step gave up and the purge was suspended, else None."""
    storage = engine.storage
    if storage.get_flow_state() not in (states.REVERTED, states.FAILURE):
        return None
    point = next((a for a in _atoms(engine) if isinstance(a, PassPointOfNoReturn)), None)
    if point is None or storage.get_atom_state(point.name) != states.SUCCESS:
        return None
    failures = storage.get_execute_failures()
    atoms = finalize_atoms(engine)
    failed = next(((a.name, failures[a.name]) for a in atoms if a.name in failures), None)
    for atom in atoms:
        if storage.get_atom_state(atom.name) != states.SUCCESS:
            storage.reset(atom.name)
            if isinstance(atom, retry.Retry):
                storage.cleanup_retry_history(atom.name, states.PENDING)
        storage.set_atom_intention(atom.name, states.EXECUTE)
    reason = failed[1].exception_str.splitlines()[0][:300] if failed else "a finalize step failed"
    suspended = {"step": step_of(failed[0]) if failed else None, "atom": failed and failed[0],
                 "reason": reason}
    storage.update_flow_metadata({"suspended": suspended})
    storage.set_flow_state(states.SUSPENDED)
    return suspended
