"""`novapurge demo`: a sandbox cloud, purged end to end, with nothing to install or reach.

The sandbox is two SQLite Nova databases (cell and API) built from the real Nova 34 DDL and seeded
with stuck instances and healthy neighbours, simulated compute hosts (domains, VIF devices, OVS
ports, iSCSI nodes, instance dirs) and a simulated cloud API (ports, volumes, images,
allocations) to match; the journal is a SQLite file beside them.
"""

import json
import pathlib
import tempfile

from novapurge import config, output
from novapurge.commands import show_plan, show_status
from novapurge.errors import NovapurgeError, Refused
from novapurge.sandbox.novadb import build_sandbox, snapshot


def neighbour_rows(engines, uuids) -> dict:
    """Every row, in both databases, that mentions one of `uuids` (raw values)."""
    found = {}
    for label, engine in engines.items():
        for table, rows in snapshot(engine).items():
            hits = [row for row in rows if any(str(v) in uuids for v in row if v is not None)]
            if hits:
                found[f"{label}.{table}"] = hits
    return found


def _mentioning(tree: dict, marks: set) -> dict:
    """Of each section of a state tree, the entries whose key or value mentions a mark."""
    return {section: {key: value for key, value in entries.items()
                      if any(m in key or m in json.dumps(value, default=str) for m in marks)}
            for section, entries in tree.items() if isinstance(entries, dict)}


def neighbour_estate(directory, infos) -> dict:
    """What the simulated hosts and cloud hold for the instances `infos`."""
    from novapurge.sandbox.cloud import SandboxCloud
    from novapurge.sandbox.hosts import SimHosts
    marks = ({i["uuid"] for i in infos} | {p[:11] for i in infos for p in i["ports"]}
             | set().union(*(i["volumes"] for i in infos)))
    hosts = SimHosts(pathlib.Path(directory) / "hosts")
    state = {name: _mentioning(hosts.host(name).snapshot(), marks)
             for name in sorted({i["host"] for i in infos if i["host"]})}
    state["cloud"] = _mentioning(SandboxCloud(pathlib.Path(directory) / "cloud.json").snapshot(),
                                 marks)
    return state


def run_demo(app, directory):
    directory = directory or tempfile.mkdtemp(prefix="novapurge-demo-")
    say = (lambda text: None) if app.as_json else \
        (lambda text: output.err_console.print(text, markup=True, highlight=False))
    say(f"[bold]Building a sandbox cloud[/] in {directory} (SQLite cell + API DBs, Nova 34 schema)")
    cloud = build_sandbox(directory)
    app.settings.cell_url, app.settings.api_url = cloud["cell_url"], cloud["api_url"]
    app.settings.sandbox = directory
    if app.settings.journal_url == config.default_journal_url():
        app.settings.journal_url = f"sqlite:///{directory}/journal.sqlite"
    engines = {"cell": app.purger.novadb.cell(None).engine, "api": app.purger.novadb.api.engine}
    healthy, stuck = cloud["healthy"], cloud["stuck"]
    neighbours = [cloud["instances"][uuid] for uuid in healthy]
    before = neighbour_rows(engines, set(healthy)), neighbour_estate(directory, neighbours)
    for uuid in stuck:
        info = cloud["instances"][uuid]
        say(f"  stuck   {uuid}  {info['name']:<14} vm_state={info['vm_state']} "
            f"task_state={info['task_state']}")
    for uuid in healthy:
        say(f"  healthy {uuid}  {cloud['instances'][uuid]['name']}")

    say("\n[bold]1. plan[/] (reads only) for the first stuck instance")
    if not app.as_json:
        show_plan(app, stuck[:1], False, [], None)

    say("\n[bold]2. a healthy instance is refused[/]")
    try:
        app.purger.preflight(healthy[0], force=False)
        refused = None
    except Refused as error:
        refused = str(error)
        say(f"  refused: {refused}")

    say("\n[bold]3. purge[/] the stuck instances")
    purge_id, outcomes = app.purger.purge(stuck, force=False, skip=[])
    say(f"  purge id: [bold]{purge_id}[/]")

    say("\n[bold]4. status[/]")
    if not app.as_json:
        show_status(app, purge_id)

    rows = app.journal.ledger.rows(purge_id=purge_id)
    problems = app.journal.ledger.verify()
    say(f"\n[bold]5. audit trail[/]: {len(rows)} ledger entries, hash chain "
        f"{'intact' if not problems else 'BROKEN'}; "
        f"export with `novapurge audit export {purge_id} --format csv --journal "
        f"{app.settings.journal_url}`")
    if not app.as_json:
        output.out_console.print(output.table(
            "Changes (first entries)", ("ts", "step", "resource", "phase", "outcome", "operator"),
            [(r["ts"][11:23], r["atom"].split(":")[0], r["resource"], r["phase"], r["outcome"],
              r["operator"]) for r in rows[:12]]))

    untouched = (neighbour_rows(engines, set(healthy)),
                 neighbour_estate(directory, neighbours)) == before
    say(f"\n[bold]6. neighbours[/]: {len(healthy)} healthy instances "
        + ("[green]untouched[/] (every row that mentions them, their domains, devices, ports, "
           "volumes and allocations are identical)" if untouched else "[red]CHANGED[/]"))
    summary = {"directory": directory, "purge_id": purge_id,
               "results": {o.vm_uuid: o.result for o in outcomes}, "refused_healthy": refused,
               "ledger_entries": len(rows), "ledger_intact": not problems,
               "neighbours_untouched": untouched, "journal": app.settings.journal_url}
    if app.as_json:
        output.emit_json(summary)
    ok = untouched and not problems and refused and all(o.result == "succeeded" for o in outcomes)
    if not ok:
        raise NovapurgeError("the demo did not end as expected: " + str(summary))
    say(f"\n[green]Demo complete.[/] Try: novapurge status --journal {app.settings.journal_url}")
