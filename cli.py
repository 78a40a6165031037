"""The `novapurge` command line: plan, purge, resume, rollback, status, audit, demo."""

import dataclasses
import functools
import logging
import sys

import click

from novapurge import config, errors, faults, output
from novapurge.drivers.novadb import NovaDatabases
from novapurge.errors import BadInput, NovapurgeError
from novapurge.persistence.ledger import Actor

EXIT_CODES_HELP = "\b\nExit codes:\n" + "\n".join(
    f"  {code}  {text}" for code, text in errors.EXIT_CODES.items())


def common_options(command):
    """Connection, identity and output options every command takes (flags > env > file)."""
    options = [
        click.option("-f", "--output-format", "fmt", type=click.Choice(["table", "json"]),
                     default="table", show_default=True, help="json: machine-readable output."),
        click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="NOVAPURGE_CONFIG",
                     help="novapurge.toml [env NOVAPURGE_CONFIG; default the first of "
                          "./novapurge.toml, ~/.config/novapurge/novapurge.toml, "
                          "/etc/novapurge/novapurge.toml]."),
        click.option("--nova-conf", type=click.Path(dir_okay=False),
                     envvar="NOVAPURGE_NOVA_CONF",
                     help="Read [database]/[api_database] connections, instances_path and "
                          "memcached servers from this nova.conf [env NOVAPURGE_NOVA_CONF]."),
        click.option("--db", "cell_url", envvar="NOVAPURGE_DB", metavar="URL",
                     help="Cell (main) database URL: the only one without an API DB; with one, "
                          "cells come from cell_mappings and this fills templated mappings "
                          "[env NOVAPURGE_DB]."),
        click.option("--api-db", "api_url", envvar="NOVAPURGE_API_DB", metavar="URL",
                     help="API database URL; cells are found through its cell mappings "
                          "[env NOVAPURGE_API_DB]."),
        click.option("--journal", "journal_url", envvar="NOVAPURGE_JOURNAL", metavar="URL",
                     help="Journal database: sqlite:///FILE or mysql+pymysql://... "
                          "[env NOVAPURGE_JOURNAL; default a SQLite file in the state dir]."),
        click.option("--os-cloud", envvar="OS_CLOUD", metavar="CLOUD",
                     help="clouds.yaml entry for the OpenStack APIs (placement, Neutron, Cinder, "
                          "Glance, Nova) [env OS_CLOUD; config [cloud] name]."),
        click.option("--sandbox", type=click.Path(file_okay=False), envvar="NOVAPURGE_SANDBOX",
                     help="Use the simulated hosts and cloud of a sandbox dir (`novapurge demo "
                          "--dir`) instead of SSH and clouds.yaml [env NOVAPURGE_SANDBOX]."),
        click.option("--ssh-accept-new", is_flag=True, envvar="NOVAPURGE_SSH_ACCEPT_NEW",
                     help="Trust a compute host's SSH key on first use (saved to known_hosts and "
                          "recorded in the ledger); a changed key is always refused."),
        click.option("--operator", envvar="NOVAPURGE_OPERATOR",
                     help="Who is acting, for the audit trail [default: the OS user]."),
        click.option("--ticket", envvar="NOVAPURGE_TICKET",
                     help="Change/incident ticket recorded with every change."),
        click.option("-v", "--verbose", count=True, help="More logging on stderr (-vv: debug)."),
    ]
    for option in reversed(options):
        command = option(command)

    @functools.wraps(command)
    def wrapper(fmt, config_path, nova_conf, cell_url, api_url, journal_url, os_cloud, sandbox,
                ssh_accept_new, operator, ticket, verbose, **kwargs):
        logging.basicConfig(level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)],
                            format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
        as_json, app = fmt == "json", None
        try:
            try:
                faults.check()
            except ValueError as error:
                raise BadInput(str(error)) from None
            settings = config.load(config=config_path, nova_conf=nova_conf, cell_url=cell_url,
                                   api_url=api_url, journal_url=journal_url, operator=operator,
                                   ticket=ticket, os_cloud=os_cloud, sandbox=sandbox)
            app = App(settings, as_json, ssh_accept_new)
            return command(app, **kwargs)
        except NovapurgeError as error:
            output.fail(str(error), error.exit_code, as_json)
        except Exception as error:  # a bug: one line, the traceback with -v
            logging.getLogger("novapurge").debug("unexpected error", exc_info=True)
            output.fail(f"unexpected {type(error).__name__}: {error} (run with -v for details)",
                        1, as_json)
        finally:
            if app is not None:
                app.close()
    return wrapper


