"""Settings: flags > environment > novapurge.toml > an existing nova.conf (DESIGN §6).

Flags and environment variables are merged by click (each option names its variable); this
module adds the TOML file and nova.conf underneath. Passwords are never printed: `describe()`
masks them.
"""

import configparser
import dataclasses
import pathlib
import tomllib

import platformdirs

from novapurge.drivers.novadb import safe_url
from novapurge.errors import BadInput

SEARCH_PATH = (pathlib.Path("novapurge.toml"),
               pathlib.Path("~/.config/novapurge/novapurge.toml").expanduser(),
               pathlib.Path("/etc/novapurge/novapurge.toml"))


def default_journal_url() -> str:
    state = pathlib.Path(platformdirs.user_state_dir("novapurge"))
    return f"sqlite:///{state / 'journal.sqlite'}"


@dataclasses.dataclass
class Settings:
    cell_url: str | None = None
    api_url: str | None = None
    cell_overrides: dict = dataclasses.field(default_factory=dict)
    journal_url: str = dataclasses.field(default_factory=default_journal_url)
    operator: str | None = None
    ticket: str | None = None
    memcached_servers: list = dataclasses.field(default_factory=list)
    instances_path: str = "/var/lib/nova/instances"
    hosts: dict = dataclasses.field(default_factory=dict)   # name -> {address, port, user, ...}
    ssh: dict = dataclasses.field(default_factory=dict)     # drivers.ssh.SshOptions fields
    os_cloud: str | None = None        # clouds.yaml entry (OS_CLOUD)
    service_cloud: str | None = None   # clouds.yaml entry of Nova's service user (service token)
    sandbox: str | None = None         # a sandbox dir: simulated hosts and cloud (demo, tests)
    jobboard: dict = dataclasses.field(default_factory=dict)  # url, namespace, claim_expiry
    sources: list = dataclasses.field(default_factory=list)

    def describe(self) -> dict:
        """The settings as JSON, passwords masked."""
        return {"cell_url": self.cell_url and safe_url(self.cell_url),
                "api_url": self.api_url and safe_url(self.api_url),
                "cell_overrides": {k: safe_url(v) for k, v in self.cell_overrides.items()},
                "journal_url": safe_url(self.journal_url), "operator": self.operator,
                "ticket": self.ticket, "memcached_servers": self.memcached_servers,
                "instances_path": self.instances_path, "hosts": self.hosts, "ssh": self.ssh,
                "os_cloud": self.os_cloud, "service_cloud": self.service_cloud,
                "sandbox": self.sandbox,
                "jobboard": {k: safe_url(v) if k == "url" else v
                             for k, v in self.jobboard.items()},
                "sources": self.sources}


def read_nova_conf(path) -> dict:
    """[database]/[api_database] connections, memcached_servers and instances_path of a nova.conf."""
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle)
    except OSError as error:
        raise BadInput(f"cannot read nova.conf {path}: {error.strerror}") from None
    except configparser.Error as error:
        raise BadInput(f"{path} is not a nova.conf: {error.message.splitlines()[0]}") from None
    found = {"cell_url": parser.get("database", "connection", fallback=None),
             "api_url": parser.get("api_database", "connection", fallback=None),
             "instances_path": parser.get("DEFAULT", "instances_path", fallback=None)}
    servers = (parser.get("DEFAULT", "memcached_servers", fallback=None)
               or parser.get("cache", "memcache_servers", fallback=None))
    if servers:
        found["memcached_servers"] = [s.strip() for s in servers.split(",") if s.strip()]
    return {k: v for k, v in found.items() if v}


def read_toml(path) -> dict:
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as error:
        raise BadInput(f"cannot read config {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise BadInput(f"{path}: invalid TOML: {error}") from None
    found = {"nova_conf": data.get("nova", {}).get("conf"),
             "cell_url": data.get("database", {}).get("connection"),
             "api_url": data.get("api_database", {}).get("connection"),
             "cell_overrides": data.get("cells") or None,
             "journal_url": data.get("journal", {}).get("url"),
             "operator": data.get("audit", {}).get("operator"),
             "ticket": data.get("audit", {}).get("ticket"),
             "memcached_servers": data.get("memcache", {}).get("servers"),
             "instances_path": data.get("hosts", {}).get("instances_path"),
             "hosts": {k: v for k, v in data.get("hosts", {}).items() if isinstance(v, dict)},
             "ssh": data.get("ssh"),
             "os_cloud": data.get("cloud", {}).get("name"),
             "service_cloud": data.get("cloud", {}).get("service"),
             "sandbox": data.get("sandbox", {}).get("dir"),
             "jobboard": data.get("jobboard")}
    return {k: v for k, v in found.items() if v}


def load(config=None, nova_conf=None, **flags) -> Settings:
    """Settings from the layers; `flags` are click's values (flag or environment), None if unset."""
    settings, sources = Settings(), []
    toml_path = config or next((p for p in SEARCH_PATH if p.is_file()), None)
    file_values = read_toml(toml_path) if toml_path else {}
    if toml_path:
        sources.append(f"config:{toml_path}")
    nova_conf = nova_conf or file_values.pop("nova_conf", None)
    file_values.pop("nova_conf", None)
    layers = []
    if nova_conf:
        layers.append(read_nova_conf(nova_conf))
        sources.append(f"nova.conf:{nova_conf}")
    layers += [file_values, {k: v for k, v in flags.items() if v is not None}]
    for layer in layers:
        for key, value in layer.items():
            setattr(settings, key, value)
    settings.sources = sources
    return settings
