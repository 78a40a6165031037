"""What each CLI command does, between parsing (cli.py) and the purge machinery (flows/run.py)."""

import os
import sys

import click
import networkx as nx

from novapurge import output, progress, validate
from novapurge.errors import (BadInput, LedgerAltered, NovapurgeError, PurgeReverted,
                              PurgeSuspended, Refused, RevertFailed)
from novapurge.flows.batch import summarize
from novapurge.flows.purge import step_graph
from novapurge.flows.run import validate_vms, vm_of_detail
from novapurge.persistence import audit

_RESULT_ERRORS = {"reverted": PurgeReverted, "suspended": PurgeSuspended,
                  "revert-failed": RevertFailed, "interrupted": PurgeSuspended,
                  "not-started": PurgeSuspended, "refused": Refused, "error": NovapurgeError}
# The worst result decides the exit code: the first of these found (not the expected one).
_SEVERITY = ("revert-failed", "error", "suspended", "interrupted", "not-started", "reverted",
             "refused")
ALL_ROWS_UP_TO = 20  # a larger batch's table lists only the VMs that did not end as expected


def show_plan(app, vm_uuids, force, skip, graph_path, delete_volumes="dot"):
    vms, skip = validate_vms(vm_uuids), validate.skip_groups(skip)
    plans = app.purger.plan(vms, force, skip, delete_volumes)
    if graph_path and plans and plans[0].get("flow") is not None:
        graph = step_graph(plans[0]["flow"])
        # DOT reads a bare `a:b` as node a, port b: quote every name (targets hold colons)
        nx.nx_pydot.write_dot(nx.relabel_nodes(graph, {n: f'"{n}"' for n in graph}), graph_path)
    if app.as_json:
        output.emit_json([{k: v for k, v in p.items() if k != "flow"} for p in plans])
        return
    for plan in plans:
        if not plan["steps"]:
            output.out_console.print(f"{plan['vm_uuid']}: already purged by "
                                     f"{plan['already_purged_by']}; nothing to do")
            continue
        facts = plan["facts"]["instance"]
        rows = [(i + 1, s["step"], s["group"], _reversibility(s), _summary(s["changes"]))
                for i, s in enumerate(plan["steps"])]
        output.out_console.print(output.table(
            f"Plan for {plan['vm_uuid']} ({facts.get('display_name')}, vm_state "
            f"{facts.get('vm_state')}, task_state {facts.get('task_state')}, host "
            f"{facts.get('host')})", ("#", "step", "group", "reversible", "changes"), rows))
    if graph_path:
        output.err_console.print(f"step graph written to {graph_path}")


def _reversibility(step) -> str:
    if not step["changes"]:
        return "n/a" if step["reversible"] else "no"
    return "yes" if step["reversible"] else "no"


def _summary(changes) -> str:
    """One line per table a step touches (`[where] table: action × rows`) or command it runs."""
    lines = {}
    for change in changes:
        if "command" in change:
            lines[f"[{change['target']}] {change['command']}"] = None
        elif change["rows"]:
            key = f"[{change['target']}] {change['table']}: {change['action']}"
            lines[key] = lines.get(key, 0) + change["rows"]
    return "\n".join(key if rows is None else f"{key} × {rows}"
                     for key, rows in lines.items()) or "-"


def _confirm(app, question: str, yes: bool):
    if yes:
        return
    if not sys.stdin.isatty():
        raise BadInput("not on a terminal and --yes not given: refusing to change anything")
    if not click.confirm(question, default=False, err=True):
        raise Refused("not confirmed: nothing was changed")


def _finish(app, purge_id, outcomes, verb, expected="succeeded"):
    """Print the outcomes (a summary table, or JSON); exit with the code of the worst one."""
    counts = summarize(outcomes)
    data = {"purge_id": purge_id, "summary": counts, "vms": [o.as_dict() for o in outcomes],
            "hosts": _host_stats(app)}
    if app.as_json:
        output.emit_json(data)
    else:
        tally = ", ".join(f"{n} {result}" for result, n in counts.items())
        title = (f"{verb} {purge_id}" if purge_id else f"{verb}: nothing to do") + \
            (f": {len(outcomes)} VMs, {tally}" if len(outcomes) > 1 else "")
        shown = outcomes if len(outcomes) <= ALL_ROWS_UP_TO else \
            [o for o in outcomes if o.result not in (expected, "nothing-to-do")]
        if shown or len(outcomes) <= ALL_ROWS_UP_TO:
            output.out_console.print(output.table(
                title, ("vm", "result", "failed step", "message"),
                [(o.vm_uuid, o.result, o.failed_step, o.message) for o in shown]))
        else:
            output.out_console.print(title)
    worst = next((r for r in _SEVERITY
                  if r != expected and any(o.result == r for o in outcomes)), None)
    if worst:
        error = _RESULT_ERRORS[worst]
        if app.as_json:
            sys.exit(error.exit_code)
        raise error(f"purge {purge_id}: {counts[worst]} VM(s) {worst}"
                    + (f" (see `novapurge status {purge_id}`)" if purge_id else ""))