class App:
    """Settings plus the journal and databases, opened on first use."""

    def __init__(self, settings, as_json, ssh_accept_new=False):
        self.settings, self.as_json = settings, as_json
        self.ssh_accept_new = ssh_accept_new
        self._journal = self._purger = None

    @property
    def has_purger(self) -> bool:
        return self._purger is not None

    def close(self):
        if self._purger is not None:
            self._purger.close()
            self._purger.novadb.dispose()
            for driver in (self._purger.drivers.hosts, self._purger.drivers.cloud,
                           self._purger.drivers.consoles):
                if driver is not None:
                    driver.close()
        if self._journal is not None:
            self._journal.close()

    @property
    def journal(self):
        if self._journal is None:
            from novapurge.persistence.journal import Journal
            actor = Actor.from_options(self.settings.operator, self.settings.ticket)
            self._journal = Journal(self.settings.journal_url, actor)
        return self._journal

    @property
    def purger(self):
        if self._purger is None:
            from novapurge.drivers import setup
            from novapurge.flows.run import Purger
            novadb = NovaDatabases(self.settings.cell_url, self.settings.api_url,
                                   self.settings.cell_overrides)
            new_keys = []
            hosts = setup.host_pool(self.settings, lambda *key: new_keys.append(key),
                                    self.ssh_accept_new)
            if hosts is not None and self.settings.ssh.get("max_channels"):
                # --host-limit (or [ssh] max_channels) for the sandbox's hosts too; runners
                # are made on first use, so every one gets it
                hosts.options = dataclasses.replace(
                    hosts.options, max_channels=int(self.settings.ssh["max_channels"]))
            self._purger = Purger(
                self.journal, novadb, report=output.step_reporter(not self.as_json),
                hosts=hosts,
                cloud=setup.cloud_api(self.settings), consoles=setup.console_store(self.settings),
                instances_path=self.settings.instances_path, new_host_keys=new_keys)
        return self._purger


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
             epilog=EXIT_CODES_HELP)
@click.version_option(package_name="novapurge")
def main():
    """Remove a stuck Nova instance everywhere it left traces: journaled, resumable, reversible.

    For instances that `nova delete` and `nova force-delete` cannot remove. Start with
    `novapurge plan UUID` (changes nothing), then `novapurge purge UUID`. Every change is recorded
    before it is made: `resume` finishes an interrupted purge, `rollback` undoes one, `audit
    export` shows who changed what. Try `novapurge demo` first: it needs no cloud.
    """


skip_option = click.option(
    "--skip", multiple=True, metavar="GROUP[,GROUP]",
    help="Leave a step group out (recorded in the ledger): db, quota, mapping, placement, "
         "host (a host that does not answer: its cleanup is recorded as deferred), console, "
         "volumes, ports, images. Skipping db requires skipping quota and mapping.")
delete_volumes_option = click.option(
    "--delete-volumes", type=click.Choice(["dot", "all", "none"]), default="dot",
    show_default=True,
    help="After the point of no return: delete the volumes whose BDM says "
         "delete_on_termination (dot, as Nova does), all attached volumes, or none (all are "
         "detached either way).")
force_option = click.option("--force", is_flag=True,
                            help="Purge even an instance that looks healthy.")


@main.command()
@click.argument("vm_uuids", nargs=-1, metavar="UUID...")
@force_option
@skip_option
@delete_volumes_option
@click.option("--graph", type=click.Path(dir_okay=False, writable=True), metavar="FILE.dot",
              help="Write the step graph (Graphviz DOT) of the first instance to FILE.")
@common_options
def plan(app, vm_uuids, force, skip, delete_volumes, graph):
    """Show what a purge would change, step by step, without changing anything.

    Lists each step's SQL, host commands and API calls; reads the hosts and APIs but changes
    nothing.
    """
    from novapurge.commands import show_plan
    show_plan(app, vm_uuids, force, skip, graph, delete_volumes)


