//! Runs the TFTP server on `--api-listen-address:69` plus a pool of per-transfer ports.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use anyhow::Context;
use ironboot_net::files::FileSet;
use ironboot_net::tftp::{SharedLimits, TftpConfig, TftpCounters, TftpServer};
use ironboot_net::udp::{BindSpec, BoundSockets};
use tracing::info;

use crate::boot::config::ServerConfig;
use crate::boot::service::{CancellationToken, ServiceHandle};
use crate::boot::udp_workers::{self, Worker};

/// Send buffer of each TFTP socket: windows of 64 blocks of 1468 bytes to many clients at
/// once overflow the kernel's default (about 208 KiB), and a refused send costs a timeout.
const SEND_BUFFER: usize = 4 << 20;
/// Receive buffer: ACKs are small, but a storm's RRQs arrive together.
const RECV_BUFFER: usize = 1 << 20;

/// Default number of per-transfer TFTP ports.
pub(crate) const DEFAULT_TFTP_PORT_POOL: usize = 32;

/// TFTP settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TftpSettings {
    /// Everything on port 69.
    pub(crate) single_port: bool,
    /// Largest block size granted.
    pub(crate) max_blksize: u16,
    /// Largest window granted.
    pub(crate) max_windowsize: u16,
    /// Most concurrent transfers.
    pub(crate) max_transfers: usize,
    /// Most concurrent transfers per client.
    pub(crate) max_per_client: usize,
    /// Number of per-transfer ports.
    pub(crate) port_pool: usize,
}

/// Open the TFTP sockets now (so a busy port 69 stops the start with a clear error) and
/// serve them in a task running `--udp-workers` drivers, until `stop` is cancelled.
pub(crate) fn start(
    config: &ServerConfig,
    files: Arc<FileSet>,
    counters: Arc<TftpCounters>,
    stop: CancellationToken,
) -> anyhow::Result<ServiceHandle> {
    let tftp = &config.tftp;
    let listen = config.api_listen_address.unwrap_or(Ipv4Addr::UNSPECIFIED);
    let server_config = TftpConfig {
        max_blksize: tftp.max_blksize,
        max_windowsize: tftp.max_windowsize,
        max_transfers: tftp.max_transfers,
        max_per_client: tftp.max_per_client,
        single_port: tftp.single_port,
        ..TftpConfig::default()
    };
    let spec = |port| {
        BindSpec::new(SocketAddrV4::new(listen, port))
            .with_send_buffer(SEND_BUFFER)
            .with_recv_buffer(RECV_BUFFER)
    };
    let pool_size = if tftp.single_port { 0 } else { tftp.port_pool };
    // Every worker has its own socket on port 69 (`SO_REUSEPORT`: the kernel hashes each
    // client's address and port to one of them), its own pool of transfer ports and its
    // own server; the counters and the transfer limits are shared.
    let binds: Vec<BindSpec> = std::iter::once(spec(server_config.port).with_reuse_port(true))
        .chain((0..pool_size).map(|_| spec(0)))
        .collect();
    // --tftp-max-transfers and --tftp-max-per-client bound all workers together: the
    // kernel spreads one client's transfers over several of them.
    let limits = Arc::new(SharedLimits::new());
    let mut transfer_ports = 0;
    let workers = (0..config.udp_workers)
        .map(|index| {
            let sockets = BoundSockets::open(&binds)
                .with_context(|| format!("opening the TFTP sockets of worker {index}"))?;
            let pool: Vec<u16> = sockets.local_addrs()[1..]
                .iter()
                .map(|a| a.port())
                .collect();
            transfer_ports += pool.len();
            info!(worker = index, transfer_ports = ?pool, "TFTP worker listening");
            let server = TftpServer::new(
                server_config.clone(),
                files.clone(),
                &pool,
                counters.clone(),
            )
            .context("TFTP configuration")?
            .with_shared_limits(limits.clone());
            Ok(Worker {
                sockets,
                service: server,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    crate::boot::service::warn_if_buffers_capped("TFTP", workers.iter().map(|w| &w.sockets));
    info!(
        addr = %SocketAddrV4::new(listen, 69),
        single_port = tftp.single_port,
        workers = workers.len(),
        transfer_ports,
        max_blksize = tftp.max_blksize,
        max_windowsize = tftp.max_windowsize,
        "TFTP listening"
    );
    Ok(ServiceHandle::spawn(
        "TFTP",
        udp_workers::run(
            "TFTP",
            config.udp_driver,
            workers,
            udp_workers::shutdown_on(stop),
        ),
    ))
}
