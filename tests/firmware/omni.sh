#!/bin/bash
# Real-firmware test of ironboot in Omni mode: a machine Omni does not know yet PXE-boots
# through ironboot and is sent to the agent-mode image of a (local, test) Image Factory.
#
# The LAN of run.sh (topology.sh), plus a site services host on it:
#   PFX-dhcp  10.98.0.2: dnsmasq, the site's plain DHCP server (leases only)
#             10.98.0.4: "Omni" = tests/omni-harness (the real COSI runtime state and
#                        Omni's resource types and access rules; OMNI_HARNESS_BIN), and the
#                        Image Factory stand-in factory_standin.py on port 8080
#   PFX-prov  10.98.0.3: ironboot alone, in Omni mode (--omni-api-endpoint
#             http://10.98.0.4:PORT, OMNI_SERVICE_ACCOUNT_KEY from `omniharness keygen`),
#             --image-factory-base-url and --image-factory-pxe-base-url http://10.98.0.4:8080,
#             --agent-mode-talos-version $AGENT_VERSION; no --api-advertise-address.
# Then real firmware boots under QEMU (TCG):
#   bios: SeaBIOS + QEMU's e1000 iPXE ROM: ProxyDHCP offer -> init.ipxe -> boot.ipxe
#   uefi: OVMF, EDK2's own PXE: offer, 4011, snp.efi over TFTP -> iPXE -> init.ipxe -> boot.ipxe
# Omni has no InfraMachine for either: boot.ipxe must chain to the factory's agent-mode
# image, whose stand-in script prints, on the VM's serial console,
#   IBFACTORY-AGENT v=<talos version> a=<arch>
#   IBFACTORY-ID <schematic id>
# then fetches the schematic's talos.config= URL (iPXE expands its ${uuid}, as in the real
# factory's kernel line) and prints IBFACTORY-CONFIG ok|failed. "Omni" holds a
# ProviderJoinConfig with a per-run join token, which ironboot serves on /config.
# Checked:
#   - ironboot registered with "Omni" (InfraProviderStatus written, with its name and
#     version) and watches its state (the harness counts the authenticated calls);
#   - each VM: the OFFER names http://10.98.0.3:50042/ipxe/init.ipxe (BIOS) / the 4011 ACK
#     and snp.efi over TFTP (UEFI); GET init.ipxe and boot.ipxe?uuid=<its uuid>; then GET
#     /factory/pxe/<id>/<version>/metal-amd64 and the script's kernel (rewritten to
#     /factory/image/...) from the VM to ironboot's Image Factory proxy (Debian's iPXE has
#     no HTTPS), never to the factory; the factory served the kernel once for all VMs;
#     the marker lines on its console (IBFACTORY-KERNEL ok: 3 MiB through the proxy),
#     naming the schematic ironboot created; then
#     GET /config?u=<its uuid> from ironboot answered 200 with Omni's join document (the
#     run's token) and IBFACTORY-CONFIG ok on its console;
#   - the factory saw the schematic POST from ironboot (10.98.0.3), exactly one for all VMs
#     (same content: cached), whose YAML has what upstream's agent mode requires: the
#     kernel arguments talos.config=http://10.98.0.3:50042/config?u=${uuid} (the literal
#     ${uuid}), metal.provider.address=10.98.0.3:50042, console=tty0 console=ttyS0, and the
#     extensions: the firmware ones and siderolabs/metal-agent;
#   - ironboot alone in PFX-prov holding its ports, still running, no panic.
# Not asserted, printed: what ironboot's control loop logged about the VMs' PXE boots.
#
# usage: IRONBOOT_BIN=target/debug/ironboot OMNI_HARNESS_BIN=path/to/omniharness tests/firmware/omni.sh  (root)
# environment:
#   IRONBOOT_BIN, OMNI_HARNESS_BIN  the binaries (required; tests/it/real_firmware.rs builds the
#                       harness from tests/omni-harness with Go)
#   IRONBOOT_ARGS       extra ironboot arguments (default "--dhcp-proxy-iface-or-ip eth0 --debug");
#                       omni.sh adds the Omni, factory and --state-dir flags
#   IBFW_VMS            which VMs (default "bios uefi"); BIOS_TIMEOUT/UEFI_TIMEOUT (60/120 s)
#   IBFW_PREFIX         namespace prefix (default ibomni); IBFW_OUT_BASE, KEEP_OUT as run.sh
# Exit status: 0 pass, 1 assertion failed, 2 prerequisites missing / bad setup.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
export PATH="$PATH:/usr/sbin:/sbin"
repo=$(cd "$here/../.." && pwd)
TAG=omni
P=${IBFW_PREFIX:-ibomni}
out=""
state=""
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"

