#!/usr/bin/env bash
# Starts the integration lab (idempotent) and prints `export VAR=...` lines (also written to
# $VS_LAB_DIR/lab.env). Components run in order; each is scripts/lab/component-<name>.sh and its
# exports are kept in $VS_LAB_DIR/env.d/<name>.env, so starting one component keeps the others' lines.
# Usage: up.sh [component ...]   (default: every component present, e.g. 10-sshd 20-libvirt 30-ceph)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export VS_LAB_DIR=${VS_LAB_DIR:-/tmp/virtstream-lab}
mkdir -p "$VS_LAB_DIR/env.d"
exec 9>"$VS_LAB_DIR/up.lock"; flock -w 600 9
if [ $# -gt 0 ]; then comps=("$@"); else
  comps=()
  for f in "$here"/component-*.sh; do [ -e "$f" ] && comps+=("$(basename "$f" .sh | sed 's/^component-//')"); done
fi
"$here/install-packages.sh" 9>&-
for c in "${comps[@]}"; do
  echo "[lab] starting $c" >&2
  "$here/component-$c.sh" 9>&- > "$VS_LAB_DIR/env.d/$c.env.tmp"
  mv "$VS_LAB_DIR/env.d/$c.env.tmp" "$VS_LAB_DIR/env.d/$c.env"
done
{ echo "export VS_LAB_DIR=$VS_LAB_DIR"; cat "$VS_LAB_DIR"/env.d/*.env; } > "$VS_LAB_DIR/lab.env.tmp"
mv "$VS_LAB_DIR/lab.env.tmp" "$VS_LAB_DIR/lab.env"
cat "$VS_LAB_DIR/lab.env"
