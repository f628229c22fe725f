# Sourced by the other scripts (and handy in a developer's shell): where the tools the
# set-up script installs live, and the addresses and credentials of the local services.

# Python tools (the MongoDB-wire test server, zig for cargo-zigbuild) live in one venv so
# that a fresh machine's system Python is never modified.
export NEBULA_VENV=${NEBULA_VENV:-/opt/nebula-venv}
export PATH="$NEBULA_VENV/bin:$HOME/.cargo/bin:$PATH"

export NEBULA_TEST_AMQP_URL=${NEBULA_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
export NEBULA_TEST_MONGO_URL=${NEBULA_TEST_MONGO_URL:-mongodb://127.0.0.1:27017}
export NEBULA_TEST_REGISTRY=${NEBULA_TEST_REGISTRY:-127.0.0.1:5000}
export NEBULA_TEST_REGISTRY_USER=${NEBULA_TEST_REGISTRY_USER:-nebula}
export NEBULA_TEST_REGISTRY_PASSWORD=${NEBULA_TEST_REGISTRY_PASSWORD:-nebula-registry}

# Where the services keep their data and logs.
export NEBULA_SERVICES_DIR=${NEBULA_SERVICES_DIR:-/var/lib/nebula-dev}
