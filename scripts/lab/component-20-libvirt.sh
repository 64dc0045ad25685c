#!/usr/bin/env bash
# Lab component: libvirtd + virtlogd (no systemd, unix sockets only) for the libvirt integration tests.
# Guests are <domain type='qemu'> (TCG): the tests define and remove their own tiny domains.
# Idempotent: reuses daemons it started earlier (pid files) or a libvirtd that already answers.
# Needs root. stdout: only `export VAR=value` lines; progress on stderr. Undo: stop-20-libvirt.sh.
set -euo pipefail
LAB=${VS_LAB_DIR:-/tmp/virtstream-lab}
DIR=$LAB/libvirt
URI=qemu:///system
log() { echo "[libvirt] $*" >&2; }
die() { echo "[libvirt] ERROR: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "must run as root"
mkdir -p "$DIR" "$DIR/images"
# qemu runs as libvirt-qemu (dynamic_ownership chowns images): it must traverse the path
chmod 755 "$LAB" "$DIR" "$DIR/images"

# true when the pid in $1 is alive and runs executable $2 (guards against pid reuse)
pid_alive() {
  local pid; pid=$(cat "$1" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  local exe; exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
  [ "${exe% (deleted)}" = "$2" ]
}
wait_until() { # seconds, command...
  local n=$(( $1 * 10 )); shift
  for ((i = 0; i < n; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  return 1
}

printf 'log_outputs="3:file:%s"\n' "$DIR/virtlogd.log" > "$DIR/virtlogd.conf"
printf 'log_outputs="3:file:%s"\n' "$DIR/libvirtd.log" > "$DIR/libvirtd.conf"

if pid_alive "$DIR/virtlogd.pid" /usr/sbin/virtlogd; then
  log "virtlogd already running (pid $(cat "$DIR/virtlogd.pid"))"
elif [ -S /run/libvirt/virtlogd-sock ] && pgrep -x virtlogd >/dev/null; then
  log "virtlogd started by someone else is running; reusing it"
else
  /usr/sbin/virtlogd -d -f "$DIR/virtlogd.conf" -p "$DIR/virtlogd.pid" 9>&-
  wait_until 10 test -S /run/libvirt/virtlogd-sock || die "virtlogd socket did not appear"
  log "virtlogd started (pid $(cat "$DIR/virtlogd.pid"))"
fi

if pid_alive "$DIR/libvirtd.pid" /usr/sbin/libvirtd; then
  log "libvirtd already running (pid $(cat "$DIR/libvirtd.pid"))"
elif virsh -q -c "$URI" version >/dev/null 2>&1; then
  log "a libvirtd not started by this script answers on $URI; reusing it"
else
  # skip autostart of the 'default' NAT network (it would touch the host's iptables)
  mkdir -p /run/libvirt/network && touch /run/libvirt/network/autostarted
  # When /dev/kvm exists but libvirt-qemu cannot open it (0600 without udev), libvirt declares its
  # qemu capability cache stale on every lookup and re-probes qemu (tens of seconds per define).
  # Give libvirtd its own mount namespace where /dev/kvm is a copy of the node with the usual
  # udev mode 0660 root:kvm; the host's /dev stays untouched.
  launch=()
  if [ "${VS_LIBVIRT_KVM_NS:-1}" = 1 ] && [ -c /dev/kvm ] && getent group kvm >/dev/null \
     && ! runuser -u libvirt-qemu -- test -r /dev/kvm -a -w /dev/kvm 2>/dev/null; then
    majmin=$(stat -c '%t %T' /dev/kvm)
    rm -f "$DIR/kvm-node"
    mknod -m 0660 "$DIR/kvm-node" c $((16#${majmin% *})) $((16#${majmin#* }))
    chgrp kvm "$DIR/kvm-node"
    if unshare -m --propagation private true 2>/dev/null; then
      # shellcheck disable=SC2016 # expanded by the inner sh
      launch=(unshare -m --propagation private sh -c 'mount --bind "$0" /dev/kvm && exec "$@"' "$DIR/kvm-node")
      log "libvirtd gets a private mount namespace with a usable /dev/kvm node"
    else
      log "WARNING: unshare -m not permitted; defines will be slow (qemu capability re-probing)"
    fi
  fi
  "${launch[@]}" /usr/sbin/libvirtd -d -f "$DIR/libvirtd.conf" -p "$DIR/libvirtd.pid" 9>&-
  wait_until 30 virsh -q -c "$URI" version || die "libvirtd not answering (see $DIR/libvirtd.log)"
  log "libvirtd started (pid $(cat "$DIR/libvirtd.pid"))"
fi
virsh -q -c "$URI" version >/dev/null || die "libvirtd not answering on $URI"
qemu-img --version >/dev/null || die "qemu-img missing"

echo "export VS_LIBVIRT_URI=$URI"
echo "export VS_LIBVIRT_IMAGE_DIR=$DIR/images"
