"""What runs in the lab: each service's argv, environment and health check, and the DB setup.

The APIs run under gunicorn through the `cloudlab_wsgi` shim (one worker, four threads, no
control socket); the other daemons are the services' own console scripts with `--config-file`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from cloudlab import config, provision

SHIM_DIR = Path(__file__).resolve().parent


@dataclasses.dataclass(frozen=True)
class Service:
    """One process of the lab. `url` is polled for APIs; `binary` is looked up in the service
    list of `api` ("compute" or "block-storage") for the others."""

    name: str
    argv: tuple
    env: dict
    url: str | None = None
    binary: str | None = None
    api: str | None = None


# name -> (port, WSGI module, env var naming the config dir or None for --config-file, path)
APIS = {
    "keystone": (5000, "keystone.wsgi.api", "OS_KEYSTONE_CONFIG_DIR", "/v3"),
    "placement-api": (8778, "placement.wsgi.api", "OS_PLACEMENT_CONFIG_DIR", "/"),
    "neutron-api": (9696, "neutron.wsgi.api", "OS_NEUTRON_CONFIG_DIR", "/"),
    "glance-api": (9292, "glance.wsgi.api", "OS_GLANCE_CONFIG_DIR", "/"),
    "cinder-api": (8776, "cinder.wsgi.api", None, "/"),
    "nova-api": (8774, "nova.wsgi.osapi_compute", "OS_NOVA_CONFIG_DIR", "/"),
}
DAEMONS = {  # name -> (config, API whose service list reports it)
    "cinder-scheduler": ("cinder/cinder.conf", "block-storage"),
    "cinder-volume": ("cinder/cinder.conf", "block-storage"),
    "nova-conductor": ("nova/nova.conf", "compute"),
    "nova-scheduler": ("nova/nova.conf", "compute"),
    "nova-compute": ("nova/nova.conf", "compute"),
}
PORTS = tuple(port for port, *_ in APIS.values())


def environment(venv: Path) -> dict:
    """This process's environment for the venv's commands, without OS_*, PYTHON* and venv
    variables (they would steer the services' own config lookup and imports)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OS_", "VIRTUAL_ENV", "PYTHON"))}
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
    return env


def service(name: str, venv: Path, rundir: Path) -> Service:
    """The Service `name` of a lab whose run dir is `rundir`."""
    etc, env = rundir / "etc", environment(venv)
    if name in APIS:
        port, module, dir_var, path = APIS[name]
        short = name.split("-")[0]
        env["CLOUDLAB_WSGI_MODULE"] = module
        if dir_var:
            env[dir_var] = str(etc / short)
        else:
            env["CLOUDLAB_WSGI_ARGV"] = json.dumps(["--config-file", str(etc / short /
                                                                         f"{short}.conf")])
        argv = (venv / "bin" / "gunicorn", "--no-control-socket", "--workers", "1",
                "--threads", "4", "--bind", f"127.0.0.1:{port}", "--timeout", "300",
                # longer than any client pause (openstacksdk polls every 2 s): with gunicorn's
                # 2 s an idle connection is closed just as a client reuses it (reset by peer)
                "--keep-alive", "75",
                "--graceful-timeout", "5", "--name", name, "--pythonpath", SHIM_DIR,
                "cloudlab_wsgi:application")
        return Service(name, argv, env, url=f"http://127.0.0.1:{port}{path}")
    conf, api = DAEMONS[name]
    return Service(name, (venv / "bin" / name, "--config-file", etc / conf), env,
                   binary=name, api=api)


def setup_env(venv: Path, password: str) -> dict:
    """The environment of the setup commands (the admin password stays out of argv)."""
    return {**environment(venv), "OS_BOOTSTRAP_PASSWORD": password}


def sync_chains(venv: Path, rundir: Path) -> dict:
    """Per service, the setup steps to run in order (the chains run in parallel): an argv, a
    list of argvs run at once, or a function called without arguments."""
    bin_, etc = venv / "bin", rundir / "etc"
    keystone = ("--config-file", etc / "keystone/keystone.conf")
    nova = (bin_ / "nova-manage", "--config-file", etc / "nova/nova.conf")
    cinder = ("--config-file", etc / "cinder/cinder.conf")
    neutron = ("--config-file", etc / "neutron/neutron.conf",
               "--config-file", etc / "neutron/plugins/ml2/ml2_conf.ini")
    identity = "http://127.0.0.1:5000/v3"
    return {
        "keystone": [
            # (the fernet and credential keys are written by config.write: two processes less)
            (bin_ / "keystone-manage", *keystone, "db_sync"),
            (bin_ / "keystone-manage", *keystone, "bootstrap", "--bootstrap-region-id",
             "RegionOne", "--bootstrap-admin-url", identity, "--bootstrap-internal-url", identity,
             "--bootstrap-public-url", identity),
        ],
        "placement": [(bin_ / "placement-manage", "--config-file",
                       etc / "placement/placement.conf", "db", "sync")],
        "neutron": [(bin_ / "neutron-db-manage", *neutron, "upgrade", "heads")],
        "glance": [(bin_ / "glance-manage", "--config-file", etc / "glance/glance-api.conf",
                    "db_sync")],
        "cinder": [(bin_ / "cinder-manage", *cinder, "db", "sync")],
        "nova": [
            # the three schemas at once (each sync is its own process; cell DBs need no API DB)
            [(*nova, "api_db", "sync"),
             (*nova, "db", "sync", "--local_cell"),
             (*nova, "--config-file", etc / "nova/nova-cell0.conf", "db", "sync",
              "--local_cell")],
            # what `cell_v2 map_cell0` and `cell_v2 create_cell --name cell1` insert
            provision.map_cells,
        ],
    }
