#!/usr/bin/env bash
# The image storm: N emulated machines boot all the way to their boot images, and the
# images come either from ironboot itself or from nginx. Each machine, with
# `ironboot storm pxe --stop-after image` from a load namespace over a veth pair: DISCOVER,
# proxy OFFER, 4011 REQUEST, ACK, TFTP of the boot file, `boot.ipxe`, then the kernel and
# the initrd the script names, in order, on one kept-alive HTTP/1.1 connection. Run on
# demand, as root; not part of CI. See BENCHMARKS.md ("Image storm").
#
# Cases (CASES):
#   ironboot  ironboot (release build, standalone) does the PXE part and serves the images:
#             `--use-local-boot-assets --boot-assets-path <dir>`, an inventory giving every
#             machine `kernel = "/assets/vmlinuz"`, `initrd = ["/assets/initramfs.xz"]`
#             (its zero-copy image path, sendfile), HTTP connection caps raised
#   nginx     the same ironboot for the PXE part, but the inventory's kernel and initrd are
#             absolute URLs of Debian's nginx-light (one process, sendfile on, access log
#             off) on another port in the same server namespace, serving the same files
#
# Files: a KERNEL_MIB (16) MiB "kernel" and an INITRD_MIB (64) MiB "initramfs" of random
# bytes, made in the temp dir and read once so both servers send them from the page cache.
#
# The link (SHAPES): each value other than `none` is a tbf rate on the server veth's
# egress (the data direction), default RATE=5gbit. Why 5 Gbit/s: the point of the case is a
# storm whose wire time dominates, 1,000 x 80 MiB = 84 GB is 134 s at 5 Gbit/s against a
# PXE part of about a second, and on the 2-core machine this was written on a veth pair
# with the load generator receiving (and hashing) every byte cannot move much more than
# that: at a higher rate the run measures the machine's CPU, not the servers. `none` (the
# veth as it is) is that CPU-bound case.
#
#   benches/storm_image_compare.sh                          # 1000 machines, 5gbit and unshaped
#   MACHINES=20 KERNEL_MIB=1 INITRD_MIB=4 SHAPES=none REPEATS=1 benches/storm_image_compare.sh
#
# Knobs (environment): CASES, MACHINES, SHAPES, RATE, TBF_BURST, REPEATS, KERNEL_MIB,
# INITRD_MIB, VERIFY (1: the storm checks every body against the files, SHA-256, as
# `--verify-image`; 0: bytes counted only), FIRMWARE (uefi, bios, mixed), TIMEOUT_SCALE
# (of the firmware timeouts; 1 = real firmware, HTTP 15 s without progress), SOURCES
# (machine source addresses, default one per machine), THREADS (storm worker threads),
# IRONBOOT_DRIVER (io-uring, portable), IRONBOOT_ARGS (more ironboot flags), BIN (an
# ironboot binary to use instead of building the release one), OUT (results, kept).
#
# Per run it records the storm's JSON report (image bytes, image stage time and goodput,
# failures by stage and reason), ironboot's and nginx's CPU seconds (utime + stime),
# ironboot's peak RSS (VmHWM after a clear_refs reset), the whole machine's busy CPU
# seconds, the bytes the server veth sent and those its tbf charged (GSO packets counted as
# the frames they become) with its drops; from those the wire-time bound of a shaped run
# (tbf bytes x 8 / rate) and ironboot's bound, max(its wire time, nginx's image stage time
# on the same link), and ironboot's /metrics after the run (OUT/<run>.metrics). Then a
# Markdown table (OUT/results.md) and the commands
# (OUT/commands.md).
set -euo pipefail

