//! Replays the `tftp` fuzz corpus on stable, through the same property check the fuzz
//! target runs, so every input the fuzzer ever kept stays a regression test. A seeded
//! batch of random inputs runs through it too, as a smoke test between fuzzing sessions.

use ironboot_net::tftp::fuzz::{check_ops, check_ops_counted};
use ironboot_net::tftp::{RequestOutcome, TransferFailure};
use ironboot_net::wire::tftp::ErrorCode;

mod common;

#[test]
fn tftp_fuzz_corpus_replays_cleanly() {
    common::replay_fuzz_corpus("tftp", check_ops);
}

#[test]
fn random_operation_sequences_hold_the_properties() {
    let mut rng = fastrand::Rng::with_seed(0x7f7f);
    for _ in 0..2000 {
        let len = rng.usize(1..300);
        let input: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
        check_ops(&input);
    }
}

/// Hand-written seeds in the operation encoding of `ironboot_net::tftp::fuzz` (see the
/// module documentation there and `fuzz/README.md`). Written by
/// `cargo test -p ironboot-net --test tftp_fuzz_corpus -- --ignored write_seeds`; they stay
/// in the corpus even when `cmin` finds them redundant.
mod seeds {
    // Configuration byte.
    pub(super) const SINGLE: u8 = 0x01;
    pub(super) const WIN64: u8 = 0x06;
    pub(super) const WIN8: u8 = 0x04;
    pub(super) const BLK8: u8 = 0x08;
    pub(super) const BLK1468: u8 = 0x10;
    pub(super) const RETRY2: u8 = 0x20;
    pub(super) const MAX1: u8 = 0x00;
    pub(super) const MAX4_PER1: u8 = 0x80;
    pub(super) const MAX64: u8 = 0xC0;
    // Operations: client in bits 0-1, port in bits 2-3 (69, 69, pool, foreign).
    pub(super) const POOL_PORT: u8 = 0x08;
    pub(super) const FOREIGN_PORT: u8 = 0x0C;
    pub(super) const RAW: u8 = 0x00;
    pub(super) const REQ: u8 = 0x20;
    pub(super) const ACK_LAST: u8 = 0x60;
    pub(super) const ACK_BEHIND: u8 = 0x70;
    pub(super) const ACK_ANY: u8 = 0x80;
    pub(super) const ERROR: u8 = 0xA0;
    pub(super) const STEP: u8 = 0xC0;
    pub(super) const LEAP: u8 = 0xE0;
    // Request `what` byte: name index, mode << 3, kind << 5.
    pub(super) const A: u8 = 0;
    pub(super) const C: u8 = 2;
    pub(super) const DE: u8 = 3;
    pub(super) const MISSING: u8 = 4;
    pub(super) const PARENT: u8 = 5;
    pub(super) const NETASCII: u8 = 1 << 3;
    pub(super) const MAIL: u8 = 3 << 3;
    pub(super) const WRQ: u8 = 6 << 5;
    pub(super) const DAMAGED: u8 = 7 << 5;
    // Request flags.
    pub(super) const BLKSIZE: u8 = 0x01;
    pub(super) const TSIZE: u8 = 0x02;
    pub(super) const TIMEOUT: u8 = 0x04;
    pub(super) const WINDOWSIZE: u8 = 0x08;
    pub(super) const FOO: u8 = 0x10;
    pub(super) const UPPER: u8 = 0x20;
    pub(super) const DUP_BLKSIZE: u8 = 0x40;
    pub(super) const GARBAGE: u8 = 0x80;
}

