"""The journal database: TaskFlow's logbooks (one per purge), the change ledger and the VM locks."""

import contextlib

from taskflow import exceptions as tf_exc

from novapurge import validate
from novapurge.drivers.novadb import make_engine
from novapurge.errors import BadInput
from novapurge.persistence.backend import open_backend
from novapurge.persistence.ledger import Ledger
from novapurge.persistence.locks import VmLocks


class Journal:
    def __init__(self, url: str, actor):
        self.url = url
        self.backend = open_backend(url)
        self.engine = make_engine(url)
        self.ledger = Ledger(self.engine, actor)
        self.locks = VmLocks(self.engine)

    @contextlib.contextmanager
    def connection(self):
        conn = self.backend.get_connection()
        try:
            yield conn
        finally:
            conn.close()

    def book(self, purge_id: str):
        """The logbook of a purge, or BadInput naming the unknown id."""
        purge_id = validate.purge_id(purge_id)
        with self.connection() as conn:
            try:
                return conn.get_logbook(purge_id)
            except tf_exc.NotFound:
                raise BadInput(f"unknown purge id {purge_id} in this journal") from None

    def books(self) -> list:
        with self.connection() as conn:
            return sorted(conn.get_logbooks(), key=lambda b: b.created_at or 0)

    def save(self, book) -> None:
        with self.connection() as conn:
            conn.save_logbook(book)

    def purged_by(self, vm_uuid: str) -> str | None:
        """The purge that took `vm_uuid` past its point of no return, if any."""
        for row in self.ledger.rows(vm_uuid=vm_uuid):
            if row["atom"].startswith("PassPointOfNoReturn:") and row["outcome"] == "passed":
                return row["purge_id"]
        return None

    def close(self) -> None:
        self.backend.close()
        self.engine.dispose()
