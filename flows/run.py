"""Running purge flows with TaskFlow engines: start, resume, roll back, and read their status.

One LogBook per `purge` invocation (its uuid is the purge id), one FlowDetail per VM, created from
the `purge_flow` factory so that `resume` rebuilds the same flow from the journal alone. The VMs
of a purge run through a bounded pool (flows.batch), one engine each.
"""

import contextlib
import datetime
import json
import logging
import threading

import taskflow.engines
from oslo_utils import uuidutils
from taskflow import atom as tf_atom
from taskflow import states
from taskflow.engines import helpers as engine_helpers
from taskflow.persistence import models

from novapurge import context, validate
from novapurge.drivers.libvirt import Libvirt
from novapurge.errors import BadInput, Refused
from novapurge.flows.batch import DEFAULT_PARALLEL, Batch, Outcome
from novapurge.flows.finalize import suspend_failed_finalize
from novapurge.flows.listeners import StepListener
from novapurge.flows.naming import atom_name, step_of
from novapurge.flows.purge import DELETE_VOLUMES, flow_shape, purge_flow, steps_in_order
from novapurge.tasks.discovery import discover_facts
from novapurge.tasks.guards import check_guards
from novapurge.tasks.hypervisor import check_domain
from novapurge.tasks.markers import PassPointOfNoReturn

LOG = logging.getLogger(__name__)
_OUTCOME = {states.SUCCESS: "succeeded", states.REVERTED: "reverted",
            states.SUSPENDED: "suspended", states.FAILURE: "revert-failed"}
# Outcomes of VMs that never got a flow, as `status` shows them; resume retries only errors.
_NOT_RUN = {"refused": "REFUSED", "nothing-to-do": "SKIPPED", "error": "NOT STARTED"}


def vm_of_detail(flow_detail) -> str:
    return flow_detail.name.split(":", 1)[1]


# Step groups that need the cloud API, and what in the facts makes them needed.
_API_GROUPS = {"volumes": lambda f: f["volumes"], "ports": lambda f: f["ports"],
               "images": lambda f: f["shelved_image"]}


