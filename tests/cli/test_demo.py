"""`novapurge demo`: the sandbox cloud, purged end to end, as a first-time user runs it."""

import sqlalchemy as sa

from novapurge.sandbox import novadb


def _env(tmp_path):
    config = tmp_path / "novapurge.toml"
    config.write_text("")
    # No NOVAPURGE_DB/JOURNAL: the demo needs nothing but a directory.
    return {"NOVAPURGE_CONFIG": str(config), "HOME": str(tmp_path / "home")}


def test_demo_purges_the_sandbox_and_leaves_neighbours_alone(tmp_path, helpers):
    directory = tmp_path / "demo"
    result = helpers.run_cli(["demo", "--dir", directory, "-f", "json"], _env(tmp_path),
                             expect=0, cwd=tmp_path)
    summary = result.json
    assert summary["directory"] == str(directory)
    assert summary["ledger_intact"] and summary["neighbours_untouched"]
    assert summary["refused_healthy"] and "looks healthy" in summary["refused_healthy"]
    assert len(summary["results"]) == 4
    assert set(summary["results"].values()) == {"succeeded"}
    assert summary["journal"] == f"sqlite:///{directory}/journal.sqlite"

    # The end state, read back from the files the demo left.
    cell = sa.create_engine(f"sqlite:///{directory}/cell1.sqlite")
    try:
        with cell.connect() as conn:
            states = dict(conn.execute(sa.text(
                "SELECT uuid, deleted = id AND vm_state = 'deleted' FROM instances")).all())
    finally:
        cell.dispose()
    assert {uuid for uuid, gone in states.items() if gone} == set(summary["results"])
    assert len(states) == 7  # three healthy instances stay live
    journal = helpers.new_journal("sqlite", directory)
    try:
        assert journal.logbooks() == [summary["purge_id"]]
        assert journal.verify() == []
        assert len(journal.ledger(summary["purge_id"])) == summary["ledger_entries"]
    finally:
        journal.dispose()
    status = helpers.run_cli(["status", summary["purge_id"], "-f", "json",
                              "--journal", summary["journal"]], _env(tmp_path), expect=0).json
    assert status["state"] == "SUCCESS" and len(status["vms"]) == 4


def test_demo_for_people(tmp_path, helpers):
    """The human-readable run: every numbered part is shown and it ends saying so."""
    result = helpers.run_cli(["demo", "--dir", tmp_path / "demo"], _env(tmp_path), expect=0,
                             cwd=tmp_path)
    text = result.stdout + result.stderr
    for part in ("1. plan", "2. a healthy instance is refused", "3. purge", "4. status",
                 "5. audit trail", "6. neighbours", "Demo complete"):
        assert part in text, part
    assert "untouched" in text and "intact" in text
    engine = sa.create_engine(f"sqlite:///{tmp_path}/demo/api.sqlite")
    try:
        mappings = novadb.snapshot(engine)["instance_mappings"]
    finally:
        engine.dispose()
    assert len(mappings) == 7
