"""The real OpenStack lab (tests/labs/cloudlab.py) for the `cloud` tests: started once per test
session and stopped at its end, also when the session is ended by SIGTERM.

NOVAPURGE_CLOUDLAB_KEEP=1 leaves it running after the session and reuses it in the next one.
"""

from __future__ import annotations

import signal

import pytest

from cloudlab import CloudLab


def _interrupt_on_sigterm(signum, frame):
    # what Ctrl-C does: pytest ends the session and runs the fixtures' teardown (stops the lab)
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def cloudlab():
    """The running lab (see CloudLab for what tests can do with it)."""
    previous = signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    lab = CloudLab()
    try:
        yield lab.start()
    finally:
        lab.stop()
        signal.signal(signal.SIGTERM, previous)
