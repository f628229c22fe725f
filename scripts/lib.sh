# Small helpers shared by scripts/setup.sh, scripts/services.sh and scripts/test-image.sh.
# Sourced, never run: it sets no shell options of its own (the callers use `set -euo pipefail`).

# Prefix messages with the script's name so that output of nested scripts stays readable.
say() { printf '%s: %s\n' "${NEBULA_SCRIPT:-${0##*/}}" "$*"; }
die() { printf '%s: error: %s\n' "${NEBULA_SCRIPT:-${0##*/}}" "$*" >&2; exit 1; }

# The machines this runs on are root-only sandboxes, but a developer's laptop is not.
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# True when something accepts TCP connections on HOST PORT (bash's /dev/tcp: no netcat needed).
port_open() { timeout 1 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }

# wait_until SECONDS LOG_FILE DESCRIPTION COMMAND...: polls COMMAND every 0.2 s; on timeout it
# prints the tail of the service's log so a failure explains itself, and fails.
wait_until() {
  local seconds=$1 log=$2 what=$3
  shift 3
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      printf '%s: %s did not come up within %s s; last lines of %s:\n' "${NEBULA_SCRIPT:-${0##*/}}" "$what" "$seconds" "$log" >&2
      tail -n 30 "$log" >&2 2>/dev/null || true
      return 1
    fi
    sleep 0.2
  done
}

# pid_alive PID_FILE: true when the file names a running process.
pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# stop_pid PID_FILE NAME [SECONDS]: SIGTERM, wait for the exit, SIGKILL as a last resort.
stop_pid() {
  local pid_file=$1 name=$2 seconds=${3:-30} pid
  if ! pid_alive "$pid_file"; then rm -f "$pid_file"; return 0; fi
  pid=$(cat "$pid_file")
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + seconds))
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      say "$name (pid $pid) ignored SIGTERM for $seconds s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.2
  done
  rm -f "$pid_file"
}
