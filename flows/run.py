"""Running purge flows with TaskFlow engines: start, resume, roll back, and read their status.

One LogBook per `purge` invocation (its uuid is the purge id), one FlowDetail per VM, created from
the `purge_flow` factory so that `resume` rebuilds the same flow from the journal alone.
"""

import contextlib
from concurrent import futures
import dataclasses
import datetime
import logging
import signal

import taskflow.engines
from taskflow import atom as tf_atom
from taskflow import states
from taskflow.persistence import models

from novapurge import context, validate
from novapurge.errors import BadInput, Refused
from novapurge.flows.listeners import StepListener
from novapurge.flows.naming import step_of
from novapurge.flows.purge import purge_flow, steps_in_order
from novapurge.tasks.discovery import discover_facts
from novapurge.tasks.guards import check_guards
from novapurge.tasks.markers import PassPointOfNoReturn

LOG = logging.getLogger(__name__)
STEP_THREADS = 4  # steps of one VM that may run at once (the flow is a graph)
_OUTCOME = {states.SUCCESS: "succeeded", states.REVERTED: "reverted",
            states.SUSPENDED: "suspended", states.FAILURE: "revert-failed"}


@dataclasses.dataclass
class Outcome:
    vm_uuid: str
    result: str          # succeeded | reverted | suspended | revert-failed | nothing-to-do
    message: str = ""
    failed_step: str | None = None


def vm_of_detail(flow_detail) -> str:
    return flow_detail.name.split(":", 1)[1]


