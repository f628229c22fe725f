#!/usr/bin/env bash
# Starts, stops and reports the local services that Nebula's tests and scripts/up.sh use:
#   rabbitmq    RabbitMQ, AMQP on 127.0.0.1:5672, AMQPS on 127.0.0.1:5671 (certificates of the
#               development CA, scripts/dev-ca.sh; clients must present one too), MQTT
#               (plugin) on 127.0.0.1:1883 and MQTT over TLS on 127.0.0.1:8883 (the same CA),
#               the management API on 127.0.0.1:15672 (devices' own broker users)
#   docker      the Docker engine (dockerd), socket /var/run/docker.sock
#   registry    a Docker registry on 127.0.0.1:5000 with htpasswd (bcrypt) auth, user and
#               password from scripts/env.sh (NEBULA_TEST_REGISTRY_USER/PASSWORD)
#   mongo       nx-27017, a MongoDB-wire server (SQLite underneath), on 127.0.0.1:27017
#   rabbitmq-cluster
#               a three-node RabbitMQ cluster next to the single node (not started by default):
#               nodes nebula-c1..3@localhost, AMQP on 127.0.0.1:5681-5683, MQTT on 1891-1893,
#               cluster_partition_handling = pause_minority. `start` starts only the nodes that
#               are down (so a test can kill one and bring just that one back).
# Usage: scripts/services.sh start|stop|restart|status [SERVICE...]   (default: the first four)
#        scripts/services.sh clean    removes the containers and networks Nebula agents left behind
# `start` is idempotent: it starts only what does not answer yet and returns once every service
# answers. There is no systemd on the sandboxes this runs on, so each daemon is started directly,
# in its own session (setsid), so that the caller's Ctrl-C or exit does not take it down.
# Logs: $NEBULA_LOG_DIR/<service>.log (plus RabbitMQ's own under /var/log/rabbitmq).
set -euo pipefail
cd "$(dirname "$0")/.."
NEBULA_SCRIPT=services
# shellcheck source=scripts/env.sh
source scripts/env.sh
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

run_dir=$NEBULA_SERVICES_DIR/run
log_dir=$NEBULA_LOG_DIR
registry_conf_dir=$NEBULA_SERVICES_DIR/registry
mongo_data_dir=$NEBULA_SERVICES_DIR/mongo
DEFAULT_SERVICES=(rabbitmq docker registry mongo)
ALL_SERVICES=("${DEFAULT_SERVICES[@]}" rabbitmq-cluster)

# spawn NAME COMMAND...: runs COMMAND detached, output appended to NAME's log, pid in run_dir.
# The pid is written by the process itself before exec, so it is right whatever setsid does.
spawn() {
  local name=$1
  shift
  mkdir -p "$run_dir" "$log_dir"
  # No stale pid for wait_until to mistake for a dead daemon before the new one writes its own.
  rm -f "$run_dir/$name.pid"
  printf '\n=== %s: starting %s\n' "$(date -u +%FT%TZ)" "$*" >>"$log_dir/$name.log"
  # From /, so that no daemon holds on to (or writes into) the work tree it was started from.
  # shellcheck disable=SC2016 # expanded by the inner bash
  (cd / && exec setsid bash -c 'echo $$ >"$0"; exec "$@"' "$run_dir/$name.pid" "$@") \
    >>"$log_dir/$name.log" 2>&1 </dev/null &
}

# adopt_listener NAME PORT PROCESS: when NAME has no live pid file but PROCESS listens on PORT
# (started by hand or by an older version of this script), take that pid, so stop stops it.
adopt_listener() {
  local pid
  pid_alive "$run_dir/$1.pid" && return 0
  pid=$(listener_pid "$2" "$3") || return 0
  mkdir -p "$run_dir"
  echo "$pid" >"$run_dir/$1.pid"
}

