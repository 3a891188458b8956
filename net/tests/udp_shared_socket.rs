//! Two drivers reading one socket (a [`BoundSockets::try_clone`] in each), as the UDP
//! workers of one service share the ProxyDHCP broadcast port: every datagram is read by
//! exactly one of them, each echo goes out once, and neither driver trips over the other
//! draining the queue first. For each driver, and for one of each.
//!
//! Loopback only. The io_uring cases FAIL (never skip) when the kernel refuses io_uring.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use ironboot_net::service::{DatagramService, RecvMeta, SendMeta, TxQueue};
use ironboot_net::udp::{
    BindSpec, BoundSockets, DriverKind, Shutdown, io_uring_available, serve_bound,
};

const DATAGRAMS: u32 = 400;

/// Echoes every datagram back to its sender, counting them.
#[derive(Debug, Default)]
struct Echo {
    seen: u64,
}

impl DatagramService for Echo {
    fn on_datagram(&mut self, _: Instant, data: &[u8], meta: &RecvMeta, tx: &mut TxQueue) {
        self.seen += 1;
        tx.push_with(|buf| {
            buf[..data.len()].copy_from_slice(data);
            Some((
                data.len(),
                SendMeta {
                    dst: meta.src,
                    ifindex: None,
                    src_ip: None,
                    local_port: meta.local_port,
                },
            ))
        });
    }
}

async fn shared_by(kinds: [DriverKind; 2]) {
    for kind in kinds {
        if kind == DriverKind::IoUring
            && let Err(reason) = io_uring_available()
        {
            panic!("io_uring is not available on this machine, so this case cannot run: {reason}");
        }
    }
    let first = BoundSockets::open(&[BindSpec::new(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))])
        .expect("binding the shared socket");
    let second = first.try_clone().expect("duplicating the shared socket");
    let to = first.local_addrs()[0];
    let shutdown = Shutdown::new();
    let tasks: Vec<_> = [first, second]
        .into_iter()
        .zip(kinds)
        .map(|(sockets, kind)| {
            tokio::spawn(serve_bound(
                kind,
                sockets,
                Echo::default(),
                shutdown.clone(),
            ))
        })
        .collect();
    // Let both drivers arm their receives before the burst.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let client = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("client socket");
    client
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    // Read while sending: the client's receive buffer must not be what loses echoes.
    let reader = client.try_clone().expect("client socket clone");
    let echoes = tokio::task::spawn_blocking(move || {
        let mut echoes: BTreeMap<u32, u32> = BTreeMap::new();
        let mut buf = [0u8; 16];
        // Every echo, and any duplicate, until half a second after the last one.
        while let Ok(n) = reader.recv(&mut buf) {
            assert_eq!(n, 4, "an echo is 4 bytes");
            let i = u32::from_be_bytes(buf[..4].try_into().unwrap());
            *echoes.entry(i).or_default() += 1;
        }
        echoes
    });
    let client = tokio::task::spawn_blocking(move || {
        for i in 0..DATAGRAMS {
            client.send_to(&i.to_be_bytes(), to).expect("send");
            if i % 16 == 15 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    });
    client.await.expect("client thread");
    let echoes = echoes.await.expect("reader thread");
    shutdown.trigger();
    let mut seen = Vec::new();
    for task in tasks {
        let report = task.await.expect("driver task").expect("driver run");
        assert_eq!(report.stats.received, report.service.seen);
        seen.push(report.service.seen);
    }
    let wrong: Vec<_> = echoes.iter().filter(|&(_, &n)| n != 1).collect();
    assert!(
        echoes.len() as u32 == DATAGRAMS && wrong.is_empty(),
        "{kinds:?}: every datagram echoed exactly once; {} echoed, counts other than 1: {wrong:?}",
        echoes.len()
    );
    assert_eq!(
        seen.iter().sum::<u64>(),
        u64::from(DATAGRAMS),
        "{kinds:?}: the drivers read each datagram once between them: {seen:?}"
    );
    eprintln!("{kinds:?}: datagrams read per driver {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_io_uring_drivers_share_a_socket() {
    shared_by([DriverKind::IoUring, DriverKind::IoUring]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_portable_drivers_share_a_socket() {
    shared_by([DriverKind::Portable, DriverKind::Portable]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_io_uring_and_a_portable_driver_share_a_socket() {
    shared_by([DriverKind::IoUring, DriverKind::Portable]).await;
}
