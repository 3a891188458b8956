//! Runs the TFTP server on `--api-listen-address:69` plus a pool of per-transfer ports.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use anyhow::Context;
use ironboot_net::files::FileSet;
use ironboot_net::tftp::{TftpConfig, TftpCounters, TftpServer};
use ironboot_net::udp::{self, BindSpec, BoundSockets, Shutdown};
use tokio::task::JoinHandle;
use tracing::info;

use crate::config::Config;

/// Send buffer of each TFTP socket: windows of 64 blocks of 1468 bytes to many clients at
/// once overflow the kernel's default (about 208 KiB), and a refused send costs a timeout.
const SEND_BUFFER: usize = 4 << 20;
/// Receive buffer: ACKs are small, but a storm's RRQs arrive together.
const RECV_BUFFER: usize = 1 << 20;

/// Open the TFTP sockets now (so a busy port 69 stops the start with a clear error) and
/// serve them in a task.
pub(crate) fn start(
    config: &Config,
    files: Arc<FileSet>,
    counters: Arc<TftpCounters>,
    shutdown: Shutdown,
) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
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
    let binds: Vec<BindSpec> = std::iter::once(spec(server_config.port))
        .chain((0..pool_size).map(|_| spec(0)))
        .collect();
    let sockets = BoundSockets::open(&binds).context("opening the TFTP sockets")?;
    let pool: Vec<u16> = sockets.local_addrs()[1..]
        .iter()
        .map(|a| a.port())
        .collect();
    let server =
        TftpServer::new(server_config, files, &pool, counters).context("TFTP configuration")?;
    info!(
        addr = %SocketAddrV4::new(listen, 69),
        single_port = tftp.single_port,
        transfer_ports = pool.len(),
        max_blksize = tftp.max_blksize,
        max_windowsize = tftp.max_windowsize,
        "TFTP listening"
    );
    let kind = config.udp_driver;
    Ok(tokio::spawn(async move {
        let report = udp::serve_bound(kind, sockets, server, shutdown)
            .await
            .context("TFTP UDP driver")?;
        info!(driver = ?report.driver, stats = ?report.stats, "TFTP stopped");
        Ok(())
    }))
}
