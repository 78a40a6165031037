"""Sandbox Nova databases built from the real DDL of Nova 34, for the demo and every test.

The schema comes from `nova-manage db sync` dumps (SQLite and MariaDB), so the purge code meets the
same tables, constraints and quirks as in production. `legacy="kilo"` trims the cell DB to the
Kilo-era table list to exercise the code paths for old clouds (no API DB, no console_auth_tokens,
no placement tables).
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

__all__ = [
    "NovaSeeder",
    "build_sandbox",
    "create_schema",
    "drop_mysql_database",
    "instance_ref_tables",
    "kilo_tables",
    "mysql_database",
    "schema_statements",
    "snapshot",
]

_WHICH = ("main", "api")
_DIALECTS = ("sqlite", "mysql")
_DB_NAME_RE = re.compile(r"^[a-z0-9_]{1,64}$")
_TABLE_OF_STMT = re.compile(
    r"""^CREATE\s+(?:UNIQUE\s+)?(?:TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?|INDEX\s+.*?\s+ON\s+)
        [`"\[]?(\w+)[`"\]]?""",
    re.IGNORECASE | re.DOTALL | re.VERBOSE,
)


def _schema_text(name: str) -> str:
    return resources.files("novapurge.sandbox").joinpath("schema", name).read_text("utf-8")


def kilo_tables() -> frozenset[str]:
    """Table names of a Kilo (2015.1) cell DB, without shadow twins (kilo_tables.txt)."""
    names = set()
    for line in _schema_text("kilo_tables.txt").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            names.add(line.split()[0])
    return frozenset(names)


def instance_ref_tables() -> dict[str, dict[str, str]]:
    """`{"main"|"api": {table: column}}`: tables referencing an instance (instance_refs_nova34.txt)."""
    refs: dict[str, dict[str, str]] = {}
    section: dict[str, str] = {}
    for line in _schema_text("instance_refs_nova34.txt").splitlines():
        if line.startswith("=="):
            section = refs.setdefault("api" if line.rstrip().endswith("api") else "main", {})
        elif line.strip():
            match = re.match(r"(\w+)\s+cols=\['(\w+)'\]", line.strip())
            if match:
                section[match.group(1)] = match.group(2)
    return refs


def split_sql(text: str, dialect: str) -> list[str]:
    """Split a dump into statements, honouring quotes, comments and MySQL `DELIMITER`.

    MySQL conditional comments `/*!NNNNN ... */` are unwrapped (every supported server runs them);
    MariaDB's `/*M!999999 ... */` sandbox-mode marker is dropped (no server version runs it).
    """
    mysql = dialect == "mysql"
    statements: list[str] = []
    buf: list[str] = []
    delimiter = ";"
    i, n = 0, len(text)
    at_line_start = True
    while i < n:
        if mysql and at_line_start:
            match = re.match(r"[ \t]*DELIMITER[ \t]+(\S+)[ \t]*(?:\n|$)", text[i:], re.IGNORECASE)
            if match:
                _flush(buf, statements)
                delimiter = match.group(1)
                i += match.end()
                continue
        ch = text[i]
        at_line_start = ch == "\n"
        if text.startswith("--", i) or (mysql and ch == "#"):
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end < 0:
                raise ValueError("unterminated /* comment in schema dump")
            body = text[i + 2:end]
            if mysql and body.startswith("!"):
                buf.append(" " + re.sub(r"^!\d*", "", body) + " ")
            elif mysql and body.startswith("M!"):
                version = re.match(r"M!(\d*)", body).group(1)
                if version and int(version) < 999999:
                    buf.append(" " + re.sub(r"^M!\d*", "", body) + " ")
            else:
                buf.append(" ")
            i = end + 2
        elif ch in "'\"`":
            j = i + 1
            while j < n:
                if mysql and text[j] == "\\" and ch != "`":
                    j += 2
                    continue
                if text[j] == ch:
                    if j + 1 < n and text[j + 1] == ch:
                        j += 2
                        continue
                    break
                j += 1
            buf.append(text[i:j + 1])
            i = j + 1
        elif text.startswith(delimiter, i):
            _flush(buf, statements)
            i += len(delimiter)
        else:
            buf.append(ch)
            i += 1
    _flush(buf, statements)
    return statements


