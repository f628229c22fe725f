#!/usr/bin/env bash
# Builds the test images locally (FROM scratch + busybox-static: nothing is pulled) and
# pushes them to the local registry, which requires login:
#   $NEBULA_TEST_REGISTRY/nebula/test:1 and :2   busybox httpd on :8000, /version = 1 or 2
#   $NEBULA_TEST_REGISTRY/nebula/test-healthy:1   the same with a HEALTHCHECK
# Fast when the registry already holds them.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/env.sh
source scripts/env.sh

registry=$NEBULA_TEST_REGISTRY
images=("$registry/nebula/test:1" "$registry/nebula/test:2" "$registry/nebula/test-healthy:1")

in_registry() {
  local repository=${1#"$registry"/} tag=${1##*:}
  repository=${repository%:*}
  curl -fs -o /dev/null -u "$NEBULA_TEST_REGISTRY_USER:$NEBULA_TEST_REGISTRY_PASSWORD" \
    -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
    "http://$registry/v2/$repository/manifests/$tag"
}

all_present=true
for image in "${images[@]}"; do in_registry "$image" || all_present=false; done
if $all_present; then
  echo "test-image: ${images[*]} already in the registry"
  exit 0
fi

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp deploy/test-image/Dockerfile deploy/test-image/Dockerfile.healthy "$context/"
cp "$(command -v busybox)" "$context/busybox"

echo "$NEBULA_TEST_REGISTRY_PASSWORD" | docker login -u "$NEBULA_TEST_REGISTRY_USER" --password-stdin "$registry" >/dev/null 2>&1
# The classic builder: BuildKit may want to fetch its Dockerfile frontend from the internet.
export DOCKER_BUILDKIT=0
for version in 1 2; do
  docker build -q --build-arg "VERSION=$version" -t "$registry/nebula/test:$version" "$context" >/dev/null
done
docker build -q --build-arg "BASE=$registry/nebula/test:1" -f "$context/Dockerfile.healthy" \
  -t "$registry/nebula/test-healthy:1" "$context" >/dev/null
for image in "${images[@]}"; do
  docker push -q "$image" >/dev/null
done
docker logout "$registry" >/dev/null
echo "test-image: pushed ${images[*]}"
