"""`novapurge conductor`: TaskFlow conductors that claim purge jobs and run them.

A `PurgeConductor` is TaskFlow's non-blocking conductor (up to `jobs` jobs at once, each in its
own engine) with what a purge needs around each job:

- the flow detail comes straight from the journal by the job's `flow_uuid` (not by loading the
  whole purge's logbook);
- the VM's lock is held while its engine runs; a lock left by a dead conductor is taken over
  (the jobboard claim, which expired, is the proof that its holder is gone);
- the step listener reports transitions and fires fault points, as in a local purge;
- a finalize step that gave up leaves the purge SUSPENDED (`novapurge resume` continues it) and
  the job is consumed; a job whose flow already ended is consumed without running.

Claims expire unless renewed (distributed.board): a conductor killed mid-job loses its claim
and another one resumes the VM from the journal, re-running at most the step that was in
flight. `stop()` (SIGTERM/SIGINT) suspends running engines after their current steps; their
jobs are abandoned, so another conductor continues them at once.
"""

import logging
import os
import socket
import threading
import time
from concurrent import futures

from taskflow import states
from taskflow.conductors.backends import impl_nonblocking

from novapurge.errors import Refused
from novapurge.flows.batch import STEP_THREADS_PER_VM
from novapurge.flows.listeners import StepListener
from novapurge.flows.run import engine_outcome

LOG = logging.getLogger(__name__)
DEFAULT_JOBS = 4
REFUSED_BACKOFF_S = 2.0   # before abandoning a job whose VM another live process holds


def conductor_name(prefix: str | None = None) -> str:
    """Unique per process: the owner recorded on the claims it makes."""
    return f"{prefix or 'novapurge'}@{socket.getfqdn()}:{os.getpid()}"


class PurgeConductor(impl_nonblocking.NonBlockingConductor):
    """Claims purge jobs from the board and runs each VM's flow with the process's drivers."""

    def __init__(self, name, board, purger, jobs=DEFAULT_JOBS, wait_timeout=0.5,
                 max_jobs=None):
        self._purger = purger
        self._max_jobs = max_jobs     # claim no more than this, stop once they are done
        self._steps = futures.ThreadPoolExecutor(max(1, jobs) * STEP_THREADS_PER_VM,
                                                 thread_name_prefix="step")
        super().__init__(name, board, persistence=purger.journal.backend, engine="parallel",
                         engine_options={"executor": self._steps}, wait_timeout=wait_timeout,
                         max_simultaneous_jobs=jobs)
        self._running = {}            # job uuid -> engine
        self._running_lock = threading.Lock()
        self.outcomes = []            # (job uuid, Outcome) of the jobs this conductor ran
        self._finished = 0
        board.on_lost = self._claim_lost

    # -- TaskFlow's hooks ------------------------------------------------------------------
    def _can_claim_more_jobs(self, job):
        if self._max_jobs is not None and self._jobboard.claims_made >= self._max_jobs:
            return False
        return super()._can_claim_more_jobs(job)

    def _flow_detail_from_job(self, job):
        flow_uuid = (job.details or {}).get("flow_uuid")
        if not flow_uuid:
            return super()._flow_detail_from_job(job)
        return self._purger.journal.flow(flow_uuid)

    def _engine_from_job(self, job):
        engine = super()._engine_from_job(job)
        with self._running_lock:
            self._running[job.uuid] = engine
        return engine

    def _listeners_from_job(self, job, engine):
        return super()._listeners_from_job(job, engine) + [StepListener(engine, _log_step)]

    def _dispatch_job(self, job):
        try:
            return self._run_job(job)
        finally:
            with self._running_lock:
                self._finished += 1
                done = self._max_jobs is not None and self._finished >= self._max_jobs
            if done:
                self.stop()

    def _run_job(self, job):
        details = job.details or {}
        vm_uuid, purge_id = details.get("vm_uuid"), details.get("purge_id")
        ended = self._purger.journal.flow(details["flow_uuid"]).state
        if ended in (states.SUCCESS, states.REVERTED):
            LOG.info("job %s: %s already %s; consuming it", job.uuid, vm_uuid, ended)
            return True
        LOG.info("job %s: running the purge of %s (purge %s)", job.uuid, vm_uuid, purge_id)
        try:
            with self._purger.vm_lock(vm_uuid, purge_id, take_over=True):
                consume = super()._dispatch_job(job)
        except Refused as error:
            LOG.warning("job %s: %s; leaving the job to that process", job.uuid, error)
            time.sleep(REFUSED_BACKOFF_S)
            return False
        finally:
            with self._running_lock:
                engine = self._running.pop(job.uuid, None)
        if engine is not None:
            outcome = engine_outcome(engine, vm_uuid)
            self.outcomes.append((job.uuid, outcome))
            LOG.info("job %s: %s %s%s", job.uuid, vm_uuid, outcome.result,
                     f" at {outcome.failed_step}: {outcome.message}" if outcome.failed_step
                     else "")
        return consume

    def _claim_lost(self, job):
        """Another conductor owns the job now: stop this engine after its current steps."""
        with self._running_lock:
            engine = self._running.get(job.uuid)
        if engine is not None:
            LOG.error("job %s: claim lost; suspending its engine", job.uuid)
            engine.suspend()

    def close(self):
        super().close()
        self._steps.shutdown(wait=True)


def _log_step(vm_uuid, step, state):
    LOG.info("%s %s %s", vm_uuid, step, state)
