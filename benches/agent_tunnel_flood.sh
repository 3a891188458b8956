#!/bin/bash
# The agent-tunnel flood of RELIABILITY.md: ironboot in Omni mode (no Omni reachable: the
# tunnel route is served from the first second), then h2load opening N reverse tunnels
# over h2c, each with a `machine-id` of BYTES bytes (not a UUID), then N more with
# UUIDs of machines ironboot has never seen. Prints the server's peak RSS, the tunnels
# refused by reason (from /metrics) and the bytes it logged.
#
# usage (as root, from the repository, after `cargo build --release`):
#   benches/agent_tunnel_flood.sh            # N=60000 BYTES=8192
#   IRONBOOT=target/debug/ironboot N=10000 benches/agent_tunnel_flood.sh
# Needs h2load (Debian: nghttp2-client) and Go (the Omni harness makes the key).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-60000}
BYTES=${BYTES:-8192}
IRONBOOT=${IRONBOOT:-target/release/ironboot}
IP=127.0.0.77
PORT=${PORT:-50142}
command -v h2load >/dev/null || { echo "h2load missing: apt-get install nghttp2-client" >&2; exit 1; }
[ -x "$IRONBOOT" ] || { echo "$IRONBOOT missing: cargo build --release" >&2; exit 1; }
GO=$(command -v go || echo /usr/local/go/bin/go)
WORK=$(mktemp -d)
PID=""
cleanup() {
    [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

(cd tests/omni-harness && "$GO" build -o "$WORK/omniharness" .)
KEY=$("$WORK/omniharness" keygen --id bare-metal)
OMNI_SERVICE_ACCOUNT_KEY=$KEY "$IRONBOOT" --omni-api-endpoint http://127.0.0.1:9 \
    --api-listen-address "$IP" --api-advertise-address "$IP" --api-port "$PORT" \
    --disable-dhcp-proxy --state-dir "$WORK/state" 2>"$WORK/log" &
PID=$!
for _ in $(seq 100); do
    curl -sf "http://$IP:$PORT/healthz" >/dev/null && break
    sleep 0.1
done
rss() { awk '/VmHWM/ {print $2 " kB"}' "/proc/$PID/status"; }
echo "ironboot up: peak RSS $(rss), log $(stat -c %s "$WORK/log") bytes"

ID=$(head -c "$BYTES" /dev/zero | tr '\0' 'a')
# One empty gRPC message (5 bytes: not compressed, length 0) as the request body.
printf '\0\0\0\0\0' >"$WORK/body"
flood() {
    h2load -n "$N" -c 50 -m 20 -t 1 \
        -H 'content-type: application/grpc' -H 'te: trailers' -H "machine-id: $1" \
        -d "$WORK/body" "http://$IP:$PORT/grpctunnel.v1.TunnelService/OpenReverseTunnel" |
        grep -E '^(finished|requests|status codes)'
}
echo "== $N tunnels with a $BYTES-byte machine-id"
flood "$ID"
echo "peak RSS $(rss), log $(stat -c %s "$WORK/log") bytes"
echo "== $N tunnels claiming a machine ironboot does not know"
flood 5c0e1b7a-0000-4000-8000-0000000f100d
echo "peak RSS $(rss), log $(stat -c %s "$WORK/log") bytes, $(wc -l <"$WORK/log") lines"
curl -sf "http://$IP:$PORT/metrics" | grep -E '^ironboot_agent_tunnels'
