#!/usr/bin/env bash
# Install what the cloud lab needs, before any test runs: Debian's rabbitmq-server when missing,
# and the services' own venv in ~/.cache/novapurge/cloudlab-<digest> (see venv.py). Idempotent:
# a fast no-op once both are there. Prints the venv's path.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python3 "$here/rabbit.py"
python3 "$here/venv.py"
