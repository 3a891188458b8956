# ironboot's container image: Debian bookworm, the binary built from this tree with
# Debian's own Rust (rustc-web / cargo-web 1.96, from bookworm-security), and Debian's iPXE
# binaries. No image but BASE is used; docs/operations.md, "As a host-network container",
# says more.
#
# Build:
#   docker build -t ironboot .      (BuildKit, Docker's default builder since 23.0: the last
#                                   stage mounts the build stage's binary with RUN --mount)
#   sudo tests/container/build.sh   podman, as localhost/ironboot:test, with no registry:
#                                   the base image made with mmdebstrap, the crates vendored
# BASE (a build argument, default debian:bookworm-slim) is the image both stages start
# from; its apt sources must include bookworm-security, as Debian's official image's do.
# The crates come from crates.io, or from .cache-tests/container/vendor when the context
# has it (tests/container/build.sh vendors them there).
#
# Run it on the machines' L2 network with host networking (ProxyDHCP hears broadcasts);
# podman takes the same options:
#   docker run -d --name ironboot --restart=on-failure --network host \
#     --cap-add NET_ADMIN --ulimit nofile=65536:65536 --stop-timeout 120 \
#     -v ironboot-state:/var/lib/ironboot -v /etc/ironboot:/etc/ironboot:ro \
#     ironboot --inventory /etc/ironboot/machines.toml
# Omni mode (the Go provider's flags and environment):
#   docker run ... -e OMNI_ENDPOINT -e OMNI_SERVICE_ACCOUNT_KEY \
#     ironboot --api-advertise-address 10.98.0.3
#
# Capabilities: ironboot runs as the user `ironboot` (uid 10042). Its binary carries
# CAP_NET_BIND_SERVICE (UDP 67, 69, 4011) and CAP_NET_ADMIN (SO_RCVBUFFORCE /
# SO_SNDBUFFORCE: the 4 MiB UDP buffers past net.core.rmem_max / wmem_max) as file
# capabilities in the permitted set only, and makes effective at start those the container
# grants. The file's effective bit would make execve fail (EPERM) wherever the bounding set
# lacks one of them, as docker's and podman's default set lacks NET_ADMIN. So:
#   default               NET_BIND_SERVICE only (in docker's and podman's default set);
#                         each UDP service logs one warning naming the buffer sizes the
#                         kernel granted if net.core.rmem_max / wmem_max are below 4 MiB;
#   --cap-add NET_ADMIN   the full buffers (recommended).
# Nothing else: no raw socket (no NET_RAW), and SO_BINDTODEVICE needs no capability.
# `--security-opt no-new-privileges` makes the kernel ignore file capabilities: with it,
# run as root (`--user 0`).
#
# The default seccomp profiles of docker and podman refuse io_uring: with the default
# `--udp-driver auto` ironboot falls back to the portable driver by itself, saying so in
# one log line per UDP service.

ARG BASE=debian:bookworm-slim

FROM ${BASE} AS build
# gcc and libc6-dev link the binary and build the C of aws-lc and zstd; the .proto files
# compile in Rust (protox), no protoc.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      rustc-web cargo-web gcc libc6-dev ca-certificates \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* \
 && rustc --version && cargo --version
WORKDIR /src
# The workspace's manifests and sources (.dockerignore leaves out the rest).
COPY . .
# No debug information in the image's binary (the project's release profile keeps line
# tables for benchmarks and backtraces), stripped.
ENV CARGO_PROFILE_RELEASE_DEBUG=false \
    CARGO_PROFILE_RELEASE_STRIP=true \
    CARGO_TERM_COLOR=never
# The crates come from crates.io, or from the directory tests/container/build.sh vendors
# them into when the context has it (no download then).
RUN set -e; \
    vendor=.cache-tests/container/vendor; \
    if [ -d "$vendor" ]; then \
      set -- --offline --config 'source.crates-io.replace-with="vendored"' \
        --config "source.vendored.directory=\"$vendor\""; \
    fi; \
    cargo build --release --locked --bin ironboot "$@"; \
    ls -l target/release/ironboot

FROM ${BASE}
# Debian's iPXE binaries (undionly.kpxe, snponly.efi, ipxe.efi) for the TFTP/HTTP boot
# path; libcap2-bin only until the binary's file capabilities are set. The user the
# server runs as, with a fixed uid for the state volume's owner.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ipxe ca-certificates libcap2-bin \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10042 ironboot \
 && useradd --system --uid 10042 --gid ironboot --home-dir /var/lib/ironboot \
      --no-create-home --shell /usr/sbin/nologin ironboot \
 && install -d -o ironboot -g ironboot -m 0750 /var/lib/ironboot
# The binary and its file capabilities in one layer (a COPY, then setcap in a layer of its
# own, would store the binary twice). Permitted only, no effective bit (see the header):
# execve succeeds whichever of the two the container grants, and ironboot makes the
# granted ones effective.
RUN --mount=type=bind,from=build,source=/src/target/release/ironboot,target=/tmp/ironboot \
    install -m 0755 /tmp/ironboot /usr/local/bin/ironboot \
 && setcap cap_net_bind_service,cap_net_admin=p /usr/local/bin/ironboot \
 && DEBIAN_FRONTEND=noninteractive dpkg --purge libcap2-bin
USER ironboot
# The machine database (--state-dir) and the Image Factory image cache.
VOLUME /var/lib/ironboot
# 67, 4011: ProxyDHCP; 69: TFTP; 50042: the HTTP API; 50043: the agents' TLS listener,
# with --tls-enabled. Informative only: the image runs with host networking.
EXPOSE 67/udp 69/udp 4011/udp 50042/tcp 50043/tcp
ENTRYPOINT ["/usr/local/bin/ironboot"]
