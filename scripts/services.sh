#!/usr/bin/env bash
# Make sure the services the test suite talks to are running: Redis and PostgreSQL on loopback.
# Sourced by scripts/test.sh (it may export LTX2T_TEST_POSTGRES_URL). Installs them with apt-get if absent.
set -euo pipefail

sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
apt_install() {
  echo "services: installing $* with apt-get" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}
wait_for() {  # wait_for <seconds> <command...>
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { echo "services: gave up waiting for: $*" >&2; return 1; }
    sleep 0.5
  done
}
py=".venv/bin/python"

redis_up() { "$py" -c 'import redis; redis.Redis(host="127.0.0.1", port=6379, socket_timeout=2).ping()'; }
if ! redis_up 2>/dev/null; then
  command -v redis-server >/dev/null 2>&1 || apt_install redis-server
  echo "services: starting redis-server on 127.0.0.1:6379" >&2
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no --dir /tmp \
    --logfile /tmp/ltx2trainer-redis.log
  wait_for 20 redis_up
fi

pg_up() { "$py" -c 'import socket; socket.create_connection(("127.0.0.1", 5432), timeout=2).close()'; }
if ! pg_up 2>/dev/null; then
  command -v pg_ctlcluster >/dev/null 2>&1 || apt_install postgresql
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  echo "services: starting PostgreSQL $version on 127.0.0.1:5432" >&2
  $sudo pg_ctlcluster --skip-systemctl-redirect "$version" main start
  wait_for 30 pg_up
fi

# The tests connect over TCP as postgres; a stock install asks for a password there, so give it one.
pg_login() { "$py" -c 'import psycopg, sys; psycopg.connect(sys.argv[1], connect_timeout=3).close()' "$1"; }
url="${LTX2T_TEST_POSTGRES_URL:-postgresql+psycopg://postgres@127.0.0.1:5432/postgres}"
if ! pg_login "${url/+psycopg/}" 2>/dev/null; then
  echo "services: setting a password for the postgres role (TCP login for the tests)" >&2
  (cd /tmp && $sudo -u postgres psql -q -c "ALTER USER postgres PASSWORD 'ltx2trainer'") 2>/dev/null \
    || (cd /tmp && su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD 'ltx2trainer'\"")
  export LTX2T_TEST_POSTGRES_URL="postgresql+psycopg://postgres:ltx2trainer@127.0.0.1:5432/postgres"
  pg_login "${LTX2T_TEST_POSTGRES_URL/+psycopg/}"
fi