class Purger:
    """The purge operations on one journal and one set of Nova databases."""

    def __init__(self, journal, novadb, report=None):
        self.journal = journal
        self.novadb = novadb
        self.report = report
        # One pool for every engine of this process: an engine that owns its pool pays a
        # worker-shutdown wait (about a second) at its end.
        self._executor = futures.ThreadPoolExecutor(STEP_THREADS, thread_name_prefix="step")
        self._engine_options = {"engine": "parallel", "executor": self._executor}
        context.install(context.PurgeContext(novadb=novadb, ledger=journal.ledger))

    # -- read-only ---------------------------------------------------------------------------
    def preflight(self, vm_uuid: str, force: bool) -> dict | None:
        """The facts of a VM fit to purge; None when a purge already completed it."""
        holder = self.journal.locks.holder(vm_uuid)
        if holder is not None:
            state = "running" if holder.alive else "interrupted"
            raise Refused(f"purge {holder.purge_id} of {vm_uuid} is {state}: "
                          + ("wait for it" if holder.alive else
                             f"`novapurge resume {holder.purge_id}` or `rollback` it first"))
        done = self.purged_by(vm_uuid)
        if done:
            return None
        facts = discover_facts(self.novadb, vm_uuid)
        check_guards(facts, force)
        return facts

    def purged_by(self, vm_uuid: str) -> str | None:
        """The purge that completed `vm_uuid` (and was not rolled back since), if any."""
        for purge_id in dict.fromkeys(r["purge_id"] for r in self.journal.ledger.rows(
                vm_uuid=vm_uuid, atom=f"{PassPointOfNoReturn.step()}:{vm_uuid}")):
            for fd in self.journal.book(purge_id):
                if vm_of_detail(fd) == vm_uuid and fd.state == states.SUCCESS:
                    return purge_id
        return None

    def plan(self, vm_uuids, force=False, skip=()):
        """Per VM: the steps the purge would run and what each would change."""
        plans = []
        for vm_uuid in vm_uuids:
            facts = self.preflight(vm_uuid, force)
            if facts is None:
                plans.append({"vm_uuid": vm_uuid, "already_purged_by": self.purged_by(vm_uuid),
                              "steps": []})
                continue
            flow = purge_flow(vm_uuid, {"purge_id": "plan", "force": force, "skip": list(skip)})
            plans.append({"vm_uuid": vm_uuid, "facts": facts, "flow": flow,
                          "steps": describe_steps(flow, facts)})
        return plans

    # -- changing ----------------------------------------------------------------------------
    def purge(self, vm_uuids, force=False, skip=(), on_start=None):
        """Start a purge of `vm_uuids` (already validated); returns (purge_id, outcomes)."""
        todo, outcomes = [], []
        for vm_uuid in vm_uuids:
            if self.preflight(vm_uuid, force) is None:
                outcomes.append(Outcome(vm_uuid, "nothing-to-do",
                                        f"already purged by {self.purged_by(vm_uuid)}"))
            else:
                todo.append(vm_uuid)
        if not todo:
            return None, outcomes
        book = models.LogBook("novapurge")
        book.meta = {"operator": self.journal.ledger.actor.operator,
                     "ticket": self.journal.ledger.actor.ticket, "vms": list(vm_uuids),
                     "force": force, "skip": list(skip),
                     "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat()}
        self.journal.save(book)
        if on_start:
            on_start(book.uuid)
        options = {"purge_id": book.uuid, "force": bool(force), "skip": list(skip)}
        # Every VM's flow detail is journaled before the first runs, so `resume` after a crash
        # finds them all.
        engines = [(vm_uuid, taskflow.engines.load_from_factory(
            purge_flow, factory_args=[vm_uuid], factory_kwargs={"options": options},
            book=book, backend=self.journal.backend, **self._engine_options))
            for vm_uuid in todo]
        for vm_uuid, engine in engines:
            outcomes.append(self._run(engine, vm_uuid, book.uuid))
        return book.uuid, outcomes

    def _details(self, purge_id: str) -> list:
        """The flow details of a purge, once the databases its facts name are reachable."""
        details = list(self.journal.book(purge_id))
        for fd in details:
            facts = next((ad.results for ad in fd if ad.name.startswith("DiscoverInstance:")
                          and isinstance(ad.results, dict)), None)
            if facts and (facts.get("cell") or facts.get("api_db")) and self.novadb.api is None:
                raise BadInput(f"{vm_of_detail(fd)} was found through an API database: give "
                               f"--api-db (or --nova-conf) to resume or roll back purge {purge_id}")
        return details

    def resume(self, purge_id: str, take_over=False):
        """Continue every unfinished VM of a purge from where the journal says it stopped."""
        outcomes = []
        for fd in self._details(purge_id):
            vm_uuid = vm_of_detail(fd)
            if fd.state in (states.SUCCESS, states.REVERTED):
                outcomes.append(Outcome(vm_uuid, "nothing-to-do", f"already {fd.state}"))
                continue
            engine = taskflow.engines.load_from_detail(fd, backend=self.journal.backend,
                                                       **self._engine_options)
            outcomes.append(self._run(engine, vm_uuid, purge_id, take_over))
        return outcomes

    def rollback(self, purge_id: str, take_over=False):
        """Revert every VM of a purge to the state it was found in (refused past no return)."""
        outcomes = []
        for fd in self._details(purge_id):
            vm_uuid = vm_of_detail(fd)
            if fd.state == states.REVERTED:
                outcomes.append(Outcome(vm_uuid, "nothing-to-do", "already rolled back"))
                continue
            # The lock first: a refused rollback must leave the journal as it was.
            with self._vm_lock(vm_uuid, purge_id, take_over):
                engine = taskflow.engines.load_from_detail(fd, backend=self.journal.backend,
                                                           **self._engine_options)
                engine.compile()
                self._refuse_past_no_return(engine, fd, vm_uuid)
                engine.prepare()
                for atom in _atoms(engine):
                    engine.storage.set_atom_intention(atom.name, states.REVERT)
                outcomes.append(self._execute(engine, vm_uuid))
        return outcomes

    @staticmethod
    def _refuse_past_no_return(engine, flow_detail, vm_uuid):
        """Refuse when an irreversible step after the point of no return has started."""
        stored = {ad.name: ad.state for ad in flow_detail}
        for atom in _atoms(engine):
            if getattr(atom, "reversible", True) or isinstance(atom, PassPointOfNoReturn):
                continue
            if stored.get(atom.name) not in (states.PENDING, None):
                raise Refused(f"{vm_uuid} is past its point of no return: {step_of(atom.name)} "
                              f"ran and cannot be undone")

    @contextlib.contextmanager
    def _vm_lock(self, vm_uuid: str, purge_id: str, take_over=False):
        """Hold the VM's lock (taking over a dead holder of this purge) while running it."""
        previous = self.journal.locks.acquire(vm_uuid, purge_id, take_over_remote=take_over)
        if previous is not None and previous.machine != self.journal.locks.machine():
            self.journal.ledger.bind(purge_id, vm_uuid).note(
                f"TakeOverLock:{vm_uuid}", f"lock:{previous.acquired_at}", "taken-over",
                {"from_machine": previous.machine, "from_pid": previous.pid})
        try:
            yield
        finally:
            self.journal.locks.release(vm_uuid)

    def _run(self, engine, vm_uuid: str, purge_id: str, take_over=False) -> Outcome:
        with self._vm_lock(vm_uuid, purge_id, take_over):
            return self._execute(engine, vm_uuid)

    def _execute(self, engine, vm_uuid: str) -> Outcome:
        with StepListener(engine, self.report), _suspend_on_signals(engine):
            try:
                engine.run()
            except Exception as error:  # the journal has the failure; report it
                LOG.debug("purge of %s stopped: %s", vm_uuid, error, exc_info=True)
        state = engine.storage.get_flow_state()
        failed = failed_step(engine.storage)
        return Outcome(vm_uuid, _OUTCOME.get(state, state.lower()),
                       failed[1] if failed else "", failed[0] if failed else None)

    def close(self):
        self._executor.shutdown(wait=True)

    # -- status ------------------------------------------------------------------------------
    def status(self, purge_id=None) -> list:
        books = [self.journal.book(purge_id)] if purge_id else self.journal.books()
        return [self._book_status(book) for book in books]

    def _book_status(self, book) -> dict:
        vms = []
        for fd in book:
            vm_uuid = vm_of_detail(fd)
            holder = self.journal.locks.holder(vm_uuid)
            state = flow_status(fd.state, holder if holder and holder.purge_id == book.uuid
                                else None)
            atoms = list(fd)
            failure = next(((step_of(a.name), f.exception_str.splitlines()[0][:300])
                            for a in atoms for f in (a.revert_failure, a.failure)
                            if f is not None), None)
            vms.append({"vm_uuid": vm_uuid, "state": state,
                        "steps_done": sum(a.state == states.SUCCESS for a in atoms),
                        "steps": len(atoms),
                        "failed_step": failure[0] if failure else None,
                        "reason": failure[1] if failure else None,
                        "skipped_groups": book.meta.get("skip", []),
                        "runner": None if holder is None else
                        {"machine": holder.machine, "pid": holder.pid}})
        overall = sorted({vm["state"] for vm in vms}) or ["EMPTY"]
        return {"purge_id": book.uuid, "state": overall[0] if len(overall) == 1 else "MIXED",
                "operator": book.meta.get("operator"), "ticket": book.meta.get("ticket"),
                "started_at": book.meta.get("started_at"), "vms": vms}


def _atoms(engine) -> list:
    """The tasks of a compiled engine (its execution graph also holds flow nodes)."""
    return [node for node in engine.compilation.execution_graph.nodes
            if isinstance(node, tf_atom.Atom)]


def flow_status(flow_state: str, holder) -> str:
    """What `status` shows for a VM: RUNNING only while its process lives, else INTERRUPTED."""
    if flow_state in (states.SUCCESS, states.REVERTED, states.SUSPENDED):
        return flow_state
    if flow_state == states.FAILURE:
        return "FAILED"
    return "RUNNING" if holder is not None and holder.alive else "INTERRUPTED"


def failed_step(storage):
    """(step, message) of the first execute or revert failure stored, if any."""
    for failures in (storage.get_revert_failures(), storage.get_execute_failures()):
        for name, failure in failures.items():
            return step_of(name), failure.exception_str.splitlines()[0][:300]
    return None


def describe_steps(flow, facts) -> list:
    """Every step of a flow in order, with what it would change for these facts."""
    rows = []
    for task in steps_in_order(flow):
        describe = getattr(task, "describe", None)
        rows.append({"step": step_of(task.name), "atom": task.name,
                     "group": task.group or "-", "reversible": task.reversible,
                     "changes": describe(facts) if describe else []})
    return rows


@contextlib.contextmanager
def _suspend_on_signals(engine):
    """SIGTERM/SIGINT stop the engine after the steps under way (the purge ends SUSPENDED)."""
    def handler(signum, _frame):
        LOG.warning("signal %s: suspending after the current step", signum)
        engine.suspend()
    try:
        previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def validate_vms(values) -> list:
    vms = list(dict.fromkeys(validate.vm_uuid(v) for v in values))
    if not vms:
        raise BadInput("no instance UUID given")
    return vms
