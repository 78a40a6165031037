"""The services' own virtualenv: the pinned OpenStack set from PyPI plus the lab's ML2 driver.

It lives in a cache dir outside the repo, named after the constraints file's digest, so every
clone on this machine shares it; a stamp file written last marks it complete. Stdlib only: the
project's test command runs this file before pytest (`python3 tests/labs/cloudlab/venv.py`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONSTRAINTS = HERE.parent / "cloud-constraints.txt"
DRIVER = HERE / "plugins"   # the lab's ML2 and volume drivers
PACKAGES = ("keystone", "openstack-placement", "neutron", "glance", "cinder", "nova",
            "openstacksdk", "gunicorn", "PyMySQL")
STAMP = ".cloudlab-complete"


def _digest(*paths: Path) -> str:
    sha = hashlib.sha256()
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if "__pycache__" not in file.parts:
                sha.update(file.name.encode() + b"\0" + file.read_bytes())
    return sha.hexdigest()


def cache_root() -> Path:
    """NOVAPURGE_CLOUDLAB_CACHE, else $XDG_CACHE_HOME/novapurge (default ~/.cache/novapurge)."""
    if os.environ.get("NOVAPURGE_CLOUDLAB_CACHE"):
        return Path(os.environ["NOVAPURGE_CLOUDLAB_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "novapurge"


def venv_dir() -> Path:
    """Where the venv for the current constraints file lives (whether installed or not)."""
    return cache_root() / f"cloudlab-{_digest(CONSTRAINTS)[:16]}"


def _run(argv: list, log: Path) -> None:
    with log.open("a") as out:
        out.write(f"$ {' '.join(map(str, argv))}\n")
        out.flush()
        proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if proc.returncode:
        tail = log.read_text().splitlines()[-40:]
        raise RuntimeError(f"{argv[:4]} failed (rc {proc.returncode}), log {log}:\n"
                           + "\n".join(tail))


def _install_driver(venv: Path, log: Path) -> None:
    # Built from a copy: an in-tree setuptools build would leave build/ and *.egg-info in the repo.
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / DRIVER.name
        shutil.copytree(DRIVER, source, ignore=shutil.ignore_patterns("__pycache__"))
        # first the plugins' earlier distribution: its entry point would be registered twice
        _run([venv / "bin" / "pip", "uninstall", "--yes", "--quiet", "cloudlab-ml2-agentless"],
             log)
        _run([venv / "bin" / "pip", "install", "--no-input", "--no-deps", "--force-reinstall",
              "--no-build-isolation", source], log)


def ensure(quiet: bool = False) -> Path:
    """The installed venv, installing it (or just the ML2 driver, when that changed) first."""
    venv = venv_dir()
    venv.parent.mkdir(parents=True, exist_ok=True)
    stamp, driver = venv / STAMP, _digest(DRIVER)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # two sessions installing at once wait for each other
        state = json.loads(stamp.read_text()) if stamp.exists() else None
        if state and state.get("driver") == driver:
            return venv
        log = venv.parent / f"{venv.name}.install.log"
        started = time.monotonic()
        if state is None:
            if not quiet:
                print(f"cloudlab: installing the OpenStack services into {venv} (~1-2 min, "
                      f"log {log})", file=sys.stderr, flush=True)
            shutil.rmtree(venv, ignore_errors=True)
            log.write_text("")
            _run([sys.executable, "-m", "venv", venv], log)
            _run([venv / "bin" / "pip", "install", "--no-input", "--upgrade", "pip", "setuptools",
                  "wheel"], log)
            _run([venv / "bin" / "pip", "install", "--no-input", "-c", CONSTRAINTS, *PACKAGES],
                 log)
        else:
            stamp.unlink()
        _install_driver(venv, log)
        stamp.write_text(json.dumps({"driver": driver, "constraints": str(CONSTRAINTS),
                                     "seconds": round(time.monotonic() - started, 1)}))
        if not quiet:
            print(f"cloudlab: venv ready in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return venv


if __name__ == "__main__":
    print(ensure())
