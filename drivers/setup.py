"""The drivers a run needs, built from the settings: host runners, the cloud API, memcached.

A sandbox (`--sandbox DIR`, what `novapurge demo` makes) swaps the hosts and the cloud for the
simulated ones kept in that directory; the Nova databases come from the settings either way.
"""

import dataclasses
import pathlib

from novapurge.errors import BadInput

_SSH_FIELDS = ("known_hosts", "accept_new", "max_channels", "connect_timeout", "command_timeout")
_HOST_FIELDS = ("address", "port", "user", "key_file", "runner")


def host_pool(settings, on_new_key=None, accept_new=False):
    """One runner per compute host, from `[hosts.NAME]` and `[ssh]` (or the sandbox's hosts)."""
    if settings.sandbox:
        from novapurge.sandbox.hosts import SimHosts
        return SimHosts(pathlib.Path(settings.sandbox) / "hosts")
    from novapurge.drivers import ssh
    unknown = set(settings.ssh) - set(_SSH_FIELDS)
    if unknown:
        raise BadInput(f"[ssh]: unknown setting(s) {', '.join(sorted(unknown))}")
    options = ssh.SshOptions(**settings.ssh)
    if accept_new:
        options = dataclasses.replace(options, accept_new=True)
    hosts = {}
    for name, values in settings.hosts.items():
        unknown = set(values) - set(_HOST_FIELDS)
        if unknown:
            raise BadInput(f"[hosts.{name}]: unknown setting(s) {', '.join(sorted(unknown))}")
        hosts[name] = ssh.HostAddress(name, **values)
    return ssh.HostPool(hosts, options, on_new_key)


def cloud_api(settings):
    """The OpenStack APIs: the sandbox's stand-in, a clouds.yaml cloud, or None (not configured)."""
    if settings.sandbox:
        from novapurge.sandbox.cloud import SandboxCloud
        return SandboxCloud(pathlib.Path(settings.sandbox) / "cloud.json")
    if not settings.os_cloud:
        return None
    from novapurge.drivers.cloud import CloudApi
    return CloudApi.from_config(settings.os_cloud, settings.service_cloud)


def console_store(settings):
    """Legacy console tokens in memcached, when memcached servers are configured."""
    if not settings.memcached_servers:
        return None
    from novapurge.drivers.memcache import ConsoleTokenStore
    return ConsoleTokenStore(list(settings.memcached_servers))