yes_option = click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")


def from_file_option(verb: str):
    return click.option(
        "--from-file", type=click.Path(dir_okay=False, allow_dash=True), metavar="FILE",
        help=f"Also {verb} the instance UUIDs listed in FILE (one per line, # comments; "
             "- reads standard input).")


parallel_option = click.option(
    "--parallel", type=click.IntRange(1, 512), default=None, metavar="N",
    help="VMs worked on at once, each by its own engine, so one VM's failure never touches "
         "another [default: 8].")
host_limit_option = click.option(
    "--host-limit", type=click.IntRange(1, 256), default=None, metavar="N",
    help="Commands in flight at once on one compute host, over its one SSH connection "
         "[default: [ssh] max_channels, 8].")


@main.command()
@click.argument("vm_uuids", nargs=-1, metavar="UUID...")
@from_file_option("purge")
@yes_option
@force_option
@skip_option
@delete_volumes_option
@click.option("--hold", is_flag=True,
              help="Stop at the point of no return (SUSPENDED): check the result of the "
                   "reversible steps, then `resume` to finalize or `rollback` to undo them.")
@parallel_option
@host_limit_option
@common_options
def purge(app, vm_uuids, from_file, yes, force, skip, delete_volumes, hold, parallel,
          host_limit):
    """Purge instances: discover, guard, reversible steps, point of no return.

    Without --yes the plan is shown (for one instance) and confirmation asked (refused when not
    on a terminal). Prints the purge id that `status`, `resume`, `rollback` and `audit export`
    take. Many instances run as a batch: each one's failure reverts or suspends that instance
    only, an instance a guard refuses is reported and the others go on; a summary table (or
    `-f json`) ends it.
    """
    from novapurge.commands import run_purge
    run_purge(app, vm_uuids, yes, force, skip, delete_volumes, from_file, parallel, host_limit,
              hold)


take_over_option = click.option(
    "--take-over", is_flag=True,
    help="Take over VMs whose purge process ran on another machine that you know is gone "
         "(this machine cannot check it); recorded in the ledger.")


@main.command()
@click.argument("purge_id")
@take_over_option
@parallel_option
@host_limit_option
@common_options
def resume(app, purge_id, take_over, parallel, host_limit):
    """Continue an interrupted or suspended purge from its last journaled step.

    Steps already done keep their results (facts are not re-discovered); the step that was
    running when the purge stopped runs again and finds its first before-state in the ledger.
    Each VM of a batch resumes on its own; VMs the batch never started are started.
    """
    from novapurge.commands import run_resume
    run_resume(app, purge_id, take_over, parallel, host_limit)


@main.command()
@click.argument("purge_id")
@yes_option
@take_over_option
@parallel_option
@host_limit_option
@common_options
def rollback(app, purge_id, yes, take_over, parallel, host_limit):
    """Undo a purge: every recorded change is restored to the state it was found in.

    Works on finished, interrupted and suspended purges; refused once an irreversible step
    after the point of no return has run (per VM, in a batch).
    """
    from novapurge.commands import run_rollback
    run_rollback(app, purge_id, yes, take_over, parallel, host_limit)


jobboard_option = click.option(
    "--jobboard", "jobboard_url", envvar="NOVAPURGE_JOBBOARD", metavar="URL",
    help="The jobboard: redis://HOST[:PORT][/DB] [env NOVAPURGE_JOBBOARD; config [jobboard] url].")


@main.command()
@click.argument("vm_uuids", nargs=-1, metavar="UUID...")
@from_file_option("submit")
@yes_option
@force_option
@skip_option
@delete_volumes_option
@click.option("--hold", is_flag=True,
              help="Conductors stop each VM at its point of no return (SUSPENDED).")
@parallel_option
@jobboard_option
@common_options
def submit(app, vm_uuids, from_file, yes, force, skip, delete_volumes, hold, parallel,
           jobboard_url):
    """Queue a purge for conductors on any machine: one jobboard job per instance.

    Each instance is checked here (guards, its domain, the drivers it needs): a refused one is
    reported and not queued. The purge and its VMs' flows go to the journal, which must be
    shared with the conductors (MySQL/MariaDB); `novapurge conductor` runs the jobs and
    `status` follows them (QUEUED, RUNNING, ...).
    """
    from novapurge.commands import run_submit
    run_submit(app, vm_uuids, yes, force, skip, delete_volumes, from_file, parallel, hold,
               jobboard_url)


