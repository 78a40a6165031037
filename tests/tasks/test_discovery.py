"""Discovery of an instance's iSCSI paths: those a neighbour on the host also uses are kept."""

import json

import sqlalchemy as sa

from novapurge import context
from novapurge.drivers.novadb import NovaDatabases
from novapurge.persistence.ledger import Actor, Ledger
from novapurge.sandbox.seed import NovaSeeder
from novapurge.tasks.discovery import discover_facts
from novapurge.tasks.hostfacts import iscsi_targets, target_key


def _neighbour_with_target_of(nova, vm_uuid, share: bool) -> str:
    """A live instance on the target's host with one iSCSI volume: the target's path when
    `share`, a path of its own otherwise."""
    seeder = NovaSeeder(nova.cell, nova.api, cell_url=nova.cell_url, seed=99)
    neighbour = seeder.add_instance(host="compute-1", volumes=("iscsi",))["uuid"]
    if share:
        mine, = [r for r in nova.rows("cell", "block_device_mapping", instance_uuid=vm_uuid)
                 if r["connection_info"]]
        with nova.cell.begin() as conn:
            conn.execute(sa.text("UPDATE block_device_mapping SET connection_info = :info "
                                 "WHERE instance_uuid = :uuid"),
                         {"info": mine["connection_info"], "uuid": neighbour})
    return neighbour


def _facts(nova, journal, vm_uuid) -> dict:
    novadb = NovaDatabases(nova.cell_url, nova.api_url)
    previous = context._current
    try:
        drivers = context.install(context.PurgeContext(
            novadb=novadb, ledger=Ledger(journal.engine, Actor("tests"))))
        return discover_facts(drivers, vm_uuid)
    finally:
        context._current = previous
        novadb.dispose()


def _own_paths(nova, vm_uuid) -> list:
    rows = nova.rows("cell", "block_device_mapping", instance_uuid=vm_uuid, deleted=0)
    return [target_key(t) for t in iscsi_targets(
        [dict(r, connection_info=json.loads(r["connection_info"] or "null")) for r in rows])]


def test_a_path_a_neighbour_uses_is_kept(nova, journal):
    vm = nova.uuids["target"]
    paths = _own_paths(nova, vm)
    assert paths
    _neighbour_with_target_of(nova, vm, share=True)
    host = _facts(nova, journal, vm)["host"]
    assert host["iscsi_shared"] == paths
    assert host["iscsi"] == []


def test_paths_of_its_own_are_disconnected(nova, journal):
    vm = nova.uuids["target"]
    _neighbour_with_target_of(nova, vm, share=False)
    host = _facts(nova, journal, vm)["host"]
    assert [target_key(t) for t in host["iscsi"]] == _own_paths(nova, vm)
    assert host["iscsi_shared"] == []
