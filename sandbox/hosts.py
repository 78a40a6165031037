"""Simulated compute hosts behind the same runner interface as the SSH hosts (`drivers.ssh`).

Used by `novapurge demo` and the fast tests, where no root, namespaces or daemons are at hand.
Each host is one JSON file (`<dir>/<host>.json`, see `sandbox.statefile`): libvirt domains,
network links, OVS ports with external-ids, iSCSI node records and sessions, and the files under
the instances path. The purge's argv commands are acted out on that state by
`sandbox.hostcommands`, one locked read-modify-write each, so a killed purge and its resume in
another process see the same host. What the simulation is not: a shell. Real hosts are tested in
network namespaces (tests/labs/hostlab.py).

Fault injection: a host can be taken down (`set_down`: every command raises HostUnreachable, as a
host that does not answer SSH) and given a latency per command (`set_latency`, for benchmarks).
"""

import json
import pathlib
import threading
import time
import xml.sax.saxutils as xml_text

from novapurge import validate
from novapurge.drivers.ssh import HostPool, Runner, SshOptions
from novapurge.errors import HostUnreachable
from novapurge.sandbox import hostcommands
from novapurge.sandbox.statefile import StateFile

INSTANCES_PATH = "/var/lib/nova/instances"
EMPTY_HOST = {"down": False, "latency": 0.0, "domains": {}, "links": {},
              "ovs_bridges": {"br-int": {"datapath_type": "netdev"}}, "ovs_ports": {},
              "iscsi_nodes": {}, "iscsi_sessions": {},
              "files": {"/var": {"kind": "directory"}, "/var/lib": {"kind": "directory"},
                        "/var/lib/nova": {"kind": "directory"},
                        INSTANCES_PATH: {"kind": "directory"}}}
_FAULT_KEYS = ("down", "latency")


class SimHost:
    """One simulated compute host: its state file, seeding and observation."""

    def __init__(self, directory: pathlib.Path, name: str):
        self.name = validate.hostname(name)
        self.state = StateFile(directory / f"{self.name}.json", EMPTY_HOST)

    def execute(self, argv: tuple, stdin: str | None) -> tuple[int, str, str]:
        """Run one command on the host's state, as the real command would change the host."""
        with self.state.change() as state:
            if state["down"]:
                raise HostUnreachable(f"host {self.name} (simulated) does not answer: it is down")
            latency = state["latency"]
            answer = hostcommands.execute(state, argv, stdin or "")
        if latency:
            time.sleep(latency)
        return answer

    def run(self, *argv, stdin: str | None = None) -> str:
        """Seeding helper: one command that must succeed."""
        rc, out, err = self.execute(argv, stdin)
        if rc:
            raise RuntimeError(f"{self.name}: {' '.join(argv)} failed (rc {rc}): {err.strip()}")
        return out

    # ---- seeding: what Nova, os-vif and os-brick leave on a host ------------------------------
    def add_instance(self, vm_uuid: str, domain_name: str, network_info: list, bdms: list,
                     running: bool = True, instances_path: str = INSTANCES_PATH) -> None:
        """Plug the VIFs, create the iSCSI node records (logged in) and the instance dirs, and
        define (and start) the domain, as a compute host has them for this instance."""
        interfaces = [self._plug(vif, vm_uuid) for vif in network_info]
        for bdm in bdms:
            self._add_iscsi_nodes(bdm)
        path = f"{instances_path}/{vm_uuid}"
        self.run("mkdir", "-p", "--", path)
        with self.state.change() as state:
            for file, size in (("disk", 21474836480), ("disk.info", 71), ("console.log", 1024)):
                state["files"][f"{path}/{file}"] = {"kind": "regular file", "size": size}
        self.add_domain(domain_name, vm_uuid, running, interfaces)

    def add_domain(self, name: str, uuid: str, running: bool = True, interfaces=()) -> None:
        """Define a domain (and start it): a neighbour, or a name reused with another uuid."""
        self.run("virsh", "define", "/dev/stdin", stdin=domain_xml(name, uuid, interfaces))
        if running:
            self.run("virsh", "start", name)

    def _plug(self, vif: dict, vm_uuid: str) -> dict:
        port, mac = vif["id"], vif["address"]
        tap = vif.get("devname") or "tap" + port[:11]
        network = vif.get("network") or {}
        if vif["type"] == "bridge":
            bridge = network.get("bridge") or "brq" + network["id"][:11]
            with self.state.change() as state:
                exists = bridge in state["links"]
            if not exists:
                self.run("ip", "link", "add", bridge, "type", "bridge")
            self.run("ip", "link", "set", bridge, "up")
            return {"source": bridge, "target": tap, "mac": mac}
        if vif["type"] != "ovs":
            return {"source": None, "target": None, "mac": mac}
        interfaceid = vif.get("ovs_interfaceid") or port
        if not (vif.get("details") or {}).get("ovs_hybrid_plug", True):
            return {"source": network.get("bridge") or "br-int", "target": tap, "mac": mac,
                    "interfaceid": interfaceid}
        qbr, qvb, qvo = ("qbr" + port[:11], "qvb" + port[:11], "qvo" + port[:11])
        self.run("ip", "link", "add", qbr, "type", "bridge")
        self.run("ip", "link", "set", qbr, "up")
        self.run("ip", "link", "add", qvb, "type", "veth", "peer", "name", qvo)
        self.run("ip", "link", "set", qvb, "master", qbr)
        self.run("ip", "link", "set", qvb, "up")
        self.run("ip", "link", "set", qvo, "up")
        self.run("ovs-vsctl", "--", "--may-exist", "add-port", "br-int", qvo, "--", "set",
                 "Interface", qvo, f"external-ids:iface-id={interfaceid}",
                 f"external-ids:attached-mac={mac}", f"external-ids:vm-uuid={vm_uuid}",
                 "external-ids:iface-status=active")
        return {"source": qbr, "target": tap, "mac": mac}

    def _add_iscsi_nodes(self, bdm: dict) -> None:
        for argv in iscsi_node_commands(bdm):
            self.run(*argv)
        for argv in iscsi_login_commands(bdm):
            self.run(*argv)

    # ---- faults and observation ---------------------------------------------------------------
    def set_down(self, down: bool = True) -> None:
        with self.state.change() as state:
            state["down"] = bool(down)

    def set_latency(self, seconds: float) -> None:
        with self.state.change() as state:
            state["latency"] = float(seconds)

    def snapshot(self) -> dict:
        """The host's observable state (sections of named entries), for exact comparisons."""
        state = self.state.read()
        return {k: v for k, v in state.items() if k not in _FAULT_KEYS}