def _host_stats(app) -> dict:
    """Per compute host used: SSH connections opened and the most commands in flight at once."""
    hosts = app.purger.drivers.hosts if app.has_purger else None
    if hosts is None:
        return {}
    return {name: {"connections": opened, "peak_channels": hosts.runner(name).peak_channels}
            for name, opened in sorted(hosts.connections_opened().items())}


def read_vm_file(path) -> list:
    """Instance UUIDs from a file (`-`: standard input): one per line, `#` starts a comment."""
    if path is None:
        return []
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
    except OSError as error:
        raise BadInput(f"cannot read {path}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise BadInput(f"{path} is not a text file of instance UUIDs") from None
    return [word for line in text.splitlines()
            for word in line.split("#", 1)[0].split()]


def _batch_options(app, host_limit) -> None:
    """`--host-limit`: the commands in flight per compute host (its runner's channels)."""
    if host_limit is not None:
        if host_limit < 1:
            raise BadInput("--host-limit must be at least 1")
        app.settings.ssh = dict(app.settings.ssh, max_channels=host_limit)


def run_purge(app, vm_uuids, yes, force, skip, delete_volumes="dot", from_file=None,
              parallel=None, host_limit=None, hold=False):
    vms = validate_vms(list(vm_uuids) + read_vm_file(from_file))
    skip = validate.skip_groups(skip)
    _batch_options(app, host_limit)
    if not yes:
        if len(vms) == 1:
            show_plan(app, vms, force, skip, None, delete_volumes)
        elif not app.as_json:
            output.err_console.print(f"{len(vms)} instances; `novapurge plan UUID...` shows the "
                                     f"steps of each")
        _confirm(app, f"Purge {len(vms)} instance(s)?", yes)
    started = (lambda pid: output.err_console.print(f"purge id: [bold]{pid}[/]", markup=True)) \
        if not app.as_json else None
    purge_id, outcomes = app.purger.purge(
        vms, force, skip, on_start=started, delete_volumes=delete_volumes, hold=hold,
        **_pool(parallel, progress.for_batch("Purging", len(vms), not app.as_json)))
    _finish(app, purge_id, outcomes, "Purge")


def _pool(parallel, shown) -> dict:
    return {"progress": shown, **({"parallel": parallel} if parallel is not None else {})}


def _book_size(app, purge_id) -> int:
    book = app.journal.book(purge_id)
    return len({*((book.meta or {}).get("vms") or []), *(vm_of_detail(fd) for fd in book)})


def run_resume(app, purge_id, take_over=False, parallel=None, host_limit=None):
    purge_id = validate.purge_id(purge_id)
    _batch_options(app, host_limit)
    shown = progress.for_batch("Resuming", _book_size(app, purge_id), not app.as_json)
    _finish(app, purge_id, app.purger.resume(purge_id, take_over, **_pool(parallel, shown)),
            "Resume")


def run_rollback(app, purge_id, yes, take_over=False, parallel=None, host_limit=None):
    purge_id = validate.purge_id(purge_id)
    _batch_options(app, host_limit)
    size = _book_size(app, purge_id)  # unknown ids fail before any question
    _confirm(app, f"Roll back every change of purge {purge_id}?", yes)
    shown = progress.for_batch("Rolling back", size, not app.as_json)
    _finish(app, purge_id, app.purger.rollback(purge_id, take_over, **_pool(parallel, shown)),
            "Rollback", expected="reverted")


def _jobboard_settings(app, url) -> None:
    if url:
        app.settings.jobboard = dict(app.settings.jobboard, url=url)
    if app.settings.journal_url.startswith("sqlite"):
        output.err_console.print("warning: the journal is a SQLite file: only conductors on this "
                                 "machine can run these jobs (share a MySQL journal)",
                                 highlight=False)


def run_submit(app, vm_uuids, yes, force, skip, delete_volumes="dot", from_file=None,
               parallel=None, hold=False, jobboard_url=None):
    from novapurge.distributed.board import open_board
    from novapurge.distributed.submit import QUEUED, submit
    vms = validate_vms(list(vm_uuids) + read_vm_file(from_file))
    skip = validate.skip_groups(skip)
    _jobboard_settings(app, jobboard_url)
    board = open_board(app.settings, persistence=app.journal.backend)
    try:
        _confirm(app, f"Queue the purge of {len(vms)} instance(s)?", yes)
        started = (lambda pid: output.err_console.print(f"purge id: [bold]{pid}[/]",
                                                        markup=True)) \
            if not app.as_json else None
        purge_id, outcomes = submit(
            app.purger, board, vms, force, skip, delete_volumes, hold, on_start=started,
            **_pool(parallel, progress.for_batch("Submitting", len(vms), not app.as_json)))
    finally:
        board.close()
    _finish(app, purge_id, outcomes, "Submitted", expected=QUEUED)


def run_conductor(app, jobs, name=None, claim_expiry=None, max_jobs=None, host_limit=None,
                  jobboard_url=None):
    import signal

    from novapurge.distributed.board import open_board
    from novapurge.distributed.conductor import PurgeConductor, conductor_name
    _jobboard_settings(app, jobboard_url)
    _batch_options(app, host_limit)
    purger = app.purger          # installs this process's drivers for every engine
    board = open_board(app.settings, persistence=purger.journal.backend,
                       claim_expiry=claim_expiry)
    name = conductor_name(name)
    worker = PurgeConductor(name, board, purger, jobs=jobs, max_jobs=max_jobs)

    def stop(signum, _frame):
        output.err_console.print(f"signal {signum}: suspending running VMs after their current "
                                 f"steps and giving their jobs back", highlight=False)
        worker.stop()
    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    if not app.as_json:
        output.err_console.print(f"conductor {name}: {jobs} job(s) at once, claims expire after "
                                 f"{board.claim_expiry:g} s", highlight=False)
    try:
        worker.run()
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        worker.close()
    outcomes = [outcome for _job, outcome in worker.outcomes]
    counts = summarize(outcomes)
    if app.as_json:
        output.emit_json({"conductor": name, "summary": counts,
                          "jobs": [dict(o.as_dict(), job=job) for job, o in worker.outcomes]})
    else:
        output.out_console.print(f"conductor {name} stopped: {len(outcomes)} job(s) run"
                                 + (": " + ", ".join(f"{n} {r}" for r, n in counts.items())
                                    if counts else ""))


def show_config(app):
    settings = app.settings.describe()
    if app.as_json:
        output.emit_json(settings)
        return
    output.out_console.print(output.table(
        "Effective settings (flags > environment > novapurge.toml > nova.conf)",
        ("setting", "value"), [(k, v if v not in (None, [], {}) else "-")
                               for k, v in settings.items()]))


def show_status(app, purge_id):
    purge_id = purge_id and validate.purge_id(purge_id)
    books = app.purger.status(purge_id)
    if app.as_json:
        output.emit_json(books[0] if purge_id else books)
        return
    if not books:
        output.out_console.print("no purges in this journal")
    for book in books:
        skipped = sorted({g for vm in book["vms"] for g in vm["skipped_groups"]})
        title = (f"purge {book['purge_id']}  {book['state']}  by {book['operator']}"
                 + (f" ({book['ticket']})" if book["ticket"] else "")
                 + f"  started {book['started_at'][:19] if book['started_at'] else '?'}"
                 + (f"  skipped: {','.join(skipped)}" if skipped else ""))
        output.out_console.print(output.table(title, ("vm", "state", "steps", "failed step / reason"), [
            (vm["vm_uuid"], vm["state"], f"{vm['steps_done']}/{vm['steps']}",
             f"{vm['failed_step']}: {vm['reason']}" if vm["failed_step"] else "")
            for vm in book["vms"]]))


def export_audit(app, purge_id, everything, export_format, path):
    if bool(purge_id) == bool(everything):
        raise BadInput("name one purge id, or --all")
    purge_id = purge_id and validate.purge_id(purge_id)
    if purge_id:
        app.journal.book(purge_id)
    rows = app.journal.ledger.rows(purge_id=purge_id)
    text = audit.render(rows, export_format)
    if path:
        with open(path, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
        summary = {"written": os.path.abspath(path), "entries": len(rows),
                   "format": export_format}
        if app.as_json:
            output.emit_json(summary)
        else:
            output.err_console.print(f"{len(rows)} entries written to {path}")
    else:
        sys.stdout.write(text)


def verify_audit(app):
    problems = app.journal.ledger.verify()
    count = len(app.journal.ledger.rows())
    if app.as_json:
        output.emit_json({"entries": count, "intact": not problems, "problems": problems})
    elif not problems:
        output.out_console.print(f"ledger intact: {count} entries, hash chain verified")
    if problems:
        if app.as_json:
            sys.exit(LedgerAltered.exit_code)
        raise LedgerAltered("ledger altered: " + "; ".join(problems))
