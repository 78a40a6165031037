"""The SSH driver against a real sshd (see conftest.py): quoting, stdin, exit codes, one transport
per host with bounded channels, known-hosts policy, reconnect, unreachable hosts, local runs."""

import logging
import os
import socket
import stat
import threading
import time

import pytest

from novapurge.drivers import ssh
from novapurge.drivers.ssh import (CommandFailed, CommandTimeout, HostAddress, HostKeyUnknown,
                                   HostPool, LocalRunner, SshOptions, quote_argv)
from novapurge.errors import BadInput, HostUnreachable

HOSTILE = [";touch {marker}", "$(touch {marker})", "`touch {marker}`", "'single'", '"double"',
           "*", "&& echo no", "a b  c", "", "-n", "\\", "${{HOME}}", "|", "\t"]


@pytest.fixture
def known_hosts(sshd, tmp_path):
    """A known_hosts file that trusts the test sshd."""
    path = tmp_path / "known_hosts"
    path.write_text(sshd.known_hosts_line())
    return path


@pytest.fixture
def make_pool(sshd, known_hosts):
    """`make_pool(on_new_key=None, key_file=..., **SshOptions fields)`: a pool whose host "cmp1"
    is the test sshd; every pool is closed after the test."""
    pools = []

    def make(on_new_key=None, key_file=None, **options):
        options.setdefault("known_hosts", str(known_hosts))
        address = HostAddress("cmp1", "127.0.0.1", sshd.port,
                              key_file=str(key_file or sshd.client_key))
        pool = HostPool({"cmp1": address}, SshOptions(**options), on_new_key=on_new_key)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.close()


@pytest.fixture
def runner(make_pool):
    return make_pool().runner("cmp1")


def test_stdout_stderr_and_rc(runner):
    result = runner.run(["sh", "-c", "echo out; echo err >&2; exit 3"], ok_codes=(0, 3))
    assert (result.host, result.rc, result.stdout, result.stderr) == ("cmp1", 3, "out\n", "err\n")
    assert result.argv == ("sh", "-c", "echo out; echo err >&2; exit 3")
    assert runner.run(["echo", "hi"]).stdout == "hi\n"
    assert [r.argv[0] for r in runner.history] == ["sh", "echo"]


def test_hostile_arguments_are_passed_literally(runner, tmp_path):
    marker = tmp_path / "x"
    args = [a.format(marker=marker) for a in HOSTILE]
    result = runner.run(["printf", "%s|", *args])
    assert result.stdout == "".join(f"{a}|" for a in args)
    assert not marker.exists()


def test_stdin_reaches_the_command_and_is_not_logged(runner, caplog):
    document = "<domain><secret>s3cr3t-chap</secret></domain>\n" * 2000
    with caplog.at_level(logging.DEBUG, logger="novapurge.drivers.ssh"):
        result = runner.run(["cat"], stdin=document)
    assert result.stdout == document
    assert "cmp1: cat -> rc 0" in caplog.text
    assert "s3cr3t" not in caplog.text


def test_large_output_on_both_streams(runner):
    # stderr first: a reader that waits for stdout alone would stall the command
    result = runner.run(["sh", "-c", "head -c 3000000 /dev/zero | tr '\\0' e >&2; "
                                     "head -c 3000000 /dev/zero | tr '\\0' o"])
    assert (len(result.stdout), len(result.stderr)) == (3000000, 3000000)
    assert set(result.stdout) == {"o"} and set(result.stderr) == {"e"}


def test_unaccepted_rc_raises_command_failed(runner):
    with pytest.raises(CommandFailed) as failed:
        runner.run(["sh", "-c", "echo boom >&2; exit 4"])
    assert failed.value.result.rc == 4
    assert failed.value.result.stderr == "boom\n"
    assert "cmp1" in str(failed.value) and "rc 4" in str(failed.value)
    assert "boom" in str(failed.value)


