# ironboot container image. Build: docker build -t ironboot .
# Run on the machines' L2 network with host networking (ProxyDHCP needs broadcasts):
#   docker run --rm --network host --cap-add NET_ADMIN --cap-add NET_RAW ironboot --debug
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
EXPOSE 67/udp 69/udp 4011/udp 50042/tcp
ENTRYPOINT ["/usr/local/bin/ironboot"]
