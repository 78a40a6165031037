"""Real memcached servers on loopback, standing for the controllers of a legacy cloud.

    with memcached_servers(2) as lab:
        lab.servers        # ["127.0.0.1:PORT", ...]
        lab.stop(0)        # that controller goes down
"""

import contextlib
import os
import socket
import subprocess
import time

MEMCACHED = "/usr/bin/memcached"
START_TIMEOUT = 10.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_listening(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"memcached on port {port} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise RuntimeError(f"memcached on port {port} did not listen within {START_TIMEOUT}s")


class MemcachedLab:
    """Started memcached processes, one per controller."""

    def __init__(self):
        self._procs = []
        self.servers = []

    def start(self) -> str:
        port = _free_port()
        argv = [MEMCACHED, "-U", "0", "-l", "127.0.0.1", "-p", str(port), "-m", "16"]
        if os.geteuid() == 0:
            argv += ["-u", "nobody"]  # memcached refuses to run as root
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        self._procs.append(proc)
        _wait_listening(port, proc)
        self.servers.append(f"127.0.0.1:{port}")
        return self.servers[-1]

    def stop(self, index: int) -> None:
        proc = self._procs[index]
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        for index in range(len(self._procs)):
            self.stop(index)


@contextlib.contextmanager
def memcached_servers(count: int):
    """`count` running memcached servers; all stopped on exit."""
    lab = MemcachedLab()
    try:
        for _ in range(count):
            lab.start()
        yield lab
    finally:
        lab.close()