def _flush(buf: list[str], statements: list[str]) -> None:
    statement = "".join(buf).strip()
    buf.clear()
    if statement:
        statements.append(statement)


def schema_statements(which: str, dialect: str, legacy: str | None = None) -> list[str]:
    """The executable statements that build Nova 34's `which` ("main" cell / "api") database."""
    if which not in _WHICH:
        raise ValueError(f"which must be one of {_WHICH}, not {which!r}")
    if dialect not in _DIALECTS:
        raise ValueError(f"dialect must be one of {_DIALECTS}, not {dialect!r}")
    if legacy not in (None, "kilo"):
        raise ValueError(f"unknown legacy schema {legacy!r} (known: 'kilo')")
    if legacy and which != "main":
        raise ValueError("a Kilo-era cloud has no API database")
    statements = split_sql(_schema_text(f"{which}_synced_{dialect}.sql"), dialect)
    if legacy is None:
        return statements
    keep = kilo_tables()
    keep = keep | {f"shadow_{name}" for name in keep}
    result = []
    for statement in statements:
        match = _TABLE_OF_STMT.match(statement)
        if match is None or match.group(1) in keep:
            result.append(statement)
    return result


def create_schema(engine: sa.Engine, which: str, legacy: str | None = None) -> None:
    """Create Nova's tables on an empty database (SQLite file or MariaDB/MySQL)."""
    dialect = "mysql" if engine.dialect.name in ("mysql", "mariadb") else engine.dialect.name
    statements = schema_statements(which, dialect, legacy)
    if dialect == "sqlite":
        # pysqlite autocommits each DDL statement (one fsync each); one script is ~10x faster.
        raw = engine.raw_connection()
        try:
            raw.driver_connection.executescript(
                "BEGIN;\n" + ";\n".join(statements) + ";\nCOMMIT;")
        finally:
            raw.close()
        return
    # One connection: the dump's SET FOREIGN_KEY_CHECKS=0 must cover every CREATE TABLE.
    with engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)


def _server_engine(server_url: str, name: str) -> tuple[sa.Engine, sa.URL]:
    if not _DB_NAME_RE.match(name or ""):
        raise ValueError(f"invalid database name {name!r}: want ^[a-z0-9_]{{1,64}}$")
    url = make_url(server_url)
    if not url.drivername.startswith(("mysql", "mariadb")):
        raise ValueError(f"not a MySQL/MariaDB URL: {url.drivername}")
    return sa.create_engine(url.set(database=None), poolclass=sa.pool.NullPool), url


def mysql_database(server_url: str, name: str) -> str:
    """(Re)create an empty database `name` on the server; return its URL (utf8mb4)."""
    engine, url = _server_engine(server_url, name)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")
            conn.exec_driver_sql(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    finally:
        engine.dispose()
    query = dict(url.query)
    query["charset"] = "utf8mb4"
    return url.set(database=name, query=query).render_as_string(hide_password=False)


def drop_mysql_database(server_url: str, name: str) -> None:
    """Drop database `name` if it exists."""
    engine, _ = _server_engine(server_url, name)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        engine.dispose()


def snapshot(engine: sa.Engine) -> dict[str, list[tuple]]:
    """Every row of every table as raw driver values, ordered by primary key (else all columns).

    Read through `text()` so no SQLAlchemy type processing changes what is compared.
    """
    inspector = sa.inspect(engine)
    quote = engine.dialect.identifier_preparer.quote
    result: dict[str, list[tuple]] = {}
    with engine.connect() as conn:
        for table in sorted(inspector.get_table_names()):
            order = inspector.get_pk_constraint(table).get("constrained_columns") or [
                column["name"] for column in inspector.get_columns(table)
            ]
            sql = f"SELECT * FROM {quote(table)} ORDER BY {', '.join(quote(c) for c in order)}"
            result[table] = [tuple(row) for row in conn.execute(sa.text(sql))]
    return result


def __getattr__(name: str):
    # NovaSeeder lives in seed.py, which imports the JSON shapes below: import it lazily.
    if name == "NovaSeeder":
        from novapurge.sandbox.seed import NovaSeeder

        return NovaSeeder
    raise AttributeError(name)


# ---- the JSON Nova stores in its rows (shapes of Nova 34's objects) ---------------------------

PUBLIC_KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHNhbmRib3hrZXlub3RyZWFsbHl1c2VkMDAwMDAw "
              "np@sandbox")
