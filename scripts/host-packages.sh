#!/usr/bin/env bash
# Install the Debian packages the real-host tests (tests/hosts, tests/labs/hostlab.py) need.
# Idempotent: a fast no-op when every package is installed; `apt-get update` only when one is
# missing. Must run before hosts are created (their overlays do not see later changes of /etc).
set -euo pipefail

PACKAGES=(bridge-utils openvswitch-switch openssh-server libvirt-clients libvirt-daemon
          libvirt-daemon-driver-qemu qemu-system-x86 open-iscsi memcached iproute2 procps)

missing=()
for package in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null || true)
  [ "$status" = installed ] || missing+=("$package")
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "installing ${missing[*]} from Debian" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# policy-rc.d 101: the packages' init scripts must not start machine-wide daemons; the hosts
# start their own inside their namespaces.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod +x "$policy"
  trap 'rm -f "$policy"' EXIT
fi
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "host packages installed" >&2