# write_if_changed FILE CONTENT: leaves FILE (and its mtime) alone when it already holds CONTENT.
write_if_changed() {
  if [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; then return 0; fi
  mkdir -p "$(dirname "$1")"
  printf '%s\n' "$2" >"$1"
}

# --- RabbitMQ ---------------------------------------------------------------------------------
# Node name rabbit@localhost rather than rabbit@<hostname>: a sandbox's hostname may not
# resolve. It goes in rabbitmq-env.conf, which rabbitmqctl reads too, so `rabbitmqctl` works
# from any shell (tests use it to close connections, for instance).
# The TLS listener asks every client for a certificate of the development CA (mutual TLS, as
# a fleet whose devices hold their own certificates would run it).
rabbitmq_conf() {
  printf '%s\n' "# Written by Nebula's scripts/services.sh: loopback only (guest logs in only there anyway)." \
    "listeners.tcp.default = 127.0.0.1:5672" \
    "listeners.ssl.default = 127.0.0.1:5671" \
    "ssl_options.cacertfile = $NEBULA_TEST_TLS_DIR/ca.pem" \
    "ssl_options.certfile = $NEBULA_TEST_TLS_DIR/server.pem" \
    "ssl_options.keyfile = $NEBULA_TEST_TLS_DIR/server.key" \
    "ssl_options.verify = verify_peer" \
    "ssl_options.fail_if_no_peer_cert = true" \
    "mqtt.listeners.tcp.default = 127.0.0.1:1883" \
    "mqtt.listeners.ssl.default = 127.0.0.1:8883" \
    "management.tcp.ip = 127.0.0.1" \
    "management.tcp.port = 15672"
}
rabbitmq_configure() {
  bash scripts/dev-ca.sh
  write_if_changed /etc/rabbitmq/rabbitmq-env.conf "# Written by Nebula's scripts/services.sh.
NODENAME=rabbit@localhost"
  write_if_changed /etc/rabbitmq/rabbitmq.conf "$(rabbitmq_conf)"
  # TCP_USER_TIMEOUT (IPPROTO_TCP 6, option 18) of 60 s on the broker's AMQP sockets: a
  # device whose link died silently is dropped 60 s after something the broker sends it (a
  # change, or its next heartbeat, within one heartbeat timeout) goes unacknowledged, instead
  # of after two to three heartbeat timeouts of silence (30 to 45 minutes at the agent's
  # default of 900 s) while its exclusive queues stay locked against the agent's new
  # connection. The other options
  # are RabbitMQ's defaults, which this list replaces. (README, "Metered links".)
  write_if_changed /etc/rabbitmq/advanced.config "%% Written by Nebula's scripts/services.sh.
[{rabbit, [{tcp_listen_options, [{backlog, 128}, {nodelay, true}, {linger, {true, 0}},
                                 {exit_on_close, false}, {raw, 6, 18, <<60000:32/native>>}]}]}]."
  # The same content as `rabbitmq-plugins enable --offline rabbitmq_mqtt rabbitmq_management`
  # writes, without booting an Erlang VM for it (two seconds saved on every start). The
  # management API is where the control plane makes devices' own broker users
  # (NEBULA_RABBITMQ_MANAGEMENT_URL).
  write_if_changed /etc/rabbitmq/enabled_plugins '[rabbitmq_mqtt,rabbitmq_management].'
  chown rabbitmq:rabbitmq /etc/rabbitmq/rabbitmq-env.conf /etc/rabbitmq/rabbitmq.conf /etc/rabbitmq/advanced.config \
    /etc/rabbitmq/enabled_plugins
}
rabbitmq_ready() { port_open 127.0.0.1 5672 && rabbitmq_later_listeners_ready && port_open 127.0.0.1 1883; }
# The listeners later versions of this script added (AMQPS, MQTTS, the management API): a
# broker started by an earlier version lacks one of them.
rabbitmq_later_listeners_ready() { port_open 127.0.0.1 5671 && port_open 127.0.0.1 8883 && port_open 127.0.0.1 15672; }
# The Erlang cookie every node (and rabbitmqctl) shares. Made once, before any node starts: on
# a fresh machine the single node and the three cluster nodes start together, and each would
# otherwise race to create it (one can fail on the read-only file, or they end up different).
erlang_cookie() {
  local cookie=/var/lib/rabbitmq/.erlang.cookie
  [ -s "$cookie" ] && return 0
  local value
  # 600 random bytes hold about 60 capitals (no pipe into `head`: its SIGPIPE and pipefail).
  value=$(head -c 600 /dev/urandom | LC_ALL=C tr -dc '[:upper:]')
  (umask 077 && printf '%s' "${value:0:20}" >"$cookie")
  chown rabbitmq:rabbitmq "$cookie"
  chmod 400 "$cookie"
}
rabbitmq_start() {
  # A running broker's configuration is left alone: rewriting the node name under it would cut
  # rabbitmqctl (and the tests using it) off from it. `restart rabbitmq` applies ours; so does
  # `start` when the broker runs without a listener this version of the file adds.
  if port_open 127.0.0.1 5672; then
    # Only a broker this script started (its pid file) is restarted; another one (a system
    # service, say) is left alone, and the wait for its listeners says what to do.
    if ! rabbitmq_later_listeners_ready && pid_alive "$run_dir/rabbitmq.pid" &&
      [ "$(cat /etc/rabbitmq/rabbitmq.conf 2>/dev/null)" != "$(rabbitmq_conf)" ]; then
      say "RabbitMQ runs with an earlier configuration (a listener missing); restarting it with this one"
      rabbitmq_stop
      local deadline=$((SECONDS + 30))
      while port_open 127.0.0.1 5672; do
        [ "$SECONDS" -lt "$deadline" ] || die "RabbitMQ did not stop within 30 s; stop it, then start it again"
        sleep 0.2
      done
    else
      return 0
    fi
  fi
  erlang_cookie
  rabbitmq_configure
  # As Debian's /usr/sbin/rabbitmq-server does (su to the rabbitmq user, from its home), but
  # raising the open files limit first: su applies PAM's default soft limit of 1024, which
  # leaves the broker 900-odd sockets, too few for the 1,000- and 10,000-agent benchmarks.
  # In the foreground (no -detached) its start-up errors land in our log instead of being lost.
  spawn rabbitmq su rabbitmq -s /bin/sh -c \
    'cd /var/lib/rabbitmq && ulimit -n "$(ulimit -Hn)" && exec /usr/lib/rabbitmq/bin/rabbitmq-server'
}
rabbitmq_wait() {
  wait_until 90 "$log_dir/rabbitmq.log" RabbitMQ "$run_dir/rabbitmq.pid" rabbitmq_ready ||
    { echo "(RabbitMQ's own log: /var/log/rabbitmq/rabbit@localhost.log; a broker started some other way keeps its own listeners: \`scripts/services.sh restart rabbitmq\` applies this script's)" >&2; return 1; }
}
rabbitmq_stop() {
  if port_open 127.0.0.1 5672; then
    # `shutdown` returns once the Erlang VM has exited. A broker started before this script
    # configured the node name runs as rabbit@<short hostname>: that name is tried second.
    rabbitmqctl shutdown >>"$log_dir/rabbitmq.log" 2>&1 ||
      rabbitmqctl -n "rabbit@$(hostname -s)" shutdown >>"$log_dir/rabbitmq.log" 2>&1 ||
      say "rabbitmqctl could not reach the broker; stopping it by its pid"
  fi
  stop_pid "$run_dir/rabbitmq.pid" RabbitMQ 30
  local pid
  if pid=$(listener_pid 5672 beam.smp); then kill -TERM "$pid" 2>/dev/null || true; fi
}
rabbitmq_status() { rabbitmq_ready && echo "running (pid $(listener_pid 5672 beam.smp), node $(rabbitmq_node), AMQP 127.0.0.1:5672, AMQPS 127.0.0.1:5671, MQTT 127.0.0.1:1883, MQTTS 127.0.0.1:8883, management 127.0.0.1:15672)"; }
# The node name from the configuration file (what a bare `rabbitmqctl` talks to).
rabbitmq_node() { sed -n 's/^NODENAME=//p' /etc/rabbitmq/rabbitmq-env.conf 2>/dev/null | grep . || echo "rabbit@$(hostname -s)"; }

# --- RabbitMQ cluster ---------------------------------------------------------------------------
# Three nodes of the same installation, each with its own node name, ports, configuration,
# data and logs under $NEBULA_SERVICES_DIR/rabbitmq-cluster/cN, all as the rabbitmq user so
# that they share its Erlang cookie with the single node and with rabbitmqctl. Nothing of
# the single node's /etc/rabbitmq is read: RABBITMQ_CONF_ENV_FILE points at the node's own.
# The cluster forms by itself at the first start (classic_config peer discovery lists all
# three), so the nodes are simply started in parallel.
cluster_root=$NEBULA_SERVICES_DIR/rabbitmq-cluster
CLUSTER_NODES=(1 2 3)
cluster_node() { echo "nebula-c$1@localhost"; }
cluster_amqp_port() { echo $((5680 + $1)); }
cluster_configure() {
  local index=$1 dir=$cluster_root/c$1 peers="" peer
  for peer in "${CLUSTER_NODES[@]}"; do
    peers+="cluster_formation.classic_config.nodes.$peer = $(cluster_node "$peer")"$'\n'
  done
  mkdir -p "$dir/mnesia" "$dir/log"
  write_if_changed "$dir/rabbitmq-env.conf" "# Written by Nebula's scripts/services.sh (the cluster's node $index)."
  write_if_changed "$dir/rabbitmq.conf" "# Written by Nebula's scripts/services.sh: node $index of the local test cluster.
listeners.tcp.default = 127.0.0.1:$(cluster_amqp_port "$index")
mqtt.listeners.tcp.default = 127.0.0.1:$((1890 + index))
cluster_partition_handling = pause_minority
cluster_formation.peer_discovery_backend = classic_config
${peers}cluster_formation.randomized_startup_delay_range.min = 0
cluster_formation.randomized_startup_delay_range.max = 1
# Three brokers share this machine with the tests and a 1,000-agent benchmark.
vm_memory_high_watermark.relative = 0.15"
  write_if_changed "$dir/enabled_plugins" '[rabbitmq_mqtt].'
  chown -R rabbitmq:rabbitmq "$dir"
}
cluster_node_ready() { port_open 127.0.0.1 "$(cluster_amqp_port "$1")"; }
# A node's Erlang VM is up while epmd lists it (or its distribution port answers), even when
# the node is paused (pause_minority: AMQP closed, the VM waiting for a majority): that one
# must not be started a second time.
cluster_vm_up() {
  epmd -names 2>/dev/null | grep -q "^name nebula-c$1 at port " ||
    port_open 127.0.0.1 $((25680 + $1))
}
cluster_start_node() {
  local index=$1 dir=$cluster_root/c$1
  cluster_vm_up "$index" && return 0
  cluster_configure "$index"
  # shellcheck disable=SC2016 # expanded by the inner shell
  spawn "rabbitmq-c$index" su rabbitmq -s /bin/sh -c "cd /var/lib/rabbitmq && ulimit -n \"\$(ulimit -Hn)\" &&
    RABBITMQ_NODENAME=$(cluster_node "$index") RABBITMQ_DIST_PORT=$((25680 + index)) \
    RABBITMQ_CONF_ENV_FILE=$dir/rabbitmq-env.conf RABBITMQ_CONFIG_FILE=$dir/rabbitmq.conf \
    RABBITMQ_ENABLED_PLUGINS_FILE=$dir/enabled_plugins RABBITMQ_MNESIA_BASE=$dir/mnesia \
    RABBITMQ_LOG_BASE=$dir/log RABBITMQ_PID_FILE=$dir/pid \
    exec /usr/lib/rabbitmq/bin/rabbitmq-server"
}
# rabbitmqctl against node INDEX, bounded: a paused node must not hang the caller.
cluster_ctl() { local index=$1; shift; timeout 30 rabbitmqctl -n "$(cluster_node "$index")" "$@"; }
cluster_running_nodes() { cluster_ctl "$1" cluster_status --formatter json 2>/dev/null | grep -o '"running_nodes":\[[^]]*\]' | grep -o 'nebula-c[0-9]@localhost' | sort -u | wc -l; }
rabbitmq-cluster_ready() {
  local index
  for index in "${CLUSTER_NODES[@]}"; do cluster_node_ready "$index" || return 1; done
  [ "$(cluster_running_nodes 1)" -eq 3 ]
}
rabbitmq-cluster_start() {
  local index any_up=false
  for index in "${CLUSTER_NODES[@]}"; do cluster_vm_up "$index" && any_up=true; done
  # With every node down, start from empty data: the test cluster keeps nothing of value, and
  # three nodes restarted on their old data wait for each other (Mnesia, and the MQTT
  # plugin's Raft cluster for up to 100 s) where a fresh cluster forms in about 20 s.
  if [ "$any_up" = false ]; then
    for index in "${CLUSTER_NODES[@]}"; do rm -rf "$cluster_root/c$index/mnesia"; done
  fi
  erlang_cookie
  for index in "${CLUSTER_NODES[@]}"; do cluster_start_node "$index"; done
}
rabbitmq-cluster_wait() {
  # A first start forms the cluster; a node brought back after a kill rejoins it.
  wait_until 180 "$log_dir/rabbitmq-c1.log" "the RabbitMQ cluster" /dev/null rabbitmq-cluster_ready ||
    { echo "(the nodes' own logs: $cluster_root/c*/log)" >&2; return 1; }
  say "cluster nodes: $NEBULA_TEST_CLUSTER_AMQP_URL"
}
rabbitmq-cluster_stop() {
  local index pid
  for index in "${CLUSTER_NODES[@]}"; do
    if cluster_vm_up "$index"; then
      cluster_ctl "$index" shutdown >>"$log_dir/rabbitmq-c$index.log" 2>&1 || true
    fi
    stop_pid "$run_dir/rabbitmq-c$index.pid" "RabbitMQ node $index" 30
    # A paused node listens on no AMQP port, but still on its distribution port.
    if pid=$(listener_pid $((25680 + index)) beam.smp); then kill -TERM "$pid" 2>/dev/null || true; fi
  done
}
rabbitmq-cluster_status() {
  rabbitmq-cluster_ready && echo "running (3 nodes, $NEBULA_TEST_CLUSTER_AMQP_URL)"
}

# --- Docker engine ----------------------------------------------------------------------------
# dockerd writes its own pid file, /var/run/docker.pid, which also covers an engine that was
# started some other way.
docker_ready() { docker info >/dev/null 2>&1; }
docker_start() {
  docker_ready && return 0
  # Pid files left by a dockerd and containerd that were killed (not stopped): dockerd refuses
  # to start beside the one, and waits in vain for the socket of the other.
  local pid_file
  for pid_file in /var/run/docker.pid /var/run/docker/containerd/containerd.pid; do
    pid_alive "$pid_file" || rm -f "$pid_file"
  done
  spawn docker dockerd
}
docker_wait() { wait_until 60 "$log_dir/docker.log" "the Docker engine" "$run_dir/docker.pid" docker_ready; }
docker_stop() {
  # dockerd stops its containers first (10 s grace each, in parallel), hence the long wait.
  stop_pid /var/run/docker.pid dockerd 60
  stop_pid "$run_dir/docker.pid" dockerd 5
}
docker_status() { docker_ready && echo "running (pid $(cat /var/run/docker.pid 2>/dev/null), $(docker version -f 'server {{.Server.Version}}' 2>/dev/null))"; }

# --- Docker registry --------------------------------------------------------------------------
# Debian's docker-registry (distribution 2.8) with our own config: loopback, htpasswd auth,
# storage in $NEBULA_TEST_REGISTRY_DIR. Plain HTTP is fine: dockerd treats 127.0.0.0/8 as an
# insecure registry by default.
registry_ready() { [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$NEBULA_TEST_REGISTRY/v2/")" = 401 ]; }
registry_configure() {
  mkdir -p "$registry_conf_dir" "$NEBULA_TEST_REGISTRY_DIR"
  # htpasswd -v checks the password against the file; only a mismatch rewrites it (bcrypt is slow).
  if ! htpasswd -vb "$registry_conf_dir/htpasswd" "$NEBULA_TEST_REGISTRY_USER" "$NEBULA_TEST_REGISTRY_PASSWORD" >/dev/null 2>&1; then
    htpasswd -Bbn "$NEBULA_TEST_REGISTRY_USER" "$NEBULA_TEST_REGISTRY_PASSWORD" >"$registry_conf_dir/htpasswd"
  fi
  write_if_changed "$registry_conf_dir/config.yml" "# Written by Nebula's scripts/services.sh.
version: 0.1
log:
  level: info
  fields:
    service: nebula-test-registry
storage:
  filesystem:
    rootdirectory: $NEBULA_TEST_REGISTRY_DIR
  delete:
    enabled: true
http:
  addr: $NEBULA_TEST_REGISTRY
  # Only signs upload state between requests of one push; a test registry needs no real secret.
  secret: nebula-test-registry
auth:
  htpasswd:
    realm: nebula-test-registry
    path: $registry_conf_dir/htpasswd"
}
registry_start() {
  registry_ready && return 0
  if port_open "${NEBULA_TEST_REGISTRY%:*}" "${NEBULA_TEST_REGISTRY#*:}"; then
    die "something else answers on $NEBULA_TEST_REGISTRY without asking for credentials (Debian's own docker-registry service? 'systemctl disable --now docker-registry')"
  fi
  registry_configure
  spawn registry docker-registry serve "$registry_conf_dir/config.yml"
}
registry_wait() { wait_until 30 "$log_dir/registry.log" "the Docker registry" "$run_dir/registry.pid" registry_ready; }
registry_stop() {
  adopt_listener registry "${NEBULA_TEST_REGISTRY#*:}" docker-registry
  stop_pid "$run_dir/registry.pid" docker-registry 10
}
registry_status() { registry_ready && echo "running (pid $(listener_pid "${NEBULA_TEST_REGISTRY#*:}" docker-registry), http://$NEBULA_TEST_REGISTRY, user $NEBULA_TEST_REGISTRY_USER, data $NEBULA_TEST_REGISTRY_DIR)"; }

# --- MongoDB-wire server (nx-27017) -------------------------------------------------------------
# nx-27017 has its own --daemon mode; running it in the foreground under spawn instead keeps
# its pid and output where the other services' are. --data-dir: one SQLite file per database.
mongo_ready() { port_open 127.0.0.1 27017; }
mongo_start() {
  mongo_ready && return 0
  command -v nx-27017 >/dev/null || die "nx-27017 not found: run scripts/setup.sh"
  mkdir -p "$mongo_data_dir"
  # nx-27017 refuses to start while its pid file names a live (or not yet reaped) process; with
  # the port closed no instance serves, so a leftover file is stale.
  pid_alive "$run_dir/nx-27017.pid" || rm -f "$run_dir/nx-27017.pid"
  # It logs to stderr as well as to --log-file: /dev/null there, or every line shows twice.
  spawn mongo nx-27017 --host 127.0.0.1 --port 27017 --data-dir "$mongo_data_dir" \
    --log-file /dev/null --pid-file "$run_dir/nx-27017.pid"
}
mongo_wait() { wait_until 30 "$log_dir/mongo.log" "nx-27017 (MongoDB wire)" "$run_dir/mongo.pid" mongo_ready; }
mongo_stop() {
  adopt_listener mongo 27017 nx-27017
  stop_pid "$run_dir/mongo.pid" nx-27017 10
  rm -f "$run_dir/nx-27017.pid"
}
mongo_status() { mongo_ready && echo "running (pid $(listener_pid 27017 nx-27017), $NEBULA_TEST_MONGO_URL, data $mongo_data_dir)"; }

# ---------------------------------------------------------------------------------------------
command=${1:-}
[ $# -gt 0 ] && shift
services=("$@")
[ ${#services[@]} -gt 0 ] || services=("${DEFAULT_SERVICES[@]}")
for service in "${services[@]}"; do
  case " ${ALL_SERVICES[*]} " in *" $service "*) ;; *) die "unknown service '$service' (known: ${ALL_SERVICES[*]})" ;; esac
done
[ "$(id -u)" -eq 0 ] || die "run as root (it starts system daemons)"

start() {
  local started=$SECONDS service failed=()
  # Launch everything first, then wait: the daemons boot in parallel (RabbitMQ takes longest).
  for service in "${services[@]}"; do "${service}_start"; done
  for service in "${services[@]}"; do "${service}_wait" || failed+=("$service"); done
  [ ${#failed[@]} -eq 0 ] || die "not running: ${failed[*]}"
  say "running: ${services[*]} ($((SECONDS - started)) s)"
}
stop() {
  local service
  for service in "${services[@]}"; do "${service}_stop"; done
  say "stopped: ${services[*]}"
}
# Removes what Nebula agents left in the Docker engine: containers and networks labelled
# orchestrator=nebula. Their restart policy (unless-stopped) brings them back whenever dockerd
# starts, so a killed test run's apps would otherwise keep running, and holding host ports.
clean() {
  docker_ready || die "the Docker engine is not running: scripts/services.sh start docker"
  local containers networks
  containers=$(docker ps -aq --filter label=orchestrator=nebula)
  # shellcheck disable=SC2086 # one id per word
  [ -z "$containers" ] || docker rm -f $containers >/dev/null
  networks=$(docker network ls -q --filter label=orchestrator=nebula)
  # shellcheck disable=SC2086
  [ -z "$networks" ] || docker network rm $networks >/dev/null
  say "removed $(wc -w <<<"$containers") containers and $(wc -w <<<"$networks") networks labelled orchestrator=nebula"
}
status() {
  local service state all_up=0
  for service in "${services[@]}"; do
    state=$("${service}_status" 2>/dev/null) || { state=stopped; all_up=3; }
    printf '%-9s %s\n' "$service" "$state"
  done
  return "$all_up"
}

case "$command" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) status ;;
  clean) clean ;;
  *) echo "usage: $0 start|stop|restart|status [${ALL_SERVICES[*]}] | clean" >&2; exit 2 ;;
esac
