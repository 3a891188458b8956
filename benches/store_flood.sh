#!/usr/bin/env bash
# The machine store under a hostile PXE network, measured (RELIABILITY.md "Machine store"):
#   1. a flood of FLOOD `boot.ipxe` requests with invented UUIDs/MACs and over-long
#      serial/hostname/domain from one source address, then from SOURCES addresses;
#   2. a real machine booting after each flood: is it recorded?
#   3. STALL clients that ask for /api/v1/machines and never read: the server's RSS.
# Prints one JSON line per step and the database size; the server runs in a network
# namespace of its own (loopback only), with a fresh state directory, stopped by its PID.
#
# usage: benches/store_flood.sh path/to/ironboot        (as root)
# env:   FLOOD (112000), SOURCES (250), STALL (20), PORT (50042), STALL_PATH (what the
#        stalled clients ask for, default /api/v1/machines), SERVER_ARGS (more ironboot
#        flags, e.g. "--store-new-machines-per-source 1000000" to fill the store to its cap)
set -euo pipefail

BIN=${1:?usage: $0 path/to/ironboot}
BIN=$(realpath "$BIN")
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
FLOOD=${FLOOD:-112000}
SOURCES=${SOURCES:-250}
STALL=${STALL:-20}
PORT=${PORT:-50042}
STALL_PATH=${STALL_PATH:-/api/v1/machines}
SERVER_ARGS=${SERVER_ARGS:-}
NS=sfl$$
WORK=$(mktemp -d)
PID=""

cleanup() {
    set +e
    [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
    ip netns del "$NS" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ "$(id -u)" = 0 ] || { echo "$0: run as root (a network namespace)" >&2; exit 1; }
ip netns add "$NS"
ip -n "$NS" link set lo up
ip -n "$NS" addr add 127.1.0.1/16 dev lo
mkdir -p "$WORK/ipxe" "$WORK/state"
# Any bytes do as a boot file: nothing boots here.
head -c 65536 /dev/urandom >"$WORK/ipxe/undionly.kpxe"

start() {
    # shellcheck disable=SC2086 # SERVER_ARGS is a list of flags
    ip netns exec "$NS" "$BIN" --disable-dhcp-proxy --api-listen-address 127.0.0.1 \
        --api-advertise-address 127.0.0.1 --api-port "$PORT" --state-dir "$WORK/state" \
        --ipxe-dir "$WORK/ipxe" $SERVER_ARGS >"$WORK/ironboot.log" 2>&1 &
    PID=$!
    for _ in $(seq 100); do
        ip netns exec "$NS" python3 -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 1)" \
            2>/dev/null && return
        sleep 0.2
    done
    cat "$WORK/ironboot.log" >&2
    exit 1
}

tool() { ip netns exec "$NS" python3 "$HERE/store_flood.py" --server "127.0.0.1:$PORT" "$@"; }
db() {
    local f="$WORK/state/machines.redb"
    echo "{\"db_bytes\": $(stat -c %s "$f"), \"db_disk_kib\": $(du -k "$f" | cut -f1)}"
}
metric() { ip netns exec "$NS" python3 -c "
import urllib.request
for l in urllib.request.urlopen('http://127.0.0.1:$PORT/metrics').read().decode().splitlines():
    if l.startswith('ironboot_store'): print(l)"; }

start
echo "== flood from one source address"
tool flood --requests "$FLOOD"
sleep 2
db
tool real --uuid 4c4c4544-0042-3510-8051-b7c04f4e3301 || true
echo "== flood from $SOURCES source addresses"
tool flood --requests "$FLOOD" --sources "$SOURCES" --seed 2
sleep 2
db
tool real --uuid 4c4c4544-0042-3510-8051-b7c04f4e3302 --source 127.0.0.3 || true
metric
echo "== $STALL clients that do not read /api/v1/machines"
tool stall --pid "$PID" --clients "$STALL" --path "$STALL_PATH"