def domain_xml(name: str, uuid: str, interfaces) -> str:
    """A Nova-like domain: 32 MiB, one vCPU, its interfaces on their bridges."""
    q = xml_text.quoteattr
    devices = []
    for iface in interfaces:
        if not iface.get("target"):
            continue
        virtualport = (f"<virtualport type='openvswitch'><parameters interfaceid="
                       f"{q(iface['interfaceid'])}/></virtualport>"
                       if iface.get("interfaceid") else "")
        devices.append(f"<interface type='bridge'><mac address={q(iface['mac'])}/>"
                       f"<source bridge={q(iface['source'])}/>{virtualport}"
                       f"<target dev={q(iface['target'])}/><model type='virtio'/></interface>")
    return (f"<domain type='qemu'>\n  <name>{xml_text.escape(name)}</name>\n"
            f"  <uuid>{xml_text.escape(uuid)}</uuid>\n  <memory unit='KiB'>32768</memory>\n"
            f"  <vcpu>1</vcpu>\n  <os><type arch='x86_64' machine='pc'>hvm</type></os>\n"
            f"  <devices><emulator>/usr/bin/qemu-system-x86_64</emulator>"
            f"{''.join(devices)}</devices>\n</domain>\n")


def _iscsi_targets(bdm: dict):
    """(iqn, portal) pairs and node settings of an iSCSI BDM's connection_info; none otherwise."""
    info = bdm.get("connection_info") or {}
    if isinstance(info, str):
        info = json.loads(info or "{}")
    if info.get("driver_volume_type") != "iscsi":
        return [], []
    data = info["data"]
    iqns = data.get("target_iqns") or [data["target_iqn"]]
    portals = data.get("target_portals") or [data["target_portal"]]
    settings = [("node.startup", "automatic")]
    if data.get("auth_method"):
        settings += [("node.session.auth.authmethod", data["auth_method"]),
                     ("node.session.auth.username", data["auth_username"]),
                     ("node.session.auth.password", data["auth_password"])]
    return list(dict.fromkeys(zip(iqns, portals))), settings


def iscsi_node_commands(bdm: dict) -> list[list[str]]:
    """The iscsiadm argv that create the node records os-brick leaves for a BDM (test set-up
    of simulated and real hosts alike)."""
    targets, settings = _iscsi_targets(bdm)
    commands = []
    for iqn, portal in targets:
        commands.append(["iscsiadm", "-m", "node", "-o", "new", "-T", iqn, "-p", portal])
        commands += [["iscsiadm", "-m", "node", "-T", iqn, "-p", portal,
                      "--op", "update", "-n", key, "-v", value] for key, value in settings]
    return commands


def iscsi_login_commands(bdm: dict) -> list[list[str]]:
    """The logins of a BDM's nodes (simulated hosts only: no target answers on a real one)."""
    targets, _ = _iscsi_targets(bdm)
    return [["iscsiadm", "-m", "node", "-T", iqn, "-p", portal, "--login"]
            for iqn, portal in targets]


class SimRunner(Runner):
    """A simulated host's runner: the drivers' argv, acted out on its state file."""

    def __init__(self, host: SimHost, options: SshOptions):
        super().__init__(host.name, options)
        self.host = host
        self.connections_opened = 0
        self._connected = threading.Event()

    def _execute(self, argv, stdin, timeout):
        answer = self.host.execute(argv, stdin)
        if not self._connected.is_set():    # the first command "opens the connection"
            self._connected.set()
            self.connections_opened = 1
        return answer

    def close(self) -> None:
        self._connected.clear()


class SimHosts(HostPool):
    """The sandbox's compute hosts, one state file each, behind the HostPool interface."""

    def __init__(self, directory, options: SshOptions = SshOptions()):
        super().__init__(options=options)
        self.directory = pathlib.Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def host(self, name: str) -> SimHost:
        return SimHost(self.directory, name)

    def names(self) -> list:
        return sorted(p.stem for p in self.directory.glob("*.json"))

    def _new_runner(self, host_name: str) -> SimRunner:
        return SimRunner(self.host(host_name), self.options)