CASES=${CASES:-"ironboot nginx"}
MACHINES=${MACHINES:-1000}
RATE=${RATE:-5gbit}
SHAPES=${SHAPES:-"$RATE none"}
# Large enough for veth's 64 KiB GSO packets, which tbf would otherwise cut into segments.
TBF_BURST=${TBF_BURST:-4mbit}
REPEATS=${REPEATS:-1}
KERNEL_MIB=${KERNEL_MIB:-16}
INITRD_MIB=${INITRD_MIB:-64}
VERIFY=${VERIFY:-1}
FIRMWARE=${FIRMWARE:-mixed}
TIMEOUT_SCALE=${TIMEOUT_SCALE:-1}
SOURCES=${SOURCES:-$MACHINES}
THREADS=${THREADS:-1}
IRONBOOT_DRIVER=${IRONBOOT_DRIVER:-io-uring}
read -ra EXTRA_ARGS <<<"${IRONBOOT_ARGS:-}"
BENCH=storm_image_compare
# shellcheck source=benches/lib.sh
. "$(dirname "$0")/lib.sh"
OUT=${OUT:-$REPO/target/storm_image_compare/$(date +%Y%m%d-%H%M%S)}

SRV_IP=10.97.0.1
LOAD_IP=10.97.0.2
NGINX_PORT=8080

bench_require_root
for f in /usr/lib/ipxe/snponly.efi /usr/lib/ipxe/undionly.kpxe; do
    [ -r "$f" ] || bench_die "$f missing: apt-get install ipxe"
done
command -v curl >/dev/null || bench_die "curl missing: apt-get install curl"
if [[ " $CASES " == *" nginx "* ]] && ! command -v nginx >/dev/null; then
    # Debian starts an installed nginx as a service on port 80: forbid that for the
    # install (policy-rc.d), and remove the policy again only if it is ours.
    echo "== installing nginx-light (no service started)" >&2
    policy=/usr/sbin/policy-rc.d
    ours=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && ours=1
    fi
    { apt-get install -y nginx-light >/dev/null 2>&1 ||
        { apt-get update >/dev/null && apt-get install -y nginx-light >/dev/null; }; } || true
    [ -n "$ours" ] && rm -f "$policy"
    command -v nginx >/dev/null || bench_die "apt-get install nginx-light failed"
fi

build_ironboot
# One source address per machine, as in a rack (servers may cap connections per address).
bench_setup "$SRV_IP" "$LOAD_IP" 10.97 "$SOURCES"
stage_pxe_files
# 1,000 kept-alive connections, plus the descriptors of everything else.
ulimit -n "$(ulimit -Hn)"

# --- the images ----------------------------------------------------------------------------
ASSETS=$WORK/www/assets
mkdir -p "$ASSETS"
head -c $((KERNEL_MIB << 20)) /dev/urandom >"$ASSETS/vmlinuz"
head -c $((INITRD_MIB << 20)) /dev/urandom >"$ASSETS/initramfs.xz"
chmod -R a+rX "$WORK/www"
cat "$ASSETS/vmlinuz" "$ASSETS/initramfs.xz" >/dev/null # into the page cache
VERIFY_ARGS=()
if [ "$VERIFY" = 1 ]; then
    VERIFY_ARGS=(--verify-image "$ASSETS/vmlinuz" --verify-image "$ASSETS/initramfs.xz")
fi

# The inventory of a case: every machine boots the two files, from ironboot's /assets/ or
# from nginx.
write_inventory() {
    local base=""
    [ "$1" = nginx ] && base=http://$SRV_IP:$NGINX_PORT
    cat >"$WORK/inventory.toml" <<EOF
[default]
kernel = "$base/assets/vmlinuz"
initrd = ["$base/assets/initramfs.xz"]
cmdline = "console=ttyS0"
EOF
}

cat >"$WORK/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 65536;
pid $WORK/nginx.pid;
error_log $WORK/nginx.err warn;

events { worker_connections 16384; }
http {
    sendfile on;
    tcp_nopush on;
    access_log off;
    keepalive_requests 100000;
    default_type application/octet-stream;
    client_body_temp_path $WORK/nginx-tmp;
    server {
        listen $SRV_IP:$NGINX_PORT backlog=4096;
        root $WORK/www;
    }
}
EOF