class Purger:
    """The purge operations on one journal, one set of Nova databases and the other drivers."""

    def __init__(self, journal, novadb, report=None, *, hosts=None, cloud=None, consoles=None,
                 instances_path="/var/lib/nova/instances", new_host_keys=None):
        self.journal = journal
        self.novadb = novadb
        self.report = report
        # (host, key type, fingerprint) the SSH driver trusted on first use, to be recorded
        self.new_host_keys = new_host_keys if new_host_keys is not None else []
        self.drivers = context.install(context.PurgeContext(
            novadb=novadb, ledger=journal.ledger, hosts=hosts, cloud=cloud, consoles=consoles,
            instances_path=instances_path))

    # -- read-only ---------------------------------------------------------------------------
    def preflight(self, vm_uuid: str, force: bool, skip=()) -> dict | None:
        """The facts of a VM fit to purge; None when a purge already completed it.

        Everything a guard can refuse is checked here, before anything is journaled: the
        instance's health, a running purge, the domain on its host, the drivers it needs.
        """
        holder = self.journal.locks.holder(vm_uuid)
        if holder is not None:
            state = "running" if holder.alive else "interrupted"
            raise Refused(f"purge {holder.purge_id} of {vm_uuid} is {state}: "
                          + ("wait for it" if holder.alive else
                             f"`novapurge resume {holder.purge_id}` or `rollback` it first"))
        done = self.purged_by(vm_uuid)
        if done:
            return None
        facts = discover_facts(self.drivers, vm_uuid)
        check_guards(facts, force)
        self._check_drivers(facts, skip)
        if facts["host"] is not None and "host" not in skip:
            check_domain(Libvirt(self.drivers.hosts.runner(facts["host"]["name"])), facts)
        return facts

    def _check_drivers(self, facts, skip) -> None:
        """Refuse (nothing changed) when a step the instance needs has no driver configured."""
        if self.drivers.cloud is None:
            needed = [g for g, need in _API_GROUPS.items() if g not in skip and need(facts)]
            if needed:
                raise BadInput(f"{facts['vm_uuid']} has {', '.join(needed)} to clean up through "
                               f"the OpenStack APIs, and no cloud is configured: give --os-cloud "
                               f"(clouds.yaml) or --skip {','.join(needed)}")
        if facts["host"] is not None and "host" not in skip and self.drivers.hosts is None:
            raise BadInput(f"{facts['vm_uuid']} is on host {facts['host']['name']} and no host "
                           f"access is configured: give [hosts] settings or --skip host")

    def options(self, purge_id, facts, force, skip, delete_volumes="dot", hold=False) -> dict:
        """The JSON arguments of one VM's flow factory (journaled; resume rebuilds from them)."""
        if delete_volumes not in DELETE_VOLUMES:
            raise BadInput(f"--delete-volumes must be one of {', '.join(DELETE_VOLUMES)}")
        return {"purge_id": purge_id, "force": bool(force), "skip": list(skip),
                "hold": bool(hold), "shape": flow_shape(facts, consoles=self.drivers.consoles is not None,
                                    cloud=self.drivers.cloud is not None,
                                    delete_volumes=delete_volumes)}

    def purged_by(self, vm_uuid: str) -> str | None:
        """The purge that completed `vm_uuid` (and was not rolled back since), if any."""
        for purge_id in dict.fromkeys(r["purge_id"] for r in self.journal.ledger.rows(
                vm_uuid=vm_uuid, atom=f"{PassPointOfNoReturn.step()}:{vm_uuid}")):
            for fd in self.journal.book(purge_id):
                if vm_of_detail(fd) == vm_uuid and fd.state == states.SUCCESS:
                    return purge_id
        return None

    def plan(self, vm_uuids, force=False, skip=(), delete_volumes="dot"):
        """Per VM: the steps the purge would run and what each would change."""
        plans = []
        for vm_uuid in vm_uuids:
            facts = self.preflight(vm_uuid, force, skip)
            if facts is None:
                plans.append({"vm_uuid": vm_uuid, "already_purged_by": self.purged_by(vm_uuid),
                              "steps": []})
                continue
            flow = purge_flow(vm_uuid, self.options("plan", facts, force, skip, delete_volumes))
            plans.append({"vm_uuid": vm_uuid, "facts": facts, "flow": flow,
                          "steps": describe_steps(flow, facts)})
        return plans

    # -- changing ----------------------------------------------------------------------------
    def purge(self, vm_uuids, force=False, skip=(), on_start=None, delete_volumes="dot", *,
              parallel=DEFAULT_PARALLEL, progress=None, hold=False):
        """Purge `vm_uuids` (already validated); returns (purge_id, outcomes).

        Each VM is checked (preflight) and run by its own engine, at most `parallel` at once. A
        VM its guards refuse is reported `refused` and the others go on; with a single VM the
        refusal is raised, as before anything was journaled. The purge's logbook is journaled
        when its first VM is about to run (purge_id is None when none did).
        """
        book = self.new_book(vm_uuids, force, skip, delete_volumes, hold)
        opened = OpenedBook(self.journal, book, on_start)
        outcomes = Batch(parallel, progress, self.report).run(
            vm_uuids, lambda vm_uuid, batch: self._start(vm_uuid, opened, batch))
        if opened.saved:
            self.note_not_run(book, outcomes)
        return (book.uuid if opened.saved else None), outcomes

    def new_book(self, vm_uuids, force=False, skip=(), delete_volumes="dot", hold=False,
                 **meta):
        """The logbook of a new purge (not journaled yet): who, what, with which options."""
        if delete_volumes not in DELETE_VOLUMES:
            raise BadInput(f"--delete-volumes must be one of {', '.join(DELETE_VOLUMES)}")
        book = models.LogBook("novapurge")
        book.meta = {"operator": self.journal.ledger.actor.operator,
                     "ticket": self.journal.ledger.actor.ticket, "vms": list(vm_uuids),
                     "force": force, "skip": list(skip), "delete_volumes": delete_volumes,
                     "hold": bool(hold),
                     "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                     **meta}
        return book

    def journal_vm(self, vm_uuid: str, opened: "OpenedBook", batch: Batch):
        """Check one VM and journal its flow detail in the purge: the flow detail, or the
        Outcome of a VM with nothing to do. Raises what preflight refuses."""
        meta = opened.book.meta
        force, skip = meta.get("force", False), meta.get("skip") or []
        facts = self.preflight(vm_uuid, force, skip)
        if facts is None:
            return Outcome(vm_uuid, "nothing-to-do",
                           f"already purged by {self.purged_by(vm_uuid)}")
        if batch.stopping:
            return batch.not_started(vm_uuid)
        options = self.options(opened.book.uuid, facts, force, skip,
                               meta.get("delete_volumes", "dot"), meta.get("hold", False))
        flow_detail = models.FlowDetail(f"purge:{vm_uuid}", uuidutils.generate_uuid())
        flow_detail.state = states.PENDING
        engine_helpers.save_factory_details(flow_detail, purge_flow, [vm_uuid],
                                            {"options": options})
        opened.add(flow_detail)
        self._record_host_keys(opened.book.uuid, {vm_uuid: facts})
        return flow_detail

    def _start(self, vm_uuid: str, opened: "OpenedBook", batch: Batch) -> Outcome:
        """Check one VM, journal its flow detail in the purge, run it."""
        flow_detail = self.journal_vm(vm_uuid, opened, batch)
        if isinstance(flow_detail, Outcome):
            return flow_detail
        return self._run(flow_detail, vm_uuid, opened.book.uuid, batch)

    def note_not_run(self, book, outcomes) -> None:
        """Keep in the purge which VMs never got a flow, and why (`status` and `resume` show it)."""
        not_run = {o.vm_uuid: {"result": o.result, "reason": o.message} for o in outcomes
                   if o.result in _NOT_RUN}
        if not_run:
            book.meta = dict(book.meta, not_run=not_run)
            self.journal.save(book)

    def _record_host_keys(self, purge_id: str, facts_by_vm: dict) -> None:
        """Put host keys trusted on first use (`--ssh-accept-new`) in the ledger of their VMs."""
        for host, key_type, fingerprint in list(self.new_host_keys):
            for vm_uuid, facts in facts_by_vm.items():
                if (facts.get("host") or {}).get("name") == host:
                    self.journal.ledger.bind(purge_id, vm_uuid).note(
                        f"AcceptHostKey:{vm_uuid}", f"hostkey:{host}", "trusted-on-first-use",
                        {"key_type": key_type, "fingerprint": fingerprint}, target=f"host:{host}")

    def _book(self, purge_id: str):
        """The logbook of a purge, once the databases its VMs' facts name are reachable."""
        book = self.journal.book(purge_id)
        for fd in book:
            facts = _facts_of(fd)
            if facts and (facts.get("cell") or facts.get("api_db")) and self.novadb.api is None:
                raise BadInput(f"{vm_of_detail(fd)} was found through an API database: give "
                               f"--api-db (or --nova-conf) to resume or roll back purge {purge_id}")
        return book

    @staticmethod
    def _vms_of(book) -> tuple[list, dict]:
        """(every VM of a purge in the order given, {vm: flow detail} of those that started)."""
        details = {vm_of_detail(fd): fd for fd in book}
        vms = list(dict.fromkeys([*((book.meta or {}).get("vms") or []), *details]))
        return vms, details

    def resume(self, purge_id: str, take_over=False, *, parallel=DEFAULT_PARALLEL, progress=None):
        """Continue every unfinished VM of a purge from where the journal says it stopped.

        VMs the purge never started (it was stopped or killed first) are started now; those a
        guard refused when it started are reported, not retried.
        """
        book = self._book(purge_id)
        vms, details = self._vms_of(book)
        not_run = (book.meta or {}).get("not_run") or {}
        opened = OpenedBook(self.journal, book, saved=True)

        def resume_one(vm_uuid, batch):
            fd = details.get(vm_uuid)
            if fd is None:
                earlier = not_run.get(vm_uuid)
                if earlier is not None and earlier["result"] != "error":
                    return Outcome(vm_uuid, "nothing-to-do", f"{earlier['result']} when the purge "
                                   f"started: {earlier['reason']}")
                return self._start(vm_uuid, opened, batch)
            if fd.state in (states.SUCCESS, states.REVERTED):
                return Outcome(vm_uuid, "nothing-to-do", f"already {fd.state}")
            outcome = self._run(fd, vm_uuid, purge_id, batch, take_over)
            self._record_host_keys(purge_id, {vm_uuid: _facts_of(fd) or {}})
            return outcome

        return Batch(parallel, progress, self.report).run(vms, resume_one)

    def rollback(self, purge_id: str, take_over=False, *, parallel=DEFAULT_PARALLEL,
                 progress=None):
        """Revert every VM of a purge to the state it was found in (refused past no return)."""
        book = self._book(purge_id)
        vms, details = self._vms_of(book)

        def rollback_one(vm_uuid, batch):
            fd = details.get(vm_uuid)
            if fd is None:
                return Outcome(vm_uuid, "nothing-to-do", "never started: nothing to roll back")
            if fd.state == states.REVERTED:
                return Outcome(vm_uuid, "nothing-to-do", "already rolled back")
            # The lock first: a refused rollback must leave the journal as it was.
            with self.vm_lock(vm_uuid, purge_id, take_over):
                engine = taskflow.engines.load_from_detail(fd, backend=self.journal.backend,
                                                           **batch.engine_options)
                engine.compile()
                self._refuse_past_no_return(engine, fd, vm_uuid)
                engine.prepare()
                for atom in _atoms(engine):
                    engine.storage.set_atom_intention(atom.name, states.REVERT)
                return self._execute(engine, vm_uuid, batch)

        return Batch(parallel, progress, self.report).run(vms, rollback_one)

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
    def vm_lock(self, vm_uuid: str, purge_id: str, take_over=False):
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

    def _run(self, flow_detail, vm_uuid: str, purge_id: str, batch: Batch,
             take_over=False) -> Outcome:
        with self.vm_lock(vm_uuid, purge_id, take_over):
            engine = taskflow.engines.load_from_detail(flow_detail, backend=self.journal.backend,
                                                       **batch.engine_options)
            return self._execute(engine, vm_uuid, batch)

    def _execute(self, engine, vm_uuid: str, batch: Batch) -> Outcome:
        with StepListener(engine, batch.report), batch.running(vm_uuid, engine) as go:
            if not go:
                return batch.not_started(vm_uuid)
            try:
                engine.run()
            except Exception as error:  # the journal has the failure; report it
                LOG.debug("purge of %s stopped: %s", vm_uuid, error, exc_info=True)
        return engine_outcome(engine, vm_uuid)

    def close(self):
        """Nothing to release: each batch owns (and shuts down) its step threads."""

    # -- status ------------------------------------------------------------------------------
    def status(self, purge_id=None) -> list:
        books = [self.journal.book(purge_id)] if purge_id else self.journal.books()
        return [self._book_status(book) for book in books]

    def _book_status(self, book) -> dict:
        vms = []
        started = {vm_of_detail(fd) for fd in book}
        not_run = (book.meta or {}).get("not_run") or {}
        for vm_uuid in (book.meta or {}).get("vms") or []:
            if vm_uuid in started:
                continue
            earlier = not_run.get(vm_uuid)
            vms.append({"vm_uuid": vm_uuid,
                        "state": "NOT STARTED" if earlier is None else _NOT_RUN[earlier["result"]],
                        "steps_done": 0, "steps": 0, "failed_step": None,
                        "reason": None if earlier is None else earlier["reason"],
                        "skipped_groups": book.meta.get("skip", []), "deferred": [],
                        "runner": None})
        for fd in book:
            vm_uuid = vm_of_detail(fd)
            holder = self.journal.locks.holder(vm_uuid)
            state = flow_status(fd.state, holder if holder and holder.purge_id == book.uuid
                                else None)
            if state == "INTERRUPTED" and fd.state in (None, states.PENDING) and \
                    (book.meta or {}).get("submitted"):
                state = "QUEUED"   # its job waits on the jobboard for a conductor
            atoms = list(fd)
            failure = next(((step_of(a.name), f.exception_str.splitlines()[0][:300])
                            for a in atoms for f in (a.revert_failure, a.failure)
                            if f is not None), None)
            parked = (fd.meta or {}).get("suspended") if fd.state == states.SUSPENDED else None
            if parked:
                failure = (parked["step"], parked["reason"])
            vms.append({"vm_uuid": vm_uuid, "state": state,
                        "steps_done": sum(a.state == states.SUCCESS for a in atoms),
                        "steps": len(atoms),
                        "failed_step": failure[0] if failure else None,
                        "reason": failure[1] if failure else None,
                        "skipped_groups": book.meta.get("skip", []),
                        "deferred": self._deferred(book.uuid, vm_uuid),
                        "runner": None if holder is None else
                        {"machine": holder.machine, "pid": holder.pid}})
        overall = sorted({vm["state"] for vm in vms}) or ["EMPTY"]
        return {"purge_id": book.uuid, "state": overall[0] if len(overall) == 1 else "MIXED",
                "operator": book.meta.get("operator"), "ticket": book.meta.get("ticket"),
                "started_at": book.meta.get("started_at"), "vms": vms}


    def _deferred(self, purge_id, vm_uuid) -> list:
        """What the operator deferred (`--skip host`): the host cleanup left to do by hand."""
        return [{"resource": r["resource"], "detail": json.loads(r["after"] or "null")}
                for r in self.journal.ledger.rows(purge_id, vm_uuid)
                if r["phase"] == "note" and r["outcome"] == "deferred"]


def _facts_of(flow_detail) -> dict | None:
    """The facts a VM's DiscoverInstance journaled, if it ran."""
    return next((ad.results for ad in flow_detail if ad.name.startswith("DiscoverInstance:")
                 and isinstance(ad.results, dict)), None)


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


def engine_outcome(engine, vm_uuid: str) -> Outcome:
    """How a VM's engine ended; a finalize step that gave up suspends the purge (DESIGN §1)."""
    suspended = suspend_failed_finalize(engine)
    if suspended:
        return Outcome(vm_uuid, "suspended", suspended["reason"], suspended["step"])
    state = engine.storage.get_flow_state()
    failed = failed_step(engine.storage)
    if state == states.SUSPENDED and not failed and _held(engine.storage, vm_uuid):
        return Outcome(vm_uuid, "suspended", "held at the point of no return (--hold): `resume` "
                       "finalizes, `rollback` undoes")
    return Outcome(vm_uuid, _OUTCOME.get(state, state.lower()),
                   failed[1] if failed else "", failed[0] if failed else None)


def _held(storage, vm_uuid: str) -> bool:
    """Did `purge --hold` stop this VM at its point of no return?"""
    point = atom_name(PassPointOfNoReturn.step(), vm_uuid)
    if storage.get_atom_state(point) != states.SUCCESS:
        return False
    return bool((storage.get(point) or {}).get("hold"))


class OpenedBook:
    """A purge's logbook, journaled when its first VM is about to run (so a purge whose VMs are
    all refused journals nothing); each VM's flow detail is added on its own."""

    def __init__(self, journal, book, on_start=None, saved=False):
        self.journal, self.book, self._on_start = journal, book, on_start
        self.saved = saved
        self._lock = threading.Lock()

    def add(self, flow_detail) -> None:
        with self._lock:
            if not self.saved:
                self.journal.save(self.book)
                self.saved = True
                if self._on_start:
                    self._on_start(self.book.uuid)
        self.journal.add_flow(self.book.uuid, flow_detail)


def validate_vms(values) -> list:
    vms = list(dict.fromkeys(validate.vm_uuid(v) for v in values))
    if not vms:
        raise BadInput("no instance UUID given")
    return vms
