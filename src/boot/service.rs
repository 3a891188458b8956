//! A started service as the supervisor sees it: its name and its task. Every service's
//! `start` takes a [`CancellationToken`] and returns one of these; the task ends once the
//! token is cancelled and the service has finished what it was doing (a service is never
//! aborted: it checks the token at its await points).

use std::future::Future;

use ironboot_net::udp::{BoundSockets, capped_buffers};
use tokio::task::JoinHandle;
pub(crate) use tokio_util::sync::CancellationToken;

/// A running service: its name (in logs) and its task.
#[derive(Debug)]
pub(crate) struct ServiceHandle {
    /// Names the service in logs ("ProxyDHCP", "HTTP API", ...).
    pub(crate) name: &'static str,
    /// Resolves when the service has stopped, with how it ended.
    pub(crate) task: JoinHandle<anyhow::Result<()>>,
}

impl ServiceHandle {
    /// Spawns `run` as the service `name`.
    pub(crate) fn spawn(
        name: &'static str,
        run: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) -> Self {
        Self {
            name,
            task: tokio::spawn(run),
        }
    }
}

/// Warn, in one line for the whole UDP service `service` (all its workers and sockets),
/// when the kernel capped the socket buffers it asked for: without `CAP_NET_ADMIN`,
/// `SO_RCVBUFFORCE` / `SO_SNDBUFFORCE` are refused and `net.core.rmem_max` / `wmem_max`
/// bound the buffers, so a PXE storm overflows them sooner.
pub(crate) fn warn_if_buffers_capped<'a>(
    service: &'static str,
    sockets: impl IntoIterator<Item = &'a BoundSockets>,
) {
    let capped = capped_buffers(sockets);
    if capped.is_empty() {
        return;
    }
    let buffers = capped
        .iter()
        .map(|c| {
            format!(
                "{} {} bytes granted of {} asked",
                c.option, c.granted, c.requested
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    tracing::warn!(
        service,
        buffers,
        "UDP socket buffers capped by net.core.rmem_max / wmem_max: SO_RCVBUFFORCE / \
         SO_SNDBUFFORCE need CAP_NET_ADMIN (a container: --cap-add NET_ADMIN), or raise \
         the sysctls"
    );
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};

    use ironboot_net::udp::{BindSpec, BoundSockets, capped_buffers};
    use rustix::thread::{CapabilitySet, capabilities, set_capabilities};

    /// Without `CAP_NET_ADMIN` in effect a buffer request above `net.core.rmem_max` is cut
    /// to it, and the sockets say so once per option however many there are.
    #[test]
    fn buffers_past_rmem_max_are_reported_capped_without_cap_net_admin() {
        let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .expect("reading net.core.rmem_max")
            .trim()
            .parse()
            .expect("a number");
        let asked = rmem_max + (1 << 20);
        // Capabilities belong to each thread: this one drops CAP_NET_ADMIN from its
        // effective set (a no-op when it has none), the test's other threads keep theirs.
        let capped = std::thread::spawn(move || {
            let mut sets = capabilities(None).expect("reading this thread's capabilities");
            sets.effective.remove(CapabilitySet::NET_ADMIN);
            set_capabilities(None, sets).expect("dropping CAP_NET_ADMIN from this thread");
            let spec = BindSpec::new(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
                .with_recv_buffer(asked)
                .with_send_buffer(4096);
            let a = BoundSockets::open(&[spec.clone(), spec.clone()]).expect("opening sockets");
            let b = BoundSockets::open(&[spec]).expect("opening a socket");
            capped_buffers([&a, &b])
        })
        .join()
        .expect("the socket thread");
        assert_eq!(
            capped.len(),
            1,
            "one entry for SO_RCVBUF, none for SO_SNDBUF: {capped:?}"
        );
        assert_eq!(capped[0].option, "SO_RCVBUF");
        assert_eq!(capped[0].requested, asked);
        assert_eq!(capped[0].granted, rmem_max, "{capped:?}");
    }
}
