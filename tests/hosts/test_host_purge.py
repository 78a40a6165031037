"""Host cleanup on real compute hosts: sshd, libvirtd + QEMU, OVS, bridges, iscsiadm, dirs.

Two namespace hosts (tests/labs/hostlab.py) carry several instances each, built from the same
Nova records the purge reads. Every test compares whole host snapshots: what a purge must remove
is exactly the target's domain, devices, OVS ports, node records and dirs.
"""

import concurrent.futures
import json
import shutil
import subprocess

import pytest
import sqlalchemy as sa

from novapurge.sandbox import novadb
from novapurge.sandbox.estate import instance_traces
from novapurge.sandbox.seed import NovaSeeder

pytestmark = pytest.mark.hosts

HOST_STEPS = ("DestroyDomain", "UnplugVif", "DisconnectIscsiTarget", "QuarantineInstanceDirs",
              "UndefineDomain")
NO_API = "volumes,ports"   # these tests have no cloud API: its steps are skipped (and noted)

# role -> (host, add_instance arguments)
LAYOUT = {
    "target": ("cmp1", dict(name="web-err", vm_state="error", fault=True,
                            vifs=("ovs-hybrid", "ovs-native"), volumes=("iscsi-multipath",))),
    "hybrid": ("cmp1", dict(name="app-1", vm_state="active", vifs=("ovs-hybrid",),
                            volumes=("iscsi",))),
    "bridge": ("cmp1", dict(name="app-2", vm_state="active", vifs=("linuxbridge",))),
    "other": ("cmp2", dict(name="db-1", vm_state="active", vifs=("ovs-hybrid", "ovs-native"))),
    "stuck2": ("cmp2", dict(name="db-err", vm_state="error", fault=True, vifs=("linuxbridge",))),
}


class Template:
    """The seeded Nova DBs (built once per module) and the same instances on the lab hosts.

    `baseline` is each host's snapshot right after its instances were added; a test that leaves
    a host different from it gets that host wiped and rebuilt (the seed is fixed, so the rebuilt
    host is the same), the others are reused as they are.
    """

    def __init__(self, lab, directory):
        self.lab, self.directory = lab, directory
        self.urls = {w: f"sqlite:///{directory}/{w}.sqlite" for w in ("cell", "api")}
        cell, api = sa.create_engine(self.urls["cell"]), sa.create_engine(self.urls["api"])
        try:
            novadb.create_schema(cell, "main")
            novadb.create_schema(api, "api")
            seeder = NovaSeeder(cell, api, cell_url=self.urls["cell"], seed=7)
            self.info = {role: seeder.add_instance(host=host, **kwargs)
                         for role, (host, kwargs) in LAYOUT.items()}
            self.traces = {role: instance_traces(cell, info["uuid"])
                           for role, info in self.info.items()}
        finally:
            cell.dispose()
            api.dispose()
        self.baseline = {}
        _each_host(lab, self._build)

    def _build(self, host):
        for role, info in self.info.items():
            if info["host"] == host.name:
                network_info, bdms = self.traces[role]
                host.add_instance(info["uuid"], info["instance_name"], network_info, bdms,
                                  running=True)
        self.baseline[host.name] = host.snapshot()

    def reset(self, host):
        """Give the host back its baseline: restart sshd, and rebuild it if a test changed it."""
        if not host._sshd_listening():
            host.start_sshd()
        if host.snapshot() != self.baseline[host.name]:
            wipe(host)
            baseline = self.baseline.pop(host.name)
            self._build(host)
            assert self.baseline[host.name] == baseline, f"{host.name} rebuilt differently"

    def copy(self, directory):
        """Fresh copies of the Nova DBs in `directory` (the API DB's cell mapping updated)."""
        urls = {}
        for which in ("cell", "api"):
            shutil.copyfile(self.directory / f"{which}.sqlite", directory / f"{which}.sqlite")
            urls[which] = f"sqlite:///{directory}/{which}.sqlite"
        api = sa.create_engine(urls["api"])
        try:
            with api.begin() as conn:
                conn.execute(sa.text("UPDATE cell_mappings SET database_connection = :new "
                                     "WHERE database_connection = :old"),
                             {"new": urls["cell"], "old": self.urls["cell"]})
        finally:
            api.dispose()
        return urls


def _each_host(lab, work):
    """Run work(host) for every lab host at once (they are independent)."""
    with concurrent.futures.ThreadPoolExecutor(len(lab.hosts)) as pool:
        for future in [pool.submit(work, host) for host in lab.hosts.values()]:
            future.result()


