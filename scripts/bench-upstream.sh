#!/usr/bin/env bash
# The side-by-side REST figure: upstream Nebula's v2 manager and this control plane, the same
# loads by the same client (`nebula-bench rest --upstream`), in one run, against the same
# MongoDB-wire server (nx-27017 on 127.0.0.1:27017, from `scripts/services.sh start`).
#
#   bash scripts/bench-upstream.sh /path/to/nebula-orchestrator/manager [--seconds 8]
#
# The manager's source is not vendored (no network here beyond package registries): clone
# https://github.com/nebula-orchestrator/manager where you can and pass its directory. Its
# Python dependencies come from PyPI into a venv of its own. It runs as its Dockerfile runs it:
# gunicorn, one gevent worker (config/config.py), here on 127.0.0.1:18980 with basic auth and a
# database of its own that is dropped afterwards. Not part of scripts/test.sh: it needs that
# checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
NEBULA_SCRIPT=bench-upstream
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
# shellcheck source=scripts/env.sh
source scripts/env.sh

upstream=${1:-}
[ -n "$upstream" ] && [ -f "$upstream/manager.py" ] ||
  die "usage: $0 <checkout of nebula-orchestrator/manager> [nebula-bench rest options]"
upstream=$(cd "$upstream" && pwd)
shift
port=18980
database="upstream_bench_$$"
mongo_url=${NEBULA_TEST_MONGO_URL:-mongodb://127.0.0.1:27017}
port_open 127.0.0.1 27017 || die "nx-27017 is not running: bash scripts/services.sh start"
port_open 127.0.0.1 "$port" && die "127.0.0.1:$port is taken"

venv="$upstream/.venv-bench"
if [ ! -x "$venv/bin/gunicorn" ]; then
  say "installing the manager's requirements into $venv"
  python3 -m venv "$venv"
  # enum34, ipaddress and backports.ssl-match-hostname are Python 2 backports: on Python 3
  # enum34 shadows the standard library's enum and breaks the interpreter.
  grep -v -E '^(enum34|ipaddress|backports)' "$upstream/requirements.txt" >"$venv/requirements.txt"
  "$venv/bin/pip" install --quiet -r "$venv/requirements.txt"
fi

log=$(mktemp /tmp/nebula-upstream-manager.XXXXXX.log)
# The manager reads its settings from environment variables (parse_it, upper case).
(
  cd "$upstream"
  export MONGO_URL="$mongo_url/$database" SCHEMA_NAME="$database" AUTH_ENABLED=true \
    BASIC_AUTH_USER=nebula BASIC_AUTH_PASSWORD=nebula-test
  exec "$venv/bin/gunicorn" --config config/config.py --chdir "$upstream" \
    --bind "127.0.0.1:$port" --access-logfile /dev/null manager:app
) >"$log" 2>&1 &
manager=$!
cleanup() {
  kill "$manager" 2>/dev/null || true
  wait "$manager" 2>/dev/null || true
  "$venv/bin/python" -c "import pymongo,sys; pymongo.MongoClient(sys.argv[1]).drop_database(sys.argv[2])" \
    "$mongo_url" "$database" 2>/dev/null || true
}
trap cleanup EXIT
deadline=$((SECONDS + 60))
until port_open 127.0.0.1 "$port"; do
  kill -0 "$manager" 2>/dev/null || { tail -n 30 "$log" >&2; die "the manager exited"; }
  [ "$SECONDS" -lt "$deadline" ] || { tail -n 30 "$log" >&2; die "the manager did not listen within 60 s"; }
  sleep 0.2
done
say "upstream manager on 127.0.0.1:$port (log $log)"

cargo build --locked --release -p nebula-tests -p nebula-control-plane
target/release/nebula-bench rest --store mongodb --upstream "127.0.0.1:$port" "$@"
