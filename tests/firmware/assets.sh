#!/bin/bash
# A real Linux boot from ironboot's /assets/ (standalone mode, --use-local-boot-assets):
# a BIOS VM (SeaBIOS + QEMU's e1000 iPXE ROM, TCG) on the test LAN of topology.sh, with the
# site's plain DHCP server (dnsmasq) and ironboot as the only servers, PXE-boots, gets from
# the inventory a kernel boot whose kernel and initrd are /assets/ paths, fetches a real
# Debian kernel and an initramfs made by this script from ironboot's /assets/, boots them,
# and the initramfs's /init prints on the serial console
#
#   ASSETSTEST-DONE init=<this run's token in /init> cmdline=<the token of the inventory's cmdline>
#
# which proves that the kernel ran, that the initramfs was this run's own (its token is
# random per run) and that the inventory's command line reached the kernel. Then, through
# ironboot's HTTP API: the boot script names ironboot's /assets/ URLs, /metrics counts the
# files served, and requests with '..', an absolute path, a symlink leaving the directory
# and a directory are each answered 404 and counted by reason. ironboot must still run,
# alone in its namespace, without a panic.
#
# The kernel is Debian's (linux-image-amd64's /boot/vmlinuz-*), the initramfs holds
# busybox-static's binary and an /init script (cpio newc, gzip); tests/install-prereqs.sh
# downloads both into <repo>/.cache-tests/linux-boot.
#
# usage: IRONBOOT_BIN=path/to/ironboot tests/firmware/assets.sh        (as root)
# environment:
#   IRONBOOT_BIN     ironboot binary (required)
#   IRONBOOT_ARGS    its arguments (default "--dhcp-proxy-iface-or-ip eth0 --debug");
#                    assets.sh adds --use-local-boot-assets, --boot-assets-path, --state-dir
#                    and --inventory (all in its scratch dir)
#   ASSETS_TIMEOUT   seconds until the marker (default 300: a kernel boot under TCG)
#   IBFW_PREFIX      namespace prefix (default ibassets); IBFW_OUT_BASE: where the per-run
#                    out dir goes (default <repo>/target/firmware-test); KEEP_OUT=1 keeps it
#                    after a pass (it is always kept after a failure)
# Exit status: 0 pass, 1 assertion failed, 2 prerequisites missing / bad setup.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
export PATH="$PATH:/usr/sbin:/sbin"
repo=$(cd "$here/../.." && pwd)
TAG=assets
P=${IBFW_PREFIX:-ibassets}
out=""
state=""
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"

read -r -a IRONBOOT_ARGV <<<"${IRONBOOT_ARGS:---dhcp-proxy-iface-or-ip eth0 --debug}"
LIMIT=${ASSETS_TIMEOUT:-300}
CACHE=$repo/.cache-tests/linux-boot
VM_MAC=52:54:00:a5:e7:01
VM_UUID=a5e70000-0000-4000-8000-000000000001
DONE=ASSETSTEST-DONE

report_details() {
  tail_file "ironboot stderr" "$out/ironboot.err" 60
  tail_file "site DHCP server (dnsmasq) log" "$out/site-dhcp.err" 20
  tail_file "VM serial console" "$out/serial-vm.log" 60
}