read -r -a VMS <<<"${IBFW_VMS:-bios uefi}"
read -r -a IRONBOOT_ARGV <<<"${IRONBOOT_ARGS:---dhcp-proxy-iface-or-ip eth0 --debug}"

SITE_IP=10.98.0.4 # second address of the site host (PFX-dhcp): Omni and the factory
FACTORY_PORT=8080
FACTORY="http://$SITE_IP:$FACTORY_PORT"
# Not the default (v1.13.7): the PXE URL must carry the flag's value.
AGENT_VERSION=v1.12.9
PROVIDER_ID=bare-metal
INIT_URL="$API/ipxe/init.ipxe"
OVMF_CODE=/usr/share/OVMF/OVMF_CODE_4M.fd
OVMF_VARS=/usr/share/OVMF/OVMF_VARS_4M.fd
FMARK_AGENT=IBFACTORY-AGENT
FMARK_ID=IBFACTORY-ID
FMARK_CONFIG=IBFACTORY-CONFIG
JOIN_TOKEN="ibfw-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"

declare -A TAP=([bios]=tap0 [uefi]=tap1)
declare -A MAC=([bios]=52:54:00:0e:6a:01 [uefi]=52:54:00:0e:6a:02)
declare -A VMUUID=([bios]=0e6a0000-0000-4000-8000-000000000001 [uefi]=0e6a0000-0000-4000-8000-000000000002)
declare -A TIMEOUT=([bios]=${BIOS_TIMEOUT:-60} [uefi]=${UEFI_TIMEOUT:-120})

report_details() {
  local fw
  tail_file "ironboot stderr" "$out/ironboot.err" 60
  tail_file "omni-harness stderr" "$out/omni-harness.err" 20
  tail_file "omni-harness answers" "$out/omni-harness.out" 10
  tail_file "factory stand-in requests" "$out/factory-requests.jsonl" 20
  tail_file "factory stand-in log" "$out/factory.err" 20
  tail_file "site DHCP server (dnsmasq) log" "$out/site-dhcp.err" 15
  for fw in "${VMS[@]}"; do
    tail_file "$fw VM serial console" "$out/serial-$fw.log" 30
    tail_file "$fw QEMU output" "$out/qemu-$fw.err" 10
    if [ -s "$out/$fw.pcap" ]; then
      echo "--- $fw capture on ${TAP[$fw]} (tshark summary, no ICMPv6/ARP, TFTP data elided)"
      tshark -r "$out/$fw.pcap" -d "tcp.port==$API_PORT,http" -d "tcp.port==$FACTORY_PORT,http" \
        -Y 'not icmpv6 && not arp && not (tftp.opcode==3 || tftp.opcode==4) && not (tcp && !http && tcp.len==0)' \
        2>/dev/null | head -n 80 || true
    fi
  done
}

tsh() { # PCAP FILTER FIELD...
  local pcap=$1 filter=$2 f args=()
  shift 2
  for f in "$@"; do args+=(-e "$f"); done
  tshark -r "$pcap" -d "tcp.port==$API_PORT,http" -d "tcp.port==$FACTORY_PORT,http" -Y "$filter" \
    -T fields -E separator='|' "${args[@]}" 2>/dev/null || true
}

