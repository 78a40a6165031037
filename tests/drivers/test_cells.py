"""Cells v2: an instance is found through its mapping in any cell; templated and overridden URLs."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa

from novapurge.drivers.novadb import NovaDatabases, render_cell_url
from novapurge.errors import BadInput
from novapurge.sandbox.estate import populate_estate
from novapurge.sandbox.novadb import create_schema
from novapurge.sandbox.seed import NovaSeeder


def _sqlite(path):
    engine = sa.create_engine(f"sqlite:///{path}")
    return engine


@pytest.fixture
def two_cells(tmp_path, monkeypatch):
    """An API DB with cell1 and cell2; one stuck instance in each, one unmapped in cell2; the
    sandbox hosts and cloud that hold their other traces (NOVAPURGE_SANDBOX for every CLI run)."""
    api = _sqlite(tmp_path / "api.sqlite")
    create_schema(api, "api")
    cells = {}
    for name in ("cell1", "cell2"):
        engine = _sqlite(tmp_path / f"{name}.sqlite")
        create_schema(engine, "main")
        seeder = NovaSeeder(engine, api, cell_name=name, seed=name,
                            cell_url=f"sqlite:///{tmp_path / name}.sqlite")
        stuck = seeder.add_instance(vm_state="error", fault=True, host=f"{name}-compute")
        cells[name] = {"engine": engine, "seeder": seeder, "host": f"{name}-compute",
                       "stuck": stuck["uuid"], "infos": [stuck]}
    unmapped = cells["cell2"]["seeder"].add_instance(vm_state="error", mapped=False,
                                                     host="cell2-compute")
    cells["cell2"]["unmapped"] = unmapped["uuid"]
    cells["cell2"]["infos"].append(unmapped)
    for cell in cells.values():
        populate_estate(tmp_path / "sandbox", cell["engine"], api, cell["infos"])
    monkeypatch.setenv("NOVAPURGE_SANDBOX", str(tmp_path / "sandbox"))
    yield {"api_url": f"sqlite:///{tmp_path / 'api.sqlite'}", "cells": cells, "dir": tmp_path}
    for cell in cells.values():
        cell["engine"].dispose()
    api.dispose()


def _instance(engine, uuid):
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT deleted, vm_state FROM instances WHERE uuid=:u"),
                            {"u": uuid}).one()


def _cli(args, env):
    proc = subprocess.run([sys.executable, "-m", "novapurge", *args, "-f", "json"],
                          env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else None, proc.stderr


def test_purge_finds_each_instance_in_its_own_cell(two_cells, tmp_path):
    env = {"NOVAPURGE_API_DB": two_cells["api_url"],
           "NOVAPURGE_JOURNAL": f"sqlite:///{tmp_path / 'journal.sqlite'}"}
    cells = two_cells["cells"]
    targets = [cells["cell1"]["stuck"], cells["cell2"]["stuck"], cells["cell2"]["unmapped"]]
    code, out, err = _cli(["purge", "--yes", *targets], env)
    assert code == 0, err
    assert {vm["result"] for vm in out["vms"]} == {"succeeded"}
    for cell, uuid in (("cell1", targets[0]), ("cell2", targets[1]), ("cell2", targets[2])):
        row = _instance(cells[cell]["engine"], uuid)
        assert row.deleted != 0 and row.vm_state == "deleted"
    # nothing leaked into the other cell
    assert _instance(cells["cell2"]["engine"], cells["cell2"]["seeder"].add_instance(
        vm_state="error", host="cell2-compute")["uuid"]).deleted == 0


def test_rollback_needs_the_api_db_the_purge_used(two_cells, tmp_path):
    journal = f"sqlite:///{tmp_path / 'journal.sqlite'}"
    uuid = two_cells["cells"]["cell2"]["stuck"]
    # nothing irreversible (host trash, volumes, ports) may run, or rollback is refused anyway
    code, out, err = _cli(["purge", "--yes", "--skip", "host,volumes,ports", uuid],
                          {"NOVAPURGE_API_DB": two_cells["api_url"], "NOVAPURGE_JOURNAL": journal})
    assert code == 0, err
    code, refused, err = _cli(["rollback", "--yes", out["purge_id"]],
                              {"NOVAPURGE_JOURNAL": journal})
    assert code == 2 and "--api-db" in refused["error"] and refused["exit_code"] == 2
    assert _instance(two_cells["cells"]["cell2"]["engine"], uuid).deleted != 0
    code, _out, err = _cli(["rollback", "--yes", out["purge_id"]],
                           {"NOVAPURGE_JOURNAL": journal, "NOVAPURGE_API_DB": two_cells["api_url"]})
    assert code == 0, err
    assert _instance(two_cells["cells"]["cell2"]["engine"], uuid).deleted == 0


def test_cell_override_from_config_wins_over_the_mapping(two_cells, tmp_path):
    moved = tmp_path / "moved-cell2.sqlite"
    (two_cells["dir"] / "cell2.sqlite").rename(moved)  # the mapping now names a missing file
    config = tmp_path / "novapurge.toml"
    config.write_text(f'[api_database]\nconnection = "{two_cells["api_url"]}"\n'
                      f'[cells]\ncell2 = "sqlite:///{moved}"\n'
                      f'[journal]\nurl = "sqlite:///{tmp_path / "journal.sqlite"}"\n')
    uuid = two_cells["cells"]["cell2"]["stuck"]
    code, out, err = _cli(["purge", "--yes", "--config", str(config), uuid], {})
    assert code == 0, (err, out)
    with sa.create_engine(f"sqlite:///{moved}").connect() as conn:
        assert conn.execute(sa.text("SELECT deleted FROM instances WHERE uuid=:u"),
                            {"u": uuid}).scalar() != 0


def test_templated_cell_url_is_filled_from_the_database_section():
    url = render_cell_url("{scheme}://{username}:{password}@{hostname}:{port}/nova_cell2",
                          "mysql+pymysql://nova:pw@db.example:3307/nova")
    assert url == "mysql+pymysql://nova:pw@db.example:3307/nova_cell2"
    with pytest.raises(BadInput, match="template"):
        render_cell_url("{scheme}://{hostname}/nova_cell2", None)


def test_unreachable_cell_is_bad_input_without_password():
    dbs = NovaDatabases(cell_url="mysql+pymysql://nova:topsecret@127.0.0.1:1/nova")
    with pytest.raises(BadInput) as error:
        dbs.locate("6c1e7d0a-2b9f-4c38-9a51-0d3f7e8b1c22")
    assert "topsecret" not in str(error.value) and "127.0.0.1" in str(error.value)


def test_sigterm_suspends_and_resume_finishes(two_cells, tmp_path):
    """SIGTERM stops after the step under way: the purge is SUSPENDED, `resume` completes it."""
    journal = f"sqlite:///{tmp_path / 'journal.sqlite'}"
    env = {**os.environ, "NOVAPURGE_API_DB": two_cells["api_url"], "NOVAPURGE_JOURNAL": journal,
           # hold the purge inside SoftDeleteInstance until the test has sent SIGTERM
           "NOVAPURGE_TEST_PAUSE": str(tmp_path / "paused")}
    uuid = two_cells["cells"]["cell1"]["stuck"]
    proc = subprocess.Popen([sys.executable, "-c", PAUSING_PURGE, uuid], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (tmp_path / "paused").exists():
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    (tmp_path / "go").touch()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 5, err
    purge_id = json.loads(out)["purge_id"]
    code, status, err = _cli(["status", purge_id], {"NOVAPURGE_JOURNAL": journal})
    assert status["vms"][0]["state"] == "SUSPENDED"
    assert _instance(two_cells["cells"]["cell1"]["engine"], uuid).deleted != 0  # step finished
    code, out, err = _cli(["resume", purge_id], {"NOVAPURGE_JOURNAL": journal,
                                                 "NOVAPURGE_API_DB": two_cells["api_url"]})
    assert code == 0, err
    code, status, err = _cli(["status", purge_id], {"NOVAPURGE_JOURNAL": journal})
    assert status["vms"][0]["state"] == "SUCCESS"


# A purge whose SoftDeleteInstance waits (after its change) until the test says go: the test
# process stands in for a slow database, the SIGTERM handling is the real CLI's.
PAUSING_PURGE = """
import functools, os, pathlib, sys, time
from novapurge.tasks import novadb
from novapurge.cli import main

flag = pathlib.Path(os.environ["NOVAPURGE_TEST_PAUSE"])
original = novadb.SoftDeleteInstance.execute

@functools.wraps(original)
def paused(self, *args, **kwargs):
    result = original(self, *args, **kwargs)
    flag.touch()
    while not (flag.parent / "go").exists():
        time.sleep(0.05)
    return result

novadb.SoftDeleteInstance.execute = paused
sys.argv = ["novapurge", "purge", "--yes", "-f", "json", sys.argv[1]]
main()
"""
