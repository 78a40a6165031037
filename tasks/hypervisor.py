"""The instance's libvirt domain: check it is ours, stop it, remove its definition."""

from novapurge.drivers import hostnet, libvirt
from novapurge.drivers.files import Files, move_argv
from novapurge.errors import Refused
from novapurge.tasks.base import HostTask
from novapurge.tasks.hostfacts import trash_dir


def check_domain(virsh, facts) -> dict | None:
    """The instance's domain, after refusing one that belongs to another instance."""
    host, vm_uuid = facts["host"], facts["vm_uuid"]
    found = virsh.inspect(host["domain"], vm_uuid)
    domain, owner = found["domain"], found["owner"]
    if domain is not None and domain["uuid"] != vm_uuid:
        raise Refused(f"domain {host['domain']} on {host['name']} has uuid {domain['uuid']}, not "
                      f"{vm_uuid}: it belongs to another instance; nothing was changed")
    if domain is None and owner is not None:
        raise Refused(f"the domain of {vm_uuid} on {host['name']} is named {owner}, not "
                      f"{host['domain']}: check instance_name_template; nothing was changed")
    return domain


def _libvirt_ports(facts) -> list:
    """The taps libvirt itself plugs into OVS (os-vif "ovs" without hybrid plug): destroying
    the domain removes their OVS ports, starting it adds them again."""
    return [v["ovs_port"] for v in facts["host"]["vifs"] if v["plug"] == "ovs"]


class VerifyDomainIdentity(HostTask):
    """Refuse to touch the host unless the domain named after the instance carries its uuid.

    Records the domain XML and state found (the audit's picture of the host before the purge).
    Reversion: none (changes nothing).
    """

    def execute(self, purge_id, vm_uuid, facts):
        domain = check_domain(libvirt.Libvirt(self.runner(facts)), facts)
        state = None if domain is None else {k: domain[k] for k in
                                             ("uuid", "state", "persistent", "xml")}
        self.ledger(purge_id, vm_uuid).note(self.name, f"domain:{facts['host']['domain']}",
                                            "verified" if domain else "absent", state,
                                            target=self.target(facts))
        return {"present": domain is not None,
                "state": None if domain is None else domain["state"]}

    def describe(self, facts):
        return [{"target": self.target(facts), "command": f"virsh dumpxml {facts['host']['domain']}",
                 "why": f"the domain's <uuid> must be {facts['vm_uuid']}"}]


class DestroyDomain(HostTask):
    """Stop the domain (`virsh destroy`), even a stuck one.

    libvirt removes the domain's taps, and the OVS ports of the taps it plugged into OVS itself;
    their external-ids are recorded first.
    Reversion: `virsh start` (paused if it was paused) when it was running, then the recorded
    external-ids set again on the OVS ports libvirt re-creates.
    """

    def execute(self, purge_id, vm_uuid, facts):
        runner, name = self.runner(facts), facts["host"]["domain"]
        ledger, resource = self.ledger(purge_id, vm_uuid), f"domain:{name}"
        ports = _libvirt_ports(facts)
        reads = [(libvirt.domstate_argv(name), libvirt.ANY_RC)]
        for port in ports:
            reads += hostnet.port_argvs(port)
        results = runner.run_batch(reads, stop=False)
        state = libvirt.state_from(results[0])
        found = {port: hostnet.port_from(results[1 + 2 * i], results[2 + 2 * i])
                 for i, port in enumerate(ports)}
        before = ledger.record_before(
            self.name, resource,
            {"state": state, "ovs_ports": {p: v for p, v in found.items() if v}},
            target=self.target(facts), argv=libvirt.destroy_argv(name))
        self.fault("before-change")
        after = libvirt.Libvirt(runner).destroy(name)
        self.fault("after-change")
        ledger.record_after(self.name, resource, {"state": after}, target=self.target(facts))
        return {"was": before.state["state"]}

    def revert(self, purge_id, vm_uuid, facts, **kwargs):
        runner, name = self.runner(facts), facts["host"]["domain"]
        ledger = self.ledger(purge_id, vm_uuid)
        before = ledger.before(self.name, f"domain:{name}")
        if before is None:
            return
        was = before.state["state"]
        if was is not None and was not in libvirt.INACTIVE:
            libvirt.Libvirt(runner).start(name, paused=was == "paused")
            net = hostnet.HostNet(runner)
            for port, recorded in (before.state.get("ovs_ports") or {}).items():
                now = net.ovs_port(port)
                if now is not None and now["external_ids"] != recorded["external_ids"]:
                    net.set_external_ids(port, recorded["external_ids"])
        ledger.record_reverted(self.name, f"domain:{name}", {"state": was},
                               target=self.target(facts))

    def describe(self, facts):
        return [{"target": self.target(facts),
                 "command": " ".join(libvirt.destroy_argv(facts["host"]["domain"])),
                 "why": "stop the instance's QEMU (only if running)"}]


