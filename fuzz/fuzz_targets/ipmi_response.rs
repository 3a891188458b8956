//! Fuzz every parser of what a BMC sends over IPMI RMCP+: datagram framing, the IPMI
//! response message, session-setup payloads (Open Session Response, RAKP 2 and 4),
//! established-session packets (integrity, AES-CBC padding) and the command data.
//!
//! The first input byte selects the path; the checks live in
//! `ironboot_bmc::ipmi::fuzz::check_response` so `bmc/tests/ipmi_fuzz_corpus.rs` replays
//! the corpus on stable with exactly the same properties.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| ironboot_bmc::ipmi::fuzz::check_response(input));
