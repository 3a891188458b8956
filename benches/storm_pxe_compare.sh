#!/usr/bin/env bash
# Whole PXE boots under a storm: ironboot (io_uring and portable drivers) and dnsmasq
# (proxy-DHCP + TFTP, logging off, tftp-max raised), one after another, each booting the
# same emulated machines with `ironboot storm pxe` from another network namespace over a
# veth pair: DISCOVER broadcast, proxy OFFER, 4011 REQUEST, ACK, TFTP of the boot file,
# and (ironboot only: dnsmasq has no HTTP API) the HTTP boot script. Run on demand, as
# root; not part of CI. See BENCHMARKS.md ("PXE storm (full boot)").
#
#   benches/storm_pxe_compare.sh                              # 1000 machines, all at once
#   MACHINES=200 LOADS="concurrency=200 rate=100" benches/storm_pxe_compare.sh
#
# Knobs (environment): SERVERS, MACHINES, LOADS (space-separated `concurrency=N` or
# `rate=N`), FIRMWARE (uefi, bios, mixed), TIMEOUT_SCALE (of the firmware timeouts),
# SOURCES (machine source addresses), THREADS (storm worker threads), OUT (results, kept).
#
# Per run it records the storm's JSON report plus, for the server: CPU seconds
# (utime+stime from /proc/PID/stat), peak RSS (VmHWM after a reset through clear_refs),
# and the server namespace's UDP receive-buffer drops (RcvbufErrors of /proc/net/snmp:
# requests the kernel dropped before the server read them; firmware retransmits them).
set -euo pipefail

SERVERS=${SERVERS:-"ironboot-io-uring ironboot-portable dnsmasq"}
MACHINES=${MACHINES:-1000}
LOADS=${LOADS:-"concurrency=$MACHINES"}
FIRMWARE=${FIRMWARE:-mixed}
TIMEOUT_SCALE=${TIMEOUT_SCALE:-0.25}
SOURCES=${SOURCES:-250}
THREADS=${THREADS:-1}
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$REPO/target/storm_pxe_compare/$(date +%Y%m%d-%H%M%S)}

[ "$(id -u)" = 0 ] || { echo "storm_pxe_compare: run as root (namespaces, ports 67/68/69)" >&2; exit 1; }
for f in /usr/lib/ipxe/snponly.efi /usr/lib/ipxe/undionly.kpxe; do
    [ -r "$f" ] || { echo "storm_pxe_compare: $f missing: apt-get install ipxe" >&2; exit 1; }
done
command -v dnsmasq >/dev/null || { echo "storm_pxe_compare: apt-get install dnsmasq-base" >&2; exit 1; }

SRV_IP=10.98.0.1
LOAD_IP=10.98.0.2
ID=spc$$                       # unique per run: namespaces and links
NS_SRV=$ID-srv
NS_LOAD=$ID-load
VETH_SRV=${ID}s
VETH_LOAD=${ID}l
WORK=$(mktemp -d /tmp/storm_pxe_compare.XXXXXX)
SERVER_PID=""