class UndefineDomain(HostTask):
    """Remove the domain's definition; its NVRAM file (if any) goes to the quarantine.

    Reversion: define the domain again from the XML recorded before, NVRAM moved back.
    """

    def execute(self, purge_id, vm_uuid, facts):
        runner, name = self.runner(facts), facts["host"]["domain"]
        virsh, ledger = libvirt.Libvirt(runner), self.ledger(purge_id, vm_uuid)
        resource = f"domain:{name}"
        domain = virsh.domain(name)
        state = None if domain is None else {
            k: domain[k] for k in ("xml", "nvram", "managed_save", "persistent")}
        before = ledger.record_before(self.name, resource, state, target=self.target(facts),
                                      argv=libvirt.undefine_argv(name))
        self.fault("before-change")
        recorded = before.state
        first = []
        if recorded and recorded["nvram"]:
            first = self._nvram_moves(runner, facts, purge_id, recorded["nvram"])
        still = domain is not None
        if domain is not None and domain["persistent"]:
            still = virsh.undefine(name, managed_save=domain["managed_save"], before=first)
        elif first:
            runner.run_batch([(argv, (0,)) for argv in first])
        self.fault("after-change")
        ledger.record_after(self.name, resource, {"defined": still}, target=self.target(facts))
        return {"undefined": bool(recorded and recorded["persistent"])}

    def revert(self, purge_id, vm_uuid, facts, **kwargs):
        runner, name = self.runner(facts), facts["host"]["domain"]
        ledger, resource = self.ledger(purge_id, vm_uuid), f"domain:{name}"
        before = ledger.before(self.name, resource)
        if before is None or before.state is None:
            return
        virsh = libvirt.Libvirt(runner)
        if before.state["persistent"] and virsh.state(name) is None:
            virsh.define(before.state["xml"])
        if before.state["nvram"]:
            kept = self._nvram_copy(facts, purge_id)
            found = Files(runner).inspect([kept, before.state["nvram"]])
            if found[kept] and not found[before.state["nvram"]]:
                Files(runner).move(kept, before.state["nvram"])
        ledger.record_reverted(self.name, resource, {"defined": True}, target=self.target(facts))

    @staticmethod
    def _nvram_copy(facts, purge_id):
        return f"{trash_dir(facts['host'], purge_id, facts['vm_uuid'])}/{facts['vm_uuid']}.nvram"

    def _nvram_moves(self, runner, facts, purge_id, nvram) -> list:
        """The commands that move the NVRAM file into the quarantine (none if already done)."""
        trash = trash_dir(facts["host"], purge_id, facts["vm_uuid"])
        kept = self._nvram_copy(facts, purge_id)
        found = Files(runner).inspect([nvram, kept])
        if not found[nvram] or found[kept]:
            return []
        return [["mkdir", "-p", "-m", "0700", "--", trash], move_argv(nvram, kept)]

    def describe(self, facts):
        name = facts["host"]["domain"]
        return [{"target": self.target(facts), "command": " ".join(libvirt.undefine_argv(name)),
                 "why": "remove the definition (XML recorded; NVRAM, if any, quarantined: "
                        + " ".join(move_argv("/NVRAM", "/TRASH/NVRAM")) + ")"}]
