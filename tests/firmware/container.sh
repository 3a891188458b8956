#!/bin/bash
# ironboot's container image serving a real PXE boot: the image (tests/container/build.sh)
# runs under podman with host networking in the server's namespace of the test LAN
# (topology.sh: `podman run --network ns:/run/netns/PFX-prov`, podman's default seccomp
# profile and capabilities plus CAP_ADD), with a standalone inventory mounted read-only; a
# BIOS VM (SeaBIOS + QEMU's e1000 iPXE ROM, TCG) PXE-boots through it and prints the
# marker of the inventory's [default] target on its serial console. Then:
#   - /metrics counts the VM's OFFER, init.ipxe and boot.ipxe, /api/v1/machines lists it;
#   - the container's main process is ironboot, alone in the namespace, holding UDP 67,
#     4011, 69 and TCP 50042; it runs as the image's user (uid 10042) with exactly the
#     capabilities the image's design gives it (CapEff = CapPrm: NET_BIND_SERVICE, plus
#     NET_ADMIN when CAP_ADD has it; no ambient one);
#   - its log says once per UDP service (ProxyDHCP, TFTP) that io_uring was refused (podman's
#     default seccomp profile) and the portable driver serves; that the capabilities were
#     made effective; and, once per UDP service, that the socket buffers were capped when
#     the kernel capped them (no NET_ADMIN and net.core.rmem_max below 4 MiB), never
#     otherwise; no panic.
#
# usage: IRONBOOT_IMAGE=localhost/ironboot:test tests/firmware/container.sh        (as root)
# environment:
#   IRONBOOT_IMAGE   the image (required; tests/container/build.sh makes localhost/ironboot:test)
#   CONTAINER_NAME   the container's name (default ibctr-<pid>); removed at the end
#   CAP_ADD          capabilities to add (podman --cap-add), space-separated (default none)
#   IRONBOOT_ARGS    ironboot's arguments (default "--dhcp-proxy-iface-or-ip eth0 --debug");
#                    container.sh adds --inventory (the mounted file)
#   BIOS_TIMEOUT     seconds until the marker (default 90)
#   IBFW_PREFIX      namespace prefix (default ibctr); IBFW_OUT_BASE: where the per-run out
#                    dir goes (default <repo>/target/firmware-test); KEEP_OUT=1 keeps it
#                    after a pass (it is always kept after a failure)
# podman runs with tests/container/containers.conf (CONTAINERS_CONF).
# Exit status: 0 pass, 1 assertion failed, 2 prerequisites missing / bad setup.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
export PATH="$PATH:/usr/sbin:/sbin"
repo=$(cd "$here/../.." && pwd)
export CONTAINERS_CONF="$repo/tests/container/containers.conf"
TAG=container
P=${IBFW_PREFIX:-ibctr}
out=""
state=""
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"

IMAGE=${IRONBOOT_IMAGE:-}
CTR=${CONTAINER_NAME:-ibctr-$$}
read -r -a CAPS <<<"${CAP_ADD:-}"
read -r -a IRONBOOT_ARGV <<<"${IRONBOOT_ARGS:---dhcp-proxy-iface-or-ip eth0 --debug}"
CTR_STARTED=0
IMAGE_UID=10042
# Capability bits (linux/capability.h).
CAP_NET_BIND_SERVICE=10
CAP_NET_ADMIN=12
# What ironboot asks for: 4 MiB receive buffers (ProxyDHCP, TFTP), 4 MiB TFTP send buffers.
BUFFER_BYTES=$((4 << 20))
FALLBACK="io_uring refused; serving UDP with the portable driver"
CAPPED="UDP socket buffers capped"
RAISED="permitted capabilities made effective"

VMS=(bios)
declare -A TAP=([bios]=tap0)
declare -A MAC=([bios]=52:54:00:c7:a1:01)
declare -A VMUUID=([bios]=c7a10000-0000-4000-8000-000000000001)
declare -A TIMEOUT=([bios]=${BIOS_TIMEOUT:-90})

# The container's logs (ironboot's stderr and stdout) into the out dir, for the checks and
# for the suite's secret check (lib.sh's cleanup copies ironboot.err).
save_logs() {
  podman logs "$CTR" >"$out/ironboot.out" 2>"$out/ironboot.err" || true
}
before_cleanup() {
  [ "$CTR_STARTED" = 1 ] || return 0
  save_logs
  podman rm -f -v "$CTR" >/dev/null 2>&1 || say "warning: podman rm -f -v $CTR failed"
}
report_details() {
  tail_file "ironboot (container $CTR) stderr" "$out/ironboot.err" 60
  tail_file "podman run" "$out/podman-run.err" 20
  tail_file "site DHCP server (dnsmasq) log" "$out/site-dhcp.err" 20
  tail_file "bios VM serial console" "$out/serial-bios.log" 30
  tail_file "bios QEMU output" "$out/qemu-bios.err" 10
}

