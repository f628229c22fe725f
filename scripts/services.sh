#!/usr/bin/env bash
# Starts, stops or shows the local services Nebula's tests and `scripts/up.sh` use, each on
# 127.0.0.1, and waits until each answers:
#   RabbitMQ :5672 (MQTT plugin :1883), the Docker engine, a registry :5000 with htpasswd
#   auth, a MongoDB-wire server :27017.
# Starting what already runs is harmless. Usage: services.sh start|stop|status
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/env.sh
source scripts/env.sh

dir=$NEBULA_SERVICES_DIR
logs=$dir/logs
mkdir -p "$logs"

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_until <what> <log file> <command...>: polls for up to 60 s.
wait_until() {
  local what=$1 log=$2
  shift 2
  for _ in $(seq 1 300); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  echo "services: $what did not come up; its log ($log) ends with:" >&2
  tail -n 30 "$log" >&2 || true
  return 1
}

start_rabbitmq() {
  if rabbitmqctl -q status >/dev/null 2>&1; then return 0; fi
  # Offline enabling works before the node runs and persists in enabled_plugins.
  rabbitmq-plugins --offline enable rabbitmq_mqtt >/dev/null
  rabbitmq-server -detached >>"$logs/rabbitmq.log" 2>&1 || true
  wait_until "RabbitMQ" /var/log/rabbitmq rabbitmqctl -q await_startup
  wait_until "RabbitMQ AMQP port" /var/log/rabbitmq port_open 5672
  wait_until "RabbitMQ MQTT port" /var/log/rabbitmq port_open 1883
}

start_docker() {
  if docker info >/dev/null 2>&1; then return 0; fi
  # No systemd in containers and CI sandboxes: run the engine directly.
  nohup dockerd >>"$logs/dockerd.log" 2>&1 &
  echo $! >"$dir/dockerd.pid"
  wait_until "the Docker engine" "$logs/dockerd.log" docker info
}

start_registry() {
  if port_open 5000; then return 0; fi
  mkdir -p "$dir/registry"
  # bcrypt, the only hash the registry's htpasswd backend accepts.
  htpasswd -Bbn "$NEBULA_TEST_REGISTRY_USER" "$NEBULA_TEST_REGISTRY_PASSWORD" >"$dir/registry.htpasswd"
  cat >"$dir/registry.yml" <<EOT
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $dir/registry
  delete:
    enabled: true
http:
  addr: $NEBULA_TEST_REGISTRY
auth:
  htpasswd:
    realm: nebula-test-registry
    path: $dir/registry.htpasswd
EOT
  nohup docker-registry serve "$dir/registry.yml" >>"$logs/registry.log" 2>&1 &
  echo $! >"$dir/registry.pid"
  wait_until "the registry" "$logs/registry.log" port_open 5000
}

start_mongo() {
  if port_open 27017; then return 0; fi
  mkdir -p "$dir/mongo"
  nohup "$NEBULA_VENV/bin/nx-27017" --data-dir "$dir/mongo" --host 127.0.0.1 --port 27017 \
    --log-file "$logs/nx-27017.log" --pid-file "$dir/nx-27017.pid" >>"$logs/nx-27017.out" 2>&1 &
  echo $! >"$dir/mongo.pid"
  wait_until "the MongoDB-wire server" "$logs/nx-27017.out" port_open 27017
}

stop_pid() {
  local pid_file=$dir/$1.pid
  if [ -f "$pid_file" ]; then
    kill "$(cat "$pid_file")" 2>/dev/null || true
    rm -f "$pid_file"
  fi
}

status() {
  printf '%-22s %s\n' "RabbitMQ (5672/1883)" "$(port_open 5672 && port_open 1883 && echo up || echo down)"
  printf '%-22s %s\n' "Docker engine" "$(docker info >/dev/null 2>&1 && echo up || echo down)"
  printf '%-22s %s\n' "registry (5000)" "$(port_open 5000 && echo up || echo down)"
  printf '%-22s %s\n' "MongoDB-wire (27017)" "$(port_open 27017 && echo up || echo down)"
}

case "${1:-}" in
  start)
    start_rabbitmq
    start_docker
    start_registry
    start_mongo
    status
    ;;
  stop)
    rabbitmqctl -q stop >/dev/null 2>&1 || true
    stop_pid mongo
    stop_pid registry
    stop_pid dockerd
    for _ in $(seq 1 50); do docker info >/dev/null 2>&1 || break; sleep 0.2; done
    status
    ;;
  status)
    status
    ;;
  *)
    echo "usage: $0 start|stop|status" >&2
    exit 64
    ;;
esac
