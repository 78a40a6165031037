"""A batch purge at scale: N VMs over H simulated hosts, 50 ms per remote command and API call.

    python bench/batch_scale.py [--vms 1000] [--hosts 50] [--latency 0.05] [--api-latency 0.05]
                                [--parallel 128] [--host-limit 8] [--connect-cost SECONDS]
                                [--dir DIR] [--json]

What runs: `Purger.purge()` of every VM in one process (what `novapurge purge --from-file`
runs after its imports): one TaskFlow engine per VM, `--parallel` at once, each compute host's
commands bounded by `--host-limit`, the journal and the ledger in a SQLite file (WAL, fsync per
commit), the Nova cell and API databases in SQLite files seeded by the sandbox's seeder (every
instance ERROR with a fault, one OVS hybrid VIF, no volume, legacy quota; spread round-robin over
the hosts).

The simulated hosts (sandbox.hosts: the purge's argv acted out on each host's state) and the
simulated cloud (sandbox.cloud: servers, ports, allocations) are kept in memory here instead of
the JSON files they share between processes in the demo and the tests: at 1000 VMs the cloud's
file alone is megabytes, rewritten on every call under one lock, which would measure the
simulator. Their latency is the point: every host command sleeps `--latency` (SimHost's
set_latency) and every API call `--api-latency` (SandboxCloud's set_latency), outside any lock.

With `--processes N`, N such processes run side by side, each purging every N-th VM (whole
hosts, so each host still has one SSH connection) against the same journal and Nova database
files: what N `novapurge purge --from-file` runs (or N conductors) on one machine do. The wall
time is then from the first process's start to the last one's end, CPU and remote operations are
summed, the peak RSS is the largest process's.

Reported: wall time of the batch (from the first preflight to the last VM's end), VMs/s, peak
RSS of the process (and what it was before the batch: the simulated estate and the drivers;
the estate's share is what loading it added, and the peak without it is what the tool itself
would hold against a real cloud),
SSH connections and peak commands in flight per host, the CPU time of a fixed Python loop on
this machine (the batch is CPU-bound: compare figures across machines with it), against:
(a) the sequential replay of the runbook: one VM after another, every host command on a new SSH
    connection (`--connect-cost` on top of the command, default one more `--latency`: cheap for
    TCP + key exchange + authentication), every API call in turn, database statements free:
    the remote operations the batch actually made, one after another;
(b) the lower bound: the larger of the busiest host's commands x latency / host limit, and the
    longest critical path of a VM: its preflight's remote operations, then the longest chain of
    its flow's steps (each step's remote operations, measured on one VM purged alone), at the
    latencies given;
(c) TaskFlow's own CPU floor: one engine running a flow of as many no-op tasks as a VM's flow
    has atoms (serial engine, in-memory backend), times the VMs, spread over every core: what a
    TaskFlow engine per VM costs before any purge work, journal or simulator.
Prints the ratios: replay / batch (target >= 50) and batch / lower bound (target <= 1.3), and
the targets: <= 60 s for 1000 VMs on the 2-core machine, <= 500 MB RSS at 10 000 VMs.

The seeded databases are cached in --dir (default /tmp/novapurge-bench) per (vms, hosts); each
run works on a fresh copy. Each measurement runs in a child process of its own.
"""

import argparse
import copy
import json
import os
import pathlib
import resource
import shutil
import subprocess
import sys
import threading
import time

import sqlalchemy as sa

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_DIR = pathlib.Path("/tmp/novapurge-bench")
TARGETS = {"wall_s_1000": 60.0, "vs_replay": 50.0, "vs_lower_bound": 1.3, "rss_mb_10k": 500.0}


