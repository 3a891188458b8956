//! Replays the `dhcp_proxy` fuzz corpus on stable, through the same property check the
//! fuzz target runs, so every input the fuzzer ever kept stays a regression test.

use ironboot_net::proxy::fuzz::check_datagram;

mod common;

#[test]
fn fuzz_corpus_replays_cleanly() {
    common::replay_fuzz_corpus("dhcp_proxy", check_datagram);
}
