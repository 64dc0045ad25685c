#!/usr/bin/env bash
# Stops everything up.sh started (each component's stop-<name>.sh), newest first.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export VS_LAB_DIR=${VS_LAB_DIR:-/tmp/virtstream-lab}
stops=("$here"/stop-*.sh)
for ((i=${#stops[@]}-1; i>=0; i--)); do [ -e "${stops[$i]}" ] && "${stops[$i]}" || true; done
