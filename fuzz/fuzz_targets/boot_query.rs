//! Fuzz the parsers of what iPXE sends with its boot-script request (`/ipxe/boot.ipxe`):
//! SMBIOS UUID, MAC, `${buildarch}` and the free-text fields, split at NUL bytes. The
//! checks live in `ironboot_net::machine::fuzz::check_query`, so
//! `net/tests/boot_query_fuzz_corpus.rs` replays the corpus on stable with the same
//! properties.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| ironboot_net::machine::fuzz::check_query(input));
