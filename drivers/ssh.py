"""Commands on compute hosts: over SSH (one paramiko transport per host) or on this machine.

Every command is an argv list, validated and quoted here, so no caller ever builds a shell string.
One transport per host is opened lazily and shared by every thread, step and VM of a run; a
semaphore bounds the commands in flight on it (sshd's MaxSessions caps the channels of one
connection). Host keys are checked against known_hosts; unknown keys are refused unless the
operator asked for trust-on-first-use, and a changed key is always refused.

Round trips: a session channel costs sshd a fork and a shell start (about 45 ms a command), so
each channel runs `sh` once and then serves one batch of quoted command lines after another
(`run_batch`: several commands in one round trip, each with its own exit code and output; `run`
is a batch of one). A shell is pinged before each batch, so a dropped or frozen connection is
found, and replaced once, before any command is sent; a command given stdin runs on its own
`exec` channel. The remote login shell must be POSIX (sh, bash, dash).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import ipaddress
import logging
import os
import re
import secrets
import select
import shlex
import socket
import subprocess
import threading
import time

import paramiko

from novapurge import validate
from novapurge.errors import BadInput, HostUnreachable, NovapurgeError

LOG = logging.getLogger(__name__)

# Last commands kept per runner (argv, exit code, time; no output), for tests and benchmarks that
# look at what one purge ran; per host of a batch, so it stays short.
HISTORY = 200
SYSTEM_KNOWN_HOSTS = "/etc/ssh/ssh_known_hosts"
_CHUNK = 65536
# Longest wait on a channel's readiness pipe before its buffers are looked at again: paramiko
# signals stdout and stderr data through one pipe shared by both (an "or" pipe) and can miss a
# wakeup when both arrive while the other is being read, which left a batch's end marker unread
# until the command timeout (seen once under load: a revert failed after 120 s).
_RECHECK_S = 0.25
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME_RE = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?$")
_SECRET_NAME = re.compile(r"password|secret", re.IGNORECASE)
_KNOWN_HOSTS_LOCK = threading.Lock()          # one writer at a time for every known_hosts file


def _check_address(value: str) -> str:
    """A host name or IP address fit to connect to (never an option, a path or a user@host)."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if not _HOSTNAME_RE.match(value):
        raise BadInput(f"not a host name or IP address: {value!r} (configure the host's address)")
    return value


@dataclasses.dataclass(frozen=True)
class HostAddress:
    """How to reach one compute host; validated on creation."""

    name: str                   # Nova's host name (instances.host)
    address: str | None = None  # defaults to name
    port: int = 22
    user: str = "root"
    key_file: str | None = None
    runner: str = "ssh"         # "ssh" | "local" (run on this machine: we ARE the compute host)

    def __post_init__(self):
        validate.identifier(self.name, "host name")
        if self.runner not in ("ssh", "local"):
            raise BadInput(f"host {self.name}: runner must be 'ssh' or 'local', "
                           f"not {self.runner!r}")
        address = self.address or self.name
        object.__setattr__(self, "address", _check_address(address) if self.runner == "ssh"
                           else address)
        if not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise BadInput(f"host {self.name}: invalid SSH port {self.port!r}")
        validate.identifier(self.user, f"SSH user of host {self.name}")


@dataclasses.dataclass(frozen=True)
class SshOptions:
    """Settings shared by every host of a run."""

    known_hosts: str | None = None   # default ~/.ssh/known_hosts (/etc/ssh/ssh_known_hosts too)
    accept_new: bool = False         # trust-on-first-use: add the key and save it to known_hosts
    max_channels: int = 8            # commands in flight per host
    connect_timeout: float = 10.0
    command_timeout: float = 120.0

    @property
    def known_hosts_file(self) -> str:
        return self.known_hosts or os.path.expanduser("~/.ssh/known_hosts")


