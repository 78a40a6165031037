#!/usr/bin/env bash
# Make sure the servers the tests use are up: MariaDB on 127.0.0.1:3306 (root, no password)
# and Redis on 127.0.0.1:6379.
# Installs each from Debian when missing and starts it when it is down. Idempotent.
set -euo pipefail

mariadb_up() { mysqladmin --host=127.0.0.1 --port=3306 --user=root ping >/dev/null 2>&1; }

if ! mariadb_up; then
  if ! command -v mariadbd >/dev/null 2>&1 && [ ! -x /usr/sbin/mariadbd ]; then
    echo "installing mariadb-server from Debian" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mariadb-server >/dev/null
  fi
  echo "starting MariaDB" >&2
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null || true
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql \
    --bind-address=127.0.0.1 --port=3306
  for _ in $(seq 1 60); do mariadb_up && break; sleep 1; done
fi
mariadb_up || { echo "MariaDB is not answering on 127.0.0.1:3306" >&2; exit 1; }
# root must log in over TCP with no password (the machine's default; tests rely on it)
mysql --host=127.0.0.1 --user=root -e "SELECT 1" >/dev/null
echo "MariaDB up on 127.0.0.1:3306" >&2

# Redis on 127.0.0.1:6379: the jobboard of `novapurge submit` / `novapurge conductor` (tests/batch).
redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }
if ! redis_up; then
  if ! command -v redis-server >/dev/null 2>&1; then
    echo "installing redis-server from Debian" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  fi
  echo "starting Redis" >&2
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
  for _ in $(seq 1 30); do redis_up && break; sleep 0.5; done
fi
redis_up || { echo "Redis is not answering on 127.0.0.1:6379" >&2; exit 1; }
echo "Redis up on 127.0.0.1:6379" >&2
