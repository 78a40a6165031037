"""The journal database: TaskFlow's logbooks (one per purge), the change ledger and the VM locks."""

import contextlib
import os
import pathlib

import sqlalchemy as sa

from taskflow import exceptions as tf_exc

from novapurge import validate
from novapurge.errors import BadInput
from novapurge.persistence.backend import engine_of, open_backend
from novapurge.persistence.ledger import Ledger
from novapurge.persistence.locks import VmLocks


def protect_sqlite_file(url: str) -> None:
    """A SQLite journal holds protected before-states: its folder 0700, the file 0600."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or \
            parsed.database == ":memory:":
        return
    path = pathlib.Path(parsed.database).expanduser()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
    os.chmod(path, 0o600)


class Journal:
    def __init__(self, url: str, actor):
        self.url = url
        try:
            protect_sqlite_file(url)
        except sa.exc.ArgumentError:
            pass  # open_backend names the problem
        except OSError as error:
            raise BadInput(f"cannot create the journal file: {error.strerror}") from None
        self.backend = open_backend(url)
        self.engine = engine_of(self.backend)  # one pool, one set of connection settings
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

    def add_flow(self, purge_id: str, flow_detail) -> None:
        """Journal one more VM's flow detail in a saved purge (cost independent of its size)."""
        with self.connection() as conn:
            conn.add_flow_details(purge_id, flow_detail)

    def flow(self, flow_uuid: str):
        """One flow detail with its atoms, without loading the rest of its purge."""
        with self.connection() as conn:
            return conn.get_flow_details(flow_uuid)

    def close(self) -> None:
        self.backend.close()  # disposes the shared engine
