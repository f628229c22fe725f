#!/bin/sh
# balena gives every device a UUID; it is the natural device id unless the fleet sets one.
set -eu
export NEBULA_DEVICE_ID="${NEBULA_DEVICE_ID:-${BALENA_DEVICE_UUID:-$(hostname)}}"
# balena mounts its engine socket here (io.balena.features.balena-socket).
export DOCKER_HOST="${DOCKER_HOST:-unix:///var/run/balena.sock}"
exec /usr/local/bin/nebula-agent "$@"