# ---- the simulated estate, in memory -----------------------------------------------------------
def _memory_classes():
    """SimHost / SimHosts / SandboxCloud kept in memory (imports deferred to the child)."""
    from novapurge.sandbox.cloud import SandboxCloud
    from novapurge.drivers.ssh import HostPool
    from novapurge.sandbox.hosts import SimHost, SimHosts
    from novapurge.tasks.base import PurgeTask

    def current_atom() -> str:
        """The purge step (atom name) whose code is making this call, or "preflight"."""
        frame = sys._getframe(2)
        while frame is not None:
            owner = frame.f_locals.get("self")
            if isinstance(owner, PurgeTask):
                return owner.name
            frame = frame.f_back
        return "preflight"

    class MemoryState:
        """StateFile's interface over a dict in memory."""

        def __init__(self, state):
            self._state = state
            self._lock = threading.Lock()

        def read(self):
            with self._lock:
                return copy.deepcopy(self._state)

        def change(self):
            lock, state = self._lock, self._state

            class _Changing:
                def __enter__(self):
                    lock.acquire()
                    return state

                def __exit__(self, *exc):
                    lock.release()
            return _Changing()

    class MemoryHost(SimHost):
        def __init__(self, name, state, meter):
            self.name = name
            self.state = MemoryState(state)
            self.meter = meter

        def execute(self, argv, stdin):
            meter = self.meter
            with meter["lock"]:
                meter["commands"] += 1
                if meter["attribute"]:
                    meter["by_atom"].setdefault(current_atom(), []).append("host")
            return super().execute(argv, stdin)

    class MemoryHosts(SimHosts):
        def __init__(self, states, options, attribute=False):
            HostPool.__init__(self, options=options)    # SimHosts' own would make a directory
            self.directory = None
            self.states = states
            self.meters = {name: {"lock": threading.Lock(), "commands": 0, "by_atom": {},
                                  "attribute": attribute} for name in states}
            self._memory_hosts = {}

        def host(self, name):
            if name not in self._memory_hosts:
                self._memory_hosts[name] = MemoryHost(name, self.states[name], self.meters[name])
            return self._memory_hosts[name]

        def names(self):
            return sorted(self.states)

    class MemoryCloud(SandboxCloud):
        def __init__(self, state, attribute=False):
            self._state = state
            self._lock = threading.Lock()
            self.calls = 0
            self.by_atom = {}
            self.attribute = attribute

        def _count(self):
            with self._lock:
                self.calls += 1
                if self.attribute:
                    self.by_atom.setdefault(current_atom(), []).append("api")

        def _read(self):
            self._count()
            self._pause(self._state)
            return self._state

        def _change(self):
            cloud = self

            class _Changing:
                def __enter__(self):
                    cloud._count()
                    cloud._lock.acquire()
                    return cloud._state

                def __exit__(self, *exc):
                    cloud._lock.release()
                    if exc[0] is None:
                        cloud._pause(cloud._state)
            return _Changing()

    return MemoryHosts, MemoryCloud


# ---- preparing the cloud -----------------------------------------------------------------------
def _fast_sqlite(url):
    engine = sa.create_engine(url)

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.execute("PRAGMA synchronous=OFF")
        # WAL (kept in the file): readers and the writer do not block each other, as with the
        # MVCC of the MySQL/MariaDB a real Nova runs on
        dbapi_conn.execute("PRAGMA journal_mode=WAL")
    return engine


