#!/usr/bin/env bash
# Installs the Debian packages listed in debian-packages.txt that are missing. Needs root.
# Never lets maintainer scripts start system services.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mapfile -t pkgs < <(grep -vE '^\s*(#|$)' "$here/debian-packages.txt")
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && { echo "[install-packages] all present" >&2; exit 0; }
[ "$(id -u)" -eq 0 ] || { echo "[install-packages] missing ${missing[*]} and not root" >&2; exit 1; }
echo "[install-packages] installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
tmp_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; tmp_policy=1
fi
trap '[ $tmp_policy -eq 1 ] && rm -f /usr/sbin/policy-rc.d' EXIT
apt=(apt-get -q -y -o DPkg::Lock::Timeout=600 -o Dpkg::Use-Pty=0 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
"${apt[@]}" update >&2
"${apt[@]}" install --no-install-recommends "${missing[@]}" >&2
