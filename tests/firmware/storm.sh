#!/bin/bash
# PXE storm against ironboot: N BIOS VMs (SeaBIOS + QEMU's e1000 iPXE ROM, TCG, 128 MiB
# each; distinct MACs and SMBIOS UUIDs) boot at once on the test LAN of topology.sh, with
# the site's plain DHCP server (dnsmasq) and ironboot as the only servers.
#
# Every VM must print its marker (PXETEST-DONE uuid=<its uuid> mac=<its mac>) within the
# time limit, after the target line of the inventory: [default] for all but one VM, which
# has a [[machine]] entry of its own matched by UUID. Then ironboot's own API must agree:
# GET /api/v1/machines lists exactly those N machines, each with its MAC; /metrics counts at
# least N offers, init scripts, boot scripts and script decisions. ironboot must still run,
# without a panic, alone in its namespace. A capture on ironboot's port of the bridge shows
# an OFFER to every VM.
#
# usage: IRONBOOT_BIN=path/to/ironboot tests/firmware/storm.sh        (as root)
# environment:
#   IRONBOOT_BIN     ironboot binary (required)
#   IRONBOOT_ARGS    its arguments (default "--dhcp-proxy-iface-or-ip eth0"); storm.sh adds
#                    --state-dir and --inventory (both in its scratch dir)
#   STORM_VMS        how many VMs (default 20; 1..150, the site DHCP range)
#   STORM_TIMEOUT    seconds for all of them to reach the marker (default 180)
#   IBFW_PREFIX      namespace prefix (default ibstorm); IBFW_OUT_BASE: where the per-run out
#                    dir goes (default <repo>/target/firmware-test); KEEP_OUT=1 keeps it after
#                    a pass (it is always kept after a failure)
# Exit status: 0 pass, 1 assertion failed, 2 prerequisites missing / bad setup.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
export PATH="$PATH:/usr/sbin:/sbin"
repo=$(cd "$here/../.." && pwd)
TAG=storm
P=${IBFW_PREFIX:-ibstorm}
out=""
state=""
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"

N=${STORM_VMS:-20}
LIMIT=${STORM_TIMEOUT:-180}
read -r -a IRONBOOT_ARGV <<<"${IRONBOOT_ARGS:---dhcp-proxy-iface-or-ip eth0}"

vm_name() { printf 'vm%02d' "$1"; }
vm_mac() { printf '52:54:00:5e:00:%02x' $(($1 + 1)); }
vm_uuid() { printf '5e000000-0000-4000-8000-%012x' $(($1 + 1)); }
BY_UUID=$((N / 3)) # the VM with its own [[machine]] entry (matched by UUID)

report_details() {
  local i name shown=0
  tail_file "ironboot stderr" "$out/ironboot.err" 60
  tail_file "site DHCP server (dnsmasq) log" "$out/site-dhcp.err" 20
  for ((i = 0; i < N; i++)); do
    name=$(vm_name "$i")
    [ "${RESULT[$name]:-}" != reached ] || continue
    tail_file "$name VM serial console (${RESULT[$name]:-not started})" "$out/serial-$name.log" 25
    shown=$((shown + 1))
    [ "$shown" -lt 3 ] || { echo "--- (serial consoles of the other failed VMs: $out/serial-vm*.log)"; break; }
  done
  if [ -s "$out/prov.pcap" ]; then
    echo "--- capture on vprov, ironboot's bridge port (tshark summary, DHCP and HTTP requests only)"
    tshark -r "$out/prov.pcap" -d "tcp.port==$API_PORT,http" -Y 'dhcp || http.request' 2>/dev/null | head -n 80 || true
  fi
}

# ================================================================= main
check_prereqs "${BIOS_FILES[@]}"
check_ironboot_bin
if ! [[ "$N" =~ ^[0-9]+$ ]] || [ "$N" -lt 1 ] || [ "$N" -gt 150 ]; then
  setup_error "STORM_VMS must be 1..150, not '$N'"
fi
[[ "$LIMIT" =~ ^[0-9]+$ ]] || setup_error "STORM_TIMEOUT must be a number of seconds, not '$LIMIT'"
remove_stale_namespaces
make_out_dir "${IBFW_OUT_BASE:-$repo/target/firmware-test}" storm
say "$N BIOS VMs at once, limit ${LIMIT}s; out dir: $out"

NTAPS=$N
"$here/topology.sh" up "$P" "$NTAPS"
TOPO_UP=1
start_site_dhcp
write_inventory "$state/inventory.toml" "uuid=$(vm_uuid "$BY_UUID")" by-uuid
start_ironboot "${IRONBOOT_ARGV[@]}"
check_served_by_ironboot "after start"

start tcpdump-prov lan tcpdump -Z root -n -U --immediate-mode -i vprov -w "$out/prov.pcap"
wait_for "tcpdump on vprov is listening" 10 tcpdump-prov log_has tcpdump-prov.err "listening on"

