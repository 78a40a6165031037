"""libvirt domains on a compute host, through `virsh` over the host's runner.

Reads go in one batch (one round trip): `inspect` answers everything the steps ask about a
domain before they change it. Every name and uuid is validated before it reaches argv.
"""

import xml.etree.ElementTree as ET

from novapurge import validate
from novapurge.drivers.ssh import CommandFailed

MISSING = ("failed to get domain", "Domain not found", "no domain with matching")
NOT_RUNNING = ("domain is not running",)
INACTIVE = ("shut off", "crashed")
ANY_RC = tuple(range(256))


def destroy_argv(name):
    return ["virsh", "destroy", validate.domain_name(name)]


def start_argv(name, paused=False):
    return ["virsh", "start", validate.domain_name(name)] + (["--paused"] if paused else [])


def undefine_argv(name, managed_save=False):
    # --keep-nvram: the NVRAM file is quarantined by the step, so a revert can put it back.
    return (["virsh", "undefine", validate.domain_name(name), "--keep-nvram"]
            + (["--managed-save"] if managed_save else []))


def domstate_argv(name):
    return ["virsh", "domstate", validate.domain_name(name)]


DEFINE_ARGV = ["virsh", "define", "/dev/stdin"]


def _missing(result) -> bool:
    return result.rc != 0 and any(m in result.stderr for m in MISSING)


def state_from(result) -> str | None:
    """A `virsh domstate` answer: the state, None for a missing domain."""
    if _missing(result):
        return None
    if result.rc:
        raise CommandFailed(result)
    return result.stdout.strip()


def _dominfo(out: str) -> dict:
    return {k.strip(): v.strip() for k, _, v in
            (line.partition(":") for line in out.splitlines()) if v}


class Libvirt:
    """Read and change one host's domains."""

    def __init__(self, runner):
        self.runner = runner

    def inspect(self, name: str, uuid: str | None = None) -> dict:
        """{"domain": the domain named `name` (see below) or None, "owner": the name of the
        domain that has `uuid`, if any} -- one round trip (two when `name` is missing).

        domain: {name, uuid, state, persistent, managed_save, nvram, xml (the persistent
        definition, or the live one of a transient domain)}.
        """
        name = validate.domain_name(name)
        uuid = None if uuid is None else validate.vm_uuid(uuid)
        info, xml = self.runner.run_batch([(["virsh", "dominfo", name], ANY_RC),
                                           (["virsh", "dumpxml", "--inactive", name], ANY_RC)],
                                          stop=False)
        if _missing(info):     # is the instance's domain there under another name?
            return {"domain": None, "owner": None if uuid is None else self.name_of(uuid)}
        for result in (info, xml):
            if result.rc:
                raise CommandFailed(result)
        fields = _dominfo(info.stdout)
        root = ET.fromstring(xml.stdout)
        nvram = root.findtext("./os/nvram")
        domain = {"name": name, "uuid": (root.findtext("uuid") or "").strip().lower(),
                  "state": fields.get("State", "unknown"),
                  "persistent": fields.get("Persistent") == "yes",
                  "managed_save": fields.get("Managed save") == "yes",
                  "nvram": nvram.strip() if nvram else None, "xml": xml.stdout}
        return {"domain": domain, "owner": name if domain["uuid"] == uuid else None}

    def domain(self, name: str) -> dict | None:
        """The domain named `name` (see `inspect`), None when no such domain exists."""
        return self.inspect(name)["domain"]

    def name_of(self, uuid: str) -> str | None:
        """The name of the domain with this uuid, if any."""
        result = self.runner.run(["virsh", "domname", validate.vm_uuid(uuid)], ok_codes=ANY_RC)
        return (result.stdout.strip() or None) if result.rc == 0 else None

    def state(self, name: str) -> str | None:
        return state_from(self.runner.run(domstate_argv(name), ok_codes=ANY_RC))

    def destroy(self, name: str) -> str | None:
        """Stop the domain if it runs (a stuck QEMU too: libvirt ends it with SIGKILL after
        SIGTERM); returns its state afterwards. One round trip; a domain that is not running
        or is gone is fine."""
        destroyed, after = self.runner.run_batch(
            [(destroy_argv(name), (0, 1)), (domstate_argv(name), ANY_RC)], timeout=180)
        if destroyed.rc and not (_missing(destroyed)
                                 or any(m in destroyed.stderr for m in NOT_RUNNING)):
            raise CommandFailed(destroyed)
        return state_from(after)

    def start(self, name: str, paused=False) -> None:
        if self.state(name) in INACTIVE:
            self.runner.run(start_argv(name, paused))

    def undefine(self, name: str, managed_save=False, before=()) -> bool:
        """Remove the definition (after the `before` commands, e.g. moving the NVRAM file away,
        in the same round trip); returns whether a domain of that name is still there."""
        commands = [(argv, (0,)) for argv in before]
        commands += [(undefine_argv(name, managed_save), (0, 1)), (domstate_argv(name), ANY_RC)]
        results = self.runner.run_batch(commands)
        undefined, after = results[-2], results[-1]
        if undefined.rc and not _missing(undefined):
            raise CommandFailed(undefined)
        return state_from(after) is not None

    def define(self, xml: str) -> None:
        self.runner.run(DEFINE_ARGV, stdin=xml)
