#!/bin/bash
# Real-firmware test of ironboot: PXE boot end to end, served by ironboot alone.
#
# Builds an isolated LAN of network namespaces (topology.sh), runs a plain site DHCP server
# (dnsmasq, 10.98.0.2) and ironboot (10.98.0.3: ProxyDHCP, TFTP, HTTP; nothing else runs in
# its namespace), boots real network-boot firmware under QEMU (TCG) at once, captures each
# VM's tap and checks with tshark, and through ironboot's own HTTP API, that each machine
# went the whole way:
#   bios: SeaBIOS + QEMU's e1000 iPXE ROM (sends 77 "iPXE" + 175). ironboot must OFFER
#         (src 10.98.0.3:67, option 54 = 10.98.0.3, option 43, boot file
#         http://10.98.0.3:50042/ipxe/init.ipxe); the VM must GET /ipxe/init.ipxe, then
#         /ipxe/boot.ipxe?uuid=<its uuid>&mac=<its mac>, and print the marker of the
#         inventory's [default] target on its serial console.
#   uefi: OVMF with EDK2's own PxeBcDxe (virtio-net, romfile=; arch 7). ironboot must OFFER
#         (54 + 43); the VM must send the ProxyDHCP REQUEST to 10.98.0.3:4011 from port 4011,
#         ironboot must ACK it from 4011 back to port 4011; the VM must read snp.efi over
#         TFTP from ironboot: RRQ to 10.98.0.3:69, OACK blksize=1468 windowsize=4, DATA from
#         10.98.0.3 from a transfer port (port 69 with --tftp-single-port), the last block
#         acknowledged. snp.efi (iPXE) then DHCPs again, GETs init.ipxe and boot.ipxe and
#         prints the marker of its own [[machine]] entry (matched by MAC).
# Then: GET /metrics and /api/v1/machines from ironboot agree (every VM recorded with its
# MAC), ironboot still runs, its stderr has no panic, and it was alone in its namespace
# holding UDP 67/4011/69 and TCP 50042 (no stand-in of any kind) from start to end.
#
# usage: IRONBOOT_BIN=path/to/ironboot tests/firmware/run.sh        (as root)
# environment:
#   IRONBOOT_BIN        ironboot binary (required unless PROXY_UNDER_TEST=dnsmasq)
#   IRONBOOT_ARGS       its arguments (default "--dhcp-proxy-iface-or-ip eth0 --debug"; no
#                       --api-advertise-address on purpose: it must pick 10.98.0.3 by itself).
#                       run.sh adds --state-dir and --inventory (both in its scratch dir).
#                       With --tftp-single-port in them, DATA must come from port 69.
#   PROXY_UNDER_TEST    ironboot (default) | dnsmasq (debugging aid: dnsmasq-proxy.conf stands
#                       in for ironboot to check the rig itself; its answers differ: see
#                       dnsmasq-proxy.conf and README.md)
#   IBFW_VMS            which VMs to boot (default "bios uefi"; they boot in parallel)
#   BIOS_TIMEOUT/UEFI_TIMEOUT  seconds until the marker (default 60/120)
#   IBFW_PREFIX         namespace prefix (default ibfw); IBFW_OUT_BASE: where the per-run
#                       out dir goes (default <repo>/target/firmware-test); KEEP_OUT=1 keeps it
#                       after a pass (it is always kept after a failure)
# Exit status: 0 pass, 1 assertion failed, 2 prerequisites missing / bad setup.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
export PATH="$PATH:/usr/sbin:/sbin" # dnsmasq, tcpdump live there; plain user PATHs lack it
repo=$(cd "$here/../.." && pwd)
TAG=firmware
P=${IBFW_PREFIX:-ibfw}
out=""
state=""
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"

PROXY=${PROXY_UNDER_TEST:-ironboot}
read -r -a VMS <<<"${IBFW_VMS:-bios uefi}"
read -r -a IRONBOOT_ARGV <<<"${IRONBOOT_ARGS:---dhcp-proxy-iface-or-ip eth0 --debug}"

BOOT_PATH=/ipxe/init.ipxe
BOOT_URL="$API$BOOT_PATH"
EFI_NBP=snp.efi
EDK2_BLKSIZE=1468 # what EDK2 asks for (and ironboot's default maximum): the OACK must say so
EDK2_WINDOWSIZE=4
OVMF_CODE=/usr/share/OVMF/OVMF_CODE_4M.fd
OVMF_VARS=/usr/share/OVMF/OVMF_VARS_4M.fd

