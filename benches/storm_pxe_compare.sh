#!/usr/bin/env bash
# Whole PXE boots under a storm, one server after another, each booting the same emulated
# machines with `ironboot storm pxe` from another network namespace over a veth pair:
# DISCOVER broadcast, proxy OFFER, 4011 REQUEST, ACK, TFTP of the boot file and the HTTP
# boot script. Run on demand, as root; not part of CI. See BENCHMARKS.md ("PXE storm").
#
# Servers (SERVERS):
#   ironboot-io-uring, ironboot-portable   ironboot with either UDP driver
#   dnsmasq             proxy-DHCP + TFTP, logging off, tftp-max raised (no HTTP stage)
#   dnsmasq+tftpd-hpa   dnsmasq's proxy-DHCP with tftpd-hpa serving the files (no HTTP)
#   go-provider         tests/pxe-peer: the Go provider's DHCP and TFTP libraries configured
#                       as the provider configures them, plus a static boot.ipxe
#
#   benches/storm_pxe_compare.sh                              # 1000 machines, all at once
#   MACHINES=200 LOADS="concurrency=200 rate=100" SHAPES=none REPEATS=1 benches/storm_pxe_compare.sh
#
# Knobs (environment): SERVERS, MACHINES, LOADS (space-separated `concurrency=N` or
# `rate=N`), SHAPES (none 1gbit: the server's egress through tbf at 1 Gbit/s), REPEATS
# (runs of each case), FIRMWARE (uefi, bios, mixed), TIMEOUT_SCALE (of the firmware
# timeouts), SOURCES (machine source addresses), THREADS (storm worker threads),
# IRONBOOT_ARGS (more ironboot flags), BIN (an ironboot binary to use instead of building the
# release one: an older build, to compare in the same run), OUT (results, kept).
#
# Per run it records the storm's JSON report plus, for the server: CPU seconds, peak RSS
# (VmHWM after a reset through clear_refs; for tftpd-hpa the sampled peak of its process
# tree), the server namespace's UDP receive-buffer drops (RcvbufErrors: requests the
# kernel dropped before the server read them) and the bytes its veth sent, from which the
# wire-time bound (bytes / link rate) of the shaped runs follows. Then tables and a chart
# of completion over time (results.md, completion-*.svg).
set -euo pipefail

SERVERS=${SERVERS:-"ironboot-io-uring ironboot-portable dnsmasq dnsmasq+tftpd-hpa go-provider"}
MACHINES=${MACHINES:-1000}
LOADS=${LOADS:-"concurrency=$MACHINES"}
SHAPES=${SHAPES:-"none 1gbit"}
REPEATS=${REPEATS:-3}
FIRMWARE=${FIRMWARE:-mixed}
TIMEOUT_SCALE=${TIMEOUT_SCALE:-0.25}
SOURCES=${SOURCES:-250}
THREADS=${THREADS:-1}
TBF_BURST=${TBF_BURST:-256kbit}
read -ra IRONBOOT_ARGS <<<"${IRONBOOT_ARGS:-}"
BENCH=storm_pxe_compare
# shellcheck source=benches/lib.sh
. "$(dirname "$0")/lib.sh"
OUT=${OUT:-$REPO/target/storm_pxe_compare/$(date +%Y%m%d-%H%M%S)}

bench_require_root
for f in /usr/lib/ipxe/snponly.efi /usr/lib/ipxe/undionly.kpxe; do
    [ -r "$f" ] || bench_die "$f missing: apt-get install ipxe"
done
command -v dnsmasq >/dev/null || bench_die "apt-get install dnsmasq-base"

SRV_IP=10.98.0.1
LOAD_IP=10.98.0.2

build_ironboot
# Machines use these addresses in turn once "configured", as a rack's machines each have
# their own (ironboot caps TFTP transfers per client address at 8).
bench_setup "$SRV_IP" "$LOAD_IP" 10.98 "$SOURCES"
if [[ " $SERVERS " == *"tftpd-hpa "* ]]; then fetch_tftpd_hpa; fi
if [[ " $SERVERS " == *" go-provider "* ]]; then build_go_peer; fi

