"""iSCSI node records and sessions of a compute host, through `iscsiadm` over its runner.

rc 21 is iscsiadm's "no records / no sessions found": for logout and delete it means done.
iscsiadm keeps one directory per target name, with one entry per portal: two iscsiadm runs on
the records of one target at once (multipath: one step per portal, in parallel) race and fail
(rc 6, "could not stat"), so this process runs one iscsiadm node operation per host at a time,
as os-brick does with its lock.
"""

import threading
import weakref

from novapurge import validate
from novapurge.drivers.ssh import CommandFailed

_HOST_LOCKS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()   # runner -> Lock
_LOCKS_LOCK = threading.Lock()


def _host_lock(runner) -> threading.Lock:
    with _LOCKS_LOCK:
        return _HOST_LOCKS.setdefault(runner, threading.Lock())

NOT_FOUND = 21
# Fields iscsiadm fills itself for a new record: restoring them would fight it.
_DERIVED = ("node.name", "node.conn[0].address", "node.conn[0].port", "iface.iscsi_ifacename",
            "node.discovery_address", "node.discovery_port", "node.discovery_type")


def _node(iqn, portal):
    return ["iscsiadm", "-m", "node", "-T", validate.iqn(iqn), "-p", validate.portal(portal)]


def startup_manual_argv(iqn, portal):
    return _node(iqn, portal) + ["--op", "update", "-n", "node.startup", "-v", "manual"]


def logout_argv(iqn, portal):
    return _node(iqn, portal) + ["--logout"]


def delete_argv(iqn, portal):
    return _node(iqn, portal) + ["--op", "delete"]


def _record(result) -> dict | None:
    if result.rc == NOT_FOUND:
        return None
    if result.rc:
        raise CommandFailed(result)
    return dict(line.split(" = ", 1) for line in result.stdout.splitlines()
                if " = " in line and not line.startswith("#"))


def _logged_in(result, iqn, portal) -> bool:
    if result.rc not in (0, NOT_FOUND):
        raise CommandFailed(result)
    host = validate.portal(portal).split(",")[0]
    return any(validate.iqn(iqn) in line.split() and host in line
               for line in result.stdout.splitlines())


class Iscsi:
    """Node records (the file database under /etc/iscsi) and sessions of one host."""

    def __init__(self, runner):
        self.runner = runner
        self._lock = _host_lock(runner)

    def inspect(self, iqn: str, portal: str) -> dict:
        """{"record": the node record with its secrets shown (for revert; the ledger protects
        them) or None, "session": logged in?} -- one round trip."""
        with self._lock:
            record, sessions = self.runner.run_batch(
                [(_node(iqn, portal) + ["-o", "show", "-S"], (0, NOT_FOUND)),
                 (["iscsiadm", "-m", "session"], (0, NOT_FOUND))], stop=False)
        return {"record": _record(record), "session": _logged_in(sessions, iqn, portal)}

    def record(self, iqn: str, portal: str) -> dict | None:
        with self._lock:
            return _record(self.runner.run(_node(iqn, portal) + ["-o", "show", "-S"],
                                           ok_codes=(0, NOT_FOUND)))

    def logged_in(self, iqn: str, portal: str) -> bool:
        result = self.runner.run(["iscsiadm", "-m", "session"], ok_codes=(0, NOT_FOUND))
        return _logged_in(result, iqn, portal)

    def disconnect(self, iqn, portal, has_record: bool) -> None:
        """os-brick's disconnect in one round trip: startup manual (when there is a record),
        log out, delete the record (rc 21, nothing to log out or delete, is done)."""
        commands = [(startup_manual_argv(iqn, portal), (0,))] if has_record else []
        commands += [(logout_argv(iqn, portal), (0, NOT_FOUND)),
                     (delete_argv(iqn, portal), (0, NOT_FOUND))]
        with self._lock:
            self.runner.run_batch(commands)

    def restore(self, iqn: str, portal: str, record: dict) -> None:
        """Create the node record again and set every field that differs from a fresh one."""
        node, show = _node(iqn, portal), _node(iqn, portal) + ["-o", "show", "-S"]
        with self._lock:
            fresh = _record(self.runner.run(show, ok_codes=(0, NOT_FOUND)))
            if fresh is None:
                self.runner.run(node + ["-o", "new"])
                fresh = _record(self.runner.run(show, ok_codes=(0, NOT_FOUND))) or {}
            self.runner.run_batch([
                (node + ["--op", "update", "-n", key, "-v", value], (0,))
                for key, value in record.items()
                if key not in _DERIVED and fresh.get(key) != value and value != "<empty>"])

    def login(self, iqn, portal) -> None:
        with self._lock:
            self.runner.run(_node(iqn, portal) + ["--login"])