_VIF_KINDS = ("ovs-hybrid", "ovs-native", "linuxbridge")
_VOLUME_KINDS = ("iscsi", "iscsi-multipath", "rbd")


def _ovo(name: str, version: str, data: dict) -> dict:
    return {"nova_object.name": name, "nova_object.namespace": "nova",
            "nova_object.version": version, "nova_object.data": data}


def _spec(value, kinds: tuple, flag: str) -> dict:
    spec = {"kind": value} if isinstance(value, str) else dict(value)
    if spec.get("kind") not in kinds:
        raise ValueError(f"unknown kind {spec.get('kind')!r}; known: {', '.join(kinds)}")
    spec[flag] = bool(spec.get(flag, False))
    return spec


def vif_spec(value) -> dict:
    """`"ovs-hybrid"` or `{"kind": .., "preserve_on_delete": bool}` -> normalised dict."""
    return _spec(value, _VIF_KINDS, "preserve_on_delete")


def volume_spec(value) -> dict:
    """`"iscsi"` or `{"kind": .., "delete_on_termination": bool}` -> normalised dict."""
    return _spec(value, _VOLUME_KINDS, "delete_on_termination")


def network_vif(spec: dict, port: str, net: str, instance_id: int, index: int,
                project_id: str) -> dict:
    """One VIF of `instance_info_caches.network_info` (nova.network.model.VIF as JSON)."""
    mac_low = (instance_id * 4 + index) & 0xFFFFFF
    mac = "fa:16:3e:" + ":".join(f"{(mac_low >> s) & 0xFF:02x}" for s in (16, 8, 0))
    ip = f"10.{index}.{(instance_id // 250) % 256}.{instance_id % 250 + 2}"
    ovs = spec["kind"] != "linuxbridge"
    details = {"port_filter": True, "connectivity": "l2"}
    if ovs:
        details.update(ovs_hybrid_plug=spec["kind"] == "ovs-hybrid", datapath_type="system",
                       bridge_name="br-int")

    def addr(address, kind):
        return {"address": address, "type": kind, "version": 4, "meta": {}}

    subnet = {"cidr": f"10.{index}.0.0/16", "dns": [addr("192.0.2.53", "dns")],
              "gateway": addr(f"10.{index}.0.1", "gateway"),
              "ips": [{**addr(ip, "fixed"), "floating_ips": []}], "routes": [], "version": 4,
              "meta": {"dhcp_server": f"10.{index}.0.2"}}
    network = {"id": net, "bridge": "br-int" if ovs else "brq" + net[:11],
               "label": f"net-{index}", "subnets": [subnet],
               "meta": {"injected": False, "tenant_id": project_id, "mtu": 1450,
                        "physical_network": None, "tunneled": True}}
    if not ovs:
        network["meta"]["should_create_bridge"] = True
    return {"id": port, "address": mac, "network": network, "type": "ovs" if ovs else "bridge",
            "details": details, "devname": "tap" + port[:11],
            "ovs_interfaceid": port if ovs else None, "qbh_params": None, "qbg_params": None,
            "active": True, "vnic_type": "normal", "profile": {},
            "preserve_on_delete": spec["preserve_on_delete"], "delegate_create": True, "meta": {}}