stage_pxe_files
# shellcheck disable=SC2016 # ${uuid} is iPXE's, not the shell's
printf '[default]\nscript = """#!ipxe\necho storm ${uuid}\n"""\n' >"$WORK/inventory.toml"

# --- servers (start_pxe_server is in lib.sh) --------------------------------------------
# The HTTP stage: not for dnsmasq (no HTTP API).
http_args() {
    HTTP_ARGS=()
    case $1 in dnsmasq*) HTTP_ARGS=(--no-http) ;; esac
}
server_cpu_ticks() {
    local pid sum=0
    for pid in $SERVER_PID $SERVER2_PID; do sum=$((sum + $(cpu_ticks "$pid"))); done
    echo "$sum"
}

RESULTS=$OUT/results.jsonl
: >"$RESULTS"
first=1
for server in $SERVERS; do
    echo "== $server" >&2
    http_args "$server"
    start_pxe_server "$server" "${HTTP_ARGS[@]}"
    for shaping in $SHAPES; do
        shape "$shaping"
        for load in $LOADS; do
            for repeat in $(seq 1 "$REPEATS"); do
                run=$server-$shaping-${load/=/-}-$repeat
                echo 5 >"/proc/$SERVER_PID/clear_refs" # reset VmHWM
                start_sampler "$WORK/rss"
                cpu0=$(server_cpu_ticks)
                busy0=$(machine_ticks)
                drops0=$(rcvbuf_errors)
                tx0=$(tx_bytes)
                # Fresh machines every run (new MACs and UUIDs), so no server has seen them.
                in_load "$BIN" storm pxe --server "$SRV_IP" --interface "$VETH_LOAD" \
                    --machines "$MACHINES" "--${load%%=*}" "${load#*=}" --firmware "$FIRMWARE" \
                    --timeout-scale "$TIMEOUT_SCALE" --bind "$BINDS" --first "$first" \
                    --threads "$THREADS" "${HTTP_ARGS[@]}" --json \
                    >"$OUT/$run.json" 2>"$OUT/$run.log" || true
                first=$((first + MACHINES))
                stop_sampler
                cpu1=$(server_cpu_ticks)
                busy1=$(machine_ticks)
                drops1=$(rcvbuf_errors)
                tx1=$(tx_bytes)
                hwm=$(hwm_kib "$SERVER_PID")
                python3 - "$OUT/$run.json" "$server" "$shaping" "$load" "$repeat" \
                    "$((cpu1 - cpu0))" "$TCK" "$hwm" "$(cat "$WORK/rss")" "$((drops1 - drops0))" \
                    "$((tx1 - tx0))" "$((busy1 - busy0))" >>"$RESULTS" <<'EOF'
import json, sys
path, server, shaping, load, repeat, ticks, tck, hwm, tree, drops, tx, busy = sys.argv[1:]
try:
    r = json.load(open(path))
except Exception as e:  # the storm could not run: record that, go on
    r = {"error": str(e)}
r.update(server_name=server, shaping=shaping, load_arg=load, repeat=int(repeat),
         server_cpu_secs=int(ticks) / int(tck), server_hwm_kib=int(hwm),
         server_tree_rss_kib=int(tree), server_rcvbuf_drops=int(drops),
         server_tx_bytes=int(tx), machine_cpu_secs=int(busy) / int(tck))
print(json.dumps(r))
EOF
                tail -n1 "$RESULTS" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
print("   %-18s %-5s %-16s #%d %5s booted %4s failed in %6.2f s  boot p99 %8.1f ms  server cpu %.2f s" % (
    r["server_name"], r["shaping"], r["load_arg"], r["repeat"], r.get("booted"), r.get("failed"),
    r.get("wall_secs", 0), r.get("boot_latency", {}).get("p99_ms", 0), r["server_cpu_secs"]))' >&2
            done
        done
    done
    shape none
    stop_server
done

# --- tables and chart --------------------------------------------------------------------
python3 "$REPO/benches/storm_pxe_report.py" "$RESULTS" "$OUT" >"$OUT/results.md"
cat "$OUT/results.md"
echo "results: $OUT" >&2
