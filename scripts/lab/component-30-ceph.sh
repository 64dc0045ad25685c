#!/usr/bin/env bash
# component-30-ceph.sh - single-host Ceph cluster for the RBD integration suite.
#
# 1 mon + 1 mgr + 1 OSD (bluestore on a sparse file), pool size 1, cephx, bound to 127.0.0.1 only.
# Idempotent and fast on re-runs:
#   - cluster up and serving IO           -> reused (~1 s)
#   - cluster dir ready but daemons down  -> daemons restarted on their existing data
#   - anything else                       -> remnants stopped (by pid file), wiped, created fresh (~15 s)
# Runs as root. Prints only `export VAR=value` lines on stdout; progress goes to stderr.
#
# Knobs: VS_LAB_DIR (default /tmp/virtstream-lab), VS_CEPH_DIR (default $VS_LAB_DIR/ceph),
#        VS_CEPH_POOL (default rbd), VS_CEPH_OSD_BYTES (default 4 GiB, sparse),
#        VS_CEPH_MON_V2_PORT / VS_CEPH_MON_V1_PORT (default 3300 / 6789), VS_CEPH_SKIP=1 (do nothing).
set -euo pipefail

LAB=${VS_LAB_DIR:-/tmp/virtstream-lab}
D=${VS_CEPH_DIR:-$LAB/ceph}
POOL=${VS_CEPH_POOL:-rbd}
OSD_BYTES=${VS_CEPH_OSD_BYTES:-4294967296}
V2=${VS_CEPH_MON_V2_PORT:-3300}
V1=${VS_CEPH_MON_V1_PORT:-6789}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CONF=$D/ceph.conf
KEYRING=$D/keyring
C=(--conf "$CONF" --id admin --keyring "$KEYRING" --connect-timeout 10)
R=(--conf "$CONF" --id admin --keyring "$KEYRING")

