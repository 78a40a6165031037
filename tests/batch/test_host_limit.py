"""The per-host limit: commands in flight on one compute host never exceed `--host-limit`.

Measured on the simulated host itself (every command it acts out is counted while it runs, with
100 ms of latency each), independently of the runner's own `peak_channels`; one connection per
host for the whole batch.
"""

import threading

import pytest

from novapurge.drivers.novadb import NovaDatabases
from novapurge.drivers.ssh import SshOptions
from novapurge.flows.run import Purger
from novapurge.persistence.journal import Journal
from novapurge.persistence.ledger import Actor
from novapurge.sandbox.cloud import SandboxCloud
from novapurge.sandbox.hosts import SimHost, SimHosts

LATENCY = 0.05


@pytest.fixture
def backend():
    return "sqlite"


class CountingHost(SimHost):
    """A simulated host that counts the commands it is acting out at once."""

    def __init__(self, directory, name, meter):
        super().__init__(directory, name)
        self.meter = meter

    def execute(self, argv, stdin):
        with self.meter["lock"]:
            self.meter["now"] += 1
            self.meter["peak"] = max(self.meter["peak"], self.meter["now"])
            self.meter["commands"] += 1
        try:
            return super().execute(argv, stdin)
        finally:
            with self.meter["lock"]:
                self.meter["now"] -= 1


class CountingHosts(SimHosts):
    def __init__(self, directory, options):
        super().__init__(directory, options)
        self.meters = {}

    def host(self, name):
        meter = self.meters.setdefault(name, {"lock": threading.Lock(), "now": 0, "peak": 0,
                                              "commands": 0})
        return CountingHost(self.directory, name, meter)


def _purger(nova, journal_url, host_limit):
    hosts = CountingHosts(nova.sandbox / "hosts", SshOptions(max_channels=host_limit))
    journal = Journal(journal_url, Actor("tests"))
    purger = Purger(journal, NovaDatabases(nova.cell_url, nova.api_url), hosts=hosts,
                    cloud=SandboxCloud(nova.sandbox / "cloud.json"))
    return purger, hosts


@pytest.mark.parametrize("limit", [1, 3])
def test_commands_in_flight_per_host_stay_within_the_limit(nova, fleet, journal_url, limit):
    infos = fleet(6, hosts=2)   # three instances on each of compute-1 and compute-2
    sims = SimHosts(nova.sandbox / "hosts")
    for name in ("compute-1", "compute-2"):
        sims.host(name).set_latency(LATENCY)
    purger, hosts = _purger(nova, journal_url, limit)
    try:
        purge_id, outcomes = purger.purge([i["uuid"] for i in infos], parallel=6)
        assert [o.result for o in outcomes] == ["succeeded"] * 6
        for name in ("compute-1", "compute-2"):
            meter, runner = hosts.meters[name], hosts.runner(name)
            assert meter["peak"] == limit, (name, meter)   # reached, never passed
            assert runner.peak_channels == limit
            assert meter["commands"] > 3 * limit
        assert hosts.connections_opened() == {"compute-1": 1, "compute-2": 1}
    finally:
        purger.journal.close()
        purger.novadb.dispose()
