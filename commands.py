"""What each CLI command does, between parsing (cli.py) and the purge machinery (flows/run.py)."""

import os
import sys

import click
import networkx as nx

from novapurge import output, validate
from novapurge.errors import (BadInput, LedgerAltered, PurgeReverted, PurgeSuspended, Refused,
                              RevertFailed)
from novapurge.flows.purge import step_graph
from novapurge.flows.run import validate_vms
from novapurge.persistence import audit

_RESULT_ERRORS = {"reverted": PurgeReverted, "suspended": PurgeSuspended,
                  "revert-failed": RevertFailed, "interrupted": PurgeSuspended}


def show_plan(app, vm_uuids, force, skip, graph_path):
    vms, skip = validate_vms(vm_uuids), validate.skip_groups(skip)
    plans = app.purger.plan(vms, force, skip)
    if graph_path and plans and plans[0].get("flow") is not None:
        nx.nx_pydot.write_dot(step_graph(plans[0]["flow"]), graph_path)
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
    """One line per table a step touches: `[where] table: action × rows`."""
    lines = {}
    for change in changes:
        if change["rows"]:
            key = f"[{change['target']}] {change['table']}: {change['action']}"
            lines[key] = lines.get(key, 0) + change["rows"]
    return "\n".join(f"{key} × {rows}" for key, rows in lines.items()) or "-"


def _confirm(app, question: str, yes: bool):
    if yes:
        return
    if not sys.stdin.isatty():
        raise BadInput("not on a terminal and --yes not given: refusing to change anything")
    if not click.confirm(question, default=False, err=True):
        raise Refused("not confirmed: nothing was changed")


def _finish(app, purge_id, outcomes, verb, expected="succeeded"):
    """Print the outcomes; exit with the code of the worst unexpected one."""
    data = {"purge_id": purge_id, "vms": [o.__dict__ for o in outcomes]}
    if app.as_json:
        output.emit_json(data)
    else:
        output.out_console.print(output.table(
            f"{verb} {purge_id}" if purge_id else f"{verb}: nothing to do",
            ("vm", "result", "failed step", "message"),
            [(o.vm_uuid, o.result, o.failed_step, o.message) for o in outcomes]))
    worst = next((r for r in ("revert-failed", "suspended", "interrupted", "reverted")
                  if r != expected and any(o.result == r for o in outcomes)), None)
    if worst:
        error = _RESULT_ERRORS[worst]
        if app.as_json:
            sys.exit(error.exit_code)
        raise error(f"purge {purge_id}: {worst} (see `novapurge status {purge_id}`)")


def run_purge(app, vm_uuids, yes, force, skip):
    vms, skip = validate_vms(vm_uuids), validate.skip_groups(skip)
    if not yes:
        show_plan(app, vms, force, skip, None)
        _confirm(app, f"Purge {len(vms)} instance(s)?", yes)
    started = (lambda pid: output.err_console.print(f"purge id: [bold]{pid}[/]", markup=True)) \
        if not app.as_json else None
    purge_id, outcomes = app.purger.purge(vms, force, skip, on_start=started)
    _finish(app, purge_id, outcomes, "Purge")


def run_resume(app, purge_id, take_over=False):
    purge_id = validate.purge_id(purge_id)
    _finish(app, purge_id, app.purger.resume(purge_id, take_over), "Resume")


def run_rollback(app, purge_id, yes, take_over=False):
    purge_id = validate.purge_id(purge_id)
    app.journal.book(purge_id)  # unknown ids fail before any question
    _confirm(app, f"Roll back every change of purge {purge_id}?", yes)
    _finish(app, purge_id, app.purger.rollback(purge_id, take_over), "Rollback",
            expected="reverted")


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
