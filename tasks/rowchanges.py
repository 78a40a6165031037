"""Row-level changes to a Nova database, described once and used by plan, execute and revert.

A change names a table, the rows it acts on (`where`) and what it does to them: `soft-delete`
(Nova's `deleted=id, deleted_at=now`), `hard-delete`, or `update` with fixed values. Reflection
drops changes whose table or columns a schema does not have.
"""

import dataclasses

from novapurge.drivers.rows import decode_row, encode_row

NOW = "<now>"  # a value filled with the database's current UTC time when the change is applied


@dataclasses.dataclass(frozen=True)
class RowChange:
    table: str
    where: dict
    action: str                      # soft-delete | hard-delete | update
    values: dict = dataclasses.field(default_factory=dict)
    reason: str = ""

    def applies_to(self, db) -> bool:
        needed = list(self.where) + list(self.values)
        if self.action == "soft-delete":
            needed += ["deleted", "deleted_at"]
        return db.has_table(self.table) and all(db.has_column(self.table, c) for c in needed)

    def describe(self) -> str:
        where = " AND ".join(f"{k}={v!r}" for k, v in self.where.items())
        if self.action == "soft-delete":
            extra = "".join(f", {k}={v!r}" for k, v in self.values.items()).replace(repr(NOW), "now()")
            return f"UPDATE {self.table} SET deleted=id, deleted_at=now(){extra} WHERE {where}"
        if self.action == "hard-delete":
            return f"DELETE FROM {self.table} WHERE {where}"
        sets = ", ".join(f"{k}={v!r}" for k, v in self.values.items())
        sets = sets.replace(repr(NOW), "now()")
        return f"UPDATE {self.table} SET {sets} WHERE {where}"

    def apply(self, db, conn, rows: list, now) -> int:
        """Change `rows` (read before, under the same transaction); returns rows changed."""
        changed = 0
        values = {k: (now if v == NOW else v) for k, v in self.values.items()}
        for row in rows:
            key = db.key_of(self.table, row)
            if self.action == "hard-delete":
                changed += db.delete(conn, self.table, key)
            elif self.action == "soft-delete":
                changed += db.update(conn, self.table, key,
                                     {"deleted": row["id"], "deleted_at": now, **values})
            else:
                changed += db.update(conn, self.table, key, values)
        return changed


def read_rows(db, conn, changes) -> list:
    """The rows each change will touch (locked FOR UPDATE where the database can), per change."""
    return [db.select(conn, change.table, change.where, for_update=True) for change in changes]


def recorded_state(changes, matched) -> dict:
    """The rows read for the changes, JSON-encoded, keyed by table, each once (for the ledger)."""
    state = {}
    for change, rows in zip(changes, matched):
        seen = state.setdefault(change.table, [])
        for row in rows:
            encoded = encode_row(row)
            if encoded not in seen:
                seen.append(encoded)
    return state


def apply_changes(db, conn, changes, matched) -> int:
    """Apply each change to the rows read for it in this transaction, which are the rows the
    ledger recorded (a re-run after a crash reads none: they no longer match)."""
    now, changed = db.now(), 0
    for change, rows in zip(changes, matched):
        changed += change.apply(db, conn, rows, now)
    return changed


def restore_rows(db, conn, before: dict, order) -> int:
    """Write every recorded row back exactly, parents first (`order` lists tables)."""
    restored = 0
    for table in sorted(before, key=lambda t: order.index(t) if t in order else len(order)):
        for row in before[table]:
            db.restore(conn, table, decode_row(row))
            restored += 1
    return restored


class RowChangesTask:
    """Mixin for steps that are row changes: record the rows, change them, restore them on revert.

    Subclasses implement `targets(facts)` -> [(database, [RowChange], restore order)], one ledger
    resource per database. Reading, recording and changing happen in one transaction of that
    database, so a crash leaves either the old rows (re-run changes them) or the new ones (re-run
    finds nothing to change); the first recorded before-state is what revert writes back.
    """

    def targets(self, facts):
        raise NotImplementedError

    def execute(self, purge_id, vm_uuid, facts):
        ledger, changed = self.ledger(purge_id, vm_uuid), {}
        for db, changes, _order in self.targets(facts):
            resource = f"rows:{db.label}"

            def change(conn, db=db, changes=changes, resource=resource):
                matched = read_rows(db, conn, changes)
                if not any(matched) and ledger.before(self.name, resource) is None:
                    return None  # nothing of this instance here
                ledger.record_before(self.name, resource,
                                     {"rows": recorded_state(changes, matched)}, target=db.label)
                self.fault("before-change")
                return apply_changes(db, conn, changes, matched)
            count = db.run_transaction(change)
            if count is None:
                continue
            changed[db.label] = count
            self.fault("after-change")
            ledger.record_after(self.name, resource, {"rows_changed": changed[db.label]},
                                target=db.label)
        return {"rows_changed": changed}

    def revert(self, purge_id, vm_uuid, facts, **kwargs):
        ledger = self.ledger(purge_id, vm_uuid)
        for db, _changes, order in reversed(self.targets(facts)):
            resource = f"rows:{db.label}"
            before = ledger.before(self.name, resource)
            if before is None:
                continue  # nothing was recorded for this database: nothing was changed
            restored = db.run_transaction(
                lambda conn, db=db, rows=before.state["rows"], order=order:
                restore_rows(db, conn, rows, order))
            ledger.record_reverted(self.name, resource, {"rows_restored": restored},
                                   target=db.label)

    def describe(self, facts) -> list:
        """What this step would change, for `plan`: per table, the action and the rows it matches."""
        planned = []
        for db, changes, _order in self.targets(facts):
            with db.engine.connect() as conn:
                for change in changes:
                    count = len(db.select(conn, change.table, change.where))
                    planned.append({"target": db.label, "table": change.table,
                                    "action": change.action, "rows": count,
                                    "statement": change.describe(), "why": change.reason})
        return planned
