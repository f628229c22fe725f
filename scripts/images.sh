#!/usr/bin/env bash
# Builds the agent and control-plane container images FROM scratch out of static musl
# binaries (no image is pulled), then proves each one runs: the agent image prints its
# version, the control-plane image serves /readyz against the local RabbitMQ with its
# embedded store. Needs scripts/setup.sh and scripts/services.sh start first.
# Usage: scripts/images.sh [TAG]   (default tag: dev)
set -euo pipefail
cd "$(dirname "$0")/.."
NEBULA_SCRIPT=images.sh
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
# shellcheck source=scripts/env.sh
source scripts/env.sh

tag=${1:-dev}
target=x86_64-unknown-linux-musl

say "static binaries for $target"
cargo xtask dist --target "$target"
cargo zigbuild --locked --release -p nebula-control-plane --target "$target"

for image in agent control-plane; do
  say "docker build nebula-$image:$tag"
  # Output only on failure: the legacy builder's deprecation banner is noise here.
  if ! output=$(docker build --quiet -f "deploy/containers/Dockerfile.$image" \
    --build-arg "TARGET=$target" -t "nebula-$image:$tag" . 2>&1); then
    printf '%s\n' "$output" >&2
    die "docker build of nebula-$image failed"
  fi
done

version=$(docker run --rm "nebula-agent:$tag" --version)
say "nebula-agent:$tag: $version"
[[ $version == "nebula-agent "*"$target"* ]] || die "unexpected --version output: $version"

# Host networking: the broker listens on 127.0.0.1 only.
name="nebula-images-check-$$"
port=18089
trap 'docker rm -f -v "$name" >/dev/null 2>&1 || true' EXIT
docker run -d --name "$name" --network host \
  -e NEBULA_LISTEN="127.0.0.1:$port" -e NEBULA_AUTH_ENABLED=false \
  -e NEBULA_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f \
  "nebula-control-plane:$tag" >/dev/null
for _ in $(seq 100); do
  if curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; then
    say "nebula-control-plane:$tag: ready on 127.0.0.1:$port"
    docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep "^nebula-.*:$tag " | sed 's/^/  /'
    exit 0
  fi
  sleep 0.2
done
docker logs "$name" >&2 || true
die "the control-plane image did not become ready"
