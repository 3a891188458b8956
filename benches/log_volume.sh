#!/bin/bash
# Log volume of ironboot in Omni mode under a small, fixed load on loopback, at a given
# RUST_LOG: bytes and lines per minute, and the targets that wrote the most.
#
# usage: benches/log_volume.sh [RUST_LOG] [SECONDS]      (defaults: trace, 60; as root)
#   IRONBOOT_BIN      ironboot binary (default target/release/ironboot, built if missing)
#   HARNESS_DIR       where the Go harnesses are built (default: a temporary directory)
#   LOG_VOLUME_IP     loopback address everything listens on (default 127.0.0.77)
#
# The load, the same at every level: the Go Omni harness (tests/omni-harness) as Omni, so
# ironboot registers, heartbeats and watches over gRPC (h2); 4 metal agents
# (tests/agent-harness) holding the reverse tunnel open; 10 iPXE boot-script requests a
# second (HTTP/1.1, a new connection each) for 10 machines in turn; one TFTP transfer of
# undionly.kpxe a second. The Image Factory is a closed loopback port (nothing leaves the
# machine), so every boot script is the "factory unavailable, ask again" answer.
# Everything stops by itself after SECONDS.
set -euo pipefail
cd "$(dirname "$0")/.."
LEVEL=${1:-trace}
SECS=${2:-60}
IP=${LOG_VOLUME_IP:-127.0.0.77}
API_PORT=50142
BIN=${IRONBOOT_BIN:-target/release/ironboot}
[ "$(id -u)" = 0 ] || { echo "log_volume: run as root (TFTP port 69)" >&2; exit 1; }
[ -x "$BIN" ] || cargo build --release --locked --bin ironboot

WORK=$(mktemp -d "${TMPDIR:-/tmp}/log-volume.XXXXXX")
PIDS=()
cleanup() {
  set +e
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
  rm -rf "$WORK"
}
trap cleanup EXIT

HARNESS_DIR=${HARNESS_DIR:-$WORK/bin}
mkdir -p "$HARNESS_DIR"
for h in omni agent; do
  [ -x "$HARNESS_DIR/${h}harness" ] ||
    (cd "tests/$h-harness" && go build -mod=readonly -o "$HARNESS_DIR/${h}harness" .)
done

"$HARNESS_DIR/omniharness" keygen --id bare-metal >"$WORK/sa.key"
# The harness reads commands on stdin: a FIFO held open keeps it serving.
mkfifo "$WORK/ctl"
"$HARNESS_DIR/omniharness" serve --key-file "$WORK/sa.key" --listen "$IP:0" \
  <"$WORK/ctl" >"$WORK/harness.out" 2>"$WORK/harness.err" &
PIDS+=($!)
exec 3>"$WORK/ctl"
for _ in $(seq 100); do
  grep -q listening "$WORK/harness.out" 2>/dev/null && break
  sleep 0.1
done
OMNI=$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["listening"])' "$WORK/harness.out")

mkdir -p "$WORK/state"
OMNI_SERVICE_ACCOUNT_KEY=$(cat "$WORK/sa.key") RUST_LOG=$LEVEL NO_COLOR=1 "$BIN" \
  --omni-api-endpoint "http://$OMNI" --api-listen-address "$IP" --api-advertise-address "$IP" \
  --api-port "$API_PORT" --disable-dhcp-proxy --udp-driver portable --state-dir "$WORK/state" \
  --image-factory-proxy off --image-factory-base-url "http://$IP:9" \
  --image-factory-pxe-base-url "http://$IP:9" 2>"$WORK/ironboot.log" &
PIDS+=($!)
IRONBOOT_PID=$!
for _ in $(seq 200); do
  curl -sf --max-time 1 "http://$IP:$API_PORT/healthz" >/dev/null && break
  kill -0 "$IRONBOOT_PID" 2>/dev/null || { echo "log_volume: ironboot exited at start:" >&2; tail -5 "$WORK/ironboot.log" >&2; exit 1; }
  sleep 0.1
done

for i in 1 2 3 4; do
  "$HARNESS_DIR/agentharness" -addr "$IP:$API_PORT" -machine-id "log-volume-$i" -name "a$i" \
    -reconnect -proto-dir proto/proto >/dev/null 2>&1 &
  PIDS+=($!)
done

start_bytes=$(stat -c %s "$WORK/ironboot.log")
start=$(date +%s)
n=0
while [ $(($(date +%s) - start)) -lt "$SECS" ]; do
  for _ in $(seq 10); do
    m=$((n % 10))
    curl -s -o /dev/null --max-time 2 \
      "http://$IP:$API_PORT/ipxe/boot.ipxe?uuid=10900000-0000-4000-8000-00000000000$m&mac=52:54:00:00:10:0$m&arch=amd64" || true
    n=$((n + 1))
  done
  curl -s -o /dev/null --max-time 2 "tftp://$IP/undionly.kpxe" || true
  sleep 1
done
elapsed=$(($(date +%s) - start))
kill -0 "$IRONBOOT_PID" 2>/dev/null ||
  { echo "log_volume: ironboot exited during the run:" >&2; tail -5 "$WORK/ironboot.log" >&2; exit 1; }
bytes=$(($(stat -c %s "$WORK/ironboot.log") - start_bytes))
lines=$(wc -l <"$WORK/ironboot.log")
echo "RUST_LOG=$LEVEL: $bytes bytes in $elapsed s = $((bytes * 60 / elapsed)) bytes/min, $lines lines in all, $n boot-script requests"
echo "lines and bytes by level and crate (top 12):"
# tracing's fmt line: TIMESTAMP LEVEL [spans: ]TARGET: message; the target is the first
# module path (a::b) followed by ": ", else the word after the level. A line that does not
# start with a timestamp continues the entry before it (a multi-line field).
python3 - "$WORK/ironboot.log" <<'PY'
import collections, re, sys
path = re.compile(r"\s([a-z][a-z0-9_]*)(?:::[a-z0-9_]+)+: ")
word = re.compile(r"^\S+\s+(\w+)\s+([a-z][a-z0-9_]*): ")
stamp = re.compile(r"^\d{4}-\d\d-\d\dT")
count, size = collections.Counter(), collections.Counter()
key = ("?", "?")
with open(sys.argv[1], "rb") as f:
    for raw in f:
        line = raw.decode(errors="replace")
        if stamp.match(line):
            parts = line.split(None, 2)
            m = path.search(line) or word.search(line)
            key = (parts[1] if len(parts) > 1 else "?", m.group(m.lastindex) if m else "?")
        count[key] += 1
        size[key] += len(raw)
for (level, crate), n in count.most_common(12):
    print(f"{n:9} lines {size[level, crate]:12} bytes  {level:5} {crate}")
PY
