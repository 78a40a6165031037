"""A real sshd on 127.0.0.1 for the SSH driver: its own host key, client keys and config.

`sshd` starts once per session, on a free port, as `sshd -D` (so its pid is the listener's and the
per-connection processes are its children: `kill_sessions()` drops every open connection). When
/root/.bashrc exists, sshd runs in a private mount namespace with an empty file bound over it, as
the host harness does: `pyenv init` there adds about 35 ms to every command.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

SSHD = "/usr/sbin/sshd"
BASHRC = Path("/root/.bashrc")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def keygen(path: Path, kind: str = "ed25519") -> Path:
    """A new key pair without passphrase at `path` (and `path`.pub)."""
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", path.name, "-f", str(path)],
                   check=True, capture_output=True)
    return path


def fingerprint(public_key: Path) -> str:
    """OpenSSH's SHA256 fingerprint of a public key file."""
    out = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(public_key)], check=True,
                         capture_output=True, text=True).stdout
    return out.split()[1]


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@dataclasses.dataclass
class Sshd:
    directory: Path
    port: int
    host_key: Path
    client_key: Path       # ed25519
    ecdsa_key: Path        # also authorized
    process: subprocess.Popen

    @property
    def log(self) -> Path:
        return self.directory / "sshd.log"

    def known_hosts_line(self, public_key: Path | None = None) -> str:
        """The known_hosts line for this server (or for `public_key` under this server's name)."""
        kind, data = (public_key or self.host_key.with_suffix(".pub")).read_text().split()[:2]
        return f"[127.0.0.1]:{self.port} {kind} {data}\n"

    @property
    def host_fingerprint(self) -> str:
        return fingerprint(self.host_key.with_suffix(".pub"))

    def other_key(self, path: Path) -> Path:
        """A fresh ed25519 public key (to play a host whose key changed)."""
        return keygen(path).with_suffix(".pub")

    def logins(self) -> int:
        """Successful authentications so far (each SSH connection the driver opened)."""
        return self.log.read_text().count("Accepted publickey")

    def session_pids(self) -> list[int]:
        return _children(self.process.pid)

    def stop_sessions(self) -> list[int]:
        """Freeze every per-connection sshd process: the connection stays up but never answers."""
        pids = self.session_pids()
        assert pids, "no open SSH connection to freeze"
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        return pids

    def kill_sessions(self, pids: list[int] | None = None) -> None:
        """Kill the per-connection sshd processes (default: all) and wait until they are gone."""
        pids = pids or self.session_pids()
        assert pids, "no open SSH connection to drop"
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while any(Path(f"/proc/{pid}").exists() for pid in pids):
            assert time.monotonic() < deadline, f"sshd sessions {pids} did not exit"
            time.sleep(0.01)


def _wait_for_port(process: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + 10
    while True:
        if process.poll() is not None:
            pytest.fail(f"sshd exited with {process.returncode}: {log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail(f"sshd does not listen on {port}: {log.read_text()}")
            time.sleep(0.02)


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sshd")
    host_key = keygen(directory / "host_ed25519")
    client_key = keygen(directory / "client_ed25519")
    ecdsa_key = keygen(directory / "client_ecdsa", "ecdsa")
    (directory / "authorized_keys").write_text(
        client_key.with_suffix(".pub").read_text() + ecdsa_key.with_suffix(".pub").read_text())
    port = free_port()
    config = directory / "sshd_config"
    config.write_text(f"""\
Port {port}
ListenAddress 127.0.0.1
HostKey {host_key}
AuthorizedKeysFile {directory}/authorized_keys
PidFile {directory}/sshd.pid
StrictModes no
UsePAM no
UseDNS no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
MaxSessions 64
MaxStartups 64:30:128
""")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    log = directory / "sshd.log"
    command = [SSHD, "-D", "-f", str(config), "-E", str(log)]
    if BASHRC.exists():
        empty = directory / "empty"
        empty.write_text("")
        command = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                   f'mount --bind "$0" {BASHRC} && exec "$@"', str(empty), *command]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    server = Sshd(directory, port, host_key, client_key, ecdsa_key, process)
    try:
        _wait_for_port(process, port, log)
        yield server
    finally:
        sessions = server.session_pids()
        process.terminate()
        for pid in sessions:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