def prepare(directory: pathlib.Path, vms: int, hosts: int) -> pathlib.Path:
    """Seeded cell/API databases and the matching estate (hosts, cloud) as JSON, cached."""
    template = directory / f"template-{vms}-{hosts}"
    if (template / "ready.json").exists():
        return template
    shutil.rmtree(template, ignore_errors=True)
    template.mkdir(parents=True)
    from novapurge.sandbox import estate as sandbox_estate
    from novapurge.sandbox.hosts import EMPTY_HOST
    from novapurge.sandbox.novadb import create_schema
    from novapurge.sandbox.seed import NovaSeeder
    MemoryHosts, MemoryCloud = _memory_classes()
    from novapurge.drivers.ssh import SshOptions

    started = time.monotonic()
    urls = {w: f"sqlite:///{template / w}.sqlite" for w in ("cell", "api")}
    cell, api = _fast_sqlite(urls["cell"]), _fast_sqlite(urls["api"])
    create_schema(cell, "main")
    create_schema(api, "api")
    seeder = NovaSeeder(cell, api, cell_url=urls["cell"], seed=7)
    names = [f"compute-{i + 1}" for i in range(hosts)]
    host_states = {name: copy.deepcopy(EMPTY_HOST) for name in names}
    sim_hosts = MemoryHosts(host_states, SshOptions())
    cloud_state = {"down": [], "servers": {}, "ports": {}, "volumes": {}, "images": {},
                   "allocations": {}}
    cloud = MemoryCloud(cloud_state)
    infos = []
    for i in range(vms):
        info = seeder.add_instance(name=f"bench-{i:05d}", vm_state="error", fault=True,
                                   host=names[i % hosts], vifs=("ovs-hybrid",),
                                   legacy_quota=True)
        infos.append(info)
        network_info, bdms = sandbox_estate.instance_traces(cell, info["uuid"])
        sim_hosts.host(info["host"]).add_instance(info["uuid"], info["instance_name"],
                                                  network_info, bdms)
        cloud.add_server(info["uuid"], name=info["name"], vm_state="error", status="ERROR",
                         host=info["host"], hypervisor_hostname=info["host"],
                         instance_name=info["instance_name"], project_id=info["project_id"],
                         user_id=info["user_id"])
        for vif in network_info:
            cloud.add_port(port_id=vif["id"], device_id=info["uuid"],
                           mac_address=vif["address"], binding_host_id=info["host"],
                           network_id=vif["network"]["id"], project_id=info["project_id"])
        sandbox_estate._allocations(cloud, api, dict(info, uuid=info["uuid"]))
        if (i + 1) % 500 == 0:
            print(f"  seeded {i + 1}/{vms} VMs ({time.monotonic() - started:.0f} s)",
                  file=sys.stderr)
    cell.dispose()
    api.dispose()
    (template / "estate.json").write_text(json.dumps({"hosts": host_states,
                                                      "cloud": cloud_state}))
    (template / "vms.json").write_text(json.dumps([
        {"uuid": i["uuid"], "host": i["host"]} for i in infos]))
    (template / "ready.json").write_text(json.dumps({"vms": vms, "hosts": hosts,
                                                     "seconds": time.monotonic() - started}))
    return template


def fresh_copy(template: pathlib.Path, run: pathlib.Path) -> pathlib.Path:
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    for name in ("cell.sqlite", "api.sqlite", "estate.json", "vms.json"):
        shutil.copyfile(template / name, run / name)
    api = sa.create_engine(f"sqlite:///{run / 'api.sqlite'}")
    with api.begin() as conn:   # the cell mapping points at this copy
        conn.execute(sa.text("UPDATE cell_mappings SET database_connection = :url"),
                     {"url": f"sqlite:///{run / 'cell.sqlite'}"})
    api.dispose()
    return run


