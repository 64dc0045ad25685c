#!/usr/bin/env bash
# stop-30-ceph.sh - stops exactly the daemons component-30-ceph.sh started (by pid file, checked
# against their command line) and removes the cluster dir. Safe to run repeatedly.
set -uo pipefail
LAB=${VS_LAB_DIR:-/tmp/virtstream-lab}
D=${VS_CEPH_DIR:-$LAB/ceph}
CONF=$D/ceph.conf
log() { printf '[lab ceph-stop %s] %s\n' "$(date +%T.%3N)" "$*" >&2; }
case "$D" in /|/tmp|/tmp/|"") log "refusing to remove '$D'"; exit 1;; esac

# alive = exists and is not a zombie; ours = its command line names our ceph.conf (pid reuse guard)
alive() { [ -r "/proc/$1/stat" ] && ! awk '{exit ($3=="Z")?0:1}' "/proc/$1/stat" 2>/dev/null; }
ours() { tr '\0' ' ' < "/proc/$1/cmdline" 2>/dev/null | grep -q -- "$CONF"; }

stop() { # daemon name, e.g. osd.0
  local pf="$D/run/ceph-$1.pid" pid
  [ -f "$pf" ] || return 0
  pid=$(cat "$pf" 2>/dev/null || true)
  [ -n "$pid" ] || return 0
  if alive "$pid" && ours "$pid"; then
    log "stopping $1 (pid $pid)"
    kill -CONT "$pid" 2>/dev/null   # a test may have paused it
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 50); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then log "$1 still alive after 5s, SIGKILL"; kill -KILL "$pid" 2>/dev/null; fi
  fi
}

if [ -d "$D/run" ]; then
  stop osd.0; stop mgr.x; stop mon.a
  for pf in "$D"/run/*.pid; do
    [ -f "$pf" ] || continue
    n=$(basename "$pf" .pid); stop "${n#ceph-}"
  done
fi
rm -rf "$D"
log "removed $D"