@dataclasses.dataclass(frozen=True)
class CommandResult:
    host: str
    argv: tuple[str, ...]
    rc: int
    stdout: str
    stderr: str
    seconds: float
    batch: int = 1          # commands sent in the same round trip (`seconds` is the batch's)

    def failed(self, ok_codes=(0,)) -> bool:
        return self.rc not in ok_codes


class CommandFailed(Exception):
    """A command ended with an exit code its caller did not accept."""

    def __init__(self, result: CommandResult, reason: str | None = None):
        self.result = result
        reason = reason or f"exited with rc {result.rc}"
        super().__init__(f"{result.host}: `{shown(result.argv)}` {reason}: "
                         f"{result.stderr[:200].strip()}")


class CommandTimeout(CommandFailed):
    """A command ran past its timeout; its channel (or process) was closed (rc -1)."""

    def __init__(self, result: CommandResult, timeout: float):
        super().__init__(result, f"timed out after {timeout:g} s")


class HostKeyUnknown(HostUnreachable):
    """The host's key is not in known_hosts, or it changed: nothing is sent to that host."""


class _TimedOut(Exception):
    """Internal: the deadline passed; carries the output read so far."""

    def __init__(self, stdout: str = "", stderr: str = ""):
        super().__init__("timed out")
        self.stdout, self.stderr = stdout, stderr


def quote_argv(argv) -> str:
    """The shell line for `argv`, after checking each element is text without NUL or line breaks."""
    return shlex.join(_checked(argv))


def _checked(argv) -> tuple:
    if isinstance(argv, (str, bytes)):
        raise BadInput(f"a command must be a list of arguments, not a string: {argv[:60]!r}")
    argv = tuple(argv)
    if not argv:
        raise BadInput("empty command")
    for arg in argv:
        if not isinstance(arg, str):
            raise BadInput(f"command argument is not text: {arg!r:.60}")
        if "\0" in arg or "\n" in arg or "\r" in arg:
            raise BadInput(f"NUL or line break in command argument {arg!r:.60}")
    return argv


def shown(argv) -> str:
    """argv quoted for logs and messages, secrets masked: restoring an iSCSI node record runs
    `iscsiadm ... -n node.session.auth.password -v VALUE` with a CHAP secret."""
    argv = list(argv)
    for i in range(2, len(argv) - 1):
        if argv[i] == "-v" and argv[i - 2] == "-n" and _SECRET_NAME.search(argv[i - 1]):
            argv[i + 1] = "***"
    return shlex.join(argv)


def _text(chunks) -> str:
    return b"".join(chunks).decode("utf-8", "replace")


