"""The commands a purge runs on a compute host, acted out on a simulated host's state.

Each handler takes the host's state (a JSON dict, see `sandbox.hosts.EMPTY_HOST`), the argv and
stdin, changes the state the way the real command changes a host, and answers (rc, stdout, stderr)
with the real command's exit codes and the error texts the drivers look for (test-hosts.md lists
them): `virsh` on a missing domain "failed to get domain", `iscsiadm` rc 21 for "no records / no
sessions", `ip` "Cannot find device", `ovs-vsctl` "no port named". A command the simulation does
not know fails as a shell would (rc 127), so a driver change that needs a new command shows up.
"""

import json
import posixpath
import xml.etree.ElementTree as ET

DEVICE = 2049          # st_dev of the simulated instances filesystem
NOT_FOUND = 21         # iscsiadm: no records / no sessions
_ISCSI_DEFAULTS = {"node.tpgt": "-1", "node.startup": "manual", "node.leading_login": "No",
                   "iface.iscsi_ifacename": "default", "iface.transport_name": "tcp",
                   "node.discovery_address": "<empty>", "node.discovery_port": "0",
                   "node.discovery_type": "static", "node.session.auth.authmethod": "None",
                   "node.session.auth.username": "<empty>",
                   "node.session.auth.password": "<empty>",
                   "node.session.auth.username_in": "<empty>",
                   "node.session.auth.password_in": "<empty>",
                   "node.conn[0].startup": "manual"}


class Answer(Exception):
    """Ends a command early with this exit code and stderr (the command's own error)."""

    def __init__(self, rc: int, stderr: str = ""):
        super().__init__(stderr)
        self.rc, self.stderr = rc, stderr


def execute(state: dict, argv: tuple, stdin: str) -> tuple[int, str, str]:
    handler = _COMMANDS.get(argv[0])
    if handler is None:
        return 127, "", f"sh: 1: {argv[0]}: not found\n"
    try:
        return 0, handler(state, list(argv[1:]), stdin) or "", ""
    except Answer as answer:
        return answer.rc, "", answer.stderr


# ---- virsh --------------------------------------------------------------------------------
def _domain(state, name) -> dict:
    domain = state["domains"].get(name)
    if domain is None:
        raise Answer(1, f"error: failed to get domain '{name}'\n")
    return domain


def _interfaces(xml: str) -> list:
    """(target dev, source bridge, mac, interfaceid) of each interface in a domain's XML."""
    found = []
    for iface in ET.fromstring(xml).iter("interface"):
        target, source = iface.find("target"), iface.find("source")
        mac, params = iface.find("mac"), iface.find("virtualport/parameters")
        found.append((None if target is None else target.get("dev"),
                      None if source is None else source.get("bridge"),
                      None if mac is None else mac.get("address"),
                      None if params is None else params.get("interfaceid")))
    return found


def _start_qemu(state, name, domain, paused) -> None:
    """libvirt creates each tap and plugs it into its bridge (Linux or OVS) at start."""
    for tap, bridge, mac, interfaceid in _interfaces(domain["xml"]):
        if not tap:
            continue
        state["links"][tap] = {"kind": "tun", "master": None, "up": True, "peer": None,
                               "address": "fe" + (mac or ":00:00:00:00:00")[2:], "mtu": 1500}
        if bridge in state["ovs_bridges"]:
            ids = {"iface-id": interfaceid, "attached-mac": mac, "vm-uuid": domain["uuid"],
                   "iface-status": "active"} if interfaceid else {}
            state["ovs_ports"][tap] = {"bridge": bridge, "external_ids": ids}
            state["links"][tap]["master"] = "ovs-system"
        elif bridge in state["links"]:
            state["links"][tap]["master"] = bridge
    domain["state"] = "paused" if paused else "running"


def _stop_qemu(state, name, domain) -> None:
    """QEMU's end: libvirt removes the taps (and their OVS ports); a transient domain is gone."""
    for tap, *_ in _interfaces(domain["xml"]):
        if tap:
            state["links"].pop(tap, None)
            state["ovs_ports"].pop(tap, None)
    domain["state"] = "shut off"
    if not domain["persistent"]:
        del state["domains"][name]


