//! Replays the `ipmi_response` fuzz corpus (`fuzz/corpus/ipmi_response/`) on stable,
//! through the same property check the fuzz target runs, so every input the fuzzer ever
//! kept stays a regression test.

#[path = "../../fuzz/replay.rs"]
mod fuzz_replay;

use fuzz_replay::{corpus_dir, replay_fuzz_corpus};
use ironboot_bmc::ipmi::fuzz::{check_response, session_datagram_opens};

fn read(name: &str) -> Vec<u8> {
    let path = corpus_dir("ipmi_response").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn fuzz_corpus_replays_cleanly() {
    replay_fuzz_corpus("ipmi_response", check_response);
}

/// The seeds sealed by `fuzz/make_ipmi_seeds.py` (Python hmac + openssl AES) open with
/// our session code, and their corrupted twins do not: an independent check of the
/// integrity and confidentiality layers, and proof the fuzzer starts past them.
#[test]
fn independently_sealed_seeds_open() {
    for name in [
        "seed-session-chassis-status-suite3",
        "seed-session-chassis-status-suite17",
        "seed-session-priv-suite3",
        "seed-session-close-suite17",
        "seed-session-empty-message",
    ] {
        assert!(session_datagram_opens(&read(name)), "{name} must open");
    }
    for name in [
        "seed-session-wrong-sid",
        "seed-session-bad-authcode",
        "seed-session-bad-ciphertext",
    ] {
        assert!(!session_datagram_opens(&read(name)), "{name} must not open");
    }
}