@pytest.mark.parametrize("argv", [["touch", "{marker}\n"], ["touch", "{marker}\0"],
                                  ["touch", "{marker}\rx"], [], "touch {marker}",
                                  ["touch", 7]])
def test_bad_argv_is_refused_before_anything_runs(runner, tmp_path, argv):
    marker = tmp_path / "x"
    argv = (argv.format(marker=marker) if isinstance(argv, str)
            else [a.format(marker=marker) if isinstance(a, str) else a for a in argv])
    with pytest.raises(BadInput):
        runner.run(argv)
    with pytest.raises(BadInput):
        quote_argv(argv)
    assert not marker.exists() and not list(runner.history)
    assert runner.connections_opened == 0


def test_quote_argv():
    assert quote_argv(["virsh", "undefine", "a b", "$x"]) == "virsh undefine 'a b' '$x'"


def test_chap_secrets_in_argv_are_masked_in_logs_and_errors(runner, caplog):
    argv = ["sh", "-c", "exit 1", "-n", "node.session.auth.password", "-v", "chap-s3cr3t"]
    with caplog.at_level(logging.DEBUG, logger="novapurge.drivers.ssh"):
        with pytest.raises(CommandFailed) as failed:
            runner.run(argv)
    assert failed.value.result.argv == tuple(argv)       # the caller still sees what ran
    assert "node.session.auth.password -v '***'" in str(failed.value)
    assert "node.session.auth.password -v '***'" in caplog.text
    assert "s3cr3t" not in caplog.text + str(failed.value)


def test_many_commands_share_one_transport_within_max_channels(sshd, make_pool):
    pool = make_pool(max_channels=3)
    runner = pool.runner("cmp1")
    logins = sshd.logins()
    results, errors = [], []

    def work(worker):
        try:
            for i in range(3):
                results.append(runner.run(["sh", "-c", f"sleep 0.3; echo {worker}.{i}"]).stdout)
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sorted(results) == sorted(f"{w}.{i}\n" for w in range(10) for i in range(3))
    assert pool.connections_opened() == {"cmp1": 1}
    assert sshd.logins() == logins + 1
    assert runner.peak_channels == 3


def test_unknown_host_key_is_refused(sshd, make_pool, tmp_path):
    path = tmp_path / "empty_known_hosts"
    path.write_text("")
    marker = tmp_path / "x"
    logins = sshd.logins()
    runner = make_pool(known_hosts=str(path)).runner("cmp1")
    with pytest.raises(HostKeyUnknown) as refused:
        runner.run(["touch", str(marker)])
    assert isinstance(refused.value, HostUnreachable) and refused.value.exit_code == 8
    message = str(refused.value)
    assert "--ssh-accept-new" in message and str(path) in message
    assert sshd.host_fingerprint in message
    assert not marker.exists() and path.read_text() == "" and sshd.logins() == logins


def test_accept_new_saves_the_key_and_reports_it_once(sshd, make_pool, tmp_path):
    new_keys = []
    path = tmp_path / "ssh" / "known_hosts"  # neither the directory nor the file exists yet
    runner = make_pool(known_hosts=str(path), accept_new=True,
                       on_new_key=lambda *key: new_keys.append(key)).runner("cmp1")
    assert runner.run(["echo", "1"]).stdout == "1\n"
    assert runner.run(["echo", "2"]).stdout == "2\n"
    assert new_keys == [("cmp1", "ssh-ed25519", sshd.host_fingerprint)]
    assert path.read_text() == sshd.known_hosts_line()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # saved for real: a pool without accept_new now trusts it
    assert make_pool(known_hosts=str(path)).runner("cmp1").run(["true"]).rc == 0


