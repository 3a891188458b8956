#!/usr/bin/env bash
# TFTP servers under a PXE storm: ironboot (io_uring and portable drivers), dnsmasq and
# tftpd-hpa, one after another, each serving Debian's snponly.efi as snp.efi, loaded by
# `ironboot storm tftp` from another network namespace over a veth pair. Run on demand,
# as root; not part of CI. See BENCHMARKS.md ("TFTP") for what it measures and results.
#
#   benches/tftp_compare.sh                     # everything (~15 min on 2 cores)
#   SERVERS="ironboot-io-uring dnsmasq" CLIENTS="500" SHAPES=none benches/tftp_compare.sh
#
# Knobs (environment): SERVERS, PROFILES (edk2 ipxe), CLIENTS (1 50 500), SHAPES (none
# 1gbit), TBF_BURST (tbf burst for the 1 Gbit/s shaping), SOURCES (client source
# addresses), THREADS (storm worker threads), IRONBOOT_ARGS (more ironboot flags, e.g.
# "--udp-workers 2"), OUT (results directory, kept).
#
# Per run it records the storm's JSON report plus, for the server process: CPU seconds
# (utime+stime+cutime+cstime from /proc/PID/stat, so tftpd-hpa's forked children count)
# and peak RSS (VmHWM after resetting it through /proc/PID/clear_refs, and the peak of
# the process tree's summed VmRSS sampled every 0.2 s, for tftpd-hpa's children).
set -euo pipefail

SERVERS=${SERVERS:-"ironboot-io-uring ironboot-portable dnsmasq tftpd-hpa"}
PROFILES=${PROFILES:-"edk2 ipxe"}
CLIENTS=${CLIENTS:-"1 50 500"}
SHAPES=${SHAPES:-"none 1gbit"}
TBF_BURST=${TBF_BURST:-256kbit}
SOURCES=${SOURCES:-500}
THREADS=${THREADS:-1}
FILE_SRC=${FILE_SRC:-/usr/lib/ipxe/snponly.efi}
read -ra IRONBOOT_ARGS <<<"${IRONBOOT_ARGS:-}"
BENCH=tftp_compare
# shellcheck source=benches/lib.sh
. "$(dirname "$0")/lib.sh"
OUT=${OUT:-$REPO/target/tftp_compare/$(date +%Y%m%d-%H%M%S)}

bench_require_root
[ -r "$FILE_SRC" ] || bench_die "$FILE_SRC missing: apt-get install ipxe"
command -v dnsmasq >/dev/null || bench_die "apt-get install dnsmasq-base"

SRV_IP=10.97.0.1
LOAD_IP=10.97.0.2

# --- build, peers and network ------------------------------------------------------------
build_ironboot
# The generator's addresses: one per client (10.97.1.1 ...), as in a rack.
bench_setup "$SRV_IP" "$LOAD_IP" 10.97 "$SOURCES"
mkdir -p "$OUT" "$WORK/root" "$WORK/ipxe"
chmod 755 "$WORK/root" "$WORK/ipxe"
install -m 644 "$FILE_SRC" "$WORK/root/snp.efi"       # dnsmasq, tftpd-hpa
install -m 644 "$FILE_SRC" "$WORK/ipxe/snponly.efi"   # ironboot serves it as snp.efi
SIZE=$(stat -c %s "$WORK/root/snp.efi")
if [[ " $SERVERS " == *" tftpd-hpa "* ]]; then fetch_tftpd_hpa; fi

# --- servers -----------------------------------------------------------------------------
start_server() {
    local name=$1
    case $name in
    ironboot-io-uring | ironboot-portable)
        rm -rf "$WORK/state" && mkdir -p "$WORK/state"
        ip netns exec "$NS_SRV" "$BIN" --disable-dhcp-proxy --api-listen-address "$SRV_IP" \
            --api-advertise-address "$SRV_IP" --state-dir "$WORK/state" \
            --ipxe-dir "$WORK/ipxe" --udp-driver "${name#ironboot-}" "${IRONBOOT_ARGS[@]}" \
            >"$OUT/$name.log" 2>&1 &
        ;;
    dnsmasq)
        ip netns exec "$NS_SRV" dnsmasq --keep-in-foreground --port=0 --enable-tftp --tftp-root="$WORK/root" \
            --tftp-max=2000 --quiet-tftp --listen-address="$SRV_IP" --bind-interfaces \
            --pid-file= --conf-file=/dev/null --log-facility=/dev/null \
            >"$OUT/$name.log" 2>&1 &
        ;;
    tftpd-hpa)
        ip netns exec "$NS_SRV" "$HPA" -L -s "$WORK/root" -a "$SRV_IP:69" >"$OUT/$name.log" 2>&1 &
        ;;
    esac
    # `ip netns exec` execs the server: $! is the server's own PID (not a subshell's).
    SERVER_PID=$!
    # Ready when one transfer succeeds.
    for _ in $(seq 1 50); do
        if in_load "$BIN" storm tftp --server "$SRV_IP" --file snp.efi --quiet --retries 1 \
            >/dev/null 2>&1; then
            return 0
        fi
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.2
    done
    echo "tftp_compare: $name did not start; see $OUT/$name.log" >&2
    return 1
}

