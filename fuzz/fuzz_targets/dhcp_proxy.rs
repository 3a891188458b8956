//! Fuzz the whole ProxyDHCP datagram path: parse, decide, count, emit.
//!
//! The first input byte selects the receive context (port 67/4011/other, source, local
//! address, policy, output buffer size); the rest is the UDP payload. The checks live in
//! `ironboot_net::proxy::fuzz::check_datagram` so `net/tests/fuzz_corpus.rs` replays the
//! corpus on stable with exactly the same properties.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| ironboot_net::proxy::fuzz::check_datagram(input));
