"""A real OpenStack control plane on loopback for the tests: Keystone, Placement, Neutron, Glance,
Cinder and Nova from PyPI (pinned by cloud-constraints.txt), Nova booting on its fake hypervisor.

`CloudLab().start()` installs the services' venv when missing (see cloudlab/venv.py), writes the
configs under one run dir, recreates the `cl_*` databases on the machine's MariaDB, syncs them in
parallel, starts every service and provisions a network, a flavor and an image (one chain per
service, about a minute). `stop()` kills every process it started, RabbitMQ included when the lab
started it; a failed `start()` does the same. With NOVAPURGE_CLOUDLAB_KEEP=1 `stop()` leaves the
lab running and the next `start()` reuses it while it is healthy and its configs are unchanged
(developer iteration). The ports are fixed, so one lab runs per machine: a second session waits
for the first one's `stop()` (LOCK_PATH).

The parts live in the folder beside this module (configs, processes, services, provisioning).
"""

from __future__ import annotations

import atexit
import concurrent.futures
import datetime as dt
import fcntl
import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import openstack
import openstack.config
import sqlalchemy as sa
import yaml

# this module is also the package of the folder beside it
__path__ = [str(Path(__file__).resolve().with_name("cloudlab"))]

from cloudlab import config, procs, provision, rabbit, services  # noqa: E402
from cloudlab import venv as lab_venv  # noqa: E402
from cloudlab.procs import LabError  # noqa: E402

DEFAULT_RUNDIR = Path("/tmp/novapurge-cloudlab")
LOCK_PATH = Path("/tmp/novapurge-cloudlab.lock")   # held by the session whose lab runs
KEEP_ENV = "NOVAPURGE_CLOUDLAB_KEEP"
COMPUTE_HOST = "cloudlab"
CINDER_VOLUME_HOST = f"{COMPUTE_HOST}@fake"
AFTER_SYNC = {  # setup chain -> API started once its databases are synced
    "keystone": "keystone",
    "placement": "placement-api",
    "neutron": "neutron-api",
    "glance": "glance-api",
    "cinder": "cinder-api",
    "nova": "nova-api",
}
# chain -> daemons started once the catalog exists (they authenticate at start) and RabbitMQ
# answers; nova-compute also waits for placement (it registers its provider at start)
AFTER_CATALOG = {"cinder": ("cinder-scheduler", "cinder-volume"),
                 "nova": ("nova-conductor", "nova-scheduler", "nova-compute")}
RABBIT, EPMD = "rabbitmq", "epmd"      # the lab's own broker, when it runs one
API_TIMEOUT, DAEMON_TIMEOUT, WAIT_TIMEOUT = 180, 180, 120

__all__ = ["CloudLab", "LabError"]


def keep_running() -> bool:
    return os.environ.get(KEEP_ENV) == "1"


