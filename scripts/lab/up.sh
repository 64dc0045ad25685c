#!/usr/bin/env bash
# Starts the integration lab (idempotent) and prints `export VAR=...` lines (also written to
# $VS_LAB_DIR/lab.env). Components run in order; each is scripts/lab/component-<name>.sh.
# Usage: up.sh [component ...]   (default: every component present)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export VS_LAB_DIR=${VS_LAB_DIR:-/tmp/virtstream-lab}
mkdir -p "$VS_LAB_DIR"
exec 9>"$VS_LAB_DIR/up.lock"; flock -w 600 9
if [ $# -gt 0 ]; then comps=("$@"); else
  comps=()
  for f in "$here"/component-*.sh; do [ -e "$f" ] && comps+=("$(basename "$f" .sh | sed 's/^component-//')"); done
fi
"$here/install-packages.sh" 9>&-
out="$VS_LAB_DIR/lab.env.tmp"
echo "export VS_LAB_DIR=$VS_LAB_DIR" > "$out"
for c in "${comps[@]}"; do
  echo "[lab] starting $c" >&2
  "$here/component-$c.sh" 9>&- >> "$out"
done
mv "$out" "$VS_LAB_DIR/lab.env"
cat "$VS_LAB_DIR/lab.env"