def _virsh(state, args, stdin):
    command, args = args[0], args[1:]
    flags = {a for a in args if a.startswith("--")}
    args = [a for a in args if not a.startswith("--")]
    if command == "list":
        return "".join(f"{n}\n" for n in sorted(state["domains"]))
    if command == "domname":
        names = [n for n, d in state["domains"].items() if d["uuid"] == args[0]]
        if not names:
            raise Answer(1, f"error: failed to get domain '{args[0]}'\n")
        return names[0] + "\n"
    if command == "define":
        return _define(state, stdin)
    name = args[0]
    domain = _domain(state, name)
    if command == "dumpxml":
        return domain["xml"]
    if command == "domstate":
        return domain["state"] + "\n"
    if command == "dominfo":
        return (f"Id:             {'-' if domain['state'] == 'shut off' else 1}\n"
                f"Name:           {name}\nUUID:           {domain['uuid']}\n"
                f"State:          {domain['state']}\n"
                f"Persistent:     {'yes' if domain['persistent'] else 'no'}\n"
                f"Managed save:   {'yes' if domain['managed_save'] else 'no'}\n")
    active = domain["state"] not in ("shut off", "crashed")
    if command == "destroy":
        if not active:
            raise Answer(1, f"error: Failed to destroy domain '{name}'\n"
                            "error: Requested operation is not valid: domain is not running\n")
        _stop_qemu(state, name, domain)
        return f"Domain '{name}' destroyed\n"
    if command == "start":
        if active:
            raise Answer(1, "error: Failed to start domain\nerror: Domain is already active\n")
        _start_qemu(state, name, domain, "--paused" in flags)
        return f"Domain '{name}' started\n"
    if command == "undefine":
        if domain["managed_save"] and "--managed-save" not in flags:
            raise Answer(1, "error: Refusing to undefine while domain managed save image exists\n")
        if active:
            domain["persistent"] = False   # a running domain becomes transient
        else:
            del state["domains"][name]
        return f"Domain '{name}' has been undefined\n"
    raise Answer(1, f"error: unknown command: '{command}'\n")


def _define(state, xml: str) -> str:
    root = ET.fromstring(xml)
    name, uuid = root.findtext("name").strip(), root.findtext("uuid").strip().lower()
    for other, domain in state["domains"].items():
        if (other == name) != (domain["uuid"] == uuid):
            raise Answer(1, f"error: operation failed: domain '{other}' already exists with "
                            f"uuid {domain['uuid']}\n")
    domain = state["domains"].setdefault(name, {"uuid": uuid, "state": "shut off",
                                                "managed_save": False})
    domain.update(xml=xml, persistent=True)
    return f"Domain '{name}' defined from /dev/stdin\n"


# ---- ip -----------------------------------------------------------------------------------
def _link(state, name) -> dict:
    link = state["links"].get(name)
    if link is None:
        raise Answer(1, f'Cannot find device "{name}"\n')
    return link


def _ip(state, args, stdin):
    details = "-d" in args
    as_json = "-j" in args
    args = [a for a in args if a not in ("-d", "-j")]
    if args[0] == "tuntap":
        name = args[args.index("dev") + 1]
        _add_link(state, name, {"kind": "tun"})
        return ""
    if args[:2] == ["link", "show"]:
        return _show_links(state, args[2:], details, as_json)
    if args[:2] == ["link", "del"]:
        name = args[3] if args[2] == "dev" else args[2]
        link = _link(state, name)
        del state["links"][name]
        if link["kind"] == "veth":
            state["links"].pop(link["peer"], None)
        for other in state["links"].values():
            if other["master"] == name:
                other["master"] = None
        return ""
    if args[:2] == ["link", "add"]:
        name, rest = args[2], args[3:]
        kind = rest[rest.index("type") + 1]
        address = rest[rest.index("address") + 1] if "address" in rest[:2] else None
        if kind == "veth":
            peer_part = rest[rest.index("peer") + 1:]
            peer = peer_part[peer_part.index("name") + 1]
            peer_address = (peer_part[peer_part.index("address") + 1]
                            if "address" in peer_part else None)
            if name in state["links"] or peer in state["links"]:
                raise Answer(2, "RTNETLINK answers: File exists\n")
            _add_link(state, peer, {"kind": "veth", "peer": name, "address": peer_address})
        _add_link(state, name, {"kind": kind, "address": address,
                                "peer": peer if kind == "veth" else None})
        return ""
    if args[:2] == ["link", "set"]:
        rest = args[2:]
        name = rest[1] if rest[0] == "dev" else rest[0]
        link, rest = _link(state, name), rest[2:] if rest[0] == "dev" else rest[1:]
        while rest:
            word = rest.pop(0)
            if word in ("up", "down"):
                link["up"] = word == "up"
            elif word == "nomaster":
                link["master"] = None
            elif word in ("mtu", "master", "address"):
                value = rest.pop(0)
                if word == "master":
                    if _link(state, value)["kind"] != "bridge":
                        raise Answer(2, "Error: Device can not be enslaved.\n")
                link[word] = int(value) if word == "mtu" else value
        return ""
    raise Answer(255, f'Object "{args[0]}" is unknown, try "ip help".\n')