class Estate:
    """One test's copy of the Nova DBs, the lab hosts at their baseline, and the CLI."""

    def __init__(self, lab, template, tmp_path, run_cli):
        self.lab, self.tmp_path, self._run_cli = lab, tmp_path, run_cli
        self.info, self._traces = template.info, template.traces
        urls = template.copy(tmp_path)
        self.cell, self.api = sa.create_engine(urls["cell"]), sa.create_engine(urls["api"])
        self.config = tmp_path / "novapurge.toml"
        self.write_config()
        self.env = {"NOVAPURGE_DB": urls["cell"], "NOVAPURGE_API_DB": urls["api"],
                    "NOVAPURGE_JOURNAL": f"sqlite:///{tmp_path}/journal.sqlite",
                    "NOVAPURGE_CONFIG": str(self.config)}

    def write_config(self, known_hosts=None, **host_overrides):
        lines = ["[ssh]", f'known_hosts = "{known_hosts or self.lab.known_hosts}"', ""]
        for name, values in self.lab.ssh_config().items():
            values = {**values, **host_overrides.get(name, {})}
            lines.append(f"[hosts.{name}]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
        self.config.write_text("\n".join(lines) + "\n")

    def cli(self, *args, expect=None, env=None):
        return self._run_cli(list(args), {**self.env, **(env or {})}, expect, cwd=self.tmp_path)

    def uuid(self, role):
        return self.info[role]["uuid"]

    def snapshots(self) -> dict:
        names = list(self.lab.hosts)
        with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
            return dict(zip(names, pool.map(lambda n: self.lab.hosts[n].snapshot(), names)))

    def logins(self) -> dict:
        return {name: host.ssh_logins() for name, host in self.lab.hosts.items()}

    def db(self) -> dict:
        return {"cell": novadb.snapshot(self.cell), "api": novadb.snapshot(self.api)}

    def without(self, snaps: dict, role: str) -> dict:
        """The host snapshots with everything of instance `role` taken away (what a purge does)."""
        info = self.info[role]
        network_info, bdms = self._traces[role]
        marks = {vif["id"][:11] for vif in network_info}
        paths = [json.loads(b["connection_info"]) for b in bdms]
        nodes = {f"{i},{p}" for c in paths for i, p in zip(
            c["data"].get("target_iqns") or [c["data"]["target_iqn"]],
            c["data"].get("target_portals") or [c["data"]["target_portal"]])}
        out = json.loads(json.dumps(snaps))
        host = out[info["host"]]
        host["domains"].pop(info["instance_name"])
        for section in ("links", "ovs_ports"):
            host[section] = {k: v for k, v in host[section].items() if k[3:] not in marks}
        for vif in network_info:       # a linuxbridge brq goes when nothing else is plugged in
            brq = vif["network"].get("bridge") if vif["type"] == "bridge" else None
            if brq and not any(v["master"] == brq for v in host["links"].values()):
                host["links"].pop(brq, None)
        host["iscsi_nodes"] = {k: v for k, v in host["iscsi_nodes"].items() if k not in nodes}
        host["instance_files"] = {k: v for k, v in host["instance_files"].items()
                                  if not k.startswith(info["uuid"])}
        host["instance_dirs"] = [d for d in host["instance_dirs"] if not d.startswith(info["uuid"])]
        return out

    def live(self, role) -> bool:
        with self.cell.connect() as conn:
            return conn.execute(sa.text("SELECT deleted FROM instances WHERE uuid = :u"),
                                {"u": self.uuid(role)}).scalar() == 0

    def dispose(self):
        self.cell.dispose()
        self.api.dispose()


def _differences(actual, expected, path="") -> list:
    if isinstance(actual, dict) and isinstance(expected, dict):
        found = []
        for key in sorted(set(actual) | set(expected), key=str):
            where = f"{path}.{key}" if path else str(key)
            if key not in actual:
                found.append(f"{where}: missing, expected {expected[key]!r}")
            elif key not in expected:
                found.append(f"{where}: unexpected {actual[key]!r}")
            else:
                found += _differences(actual[key], expected[key], where)
        return found
    return [] if actual == expected else [f"{path}: {actual!r}, expected {expected!r}"]


def assert_hosts(actual: dict, expected: dict) -> None:
    """Host snapshots equal, or a failure listing every difference by path."""
    differences = _differences(actual, expected)
    if differences:
        pytest.fail("hosts differ:\n  " + "\n  ".join(differences), pytrace=False)


def wipe(host):
    """Remove every instance trace from a lab host."""
    for name in host.run(["virsh", "list", "--all", "--name"]).stdout.split():
        host.run(["virsh", "destroy", name], check=False, timeout=120)
        host.run(["virsh", "undefine", name, "--nvram"], check=False)
    for port in host.run(["ovs-vsctl", "list-ports", "br-int"]).stdout.split():
        host.run(["ovs-vsctl", "--if-exists", "del-port", "br-int", port])
    links = json.loads(host.run(["ip", "-j", "link", "show"]).stdout)
    for link in links:
        if link["ifname"][:3] in ("tap", "qbr", "qvb", "qvo", "brq"):
            host.run(["ip", "link", "del", "dev", link["ifname"]], check=False)
    host.run(["iscsiadm", "-m", "node", "-o", "delete"], check=False)
    host.run(["sh", "-c", "rm -rf /var/lib/nova/instances/* /var/lib/nova/instances/.[!.]*"])


@pytest.fixture(scope="module")
def template(hostlab, tmp_path_factory):
    return Template(hostlab, tmp_path_factory.mktemp("nova-template"))


@pytest.fixture
def estate(hostlab, template, tmp_path, helpers):
    _each_host(hostlab, template.reset)
    built = Estate(hostlab, template, tmp_path, helpers.run_cli)
    yield built
    built.dispose()


def _purge(estate, role, *extra, expect=0):
    return estate.cli("purge", "--yes", estate.uuid(role), "--skip", NO_API, *extra, "-f", "json",
                      expect=expect)


def test_purge_removes_exactly_the_target_on_its_host(estate):
    before = estate.snapshots()
    result = _purge(estate, "target")
    assert [vm["result"] for vm in result.json["vms"]] == ["succeeded"]
    assert_hosts(estate.snapshots(), estate.without(before, "target"))
    after = estate.snapshots()["cmp1"]
    for role in ("hybrid", "bridge"):
        assert after["domains"][estate.info[role]["instance_name"]]["state"] == "running"
    assert estate.snapshots()["cmp2"] == before["cmp2"]


def test_plan_lists_the_host_commands(estate):
    plan = estate.cli("plan", estate.uuid("target"), "--skip", NO_API, "-f", "json",
                      expect=0).json[0]
    commands = [c["command"] for s in plan["steps"] for c in s["changes"] if "command" in c]
    name = estate.info["target"]["instance_name"]
    assert f"virsh destroy {name}" in commands
    assert any(c.startswith(f"virsh undefine {name}") for c in commands)
    assert any(c.startswith("ovs-vsctl --if-exists del-port br-int qvo") for c in commands)
    assert sum(c.startswith("iscsiadm -m node -T") and c.endswith("--op delete")
               for c in commands) == 2  # multipath: one per portal


def test_domain_with_another_uuid_is_refused_and_nothing_changes(estate, hostlab):
    host = hostlab.hosts["cmp1"]
    name = estate.info["target"]["instance_name"]
    host.run(["virsh", "destroy", name])
    host.run(["virsh", "undefine", name])
    host.add_domain(name, "11111111-2222-3333-4444-555555555555", running=True)
    before, db = estate.snapshots(), estate.db()
    result = _purge(estate, "target", expect=3)
    assert "belongs to another instance" in result.stderr + result.stdout
    assert_hosts(estate.snapshots(), before)
    assert estate.db() == db


@pytest.mark.slow
@pytest.mark.parametrize("step", HOST_STEPS)
def test_failure_after_each_host_step_restores_the_host(estate, step):
    before, db = estate.snapshots(), estate.db()
    result = estate.cli("purge", "--yes", estate.uuid("target"), "--skip", NO_API, "-f", "json",
                        expect=4, env={"NOVAPURGE_FAULTS": f"fail@{step}:after-change"})
    assert [vm["result"] for vm in result.json["vms"]] == ["reverted"]
    assert_hosts(estate.snapshots(), before)
    assert estate.db() == db


@pytest.mark.slow
def test_failure_after_the_host_chain_restores_every_host_step(estate):
    before, db = estate.snapshots(), estate.db()
    result = estate.cli("purge", "--yes", estate.uuid("target"), "--skip", NO_API, "-f", "json",
                        expect=4, env={"NOVAPURGE_FAULTS": "fail@SoftDeleteInstance:after-change"})
    assert [vm["result"] for vm in result.json["vms"]] == ["reverted"]
    assert_hosts(estate.snapshots(), before)
    assert estate.db() == db


@pytest.mark.slow
@pytest.mark.parametrize("point", ["DestroyDomain:after-change",
                                   "DisconnectIscsiTarget:after-change",
                                   "UndefineDomain:before-change"])
def test_kill_mid_host_chain_then_resume_equals_an_uninterrupted_purge(estate, point):
    before = estate.snapshots()
    killed = estate.cli("purge", "--yes", estate.uuid("target"), "--skip", NO_API,
                        env={"NOVAPURGE_FAULTS": f"kill@{point}"})
    assert killed.returncode == -9
    purge_id = estate.cli("status", "-f", "json", expect=0).json[-1]["purge_id"]
    estate.cli("resume", purge_id, "-f", "json", expect=0)
    assert_hosts(estate.snapshots(), estate.without(before, "target"))
    assert not estate.live("target")


@pytest.mark.slow
def test_a_stuck_domain_is_still_destroyed(estate, hostlab):
    before = estate.snapshots()
    pid = hostlab.hosts["cmp2"].stop_qemu(estate.info["stuck2"]["instance_name"])
    assert hostlab.hosts["cmp2"].run(["ps", "-o", "stat=", "-p", pid]).stdout.startswith("T")
    result = _purge(estate, "stuck2")
    assert [vm["result"] for vm in result.json["vms"]] == ["succeeded"]
    assert_hosts(estate.snapshots(), estate.without(before, "stuck2"))
    assert hostlab.hosts["cmp2"].run(["ps", "-p", pid], check=False).returncode == 1


def test_a_linuxbridge_another_port_uses_stays(estate, hostlab):
    """The brq of a network is shared: purging one of its ports leaves it to the others."""
    host = hostlab.hosts["cmp2"]
    network_info, _ = estate._traces["stuck2"]
    brq = network_info[0]["network"]["bridge"]
    host.run(["ip", "tuntap", "add", "dev", "tapfeedbeef-01", "mode", "tap"])
    host.run(["ip", "link", "set", "dev", "tapfeedbeef-01", "master", brq, "up"])
    before = estate.snapshots()
    _purge(estate, "stuck2")
    expected = estate.without(before, "stuck2")
    assert expected["cmp2"]["links"][brq] == before["cmp2"]["links"][brq]
    assert_hosts(estate.snapshots(), expected)


@pytest.mark.parametrize("field,value", [
    ("devname", "tap$(reboot)x"),
    ("devname", "../../etc/x"),
    ("iqn", "iqn.2010-10.org.openstack:vol;rm -rf /"),
    ("portal", "192.0.2.10:3260 --login"),
])
def test_hostile_facts_are_refused_before_anything_runs(estate, field, value):
    vm = estate.uuid("target")
    with estate.cell.begin() as conn:
        if field == "devname":
            cache = conn.execute(sa.text("SELECT network_info FROM instance_info_caches WHERE "
                                         "instance_uuid = :u"), {"u": vm}).scalar()
            vifs = json.loads(cache)
            vifs[0]["devname"] = value
            conn.execute(sa.text("UPDATE instance_info_caches SET network_info = :n WHERE "
                                 "instance_uuid = :u"), {"n": json.dumps(vifs), "u": vm})
        else:
            row = conn.execute(sa.text("SELECT id, connection_info FROM block_device_mapping "
                                       "WHERE instance_uuid = :u AND connection_info IS NOT NULL"),
                               {"u": vm}).first()
            info = json.loads(row.connection_info)
            key = {"iqn": "target_iqns", "portal": "target_portals"}[field]
            info["data"][key][0] = value
            conn.execute(sa.text("UPDATE block_device_mapping SET connection_info = :c WHERE "
                                 "id = :i"), {"c": json.dumps(info), "i": row.id})
    before, db, logins = estate.snapshots(), estate.db(), estate.logins()
    result = _purge(estate, "target", expect=2)
    assert "refusing" in result.stderr + result.stdout
    assert estate.logins() == logins            # refused before any connection to a host
    assert_hosts(estate.snapshots(), before)
    assert estate.db() == db
    assert estate.cli("status", "-f", "json", expect=0).json == []


def test_hostile_instances_path_is_refused(estate):
    estate.config.write_text(estate.config.read_text().replace(
        "[ssh]", '[hosts]\ninstances_path = "/var/lib/nova/../../etc"\n\n[ssh]'))
    before, logins = estate.snapshots(), estate.logins()
    result = _purge(estate, "target", expect=2)
    assert "instances_path" in result.stderr + result.stdout
    assert estate.logins() == logins
    assert_hosts(estate.snapshots(), before)


def test_unknown_host_key_is_refused_and_accept_new_records_it(estate, tmp_path):
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    estate.write_config(known_hosts=empty)
    before, db, logins = estate.snapshots(), estate.db(), estate.logins()
    result = _purge(estate, "target", expect=8)
    assert "--ssh-accept-new" in result.stderr + result.stdout
    assert estate.logins() == logins            # no authentication to an unknown host
    assert_hosts(estate.snapshots(), before)
    assert estate.db() == db and empty.read_text() == ""
    result = _purge(estate, "target", "--ssh-accept-new")
    assert [vm["result"] for vm in result.json["vms"]] == ["succeeded"]
    host = estate.lab.hosts["cmp1"]
    kind, key = host.host_key.with_suffix(".pub").read_text().split()[:2]
    assert empty.read_text() == f"{host.address} {kind} {key}\n"   # only the host it talked to
    assert_hosts(estate.snapshots(), estate.without(before, "target"))
    purge_id = estate.cli("status", "-f", "json", expect=0).json[-1]["purge_id"]
    rows = estate.cli("audit", "export", purge_id, "--format", "json", expect=0)
    trusted = [e for e in json.loads(rows.stdout) if e["outcome"] == "trusted-on-first-use"]
    assert [e["resource"] for e in trusted] == ["hostkey:cmp1"]
    fingerprint = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f",
                                  str(host.host_key.with_suffix(".pub"))], check=True,
                                 capture_output=True, text=True).stdout.split()[1]
    assert fingerprint in json.dumps(trusted[0])


