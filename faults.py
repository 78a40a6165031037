"""Fault points for recovery testing: die or fail at a named place inside a purge.

`NOVAPURGE_FAULTS="kill@SoftDeleteInstance:after-change,fail@ReleaseQuotaUsage:before-change"`
makes the process SIGKILL itself, or a step raise, at that point. Points: `start` (the step's
RUNNING state is journaled), `before-change` (its before-state is in the ledger), `after-change`
(the change is made, not yet recorded), `end` (its SUCCESS is journaled). `fail` works inside a
step only (before-change, after-change): at the boundaries TaskFlow's listeners swallow errors.
Meant for tests and drills, never production.
"""

import os
import signal

ENV = "NOVAPURGE_FAULTS"
POINTS = ("start", "before-change", "after-change", "end")


class InjectedFault(RuntimeError):
    """Raised by a `fail@` fault point."""


def _parse(text: str) -> dict:
    faults = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        action, _, where = item.partition("@")
        step, _, point = where.partition(":")
        if action not in ("kill", "fail") or point not in POINTS or not step or \
                (action == "fail" and point in ("start", "end")):
            raise ValueError(f"bad {ENV} entry {item!r}: want kill@Step:{'|'.join(POINTS)} or "
                             f"fail@Step:before-change|after-change")
        faults[(step, point)] = action
    return faults


def check() -> None:
    """Reject a malformed NOVAPURGE_FAULTS before anything runs."""
    _parse(os.environ.get(ENV, ""))


def hit(step: str, point: str) -> None:
    """Act on the fault configured for (step, point), if any."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    action = _parse(spec).get((step, point))
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "fail":
        raise InjectedFault(f"injected failure at {step}:{point}")