def _add_link(state, name, values) -> None:
    if name in state["links"]:
        raise Answer(2, "RTNETLINK answers: File exists\n")
    link = {"kind": "ether", "master": None, "up": False, "peer": None, "address": None,
            "mtu": 1500}
    link.update({k: v for k, v in values.items() if v is not None})
    link["address"] = link["address"] or _mac_for(name)
    state["links"][name] = link


def _mac_for(name: str) -> str:
    digest = sum(ord(c) * (i + 1) for i, c in enumerate(name))
    return "be:" + ":".join(f"{(digest >> s) & 0xff:02x}" for s in (0, 8, 16, 3, 11))


def _show_links(state, args, details, as_json) -> str:
    names = sorted(state["links"])
    if args[:1] == ["master"]:
        _link(state, args[1])
        names = [n for n in names if state["links"][n]["master"] == args[1]]
    elif args:
        _link(state, args[-1])
        names = [args[-1]]
    shown = []
    for index, name in enumerate(names, start=2):
        link = state["links"][name]
        entry = {"ifindex": index, "ifname": name,
                 "flags": ["BROADCAST", "MULTICAST"] + (["UP", "LOWER_UP"] if link["up"] else []),
                 "mtu": link["mtu"], "operstate": "UP" if link["up"] else "DOWN",
                 "address": link["address"]}
        if link["master"]:
            entry["master"] = link["master"]
        if link["kind"] == "veth" and link["peer"]:
            entry["link"] = link["peer"]
        if details and link["kind"] != "ether":
            entry["linkinfo"] = {"info_kind": link["kind"]}
        shown.append(entry)
    return json.dumps(shown) if as_json else "".join(f"{e['ifindex']}: {e['ifname']}\n"
                                                     for e in shown)


# ---- ovs-vsctl ----------------------------------------------------------------------------
def _ovs_vsctl(state, args, stdin):
    out = []
    for command in _ovs_commands(args):
        out.append(_ovs_command(state, command))
    return "".join(out)


def _ovs_commands(args) -> list:
    """Split `[opts] cmd args -- [opts] cmd args ...` into (options, words) per command."""
    commands, current = [], []
    for arg in args:
        if arg == "--":
            commands.append(current)
            current = []
        else:
            current.append(arg)
    commands.append(current)
    return [([a for a in c if a.startswith("--")], [a for a in c if not a.startswith("--")])
            for c in commands if c]


def _ovs_command(state, command) -> str:
    options, words = command
    if not words:
        return ""
    verb, rest = words[0], words[1:]
    ports = state["ovs_ports"]
    if verb == "port-to-br":
        if rest[0] not in ports:
            raise Answer(1, f"ovs-vsctl: no port named {rest[0]}\n")
        return ports[rest[0]]["bridge"] + "\n"
    if verb == "list-br":
        return "".join(f"{b}\n" for b in sorted(state["ovs_bridges"]))
    if verb == "del-port":
        bridge, port = (rest[0], rest[1]) if len(rest) == 2 else (None, rest[0])
        if port not in ports:
            if "--if-exists" in options:
                return ""
            raise Answer(1, f"ovs-vsctl: no port named {port}\n")
        del ports[port]
        return ""
    if verb == "add-port":
        bridge, port = rest[0], rest[1]
        if bridge not in state["ovs_bridges"]:
            raise Answer(1, f"ovs-vsctl: no bridge named {bridge}\n")
        if port in ports and "--may-exist" not in options:
            raise Answer(1, f"ovs-vsctl: cannot create a port named {port} because a port "
                            f"named {port} already exists on bridge {ports[port]['bridge']}\n")
        ports.setdefault(port, {"bridge": bridge, "external_ids": {}})
        if port in state["links"]:
            state["links"][port]["master"] = "ovs-system"
        return ""
    if verb == "set" and rest[0] == "Interface":
        if rest[1] not in ports:
            raise Answer(1, f'ovs-vsctl: no row "{rest[1]}" in table Interface\n')
        for pair in rest[2:]:
            column, _, value = pair.partition("=")
            key = column.split(":", 1)[1]
            ports[rest[1]]["external_ids"][key] = value
        return ""
    if verb == "find" and rest[0] == "Interface":
        name = rest[1].split("=", 1)[1]
        rows = [[["map", sorted(ports[name]["external_ids"].items())]]] if name in ports else []
        return json.dumps({"data": rows, "headings": ["external_ids"]}) + "\n"
    raise Answer(1, f"ovs-vsctl: unknown command '{verb}'\n")