#[test]
#[ignore = "writes the seed files; run by hand after changing the input encoding"]
fn write_seeds() {
    use seeds::*;
    let acks = |n: usize, client: u8| vec![ACK_LAST | client; n];
    let cat = |parts: &[&[u8]]| parts.concat();
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        (
            "seed-window-transfer",
            cat(&[
                &[
                    WIN64 | RETRY2 | MAX64,
                    REQ,
                    DE,
                    BLKSIZE | TSIZE | WINDOWSIZE,
                    0x02,
                    0x00,
                    2,
                ],
                &acks(4, 0),
            ]),
        ),
        (
            "seed-single-port-transfer",
            cat(&[
                &[
                    SINGLE | WIN64 | RETRY2 | MAX64,
                    REQ,
                    DE,
                    BLKSIZE | WINDOWSIZE,
                    0x01,
                    0x00,
                    3,
                ],
                &acks(6, 0),
            ]),
        ),
        (
            "seed-netascii-blksize-8",
            cat(&[
                &[
                    WIN64 | BLK8 | RETRY2 | MAX64,
                    REQ | 1,
                    C | NETASCII,
                    BLKSIZE | TSIZE | WINDOWSIZE,
                    0,
                    8,
                    64,
                ],
                &acks(4, 1),
            ]),
        ),
        (
            "seed-lockstep-no-options",
            cat(&[&[RETRY2 | MAX64, REQ | 2, DE, 0], &acks(4, 2)]),
        ),
        (
            "seed-edk2-probe-then-download",
            cat(&[
                &[
                    WIN8 | BLK1468 | RETRY2 | MAX64,
                    REQ,
                    DE,
                    TSIZE | BLKSIZE,
                    0x05,
                    0xbc,
                ],
                &[ERROR, 8],
                &[REQ, DE, BLKSIZE | WINDOWSIZE, 0x05, 0xbc, 4],
                &acks(3, 0),
            ]),
        ),
        (
            "seed-retries-run-out",
            vec![
                WIN8 | RETRY2 | MAX64,
                REQ,
                DE,
                WINDOWSIZE,
                8,
                ACK_LAST,
                LEAP,
                6,
                LEAP,
                6,
                LEAP,
                6,
                LEAP,
                6,
            ],
        ),
        (
            "seed-server-busy",
            vec![
                MAX1,
                REQ,
                DE,
                0,
                ACK_LAST,
                REQ | 2,
                DE,
                0,
                REQ | 3,
                A,
                0,
                ACK_LAST,
                ACK_LAST,
                ACK_LAST,
            ],
        ),
        (
            "seed-client-busy",
            vec![
                MAX4_PER1 | WIN8,
                REQ,
                DE,
                0,
                ACK_LAST,
                REQ | 1,
                DE,
                0,
                REQ | 2,
                DE,
                TSIZE,
            ],
        ),
        (
            "seed-unknown-tid",
            vec![
                WIN8 | MAX64,
                REQ,
                DE,
                WINDOWSIZE,
                4,
                ACK_ANY | 2 | POOL_PORT,
                0,
                1,
                ERROR | 2 | POOL_PORT,
                0,
                ACK_LAST,
                ACK_LAST,
                ACK_LAST,
            ],
        ),
        (
            "seed-refusals",
            vec![
                MAX64,
                REQ,
                DE | WRQ,
                0,
                REQ,
                MISSING,
                0,
                REQ,
                PARENT,
                0,
                REQ,
                DE | MAIL,
                0,
                REQ,
                DE | DAMAGED,
                0,
                REQ,
                DE | DAMAGED,
                BLKSIZE,
                0,
                0,
                REQ,
                DE,
                BLKSIZE,
                0,
                4,
                REQ,
                DE,
                WINDOWSIZE,
                0,
                REQ,
                DE,
                TIMEOUT,
                0,
                REQ,
                DE,
                GARBAGE | BLKSIZE,
                0,
                3,
            ],
        ),
        (
            "seed-gap-and-duplicate-acks",
            cat(&[
                &[
                    WIN8 | BLK8 | RETRY2 | MAX64,
                    REQ,
                    DE,
                    BLKSIZE | WINDOWSIZE | UPPER,
                    0,
                    8,
                    8,
                ],
                &[
                    ACK_LAST,
                    ACK_LAST,
                    ACK_ANY | POOL_PORT,
                    0,
                    8,
                    ACK_BEHIND,
                    2,
                    ACK_BEHIND,
                    1,
                ],
                &acks(20, 0),
            ]),
        ),
        (
            "seed-repeat-and-restart",
            vec![
                WIN8 | RETRY2 | MAX64,
                REQ,
                DE,
                TSIZE | FOO | DUP_BLKSIZE,
                REQ,
                DE,
                TSIZE | FOO | DUP_BLKSIZE,
                ACK_LAST,
                STEP,
                200,
                REQ,
                DE,
                TSIZE | FOO | DUP_BLKSIZE,
                ACK_LAST,
                ACK_LAST,
                ACK_LAST,
                ACK_LAST,
            ],
        ),
        (
            "seed-pending-evicted",
            vec![
                MAX1,
                REQ,
                DE,
                0,
                REQ | 1,
                DE,
                0,
                REQ | 2,
                DE,
                0,
                ACK_LAST | 2,
            ],
        ),
        (
            "seed-wrong-port",
            vec![
                WIN8 | MAX64,
                REQ,
                DE,
                WINDOWSIZE,
                4,
                REQ | 2,
                DE,
                WINDOWSIZE,
                4,
                ACK_ANY | POOL_PORT,
                0,
                0,
                ACK_ANY | 2 | POOL_PORT,
                0,
                0,
                ACK_LAST,
                ACK_LAST | 2,
            ],
        ),
        (
            "seed-unproven",
            vec![RETRY2 | MAX64, REQ, DE, TSIZE, LEAP, 30, LEAP, 30],
        ),
        (
            "seed-raw-garbage",
            vec![
                MAX64,
                RAW,
                6,
                0,
                9,
                b'a',
                b'b',
                b'c',
                b'd',
                RAW | FOREIGN_PORT,
                4,
                0,
                4,
                0,
                1,
                RAW,
                1,
                0,
                RAW,
                4,
                0,
                4,
                0,
                1,
                RAW,
                5,
                0,
                5,
                0,
                0,
                0,
            ],
        ),
        (
            "seed-timeout-option",
            vec![
                WIN8 | RETRY2 | MAX64,
                REQ,
                DE,
                TIMEOUT | TSIZE,
                2,
                LEAP,
                30,
                ACK_LAST,
                ACK_LAST,
                ACK_LAST,
            ],
        ),
    ];
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/tftp");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in &seeds {
        check_ops(bytes);
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