def connection_info(kind: str, volume_id: str, index: int, secret: str, secret_uuid: str) -> dict:
    """`block_device_mapping.connection_info` as os-brick/Cinder hand it to Nova."""
    if kind == "rbd":
        data = {"name": f"volumes/volume-{volume_id}", "hosts": ["192.0.2.20"], "ports": ["6789"],
                "cluster_name": "ceph", "auth_enabled": True, "auth_username": "cinder",
                "secret_type": "ceph", "secret_uuid": secret_uuid, "volume_id": volume_id,
                "discard": True, "keyring": None, "qos_specs": None, "access_mode": "rw",
                "encrypted": False}
    else:
        iqn = f"iqn.2010-10.org.openstack:volume-{volume_id}"
        data = {"target_discovered": False, "target_iqn": iqn, "target_portal": "192.0.2.10:3260",
                "target_lun": index + 1, "volume_id": volume_id, "auth_method": "CHAP",
                "auth_username": "u", "auth_password": secret, "qos_specs": None,
                "access_mode": "rw", "encrypted": False}
        if kind == "iscsi-multipath":
            data.update(target_iqns=[iqn, iqn], target_luns=[index + 1, index + 1],
                        target_portals=["192.0.2.10:3260", "192.0.2.11:3260"])
    driver = "rbd" if kind == "rbd" else "iscsi"
    return {"driver_volume_type": driver, "data": data, "serial": volume_id}


def _flavor_data(flavor: dict, created) -> dict:
    data = {k: flavor[k] for k in ("id", "name", "memory_mb", "vcpus", "root_gb", "ephemeral_gb",
                                    "flavorid", "swap", "rxtx_factor", "vcpu_weight", "disabled",
                                    "is_public")}
    return {**data, "extra_specs": {}, "description": None, "deleted": False,
            "created_at": created.isoformat() + "Z", "updated_at": None, "deleted_at": None}


def flavor_blob(flavor: dict, created) -> dict:
    """`instance_extra.flavor`: current flavor, no resize in flight."""
    return {"cur": _ovo("Flavor", "1.2", _flavor_data(flavor, created)), "old": None, "new": None}


def pci_requests(request_id: str) -> list:
    """`instance_extra.pci_requests` (InstancePCIRequests.to_json) for one VF."""
    return [{"count": 1, "spec": [{"vendor_id": "8086", "product_id": "154c"}],
             "alias_name": "vf", "is_new": False, "numa_policy": None,
             "request_id": request_id, "requester_id": None}]


def keypairs(user_id: str, created) -> dict:
    key = _ovo("KeyPair", "1.4", {"id": 1, "name": "np-key", "user_id": user_id, "type": "ssh",
                                  "fingerprint": "9e:4c:1a:00:5b:77:10:c2:0e:31:8f:aa:bb:cc:dd:ee",
                                  "public_key": PUBLIC_KEY, "created_at": created.isoformat() + "Z",
                                  "updated_at": None, "deleted_at": None, "deleted": False})
    return _ovo("KeyPairList", "1.3", {"objects": [key]})


def system_metadata(image_id: str, flavor: dict, shelved_image_id, shelved_host: str, now) -> dict:
    """`instance_system_metadata` keys Nova writes at boot (and on shelve)."""
    meta = {"image_base_image_ref": image_id, "image_container_format": "bare",
            "image_disk_format": "qcow2", "image_min_disk": str(flavor["root_gb"]),
            "image_min_ram": "0", "image_hw_disk_bus": "virtio", "image_os_distro": "ubuntu",
            "owner_project_name": "demo", "owner_user_name": "demo", "boot_roles": "member,reader"}
    if shelved_image_id:
        meta.update(shelved_image_id=shelved_image_id, shelved_at=now.isoformat(),
                    shelved_host=shelved_host)
    return meta


