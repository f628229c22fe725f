#!/usr/bin/env bash
# Runs the whole system locally: RabbitMQ (and the other services), the demo image in the
# local registry, the control plane with the embedded store on 127.0.0.1:8080, and one agent
# for this machine in device group "local"; then prints how to deploy the demo app with the
# `nebula` CLI (built here too, target/release/nebula).
# `scripts/up.sh stop` stops the agent and the control plane and removes every container that
# agent started (the demo's included); the services keep running (`scripts/services.sh stop`).
# The store and the agent's state stay in $NEBULA_DATA_DIR (default ./nebula-data), so the
# next `scripts/up.sh` brings the same apps back.
set -euo pipefail
cd "$(dirname "$0")/.."
NEBULA_SCRIPT=up
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

data_dir=${NEBULA_DATA_DIR:-$PWD/nebula-data}
run_dir=$data_dir/run
listen=${NEBULA_LISTEN:-127.0.0.1:8080}
user=${NEBULA_ADMIN_USER:-nebula}
password=${NEBULA_ADMIN_PASSWORD:-nebula}
group=${NEBULA_DEVICE_GROUP:-local}
# The agent labels every container it creates with its device id (label device_id): that is
# how `stop` removes exactly this agent's containers and none of the tests' agents, which
# share the engine. The id is kept in the run directory, so `stop` uses the one `up` used.
device_file=$run_dir/device-id

stop_process() {
  if pid_alive "$run_dir/$1.pid"; then
    stop_pid "$run_dir/$1.pid" "$1" 30
    say "stopped $1"
  fi
  rm -f "$run_dir/$1.pid"
}

# Removes the containers of this agent (by their device_id label), once the agent is gone:
# a running agent would start them again.
remove_containers() {
  [ -s "$device_file" ] || return 0
  local device containers
  device=$(cat "$device_file")
  if ! docker info >/dev/null 2>&1; then
    say "the Docker engine is not running: no containers of device $device to remove"
    return 0
  fi
  containers=$(docker ps -aq --filter label=orchestrator=nebula --filter "label=device_id=$device")
  # shellcheck disable=SC2086 # one id per word
  [ -z "$containers" ] || docker rm -f $containers >/dev/null
  say "removed $(wc -w <<<"$containers") container(s) of device $device"
}

if [ "${1:-}" = "stop" ]; then
  stop_process nebula-agent
  remove_containers
  stop_process nebula-control-plane
  exit 0