# ---------------------------------------------------------------- the Omni harness
# It reads one JSON command a line from a FIFO (fd 7 here) and answers one line on stdout
# ($out/omni-harness.out). Commands go one at a time, so the answer is the next line.
start_harness() {
  mkfifo "$state/harness.ctl"
  ip netns exec "$P-dhcp" "$OMNI_HARNESS_BIN" serve --key-file "$state/sa.key" \
    --listen "$SITE_IP:0" <"$state/harness.ctl" >"$out/omni-harness.out" 2>"$out/omni-harness.err" &
  PIDS[omni-harness]=$!
  ORDER+=(omni-harness)
  exec 7>"$state/harness.ctl"
  wait_for "the Omni harness prints its address" 20 omni-harness log_has omni-harness.out listening
  OMNI_ADDR=$(head -n 1 "$out/omni-harness.out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["listening"])')
  say "Omni harness listening on $OMNI_ADDR (in $P-dhcp)"
}
# harness_cmd JSON: sends one command; prints its answer line.
harness_cmd() {
  local n i
  n=$(wc -l <"$out/omni-harness.out")
  echo "$1" >&7
  for i in $(seq 1 100); do
    if [ "$(wc -l <"$out/omni-harness.out")" -gt "$n" ]; then
      sed -n "$((n + 1))p" "$out/omni-harness.out"
      return 0
    fi
    alive omni-harness || break
    sleep 0.1
  done
  echo '{"ok":false,"error":"no answer from the Omni harness (exited, or silent for 10 s)"}'
}
# json_get JSON EXPR: evaluates the Python expression EXPR over the parsed JSON `j`
# (empty output when JSON is not JSON: the callers' checks then fail with what they got).
json_get() {
  python3 -c 'import json,sys
try:
    j = json.loads(sys.argv[1])
except ValueError:
    sys.exit(0)
print(eval(sys.argv[2]))' "$1" "$2"
}

# calls_summary ANSWER: the harness's per-method call counts as "Method=N ...".
calls_summary() { json_get "$1" '" ".join("%s=%d" % (k.rsplit("/", 1)[-1], v) for k, v in sorted((j.get("calls") or {}).items()))'; }

PROVIDER_STATUS_GET='{"cmd":"get","ns":"infra-provider","type":"InfraProviderStatuses.omni.sidero.dev","id":"'$PROVIDER_ID'"}'
registered() {
  [ "$(json_get "$(harness_cmd "$PROVIDER_STATUS_GET")" 'j.get("found") is True')" = True ]
}

check_registration() {
  local a name version calls
  a=$(harness_cmd "$PROVIDER_STATUS_GET")
  echo "$a" >"$out/provider-status.json"
  name=$(json_get "$a" '(j.get("spec") or {}).get("name", "")')
  version=$(json_get "$a" '(j.get("spec") or {}).get("version", "")')
  if [ -n "$name" ] && [ -n "$version" ]; then
    ok "Omni: ironboot registered: InfraProviderStatus $PROVIDER_ID has name '$name', version '$version'"
  else fail "Omni: InfraProviderStatus $PROVIDER_ID is missing or lacks name/version: $a"; fi
  a=$(harness_cmd '{"cmd":"calls"}')
  echo "$a" >"$out/omni-calls.json"
  calls=$(calls_summary "$a")
  if [[ " $calls " == *" Watch="* ]]; then ok "Omni: ironboot watches Omni's state (authenticated calls: $calls)"
  else fail "Omni: no Watch call from ironboot seen by the harness (calls: ${calls:-none})"; fi
}

# ---------------------------------------------------------------- checks
check_offer_and_gets() { # FW
  local fw=$1 pcap="$out/$1.pcap" mac=${MAC[$1]} rows file opt67 uris boot
  rows=$(tsh "$pcap" "ip.src==$PROV_IP && udp.srcport==67 && dhcp.option.dhcp==2 && dhcp.hw.mac_addr==$mac" dhcp.file dhcp.option.bootfile_name)
  if [ -z "$rows" ]; then fail "$fw: no DHCPOFFER from $PROV_IP:67 for $mac (ironboot's ProxyDHCP in Omni mode)"
  elif [ "$fw" = bios ]; then
    IFS='|' read -r file opt67 <<<"$(head -n 1 <<<"$rows")"
    if [ "$file" = "$INIT_URL" ] || [ "$opt67" = "$INIT_URL" ]; then ok "$fw: OFFER from $PROV_IP:67, boot file $INIT_URL"
    else fail "$fw: OFFER boot file '$file' / option 67 '$opt67', want $INIT_URL"; fi
  else ok "$fw: OFFER from $PROV_IP:67"; fi
  if [ "$fw" = uefi ]; then
    if [ -n "$(tsh "$pcap" "ip.src==$PROV_IP && udp.srcport==4011 && dhcp.option.dhcp==5 && dhcp.hw.mac_addr==$mac" frame.number)" ]; then
      ok "$fw: ProxyDHCP ACK from $PROV_IP:4011"
    else fail "$fw: no ProxyDHCP ACK from $PROV_IP:4011 to $mac"; fi
    if [ -n "$(tsh "$pcap" "eth.src==$mac && ip.dst==$PROV_IP && tftp.opcode==1 && tftp.source_file==\"snp.efi\"" frame.number)" ]; then
      ok "$fw: TFTP RRQ for snp.efi to $PROV_IP"
    else fail "$fw: no TFTP RRQ for snp.efi from $mac to $PROV_IP"; fi
  fi
  uris=$(tsh "$pcap" "eth.src==$mac && ip.dst==$PROV_IP && tcp.dstport==$API_PORT && http.request.method==\"GET\"" http.request.uri)
  if grep -qxF /ipxe/init.ipxe <<<"$uris"; then ok "$fw: GET /ipxe/init.ipxe from ironboot"
  else fail "$fw: no GET /ipxe/init.ipxe from $mac to $PROV_IP:$API_PORT; GETs: [$(tr '\n' ' ' <<<"$uris")]"; fi
  boot="/ipxe/boot.ipxe?uuid=${VMUUID[$fw]}&"
  if grep -qF "$boot" <<<"$uris"; then ok "$fw: GET ${boot}... from ironboot"
  else fail "$fw: no GET ${boot}... from $mac to $PROV_IP:$API_PORT; GETs: [$(tr '\n' ' ' <<<"$uris")]"; fi
}

# The VM fetched the agent-mode script and its kernel through ironboot's Image Factory
# proxy (Debian's iPXE has no HTTPS, so --image-factory-proxy auto turns it on): in its
# capture the GETs go to ironboot's /factory/ routes, and the stand-in saw ironboot ask.
check_factory_get() { # FW ID
  local fw=$1 id=$2 mac=${MAC[$1]} want kernel uris
  want="/factory/pxe/$id/$AGENT_VERSION/metal-amd64"
  kernel="/factory/image/$id/$AGENT_VERSION/kernel-amd64"
  uris=$(tsh "$out/$fw.pcap" "eth.src==$mac && ip.dst==$PROV_IP && tcp.dstport==$API_PORT && http.request.method==\"GET\"" http.request.uri)
  if grep -qxF "$want" <<<"$uris"; then ok "$fw: the VM sent GET $want to ironboot (agent-mode image: schematic, --agent-mode-talos-version, amd64)"
  else fail "$fw: no GET $want from $mac to ironboot; its GETs: [$(tr '\n' ' ' <<<"$uris")]"; fi
  if grep -qxF "$kernel" <<<"$uris"; then ok "$fw: the VM sent GET $kernel to ironboot (the script's kernel URL rewritten to the proxy)"
  else fail "$fw: no GET $kernel from $mac to ironboot; its GETs: [$(tr '\n' ' ' <<<"$uris")]"; fi
  uris=$(tsh "$out/$fw.pcap" "eth.src==$mac && ip.dst==$SITE_IP && tcp.dstport==$FACTORY_PORT" http.request.uri)
  if [ -z "$uris" ]; then ok "$fw: the VM itself never talked to the factory"
  else fail "$fw: the VM went to the factory directly: [$(tr '\n' ' ' <<<"$uris")]"; fi
}

# Every VM booted the same image: the factory served its script once per VM (scripts are
# kept a minute at most) but its kernel once for all (the proxy's cache).
check_factory_fetches() {
  local n
  n=$(python3 -c 'import json,sys
print(sum(1 for l in open(sys.argv[1]) if json.loads(l)["path"].startswith("/image/") and json.loads(l)["client"] == sys.argv[2]))' "$out/factory-requests.jsonl" "$PROV_IP")
  if [ "$n" = 1 ]; then ok "the factory served the kernel once, to ironboot, for ${#VMS[@]} VMs"
  else fail "the factory served the kernel $n times to ironboot (want 1: cached)"; fi
}

check_marker() { # FW ID
  local fw=$1 id=$2 a i c k
  k=$(grep -a "IBFACTORY-KERNEL" "$out/serial-$fw.log" 2>/dev/null | clean | head -n 1 || true)
  if [[ "$k" == *"IBFACTORY-KERNEL ok"* ]]; then ok "$fw: serial console: IBFACTORY-KERNEL ok (3 MiB through ironboot's proxy)"
  else fail "$fw: want 'IBFACTORY-KERNEL ok' on the serial console, got '${k:-nothing}'"; fi
  a=$(grep -a "$FMARK_AGENT" "$out/serial-$fw.log" 2>/dev/null | clean | head -n 1 || true)
  i=$(grep -a "$FMARK_ID" "$out/serial-$fw.log" 2>/dev/null | clean | head -n 1 || true)
  if [[ "$a" == *"$FMARK_AGENT v=$AGENT_VERSION a=amd64"* ]]; then ok "$fw: serial console: $FMARK_AGENT v=$AGENT_VERSION a=amd64"
  else fail "$fw: want '$FMARK_AGENT v=$AGENT_VERSION a=amd64' on the serial console (the factory's agent script), got '${a:-nothing}'"; fi
  if [[ "$i" == *"$FMARK_ID $id"* ]]; then ok "$fw: serial console: $FMARK_ID $id"
  else fail "$fw: want '$FMARK_ID $id' on the serial console, got '${i:-nothing}'"; fi
  c=$(grep -a "$FMARK_CONFIG" "$out/serial-$fw.log" 2>/dev/null | clean | head -n 1 || true)
  if [[ "$c" == *"$FMARK_CONFIG ok"* ]]; then ok "$fw: serial console: $FMARK_CONFIG ok (the schematic's talos.config URL loaded)"
  else fail "$fw: want '$FMARK_CONFIG ok' on the serial console (the VM fetched the schematic's talos.config URL), got '${c:-nothing}'"; fi
}

# The VM loaded its configuration from ironboot as Talos would: GET /config?u=<its uuid>
# (iPXE expanded the literal ${uuid} of the schematic), 200 with Omni's join document.
check_config_fetch() { # FW
  local fw=$1 mac=${MAC[$1]} want="/config?u=${VMUUID[$1]}" uris resp
  uris=$(tsh "$out/$fw.pcap" "eth.src==$mac && ip.dst==$PROV_IP && tcp.dstport==$API_PORT && http.request.method==\"GET\"" http.request.uri)
  if grep -qxF "$want" <<<"$uris"; then ok "$fw: the VM sent GET $want to ironboot (the schematic's talos.config, \${uuid} expanded)"
  else fail "$fw: no GET $want from $mac to $PROV_IP:$API_PORT; GETs: [$(tr '\n' ' ' <<<"$uris")]"; fi
  resp=$(tsh "$out/$fw.pcap" "ip.src==$PROV_IP && eth.dst==$mac && http.response.code==200 && http.response_for.uri contains \"/config?u=\"" http.file_data)
  if grep -qF "$JOIN_TOKEN" <<<"$resp"; then ok "$fw: ironboot answered 200 with Omni's join document (token $JOIN_TOKEN)"
  else fail "$fw: no 200 answer to GET /config carrying Omni's join document (token $JOIN_TOKEN) in the capture; bodies: [${resp:0:300}]"; fi
}

# Omni's join configuration for this provider (Omni renders it; ironboot serves it).
put_join_config() {
  local cmd a
  cmd=$(python3 -c 'import json,sys
doc = "apiVersion: v1alpha1\nkind: SideroLinkConfig\napiUrl: https://omni.test:8090?jointoken=%s\n" % sys.argv[2]
print(json.dumps({"cmd": "put", "kind": "ProviderJoinConfig", "id": sys.argv[1],
  "spec": {"config": {"config": doc}, "joinToken": sys.argv[2]},
  "labels": {"omni.sidero.dev/infra-provider-id": sys.argv[1]}}))' "$PROVIDER_ID" "$JOIN_TOKEN")
  a=$(harness_cmd "$cmd")
  [ "$(json_get "$a" 'j.get("ok") is True')" = True ] || setup_error "putting the ProviderJoinConfig into the harness failed: $a"
}
config_served() {
  ip netns exec "$P-prov" curl -sf --max-time 2 "$API/config?u=omni-sh-probe" 2>/dev/null | grep -qF "$JOIN_TOKEN"
}

# The stand-in's request log: the schematic POSTs (from ironboot, one for all VMs, with the
# agent-mode content upstream requires) and the PXE GETs (from the VMs). Prints the ID.
check_factory_log() {
  local report
  if report=$(python3 - "$out/factory-requests.jsonl" "$PROV_IP" "$API_PORT" "$AGENT_VERSION" "${#VMS[@]}" 3>"$state/schematic-id" <<'EOF'
import hashlib, json, os, sys
import yaml
path, prov, port, version, nvms = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
reqs = [json.loads(l) for l in open(path)] if os.path.exists(path) else []
posts = [r for r in reqs if r["method"] == "POST"]
problems, notes = [], []
if len(posts) != 1:
    problems.append("%d POSTs, want exactly 1 (one schematic content for all %d VMs: "
                    "ironboot caches it): %s" % (len(posts), nvms, [p["path"] for p in posts]))
sid = ""
if posts:
    p = posts[0]
    if p["path"] != "/schematics":
        problems.append("POST to %s, want /schematics" % p["path"])
    if p["client"] != prov:
        problems.append("schematic POSTed from %s, want ironboot (%s)" % (p["client"], prov))
    try:
        doc = yaml.safe_load(p["body"])
        cust = doc["customization"]
        args = cust.get("extraKernelArgs") or []
        exts = (cust.get("systemExtensions") or {}).get("officialExtensions") or []
    except Exception as e:  # noqa: BLE001 - any shape error is the finding
        problems.append("schematic body is not the factory's YAML shape (%s): %r" % (e, p["body"]))
        args, exts = [], []
    want_args = [
        "talos.config=http://%s:%s/config?u=${uuid}" % (prov, port),
        "metal.provider.address=%s:%s" % (prov, port),
        "console=tty0",
        "console=ttyS0",
    ]
    for a in want_args:
        if a not in args:
            problems.append("kernel argument %r missing from the schematic (has %s)" % (a, args))
    want_exts = ["siderolabs/" + n for n in (
        "amd-ucode", "amdgpu-firmware", "bnx2-bnx2x", "chelsio-firmware", "i915-ucode",
        "intel-ice-firmware", "intel-ucode", "qlogic-firmware", "realtek-firmware", "metal-agent")]
    if sorted(exts) != sorted(want_exts):
        problems.append("extensions %s, want upstream's agent-mode set %s" % (exts, want_exts))
    sid = hashlib.sha256(p["body"].encode()).hexdigest()
    notes.append("1 POST /schematics from %s: kernel args %s; %d extensions incl. "
                 "siderolabs/metal-agent; id %s" % (prov, args, len(exts), sid[:12]))
gets = [r for r in reqs if r["method"] == "GET"]
want_get = "/pxe/%s/%s/metal-amd64" % (sid, version)
# Through ironboot's proxy: the factory sees ironboot ask (scripts are kept up to a
# minute, so once or once per VM), never a VM.
proxied = [g for g in gets if g["path"] == want_get and g["client"] == prov]
direct = [g for g in gets if g["client"] != prov]
if not 1 <= len(proxied) <= nvms or direct:
    problems.append("%d GET %s from ironboot (want 1 to %d) and %d from elsewhere (want 0); "
                    "GETs seen: %s" % (len(proxied), want_get, nvms, len(direct),
                                       [(g["client"], g["path"]) for g in gets]))
else:
    notes.append("GET %s from ironboot's proxy %d time(s) for %d VMs" % (want_get, len(proxied), nvms))
os.write(3, sid.encode())
print("; ".join(problems or notes))
sys.exit(1 if problems else 0)
EOF
  ); then ok "factory stand-in: $report"
  else fail "factory stand-in: $report"; fi
  SCHEMATIC_ID=$(cat "$state/schematic-id" 2>/dev/null || true)
}

# Not asserted: what ironboot logged about each VM, and the Omni calls made while the VMs
# booted (the PXE boot event wakes the control loop of each VM's UUID, which reads Omni).
info_executor() {
  local fw lines
  say "info (not asserted): Omni calls before the VMs booted: $CALLS_BEFORE; at the end: $(calls_summary "$(cat "$out/omni-calls.json")")"
  for fw in "${VMS[@]}"; do
    lines=$(grep -a "${VMUUID[$fw]}" "$out/ironboot.err" | clean | grep -avE 'GET /ipxe|http_request|boot.ipxe' | head -n 5 | tr '\n' ' ' || true)
    say "info (not asserted): ironboot log lines naming ${VMUUID[$fw]} beyond the HTTP requests: ${lines:-none}"
  done
}

# ================================================================= main
check_prereqs "${BIOS_FILES[@]}" "$OVMF_CODE:ovmf" "$OVMF_VARS:ovmf"
check_ironboot_bin
python3 -c 'import yaml' 2>/dev/null ||
  setup_error "missing: Python module yaml (reads the schematic the factory stand-in receives)
  install: sudo tests/install-prereqs.sh
       or: apt-get install -y --no-install-recommends python3-yaml"
[ -n "${OMNI_HARNESS_BIN:-}" ] || setup_error "OMNI_HARNESS_BIN is not set: build tests/omni-harness (cargo test --test it real_firmware:: does) and pass its binary"
[ -x "$OMNI_HARNESS_BIN" ] || setup_error "OMNI_HARNESS_BIN=$OMNI_HARNESS_BIN is not an executable file"
for fw in "${VMS[@]}"; do
  [ -n "${TAP[$fw]:-}" ] || setup_error "IBFW_VMS: unknown VM '$fw' (known: bios uefi)"
done
remove_stale_namespaces
make_out_dir "${IBFW_OUT_BASE:-$repo/target/firmware-test}" omni
record_secret "join token" "$JOIN_TOKEN"
say "ironboot in Omni mode; VMs: ${VMS[*]}; out dir: $out"

NTAPS=2
"$here/topology.sh" up "$P" "$NTAPS"
TOPO_UP=1
ip -n "$P-dhcp" addr add "$SITE_IP/24" dev eth0
start_site_dhcp

(umask 077 && "$OMNI_HARNESS_BIN" keygen --id "$PROVIDER_ID" >"$state/sa.key" 2>"$out/keygen.err") ||
  setup_error "omniharness keygen failed: $(cat "$out/keygen.err")"
start_harness
start factory dhcp python3 "$here/factory_standin.py" "$SITE_IP" "$FACTORY_PORT" "$out/factory-requests.jsonl"
wait_for "the factory stand-in listens on $SITE_IP:$FACTORY_PORT" 10 factory listening dhcp t "$FACTORY_PORT"

mkdir -p "$state/ironboot"
OMNI_ARGV=(--omni-api-endpoint "http://$OMNI_ADDR" --image-factory-base-url "$FACTORY"
  --image-factory-pxe-base-url "$FACTORY" --agent-mode-talos-version "$AGENT_VERSION"
  --state-dir "$state/ironboot")
say "ironboot: $IRONBOOT_BIN ${IRONBOOT_ARGV[*]} ${OMNI_ARGV[*]} (OMNI_SERVICE_ACCOUNT_KEY from keygen)"
OMNI_SERVICE_ACCOUNT_KEY=$(cat "$state/sa.key")
export OMNI_SERVICE_ACCOUNT_KEY
start ironboot prov env RUST_BACKTRACE=1 NO_COLOR=1 "$IRONBOOT_BIN" "${IRONBOOT_ARGV[@]}" "${OMNI_ARGV[@]}"
unset OMNI_SERVICE_ACCOUNT_KEY
wait_for "ironboot listens on UDP 67, 4011, 69 and TCP $API_PORT in $P-prov" 20 ironboot \
  eval "listening prov u 67 && listening prov u 4011 && listening prov u 69 && listening prov t $API_PORT"
check_served_by_ironboot "after start"
wait_for "ironboot registers with Omni (InfraProviderStatus $PROVIDER_ID)" 30 ironboot registered
put_join_config
wait_for "ironboot serves Omni's join configuration on $API/config" 20 ironboot config_served

CALLS_BEFORE=$(calls_summary "$(harness_cmd '{"cmd":"calls"}')")

for fw in "${VMS[@]}"; do
  start "tcpdump-$fw" lan tcpdump -Z root -n -U --immediate-mode -i "${TAP[$fw]}" -w "$out/$fw.pcap"
  wait_for "tcpdump on ${TAP[$fw]} is listening" 10 "tcpdump-$fw" log_has "tcpdump-$fw.err" "listening on"
done

# A VM is done once the factory script's last line is complete.
done_marker() { grep -aqE "$FMARK_CONFIG (ok|failed|none)" "$out/serial-$1.log" 2>/dev/null; }
run_vms_until done_marker
sleep 0.5
for fw in "${VMS[@]}"; do stop "tcpdump-$fw"; done

# ---------------------------------------------------------------- assertions
check_registration
SCHEMATIC_ID=""
check_factory_log
for fw in "${VMS[@]}"; do
  [ "${RESULT[$fw]}" = reached ] || fail "$fw VM: ${RESULT[$fw]} after $(secs "${ELAPSED[$fw]}") s (limit ${TIMEOUT[$fw]} s) without reaching the factory's agent script"
  check_offer_and_gets "$fw"
  check_factory_get "$fw" "${SCHEMATIC_ID:-<none posted>}"
  check_marker "$fw" "${SCHEMATIC_ID:-<none posted>}"
  check_config_fetch "$fw"
done
check_factory_fetches
if api_get /metrics "$out/metrics.txt"; then
  check_metric_at_least "$out/metrics.txt" 'ironboot_http_requests_total{route="boot_script",status="200"}' "${#VMS[@]}" "boot.ipxe per VM"
  say "info (not asserted): $(grep -a '^ironboot_boot_decisions_total' "$out/metrics.txt" | xargs)"
fi
info_executor
# ironboot runs with --debug: the OpenPGP crate's own debug lines would print the
# service-account secret key packet; ironboot caps that crate at warn.
if grep -aq 'pgp::' "$out/ironboot.err"; then
  fail "ironboot's log carries the pgp crate's debug lines (the service-account secret key's parse)"
fi
check_served_by_ironboot "at the end"
check_ironboot_healthy

for fw in "${VMS[@]}"; do say "timing: $fw VM ${RESULT[$fw]} after $(secs "${ELAPSED[$fw]}") s"; done
if [ ${#FAILS[@]} -gt 0 ]; then exit 1; fi
say "PASS (Omni mode; ${VMS[*]}; agent-mode image $AGENT_VERSION from the factory stand-in)"
