#!/bin/sh
# balena gives every device a UUID; it is the natural device id unless the fleet sets one.
# Never the host name: many devices share one, and two agents with one id are refused.
set -eu
if [ -z "${NEBULA_DEVICE_ID:-}" ] && [ -n "${BALENA_DEVICE_UUID:-}" ]; then
  export NEBULA_DEVICE_ID="$BALENA_DEVICE_UUID"
fi
# balena mounts its engine socket here (io.balena.features.balena-socket).
export DOCKER_HOST="${DOCKER_HOST:-unix:///var/run/balena.sock}"
exec /usr/local/bin/nebula-agent "$@"
