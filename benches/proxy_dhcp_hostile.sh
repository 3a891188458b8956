#!/usr/bin/env bash
# ProxyDHCP on a hostile PXE network: a rack booting (`ironboot storm pxe`, DISCOVER,
# OFFER, 4011 REQUEST, ACK) while another host on the link sends requests built to make
# the server reflect traffic (benches/proxy_dhcp_hostile.py: giaddrs naming broadcast,
# multicast, loopback, reserved and the link's own network/broadcast addresses or the
# attacker itself; 4011 REQUESTs from a victim's ports 53 and 123; every request stuffed
# with 255-byte options 61, 82, 97 and an unknown one). Server and load in network
# namespaces over a veth pair. Run on demand, as root; not part of CI.
#
#   benches/proxy_dhcp_hostile.sh
#   BIN=target/debug/ironboot MACHINES=500 ATTACK=20000 benches/proxy_dhcp_hostile.sh
#
# Knobs (environment): BIN (an ironboot binary; default: build the release one), MACHINES
# and RATE (the booting rack), ATTACK and ATTACK_RATE (hostile requests, per second),
# IRONBOOT_ARGS (more ironboot flags, e.g. "--dhcp-relay-allow 10.97.0.0/16"), OUT.
#
# Reports: machines booted and lost, what the victim sockets received (datagrams and
# bytes), ironboot's refusal counters, and its refusal log lines over the run.
set -euo pipefail

MACHINES=${MACHINES:-1000}
RATE=${RATE:-250}
ATTACK=${ATTACK:-20000}
ATTACK_RATE=${ATTACK_RATE:-2500}
read -ra IRONBOOT_ARGS <<<"${IRONBOOT_ARGS:-}"
BENCH=proxy_dhcp_hostile
# shellcheck source=benches/lib.sh
. "$(dirname "$0")/lib.sh"
OUT=${OUT:-$REPO/target/proxy_dhcp_hostile/$(date +%Y%m%d-%H%M%S)}

bench_require_root
SRV_IP=10.96.0.1
LOAD_IP=10.96.0.2

if [ -n "${BIN:-}" ]; then
    BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
else
    build_ironboot
fi
bench_setup "$SRV_IP" "$LOAD_IP" 10.96 0
stage_pxe_files
start_pxe_server ironboot-portable --stop-after request

echo "== storm of $MACHINES machines at $RATE/s, $ATTACK hostile requests at $ATTACK_RATE/s" >&2
start=$(date +%s)
in_load python3 "$REPO/benches/proxy_dhcp_hostile.py" "$SRV_IP" "$LOAD_IP" 16 "$ATTACK" "$ATTACK_RATE" \
    >"$OUT/attack.json" &
attack_pid=$!
in_load "$BIN" storm pxe --server "$SRV_IP" --interface "$VETH_LOAD" --machines "$MACHINES" \
    --rate "$RATE" --stop-after request --timeout-scale 0.25 --first 1 --quiet --json \
    >"$OUT/storm.json" 2>"$OUT/storm.log" || true
wait "$attack_pid"
seconds=$(($(date +%s) - start))
in_load curl -sf "http://$SRV_IP:50042/metrics" >"$OUT/metrics.txt"
stop_server

python3 - "$OUT" "$seconds" <<'EOF'
import json, re, sys
out, seconds = sys.argv[1], int(sys.argv[2])
storm = json.load(open(f"{out}/storm.json"))
attack = json.load(open(f"{out}/attack.json"))
metrics = open(f"{out}/metrics.txt").read()
log = open(f"{out}/ironboot-portable.log").read()
refused = {m[0]: int(m[1]) for m in re.findall(r'ironboot_dhcp_dropped_total\{reason="((?:giaddr|source)_[a-z_]+)"\} (\d+)', metrics)}
replies = {m[0]: int(m[1]) for m in re.findall(r'ironboot_dhcp_replies_total\{type="(\w+)"\} (\d+)', metrics)}
lines = log.count("ProxyDHCP reply refused")
print(json.dumps({
    "seconds": seconds,
    "storm": {"machines": storm.get("machines"), "stages": {
        name: {k: st.get(k) for k in ("ok", "failed", "failures")}
        for name, st in storm.get("stages", {}).items()}},
    "attack": attack,
    "server_replies": replies,
    "server_refused": {k: v for k, v in refused.items() if v},
    "refusal_log_lines": lines,
}, indent=1))
EOF
echo "results: $OUT" >&2
