"""One purge per VM at a time: a lock row in the journal database, held by a live process.

A lock whose holder died (same machine, pid gone or reused) is stale: a later run takes it over,
which is what makes an interrupted purge resumable. A holder on another machine cannot be checked
from here and is treated as running.
"""

import dataclasses
import datetime
import os
import socket

import sqlalchemy as sa

from novapurge.errors import Refused
from novapurge.persistence import schema, writers


def process_started(pid: int) -> str | None:
    """The start time of a process (from /proc), so a reused pid is not taken for the holder."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        return fields[19].decode()
    except (OSError, IndexError):
        return None


@dataclasses.dataclass(frozen=True)
class Holder:
    vm_uuid: str
    purge_id: str
    machine: str
    pid: int
    pid_started: str
    acquired_at: str

    @property
    def alive(self) -> bool:
        if self.machine != socket.getfqdn():
            return True
        return process_started(self.pid) == self.pid_started


class VmLocks:
    def __init__(self, engine: sa.engine.Engine):
        self.engine = engine
        schema.create(engine)
        self._me = {"machine": socket.getfqdn(), "pid": os.getpid(),
                    "pid_started": process_started(os.getpid()) or "?"}

    def holder(self, vm_uuid: str) -> Holder | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(schema.locks)
                               .where(schema.locks.c.vm_uuid == vm_uuid)).first()
        return Holder(**row._mapping) if row else None

    def acquire(self, vm_uuid: str, purge_id: str, take_over_remote=False) -> Holder | None:
        """Take the VM's lock for this process, or raise Refused naming the running purge.

        A dead holder of the same purge is taken over (that is what resume does); a holder on
        another machine only with `take_over_remote`, the operator's word that it is gone.
        Returns the holder taken over, if any.
        """
        row = {"vm_uuid": vm_uuid, "purge_id": purge_id, **self._me,
               "acquired_at": datetime.datetime.now(datetime.timezone.utc).isoformat()}
        for _attempt in range(3):
            try:
                with writers.write_transaction(self.engine) as conn:
                    conn.execute(sa.insert(schema.locks).values(**row))
                return
            except sa.exc.IntegrityError:
                holder = self.holder(vm_uuid)
                if holder is None:
                    continue
                if (holder.machine, holder.pid) == (row["machine"], row["pid"]):
                    return None
                remote = holder.machine != row["machine"]
                if holder.purge_id != purge_id:
                    raise Refused(f"purge {holder.purge_id} holds {vm_uuid} "
                                  f"({'running' if holder.alive else 'interrupted'}): resume or "
                                  f"roll it back first") from None
                if holder.alive and not (remote and take_over_remote):
                    raise Refused(f"purge {purge_id} of {vm_uuid} is running: pid {holder.pid} "
                                  f"on {holder.machine}"
                                  + (" (if that machine is gone, use --take-over)" if remote
                                     else "")) from None
                self._take_over(holder, row)
                return holder
        raise Refused(f"could not lock {vm_uuid}: the lock keeps changing hands")

    def machine(self) -> str:
        return self._me["machine"]

    def _take_over(self, stale: Holder, row: dict) -> None:
        with writers.write_transaction(self.engine) as conn:
            taken = conn.execute(
                sa.update(schema.locks)
                .where(schema.locks.c.vm_uuid == stale.vm_uuid,
                       schema.locks.c.pid == stale.pid,
                       schema.locks.c.pid_started == stale.pid_started)
                .values(**row)).rowcount
        if not taken:
            raise Refused(f"another process took the lock of {stale.vm_uuid} just now")

    def release(self, vm_uuid: str) -> None:
        with writers.write_transaction(self.engine) as conn:
            conn.execute(sa.delete(schema.locks).where(schema.locks.c.vm_uuid == vm_uuid,
                                                       schema.locks.c.pid == self._me["pid"],
                                                       schema.locks.c.machine == self._me["machine"]))