log() { printf '[lab ceph %s] %s\n' "$(date +%T.%3N)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

if [ "${VS_CEPH_SKIP:-0}" = 1 ]; then log "VS_CEPH_SKIP=1: not starting ceph"; exit 0; fi

print_env() {
  echo "export VS_CEPH_DIR=$D"
  echo "export VS_CEPH_CONF=$CONF"
  echo "export VS_CEPH_KEYRING=$KEYRING"
  echo "export VS_CEPH_ID=admin"
  echo "export VS_CEPH_POOL=$POOL"
  echo "export VS_CEPH_MON_HOST='[v2:127.0.0.1:$V2,v1:127.0.0.1:$V1]'"
}

for b in ceph-mon ceph-mgr ceph-osd ceph rbd rados monmaptool ceph-authtool; do
  command -v "$b" >/dev/null || die "$b not installed (scripts/lab/debian-packages.txt lists ceph-mon ceph-mgr ceph-osd ceph-common)"
done

alive() { [ -r "/proc/$1/stat" ] && ! awk '{exit ($3=="Z")?0:1}' "/proc/$1/stat" 2>/dev/null; }
ours() { tr '\0' ' ' < "/proc/$1/cmdline" 2>/dev/null | grep -q -- "$CONF"; }
daemon_up() { # name (mon.a / mgr.x / osd.0)
  local pf="$D/run/ceph-$1.pid" pid
  [ -f "$pf" ] || return 1
  pid=$(cat "$pf" 2>/dev/null || true)
  [ -n "$pid" ] && alive "$pid" && ours "$pid"
}
osd_up() { timeout 10 ceph "${C[@]}" osd stat -f json 2>/dev/null | grep -q '"num_up_osds":1'; }
io_ok() { timeout 15 rados "${R[@]}" -p "$POOL" stat __lab_probe__ >/dev/null 2>&1; }
wait_osd() {
  for _ in $(seq 1 120); do osd_up && return 0; sleep 0.5; done
  return 1
}

# ---------------------------------------------------------------- reuse / restart
if [ -f "$CONF" ] && [ -f "$D/.ready" ]; then
  if daemon_up mon.a && daemon_up osd.0 && osd_up && io_ok; then
    daemon_up mgr.x || ceph-mgr --conf "$CONF" -i x
    log "cluster in $D up, reusing"
    print_env; exit 0
  fi
  log "cluster in $D is ready but not serving: restarting its daemons"
  daemon_up mon.a || ceph-mon --conf "$CONF" -i a
  daemon_up mgr.x || ceph-mgr --conf "$CONF" -i x
  daemon_up osd.0 || ceph-osd --conf "$CONF" -i 0 2>>"$D/log/osd-start.log"
  if wait_osd && io_ok; then
    log "cluster restarted"
    print_env; exit 0
  fi
  log "restart failed, recreating"
fi

# ---------------------------------------------------------------- fresh cluster
if [ -e "$D" ]; then "$HERE/stop-30-ceph.sh" >&2; fi
T0=$(date +%s.%N)
elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1fs", b-a}'; }
mkdir -p "$D"/{mon.a,mgr.x,osd.0,run,log,crash}
FSID=$(cat /proc/sys/kernel/random/uuid)
OSD_UUID=$(cat /proc/sys/kernel/random/uuid)

cat > "$CONF" <<EOF
[global]
fsid = $FSID
mon_host = [v2:127.0.0.1:$V2,v1:127.0.0.1:$V1]
mon_initial_members = a
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
public_network = 127.0.0.1/32
ms_bind_ipv4 = true
ms_bind_ipv6 = false
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
auth_allow_insecure_global_id_reclaim = false
run_dir = $D/run
crash_dir = $D/crash
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_autoscale_mode = off
mon_allow_pool_size_one = true
mon_allow_pool_delete = true
mon_warn_on_pool_no_redundancy = false
mon_warn_on_insecure_global_id_reclaim_allowed = false
osd_crush_chooseleaf_type = 0
mon_data_avail_warn = 2
mon_data_avail_crit = 1

[mon]
mon_data = $D/mon.\$id
keyring = $D/mon.\$id/keyring
admin_socket = $D/run/\$cluster-\$name.asok
pid_file = $D/run/\$cluster-\$name.pid
log_file = $D/log/\$cluster-\$name.log

[mgr]
mgr_data = $D/mgr.\$id
keyring = $D/mgr.\$id/keyring
admin_socket = $D/run/\$cluster-\$name.asok
pid_file = $D/run/\$cluster-\$name.pid
log_file = $D/log/\$cluster-\$name.log

[osd]
osd_data = $D/osd.\$id
keyring = $D/osd.\$id/keyring
admin_socket = $D/run/\$cluster-\$name.asok
pid_file = $D/run/\$cluster-\$name.pid
log_file = $D/log/\$cluster-\$name.log
osd_objectstore = bluestore
bluestore_block_create = true
bluestore_block_size = $OSD_BYTES
bluestore_fsck_on_mount = false
bluestore_cache_autotune = false
bluestore_cache_size = 134217728
osd_memory_target = 939524096

[client]
admin_socket =
log_file =
EOF

monmaptool --create --clobber --fsid "$FSID" --addv a "[v2:127.0.0.1:$V2,v1:127.0.0.1:$V1]" "$D/monmap" >/dev/null
ceph-authtool --create-keyring "$D/mon-bootstrap.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
ceph-authtool --create-keyring "$KEYRING" --gen-key -n client.admin \
  --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' --cap mds 'allow *' >/dev/null
chmod 600 "$KEYRING"
ceph-authtool "$D/mon-bootstrap.keyring" --import-keyring "$KEYRING" >/dev/null
ceph-mon --conf "$CONF" --mkfs -i a --monmap "$D/monmap" --keyring "$D/mon-bootstrap.keyring"
ceph-mon --conf "$CONF" -i a
for i in $(seq 1 60); do
  timeout 10 ceph "${C[@]}" mon stat >/dev/null 2>&1 && break
  [ "$i" = 60 ] && die "mon did not form quorum (see $D/log/ceph-mon.a.log)"
  sleep 0.5
done
log "mon.a up after $(elapsed)"

ceph "${C[@]}" auth get-or-create mgr.x mon 'allow profile mgr' osd 'allow *' mds 'allow *' -o "$D/mgr.x/keyring"
ceph-mgr --conf "$CONF" -i x

OSD_ID=$(ceph "${C[@]}" osd new "$OSD_UUID")
[ "$OSD_ID" = 0 ] || die "unexpected osd id $OSD_ID"
ceph-authtool --create-keyring "$D/osd.0/keyring" --gen-key -n osd.0 >/dev/null
ceph "${C[@]}" auth add osd.0 osd 'allow *' mon 'allow profile osd' mgr 'allow profile osd' \
  -i "$D/osd.0/keyring" >/dev/null 2>&1 || die "ceph auth add osd.0 failed"
ceph-osd --conf "$CONF" -i 0 --mkfs --osd-uuid "$OSD_UUID" >"$D/log/osd-mkfs.log" 2>&1 \
  || { cat "$D/log/osd-mkfs.log" >&2; die "ceph-osd --mkfs failed"; }
ceph-osd --conf "$CONF" -i 0 2>>"$D/log/osd-start.log"
wait_osd || die "osd.0 did not come up (see $D/log/ceph-osd.0.log)"
log "osd.0 up after $(elapsed)"

ceph "${C[@]}" osd pool create "$POOL" 8 8 >/dev/null 2>&1
ceph "${C[@]}" osd pool set "$POOL" size 1 --yes-i-really-mean-it >/dev/null 2>&1
timeout 120 rbd "${R[@]}" pool init "$POOL"
echo probe | timeout 60 rados "${R[@]}" -p "$POOL" put __lab_probe__ - || die "pool $POOL does not accept writes"
log "pool $POOL accepts IO after $(elapsed)"

touch "$D/.ready"
print_env