# ---- iscsiadm -----------------------------------------------------------------------------
def _iscsiadm(state, args, stdin):
    mode = args[args.index("-m") + 1]
    if mode == "session":
        if not state["iscsi_sessions"]:
            raise Answer(NOT_FOUND, "iscsiadm: No active sessions.\n")
        return "".join(f"tcp: [{i}] {key.split(',')[1]},1 {key.split(',')[0]} (non-flash)\n"
                       for i, key in enumerate(sorted(state["iscsi_sessions"]), start=1))
    iqn, portal = args[args.index("-T") + 1], args[args.index("-p") + 1]
    key, nodes = f"{iqn},{portal}", state["iscsi_nodes"]
    op = args[args.index("--op") + 1] if "--op" in args else (
        args[args.index("-o") + 1] if "-o" in args else None)
    if op == "new":
        address, _, port = portal.partition(":")
        nodes[key] = dict(_ISCSI_DEFAULTS, **{"node.name": iqn, "node.conn[0].address": address,
                                              "node.conn[0].port": port.split(",")[0]})
        return f"New iSCSI node [tcp:[hw=,ip=,net_if=,iscsi_if=default] {portal},-1 {iqn}] added\n"
    if "--logout" in args:
        if key not in state["iscsi_sessions"]:
            raise Answer(NOT_FOUND, "iscsiadm: No matching sessions found\n")
        state["iscsi_sessions"].pop(key)
        return f"Logout of [sid: 1, target: {iqn}, portal: {portal}] successful.\n"
    if key not in nodes:
        raise Answer(NOT_FOUND, "iscsiadm: No records found\n")
    if "--login" in args:
        state["iscsi_sessions"][key] = True
        return f"Login to [iface: default, target: {iqn}, portal: {portal}] successful.\n"
    if op == "delete":
        del nodes[key]
        return ""
    if op == "update":
        nodes[key][args[args.index("-n") + 1]] = args[args.index("-v") + 1]
        return ""
    secrets = "-S" in args
    return "".join(f"{k} = {v if secrets or 'password' not in k or v == '<empty>' else '********'}\n"
                   for k, v in sorted(nodes[key].items()))


# ---- files --------------------------------------------------------------------------------
def _under(files, path) -> list:
    return [p for p in files if p == path or p.startswith(path + "/")]


def _parent_must_exist(files, path, command) -> None:
    parent = posixpath.dirname(path)
    if parent != "/" and files.get(parent, {}).get("kind") != "directory":
        raise Answer(1, f"{command}: cannot access '{path}': No such file or directory\n")


def _stat(state, args, stdin):
    path = args[-1]
    entry = state["files"].get(path)
    if entry is None:
        raise Answer(1, f"stat: cannot statx '{path}': No such file or directory\n")
    return f"{DEVICE} {entry['kind']}\n"


def _find(state, args, stdin):
    path = args[0]
    if path not in state["files"]:
        raise Answer(1, f"find: '{path}': No such file or directory\n")
    return "".join(f"{p[len(path) + 1:]}\t{state['files'][p].get('size', 4096)}\n"
                   for p in sorted(_under(state["files"], path)) if p != path)


def _mkdir(state, args, stdin):
    path, files = args[-1], state["files"]
    parts = path.strip("/").split("/")
    for depth in range(1, len(parts) + 1):
        current = "/" + "/".join(parts[:depth])
        if files.get(current, {"kind": "directory"})["kind"] != "directory":
            raise Answer(1, f"mkdir: cannot create directory '{path}': Not a directory\n")
        files.setdefault(current, {"kind": "directory"})
    return ""


def _mv(state, args, stdin):
    source, target = args[-2], args[-1]
    files = state["files"]
    if source not in files:
        raise Answer(1, f"mv: cannot stat '{source}': No such file or directory\n")
    if target in files:
        return ""                      # --no-clobber: an existing target is left alone
    _parent_must_exist(files, target, "mv")
    for path in _under(files, source):
        files[target + path[len(source):]] = files.pop(path)
    return ""


def _rm(state, args, stdin):
    for path in _under(state["files"], args[-1]):
        del state["files"][path]
    return ""


def _rmdir(state, args, stdin):
    path, files = args[-1], state["files"]
    if path not in files:
        raise Answer(1, f"rmdir: failed to remove '{path}': No such file or directory\n")
    if len(_under(files, path)) == 1:
        del files[path]
    return ""


_COMMANDS = {"virsh": _virsh, "ip": _ip, "ovs-vsctl": _ovs_vsctl, "iscsiadm": _iscsiadm,
             "stat": _stat, "find": _find, "mkdir": _mkdir, "mv": _mv, "rm": _rm,
             "rmdir": _rmdir}
