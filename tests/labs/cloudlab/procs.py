"""Processes of the lab: started in their own session, logged to files, stopped by pid.

Each service runs as the leader of a new session, so its process group holds everything it forks
(gunicorn workers, oslo.service children); stopping signals that group by the leader's pid, TERM
first and KILL after a timeout (cinder-scheduler may ignore TERM once RabbitMQ is gone). A pid is
only signalled while its start time still matches the one recorded, so a reused pid is never hit.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path


class LabError(RuntimeError):
    """The lab could not be brought to the state asked for; the message names the log to read."""


def start_time(pid: int) -> int | None:
    """The kernel's start time of a live (not zombie) process, None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


def is_running(record: dict) -> bool:
    """True while the process of `record` ({"pid", "start"}) is alive and is still that process."""
    return start_time(record["pid"]) == record["start"]


def tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def spawn(argv: list, env: dict, log: Path, cwd: Path) -> tuple[subprocess.Popen, dict]:
    """Start `argv` as a session leader with stdout and stderr appended to `log`.

    Returns the Popen (to reap it) and its record {"pid", "start"} for the state file.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen([str(a) for a in argv], env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    started = None
    for _ in range(100):
        started = start_time(proc.pid)
        if started is not None or proc.poll() is not None:
            break
        time.sleep(0.01)
    return proc, {"pid": proc.pid, "start": started}


class Running:
    """The setup commands under way, so that a failing start can kill them all at once (and
    kills any started after that at once)."""

    def __init__(self):
        self._procs: set = set()
        self._lock = threading.Lock()
        self.cancelled = False

    def add(self, proc: subprocess.Popen) -> None:
        with self._lock:
            if self.cancelled:
                proc.kill()
            else:
                self._procs.add(proc)

    def discard(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.discard(proc)

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            for proc in self._procs:
                proc.kill()


def run(argv: list, env: dict, log: Path, timeout: float = 600,
        running: Running | None = None) -> None:
    """Run one setup command to completion, output appended to `log`; LabError when it fails."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        out.write(f"$ {' '.join(map(str, argv[:3]))} ...\n".encode())
        out.flush()
        proc = subprocess.Popen([str(a) for a in argv], env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT)
        if running is not None:
            running.add(proc)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise LabError(f"{Path(str(argv[0])).name} {argv[1:3]} took over {timeout:.0f} s; "
                           f"{log}:\n{tail(log)}") from None
        finally:
            if running is not None:
                running.discard(proc)
    if proc.returncode:
        raise LabError(f"{Path(str(argv[0])).name} {argv[1:3]} failed (rc {proc.returncode}); "
                       f"{log}:\n{tail(log)}")


def stop(records: dict, timeout: float = 5.0) -> None:
    """TERM the process group of every running record, then KILL what is left after `timeout`."""
    found = [r for r in records.values() if r.get("start") and is_running(r)]
    for record in found:
        _signal_group(record["pid"], signal.SIGTERM)
    deadline = time.monotonic() + timeout
    live = found
    while live and time.monotonic() < deadline:
        time.sleep(0.1)
        live = [r for r in live if is_running(r)]
    for record in found:
        # KILL the leaders left and any worker that outlived its leader; while a group has
        # members the kernel does not hand its id out as a new pid
        _signal_group(record["pid"], signal.SIGKILL)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def wait_http(url: str, record: dict, log: Path, timeout: float) -> None:
    """Wait until `url` gives any HTTP answer; LabError if the process dies or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=5).close()
            return
        except urllib.error.HTTPError:
            return                       # an answer (300, 401, ...): the API is serving
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if not is_running(record):
            raise LabError(f"{log.stem} exited before answering on {url}; {log}:\n{tail(log)}")
        if time.monotonic() > deadline:
            raise LabError(f"{log.stem} did not answer on {url} in {timeout:.0f} s; "
                           f"{log}:\n{tail(log)}")
        time.sleep(0.25)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0
