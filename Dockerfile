# ironboot container image. Build: docker build -t ironboot .
# Run on the machines' L2 network with host networking (ProxyDHCP needs broadcasts):
#   docker run --rm --network host --cap-add NET_ADMIN --cap-add NET_RAW ironboot --debug
# Omni mode (the Go provider's flags and environment):
#   docker run ... -e OMNI_SERVICE_ACCOUNT_KEY=... ironboot --omni-api-endpoint https://omni.example.org
# Docker's default seccomp profile refuses io_uring; `--udp-driver auto` then falls back
# to the portable driver by itself (one log line says so).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin ironboot

FROM debian:bookworm-slim
# Debian's iPXE binaries (undionly.kpxe, snponly.efi, ipxe.efi) for the TFTP/HTTP boot path.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ipxe ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/ironboot /usr/local/bin/ironboot
# The machine database (--state-dir) and the Image Factory image cache.
VOLUME /var/lib/ironboot
# 50043: the agents' TLS listener, with --tls-enabled.
EXPOSE 67/udp 69/udp 4011/udp 50042/tcp 50043/tcp
ENTRYPOINT ["/usr/local/bin/ironboot"]