@main.command()
@click.option("--jobs", type=click.IntRange(1, 256), default=4, show_default=True,
              help="Jobs (VMs) this conductor runs at once, each in its own engine.")
@click.option("--name", metavar="NAME", help="Name prefix of this conductor on the jobboard "
              "[default: novapurge]; host and pid are appended.")
@click.option("--claim-expiry", type=click.FloatRange(1.0, 3600.0), default=None,
              metavar="SECONDS",
              help="A claim not renewed for this long expires and the job goes to another "
                   "conductor [default: [jobboard] claim_expiry, 30]; renewed every third of it.")
@click.option("--max-jobs", type=click.IntRange(1), default=None, metavar="N",
              help="Claim at most N jobs, and exit once they are done [default: run until "
                   "SIGTERM].")
@host_limit_option
@jobboard_option
@common_options
def conductor(app, jobs, name, claim_expiry, max_jobs, host_limit, jobboard_url):
    """Claim purge jobs from the jobboard and run them until stopped (TaskFlow conductor).

    Any number of conductors, on any machines that share the journal (MySQL/MariaDB) and the
    jobboard, split the jobs. A conductor that dies loses its claims when they expire and
    another resumes its VMs from the journal. SIGTERM (or Ctrl-C) suspends the running VMs after
    their current steps and gives their jobs back; then the conductor exits.
    """
    from novapurge.commands import run_conductor
    run_conductor(app, jobs, name, claim_expiry, max_jobs, host_limit, jobboard_url)


@main.command("config")
@common_options
def show_config(app):
    """Show the effective settings and where they came from (passwords masked)."""
    from novapurge.commands import show_config
    show_config(app)


@main.command()
@click.argument("purge_id", required=False)
@common_options
def status(app, purge_id):
    """Show purges and each VM's state.

    \b
    RUNNING      its process is alive
    INTERRUPTED  its process is gone (killed, lost SSH, reboot): `resume` or `rollback`
    SUSPENDED    stopped on a signal, or a finalize step failed: `resume`
    SUCCESS      purged;  REVERTED: rolled back, nothing changed
    FAILED       a revert failed: the ledger says what to restore
    A purge whose VMs differ shows MIXED.
    """
    from novapurge.commands import show_status
    show_status(app, purge_id)


@main.group()
def audit():
    """The change ledger: export it, verify its hash chain."""


@audit.command("export")
@click.argument("purge_id", required=False)
@click.option("--all", "everything", is_flag=True, help="Every purge in the journal.")
@click.option("--format", "export_format", type=click.Choice(["jsonl", "csv", "json"]),
              default="jsonl", show_default=True, help="Export format.")
@click.option("-o", "--output", "path", type=click.Path(dir_okay=False, writable=True),
              help="Write to FILE instead of standard output.")
@common_options
def audit_export(app, purge_id, everything, export_format, path):
    """Export every change of a purge (or --all): who, when, where, before, after.

    Secrets are redacted when recorded; the protected copies revert needs are never exported.
    --format chooses the export; -f only the summary printed when writing to a file (-o).
    """
    from novapurge.commands import export_audit
    export_audit(app, purge_id, everything, export_format, path)


@audit.command("verify")
@common_options
def audit_verify(app):
    """Recompute the ledger's hash chain; exit 7 naming the entries that were altered."""
    from novapurge.commands import verify_audit
    verify_audit(app)


@main.command()
@click.option("--dir", "directory", type=click.Path(file_okay=False),
              help="Where to build the sandbox cloud [default: a new temporary directory].")
@common_options
def demo(app, directory):
    """Build a sandbox cloud (SQLite Nova DBs, stuck and healthy instances) and purge it.

    Needs no server, no root and no network. Shows the plan, refuses a healthy instance, purges
    the stuck ones, shows status and the audit trail, and checks the neighbours are untouched.
    """
    from novapurge.sandbox.demo import run_demo
    run_demo(app, directory)


if __name__ == "__main__":
    main()