def test_accept_new_keeps_existing_entries(sshd, make_pool, tmp_path):
    path = tmp_path / "known_hosts"
    other = sshd.known_hosts_line(sshd.other_key(tmp_path / "other")).replace(
        f"[127.0.0.1]:{sshd.port}", "cmp9.example.org")
    existing = "# managed by hand\n|1|c2FsdA==|aGFzaA== ssh-ed25519 AAAA\n" + other.rstrip("\n")
    path.write_text(existing)                # no final newline
    runner = make_pool(known_hosts=str(path), accept_new=True).runner("cmp1")
    assert runner.run(["true"]).rc == 0
    assert path.read_text() == existing + "\n" + sshd.known_hosts_line()


def test_changed_host_key_is_refused_even_with_accept_new(sshd, make_pool, tmp_path):
    path = tmp_path / "known_hosts"
    path.write_text(sshd.known_hosts_line(sshd.other_key(tmp_path / "old_host_key")))
    before = path.read_text()
    marker = tmp_path / "x"
    new_keys, logins = [], sshd.logins()
    runner = make_pool(known_hosts=str(path), accept_new=True,
                       on_new_key=lambda *key: new_keys.append(key)).runner("cmp1")
    with pytest.raises(HostKeyUnknown, match="changed"):
        runner.run(["touch", str(marker)])
    assert not marker.exists() and not new_keys and sshd.logins() == logins
    assert path.read_text() == before


def test_other_key_types_and_a_bad_key_file(sshd, make_pool, tmp_path):
    assert make_pool(key_file=sshd.ecdsa_key).runner("cmp1").run(["true"]).rc == 0
    missing = make_pool(key_file=tmp_path / "no_such_key").runner("cmp1")
    with pytest.raises(BadInput, match="cannot load SSH key"):
        missing.run(["true"])


def test_dropped_transport_reconnects_before_the_next_command(sshd, make_pool):
    pool = make_pool()
    runner = pool.runner("cmp1")
    assert runner.run(["echo", "before"]).stdout == "before\n"
    sshd.kill_sessions()
    assert runner.run(["echo", "after"]).stdout == "after\n"
    assert pool.connections_opened() == {"cmp1": 2}


def test_hung_transport_is_replaced_when_no_channel_opens(sshd, make_pool):
    pool = make_pool(connect_timeout=1)
    runner = pool.runner("cmp1")
    assert runner.run(["echo", "before"]).stdout == "before\n"
    frozen = sshd.stop_sessions()      # the TCP connection stays up: the transport looks active
    try:
        assert runner.run(["echo", "after"]).stdout == "after\n"
    finally:
        sshd.kill_sessions(frozen)
    assert pool.connections_opened() == {"cmp1": 2}


def test_connection_lost_during_a_command_is_host_unreachable(sshd, runner):
    outcome = []

    def run():
        try:
            runner.run(["sleep", "5"])
        except Exception as error:  # asserted below
            outcome.append(error)

    thread = threading.Thread(target=run)
    started = time.monotonic()
    thread.start()
    deadline = started + 5
    while not runner.peak_channels or not sshd.session_pids():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.2)  # the channel is open and sleep runs
    sshd.kill_sessions()
    thread.join(5)
    assert time.monotonic() - started < 3
    assert len(outcome) == 1 and type(outcome[0]) is HostUnreachable, outcome
    assert "connection lost" in str(outcome[0])


def test_command_timeout_closes_the_channel_and_keeps_the_transport(make_pool):
    pool = make_pool()
    runner = pool.runner("cmp1")
    started = time.monotonic()
    with pytest.raises(CommandTimeout, match="timed out after 0.5 s") as timed_out:
        runner.run(["sh", "-c", "echo partial; sleep 5"], timeout=0.5)
    assert time.monotonic() - started < 2
    assert timed_out.value.result.rc == -1 and timed_out.value.result.stdout == "partial\n"
    assert runner.run(["true"]).rc == 0 and pool.connections_opened() == {"cmp1": 1}