cleanup() {
    set +e
    stop_server
    ip netns del "$NS_SRV" 2>/dev/null
    ip netns del "$NS_LOAD" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

stop_server() {
    if [ -n "$SERVER_PID" ]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
    fi
}

in_srv() { ip netns exec "$NS_SRV" "$@"; }
in_load() { ip netns exec "$NS_LOAD" "$@"; }

echo "== building ironboot (release)" >&2
(cd "$REPO" && cargo build --release --bin ironboot >&2)
BIN=$REPO/target/release/ironboot

mkdir -p "$OUT" "$WORK/tftp" "$WORK/ipxe"
chmod 755 "$WORK" "$WORK/tftp" "$WORK/ipxe"
install -m 644 /usr/lib/ipxe/snponly.efi "$WORK/tftp/snp.efi"
install -m 644 /usr/lib/ipxe/undionly.kpxe "$WORK/tftp/undionly.kpxe"
install -m 644 /usr/lib/ipxe/snponly.efi /usr/lib/ipxe/undionly.kpxe "$WORK/ipxe/"
# shellcheck disable=SC2016 # ${uuid} is iPXE's, not the shell's
printf '[default]\nscript = """#!ipxe\necho storm ${uuid}\n"""\n' >"$WORK/inventory.toml"
cat >"$WORK/dnsmasq.conf" <<EOF
port=0
interface=$VETH_SRV
bind-interfaces
dhcp-range=$SRV_IP,proxy,255.255.0.0
pxe-service=X86-64_EFI,"storm",snp.efi
pxe-service=x86PC,"storm",undionly.kpxe
enable-tftp
tftp-root=$WORK/tftp
tftp-max=4000
quiet-tftp
EOF

# --- network -----------------------------------------------------------------------------
ip netns add "$NS_SRV"
ip netns add "$NS_LOAD"
ip link add "$VETH_SRV" type veth peer name "$VETH_LOAD"
ip link set "$VETH_SRV" netns "$NS_SRV"
ip link set "$VETH_LOAD" netns "$NS_LOAD"
in_srv ip addr add "$SRV_IP/16" dev "$VETH_SRV"
in_srv ip link set "$VETH_SRV" up
in_srv ip link set lo up
in_load ip addr add "$LOAD_IP/16" dev "$VETH_LOAD"
# Machines use these addresses in turn once "configured", as a rack's machines each have
# their own (ironboot caps TFTP transfers per client address at 8).
ADDRS=()
for i in $(seq 0 $((SOURCES - 1))); do ADDRS+=("10.98.$((1 + i / 250)).$((1 + i % 250))"); done
printf "addr add %s/16 dev $VETH_LOAD\n" "${ADDRS[@]}" | in_load ip -batch -
BINDS=$(IFS=,; echo "${ADDRS[*]}")
in_load ip link set "$VETH_LOAD" up
in_load ip link set lo up

# --- servers -----------------------------------------------------------------------------
start_server() {
    local name=$1
    http_args "$name"
    case $name in
    ironboot-io-uring | ironboot-portable)
        rm -rf "$WORK/state" && mkdir -p "$WORK/state"
        ip netns exec "$NS_SRV" "$BIN" --dhcp-proxy-iface-or-ip "$VETH_SRV" \
            --api-advertise-address "$SRV_IP" --state-dir "$WORK/state" \
            --inventory "$WORK/inventory.toml" --ipxe-dir "$WORK/ipxe" \
            --udp-driver "${name#ironboot-}" >"$OUT/$name.log" 2>&1 &
        ;;
    dnsmasq)
        ip netns exec "$NS_SRV" dnsmasq --keep-in-foreground --conf-file="$WORK/dnsmasq.conf" \
            --user=root --pid-file= --log-facility=/dev/null >"$OUT/$name.log" 2>&1 &
        ;;
    esac
    # `ip netns exec` execs the server: $! is the server's own PID (not a subshell's).
    SERVER_PID=$!
    # Ready when one machine boots.
    for _ in $(seq 1 50); do
        if in_load "$BIN" storm pxe --server "$SRV_IP" --interface "$VETH_LOAD" --machines 1 \
            --first 999999 --timeout-scale 0.05 --quiet "${HTTP_ARGS[@]}" >/dev/null 2>&1; then
            return 0
        fi
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.2
    done
    echo "storm_pxe_compare: $name did not start; see $OUT/$name.log" >&2
    return 1
}

# The HTTP stage: ironboot only (dnsmasq has no HTTP API).
http_args() {
    HTTP_ARGS=()
    if [ "$1" = dnsmasq ]; then HTTP_ARGS=(--no-http); fi
}
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
hwm_kib() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }
# shellcheck disable=SC2016 # awk's own $ fields
rcvbuf_errors() { in_srv awk '/^Udp:/ {n++; if (n == 1) for (i = 1; i <= NF; i++) col[$i] = i; else print $col["RcvbufErrors"]}' /proc/net/snmp; }

