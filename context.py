"""The drivers and ledger of this process, where flow factories find them.

The journal keeps only JSON (flow factory arguments, facts, results); live resources such as
database engines, SSH transports and API sessions belong to the process running the flow, which
installs them here before it builds or resumes any flow.
"""

import dataclasses

from novapurge.drivers.novadb import NovaDatabases
from novapurge.persistence.ledger import Ledger

_current = None


@dataclasses.dataclass
class PurgeContext:
    novadb: NovaDatabases
    ledger: Ledger
    hosts: object = None          # drivers.ssh.HostPool, or the sandbox's simulated hosts
    cloud: object = None          # drivers.cloud.CloudApi, or sandbox.cloud.SandboxCloud
    consoles: object = None       # drivers.memcache.ConsoleTokenStore (legacy consoleauth)
    instances_path: str = "/var/lib/nova/instances"


def install(context: PurgeContext) -> PurgeContext:
    global _current
    _current = context
    return context


def current() -> PurgeContext:
    if _current is None:
        raise RuntimeError("no purge context installed: build flows through novapurge.flows.run")
    return _current
