#!/usr/bin/env bash
# Runs the whole system locally: RabbitMQ (and the other services), the control plane with
# the embedded store on 127.0.0.1:8080, and one agent for this machine in device group
# "local". `scripts/up.sh stop` stops the control plane and the agent again.
set -euo pipefail
cd "$(dirname "$0")/.."

data_dir=${NEBULA_DATA_DIR:-$PWD/nebula-data}
run_dir=$data_dir/run
listen=${NEBULA_LISTEN:-127.0.0.1:8080}
user=${NEBULA_ADMIN_USER:-nebula}
password=${NEBULA_ADMIN_PASSWORD:-nebula}
group=${NEBULA_DEVICE_GROUP:-local}

stop_process() {
  local pid_file=$run_dir/$1.pid
  if [ -f "$pid_file" ] && kill -0 "$(cat "$pid_file")" 2>/dev/null; then
    kill -TERM "$(cat "$pid_file")"
    echo "stopped $1"
  fi
  rm -f "$pid_file"
}

if [ "${1:-}" = "stop" ]; then
  stop_process nebula-agent
  stop_process nebula-control-plane
  exit 0
fi

bash scripts/setup.sh
# shellcheck source=scripts/env.sh
source scripts/env.sh
bash scripts/services.sh start
cargo build --release --locked -p nebula-control-plane -p nebula-agent
mkdir -p "$run_dir"

start_process() {
  local name=$1
  shift
  stop_process "$name"
  env "$@" "target/release/$name" >>"$run_dir/$name.log" 2>&1 &
  echo $! >"$run_dir/$name.pid"
  echo "started $name (pid $!, log $run_dir/$name.log)"
}

start_process nebula-control-plane \
  NEBULA_LISTEN="$listen" NEBULA_DATA_DIR="$data_dir/store" \
  NEBULA_ADMIN_USER="$user" NEBULA_ADMIN_PASSWORD="$password"
for _ in $(seq 1 100); do
  curl -fsS "http://$listen/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "http://$listen/readyz" >/dev/null || { echo "control plane did not become ready; see $run_dir/nebula-control-plane.log"; exit 1; }

# The agent of this machine runs device group "$group"; make sure it exists.
curl -fsS -u "$user:$password" -X POST -H 'Content-Type: application/json' -d '{"apps": []}' \
  "http://$listen/api/v2/device_groups/$group" >/dev/null 2>&1 || true
start_process nebula-agent \
  NEBULA_DEVICE_GROUP="$group" NEBULA_STATE_DIR="$data_dir/agent" \
  NEBULA_REGISTRY_HOST="$NEBULA_TEST_REGISTRY" NEBULA_REGISTRY_USER="$NEBULA_TEST_REGISTRY_USER" \
  NEBULA_REGISTRY_PASSWORD="$NEBULA_TEST_REGISTRY_PASSWORD"

cat <<EOT

Nebula is running: API http://$listen/api/v2 (user $user), agent in device group "$group".
Try:
  curl -u $user:$password -X POST -H 'Content-Type: application/json' \\
    -d '{"docker_image": "$NEBULA_TEST_REGISTRY/nebula/test:1", "starting_ports": [{"8081": "8000"}]}' \\
    http://$listen/api/v2/apps/hello
  curl -u $user:$password -X PUT -H 'Content-Type: application/json' -d '{"apps": ["hello"]}' \\
    http://$listen/api/v2/device_groups/$group/update
  curl http://127.0.0.1:8081/
Stop with: scripts/up.sh stop
EOT
