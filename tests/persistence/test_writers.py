"""Writers of one SQLite file queue, across threads and across processes."""

import subprocess
import sys
import threading
import time

import sqlalchemy as sa

from novapurge.persistence import writers
from novapurge.persistence.ledger import Actor, Ledger

HOLD_IN_CHILD = """
import pathlib, sys, time
import sqlalchemy as sa
from novapurge.persistence import writers
engine = sa.create_engine(sys.argv[1])
with writers.serialized(engine):
    pathlib.Path(sys.argv[2]).write_text("held")
    time.sleep(float(sys.argv[4]))
    pathlib.Path(sys.argv[3]).write_text(repr(time.time()))
"""

OPEN_JOURNAL = """
import pathlib, sys, time
from novapurge.persistence.journal import Journal
from novapurge.persistence.ledger import Actor
go = pathlib.Path(sys.argv[2])
while not go.exists():
    time.sleep(0.005)
Journal(sys.argv[1], Actor("t")).close()
"""


def _wait_for(path, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def test_a_writer_of_another_process_waits_for_the_lock(tmp_path):
    url = f"sqlite:///{tmp_path / 'j.sqlite'}"
    held, released = tmp_path / "held", tmp_path / "released"
    child = subprocess.Popen([sys.executable, "-c", HOLD_IN_CHILD, url, str(held),
                              str(released), "1.0"])
    try:
        _wait_for(held)
        engine = sa.create_engine(url)
        with writers.serialized(engine):
            acquired = time.time()
            assert released.exists()    # not before the other process let go
        assert acquired >= float(released.read_text())
        assert (tmp_path / f"j.sqlite{writers.LOCK_SUFFIX}").exists()
    finally:
        assert child.wait(timeout=30) == 0


def test_the_lock_is_reentrant_in_a_thread_and_free_for_others_after(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'j.sqlite'}")
    with writers.serialized(engine), writers.write_transaction(engine) as conn:
        conn.execute(sa.text("CREATE TABLE t (x INTEGER)"))
    # released: another process gets it at once
    probe = subprocess.run([sys.executable, "-c", HOLD_IN_CHILD, str(engine.url),
                            str(tmp_path / "h"), str(tmp_path / "r"), "0"], timeout=30)
    assert probe.returncode == 0 and (tmp_path / "r").exists()


def test_processes_opening_a_new_journal_at_once_all_succeed(tmp_path):
    url, go = f"sqlite:///{tmp_path / 'journal.sqlite'}", tmp_path / "go"
    openers = [subprocess.Popen([sys.executable, "-c", OPEN_JOURNAL, url, str(go)],
                                stderr=subprocess.PIPE, text=True) for _ in range(4)]
    time.sleep(1.0)     # every interpreter started, polling for the go
    go.write_text("go")
    errors = [opener.communicate(timeout=60)[1] for opener in openers]
    assert [opener.returncode for opener in openers] == [0, 0, 0, 0], errors
    with sa.create_engine(url).connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM novapurge_ledger_head")).scalar() == 1


def _queued_behind_the_lock(engine, works):
    """Each work left by a thread of its own behind the file's writer lock (_run_behind_the_lock).
    Returns the threads' outcomes and the COMMITs the engine made."""
    commits, outcomes = [], {}
    sa.event.listen(engine, "commit", lambda conn: commits.append(1))

    def call(key, work):
        try:
            outcomes[key] = ("ok", writers.commit(engine, work))
        except Exception as error:      # noqa: BLE001 - the outcome is the point
            outcomes[key] = ("error", error)

    _run_behind_the_lock(engine, [threading.Thread(target=call, args=item)
                                  for item in works.items()])
    return outcomes, len(commits)


def _run_behind_the_lock(engine, threads):
    """Start the threads, each of which leaves one work, while this thread holds the file's
    writer lock; let go once every work is waiting; wait for the threads."""
    with writers.serialized(engine):
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while len(writers._lock_of(engine)._queue) < len(threads):
            assert time.monotonic() < deadline
            time.sleep(0.01)
    for thread in threads:
        thread.join(timeout=30)


def _table(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'j.sqlite'}")
    with writers.write_transaction(engine) as conn:
        conn.execute(sa.text("CREATE TABLE t (k INTEGER PRIMARY KEY)"))
    return engine


def test_works_left_behind_the_lock_are_committed_together(tmp_path):
    engine = _table(tmp_path)
    works = {k: (lambda conn, k=k: conn.execute(sa.text("INSERT INTO t VALUES (:k)"),
                                                {"k": k}).rowcount * k)
             for k in range(1, 41)}
    outcomes, commits = _queued_behind_the_lock(engine, works)
    assert outcomes == {k: ("ok", k) for k in works}
    assert commits == 1
    with engine.connect() as conn:
        assert sorted(conn.execute(sa.text("SELECT k FROM t")).scalars()) == list(works)


def test_a_failing_work_fails_alone_and_the_others_commit(tmp_path):
    engine = _table(tmp_path)
    works = {k: (lambda conn, k=k: conn.execute(sa.text("INSERT INTO t VALUES (:k)"),
                                                {"k": k}).rowcount) for k in range(1, 11)}
    works[5] = lambda conn: conn.execute(sa.text("INSERT INTO missing VALUES (1)"))
    outcomes, _commits = _queued_behind_the_lock(engine, works)
    assert outcomes[5][0] == "error" and isinstance(outcomes[5][1], sa.exc.OperationalError)
    assert {k: o for k, o in outcomes.items() if k != 5} == {k: ("ok", 1) for k in works if k != 5}
    with engine.connect() as conn:
        assert sorted(conn.execute(sa.text("SELECT k FROM t")).scalars()) == [
            k for k in works if k != 5]


def test_ledger_entries_committed_together_form_one_chain_reading_its_head_once(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'j.sqlite'}")
    ledger = Ledger(engine, Actor(operator="alice"))
    ledger.bind("p0", "vm-0").note("S:x", "first", "passed")
    head_reads = []
    sa.event.listen(engine, "before_cursor_execute",
                    lambda _c, _cur, statement, *_a: head_reads.append(1)
                    if "FROM novapurge_ledger_head" in statement else None)

    def note(i):
        ledger.bind("p1", f"vm-{i}").note("S:x", f"r{i}", "passed")

    _run_behind_the_lock(engine, [threading.Thread(target=note, args=(i,)) for i in range(20)])
    assert len(head_reads) == 1     # by the group's first entry; the others followed it
    assert len(ledger.rows(purge_id="p1")) == 20 and len(ledger.rows()) == 21
    assert ledger.verify() == []
