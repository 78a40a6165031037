"""What a fresh lab is given: its databases, Keystone's catalog and service users, and the
network, flavor and image that servers boot from."""

from __future__ import annotations

import concurrent.futures
import uuid

import sqlalchemy as sa

from cloudlab import config

SERVICE_USERS = ("nova", "neutron", "glance", "cinder", "placement")
# (service type, name, URL) registered with public and internal endpoints
ENDPOINTS = (
    ("compute", "nova", "http://127.0.0.1:8774/v2.1"),
    ("network", "neutron", "http://127.0.0.1:9696"),
    ("image", "glance", "http://127.0.0.1:9292"),
    ("placement", "placement", "http://127.0.0.1:8778"),
    ("volumev3", "cinderv3", "http://127.0.0.1:8776/v3/%(project_id)s"),
    ("block-storage", "cinder", "http://127.0.0.1:8776/v3"),
)
NETWORK, SUBNET_CIDR = "cloudlab-net", "192.0.2.0/24"   # TEST-NET-1: never routed anywhere
FLAVOR, IMAGE = "cloudlab.tiny", "cloudlab-tiny"
CELL0_UUID = "00000000-0000-0000-0000-000000000000"   # nova.objects.CellMapping.CELL0_UUID


def recreate_databases() -> None:
    """Drop and create every lab database (`cl_*`) on the machine's MariaDB."""
    engine = sa.create_engine(config.MYSQL, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            for name in config.DATABASES:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{config.DB_PREFIX}{name}`")
                conn.exec_driver_sql(f"CREATE DATABASE `{config.DB_PREFIX}{name}` "
                                     "CHARACTER SET utf8mb4")
    finally:
        engine.dispose()


def map_cells() -> None:
    """The cell mappings `nova-manage cell_v2 map_cell0` and `create_cell --name cell1` make
    (two Nova processes less at start): cell0 with Nova's fixed uuid, cell1 on the bus."""
    engine = sa.create_engine(config.db_url("nova_api"), poolclass=sa.pool.NullPool)
    insert = sa.text("INSERT INTO cell_mappings (created_at, uuid, name, transport_url, "
                     "database_connection, disabled) VALUES (UTC_TIMESTAMP(), :uuid, :name, "
                     ":transport, :db, 0)")
    try:
        with engine.begin() as conn:
            conn.execute(insert, {"uuid": CELL0_UUID, "name": "cell0", "transport": "none:///",
                                  "db": config.db_url("nova_cell0")})
            conn.execute(insert, {"uuid": str(uuid.uuid4()), "name": "cell1",
                                  "transport": config.RABBIT, "db": config.db_url("nova_cell1")})
    finally:
        engine.dispose()


def create_catalog(conn, password: str) -> None:
    """Project `service`, the service users (roles admin and service), services and endpoints.

    `conn` is the admin's connection; keystone-manage bootstrap made the identity entries.
    The calls run a few at a time (Keystone serves four threads).
    """
    identity = conn.identity
    project = identity.create_project(name="service", domain_id="default")
    roles = [identity.find_role(name, ignore_missing=False) for name in ("admin", "service")]

    def user(name):
        created = identity.create_user(name=name, password=password, domain_id="default",
                                       default_project_id=project.id)
        for role in roles:
            identity.assign_project_role_to_user(project, created, role)

    def endpoints(service_type, name, url):
        service = identity.create_service(type=service_type, name=name, enabled=True)
        for interface in ("public", "internal"):
            identity.create_endpoint(service_id=service.id, interface=interface, url=url,
                                     region_id="RegionOne")

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        jobs = [pool.submit(user, name) for name in SERVICE_USERS]
        jobs += [pool.submit(endpoints, *entry) for entry in ENDPOINTS]
        for job in jobs:
            job.result()


def create_network(conn) -> str:
    """A vxlan tenant network with one subnet (no DHCP: no agent runs) in the admin project."""
    network = conn.network.create_network(name=NETWORK)
    conn.network.create_subnet(network_id=network.id, name=f"{NETWORK}-v4", ip_version=4,
                               cidr=SUBNET_CIDR, enable_dhcp=False)
    return network.id


def create_flavor(conn) -> str:
    return conn.compute.create_flavor(name=FLAVOR, ram=64, vcpus=1, disk=1).id


def create_image(conn) -> str:
    """A 1 KiB raw image: the fake hypervisor never reads it."""
    image = conn.image.create_image(name=IMAGE, disk_format="raw", container_format="bare",
                                    data=b"\0" * 1024, visibility="public", wait=True)
    return image.id
