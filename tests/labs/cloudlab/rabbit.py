"""RabbitMQ for the lab (Nova's and Cinder's bus): Debian's package on 127.0.0.1:5672.

Stdlib only, so install.sh can run it before the project's venv matters. apt does not start
daemons on these machines, and a machine may run its own broker already: 5672 is checked first
and such a broker is used as it is (and left running). Otherwise the lab runs its own node in the
foreground as one of its processes, with its data, logs and Erlang cookie in the run dir and the
machine's RabbitMQ config ignored, so stopping the lab stops it (and the epmd it started).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

PORT = 5672
EPMD_PORT = 4369
SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")   # the script itself, not the wrapper
                                                         # (that one `su`s into a new session)


def listening() -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", PORT)) == 0


def ensure_installed() -> None:
    """Install Debian's rabbitmq-server when it is missing."""
    if SERVER.exists():
        return
    print("cloudlab: installing rabbitmq-server from Debian", file=sys.stderr, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    # policy-rc.d 101: the package must not start (and keep) a machine-wide broker
    policy = Path("/usr/sbin/policy-rc.d")
    made = not policy.exists()
    if made:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                        "rabbitmq-server"], check=True, env=env, stdout=subprocess.DEVNULL)
    finally:
        if made:
            policy.unlink()


def command(rundir: Path, base_env: dict) -> tuple[list, dict]:
    """(argv, env) of the lab's own broker, run in the foreground from `rundir`."""
    data = rundir / "data" / "rabbitmq"
    for name in ("mnesia", "home"):
        (data / name).mkdir(parents=True, exist_ok=True)
    (data / "rabbitmq-env.conf").write_text("")        # not the machine's /etc/rabbitmq
    (data / "enabled_plugins").write_text("[].\n")
    env = {k: v for k, v in base_env.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
    env.update({
        "HOME": str(data / "home"),                       # the Erlang cookie
        "RABBITMQ_CONF_ENV_FILE": str(data / "rabbitmq-env.conf"),
        "RABBITMQ_CONFIG_FILE": str(data / "rabbitmq"),  # absent: the defaults
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(data / "enabled_plugins"),
        "RABBITMQ_NODENAME": "cloudlab@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(PORT),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "RABBITMQ_MNESIA_BASE": str(data / "mnesia"),
        "RABBITMQ_LOG_BASE": str(rundir / "logs" / "rabbitmq"),
    })
    return [str(SERVER)], env


def epmd_pid() -> int | None:
    """The pid of the epmd daemon listening on 4369, if one runs."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and Path(argv[0].decode(errors="replace")).name == "epmd":
                return int(proc.name)
    return None


if __name__ == "__main__":
    ensure_installed()