declare -A TAP=([bios]=tap0 [uefi]=tap1)
declare -A MAC=([bios]=52:54:00:1b:f0:01 [uefi]=52:54:00:1b:f0:02)
declare -A VMUUID=([bios]=1b0f0000-0000-4000-8000-000000000001 [uefi]=1b0f0000-0000-4000-8000-000000000002)
declare -A TIMEOUT=([bios]=${BIOS_TIMEOUT:-60} [uefi]=${UEFI_TIMEOUT:-120})
# The inventory's target each VM must reach: bios is unknown to the inventory ([default]),
# uefi has a [[machine]] entry of its own, matched by its MAC.
declare -A TARGET=([bios]=default [uefi]=by-mac)

SINGLE_PORT=0
for a in "${IRONBOOT_ARGV[@]}"; do
  case $a in --tftp-single-port | --tftp-single-port=true) SINGLE_PORT=1 ;; esac
done

report_details() {
  local fw
  if [ "$PROXY" = ironboot ]; then
    tail_file "ironboot stderr" "$out/ironboot.err" 60
    tail_file "ironboot stdout" "$out/ironboot.out" 20
  else
    tail_file "dnsmasq proxy log" "$out/proxy-dnsmasq.err" 40
  fi
  tail_file "site DHCP server (dnsmasq) log" "$out/site-dhcp.err" 25
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
}

# ---------------------------------------------------------------- pcap assertions
# tsh PCAP FILTER FIELD...: one line per matching packet, fields separated by '|' (several
# occurrences of a field in one packet are separated by ',').
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

# The VM's HTTP GETs to ironboot: init.ipxe, then boot.ipxe naming this VM's UUID and MAC.
check_http_gets() { # FW WHY
  local fw=$1 why=$2 mac=${MAC[$1]} uris boot
  uris=$(tsh "$out/$fw.pcap" "eth.src==$mac && ip.dst==$PROV_IP && tcp.dstport==$API_PORT && http.request.method==\"GET\"" http.request.uri)
  if grep -qxF "$BOOT_PATH" <<<"$uris"; then ok "$fw: VM sent HTTP GET $BOOT_PATH to $PROV_IP:$API_PORT ($why)"
  else fail "$fw: no HTTP GET $BOOT_PATH from $mac to $PROV_IP:$API_PORT in the capture ($why); GETs seen: [$(tr '\n' ' ' <<<"$uris")]"; fi
  boot="/ipxe/boot.ipxe?uuid=${VMUUID[$fw]}&mac=${mac//:/-}&"
  if grep -qF "$boot" <<<"$uris"; then ok "$fw: VM sent HTTP GET ${boot}... (init.ipxe chained to its boot script)"
  else fail "$fw: no HTTP GET ${boot}... from $mac in the capture; GETs seen: [$(tr '\n' ' ' <<<"$uris")]"; fi
}

check_tftp_rrq() { # FW FILE
  local fw=$1 file=$2 mac=${MAC[$1]} files
  files=$(tsh "$out/$fw.pcap" "eth.src==$mac && ip.dst==$PROV_IP && udp.dstport==69 && tftp.opcode==1" tftp.source_file)
  if grep -qxF "$file" <<<"$files"; then ok "$fw: VM sent TFTP RRQ for $file to $PROV_IP:69"
  else fail "$fw: no TFTP read request for '$file' from $mac to $PROV_IP:69 in the capture; RRQs seen: [$(tr '\n' ' ' <<<"$files")]"; fi
}

