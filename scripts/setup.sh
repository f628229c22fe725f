#!/usr/bin/env bash
# Installs everything Nebula's build and tests need on a fresh Debian/Ubuntu machine:
#   Debian packages   the real services the tests run against (RabbitMQ, Docker engine, registry),
#                     busybox for the test images, qemu-user to run the ARM agents here, htpasswd
#   Rust              rustup + stable, rustfmt, clippy, the agent's cross targets, cargo-zigbuild
#   Python venv       nx-27017 (MongoDB-wire server for the tests), ziglang (cargo-zigbuild's linker)
#   development CA    the local broker's TLS certificates (scripts/dev-ca.sh)
# Idempotent and fast (about a second) when everything is there: every step checks before it
# installs, and `apt-get update` only runs when a package is missing.
# Usage: scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
NEBULA_SCRIPT=setup
# shellcheck source=scripts/env.sh
source scripts/env.sh
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

# Pinned so that every machine (developers', CI's) gets the same tools.
NX_27017_VERSION=0.8.1
# zig 0.14: 0.13 (LLVM 18) cannot assemble glibc's riscv64 start.S (`.cfi_label`), so the
# riscv64gc-unknown-linux-gnu agent needs 0.14; aarch64, armv7 and x86_64 build with it alike.
ZIGLANG_VERSION=0.14.1
# The upstream Python SDK our v2 API is tested against (tests/sdk/parity.py), in the same venv.
NEBULA_SDK_VERSION=2.8.0
RUST_TARGETS=(aarch64-unknown-linux-musl aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf
              x86_64-unknown-linux-musl riscv64gc-unknown-linux-gnu)

# --- Debian packages -----------------------------------------------------------------------
# The libc6-*-cross packages are the ARM and RISC-V glibc loaders and libraries, so that the
# glibc-target agents run here too: qemu-arm -L /usr/arm-linux-gnueabihf, qemu-aarch64 -L
# /usr/aarch64-linux-gnu, qemu-riscv64 -L /usr/riscv64-linux-gnu (the musl ones need no -L).
# tcpdump: the footprint benchmark counts the agent's broker traffic at the IP level with it;
# iptables: the metered-link tests drop one connection's packets with it.
packages=(rabbitmq-server docker.io docker-registry busybox-static qemu-user apache2-utils
          iproute2 iptables tcpdump curl ca-certificates openssl tar python3 python3-venv
          libc6-armhf-cross libc6-arm64-cross libc6-riscv64-cross gcc libc6-dev)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  # Another apt run (a machine's own provisioning, say) may hold the lock: wait for it
  # instead of failing.
  apt=(apt-get -o DPkg::Lock::Timeout=900 -y -qq)
  as_root "${apt[@]}" update
  # The package scripts must not start the services (on a machine with systemd they would,
  # with Debian's defaults): scripts/services.sh starts them with this project's settings.
  # A policy-rc.d that says "no" is Debian's way to ask that; ours is removed afterwards.
  policy_added=no
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
    as_root chmod +x /usr/sbin/policy-rc.d
    policy_added=yes
  fi
  as_root env DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 "${apt[@]}" install --no-install-recommends "${missing[@]}" >/dev/null
  [ "$policy_added" = no ] || as_root rm -f /usr/sbin/policy-rc.d
fi

# --- Rust ------------------------------------------------------------------------------------
# rustup's own downloads are reachable; a machine without it gets the minimal stable profile.
# rustup adds ~/.cargo/bin to the shell profiles (its default), so that `cargo` works in a new
# shell, as the README's commands (`cargo xtask dist`, `cargo test ...`) expect.
if ! command -v rustup >/dev/null 2>&1; then
  say "installing rustup and the stable toolchain"
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  # shellcheck disable=SC1091
  source "$HOME/.cargo/env"
fi
rustc --version >/dev/null 2>&1 || rustup default stable
installed_components=$(rustup component list --installed 2>/dev/null || true)
for component in rustfmt clippy; do
  grep -q "^$component" <<<"$installed_components" || { say "adding component $component"; rustup component add "$component"; }
done
installed_targets=$(rustup target list --installed)
for target in "${RUST_TARGETS[@]}"; do
  grep -qx "$target" <<<"$installed_targets" || { say "adding target $target"; rustup target add "$target"; }
done

# --- Python tools in a venv ------------------------------------------------------------------
# Whichever python3 the machine has (pyenv's here, /usr/bin/python3 on a plain Debian). A venv
# whose interpreter vanished (pyenv version removed, say) is made anew.
if ! "$NEBULA_VENV/bin/python" -c '' 2>/dev/null; then
  python=$(command -v python3) || die "python3 not found"
  say "creating $NEBULA_VENV with $python"
  as_root rm -rf "$NEBULA_VENV"
  as_root "$python" -m venv "$NEBULA_VENV"
fi
if ! "$NEBULA_VENV/bin/python" - "$NX_27017_VERSION" "$ZIGLANG_VERSION" "$NEBULA_SDK_VERSION" 2>/dev/null <<'EOF'
import sys
from importlib.metadata import version
sys.exit(version("nx-27017") != sys.argv[1] or version("ziglang") != sys.argv[2]
         or version("NebulaPythonSDK") != sys.argv[3])
EOF
then
  say "installing nx-27017 $NX_27017_VERSION, ziglang $ZIGLANG_VERSION and NebulaPythonSDK $NEBULA_SDK_VERSION"
  as_root "$NEBULA_VENV/bin/pip" install -q --disable-pip-version-check \
    "nx-27017==$NX_27017_VERSION" "ziglang==$ZIGLANG_VERSION" "NebulaPythonSDK==$NEBULA_SDK_VERSION"
fi
# Only these commands go on PATH (scripts/env.sh adds nebula-bin): cargo-zigbuild runs `zig`,
# scripts/services.sh runs `nx-27017`.
bin=$NEBULA_VENV/nebula-bin
if [ ! -x "$bin/zig" ] || [ ! -x "$bin/nx-27017" ]; then
  as_root mkdir -p "$bin"
  printf '#!/bin/sh\nexec "%s/bin/python" -m ziglang "$@"\n' "$NEBULA_VENV" | as_root tee "$bin/zig" >/dev/null
  as_root chmod +x "$bin/zig"
  as_root ln -sfn "$NEBULA_VENV/bin/nx-27017" "$bin/nx-27017"
fi

# --- cargo-zigbuild (builds the release agents for every target) ------------------------------
if ! command -v cargo-zigbuild >/dev/null 2>&1; then
  say "installing cargo-zigbuild (a few minutes)"
  cargo install --quiet --locked cargo-zigbuild
fi

# --- the development CA (the broker's TLS listener, the amqps tests) ----------------------------
bash scripts/dev-ca.sh

say "ready"
