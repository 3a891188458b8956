//! Runs the ProxyDHCP service on the configured interface with the chosen UDP driver.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use anyhow::Context;
use ironboot_net::proxy::{
    BootPolicy, Ipv4Subnet, ProxyCounters, ProxyService, REFUSAL_LOG_INTERVAL, RefusalLog,
};
use ironboot_net::udp::{BindSpec, BoundSockets};
use tracing::{info, warn};

use crate::boot::config::ServerConfig;
use crate::boot::service::{CancellationToken, ServiceHandle};
use crate::boot::udp_workers::{self, Worker};

/// Receive buffer of the ProxyDHCP sockets: a rack powering on at once sends its
/// DISCOVERs within milliseconds, and each one the kernel drops costs its machine a whole
/// firmware timeout (4 s for EDK2). The default (about 200 KiB, roughly 90 DISCOVERs) lost
/// up to 200 of 1,000 in `ironboot storm pxe`; 4 MiB holds well over a thousand.
const RECV_BUFFER: usize = 4 << 20;

/// The interface ProxyDHCP serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DhcpInterface {
    /// Interface name, for `SO_BINDTODEVICE`.
    pub(crate) name: String,
    /// Interface index.
    pub(crate) index: u32,
}

/// ProxyDHCP settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DhcpProxyConfig {
    /// The interface to bind to.
    pub(crate) interface: DhcpInterface,
    /// Whether to listen on 67 (else only 4011).
    pub(crate) listen_broadcast: bool,
    /// Boot file for EFI IA32 clients.
    pub efi_ia32_boot_file: Option<String>,
    /// `--dhcp-relay-allow`: the subnets relays are answered in (empty: any unicast).
    pub(crate) relay_allow: Vec<Ipv4Subnet>,
}

/// Open the ProxyDHCP sockets now (so a busy port or a missing interface stops the start
/// with a clear error) and serve them in a task running `--udp-workers` drivers. `None`
/// when ProxyDHCP is disabled. The task stops once `stop` is cancelled.
pub(crate) fn start(
    config: &ServerConfig,
    counters: Arc<ProxyCounters>,
    stop: CancellationToken,
) -> anyhow::Result<Option<ServiceHandle>> {
    let Some(dhcp) = &config.dhcp_proxy else {
        info!("ProxyDHCP disabled (--disable-dhcp-proxy)");
        return Ok(None);
    };
    // The served link's subnets: no reply goes to their network or broadcast address.
    let local_subnets: Vec<Ipv4Subnet> = match crate::boot::netif::ipv4_subnets(
        &dhcp.interface.name,
    ) {
        Ok(found) => found
            .into_iter()
            .filter_map(|(addr, prefix)| Ipv4Subnet::containing(addr, prefix))
            .collect(),
        Err(e) => {
            warn!(interface = %dhcp.interface.name, error = %e, "cannot read the interface's subnets; only address classes guard ProxyDHCP reply destinations");
            Vec::new()
        }
    };
    let policy = BootPolicy::new(config.advertise_address, config.api_port)
        .with_efi_ia32_file(dhcp.efi_ia32_boot_file.clone())
        .with_relay_allow(dhcp.relay_allow.clone())
        .with_local_subnets(local_subnets.clone());
    let ports = policy.ports();
    // Broadcasts only reach sockets bound to the wildcard address; SO_BINDTODEVICE keeps
    // them to the one interface.
    let spec = |port| BindSpec {
        addr: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port),
        device: Some(dhcp.interface.name.clone()),
        broadcast: true,
        recv_buffer: Some(RECV_BUFFER),
        ..BindSpec::default()
    };
    let mut listen = Vec::with_capacity(2);
    // Port 67 hears broadcasts, which Linux delivers to every socket of a reuse-port
    // group: one socket per worker would answer each DISCOVER once per worker. So it is
    // opened once and duplicated into every worker; each datagram is read by one of them.
    let mut broadcast = if dhcp.listen_broadcast {
        listen.push(ports.server);
        Some(BoundSockets::open(&[spec(ports.server)]).context("opening the ProxyDHCP sockets")?)
    } else {
        None
    };
    listen.push(ports.pxe);
    let policy = Arc::new(policy);
    // One log bound for all workers.
    let refusals = Arc::new(RefusalLog::new(
        std::time::Instant::now(),
        REFUSAL_LOG_INTERVAL,
    ));
    let workers = (0..config.udp_workers)
        .map(|index| {
            // The last worker takes the socket itself, the others a duplicate (with one
            // worker, nothing is duplicated).
            let shared = if index + 1 == config.udp_workers {
                broadcast.take()
            } else {
                broadcast
                    .as_ref()
                    .map(BoundSockets::try_clone)
                    .transpose()
                    .context("sharing the ProxyDHCP broadcast socket")?
            };
            let mut sockets = match shared {
                Some(sockets) => sockets,
                None => BoundSockets::open(&[]).context("opening the ProxyDHCP sockets")?,
            };
            // 4011 is unicast: every worker has its own socket on the shared port.
            sockets.append(
                BoundSockets::open(&[spec(ports.pxe).with_reuse_port(true)])
                    .with_context(|| format!("opening the ProxyDHCP sockets of worker {index}"))?,
            );
            Ok(Worker {
                sockets,
                service: ProxyService::new(policy.clone(), counters.clone())
                    .with_refusal_log(refusals.clone()),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    crate::boot::service::warn_if_buffers_capped("ProxyDHCP", workers.iter().map(|w| &w.sockets));
    info!(
        interface = %dhcp.interface.name,
        ports = ?listen,
        workers = workers.len(),
        advertise = %config.advertise_address,
        ipxe_script = policy.ipxe_script_url(),
        local_subnets = ?local_subnets.iter().map(ToString::to_string).collect::<Vec<_>>(),
        relay_allow = ?dhcp.relay_allow.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "ProxyDHCP listening"
    );
    Ok(Some(ServiceHandle::spawn(
        "ProxyDHCP",
        udp_workers::run(
            "ProxyDHCP",
            config.udp_driver,
            workers,
            udp_workers::shutdown_on(stop),
        ),
    )))
}
