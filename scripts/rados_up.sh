#!/usr/bin/env bash
# rados_up.sh — bring up / tear down a throw-away single-node Ceph (RADOS) cluster
# from Debian 12's own packages, without systemd, bound to 127.0.0.1 only.
#
# Written for: Debian 12 (bookworm), ceph 16.2.15 (Pacific), run as root
# (no systemd as PID 1 needed; no file outside $CEPH_DIR is written except by apt).
#
# Usage:
#   rados_up.sh install          # apt-get install the packages (retries while dpkg is locked);
#                                  `make test` installs the same list (CEPH_PKGS in the Makefile)
#   rados_up.sh up               # create + start mon, mgr, N OSDs, a pool; wait for HEALTH_OK
#   rados_up.sh status           # ceph -s
#   rados_up.sh env              # print `export CEPH_CONF=...` for your shell / tests
#   rados_up.sh start            # start a stopped cluster again (after `down`; data kept)
#   rados_up.sh start-osd ID     # (re)start one OSD, e.g. after a test killed it
#   rados_up.sh rss              # resident memory of each running daemon: "osd.0 93.2" (MiB)
#   rados_up.sh down             # stop the daemons this script started (by PID file)
#   rados_up.sh purge            # down + rm -rf $CEPH_DIR
#
# Knobs (environment):
#   CEPH_DIR=/tmp/ceph-test      everything lives here (conf, keyrings, mon/mgr/osd data, logs, pids)
#   OBJECTSTORE=bluestore        bluestore (sparse file per OSD, O_DIRECT+libaio) | memstore (RAM)
#   N_OSDS=1                     1..3
#   OSD_SIZE_GB=20               bluestore: sparse block file size (host disk used = data written;
#                                keep host free space >= this); memstore: RAM cap per OSD
#   OSD_MEMORY_TARGET_MB=1024    bluestore cache autotuning target (default upstream is 4096)
#   POOL=psegs  PG_NUM=32        pool that is created (application 'rados' enabled)
#   POOL_SIZE=1 POOL_MIN_SIZE=1  its replica count and the replicas a PG needs to serve I/O
#                                (3 and 2 with N_OSDS=3: one OSD may die without a client error)
#   MON_PORT_V2=3300 MON_PORT_V1=6789   (change both to run two clusters side by side)
#   OSD_PORT_MIN=6800 OSD_PORT_MAX=7300
#   AUTH=cephx                   cephx | none
#   HEALTH_TIMEOUT=180           seconds to wait for HEALTH_OK
#   MGR=1                        0: no ceph-mgr (saves ~300 MiB and CPU; RADOS clients do not need it,
#                                but without it there are no PG stats and no HEALTH_OK)
#   WAIT=health                  health: wait for all PGs active+clean and HEALTH_OK (needs the mgr);
#                                io: only for the smoke put/get to succeed (the PGs are active then)
#   OSD_PRELOAD=<libtcmalloc>    Debian 12's ceph-osd is linked against glibc malloc (not tcmalloc);
#                                under 2 MiB writes its RSS grew to 4 GiB with osd_memory_target=1 GiB.
#                                We LD_PRELOAD gperftools' tcmalloc (pulled in by ceph-common) by default.
#                                Set OSD_PRELOAD= (empty) to disable.
set -euo pipefail
trap 'echo "rados_up.sh: FAILED at line $LINENO (logs in $CEPH_DIR/log)" >&2' ERR

CEPH_DIR=${CEPH_DIR:-/tmp/ceph-test}
OBJECTSTORE=${OBJECTSTORE:-bluestore}
N_OSDS=${N_OSDS:-1}
OSD_SIZE_GB=${OSD_SIZE_GB:-20}
OSD_MEMORY_TARGET_MB=${OSD_MEMORY_TARGET_MB:-1024}
POOL=${POOL:-psegs}
PG_NUM=${PG_NUM:-32}
POOL_SIZE=${POOL_SIZE:-1}
POOL_MIN_SIZE=${POOL_MIN_SIZE:-1}
MON_PORT_V2=${MON_PORT_V2:-3300}
MON_PORT_V1=${MON_PORT_V1:-6789}
OSD_PORT_MIN=${OSD_PORT_MIN:-6800}
OSD_PORT_MAX=${OSD_PORT_MAX:-7300}
AUTH=${AUTH:-cephx}
HEALTH_TIMEOUT=${HEALTH_TIMEOUT:-180}
MGR=${MGR:-1}
WAIT=${WAIT:-health}
TCMALLOC=/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4
if [ -z "${OSD_PRELOAD+x}" ]; then [ -e "$TCMALLOC" ] && OSD_PRELOAD=$TCMALLOC || OSD_PRELOAD=; fi
CONF=$CEPH_DIR/ceph.conf
PKGS="ceph-mon ceph-osd ceph-mgr ceph-common librados2"