# The transfer of snp.efi, served by ironboot: an OACK granting EDK2's blksize and
# windowsize, DATA from 10.98.0.3 from a transfer port (69 in single-port mode), and the
# VM's ACK of the last block.
check_tftp_served() { # FW
  local fw=$1 pcap="$out/$1.pcap" mac=${MAC[$1]} oacks granted="" line port names values
  local -a n v
  local i ports last want_last blk=$EDK2_BLKSIZE
  oacks=$(tsh "$pcap" "ip.src==$PROV_IP && eth.dst==$mac && tftp.opcode==6" udp.srcport tftp.option.name tftp.option.value)
  while IFS='|' read -r port names values; do
    [ -n "$port" ] || continue
    IFS=, read -r -a n <<<"$names"
    IFS=, read -r -a v <<<"$values"
    line=""
    for i in "${!n[@]}"; do line+=" ${n[$i]}=${v[$i]:-}"; done
    line+=" "
    if [[ "$line" =~ \ blksize=([0-9]+)\  ]]; then blk=${BASH_REMATCH[1]}; fi # of the last OACK
    if [[ "$line" == *" blksize=$EDK2_BLKSIZE "* && "$line" == *" windowsize=$EDK2_WINDOWSIZE "* ]]; then granted="from port $port:$line"; fi
  done <<<"$oacks"
  if [ -n "$granted" ]; then ok "$fw: OACK from $PROV_IP granting blksize=$EDK2_BLKSIZE windowsize=$EDK2_WINDOWSIZE ($granted)"
  else fail "$fw: no OACK from $PROV_IP to $mac with blksize=$EDK2_BLKSIZE and windowsize=$EDK2_WINDOWSIZE; OACKs seen (port|names|values): [$(tr '\n' ' ' <<<"$oacks")]"; fi

  ports=$(tsh "$pcap" "ip.src==$PROV_IP && eth.dst==$mac && tftp.opcode==3" udp.srcport | sort -u | xargs)
  if [ -z "$ports" ]; then fail "$fw: no TFTP DATA from $PROV_IP to $mac in the capture"
  elif [ "$SINGLE_PORT" = 1 ]; then
    if [ "$ports" = 69 ]; then ok "$fw: TFTP DATA from $PROV_IP port 69 only (--tftp-single-port)"
    else fail "$fw: --tftp-single-port: TFTP DATA came from ports [$ports], want 69 only"; fi
  else
    if [[ " $ports " != *" 69 "* ]]; then ok "$fw: TFTP DATA from $PROV_IP transfer port(s) [$ports], not 69"
    else fail "$fw: TFTP DATA came from ports [$ports]; without --tftp-single-port a transfer port other than 69 is expected"; fi
  fi

  want_last=$((SNP_SIZE / blk + 1))
  last=$(tsh "$pcap" "eth.src==$mac && ip.dst==$PROV_IP && tftp.opcode==4 && tftp.block==$want_last" frame.number | head -n 1)
  if [ -n "$last" ]; then ok "$fw: VM acknowledged block $want_last, the last of $EFI_NBP ($SNP_SIZE bytes at blksize $blk)"
  else fail "$fw: the VM never ACKed block $want_last, the last of $EFI_NBP ($SNP_SIZE bytes at the granted blksize $blk): the transfer did not complete"; fi
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
  local fw=$1
  if [ -z "$(marker_line "$fw")" ] && log_has "serial-$fw.log" "Booting from PXE menu"; then
    fail "$fw: iPXE printed 'Booting from PXE menu': the offer to iPXE has a PXE boot menu (option 43 sub-option 9) and its discovery control (sub-option 6) lacks PXEBS_SKIP (0x08), so iPXE ignores the boot file and tries PXE boot-server discovery, which EFI builds of iPXE do not have (pxe_menu_boot = -ENOTSUP)"
  fi
  if [ "$PROXY" = ironboot ]; then check_marker_line "$fw" "${TARGET[$fw]}" "${VMUUID[$fw]}" "${MAC[$fw]}"
  else check_marker_line "$fw" default "${VMUUID[$fw]}" "${MAC[$fw]}"; fi # tests/firmware/init.ipxe
}

# What ironboot itself says: its counters and the machines it recorded.
check_ironboot_api() {
  local nvms=${#VMS[@]} pairs=() fw
  if api_get /metrics "$out/metrics.txt"; then
    check_metric_at_least "$out/metrics.txt" 'ironboot_dhcp_replies_total{type="offer"}' "$nvms" "an OFFER per VM"
    check_metric_at_least "$out/metrics.txt" 'ironboot_http_requests_total{route="init_script",status="200"}' "$nvms" "init.ipxe per VM"
    check_metric_at_least "$out/metrics.txt" 'ironboot_http_requests_total{route="boot_script",status="200"}' "$nvms" "boot.ipxe per VM"
    check_metric_at_least "$out/metrics.txt" 'ironboot_boot_decisions_total{kind="script"}' "$nvms" "the inventory's script targets"
    if [[ " ${VMS[*]} " == *" uefi "* ]]; then
      check_metric_at_least "$out/metrics.txt" 'ironboot_dhcp_replies_total{type="ack"}' 1 "EDK2's 4011 REQUEST"
      check_metric_at_least "$out/metrics.txt" ironboot_tftp_transfers_completed_total 1 "snp.efi to EDK2"
    fi
  fi
  for fw in "${VMS[@]}"; do pairs+=("${VMUUID[$fw]}=${MAC[$fw]}"); done
  if api_get /api/v1/machines "$out/machines.json"; then check_machines "$out/machines.json" 1 "${pairs[@]}"; fi
}

# ================================================================= main
case $PROXY in
ironboot) check_prereqs "${BIOS_FILES[@]}" "$OVMF_CODE:ovmf" "$OVMF_VARS:ovmf"; check_ironboot_bin ;;
dnsmasq) check_prereqs "${BIOS_FILES[@]}" "$OVMF_CODE:ovmf" "$OVMF_VARS:ovmf" ;;
*) setup_error "PROXY_UNDER_TEST must be ironboot or dnsmasq, not '$PROXY'" ;;
esac
for fw in "${VMS[@]}"; do
  [ -n "${TAP[$fw]:-}" ] || setup_error "IBFW_VMS: unknown VM '$fw' (known: bios uefi)"
