"""Real compute hosts for this directory's tests: two namespace hosts per module (hostlab).

The hosts are shared by every test of a module (creating them costs about a second, and the first
QEMU start on a fresh host about five); each test wipes them and builds its instances again.
Hosts a crashed earlier run left behind are removed first; everything a module creates is
removed after it, also when a test fails or the run is interrupted (Ctrl-C, SIGTERM); what a
killed run left behind goes at the start of the next one (`hostlab.cleanup_stale`).
"""

import shutil
import signal

import pytest

import hostlab as labs


def _require_tools():
    missing = [tool for tool in ("ip", "nsenter", "unshare", "ovs-vsctl", "virsh", "libvirtd",
                                 "iscsiadm", "qemu-system-x86_64", "ssh-keygen")
               if shutil.which(tool, path=labs.ENV["PATH"]) is None]
    missing += [path for path in ("/usr/sbin/sshd", labs.OVS_CTL)
                if shutil.which(path) is None]
    if missing:
        pytest.fail(f"the real-host tests need {', '.join(missing)}: run "
                    f"`bash scripts/host-packages.sh` (as root), or `make test`", pytrace=False)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="module")
def hostlab(tmp_path_factory):
    """Two real compute hosts, cmp1 and cmp2 (sshd, OVS br-int, libvirtd, iscsiadm)."""
    _require_tools()
    labs.cleanup_stale("np")
    # SIGTERM (a CI timeout) unwinds like Ctrl-C, so the hosts are removed on the way out.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with labs.HostLab(tmp_path_factory.mktemp("hostlab"), names=("cmp1", "cmp2")) as lab:
            yield lab
    finally:
        signal.signal(signal.SIGTERM, previous)