# start_container: the image, host networking in PFX-prov; its main process is registered
# as "ironboot" for lib.sh's checks (its PID as the host sees it).
start_container() {
  local caps=() c pid
  for c in "${CAPS[@]}"; do caps+=(--cap-add "$c"); done
  chmod 644 "$state/inventory.toml"
  say "container $CTR: $IMAGE ${IRONBOOT_ARGV[*]} (network ns:/run/netns/$P-prov; added capabilities: ${CAPS[*]:-none})"
  if ! podman run -d --name "$CTR" --network "ns:/run/netns/$P-prov" "${caps[@]}" \
    -e NO_COLOR=1 -e RUST_BACKTRACE=1 \
    -v "$state/inventory.toml:/etc/ironboot/inventory.toml:ro" \
    "$IMAGE" "${IRONBOOT_ARGV[@]}" --inventory /etc/ironboot/inventory.toml \
    >"$out/podman-run.out" 2>"$out/podman-run.err"; then
    CTR_STARTED=1
    fail "podman run of $IMAGE failed: $(tr '\n' ' ' <"$out/podman-run.err")"
    exit 1
  fi
  CTR_STARTED=1
  pid=$(podman inspect --format '{{.State.Pid}}' "$CTR")
  if ! [[ "$pid" =~ ^[1-9][0-9]*$ ]]; then
    save_logs
    fail "container $CTR has no running main process (podman inspect: State.Pid '$pid'); its log: $(tail -n 5 "$out/ironboot.err" | tr '\n' ' ')"
    exit 1
  fi
  PIDS[ironboot]=$pid
  ORDER+=(ironboot)
  say "container $CTR started, main process pid $pid"
  wait_for "ironboot (container) listens on UDP 67, 4011, 69 and TCP $API_PORT in $P-prov" 30 ironboot \
    eval "listening prov u 67 && listening prov u 4011 && listening prov u 69 && listening prov t $API_PORT"
}

# The main process: ironboot, as uid IMAGE_UID, with exactly the capabilities wanted.
check_process() {
  local pid=${PIDS[ironboot]} status exe uids eff prm amb want=$((1 << CAP_NET_BIND_SERVICE)) c
  for c in "${CAPS[@]}"; do
    case ${c^^} in NET_ADMIN | CAP_NET_ADMIN) want=$((want | 1 << CAP_NET_ADMIN)) ;; esac
  done
  want=$(printf '%016x' "$want")
  exe=$(readlink "/proc/$pid/exe" || true)
  status=$(cat "/proc/$pid/status")
  uids=$(awk '/^Uid:/ { print $2, $3, $4, $5 }' <<<"$status")
  eff=$(awk '/^CapEff:/ { print $2 }' <<<"$status")
  prm=$(awk '/^CapPrm:/ { print $2 }' <<<"$status")
  amb=$(awk '/^CapAmb:/ { print $2 }' <<<"$status")
  if [[ "$exe" == */usr/local/bin/ironboot ]]; then ok "the container's main process (pid $pid) is $exe"
  else fail "the container's main process (pid $pid) is '$exe', want /usr/local/bin/ironboot"; fi
  if [ "$uids" = "$IMAGE_UID $IMAGE_UID $IMAGE_UID $IMAGE_UID" ]; then ok "ironboot runs as uid $IMAGE_UID (real, effective, saved, fs), not root"
  else fail "ironboot's uids (real effective saved fs) are '$uids', want $IMAGE_UID for all"; fi
  if [ "$eff" = "$want" ] && [ "$prm" = "$want" ]; then ok "ironboot's CapEff = CapPrm = $eff (NET_BIND_SERVICE$([ "$want" != 0000000000000400 ] && echo ", NET_ADMIN"); added: ${CAPS[*]:-none})"
  else fail "ironboot's CapEff is $eff and CapPrm $prm, want $want for both (NET_BIND_SERVICE$([ "$want" != 0000000000000400 ] && echo ", NET_ADMIN"))"; fi
  if [ "$amb" = 0000000000000000 ]; then ok "no ambient capability (CapAmb $amb)"
  else fail "ironboot has ambient capabilities $amb, want none"; fi
}

