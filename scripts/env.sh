# shellcheck shell=bash
# Sourced by the other scripts (and handy in a developer's shell: `source scripts/env.sh`):
# where the tools that scripts/setup.sh installs live, and the addresses and credentials of the
# local services that scripts/services.sh starts. Every value can be overridden from outside.

# Python tools (the MongoDB-wire test server, zig for cargo-zigbuild) live in one venv so that
# the machine's own Python is never modified. Only a small folder of chosen commands (zig,
# nx-27017) goes on PATH, not the venv's bin/, so `python3` and `pip` keep meaning the machine's.
export NEBULA_VENV=${NEBULA_VENV:-/opt/nebula-venv}
case ":$PATH:" in
  *":$NEBULA_VENV/nebula-bin:"*) ;;
  *) export PATH="$NEBULA_VENV/nebula-bin:$HOME/.cargo/bin:$PATH" ;;
esac

# Local services (scripts/services.sh). RabbitMQ's guest user only logs in over loopback.
export NEBULA_TEST_AMQP_URL=${NEBULA_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
# The three-node cluster (`scripts/services.sh start rabbitmq-cluster`): one URL per node.
export NEBULA_TEST_CLUSTER_AMQP_URL=${NEBULA_TEST_CLUSTER_AMQP_URL:-amqp://guest:guest@127.0.0.1:5681/%2f,amqp://guest:guest@127.0.0.1:5682/%2f,amqp://guest:guest@127.0.0.1:5683/%2f}
# RabbitMQ's management API on the single node: where control planes make devices' own broker
# users (NEBULA_RABBITMQ_MANAGEMENT_URL).
export NEBULA_TEST_RABBITMQ_MANAGEMENT_URL=${NEBULA_TEST_RABBITMQ_MANAGEMENT_URL:-http://guest:guest@127.0.0.1:15672}
export NEBULA_TEST_MQTT_URL=${NEBULA_TEST_MQTT_URL:-mqtt://guest:guest@127.0.0.1:1883}
# The broker's TLS listener, with certificates of the development CA (scripts/dev-ca.sh); it
# asks every client for a certificate of that CA (client.pem/client.key there).
export NEBULA_TEST_AMQPS_URL=${NEBULA_TEST_AMQPS_URL:-amqps://guest:guest@127.0.0.1:5671/%2f}
export NEBULA_TEST_MONGO_URL=${NEBULA_TEST_MONGO_URL:-mongodb://127.0.0.1:27017}
export NEBULA_TEST_REGISTRY=${NEBULA_TEST_REGISTRY:-127.0.0.1:5000}
export NEBULA_TEST_REGISTRY_USER=${NEBULA_TEST_REGISTRY_USER:-nebula}
export NEBULA_TEST_REGISTRY_PASSWORD=${NEBULA_TEST_REGISTRY_PASSWORD:-nebula-registry}

# Test images (scripts/test-image.sh), all in the local registry, built without any pull:
#   $NEBULA_TEST_IMAGE:1 and :2          busybox httpd on port 8000 serving the version; /version holds 1 or 2
#   $NEBULA_TEST_IMAGE_HEALTHY:1         the same (version 1) with a HEALTHCHECK that passes (every 1 s)
#   $NEBULA_TEST_IMAGE_UNHEALTHY:1       the same (version 1) with a HEALTHCHECK that always fails
#   $NEBULA_TEST_IMAGE_UDP:1             answers UDP on port 53 ("nebula udp " and the datagram)
#   $NEBULA_TEST_IMAGE_ONCE:1            prints a line, sleeps 2 s and exits 0 (cron job runs)
export NEBULA_TEST_IMAGE=${NEBULA_TEST_IMAGE:-$NEBULA_TEST_REGISTRY/nebula/test}
export NEBULA_TEST_IMAGE_HEALTHY=${NEBULA_TEST_IMAGE_HEALTHY:-$NEBULA_TEST_REGISTRY/nebula/test-healthy}
export NEBULA_TEST_IMAGE_UNHEALTHY=${NEBULA_TEST_IMAGE_UNHEALTHY:-$NEBULA_TEST_REGISTRY/nebula/test-unhealthy}
export NEBULA_TEST_IMAGE_UDP=${NEBULA_TEST_IMAGE_UDP:-$NEBULA_TEST_REGISTRY/nebula/test-udp}
export NEBULA_TEST_IMAGE_ONCE=${NEBULA_TEST_IMAGE_ONCE:-$NEBULA_TEST_REGISTRY/nebula/test-once}

# Where the services keep their data, pid files and logs.
export NEBULA_SERVICES_DIR=${NEBULA_SERVICES_DIR:-/var/lib/nebula-dev}
export NEBULA_LOG_DIR=${NEBULA_LOG_DIR:-/var/log/nebula-dev}
export NEBULA_TEST_TLS_DIR=${NEBULA_TEST_TLS_DIR:-$NEBULA_SERVICES_DIR/tls}
export NEBULA_TEST_REGISTRY_DIR=${NEBULA_TEST_REGISTRY_DIR:-/var/lib/nebula-test-registry}
