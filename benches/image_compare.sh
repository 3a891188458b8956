#!/usr/bin/env bash
# Boot image serving: ironboot's accept loop sending a 64 MiB file on /assets/ through
# hyper (the route's file stream, as before the image path) and through the zero-copy
# image path (sendfile, src/boot/http/sendfile.rs), against nginx (Debian's nginx-light, one
# process, sendfile on), to 50 and to 500 concurrent keep-alive clients (wrk) in another
# network namespace over a veth pair. Release build. Reports throughput (bytes the
# server's veth sent) and the server process's CPU time per GB.
#
# Run as root: benches/image_compare.sh   (DUR=10s CONNS="50 500" SERVERS="..." ROUNDS=1)
# ROUNDS>1 repeats the whole comparison, alternating the servers' order, and ends with
# the medians and each server's ratio to nginx.
# Needs: wrk, nginx-light (apt-get install wrk nginx-light), iproute2.
set -euo pipefail

BENCH=image_compare
# shellcheck source=benches/lib.sh
. "$(dirname "$0")/lib.sh"

DUR=${DUR:-10s}
ROUNDS=${ROUNDS:-1}
CONNS=${CONNS:-"50 500"}
SERVERS=${SERVERS:-"ironboot-hyper ironboot-zero-copy nginx"}
SRV_IP=10.77.0.1
LOAD_IP=10.77.0.2
PORT=8080
SIZE_MIB=64

bench_require_root
for cmd in wrk nginx ip; do
    command -v "$cmd" >/dev/null || bench_die "$cmd is missing (apt-get install wrk nginx-light iproute2)"
done

echo "== building examples/image_server (release)" >&2
(cd "$REPO" && cargo build --release --example image_server >&2)
BIN=$REPO/target/release/examples/image_server

bench_setup "$SRV_IP" "$LOAD_IP" 10.78 0
mkdir -p "$WORK/www/assets"
head -c $((SIZE_MIB << 20)) /dev/urandom >"$WORK/www/assets/kernel-amd64"
chmod -R a+rX "$WORK/www"
# Resident in the page cache for every server alike.
cat "$WORK/www/assets/kernel-amd64" >/dev/null

cat >"$WORK/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx.err warn;

events { worker_connections 8192; }
http {
    sendfile on;
    tcp_nopush on;
    access_log off;
    keepalive_requests 100000;
    types { application/octet-stream kernel-amd64; }
    server {
        listen $SRV_IP:$PORT;
        root $WORK/www;
    }
}
EOF

start() {
    case $1 in
    ironboot-hyper) ip netns exec "$NS_SRV" "$BIN" "$SRV_IP:$PORT" "$WORK/www/assets" hyper 2>"$WORK/$1.log" & ;;
    ironboot-zero-copy) ip netns exec "$NS_SRV" "$BIN" "$SRV_IP:$PORT" "$WORK/www/assets" zero-copy 2>"$WORK/$1.log" & ;;
    nginx) ip netns exec "$NS_SRV" nginx -c "$WORK/nginx.conf" 2>"$WORK/$1.log" & ;;
    esac
    SERVER_PID=$!
    for _ in $(seq 100); do
        if in_load curl -sf -o /dev/null -r 0-0 "http://$SRV_IP:$PORT/assets/kernel-amd64"; then
            return
        fi
        sleep 0.1
    done
    bench_die "$1 did not answer; its log: $(cat "$WORK/$1.log")"
}

ulimit -n "$(ulimit -Hn)"
ROWS=$WORK/rows.tsv
: >"$ROWS"
printf '| round | server | clients | throughput (MB/s) | requests/s | server CPU (cores) | server CPU s per GB | wrk errors |\n'
printf '|---|---|---|---|---|---|---|---|\n'
for round in $(seq "$ROUNDS"); do
    # Alternate the order so that neither server always runs first.
    order=$SERVERS
    if ((round % 2 == 0)); then order=$(tr ' ' '\n' <<<"$SERVERS" | tac | tr '\n' ' '); fi
    for server in $order; do
        start "$server"
        for c in $CONNS; do
            ticks0=$(cpu_ticks "$SERVER_PID")
            tx0=$(tx_bytes)
            t0=$(date +%s.%N)
            out=$(in_load wrk -t2 -c"$c" -d"$DUR" --timeout 60s "http://$SRV_IP:$PORT/assets/kernel-amd64" 2>&1)
            t1=$(date +%s.%N)
            tx1=$(tx_bytes)
            ticks1=$(cpu_ticks "$SERVER_PID")
            rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
            errors=$(awk '/Socket errors|Non-2xx/ {sub(/^ +/, ""); printf "%s; ", $0}' <<<"$out")
            awk -v tx=$((tx1 - tx0)) -v ticks=$((ticks1 - ticks0)) -v tck="$TCK" -v t0="$t0" -v t1="$t1" \
                -v s="$server" -v c="$c" -v rps="$rps" -v e="${errors:-none}" -v r="$round" -v rows="$ROWS" 'BEGIN {
                    secs = t1 - t0; cpu = ticks / tck;
                    printf "| %d | %s | %d | %.0f | %s | %.2f | %.3f | %s |\n", r, s, c, tx / secs / 1e6, rps, cpu / secs, cpu / (tx / 1e9), e
                    printf "%s\t%d\t%.1f\t%.4f\n", s, c, tx / secs / 1e6, cpu / (tx / 1e9) >> rows
                }'
        done
        stop_server
    done
done

# Medians over the rounds, and each server's ratio to nginx's medians.
echo
printf '| server | clients | median throughput (MB/s) | vs nginx | median CPU s per GB | vs nginx |\n'
printf '|---|---|---|---|---|---|\n'
python3 - "$ROWS" "$SERVERS" "$CONNS" <<'PY'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().splitlines()]
med = {}
for server in sys.argv[2].split():
    for c in sys.argv[3].split():
        picked = [r for r in rows if r[0] == server and r[1] == c]
        if picked:
            med[server, c] = (statistics.median(float(r[2]) for r in picked),
                              statistics.median(float(r[3]) for r in picked))
for (server, c), (tput, cpu) in med.items():
    ref = med.get(("nginx", c))
    ratio = lambda a, b: f"{a / b:.2f}x" if b else "-"
    print(f"| {server} | {c} | {tput:.0f} | {ratio(tput, ref[0]) if ref else '-'} "
          f"| {cpu:.3f} | {ratio(cpu, ref[1]) if ref else '-'} |")
PY
