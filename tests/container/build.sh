#!/bin/bash
# Builds ironboot's container image (the root Dockerfile) with podman, as
# localhost/ironboot:test, on a machine that reaches no container registry: the base image
# (localhost/debian:bookworm-slim) is made once with mmdebstrap from Debian's mirrors and
# imported; the build itself fetches Debian packages and crates.io crates.
#
# usage (as root): tests/container/build.sh
# environment:
#   IMAGE        tag to build (default localhost/ironboot:test)
#   BASE_IMAGE   base image (default localhost/debian:bookworm-slim; made if absent)
#   DEBIAN_MIRROR  mirror for the base image (default http://deb.debian.org/debian)
# podman runs with tests/container/containers.conf (CONTAINERS_CONF), which the test
# machines need (hybrid cgroups, a low hard RLIMIT_NOFILE): see that file.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
IMAGE=${IMAGE:-localhost/ironboot:test}
BASE_IMAGE=${BASE_IMAGE:-localhost/debian:bookworm-slim}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
export CONTAINERS_CONF="$here/containers.conf"

say() { echo "[container-build $(date -u +%H:%M:%S)] $*"; }
die() { echo "[container-build] ERROR: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (podman builds as root here): sudo $0"
missing=()
for cmd in podman runc mmdebstrap; do
  command -v "$cmd" >/dev/null || missing+=("$cmd")
done
[ ${#missing[@]} -eq 0 ] ||
  die "missing command(s): ${missing[*]}; install: sudo tests/install-prereqs.sh (or apt-get install -y ${missing[*]})"

start=$(date +%s)
if podman image exists "$BASE_IMAGE"; then
  say "base image $BASE_IMAGE present"
else
  # What Debian's official debian:bookworm-slim is: the minbase variant with the
  # release, updates and security suites in its sources (rustc-web 1.96 comes from
  # bookworm-security).
  cache="$repo/.cache-tests/container"
  mkdir -p "$cache"
  tar="$cache/debian-bookworm-minbase.tar"
  # mmdebstrap picks its output format from the name's extension: a .tar until complete.
  partial="$cache/partial-debian-bookworm-minbase.tar"
  say "making the base image $BASE_IMAGE with mmdebstrap (Debian bookworm minbase, about 15 s)"
  # As the official slim image: no manual pages, documentation (copyrights kept) nor
  # translations, for this base and every package installed on it later.
  mmdebstrap --quiet --variant=minbase --include=ca-certificates \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/lintian/*' \
    bookworm "$partial" \
    "deb $MIRROR bookworm main" \
    "deb $MIRROR bookworm-updates main" \
    "deb $SECURITY_MIRROR bookworm-security main" ||
    die "mmdebstrap failed (is $MIRROR reachable?)"
  mv "$partial" "$tar"
  podman import --quiet "$tar" "$BASE_IMAGE" >/dev/null || die "podman import of $tar failed"
  rm -f "$tar"
  say "base image $BASE_IMAGE imported"
fi

# The crates, vendored from the host's cargo (its registry cache, else crates.io with the
# host's own trust store): the image build then downloads no crate, and works where the
# way out to crates.io needs the host's certificate authorities. The Dockerfile builds
# from this directory when the context has it, from crates.io otherwise.
command -v cargo >/dev/null || die "cargo not found on PATH (it vendors the crates for the build)"
vendor="$repo/.cache-tests/container/vendor"
mkdir -p "$(dirname "$vendor")"
say "vendoring the crates of Cargo.lock into $vendor"
(cd "$repo" && { cargo vendor --quiet --locked --offline --versioned-dirs "$vendor" >/dev/null 2>&1 ||
  cargo vendor --quiet --locked --versioned-dirs "$vendor" >/dev/null; }) ||
  die "cargo vendor failed (crates.io unreachable and the crates not in cargo's cache?)"

say "building $IMAGE from $repo/Dockerfile (BASE=$BASE_IMAGE); a release build of ironboot, several minutes from scratch"
# Host networking for the build's downloads (apt, crates.io): no container network is
# needed, and none is set up.
podman build --network host --build-arg "BASE=$BASE_IMAGE" --tag "$IMAGE" \
  --file "$repo/Dockerfile" "$repo" ||
  die "podman build of $IMAGE failed (see its output above)"
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
say "built $IMAGE: $((size / 1000000)) MB, in $(($(date +%s) - start)) s"