/// The seeds reach what their names say.
#[test]
fn seeds_exercise_what_they_claim() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/tftp");
    let run = |name: &str| {
        let input = std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        check_ops_counted(&input).expect("non-empty seed")
    };
    for name in [
        "seed-window-transfer",
        "seed-single-port-transfer",
        "seed-netascii-blksize-8",
        "seed-lockstep-no-options",
    ] {
        assert_eq!(run(name).transfers_completed(), 1, "{name}");
    }
    let c = run("seed-edk2-probe-then-download");
    assert_eq!(c.transfers_failed(TransferFailure::NegotiationAborted), 1);
    assert_eq!(c.transfers_completed(), 1);
    assert_eq!(
        run("seed-retries-run-out").transfers_failed(TransferFailure::Timeout),
        1
    );
    assert!(run("seed-server-busy").requests(RequestOutcome::ServerBusy) >= 1);
    assert!(run("seed-client-busy").requests(RequestOutcome::ClientBusy) >= 1);
    assert!(run("seed-unknown-tid").errors_sent(ErrorCode::UnknownTransferId) >= 1);
    let c = run("seed-refusals");
    for outcome in [
        RequestOutcome::WriteRefused,
        RequestOutcome::NotFound,
        RequestOutcome::RefusedName,
        RequestOutcome::BadMode,
        RequestOutcome::Malformed,
        RequestOutcome::BadOptions,
    ] {
        assert!(c.requests(outcome) >= 1, "{outcome:?}");
    }
    let c = run("seed-gap-and-duplicate-acks");
    assert!(c.retransmissions_on_rollback() > 0 && c.duplicate_acks() > 0);
    let c = run("seed-repeat-and-restart");
    assert_eq!(c.requests(RequestOutcome::Repeat), 1);
    assert_eq!(c.transfers_failed(TransferFailure::Replaced), 1);
    assert!(run("seed-raw-garbage").malformed_total() > 0);
    assert!(run("seed-pending-evicted").transfers_failed(TransferFailure::PendingEvicted) >= 1);
    assert!(run("seed-wrong-port").transfers_failed(TransferFailure::WrongPort) >= 1);
    assert!(run("seed-unproven").transfers_failed(TransferFailure::Unproven) >= 1);
}
