"""Engine listeners: progress for the operator, fault points at step boundaries."""

from taskflow import states
from taskflow.listeners import base
from taskflow.types import notifier

from novapurge import faults
from novapurge.flows.naming import step_of, vm_of

HOLD_STEP = "PassPointOfNoReturn"  # where `purge --hold` suspends the purge


class StepListener(base.Listener):
    """Tells `report(vm_uuid, step, state)` of every step transition; fires boundary faults.

    The transition is already journaled when listeners hear of it, so a `kill@Step:start` fault
    dies with the step RUNNING in the journal and `kill@Step:end` with it SUCCESS.
    """

    def __init__(self, engine, report=None):
        super().__init__(engine, task_listen_for=(notifier.Notifier.ANY,), flow_listen_for=(),
                         retry_listen_for=())
        self._report = report

    def _task_receiver(self, state, details):
        name = details["task_name"]
        if self._report is not None:
            self._report(vm_of(name), step_of(name), state)
        if state == states.RUNNING:
            faults.hit(step_of(name), "start", vm_of(name))
        elif state == states.SUCCESS:
            faults.hit(step_of(name), "end", vm_of(name))
            if step_of(name) == HOLD_STEP and (details.get("result") or {}).get("hold"):
                self._engine.suspend()  # `purge --hold`: stop before anything irreversible