def request_spec(uuid: str, project_id: str, user_id: str, flavor: dict, image_id: str) -> dict:
    """`request_specs.spec` (RequestSpec object)."""
    return _ovo("RequestSpec", "1.14", {
        "instance_uuid": uuid, "project_id": project_id, "user_id": user_id,
        "flavor": _ovo("Flavor", "1.2", {k: flavor[k] for k in ("id", "name", "vcpus", "memory_mb",
                                                                 "root_gb", "flavorid")}),
        "image": _ovo("ImageMeta", "1.8", {"id": image_id, "container_format": "bare",
                                            "disk_format": "qcow2"}),
        "num_instances": 1, "availability_zone": "nova", "ignore_hosts": None,
        "force_hosts": None, "force_nodes": None, "is_bfv": False, "scheduler_hints": {}})


def build_request_instance(uuid: str, name: str, project_id: str, user_id: str,
                           flavor: dict) -> dict:
    """`build_requests.instance`: the not-yet-scheduled Instance object."""
    return _ovo("Instance", "2.8", {"uuid": uuid, "display_name": name, "project_id": project_id,
                                    "user_id": user_id, "vm_state": "building",
                                    "task_state": "scheduling", "instance_type_id": flavor["id"]})


def object_list(name: str) -> dict:
    return _ovo(name, "1.0", {"objects": []})


def build_sandbox(directory: str | Path) -> dict:
    """The demo's cloud: SQLite cell and API DBs with stuck instances and healthy neighbours,
    and the simulated compute hosts and OpenStack APIs that hold their other traces."""
    from novapurge.sandbox.seed import NovaSeeder

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    urls = {}
    for key, filename in (("cell_url", "cell1.sqlite"), ("api_url", "api.sqlite")):
        path = directory / filename
        for stale in (path, Path(f"{path}-journal"), Path(f"{path}-wal"), Path(f"{path}-shm")):
            stale.unlink(missing_ok=True)
        urls[key] = f"sqlite:///{path.resolve()}"
    for stale in (directory / "cloud.json", directory / "cloud.json.lock"):
        stale.unlink(missing_ok=True)
    for stale in (directory / "hosts").glob("*.json*"):   # the simulated hosts' state files
        stale.unlink()
    cell_engine = sa.create_engine(urls["cell_url"])
    api_engine = sa.create_engine(urls["api_url"])
    try:
        create_schema(cell_engine, "main")
        create_schema(api_engine, "api")
        seeder = NovaSeeder(cell_engine, api_engine, cell_url=urls["cell_url"])
        alpha, beta = "6f1c2a0e7b5d4c3a9e8f1b2c3d4e5f60", "0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d"
        stuck = [
            seeder.add_instance(name="web-err", vm_state="error", project_id=alpha, fault=True,
                                volumes=("iscsi",), vifs=("ovs-hybrid",), console_tokens=2),
            seeder.add_instance(name="db-deleting", vm_state="active", task_state="deleting",
                                project_id=alpha, volumes=("rbd", {"kind": "iscsi-multipath",
                                                                   "delete_on_termination": True}),
                                vifs=("ovs-native", {"kind": "ovs-hybrid",
                                                     "preserve_on_delete": True})),
            seeder.add_instance(name="batch-shelved", vm_state="shelved_offloaded",
                                project_id=alpha, host=None, console_tokens=0),
            seeder.add_instance(name="legacy-err", vm_state="error", project_id=beta, fault=True,
                                host="compute-2", vifs=("linuxbridge",), volumes=("iscsi",),
                                legacy_quota=True),
        ]
        healthy = [
            seeder.add_instance(name="web-ok", vm_state="active", project_id=alpha),
            seeder.add_instance(name="cache-ok", vm_state="active", project_id=beta,
                                host="compute-2", vifs=("linuxbridge",), legacy_quota=True),
            seeder.add_instance(name="web-stopped", vm_state="stopped", project_id=alpha),
        ]
        from novapurge.sandbox.estate import populate_estate
        populate_estate(directory, cell_engine, api_engine, stuck + healthy)
    finally:
        cell_engine.dispose()
        api_engine.dispose()
    return {
        **urls,
        "cell_uuid": seeder.cell_uuid,
        "stuck": [info["uuid"] for info in stuck],
        "healthy": [info["uuid"] for info in healthy],
        "instances": {info["uuid"]: info for info in stuck + healthy},
    }