# count_lines TEXT SERVICE: lines of ironboot's stderr with TEXT naming SERVICE.
count_lines() { grep -aF -- "$1" "$out/ironboot.err" | grep -acF -- "$2" || true; }

check_logs() {
  local svc n rmem wmem capped_expected=0
  save_logs
  for svc in ProxyDHCP TFTP; do
    n=$(count_lines "$FALLBACK" "$svc")
    if [ "$n" = 1 ]; then ok "log: one '$FALLBACK' line for $svc (podman's default seccomp profile refuses io_uring)"
    else fail "log: $n '$FALLBACK' lines for $svc, want exactly 1 (io_uring refused by podman's seccomp profile, --udp-driver auto)"; fi
  done
  n=$(grep -acF -- "$RAISED" "$out/ironboot.err" || true)
  if [ "$n" = 1 ]; then ok "log: '$(grep -aF -- "$RAISED" "$out/ironboot.err" | clean | sed 's/^.*INFO //')'"
  else fail "log: $n '$RAISED' lines, want 1 (the file capabilities raised to effective at start)"; fi
  # Capped only without NET_ADMIN and with a net.core maximum below what ironboot asks for.
  rmem=$(cat /proc/sys/net/core/rmem_max)
  wmem=$(cat /proc/sys/net/core/wmem_max)
  if [[ " ${CAPS[*]^^} " != *NET_ADMIN* ]] && { [ "$rmem" -lt "$BUFFER_BYTES" ] || [ "$wmem" -lt "$BUFFER_BYTES" ]; }; then
    capped_expected=1
  fi
  for svc in ProxyDHCP TFTP; do
    n=$(count_lines "$CAPPED" "$svc")
    if [ "$n" = "$capped_expected" ]; then ok "log: $n '$CAPPED' line(s) for $svc (rmem_max $rmem, wmem_max $wmem, added: ${CAPS[*]:-none})"
    else fail "log: $n '$CAPPED' lines for $svc, want $capped_expected (rmem_max $rmem, wmem_max $wmem, asked $BUFFER_BYTES; added: ${CAPS[*]:-none})"; fi
  done
}

# ================================================================= main
check_prereqs "${BIOS_FILES[@]}"
need_cmd podman podman
need_cmd runc runc
[ ${#MISSING[@]} -eq 0 ] ||
  setup_error "missing: ${MISSING[*]}; install: sudo tests/install-prereqs.sh (or apt-get install -y ${MISSING_PKGS[*]})"
[ -n "$IMAGE" ] || setup_error "IRONBOOT_IMAGE is not set (tests/container/build.sh makes localhost/ironboot:test)"
podman image exists "$IMAGE" || setup_error "image $IMAGE not found: build it with tests/container/build.sh"
if podman container exists "$CTR"; then setup_error "a container named $CTR exists already"; fi
remove_stale_namespaces
make_out_dir "${IBFW_OUT_BASE:-$repo/target/firmware-test}" container
say "image $IMAGE, container $CTR, a BIOS VM; out dir: $out"

NTAPS=1
"$here/topology.sh" up "$P" "$NTAPS"
TOPO_UP=1
start_site_dhcp
write_inventory "$state/inventory.toml"
start_container
check_served_by_ironboot "after start"
check_process

run_vms_until marker_reached

# ---------------------------------------------------------------- assertions
[ "${RESULT[bios]}" = reached ] || fail "bios VM: ${RESULT[bios]} after $(secs "${ELAPSED[bios]}") s (limit ${TIMEOUT[bios]} s) without reaching its marker"
check_marker_line bios default "${VMUUID[bios]}" "${MAC[bios]}"
if api_get /metrics "$out/metrics.txt"; then
  check_metric_at_least "$out/metrics.txt" 'ironboot_dhcp_replies_total{type="offer"}' 1 "the VM's OFFER"
  check_metric_at_least "$out/metrics.txt" 'ironboot_http_requests_total{route="init_script",status="200"}' 1 "the VM's init.ipxe"
  check_metric_at_least "$out/metrics.txt" 'ironboot_http_requests_total{route="boot_script",status="200"}' 1 "the VM's boot.ipxe"
fi
if api_get /api/v1/machines "$out/machines.json"; then
  check_machines "$out/machines.json" 1 "${VMUUID[bios]}=${MAC[bios]}"
fi
check_served_by_ironboot "at the end"
check_process
check_logs
check_ironboot_healthy

say "timing: bios VM ${RESULT[bios]} after $(secs "${ELAPSED[bios]}") s"
if [ ${#FAILS[@]} -gt 0 ]; then exit 1; fi
say "PASS (image $IMAGE; added capabilities: ${CAPS[*]:-none})"
