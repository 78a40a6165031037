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
2. the irreducible work: the commands of that purge that changed the host (the tool's command
   history without its reads, and without what changed nothing: an `ip link del` of a veth's
   peer already gone with it, an `iscsiadm --logout` without a session, rc 21), replayed in the
   same order on the host rebuilt as it was, over one SSH connection opened beforehand (plain
   paramiko, not novapurge's driver), measured twice:
   - exec each: one session per command, as `ssh host CMD` on a shared connection runs them
     (each pays sshd's session set-up and a shell start, about 45 ms here);
   - own time: the commands' own run time as the host measures it (one shell runs them all).

Prints the medians of R rounds: tool / exec-each (the target: <= 1.5) and tool / own time (the
floor: what the journal, the before-state reads and the DB steps cost on top), and the SSH
connections per host (target 1). `--cli` also times the whole `novapurge purge` command once,
imports included. The machine's load average is printed: on a busy 2-core machine every figure
moves.
"""

import argparse
import json
import os
import pathlib
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

import paramiko
import sqlalchemy as sa

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "labs"))

import hostlab  # noqa: E402

from novapurge import config as np_config  # noqa: E402
from novapurge.drivers import setup  # noqa: E402
from novapurge.drivers.novadb import NovaDatabases  # noqa: E402
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
        """The tool's host changes replayed on the rebuilt host, one at a time, over one SSH
        connection opened beforehand: `exec` (one session per command, as `ssh host CMD` on a
        shared connection runs them), and the commands' own time (all in one remote shell)."""
        address = self.lab.ssh_config()["cmp1"]
        times = {}
        for mode in ("exec", "own"):
            self.seed_again(run)
            client = paramiko.SSHClient()
            client.load_host_keys(str(self.lab.known_hosts))
            client.connect(address["address"], port=address["port"], username=address["user"],
                           key_filename=address["key_file"], allow_agent=False,
                           look_for_keys=False)
            try:
                times[mode] = (_exec_each if mode == "exec" else _own_times)(client, changes)
            finally:
                client.close()
        return {"exec": sum(times["exec"]), "own": sum(times["own"]),
                "per_command": [(" ".join(a)[:90], e, o)
                                for a, e, o in zip(changes, times["exec"], times["own"])]}

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


def _exec_each(client, changes) -> list:
    """Seconds of each command run in its own session (exec), as seen from here."""
    times = []
    for argv in changes:
        started = time.perf_counter()
        _, out, err = client.exec_command(shlex.join(argv), timeout=180)
        out.read(), err.read()
        if out.channel.recv_exit_status() not in (0, 1, 21):
            raise RuntimeError(f"replay of {shlex.join(argv)} failed")
        times.append(time.perf_counter() - started)
    return times


def _own_times(client, changes) -> list:
    """Seconds of each command as the host measures it (one shell runs them all in order)."""
    script = "\n".join(f"s=$(date +%s%N); {shlex.join(a)} >/dev/null 2>&1 </dev/null; "
                       f"e=$(date +%s%N); echo $((e - s))" for a in changes)
    _, out, _ = client.exec_command(script, timeout=300)
    return [int(ns) / 1e9 for ns in out.read().decode().split()]


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
            rounds.append({"tool": tool["wall"], "exec": base["exec"], "own": base["own"],
                           "ratio_exec": tool["wall"] / base["exec"],
                           "ratio_own": tool["wall"] / base["own"],
                           "connections": tool["connections"], "commands": tool["commands"],
                           "round_trips": tool["round_trips"], "changes": len(tool["changes"]),
                           "per_command": base["per_command"]})
        cli = None
        if args.cli:
            cli = bench.cli(bench.seed(pathlib.Path(tmp) / "cli"))
    med = {k: statistics.median(r[k] for r in rounds)
           for k in ("tool", "exec", "own", "ratio_exec", "ratio_own", "commands", "round_trips",
                     "changes")}
    report = {"rounds": len(rounds), "median": med,
              "connections_per_host": max(r["connections"] for r in rounds),
              "cli_seconds": cli, "per_command_last_round": rounds[-1]["per_command"],
              "load_average": os.getloadavg()}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"one-VM purge on a namespace host, median of {len(rounds)} rounds "
          f"(load average {report['load_average'][0]:.1f})")
    print(f"  tool, in process            {med['tool']:.3f} s  ({med['commands']:.0f} commands "
          f"in {med['round_trips']:.0f} round trips, reads included)")
    print(f"  irreducible, exec each      {med['exec']:.3f} s  ({med['changes']:.0f} changes, "
          f"one session each over one connection)")
    print(f"  irreducible, own time       {med['own']:.3f} s  (the same, as the host times them)")
    print(f"  ratio tool / exec each      {med['ratio_exec']:.2f}x  (target <= 1.5)")
    print(f"  ratio tool / own time       {med['ratio_own']:.2f}x")
    print(f"  SSH connections per host    {report['connections_per_host']}  (target 1)")
    if cli is not None:
        print(f"  `novapurge purge` CLI       {cli:.3f} s  (imports and journal setup included)")
    print("  last round, per command (exec / own):")
    for command, exec_seconds, own in report["per_command_last_round"]:
        print(f"    {exec_seconds:6.3f} {own:6.3f}  {command}")


if __name__ == "__main__":
    main()