TCK=$(getconf CLK_TCK)
RESULTS=$OUT/results.jsonl
: >"$RESULTS"
first=1
for server in $SERVERS; do
    echo "== $server" >&2
    start_server "$server"
    for load in $LOADS; do
        run=$server-${load/=/-}
        echo 5 >"/proc/$SERVER_PID/clear_refs" # reset VmHWM
        cpu0=$(cpu_ticks "$SERVER_PID")
        drops0=$(rcvbuf_errors)
        # Fresh machines every run (new MACs and UUIDs), so no server has seen them.
        in_load "$BIN" storm pxe --server "$SRV_IP" --interface "$VETH_LOAD" \
            --machines "$MACHINES" "--${load%%=*}" "${load#*=}" --firmware "$FIRMWARE" \
            --timeout-scale "$TIMEOUT_SCALE" --bind "$BINDS" --first "$first" \
            --threads "$THREADS" "${HTTP_ARGS[@]}" --json \
            >"$OUT/$run.json" 2>"$OUT/$run.log" || true
        first=$((first + MACHINES))
        cpu1=$(cpu_ticks "$SERVER_PID")
        drops1=$(rcvbuf_errors)
        hwm=$(hwm_kib "$SERVER_PID")
        python3 - "$OUT/$run.json" "$server" "$load" "$((cpu1 - cpu0))" "$TCK" "$hwm" \
            "$((drops1 - drops0))" >>"$RESULTS" <<'EOF'
import json, sys
path, server, load, ticks, tck, hwm, drops = sys.argv[1:]
try:
    r = json.load(open(path))
except Exception as e:  # the storm could not run: record that, go on
    r = {"error": str(e)}
r.update(server_name=server, load_arg=load, server_cpu_secs=int(ticks) / int(tck),
         server_hwm_kib=int(hwm), server_rcvbuf_drops=int(drops))
print(json.dumps(r))
EOF
        tail -n1 "$RESULTS" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
print("   %-18s %-16s %5s booted %4s failed in %6.2f s  boot p99 %8.1f ms  server cpu %.2f s" % (
    r["server_name"], r["load_arg"], r.get("booted"), r.get("failed"), r.get("wall_secs", 0),
    r.get("boot_latency", {}).get("p99_ms", 0), r["server_cpu_secs"]))' >&2
    done
    stop_server
done

# --- tables ------------------------------------------------------------------------------
python3 - "$RESULTS" >"$OUT/results.md" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("| server | load | machines | booted | failed | wall s | boots/s | TFTP MB/s | boot p50 ms | boot p99 ms | DISCOVER / REQUEST retransmits | server CPU s | server CPU s per 1000 boots | server peak RSS MiB | server rcvbuf drops | storm CPU s |")
print("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
for r in rows:
    if "error" in r:
        print(f"| {r['server_name']} | {r['load_arg']} | - | storm failed: {r['error']} |||||||||||||")
        continue
    failed = r["failed"]
    if failed:
        parts = [f"{s} {k} {v}" for s, st in r["stages"].items() for k, v in st["failures"].items()]
        failed = f"{failed} ({', '.join(parts)})"
    per_k = r["server_cpu_secs"] / r["booted"] * 1000 if r["booted"] else float("nan")
    print(f"| {r['server_name']} | {r['load']} | {r['machines']} | {r['booted']} | {failed} "
          f"| {r['wall_secs']:.2f} | {r['boots_per_sec']:.0f} | {r['tftp_mb_s']:.1f} "
          f"| {r['boot_latency']['p50_ms']:.1f} | {r['boot_latency']['p99_ms']:.1f} "
          f"| {r['discover_retransmissions']} / {r['request_retransmissions']} "
          f"| {r['server_cpu_secs']:.2f} | {per_k:.2f} | {r['server_hwm_kib'] / 1024:.1f} "
          f"| {r['server_rcvbuf_drops']} | {r['generator_cpu_secs']:.2f} |")
print()
print("Per-stage latency (ms, p50 / p99 / max):")
print()
print("| server | load | discover | request | tftp | http |")
print("|---|---|---|---|---|---|")
for r in rows:
    if "error" in r:
        continue
    cell = lambda s: (f"{r['stages'][s]['latency']['p50_ms']:.1f} / {r['stages'][s]['latency']['p99_ms']:.1f} / {r['stages'][s]['latency']['max_ms']:.1f}"
                      if s in r["stages"] else "-")
    print(f"| {r['server_name']} | {r['load']} | {cell('discover')} | {cell('request')} | {cell('tftp')} | {cell('http')} |")
EOF
cat "$OUT/results.md"
echo "results: $OUT" >&2
