"""The instance's directories on the compute host: quarantined first, removed after no return."""

from novapurge.drivers.files import Files, move_argv, remove_argv
from novapurge.errors import Refused
from novapurge.tasks.base import HostTask
from novapurge.tasks.hostfacts import TRASH_DIR, trash_dir, trash_parents


def _kept(trash, path):
    return f"{trash}/{path.rsplit('/', 1)[1]}"


class QuarantineInstanceDirs(HostTask):
    """Move `<uuid>`, `<uuid>_resize`, `<uuid>_del` into this purge's trash dir (same filesystem).

    Refused, before anything moves, when a dir or the trash is on another filesystem than the
    instances path (`mv` would copy, not rename).
    Reversion: move each one back where it was.
    """

    def execute(self, purge_id, vm_uuid, facts):
        files, host = Files(self.runner(facts)), facts["host"]
        ledger, trash = self.ledger(purge_id, vm_uuid), trash_dir(host, purge_id, vm_uuid)
        resource, root = f"dirs:{vm_uuid}", host["instances_path"]
        kept = {p: _kept(trash, p) for p in host["dirs"]}
        seen = files.inspect([root, *trash_parents(trash), trash, *host["dirs"],
                              *kept.values()], listed=host["dirs"])
        found = {p: {"stat": {k: seen[p][k] for k in ("device", "kind")},
                     "listing": seen[p]["listing"]} for p in host["dirs"] if seen[p]}
        self._check_one_filesystem(seen, root, trash, list(found))
        before = ledger.record_before(self.name, resource, {"dirs": found, "trash": trash},
                                      target=self.target(facts),
                                      argv=[" ".join(move_argv(p, kept[p])) for p in found])
        self.fault("before-change")
        moves = [(p, kept[p]) for p in before.state["dirs"] if seen[p] and not seen[kept[p]]]
        if moves:
            files.move_all(moves, make_dirs=[] if seen[trash] else [trash])
        self.fault("after-change")
        ledger.record_after(self.name, resource, {"moved_to": trash}, target=self.target(facts))
        return {"moved": sorted(before.state["dirs"])}

    @staticmethod
    def _check_one_filesystem(seen, root, trash, paths):
        device = seen[root]["device"] if seen[root] else None
        for path in [trash, *trash_parents(trash), *paths]:
            if seen[path] and seen[path]["device"] != device:
                raise Refused(f"{path} is not on the filesystem of {root}: moving it to the "
                              f"quarantine would copy it; nothing was moved")

    def revert(self, purge_id, vm_uuid, facts, **kwargs):
        files, ledger = Files(self.runner(facts)), self.ledger(purge_id, vm_uuid)
        before = ledger.before(self.name, f"dirs:{vm_uuid}")
        if before is None:
            return
        trash = before.state["trash"]
        paths = list(before.state["dirs"])
        seen = files.inspect(paths + [_kept(trash, p) for p in paths])
        moves = [(_kept(trash, p), p) for p in paths if seen[_kept(trash, p)] and not seen[p]]
        if moves:
            files.move_all(moves)
        files.remove_trees([], then_rmdir=[trash, *trash_parents(trash)])
        ledger.record_reverted(self.name, f"dirs:{vm_uuid}", {"restored": sorted(paths)},
                               target=self.target(facts))

    def describe(self, facts):
        trash = f"{facts['host']['instances_path']}/{TRASH_DIR}/<purge>/{facts['vm_uuid']}"
        return [{"target": self.target(facts),
                 "command": f"mv --no-target-directory --no-clobber {p} {_kept(trash, p)}",
                 "why": "quarantine (if present); removed after the point of no return"}
                for p in facts["host"]["dirs"]]


class EmptyQuarantine(HostTask):
    """Remove what this VM's purge quarantined (after the point of no return).

    Reversion: none (irreversible; the listing is in the ledger).
    """

    reversible = False

    def execute(self, purge_id, vm_uuid, facts):
        files, host = Files(self.runner(facts)), facts["host"]
        trash = trash_dir(host, purge_id, vm_uuid)
        kept = [_kept(trash, p) for p in host["dirs"]] + [f"{trash}/{vm_uuid}.nvram"]
        ledger = self.ledger(purge_id, vm_uuid)
        seen = files.inspect(kept, listed=kept)
        present = {p: seen[p].get("listing", []) for p in kept if seen[p]}
        ledger.record_before(self.name, f"trash:{vm_uuid}", {"removed": present},
                             target=self.target(facts), argv=[" ".join(remove_argv(p)) for p in kept])
        files.remove_trees(list(present), then_rmdir=[trash, *trash_parents(trash)])
        ledger.record_after(self.name, f"trash:{vm_uuid}", {"removed": sorted(present)},
                            target=self.target(facts))
        return {"removed": sorted(present)}

    def describe(self, facts):
        trash = f"{facts['host']['instances_path']}/{TRASH_DIR}/<purge>/{facts['vm_uuid']}"
        return [{"target": self.target(facts), "command": f"rm -rf --one-file-system -- {_kept(trash, p)}",
                 "why": "empty the quarantine (irreversible)"} for p in facts["host"]["dirs"]]
