"""The TaskFlow journal backend: what it persists is what a resume reads, on SQLite and MariaDB."""

import contextlib
import os
import subprocess
import sys
import textwrap
import threading
import uuid

import pytest
import sqlalchemy as sa
import taskflow.engines
from taskflow import exceptions as tf_exc
from taskflow import states, task
from taskflow.patterns import linear_flow, unordered_flow
from taskflow.persistence import models
from taskflow.persistence.backends import impl_sqlalchemy
from taskflow.utils import persistence_utils

from novapurge.errors import BadInput
from novapurge.persistence.backend import JournalBackend, engine_of, open_backend

MYSQL_SERVER = os.environ.get("NP_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/")
SECRET = "s3cr3t-Pa55"


class Step(task.Task):
    """Returns a small JSON dict naming itself."""

    def execute(self):
        return {"step": self.name}


class Explode(task.Task):
    """Always fails."""

    def execute(self):
        raise RuntimeError("boom")


@contextlib.contextmanager
def mysql_database():
    """A fresh MariaDB database `np_test_backend_<random>`, dropped afterwards (skip: no server)."""
    server = sa.engine.make_url(MYSQL_SERVER).set(database="")
    admin = sa.create_engine(server, poolclass=sa.pool.NullPool)
    name = f"np_test_backend_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
    except sa.exc.OperationalError as err:
        admin.dispose()
        pytest.fail(f"no MariaDB server at {server.host}:{server.port} (`make test` starts it): "
                    f"{err.orig}")
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def journal_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/journal/journal.sqlite"
    else:
        with mysql_database() as url:
            yield url


@pytest.fixture
def backend(journal_url):
    opened = open_backend(journal_url)
    yield opened
    opened.close()


def reopen(url):
    """A new backend object on the same database: what a resume after a restart reads."""
    return contextlib.closing(JournalBackend({"connection": url}))


def run_flow(backend, flow, **load_options):
    book, flow_detail = persistence_utils.temporary_flow_detail(backend)
    engine = taskflow.engines.load(flow, backend=backend, book=book, flow_detail=flow_detail,
                                   **load_options)
    try:
        engine.run()
    except RuntimeError:
        pass
    return book.uuid, flow_detail.uuid


def stored_flow(url, book_uuid):
    with reopen(url) as fresh:
        (flow_detail,) = list(fresh.get_connection().get_logbook(book_uuid))
        return flow_detail


def test_flow_run_persists_every_atom_state_and_result(backend, journal_url):
    flow = linear_flow.Flow("persist").add(*(Step(f"step-{i}") for i in range(1, 6)))

    book_uuid, flow_uuid = run_flow(backend, flow)

    stored = stored_flow(journal_url, book_uuid)
    assert stored.uuid == flow_uuid and stored.state == states.SUCCESS
    steps = {ad.name: ad for ad in stored if ad.name.startswith("step-")}
    assert sorted(steps) == [f"step-{i}" for i in range(1, 6)]
    for name, ad in steps.items():
        assert (ad.state, ad.intention, ad.results) == (states.SUCCESS, states.EXECUTE,
                                                        {"step": name})
        assert ad.meta["progress"] == 1.0
    # Stock TaskFlow reads the same journal (the rows are TaskFlow's, only the writes differ).
    stock = impl_sqlalchemy.SQLAlchemyBackend({"connection": journal_url})
    try:
        stock_detail = stock.get_connection().get_flow_details(flow_uuid)
        assert {ad.name: (ad.state, ad.results) for ad in stock_detail} == {
            ad.name: (ad.state, ad.results) for ad in stored}
    finally:
        stock.close()


