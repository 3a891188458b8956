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
  # real-firmware PXE tests (tests/it/real_firmware.rs: tests/firmware/run.sh, storm.sh)
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
  curl            # ironboot's HTTP API; curl tftp:// (tests/it/tftp_conformance.rs)
  bc
  # real-firmware Omni scenario (tests/firmware/omni.sh): reads the schematic YAML the
  # Image Factory stand-in receives
  python3-yaml
  # TFTP conformance with real clients (tests/it/tftp_conformance.rs)
  atftp    # TFTP client with windowsize
  tftp-hpa # plain TFTP client (netascii and binary)
  # a Linux boot from ironboot's /assets/ (tests/firmware/assets.sh): the initramfs it builds
  cpio
  gzip
  # later tests: BMC power (IPMI), DHCP load, Redfish emulator venv
  openipmi # ipmi_sim, simulated BMCs of bmc/tests/ipmi_sim.rs
  ipmitool
  kea-admin # perfdhcp
  python3-venv
  # script lint
  shellcheck
  # systemd-analyze verify / security on docs/systemd/ironboot.service, and ironboot
  # run as the unit runs it, traced (tests/it/systemd_unit.rs; setpriv is util-linux's)
  systemd
  strace
  # the container image (tests/container/build.sh, tests/it/container.rs): podman with
  # runc (tests/container/containers.conf), the base image made with mmdebstrap
  podman
  runc
  mmdebstrap
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

# --- Linux boot from /assets/ (tests/firmware/assets.sh): a kernel and a static busybox ---
# Debian's kernel (the version linux-image-amd64 depends on) and busybox-static's binary,
# unpacked into a project-local, git-ignored cache; neither package is installed (the
# kernel would change this host's boot set-up, busybox-static conflicts with busybox).
LINUX_BOOT="$(cd "$(dirname "$0")/.." && pwd)/.cache-tests/linux-boot"
if [ ! -s "$LINUX_BOOT/vmlinuz" ] || [ ! -x "$LINUX_BOOT/busybox" ]; then
  kernel_pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
  [ -n "$kernel_pkg" ] || die "apt-cache depends linux-image-amd64 names no versioned linux-image package"
  debs=$(mktemp -d)
  (cd "$debs" && apt-get download "$kernel_pkg" busybox-static) ||
    die "apt-get download $kernel_pkg busybox-static failed (is the Debian mirror reachable?)"
  dpkg-deb -x "$debs"/linux-image-*.deb "$debs/kernel"
  dpkg-deb -x "$debs"/busybox-static_*.deb "$debs/busybox"
  mkdir -p "$LINUX_BOOT"
  install -m 644 "$(find "$debs/kernel/boot" -name 'vmlinuz-*' | head -n 1)" "$LINUX_BOOT/vmlinuz"
  install -m 755 "$debs/busybox/bin/busybox" "$LINUX_BOOT/busybox"
  rm -rf "$debs"
fi
# --- end Linux boot from /assets/ ----------------------------------------------------------

# --- Redfish emulator (bmc/tests/redfish.rs): sushy-tools with its fake driver ---------
# A project-local, git-ignored venv; the test looks for .venv-tests/redfish/bin/sushy-emulator
# (or IRONBOOT_SUSHY_EMULATOR) and fails, naming this script, when it is missing.
REDFISH_VENV="$(cd "$(dirname "$0")/.." && pwd)/.venv-tests/redfish"
SUSHY_VERSION=2.2.0
if ! "$REDFISH_VENV/bin/python" -c "import bcrypt, importlib.metadata as m; assert m.version('sushy-tools') == '$SUSHY_VERSION'" 2>/dev/null; then
  python3 -m venv "$REDFISH_VENV"
  "$REDFISH_VENV/bin/pip" install --quiet --disable-pip-version-check "sushy-tools==$SUSHY_VERSION" bcrypt
fi
# --- end Redfish emulator ----------------------------------------------------------------

# --- Omni conformance harness (tests/it/omni_conformance.rs): Go + the upstream modules ---
# The harness (tests/omni-harness) imports the real cosi-project/runtime, Omni client and
# go-api-signature modules; their versions are pinned by its go.mod/go.sum. Go itself is
# not a Debian package recent enough: it must be on PATH or in /usr/local/go.
GO="$(command -v go || true)"
if [ -z "$GO" ] && [ -x /usr/local/go/bin/go ]; then GO=/usr/local/go/bin/go; fi
[ -n "$GO" ] ||
  die "Go not found (on PATH or /usr/local/go/bin/go): the Omni conformance test needs Go >= $(sed -n 's/^go //p' "$(dirname "$0")/omni-harness/go.mod"), see https://go.dev/doc/install"
(cd "$(dirname "$0")/omni-harness" && "$GO" mod download) ||
  die "go mod download failed in tests/omni-harness (is the Go module proxy reachable?)"
# --- end Omni conformance harness --------------------------------------------------------

# --- Metal agent harness (tests/it/agent_conformance.rs): Go + the grpctunnel module ---------
# The harness (tests/agent-harness) plays the metal agent on the real jhump/grpctunnel
# module (and bufbuild/protocompile for the agent's .proto); pinned by its go.mod/go.sum.
# Uses the Go found for the Omni harness above.
(cd "$(dirname "$0")/agent-harness" && "$GO" mod download) ||
  die "go mod download failed in tests/agent-harness (is the Go module proxy reachable?)"
# --- end metal agent harness -------------------------------------------------------------

# --- Go provider's PXE peer (tests/it/storm_pxe.rs, benches): Go + dhcp/tftp modules ---------
# tests/pxe-peer serves ProxyDHCP and TFTP on the Go provider's own libraries
# (insomniacslk/dhcp, pin/tftp/v3) at the versions its go.mod pins; pinned by the peer's
# go.mod/go.sum. Uses the Go found for the Omni harness above.
(cd "$(dirname "$0")/pxe-peer" && "$GO" mod download) ||
  die "go mod download failed in tests/pxe-peer (is the Go module proxy reachable?)"
# --- end Go provider's PXE peer ----------------------------------------------------------

# --- Bounded fuzzing (tests/fuzz-smoke.sh): cargo-fuzz on the nightly toolchain --------
rustup run nightly rustc --version >/dev/null 2>&1 || rustup toolchain install nightly --profile minimal ||
  die "installing the nightly toolchain failed (cargo-fuzz needs it)"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked ||
  die "cargo install cargo-fuzz failed (is crates.io reachable?)"
# --- end bounded fuzzing -----------------------------------------------------------------

# --- Dependency checks (tests/deny.sh, run by .ci/run): cargo-deny at a pinned version ----
# Built from crates.io unless this very version is already on PATH (a few minutes, once).
CARGO_DENY_VERSION=0.20.2
if [ "$(cargo deny --version 2>/dev/null)" != "cargo-deny $CARGO_DENY_VERSION" ]; then
  cargo install cargo-deny --version "$CARGO_DENY_VERSION" --locked ||
    die "cargo install cargo-deny $CARGO_DENY_VERSION failed (is crates.io reachable?)"
fi
# --- end dependency checks ---------------------------------------------------------------

echo "install-prereqs: done ($(cargo --version); $(cargo fmt --version); $(cargo clippy --version))"