# Enough transfers for several seconds per run (the file is 173,792 bytes).
transfers_for() {
    case $1 in
    1) echo 500 ;;
    50) echo 5000 ;;
    *) echo $(($1 * 30)) ;;
    esac
}

RESULTS=$OUT/results.jsonl
: >"$RESULTS"
for server in $SERVERS; do
    echo "== $server" >&2
    start_server "$server"
    for shaping in $SHAPES; do
        shape "$shaping"
        for profile in $PROFILES; do
            for n in $CLIENTS; do
                run=$server-$shaping-$profile-$n
                t=$(transfers_for "$n")
                echo 5 >"/proc/$SERVER_PID/clear_refs"      # reset VmHWM
                cpu0=$(cpu_ticks "$SERVER_PID")
                busy0=$(machine_ticks)
                start_sampler "$WORK/rss"
                in_load "$BIN" storm tftp --server "$SRV_IP" --file snp.efi --clients "$n" \
                    --transfers "$t" "--$profile" --bind "$BINDS" --verify "$WORK/root/snp.efi" \
                    --threads "$THREADS" --json >"$OUT/$run.json" 2>"$OUT/$run.log" || true
                stop_sampler
                cpu1=$(cpu_ticks "$SERVER_PID")
                busy1=$(machine_ticks)
                hwm=$(hwm_kib "$SERVER_PID")
                tree=$(cat "$WORK/rss")
                python3 - "$OUT/$run.json" "$server" "$shaping" "$profile" "$n" \
                    "$((cpu1 - cpu0))" "$TCK" "$hwm" "$tree" "$((busy1 - busy0))" >>"$RESULTS" <<'EOF'
import json, sys
path, server, shaping, profile, n, ticks, tck, hwm, tree, busy = sys.argv[1:]
try:
    r = json.load(open(path))
except Exception as e:  # the storm could not run: record that, go on
    r = {"error": str(e)}
r.update(server=server, shaping=shaping, profile=profile, clients=int(n),
         server_cpu_secs=int(ticks) / int(tck), server_hwm_kib=int(hwm),
         server_tree_rss_kib=int(tree), machine_cpu_secs=int(busy) / int(tck))
print(json.dumps(r))
EOF
                tail -n1 "$RESULTS" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
print("   %-18s %-5s %-4s %3d clients: %5s ok %3s failed %8.1f MB/s  p99 %7.1f ms  cpu %.2f s" % (
    r["server"], r["shaping"], r["profile"], r["clients"], r.get("transfers_ok"),
    r.get("transfers_failed"), r.get("goodput_mb_s", 0), r.get("latency", {}).get("p99_ms", 0),
    r["server_cpu_secs"]))' >&2
            done
        done
    done
    shape none
    stop_server
done

# --- table -------------------------------------------------------------------------------
python3 - "$RESULTS" "$SIZE" "$TBF_BURST" >"$OUT/results.md" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
size, burst = int(sys.argv[2]), sys.argv[3]
for shaping in dict.fromkeys(r["shaping"] for r in rows):
    title = "unshaped veth" if shaping == "none" else f"server egress shaped: tbf rate 1gbit burst {burst} latency 50ms"
    print(f"\n#### {title}\n")
    print("| server | profile | clients | ok | failed | goodput MB/s | Mbit/s | p50 ms | p99 ms | server CPU s | CPU s/GB | peak RSS MiB | storm CPU s | other CPU s |")
    print("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        if r["shaping"] != shaping:
            continue
        if "error" in r:
            print(f"| {r['server']} | {r['profile']} | {r['clients']} | - | storm failed: {r['error']} ||||||||||")
            continue
        failed = r["transfers_failed"]
        if failed:
            failed = f"{failed} ({', '.join(f'{k} {v}' for k, v in r['failures'].items())})"
        gb = r["bytes"] / 1e9
        per_gb = r["server_cpu_secs"] / gb if gb else float("nan")
        rss = max(r["server_hwm_kib"], r["server_tree_rss_kib"]) / 1024
        other = max(0.0, r.get("machine_cpu_secs", 0) - r["server_cpu_secs"] - r["generator_cpu_secs"])
        print(f"| {r['server']} | {r['profile']} | {r['clients']} | {r['transfers_ok']} | {failed} "
              f"| {r['goodput_mb_s']:.1f} | {r['goodput_mbit_s']:.0f} | {r['latency']['p50_ms']:.1f} "
              f"| {r['latency']['p99_ms']:.1f} | {r['server_cpu_secs']:.2f} | {per_gb:.2f} | {rss:.1f} "
              f"| {r['generator_cpu_secs']:.2f} | {other:.1f} |")
EOF
cat "$OUT/results.md"
echo "results: $OUT" >&2