def test_a_task_costs_two_atom_writes_its_progress_none(backend):
    """RUNNING and SUCCESS are written; the progress TaskFlow saves after each is not (it once
    was, after RUNNING: the remembered row shared the meta TaskFlow then changed in place)."""
    writes = []

    def count(_conn, _cursor, statement, _params, _context, _many):
        if statement.lstrip().upper().startswith("UPDATE ATOMDETAILS"):
            writes.append(statement)

    sa.event.listen(engine_of(backend), "before_cursor_execute", count)
    try:
        run_flow(backend, linear_flow.Flow("writes").add(*(Step(f"s-{i}") for i in range(4))))
    finally:
        sa.event.remove(engine_of(backend), "before_cursor_execute", count)

    # and one statement more: the flow's last save, with every atom's final progress
    assert len(writes) == 2 * 4 + 1


def test_failed_flow_persists_failure_and_reverts(backend, journal_url):
    flow = linear_flow.Flow("revert").add(Step("step-1"), Step("step-2"), Explode("step-3"))

    book_uuid, _ = run_flow(backend, flow)

    stored = {ad.name: ad for ad in stored_flow(journal_url, book_uuid)}
    assert stored["step-1"].state == stored["step-2"].state == states.REVERTED
    assert stored["step-3"].state == states.REVERTED
    assert stored["step-3"].failure.exception_str == "boom"
    assert stored["step-3"].failure.check(RuntimeError)


CRASH_FLOW = '''
import os, signal
from taskflow import task
from taskflow.patterns import linear_flow


class Step(task.Task):
    def execute(self):
        with open(os.environ["NP_TRACE"], "a") as trace:
            trace.write(self.name + "\\n")
        if self.name == "step-3" and os.environ.get("NP_CRASH") == "1":
            os.kill(os.getpid(), signal.SIGKILL)
        return {"step": self.name}


def crash_flow():
    return linear_flow.Flow("crash").add(*(Step(f"step-{i}") for i in range(1, 6)))
'''

CRASH_RUN = '''
import sys
import taskflow.engines
from taskflow.persistence import models
import crashflow
from novapurge.persistence.backend import open_backend

backend = open_backend(sys.argv[1])
book = models.LogBook("crash", uuid=sys.argv[2])
taskflow.engines.load_from_factory(crashflow.crash_flow, book=book, backend=backend).run()
'''


@pytest.mark.slow
def test_killed_flow_resumes_from_the_journal(journal_url, tmp_path, monkeypatch):
    (tmp_path / "crashflow.py").write_text(textwrap.dedent(CRASH_FLOW))
    trace = tmp_path / "trace.txt"
    env = dict(os.environ, PYTHONPATH=str(tmp_path), NP_TRACE=str(trace), NP_CRASH="1")
    book_uuid = str(uuid.uuid4())

    run = subprocess.run([sys.executable, "-c", CRASH_RUN, journal_url, book_uuid], env=env,
                         capture_output=True, text=True, timeout=120)

    assert run.returncode == -9, run.stderr
    assert trace.read_text().split() == ["step-1", "step-2", "step-3"]
    stored = stored_flow(journal_url, book_uuid)
    by_name = {ad.name: ad for ad in stored}
    assert stored.state == states.RUNNING
    assert [by_name[f"step-{i}"].state for i in range(1, 6)] == [
        states.SUCCESS, states.SUCCESS, states.RUNNING, states.PENDING, states.PENDING]
    assert by_name["step-2"].results == {"step": "step-2"}

    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("NP_TRACE", str(trace))
    monkeypatch.delenv("NP_CRASH", raising=False)
    with reopen(journal_url) as fresh:
        taskflow.engines.load_from_detail(stored, backend=fresh).run()

    # Step 3 was RUNNING at the kill, so it runs again; steps 1-2 are not repeated.
    assert trace.read_text().split() == ["step-1", "step-2", "step-3", "step-3", "step-4",
                                         "step-5"]
    resumed = stored_flow(journal_url, book_uuid)
    assert resumed.state == states.SUCCESS
    assert {ad.name: ad.state for ad in resumed if ad.name.startswith("step-")} == {
        f"step-{i}": states.SUCCESS for i in range(1, 6)}


