"""Across machines: `novapurge submit` posts jobs to a real Redis jobboard, conductor processes
run them on a MariaDB journal.

- A conductor SIGKILLed in the middle of a VM's flow loses its claim when it expires; a second
  conductor process claims the job, resumes the flow from the journal and finishes it. The
  ledger shows every change applied once, except at most the one step that was in flight.
- SIGTERM makes a conductor suspend the VM after its current steps and give the job back at
  once (no waiting for the claim to expire); another conductor finishes it.
- Two conductors share a batch's jobs; each VM is purged exactly once.
"""

import json
import os
import secrets
import signal
import subprocess
import sys
import time

import pytest
import redis

from novapurge.sandbox.hosts import SimHosts

REDIS_URL = "redis://127.0.0.1:6379"
LATENCY = 0.25     # per host command: a VM's flow takes a few seconds
CLAIM_EXPIRY = 3


@pytest.fixture
def backend():
    return "mysql"


@pytest.fixture
def namespace():
    """A jobboard namespace of this test's own; its keys are deleted after."""
    name = f"np-test-{secrets.token_hex(4)}"
    yield name
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(f"{name}*"):
        client.delete(key)
    client.close()


@pytest.fixture
def board_env(cli_env, tmp_path, namespace):
    """NOVAPURGE_* of the CLI plus a config naming the jobboard (claims expire after 3 s)."""
    config = tmp_path / "novapurge.toml"
    config.write_text(f'[jobboard]\nurl = "{REDIS_URL}"\nnamespace = "{namespace}"\n'
                      f"claim_expiry = {CLAIM_EXPIRY}\n")
    return dict(cli_env, NOVAPURGE_CONFIG=str(config))