T0=$(date +%s.%N)
log() { awk -v a="$(date +%s.%N)" -v b="$T0" -v m="$*" 'BEGIN{printf "[%6.2fs] %s\n", a-b, m}'; }
C() { ceph -c "$CONF" "$@"; }

cmd_install() {
    export DEBIAN_FRONTEND=noninteractive
    # DPkg::Lock::Timeout makes apt wait (up to 10 min) while another apt/dpkg holds the lock
    local apt="apt-get -o DPkg::Lock::Timeout=600"
    for i in 1 2 3; do
        if $apt update -q && $apt install -y -q --no-install-recommends $PKGS; then return 0; fi
        echo "apt-get failed, retry $i/3 in 20s" >&2; sleep 20
    done
    return 1
}

write_conf() {
    local fsid=$1
    cat > "$CONF" <<EOF
[global]
fsid = $fsid
mon host = [v2:127.0.0.1:$MON_PORT_V2,v1:127.0.0.1:$MON_PORT_V1]
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind ipv6 = false
ms bind port min = $OSD_PORT_MIN
ms bind port max = $OSD_PORT_MAX
auth cluster required = $AUTH
auth service required = $AUTH
auth client required = $AUTH
auth allow insecure global id reclaim = false
mon warn on insecure global id reclaim allowed = false
keyring = $CEPH_DIR/keyring
run dir = $CEPH_DIR/run
admin socket = $CEPH_DIR/run/\$cluster-\$name.asok
pid file = $CEPH_DIR/run/\$name.pid
log file = $CEPH_DIR/log/\$name.log
crash dir = $CEPH_DIR/crash
# single host, replica count 1 by default: no HEALTH_WARN for that
osd pool default size = $POOL_SIZE
osd pool default min size = $POOL_MIN_SIZE
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail warn = 2
mon data avail crit = 1
# Full handling.  A bluestore OSD that really runs out of space aborts and never mounts again
# (bluefs ENOSPC); the stock ratios (.95/.97) gave no protection against a 1.2 GB/s writer on a
# 10-20 GiB OSD.  Stop client writes much earlier and let the OSD re-check its fill level every ~1 s.
mon osd nearfull ratio = .70
mon osd backfillfull ratio = .75
mon osd full ratio = .80
osd failsafe full ratio = .85
osd heartbeat interval = 1
# small machine
mon memory target = 268435456
# a dead OSD is noticed by the mon within ~20 s (default: 900 s when no peer OSD reports it)
osd beacon report interval = 5
mon osd report timeout = 20
mon osd down out interval = 60
# every OSD is on this one host: a failure report of one peer OSD is enough (the defaults,
# 2 reporters from distinct hosts, left a killed OSD "up" until the 20 s report timeout)
mon osd reporter subtree level = osd
mon osd min down reporters = 1
# PG states reach the mgr every second, not every 5 s: waits for active+clean end sooner
mgr stats period = 1

[client]
# one admin socket per client process (several test clients at once)
admin socket = $CEPH_DIR/run/\$cluster-\$name.\$pid.asok
log file = $CEPH_DIR/log/\$name.log
# never block forever on a dead OSD/mon: ops fail with ETIMEDOUT instead (default 0 = wait forever)
rados osd op timeout = 30
rados mon op timeout = 30
# An op sent to the old primary while a restarted OSD takes its PGs back is dropped; the client
# learns the new map only when it deems the op laggy (objecter_timeout 10 s, checked every
# objecter_tick_interval 5 s): a 14 s stall, measured.  With these: about 2 s.
objecter tick interval = 1
objecter timeout = 2

[mon]
mon data = $CEPH_DIR/mon/\$cluster-\$id
keyring = $CEPH_DIR/mon/\$cluster-\$id/keyring

[mgr]
mgr data = $CEPH_DIR/mgr/\$cluster-\$id
keyring = $CEPH_DIR/mgr/\$cluster-\$id/keyring

[osd]
osd data = $CEPH_DIR/osd/\$cluster-\$id
keyring = $CEPH_DIR/osd/\$cluster-\$id/keyring
osd objectstore = $OBJECTSTORE
osd memory target = $((OSD_MEMORY_TARGET_MB * 1024 * 1024))
# bluestore on a sparse file \$osd_data/block (default path; no LVM, no loop device, no ceph-volume)
bluestore block create = true
bluestore block size = $((OSD_SIZE_GB * 1024 * 1024 * 1024))
bluestore fsck on mkfs = false
bluestore fsck on mount = false
# the virtio disk reports rotational=1, so the OSD picks HDD tunings: recovery sleeps 0.1 s
# per op (an OSD restart took 110 s to HEALTH_OK instead of 10 s).  No sleeping in tests.
osd recovery sleep hdd = 0
osd recovery max active hdd = 10
# memstore
memstore device bytes = $((OSD_SIZE_GB * 1024 * 1024 * 1024))
EOF
}