def test_four_threads_share_one_backend(backend, journal_url):
    errors, books = [], []

    def worker(n):
        try:
            flow = linear_flow.Flow(f"thread-{n}").add(*(Step(f"t{n}-{i}") for i in range(8)))
            books.append(run_flow(backend, flow)[0])
        except Exception as err:  # reported below, with the thread's number
            errors.append((n, err))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    parallel = unordered_flow.Flow("parallel").add(*(Step(f"p-{i}") for i in range(12)))
    parallel_book, _ = run_flow(backend, parallel, engine="parallel", max_workers=4)
    for thread in threads:
        thread.join()

    assert errors == []
    for book_uuid in books + [parallel_book]:
        stored = stored_flow(journal_url, book_uuid)
        assert stored.state == states.SUCCESS
        atoms = [ad for ad in stored if not ad.name.startswith("_")]
        assert len(atoms) in (8, 12)
        assert all(ad.state == states.SUCCESS and ad.results == {"step": ad.name}
                   for ad in atoms)


def test_update_flow_details_inserts_updates_and_returns_atoms_others_added(backend,
                                                                           journal_url):
    book, flow_detail = persistence_utils.temporary_flow_detail(backend)
    first = models.TaskDetail("first", str(uuid.uuid4()))
    flow_detail.add(first)
    conn = backend.get_connection()
    conn.update_flow_details(flow_detail)
    with reopen(journal_url) as other:  # another writer adds an atom to the same flow
        theirs = flow_detail.copy(retain_contents=False)
        theirs.add(models.TaskDetail("second", str(uuid.uuid4())))
        other.get_connection().update_flow_details(theirs)

    mine = flow_detail.copy()
    mine.state = states.RUNNING
    first.state, first.results = states.SUCCESS, {"ok": True}
    returned = conn.update_flow_details(mine)

    assert sorted(ad.name for ad in returned) == ["first", "second"]
    stored = {ad.name: ad for ad in stored_flow(journal_url, book.uuid)}
    assert stored["first"].state == states.SUCCESS and stored["first"].results == {"ok": True}
    assert stored_flow(journal_url, book.uuid).state == states.RUNNING


def test_unknown_details_are_not_found(backend):
    conn = backend.get_connection()
    with pytest.raises(tf_exc.NotFound):
        conn.update_atom_details(models.TaskDetail("ghost", str(uuid.uuid4())))
    with pytest.raises(tf_exc.NotFound):
        conn.update_flow_details(models.FlowDetail("ghost", str(uuid.uuid4())))


def test_one_connection_object_is_reused(backend):
    assert backend.get_connection() is backend.get_connection()
    assert engine_of(backend) is backend.engine


def test_sqlite_file_connections_are_wal_full_with_foreign_keys(tmp_path):
    backend = open_backend(f"sqlite:///{tmp_path}/a/b/journal.sqlite")
    try:
        assert (tmp_path / "a" / "b" / "journal.sqlite").is_file()
        engine = engine_of(backend)
        assert not isinstance(engine.pool, sa.pool.NullPool)
        with engine.connect() as one, engine.connect() as two:
            for conn in (one, two):
                pragma = lambda name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()  # noqa: E731
                assert pragma("journal_mode") == "wal"
                assert pragma("synchronous") == 2  # FULL
                assert pragma("foreign_keys") == 1
                assert pragma("busy_timeout") >= 1000
    finally:
        backend.close()


def test_in_memory_sqlite_runs_a_flow():
    backend = open_backend("sqlite://")
    book_uuid, _ = run_flow(backend, linear_flow.Flow("mem").add(Step("step-1")))
    (stored,) = list(backend.get_connection().get_logbook(book_uuid))
    assert stored.state == states.SUCCESS


