"""One VIF's devices on the compute host: the os-vif plug undone (ovs hybrid, ovs, linuxbridge)."""

from novapurge.drivers import hostnet
from novapurge.tasks.base import HostTask

# Removal order: the OVS port first (the agent stops wiring it), then the veth pair, the tap,
# and the per-port bridge last. A linuxbridge `brq` is per network and shared: removed only
# when nothing else is plugged into it.
_ORDER = ("qvo", "qvb", "tap", "qbr", "brq")


def find_vif(facts, port_id):
    return next(v for v in facts["host"]["vifs"] if v["port_id"] == port_id)


class UnplugVif(HostTask):
    """Delete the VIF's OVS port, veth pair, tap and bridge, recording each as found.

    Reversion: recreate the recorded bridge, veth pair (addresses, MTU, membership, link state)
    and OVS port with its external-ids; the tap comes back when the domain starts again.
    """

    def __init__(self, vm_uuid, purge_id, port_id, **kwargs):
        super().__init__(vm_uuid, purge_id, detail=port_id, inject={"port_id": port_id},
                         **kwargs)

    def execute(self, purge_id, vm_uuid, facts, port_id):
        vif, net = find_vif(facts, port_id), hostnet.HostNet(self.runner(facts))
        ledger, resource = self.ledger(purge_id, vm_uuid), f"vif:{port_id}"
        devices = vif["devices"]
        found = net.inspect(devices.values(), [vif["ovs_port"]] if vif["ovs_port"] else [])
        links = found["links"]
        state = {"links": links, "ovs": found["ports"].get(vif["ovs_port"]),
                 "keep": self._shared_bridge(vif, found)}
        before = ledger.record_before(self.name, resource, state, target=self.target(facts),
                                      argv=[" ".join(c) for c in self._commands(vif)])
        self.fault("before-change")
        keep = before.state["keep"]
        ports = ([(found["ports"][vif["ovs_port"]]["bridge"], vif["ovs_port"])]
                 if vif["ovs_port"] and found["ports"].get(vif["ovs_port"]) else [])
        doomed = [devices[r] for r in _ORDER
                  if devices.get(r) in links and devices[r] not in keep]
        after = net.remove(ports, doomed, watch=devices.values()) if ports or doomed else links
        self.fault("after-change")
        ledger.record_after(self.name, resource, {"links": after}, target=self.target(facts))
        return {"removed": sorted(set(links) - set(keep))}

    def revert(self, purge_id, vm_uuid, facts, port_id, **kwargs):
        vif, net = find_vif(facts, port_id), hostnet.HostNet(self.runner(facts))
        ledger, resource = self.ledger(purge_id, vm_uuid), f"vif:{port_id}"
        before = ledger.before(self.name, resource)
        if before is None:
            return
        recorded, now = before.state["links"], net.links(vif["devices"].values())
        for role in reversed(_ORDER):  # bridges before what is enslaved to them
            name = vif["devices"].get(role)
            state = recorded.get(name)
            if state is None or name in now or (role == "tap" and state["kind"] != "tun"):
                continue
            if state["kind"] == "veth" and state["peer"] in now:
                continue
            net.create(name, state, recorded.get(state.get("peer")))
            now = net.links(vif["devices"].values())
        ours = set(vif["devices"].values())
        for role in reversed(_ORDER):
            name = vif["devices"].get(role)
            if name in recorded and name in now and name not in before.state["keep"]:
                state = recorded[name]     # masters outside the VIF (ovs-system) stay
                net.configure(name, dict(state, master=state["master"]
                                         if state.get("master") in ours else None))
        if before.state["ovs"] and net.ovs_port(vif["ovs_port"]) is None:
            net.add_port(before.state["ovs"]["bridge"], vif["ovs_port"],
                         before.state["ovs"]["external_ids"])
        ledger.record_reverted(self.name, resource, {"links": net.links(vif["devices"].values())},
                               target=self.target(facts))

    @staticmethod
    def _shared_bridge(vif, found):
        """A linuxbridge `brq` with other members stays (other instances on that network)."""
        brq = vif["devices"].get("brq")
        if not brq or brq not in found["links"]:
            return []
        others = [m for m in found["members"].get(brq, []) if m != vif["devices"]["tap"]]
        return [brq] if others else []

    @staticmethod
    def _commands(vif):
        commands = []
        if vif["ovs_port"]:
            commands.append(hostnet.del_port_argv(vif["ovs_bridge"], vif["ovs_port"]))
        commands += [hostnet.del_link_argv(vif["devices"][r]) for r in _ORDER
                     if r in vif["devices"]]
        return commands

    def describe(self, facts):
        vif = find_vif(facts, self.inject["port_id"])
        why = {"ovs-hybrid": "os-vif ovs hybrid plug", "ovs": "os-vif ovs plug (tap on br-int)",
               "linuxbridge": "linuxbridge (brq kept while other ports use it)",
               "other": "no host devices for this VIF type"}[vif["plug"]]
        return [{"target": self.target(facts), "command": " ".join(c) + "  (if present)",
                 "why": why} for c in self._commands(vif) if vif["plug"] != "other"]