start_nginx() {
    ip netns exec "$NS_SRV" nginx -e "$WORK/nginx.err" -c "$WORK/nginx.conf" >>"$OUT/nginx.log" 2>&1 &
    SERVER2_PID=$!
    for _ in $(seq 100); do
        if in_load curl -sf -o /dev/null -r 0-0 "http://$SRV_IP:$NGINX_PORT/assets/vmlinuz"; then
            return
        fi
        kill -0 "$SERVER2_PID" 2>/dev/null || break
        sleep 0.1
    done
    bench_die "nginx did not answer; see $OUT/nginx.log and $WORK/nginx.err"
}

# shape none|RATE: the server's veth egress as it is, or through a token bucket at RATE
# (queue bounded at 50 ms).
shape_link() {
    in_srv tc qdisc del dev "$VETH_SRV" root 2>/dev/null || true
    if [ "$1" != none ]; then
        in_srv tc qdisc add dev "$VETH_SRV" root tbf rate "$1" burst "$TBF_BURST" latency 50ms
    fi
}

# ironboot for every case: the PXE part always, the images in case `ironboot`.
IRONBOOT_ARGS=(--use-local-boot-assets --boot-assets-path "$ASSETS"
    --http-max-connections $((MACHINES * 2 + 1024))
    --http-max-connections-per-source $((MACHINES + 64)) "${EXTRA_ARGS[@]}")

cpu_of() { if [ -n "$1" ]; then cpu_ticks "$1"; else echo 0; fi; }
# Bytes and drops of the tbf on the server veth ("0 0" unshaped). Its bytes count each
# GSO packet as the frames it becomes (headers per segment), as tbf charges them, where
# the veth's tx_bytes count one set of headers per GSO packet: the wire time is from these.
qdisc_stats() {
    local s
    s=$(in_srv tc -s qdisc show dev "$VETH_SRV" | awk '/Sent/ {gsub(/[(,]/, " "); print $2, $7; exit}')
    echo "${s:-0 0}"
}

RESULTS=$OUT/results.jsonl
COMMANDS=$OUT/commands.md
: >"$RESULTS"
{
    echo '```sh'
    echo "# $(uname -r), $(nproc) CPUs; $BENCH with MACHINES=$MACHINES SHAPES='$SHAPES' TBF_BURST=$TBF_BURST"
    echo "# REPEATS=$REPEATS KERNEL_MIB=$KERNEL_MIB INITRD_MIB=$INITRD_MIB VERIFY=$VERIFY FIRMWARE=$FIRMWARE"
    echo "# TIMEOUT_SCALE=$TIMEOUT_SCALE SOURCES=$SOURCES THREADS=$THREADS IRONBOOT_DRIVER=$IRONBOOT_DRIVER"
} >"$COMMANDS"
first=1
for shaping in $SHAPES; do
    for repeat in $(seq 1 "$REPEATS"); do
        for case in $CASES; do
            run=$case-$shaping-$repeat
            echo "== $run" >&2
            write_inventory "$case"
            [ "$case" = nginx ] && start_nginx
            start_pxe_server "ironboot-$IRONBOOT_DRIVER"
            shape_link "$shaping"
            storm=("$BIN" storm pxe --server "$SRV_IP" --interface "$VETH_LOAD"
                --machines "$MACHINES" --concurrency "$MACHINES" --firmware "$FIRMWARE"
                --timeout-scale "$TIMEOUT_SCALE" --stop-after image "${VERIFY_ARGS[@]}"
                --bind "$BINDS" --first "$first" --threads "$THREADS" --quiet --json)
            if [ "$repeat" = 1 ]; then
                {
                    echo "# $run: server namespace"
                    [ "$case" = nginx ] && echo "nginx -e nginx.err -c nginx.conf   # $WORK/nginx.conf, as in the script"
                    printf '%q ' "$BIN" --dhcp-proxy-iface-or-ip "$VETH_SRV" --api-advertise-address "$SRV_IP" \
                        --state-dir "$WORK/state" --inventory "$WORK/inventory.toml" --ipxe-dir "$WORK/ipxe" \
                        --udp-driver "$IRONBOOT_DRIVER" "${IRONBOOT_ARGS[@]}"
                    echo
                    [ "$shaping" != none ] &&
                        echo "tc qdisc add dev $VETH_SRV root tbf rate $shaping burst $TBF_BURST latency 50ms"
                    echo "# $run: load namespace (--bind: $SOURCES addresses 10.97.1.1, 10.97.1.2, ...)"
                    printf '%q ' "${storm[@]}" | sed 's/--bind [^ ]* /--bind 10.97.1.1,...,10.97.x.y /'
                    echo
                    echo "# $run: inventory"
                    cat "$WORK/inventory.toml"
                } >>"$COMMANDS"
            fi
            echo 5 >"/proc/$SERVER_PID/clear_refs" # reset VmHWM
            ib0=$(cpu_of "$SERVER_PID")
            ng0=$(cpu_of "$SERVER2_PID")
            busy0=$(machine_ticks)
            tx0=$(tx_bytes)
            read -r qb0 qd0 < <(qdisc_stats)
            # Fresh machines every run (new MACs and UUIDs).
            in_load "${storm[@]}" >"$OUT/$run.json" 2>"$OUT/$run.log" || true
            first=$((first + MACHINES))
            ib1=$(cpu_of "$SERVER_PID")
            ng1=$(cpu_of "$SERVER2_PID")
            busy1=$(machine_ticks)
            tx1=$(tx_bytes)
            read -r qb1 qd1 < <(qdisc_stats)
            hwm=$(hwm_kib "$SERVER_PID")
            # ironboot's own account of the run: connections dropped (write timeouts,
            # caps), image responses cut short, bytes sent.
            in_load curl -s --max-time 10 "http://$SRV_IP:50042/metrics" >"$OUT/$run.metrics" || true
            python3 - "$OUT/$run.json" "$case" "$shaping" "$repeat" "$TCK" "$((ib1 - ib0))" \
                "$((ng1 - ng0))" "$hwm" "$((tx1 - tx0))" "$((busy1 - busy0))" "$((qb1 - qb0))" \
                "$((qd1 - qd0))" >>"$RESULTS" <<'EOF'
