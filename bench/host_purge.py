"""A one-VM purge on a real namespace host: the tool's time against the commands it cannot avoid.

    python bench/host_purge.py [--repeat R] [--json]        (as root; `bash scripts/host-packages.sh`)

One compute host (tests/labs/hostlab.py: sshd, libvirtd + a QEMU TCG domain, OVS br-int,
iscsiadm node records) carries one stuck instance seeded in SQLite Nova databases: an OVS hybrid
VIF (qbr/qvb/qvo + br-int port), an OVS native VIF (tap on br-int), a multipath iSCSI volume
(two node records) and its three instance dirs. Each round:

1. tool: `Purger.purge()` in process (what `novapurge purge --skip volumes,ports` runs after its
   imports): discovery, guards, the host chain, the DB steps, the point of no return, the
   quarantine emptied; journal and ledger on a SQLite file. Its wall time, the host's SSH
   connections opened, the round trips it made.
2. the host is rebuilt as it was, and the commands of the purge that changed the host (those in
   the tool's command history that are not reads and succeeded: a `ip link del` of a veth's
   peer already gone with it, or an `iscsiadm --logout` without a session (rc 21), changed
   nothing and is left out) are run again directly, one `exec` each, in
   the same order over one fresh SSH connection: their own times, summed, are the irreducible
   cost (virsh destroy/undefine, ovs-vsctl del-port, ip link del, iscsiadm update/logout/delete,
   mkdir/mv/rm/rmdir).

Prints the medians of R rounds and the ratio tool / irreducible (target <= 1.5) and the SSH
connections per host (target 1). `--cli` also times the whole `novapurge purge` command, imports
included, once.
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import sqlalchemy as sa

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "labs"))

import hostlab  # noqa: E402

from novapurge import config as np_config  # noqa: E402
from novapurge.drivers import setup  # noqa: E402
from novapurge.drivers.novadb import NovaDatabases  # noqa: E402
from novapurge.drivers.ssh import HostAddress, SshOptions, SshRunner  # noqa: E402
from novapurge.flows.run import Purger  # noqa: E402
from novapurge.persistence.journal import Journal  # noqa: E402
from novapurge.persistence.ledger import Actor  # noqa: E402
from novapurge.sandbox import novadb  # noqa: E402
from novapurge.sandbox.estate import instance_traces  # noqa: E402
from novapurge.sandbox.seed import NovaSeeder  # noqa: E402

SKIP = ["ports", "volumes"]         # no cloud API here
VM = dict(name="web-err", vm_state="error", fault=True, vifs=("ovs-hybrid", "ovs-native"),
          volumes=("iscsi-multipath",))
# What changes a host; everything else the tool runs is a read (dumpxml, dominfo, domstate,
# ip link show, ovs-vsctl port-to-br/find, iscsiadm show/session, stat, find).
_CHANGES = {("virsh", "destroy"), ("virsh", "undefine"), ("ip", "link"),
            ("ovs-vsctl", "--if-exists"), ("mkdir", None), ("mv", None), ("rm", None),
            ("rmdir", None)}


def changes_host(argv) -> bool:
    if argv[0] == "iscsiadm":
        return any(a in argv for a in ("--op", "--logout", "--login")) and "show" not in argv
    if argv[:3] == ("ip", "link", "show") or argv[:2] == ("ip", "-d"):
        return False
    return (argv[0], argv[1] if len(argv) > 1 else None) in _CHANGES or \
        (argv[0], None) in _CHANGES


class Bench:
    def __init__(self, directory: pathlib.Path):
        self.directory = directory
        self.lab = hostlab.HostLab(directory / "lab", names=("cmp1",), prefix="npbench")
        self.host = None

    def __enter__(self):
        self.lab.start()
        self.host = self.lab.hosts["cmp1"]
        return self

    def __exit__(self, *exc):
        self.lab.stop()

    def seed(self, round_dir: pathlib.Path) -> dict:
        """Fresh Nova DBs with the VM, the same VM on the host; returns the run's settings."""
        round_dir.mkdir(parents=True)
        urls = {w: f"sqlite:///{round_dir}/{w}.sqlite" for w in ("cell", "api")}
        cell, api = sa.create_engine(urls["cell"]), sa.create_engine(urls["api"])
        try:
            novadb.create_schema(cell, "main")
            novadb.create_schema(api, "api")
            info = NovaSeeder(cell, api, cell_url=urls["cell"], seed=11).add_instance(
                host="cmp1", **VM)
            network_info, bdms = instance_traces(cell, info["uuid"])
        finally:
            cell.dispose()
            api.dispose()
        self.wipe()
        self.host.add_instance(info["uuid"], info["instance_name"], network_info, bdms)
        config = round_dir / "novapurge.toml"
        address = self.lab.ssh_config()["cmp1"]
        config.write_text(f'[ssh]\nknown_hosts = "{self.lab.known_hosts}"\n\n[hosts.cmp1]\n'
                          + "".join(f"{k} = {json.dumps(v)}\n" for k, v in address.items()))
        return {"urls": urls, "config": str(config), "vm": info["uuid"], "dir": round_dir}

    def wipe(self):
        host = self.host
        for name in host.run(["virsh", "list", "--all", "--name"]).stdout.split():
            host.run(["virsh", "destroy", name], check=False)
            host.run(["virsh", "undefine", name, "--nvram"], check=False)
        for port in host.run(["ovs-vsctl", "list-ports", "br-int"]).stdout.split():
            host.run(["ovs-vsctl", "--if-exists", "del-port", "br-int", port])
        for link in json.loads(host.run(["ip", "-j", "link", "show"]).stdout):
            if link["ifname"][:3] in ("tap", "qbr", "qvb", "qvo", "brq"):
                host.run(["ip", "link", "del", "dev", link["ifname"]], check=False)
        host.run(["iscsiadm", "-m", "node", "-o", "delete"], check=False)
        host.run(["sh", "-c", "rm -rf /var/lib/nova/instances/* /var/lib/nova/instances/.[!.]*"])

    def tool(self, run: dict) -> dict:
        """The in-process purge: wall time, connections, round trips, commands run."""
        settings = np_config.load(config=run["config"], cell_url=run["urls"]["cell"],
                                  api_url=run["urls"]["api"])
        pool = setup.host_pool(settings)
        journal = Journal(f"sqlite:///{run['dir']}/journal.sqlite", Actor("bench"))
        purger = Purger(journal, NovaDatabases(settings.cell_url, settings.api_url, {}),
                        hosts=pool)
        try:
            started = time.perf_counter()
            _, outcomes = purger.purge([run["vm"]], skip=SKIP)
            wall = time.perf_counter() - started
            runner = pool.runner("cmp1")
            history, trips = list(runner.history), runner.round_trips
        finally:
            purger.close()
            pool.close()
            journal.close()
        assert [o.result for o in outcomes] == ["succeeded"], outcomes
        return {"wall": wall, "connections": pool.connections_opened()["cmp1"],
                "commands": len(history), "round_trips": trips,
                "changes": [r.argv for r in history if changes_host(r.argv) and r.rc == 0]}

    def irreducible(self, run: dict, changes: list) -> dict:
        """The tool's host changes, replayed one exec each over one fresh connection."""
        self.seed_again(run)
        address = HostAddress("cmp1", **self.lab.ssh_config()["cmp1"])
        runner = SshRunner(address, SshOptions(known_hosts=str(self.lab.known_hosts)))
        try:
            runner.run(["true"])                    # connect outside the measurement
            times = []
            for argv in changes:
                started = time.perf_counter()
                runner.run(argv, ok_codes=(0, 1, 21), timeout=180)
                times.append(time.perf_counter() - started)
        finally:
            runner.close()
        return {"sum": sum(times),
                "per_command": [(" ".join(a)[:90], t) for a, t in zip(changes, times)]}

    def seed_again(self, run: dict):
        """The same VM on the host again (the DBs are not needed for the replay)."""
        cell = sa.create_engine(run["urls"]["cell"])
        try:
            with cell.connect() as conn:
                name = conn.execute(sa.text("SELECT id FROM instances WHERE uuid = :u"),
                                    {"u": run["vm"]}).scalar()
            # the purge soft-deleted the rows; read the traces regardless of `deleted`
            with cell.connect() as conn:
                cache = conn.execute(sa.text("SELECT network_info FROM instance_info_caches "
                                             "WHERE instance_uuid = :u"), {"u": run["vm"]}).scalar()
                bdms = [dict(r._mapping) for r in conn.execute(sa.text(
                    "SELECT volume_id, connection_info, attachment_id FROM block_device_mapping "
                    "WHERE instance_uuid = :u AND destination_type = 'volume'"), {"u": run["vm"]})]
        finally:
            cell.dispose()
        self.wipe()
        self.host.add_instance(run["vm"], "instance-%08x" % name, json.loads(cache), bdms)

    def cli(self, run: dict) -> float:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NOVAPURGE_")}
        env.update(NOVAPURGE_DB=run["urls"]["cell"], NOVAPURGE_API_DB=run["urls"]["api"],
                   NOVAPURGE_JOURNAL=f"sqlite:///{run['dir']}/cli-journal.sqlite",
                   NOVAPURGE_CONFIG=run["config"])
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "novapurge", "purge", "--yes", run["vm"], "--skip",
                        ",".join(SKIP), "-f", "json"], env=env, check=True, capture_output=True,
                       cwd=run["dir"])
        return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--cli", action="store_true", help="also time `novapurge purge` once")
    args = parser.parse_args()
    hostlab.cleanup_stale("npbench")
    rounds = []
    with tempfile.TemporaryDirectory(prefix="np-bench-") as tmp, Bench(pathlib.Path(tmp)) as bench:
        warm = bench.seed(pathlib.Path(tmp) / "warm")      # the host's first QEMU start is slow
        bench.tool(warm)
        for n in range(args.repeat):
            run = bench.seed(pathlib.Path(tmp) / f"round-{n}")
            tool = bench.tool(run)
            base = bench.irreducible(run, tool["changes"])
            rounds.append({"tool": tool["wall"], "irreducible": base["sum"],
                           "ratio": tool["wall"] / base["sum"],
                           "connections": tool["connections"], "commands": tool["commands"],
                           "round_trips": tool["round_trips"], "changes": len(tool["changes"]),
                           "per_command": base["per_command"]})
        cli = None
        if args.cli:
            cli = bench.cli(bench.seed(pathlib.Path(tmp) / "cli"))
    med = {k: statistics.median(r[k] for r in rounds)
           for k in ("tool", "irreducible", "ratio", "commands", "round_trips", "changes")}
    report = {"rounds": len(rounds), "median": med,
              "connections_per_host": max(r["connections"] for r in rounds),
              "cli_seconds": cli, "per_command_last_round": rounds[-1]["per_command"]}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"one-VM purge on a namespace host, median of {len(rounds)} rounds")
    print(f"  tool (in process)        {med['tool']:.3f} s   "
          f"({med['commands']:.0f} commands in {med['round_trips']:.0f} round trips)")
    print(f"  irreducible commands     {med['irreducible']:.3f} s   "
          f"({med['changes']:.0f} changes, one exec each over one connection)")
    print(f"  ratio tool/irreducible   {med['ratio']:.2f}x   (target <= 1.5)")
    print(f"  SSH connections per host {report['connections_per_host']}   (target 1)")
    if cli is not None:
        print(f"  `novapurge purge` CLI    {cli:.3f} s (imports and journal setup included)")
    for command, seconds in report["per_command_last_round"]:
        print(f"    {seconds:6.3f} s  {command}")


if __name__ == "__main__":
    main()
