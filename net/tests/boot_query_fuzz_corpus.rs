//! Replays the `boot_query` fuzz corpus on stable, through the same property check the
//! fuzz target runs (`ironboot_net::machine::fuzz::check_query`), plus a seeded batch of
//! random inputs as a smoke test between fuzzing sessions.

use ironboot_net::machine::fuzz::check_query;

mod common;

#[test]
fn boot_query_fuzz_corpus_replays_cleanly() {
    common::replay_fuzz_corpus("boot_query", check_query);
}

#[test]
fn random_queries_hold_the_properties() {
    let mut rng = fastrand::Rng::with_seed(0xb007);
    let alphabet = b"0123456789abcdefABCDEF-:{} \x00\x01\x7fxarm_64i386";
    for _ in 0..5000 {
        let len = rng.usize(0..120);
        let input: Vec<u8> = (0..len)
            .map(|_| {
                if rng.u8(..) < 200 {
                    alphabet[rng.usize(..alphabet.len())]
                } else {
                    rng.u8(..)
                }
            })
            .collect();
        check_query(&input);
    }
}
