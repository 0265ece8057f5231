#!/bin/busybox sh
# /init of the test guest (tests/kernel/guest.py). Runs one scenario against the vsand
# export named on the kernel command line, through nbd.ko, and prints exactly one
# "VSAND-GUEST: PASS" or "VSAND-GUEST: FAIL <step> <detail>" line, then powers off.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t debugfs debugfs /sys/kernel/debug
mount -t tmpfs tmp /tmp
ln -s /proc/mounts /etc/mtab

STEP=boot
say() { echo "vsand-guest: $*"; }
step() { STEP=$1; say "step $1 at $(cut -d" " -f1 /proc/uptime)s"; }
finish() { sync; echo "VSAND-GUEST: $*"; poweroff -f; sleep 10; }
fail() { [ -f /tmp/log ] && tail -n 25 /tmp/log; finish "FAIL $STEP $*"; }
# Runs a command with its output in /tmp/log (shown only on failure).
run() { "$@" >/tmp/log 2>&1 || fail "$1 exited $?"; }

for arg in $(cat /proc/cmdline); do
    case $arg in
        vsand.export=*) EXPORT=${arg#vsand.export=} ;;
        vsand.scenario=*) SCENARIO=${arg#vsand.scenario=} ;;
        vsand.socat_delay=*) SOCAT_DELAY=${arg#vsand.socat_delay=} ;;
    esac
done

step modules
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci \
         virtio_console nbd crc16 mbcache jbd2 crc32c_generic ext4; do
    insmod /lib/modules/$m.ko || fail "insmod $m"
done
ip link set lo up || fail "lo up"

step port
PORT=
for i in $(seq 50); do
    for p in /sys/class/virtio-ports/*; do
        [ "$(cat $p/name 2>/dev/null)" = org.nbd.0 ] && PORT=$(basename $p)
    done
    [ -n "$PORT" ] && [ -c /dev/$PORT ] && break
    usleep 100000
done
[ -n "$PORT" ] || fail "no virtio port org.nbd.0"
DBG=/sys/kernel/debug/virtio-ports/$PORT
# nodelay: without it every reply waits ~40 ms for Nagle and delayed ACK.
# vsand.socat_delay=N (seconds) starts socat late, so the host can prove that
# wait_listener below waits for the listener rather than racing it.
(sleep ${SOCAT_DELAY:-0}; exec socat TCP-LISTEN:10809,bind=127.0.0.1,reuseaddr,nodelay,fork \
    OPEN:/dev/$PORT) &

# socat runs in the background: nbd-client must not connect before it listens
# (on a busy host it did, 0.1 s after socat was started: "Connection refused").
# /proc/net/tcp lists 127.0.0.1:10809 as 0100007F:2A39, state 0A is LISTEN.
wait_listener() {
    for i in $(seq 300); do
        awk '$2 == "0100007F:2A39" && $4 == "0A" { found = 1 } END { exit !found }' \
            /proc/net/tcp && return 0
        usleep 100000
    done
    return 1
}

# QEMU's socket chardev reconnects 1 s after the daemon closes it; an nbd-client started
# before that would talk to nothing.
wait_host() {
    for i in $(seq 100); do
        grep -q "host_connected: $1" $DBG && return 0
        usleep 100000
    done
    return 1
}

connect() {
    step connect
    wait_host 1 || fail "host side never connected"
    wait_listener || fail "socat never listened on 127.0.0.1:10809"
    run nbd-client 127.0.0.1 10809 /dev/nbd0 -N "$EXPORT" -b 4096 -t 30
    [ "$(blockdev --getsize64 /dev/nbd0)" -gt 0 ] || fail "/dev/nbd0 has no size"
}

disconnect() {
    step disconnect
    run nbd-client -d /dev/nbd0
    wait_host 0      # the daemon closes after NBD_CMD_DISC; may already be back
}

# The filesystem uses the first 256 MiB; raw fio the next 32 MiB, so a later session
# (e.g. on a snapshot of this LUN) still finds the files.
FS_BLOCKS=65536

write_files() {
    step write-files
    i=1
    while [ $i -le 8 ]; do
        run dd if=/dev/urandom of=/mnt/data$i bs=64k count=$((i * 3))
        i=$((i + 1))
    done
    mkdir -p /mnt/tree/a/b || fail mkdir
    for n in $(seq 40); do echo "small file $n $EXPORT" > /mnt/tree/a/b/s$n; done
    (cd /mnt && find . -type f ! -name SHA256SUMS | sort | xargs sha256sum > /tmp/sums) \
        || fail "sha256sum"
    cp /tmp/sums /mnt/SHA256SUMS || fail "cp sums"
}

check_files() {
    step check-files
    (cd /mnt && sha256sum -c -s SHA256SUMS) || fail "checksums differ"
    [ -z "$1" ] || cmp -s /tmp/sums /mnt/SHA256SUMS || fail "checksum list changed"
}

fio_verify() {  # name, extra args...
    name=$1; shift
    run fio --name="$name" --rw=randwrite --verify=crc32c --verify_fatal=1 \
        --verify_state_save=0 --direct=1 --end_fsync=1 "$@"
}

case $SCENARIO in
full)
    connect
    step mkfs
    run mkfs.ext4 -q -F /dev/nbd0 $FS_BLOCKS
    step mount
    run mount -t ext4 /dev/nbd0 /mnt
    write_files
    step fio-ext4
    fio_verify fs --directory=/mnt --size=8M --bs=4k --ioengine=psync --fsync=64
    grep -E "^ +(write|sync).*(IOPS|avg=)" /tmp/log   # IOPS and fsync latency, for the record
    step fstrim
    rm -f /mnt/fs.*
    run fstrim -v /mnt
    step umount
    run umount /mnt
    disconnect

    connect
    step remount
    run mount -t ext4 /dev/nbd0 /mnt
    check_files strict
    run umount /mnt
    step fsck
    run e2fsck -fn /dev/nbd0
    step fio-raw
    fio_verify raw --filename=/dev/nbd0 --offset=256M --size=32M --bsrange=4k-64k \
        --ioengine=libaio --iodepth=16
    grep -E "^ +write.*IOPS|^ +clat .*avg=" /tmp/log
    disconnect
    ;;
verify)
    connect
    step mount
    run mount -t ext4 /dev/nbd0 /mnt
    check_files
    step write-after-mount
    run dd if=/dev/urandom of=/mnt/written-in-session bs=64k count=16
    run umount /mnt
    step fsck
    run e2fsck -fn /dev/nbd0
    disconnect
    ;;
*)
    fail "unknown scenario '$SCENARIO'"
    ;;
esac
finish PASS
