#!/bin/bash
# Real-firmware ProxyDHCP test of ironboot.
#
# Builds an isolated LAN of network namespaces (topology.sh), runs a plain site DHCP server
# (dnsmasq, 10.98.0.2) and ironboot as the ProxyDHCP server (10.98.0.3), boots two real
# network-boot firmwares under QEMU (TCG) at once, captures each VM's tap and checks with
# tshark that the firmware accepted ironboot's offer and fetched what it advertised:
#   bios: SeaBIOS + QEMU's e1000 iPXE ROM (sends 77 "iPXE" + 175). ironboot must OFFER
#         (src 10.98.0.3:67, option 54 = 10.98.0.3, option 43, boot file
#         http://10.98.0.3:50042/ipxe/init.ipxe); the VM must GET /ipxe/init.ipxe from
#         10.98.0.3:50042 and print the script's marker on its serial console.
#   uefi: OVMF with EDK2's own PxeBcDxe (virtio-net, romfile=; arch 7). ironboot must OFFER
#         (54 + 43); the VM must send the ProxyDHCP REQUEST to 10.98.0.3:4011 from port 4011,
#         ironboot must ACK it from 4011 back to port 4011, and the VM must send a TFTP RRQ for
#         snp.efi to 10.98.0.3:69. With the TFTP stand-in (default) EDK2 then runs iPXE
#         (snp.efi), which DHCPs again, GETs init.ipxe and prints the marker too.
# Stand-ins for what ironboot does not serve yet (both in 10.98.0.3's namespace):
#   HTTP on 10.98.0.3:50042 (python3 http.server) and TFTP on 10.98.0.3:69 (dnsmasq TFTP-only,
#   dnsmasq-tftp.conf). STANDIN_HTTP / STANDIN_TFTP: auto (default: started only if ironboot
#   does not listen on that port itself once it is up), 1 (always), 0 (never).
#
# usage: [IRONBOOT_BIN=path/to/ironboot] tests/firmware/run.sh        (as root)
# environment:
#   IRONBOOT_BIN        ironboot binary (required unless PROXY_UNDER_TEST=dnsmasq)
#   IRONBOOT_ARGS       its arguments (default "--dhcp-proxy-iface-or-ip eth0 --debug"; no
#                       --api-advertise-address on purpose: it must pick 10.98.0.3 by itself)
#   PROXY_UNDER_TEST    ironboot (default) | dnsmasq (debugging aid: dnsmasq-proxy.conf stands
#                       in for ironboot to check the rig itself; its answers differ: see
#                       dnsmasq-proxy.conf and README.md)
#   IBFW_VMS            which VMs to boot (default "bios uefi"; they boot in parallel)
#   BIOS_TIMEOUT/UEFI_TIMEOUT  seconds until the marker (default 60/120)
#   UEFI_EXPECT_MARKER  1: the UEFI VM must reach the marker (default: 1 if something serves
#                       TFTP on 10.98.0.3:69); 0: it is done once its RRQ for snp.efi is captured
#   IBFW_PREFIX         namespace prefix (default ibfw); IBFW_OUT_BASE: where the per-run
#                       out dir goes (default <repo>/target/firmware-test); KEEP_OUT=1 keeps it
#                       after a pass (it is always kept after a failure)
# Exit status: 0 pass, 1 assertion failed, 2 prerequisites missing / bad setup.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
export PATH="$PATH:/usr/sbin:/sbin" # dnsmasq, tcpdump live there; plain user PATHs lack it
repo=$(cd "$here/../.." && pwd)

P=${IBFW_PREFIX:-ibfw}
PROXY=${PROXY_UNDER_TEST:-ironboot}
read -r -a VMS <<<"${IBFW_VMS:-bios uefi}"
STANDIN_HTTP=${STANDIN_HTTP:-auto}
STANDIN_TFTP=${STANDIN_TFTP:-auto}
UEFI_EXPECT_MARKER=${UEFI_EXPECT_MARKER:-} # decided once we know whether TFTP is served
read -r -a IRONBOOT_ARGV <<<"${IRONBOOT_ARGS:---dhcp-proxy-iface-or-ip eth0 --debug}"
KEEP_OUT=${KEEP_OUT:-0}

