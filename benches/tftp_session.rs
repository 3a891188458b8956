//! Per-transfer cost of the TFTP server's sans-IO path: a whole read of a 256 KiB file as
//! EDK2 asks for it (`blksize` 1468, `windowsize` 4, `tsize`) and as iPXE does (`blksize`
//! 1432, lock-step), every packet through `TftpServer::on_datagram` with the queued sends
//! drained as a driver would. Throughput is in bytes of file served per second; what the
//! kernel costs is measured by `benches/tftp_compare.sh`, not here.
//!
//! Under `cargo test --all-targets` (CI) criterion runs each workload once, so the bench
//! cannot rot; a run also checks that every transfer completes with the file's bytes.

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use criterion::{Criterion, Throughput};
use ironboot_net::files::FileSet;
use ironboot_net::service::{DatagramService, RecvMeta, TxQueue};
use ironboot_net::tftp::{TftpConfig, TftpCounters, TftpServer};

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 3);
const CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 98, 0, 127), 1024);
const REQUEST_PORT: u16 = 6969;
const POOL: [u16; 4] = [40001, 40002, 40003, 40004];
const FILE_SIZE: usize = 256 * 1024;

/// How a client reads.
struct Client {
    name: &'static str,
    /// The read request, options included.
    rrq: Vec<u8>,
    /// The block size it asks for (a shorter DATA block ends the transfer).
    blksize: usize,
}

fn rrq(options: &[(&str, &str)]) -> Vec<u8> {
    let mut p = vec![0, 1];
    for part in ["snp.efi", "octet"] {
        p.extend_from_slice(part.as_bytes());
        p.push(0);
    }
    for (k, v) in options {
        p.extend_from_slice(k.as_bytes());
        p.push(0);
        p.extend_from_slice(v.as_bytes());
        p.push(0);
    }
    p
}

fn clients() -> [Client; 2] {
    [
        Client {
            name: "edk2_blksize1468_window4",
            rrq: rrq(&[("blksize", "1468"), ("windowsize", "4"), ("tsize", "0")]),
            blksize: 1468,
        },
        Client {
            name: "ipxe_blksize1432_lockstep",
            rrq: rrq(&[("blksize", "1432")]),
            blksize: 1432,
        },
    ]
}

/// A server with one file, and the buffers a transfer reuses.
struct Bench {
    server: TftpServer,
    tx: TxQueue,
    now: Instant,
}

impl Bench {
    fn new() -> Self {
        let mut files = FileSet::new();
        let content: Vec<u8> = (0..FILE_SIZE).map(|i| (i % 251) as u8).collect();
        files.insert("snp.efi", Bytes::from(content)).unwrap();
        let config = TftpConfig {
            port: REQUEST_PORT,
            ..TftpConfig::default()
        };
        let server = TftpServer::new(
            config,
            Arc::new(files),
            &POOL,
            Arc::new(TftpCounters::default()),
        )
        .unwrap();
        let tx = TxQueue::with_capacity(server.max_sends_per_event());
        Bench {
            server,
            tx,
            now: Instant::now(),
        }
    }

    fn deliver(&mut self, data: &[u8], local_port: u16) {
        let meta = RecvMeta {
            src: CLIENT,
            local_addr: SERVER,
            local_port,
            ifindex: 1,
        };
        self.server.on_datagram(self.now, data, &meta, &mut self.tx);
    }

    /// One whole transfer; returns the bytes of file data received.
    fn transfer(&mut self, client: &Client) -> usize {
        self.deliver(&client.rrq, REQUEST_PORT);
        let mut received = 0;
        let mut transfer_port = 0;
        let mut ack: Option<u16> = None;
        let mut done = false;
        loop {
            let mut last_block = None;
            for (meta, header, body) in self.tx.iter() {
                transfer_port = meta.local_port;
                let len = header.len() + body.map_or(0, |b| b.len());
                match header[1] {
                    // OACK: acknowledge with block 0.
                    6 => last_block = Some(0),
                    // DATA: count it; a short block ends the transfer.
                    3 => {
                        let block = u16::from_be_bytes([header[2], header[3]]);
                        received += len - 4;
                        last_block = Some(block);
                        done = len - 4 < client.blksize;
                    }
                    op => panic!("unexpected opcode {op}"),
                }
            }
            self.tx.clear();
            let Some(block) = last_block.or(ack) else {
                panic!("the server sent nothing");
            };
            ack = Some(block);
            let [hi, lo] = block.to_be_bytes();
            self.deliver(&[0, 4, hi, lo], transfer_port);
            if done {
                self.tx.clear();
                return received;
            }
        }
    }
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    let mut group = criterion.benchmark_group("tftp_transfer");
    for client in clients() {
        let mut bench = Bench::new();
        assert_eq!(bench.transfer(&client), FILE_SIZE, "{}", client.name);
        assert_eq!(bench.server.active_transfers(), 0, "{}", client.name);
        group.throughput(Throughput::Bytes(FILE_SIZE as u64));
        group.bench_function(client.name, |b| {
            b.iter(|| black_box(bench.transfer(&client)));
        });
    }
    group.finish();
    criterion.final_summary();
}
