"""novapurge's own tables in the journal database, beside TaskFlow's: ledger, chain head, locks."""

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from novapurge.persistence import writers

GENESIS = "0" * 64
metadata = sa.MetaData()

ledger = sa.Table(
    "novapurge_ledger", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("purge_id", sa.String(36), nullable=False, index=True),
    sa.Column("vm_uuid", sa.String(36), nullable=False, index=True),
    sa.Column("atom", sa.String(255), nullable=False),
    sa.Column("resource", sa.String(255), nullable=False),
    sa.Column("phase", sa.String(16), nullable=False),
    sa.Column("outcome", sa.String(32), nullable=False),
    sa.Column("before", sa.Text().with_variant(mysql.LONGTEXT(), "mysql")),
    sa.Column("after", sa.Text().with_variant(mysql.LONGTEXT(), "mysql")),
    sa.Column("protected", sa.Text().with_variant(mysql.LONGTEXT(), "mysql")),
    sa.Column("protected_digest", sa.String(64)),
    sa.Column("operator", sa.String(255)),
    sa.Column("ticket", sa.String(255)),
    sa.Column("os_user", sa.String(255)),
    sa.Column("machine", sa.String(255)),
    sa.Column("pid", sa.Integer),
    sa.Column("target", sa.String(255)),
    sa.Column("argv", sa.Text),
    sa.Column("ts", sa.String(40), nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Index("ix_novapurge_ledger_lookup", "purge_id", "vm_uuid", "atom"),
)

ledger_head = sa.Table(
    "novapurge_ledger_head", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("last_id", sa.Integer, nullable=False),
    sa.Column("last_hash", sa.String(64), nullable=False),
)

locks = sa.Table(
    "novapurge_locks", metadata,
    sa.Column("vm_uuid", sa.String(36), primary_key=True),
    sa.Column("purge_id", sa.String(36), nullable=False),
    sa.Column("machine", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("pid_started", sa.String(32), nullable=False),
    sa.Column("acquired_at", sa.String(40), nullable=False),
)


def create(engine: sa.engine.Engine) -> None:
    """Create the tables (idempotent) and the chain head row."""
    with writers.write_transaction(engine) as conn:
        metadata.create_all(conn)
        if conn.execute(sa.select(ledger_head.c.id)).first() is None:
            try:
                with conn.begin_nested():
                    conn.execute(sa.insert(ledger_head).values(id=1, last_id=0,
                                                               last_hash=GENESIS))
            except sa.exc.IntegrityError:
                pass  # another process created it first


_HEAD = sa.select(ledger_head)
_HEAD_FOR_UPDATE = _HEAD.with_for_update()


def chain_head(conn) -> dict:
    """The chain head, held until the transaction ends: on SQLite the transaction already holds
    the file's write lock (writers.commit begins IMMEDIATE); on MySQL the row is locked."""
    query = _HEAD if conn.dialect.name == "sqlite" else _HEAD_FOR_UPDATE
    return dict(conn.execute(query).one()._mapping)
