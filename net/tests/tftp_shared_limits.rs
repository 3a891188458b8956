//! Two TFTP servers (two UDP workers of one service) sharing their transfer limits:
//! `max_transfers` and `max_per_client` bound both together, and a slot freed on one
//! server is free for the other.

mod tftp_sim;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use ironboot_net::files::FileSet;
use ironboot_net::tftp::{RequestOutcome, SharedLimits, TftpConfig, TftpCounters, TftpServer};
use ironboot_net::wire::tftp::ErrorCode;
use tftp_sim::{Driver, REQUEST_PORT, ack, config, content, rrq};

fn files() -> FileSet {
    let mut files = FileSet::new();
    files.insert("f", content(3000, 1)).unwrap();
    files.insert("small", content(10, 2)).unwrap();
    files
}

/// A worker: a driven server whose limits are `shared`; both workers count into the
/// same counters, as the binary's do.
fn worker(cfg: &TftpConfig, shared: &Arc<SharedLimits>, counters_of: Option<&Driver>) -> Driver {
    let mut d = Driver::new(cfg.clone(), files());
    let counters = counters_of.map_or_else(
        || Arc::new(TftpCounters::default()),
        |other| other.counters.clone(),
    );
    let server = TftpServer::new(
        cfg.clone(),
        Arc::new(files()),
        &tftp_sim::POOL,
        counters.clone(),
    )
    .unwrap()
    .with_shared_limits(shared.clone());
    drop(std::mem::replace(&mut d.server, server));
    d.counters = counters;
    d
}

#[test]
fn limits_bound_the_workers_together() {
    let cfg = TftpConfig {
        max_transfers: 3,
        max_per_client: 2,
        ..config()
    };
    let shared = Arc::new(SharedLimits::new());
    let mut a = worker(&cfg, &shared, None);
    let mut b = worker(&cfg, &shared, Some(&a));
    let host = |h: u8, p: u16| SocketAddrV4::new(Ipv4Addr::new(10, 0, 5, h), p);

    // A transfer takes a slot when its client acknowledges block 1; returns its port.
    let start = |d: &mut Driver, c: SocketAddrV4| {
        let first = d.send(c, REQUEST_PORT, &rrq("f", &[]));
        assert_eq!(first[0].data().0, 1);
        let port = first[0].meta.local_port;
        assert_eq!(d.send(c, port, &ack(1))[0].data().0, 2, "{c} proven");
        port
    };

    // One client's transfers land on both workers (the kernel hashes its ports): the
    // per-client cap counts them together.
    start(&mut a, host(1, 1));
    start(&mut b, host(1, 2));
    let busy = a.send(host(1, 3), REQUEST_PORT, &rrq("f", &[]));
    assert_eq!(busy[0].error().0, ErrorCode::NotDefined);
    assert!(
        busy[0].error().1.contains("too many transfers"),
        "{:?}",
        busy[0].error()
    );
    assert_eq!(a.counters.requests(RequestOutcome::ClientBusy), 1);
    assert_eq!(shared.transfers_of(Ipv4Addr::new(10, 0, 5, 1)), 2);
    assert_eq!(a.server.transfers_of(Ipv4Addr::new(10, 0, 5, 1)), 1);

    // A request waiting for its first ACK on worker a takes no shared slot ...
    let waiting = a.send(host(4, 1), REQUEST_PORT, &rrq("f", &[]));
    assert_eq!(waiting[0].data().0, 1);
    assert_eq!(shared.active(), 2);

    // ... so the server cap is reached by a proven transfer on worker b, then nothing
    // starts on either worker.
    let port = start(&mut b, host(2, 1));
    assert_eq!(shared.active(), 3);
    let busy = a.send(host(3, 1), REQUEST_PORT, &rrq("f", &[]));
    assert_eq!(busy[0].error().1, "server busy, retry");
    assert_eq!(a.counters.requests(RequestOutcome::ServerBusy), 1);
    assert_eq!(a.counters.active(), 3, "shared counters see both workers");
    // The waiting client proves itself too late: busy.
    let late = a.send(host(4, 1), waiting[0].meta.local_port, &ack(1));
    assert_eq!(late[0].error().1, "server busy, retry");
    assert_eq!(a.server.pending_requests(), 0);

    // A transfer ending on worker b frees a slot worker a may use.
    assert!(
        b.send(
            host(2, 1),
            port,
            &tftp_sim::error(ErrorCode::NotDefined, "bye")
        )
        .is_empty()
    );
    assert_eq!(shared.active(), 2);
    start(&mut a, host(3, 1));
    assert_eq!(shared.active(), 3);
    assert_eq!(shared.transfers_of(Ipv4Addr::new(10, 0, 5, 2)), 0);
}