PROV_IP=10.98.0.3
API_PORT=50042
BOOT_PATH=/ipxe/init.ipxe
BOOT_URL="http://$PROV_IP:$API_PORT$BOOT_PATH"
EFI_NBP=snp.efi
MARK=PXETEST-DONE
IPXE_GAVE_UP="No more network devices" # iPXE's last words when autoboot failed: stop early
OVMF_CODE=/usr/share/OVMF/OVMF_CODE_4M.fd
OVMF_VARS=/usr/share/OVMF/OVMF_VARS_4M.fd
SNPONLY=/usr/lib/ipxe/snponly.efi

declare -A TAP=([bios]=tap0 [uefi]=tap1)
declare -A MAC=([bios]=52:54:00:1b:f0:01 [uefi]=52:54:00:1b:f0:02)
declare -A VMUUID=([bios]=1b0f0000-0000-4000-8000-000000000001 [uefi]=1b0f0000-0000-4000-8000-000000000002)
declare -A TIMEOUT=([bios]=${BIOS_TIMEOUT:-60} [uefi]=${UEFI_TIMEOUT:-120})

declare -A PIDS=()   # name -> PID of every process this script started
ORDER=()             # start order (stopped in reverse)
FAILS=()
TOPO_UP=0
state=""
out=""

say() { echo "[firmware] $*"; }
fail() { FAILS+=("$*"); echo "[firmware] FAIL: $*"; }
ok() { echo "[firmware] ok: $*"; }
setup_error() { echo "[firmware] SETUP ERROR: $*" >&2; exit 2; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
secs() { printf '%d.%01d' $(($1 / 1000)) $((($1 % 1000) / 100)); }
# Printable ASCII only (the serial logs are full of terminal escapes).
clean() { sed -e 's/\x1b\[[0-9;?=]*[A-Za-z]//g' | tr -cd '\11\12\40-\176'; }

# ---------------------------------------------------------------- prerequisites
check_prereqs() {
  local missing=() pkgs=() c f
  [ "$(id -u)" = 0 ] || setup_error "must run as root (network namespaces, taps, captures): sudo -E $0"
  local -A cmd_pkg=([ip]=iproute2 [ss]=iproute2 [qemu-system-x86_64]=qemu-system-x86
    [dnsmasq]=dnsmasq-base [tcpdump]=tcpdump [tshark]=tshark [python3]=python3)
  local -A file_pkg=([$OVMF_CODE]=ovmf [$OVMF_VARS]=ovmf
    [/usr/lib/ipxe/qemu/efi-e1000.rom]=ipxe-qemu [/usr/share/seabios/bios-256k.bin]=seabios
    [$SNPONLY]=ipxe)
  for c in "${!cmd_pkg[@]}"; do
    command -v "$c" >/dev/null || { missing+=("command $c"); pkgs+=("${cmd_pkg[$c]}"); }
  done
  for f in "${!file_pkg[@]}"; do
    [ -e "$f" ] || { missing+=("file $f"); pkgs+=("${file_pkg[$f]}"); }
  done
  if [ ${#missing[@]} -gt 0 ]; then
    setup_error "missing: ${missing[*]}
  install: sudo tests/install-prereqs.sh
       or: apt-get install -y --no-install-recommends $(printf '%s\n' "${pkgs[@]}" | sort -u | tr '\n' ' ')"
  fi
  case $PROXY in
  ironboot)
    [ -n "${IRONBOOT_BIN:-}" ] || setup_error "IRONBOOT_BIN is not set (cargo build && IRONBOOT_BIN=target/debug/ironboot $0)"
    [ -x "$IRONBOOT_BIN" ] || setup_error "IRONBOOT_BIN=$IRONBOOT_BIN is not an executable file"
    IRONBOOT_BIN=$(cd "$(dirname "$IRONBOOT_BIN")" && pwd)/$(basename "$IRONBOOT_BIN")
    ;;
  dnsmasq) ;;
  *) setup_error "PROXY_UNDER_TEST must be ironboot or dnsmasq, not '$PROXY'" ;;
  esac
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
report() { # EXIT_STATUS
  local fw
  echo
  local why="exit $1"
  if [ "$1" -gt 128 ]; then why+=", killed by signal $(($1 - 128))"; fi
  echo "================ real-firmware test FAILED ($why); artefacts in: $out"
  for f in "${FAILS[@]}"; do echo "  - $f"; done
  if [ "$PROXY" = ironboot ]; then
    tail_file "ironboot stderr" "$out/ironboot.err" 60
    tail_file "ironboot stdout" "$out/ironboot.out" 20
  else
    tail_file "dnsmasq proxy log" "$out/proxy-dnsmasq.err" 40
  fi
  tail_file "site DHCP server (dnsmasq) log" "$out/site-dhcp.err" 25
  [ -e "$out/standin-http.err" ] && tail_file "HTTP stand-in log" "$out/standin-http.err" 10
  [ -e "$out/standin-tftp.err" ] && tail_file "TFTP stand-in log" "$out/standin-tftp.err" 10
  for fw in "${VMS[@]}"; do
    tail_file "$fw VM serial console" "$out/serial-$fw.log" 30
    tail_file "$fw QEMU output" "$out/qemu-$fw.err" 10
    if [ -s "$out/$fw.pcap" ]; then
      echo "--- $fw capture on ${TAP[$fw]} (tshark summary, no ICMPv6/ARP, TFTP data elided)"
      tshark -r "$out/$fw.pcap" -d "tcp.port==$API_PORT,http" \
        -Y 'not icmpv6 && not arp && not (tftp.opcode==3 || tftp.opcode==4) && not (tcp && !http && tcp.len==0)' \
        2>/dev/null | head -n 80 || true
    else
      echo "--- $fw capture: (none)"
    fi
  done
  echo "================ end of report ($out)"
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e # best effort from here on: always tear everything down
  stop_all
  if [ "$rc" -ne 0 ] && [ -n "$out" ] && [ -d "$out" ]; then report "$rc"; fi
  if [ "$TOPO_UP" = 1 ]; then "$here/topology.sh" down "$P" || true; fi
  [ -n "$state" ] && rm -rf "$state"
  if [ "$rc" -eq 0 ] && [ "$KEEP_OUT" != 1 ] && [ -n "$out" ]; then rm -rf "$out"; fi
  exit "$rc"
}

# ---------------------------------------------------------------- pcap assertions
# tsh PCAP FILTER FIELD...: one line per matching packet, fields separated by '|'.
tsh() {
  local pcap=$1 filter=$2 f args=()
  shift 2
  for f in "$@"; do args+=(-e "$f"); done
  tshark -r "$pcap" -d "tcp.port==$API_PORT,http" -Y "$filter" -T fields -E separator='|' "${args[@]}" 2>/dev/null || true
}

# OFFER from 10.98.0.3:67 to this VM's MAC: option 54 = 10.98.0.3, option 43 present
# (unless $2 = no43), and for the iPXE ROM under ironboot the HTTP boot file.
check_offer() {
  local fw=$1 want43=${2:-yes} pcap="$out/$1.pcap" mac=${MAC[$1]} rows sid types file opt67
  rows=$(tsh "$pcap" "ip.src==$PROV_IP && udp.srcport==67 && dhcp.option.dhcp==2 && dhcp.hw.mac_addr==$mac" \
    dhcp.option.dhcp_server_id dhcp.option.type dhcp.file dhcp.option.bootfile_name)
  if [ -z "$rows" ]; then
    fail "$fw: no DHCPOFFER from $PROV_IP:67 for $mac captured on ${TAP[$fw]}: $PROXY did not answer the firmware's DISCOVER (see its log and the capture)"
    return
  fi
  IFS='|' read -r sid types file opt67 <<<"$(head -n 1 <<<"$rows")"
  if [ "$sid" = "$PROV_IP" ]; then ok "$fw: OFFER from $PROV_IP:67 with option 54 = $sid"
  else fail "$fw: OFFER from $PROV_IP:67 has option 54 (server id) = '${sid:-absent}', want $PROV_IP"; fi
  if [ "$want43" = yes ]; then
    if [[ ",$types," == *,43,* ]]; then ok "$fw: OFFER carries option 43 (options: $types)"
    else fail "$fw: OFFER from $PROV_IP:67 has no option 43 (PXE vendor options); options: $types"; fi
  fi
  if [ "$fw" = bios ] && [ "$PROXY" = ironboot ]; then
    if [ "$file" = "$BOOT_URL" ] || [ "$opt67" = "$BOOT_URL" ]; then
      ok "$fw: OFFER boot file = $BOOT_URL (file field '${file}', option 67 '${opt67}')"
    else
      fail "$fw: OFFER to the iPXE ROM has boot file '${file}' / option 67 '${opt67}', want $BOOT_URL (advertise address picked wrongly?)"
    fi
  fi
}

check_http_get() { # FW [WHY]
  local fw=$1 why=${2:-} mac=${MAC[$1]} uris
  uris=$(tsh "$out/$fw.pcap" "eth.src==$mac && ip.dst==$PROV_IP && tcp.dstport==$API_PORT && http.request.method==\"GET\"" http.request.uri)
  if grep -qxF "$BOOT_PATH" <<<"$uris"; then ok "$fw: VM sent HTTP GET $BOOT_PATH to $PROV_IP:$API_PORT${why:+ ($why)}"
  else fail "$fw: no HTTP GET $BOOT_PATH from $mac to $PROV_IP:$API_PORT in the capture${why:+ ($why)}; GETs seen: [$(tr '\n' ' ' <<<"$uris")]"; fi
}

check_tftp_rrq() { # FW FILE
  local fw=$1 file=$2 mac=${MAC[$1]} files
  files=$(tsh "$out/$fw.pcap" "eth.src==$mac && ip.dst==$PROV_IP && udp.dstport==69 && tftp.opcode==1" tftp.source_file)
  if grep -qxF "$file" <<<"$files"; then ok "$fw: VM sent TFTP RRQ for $file to $PROV_IP:69"
  else fail "$fw: no TFTP read request for '$file' from $mac to $PROV_IP:69 in the capture; RRQs seen: [$(tr '\n' ' ' <<<"$files")]"; fi
}

# EDK2's ProxyDHCP step: REQUEST to 10.98.0.3:4011 from port 4011, ACK from 4011 to port 4011.
check_4011() {
  local fw=$1 pcap="$out/$1.pcap" mac=${MAC[$1]} req other ack ackother
  req=$(tsh "$pcap" "eth.src==$mac && ip.dst==$PROV_IP && udp.dstport==4011 && udp.srcport==4011 && dhcp.option.dhcp==3" frame.number)
  if [ -n "$req" ]; then ok "$fw: VM sent the ProxyDHCP REQUEST to $PROV_IP:4011 from port 4011 (i.e. it accepted the OFFER)"
  else
    other=$(tsh "$pcap" "eth.src==$mac && udp.dstport==4011" ip.dst udp.srcport | tr '\n' ' ')
    fail "$fw: no DHCPREQUEST from $mac port 4011 to $PROV_IP:4011: the firmware did not accept $PROXY's OFFER (other packets to port 4011: [${other}])"
    return
  fi
  ack=$(tsh "$pcap" "ip.src==$PROV_IP && udp.srcport==4011 && udp.dstport==4011 && dhcp.option.dhcp==5 && dhcp.hw.mac_addr==$mac" ip.dst dhcp.file)
  if [ -n "$ack" ]; then ok "$fw: $PROXY ACKed from $PROV_IP:4011 to port 4011 (dst|file: $(head -n 1 <<<"$ack"))"
  else
    ackother=$(tsh "$pcap" "ip.src==$PROV_IP && udp.srcport==4011 && dhcp.hw.mac_addr==$mac" ip.dst udp.dstport dhcp.option.dhcp | tr '\n' ' ')
    fail "$fw: no DHCPACK from $PROV_IP:4011 to port 4011 of $mac (EDK2 sent its REQUEST from 4011 and listens there); replies from 4011 seen (dst|port|type): [${ackother}]"
  fi
}

# Not asserted: whether the iPXE ROM also did a ProxyDHCP round on port 4011 (it does when
# the offer comes from a separate server; without an ACK it falls back to the offer).
info_4011() {
  local fw=$1 mac=${MAC[$1]} req ack
  req=$(tsh "$out/$fw.pcap" "eth.src==$mac && ip.dst==$PROV_IP && udp.dstport==4011 && dhcp.option.dhcp==3" udp.srcport | sort | uniq -c | xargs)
  ack=$(tsh "$out/$fw.pcap" "ip.src==$PROV_IP && udp.srcport==4011 && dhcp.option.dhcp==5 && dhcp.hw.mac_addr==$mac" udp.dstport | sort | uniq -c | xargs)
  say "info (not asserted): $fw: REQUESTs to $PROV_IP:4011 [count srcport: ${req:-none}], ACKs from $PROV_IP:4011 [count dstport: ${ack:-none}]"
}

check_marker() {
  local fw=$1 line
  line=$(grep -a "$MARK" "$out/serial-$fw.log" 2>/dev/null | clean | head -n 1 || true)
  if [ -z "$line" ]; then
    local hint=""
    if log_has "serial-$fw.log" "Booting from PXE menu"; then
      hint="; iPXE printed 'Booting from PXE menu': the offer to iPXE has a PXE boot menu (option 43 sub-option 9) and its discovery control (sub-option 6) lacks PXEBS_SKIP (0x08), so iPXE ignores the boot file and tries PXE boot-server discovery, which EFI builds of iPXE do not have (pxe_menu_boot = -ENOTSUP)"
    fi
    fail "$fw: marker '$MARK' never appeared on the serial console (serial-$fw.log)$hint"
  elif [[ "$line" == *"mac=${MAC[$fw]}"* ]]; then ok "$fw: serial console: $MARK${line#*"$MARK"}"
  else fail "$fw: marker line lacks mac=${MAC[$fw]}: $line"; fi
}

# ---------------------------------------------------------------- VMs
start_vm() {
  local fw=$1 tap=${TAP[$1]} mac=${MAC[$1]} dev
  local common=(-uuid "${VMUUID[$fw]}" -accel tcg -display none -monitor none -no-reboot
    -serial "file:$out/serial-$fw.log" -netdev "tap,id=n0,ifname=$tap,script=no,downscript=no")
  if [ "$fw" = uefi ]; then
    cp "$OVMF_VARS" "$state/vars-uefi.fd"
    # romfile= (empty): no iPXE option ROM, so EDK2's own PxeBcDxe does the PXE boot.
    dev=(-m 512 -drive "if=pflash,format=raw,readonly=on,file=$OVMF_CODE"
      -drive "if=pflash,format=raw,file=$state/vars-uefi.fd"
      -device "virtio-net-pci,netdev=n0,mac=$mac,bootindex=1,romfile=")
  else
    # QEMU's default e1000 option ROM is iPXE (package ipxe-qemu). graphics=off: SeaBIOS
    # mirrors the text console, and so the ROM's output, to the serial port.
    dev=(-m 128 -vga none -machine graphics=off -boot n -device "e1000,netdev=n0,mac=$mac")
  fi
  start "qemu-$fw" lan qemu-system-x86_64 "${common[@]}" "${dev[@]}"
}

# Done when the marker is on the serial console; for uefi without the marker expectation,
# when the RRQ for snp.efi is in the capture (checked at most every 2 s).
declare -A LASTPOLL=()
vm_done() {
  local fw=$1 t
  log_has "serial-$fw.log" "$MARK" && return 0
  if [ "$fw" = uefi ] && [ "$UEFI_EXPECT_MARKER" != 1 ]; then
    t=$(now_ms)
    [ $((t - ${LASTPOLL[$fw]:-0})) -ge 2000 ] || return 1
    LASTPOLL[$fw]=$t
    [ -n "$(tsh "$out/$fw.pcap" "tftp.opcode==1 && tftp.source_file==\"$EFI_NBP\"" frame.number)" ] && return 0
  fi
  return 1
}

# ================================================================= main
check_prereqs
for fw in "${VMS[@]}"; do
  [ -n "${TAP[$fw]:-}" ] || setup_error "IBFW_VMS: unknown VM '$fw' (known: bios uefi)"
done

for n in lan dhcp prov; do
  if ip netns list | awk '{print $1}' | grep -qx -- "$P-$n"; then
    left=$(ip netns pids "$P-$n" | tr '\n' ' ')
    [ -z "$left" ] || setup_error "namespace $P-$n exists with processes [$left]: another run in progress? Use IBFW_PREFIX=<other> (or stop it)"
    say "removing stale namespaces of prefix $P (left over, no process in them)"
    "$here/topology.sh" down "$P"
  fi
done

base=${IBFW_OUT_BASE:-$repo/target/firmware-test}
mkdir -p "$base"
out=$(mktemp -d "$base/run-$(date +%Y%m%d-%H%M%S)-XXXX")
state=$(mktemp -d "${TMPDIR:-/tmp}/ibfw-state.XXXXXX")
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
say "proxy under test: $PROXY; VMs: ${VMS[*]}; out dir: $out"

# Files served by the stand-ins (and by dnsmasq in PROXY_UNDER_TEST=dnsmasq mode). dnsmasq
# drops root for nobody, so the trees must be world-readable.
chmod 755 "$state"
mkdir -p "$state/www/ipxe" "$state/tftp/ipxe"
cp "$here/init.ipxe" "$state/www/ipxe/init.ipxe"
cp "$here/init.ipxe" "$state/tftp/ipxe/init.ipxe"
cp "$SNPONLY" "$state/tftp/$EFI_NBP"
chmod -R a+rX "$state/www" "$state/tftp"

"$here/topology.sh" up "$P" 2
TOPO_UP=1

start site-dhcp dhcp dnsmasq -k --log-facility=- --conf-file="$here/dnsmasq-dhcp.conf" \
  --dhcp-leasefile="$state/leases" --pid-file="$state/site-dhcp.pid"
wait_for "site DHCP server listens on UDP 67" 10 site-dhcp listening dhcp u 67

if [ "$PROXY" = ironboot ]; then
  say "ironboot: $IRONBOOT_BIN ${IRONBOOT_ARGV[*]}"
  start ironboot prov env RUST_BACKTRACE=1 "$IRONBOOT_BIN" "${IRONBOOT_ARGV[@]}"
  wait_for "ironboot listens on UDP 67 and 4011 in $P-prov" 15 ironboot \
    eval 'listening prov u 67 && listening prov u 4011'
  sleep 1 # let it open its other listeners (TFTP, HTTP) before looking for them
else
  start proxy-dnsmasq prov dnsmasq -k --log-facility=- --conf-file="$here/dnsmasq-proxy.conf" \
    --tftp-root="$state/tftp" --pid-file="$state/proxy.pid"
  wait_for "dnsmasq proxy listens on UDP 67" 10 proxy-dnsmasq listening prov u 67
fi
# standin_wanted SETTING PROTO PORT WHAT: whether to start the stand-in for PORT.
standin_wanted() {
  case $1 in
  0) return 1 ;;
  1) return 0 ;;
  auto)
    if listening prov "$2" "$3"; then
      say "$PROXY already listens on $4 port $3: no stand-in"
      return 1
    fi
    return 0
    ;;
  *) setup_error "STANDIN_* must be auto, 0 or 1, not '$1'" ;;
  esac
}
if standin_wanted "$STANDIN_TFTP" u 69 TFTP; then
  start standin-tftp prov dnsmasq -k --log-facility=- --conf-file="$here/dnsmasq-tftp.conf" \
    --tftp-root="$state/tftp" --pid-file="$state/standin-tftp.pid"
  wait_for "TFTP stand-in listens on UDP 69" 10 standin-tftp listening prov u 69
  say "stand-in: TFTP on $PROV_IP:69 (dnsmasq) serving $EFI_NBP = $SNPONLY"
