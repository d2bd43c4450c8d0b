#!/bin/sh
# A Docker engine for CI and the container tests (tests/test_container.py) on a Debian machine
# without one: installs Debian's docker.io, docker-compose and debootstrap, and starts `dockerd`
# in the background; `stop` ends the engine this script started, and only that one.
#
#   docker/engine.sh start    # as root; does nothing but say so when an engine already answers
#   docker/engine.sh stop
#
# The engine makes no bridge network and touches no iptables rules (--bridge=none
# --iptables=false): builds and containers use the host's network (`--network host`), so no
# container traffic leaves through a private address range. Its data stays in /var/lib/docker,
# so images and build cache survive to the next start. State: $METALAND_DOCKERD_DIR (default
# /tmp/metaland-dockerd) holds the pid file and the engine's log.
set -eu

state="${METALAND_DOCKERD_DIR:-/tmp/metaland-dockerd}"
socket=/var/run/docker.sock
docker=/usr/bin/docker # Debian's client: BuildKit built in (another client on PATH may lack buildx)

say() {
  printf 'engine: %s\n' "$*" >&2
}

answers() {
  [ -x "$docker" ] && "$docker" -H "unix://$socket" info >/dev/null 2>&1
}

install() {
  missing=""
  [ -x /usr/sbin/dockerd ] && [ -x "$docker" ] || missing="$missing docker.io"
  command -v docker-compose >/dev/null || missing="$missing docker-compose"
  command -v debootstrap >/dev/null || missing="$missing debootstrap"
  [ -z "$missing" ] && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    say "error: needs Debian's$missing, and only root with apt-get can install them. Fix: as root, apt-get install$missing."
    exit 2
  fi
  say "installing Debian's$missing"
  apt-get update -qq
  # shellcheck disable=SC2086 # one word per package
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

start() {
  if answers; then
    say "an engine already answers on $socket; leaving it as it is"
    return 0
  fi
  install
  mkdir -p "$state"
  say "starting dockerd (log: $state/dockerd.log)"
  /usr/sbin/dockerd --bridge=none --iptables=false --ip6tables=false -H "unix://$socket" \
    --pidfile "$state/dockerd.pid" >"$state/dockerd.log" 2>&1 &
  tries=0
  until answers; do
    tries=$((tries + 1))
    if [ "$tries" -gt 60 ] || ! kill -0 "$!" 2>/dev/null; then
      tail -20 "$state/dockerd.log" >&2
      say "error: dockerd did not answer within 60 s (its log above)."
      exit 1
    fi
    sleep 1
  done
  "$docker" version --format 'engine: Docker {{.Server.Version}} answers' >&2
}

stop() {
  if [ ! -f "$state/dockerd.pid" ]; then
    say "no engine started by this script; nothing to stop"
    return 0
  fi
  pid="$(cat "$state/dockerd.pid")"
  say "stopping dockerd (pid $pid)"
  kill "$pid" 2>/dev/null || true
  tries=0
  while kill -0 "$pid" 2>/dev/null && [ "$tries" -lt 60 ]; do
    tries=$((tries + 1))
    sleep 1
  done
  rm -f "$state/dockerd.pid"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *)
    say "usage: docker/engine.sh start|stop"
    exit 2
    ;;
esac
