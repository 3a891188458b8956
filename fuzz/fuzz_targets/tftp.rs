//! Fuzz the TFTP server with sequences of operations: datagrams from four clients to the
//! request port, the pool or a foreign port (raw, or requests, ACKs and ERRORs built from
//! a few bytes), and steps of virtual time, under a configuration chosen by the first byte.
//!
//! The checks live in `ironboot_net::tftp::fuzz::check_ops`, so
//! `net/tests/tftp_fuzz_corpus.rs` replays the corpus on stable with exactly the same
//! properties.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| ironboot_net::tftp::fuzz::check_ops(input));