class Conductor:
    """A `novapurge conductor` process."""

    def __init__(self, env, tmp_path, *args):
        full = {k: v for k, v in os.environ.items() if not k.startswith("NOVAPURGE_")}
        full.update(env)
        self.log = open(tmp_path / f"conductor-{secrets.token_hex(3)}.log", "w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "novapurge", "conductor", "-v", "-f", "json", *args],
            env=full, cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=self.log, text=True)

    @property
    def pid(self):
        return self.proc.pid

    def finish(self, timeout=90) -> dict:
        out, _ = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, (self.proc.returncode, out, self.stderr())
        return json.loads(out)

    def stderr(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def conductors(board_env, tmp_path):
    started = []

    def start(*args):
        conductor = Conductor(board_env, tmp_path, *args)
        started.append(conductor)
        return conductor
    yield start
    for conductor in started:
        conductor.kill()
        conductor.log.close()


def _wait_for(predicate, what, timeout=60.0, interval=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out waiting for {what}")


def _owner(namespace, job_uuid):
    """The conductor that holds a job's claim (TaskFlow's owner key), or None."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        owned = [k for k in client.scan_iter(f"{namespace}*{job_uuid}*.owned")]
        return client.get(owned[0]).decode() if owned else None
    finally:
        client.close()


def _jobs_left(namespace) -> int:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        return sum(client.hlen(k) for k in client.scan_iter(f"{namespace}*listings"))
    finally:
        client.close()


def _applied_twice(journal, purge_id) -> list:
    """(step, resource) applied more than once; each before-state recorded once."""
    intents, applied = {}, {}
    for row in journal.ledger(purge_id):
        key = (row["atom"], row["resource"])
        if row["phase"] == "intent":
            intents[key] = intents.get(key, 0) + 1
        elif row["phase"] == "applied":
            applied[key] = applied.get(key, 0) + 1
    assert all(n == 1 for n in intents.values()), intents
    assert all(n <= 2 for n in applied.values()), applied
    return [key for key, n in applied.items() if n == 2]


def _submit(cli, vms, expect=0):
    result = cli(["submit", "--yes", *vms, "-f", "json"], expect=expect)
    assert set(result.json["summary"]) == {"queued"}, result.json
    return result.json["purge_id"], [v["message"].split()[-1] for v in result.json["vms"]]


def test_killed_conductor_job_is_resumed_by_another(nova, fleet, cli, board_env, conductors,
                                                     journal, namespace, helpers):
    (info,) = fleet(1, hosts=1)
    SimHosts(nova.sandbox / "hosts").host(info["host"]).set_latency(LATENCY)
    purge_id, (job,) = _submit(lambda args, **kw: cli(args, env=board_env, **kw),
                               [info["uuid"]])
    assert cli(["status", purge_id, "-f", "json"], env=board_env,
               expect=0).json["vms"][0]["state"] == "QUEUED"

    first = conductors("--jobs", "2")
    _wait_for(lambda: (_owner(namespace, job) or "").endswith(f":{first.pid}"),
              "the first conductor to claim the job")
    second = conductors("--max-jobs", "1")

    def in_flight():
        """A step that recorded its before-state and is changing the host (not applied yet)."""
        rows = journal.ledger(purge_id)
        done = {(r["atom"], r["resource"]) for r in rows if r["phase"] == "applied"}
        return next(((r["atom"], r["resource"]) for r in rows if r["phase"] == "intent"
                     and r["atom"].startswith("UnplugVif:") and
                     (r["atom"], r["resource"]) not in done), None)
    step = _wait_for(in_flight, "UnplugVif to be changing the host")
    first.kill()    # SIGKILL mid-step: no chance to release anything
    killed_at = time.monotonic()
    assert cli(["status", purge_id, "-f", "json"], env=board_env,
               expect=0).json["vms"][0]["state"] == "INTERRUPTED"

    summary = second.finish()
    assert [j["result"] for j in summary["jobs"]] == ["succeeded"], second.stderr()
    assert time.monotonic() - killed_at >= CLAIM_EXPIRY - 1  # it waited for the claim to expire
    assert _jobs_left(namespace) == 0
    status = cli(["status", purge_id, "-f", "json"], env=board_env, expect=0).json
    assert status["state"] == "SUCCESS"
    twice = _applied_twice(journal, purge_id)
    assert len(twice) <= 1, twice
    # the step in flight was finished by the second conductor, from the first's before-state
    rows = [r for r in journal.ledger(purge_id) if (r["atom"], r["resource"]) == step]
    assert [(r["phase"], r["pid"]) for r in rows] == [("intent", first.pid),
                                                      ("applied", second.pid)], rows
    notes = [r for r in journal.ledger(purge_id) if r["outcome"] == "taken-over"]
    assert notes == []  # same machine: the dead conductor's lock was simply stale
    # the end state is that of an uninterrupted purge of the instance
    assert nova.rows("cell", "instances", uuid=info["uuid"])[0]["deleted"] != 0
    host = SimHosts(nova.sandbox / "hosts").host(info["host"]).snapshot()
    assert info["instance_name"] not in host["domains"]
    assert journal.verify() == []


def test_sigterm_gives_the_job_back_at_once(nova, fleet, cli, board_env, conductors, journal,
                                            namespace, tmp_path):
    (info,) = fleet(1, hosts=1)
    SimHosts(nova.sandbox / "hosts").host(info["host"]).set_latency(LATENCY)
    config = tmp_path / "novapurge.toml"  # claims that would take long to expire
    config.write_text(config.read_text().replace(f"claim_expiry = {CLAIM_EXPIRY}",
                                                 "claim_expiry = 120"))
    purge_id, (job,) = _submit(lambda args, **kw: cli(args, env=board_env, **kw),
                               [info["uuid"]])
    first = conductors()
    _wait_for(lambda: any(r["atom"].startswith("UnplugVif:") and r["phase"] == "intent"
                          for r in journal.ledger(purge_id)), "UnplugVif to start")
    first.proc.send_signal(signal.SIGTERM)
    stopped = first.finish(timeout=60)
    assert [j["result"] for j in stopped["jobs"]] == ["suspended"]
    status = cli(["status", purge_id, "-f", "json"], env=board_env, expect=0).json
    assert status["state"] == "SUSPENDED"
    assert _owner(namespace, job) is None and _jobs_left(namespace) == 1  # given back
    given_back = time.monotonic()

    second = conductors("--max-jobs", "1")
    assert [j["result"] for j in second.finish()["jobs"]] == ["succeeded"]
    assert time.monotonic() - given_back < 60  # not the 120 s of an expiring claim
    assert cli(["status", purge_id, "-f", "json"], env=board_env,
               expect=0).json["state"] == "SUCCESS"
    assert _applied_twice(journal, purge_id) == []  # suspended between steps: nothing re-run


def test_two_conductors_share_a_batch(nova, fleet, cli, board_env, conductors, journal,
                                      namespace):
    infos = fleet(6, hosts=3)
    healthy = nova.uuids["active"]
    result = cli(["submit", "--yes", *(i["uuid"] for i in infos), healthy, "-f", "json"],
                 env=board_env)
    assert result.returncode == 3  # the healthy one is refused, the others queued
    assert result.json["summary"] == {"queued": 6, "refused": 1}
    purge_id = result.json["purge_id"]
    a, b = conductors("--jobs", "2", "--max-jobs", "3"), conductors("--jobs", "2",
                                                                    "--max-jobs", "3")
    ran = a.finish()["jobs"] + b.finish()["jobs"]
    assert sorted(j["vm_uuid"] for j in ran) == sorted(i["uuid"] for i in infos)
    assert {j["result"] for j in ran} == {"succeeded"}, [j for j in ran if j["message"]]
    status = cli(["status", purge_id, "-f", "json"], env=board_env, expect=0).json
    states = {vm["vm_uuid"]: vm["state"] for vm in status["vms"]}
    assert states.pop(healthy) == "REFUSED" and set(states.values()) == {"SUCCESS"}
    assert _jobs_left(namespace) == 0
    assert _applied_twice(journal, purge_id) == []
