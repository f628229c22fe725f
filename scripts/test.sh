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
# The single-node services and the three-node RabbitMQ cluster (for e2e_cluster and the
# cluster benchmarks), booting in parallel.
bash scripts/services.sh start rabbitmq docker registry mongo rabbitmq-cluster
bash scripts/test-image.sh

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings

step "dependency invariants"
cargo xtask check-deps

step "tests"
rm -f target/e2e-convergence.txt
# Real-service tests share one broker, engine and database server; names are unique per
# test, so they run in parallel like the rest.
cargo test --locked --workspace --all-targets

step "release agents: every target, size budget, qemu smoke test, footprint"
# The agent for every target of targets/ with its size profile; dist fails when a target is
# over its size budget. The aarch64 and armv7 ones then run under qemu, the native one gives
# the memory figure.
cargo xtask dist
cargo test --locked -p nebula-tests --test release_smoke -- --ignored --nocapture

step "container images FROM scratch"
bash scripts/images.sh

step "benchmarks (figures, no timing assertions)"
cargo build --locked --release -p nebula-tests -p nebula-control-plane
# 1,000 agents on the single node and on the three-node cluster, side by side.
for scenario in fanout sync-storm; do
  target/release/nebula-bench "$scenario" --agents 1000 --broker both
done
target/release/nebula-bench rest --seconds 3 --concurrency 16
target/release/nebula-bench footprint

if [ -f target/e2e-convergence.txt ]; then
  step "convergence times"
  cat target/e2e-convergence.txt
fi

step "done in $((SECONDS - started)) s"