@pytest.mark.parametrize("url", [
    f"postgresql://admin:{SECRET}@db.example/np",
    f"mysql://root:{SECRET}@127.0.0.1/np",
    f"mysql+mysqldb://root:{SECRET}@127.0.0.1/np",
    f"mysql+pymysql://root:{SECRET}@/np",
    f"mysql+pymysql://root:{SECRET}@127.0.0.1:3306",
    f"sqlite://root:{SECRET}@host/journal.sqlite",
    "sqlite:///journal.sqlite?mode=ro",
    f"not a url {SECRET}",
    "",
])
def test_unsupported_urls_are_bad_input_without_password(url):
    with pytest.raises(BadInput) as caught:
        open_backend(url)
    message = str(caught.value)
    assert SECRET not in message and "\n" not in message


def test_unreachable_mysql_names_host_and_port_not_password():
    with pytest.raises(BadInput) as caught:
        open_backend(f"mysql+pymysql://root:{SECRET}@127.0.0.1:1/np")
    message = str(caught.value)
    assert "127.0.0.1:1" in message and SECRET not in message and "***" in message


@pytest.mark.mysql
def test_rejected_mysql_login_hides_password():
    with mysql_database() as url:
        wrong = sa.engine.make_url(url).set(username="np_nobody", password=SECRET)
        with pytest.raises(BadInput) as caught:
            open_backend(wrong.render_as_string(hide_password=False))
    message = str(caught.value)
    assert "Access denied" in message and SECRET not in message


def test_sqlite_directory_that_cannot_be_created_is_bad_input(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(BadInput, match="cannot create the journal directory"):
        open_backend(f"sqlite:///{tmp_path}/file/journal.sqlite")


@pytest.mark.mysql
def test_mysql_connections_return_to_the_pool_without_open_transactions():
    with mysql_database() as url:
        backend = open_backend(url)
        engine = engine_of(backend)
        try:
            book_uuid, _ = run_flow(backend, linear_flow.Flow("tx").add(Step("step-1")))
            list(backend.get_connection().get_logbook(book_uuid))  # a read, then back to the pool
            raw = engine.raw_connection()  # a write nobody committed nor rolled back
            raw.cursor().execute("UPDATE logbooks SET name = 'uncommitted'")
            raw.close()
            name = sa.engine.make_url(url).database
            with sa.create_engine(url, poolclass=sa.pool.NullPool).connect() as admin:
                open_transactions = admin.exec_driver_sql(
                    "SELECT COUNT(*) FROM information_schema.innodb_trx t JOIN "
                    "information_schema.processlist p ON p.id = t.trx_mysql_thread_id "
                    "WHERE p.db = %s", (name,)).scalar()
                names = admin.exec_driver_sql("SELECT DISTINCT name FROM logbooks").scalars()
                assert open_transactions == 0 and "uncommitted" not in list(names)
        finally:
            backend.close()


@pytest.mark.mysql
def test_mysql_connections_killed_while_idle_are_replaced(monkeypatch):
    from novapurge.persistence import backend as journal

    monkeypatch.setattr(journal, "MYSQL_PING_AFTER_IDLE_S", 0.0)
    with mysql_database() as url:
        backend = open_backend(url)
        try:
            run_flow(backend, linear_flow.Flow("before").add(Step("step-1")))
            name = sa.engine.make_url(url).database
            with sa.create_engine(url, poolclass=sa.pool.NullPool).connect() as admin:
                ids = admin.exec_driver_sql(
                    "SELECT id FROM information_schema.processlist WHERE db = %s "
                    "AND id <> CONNECTION_ID()", (name,)).scalars().all()
                for thread_id in ids:
                    admin.exec_driver_sql(f"KILL {int(thread_id)}")
            assert ids

            book_uuid, _ = run_flow(backend, linear_flow.Flow("after").add(Step("step-1")))

            assert stored_flow(url, book_uuid).state == states.SUCCESS
        finally:
            backend.close()
