"""Real compute hosts for tests: one network + mount + pid namespace per host.

Each host runs its own sshd, Open vSwitch (userspace datapath, `br-int`), virtlogd + libvirtd
(QEMU TCG) and has its own iSCSI node database, on private overlays of /run /etc /var/lib /var/log
/var/cache whose writable layers live on a per-host tmpfs (recipe: /work/shared/test-hosts.md).
The host's PID 1 is a small reaper (zombie QEMUs would otherwise look alive to libvirt); killing
it ends every process of the host. It also stands in for iscsid, which cannot run here (no
iscsi_tcp module): it accepts iscsiadm's connection on the host's abstract socket, reads the request and
closes the connection without an answer, so `iscsiadm -m node -o new` goes on with its defaults ("read error, daemon died?") instead
of retrying for a second. Node records are written by the real iscsiadm either way.

Every host is recorded in REGISTRY with the pid and start time of the process that owns it, so
`cleanup_stale` removes what a crashed run left behind without touching a live run's hosts.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from novapurge.sandbox.hosts import iscsi_node_commands

REGISTRY = Path("/run/hostlab")
NETWORK = ipaddress.ip_network("127.20.0.0/16")   # one /30 per host: .1 machine side, .2 host
ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
       "LC_ALL": "C", "HOME": "/root"}
OVS_CTL = "/usr/share/openvswitch/scripts/ovs-ctl"
INSTANCES_PATH = "/var/lib/nova/instances"
_NAME = re.compile(r"^[a-z][a-z0-9]*$")
_OVS_INTERNAL = {"lo", "eth0", "ovs-netdev", "ovs-system"}

# PID 1 of a host: mounts its private overlays, then becomes a reaper.
# $1 tmpfs mount point, $2 empty file, $3 host name, $4 python
_HOLDER = r"""set -e
mount -t tmpfs -o size=64m,mode=755 hostlab "$1"
for d in run etc var/lib var/log var/cache; do
  n=${d//\//_}; mkdir -p "$1/$n/up" "$1/$n/wk"
  mount -t overlay overlay -o "lowerdir=/$d,upperdir=$1/$n/up,workdir=$1/$n/wk" "/$d"
done
for f in .bashrc .profile .bash_profile; do   # pyenv init in .bashrc costs ~140 ms per ssh
  if [ -f "/root/$f" ]; then mount --bind "$2" "/root/$f"; fi
done
mkdir -p /run/sshd /run/openvswitch /var/lib/nova/instances
hostname "$3"
exec "$4" -I -c '
import os, socket, threading, time

def iscsid_stand_in():
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind("\0ISCSIADM_ABSTRACT_NAMESPACE")
    listener.listen(64)
    while True:
        client = listener.accept()[0]
        client.settimeout(2)
        try:
            client.recv(1 << 20)        # the request, one write; unread, closing would SIGPIPE
        except OSError:
            pass
        client.close()

threading.Thread(target=iscsid_stand_in, daemon=True).start()
print("ready", flush=True)
os.close(1)
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(0.2)
'
"""

_LIBVIRT = r"""getent passwd libvirt-qemu >/dev/null || {
  groupadd -r libvirt-qemu; useradd -r -g libvirt-qemu libvirt-qemu; }
mkdir -p /var/log/libvirt/qemu /var/lib/libvirt/qemu /var/cache/libvirt /run/libvirt
printf 'user = "root"\ngroup = "root"\ncgroup_controllers = [ ]\nsecurity_driver = "none"\n' \
  > /etc/libvirt/qemu.conf
virtlogd -d
libvirtd -d
"""

_SSHD_CONFIG = """Port 22
ListenAddress {address}
HostKey {host_key}
AuthorizedKeysFile {authorized_keys}
PidFile /run/sshd.pid
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
UseDNS no
PrintMotd no
PrintLastLog no
MaxSessions 64
MaxStartups 64:30:128
Subsystem sftp /usr/lib/openssh/sftp-server
"""

# iSCSI record fields a purge changes or must restore (secrets are hashed in snapshots)
_ISCSI_FIELDS = ("node.name", "node.tpgt", "node.startup", "node.leading_login",
                 "node.conn[0].address", "node.conn[0].port", "node.conn[0].startup",
                 "iface.iscsi_ifacename", "iface.transport_name")
_ISCSI_SECRETS = ("node.session.auth.password", "node.session.auth.password_in")


class HostCommandError(subprocess.CalledProcessError):
    """A command on a lab host failed; the message names the host and carries stderr."""

    def __init__(self, host: str, proc: subprocess.CompletedProcess):
        super().__init__(proc.returncode, proc.args, proc.stdout, proc.stderr)
        self.host = host

    def __str__(self):
        return f"{self.host}: {' '.join(map(str, self.cmd))} -> rc {self.returncode}: {self.stderr}"


# ---- the machine side --------------------------------------------------------------------------
def _sh(argv: list, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run a command in the machine's own namespaces."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=ENV,
                          cwd="/", stdin=subprocess.DEVNULL)
    if check and proc.returncode:
        raise HostCommandError("machine", proc)
    return proc


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks (tells a pid from a later reuse), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _alive(process: list | None) -> bool:
    return bool(process) and process[1] is not None and _start_time(process[0]) == process[1]


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(FileNotFoundError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _ns_init(pid: int) -> int:
    """The pid (as the machine sees it) of the PID 1 of a pid namespace started under `pid`."""
    todo = [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(FileNotFoundError):
            status = Path(f"/proc/{current}/status").read_text()
            nspid = next(line for line in status.splitlines() if line.startswith("NSpid:"))
            if nspid.split()[1:][-1] == "1" and len(nspid.split()) > 2:
                return current
            todo += _children(current)
    raise RuntimeError(f"no pid namespace init under pid {pid}")


@contextlib.contextmanager
def _registry_lock():
    REGISTRY.mkdir(parents=True, exist_ok=True)
    with open(REGISTRY / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _records() -> dict[str, dict]:
    found = {}
    for path in REGISTRY.glob("*.json"):
        with contextlib.suppress(FileNotFoundError, ValueError):
            found[path.stem] = json.loads(path.read_text())
    return found


def _write_record(record: dict) -> None:
    path = REGISTRY / f"{record['ns']}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(path)


def _remove(ns: str, veth: str, holder: list | None) -> None:
    """Kill a host's processes, delete its veth and namespace, forget its record."""
    if _alive(holder):
        with contextlib.suppress(ProcessLookupError):
            os.kill(holder[0], signal.SIGKILL)
    if Path(f"/run/netns/{ns}").exists():
        for pid in _sh(["ip", "netns", "pids", ns], check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _alive(holder) and time.monotonic() < deadline:
        time.sleep(0.02)
    if Path(f"/sys/class/net/{veth}").exists():
        _sh(["ip", "link", "del", veth], check=False)
    if Path(f"/run/netns/{ns}").exists():
        _sh(["ip", "netns", "del", ns])
    (REGISTRY / f"{ns}.json").unlink(missing_ok=True)


def cleanup_stale(prefix: str = "np") -> None:
    """Remove the hosts (processes, veths, namespaces) of runs with this prefix that died.

    A host whose owning process is alive belongs to a concurrent run and is left alone; a
    namespace or veth with the prefix and no record is a leftover and goes.
    """
    with _registry_lock():
        records = _records()
        for ns, record in records.items():
            if ns.startswith(prefix) and not _alive(record["owner"]):
                _remove(ns, record["veth"], record.get("holder"))
        listed = _sh(["ip", "netns", "list"]).stdout.split("\n")
        for ns in (line.split()[0] for line in listed if line.strip()):
            if ns.startswith(prefix) and ns not in records:
                _remove(ns, f"v-{ns}", None)
        for link in Path("/sys/class/net").glob(f"v-{prefix}*"):
            if link.name[2:] not in records:
                _sh(["ip", "link", "del", link.name], check=False)


# ---- the lab -----------------------------------------------------------------------------------
class HostLab:
    """Real compute hosts in namespaces; a context manager; stop() removes everything it made."""

    def __init__(self, workdir: Path, names=("cmp1", "cmp2"), prefix: str = "np"):
        for name in (prefix, *names):
            if not _NAME.match(name):
                raise ValueError(f"host name or prefix {name!r}: lower-case letters and digits")
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate host names in {names}")
        self.workdir = Path(workdir)
        self.prefix = prefix
        self.names = tuple(names)
        self.client_key = self.workdir / "client_ed25519"
        self.known_hosts = self.workdir / "known_hosts"
        self.hosts: dict[str, LabHost] = {}

    def __enter__(self) -> "HostLab":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "HostLab":
        """Create the hosts (in parallel) with sshd, OVS and libvirtd ready; returns self."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.client_key.exists():
            _keygen(self.client_key, "hostlab-client")
        (self.workdir / "authorized_keys").write_text(
            self.client_key.with_suffix(".pub").read_text())
        atexit.register(self.stop)
        try:
            self._reserve()
            with concurrent.futures.ThreadPoolExecutor(len(self.hosts)) as pool:
                for future in [pool.submit(host._boot) for host in self.hosts.values()]:
                    future.result()
            self.known_hosts.write_text("".join(
                f"{host.address} {host.host_key.with_suffix('.pub').read_text().split(' ')[0]} "
                f"{host.host_key.with_suffix('.pub').read_text().split(' ')[1]}\n"
                for host in self.hosts.values()))
        except BaseException:
            self.stop()
            raise
        return self

    def _reserve(self) -> None:
        """Pick a free /30 per host and record each host before anything is created."""
        owner = [os.getpid(), _start_time(os.getpid())]
        with _registry_lock():
            records = _records()
            for name in self.names:
                ns = f"{self.prefix}-{name}"
                if ns in records and _alive(records[ns]["owner"]):
                    raise RuntimeError(f"host {ns} belongs to live pid {records[ns]['owner'][0]}")
            used = {r["index"] for r in records.values()} | _used_indexes()
            free = (i for i in range(NETWORK.num_addresses // 4) if i not in used)
            for name in self.names:
                ns = f"{self.prefix}-{name}"
                if ns in records or Path(f"/run/netns/{ns}").exists():
                    _remove(ns, f"v-{ns}", records.get(ns, {}).get("holder"))
                host = LabHost(name, ns, next(free), self.workdir / ns)
                _write_record({"ns": ns, "veth": host.veth, "index": host.index,
                               "owner": owner, "holder": None})
                self.hosts[name] = host

    def stop(self) -> None:
        """Kill every host's processes, delete its veth and namespace (idempotent)."""
        atexit.unregister(self.stop)
        hosts = list(self.hosts.values())
        if hosts:
            with concurrent.futures.ThreadPoolExecutor(len(hosts)) as pool:
                list(pool.map(LabHost._shutdown, hosts))

    def ssh_config(self) -> dict:
        """Per host name: how novapurge reaches it over SSH."""
        return {name: {"address": host.address, "port": 22, "user": "root",
                       "key_file": str(self.client_key)} for name, host in self.hosts.items()}


def _keygen(path: Path, comment: str) -> None:
    _sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])


