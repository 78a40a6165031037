"""Many VMs at once on one machine: one TaskFlow engine per VM, run by a bounded pool.

Each VM of a batch is its own FlowDetail and its own engine, so one VM's failure reverts (or
suspends) that VM only. At most `parallel` VMs run at once; their steps share one executor. The
drivers (one runner per compute host, the Nova DB pools, the cloud session) are the process's
PurgeContext, shared by every engine; a host's runner bounds the commands in flight on that host
(`--host-limit`, the SSH channels of its one connection).

SIGTERM or SIGINT stops the batch: running engines are suspended after the steps under way, VMs
not started yet are left for `novapurge resume`.
"""

import contextlib
import dataclasses
import logging
import signal
import threading
from concurrent import futures

from novapurge.errors import BadInput, NovapurgeError

LOG = logging.getLogger(__name__)

DEFAULT_PARALLEL = 8        # VMs purged at once
MAX_PARALLEL = 512
STEP_THREADS_PER_VM = 3     # steps of one VM that may run at once (its flow is a graph)
MAX_STEP_THREADS = 512
NOT_STARTED = "not-started"


@dataclasses.dataclass
class Outcome:
    """How one VM of a purge, resume or rollback ended."""

    vm_uuid: str
    result: str   # succeeded | reverted | suspended | revert-failed | refused | nothing-to-do |
    #               not-started | error
    message: str = ""
    failed_step: str | None = None
    error: Exception | None = dataclasses.field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict:
        return {"vm_uuid": self.vm_uuid, "result": self.result, "message": self.message,
                "failed_step": self.failed_step}


def check_parallel(parallel) -> int:
    if not isinstance(parallel, int) or not 1 <= parallel <= MAX_PARALLEL:
        raise BadInput(f"--parallel must be between 1 and {MAX_PARALLEL}, not {parallel!r}")
    return parallel


class Batch:
    """Runs `work(vm_uuid, batch) -> Outcome` for VMs, at most `parallel` at once.

    `progress` (see novapurge.progress) hears of each VM's start, steps and end; without it,
    `report(vm_uuid, step, state)` hears of the steps. The steps of every engine of the batch run
    on `step_executor`; `engine_options` are what each engine is loaded with.
    """

    def __init__(self, parallel: int = DEFAULT_PARALLEL, progress=None, report=None):
        self.parallel = check_parallel(parallel)
        self.progress = progress
        self._report = report
        self._stopping = False
        self._lock = threading.Lock()
        self._engines = {}
        self.step_executor = futures.ThreadPoolExecutor(
            min(MAX_STEP_THREADS, STEP_THREADS_PER_VM * self.parallel),
            thread_name_prefix="step")
        self.engine_options = {"engine": "parallel", "executor": self.step_executor}

    # -- what the work of one VM uses ---------------------------------------------------------
    @property
    def stopping(self) -> bool:
        return self._stopping

    def report(self, vm_uuid, step, state) -> None:
        """A step transition (StepListener's callback)."""
        if self.progress is not None:
            self.progress.step(vm_uuid, step, state)
        elif self._report is not None:
            self._report(vm_uuid, step, state)

    @contextlib.contextmanager
    def running(self, vm_uuid: str, engine):
        """Register a VM's engine while it runs, so that stop() can suspend it.

        Yields False (do not run it) once the batch is stopping.
        """
        with self._lock:
            if self._stopping:
                go = False
            else:
                self._engines[vm_uuid] = engine
                go = True
        try:
            yield go
        finally:
            with self._lock:
                self._engines.pop(vm_uuid, None)

    @staticmethod
    def not_started(vm_uuid: str) -> Outcome:
        return Outcome(vm_uuid, NOT_STARTED, "the batch was stopped before this VM started: "
                       "`novapurge resume` starts it")

    def stop(self) -> None:
        """Start no more VMs; suspend the running ones after the steps under way."""
        with self._lock:
            self._stopping = True
            engines = list(self._engines.values())
        for engine in engines:
            engine.suspend()

    # -- running ------------------------------------------------------------------------------
    def run(self, vm_uuids, work) -> list:
        """The outcome of every VM, in the order given.

        With a single VM, an error raised before its engine ran (a guard's refusal, bad input)
        propagates as it is; in a batch it becomes that VM's `refused` (or `error`) outcome and
        the other VMs go on.
        """
        vm_uuids = list(vm_uuids)
        single = len(vm_uuids) == 1
        if self.progress is not None:
            self.progress.begin(len(vm_uuids))
        try:
            with _stop_on_signals(self.stop), \
                    futures.ThreadPoolExecutor(self.parallel, thread_name_prefix="vm") as pool:
                jobs = [pool.submit(self._one, vm_uuid, work, single) for vm_uuid in vm_uuids]
                _wait_interruptibly(jobs)
                return [job.result() for job in jobs]
        finally:
            self.step_executor.shutdown(wait=True)
            if self.progress is not None:
                self.progress.end()

    def _one(self, vm_uuid, work, single) -> Outcome:
        if self._stopping:
            outcome = self.not_started(vm_uuid)
        else:
            if self.progress is not None:
                self.progress.vm_started(vm_uuid)
            try:
                outcome = work(vm_uuid, self)
            except NovapurgeError as error:
                if single:
                    raise
                outcome = Outcome(vm_uuid, "refused", str(error), error=error)
            except Exception as error:  # a bug or a lost journal: this VM only
                if single:
                    raise
                LOG.error("%s: unexpected %s: %s", vm_uuid, type(error).__name__, error,
                          exc_info=LOG.isEnabledFor(logging.DEBUG))
                outcome = Outcome(vm_uuid, "error", f"unexpected {type(error).__name__}: "
                                  f"{error}", error=error)
        if self.progress is not None:
            self.progress.vm_done(outcome)
        return outcome


def _wait_interruptibly(jobs) -> None:
    """Wait for every job, in slices, so the main thread runs signal handlers meanwhile."""
    pending = set(jobs)
    while pending:
        _done, pending = futures.wait(pending, timeout=0.5)


@contextlib.contextmanager
def _stop_on_signals(stop):
    """SIGTERM/SIGINT call `stop` (from the main thread only; elsewhere signals are left alone)."""
    def handler(signum, _frame):
        LOG.warning("signal %s: suspending the running VMs after their current steps; VMs not "
                    "started are left for `novapurge resume`", signum)
        stop()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def summarize(outcomes) -> dict:
    """{result: count}, in a stable order."""
    counts = {}
    for outcome in outcomes:
        counts[outcome.result] = counts.get(outcome.result, 0) + 1
    return dict(sorted(counts.items()))
