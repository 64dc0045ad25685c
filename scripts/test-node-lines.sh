#!/usr/bin/env bash
# The unit tests and the demo on every supported Node line besides the system one (which runs the
# whole suite). The binaries come from the npm packages node@22 and node@24, installed into a
# private prefix ($VS_NODE_DIR, default ~/.cache/virtstream-node) and reused on the next run.
# The build target (tsup `node20`) and @types/node stay at the lowest supported line (20) on
# purpose: code that compiles against 20 runs on 22 and 24, and this script proves it does.
# Run after `npm run build`. Usage: bash scripts/test-node-lines.sh [22 24 ...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
node_dir="${VS_NODE_DIR:-$HOME/.cache/virtstream-node}"
lines=("$@")
[ ${#lines[@]} -gt 0 ] || lines=(22 24)
for line in "${lines[@]}"; do
  bin="$node_dir/$line/node_modules/node/bin/node"
  if [ ! -x "$bin" ] || [ "$("$bin" -p 'process.versions.node.split(".")[0]')" != "$line" ]; then
    echo "[node $line] installing node@$line into $node_dir/$line" >&2
    mkdir -p "$node_dir/$line"
    npm install --no-audit --no-fund --no-save --prefix "$node_dir/$line" "node@$line" >&2
  fi
  echo "[node $line] $("$bin" --version): unit tests" >&2
  "$bin" node_modules/vitest/vitest.mjs run --project unit
  echo "[node $line] demo" >&2
  demo_repo="$(mktemp -d)"
  "$bin" dist/cli.js demo --size-mb 256 --repo "$demo_repo"
  rm -rf "$demo_repo"
done