def test_closed_port_is_unreachable_at_once(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]             # bound, never listening: connection refused
        pool = HostPool({"cmp2": HostAddress("cmp2", "127.0.0.1", port)},
                        SshOptions(known_hosts=str(tmp_path / "kh"), connect_timeout=2))
        started = time.monotonic()
        expected = rf"host cmp2 \(127.0.0.1:{port}\) does not answer"
        with pytest.raises(HostUnreachable, match=expected):
            pool.runner("cmp2").run(["true"])
    assert time.monotonic() - started < 2


def test_silent_host_is_unreachable_within_connect_timeout(tmp_path):
    with socket.socket() as sock:                # accepts (backlog) but never says a word
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        port = sock.getsockname()[1]
        pool = HostPool({"cmp3": HostAddress("cmp3", "127.0.0.1", port)},
                        SshOptions(known_hosts=str(tmp_path / "kh"), connect_timeout=0.5))
        started = time.monotonic()
        with pytest.raises(HostUnreachable, match="cmp3"):
            pool.runner("cmp3").run(["true"])
        assert time.monotonic() - started < 1.5
    assert not (tmp_path / "kh").exists()


def test_local_runner_runs_argv_without_a_shell(tmp_path):
    marker = tmp_path / "x"
    pool = HostPool({"here": HostAddress("here", runner="local")})
    runner = pool.runner("here")
    assert isinstance(runner, LocalRunner)
    args = [a.format(marker=marker) for a in HOSTILE]
    assert runner.run(["printf", "%s|", *args]).stdout == "".join(f"{a}|" for a in args)
    assert runner.run(["cat"], stdin="<xml/>").stdout == "<xml/>"
    assert runner.run(["sh", "-c", "echo e >&2; exit 2"], ok_codes=(2,)).stderr == "e\n"
    with pytest.raises(CommandFailed) as failed:
        runner.run(["no-such-command-np"])
    assert failed.value.result.rc == 127
    with pytest.raises(CommandTimeout):
        runner.run(["sleep", "5"], timeout=0.2)
    assert not marker.exists() and pool.connections_opened() == {"here": 0}


def test_unconfigured_hosts_are_reached_at_their_validated_name():
    pool = HostPool()
    assert pool.runner("cmp-7.example.org").address == HostAddress(
        "cmp-7.example.org", "cmp-7.example.org", 22, "root")
    assert pool.runner("cmp-7.example.org") is pool.runner("cmp-7.example.org")
    for bad in ("-oProxyCommand=x", "root@cmp1", "cmp 1", "cmp1;id", "a..b"):
        with pytest.raises(BadInput):
            pool.runner(bad)
    assert pool.connections_opened() == {"cmp-7.example.org": 0}


def test_batch_runs_in_one_round_trip_and_splits_outputs_exactly(sshd, make_pool, tmp_path):
    pool = make_pool()
    runner = pool.runner("cmp1")
    logins, marker = sshd.logins(), tmp_path / "x"
    hostile = [a.format(marker=marker) for a in HOSTILE]
    results = runner.run_batch([
        (["printf", "%s|", *hostile], (0,)),
        (["sh", "-c", "printf 'no newline'; printf 'err, no newline' >&2; exit 3"], (0,)),
        (["sh", "-c", "printf 'two\\n\\n'; echo e >&2"], (0,)),
        (["cat"], (0,)),                                  # stdin is empty, never the script
        (["sh", "-c", "exit 21"], (0, 21)),
    ], stop=False)
    assert [(r.rc, r.stdout, r.stderr) for r in results] == [
        (0, "".join(f"{a}|" for a in hostile), ""), (3, "no newline", "err, no newline"),
        (0, "two\n\n", "e\n"), (0, "", ""), (21, "", "")]
    assert not marker.exists()
    assert {r.batch for r in results} == {5} and len({r.seconds for r in results}) == 1
    assert [r.argv[0] for r in list(runner.history)[-5:]] == ["printf", "sh", "sh", "cat", "sh"]
    assert pool.connections_opened() == {"cmp1": 1} and sshd.logins() == logins + 1


