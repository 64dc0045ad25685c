#!/usr/bin/env bash
# The first command on a fresh Debian/Ubuntu machine: installs what the demo needs, builds
# virtstream and runs `virtstream demo` (the oVirt engine simulator in-process: a full and an
# incremental backup with image-transfer, a restore to a new VM, a byte-exact comparison).
# No services are started. Extra arguments go to the demo, e.g. `bash scripts/demo.sh --size-mb 256`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

need=()
for tool in qemu-img qemu-io openssl; do command -v "$tool" >/dev/null 2>&1 || need+=("$tool"); done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "[demo] installing qemu-utils and openssl (missing: ${need[*]})" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get -q -y -o DPkg::Lock::Timeout=600 update >&2
    apt-get -q -y -o DPkg::Lock::Timeout=600 install --no-install-recommends qemu-utils openssl >&2
  else
    echo "[demo] missing ${need[*]}: run this script as root once, or install qemu-utils and openssl" >&2
    exit 1
  fi
fi
command -v node >/dev/null 2>&1 || { echo "[demo] Node.js 20.19+ is required" >&2; exit 1; }

if [ ! -d node_modules ]; then
  echo "[demo] npm install" >&2
  npm install --no-audit --no-fund >&2
fi
echo "[demo] npm run build" >&2
npm run build >&2
exec node dist/cli.js demo "$@"
