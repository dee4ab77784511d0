#!/usr/bin/env bash
# Starts the local PostgreSQL cluster when it is down (tests need a real one).
set -euo pipefail
host=${PGHOST:-127.0.0.1} port=${PGPORT:-5432}
if pg_isready -q -h "$host" -p "$port" 2>/dev/null; then exit 0; fi
if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
  version=$(ls /etc/postgresql | sort -V | tail -1)
  echo "starting PostgreSQL $version" >&2
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 30); do pg_isready -q -h "$host" -p "$port" && exit 0; sleep 1; done
fi
echo "PostgreSQL is not reachable at $host:$port" >&2
exit 1