fi
if standin_wanted "$STANDIN_HTTP" t "$API_PORT" HTTP; then
  start standin-http prov python3 -u -m http.server "$API_PORT" --bind "$PROV_IP" --directory "$state/www"
  wait_for "HTTP stand-in listens on TCP $API_PORT" 10 standin-http listening prov t "$API_PORT"
  say "stand-in: HTTP on $PROV_IP:$API_PORT (python3 http.server) serving $BOOT_PATH"
fi
if [ -z "$UEFI_EXPECT_MARKER" ]; then
  if listening prov u 69; then UEFI_EXPECT_MARKER=1; else UEFI_EXPECT_MARKER=0; fi
fi
say "uefi VM goal: $([ "$UEFI_EXPECT_MARKER" = 1 ] && echo "marker on its console (via snp.efi = iPXE)" || echo "TFTP RRQ for $EFI_NBP")"

for fw in "${VMS[@]}"; do
  start "tcpdump-$fw" lan tcpdump -Z root -n -U -i "${TAP[$fw]}" -w "$out/$fw.pcap"
  wait_for "tcpdump on ${TAP[$fw]} is listening" 10 "tcpdump-$fw" log_has "tcpdump-$fw.err" "listening on"
done

declare -A T0=() RESULT=() ELAPSED=()
for fw in "${VMS[@]}"; do
  T0[$fw]=$(now_ms)
  start_vm "$fw"
  say "$fw VM started (${TAP[$fw]}, ${MAC[$fw]}, limit ${TIMEOUT[$fw]}s)"
