"""The change ledger: every mutation's before-state, committed before the mutation happens.

TaskFlow saves a task's result only after `execute` returns; the ledger closes that gap. Entries
are append-only and hash-chained (each entry's hash covers the previous one), so an edited row is
detected by `audit verify`. A re-executed task gets back the before-state its first run recorded.
"""

import dataclasses
import datetime
import functools
import getpass
import hashlib
import json
import os
import socket

import sqlalchemy as sa

from novapurge.persistence import redact, schema, writers

INTENT, APPLIED, REVERTED, NOTE = "intent", "applied", "reverted", "note"
_HASHED = ("purge_id", "vm_uuid", "atom", "resource", "phase", "outcome", "before", "after",
           "protected_digest", "operator", "ticket", "os_user", "machine", "pid", "target", "argv",
           "ts")


@dataclasses.dataclass(frozen=True)
class Actor:
    """Who makes the changes, recorded on every entry."""

    operator: str
    ticket: str | None = None
    os_user: str = dataclasses.field(default_factory=getpass.getuser)
    machine: str = dataclasses.field(default_factory=socket.getfqdn)
    pid: int = dataclasses.field(default_factory=os.getpid)

    @classmethod
    def from_options(cls, operator=None, ticket=None):
        return cls(operator=operator or getpass.getuser(), ticket=ticket)


@dataclasses.dataclass(frozen=True)
class Entry:
    id: int
    atom: str
    resource: str
    phase: str
    state: object  # the whole before-state (protected copy where secrets were redacted)


def _dumps(value) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, separators=(",", ":"))


def entry_hash(prev_hash: str, row: dict) -> str:
    """The chain hash of one ledger row (keys of `_HASHED`, in order, after the previous hash)."""
    body = json.dumps([prev_hash] + [row.get(k) for k in _HASHED], separators=(",", ":"))
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


# Statements built once: values travel as parameters, so each is compiled once per engine.
_INSERT = schema.ledger.insert()
_HEAD_KEY = "novapurge_ledger_head"
_ADVANCE_HEAD = (schema.ledger_head.update().where(schema.ledger_head.c.id == 1)
                 .values(last_id=sa.bindparam("new_id"), last_hash=sa.bindparam("new_hash")))


@functools.lru_cache(maxsize=None)
def _rows_query(columns: tuple):
    """Ledger rows in chain order where each of `columns` equals the parameter of its name."""
    return (sa.select(schema.ledger)
            .where(*(schema.ledger.c[c] == sa.bindparam(c) for c in columns))
            .order_by(schema.ledger.c.id))


def _chain(row: dict, conn) -> int:
    """Append `row` at the chain's head (held by the transaction: the file's writer on SQLite,
    the head row's lock on MySQL) and move the head; the new entry's id. The head is read once
    per transaction: entries committed in one group follow each other."""
    state = writers.transaction_state()
    head = state.get(_HEAD_KEY) or schema.chain_head(conn)
    # stamped once the chain is ours: entries' times follow the chain's order
    row = dict(row, ts=datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="microseconds"), prev_hash=head["last_hash"])
    row["hash"] = entry_hash(head["last_hash"], row)
    new_id = conn.execute(_INSERT, row).inserted_primary_key[0]
    conn.execute(_ADVANCE_HEAD, {"new_id": new_id, "new_hash": row["hash"]})
    state[_HEAD_KEY] = {"last_id": new_id, "last_hash": row["hash"]}
    return new_id


