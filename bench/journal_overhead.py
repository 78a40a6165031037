"""What journaling every TaskFlow transition costs, per task, on each backend.

    python bench/journal_overhead.py [--tasks N] [--repeat R] [--mysql-url URL] [--no-mysql]
                                     [--json]

Runs the same linear flow of N trivial tasks (each returns a small dict, as our tasks do) with a
TaskFlow engine loaded with `backend=`, `book=` and `flow_detail=`, so every transition is
persisted, on: (a) TaskFlow's memory backend, (b) TaskFlow's stock SQLAlchemyBackend on a SQLite
file, (c) novapurge's JournalBackend on a SQLite file, (d) stock on MariaDB, (e) ours on MariaDB.
Both SQLite files are in WAL mode, so (b) vs (c) measures TaskFlow's overhead, not the journal
mode. The MariaDB cases use the database `np_bench_journal` on the server of --mysql-url, created
fresh for each case and dropped at the end. Prints the median ms/task of R runs, the ratio to
the memory backend and the journal's share (ms/task minus the memory backend's: TaskFlow's own
engine work grows with the flow's length, about 1 ms/task at 20 tasks and 3 at 200); after each
run the journal is read back through a fresh backend and checked.
"""

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import sqlalchemy as sa
import taskflow.engines
from taskflow import states, task
from taskflow.patterns import linear_flow
from taskflow.persistence.backends import impl_memory, impl_sqlalchemy
from taskflow.utils import persistence_utils

from novapurge.persistence.backend import JournalBackend, open_backend

MYSQL_SERVER = "mysql+pymysql://root@127.0.0.1:3306/"
MYSQL_DATABASE = "np_bench_journal"


class Step(task.Task):
    """A trivial task: returns a small JSON dict."""

    def execute(self):
        return {"step": self.name}


def make_flow(tasks: int) -> linear_flow.Flow:
    flow = linear_flow.Flow("bench")
    flow.add(*(Step(f"step-{i:04d}") for i in range(tasks)))
    return flow


def run_once(backend, tasks: int, reopen) -> float:
    """Run the flow on the backend; return ms per task; check the journal through `reopen()`."""
    book, flow_detail = persistence_utils.temporary_flow_detail(backend)
    started = time.perf_counter()
    engine = taskflow.engines.load(make_flow(tasks), backend=backend, book=book,
                                   flow_detail=flow_detail)
    engine.run()
    elapsed = time.perf_counter() - started
    if reopen is not None:
        check_journal(reopen, flow_detail.uuid, tasks)
    return elapsed * 1000 / tasks


def check_journal(reopen, flow_uuid: str, tasks: int) -> None:
    """Every task is SUCCESS with its result, as a resume would read it."""
    fresh = reopen()
    try:
        with contextlib.closing(fresh.get_connection()) as conn:
            detail = conn.get_flow_details(flow_uuid)
        steps = [ad for ad in detail if ad.name.startswith("step-")]
        bad = [ad.name for ad in steps
               if ad.state != states.SUCCESS or ad.results != {"step": ad.name}]
        if detail.state != states.SUCCESS or len(steps) != tasks or bad:
            raise SystemExit(f"journal check failed for flow {flow_uuid}: state {detail.state}, "
                             f"{len(steps)} steps, wrong: {bad[:5]}")
    finally:
        fresh.close()


def measure(open_case, tasks: int, repeat: int, reopen=None) -> float:
    """Median ms/task over `repeat` runs, after a short warm-up run, on one backend."""
    backend = open_case()
    try:
        run_once(backend, min(tasks, 10), None)
        return statistics.median(run_once(backend, tasks, reopen) for _ in range(repeat))
    finally:
        backend.close()


def stock_backend(url: str) -> impl_sqlalchemy.SQLAlchemyBackend:
    backend = impl_sqlalchemy.SQLAlchemyBackend({"connection": url})
    with contextlib.closing(backend.get_connection()) as conn:
        conn.upgrade()
    return backend