class Runner:
    """Runs argv commands on one host: at most max_channels at once, each one logged and kept."""

    connections_opened = 0

    def __init__(self, name: str, options: SshOptions):
        self.name = name
        self.options = options
        self.peak_channels = 0
        self.round_trips = 0          # commands and batches sent (a batch is one)
        self.history = collections.deque(maxlen=HISTORY)
        self._slots = threading.BoundedSemaphore(options.max_channels)
        self._count_lock = threading.Lock()
        self._in_flight = 0

    @contextlib.contextmanager
    def _channel(self):
        """One of the host's max_channels slots for one round trip, counted for the figures."""
        with self._slots:
            with self._count_lock:
                self._in_flight += 1
                self.round_trips += 1
                self.peak_channels = max(self.peak_channels, self._in_flight)
            try:
                yield
            finally:
                with self._count_lock:
                    self._in_flight -= 1

    def run(self, argv, *, stdin: str | None = None, timeout: float | None = None,
            ok_codes=(0,)) -> CommandResult:
        """Run argv; CommandFailed unless its exit code is in ok_codes. stdin is never logged."""
        argv = _checked(argv)
        timeout = self.options.command_timeout if timeout is None else timeout
        with self._channel():
            started = time.monotonic()
            try:
                rc, stdout, stderr = self._execute(argv, stdin, timeout)
                timed_out = False
            except _TimedOut as partial:
                rc, stdout, stderr, timed_out = -1, partial.stdout, partial.stderr, True
        result = CommandResult(self.name, argv, rc, stdout, stderr,
                               round(time.monotonic() - started, 3))
        self._remember(result)
        LOG.debug("%s: %s -> rc %d in %.3f s%s", self.name, shown(argv), rc, result.seconds,
                  " (timed out)" if timed_out else "")
        if timed_out:
            raise CommandTimeout(result, timeout)
        if rc not in ok_codes:
            raise CommandFailed(result)
        return result

    def _remember(self, result: CommandResult) -> None:
        """Keep the command in the history without its output: a domain's XML or a listing of
        every device, kept for the last commands of every host of a batch, is memory spent on
        nothing the history is read for."""
        self.history.append(dataclasses.replace(result, stdout="", stderr=""))

    def run_batch(self, commands, *, stop: bool = True,
                  timeout: float | None = None) -> list[CommandResult]:
        """Run several commands in order, in one round trip where the runner can.

        `commands` is a list of `(argv, ok_codes)`. With `stop` (changes), the first command
        whose exit code is not in its ok_codes ends the batch and raises CommandFailed (the ones
        before it ran). Without `stop` (reads) every command runs and every result is returned,
        whatever its exit code; the caller judges them. Each command gets an empty stdin.
        """
        commands = [(_checked(argv), tuple(ok)) for argv, ok in commands]
        if not commands:
            return []
        timeout = self.options.command_timeout if timeout is None else timeout
        with self._channel():
            started = time.monotonic()
            try:
                answers = self._execute_batch(commands, stop, timeout)
                timed_out = None
            except _TimedOut as partial:
                answers, timed_out = [], partial
        seconds = round(time.monotonic() - started, 3)
        results = [CommandResult(self.name, argv, rc, out, err, seconds, len(commands))
                   for (argv, _), (rc, out, err) in zip(commands, answers)]
        for result in results:
            self._remember(result)
            LOG.debug("%s: %s -> rc %d (batch of %d in %.3f s)", self.name, shown(result.argv),
                      result.rc, len(commands), seconds)
        if timed_out is not None:
            argv = commands[len(results)][0] if len(results) < len(commands) else commands[-1][0]
            result = CommandResult(self.name, argv, -1, timed_out.stdout, timed_out.stderr,
                                   seconds, len(commands))
            self._remember(result)
            raise CommandTimeout(result, timeout)
        if stop:
            for result, (_, ok_codes) in zip(results, commands):
                if result.rc not in ok_codes:
                    raise CommandFailed(result)
        return results

    def _execute(self, argv: tuple, stdin: str | None, timeout: float) -> tuple[int, str, str]:
        raise NotImplementedError

    def _execute_batch(self, commands, stop: bool, timeout: float) -> list:
        """[(rc, stdout, stderr)] of the commands run; here one after the other."""
        deadline, answers = time.monotonic() + timeout, []
        for argv, ok_codes in commands:
            answer = self._execute(argv, None, max(0.001, deadline - time.monotonic()))
            answers.append(answer)
            if stop and answer[0] not in ok_codes:
                break
        return answers

    def close(self) -> None:
        """Release connections; a later run opens them again."""


