"""Fault points for recovery testing: die or fail at a named place inside a purge.

`NOVAPURGE_FAULTS="kill@SoftDeleteInstance:after-change,fail@ReleaseQuotaUsage:before-change"`
makes the process SIGKILL itself, or a step raise, at that point. Points: `start` (the step's
RUNNING state is journaled), `before-change` (its before-state is in the ledger), `after-change`
(the change is made, not yet recorded), `end` (its SUCCESS is journaled). `fail` works inside a
step only (before-change, after-change): at the boundaries TaskFlow's listeners swallow errors.

A third part narrows an entry to one VM of a batch: `fail@UnplugVif:before-change:<uuid>` (a
prefix of the instance uuid is enough); an entry without it acts on every VM, and an entry for a
VM wins over one for every VM at the same point.
Meant for tests and drills, never production.
"""

import os
import re
import signal

ENV = "NOVAPURGE_FAULTS"
POINTS = ("start", "before-change", "after-change", "end")
_VM_PREFIX = re.compile(r"^[0-9a-f][0-9a-f-]{0,35}$")


class InjectedFault(RuntimeError):
    """Raised by a `fail@` fault point."""


def _parse(text: str) -> dict:
    """{(step, point, vm prefix or None): action}."""
    faults = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        action, _, where = item.partition("@")
        step, _, rest = where.partition(":")
        point, _, vm = rest.partition(":")
        if action not in ("kill", "fail") or point not in POINTS or not step or \
                (action == "fail" and point in ("start", "end")) or \
                (vm and not _VM_PREFIX.match(vm.lower())):
            raise ValueError(f"bad {ENV} entry {item!r}: want kill@Step:{'|'.join(POINTS)} or "
                             f"fail@Step:before-change|after-change, optionally :VM-UUID[-PREFIX]")
        faults[(step, point, vm.lower() or None)] = action
    return faults


def check() -> None:
    """Reject a malformed NOVAPURGE_FAULTS before anything runs."""
    _parse(os.environ.get(ENV, ""))


def hit(step: str, point: str, vm_uuid: str | None = None) -> None:
    """Act on the fault configured for (step, point) of this VM (or of every VM), if any."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    faults = _parse(spec)
    action = next((a for (s, p, vm), a in faults.items() if (s, p) == (step, point)
                   and vm is not None and vm_uuid is not None and vm_uuid.startswith(vm)),
                  faults.get((step, point, None)))
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "fail":
        raise InjectedFault(f"injected failure at {step}:{point}"
                            + (f" of {vm_uuid}" if vm_uuid else ""))
