"""Legacy quota usage (`quota_usages`): the instance's share released, never the limits.

The runbook raised `quotas.hard_limit`, which inflates a project's limit for good; the right fix is
to lower `in_use`. Nova counts quotas from rows since Pike, so a cloud without usage rows for the
project needs nothing here.
"""

import logging

from novapurge.tasks.base import PurgeTask

LOG = logging.getLogger(__name__)

RESOURCES = ("instances", "cores", "ram")


def usage_deltas(facts: dict) -> dict:
    instance = facts["instance"]
    return {"instances": 1, "cores": int(instance.get("vcpus") or 0),
            "ram": int(instance.get("memory_mb") or 0)}


def usage_rows(db, conn, facts: dict) -> list:
    """The project's and the user's usage rows for instances, cores and ram."""
    instance = facts["instance"]
    where = {"project_id": instance["project_id"]}
    if db.has_column("quota_usages", "deleted"):
        where["deleted"] = 0
    return [r for r in db.select(conn, "quota_usages", where)
            if r["resource"] in RESOURCES and r.get("user_id") in (instance["user_id"], None)]


class ReleaseQuotaUsage(PurgeTask):
    """Lower `quota_usages.in_use` by the instance's instances/cores/ram, per project and user.

    Each row is set from its recorded value to that value minus the instance's share (never below
    zero), only where it still holds the recorded value, so a re-run changes nothing twice.

    Reversion: the instance's share is added back to each row, keeping what others changed since
    (a row the crash left unreleased is left alone).
    """

    group = "quota"

    def _databases(self, facts):
        novadb = self.drivers.novadb
        return [db for db in (novadb.cell(facts["cell"]), novadb.api)
                if db is not None and db.has_table("quota_usages")]

    def execute(self, purge_id, vm_uuid, facts):
        ledger, deltas, released = self.ledger(purge_id, vm_uuid), usage_deltas(facts), {}
        for db in self._databases(facts):
            resource = f"quota_usages:{db.label}"

            def release(conn, db=db, resource=resource):
                rows = usage_rows(db, conn, facts)
                if not rows and ledger.before(self.name, resource) is None:
                    return None
                before = ledger.record_before(self.name, resource, {"rows": [
                    {"id": r["id"], "resource": r["resource"], "user_id": r.get("user_id"),
                     "in_use": r["in_use"]} for r in rows]}, target=db.label)
                self.fault("before-change")
                for row in before.state["rows"]:
                    target = max(0, row["in_use"] - deltas[row["resource"]])
                    db.update(conn, "quota_usages", {"id": row["id"], "in_use": row["in_use"]},
                              {"in_use": target})
                return before
            before = db.run_transaction(release)
            if before is None:
                continue
            self.fault("after-change")
            released[db.label] = {f"{r['resource']}/{r['user_id']}":
                                  max(0, r["in_use"] - deltas[r["resource"]])
                                  for r in before.state["rows"]}
            ledger.record_after(self.name, resource, {"in_use": released[db.label]},
                                target=db.label)
        return {"released": released}

    def revert(self, purge_id, vm_uuid, facts, **kwargs):
        ledger, deltas = self.ledger(purge_id, vm_uuid), usage_deltas(facts)
        for db in self._databases(facts):
            resource = f"quota_usages:{db.label}"
            before = ledger.before(self.name, resource)
            if before is None:
                continue
            applied = ledger.applied(self.name, resource)

            def give_back(conn, db=db, before=before, applied=applied):
                for row in before.state["rows"]:
                    share = row["in_use"] - max(0, row["in_use"] - deltas[row["resource"]])
                    current = db.select(conn, "quota_usages", {"id": row["id"]})
                    if not current or not share:
                        continue
                    in_use = current[0]["in_use"]
                    if not applied and in_use != row["in_use"] - share:
                        # crashed between the ledger and the change: the row shows no release
                        LOG.warning("%s: quota row %s holds %s, not the released %s; left as is",
                                    self.name, row["id"], in_use, row["in_use"] - share)
                        continue
                    # give the share back, keeping what others changed since
                    db.update(conn, "quota_usages", {"id": row["id"], "in_use": in_use},
                              {"in_use": in_use + share})
            db.run_transaction(give_back)
            ledger.record_reverted(self.name, resource, before.state, target=db.label)

    def describe(self, facts) -> list:
        deltas, planned = usage_deltas(facts), []
        for db in self._databases(facts):
            with db.engine.connect() as conn:
                for row in usage_rows(db, conn, facts):
                    target = max(0, row["in_use"] - deltas[row["resource"]])
                    planned.append({
                        "target": db.label, "table": "quota_usages", "action": "update", "rows": 1,
                        "statement": f"UPDATE quota_usages SET in_use={target} WHERE "
                                     f"id={row['id']} AND in_use={row['in_use']}",
                        "why": f"release {row['resource']} of user {row.get('user_id')}"})
        return planned
