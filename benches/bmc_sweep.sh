#!/usr/bin/env bash
# BMC power-status sweep: N simulated BMCs (one OpenIPMI `ipmi_sim` process each, on
# 127.0.0.1), the power state of every one read once, one after the other (a plain loop,
# no executor) versus through the fleet executor (bounded concurrency). Figures in
# BENCHMARKS.md, "## BMC power-status sweep".
#
#   benches/bmc_sweep.sh [N=200] [CONCURRENCY=32] [REPEAT=3]
#   BMC_DELAY_MS=50 benches/bmc_sweep.sh ...   # each chassis query takes 50 ms more, like
#                                              # a real BMC's slow firmware
#
# Needs ipmi_sim (Debian package openipmi; tests/install-prereqs.sh installs it). Builds
# the release binary if IRONBOOT_BIN is not set and target/release/ironboot is missing.
# Each mode runs one untimed warm-up sweep, then REPEAT timed sweeps; the median is
# printed. Every simulator this script starts is killed (by PID) when it exits.
set -euo pipefail

N=${1:-200}
CONCURRENCY=${2:-32}
REPEAT=${3:-3}
BASE_PORT=${BASE_PORT:-26230}

root=$(cd "$(dirname "$0")/.." && pwd)
data=$root/bmc/tests/data/ipmi
bin=${IRONBOOT_BIN:-$root/target/release/ironboot}
if [ ! -x "$bin" ]; then
  cargo build --release --bin ironboot --manifest-path "$root/Cargo.toml"
fi
PATH=$PATH:/usr/sbin:/sbin
if ! command -v ipmi_sim >/dev/null; then
  echo "bmc_sweep: ipmi_sim is missing: apt-get install -y openipmi (or sudo tests/install-prereqs.sh)" >&2
  exit 2
fi

work=$(mktemp -d)
pids=()
BMC_DELAY_MS=${BMC_DELAY_MS:-0}
chassis=$data/chassis.sh
if [ "$BMC_DELAY_MS" != 0 ]; then
  chassis=$work/slow-chassis.sh
  printf '#!/bin/sh\nsleep %s\nexec "%s" "$@"\n' "$(awk "BEGIN{print $BMC_DELAY_MS/1000}")" \
    "$data/chassis.sh" >"$chassis"
  chmod +x "$chassis"
fi
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

targets=()
for i in $(seq 0 $((N - 1))); do
  port=$((BASE_PORT + i))
  dir=$work/bmc$i
  mkdir -p "$dir/state"
  sed -e "s|@NAME@|bench$i|" -e "s|@PORT@|$port|" -e "s|@CHASSIS@|$chassis|" \
    "$data/lan.conf.in" >"$dir/lan.conf"
  CHASSIS_STATE=$dir/chassis ipmi_sim -c "$dir/lan.conf" -f "$data/bmc.emu" -s "$dir/state" -n \
    </dev/null >/dev/null 2>&1 &
  pids+=("$!")
  targets+=("127.0.0.1:$port")
done
list=$(IFS=,; echo "${targets[*]}")
export IRONBOOT_BENCH_BMC_PASSWORD=password
sweep() {
  "$bin" bmc sweep --ipmi "$list" --user admin --password-env IRONBOOT_BENCH_BMC_PASSWORD \
    --cipher-suite 3 --timeout 10s "$@"
}

# Wait until every simulator answers.
deadline=$((SECONDS + 60))
until sweep --concurrency 64 --repeat 1 >/dev/null 2>&1; do
  if [ $SECONDS -ge $deadline ]; then
    echo "bmc_sweep: the simulators did not all answer within 60 s" >&2
    exit 1
  fi
  sleep 1
done

echo "# $N ipmi_sim BMCs (+${BMC_DELAY_MS} ms per chassis query), $(nproc) cores, load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "## sequential (plain loop)"
sweep --concurrency 0 --repeat "$REPEAT"
echo "## fleet executor, concurrency $CONCURRENCY"
sweep --concurrency "$CONCURRENCY" --repeat "$REPEAT"
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