done
pending=${#VMS[@]}
while [ "$pending" -gt 0 ]; do
  for fw in "${VMS[@]}"; do
    [ -z "${RESULT[$fw]:-}" ] || continue
    el=$(($(now_ms) - T0[$fw]))
    if vm_done "$fw"; then RESULT[$fw]=reached
    elif log_has "serial-$fw.log" "$IPXE_GAVE_UP" && ! vm_done "$fw"; then
      RESULT[$fw]="iPXE gave up ('$IPXE_GAVE_UP' on the console)"
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
sleep 0.3 # let the last replies reach the captures
for fw in "${VMS[@]}"; do stop "tcpdump-$fw"; done

# ---------------------------------------------------------------- assertions
for fw in "${VMS[@]}"; do
  [ "${RESULT[$fw]}" = reached ] || fail "$fw VM: ${RESULT[$fw]} after $(secs "${ELAPSED[$fw]}") s (limit ${TIMEOUT[$fw]} s) without reaching its goal"
  case $fw in
  bios)
    check_offer bios
    if [ "$PROXY" = ironboot ]; then check_http_get bios
    else check_tftp_rrq bios "${BOOT_PATH#/}"; fi # dnsmasq hands the iPXE ROM a TFTP menu item
    check_marker bios
    info_4011 bios
    ;;
  uefi)
    if [ "$PROXY" = ironboot ]; then check_offer uefi; else check_offer uefi no43; fi
    check_4011 uefi
    check_tftp_rrq uefi "$EFI_NBP"
    if [ "$UEFI_EXPECT_MARKER" = 1 ]; then
      if [ "$PROXY" = ironboot ]; then check_http_get uefi "iPXE from $EFI_NBP, after its own DHCP round"
      else check_tftp_rrq uefi "${BOOT_PATH#/}"; fi
      check_marker uefi
    fi
    ;;
  esac
done

if [ "$PROXY" = ironboot ]; then
  if alive ironboot; then ok "ironboot is still running"
  else
    reap ironboot
    fail "ironboot is not running any more (exit status $STATUS)"
  fi
  if grep -aq 'panicked' "$out/ironboot.err"; then fail "ironboot's stderr reports a panic: $(grep -a -m1 'panicked' "$out/ironboot.err")"
  else ok "no panic in ironboot's stderr"; fi
else
  if alive proxy-dnsmasq; then ok "dnsmasq proxy is still running"
  else fail "dnsmasq proxy is not running any more"; fi
fi

for fw in "${VMS[@]}"; do say "timing: $fw VM ${RESULT[$fw]} after $(secs "${ELAPSED[$fw]}") s"; done
if [ ${#FAILS[@]} -gt 0 ]; then exit 1; fi
say "PASS ($PROXY; ${VMS[*]})"