wait_for() { # timeout_s description command...
    local t=$1 what=$2; shift 2
    local end=$(( $(date +%s) + t ))
    until "$@" >/dev/null 2>&1; do
        if [ "$(date +%s)" -ge "$end" ]; then echo "timeout waiting for: $what" >&2; return 1; fi
        sleep 0.5
    done
}

cmd_up() {
    command -v ceph-mon >/dev/null || { echo "ceph not installed: run '$0 install'" >&2; exit 1; }
    if [ -e "$CEPH_DIR/run/mon.a.pid" ] && kill -0 "$(cat "$CEPH_DIR/run/mon.a.pid")" 2>/dev/null; then
        echo "cluster in $CEPH_DIR already running" >&2; exit 1
    fi
    rm -rf "$CEPH_DIR"
    mkdir -p "$CEPH_DIR"/{run,log,crash,mon/ceph-a,mgr/ceph-x,osd}
    local fsid; fsid=$(uuidgen)
    write_conf "$fsid"
    log "conf written ($OBJECTSTORE, $N_OSDS OSD(s), fsid $fsid)"

    # --- keys + monmap + mon ---
    ceph-authtool --create-keyring "$CEPH_DIR/mon.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
    ceph-authtool --create-keyring "$CEPH_DIR/keyring" --gen-key -n client.admin \
        --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' --cap mds 'allow *' >/dev/null
    ceph-authtool "$CEPH_DIR/mon.keyring" --import-keyring "$CEPH_DIR/keyring" >/dev/null
    monmaptool --create --fsid "$fsid" \
        --addv a "[v2:127.0.0.1:$MON_PORT_V2,v1:127.0.0.1:$MON_PORT_V1]" "$CEPH_DIR/monmap" >/dev/null
    ceph-mon -c "$CONF" --mkfs -i a --monmap "$CEPH_DIR/monmap" --keyring "$CEPH_DIR/mon.keyring"
    ceph-mon -c "$CONF" -i a            # daemonizes, writes run/mon.a.pid
    wait_for 60 "mon quorum" C -s --connect-timeout 5
    log "mon.a up"

    # --- mgr (needed for HEALTH_OK, pg stats, `ceph df`) ---
    if [ "$MGR" = 1 ]; then
        C auth get-or-create mgr.x mon 'allow profile mgr' osd 'allow *' mds 'allow *' \
            -o "$CEPH_DIR/mgr/ceph-x/keyring"
        ceph-mgr -c "$CONF" -i x
        log "mgr.x started"
    fi

    # --- OSDs --- (mkfs + start of each in the background: with 3 OSDs, 15 s in sequence)
    local i uuid key id pids=()
    for i in $(seq 1 "$N_OSDS"); do
        uuid=$(uuidgen)
        key=$(ceph-authtool --gen-print-key)
        id=$(echo "{\"cephx_secret\": \"$key\"}" | C osd new "$uuid" -i -)
        mkdir -p "$CEPH_DIR/osd/ceph-$id"
        ceph-authtool --create-keyring "$CEPH_DIR/osd/ceph-$id/keyring" --name "osd.$id" --add-key "$key" >/dev/null
        ( LD_PRELOAD=$OSD_PRELOAD ceph-osd -c "$CONF" -i "$id" --mkfs --osd-uuid "$uuid" \
              >"$CEPH_DIR/log/osd.$id.mkfs.log" 2>&1
          LD_PRELOAD=$OSD_PRELOAD ceph-osd -c "$CONF" -i "$id" 2>>"$CEPH_DIR/log/osd.$id.mkfs.log"
          log "osd.$id started${OSD_PRELOAD:+ (LD_PRELOAD=$OSD_PRELOAD)}" ) &
        pids+=($!)
    done
    for i in "${pids[@]}"; do wait "$i"; done
    wait_for 120 "$N_OSDS OSD(s) up" bash -c \
        "[ \"\$(ceph -c '$CONF' osd stat -f json | python3 -c 'import json,sys;print(json.load(sys.stdin)[\"num_up_osds\"])')\" = $N_OSDS ]"
    log "all OSDs up"

    # --- pool ---
    C osd pool create "$POOL" "$PG_NUM" "$PG_NUM" replicated >/dev/null 2>&1
    C osd pool application enable "$POOL" rados >/dev/null 2>&1
    log "pool $POOL created"
    if [ "$WAIT" = health ]; then
        wait_for 60 "mgr active" bash -c "ceph -c '$CONF' mgr stat -f json | grep -q '\"available\": *true'"
        log "mgr active"
        wait_for 120 "all PGs active+clean" bash -c "ceph -c '$CONF' pg stat -f json | python3 -c '
import json,sys; s=json.load(sys.stdin)[\"pg_summary\"]
ok=[x[\"num\"] for x in s[\"num_pg_by_state\"] if x[\"name\"]==\"active+clean\"]
sys.exit(0 if ok and ok[0]==s[\"num_pgs\"] else 1)'"
        log "all PGs active+clean"
        wait_for "$HEALTH_TIMEOUT" HEALTH_OK bash -c "ceph -c '$CONF' health | grep -q HEALTH_OK" || { C -s; exit 1; }
        log "HEALTH_OK"
    fi

    # --- smoke test: put/get one 2 MiB object ---
    head -c 2097152 /dev/urandom > "$CEPH_DIR/smoke.in"
    rados -c "$CONF" -p "$POOL" put smoke "$CEPH_DIR/smoke.in"
    rados -c "$CONF" -p "$POOL" get smoke "$CEPH_DIR/smoke.out"
    cmp "$CEPH_DIR/smoke.in" "$CEPH_DIR/smoke.out"
    rados -c "$CONF" -p "$POOL" rm smoke; rm -f "$CEPH_DIR"/smoke.*
    log "rados put/get 2 MiB OK"
    echo "export CEPH_CONF=$CONF   # then: ceph -s; rados -p $POOL ls"
}

cmd_start() { # start an existing (stopped) cluster again; bluestore data persists
    [ -e "$CONF" ] || { echo "no cluster in $CEPH_DIR: run '$0 up'" >&2; exit 1; }
    ceph-mon -c "$CONF" -i a
    if [ -e "$CEPH_DIR/mgr/ceph-x/keyring" ]; then ceph-mgr -c "$CONF" -i x; fi
    local d
    for d in "$CEPH_DIR"/osd/ceph-*; do cmd_start_osd "${d##*-}"; done
    wait_for "$HEALTH_TIMEOUT" HEALTH_OK bash -c "ceph -c '$CONF' health | grep -q HEALTH_OK" || { C -s; exit 1; }
    log "HEALTH_OK"
}

cmd_start_osd() { # restart one OSD after `kill` (used by failover tests)
    LD_PRELOAD=$OSD_PRELOAD ceph-osd -c "$CONF" -i "$1"
}

cmd_rss() {
    local f rss
    for f in "$CEPH_DIR"/run/*.pid; do
        [ -e "$f" ] || continue
        rss=$(awk '/^VmRSS:/ {printf "%.1f", $2 / 1024}' "/proc/$(cat "$f")/status" 2>/dev/null) || continue
        [ -n "$rss" ] && echo "$(basename "$f" .pid) $rss"
    done
    return 0
}

cmd_down() {
    local f pid
    for f in "$CEPH_DIR"/run/osd.*.pid "$CEPH_DIR"/run/mgr.*.pid "$CEPH_DIR"/run/mon.*.pid; do
        [ -e "$f" ] || continue
        pid=$(cat "$f")
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid"
            for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
            kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
            echo "stopped $(basename "$f" .pid) (pid $pid)"
        fi
        rm -f "$f"
    done
}

case "${1:-up}" in
    install) cmd_install ;;
    up)      cmd_up ;;
    status)  C -s ;;
    env)     echo "export CEPH_CONF=$CONF" ;;
    start)   cmd_start ;;
    rss)     cmd_rss ;;
    down)    cmd_down ;;
    start-osd) cmd_start_osd "${2:?osd id}" ;;
    purge)   cmd_down; rm -rf "$CEPH_DIR" ;;
    *) echo "usage: $0 install|up|status|env|start|start-osd ID|rss|down|purge" >&2; exit 2 ;;
esac
