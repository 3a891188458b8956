# shellcheck shell=bash
# shellcheck disable=SC2034,SC2154 # shared variables: used by, or set by, the sourcing script
# Shared by run.sh (two firmwares, captures per VM) and storm.sh (many BIOS VMs at once):
# process bookkeeping, prerequisites, the site DHCP server, ironboot and its inventory, the
# VMs, and the checks made through ironboot's own HTTP API.
#
# The sourcing script sets, before calling anything here:
#   P     namespace prefix (topology.sh)      TAG   log prefix, e.g. "firmware"
#   out   per-run artefact dir                state per-run scratch dir (served files, disks)
# and may define report_details (called by cleanup on failure, after the processes stopped)
# and before_cleanup (called by cleanup once the processes stopped, before the report).

PROV_IP=10.98.0.3
API_PORT=50042
API="http://$PROV_IP:$API_PORT"
MARK=PXETEST-DONE
MARK_TARGET=PXETEST-TARGET
IPXE_GAVE_UP="No more network devices" # iPXE's last words when autoboot failed: stop early
SNPONLY=/usr/lib/ipxe/snponly.efi
BIOS_FILES=(/usr/share/seabios/bios-256k.bin:seabios /usr/lib/ipxe/qemu/efi-e1000.rom:ipxe-qemu)
SNP_SIZE=0 # set by check_prereqs once the file is known to exist

declare -A PIDS=() # name -> PID of every process this script started
ORDER=()           # start order (stopped in reverse)
FAILS=()
TOPO_UP=0
NTAPS=0

