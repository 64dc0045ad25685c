#!/usr/bin/env bash
# Stops the lab sshd started by component-10-sshd.sh (only that pid). Keys and the password user stay
# (reused by the next start); pass --purge to remove them too.
set -uo pipefail
LAB=${VS_LAB_DIR:-/tmp/virtstream-lab}
DIR=$LAB/ssh
PW_USER=${VS_SSH_PASSWORD_USER:-vs-lab-pw}
pid=$(cat "$DIR/sshd.pid" 2>/dev/null || true)
if [[ $pid =~ ^[0-9]+$ ]] && [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = /usr/sbin/sshd ]; then
  kill "$pid" && echo "[sshd] stopped pid $pid" >&2
fi
rm -f "$DIR/sshd.pid"
if [ "${1:-}" = --purge ]; then
  id -u "$PW_USER" >/dev/null 2>&1 && userdel -r "$PW_USER" 2>/dev/null
  rm -rf "$DIR"
fi
exit 0
