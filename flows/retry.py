"""TaskFlow retry controller for finalize steps: transient API errors are retried, then given up.

Giving up reverts only the step's own subflow (its revert is a no-op: finalize steps are
irreversible); `flows.run` then marks the purge SUSPENDED so `resume` retries it later.
"""

import time

from taskflow import retry

from novapurge.errors import HostUnreachable


def is_transient(failure) -> bool:
    """5xx, 409, timeouts and dropped connections are worth another try; the rest is not."""
    error = getattr(failure, "exception", None)
    return bool(getattr(error, "transient", False)) or isinstance(error, HostUnreachable)


class RetryTransient(retry.Retry):
    """Up to `attempts` runs of the subflow while its failures are transient, with backoff."""

    def __init__(self, name, attempts=4, delay=0.5, **kwargs):
        super().__init__(name=name, **kwargs)
        self.attempts, self.delay = attempts, delay

    def on_failure(self, history, *args, **kwargs):
        failures = list(history[-1][1].values()) if len(history) else []
        if len(history) < self.attempts and failures and all(map(is_transient, failures)):
            return retry.RETRY
        return retry.REVERT

    def execute(self, history, *args, **kwargs):
        if len(history):
            time.sleep(self.delay * 2 ** (len(history) - 1))
        return len(history) + 1

    def revert(self, history, *args, **kwargs):
        """Nothing to undo: the attempts are recorded in the journal."""