declare -A RESULT=() ELAPSED=()
T0=$(now_ms)
for ((i = 0; i < N; i++)); do
  start_bios_vm "$(vm_name "$i")" "tap$i" "$(vm_mac "$i")" "$(vm_uuid "$i")"
done
say "started $N VMs in $(secs $(($(now_ms) - T0))) s"
pending=$N
while [ "$pending" -gt 0 ]; do
  el=$(($(now_ms) - T0))
  for ((i = 0; i < N; i++)); do
    name=$(vm_name "$i")
    [ -z "${RESULT[$name]:-}" ] || continue
    # Gave up is looked for first: iPXE prints it after the marker, so once it is there
    # the marker line, if any, is complete.
    gave_up=0
    if log_has "serial-$name.log" "$IPXE_GAVE_UP"; then gave_up=1; fi
    if marker_reached "$name"; then RESULT[$name]=reached
    elif [ "$gave_up" = 1 ]; then RESULT[$name]="iPXE gave up ('$IPXE_GAVE_UP')"
    elif ! alive "qemu-$name"; then RESULT[$name]="QEMU exited"
    elif [ "$el" -ge $((LIMIT * 1000)) ]; then RESULT[$name]=timeout
    else continue; fi
    ELAPSED[$name]=$el
    stop "qemu-$name" # frees its CPU for the others
    pending=$((pending - 1))
  done
  sleep 0.5
done
total=$(($(now_ms) - T0))
sleep 0.5 # let the last packets reach the capture
stop tcpdump-prov

# ---------------------------------------------------------------- assertions
reached=0
times=()
for ((i = 0; i < N; i++)); do
  name=$(vm_name "$i")
  if [ "${RESULT[$name]}" = reached ]; then
    reached=$((reached + 1))
    times+=("${ELAPSED[$name]}")
  else
    fail "$name ($(vm_mac "$i")): ${RESULT[$name]} after $(secs "${ELAPSED[$name]}") s without its marker"
  fi
done
if [ "$reached" = "$N" ]; then ok "all $N VMs reached their marker within $(secs "$total") s (limit ${LIMIT}s)"
else fail "$reached of $N VMs reached their marker"; fi
if [ ${#times[@]} -gt 0 ]; then
  mapfile -t sorted < <(printf '%s\n' "${times[@]}" | sort -n)
  say "time to marker: first $(secs "${sorted[0]}") s, median $(secs "${sorted[$((${#sorted[@]} / 2))]}") s, last $(secs "${sorted[-1]}") s"
fi

quiet_ok=0
for ((i = 0; i < N; i++)); do
  name=$(vm_name "$i")
  target=default
  [ "$i" != "$BY_UUID" ] || target=by-uuid
  before=${#FAILS[@]}
  check_marker_line "$name" "$target" "$(vm_uuid "$i")" "$(vm_mac "$i")" >/dev/null
  if [ "${#FAILS[@]}" = "$before" ]; then quiet_ok=$((quiet_ok + 1))
  else echo "[$TAG] FAIL: ${FAILS[-1]}"; fi
done
[ "$quiet_ok" != "$N" ] || ok "every VM's console names its own UUID and MAC and its target ($(vm_name "$BY_UUID"): by-uuid, the others: default)"

offered=$(tshark -r "$out/prov.pcap" -Y "ip.src==$PROV_IP && udp.srcport==67 && dhcp.option.dhcp==2" \
  -T fields -e dhcp.hw.mac_addr 2>/dev/null | sort -u | grep -c '^52:54:00:5e:' || true)
if [ "$offered" = "$N" ]; then ok "capture: ironboot OFFERed to all $N VMs"
else fail "capture: ironboot OFFERed to $offered distinct VMs, want $N"; fi

pairs=()
for ((i = 0; i < N; i++)); do pairs+=("$(vm_uuid "$i")=$(vm_mac "$i")"); done
if api_get /api/v1/machines "$out/machines.json"; then check_machines "$out/machines.json" 1 "${pairs[@]}"; fi
if api_get /metrics "$out/metrics.txt"; then
  check_metric_at_least "$out/metrics.txt" 'ironboot_dhcp_replies_total{type="offer"}' "$N" "an OFFER per VM"
  check_metric_at_least "$out/metrics.txt" 'ironboot_http_requests_total{route="init_script",status="200"}' "$N" "init.ipxe per VM"
  check_metric_at_least "$out/metrics.txt" 'ironboot_http_requests_total{route="boot_script",status="200"}' "$N" "boot.ipxe per VM"
  check_metric_at_least "$out/metrics.txt" 'ironboot_boot_decisions_total{kind="script"}' "$N" "the inventory's script targets"
  check_metric_at_least "$out/metrics.txt" ironboot_store_machines "$N" "machines in the store"
fi
check_served_by_ironboot "at the end"
check_ironboot_healthy

say "timing: $N VMs, all done after $(secs "$total") s"
if [ ${#FAILS[@]} -gt 0 ]; then exit 1; fi
say "PASS ($N BIOS VMs)"
