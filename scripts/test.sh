#!/usr/bin/env bash
# The whole test suite, from a fresh Debian/Ubuntu machine: install what is missing, start
# the real services, then formatting, lints, dependency invariants and every test, including
# those against RabbitMQ, the Docker engine, the registry and the MongoDB-wire server.
# This is the README's test command and what .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
started=$SECONDS

step "install (idempotent)"
bash scripts/setup.sh
# shellcheck source=scripts/env.sh
source scripts/env.sh

step "start services"
bash scripts/services.sh start
bash scripts/test-image.sh

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings

step "dependency invariants"
cargo xtask check-deps

step "tests"
# Real-service tests share one broker, engine and database server; names are unique per
# test, so they run in parallel like the rest.
cargo test --locked --workspace --all-targets

if [ -f scripts/test-extra.sh ]; then
  step "release artifacts and smoke tests"
  bash scripts/test-extra.sh
fi

step "done in $((SECONDS - started)) s"
