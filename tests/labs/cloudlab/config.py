"""The lab's run dir and the service configs written into it from the templates in etc/.

Everything a lab writes lives under one run dir: `etc/` (configs), `data/` (keys, image and volume
stores, nova state_path, lock dirs), `logs/`, and `state.json` (see cloudlab.py).
"""

from __future__ import annotations

import base64
import secrets
import shutil
import string
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parent / "etc"
MYSQL = "mysql+pymysql://root@127.0.0.1:3306"
RABBIT = "rabbit://guest:guest@127.0.0.1:5672/"
DB_PREFIX = "cl_"
DATABASES = ("keystone", "placement", "neutron", "glance", "cinder", "nova_api", "nova_cell0",
             "nova_cell1")

# template -> where it goes under etc/
CONFIGS = {
    "keystone.conf": "keystone/keystone.conf",
    "placement.conf": "placement/placement.conf",
    "neutron.conf": "neutron/neutron.conf",
    "ml2_conf.ini": "neutron/plugins/ml2/ml2_conf.ini",
    "glance-api.conf": "glance/glance-api.conf",
    "cinder.conf": "cinder/cinder.conf",
    "nova.conf": "nova/nova.conf",
    "nova-cell0.conf": "nova/nova-cell0.conf",
}
# files shipped in <venv>/etc/<service>/ that the services read beside their config
SHIPPED = {
    "neutron": ("api-paste.ini",),
    "glance": ("glance-api-paste.ini",),
    "cinder": ("api-paste.ini", "resource_filters.json"),
    "nova": ("api-paste.ini",),
}
DATA_DIRS = ("keystone/fernet-keys", "keystone/credential-keys", "glance/images",
             "glance/staging", "glance/tasks", "cinder/coordination", "nova/instances", "neutron",
             "lock/keystone", "lock/placement", "lock/neutron", "lock/glance", "lock/cinder",
             "lock/nova")


def db_url(name: str) -> str:
    """The SQLAlchemy URL of lab database `name` ("nova_cell1" or "cl_nova_cell1")."""
    return f"{MYSQL}/{name if name.startswith(DB_PREFIX) else DB_PREFIX + name}"


def write(rundir: Path, venv: Path, password: str, host: str) -> None:
    """Render every config into `rundir`/etc and create the data dirs."""
    etc, data = rundir / "etc", rundir / "data"
    values = {"etc": etc, "data": data, "db": MYSQL, "rabbit": RABBIT, "password": password,
              "host": host}
    for template, target in CONFIGS.items():
        path = etc / target
        path.parent.mkdir(parents=True, exist_ok=True)
        text = string.Template((TEMPLATES / template).read_text()).substitute(values)
        path.write_text(text)
        path.chmod(0o600)                # holds the lab's password
    for service, names in SHIPPED.items():
        for name in names:
            shutil.copyfile(venv / "etc" / service / name, etc / service / name)
    for name in DATA_DIRS:
        (data / name).mkdir(parents=True, exist_ok=True)
    for name in ("fernet-keys", "credential-keys"):
        _write_keys(data / "keystone" / name)


def _write_keys(repository: Path) -> None:
    """What `keystone-manage fernet_setup` / `credential_setup` write: Fernet keys (32 random
    bytes, URL-safe base64), "0" the staged one and "1" the primary."""
    repository.chmod(0o700)
    for index in ("0", "1"):
        key = repository / index
        key.write_bytes(base64.urlsafe_b64encode(secrets.token_bytes(32)))
        key.chmod(0o600)