# ================================================================= main
check_prereqs "${BIOS_FILES[@]}"
check_ironboot_bin
for cmd in cpio:cpio gzip:gzip; do need_cmd "${cmd%%:*}" "${cmd#*:}"; done
[ ${#MISSING[@]} -eq 0 ] ||
  setup_error "missing: ${MISSING[*]}; install: sudo tests/install-prereqs.sh (or apt-get install -y ${MISSING_PKGS[*]})"
if [ ! -s "$CACHE/vmlinuz" ] || [ ! -x "$CACHE/busybox" ]; then
  setup_error "missing the Linux kernel and static busybox under $CACHE (vmlinuz, busybox): run sudo tests/install-prereqs.sh, which downloads Debian's linux-image-amd64 and busybox-static there"
fi
[[ "$LIMIT" =~ ^[0-9]+$ ]] || setup_error "ASSETS_TIMEOUT must be a number of seconds, not '$LIMIT'"
remove_stale_namespaces
make_out_dir "${IBFW_OUT_BASE:-$repo/target/firmware-test}" assets
say "a BIOS VM boots Linux from ironboot's /assets/, limit ${LIMIT}s; out dir: $out"

# ---------------------------------------------------------------- the assets
# DIR/linux/debian-amd64/{vmlinuz,initramfs.gz}, DIR/linux/current -> debian-amd64 (a
# symlink inside DIR, followed), DIR/escape -> a file outside DIR (refused).
INIT_TOKEN=$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
CMDLINE_TOKEN=$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
assets=$state/assets
version=debian-amd64
mkdir -p "$assets/linux/$version" "$state/root/bin" "$state/root/proc" "$state/root/dev"
# /init's output goes to /dev/console (console=ttyS0): the node is in the archive itself.
mknod -m 600 "$state/root/dev/console" c 5 1
cp "$CACHE/vmlinuz" "$assets/linux/$version/vmlinuz"
ln -s "$version" "$assets/linux/current"
echo "outside the assets directory" >"$state/outside.txt"
ln -s ../outside.txt "$assets/escape"
cp "$CACHE/busybox" "$state/root/bin/busybox"
cat >"$state/root/init" <<EOF
#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
token=\$(/bin/busybox sed -n 's/.*ibtest.token=\([0-9a-f]*\).*/\1/p' /proc/cmdline)
echo "$DONE init=$INIT_TOKEN cmdline=\$token"
/bin/busybox sleep 1
/bin/busybox poweroff -f
EOF
chmod 755 "$state/root/init"
(cd "$state/root" && find . | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 | gzip -9) \
  >"$assets/linux/$version/initramfs.gz"
say "assets: kernel $(stat -c %s "$assets/linux/$version/vmlinuz") bytes, initramfs $(stat -c %s "$assets/linux/$version/initramfs.gz") bytes (init token $INIT_TOKEN)"

cat >"$state/inventory.toml" <<EOF
[[machine]]
name = "linux-from-assets"
mac = "$VM_MAC"
kernel = "/assets/linux/current/vmlinuz"
initrd = "/assets/linux/$version/initramfs.gz"
cmdline = "console=ttyS0 panic=-1 ibtest.token=$CMDLINE_TOKEN"
EOF

# ---------------------------------------------------------------- the LAN and the VM
NTAPS=1
"$here/topology.sh" up "$P" "$NTAPS"
TOPO_UP=1
start_site_dhcp
start_ironboot "${IRONBOOT_ARGV[@]}" --use-local-boot-assets --boot-assets-path "$assets"
check_served_by_ironboot "after start"

# What the VM will be told: the kernel and initrd on ironboot's /assets/.
if api_get "/ipxe/boot.ipxe?mac=${VM_MAC//:/-}&arch=x86_64" "$out/boot.ipxe"; then
  if grep -qx "kernel $API/assets/linux/current/vmlinuz console=ttyS0 panic=-1 ibtest.token=$CMDLINE_TOKEN" "$out/boot.ipxe" &&
    grep -qx "initrd $API/assets/linux/$version/initramfs.gz" "$out/boot.ipxe"; then
    ok "boot.ipxe for the VM names ironboot's /assets/ URLs"
  else
    fail "boot.ipxe for the VM does not name $API/assets/...: $(tr '\n' '|' <"$out/boot.ipxe")"
  fi
fi

START=$(now_ms)
# 512 MiB: iPXE holds the kernel and initramfs in memory before Linux starts.
start qemu-vm lan qemu-system-x86_64 -uuid "$VM_UUID" -accel tcg -display none -monitor none \
  -no-reboot -serial "file:$out/serial-vm.log" \
  -netdev "tap,id=n0,ifname=tap0,script=no,downscript=no" \
  -m 512 -vga none -machine graphics=off -boot n -device "e1000,netdev=n0,mac=$VM_MAC"
say "VM started (tap0, $VM_MAC, limit ${LIMIT}s)"
result=""
while [ -z "$result" ]; do
  el=$(($(now_ms) - START))
  if grep -aq "$DONE init=[0-9a-f]* cmdline=[0-9a-f]*" "$out/serial-vm.log" 2>/dev/null; then result=reached
  elif log_has serial-vm.log "$IPXE_GAVE_UP"; then result="iPXE gave up ('$IPXE_GAVE_UP')"
  elif log_has serial-vm.log "Kernel panic"; then result="the kernel panicked"
  elif ! alive qemu-vm; then result="QEMU exited"
  elif [ "$el" -ge $((LIMIT * 1000)) ]; then result=timeout
  else sleep 0.5; fi
done
say "VM: $result after $(secs "$el") s"
sleep 1 # let /init finish its line
stop qemu-vm

# ---------------------------------------------------------------- assertions
line=$(grep -a "$DONE" "$out/serial-vm.log" 2>/dev/null | clean | head -n 1 || true)
if [ "$line" = "$DONE init=$INIT_TOKEN cmdline=$CMDLINE_TOKEN" ]; then
  ok "the VM booted the kernel and this run's initramfs from ironboot's /assets/: '$line'"
else
  fail "VM ($result): want '$DONE init=$INIT_TOKEN cmdline=$CMDLINE_TOKEN' on the serial console, got '${line:-nothing}'"
fi
if grep -aq "Linux version" "$out/serial-vm.log"; then ok "the serial console shows Linux starting: $(grep -a -m1 'Linux version' "$out/serial-vm.log" | clean | cut -c1-100)"
else fail "no 'Linux version' on the serial console (console=ttyS0)"; fi

# Refused paths, each a 404 counted by reason (curl --path-as-is keeps '..' as sent).
refused() { # REASON PATH
  local code
  code=$(ip netns exec "$P-prov" curl -s --path-as-is --max-time 10 -o /dev/null -w '%{http_code}' "$API$2" || true)
  if [ "$code" = 404 ]; then ok "GET $2: 404 ($1)"
  else fail "GET $2: status $code, want 404 ($1)"; fi
}
refused dot_segment "/assets/linux/../../inventory.toml"
refused dot_segment "/assets/%2e%2e/outside.txt"
refused absolute "/assets//etc/passwd"
refused escape "/assets/escape"
refused directory "/assets/linux/"
refused directory "/assets/"
if api_get /metrics "$out/metrics.txt"; then
  check_metric_at_least "$out/metrics.txt" ironboot_assets_served_total 2 "the VM's kernel and initramfs"
  check_metric_at_least "$out/metrics.txt" 'ironboot_assets_refused_total{reason="dot_segment"}' 2 "the '..' requests"
  check_metric_at_least "$out/metrics.txt" 'ironboot_assets_refused_total{reason="absolute"}' 1 "the absolute path"
  check_metric_at_least "$out/metrics.txt" 'ironboot_assets_refused_total{reason="escape"}' 1 "the symlink leaving the directory"
  check_metric_at_least "$out/metrics.txt" 'ironboot_assets_refused_total{reason="directory"}' 2 "the directory listings"
  check_metric_at_least "$out/metrics.txt" 'ironboot_boot_decisions_total{kind="kernel"}' 2 "the kernel target (VM and the check above)"
fi
check_served_by_ironboot "at the end"
check_ironboot_healthy

if [ ${#FAILS[@]} -gt 0 ]; then exit 1; fi
say "PASS (Linux booted from /assets/ in $(secs "$el") s)"
