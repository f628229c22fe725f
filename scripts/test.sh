#!/usr/bin/env bash
# The whole test suite, from a fresh Debian/Ubuntu machine: install what is missing, start
# the real services, then formatting, lints, dependency invariants and every test, including
# those against RabbitMQ, the Docker engine, the registry and the MongoDB-wire server.
# This is the README's test command and what .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."

started=$SECONDS
# Each step with the minutes:seconds since the start, to see where a run's time goes.
step() { printf '\n==> %s  [%d:%02d]\n' "$*" $(((SECONDS - started) / 60)) $(((SECONDS - started) % 60)); }

step "disk space"
# A full run writes about 11 GiB (debug, release and musl builds, images); stop now with a
# clear message rather than die of ENOSPC half an hour in.
avail_gib=$(df --output=avail -B1G . | tail -1 | tr -d ' ')
echo "${avail_gib} GiB free here"
if [ "$avail_gib" -lt 12 ]; then
    echo "error: the test suite needs about 12 GiB of free disk, ${avail_gib} GiB left" >&2
    exit 1
fi

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
# The agent without TLS too (a plain `cargo build -p nebula-agent`): the workspace build above
# has its `tls` feature on, through the tests.
cargo clippy --locked -p nebula-agent --all-targets -- -D warnings
# And the MQTT-only agent (no lapin: `cargo xtask check-deps` checks that below).
cargo clippy --locked -p nebula-agent --no-default-features --features mqtt,tls --all-targets -- -D warnings

step "dependency invariants"
cargo xtask check-deps

step "tests: build"
rm -f target/e2e-convergence.txt
cargo test --locked --workspace --all-targets --no-run

step "tests: run"
# Real-service tests share one broker, engine and database server; names are unique per
# test, so they run in parallel like the rest.
cargo test --locked --workspace --all-targets

step "benchmark binaries"
# The whole workspace's binaries, with one feature set: what the benchmarks' agents and
# control planes are started from (tests/src/binaries.rs builds exactly this, as a no-op).
cargo build --locked --release --workspace --bins

step "benchmarks (figures, no timing assertions)"
# Before the wire benchmarks start: sync-storm restarts the broker, which would cut their
# agents' connections, and these fill the broker's port with traffic their captures would
# have to sift. 1,000 agents on the single node and on the three-node cluster, side by side.
for scenario in fanout sync-storm; do
  target/release/nebula-bench "$scenario" --agents 1000 --broker both
done
# The same fanout with the agents over MQTT (issue 17), on the single node.
target/release/nebula-bench fanout --agents 1000 --broker single --transport mqtt
target/release/nebula-bench rest --seconds 3 --concurrency 16
# Devices' own logins with the users held by the broker against rabbitmq_auth_backend_http,
# bare and behind rabbitmq_auth_backend_cache (issue 16's "measure and choose"): each on a
# node of its own (port 5695), about 2 minutes.
target/release/nebula-bench auth-backends --devices 1000

step "wire benchmarks (footprint, dead link), in the background"
# The release agent of this machine's architecture first, for them. At the agent's default
# settings, footprint waits for the agent's queue checks to end (255 s), then measures an idle
# window of half a heartbeat timeout (450 s: one heartbeat each way); dead-link blackholes an
# agent's link and waits until the agent noticed, reconnected and applied the change made
# meanwhile (after the agent's queue checks too; up to 570 s + 30 s more). They run beside the
# steps below, which neither restart the broker nor touch their connections, so they add only
# what is left of their ~13-15 minutes when those are done. They fail the run when an idle agent costs more than 2 MB a month on the
# wire, or a dead link is not noticed and made up for within the stated times.
cargo xtask dist --target x86_64-unknown-linux-musl
target/release/nebula-bench footprint >target/footprint.json 2>target/footprint.log &
footprint_pid=$!
# The same agent over MQTT, side by side (its own connection and port, no queue checks).
target/release/nebula-bench footprint --transport mqtt >target/footprint-mqtt.json 2>target/footprint-mqtt.log &
footprint_mqtt_pid=$!
target/release/nebula-bench dead-link >target/dead-link.json 2>target/dead-link.log &
dead_link_pid=$!
# On an early exit: stop them, and drop the link-drop rules dead-link could leave behind.
cleanup_wire_benchmarks() {
  kill "$footprint_pid" "$footprint_mqtt_pid" "$dead_link_pid" 2>/dev/null || true
  iptables -w -S INPUT 2>/dev/null | grep nebula-test-link-drop | sed 's/^-A /-D /' |
    while read -r rule; do eval "iptables -w $rule" || true; done
}
trap cleanup_wire_benchmarks EXIT

step "release agents: every target, size budget"
# The agent for every target of targets/ with its size profile; dist fails when a target is
# over its size budget. The aarch64 and armv7 ones then run under qemu.
cargo xtask dist

step "qemu smoke test of the release agents"
# --workspace: the features of the test build above, so nothing is compiled again.
cargo test --locked --workspace --test release_smoke -- --ignored --nocapture

step "container images FROM scratch"
bash scripts/images.sh

step "wire benchmarks: waiting for them to finish"
footprint_status=0
wait "$footprint_pid" || footprint_status=$?
footprint_mqtt_status=0
wait "$footprint_mqtt_pid" || footprint_mqtt_status=$?
dead_link_status=0
wait "$dead_link_pid" || dead_link_status=$?
trap - EXIT
cat target/footprint.log target/footprint.json target/footprint-mqtt.log target/footprint-mqtt.json \
  target/dead-link.log target/dead-link.json
[ "$footprint_status" -eq 0 ] || { echo "footprint benchmark failed (exit $footprint_status)"; exit 1; }
[ "$footprint_mqtt_status" -eq 0 ] || { echo "footprint benchmark over MQTT failed (exit $footprint_mqtt_status)"; exit 1; }
[ "$dead_link_status" -eq 0 ] || { echo "dead-link benchmark failed (exit $dead_link_status)"; exit 1; }

if [ -f target/e2e-convergence.txt ]; then
  step "convergence times"
  cat target/e2e-convergence.txt
fi

step "done in $((SECONDS - started)) s"