def test_host_down_fails_clearly_and_skip_host_defers_its_cleanup(estate, hostlab):
    host = hostlab.hosts["cmp1"]
    host.stop_sshd()
    before, db = estate.snapshots(), estate.db()
    result = _purge(estate, "target", expect=8)
    message = result.json["error"]
    assert "host cmp1" in message and "does not answer" in message and "--skip host" in message
    assert estate.db() == db
    assert estate.cli("status", "-f", "json", expect=0).json == []
    result = _purge(estate, "target", "--skip", "host")
    assert [vm["result"] for vm in result.json["vms"]] == ["succeeded"]
    assert not estate.live("target")
    assert_hosts(estate.snapshots(), before)     # the host's cleanup is left for later
    status = estate.cli("status", "-f", "json", expect=0).json[-1]
    deferred = status["vms"][0]["deferred"]
    assert [d["resource"] for d in deferred] == ["host:cmp1"]
    assert deferred[0]["detail"]["domain"] == estate.info["target"]["instance_name"]
    assert len(deferred[0]["detail"]["dirs"]) == 3 and len(deferred[0]["detail"]["iscsi"]) == 2


def test_dropped_transport_mid_purge_reconnects_and_finishes(estate, hostlab):
    """In-process: the SSH sessions are killed between two host steps."""
    from novapurge import config as np_config
    from novapurge.drivers import setup
    from novapurge.drivers.novadb import NovaDatabases
    from novapurge.flows.run import Purger
    from novapurge.persistence.journal import Journal
    from novapurge.persistence.ledger import Actor

    before = estate.snapshots()
    settings = np_config.load(config=str(estate.config), cell_url=estate.env["NOVAPURGE_DB"],
                              api_url=estate.env["NOVAPURGE_API_DB"])
    pool = setup.host_pool(settings)
    killed = []

    def report(vm_uuid, step, state):
        if state == "SUCCESS" and step == "DestroyDomain" and not killed:
            killed.append(hostlab.hosts["cmp1"].kill_ssh_sessions())

    journal = Journal(estate.env["NOVAPURGE_JOURNAL"], Actor("tests"))
    purger = Purger(journal, NovaDatabases(settings.cell_url, settings.api_url, {}),
                    report=report, hosts=pool)
    try:
        _, outcomes = purger.purge([estate.uuid("target")], skip=["ports", "volumes"])
    finally:
        purger.close()
        pool.close()
        journal.close()
    assert killed and killed[0] >= 1
    assert [o.result for o in outcomes] == ["succeeded"]
    assert pool.connections_opened()["cmp1"] == 2
    assert_hosts(estate.snapshots(), estate.without(before, "target"))
