"""The change ledger as an audit trail: exports, redaction of secrets, tamper detection.

On a SQLite and a MariaDB journal: every ledger entry of a purge is exported (JSONL, CSV, JSON) with
who/why/before/after; the CHAP password of the instance's iSCSI volume never shows in an export, on
stdout/stderr, nor in TaskFlow's tables (only in the ledger's protected column revert reads); and
`audit verify` catches an edited or a removed entry (exit 7).
"""

import csv
import io
import json
import types

import pytest
import sqlalchemy as sa

from novapurge.persistence import schema
from novapurge.sandbox import novadb

OPERATOR, TICKET = "alice@ops", "CHG-4242"
FORMATS = ("jsonl", "csv", "json")


def _purge(cli, nova):
    result = cli(["purge", "--yes", nova.uuids["target"], "--operator", OPERATOR,
                  "--ticket", TICKET, "-f", "json"], expect=0)
    return result, result.json["purge_id"]


def _parse(text, export_format):
    if export_format == "jsonl":
        return [json.loads(line) for line in text.splitlines()]
    if export_format == "json":
        return json.loads(text)
    rows = list(csv.DictReader(io.StringIO(text)))
    for row in rows:
        for column in ("before", "after", "argv"):
            row[column] = json.loads(row[column]) if row[column] else None
        row["id"] = int(row["id"])
    return rows


@pytest.fixture(scope="module")
def audited(templates, tmp_path_factory, helpers):
    """`audited(backend)`: one purge (with --operator/--ticket) then its rollback, run once per
    backend, with every command's output and an export in each format."""
    cache = {}

    def get(backend):
        if backend in cache:
            return cache[backend]
        directory = tmp_path_factory.mktemp(f"audit-{backend}")
        nova = templates.new_cloud(backend, directory / "nova")
        journal = templates.journal(backend, directory / "journal")
        done = types.SimpleNamespace(nova=nova, journal=journal, outputs=[], exports={},
                                     secret=helpers.read_secret(nova))
        cache[backend] = done
        env = nova.env(journal.url)

        def cli(args, expect=0):
            result = helpers.run_cli(args, env, expect, cwd=directory)
            done.outputs.append(result)
            return result

        vm = nova.uuids["target"]
        cli(["plan", vm, "-f", "json"])
        cli(["plan", vm, "-v"])
        done.purge_id = cli(["purge", "--yes", "--hold", vm, "--operator", OPERATOR,
                             "--ticket", TICKET, "-f", "json", "-v"], expect=5).json["purge_id"]
        done.purged_ledger = journal.ledger(done.purge_id)
        cli(["status", done.purge_id, "-f", "json"])
        cli(["rollback", "--yes", done.purge_id, "--operator", OPERATOR, "--ticket", TICKET,
             "-v"])
        done.ledger = journal.ledger(done.purge_id)
        for export_format in FORMATS:
            path = directory / f"audit.{export_format}"
            done.summary = cli(["audit", "export", done.purge_id, "--format", export_format,
                                "-o", path, "-f", "json"]).json
            done.exports[export_format] = path.read_text(encoding="utf-8")
            assert done.summary["entries"] == len(done.ledger)
        done.stdout_export = cli(["audit", "export", done.purge_id]).stdout
        cli(["audit", "export", "--all", "--format", "csv"])
        done.verified = cli(["audit", "verify", "-f", "json"]).json
        return done

    yield get
    for done in cache.values():
        done.nova.dispose()
        done.journal.dispose()
        for name in done.nova.mysql_names + [done.journal.mysql_name]:
            if name:
                novadb.drop_mysql_database(helpers.SERVER, name)


def test_export_has_every_entry_with_who_why_before_after(audited, backend, helpers):
    done = audited(backend)
    ledger, vm = done.ledger, done.nova.uuids["target"]
    assert len(done.purged_ledger) >= 10 and len(ledger) > len(done.purged_ledger)
    intents = [r for r in ledger if r["phase"] == "intent"]
    assert {r["atom"].split(":")[0] for r in intents} == set(helpers.MUTATING)
    assert {r["phase"] for r in ledger} == {"intent", "applied", "note", "reverted"}

    for export_format, text in done.exports.items():
        entries = _parse(text, export_format)
        assert [e["id"] for e in entries] == [r["id"] for r in ledger], export_format
        for entry, row in zip(entries, ledger):
            assert (entry["operator"], entry["ticket"]) == (OPERATOR, TICKET)
            assert entry["purge_id"] == done.purge_id and entry["vm_uuid"] == vm
            for column in ("atom", "resource", "phase", "outcome", "hash", "prev_hash", "ts",
                           "machine", "os_user"):
                assert entry[column] == row[column], (export_format, column)
            assert int(entry["pid"]) == row["pid"]
            for column in ("before", "after"):
                stored = json.loads(row[column]) if row[column] else None
                assert entry[column] == stored, (export_format, column)
            assert "protected" not in entry and "protected_digest" not in entry
        soft = next(e for e in entries if e["atom"].startswith("SoftDeleteInstance:")
                    and e["phase"] == "intent")
        assert soft["before"]["rows"]["instances"][0]["uuid"] == vm
        applied = next(e for e in entries if e["atom"].startswith("SoftDeleteInstance:")
                       and e["phase"] == "applied")
        assert applied["before"] == soft["before"] and applied["after"]["rows_changed"] > 20
        quota = next(e for e in entries if e["atom"].startswith("ReleaseQuotaUsage:")
                     and e["phase"] == "applied")
        assert quota["after"]["in_use"]
    assert [e["id"] for e in _parse(done.stdout_export, "jsonl")] == [r["id"] for r in ledger]


