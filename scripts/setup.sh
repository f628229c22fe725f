#!/usr/bin/env bash
# Installs everything Nebula's build and tests need on a fresh Debian/Ubuntu machine.
# Idempotent and fast when everything is there: each step checks before it installs.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/env.sh
source scripts/env.sh

say() { printf 'setup: %s\n' "$*"; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# Debian packages: the real services the tests run against, busybox for the test image,
# qemu-user to run the ARM agents here, htpasswd for the registry, iproute2 and curl.
packages=(rabbitmq-server docker.io docker-registry busybox-static qemu-user apache2-utils
          iproute2 curl ca-certificates python3 python3-venv tar)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  as_root apt-get update -qq
  # Services must not be started by the package scripts: scripts/services.sh starts them.
  as_root env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Rust: rustup's own downloads are reachable; the toolchain file pins nothing beyond stable.
if ! command -v cargo >/dev/null 2>&1; then
  say "installing rustup and the stable toolchain"
  curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  # shellcheck disable=SC1091
  source "$HOME/.cargo/env"
fi
installed_components=$(rustup component list --installed 2>/dev/null || true)
for component in rustfmt clippy; do
  grep -q "^$component" <<<"$installed_components" || rustup component add "$component"
done
installed_targets=$(rustup target list --installed)
for target in aarch64-unknown-linux-musl aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf \
              x86_64-unknown-linux-musl riscv64gc-unknown-linux-gnu; do
  grep -qx "$target" <<<"$installed_targets" || { say "adding target $target"; rustup target add "$target"; }
done

# Python tools in a venv: the MongoDB-wire test server and zig (cargo-zigbuild's linker).
python=$(command -v python3)
if [ ! -x "$NEBULA_VENV/bin/python" ]; then
  say "creating $NEBULA_VENV"
  as_root "$python" -m venv "$NEBULA_VENV"
fi
if ! "$NEBULA_VENV/bin/python" -c 'import nx_27017, ziglang' 2>/dev/null; then
  say "installing nx-27017 and ziglang"
  as_root "$NEBULA_VENV/bin/pip" install -q --disable-pip-version-check 'nx-27017==0.8.1' 'ziglang==0.13.0'
fi
# cargo-zigbuild finds zig through the ziglang Python package or a `zig` on PATH.
if [ ! -x "$NEBULA_VENV/bin/zig" ]; then
  cat >"$NEBULA_VENV/bin/zig" <<EOT
#!/bin/sh
exec "$NEBULA_VENV/bin/python" -m ziglang "\$@"
EOT
  chmod +x "$NEBULA_VENV/bin/zig"
fi

if ! command -v cargo-zigbuild >/dev/null 2>&1; then
  say "installing cargo-zigbuild"
  cargo install --quiet --locked cargo-zigbuild
fi

say "ready"