def _used_indexes() -> set[int]:
    """/30 indexes of NETWORK already configured on the machine (by anyone)."""
    used = set()
    for entry in json.loads(_sh(["ip", "-4", "-j", "addr", "show"]).stdout or "[]"):
        for info in entry.get("addr_info", []):
            address = ipaddress.ip_address(info["local"])
            if address in NETWORK:
                used.add((int(address) - int(NETWORK.network_address)) // 4)
    return used


# ---- one host ----------------------------------------------------------------------------------
class LabHost:
    """One compute host: a namespace set with its daemons, driven through nsenter."""

    def __init__(self, name: str, ns: str, index: int, directory: Path):
        self.name, self.ns, self.index, self.dir = name, ns, index, directory
        self.veth = f"v-{ns}"
        if len(self.veth) > 15:
            raise ValueError(f"interface name {self.veth!r} is longer than 15 characters")
        base = int(NETWORK.network_address) + 4 * index
        self.gateway = str(ipaddress.ip_address(base + 1))
        self.address = str(ipaddress.ip_address(base + 2))
        self.host_key = directory / "ssh_host_ed25519_key"
        self.pid = 0
        self._holder: subprocess.Popen | None = None
        self._iscsi = threading.Lock()

    def __repr__(self):
        return f"LabHost({self.name!r}, {self.address}, pid={self.pid})"

    # -- life cycle --
    def _boot(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "root").mkdir(exist_ok=True)
        (self.dir / "empty").write_text("")
        if not self.host_key.exists():
            _keygen(self.host_key, self.name)
        (self.dir / "sshd_config").write_text(_SSHD_CONFIG.format(
            address=self.address, host_key=self.host_key,
            authorized_keys=self.dir.parent / "authorized_keys"))
        self._network()
        self._start_holder()
        self._daemon(["sh", "-c", _LIBVIRT])
        self.start_sshd(wait=False)
        self._daemon([OVS_CTL, "start", f"--system-id={self.name}", "--no-monitor",
                      "--no-mlockall"])
        self.run(["ovs-vsctl", "--may-exist", "add-br", "br-int", "--",
                  "set", "bridge", "br-int", "datapath_type=netdev"])
        _poll(lambda: self.run(["virsh", "-q", "list"], check=False).returncode == 0,
              f"{self.name}: libvirtd did not answer `virsh -q list`")
        _poll(self._sshd_listening, f"{self.name}: sshd did not listen on {self.address}:22")

    def _network(self) -> None:
        ns = self.ns
        _sh(["ip", "netns", "add", ns])
        _sh(["ip", "link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", ns])
        _sh(["ip", "addr", "add", f"{self.gateway}/30", "dev", self.veth])
        _sh(["ip", "link", "set", self.veth, "up"])
        _sh(["sysctl", "-qw", f"net.ipv4.conf.{self.veth}.route_localnet=1"])
        _sh(["ip", "-n", ns, "link", "set", "lo", "up"])
        _sh(["ip", "-n", ns, "addr", "add", f"{self.address}/30", "dev", "eth0"])
        _sh(["ip", "-n", ns, "link", "set", "eth0", "up"])
        _sh(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.conf.eth0.route_localnet=1"])

    def _start_holder(self) -> None:
        with open(self.dir / "holder.log", "w") as log:
            self._holder = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, "unshare", "--mount", "--uts", "--pid", "--fork",
                 "--mount-proc", "--propagation", "private", "bash", "-c", _HOLDER, "holder",
                 str(self.dir / "root"), str(self.dir / "empty"), self.name, sys.executable],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, env=ENV, cwd="/",
                text=True, start_new_session=True)
        ready, _, _ = select.select([self._holder.stdout], [], [], 30)
        if not ready or self._holder.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{self.name}: holder failed: {(self.dir / 'holder.log').read_text()}")
        self.pid = _ns_init(self._holder.pid)
        record = json.loads((REGISTRY / f"{self.ns}.json").read_text())
        _write_record({**record, "holder": [self.pid, _start_time(self.pid)]})

    def _shutdown(self) -> None:
        holder = [self.pid, _start_time(self.pid)] if self.pid else None
        _remove(self.ns, self.veth, holder)
        if self._holder is not None:
            self._holder.stdout.close()
            self._holder.wait(timeout=10)
            self._holder = None
        self.pid = 0

    # -- commands --
    def run(self, argv: list[str], check: bool = True, input: str | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
        """Run argv inside the host (its mount, net, uts and pid namespaces), text mode."""
        if not self.pid:
            raise RuntimeError(f"host {self.name} is not running")
        proc = subprocess.run(["nsenter", "-t", str(self.pid), "-m", "-n", "-u", "-p", "--",
                               *map(str, argv)], input=input, capture_output=True, text=True,
                              timeout=timeout, env=ENV, cwd="/",
                              stdin=None if input is not None else subprocess.DEVNULL)
        proc.args = list(argv)
        if check and proc.returncode:
            raise HostCommandError(self.name, proc)
        return proc

    def _daemon(self, argv: list[str]) -> None:
        """Start a self-daemonizing command; its output goes to the host's log, not a pipe
        (a pipe held by the daemon would block us until it exits)."""
        with open(self.dir / "daemons.log", "a") as log:
            rc = subprocess.run(["nsenter", "-t", str(self.pid), "-m", "-n", "-u", "-p", "--",
                                 *argv], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                env=ENV, cwd="/", timeout=60).returncode
        if rc:
            raise RuntimeError(f"{self.name}: {argv[0]} failed (rc {rc}), see {log.name}")

    # -- ssh --
    def _sshd_listening(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection((self.address, 22), 0.5):
            return True
        return False

    def _sshd_pids(self) -> tuple[int | None, list[int]]:
        """(listener pid, pids of every other sshd process), as the host sees them."""
        listener = self.run(["cat", "/run/sshd.pid"], check=False).stdout.strip()
        listener_pid = int(listener) if listener.isdigit() else None
        found = self.run(["pgrep", "-x", "sshd"], check=False).stdout.split()
        return listener_pid, [int(p) for p in found if int(p) != listener_pid]

    def ssh_logins(self) -> int:
        """SSH logins the host's sshd accepted so far (each connection a client opened)."""
        log = self.run(["cat", "/var/log/sshd.log"], check=False).stdout
        return log.count("Accepted publickey")

    def kill_ssh_sessions(self) -> int:
        """Kill the per-connection sshd processes (not the listener): a dropped transport.
        Returns the number of connections cut."""
        listener, others = self._sshd_pids()
        if listener is None:
            return 0
        connections = self.run(["pgrep", "-P", listener], check=False).stdout.split()
        if others:
            self.run(["kill", "-KILL", *others], check=False)
        return len(connections)

    def stop_sshd(self) -> None:
        """Take the host "down" for SSH: no listener, no open sessions."""
        listener, others = self._sshd_pids()
        if listener is not None or others:
            self.run(["kill", "-KILL", *([listener] if listener else []), *others], check=False)
        self.run(["rm", "-f", "/run/sshd.pid"])
        _poll(lambda: not self._sshd_listening(), f"{self.name}: sshd still listening")

    def start_sshd(self, wait: bool = True) -> None:
        """Start the host's sshd (again); waits until it accepts connections."""
        self._daemon(["/usr/sbin/sshd", "-f", str(self.dir / "sshd_config"),
                      "-E", "/var/log/sshd.log"])
        if wait:
            _poll(self._sshd_listening, f"{self.name}: sshd did not listen on {self.address}:22")

    # -- what Nova, os-vif and os-brick leave on a host --
    def add_instance(self, vm_uuid: str, domain_name: str, network_info: list[dict],
                     bdms: list[dict], running: bool = True, dirs=("", "_resize", "_del"),
                     instances_path: str = INSTANCES_PATH) -> None:
        """Plug the VIFs, create the iSCSI node records and instance dirs, define (and start)
        the domain, as a real compute host has them for this instance."""
        interfaces = [self._plug(vif, vm_uuid) for vif in network_info]
        for bdm in bdms:
            self._add_iscsi_nodes(bdm)
        self._add_instance_dirs(vm_uuid, dirs, instances_path)
        self._define(domain_name, vm_uuid, interfaces, running)
        if running:
            for vif, interface in zip(network_info, interfaces):
                if interface.get("interfaceid"):
                    self._set_ovs_ids(interface["target"], vif, vm_uuid)

    def add_domain(self, name: str, uuid: str, running: bool = True) -> None:
        """A bare domain (no devices): e.g. a neighbour, or a name reused with another uuid."""
        self._define(name, uuid, [], running)

    def stop_qemu(self, domain_name: str) -> int:
        """SIGSTOP the domain's QEMU (a stuck VM); returns its pid as the host sees it."""
        pid = int(self.run(["cat", f"/run/libvirt/qemu/{domain_name}.pid"]).stdout.strip())
        self.run(["kill", "-STOP", pid])
        _poll(lambda: self.run(["ps", "-o", "stat=", "-p", pid]).stdout.startswith("T"),
              f"{self.name}: QEMU {pid} of {domain_name} did not stop")
        return pid

    def _plug(self, vif: dict, vm_uuid: str) -> dict:
        port, mac = vif["id"], vif["address"]
        tap = vif.get("devname") or "tap" + port[:11]
        if vif["type"] == "bridge":
            bridge = vif["network"].get("bridge") or "brq" + vif["network"]["id"][:11]
            if not self._has_link(bridge):     # shared by the VMs of that network
                self.run(["ip", "link", "add", bridge, "type", "bridge"])
            self.run(["ip", "link", "set", bridge, "up"])
            return {"source": bridge, "target": tap, "mac": mac}
        if vif["type"] != "ovs":
            raise ValueError(f"VIF {port}: unsupported type {vif['type']!r}")
        if not vif.get("details", {}).get("ovs_hybrid_plug"):
            return {"source": vif["network"].get("bridge") or "br-int", "target": tap,
                    "mac": mac, "interfaceid": vif.get("ovs_interfaceid") or port}
        qbr, qvb, qvo = ("qbr" + port[:11], "qvb" + port[:11], "qvo" + port[:11])
        self.run(["ip", "link", "add", qbr, "type", "bridge"])
        self.run(["ip", "link", "set", qbr, "up"])
        self.run(["ip", "link", "add", qvb, "type", "veth", "peer", "name", qvo])
        self.run(["ip", "link", "set", qvb, "master", qbr])
        self.run(["ip", "link", "set", qvb, "up"])
        self.run(["ip", "link", "set", qvo, "up"])
        self.run(["ovs-vsctl", "--", "--may-exist", "add-port", "br-int", qvo,
                  "--", "set", "Interface", qvo, *self._ovs_ids(vif, vm_uuid)])
        return {"source": qbr, "target": tap, "mac": mac}

    def _has_link(self, name: str) -> bool:
        return self.run(["ip", "link", "show", name], check=False).returncode == 0

    @staticmethod
    def _ovs_ids(vif: dict, vm_uuid: str) -> list[str]:
        return [f"external-ids:iface-id={vif.get('ovs_interfaceid') or vif['id']}",
                f"external-ids:attached-mac={vif['address']}", f"external-ids:vm-uuid={vm_uuid}",
                "external-ids:iface-status=active"]

    def _set_ovs_ids(self, tap: str, vif: dict, vm_uuid: str) -> None:
        """OVS-native: libvirt adds the tap to br-int; make its ids what os-vif would set."""
        self.run(["ovs-vsctl", "set", "Interface", tap, *self._ovs_ids(vif, vm_uuid)])

    def _add_iscsi_nodes(self, bdm: dict) -> None:
        with self._iscsi:    # records created in parallel race (rc 6)
            for argv in iscsi_node_commands(bdm):
                self.run(argv)

    def _add_instance_dirs(self, vm_uuid: str, dirs, instances_path: str) -> None:
        paths = [f"{instances_path}/{vm_uuid}{suffix}" for suffix in dirs]
        self.run(["mkdir", "-p", *paths])
        for path in paths:
            for file, content in (("console.log", f"console of {path}\n"),
                                  ("disk.info", json.dumps({f"{path}/disk": "qcow2"}) + "\n")):
                self.run(["tee", f"{path}/{file}"], input=content)

    def _define(self, name: str, uuid: str, interfaces: list[dict], running: bool) -> None:
        self.run(["virsh", "define", "/dev/stdin"], input=_domain_xml(name, uuid, interfaces))
        if running:
            self.run(["virsh", "start", name], timeout=120)

    # -- observation --
    def snapshot(self, instances_path: str = INSTANCES_PATH) -> dict:
        """The host's observable state as plain data, for exact before/after equality."""
        with concurrent.futures.ThreadPoolExecutor(5) as pool:
            parts = [pool.submit(f) for f in (self._domains, self._links, self._ovs_ports,
                                              self._iscsi_nodes)]
            files = pool.submit(self._instance_files, instances_path)
            domains, links, ports, nodes = (p.result() for p in parts)
            return {"domains": domains, "links": links, "ovs_ports": ports,
                    "iscsi_nodes": nodes, **files.result()}

    def _domains(self) -> dict:
        listing = self.run(["virsh", "list", "--all", "--uuid", "--name"]).stdout
        uuids = {name: uuid for uuid, name in (line.split() for line in listing.splitlines()
                                               if line.strip())}
        table = self.run(["virsh", "list", "--all"]).stdout.splitlines()[2:]
        states = {cells[1]: " ".join(cells[2:]) for cells in (line.split() for line in table)
                  if len(cells) > 2}
        persistent = set(self.run(["virsh", "list", "--all", "--persistent", "--name"]).stdout
                         .split())
        return {name: {"uuid": uuid, "state": states[name], "persistent": name in persistent}
                for name, uuid in uuids.items()}

    def _links(self) -> dict:
        bridges = set(self.run(["ovs-vsctl", "list-br"]).stdout.split())
        links = {}
        for link in json.loads(self.run(["ip", "-d", "-j", "link", "show"]).stdout):
            name = link["ifname"]
            if name in _OVS_INTERNAL or name in bridges:
                continue
            links[name] = {"kind": link.get("linkinfo", {}).get("info_kind"),
                           "master": link.get("master"), "up": "UP" in link.get("flags", [])}
        return links

    def _ovs_ports(self) -> dict:
        def table(name: str, columns: str) -> list[dict]:
            out = json.loads(self.run(["ovs-vsctl", "--format=json", "--data=json",
                                       f"--columns={columns}", "list", name]).stdout)
            return [dict(zip(out["headings"], row)) for row in out["data"]]

        def uuids(value) -> list:
            return [value[1]] if value[0] == "uuid" else [v[1] for v in value[1]]

        interfaces = {row["_uuid"][1]: row for row in table("Interface", "_uuid,name,external_ids")}
        ports = {row["_uuid"][1]: row for row in table("Port", "_uuid,name,interfaces")}
        found = {}
        for bridge in table("Bridge", "name,ports"):
            for port in (ports[u] for u in uuids(bridge["ports"])):
                if port["name"] == bridge["name"]:
                    continue
                ids = {}
                for iface in uuids(port["interfaces"]):
                    ids.update(dict(interfaces[iface]["external_ids"][1]))
                found[port["name"]] = {"bridge": bridge["name"], "external_ids": ids}
        return found

    def _iscsi_nodes(self) -> dict:
        listing = self.run(["iscsiadm", "-m", "node"], check=False)
        if listing.returncode == 21:        # "No records found"
            return {}
        if listing.returncode:
            raise HostCommandError(self.name, listing)
        nodes = {}
        for line in listing.stdout.splitlines():
            portal_tpgt, iqn = line.split()
            portal = portal_tpgt.rsplit(",", 1)[0]
            fields = dict(entry.split(" = ", 1) for entry in self.run(
                ["iscsiadm", "-m", "node", "-T", iqn, "-p", portal]).stdout.splitlines()
                if " = " in entry and not entry.startswith("#"))
            record = {k: v for k, v in fields.items()
                      if k in _ISCSI_FIELDS or k.startswith("node.session.auth.")}
            for key in _ISCSI_SECRETS:
                if record.get(key, "<empty>") != "<empty>":
                    record[key] = "sha256:" + hashlib.sha256(record[key].encode()).hexdigest()
            nodes[f"{iqn},{portal}"] = record
        return nodes

    def _instance_files(self, instances_path: str) -> dict:
        exists = self.run(["test", "-d", instances_path], check=False).returncode == 0
        if not exists:
            return {"instance_files": {}, "instance_dirs": []}
        entries = self.run(["find", instances_path, "-mindepth", "1",
                            "-printf", r"%y %P\0"]).stdout.split("\0")
        dirs = sorted(e[2:] for e in entries if e.startswith("d "))
        files = sorted(e[2:] for e in entries if e.startswith("f "))
        digests = {}
        prefix = instances_path.rstrip("/") + "/"
        for chunk in _chunks(files, 200):
            out = self.run(["sha256sum", "-z", "--", *(prefix + f for f in chunk)]).stdout
            for entry in filter(None, out.split("\0")):
                digest, path = entry.split("  ", 1)
                digests[path.removeprefix(prefix)] = digest
        return {"instance_files": digests, "instance_dirs": dirs}


def _chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _poll(ready, message: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(message)
        time.sleep(0.05)


def _domain_xml(name: str, uuid: str, interfaces: list[dict]) -> str:
    """A Nova-like QEMU TCG domain: 32 MiB, no disk, one <interface> per plugged VIF."""
    domain = ET.Element("domain", type="qemu")
    ET.SubElement(domain, "name").text = name
    ET.SubElement(domain, "uuid").text = uuid
    ET.SubElement(domain, "memory", unit="MiB").text = "32"
    ET.SubElement(domain, "vcpu").text = "1"
    os_ = ET.SubElement(domain, "os")
    ET.SubElement(os_, "type", arch="x86_64", machine="pc").text = "hvm"
    devices = ET.SubElement(domain, "devices")
    ET.SubElement(devices, "emulator").text = "/usr/bin/qemu-system-x86_64"
    for spec in interfaces:
        interface = ET.SubElement(devices, "interface", type="bridge")
        ET.SubElement(interface, "mac", address=spec["mac"])
        ET.SubElement(interface, "source", bridge=spec["source"])
        if spec.get("interfaceid"):
            port = ET.SubElement(interface, "virtualport", type="openvswitch")
            ET.SubElement(port, "parameters", interfaceid=spec["interfaceid"])
        ET.SubElement(interface, "target", dev=spec["target"])
        ET.SubElement(interface, "model", type="virtio")
    return ET.tostring(domain, encoding="unicode")
