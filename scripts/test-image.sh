#!/usr/bin/env bash
# Builds Nebula's test images locally and pushes them to the local registry (which requires
# login). Nothing is pulled: the images are FROM scratch around the host's static busybox
# (Debian's busybox-static), so no registry on the internet is needed.
#   $NEBULA_TEST_IMAGE:1, :2            busybox httpd on port 8000 serving /www; GET /version
#                                       answers 1 or 2, and the file /version holds the same
#   $NEBULA_TEST_IMAGE_HEALTHY:1        test:1 plus a HEALTHCHECK that passes (healthy after ~1 s)
#   $NEBULA_TEST_IMAGE_UNHEALTHY:1      test:1 plus a HEALTHCHECK that always fails
#   $NEBULA_TEST_IMAGE_UDP:1            test:1 running udp-echo (deploy/test-image/udp-echo.c) on 53/udp
#   $NEBULA_TEST_IMAGE_ONCE:1           test:1 printing a line and exiting 0 after 2 s (cron job runs)
# Recipe: deploy/test-image/. Fast (well under a second) when the registry already holds the
# images of the current recipe. Needs the services: scripts/services.sh start.
# Usage: scripts/test-image.sh [--force]
set -euo pipefail
cd "$(dirname "$0")/.."
NEBULA_SCRIPT=test-image
# shellcheck source=scripts/env.sh
source scripts/env.sh
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

registry=$NEBULA_TEST_REGISTRY
busybox=/bin/busybox
base=$NEBULA_TEST_IMAGE:1
images=("$NEBULA_TEST_IMAGE:1" "$NEBULA_TEST_IMAGE:2" "$NEBULA_TEST_IMAGE_HEALTHY:1" "$NEBULA_TEST_IMAGE_UNHEALTHY:1"
        "$NEBULA_TEST_IMAGE_UDP:1" "$NEBULA_TEST_IMAGE_ONCE:1")

[ -x "$busybox" ] || die "$busybox not found: run scripts/setup.sh (package busybox-static)"
command -v gcc >/dev/null || die "gcc not found: run scripts/setup.sh (packages gcc libc6-dev)"
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://$registry/v2/")" = 401 ] ||
  die "no registry with auth at $registry: run scripts/services.sh start"

# True when the registry holds IMAGE (repository:tag), asked with the test credentials.
in_registry() {
  local name=${1#"$registry"/}
  curl -fs -o /dev/null -u "$NEBULA_TEST_REGISTRY_USER:$NEBULA_TEST_REGISTRY_PASSWORD" \
    -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
    "http://$registry/v2/${name%:*}/manifests/${name##*:}"
}

# The recipe's fingerprint, kept beside the registry's data (so it goes when that data goes):
# a change to the Dockerfiles, this script or busybox rebuilds the images.
recipe=$(cat deploy/test-image/* scripts/test-image.sh "$busybox" | sha256sum | cut -c1-16)
stamp=$NEBULA_TEST_REGISTRY_DIR/nebula-test-images.recipe
if [ "${1:-}" != --force ] && [ "$(cat "$stamp" 2>/dev/null)" = "$recipe" ]; then
  present=yes
  for image in "${images[@]}"; do in_registry "$image" || { present=no; break; }; done
  if [ "$present" = yes ]; then
    say "up to date in $registry: ${images[*]#"$registry"/}"
    exit 0
  fi
fi

started=$SECONDS
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT

# The root file system shared by all images: busybox, one symlink per applet (so sh, httpd,
# wget, sleep... are on PATH=/bin), a passwd for USER and `id`, a world-writable /tmp.
mkdir -p "$context/rootfs/bin" "$context/rootfs/etc" "$context/rootfs/tmp" "$context/rootfs/root"
cp "$busybox" "$context/rootfs/bin/busybox"
gcc -static -Os -o "$context/rootfs/bin/udp-echo" deploy/test-image/udp-echo.c ||
  die "cannot build udp-echo (gcc, libc6-dev)"
for applet in $("$busybox" --list); do
  [ "$applet" = busybox ] || ln -s busybox "$context/rootfs/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$context/rootfs/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$context/rootfs/etc/group"
chmod 1777 "$context/rootfs/tmp"
# What differs between versions.
for version in 1 2; do
  mkdir -p "$context/v$version/www"
  echo "$version" >"$context/v$version/version"
  echo "$version" >"$context/v$version/www/version"
  echo "nebula test image $version" >"$context/v$version/www/index.html"
done
cp deploy/test-image/Dockerfile* "$context/"

# build ARGS...: the classic builder (BuildKit may want to fetch its Dockerfile frontend from the
# internet, and the machine's docker CLI may have no buildx); its output only shown on failure.
build() {
  local output
  output=$(DOCKER_BUILDKIT=0 docker build --quiet "$@" "$context" 2>&1) || { printf '%s\n' "$output" >&2; die "docker build $* failed"; }
}
build --build-arg VERSION=1 -t "$NEBULA_TEST_IMAGE:1"
build --build-arg VERSION=2 -t "$NEBULA_TEST_IMAGE:2"
build --build-arg "BASE=$base" -f "$context/Dockerfile.healthy" -t "$NEBULA_TEST_IMAGE_HEALTHY:1"
build --build-arg "BASE=$base" -f "$context/Dockerfile.unhealthy" -t "$NEBULA_TEST_IMAGE_UNHEALTHY:1"
build --build-arg "BASE=$base" -f "$context/Dockerfile.udp" -t "$NEBULA_TEST_IMAGE_UDP:1"
build --build-arg "BASE=$base" -f "$context/Dockerfile.once" -t "$NEBULA_TEST_IMAGE_ONCE:1"

# Log in with a throw-away client config, so the developer's ~/.docker/config.json (and any
# test that checks what happens without credentials) is left as it was.
export DOCKER_CONFIG=$context/docker-config
# (Its output, a warning about unencrypted credentials, is only shown on failure.)
output=$(printf '%s' "$NEBULA_TEST_REGISTRY_PASSWORD" |
  docker login -u "$NEBULA_TEST_REGISTRY_USER" --password-stdin "$registry" 2>&1) ||
  { printf '%s\n' "$output" >&2; die "docker login $registry failed"; }
for image in "${images[@]}"; do
  docker push --quiet "$image" >/dev/null || die "docker push $image failed"
done
mkdir -p "$(dirname "$stamp")"
echo "$recipe" >"$stamp"
say "built and pushed to $registry in $((SECONDS - started)) s: ${images[*]#"$registry"/}"
