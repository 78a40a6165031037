"""Network devices of a compute host (ip link, Open vSwitch), through the host's runner.

Every device name is validated (`validate.device`) before it reaches argv; OVS external-ids keys
and values must be plain tokens, so they need no OVS quoting. Reads go in one batch (one round
trip), and so do the deletions of one VIF's devices.
"""

import json
import re

from novapurge import validate
from novapurge.drivers.ssh import CommandFailed
from novapurge.errors import BadInput

_OVS_TOKEN = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
NO_DEVICE = "Cannot find device"
LINKS_ARGV = ["ip", "-d", "-j", "link", "show"]


def _token(value: str) -> str:
    if not _OVS_TOKEN.match(str(value)):
        raise BadInput(f"refusing OVS external-id token {value!r}")
    return str(value)


def del_link_argv(name):
    return ["ip", "link", "del", "dev", validate.device(name)]


def del_port_argv(bridge, port):
    return ["ovs-vsctl", "--if-exists", "del-port", _token(bridge), validate.device(port)]


def add_port_argv(bridge, port, external_ids: dict):
    argv = ["ovs-vsctl", "--", "--may-exist", "add-port", _token(bridge), validate.device(port)]
    if external_ids:
        argv += ["--", "set", "Interface", port] + _ids(external_ids)
    return argv


def set_ids_argv(port, external_ids: dict):
    return ["ovs-vsctl", "set", "Interface", validate.device(port)] + _ids(external_ids)


def _ids(external_ids: dict) -> list:
    return [f"external-ids:{_token(k)}={_token(v)}" for k, v in sorted(external_ids.items())]


def port_argvs(port):
    """The reads (one batch) that `port_from` turns into an OVS port's {bridge, external_ids}."""
    port = validate.device(port)
    return [(["ovs-vsctl", "port-to-br", port], (0, 1)),
            (["ovs-vsctl", "--format=json", "--columns=external_ids", "find", "Interface",
              f"name={port}"], (0, 1))]


def port_from(bridge, found) -> dict | None:
    if bridge.rc:
        return None
    if found.rc:
        raise CommandFailed(found)
    rows = json.loads(found.stdout)["data"]
    return {"bridge": bridge.stdout.strip(), "external_ids": dict(rows[0][0][1]) if rows else {}}


def _mac(value):
    if value is None:
        return None
    if not _MAC.match(str(value)):
        raise BadInput(f"refusing MAC address {value!r}")
    return str(value)


def parse_links(out: str) -> dict:
    """{name: {kind, master, up, address, mtu, peer}} of every link in `ip -d -j link show`."""
    found = {}
    for link in json.loads(out or "[]"):
        kind = (link.get("linkinfo") or {}).get("info_kind") or "ether"
        found[link.get("ifname")] = {
            "kind": kind, "master": link.get("master"), "up": "UP" in link.get("flags", []),
            "address": link.get("address"), "mtu": link.get("mtu"),
            "peer": link.get("link") if kind == "veth" else None}
    return found


class HostNet:
    """Read and change the devices of one VIF on one host."""

    def __init__(self, runner):
        self.runner = runner

    def inspect(self, names, ports=()) -> dict:
        """One round trip: {"links": those of `names` that exist, "members": {bridge: names
        enslaved to it} for the bridges among them, "ports": {port: {bridge, external_ids} or
        None}} for the OVS `ports`."""
        wanted = {validate.device(n) for n in names}
        commands = [(LINKS_ARGV, (0,))] if wanted else []
        for port in ports:
            commands += port_argvs(port)
        results = self.runner.run_batch(commands, stop=False)
        links, members = {}, {}
        if wanted:
            listing, results = results[0], results[1:]
            if listing.rc:
                raise CommandFailed(listing)
            every = parse_links(listing.stdout)
            links = {n: s for n, s in every.items() if n in wanted}
            members = {b: sorted(n for n, s in every.items() if s["master"] == b)
                       for b, s in links.items() if s["kind"] == "bridge"}
        found = {port: port_from(results[2 * i], results[2 * i + 1])
                 for i, port in enumerate(ports)}
        return {"links": links, "members": members, "ports": found}

    def links(self, names) -> dict:
        """{name: {kind, master, up, address, mtu, peer}} for those of `names` that exist."""
        return self.inspect(names)["links"]

    def ovs_port(self, port: str) -> dict | None:
        """{bridge, external_ids} of an OVS port, None when OVS has no such port."""
        return self.inspect([], [port])["ports"][port]

    def remove(self, ports, links, watch=()) -> dict:
        """Delete OVS ports [(bridge, port)] then links (in that order), in one round trip;
        a device already gone is fine. Returns which of `watch` still exist afterwards."""
        commands = [(del_port_argv(bridge, port), (0,)) for bridge, port in ports]
        commands += [(del_link_argv(name), (0, 1)) for name in links]
        commands.append((LINKS_ARGV, (0,)))
        results = self.runner.run_batch(commands)
        for result in results[len(ports):-1]:
            if result.rc and NO_DEVICE not in result.stderr:
                raise CommandFailed(result)
        wanted = set(watch)
        return {n: s for n, s in parse_links(results[-1].stdout).items() if n in wanted}

    def delete_link(self, name: str) -> None:
        self.remove([], [name])

    def delete_port(self, bridge: str, port: str) -> None:
        self.runner.run(del_port_argv(bridge, port))

    def add_port(self, bridge: str, port: str, external_ids: dict) -> None:
        self.runner.run(add_port_argv(bridge, port, external_ids))

    def set_external_ids(self, port: str, external_ids: dict) -> None:
        self.runner.run(set_ids_argv(port, external_ids))

    def create(self, name: str, state: dict, peer_state: dict | None = None) -> None:
        """Create a device as recorded: a bridge, a veth pair (with its peer) or a tap."""
        name, kind = validate.device(name), state["kind"]
        address = ["address", _mac(state["address"])] if state.get("address") else []
        if kind == "bridge":
            self.runner.run(["ip", "link", "add", name, *address, "type", "bridge"])
        elif kind == "veth":
            peer = validate.device(state["peer"])
            peer_address = (["address", _mac(peer_state["address"])]
                            if peer_state and peer_state.get("address") else [])
            self.runner.run(["ip", "link", "add", name, *address, "type", "veth", "peer",
                             "name", peer, *peer_address])
        elif kind == "tun":
            self.runner.run(["ip", "tuntap", "add", "dev", name, "mode", "tap"])
            if address:
                self.runner.run(["ip", "link", "set", "dev", name, *address])
        else:
            raise BadInput(f"cannot recreate {name}: device kind {kind!r} is not handled")

    def configure(self, name: str, state: dict) -> None:
        """Set a recreated device's MTU, bridge membership and link state as recorded."""
        name = validate.device(name)
        if state.get("mtu"):
            self.runner.run(["ip", "link", "set", "dev", name, "mtu", str(int(state["mtu"]))])
        if state.get("master"):
            self.runner.run(["ip", "link", "set", "dev", name, "master",
                             validate.device(state["master"])])
        if state.get("up"):
            self.runner.run(["ip", "link", "set", "dev", name, "up"])