def sqlite_file(directory: str, name: str) -> str:
    """A fresh SQLite file, already switched to WAL (the mode is stored in the file)."""
    path = os.path.join(directory, name)
    engine = sa.create_engine(f"sqlite:///{path}", poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    engine.dispose()
    return f"sqlite:///{path}"


class NoServer(Exception):
    """The MariaDB server of --mysql-url cannot be reached."""


@contextlib.contextmanager
def mysql_database(server_url: str):
    """Create the bench database afresh; drop it at the end. Yields its URL and a re-creator."""
    server = sa.engine.make_url(server_url).set(database="")
    admin = sa.create_engine(server, poolclass=sa.pool.NullPool)

    def recreate():
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {MYSQL_DATABASE}")
            conn.exec_driver_sql(f"CREATE DATABASE {MYSQL_DATABASE} CHARACTER SET utf8mb4")

    try:
        recreate()
    except sa.exc.OperationalError as err:
        admin.dispose()
        raise NoServer(str(err.orig)) from None
    try:
        yield server.set(database=MYSQL_DATABASE).render_as_string(hide_password=False), recreate
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {MYSQL_DATABASE}")
        admin.dispose()


def run_cases(args) -> list:
    results = []

    def case(name, open_case, reopen=None):
        ms = measure(open_case, args.tasks, args.repeat, reopen)
        results.append({"case": name, "ms_per_task": ms})
        if not args.json:
            print(f"  {name}: {ms:.2f} ms/task", file=sys.stderr)

    case("memory", lambda: impl_memory.MemoryBackend({}))
    directory = tempfile.mkdtemp(prefix="np-bench-journal-")
    try:
        stock_url = sqlite_file(directory, "stock.sqlite")
        ours_url = sqlite_file(directory, "ours.sqlite")
        case("stock SQLAlchemyBackend, SQLite", lambda: stock_backend(stock_url),
             lambda: stock_backend(stock_url))
        case("novapurge JournalBackend, SQLite", lambda: open_backend(ours_url),
             lambda: JournalBackend({"connection": ours_url}))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    if args.no_mysql:
        return results
    try:
        with mysql_database(args.mysql_url) as (url, recreate):
            case("stock SQLAlchemyBackend, MariaDB", lambda: stock_backend(url),
                 lambda: stock_backend(url))
            recreate()
            case("novapurge JournalBackend, MariaDB", lambda: open_backend(url),
                 lambda: JournalBackend({"connection": url}))
    except NoServer as err:
        print(f"MariaDB cases skipped: {err}", file=sys.stderr)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200, help="tasks in the flow (200)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; the median is shown")
    parser.add_argument("--mysql-url", default=MYSQL_SERVER,
                        help=f"MariaDB server URL ({MYSQL_SERVER}); its database is not used")
    parser.add_argument("--no-mysql", action="store_true", help="only the memory and SQLite cases")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.tasks < 1 or args.repeat < 1:
        parser.error("--tasks and --repeat must be at least 1")
    results = run_cases(args)
    memory = results[0]["ms_per_task"]
    for result in results:
        result["ratio_to_memory"] = result["ms_per_task"] / memory
        result["overhead_ms_per_task"] = result["ms_per_task"] - memory
    if args.json:
        print(json.dumps({"tasks": args.tasks, "repeat": args.repeat, "results": results},
                         indent=2))
        return 0
    width = max(len(result["case"]) for result in results)
    print(f"{args.tasks} tasks, median of {args.repeat} runs")
    print(f"{'backend':<{width}}  {'ms/task':>8}  {'x memory':>8}  {'journal ms/task':>15}")
    for result in results:
        print(f"{result['case']:<{width}}  {result['ms_per_task']:>8.2f}  "
              f"{result['ratio_to_memory']:>8.1f}  {result['overhead_ms_per_task']:>15.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