done
for v in STANDIN_HTTP STANDIN_TFTP UEFI_EXPECT_MARKER; do
  [ -z "${!v:-}" ] || setup_error "$v is gone: ironboot serves TFTP and HTTP itself and every VM must reach its marker"
done
remove_stale_namespaces
make_out_dir "${IBFW_OUT_BASE:-$repo/target/firmware-test}" run
say "proxy under test: $PROXY; VMs: ${VMS[*]}; out dir: $out"

NTAPS=2
"$here/topology.sh" up "$P" "$NTAPS"
TOPO_UP=1
start_site_dhcp

if [ "$PROXY" = ironboot ]; then
  write_inventory "$state/inventory.toml" "mac=${MAC[uefi]}" "${TARGET[uefi]}"
  start_ironboot "${IRONBOOT_ARGV[@]}"
  check_served_by_ironboot "after start"
else
  # dnsmasq drops root for nobody: the served tree must be world-readable.
  mkdir -p "$state/tftp/ipxe"
  cp "$here/init.ipxe" "$state/tftp/ipxe/init.ipxe"
  cp "$SNPONLY" "$state/tftp/$EFI_NBP"
  chmod -R a+rX "$state/tftp"
  start proxy-dnsmasq prov dnsmasq -k --log-facility=- --conf-file="$here/dnsmasq-proxy.conf" \
    --tftp-root="$state/tftp" --pid-file="$state/proxy.pid"
  wait_for "dnsmasq proxy listens on UDP 67" 10 proxy-dnsmasq listening prov u 67
fi

for fw in "${VMS[@]}"; do
  start "tcpdump-$fw" lan tcpdump -Z root -n -U --immediate-mode -i "${TAP[$fw]}" -w "$out/$fw.pcap"
  wait_for "tcpdump on ${TAP[$fw]} is listening" 10 "tcpdump-$fw" log_has "tcpdump-$fw.err" "listening on"
done

run_vms_until marker_reached
sleep 0.5 # let the last replies reach the captures (tcpdump reads them at once: --immediate-mode)
for fw in "${VMS[@]}"; do stop "tcpdump-$fw"; done

# ---------------------------------------------------------------- assertions
for fw in "${VMS[@]}"; do
  [ "${RESULT[$fw]}" = reached ] || fail "$fw VM: ${RESULT[$fw]} after $(secs "${ELAPSED[$fw]}") s (limit ${TIMEOUT[$fw]} s) without reaching its marker"
  case $fw in
  bios)
    check_offer bios
    if [ "$PROXY" = ironboot ]; then check_http_gets bios "the boot file of the OFFER"
    else check_tftp_rrq bios "${BOOT_PATH#/}"; fi # dnsmasq hands the iPXE ROM a TFTP menu item
    check_marker bios
    info_4011 bios
    ;;
  uefi)
    if [ "$PROXY" = ironboot ]; then check_offer uefi; else check_offer uefi no43; fi
    check_4011 uefi
    check_tftp_rrq uefi "$EFI_NBP"
    if [ "$PROXY" = ironboot ]; then
      check_tftp_served uefi
      check_http_gets uefi "iPXE from $EFI_NBP, after its own DHCP round"
    else check_tftp_rrq uefi "${BOOT_PATH#/}"; fi
    check_marker uefi
    ;;
  esac
done

if [ "$PROXY" = ironboot ]; then
  check_ironboot_api
  check_served_by_ironboot "at the end"
  check_ironboot_healthy
else
  if alive proxy-dnsmasq; then ok "dnsmasq proxy is still running"
  else fail "dnsmasq proxy is not running any more"; fi
fi

for fw in "${VMS[@]}"; do say "timing: $fw VM ${RESULT[$fw]} after $(secs "${ELAPSED[$fw]}") s"; done
if [ ${#FAILS[@]} -gt 0 ]; then exit 1; fi
say "PASS ($PROXY; ${VMS[*]}$([ "$SINGLE_PORT" = 1 ] && echo "; --tftp-single-port"))"