def test_batch_stops_at_the_first_unaccepted_exit_code(runner, tmp_path):
    first, never = tmp_path / "first", tmp_path / "never"
    with pytest.raises(CommandFailed) as failed:
        runner.run_batch([(["touch", str(first)], (0,)),
                          (["sh", "-c", "echo gone >&2; exit 1"], (0, 21)),
                          (["touch", str(never)], (0,))])
    assert failed.value.result.rc == 1 and failed.value.result.stderr == "gone\n"
    assert first.exists() and not never.exists()
    ok = runner.run_batch([(["sh", "-c", "exit 21"], (0, 21)), (["echo", "on"], (0,))])
    assert [(r.rc, r.stdout) for r in ok] == [(21, ""), (0, "on\n")]


def test_batch_refuses_bad_argv_before_anything_runs(runner, tmp_path):
    marker = tmp_path / "x"
    with pytest.raises(BadInput):
        runner.run_batch([(["touch", str(marker)], (0,)), (["echo", "a\nb"], (0,))])
    assert not marker.exists() and runner.connections_opened == 0


def test_batch_timeout_and_lost_connection(sshd, make_pool):
    runner = make_pool().runner("cmp1")
    with pytest.raises(CommandTimeout):
        runner.run_batch([(["echo", "a"], (0,)), (["sleep", "5"], (0,))], timeout=0.5)
    outcome = []
    thread = threading.Thread(target=lambda: outcome.append(pytest.raises(
        HostUnreachable, runner.run_batch, [(["sleep", "5"], (0,))], stop=False)))
    thread.start()
    deadline = time.monotonic() + 5
    while not sshd.session_pids() or runner._in_flight == 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.2)
    sshd.kill_sessions()
    thread.join(5)
    assert outcome and "connection lost" in str(outcome[0].value)


def test_local_runner_batches_too(tmp_path):
    runner = HostPool({"here": HostAddress("here", runner="local")}).runner("here")
    results = runner.run_batch([(["echo", "a"], (0,)), (["sh", "-c", "exit 2"], (0, 2))])
    assert [(r.rc, r.stdout) for r in results] == [(0, "a\n"), (2, "")]
    with pytest.raises(CommandFailed):
        runner.run_batch([(["sh", "-c", "exit 2"], (0,)), (["touch", str(tmp_path / "x")], (0,))])
    assert not (tmp_path / "x").exists()


class _SilentPipeChannel:
    """A channel whose readiness pipe never fires although data arrives: paramiko's shared
    stdout/stderr pipe can miss such a wakeup."""

    def __init__(self, out: bytes, err: bytes, after: float):
        self._read_end, self._write_end = os.pipe()   # never written
        self._out, self._err, self._at = out, err, time.monotonic() + after
        self.eof_received = self.closed = False

    def fileno(self):
        return self._read_end

    def _arrived(self):
        return time.monotonic() >= self._at

    def recv_ready(self):
        return self._arrived() and bool(self._out)

    def recv_stderr_ready(self):
        return self._arrived() and bool(self._err)

    def recv(self, _size):
        data, self._out = self._out, b""
        return data

    def recv_stderr(self, _size):
        data, self._err = self._err, b""
        return data

    def close(self):
        os.close(self._read_end)
        os.close(self._write_end)


def test_output_is_read_even_when_the_channel_misses_a_wakeup():
    channel = _SilentPipeChannel(b"done\nEND\n", b"warning\nEND\n", after=0.3)
    try:
        started = time.monotonic()
        out, err = ssh._read_until(channel, started + 5, b"\nEND\n", b"\nEND\n")
        assert (out, err) == (b"done\nEND\n", b"warning\nEND\n")
        assert time.monotonic() - started < 2
    finally:
        channel.close()