say() { echo "[$TAG] $*"; }
fail() { FAILS+=("$*"); echo "[$TAG] FAIL: $*"; }
ok() { echo "[$TAG] ok: $*"; }
setup_error() { echo "[$TAG] SETUP ERROR: $*" >&2; exit 2; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
secs() { printf '%d.%01d' $(($1 / 1000)) $((($1 % 1000) / 100)); }
# Printable ASCII only (the serial logs are full of terminal escapes).
clean() { sed -e 's/\x1b\[[0-9;?=]*[A-Za-z]//g' | tr -cd '\11\12\40-\176'; }

# ---------------------------------------------------------------- prerequisites
MISSING=()
MISSING_PKGS=()
need_cmd() { # CMD PACKAGE
  command -v "$1" >/dev/null || { MISSING+=("command $1"); MISSING_PKGS+=("$2"); }
}
need_file() { # FILE PACKAGE
  [ -e "$1" ] || { MISSING+=("file $1"); MISSING_PKGS+=("$2"); }
}
# check_prereqs FILE:PACKAGE...: root, the commands every scenario uses, the given firmware files.
check_prereqs() {
  local fp
  [ "$(id -u)" = 0 ] || setup_error "must run as root (network namespaces, taps, captures): sudo -E $0"
  need_cmd ip iproute2
  need_cmd ss iproute2
  need_cmd qemu-system-x86_64 qemu-system-x86
  need_cmd dnsmasq dnsmasq-base
  need_cmd tcpdump tcpdump
  need_cmd tshark tshark
  need_cmd python3 python3
  need_cmd curl curl
  need_file "$SNPONLY" ipxe
  for fp in "$@"; do need_file "${fp%%:*}" "${fp#*:}"; done
  if [ ${#MISSING[@]} -gt 0 ]; then
    setup_error "missing: ${MISSING[*]}
  install: sudo tests/install-prereqs.sh
       or: apt-get install -y --no-install-recommends $(printf '%s\n' "${MISSING_PKGS[@]}" | sort -u | tr '\n' ' ')"
  fi
  SNP_SIZE=$(stat -c %s "$SNPONLY")
}
check_ironboot_bin() {
  [ -n "${IRONBOOT_BIN:-}" ] || setup_error "IRONBOOT_BIN is not set (cargo build && IRONBOOT_BIN=target/debug/ironboot $0)"
  [ -x "$IRONBOOT_BIN" ] || setup_error "IRONBOOT_BIN=$IRONBOOT_BIN is not an executable file"
  IRONBOOT_BIN=$(cd "$(dirname "$IRONBOOT_BIN")" && pwd)/$(basename "$IRONBOOT_BIN")
}

# ---------------------------------------------------------------- processes
# start NAME NS CMD...: runs CMD in namespace PFX-NS in the background; stdout -> NAME.out,
# stderr -> NAME.err in the out dir. `ip netns exec` execs CMD, so $! is CMD's own PID.
start() {
  local name=$1 ns=$2
  shift 2
  ip netns exec "$P-$ns" "$@" >"$out/$name.out" 2>"$out/$name.err" &
  PIDS[$name]=$!
  ORDER+=("$name")
}
alive() { [ -n "${PIDS[$1]:-}" ] && kill -0 "${PIDS[$1]}" 2>/dev/null; }
# reap NAME: after NAME has exited, sets STATUS to its exit status (must run in this shell).
reap() {
  STATUS=0
  wait "${PIDS[$1]}" 2>/dev/null || STATUS=$?
  unset "PIDS[$1]"
}
stop() {
  local name=$1 pid=${PIDS[$1]:-} i
  [ -n "$pid" ] || return 0
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      say "$name (pid $pid) ignored SIGTERM for 5 s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  wait "$pid" 2>/dev/null || true
  unset "PIDS[$name]"
}
stop_all() {
  local i
  for ((i = ${#ORDER[@]} - 1; i >= 0; i--)); do stop "${ORDER[$i]}"; done
}

# wait_for DESC SECONDS NAME CMD...: polls CMD every 0.1 s; fails if process NAME dies first.
wait_for() {
  local desc=$1 limit=$2 name=$3 i
  shift 3
  for i in $(seq 1 $((limit * 10))); do
    "$@" && return 0
    if ! alive "$name"; then
      reap "$name"
      fail "$name exited (status $STATUS) before: $desc"
      exit 1
    fi
    sleep 0.1
  done
  fail "$desc: not within ${limit}s"
  exit 1
}
listening() { # NS PROTO(u|t) PORT
  ip netns exec "$P-$1" ss -Hln"$2" | awk '{print $4}' | grep -qE ":$3\$"
}
log_has() { grep -aq -- "$2" "$out/$1" 2>/dev/null; }

# ---------------------------------------------------------------- report and cleanup
tail_file() { # TITLE FILE LINES
  [ -s "$2" ] || { echo "--- $1: (empty)"; return 0; }
  echo "--- $1 (last $3 lines of $2)"
  tail -n "$3" "$2" | clean
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e # best effort from here on: always tear everything down
  stop_all
  # What the sourcing script started other than as a process of its own (a container).
  if declare -F before_cleanup >/dev/null; then before_cleanup; fi
  # The suite's secret check (tests/run-all.sh) scans every ironboot log it is given.
  if [ -n "${IRONBOOT_TEST_LOG_DIR:-}" ] && [ -n "$out" ] && [ -f "$out/ironboot.err" ]; then
    mkdir -p "$IRONBOOT_TEST_LOG_DIR" &&
      cp "$out/ironboot.err" "$IRONBOOT_TEST_LOG_DIR/firmware-$TAG-$P-$$.log"
  fi
  if [ "$rc" -ne 0 ] && [ -n "$out" ] && [ -d "$out" ]; then
    echo
    local why="exit $rc"
    if [ "$rc" -gt 128 ]; then why+=", killed by signal $((rc - 128))"; fi
    echo "================ $TAG test FAILED ($why); artefacts in: $out"
    for f in "${FAILS[@]}"; do echo "  - $f"; done
    if declare -F report_details >/dev/null; then report_details; fi
    echo "================ end of report ($out)"
  fi
  if [ "$TOPO_UP" = 1 ]; then "$here/topology.sh" down "$P" "$NTAPS" || true; fi
  [ -n "$state" ] && rm -rf "$state"
  if [ "$rc" -eq 0 ] && [ "${KEEP_OUT:-0}" != 1 ] && [ -n "$out" ]; then rm -rf "$out"; fi
  exit "$rc"
}
# Namespaces of this prefix left by a killed run: removed if no process is left in them.
remove_stale_namespaces() {
  local n left
  for n in lan dhcp prov; do
    if ip netns list | awk '{print $1}' | grep -qx -- "$P-$n"; then
      left=$(ip netns pids "$P-$n" | tr '\n' ' ')
      [ -z "$left" ] || setup_error "namespace $P-$n exists with processes [$left]: another run in progress? Use IBFW_PREFIX=<other> (or stop it)"
      say "removing stale namespaces of prefix $P (left over, no process in them)"
      "$here/topology.sh" down "$P"
      return 0
    fi
  done
}
# record_secret WHAT SECRET: a secret this run made up, for the suite's secret check
# (appended to $IRONBOOT_TEST_LOG_DIR/secrets.jsonl when that is set).
record_secret() {
  [ -n "${IRONBOOT_TEST_LOG_DIR:-}" ] || return 0
  mkdir -p "$IRONBOOT_TEST_LOG_DIR"
  python3 -c 'import json, sys; print(json.dumps({"what": sys.argv[1], "secret": sys.argv[2]}))' \
    "$1" "$2" >>"$IRONBOOT_TEST_LOG_DIR/secrets.jsonl"
}
# make_out_dir BASE NAME: sets out (artefacts) and state (scratch), installs the traps.
make_out_dir() {
  mkdir -p "$1"
  out=$(mktemp -d "$1/$2-$(date +%Y%m%d-%H%M%S)-XXXX")
  state=$(mktemp -d "${TMPDIR:-/tmp}/ibfw-state.XXXXXX")
  chmod 755 "$state"
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# ---------------------------------------------------------------- the LAN's servers
start_site_dhcp() {
  start site-dhcp dhcp dnsmasq -k --log-facility=- --conf-file="$here/dnsmasq-dhcp.conf" \
    --dhcp-leasefile="$state/leases" --pid-file="$state/site-dhcp.pid"
  wait_for "site DHCP server listens on UDP 67" 10 site-dhcp listening dhcp u 67
}

# marker_script TARGET: the iPXE lines printing the boot target reached, then the marker:
#   PXETEST-TARGET=TARGET
#   PXETEST-DONE uuid=U mac=M
# (${uuid} and ${net0/mac} are iPXE settings, expanded by iPXE). Two lines, because the BIOS
# console wraps at 80 columns and the marker line alone is 76 characters long.
marker_script() {
  # shellcheck disable=SC2016
  printf 'echo %s=%s\necho %s uuid=${uuid} mac=${net0/mac}' "$MARK_TARGET" "$1" "$MARK"
}
# write_inventory FILE [MATCH=VALUE TARGET]...: [default] prints the marker with
# target=default; each extra pair adds a [[machine]] matched by MATCH (mac or uuid) whose
# script prints target=TARGET.
write_inventory() {
  local file=$1
  shift
  {
    printf '[default]\nscript = """#!ipxe\n%s\n"""\n' "$(marker_script default)"
    while [ $# -ge 2 ]; do
      printf '\n[[machine]]\nname = "%s"\n%s = "%s"\nscript = """#!ipxe\n%s\n"""\n' \
        "$2" "${1%%=*}" "${1#*=}" "$(marker_script "$2")"
      shift 2
    done
  } >"$file"
}

# start_ironboot ARGS...: ironboot in PFX-prov with a fresh --state-dir and the inventory
# $state/inventory.toml; waits until ProxyDHCP (67, 4011), TFTP (69) and HTTP listen.
start_ironboot() {
  mkdir -p "$state/ironboot"
  say "ironboot: $IRONBOOT_BIN $*"
  start ironboot prov env RUST_BACKTRACE=1 NO_COLOR=1 "$IRONBOOT_BIN" "$@" \
    --state-dir "$state/ironboot" --inventory "$state/inventory.toml"
  wait_for "ironboot listens on UDP 67, 4011, 69 and TCP $API_PORT in $P-prov" 20 ironboot \
    eval "listening prov u 67 && listening prov u 4011 && listening prov u 69 && listening prov t $API_PORT"
}

# Nothing but ironboot in PFX-prov, and every service port there is ironboot's own: no
# stand-in (TFTP, HTTP) nor any other server answers for it.
check_served_by_ironboot() { # WHEN
  local pid=${PIDS[ironboot]:-} pids sock port proto owners bad=0
  pids=$(ip netns pids "$P-prov" | sort -n | xargs)
  if [ "$pids" = "$pid" ]; then ok "$1: the only process in $P-prov is ironboot (pid $pid): no stand-in"
  else fail "$1: processes in $P-prov are [$pids], want only ironboot's pid $pid (a stand-in or other server is running)"; bad=1; fi
  for sock in u:67 u:4011 u:69 t:$API_PORT; do
    proto=${sock%%:*} port=${sock#*:}
    owners=$(ip netns exec "$P-prov" ss -Hlnp"$proto" "sport = :$port" | grep -o 'pid=[0-9]*' | sort -u | xargs)
    if [ "$owners" != "pid=$pid" ]; then
      fail "$1: $([ "$proto" = u ] && echo UDP || echo TCP) port $port in $P-prov is held by [${owners:-nobody}], want ironboot (pid=$pid)"
      bad=1
    fi
  done
  [ "$bad" = 1 ] || ok "$1: UDP 67, 4011, 69 and TCP $API_PORT in $P-prov are all ironboot's sockets"
}

# api_get PATH FILE: GET $API/PATH from inside PFX-prov into FILE (fails the run if not 200).
api_get() {
  if ! ip netns exec "$P-prov" curl -sSf --max-time 10 -o "$2" "$API$1" 2>"$2.err"; then
    fail "GET $API$1 from ironboot failed: $(cat "$2.err")"
    return 1
  fi
}
# metric FILE SAMPLE: the value of SAMPLE (name with labels exactly as rendered), or 0.
metric() {
  awk -v s="$2" 'index($0, s " ") == 1 { print $2; found = 1; exit } END { if (!found) print 0 }' "$1"
}
# check_metric_at_least FILE SAMPLE MIN WHY
check_metric_at_least() {
  local v
  v=$(metric "$1" "$2")
  if [ "$v" -ge "$3" ]; then ok "/metrics $2 = $v (>= $3: $4)"
  else fail "/metrics $2 = $v, want >= $3 ($4)"; fi
}

# check_machines FILE EXACT UUID=MAC...: GET /api/v1/machines (in FILE) lists each UUID
# with exactly that MAC (and arch amd64, a boot counted, an address on the LAN); with
# EXACT=1 nothing else.
check_machines() {
  local file=$1 exact=$2 report
  shift 2
  if report=$(python3 - "$file" "$exact" "$@" <<'EOF'
import json, sys
path, exact, pairs = sys.argv[1], sys.argv[2] == "1", sys.argv[3:]
want = dict(p.split("=", 1) for p in pairs)
try:
    machines = json.load(open(path))
except ValueError as e:
    print("not JSON: %s" % e)
    sys.exit(1)
problems = []
by_uuid = {m.get("uuid"): m for m in machines}
for uuid, mac in sorted(want.items()):
    m = by_uuid.get(uuid)
    if m is None:
        problems.append("%s missing" % uuid)
        continue
    if m.get("macs") != [mac]:
        problems.append("%s has macs %s, want [%s]" % (uuid, m.get("macs"), mac))
    if m.get("arch") != "amd64":
        problems.append("%s has arch %r, want amd64" % (uuid, m.get("arch")))
    if not (m.get("boots") or 0) >= 1:
        problems.append("%s has boots %r, want >= 1" % (uuid, m.get("boots")))
    if not str(m.get("last_ip") or "").startswith("10.98.0."):
        problems.append("%s has last_ip %r, want one on 10.98.0.0/24" % (uuid, m.get("last_ip")))
extra = sorted(str(u) for u in by_uuid if u not in want)
if exact and (extra or len(machines) != len(want)):
    problems.append("%d machines listed, want exactly %d; others: %s" % (len(machines), len(want), extra))
if problems:
    print("; ".join(problems))
    sys.exit(1)
print("%d machines, all as expected" % len(machines))
EOF
  ); then ok "GET /api/v1/machines: $report"
  else fail "GET /api/v1/machines: $report (saved as $file)"; fi
}

check_ironboot_healthy() {
  if alive ironboot; then ok "ironboot is still running"
  else
    reap ironboot
    fail "ironboot is not running any more (exit status $STATUS)"
  fi
  if grep -aq 'panicked' "$out/ironboot.err"; then fail "ironboot's stderr reports a panic: $(grep -a -m1 'panicked' "$out/ironboot.err")"
  else ok "no panic in ironboot's stderr"; fi
}

# ---------------------------------------------------------------- VMs
# start_bios_vm NAME TAP MAC UUID: SeaBIOS + QEMU's e1000 iPXE ROM (package ipxe-qemu),
# serial console in $out/serial-NAME.log. graphics=off: SeaBIOS mirrors the text console,
# and so the ROM's output, to the serial port.
start_bios_vm() {
  start "qemu-$1" lan qemu-system-x86_64 -uuid "$4" -accel tcg -display none -monitor none \
    -no-reboot -serial "file:$out/serial-$1.log" \
    -netdev "tap,id=n0,ifname=$2,script=no,downscript=no" \
    -m 128 -vga none -machine graphics=off -boot n -device "e1000,netdev=n0,mac=$3"
}
# start_uefi_vm NAME TAP MAC UUID: OVMF; romfile= (empty): no iPXE option ROM, so EDK2's own
# PxeBcDxe does the PXE boot.
start_uefi_vm() {
  cp "$OVMF_VARS" "$state/vars-$1.fd"
  start "qemu-$1" lan qemu-system-x86_64 -uuid "$4" -accel tcg -display none -monitor none \
    -no-reboot -serial "file:$out/serial-$1.log" \
    -netdev "tap,id=n0,ifname=$2,script=no,downscript=no" \
    -m 512 -drive "if=pflash,format=raw,readonly=on,file=$OVMF_CODE" \
    -drive "if=pflash,format=raw,file=$state/vars-$1.fd" \
    -device "virtio-net-pci,netdev=n0,mac=$3,bootindex=1,romfile="
}

# marker_reached NAME: the marker line is on the serial console in full (up to the last
# digit of the MAC), or it started appearing 2 s ago (then check_marker_line says what is
# wrong with it). Stopping QEMU at the first sight of the marker could cut the line short.
declare -A MARK_SEEN=()
marker_reached() {
  grep -aqE "$MARK .*mac=([0-9a-f]{2}:){5}[0-9a-f]{2}" "$out/serial-$1.log" 2>/dev/null && return 0
  log_has "serial-$1.log" "$MARK" || return 1
  [ -n "${MARK_SEEN[$1]:-}" ] || MARK_SEEN[$1]=$(now_ms)
  [ $(($(now_ms) - MARK_SEEN[$1])) -ge 2000 ]
}
# marker_line NAME: the first marker line on the VM's serial console (cleaned), or empty.
marker_line() { grep -a "$MARK" "$out/serial-$1.log" 2>/dev/null | clean | head -n 1 || true; }
# check_marker_line NAME TARGET UUID MAC: the marker names this VM, and the target line
# before it names the boot target the inventory gave it.
check_marker_line() {
  local line want="uuid=$3 mac=$4" target
  line=$(marker_line "$1")
  if [ -z "$line" ]; then fail "$1: marker '$MARK' never appeared on the serial console (serial-$1.log)"
  elif [[ "$line" == *"$MARK $want"* ]]; then ok "$1: serial console: $MARK $want"
  else fail "$1: marker line is '$line', want '$MARK $want'"; fi
  target=$(grep -a "$MARK_TARGET=" "$out/serial-$1.log" 2>/dev/null | clean | head -n 1 || true)
  if [[ "$target" == *"$MARK_TARGET=$2" ]]; then ok "$1: serial console: $MARK_TARGET=$2 (the inventory's target for it)"
  else fail "$1: want '$MARK_TARGET=$2' on the serial console (the inventory's target for this machine), got '${target:-nothing}'"; fi
}

# Starts every VM of VMS (TAP, MAC, VMUUID, TIMEOUT per firmware) and waits until each
# has reached its end (the function named by $1 succeeds for it), iPXE gave up, QEMU
# exited or its limit passed; fills the caller's T0, RESULT and ELAPSED.
declare -A T0=() RESULT=() ELAPSED=() # per firmware: start time, outcome, time taken
run_vms_until() { # DONE_FN
  local done_fn=$1 fw el gave_up pending
  for fw in "${VMS[@]}"; do
    T0[$fw]=$(now_ms)
    "start_${fw}_vm" "$fw" "${TAP[$fw]}" "${MAC[$fw]}" "${VMUUID[$fw]}"
    say "$fw VM started (${TAP[$fw]}, ${MAC[$fw]}, uuid ${VMUUID[$fw]}, limit ${TIMEOUT[$fw]}s)"
  done
  pending=${#VMS[@]}
  while [ "$pending" -gt 0 ]; do
    for fw in "${VMS[@]}"; do
      [ -z "${RESULT[$fw]:-}" ] || continue
      el=$(($(now_ms) - T0[$fw]))
      # Gave up is looked for first: iPXE prints it after the marker, so once it is there
      # the marker line, if any, is complete.
      gave_up=0
      if log_has "serial-$fw.log" "$IPXE_GAVE_UP"; then gave_up=1; fi
      if "$done_fn" "$fw"; then RESULT[$fw]=reached
      elif [ "$gave_up" = 1 ]; then RESULT[$fw]="iPXE gave up ('$IPXE_GAVE_UP' on the console)"
      elif ! alive "qemu-$fw"; then RESULT[$fw]="QEMU exited"
      elif [ "$el" -ge $((TIMEOUT[$fw] * 1000)) ]; then RESULT[$fw]="timeout"
      else continue; fi
      ELAPSED[$fw]=$el
      say "$fw VM: ${RESULT[$fw]} after $(secs "$el") s"
      stop "qemu-$fw"
      pending=$((pending - 1))
    done
    sleep 0.2
  done
}
