# shellcheck shell=bash
# Small helpers shared by scripts/setup.sh, scripts/services.sh and scripts/test-image.sh.
# Sourced, never run: it sets no shell options of its own (the callers use `set -euo pipefail`).

# Prefix messages with the script's name so that output of nested scripts stays readable.
say() { printf '%s: %s\n' "${NEBULA_SCRIPT:-${0##*/}}" "$*"; }
die() { printf '%s: error: %s\n' "${NEBULA_SCRIPT:-${0##*/}}" "$*" >&2; exit 1; }

# The machines this runs on are root-only sandboxes, but a developer's laptop is not.
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# True when something accepts TCP connections on HOST PORT (bash's /dev/tcp: no netcat needed).
port_open() { timeout 1 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }

# wait_until SECONDS LOG_FILE DESCRIPTION PID_FILE COMMAND...: polls COMMAND every 0.2 s. It gives
# up early when the process in PID_FILE (if that file exists) has died. On failure it prints
# the tail of the service's log, so that the failure explains itself.
wait_until() {
  local seconds=$1 log=$2 what=$3 pid_file=$4
  shift 4
  local deadline=$((SECONDS + seconds)) why="did not come up within $seconds s"
  until "$@" >/dev/null 2>&1; do
    if [ -s "$pid_file" ] && ! pid_alive "$pid_file"; then
      why="exited"
    elif [ "$SECONDS" -lt "$deadline" ]; then
      sleep 0.2
      continue
    fi
    printf '%s: %s %s; last lines of %s:\n' "${NEBULA_SCRIPT:-${0##*/}}" "$what" "$why" "$log" >&2
    tail -n 30 "$log" >&2 2>/dev/null || true
    return 1
  done
}

# pid_alive PID_FILE: true when the file names a running process. A zombie does not count: a
# daemon killed a moment ago may not be reaped yet (this sandbox's init reaps lazily), and
# dockerd and nx-27017 would take its leftover pid file for a running instance.
pid_alive() {
  local pid state
  [ -s "$1" ] || return 1
  pid=$(cat "$1")
  state=$(ps -o stat= -p "$pid" 2>/dev/null) || return 1
  [[ $state != Z* ]]
}

# stop_pid PID_FILE NAME [SECONDS]: SIGTERM, wait for the exit, SIGKILL as a last resort.
stop_pid() {
  local pid_file=$1 name=$2 seconds=${3:-30} pid
  if ! pid_alive "$pid_file"; then rm -f "$pid_file"; return 0; fi
  pid=$(cat "$pid_file")
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + seconds))
  while pid_alive "$pid_file"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      say "$name (pid $pid) ignored SIGTERM for $seconds s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.2
  done
  rm -f "$pid_file"
}

# listener_pid PORT NAME: the pid of the process called NAME listening on TCP PORT (from ss), so
# that a daemon started some other way, without our pid file, can still be shown and stopped.
listener_pid() {
  ss -Hltnp "sport = :$1" 2>/dev/null | grep -o "((\"$2\",pid=[0-9]*" | head -n 1 | grep -o '[0-9]*$'
}
