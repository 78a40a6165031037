"""The jobboard: TaskFlow's Redis jobboard, with claims that expire and are kept alive.

TaskFlow's Redis claims last forever unless given an expiry, and its conductors claim without
one; here every claim expires `claim_expiry` seconds after it was last renewed, and a keeper
thread renews the claims this process holds every third of that while their jobs run. A
conductor that dies (SIGKILL, power loss, lost network) stops renewing: its claims expire and
another conductor claims the job and resumes it from the journal. A claim found owned by someone
else when renewing is reported lost (`on_lost(job)`): the conductor suspends that VM's engine.
"""

import logging
import threading
import urllib.parse

from taskflow import exceptions as tf_exc
from taskflow.jobs.backends import impl_redis

from novapurge.errors import BadInput

LOG = logging.getLogger(__name__)

DEFAULT_NAMESPACE = "novapurge"
DEFAULT_CLAIM_EXPIRY = 30.0   # seconds a claim outlives its last renewal
MIN_CLAIM_EXPIRY = 1.0


def board_conf(url: str, namespace: str | None = None) -> dict:
    """TaskFlow Redis jobboard settings from `redis://[[user]:password@]host[:port][/db]`."""
    parsed = urllib.parse.urlsplit(url or "")
    if parsed.scheme != "redis" or not parsed.hostname:
        raise BadInput(f"jobboard URL must be redis://HOST[:PORT][/DB], not {_shown(url)!r} "
                       f"(config [jobboard] url, env NOVAPURGE_JOBBOARD)")
    conf = {"host": parsed.hostname, "port": parsed.port or 6379,
            "namespace": namespace or DEFAULT_NAMESPACE,
            "socket_timeout": 10.0, "socket_connect_timeout": 5.0}
    if parsed.username:
        conf["username"] = urllib.parse.unquote(parsed.username)
    if parsed.password:
        conf["password"] = urllib.parse.unquote(parsed.password)
    db = parsed.path.strip("/")
    if db:
        if not db.isdigit():
            raise BadInput(f"jobboard URL {_shown(url)}: the database must be a number")
        conf["db"] = int(db)
    return conf


def _shown(url) -> str:
    parsed = urllib.parse.urlsplit(url or "")
    if parsed.password:
        return url.replace(f":{parsed.password}@", ":***@")
    return url


class PurgeJobBoard(impl_redis.RedisJobBoard):
    """TaskFlow's Redis jobboard whose claims expire unless renewed by this process."""

    def __init__(self, name, conf, persistence=None, claim_expiry=DEFAULT_CLAIM_EXPIRY,
                 on_lost=None):
        super().__init__(name, conf, persistence=persistence)
        if claim_expiry < MIN_CLAIM_EXPIRY:
            raise BadInput(f"claim expiry must be at least {MIN_CLAIM_EXPIRY:g} s")
        self.claim_expiry = float(claim_expiry)
        self.on_lost = on_lost
        self.claims_made = 0
        self._held = {}                  # job uuid -> (job, who)
        self._held_lock = threading.Lock()
        self._keeper = None
        self._stop_keeping = threading.Event()

    # -- claims ----------------------------------------------------------------------------
    def claim(self, job, who, expiry=None):
        super().claim(job, who, expiry=self.claim_expiry if expiry is None else expiry)
        with self._held_lock:
            self._held[job.uuid] = (job, who)
            self.claims_made += 1
        self._start_keeper()

    def _forget(self, job):
        with self._held_lock:
            self._held.pop(job.uuid, None)

    def consume(self, job, who):
        try:
            return super().consume(job, who)
        finally:
            self._forget(job)

    def abandon(self, job, who):
        try:
            return super().abandon(job, who)
        finally:
            self._forget(job)

    def trash(self, job, who):
        try:
            return super().trash(job, who)
        finally:
            self._forget(job)

    def held(self) -> list:
        with self._held_lock:
            return [job for job, _who in self._held.values()]

    # -- keeping claims alive --------------------------------------------------------------
    def _start_keeper(self):
        with self._held_lock:
            if self._keeper is None:
                self._stop_keeping.clear()
                self._keeper = threading.Thread(target=self._keep, name="claim-keeper",
                                                daemon=True)
                self._keeper.start()

    def _keep(self):
        while not self._stop_keeping.wait(self.claim_expiry / 3):
            self.renew()

    def renew(self) -> None:
        """Extend every claim this process holds; report those someone else owns now."""
        with self._held_lock:
            held = list(self._held.values())
        for job, who in held:
            try:
                owner = self.find_owner(job)
                if owner == who:
                    job.extend_expiry(self.claim_expiry)
                    continue
            except tf_exc.JobFailure as error:   # Redis unreachable: try again next round
                LOG.warning("cannot renew the claim of job %s: %s", job.uuid, error)
                continue
            LOG.error("job %s: claim lost (now owned by %s)", job.uuid, owner)
            self._forget(job)
            if self.on_lost is not None:
                self.on_lost(job)

    def close(self):
        self._stop_keeping.set()
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.join(timeout=5)
        super().close()


def open_board(settings, persistence=None, on_lost=None, claim_expiry=None) -> PurgeJobBoard:
    """The connected jobboard of the settings' `[jobboard]` (url, namespace, claim_expiry)."""
    values = settings.jobboard or {}
    if not values.get("url"):
        raise BadInput("no jobboard: give --jobboard redis://HOST:PORT (env NOVAPURGE_JOBBOARD, "
                       "config [jobboard] url)")
    conf = board_conf(values["url"], values.get("namespace"))
    expiry = float(claim_expiry or values.get("claim_expiry") or DEFAULT_CLAIM_EXPIRY)
    board = PurgeJobBoard("novapurge", conf, persistence=persistence, claim_expiry=expiry,
                          on_lost=on_lost)
    try:
        board.connect()
    except tf_exc.JobFailure as error:
        raise BadInput(f"cannot reach the jobboard at {conf['host']}:{conf['port']}: "
                       f"{error}") from None
    return board
