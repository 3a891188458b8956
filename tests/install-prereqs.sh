#!/bin/bash
# Installs everything ironboot's test suite needs on a fresh Debian bookworm (amd64).
# Idempotent: running it again only refreshes the package lists and changes nothing else.
# usage (as root): tests/install-prereqs.sh
#   Rust itself is not installed here: cargo must already be on PATH (https://rustup.rs).
#   Under sudo, keep your PATH so that cargo/rustup are found:  sudo env PATH="$PATH" tests/install-prereqs.sh
set -euo pipefail

die() { echo "install-prereqs: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (sudo env PATH=\"\$PATH\" $0)"
command -v apt-get >/dev/null || die "apt-get not found: this script is for Debian (bookworm)"
command -v cargo >/dev/null ||
  die "cargo not found on PATH. Install Rust first (https://rustup.rs), then run this again; under sudo keep PATH: sudo env PATH=\"\$PATH\" $0"

PACKAGES=(
  # real-firmware PXE tests (tests/real_firmware.rs: tests/firmware/run.sh, storm.sh)
  qemu-system-x86 # QEMU under TCG
  seabios         # BIOS of the BIOS VMs
  ipxe-qemu       # QEMU's NIC option ROMs (the e1000 iPXE ROM)
  ovmf            # UEFI firmware (EDK2 PxeBcDxe) of the UEFI VM
  ipxe            # iPXE binaries to serve: snponly.efi, undionly.kpxe, ipxe.efi
  dnsmasq-base    # plain site DHCP server, ProxyDHCP comparison peer (PROXY_UNDER_TEST=dnsmasq)
  tcpdump         # captures
  tshark          # capture checks
  iproute2        # ip netns / ss
  python3         # JSON checks, the TFTP probe (tests/tftp/tftp_probe.py)
  procps          # ps, kill
  curl            # ironboot's HTTP API; curl tftp:// (tests/tftp_conformance.rs)
  bc
  # TFTP conformance with real clients (tests/tftp_conformance.rs)
  atftp    # TFTP client with windowsize
  tftp-hpa # plain TFTP client (netascii and binary)
  # later tests: BMC power (IPMI), DHCP load, Redfish emulator venv
  openipmi # ipmi_sim
  ipmitool
  kea-admin # perfdhcp
  python3-venv
  # script lint
  shellcheck
)

export DEBIAN_FRONTEND=noninteractive
# tshark asks whether non-root users may capture packets: answer it up front (no; tests run as root).
echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections

apt-get update
apt-get install -y --no-install-recommends "${PACKAGES[@]}"

# Rust components used by the project's checks (cargo fmt, cargo clippy).
need=()
cargo fmt --version >/dev/null 2>&1 || need+=(rustfmt)
cargo clippy --version >/dev/null 2>&1 || need+=(clippy)
if [ ${#need[@]} -gt 0 ]; then
  command -v rustup >/dev/null ||
    die "cargo has no ${need[*]} and rustup is not on PATH: install ${need[*]} for your toolchain"
  rustup component add "${need[@]}"
fi

echo "install-prereqs: done ($(cargo --version); $(cargo fmt --version); $(cargo clippy --version))"
