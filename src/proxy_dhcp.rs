//! Runs the ProxyDHCP service on the configured interface with the chosen UDP driver.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use anyhow::Context;
use ironboot_net::proxy::{BootPolicy, ProxyCounters, ProxyService};
use ironboot_net::udp::{self, BindSpec, BoundSockets, Shutdown};
use tokio::task::JoinHandle;
use tracing::info;

use crate::config::Config;

/// The running ProxyDHCP task; resolves when it stops (on shutdown or a fatal error).
pub(crate) type ProxyTask = JoinHandle<anyhow::Result<()>>;

/// Receive buffer of the ProxyDHCP sockets: a rack powering on at once sends its
/// DISCOVERs within milliseconds, and each one the kernel drops costs its machine a whole
/// firmware timeout (4 s for EDK2). The default (about 200 KiB, roughly 90 DISCOVERs) lost
/// up to 200 of 1,000 in `ironboot storm pxe`; 4 MiB holds well over a thousand.
const RECV_BUFFER: usize = 4 << 20;

/// Open the ProxyDHCP sockets now (so a busy port or a missing interface stops the start
/// with a clear error) and serve them in a task. `None` when ProxyDHCP is disabled.
pub(crate) fn start(
    config: &Config,
    counters: Arc<ProxyCounters>,
    shutdown: Shutdown,
) -> anyhow::Result<Option<ProxyTask>> {
    let Some(dhcp) = &config.dhcp_proxy else {
        info!("ProxyDHCP disabled (--disable-dhcp-proxy)");
        return Ok(None);
    };
    let policy = BootPolicy::new(config.advertise_address, config.api_port)
        .with_efi_ia32_file(dhcp.efi_ia32_boot_file.clone());
    let ports = policy.ports();
    let mut listen = Vec::with_capacity(2);
    if dhcp.listen_broadcast {
        listen.push(ports.server);
    }
    listen.push(ports.pxe);
    // Broadcasts only reach sockets bound to the wildcard address; SO_BINDTODEVICE keeps
    // them to the one interface.
    let binds: Vec<BindSpec> = listen
        .iter()
        .map(|&port| BindSpec {
            addr: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port),
            device: Some(dhcp.interface.name.clone()),
            broadcast: true,
            recv_buffer: Some(RECV_BUFFER),
            ..BindSpec::default()
        })
        .collect();
    let sockets = BoundSockets::open(&binds).context("opening the ProxyDHCP sockets")?;
    info!(
        interface = %dhcp.interface.name,
        ports = ?listen,
        advertise = %config.advertise_address,
        ipxe_script = policy.ipxe_script_url(),
        "ProxyDHCP listening"
    );
    let service = ProxyService::new(Arc::new(policy), counters);
    let kind = config.udp_driver;
    Ok(Some(tokio::spawn(async move {
        let report = udp::serve_bound(kind, sockets, service, shutdown)
            .await
            .context("ProxyDHCP UDP driver")?;
        info!(driver = ?report.driver, stats = ?report.stats, "ProxyDHCP stopped");
        Ok(())
    })))
}