# ---- one measurement (a child process) ---------------------------------------------------------
def rss_mb() -> float:
    """The process's peak RSS so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    """The process's RSS now (Linux)."""
    resident_pages = int(pathlib.Path("/proc/self/statm").read_text().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def child(args) -> dict:
    """Purge the run directory's VMs (all, or the first one alone to attribute its operations)."""
    run = pathlib.Path(args.child)
    from novapurge.drivers.novadb import NovaDatabases
    from novapurge.drivers.ssh import SshOptions
    from novapurge.flows.run import Purger
    from novapurge.persistence.journal import Journal
    from novapurge.persistence.ledger import Actor
    MemoryHosts, MemoryCloud = _memory_classes()

    before_estate = current_rss_mb()
    estate = json.loads((run / "estate.json").read_text())
    vms = json.loads((run / "vms.json").read_text())
    alone = args.alone
    if alone:
        vms = vms[:1]
    index, shares = (int(part) for part in args.share.split("/"))
    vms = vms[index::shares]      # VM i is on host i % hosts: shares of whole hosts
    for state in estate["hosts"].values():
        state["latency"] = args.latency
    estate["cloud"]["latency"] = args.api_latency
    hosts = MemoryHosts(estate["hosts"], SshOptions(max_channels=args.host_limit),
                        attribute=alone)
    cloud = MemoryCloud(estate["cloud"], attribute=alone)
    estate_mb = current_rss_mb() - before_estate    # the simulated hosts and cloud, not the tool's
    journal = Journal(f"sqlite:///{run / 'journal.sqlite'}", Actor("bench"))
    novadb = NovaDatabases(f"sqlite:///{run / 'cell.sqlite'}", f"sqlite:///{run / 'api.sqlite'}")
    purger = Purger(journal, novadb, hosts=hosts, cloud=cloud)
    baseline = rss_mb()
    started, started_at = time.monotonic(), time.time()
    purge_id, outcomes = purger.purge([vm["uuid"] for vm in vms], parallel=args.parallel)
    wall = time.monotonic() - started
    results = {}
    for outcome in outcomes:
        results[outcome.result] = results.get(outcome.result, 0) + 1
    failed = [o.as_dict() for o in outcomes if o.result != "succeeded"][:5]
    report = {"vms": len(vms), "wall_s": wall, "results": results, "failed_examples": failed,
              "rss_baseline_mb": baseline, "rss_peak_mb": rss_mb(), "rss_estate_mb": estate_mb,
              "connections": hosts.connections_opened(),
              "peak_channels": {n: hosts.runner(n).peak_channels
                                for n in hosts.connections_opened()},
              "host_commands": {n: m["commands"] for n, m in hosts.meters.items()},
              "api_calls": cloud.calls, "cpu_s": sum(os.times()[:2]),
              "started_at": started_at, "ended_at": started_at + wall}
    if alone:
        report["critical_path"] = _critical_path(purger, purge_id, vms[0]["uuid"], hosts, cloud,
                                                 args)
        (flow_detail,) = list(purger.journal.book(purge_id))
        report["taskflow_floor_cpu_ms"] = _taskflow_floor(len(list(flow_detail)))
    journal.close()
    novadb.dispose()
    return report


def _taskflow_floor(atoms: int, runs: int = 40) -> float:
    """CPU milliseconds TaskFlow itself spends on one flow of `atoms` no-op tasks (serial
    engine, in-memory backend): what any per-VM engine costs before it does any work."""
    import uuid
    import taskflow.engines
    from taskflow import task
    from taskflow.patterns import linear_flow

    class Noop(task.Task):
        def execute(self):
            return None

    started = time.process_time()
    for _ in range(runs):
        flow = linear_flow.Flow("floor").add(*(Noop(f"noop-{i}:{uuid.uuid4()}")
                                               for i in range(atoms)))
        taskflow.engines.load(flow, engine="serial").run()
    return (time.process_time() - started) / runs * 1000


def _critical_path(purger, purge_id, vm_uuid, hosts, cloud, args) -> dict:
    """The VM's longest chain of remote operations: preflight, then its flow's step graph."""
    import networkx as nx
    from taskflow.engines import helpers
    from novapurge.flows.purge import tasks_and_links

    ops = {}
    for meter in hosts.meters.values():
        for atom, kinds in meter["by_atom"].items():
            ops.setdefault(atom, []).extend(kinds)
    for atom, kinds in cloud.by_atom.items():
        ops.setdefault(atom, []).extend(kinds)
    cost = {atom: sum(args.latency if k == "host" else args.api_latency for k in kinds)
            for atom, kinds in ops.items()}
    (fd,) = list(purger.journal.book(purge_id))
    flow = helpers.flow_from_detail(fd)
    nodes, links = tasks_and_links(flow)
    graph = nx.DiGraph()
    for task in nodes:
        graph.add_node(task.name, cost=cost.get(task.name, 0.0))
    graph.add_edges_from((u.name, v.name) for u, v in links)
    longest = {}
    for node in nx.topological_sort(graph):
        before = max((longest[p] for p in graph.predecessors(node)), default=0.0)
        longest[node] = before + graph.nodes[node]["cost"]
    end = max(longest, key=longest.get)
    return {"preflight_s": cost.get("preflight", 0.0), "flow_s": longest[end],
            "total_s": cost.get("preflight", 0.0) + longest[end],
            "ops": {a: len(k) for a, k in ops.items()}}


def measure(template, directory, args, alone=False) -> dict:
    """One measurement: the VM alone, or the batch in `--processes` child processes at once
    (each purging its share of the list against the same journal and Nova databases)."""
    run = fresh_copy(template, directory / ("run-alone" if alone else "run-batch"))
    shares = 1 if alone else args.processes
    if shares > 1:      # the journal exists before they start, as it would in real use
        from novapurge.persistence.journal import Journal
        from novapurge.persistence.ledger import Actor
        Journal(f"sqlite:///{run / 'journal.sqlite'}", Actor("bench")).close()
    command = [sys.executable, __file__, "--child", str(run), "--latency", str(args.latency),
               "--api-latency", str(args.api_latency), "--parallel", str(args.parallel),
               "--host-limit", str(args.host_limit)] + (["--alone"] if alone else [])
    procs = [subprocess.Popen(command + ["--share", f"{i}/{shares}"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=ROOT)
             for i in range(shares)]
    reports = []
    for proc in procs:
        out, err = proc.communicate()
        if proc.returncode:
            sys.exit(f"measurement failed (rc {proc.returncode}):\n{err[-4000:]}")
        reports.append(json.loads(out.strip().splitlines()[-1]))
    return reports[0] if shares == 1 else merge_shares(reports)


def merge_shares(reports) -> dict:
    """The batch as the processes made it together: from the first start to the last end."""
    merged = {"vms": sum(r["vms"] for r in reports),
              "wall_s": max(r["ended_at"] for r in reports) - min(r["started_at"]
                                                                   for r in reports),
              "results": {}, "failed_examples": [], "connections": {}, "peak_channels": {},
              "host_commands": {}, "api_calls": sum(r["api_calls"] for r in reports),
              "cpu_s": sum(r["cpu_s"] for r in reports),
              "rss_peak_mb": max(r["rss_peak_mb"] for r in reports),
              "rss_baseline_mb": max(r["rss_baseline_mb"] for r in reports),
              "rss_estate_mb": max(r["rss_estate_mb"] for r in reports),
              "processes": len(reports)}
    for report in reports:
        merged["failed_examples"] += report["failed_examples"][:5 - len(merged["failed_examples"])]
        for result, count in report["results"].items():
            merged["results"][result] = merged["results"].get(result, 0) + count
        for key in ("connections", "host_commands"):
            for host, count in report[key].items():
                merged[key][host] = merged[key].get(host, 0) + count
        for host, peak in report["peak_channels"].items():
            merged["peak_channels"][host] = max(peak, merged["peak_channels"].get(host, 0))
    return merged


# ---- the report --------------------------------------------------------------------------------
def cpu_reference() -> float:
    """CPU seconds of a fixed pure-Python loop (10 million additions): the batch is CPU-bound, so
    its figures compare across machines only with this one beside them."""
    started, total = time.process_time(), 0
    for i in range(10_000_000):
        total += i
    return time.process_time() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vms", type=int, default=1000)
    parser.add_argument("--hosts", type=int, default=50)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--api-latency", type=float, default=0.05)
    parser.add_argument("--parallel", type=int, default=128)
    parser.add_argument("--host-limit", type=int, default=8)
    parser.add_argument("--processes", type=int, default=1,
                        help="batch processes side by side, each purging its share of the VMs "
                             "(whole hosts) against one journal, as several `purge --from-file` "
                             "runs or conductors on one machine would [default: 1]")
    parser.add_argument("--connect-cost", type=float, default=None,
                        help="a new SSH connection, on top of each command [default: --latency]")
    parser.add_argument("--dir", type=pathlib.Path, default=DEFAULT_DIR)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--alone", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--share", default="0/1", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.processes < 1 or args.hosts % args.processes:
        parser.error("--processes must be at least 1 and divide --hosts (shares of whole hosts)")
    if args.child:
        print(json.dumps(child(args)))
        return
    connect = args.latency if args.connect_cost is None else args.connect_cost

    print(f"preparing {args.vms} VMs over {args.hosts} hosts in {args.dir} ...", file=sys.stderr)
    template = prepare(args.dir, args.vms, args.hosts)
    calibration = measure(template, args.dir, args, alone=True)
    print(f"running the batch (parallel {args.parallel}, host limit {args.host_limit}, "
          f"{args.processes} process{'es' if args.processes > 1 else ''}) ...",
          file=sys.stderr)
    batch = measure(template, args.dir, args)

    commands = sum(batch["host_commands"].values())
    replay = commands * (args.latency + connect) + batch["api_calls"] * args.api_latency
    busiest = max(batch["host_commands"].values())
    host_bound = busiest * args.latency / args.host_limit
    lower = max(host_bound, calibration["critical_path"]["total_s"])
    floor_cpu = calibration["taskflow_floor_cpu_ms"] * args.vms / 1000
    wall = batch["wall_s"]
    figures = {
        "vms": args.vms, "hosts": args.hosts, "latency_s": args.latency,
        "api_latency_s": args.api_latency, "parallel": args.parallel,
        "host_limit": args.host_limit, "processes": args.processes, "results": batch["results"],
        "failed_examples": batch["failed_examples"], "wall_s": round(wall, 2),
        "vms_per_s": round(args.vms / wall, 1), "cpu_s": round(batch["cpu_s"], 1),
        "rss_peak_mb": round(batch["rss_peak_mb"], 1),
        "rss_before_batch_mb": round(batch["rss_baseline_mb"], 1),
        "rss_estate_mb": round(batch["rss_estate_mb"], 1),
        "rss_peak_without_estate_mb": round(batch["rss_peak_mb"] - batch["rss_estate_mb"], 1),
        "ssh_connections_per_host": sorted(set(batch["connections"].values())),
        "peak_channels_max": max(batch["peak_channels"].values()),
        "host_commands": commands, "api_calls": batch["api_calls"],
        "replay_s": round(replay, 1), "vs_replay": round(replay / wall, 1),
        "lower_bound_s": round(lower, 2), "host_bound_s": round(host_bound, 2),
        "critical_path_s": round(calibration["critical_path"]["total_s"], 2),
        "vs_lower_bound": round(wall / lower, 2),
        "one_vm_alone_s": round(calibration["wall_s"], 2),
        "cpu_reference_s": round(cpu_reference(), 2),
        "taskflow_floor_cpu_s": round(floor_cpu, 1),
        "vs_taskflow_floor_on_all_cores": round(wall / (floor_cpu / os.cpu_count()), 2)}
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"{args.vms} VMs over {args.hosts} hosts, {args.latency * 1000:g} ms per command, "
          f"{args.api_latency * 1000:g} ms per API call, parallel {args.parallel}, host limit "
          f"{args.host_limit}" + (f", {args.processes} processes side by side, one journal"
                                  if args.processes > 1 else ""))
    print(f"  results            {batch['results']}")
    print(f"  wall time          {wall:8.1f} s   ({args.vms / wall:.1f} VMs/s, "
          f"CPU {batch['cpu_s']:.0f} s)")
    print(f"  peak RSS           {batch['rss_peak_mb']:8.0f} MB  (before the batch: "
          f"{batch['rss_baseline_mb']:.0f} MB, of which the simulated estate "
          f"{batch['rss_estate_mb']:.0f} MB: {figures['rss_peak_without_estate_mb']:.0f} MB "
          f"without it)")
    print(f"  SSH connections    {sorted(set(batch['connections'].values()))} per host; "
          f"at most {figures['peak_channels_max']} commands in flight on a host")
    print(f"  remote operations  {commands} host commands, {batch['api_calls']} API calls")
    print(f"  (a) sequential replay  {replay:8.1f} s  -> batch is {replay / wall:6.1f}x faster "
          f"(target >= {TARGETS['vs_replay']:g}x)")
    print(f"  (b) lower bound        {lower:8.2f} s  (busiest host {host_bound:.2f} s, critical "
          f"path {calibration['critical_path']['total_s']:.2f} s) -> batch is "
          f"{wall / lower:.2f}x it (target <= {TARGETS['vs_lower_bound']:g}x)")
    print(f"  (c) TaskFlow's own CPU {floor_cpu:8.1f} s  for {args.vms} flows of this size (no-op "
          f"tasks, in-memory backend): {floor_cpu / os.cpu_count():.1f} s on {os.cpu_count()} "
          f"cores at best -> batch is {figures['vs_taskflow_floor_on_all_cores']:.2f}x it")
    print(f"  one VM alone           {calibration['wall_s']:8.2f} s")
    print(f"  this machine's CPU: {figures['cpu_reference_s']:.2f} s for the reference loop "
          f"(10 million Python additions)")


if __name__ == "__main__":
    main()
