"""One JSON file shared by processes: read under a shared lock, changed under an exclusive one.

The sandbox's simulated cloud and hosts keep their whole state this way, so a killed purge, its
resume in another process and a test checking the end state all see the same cloud. A change is
written atomically (tmp + rename) and only when its block succeeds.
"""

import contextlib
import copy
import fcntl
import json
import os
import tempfile
from pathlib import Path


class StateFile:
    """The JSON document at `path`, created as a copy of `empty` when missing."""

    def __init__(self, path, empty: dict):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        with self._locked(exclusive=True):
            if not self.path.exists():
                self._save(copy.deepcopy(empty))

    def read(self) -> dict:
        with self._locked(exclusive=False):
            return self._load()

    @contextlib.contextmanager
    def change(self):
        """The state to modify in place; written back only when the block succeeds."""
        with self._locked(exclusive=True):
            state = self._load()
            yield state
            self._save(state)

    @contextlib.contextmanager
    def _locked(self, exclusive: bool):
        with open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield

    def _load(self) -> dict:
        return json.loads(self.path.read_text("utf-8"))

    def _save(self, state: dict) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name + ".")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(state, out, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except BaseException:
            os.unlink(tmp)
            raise