fi
[ $# -eq 0 ] || die "usage: scripts/up.sh [stop]"

bash scripts/setup.sh
# shellcheck source=scripts/env.sh
source scripts/env.sh
bash scripts/services.sh start
# The demo image ($NEBULA_TEST_IMAGE:1, busybox httpd on port 8000) into the local registry,
# where the agent pulls it from: built here, nothing is pulled from the internet.
bash scripts/test-image.sh
# The agent with TLS, as released, so that it can also be pointed at the broker's amqps://
# listener (README, "Securing a fleet").
cargo build --release --locked -p nebula-control-plane -p nebula-agent -p nebula-cli --features nebula-agent/tls
mkdir -p "$run_dir"

# start_process NAME VARIABLE=VALUE...: runs target/release/NAME in a session of its own
# (setsid), so that closing this terminal does not take it down; its pid in the run directory.
start_process() {
  local name=$1
  shift
  stop_process "$name"
  # shellcheck disable=SC2016 # expanded by the inner bash
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$run_dir/$name.pid" env "$@" "target/release/$name" \
    >>"$run_dir/$name.log" 2>&1 </dev/null &
  for _ in $(seq 1 50); do [ -s "$run_dir/$name.pid" ] && break; sleep 0.1; done
  say "started $name (pid $(cat "$run_dir/$name.pid"), log $run_dir/$name.log)"
}

# The key the control plane signs every change with (README, "Securing a fleet"), made once.
signing_key=$data_dir/signing.key
if [ ! -s "$signing_key" ]; then
  (umask 077 && openssl genpkey -algorithm ed25519 -out "$signing_key") ||
    die "cannot make the signing key $signing_key (openssl)"
fi
start_process nebula-control-plane \
  NEBULA_LISTEN="$listen" NEBULA_DATA_DIR="$data_dir/store" \
  NEBULA_ADMIN_USER="$user" NEBULA_ADMIN_PASSWORD="$password" \
  NEBULA_RABBITMQ_MANAGEMENT_URL="$NEBULA_TEST_RABBITMQ_MANAGEMENT_URL" \
  NEBULA_SIGNING_KEY_FILE="$signing_key"
wait_until 30 "$run_dir/nebula-control-plane.log" "the control plane" "$run_dir/nebula-control-plane.pid" \
  curl -fsS "http://$listen/readyz" || exit 1

# The agent of this machine runs device group "$group"; make sure it exists (exit code 5:
# it does already). The user's own CLI configuration is not read here.
cli=(env NEBULA_CONFIG=/dev/null NEBULA_URL="http://$listen" NEBULA_USER="$user" NEBULA_PASSWORD="$password" target/release/nebula)
output=$("${cli[@]}" groups create "$group" 2>&1) || [ $? -eq 5 ] || die "cannot create device group $group: $output"

device=${NEBULA_DEVICE_ID:-$(cat /etc/machine-id 2>/dev/null || hostname)}
echo "$device" >"$device_file"
# The agent logs in to the broker with a credential of its own, which lets it follow its group
# and nothing else (README, "Securing a fleet"); minted again on every start, which replaces
# the password. The answer is one line of JSON whose URL holds no quote.
credential=$(curl -fsS -u "$user:$password" -H 'content-type: application/json' \
  -d "{\"device_group\": \"$group\"}" "http://$listen/api/v2/devices/$device/credentials") ||
  die "cannot mint the broker credential of device $device (see $run_dir/nebula-control-plane.log)"
amqp_url=$(sed -n 's/.*"amqp_url":"\([^"]*\)".*/\1/p' <<<"$credential")
[ -n "$amqp_url" ] || die "no amqp_url in the answer of the credential mint"
# The agent pins the control plane's key: a change not signed with it is dropped.
signing_public_key=$(sed -n 's/.*"signing_key":"\([0-9a-f]*\)".*/\1/p' <<<"$credential")
[ -n "$signing_public_key" ] || die "no signing_key in the answer of the credential mint"
start_process nebula-agent \
  NEBULA_AMQP_URL="$amqp_url" NEBULA_SIGNING_KEY="$signing_public_key" \
  NEBULA_DEVICE_ID="$device" NEBULA_DEVICE_GROUP="$group" NEBULA_STATE_DIR="$data_dir/agent" \
  NEBULA_REGISTRY_HOST="$NEBULA_TEST_REGISTRY" NEBULA_REGISTRY_USER="$NEBULA_TEST_REGISTRY_USER" \
  NEBULA_REGISTRY_PASSWORD="$NEBULA_TEST_REGISTRY_PASSWORD"

cat <<EOT

Nebula is running: API http://$listen/api/v2 (user $user, password $password), agent
$device in device group "$group" (with a broker login of its own, taking only signed changes). Deploy the demo app to this
machine and see it:
  install -m 755 $PWD/target/release/nebula /usr/local/bin/
  export NEBULA_URL=http://$listen NEBULA_USER=$user NEBULA_PASSWORD=$password
  nebula apps create hello --image $NEBULA_TEST_IMAGE:1 --port 8081:8000
  nebula groups update $group --apps hello
  nebula rollout status $group --watch
  nebula devices list
  curl -s --retry 30 --retry-all-errors --retry-delay 1 http://127.0.0.1:8081/
Stop with: scripts/up.sh stop
EOT