class Ledger:
    """The ledger tables of one journal database."""

    def __init__(self, engine: sa.engine.Engine, actor: Actor):
        self.engine = engine
        self.actor = actor
        schema.create(engine)

    def bind(self, purge_id: str, vm_uuid: str) -> "VmLedger":
        return VmLedger(self, purge_id, vm_uuid)

    def append(self, **fields) -> int:
        """Append one entry to the chain and commit it; returns its id."""
        state_before, state_after = fields.pop("before", None), fields.pop("after", None)
        shown_before = redact.redact(state_before)
        protected = _dumps(state_before) if shown_before != state_before else None
        row = {
            "before": _dumps(shown_before), "after": _dumps(redact.redact(state_after)),
            "protected": protected,
            "protected_digest": hashlib.sha256(protected.encode()).hexdigest() if protected else None,
            "operator": self.actor.operator, "ticket": self.actor.ticket,
            "os_user": self.actor.os_user, "machine": self.actor.machine, "pid": self.actor.pid,
            "target": None, "argv": None, **fields,
        }
        if isinstance(row["argv"], (list, tuple)):
            row["argv"] = _dumps(list(row["argv"]))
        return writers.commit(self.engine, functools.partial(_chain, row))

    def rows(self, purge_id=None, vm_uuid=None, atom=None, resource=None):
        """Ledger rows in chain order, optionally narrowed to a purge, VM, atom and resource."""
        given = {column: value for column, value in (
            ("purge_id", purge_id), ("vm_uuid", vm_uuid), ("atom", atom), ("resource", resource))
            if value is not None}
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(_rows_query(tuple(given)), given)]

    def verify(self) -> list:
        """Problems found by recomputing the hash chain (an empty list means intact)."""
        problems, prev = [], schema.GENESIS
        for row in self.rows():
            check = dict(row)
            if row["protected"] is not None:
                digest = hashlib.sha256(row["protected"].encode()).hexdigest()
                if digest != row["protected_digest"]:
                    problems.append(f"entry {row['id']}: protected state was altered")
            if row["prev_hash"] != prev:
                problems.append(f"entry {row['id']}: chain broken (an entry before it was removed "
                                f"or inserted)")
            if entry_hash(row["prev_hash"], check) != row["hash"]:
                problems.append(f"entry {row['id']}: contents do not match its hash (edited)")
            prev = row["hash"]
        with self.engine.connect() as conn:
            head = conn.execute(sa.select(schema.ledger_head)).first()
        if head is not None and head.last_hash != prev:
            problems.append("the newest entries were removed (chain head does not match)")
        return problems


class VmLedger:
    """The ledger as one VM's purge sees it."""

    def __init__(self, ledger: Ledger, purge_id: str, vm_uuid: str):
        self._ledger = ledger
        self.purge_id = purge_id
        self.vm_uuid = vm_uuid
        # (atom, resource) -> the live before-state (JSON) this binding recorded or found: a
        # step's record_after follows its record_before, under the VM's lock, so it is still live
        self._recorded = {}

    def _append(self, atom, resource, phase, outcome, **fields) -> int:
        return self._ledger.append(purge_id=self.purge_id, vm_uuid=self.vm_uuid, atom=atom,
                                   resource=resource, phase=phase, outcome=outcome, **fields)

    def record_before(self, atom: str, resource: str, state, *, target=None, argv=None) -> Entry:
        """Commit the before-state of a change about to be made; a re-run gets the first one back."""
        earlier = self.before(atom, resource)
        if earlier is not None:
            self._recorded[(atom, resource)] = _dumps(earlier.state)
            return earlier
        self._recorded[(atom, resource)] = _dumps(state)
        entry_id = self._append(atom, resource, INTENT, "pending", before=state, target=target,
                                argv=argv)
        return Entry(entry_id, atom, resource, INTENT, state)

    def record_after(self, atom: str, resource: str, state, *, target=None, outcome="applied"):
        recorded = self._recorded.get((atom, resource))
        if recorded is not None:
            before = json.loads(recorded)
        else:
            entry = self.before(atom, resource)
            before = entry.state if entry else None
        self._append(atom, resource, APPLIED, outcome, before=before, after=state, target=target)

    def record_reverted(self, atom: str, resource: str, state, *, target=None):
        self._recorded.pop((atom, resource), None)
        self._append(atom, resource, REVERTED, "reverted", after=state, target=target)

    def note(self, atom: str, resource: str, outcome: str, detail=None, *, target=None):
        """A fact worth auditing that changes nothing (a skipped group, a passed marker)."""
        if not any(e["phase"] == NOTE and e["outcome"] == outcome
                   for e in self._entries(atom, resource)):
            self._append(atom, resource, NOTE, outcome, after=detail, target=target)

    def before(self, atom: str, resource: str) -> Entry | None:
        """The live before-state of (atom, resource): recorded and not reverted since."""
        live = None
        for row in self._entries(atom, resource):
            if row["phase"] == INTENT:
                live = row
            elif row["phase"] == REVERTED:
                live = None
        if live is None:
            return None
        raw = live["protected"] if live["protected"] is not None else live["before"]
        return Entry(live["id"], atom, resource, INTENT, json.loads(raw) if raw else None)

    def applied(self, atom: str, resource: str) -> bool:
        """True when the change was recorded as applied and not reverted since."""
        state = False
        for row in self._entries(atom, resource):
            if row["phase"] in (INTENT, APPLIED, REVERTED):
                state = row["phase"] == APPLIED
        return state

    def resources(self, atom: str) -> list:
        """Resources of `atom` with a live before-state, in the order they were recorded."""
        seen = []
        for row in self._ledger.rows(self.purge_id, self.vm_uuid, atom=atom):
            if row["resource"] not in seen:
                seen.append(row["resource"])
        return [r for r in seen if self.before(atom, r) is not None]

    def _entries(self, atom, resource):
        return self._ledger.rows(self.purge_id, self.vm_uuid, atom=atom, resource=resource)
