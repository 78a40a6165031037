"""Fill sandbox Nova databases with instances shaped like the ones Nova 34 (or Kilo) leaves behind.

Each instance gets a row in every instance-referencing table the schema has (checked by
reflection), with the JSON blobs Nova writes, so discovery and purge code meet real shapes.
"""

from __future__ import annotations

import base64
import calendar
import datetime as dt
import hashlib
import json
import random
import uuid as uuidlib
from types import SimpleNamespace

import sqlalchemy as sa

from novapurge.sandbox import novadb as blobs

_POWER = {"active": 1, "stopped": 4, "paused": 3, "suspended": 7, "error": 0,
          "shelved": 4, "shelved_offloaded": 0, "deleted": 0, "building": 0}
_AUTO = object()
DEFAULT_PROJECT = "6f1c2a0e7b5d4c3a9e8f1b2c3d4e5f60"
DEFAULT_USER = "b7e4c3d2a1f04e5d8c6b9a0f1e2d3c4b"
# Tables Nova's instance_destroy soft-deletes (deleted=id) / hard-deletes; see DESIGN.md.
_SOFT_DELETED = {
    "instances": "uuid", "security_group_instance_association": "instance_uuid",
    "instance_info_caches": "instance_uuid", "instance_metadata": "instance_uuid",
    "instance_faults": "instance_uuid", "instance_extra": "instance_uuid",
    "instance_system_metadata": "instance_uuid", "block_device_mapping": "instance_uuid",
    "migrations": "instance_uuid", "instance_id_mappings": "uuid",
    "virtual_interfaces": "instance_uuid",
}
_HARD_DELETED = {"tags": "resource_id", "console_auth_tokens": "instance_uuid"}


class _Db:
    """A reflected database: insert rows keeping only the columns its schema has."""

    def __init__(self, engine: sa.Engine):
        self.engine = engine
        self.meta = sa.MetaData()
        self.meta.reflect(bind=engine)

    def has(self, table: str) -> bool:
        return table in self.meta.tables

    def t(self, table: str) -> sa.Table:
        return self.meta.tables[table]

    def insert(self, conn, table: str, **values) -> int | None:
        if not self.has(table):
            return None
        t = self.t(table)
        row = {k: v for k, v in values.items() if k in t.c}
        pk = conn.execute(t.insert().values(**row)).inserted_primary_key
        return pk[0] if pk else None

    def ensure(self, conn, table: str, match: dict, **values) -> int | None:
        """Return the id of the row matching `match`, inserting it with `values` if absent."""
        if not self.has(table):
            return None
        t = self.t(table)
        found = conn.execute(sa.select(t.c.id).where(
            *(t.c[k] == v for k, v in match.items()))).scalar()
        return found if found is not None else self.insert(conn, table, **match, **values)