class LocalRunner(Runner):
    """This machine is the compute host: argv runs directly, without a shell."""

    def _execute(self, argv, stdin, timeout):
        try:
            proc = subprocess.run(argv, input=(stdin or "").encode(), capture_output=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired as error:
            raise _TimedOut(_text([error.stdout or b""]), _text([error.stderr or b""])) from None
        except (FileNotFoundError, PermissionError) as error:  # the exit codes a shell gives
            rc = 127 if isinstance(error, FileNotFoundError) else 126
            return rc, "", f"{argv[0]}: {error.strerror}"
        return proc.returncode, _text([proc.stdout]), _text([proc.stderr])


class _KeyPolicy(paramiko.MissingHostKeyPolicy):
    """Decides about a host key known_hosts does not list (paramiko calls it during connect)."""

    def __init__(self, runner: SshRunner):
        self.runner = runner

    def missing_host_key(self, client, hostname, key):
        self.runner._missing_host_key(client, hostname, key)


class SshRunner(Runner):
    """One compute host over SSH: one transport, opened on first use and shared by all threads."""

    def __init__(self, address: HostAddress, options: SshOptions = SshOptions(), on_new_key=None):
        super().__init__(address.name, options)
        self.address = address
        self.connections_opened = 0
        self._on_new_key = on_new_key
        self._connect_lock = threading.Lock()
        self._client: paramiko.SSHClient | None = None
        self._idle: list[paramiko.Channel] = []   # shells waiting for their next batch
        self._idle_lock = threading.Lock()

    # ---- connection --------------------------------------------------------------------------
    def _unreachable(self, reason: str) -> HostUnreachable:
        a = self.address
        return HostUnreachable(f"host {a.name} ({a.address}:{a.port}) does not answer: {reason}; "
                               f"nothing was changed on it (`--skip host` purges without it and "
                               f"records its cleanup as deferred)")

    def _transport(self) -> paramiko.Transport:
        """The live transport, connecting first if there is none or it died."""
        with self._connect_lock:
            transport = self._client.get_transport() if self._client else None
            if transport is not None and transport.is_active():
                return transport
            if self._client is not None:
                self._client.close()
                self._client = None
            self._client = self._connect()
            self.connections_opened += 1
            return self._client.get_transport()

    def _drop(self, transport: paramiko.Transport) -> None:
        """Forget a broken transport, unless another thread already replaced it."""
        with self._connect_lock:
            if self._client is not None and self._client.get_transport() is transport:
                self._client.close()
                self._client = None

    def _connect(self) -> paramiko.SSHClient:
        a, o = self.address, self.options
        client = paramiko.SSHClient()
        if os.path.exists(SYSTEM_KNOWN_HOSTS):
            client.load_system_host_keys(SYSTEM_KNOWN_HOSTS)
        if os.path.exists(o.known_hosts_file):
            client.load_host_keys(o.known_hosts_file)
        client.set_missing_host_key_policy(_KeyPolicy(self))
        started = time.monotonic()
        try:
            client.connect(a.address, port=a.port, username=a.user, pkey=self._key(),
                           allow_agent=a.key_file is None, look_for_keys=a.key_file is None,
                           timeout=o.connect_timeout, banner_timeout=o.connect_timeout,
                           auth_timeout=o.connect_timeout, channel_timeout=o.connect_timeout)
        except Exception as error:
            client.close()
            mapped = self._connect_error(error)
            if mapped is None:
                raise
            raise mapped from None
        LOG.debug("%s: connected to %s:%d as %s in %.3f s", a.name, a.address, a.port, a.user,
                  time.monotonic() - started)
        return client

    def _key(self) -> paramiko.PKey | None:
        if self.address.key_file is None:
            return None
        try:
            return paramiko.PKey.from_path(self.address.key_file)
        except (OSError, ValueError, paramiko.SSHException, paramiko.pkey.UnknownKeyType) as error:
            raise BadInput(f"host {self.name}: cannot load SSH key {self.address.key_file}: "
                           f"{error}") from None

    def _connect_error(self, error: Exception) -> Exception | None:
        """The operator-facing error for a failed connect (None: a bug, re-raise it as is)."""
        a = self.address
        if isinstance(error, NovapurgeError):
            return error
        if isinstance(error, paramiko.BadHostKeyException):
            known, offered = error.expected_key, error.key
            return HostKeyUnknown(
                f"host key of {a.name} ({a.address}:{a.port}) changed: known_hosts has "
                f"{known.get_name()} {known.fingerprint}, the host offers {offered.get_name()} "
                f"{offered.fingerprint}; refusing to connect. If the host was reinstalled, check "
                f"the new key and replace the entry (ssh-keygen -R)")
        if isinstance(error, paramiko.AuthenticationException):
            return self._unreachable(f"authentication as {a.user} failed ({error})")
        if isinstance(error, TimeoutError):
            return self._unreachable(f"no answer within {self.options.connect_timeout:g} s")
        if isinstance(error, paramiko.ssh_exception.NoValidConnectionsError):
            return self._unreachable("connection refused or no route to host")
        if isinstance(error, socket.gaierror):
            return self._unreachable(f"cannot resolve {a.address} ({error.strerror})")
        if isinstance(error, (paramiko.SSHException, EOFError, OSError)):
            return self._unreachable(str(error) or type(error).__name__)
        return None

    def _missing_host_key(self, client, hostname: str, key: paramiko.PKey) -> None:
        """Refuse an unknown key, or (accept_new) save it to known_hosts and report it once."""
        a, path = self.address, self.options.known_hosts_file
        kind, fingerprint = key.get_name(), key.fingerprint
        if not self.options.accept_new:
            raise HostKeyUnknown(
                f"host key of {a.name} ({a.address}:{a.port}) is unknown ({kind} {fingerprint}): "
                f"check it and add it to {path}, or pass --ssh-accept-new to trust it on first use")
        _append_known_host(path, hostname, key)
        client.get_host_keys().add(hostname, kind, key)
        LOG.warning("%s: trusted new host key %s %s (--ssh-accept-new), saved to %s",
                    a.name, kind, fingerprint, path)
        if self._on_new_key is not None:
            self._on_new_key(a.name, kind, fingerprint)

    # ---- commands ----------------------------------------------------------------------------
    def _open_channel(self) -> paramiko.Channel:
        """A session channel; a dead transport is replaced once (no command has started yet)."""
        for attempt in (1, 2):
            transport = self._transport()
            try:
                return transport.open_session(timeout=self.options.connect_timeout)
            except paramiko.ChannelException as error:  # refused by sshd; the transport is fine
                raise self._unreachable(f"refused a session channel ({error.text}); is sshd's "
                                        f"MaxSessions below max_channels?") from None
            except (EOFError, paramiko.SSHException, OSError) as error:
                self._drop(transport)
                if attempt == 2:
                    raise self._unreachable(f"cannot open a session: {error}") from None
                LOG.info("%s: SSH connection lost (%s); reconnecting", self.name,
                         str(error) or type(error).__name__)

    def _execute(self, argv, stdin, timeout):
        if stdin is None:
            return self._execute_batch([(argv, (0,))], False, timeout)[0]
        return self._exec(argv, stdin, timeout)

    def _exec(self, argv, stdin, timeout):
        """One command on its own session channel (`exec`), with `stdin` fed to it."""
        channel = self._open_channel()
        deadline = time.monotonic() + timeout
        try:
            channel.settimeout(timeout)
            channel.exec_command(shlex.join(argv))
            if stdin:
                channel.sendall(stdin.encode())
            channel.shutdown_write()
            stdout, stderr = _read_all(channel, deadline)
            if not channel.status_event.wait(max(0.0, deadline - time.monotonic())):
                raise _TimedOut(stdout, stderr)
            rc = channel.recv_exit_status()
        except TimeoutError:              # sendall of stdin blocked past the deadline
            raise _TimedOut() from None
        except (EOFError, paramiko.SSHException, OSError) as error:
            raise self._unreachable(f"connection lost while running {argv[0]}: "
                                    f"{str(error) or type(error).__name__}") from None
        finally:
            channel.close()
        lost = not channel.eof_received or (rc == -1 and not channel.get_transport().is_active())
        if lost:
            raise self._unreachable(f"connection lost while running {argv[0]}")
        return rc, stdout, stderr

    # A session channel running `sh` serves one batch after another: no new session (sshd's
    # fork, the login shell's start, about 45 ms) per round trip. A shell is pinged before each
    # use, so a dead or frozen connection is found (and replaced) before any command is sent.
    def _execute_batch(self, commands, stop, timeout):
        """Each command's exit code and output are framed by a random marker line (on stdout
        and on stderr), so the outputs split back exactly; the batch runs in a subshell (the
        `exit` of a stopped batch ends that, not the shell) and ends with an end marker."""
        marker, end = secrets.token_hex(16), secrets.token_hex(16)
        lines = ["("]
        for argv, ok_codes in commands:
            lines.append(f"{shlex.join(argv)} </dev/null; r=$?; printf '\\n{marker} %d\\n' \"$r\"; "
                         f"printf '\\n{marker}\\n' >&2")
            if stop:
                lines.append(f"case $r in {'|'.join(str(int(c)) for c in ok_codes)}) ;; "
                             f"*) exit 0 ;; esac")
        lines += [")", f"printf '\\n{end}\\n'; printf '\\n{end}\\n' >&2", ""]
        tail = f"\n{end}\n".encode()
        shell = self._shell()
        deadline = time.monotonic() + timeout
        try:
            shell.sendall("\n".join(lines).encode())
            out, err = _read_until(shell, deadline, tail, tail)
        except _TimedOut:
            shell.close()                 # a shell busy with a hung command is not reused
            raise
        except (_Lost, EOFError, paramiko.SSHException, OSError) as error:
            shell.close()
            raise self._unreachable(f"connection lost while running {commands[0][0][0]}: "
                                    f"{str(error) or type(error).__name__}") from None
        self._release(shell)
        stdout, stderr = _text([out[:-len(tail)]]), _text([err[:-len(tail)]])
        outs = re.split(rf"\n{marker} (-?\d+)\n", stdout)
        errs = stderr.split(f"\n{marker}\n")
        answers = [(int(outs[i + 1]), outs[i], errs[i // 2] if i // 2 < len(errs) else "")
                   for i in range(0, len(outs) - 1, 2)]
        if len(answers) < len(commands) and (not stop or not answers
                                            or answers[-1][0] in commands[len(answers) - 1][1]):
            raise self._unreachable(f"a batch of {len(commands)} commands stopped after "
                                    f"{len(answers)}: {stderr[-200:].strip()}")
        return answers

    def _shell(self) -> paramiko.Channel:
        """A live shell that just answered; a dead or frozen connection is replaced once."""
        for attempt in (1, 2):
            shell = self._take_idle()
            if shell is None:
                shell = self._open_channel()
                try:
                    shell.exec_command("sh")
                except (EOFError, paramiko.SSHException, OSError) as error:
                    shell.close()
                    self._drop(shell.get_transport())
                    if attempt == 2:
                        raise self._unreachable(f"cannot start a shell: {error}") from None
                    continue
            answered, why = self._ping(shell)
            if answered:
                return shell
            shell.close()
            transport = shell.get_transport()
            if answered is None or not transport.is_active():
                self._drop(transport)              # frozen or gone: its other shells too
            if attempt == 2:
                raise self._unreachable(f"its shell {why}")
            LOG.info("%s: SSH connection %s; reconnecting", self.name, why)

    def _ping(self, shell) -> tuple[bool | None, str]:
        """(True, "") when the shell answered; (None, why) when it did not in time (a frozen
        connection); (False, why) when it is gone."""
        token = secrets.token_hex(8)
        try:
            shell.sendall(f"printf '%s\\n' {token}\n".encode())
            _read_until(shell, time.monotonic() + self.options.connect_timeout,
                        f"{token}\n".encode(), None)
            return True, ""
        except _TimedOut:
            return None, f"did not answer within {self.options.connect_timeout:g} s"
        except (_Lost, EOFError, paramiko.SSHException, OSError) as error:
            return False, f"was lost ({str(error) or type(error).__name__})"

    def _take_idle(self) -> paramiko.Channel | None:
        with self._idle_lock:
            while self._idle:
                shell = self._idle.pop()
                transport = shell.get_transport()
                if transport is not None and transport.is_active() and not (
                        shell.closed or shell.eof_received or shell.exit_status_ready()):
                    return shell
                shell.close()
        return None

    def _release(self, shell) -> None:
        with self._idle_lock:
            self._idle.append(shell)

    def close(self) -> None:
        with self._connect_lock:
            with self._idle_lock:
                self._idle.clear()
            if self._client is not None:
                self._client.close()
                self._client = None


class _Lost(Exception):
    """Internal: the channel ended (EOF) before the expected output."""


def _readiness(channel: paramiko.Channel) -> "select.poll":
    """A poller on the channel's readiness pipe (not select(): descriptors above 1024 with many
    hosts)."""
    poller = select.poll()
    poller.register(channel.fileno(), select.POLLIN)
    return poller


def _wait_for_data(poller, deadline: float, out_parts, err_parts) -> None:
    """Wait for the readiness pipe, never longer than _RECHECK_S (the pipe can miss a wakeup);
    _TimedOut with what was read so far once the deadline has passed."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise _TimedOut(_text(out_parts), _text(err_parts))
    poller.poll(min(remaining, _RECHECK_S) * 1000)


def _read_until(channel: paramiko.Channel, deadline: float, out_tail: bytes,
                err_tail: bytes | None) -> tuple[bytes, bytes]:
    """stdout and stderr, read together, until stdout ends with `out_tail` and stderr with
    `err_tail` (None: stderr is not waited for). _Lost at EOF, _TimedOut at the deadline."""
    out, err = bytearray(), bytearray()
    poller = _readiness(channel)
    while True:
        while channel.recv_ready():
            out += channel.recv(_CHUNK)
        while channel.recv_stderr_ready():
            err += channel.recv_stderr(_CHUNK)
        if out.endswith(out_tail) and (err_tail is None or err.endswith(err_tail)):
            return bytes(out), bytes(err)
        if channel.eof_received or channel.closed:
            raise _Lost("end of output")
        _wait_for_data(poller, deadline, [out], [err])


def _read_all(channel: paramiko.Channel, deadline: float) -> tuple[str, str]:
    """stdout and stderr until EOF, read together (reading one alone can fill the window and
    stall the remote command on the other)."""
    out, err = [], []
    poller = _readiness(channel)
    while True:
        while channel.recv_ready():
            out.append(channel.recv(_CHUNK))
        while channel.recv_stderr_ready():
            err.append(channel.recv_stderr(_CHUNK))
        if channel.eof_received or channel.closed:
            for receive, parts in ((channel.recv, out), (channel.recv_stderr, err)):
                while chunk := receive(_CHUNK):
                    parts.append(chunk)
            return _text(out), _text(err)
        _wait_for_data(poller, deadline, out, err)


def _append_known_host(path: str, hostname: str, key: paramiko.PKey) -> None:
    """Add one line to known_hosts, creating it 0600 if missing and keeping every other line."""
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    line = f"{hostname} {key.get_name()} {key.get_base64()}\n".encode()
    with _KNOWN_HOSTS_LOCK:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line
            os.write(fd, line)
        finally:
            os.close(fd)


class HostPool:
    """One runner per host for the whole process (every step and VM of a run shares it)."""

    def __init__(self, hosts: dict[str, HostAddress] | None = None,
                 options: SshOptions = SshOptions(), on_new_key=None):
        self.options = options
        self._hosts = dict(hosts or {})
        self._on_new_key = on_new_key    # (host_name, key_type, sha256_fingerprint), for the ledger
        self._runners: dict[str, Runner] = {}
        self._lock = threading.Lock()

    def runner(self, host_name: str) -> Runner:
        """The host's runner; an unconfigured host is reached over SSH at its own name."""
        with self._lock:
            if host_name not in self._runners:
                self._runners[host_name] = self._new_runner(host_name)
            return self._runners[host_name]

    def _new_runner(self, host_name: str) -> Runner:
        address = self._hosts.get(host_name) or HostAddress(host_name)
        if address.runner == "local":
            return LocalRunner(address.name, self.options)
        return SshRunner(address, self.options, self._on_new_key)

    def connections_opened(self) -> dict[str, int]:
        with self._lock:
            return {name: r.connections_opened for name, r in self._runners.items()}

    def close(self) -> None:
        with self._lock:
            for runner in self._runners.values():
                runner.close()