def test_secret_never_leaks(audited, backend):
    done = audited(backend)
    secret = done.secret
    for text in done.exports.values():
        assert secret not in text
    for out in done.outputs:
        assert secret not in out.stdout and secret not in out.stderr, out
    # Kept only where revert needs it: the ledger's protected column (never exported)...
    engine = done.journal.engine
    holders = set()
    with engine.connect() as conn:
        for table in sa.inspect(engine).get_table_names():
            for row in conn.execute(sa.text(f"SELECT * FROM {table}")).mappings():
                holders |= {(table, column) for column, value in row.items()
                            if value is not None and secret in str(value)}
    assert holders == {("novapurge_ledger", "protected")}
    # ...and the rollback put it back into the BDM exactly.
    assert done.nova.rows("cell", "block_device_mapping", instance_uuid=done.nova.uuids["target"])
    assert secret in {json.loads(r["connection_info"])["data"].get("auth_password")
                      for r in done.nova.rows("cell", "block_device_mapping",
                                              instance_uuid=done.nova.uuids["target"])
                      if r["connection_info"]}


def test_verify_intact_ledger(audited, backend):
    done = audited(backend)
    assert done.verified == {"entries": len(done.journal.ledger()), "intact": True,
                             "problems": []}
    assert done.journal.verify() == []


def test_edited_entry_is_named(nova, cli, journal):
    _, purge_id = _purge(cli, nova)
    entry = next(r for r in journal.ledger(purge_id)
                 if r["phase"] == "applied" and r["atom"].startswith("ReleaseQuotaUsage:"))
    edited = json.loads(entry["after"])
    edited["in_use"] = {k: 0 for k in edited["in_use"]}
    with journal.engine.begin() as conn:
        changed = conn.execute(sa.update(schema.ledger).where(schema.ledger.c.id == entry["id"])
                               .values(after=json.dumps(edited))).rowcount
    assert changed == 1

    result = cli(["audit", "verify", "-f", "json"], expect=7).json
    assert result["intact"] is False
    assert result["problems"] == [f"entry {entry['id']}: contents do not match its hash (edited)"]
    text = cli(["audit", "verify"], expect=7)
    assert f"entry {entry['id']}" in text.stderr


def test_removed_last_entry_is_detected(nova, cli, journal):
    _, purge_id = _purge(cli, nova)
    last = journal.ledger()[-1]
    with journal.engine.begin() as conn:
        conn.execute(sa.delete(schema.ledger).where(schema.ledger.c.id == last["id"]))
    result = cli(["audit", "verify", "-f", "json"], expect=7).json
    assert result["intact"] is False and result["entries"] == last["id"] - 1
    assert any("removed" in problem for problem in result["problems"]), result


def test_removed_middle_entry_breaks_the_chain(nova, cli, journal):
    _, purge_id = _purge(cli, nova)
    rows = journal.ledger(purge_id)
    middle, following = rows[len(rows) // 2], rows[len(rows) // 2 + 1]
    with journal.engine.begin() as conn:
        conn.execute(sa.delete(schema.ledger).where(schema.ledger.c.id == middle["id"]))
    result = cli(["audit", "verify", "-f", "json"], expect=7).json
    assert any(p.startswith(f"entry {following['id']}: chain broken")
               for p in result["problems"]), result


def test_fresh_journal_database_is_created_by_the_first_purge(nova, cli, helpers, backend,
                                                               tmp_path):
    """A journal database with no tables at all (not the prepared copy the other tests use)."""
    fresh = helpers.new_journal(backend, tmp_path / "fresh")
    try:
        assert fresh.logbooks() == []
        env = {"NOVAPURGE_JOURNAL": fresh.url}
        result = cli(["purge", "--yes", nova.uuids["target"], "-f", "json"], env=env, expect=0)
        assert fresh.logbooks() == [result.json["purge_id"]]
        assert fresh.verify() == [] and fresh.ledger(result.json["purge_id"])
        cli(["audit", "verify"], env=env, expect=0)
    finally:
        fresh.dispose()
        if fresh.mysql_name:
            novadb.drop_mysql_database(helpers.SERVER, fresh.mysql_name)
