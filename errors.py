"""Errors an operator can act on, each with the exit code the CLI returns for it."""


class NovapurgeError(Exception):
    """Base for errors reported as one line, with a documented exit code."""

    exit_code = 1


class BadInput(NovapurgeError):
    """The command's input is wrong (not a UUID, unknown UUID, bad URL); nothing was changed."""

    exit_code = 2


class Refused(NovapurgeError):
    """A guard refused to act (healthy instance, purge already running, past the point of no return)."""

    exit_code = 3


class PurgeReverted(NovapurgeError):
    """A step failed and the reversible phase was rolled back: the cloud is as it was found."""

    exit_code = 4


class PurgeSuspended(NovapurgeError):
    """The purge stopped part-way (signal, or a finalize step failed); `resume` continues it."""

    exit_code = 5


class RevertFailed(NovapurgeError):
    """Undoing a step failed: the ledger says what is left to restore by hand."""

    exit_code = 6


class LedgerAltered(NovapurgeError):
    """`audit verify` found entries whose hash chain does not hold: the ledger was edited."""

    exit_code = 7


class HostUnreachable(NovapurgeError):
    """A compute host does not answer over SSH, or its host key is not trusted."""

    exit_code = 8


EXIT_CODES = {
    0: "success, or nothing to do",
    1: "unexpected error (a bug: please report it with the log)",
    BadInput.exit_code: "bad input: nothing was changed",
    Refused.exit_code: "refused by a guard: nothing was changed",
    PurgeReverted.exit_code: "a step failed and the purge was rolled back: nothing is changed",
    PurgeSuspended.exit_code: "suspended or interrupted: run `novapurge resume`",
    RevertFailed.exit_code: "a revert failed: see `novapurge status` and the audit trail",
    LedgerAltered.exit_code: "`audit verify`: the ledger was altered",
    HostUnreachable.exit_code: "a compute host does not answer (or its key is unknown): nothing "
                               "was changed; `--skip host` defers its cleanup",
}
