"""Nova DB write transactions: a real MariaDB deadlock is run again, other errors are not."""

import secrets
import threading

import pytest
import sqlalchemy as sa

from novapurge.drivers.novadb import NovaDatabase
from novapurge.sandbox import novadb as sandbox_novadb

SERVER = "mysql+pymysql://root@127.0.0.1:3306"
pytestmark = pytest.mark.mysql


@pytest.fixture
def db():
    name = f"np_test_tx_{secrets.token_hex(4)}"
    url = sandbox_novadb.mysql_database(SERVER, name)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE quota_usages (id INT PRIMARY KEY, in_use INT) "
                             "ENGINE=InnoDB")
        conn.exec_driver_sql("INSERT INTO quota_usages VALUES (1, 10), (2, 20)")
    engine.dispose()
    database = NovaDatabase(url, "cell")
    yield database
    database.dispose()
    sandbox_novadb.drop_mysql_database(SERVER, name)


def test_a_deadlock_victim_is_run_again_and_both_changes_land(db):
    """Two transactions lock the two rows in opposite orders: InnoDB rolls one back (1213);
    run_transaction runs it again, so both decrements are applied exactly once."""
    both_hold_one = threading.Barrier(2)
    runs = {"a": 0, "b": 0}

    def work(name, first, second):
        def body(conn):
            runs[name] += 1
            db.select(conn, "quota_usages", {"id": first}, for_update=True)
            if runs[name] == 1:
                both_hold_one.wait(timeout=10)
            db.update(conn, "quota_usages", {"id": second}, {"in_use": _current(conn, second) - 1})
            db.update(conn, "quota_usages", {"id": first}, {"in_use": _current(conn, first) - 1})
        return body

    errors = []

    def run(name, first, second):
        try:
            db.run_transaction(work(name, first, second))
        except Exception as error:  # reported below: the test must see it
            errors.append(error)

    threads = [threading.Thread(target=run, args=("a", 1, 2)),
               threading.Thread(target=run, args=("b", 2, 1))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert sorted(runs.values()) == [1, 2]          # exactly one victim, run once more
    with db.engine.connect() as conn:
        rows = dict(conn.exec_driver_sql("SELECT id, in_use FROM quota_usages").fetchall())
    assert rows == {1: 8, 2: 18}


def _current(conn, row_id):
    return conn.exec_driver_sql("SELECT in_use FROM quota_usages WHERE id = %s",
                                (row_id,)).scalar_one()


def test_other_errors_are_not_retried(db):
    runs = []

    def body(conn):
        runs.append(1)
        conn.exec_driver_sql("SELECT no_such_column FROM quota_usages")

    with pytest.raises(sa.exc.OperationalError):
        db.run_transaction(body)
    assert runs == [1]
