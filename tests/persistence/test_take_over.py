"""A purge interrupted on another machine: refused until the operator says --take-over."""

import json
import os
import subprocess
import sys

import sqlalchemy as sa

from novapurge.persistence import schema
from novapurge.sandbox.novadb import build_sandbox


def _cli(args, env):
    proc = subprocess.run([sys.executable, "-m", "novapurge", *args, "-f", "json"],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else None


def test_remote_holder_needs_take_over(tmp_path):
    cloud = build_sandbox(tmp_path)
    journal = f"sqlite:///{tmp_path / 'journal.sqlite'}"
    env = {"NOVAPURGE_DB": cloud["cell_url"], "NOVAPURGE_API_DB": cloud["api_url"],
           "NOVAPURGE_JOURNAL": journal, "NOVAPURGE_SANDBOX": str(tmp_path),
           "NOVAPURGE_FAULTS": "kill@SoftDeleteInstance:after-change"}
    vm = cloud["stuck"][0]
    code, _ = _cli(["purge", "--yes", vm], env)
    assert code == -9
    del env["NOVAPURGE_FAULTS"]
    engine = sa.create_engine(journal)
    with engine.begin() as conn:  # as if the killed run had been on another machine
        conn.execute(sa.update(schema.locks).values(machine="conductor-7.example", pid=4242))
        purge_id = conn.execute(sa.select(schema.locks.c.purge_id)).scalar()
    code, refused = _cli(["resume", purge_id], env)
    assert code == 3 and "--take-over" in refused["error"]
    code, done = _cli(["resume", "--take-over", purge_id], env)
    assert code == 0 and done["vms"][0]["result"] == "succeeded"
    with engine.connect() as conn:
        notes = conn.execute(sa.select(schema.ledger.c.outcome, schema.ledger.c.after)
                             .where(schema.ledger.c.outcome == "taken-over")).all()
        assert conn.execute(sa.select(schema.locks)).first() is None
    assert len(notes) == 1 and "conductor-7.example" in notes[0].after
    engine.dispose()
