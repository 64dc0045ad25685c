#!/usr/bin/env bash
# Stops what component-20-libvirt.sh started (by its pid files only). Test domains whose names start
# with `vs-it-` are destroyed and undefined first, so qemu does not outlive the daemon.
# --purge also removes the lab's libvirt directory (images, logs).
set -uo pipefail
LAB=${VS_LAB_DIR:-/tmp/virtstream-lab}
DIR=$LAB/libvirt
URI=qemu:///system
log() { echo "[libvirt] $*" >&2; }
pid_alive() {
  local pid; pid=$(cat "$1" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  local exe; exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
  [ "${exe% (deleted)}" = "$2" ]
}
stop_pid() { # name pidfile exe
  if pid_alive "$2" "$3"; then
    local pid; pid=$(cat "$2"); kill -TERM "$pid"
    for _ in $(seq 100); do
      kill -0 "$pid" 2>/dev/null || break
      [ "$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null)" = Z ] && break
      sleep 0.1
    done
    log "$1 stopped (pid $pid)"
  fi
  rm -f "$2"
}
if pid_alive "$DIR/libvirtd.pid" /usr/sbin/libvirtd; then
  while IFS= read -r dom; do
    case "$dom" in vs-it-*|vs-bench-*)
      virsh -q -c "$URI" destroy --domain "$dom" >/dev/null 2>&1
      virsh -q -c "$URI" undefine --domain "$dom" --checkpoints-metadata --snapshots-metadata >/dev/null 2>&1
      log "removed test domain $dom";;
    esac
  done < <(virsh -q -c "$URI" list --all --name 2>/dev/null)
fi
stop_pid libvirtd "$DIR/libvirtd.pid" /usr/sbin/libvirtd
stop_pid virtlogd "$DIR/virtlogd.pid" /usr/sbin/virtlogd
[ "${1:-}" = --purge ] && rm -rf "$DIR"
exit 0