class NovaSeeder:
    """Seed a cell DB (and optionally the API DB) with realistic instances, one call each.

    `seed` (int or `random.Random`) makes every generated id reproducible; the number of
    instances already present is mixed in, so a second seeder on the same DB makes new ids.
    """

    def __init__(self, cell_engine: sa.Engine, api_engine: sa.Engine | None = None, *,
                 cell_name: str = "cell1", cell_url: str | None = None,
                 seed: int | random.Random = 0, now: dt.datetime | None = None):
        self.cell = _Db(cell_engine)
        self.api = _Db(api_engine) if api_engine is not None else None
        now = now or dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        self.now = now.replace(microsecond=0, tzinfo=None)
        with cell_engine.connect() as conn:
            existing = conn.execute(sa.select(sa.func.count()).select_from(
                self.cell.t("instances"))).scalar()
        self.rng = seed if isinstance(seed, random.Random) else random.Random(f"{seed}/{existing}")
        self.cell_uuid: str | None = None
        self._cell_id: int | None = None
        self._hosts: dict[str, dict] = {}
        self._projects: set[str] = set()
        if self.api is not None:
            with self.api.engine.begin() as conn:
                t = self.api.t("cell_mappings")
                row = conn.execute(sa.select(t.c.id, t.c.uuid).where(t.c.name == cell_name)).first()
                if row is None:
                    uuid = self._uuid()
                    row = (self.api.insert(conn, "cell_mappings", uuid=uuid, name=cell_name,
                                           created_at=self.now, disabled=False,
                                           transport_url="rabbit://guest:secret@127.0.0.1:5672/",
                                           database_connection=cell_url), uuid)
                self._cell_id, self.cell_uuid = row
        with self.cell.engine.begin() as conn:
            net = self.cell.t("networks")
            query = sa.select(net.c.id).where(net.c.label == "private")
            self._network_id = conn.execute(query).scalar()
            if self._network_id is None:
                self._network_id = self.cell.insert(
                    conn, "networks", created_at=self.now, deleted=0, label="private",
                    cidr="10.0.0.0/8", netmask="255.0.0.0", bridge="br100", gateway="10.0.0.1",
                    broadcast="10.255.255.255", dns1="192.0.2.53", multi_host=False,
                    uuid=self._uuid(), injected=False, mtu=1450, enable_dhcp=True,
                    share_address=False)

    # ---- ids -------------------------------------------------------------------------
    def _uuid(self) -> str:
        return str(uuidlib.UUID(int=self.rng.getrandbits(128), version=4))

    def _hex(self, n: int) -> str:
        return "".join(self.rng.choice("0123456789abcdef") for _ in range(n))

    # ---- once-per-cloud rows ---------------------------------------------------------
    def _flavor(self, vcpus: int, memory_mb: int, root_gb: int) -> dict:
        name = "m1.small" if (vcpus, memory_mb, root_gb) == (1, 2048, 20) else \
            f"np.{vcpus}c{memory_mb}m{root_gb}g"
        flavor = dict(name=name, flavorid=name, vcpus=vcpus, memory_mb=memory_mb, root_gb=root_gb,
                      ephemeral_gb=0, swap=0, vcpu_weight=0, rxtx_factor=1.0, disabled=False,
                      is_public=True)
        db, table = (self.api, "flavors") if self.api is not None else (self.cell, "instance_types")
        with db.engine.begin() as conn:
            extra = {} if db is self.api else {"deleted": 0}
            flavor["id"] = db.ensure(conn, table, {"flavorid": name, **extra},
                                     **{k: v for k, v in flavor.items() if k != "flavorid"},
                                     created_at=self.now)
        return flavor

    def _host(self, host: str) -> dict:
        """services + compute_nodes (+ placement provider and inventories) for a compute host."""
        if host in self._hosts:
            return self._hosts[host]
        index = len(self._hosts) + 1
        info = {"host_ip": f"192.0.2.{100 + index}", "uuid": self._uuid()}
        sizes = {0: 32, 1: 131072, 2: 1000}
        with self.cell.engine.begin() as conn:
            service_id = self.cell.ensure(
                conn, "services", {"host": host, "binary": "nova-compute", "deleted": 0},
                topic="compute", report_count=42, disabled=False, forced_down=False, version=66,
                uuid=self._uuid(), created_at=self.now, updated_at=self.now, last_seen_up=self.now)
            cn = self.cell.t("compute_nodes")
            row = conn.execute(sa.select(cn.c.id, cn.c.uuid, cn.c.host_ip).where(
                cn.c.host == host, cn.c.deleted == 0)).first()
            if row is None:
                cpu = {"arch": "x86_64", "model": "EPYC", "vendor": "AMD",
                       "topology": {"cells": 2, "sockets": 1, "cores": 8, "threads": 2}}
                row = (self.cell.insert(
                    conn, "compute_nodes", created_at=self.now, updated_at=self.now, deleted=0,
                    service_id=service_id, vcpus=sizes[0], memory_mb=sizes[1], local_gb=sizes[2],
                    vcpus_used=0, memory_mb_used=512, local_gb_used=0, hypervisor_type="QEMU",
                    hypervisor_version=8002000, cpu_info=json.dumps(cpu), free_ram_mb=sizes[1],
                    free_disk_gb=sizes[2], disk_available_least=sizes[2], current_workload=0,
                    running_vms=0, hypervisor_hostname=host, host=host, host_ip=info["host_ip"],
                    supported_instances='[["x86_64", "qemu", "hvm"]]', pci_stats="{}",
                    metrics="[]", stats="{}", extra_resources=None, numa_topology=None,
                    ram_allocation_ratio=1.0, cpu_allocation_ratio=4.0, disk_allocation_ratio=1.0,
                    uuid=info["uuid"], mapped=1), info["uuid"], info["host_ip"])
            info.update(compute_node_id=row[0], uuid=row[1], host_ip=row[2])
            info["rp_cell"] = self._provider(self.cell, conn, host, info["uuid"], sizes)
            info["pool_id"] = self.cell.ensure(
                conn, "console_pools", {"host": "console-1", "console_type": "novnc",
                                        "compute_host": host, "deleted": 0},
                created_at=self.now, address=info["host_ip"], username="console",
                password=self._hex(16), public_hostname="console.example.test")
        if self.api is not None:
            with self.api.engine.begin() as conn:
                self.api.ensure(conn, "host_mappings", {"host": host}, cell_id=self._cell_id,
                                created_at=self.now)
                info["rp_api"] = self._provider(self.api, conn, host, info["uuid"], sizes)
        self._hosts[host] = info
        return info

    def _provider(self, db: _Db, conn, host: str, rp_uuid: str, sizes: dict) -> int | None:
        if not db.has("resource_providers"):
            return None
        rp = db.ensure(conn, "resource_providers", {"uuid": rp_uuid}, name=host, generation=1,
                       can_host=0, created_at=self.now)
        t = db.t("resource_providers")
        if "root_provider_id" in t.c:
            conn.execute(t.update().where(t.c.id == rp, t.c.root_provider_id.is_(None))
                         .values(root_provider_id=rp))
        for rc, total in sizes.items():
            db.ensure(conn, "inventories", {"resource_provider_id": rp, "resource_class_id": rc},
                      total=total, reserved=512 if rc == 1 else 0, min_unit=1, max_unit=total,
                      step_size=1, allocation_ratio={0: 4.0, 1: 1.0, 2: 1.0}[rc],
                      created_at=self.now)
        return rp

    def _project(self, project_id: str, user_id: str) -> dict:
        """Security group "default", a server group and quota hard limits, once per project."""
        ids = {}
        with self.cell.engine.begin() as conn:
            ids["secgroup"] = self.cell.ensure(
                conn, "security_groups",
                {"project_id": project_id, "name": "default", "deleted": 0},
                description="default", user_id=user_id, created_at=self.now)
            ids["group"] = self.cell.ensure(
                conn, "instance_groups", {"project_id": project_id, "name": "np-anti-affinity",
                                          "deleted": 0},
                uuid=self._uuid(), user_id=user_id, created_at=self.now)
            if self.api is None:
                self._limits(self.cell, conn, project_id, {"deleted": 0})
        if self.api is not None:
            with self.api.engine.begin() as conn:
                ids["api_group"] = self.api.ensure(
                    conn, "instance_groups", {"project_id": project_id, "name": "np-anti-affinity"},
                    uuid=self._uuid(), user_id=user_id, created_at=self.now)
                self._limits(self.api, conn, project_id, {})
                ids["project"] = self.api.ensure(conn, "projects", {"external_id": project_id},
                                                 created_at=self.now)
                ids["user"] = self.api.ensure(conn, "users", {"external_id": user_id},
                                              created_at=self.now)
        return ids

    def _limits(self, db: _Db, conn, project_id: str, extra: dict) -> None:
        for resource, limit in (("instances", 20), ("cores", 40), ("ram", 102400)):
            db.ensure(conn, "quotas", {"project_id": project_id, "resource": resource, **extra},
                      hard_limit=limit, created_at=self.now)

    def _bump_quota(self, db: _Db, conn, project_id, user_id, deltas: dict) -> None:
        """Legacy `quota_usages`: create the rows on first use, then add to in_use."""
        t = db.t("quota_usages")
        extra = {"deleted": 0} if "deleted" in t.c else {}
        for resource, delta in deltas.items():
            row_id = db.ensure(conn, "quota_usages", {"project_id": project_id, "user_id": user_id,
                                                      "resource": resource, **extra},
                               in_use=0, reserved=0, until_refresh=None, created_at=self.now)
            conn.execute(t.update().where(t.c.id == row_id)
                         .values(in_use=t.c.in_use + delta, updated_at=self.now))

    # ---- one instance ----------------------------------------------------------------
    def add_instance(self, *, uuid: str | None = None, name: str | None = None,
                     vm_state: str = "active", task_state: str | None = None,
                     power_state: int | None = None, host=_AUTO, project_id: str | None = None,
                     user_id: str | None = None, vcpus: int = 1, memory_mb: int = 2048,
                     root_gb: int = 20, fault: bool = False, volumes=(), vifs=("ovs-hybrid",),
                     console_tokens: int = 1, mapped: bool = True, build_request: bool = False,
                     shelved_image_id: str | None = None, legacy_quota: bool = False,
                     deleted: bool = False) -> dict:
        """Create one instance with rows in every instance-referencing table; return its facts.

        `host` defaults to "compute-1", or None when shelved-offloaded; an instance without a
        host gets no allocations, PCI device, consoles or console tokens, as in Nova.
        """
        if host is _AUTO:
            host = None if vm_state == "shelved_offloaded" else "compute-1"
        uuid = uuid or self._uuid()
        if vm_state.startswith("shelved") and shelved_image_id is None:
            shelved_image_id = self._uuid()
        created = self.now - dt.timedelta(days=self.rng.randint(2, 90),
                                          seconds=self.rng.randint(0, 86399))
        vm = SimpleNamespace(
            uuid=uuid, name=name or f"vm-{uuid[:8]}", vm_state=vm_state, task_state=task_state,
            power_state=_POWER.get(vm_state, 0) if power_state is None else power_state,
            host=host, home=host or "compute-1", on_host=host is not None, deleted=deleted,
            project_id=project_id or DEFAULT_PROJECT, user_id=user_id or DEFAULT_USER,
            vcpus=vcpus, memory_mb=memory_mb, root_gb=root_gb, created=created,
            launched=created + dt.timedelta(seconds=self.rng.randint(20, 90)),
            image_id=self._uuid(), shelved_image_id=shelved_image_id,
            vifs=[blobs.vif_spec(v) for v in vifs], volumes=[blobs.volume_spec(v) for v in volumes])
        vm.flavor = self._flavor(vcpus, memory_mb, root_gb)
        vm.project = self._project(vm.project_id, vm.user_id)
        vm.hostinfo = self._host(vm.home)
        vm.ports = [self._uuid() for _ in vm.vifs]
        vm.volume_ids = [self._uuid() for _ in vm.volumes]
        vm.usage = {0: vcpus, 1: memory_mb, 2: root_gb}  # VCPU, MEMORY_MB, DISK_GB
        vm.quota = {"instances": 1, "cores": vcpus, "ram": memory_mb} if legacy_quota else None
        with self.cell.engine.begin() as conn:
            self._instance_row(conn, vm)
            iu = dict(instance_uuid=uuid, created_at=vm.launched, updated_at=self.now, deleted=0)
            self._extra_rows(conn, vm, iu, fault)
            self._volume_rows(conn, vm, iu)
            self._network_rows(conn, vm, iu)
            self._history_rows(conn, vm, iu)
            if vm.on_host:
                self._host_rows(conn, vm, iu, console_tokens)
            if vm.quota and not deleted and self.api is None and self.cell.has("quota_usages"):
                self._bump_quota(self.cell, conn, vm.project_id, vm.user_id, vm.quota)
            if deleted:
                self._destroy(conn, uuid)
        if self.api is not None:
            self._api_rows(vm, mapped, build_request)
        return {"uuid": uuid, "id": vm.id, "name": vm.name,
                "instance_name": f"instance-{vm.id:08x}",
                "project_id": vm.project_id, "user_id": vm.user_id, "host": host, "node": host,
                "vm_state": "deleted" if deleted else vm_state, "task_state": task_state,
                "ports": vm.ports, "volumes": vm.volume_ids, "vcpus": vcpus,
                "memory_mb": memory_mb, "root_gb": root_gb, "image_id": vm.image_id,
                "shelved_image_id": shelved_image_id, "cell_uuid": self.cell_uuid}

    def _instance_row(self, conn, vm) -> None:
        user_data = base64.b64encode(b"#cloud-config\npackages: [nginx]\n").decode()
        vm.id = self.cell.insert(
            conn, "instances", created_at=vm.created, updated_at=self.now, deleted=0,
            uuid=vm.uuid, display_name=vm.name, display_description=vm.name,
            hostname=vm.name.lower().replace("_", "-"), host=vm.host, node=vm.host,
            launched_on=vm.home, project_id=vm.project_id, user_id=vm.user_id,
            vm_state=vm.vm_state, task_state=vm.task_state, power_state=vm.power_state,
            vcpus=vm.vcpus, memory_mb=vm.memory_mb, root_gb=vm.root_gb, ephemeral_gb=0,
            launched_at=vm.launched, instance_type_id=vm.flavor["id"], image_ref=vm.image_id,
            kernel_id="", ramdisk_id="", launch_index=0, key_name="np-key",
            key_data=blobs.PUBLIC_KEY, user_data=user_data, reservation_id=f"r-{self._hex(8)}",
            availability_zone="nova", locked=False, cleaned=0, hidden=False,
            architecture="x86_64", vm_mode="hvm", root_device_name="/dev/vda", config_drive="",
            progress=0, auto_disk_config=False, shutdown_terminate=False, disable_terminate=False,
            compute_id=vm.hostinfo["compute_node_id"] if vm.on_host else None)

    def _extra_rows(self, conn, vm, iu: dict, fault: bool) -> None:
        """instance_extra, metadata, system metadata, fault, tags, group, EC2 id, share."""
        c = self.cell
        vm.pci_request = self._uuid()
        c.insert(conn, "instance_extra", **iu,
                 flavor=json.dumps(blobs.flavor_blob(vm.flavor, vm.created)),
                 pci_requests=json.dumps(blobs.pci_requests(vm.pci_request) if vm.on_host else []),
                 keypairs=json.dumps(blobs.keypairs(vm.user_id, vm.created)))
        for key, value in (("role", "web"), ("owner", "team-a")):
            c.insert(conn, "instance_metadata", key=key, value=value, **iu)
        sysmeta = blobs.system_metadata(vm.image_id, vm.flavor, vm.shelved_image_id, vm.home,
                                        self.now)
        for key, value in sysmeta.items():
            c.insert(conn, "instance_system_metadata", key=key, value=value, **iu)
        if fault:
            c.insert(conn, "instance_faults", code=500, host=vm.home,
                     message="Build of instance aborted: Volume attach failed",
                     details='Traceback (most recent call last):\n  File "nova/compute/'
                             'manager.py", line 2531, in _build_resources\n'
                             'nova.exception.VolumeNotCreated: timed out\n', **iu)
        for tag in ("np-sandbox", f"tier-{vm.name.split('-')[0]}"):
            c.insert(conn, "tags", resource_id=vm.uuid, tag=tag)
        c.insert(conn, "security_group_instance_association",
                 security_group_id=vm.project["secgroup"], **iu)
        c.insert(conn, "instance_group_member", instance_id=vm.uuid,
                 group_id=vm.project["group"], created_at=vm.launched, deleted=0)
        c.insert(conn, "instance_id_mappings", uuid=vm.uuid, created_at=vm.created, deleted=0)
        c.insert(conn, "share_mapping", uuid=self._uuid(), instance_uuid=vm.uuid,
                 share_id=self._uuid(), status="active", tag=f"share-{vm.uuid[:8]}",
                 export_location=f"192.0.2.30:/shares/share-{vm.uuid[:8]}", share_proto="NFS",
                 created_at=vm.launched)

    def _volume_rows(self, conn, vm, iu: dict) -> None:
        """Root disk BDM, then one BDM (with connection_info) and usage row per volume."""
        c = self.cell
        c.insert(conn, "block_device_mapping", uuid=self._uuid(), source_type="image",
                 destination_type="local", boot_index=0, device_name="/dev/vda",
                 image_id=vm.image_id, delete_on_termination=True, device_type="disk",
                 disk_bus="virtio", no_device=False, **iu)
        for n, (spec, vol) in enumerate(zip(vm.volumes, vm.volume_ids)):
            info = blobs.connection_info(spec["kind"], vol, n, self._hex(16), self._uuid())
            c.insert(conn, "block_device_mapping", uuid=self._uuid(), source_type="volume",
                     destination_type="volume", volume_id=vol, volume_size=10,
                     device_name=f"/dev/vd{chr(ord('b') + n)}", boot_index=None,
                     delete_on_termination=spec["delete_on_termination"],
                     connection_info=json.dumps(info), attachment_id=self._uuid(),
                     device_type="disk", disk_bus="virtio", no_device=False, **iu)
            c.insert(conn, "volume_usage_cache", volume_id=vol, instance_uuid=vm.uuid,
                     project_id=vm.project_id, user_id=vm.user_id, availability_zone="nova",
                     tot_last_refreshed=self.now, tot_reads=1200, tot_read_bytes=48 << 20,
                     tot_writes=800, tot_write_bytes=16 << 20, curr_last_refreshed=self.now,
                     curr_reads=12, curr_read_bytes=1 << 20, curr_writes=8,
                     curr_write_bytes=1 << 19, created_at=self.now, deleted=0)

    def _network_rows(self, conn, vm, iu: dict) -> None:
        """network_info cache, a virtual_interfaces and bw_usage_cache row per VIF, a fixed IP."""
        c = self.cell
        nets = [self._uuid() for _ in vm.vifs]
        nw_info = [blobs.network_vif(spec, port, net, vm.id, n, vm.project_id)
                   for n, (spec, port, net) in enumerate(zip(vm.vifs, vm.ports, nets))]
        c.insert(conn, "instance_info_caches", network_info=json.dumps(nw_info), **iu)
        first = None
        for vif in nw_info:
            vif_id = c.insert(conn, "virtual_interfaces", address=vif["address"], uuid=vif["id"],
                              network_id=self._network_id, tag=None, **iu)
            first = first or (vif_id, vif["network"]["subnets"][0]["ips"][0]["address"])
            c.insert(conn, "bw_usage_cache", uuid=vm.uuid, mac=vif["address"],
                     start_period=self.now.replace(minute=0, second=0), last_refreshed=self.now,
                     bw_in=734003200, bw_out=52428800, last_ctr_in=9876, last_ctr_out=5432,
                     created_at=self.now, deleted=0)
        if first:
            c.insert(conn, "fixed_ips", address=first[1], network_id=self._network_id,
                     allocated=True, leased=True, reserved=False, virtual_interface_id=first[0],
                     host=vm.host, **iu)

    def _history_rows(self, conn, vm, iu: dict) -> None:
        """A failed migration and the create/delete actions with one event each."""
        c = self.cell
        c.insert(conn, "migrations", uuid=self._uuid(), status="error", source_compute=vm.home,
                 source_node=vm.home, dest_compute="compute-9", dest_node="compute-9",
                 dest_host="192.0.2.199", migration_type="migration",
                 old_instance_type_id=vm.flavor["id"], new_instance_type_id=vm.flavor["id"],
                 hidden=False, cross_cell_move=False, user_id=vm.user_id,
                 project_id=vm.project_id, **iu)
        failed = vm.vm_state == "error" or vm.task_state is not None
        for action, event, start, result in (
                ("create", "compute__do_build_and_run_instance", vm.created, "Success"),
                ("delete", "compute_terminate_instance", self.now - dt.timedelta(minutes=5),
                 "Error" if failed else "Success")):
            action_id = c.insert(conn, "instance_actions", action=action, **iu,
                                 request_id=f"req-{self._uuid()}", user_id=vm.user_id,
                                 project_id=vm.project_id, start_time=start,
                                 finish_time=start + dt.timedelta(seconds=31), message=None)
            c.insert(conn, "instance_actions_events", action_id=action_id, event=event,
                     start_time=start, finish_time=start + dt.timedelta(seconds=30),
                     result=result, host=vm.home, details=None, traceback=None,
                     created_at=start, deleted=0)

    def _host_rows(self, conn, vm, iu: dict, console_tokens: int) -> None:
        """Only an instance on a host has these: console tokens, a PCI VF, a console, allocations."""
        c, info = self.cell, vm.hostinfo
        expires = calendar.timegm(self.now.timetuple()) + 600
        for n in range(console_tokens):
            token_hash = hashlib.sha256(self._uuid().encode()).hexdigest()
            c.insert(conn, "console_auth_tokens", token_hash=token_hash, console_type="novnc",
                     host=info["host_ip"], port=5900 + n, internal_access_path=None,
                     instance_uuid=vm.uuid, expires=expires, created_at=self.now,
                     access_url_base="http://127.0.0.1:6080/vnc_lite.html")
        n = vm.id
        address = f"0000:{(0x81 + n // 256) % 256:02x}:{(n // 8) % 32:02x}.{n % 8}"
        c.insert(conn, "pci_devices", compute_node_id=info["compute_node_id"], address=address,
                 vendor_id="8086", product_id="154c", dev_type="type-VF", label="label_8086_154c",
                 dev_id="pci_" + address.replace(":", "_").replace(".", "_"), status="allocated",
                 instance_uuid=vm.uuid, request_id=vm.pci_request, numa_node=1,
                 parent_addr=address[:-1] + "0", uuid=self._uuid(), extra_info="{}",
                 created_at=self.now, deleted=0)
        c.insert(conn, "consoles", instance_name=f"instance-{vm.id:08x}", password=self._hex(12),
                 port=5900, pool_id=info["pool_id"], **iu)
        if not vm.deleted and info["rp_cell"] is not None:
            for rc, used in vm.usage.items():
                c.insert(conn, "allocations", resource_provider_id=info["rp_cell"],
                         consumer_id=vm.uuid, resource_class_id=rc, used=used)

    def _api_rows(self, vm, mapped: bool, build_request: bool) -> None:
        """Mapping, request spec, build request, server group, placement and legacy quota."""
        a, now = self.api, self.now
        with a.engine.begin() as conn:
            if mapped:
                a.insert(conn, "instance_mappings", instance_uuid=vm.uuid, cell_id=self._cell_id,
                         project_id=vm.project_id, user_id=vm.user_id,
                         queued_for_delete=vm.deleted, created_at=now)
            spec = blobs.request_spec(vm.uuid, vm.project_id, vm.user_id, vm.flavor, vm.image_id)
            a.insert(conn, "request_specs", instance_uuid=vm.uuid, spec=json.dumps(spec),
                     created_at=now)
            if build_request:
                instance = blobs.build_request_instance(vm.uuid, vm.name, vm.project_id,
                                                        vm.user_id, vm.flavor)
                a.insert(conn, "build_requests", instance_uuid=vm.uuid, project_id=vm.project_id,
                         instance=json.dumps(instance), created_at=now,
                         block_device_mappings=json.dumps(
                             blobs.object_list("BlockDeviceMappingList")),
                         tags=json.dumps(blobs.object_list("TagList")))
            a.insert(conn, "instance_group_member", instance_uuid=vm.uuid,
                     group_id=vm.project["api_group"], created_at=now)
            rp = vm.hostinfo.get("rp_api")
            if vm.on_host and not vm.deleted and rp is not None:
                a.insert(conn, "consumers", uuid=vm.uuid, project_id=vm.project["project"],
                         user_id=vm.project["user"], generation=1, created_at=now)
                for rc, used in vm.usage.items():
                    a.insert(conn, "allocations", resource_provider_id=rp, consumer_id=vm.uuid,
                             resource_class_id=rc, used=used, created_at=now)
            if vm.quota and not vm.deleted and a.has("quota_usages"):
                self._bump_quota(a, conn, vm.project_id, vm.user_id, vm.quota)

    def _destroy(self, conn, uuid: str) -> None:
        """What Nova's instance_destroy leaves: rows soft-deleted (deleted=id) or hard-deleted."""
        c = self.cell
        for table, column in _SOFT_DELETED.items():
            if c.has(table):
                t = c.t(table)
                conn.execute(t.update().where(t.c[column] == uuid)
                             .values(deleted=t.c.id, deleted_at=self.now))
        t = c.t("instances")
        conn.execute(t.update().where(t.c.uuid == uuid).values(
            vm_state="deleted", task_state=None, power_state=0, terminated_at=self.now))
        for table, column in _HARD_DELETED.items():
            if c.has(table):
                t = c.t(table)
                conn.execute(t.delete().where(t.c[column] == uuid))
