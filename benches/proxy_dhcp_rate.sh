#!/usr/bin/env bash
# ProxyDHCP alone under load: how many DISCOVERs a second each server answers with a proxy
# OFFER, how many it loses, how fast it answers, and what that costs it in CPU. Servers in
# turn, in a network namespace; two independent generators in another, over a veth pair:
#   perfdhcp  Kea's DHCP benchmark (DISCOVER -> OFFER only, `-i`), with the PXE options of
#             a BIOS PXE ROM (60 PXEClient, 93 arch 0, 94, 97), a fixed rate for DURATION s;
#   storm     `ironboot storm pxe --stop-after discover --rate R`: EDK2's DISCOVER, one
#             new machine per DISCOVER, first-try latency percentiles.
# Run on demand, as root; not part of CI. See BENCHMARKS.md ("ProxyDHCP under load").
#
#   benches/proxy_dhcp_rate.sh
#   SERVERS="ironboot-io-uring dnsmasq" RATES="10000 40000" GENERATORS=perfdhcp benches/proxy_dhcp_rate.sh
#
# Knobs (environment): SERVERS (ironboot-io-uring ironboot-portable dnsmasq go-provider),
# GENERATORS (perfdhcp storm), RATES (DISCOVERs per second), DURATION (seconds per run),
# IRONBOOT_ARGS (more ironboot flags), OUT (results, kept).
#
# Loss: perfdhcp's drops (DISCOVERs without an OFFER); for the storm, DISCOVERs that went
# unanswered for the first (scaled) firmware timeout, over all DISCOVERs sent. Server CPU
# is utime+stime over the run, reported per 100,000 OFFERs received.
set -euo pipefail

SERVERS=${SERVERS:-"ironboot-io-uring ironboot-portable dnsmasq go-provider"}
GENERATORS=${GENERATORS:-"perfdhcp storm"}
RATES=${RATES:-"2500 5000 10000 20000 40000"}
DURATION=${DURATION:-5}
read -ra IRONBOOT_ARGS <<<"${IRONBOOT_ARGS:-}"
BENCH=proxy_dhcp_rate
# shellcheck source=benches/lib.sh
. "$(dirname "$0")/lib.sh"
OUT=${OUT:-$REPO/target/proxy_dhcp_rate/$(date +%Y%m%d-%H%M%S)}

bench_require_root
command -v dnsmasq >/dev/null || bench_die "apt-get install dnsmasq-base"
command -v perfdhcp >/dev/null || bench_die "perfdhcp missing: apt-get install kea-admin"

SRV_IP=10.96.0.1
LOAD_IP=10.96.0.2

build_ironboot
bench_setup "$SRV_IP" "$LOAD_IP" 10.96 0
if [[ " $SERVERS " == *" go-provider "* ]]; then build_go_peer; fi
stage_pxe_files
# ProxyDHCP alone: dnsmasq without its TFTP server.
cp "$WORK/dnsmasq-proxy.conf" "$WORK/dnsmasq.conf"

# A BIOS PXE ROM's identity: option 60 "PXEClient:Arch:00000:UNDI:002001", 93 arch 0,
# 94 UNDI 2.1, 97 a zero GUID (type 0 + 16 bytes).
O60=$(printf 'PXEClient:Arch:00000:UNDI:002001' | od -An -tx1 | tr -d ' \n')
O97=00$(printf '0%.0s' $(seq 1 32))

run_generator() { # generator rate run
    local gen=$1 rate=$2 run=$3
    case $gen in
    perfdhcp)
        # -R: that many distinct clients (MACs); -p: seconds; -i: DISCOVER/OFFER only.
        in_load perfdhcp -4 -l "$VETH_LOAD" -i -r "$rate" -p "$DURATION" -R 1000000 \
            -o "60,$O60" -o 93,0000 -o 94,010201 -o "97,$O97" >"$OUT/$run.txt" 2>&1 || true
        ;;
    storm)
        # First DISCOVER timeout 1 s (EDK2's 4 s x 0.25): an OFFER later than that is lost.
        in_load "$BIN" storm pxe --server "$SRV_IP" --interface "$VETH_LOAD" \
            --machines $((rate * DURATION)) --rate "$rate" --stop-after discover \
            --timeout-scale 0.25 --first "$first" --quiet --json >"$OUT/$run.txt" 2>"$OUT/$run.log" || true
        first=$((first + rate * DURATION))
        ;;
    esac
}

RESULTS=$OUT/results.jsonl
: >"$RESULTS"
first=1
for server in $SERVERS; do
    echo "== $server" >&2
    start_pxe_server "$server" --stop-after discover
    for gen in $GENERATORS; do
        for rate in $RATES; do
            run=$server-$gen-$rate
            cpu0=$(cpu_ticks "$SERVER_PID")
            busy0=$(machine_ticks)
            drops0=$(rcvbuf_errors)
            run_generator "$gen" "$rate" "$run"
            cpu1=$(cpu_ticks "$SERVER_PID")
            busy1=$(machine_ticks)
            drops1=$(rcvbuf_errors)
            python3 "$REPO/benches/proxy_dhcp_rate_report.py" row "$OUT/$run.txt" "$server" "$gen" \
                "$rate" "$DURATION" "$((cpu1 - cpu0))" "$TCK" "$((drops1 - drops0))" \
                "$((busy1 - busy0))" >>"$RESULTS"
            tail -n1 "$RESULTS" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
print("   %-18s %-8s %6d/s: sent %7s got %7s loss %6s%%  p99 %s ms  cpu %.2f s" % (
    r["server"], r["generator"], r["rate"], r.get("sent"), r.get("offers"),
    "%.2f" % r["loss_pct"] if "loss_pct" in r else "-", r.get("p99_ms", "-"), r["server_cpu_secs"]))' >&2
        done
    done
    stop_server
done

python3 "$REPO/benches/proxy_dhcp_rate_report.py" table "$RESULTS" >"$OUT/results.md"
cat "$OUT/results.md"
echo "results: $OUT" >&2