class CloudLab:
    """The lab in `rundir` (default /tmp/novapurge-cloudlab): start, stop, and what tests need."""

    admin_cloud = "admin"
    compute_host = COMPUTE_HOST
    nova_cell_url = config.db_url("nova_cell1")
    nova_api_url = config.db_url("nova_api")

    def __init__(self, rundir: Path | None = None):
        self.rundir = Path(rundir or DEFAULT_RUNDIR)
        self.clouds_yaml = self.rundir / "clouds.yaml"
        self.nova_conf = self.rundir / "etc" / "nova" / "nova.conf"
        self.logs = self.rundir / "logs"
        self.venv = lab_venv.venv_dir()
        self.network_id = self.flavor_id = self.image_id = None
        self.start_seconds = None      # how long the last start() took
        self._state: dict | None = None
        self._popens: dict = {}
        self._conns: dict = {}
        self._engines: dict = {}
        self._lock = threading.RLock()
        self._ready: dict = {}
        self._failed = threading.Event()
        self._epmd_before = None
        self._lock_file = None
        self._setup = procs.Running()   # setup commands (killed when the start fails)

    # ---- lifecycle ------------------------------------------------------------------------------
    def start(self) -> CloudLab:
        """Bring the lab up (or, with KEEP, reuse a healthy running one); returns self."""
        if self._state is not None:
            return self
        started = time.monotonic()
        self._take_machine_lock()
        self.venv = lab_venv.ensure()
        if not (keep_running() and self._reuse()):
            self._stop_recorded()
            try:
                self._fresh_start()
            except BaseException:
                self._kill_all()
                self._release_machine_lock()
                raise
        self.start_seconds = round(time.monotonic() - started, 1)
        self._note(f"lab ready in {self.start_seconds} s")
        atexit.unregister(self.stop)
        atexit.register(self.stop)
        return self

    def stop(self) -> None:
        """Kill every process of the lab (TERM, KILL after 5 s); idempotent. With KEEP set,
        leave it running for the next session instead."""
        self._close_connections()
        for engine in self._engines.values():
            engine.dispose()
        self._engines.clear()
        if self._state is None or keep_running():
            self._state = None
            self._release_machine_lock()
            return
        self._kill_all()
        self._release_machine_lock()

    def _take_machine_lock(self) -> None:
        """One lab per machine (its ports are fixed): a second session waits for the first to
        stop its lab instead of killing it. The kernel drops the lock of a dead process."""
        if self._lock_file is not None:
            return
        self._lock_file = open(LOCK_PATH, "a+")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.seek(0)
            holder = self._lock_file.read().strip() or "another process"
            print(f"cloudlab: waiting for the lab of {holder} to stop ({LOCK_PATH})",
                  file=sys.stderr, flush=True)
            fcntl.flock(self._lock_file, fcntl.LOCK_EX)
        self._lock_file.seek(0)
        self._lock_file.truncate()
        self._lock_file.write(f"pid {os.getpid()}\n")
        self._lock_file.flush()

    def _release_machine_lock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()          # closing the file releases the flock
            self._lock_file = None

    def _close_connections(self) -> None:
        with self._lock:
            for conn in self._conns.values():
                conn.close()
            self._conns.clear()

    def _kill_all(self) -> None:
        if self._state is None:
            self._stop_recorded()
            return
        _stop_in_order(self._state["procs"])
        self._reap()
        self._state = None
        (self.rundir / "state.json").unlink(missing_ok=True)

    def _stop_recorded(self) -> None:
        """Kill the processes an earlier lab in this run dir left running."""
        state = self._read_state()
        if state:
            _stop_in_order(state.get("procs", {}))
        (self.rundir / "state.json").unlink(missing_ok=True)

    def _reuse(self) -> bool:
        state = self._read_state()
        if not state or state.get("venv") != str(self.venv) or not state.get("ids") or \
                state.get("digest") != _lab_digest():
            return False
        wanted = {*services.APIS, *services.DAEMONS}
        if set(state["procs"]) - {RABBIT, EPMD} != wanted or not all(
                map(procs.is_running, state["procs"].values())) or not rabbit.listening():
            return False
        self._state = state
        try:
            for name in services.APIS:
                self._wait_healthy(name, timeout=5)
            self._wait_service_state("nova-compute", "up", timeout=15)
        except (LabError, openstack.exceptions.SDKException):
            self._state = None
            return False
        self._set_ids(state["ids"])
        self._note("reusing the running lab")
        return True

    def _fresh_start(self) -> None:
        """Everything in parallel chains, one per service: DB sync, API, then (once Keystone
        has the catalog) its daemons and resources. Any failure stops the lab's processes at
        once, so the other chains end instead of waiting out their timeouts."""
        deadline = time.monotonic() + 10     # the processes just stopped may still hold them
        while (busy := [port for port in services.PORTS if procs.port_open(port)]) and \
                time.monotonic() < deadline:
            time.sleep(0.2)
        if busy:
            raise LabError(f"ports {busy} on 127.0.0.1 are taken (another lab, from another run "
                           "dir?): stop it first")
        shutil.rmtree(self.rundir, ignore_errors=True)
        self.logs.mkdir(parents=True)
        password = secrets.token_urlsafe(18)
        self._state = {"venv": str(self.venv), "digest": _lab_digest(), "password": password,
                       "procs": {}, "ids": {}}
        self._save_state()
        self._start_rabbit()
        config.write(self.rundir, self.venv, password, COMPUTE_HOST)
        self._write_clouds_yaml(password)
        self._timed("databases recreated", provision.recreate_databases)
        env = services.setup_env(self.venv, password)
        chains = services.sync_chains(self.venv, self.rundir)
        self._ready = {name: threading.Event() for name in [*chains, "catalog"]}
        self._setup = procs.Running()
        self._failed = threading.Event()
        ids = {}
        with concurrent.futures.ThreadPoolExecutor(len(chains)) as pool:
            jobs = [pool.submit(self._bring_up, name, commands, env, password, ids)
                    for name, commands in chains.items()]
            try:
                for job in concurrent.futures.as_completed(jobs):
                    job.result()
            except BaseException:
                self._failed.set()
                self._setup.cancel()             # the other chains' setup commands
                _stop_in_order(self._state["procs"])
                raise
        self._set_ids(ids)
        self._state["ids"] = ids
        self._save_state()

    def _bring_up(self, chain: str, commands: list, env: dict, password: str,
                  ids: dict) -> None:
        """One service's chain: sync its DBs, start its API, then what needs the catalog."""
        log = self.logs / f"setup-{chain}.log"
        for step in commands:
            if callable(step):
                self._timed(f"{chain}: {step.__name__}", step)
                continue
            group = step if isinstance(step, list) else [step]
            with concurrent.futures.ThreadPoolExecutor(len(group)) as pool:
                for job in [pool.submit(self._timed, f"{chain}: {_label(argv)}", procs.run,
                                        list(argv), env, log, 600, self._setup)
                            for argv in group]:
                    job.result()
        api = AFTER_SYNC[chain]
        self._spawn(api)
        self._timed(f"{api} answers", self._wait_healthy, api)
        if chain == "keystone":
            self._timed("catalog created", provision.create_catalog, self.connection(),
                        password)
            self._close_connections()        # their tokens hold the catalog from before
            self._ready["catalog"].set()
        self._ready[chain].set()
        self._wait_ready("catalog")
        conn = self.connection()
        if chain == "neutron":
            ids["network_id"] = provision.create_network(conn)
        elif chain == "glance":
            ids["image_id"] = provision.create_image(conn)
        elif chain == "nova":
            ids["flavor_id"] = provision.create_flavor(conn)
        daemons = AFTER_CATALOG.get(chain, ())
        if daemons:
            self._timed("RabbitMQ answers", self._wait_rabbit)
        for name in daemons:
            if name == "nova-compute":
                self._wait_ready("placement")
            self._spawn(name)
        for name in daemons:
            self._timed(f"{name} up", self._wait_healthy, name)
        if chain == "nova":
            self._timed("compute host mapped", self._discover_compute)
        elif chain == "cinder":
            self._timed("volume backend scheduled", self._wait_backend_pools)

    def _wait_ready(self, what: str) -> None:
        """Wait for another chain's milestone; LabError as soon as any chain failed."""
        while not self._ready[what].wait(0.2):
            if self._failed.is_set():
                raise LabError(f"gave up waiting for {what}: another part of the lab failed")

    def _start_rabbit(self) -> None:
        """Run the lab's own RabbitMQ unless a broker already listens on 5672 (then that one
        is used and left alone). Not waited for here: the DB syncs need no bus."""
        if rabbit.listening():
            self._note("using the RabbitMQ already listening on 5672")
            return
        self._epmd_before = rabbit.epmd_pid()
        argv, env = rabbit.command(self.rundir, services.environment(self.venv))
        log = self.logs / "rabbitmq.log"
        popen, record = procs.spawn(argv, env, log, self.rundir)
        with self._lock:
            self._popens[record["pid"]] = popen
            self._state["procs"][RABBIT] = record
        self._save_state()

    def _wait_rabbit(self) -> None:
        record, deadline = self._state["procs"].get(RABBIT), time.monotonic() + DAEMON_TIMEOUT
        while not rabbit.listening():
            if record and not procs.is_running(record):
                log = self.logs / "rabbitmq.log"
                raise LabError(f"RabbitMQ exited; {log}:\n{procs.tail(log)}")
            if time.monotonic() > deadline or self._failed.is_set():
                raise LabError("RabbitMQ does not listen on 127.0.0.1:5672")
            time.sleep(0.2)
        with self._lock:
            if record and EPMD not in self._state["procs"] and self._epmd_before is None:
                pid = rabbit.epmd_pid()          # the epmd our broker started: ours to stop
                if pid is not None:
                    self._state["procs"][EPMD] = {"pid": pid, "start": procs.start_time(pid)}
        self._save_state()

    def _discover_compute(self) -> None:
        """Wait until the compute host is mapped into cell1: the scheduler's periodic
        discovery (every 2 s) does it once the node is listed; `discover_hosts` if it lags."""
        deadline, nudge = time.monotonic() + WAIT_TIMEOUT, None
        query = "SELECT host FROM host_mappings WHERE host = :host"
        while not self.sql("nova_api", query, {"host": COMPUTE_HOST}):
            if time.monotonic() > deadline:
                raise LabError("the compute host was never mapped to cell1; see "
                               f"{self.logs / 'nova-scheduler.log'}")
            if nudge is None and list(self.connection().compute.hypervisors()):
                nudge = time.monotonic() + 10
            elif nudge is not None and time.monotonic() > nudge:
                result = self.nova_manage("cell_v2", "discover_hosts", "--verbose")
                if result.returncode:
                    raise LabError(f"nova-manage cell_v2 discover_hosts failed: {result.stderr}")
                nudge = float("inf")
            time.sleep(0.5)

    def _wait_backend_pools(self) -> None:
        """Wait until cinder-scheduler knows the volume backend: until then every volume
        create fails with NoValidBackend (the scheduler asks for capabilities once, at its start,
        and cinder-volume publishes them every `periodic_interval`)."""
        deadline = time.monotonic() + WAIT_TIMEOUT
        while not list(self.connection().block_storage.backend_pools()):
            if time.monotonic() > deadline:
                raise LabError("cinder-scheduler never learnt the volume backend; see "
                               f"{self.logs / 'cinder-scheduler.log'}")
            time.sleep(0.5)

    # ---- services -------------------------------------------------------------------------------
    def stop_service(self, name: str) -> None:
        """Stop one service of the lab (its whole process group)."""
        record = self._known(name)["procs"].pop(name, None)
        if record:
            procs.stop({name: record})
            self._reap()
            self._save_state()

    def start_service(self, name: str) -> None:
        """Start one service (if it is not running) and wait until it is healthy: its API
        answers, or its service list says it is up and has reported since it started."""
        record = self._known(name)["procs"].get(name)
        if record is None or not procs.is_running(record):
            self._spawn(name)
        self._wait_healthy(name)
        if name in ("cinder-scheduler", "cinder-volume"):
            self._wait_backend_pools()

    def _known(self, name: str) -> dict:
        """The lab's state, once `name` is checked to be one of its services."""
        if self._state is None:
            raise LabError("the lab is not started")
        if name not in services.APIS and name not in services.DAEMONS:
            raise LabError(f"no service {name!r}; the lab runs {sorted(services.APIS)} and "
                           f"{sorted(services.DAEMONS)}")
        return self._state

    def wait_compute_down(self, timeout: float = WAIT_TIMEOUT) -> None:
        self._wait_service_state("nova-compute", "down", timeout)

    def wait_compute_up(self, timeout: float = WAIT_TIMEOUT) -> None:
        self._wait_service_state("nova-compute", "up", timeout)

    def _spawn(self, name: str) -> None:
        if self._failed.is_set():
            raise LabError(f"not starting {name}: another part of the lab failed")
        service = services.service(name, self.venv, self.rundir)
        log = self.logs / f"{name}.log"
        popen, record = procs.spawn(list(service.argv), service.env, log, self.rundir)
        record["since"] = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None).isoformat()
        with self._lock:
            self._popens[record["pid"]] = popen
            self._state["procs"][name] = record
        self._save_state()
        if not record["start"]:
            raise LabError(f"{name} exited at once; {log}:\n{procs.tail(log)}")

    def _reap(self) -> None:
        for pid, popen in list(self._popens.items()):
            if popen.poll() is not None:
                del self._popens[pid]

    def _wait_healthy(self, name: str, timeout: float | None = None) -> None:
        service = services.service(name, self.venv, self.rundir)
        record, log = self._state["procs"][name], self.logs / f"{name}.log"
        if service.url:
            procs.wait_http(service.url, record, log, timeout or API_TIMEOUT)
        else:
            since = dt.datetime.fromisoformat(record["since"]) - dt.timedelta(seconds=1)
            self._wait_service_state(name, "up", timeout or DAEMON_TIMEOUT, since=since)

    def _service_entry(self, name: str):
        conn = self.connection()
        if services.DAEMONS[name][1] == "compute":
            found = conn.compute.services(binary=name, host=COMPUTE_HOST)
        else:
            host = CINDER_VOLUME_HOST if name == "cinder-volume" else COMPUTE_HOST
            found = conn.block_storage.services(binary=name, host=host)
        return next(iter(found), None)

    def _wait_service_state(self, name: str, state: str, timeout: float,
                            since: dt.datetime | None = None) -> None:
        """Wait until the service list shows `name` in `state` (with a report after `since`)."""
        deadline, entry = time.monotonic() + timeout, None
        record, log = self._state["procs"].get(name), self.logs / f"{name}.log"
        while time.monotonic() < deadline:
            entry = self._service_entry(name)
            # no updated_at yet: a record created by this start that has not reported since
            if entry is not None and entry.state == state and (
                    since is None or entry.updated_at is None or _utc(entry.updated_at) >= since):
                return
            if state == "up" and record and not procs.is_running(record):
                raise LabError(f"{name} exited; {log}:\n{procs.tail(log)}")
            time.sleep(0.5)
        seen = entry and (entry.state, entry.updated_at)
        raise LabError(f"{name} not {state} after {timeout:.0f} s (last seen {seen}); "
                       f"{log}:\n{procs.tail(log)}")

    # ---- access for tests -----------------------------------------------------------------------
    def connection(self, cloud: str = "admin") -> openstack.connection.Connection:
        """An openstacksdk Connection for a cloud of clouds.yaml ("admin", "nova-service")."""
        with self._lock:
            if cloud not in self._conns:
                loader = openstack.config.OpenStackConfig(config_files=[str(self.clouds_yaml)])
                self._conns[cloud] = openstack.connection.Connection(
                    config=loader.get_one(cloud=cloud))
            return self._conns[cloud]

    def nova_manage(self, *args: str) -> subprocess.CompletedProcess:
        """`nova-manage` of the lab's venv with its nova.conf; output captured, rc not checked."""
        argv = [str(self.venv / "bin" / "nova-manage"), "--config-file", str(self.nova_conf),
                *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=600,
                              env=services.environment(self.venv), stdin=subprocess.DEVNULL)

    def sql(self, database: str, statement: str, params: dict | None = None):
        """Run one statement on a lab database ("nova_cell1" or "cl_nova_cell1") in its own
        transaction: the rows as dicts for a query, else the number of rows changed."""
        url = config.db_url(database)
        if url not in self._engines:
            self._engines[url] = sa.create_engine(url, pool_pre_ping=True)
        with self._engines[url].begin() as conn:
            result = conn.execute(sa.text(statement), params or {})
            return [dict(row) for row in result.mappings()] if result.returns_rows \
                else result.rowcount

    def boot(self, name: str, *, user_port: bool = False, nova_port: bool = True,
             volume_size: int | None = None, delete_on_termination: bool = True,
             extra_volumes=()) -> dict:
        """Boot a server as a user would and wait for ACTIVE; attach volumes through Nova.

        Returns {"id", "ports": {port_id: "nova"|"user"}, "volumes": {volume_id: dot}}, dot being
        the attachment's delete_on_termination.
        """
        conn = self.connection()
        ports, networks = {}, []
        if nova_port:
            networks.append({"uuid": self.network_id})
        if user_port:
            port = conn.network.create_port(network_id=self.network_id, name=f"{name}-user")
            ports[port.id] = "user"
            networks.append({"port": port.id})
        server = conn.compute.create_server(name=name, flavor_id=self.flavor_id,
                                            image_id=self.image_id,
                                            networks=networks or "none")
        server = conn.compute.wait_for_server(server, status="ACTIVE", wait=WAIT_TIMEOUT)
        for port in conn.network.ports(device_id=server.id):
            ports.setdefault(port.id, "nova")
        wanted = ([(volume_size, delete_on_termination)] if volume_size else []) + \
            list(extra_volumes)
        volumes = {}
        for number, (size, dot) in enumerate(wanted):
            volume = conn.block_storage.create_volume(size=size, name=f"{name}-vol{number}")
            conn.block_storage.wait_for_status(volume, "available", failures=["error"],
                                               wait=WAIT_TIMEOUT)
            conn.compute.create_volume_attachment(server, volume, delete_on_termination=dot)
            conn.block_storage.wait_for_status(volume, "in-use", failures=["error"],
                                               wait=WAIT_TIMEOUT)
            volumes[volume.id] = dot
        return {"id": server.id, "ports": ports, "volumes": volumes}

    def shelve_offload(self, server_id: str) -> str:
        """Shelve a server, wait for SHELVED_OFFLOADED; returns the id of its snapshot image."""
        conn = self.connection()
        conn.compute.shelve_server(server_id)
        conn.compute.wait_for_server(conn.compute.get_server(server_id),
                                     status="SHELVED_OFFLOADED", wait=WAIT_TIMEOUT)
        images = sorted(conn.image.images(instance_uuid=server_id), key=lambda i: i.created_at)
        if not images:
            raise LabError(f"no snapshot image of shelved server {server_id} in Glance")
        image = images[-1]
        if image.status == "queued":
            # the fake hypervisor uploads nothing; a real one sets the formats, uploads the
            # disk and leaves an active snapshot
            conn.image.update_image(image, disk_format="raw", container_format="bare")
            response = conn.image.put(f"/images/{image.id}/file", data=b"\0" * 1024,
                                      headers={"Content-Type": "application/octet-stream"})
            if response.status_code >= 400:
                raise LabError(f"upload of snapshot {image.id}: HTTP {response.status_code}")
            conn.image.wait_for_status(image, "active", failures=["killed"], wait=WAIT_TIMEOUT)
        return image.id

    # ---- state ----------------------------------------------------------------------------------
    def _set_ids(self, ids: dict) -> None:
        self.network_id, self.flavor_id, self.image_id = (ids["network_id"], ids["flavor_id"],
                                                          ids["image_id"])

    def _read_state(self) -> dict | None:
        try:
            return json.loads((self.rundir / "state.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def _save_state(self) -> None:
        with self._lock:
            path = self.rundir / "state.json"
            temp = path.with_suffix(".tmp")
            temp.write_text(json.dumps(self._state, indent=1))
            temp.chmod(0o600)
            temp.replace(path)

    def _write_clouds_yaml(self, password: str) -> None:
        def cloud(user: str, project: str) -> dict:
            return {"auth": {"auth_url": "http://127.0.0.1:5000/v3", "username": user,
                             "password": password, "project_name": project,
                             "user_domain_name": "Default", "project_domain_name": "Default"},
                    "region_name": "RegionOne", "identity_api_version": 3,
                    "interface": "public"}
        text = yaml.safe_dump({"clouds": {"admin": cloud("admin", "admin"),
                                          "nova-service": cloud("nova", "service")}})
        self.clouds_yaml.write_text(text)
        self.clouds_yaml.chmod(0o600)

    def _note(self, what: str) -> None:
        with (self.logs / "lab.log").open("a") as out:
            out.write(f"{time.strftime('%H:%M:%S')} {what}\n")

    def _timed(self, what: str, func, *args):
        started = time.monotonic()
        result = func(*args)
        self._note(f"{what} ({time.monotonic() - started:.1f} s)")
        return result


def _label(argv) -> str:
    """A setup command for the log: its program and subcommand words (no paths, no URLs)."""
    words = [Path(str(argv[0])).name]
    words += [str(a) for a in argv[1:] if not str(a).startswith("-") and "/" not in str(a)]
    return " ".join(words)


def _stop_in_order(records: dict) -> None:
    """Stop the services, then the bus they use (cinder-scheduler may hang without it)."""
    procs.stop({k: v for k, v in records.items() if k not in (RABBIT, EPMD)})
    procs.stop({k: v for k, v in records.items() if k in (RABBIT, EPMD)})


def _lab_digest() -> str:
    """What a kept lab must match to be reused: its config templates, plugins and commands."""
    return lab_venv._digest(config.TEMPLATES, lab_venv.DRIVER, Path(services.__file__))[:16]


def _utc(value) -> dt.datetime:
    """An API timestamp ("2025-06-01T12:00:00.000000", maybe with a zone) as naive UTC."""
    when = dt.datetime.fromisoformat(str(value))
    if when.tzinfo:
        when = when.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return when
