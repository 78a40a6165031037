"""A fleet of stuck instances over several simulated hosts, seeded into a copy of the test cloud.

`fleet(count, hosts, volumes=())` adds `count` stuck (ERROR, with a fault) instances, spread
round-robin over `compute-1..hosts`, to the `nova` cloud (databases, simulated hosts and cloud);
`volumes` names the indexes that also get an iSCSI volume. Seeding is deterministic: a second
copy of the template seeded the same way has the same instances (uuids, ids, ports), which is
what lets a test compare a VM purged in a batch with the same VM purged alone.
"""

import json
import re

import pytest

from novapurge.sandbox.cloud import SandboxCloud
from novapurge.sandbox.estate import populate_estate
from novapurge.sandbox.hosts import SimHosts
from novapurge.sandbox.seed import NovaSeeder

FLEET_SEED = 4


def seed_fleet(cloud, now, count: int, hosts: int, volumes=()) -> list:
    seeder = NovaSeeder(cloud.cell, cloud.api, cell_url=cloud.cell_url, seed=FLEET_SEED, now=now)
    infos = [seeder.add_instance(name=f"fleet-{i:02d}", vm_state="error", fault=True,
                                 host=f"compute-{i % hosts + 1}", vifs=("ovs-hybrid",),
                                 volumes=("iscsi",) if i in volumes else (), legacy_quota=True)
             for i in range(count)]
    populate_estate(cloud.sandbox, cloud.cell, cloud.api, infos)
    return infos


@pytest.fixture
def fleet(nova, helpers):
    def make(count, hosts=3, volumes=()):
        return seed_fleet(nova, helpers.SEED_NOW, count, hosts, volumes)
    return make


def _marks(info) -> set:
    return {info["uuid"], info["instance_name"], *(p[:11] for p in info["ports"]),
            *info["volumes"]}


def _mentioning(tree: dict, marks: set) -> dict:
    return {section: {k: v for k, v in entries.items()
                      if any(m in k or m in json.dumps(v, default=str) for m in marks)}
            for section, entries in tree.items() if isinstance(entries, dict)}


_PURGE_IDS = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def vm_end_state(cloud, info, purge_id, helpers) -> dict:
    """Everything that mentions one instance: its DB rows (purge timestamps as <now>), and the
    entries of its host and of the cloud (the purge id in trash paths as <purge>)."""
    rows = helpers.normalize({"db": cloud.referencing(info["uuid"])},
                             {cloud.cell_url: "<cell-url>"})["db"]
    hosts = SimHosts(cloud.sandbox / "hosts")
    estate = {"host": _mentioning(hosts.host(info["host"]).snapshot(), _marks(info)),
              "cloud": _mentioning(SandboxCloud(cloud.sandbox / "cloud.json").snapshot(),
                                   _marks(info))}
    text = json.dumps(estate, sort_keys=True, default=str)
    if purge_id:
        text = text.replace(purge_id, "<purge>")
    return {"rows": rows, "estate": json.loads(text)}


def vm_ledger(journal, purge_id, vm_uuid) -> dict:
    """A VM's ledger: {(step, resource): [(phase, outcome), ...] in the order written} (steps
    of one VM that run side by side may interleave; each resource's history may not)."""
    entries = {}
    for r in journal.ledger(purge_id):
        if r["vm_uuid"] == vm_uuid:
            key = (r["atom"].split(":")[0], r["resource"].replace(purge_id, "<purge>"))
            entries.setdefault(key, []).append((r["phase"], r["outcome"]))
    return entries


@pytest.fixture(scope="session")
def batch_helpers():
    import types
    return types.SimpleNamespace(seed_fleet=seed_fleet, vm_end_state=vm_end_state,
                                 vm_ledger=vm_ledger)