import json, sys
path, case, shaping, repeat, tck, ib, ng, hwm, tx, busy, qbytes, qdrops = sys.argv[1:]
tck = int(tck)
try:
    r = json.load(open(path))
except Exception as e:  # the storm could not run: record that, go on
    r = {"error": str(e)}
r.pop("completion_curve", None)
r.update(case=case, shaping=shaping, repeat=int(repeat), ironboot_cpu_secs=int(ib) / tck,
         nginx_cpu_secs=int(ng) / tck, ironboot_hwm_kib=int(hwm), server_tx_bytes=int(tx),
         machine_cpu_secs=int(busy) / tck, tbf_bytes=int(qbytes), tbf_drops=int(qdrops))
print(json.dumps(r))
EOF
            tail -n1 "$RESULTS" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
print("   %-8s %-6s #%d %5s booted %4s failed; image %6.2f GB in %7.2f s (%7.1f MB/s); cpu ironboot %.1f s nginx %.1f s storm %.1f s; tx %.2f GB" % (
    r["case"], r["shaping"], r["repeat"], r.get("booted"), r.get("failed"), r.get("image_bytes", 0) / 1e9,
    r.get("image_secs", 0), r.get("image_mb_s", 0), r["ironboot_cpu_secs"], r["nginx_cpu_secs"],
    r.get("generator_cpu_secs", 0), r["server_tx_bytes"] / 1e9))' >&2
            shape_link none
            stop_server
            # The server's log is per run (start_pxe_server writes one per server name).
            mv "$OUT/ironboot-$IRONBOOT_DRIVER.log" "$OUT/$run.ironboot.log"
        done
    done
done
echo '```' >>"$COMMANDS"

python3 "$REPO/benches/storm_image_report.py" "$RESULTS" >"$OUT/results.md"
cat "$OUT/results.md" "$COMMANDS"
echo "results: $OUT" >&2
