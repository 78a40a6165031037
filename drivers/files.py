"""Instance directories on a compute host: look, move, remove -- through its runner.

Paths are validated absolute paths; a removal is only ever of a path built from validated parts
by the caller (the quarantine of one purge), with `--one-file-system`. Looking at several paths
is one round trip, and so is one step's set of moves or removals.
"""

from novapurge import validate
from novapurge.drivers.ssh import CommandFailed

_MISSING = 1      # stat / find / rmdir of a path that is not there


def move_argv(source, target):
    return ["mv", "--no-target-directory", "--no-clobber", validate.absolute_path(source),
            validate.absolute_path(target)]


def remove_argv(path):
    return ["rm", "-rf", "--one-file-system", "--", validate.absolute_path(path)]


def make_dir_argv(path):
    return ["mkdir", "-p", "-m", "0700", "--", validate.absolute_path(path)]


def rmdir_argv(path):
    return ["rmdir", "--ignore-fail-on-non-empty", "--", validate.absolute_path(path)]


def _stat_argv(path):
    return ["stat", "--format=%d %F", "--", validate.absolute_path(path)]


def _find_argv(path):
    return ["find", validate.absolute_path(path), "-mindepth", "1", "-printf", r"%P\t%s\n"]


def _stat(result) -> dict | None:
    if result.rc:
        return None
    device, _, kind = result.stdout.strip().partition(" ")
    return {"device": int(device), "kind": kind}


def _listing(result) -> list:
    return sorted(line.split("\t") for line in result.stdout.splitlines() if "\t" in line)


class Files:
    def __init__(self, runner):
        self.runner = runner

    def inspect(self, paths, listed=()) -> dict:
        """{path: {device, kind} or None} for `paths`, plus "listing" (relative paths and sizes
        below it) for those also in `listed` that exist -- one round trip."""
        paths = list(dict.fromkeys(paths))
        listed = [p for p in dict.fromkeys(listed) if p in paths]
        results = self.runner.run_batch(
            [(_stat_argv(p), (0, _MISSING)) for p in paths]
            + [(_find_argv(p), (0, _MISSING)) for p in listed], stop=False)
        for result in results:
            if result.rc not in (0, _MISSING):
                raise CommandFailed(result)
        found = {p: _stat(r) for p, r in zip(paths, results)}
        for path, result in zip(listed, results[len(paths):]):
            if found[path] is not None:
                found[path]["listing"] = _listing(result)
        return found

    def stat(self, path: str) -> dict | None:
        """{device, kind} of a path, None when it does not exist."""
        return _stat(self.runner.run(_stat_argv(path), ok_codes=(0, _MISSING)))

    def listing(self, path: str) -> list:
        """Relative paths and sizes under `path` (for the record of what was moved)."""
        return _listing(self.runner.run(_find_argv(path), ok_codes=(0, _MISSING)))

    def make_dir(self, path: str) -> None:
        self.runner.run(make_dir_argv(path))

    def move(self, source: str, target: str) -> None:
        self.runner.run(move_argv(source, target))

    def move_all(self, moves, make_dirs=()) -> None:
        """Create `make_dirs`, then each (source, target) move, in one round trip."""
        self.runner.run_batch([(make_dir_argv(d), (0,)) for d in make_dirs]
                              + [(move_argv(s, t), (0,)) for s, t in moves])

    def remove_trees(self, paths, then_rmdir=()) -> None:
        """`rm -rf` each path, then remove each of `then_rmdir` when empty, in one round trip."""
        self.runner.run_batch([(remove_argv(p), (0,)) for p in paths]
                              + [(rmdir_argv(d), (0, _MISSING)) for d in then_rmdir])

    def remove_tree(self, path: str) -> None:
        self.runner.run(remove_argv(path))

    def remove_empty_dir(self, path: str) -> None:
        self.runner.run(rmdir_argv(path), ok_codes=(0, _MISSING))
