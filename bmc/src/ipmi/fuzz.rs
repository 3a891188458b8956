//! The property check behind the `ipmi_response` fuzz target (`fuzz/fuzz_targets/`),
//! public so that `bmc/tests/ipmi_fuzz_corpus.rs` replays the corpus on stable with
//! exactly the same checks. Not part of the stable API.
//!
//! Input layout: one selector byte, then the bytes "from the BMC".
//!
//! | selector & 3 | what the bytes go through |
//! |---|---|
//! | 0 | a pre-session datagram: framing, the IPMI response, every command parser |
//! | 1 | a session-setup payload: Open Session Response, RAKP 2, RAKP 4 (suite by bit 2) |
//! | 2 | a datagram for an established session (suite by bit 2): check and decrypt |
//! | 3 | an IPMI response sealed by a session (suite by bit 2), opened again |
//!
//! Properties: nothing panics; a response message that decodes re-encodes to the same
//! bytes; a sealed message opens to exactly itself; every parser rejects or accepts
//! without reading out of bounds.

use super::cmd;
use super::crypto::{CipherSuite, SessionKeys};
use super::session::{Handshake, Nonces, Session};
use super::wire::{self, Packet};

/// Session id the fuzz sessions use as ours (0x01020304).
pub const FUZZ_CONSOLE_SID: u32 = 0x0102_0304;
/// Message tag of the fuzz handshakes.
pub const FUZZ_TAG: u8 = 0x42;

fn suite_of(selector: u8) -> CipherSuite {
    if selector & 0x04 == 0 {
        CipherSuite::Suite3
    } else {
        CipherSuite::Suite17
    }
}

fn fixed_session(suite: CipherSuite) -> Session {
    let keys = SessionKeys {
        k1: vec![0x11; suite.key_exchange_len()],
        aes: [0x22; 16],
    };
    Session::from_parts(suite, FUZZ_CONSOLE_SID, 0x0a0b_0c0d, keys)
}

/// Runs `input` through the parsers and checks the properties above; panics on a
/// violation (that is what the fuzzer looks for).
pub fn check_response(input: &[u8]) {
    let Some((&selector, data)) = input.split_first() else {
        return;
    };
    let suite = suite_of(selector);
    // Framing with every AuthCode length, whatever the mode.
    for auth_code_len in [0, 12, 16] {
        let _ = wire::decode_packet(data, auth_code_len);
    }
    match selector & 3 {
        0 => match wire::decode_packet(data, 0) {
            Ok(Packet::V15 { message, .. }) => check_message(message),
            Ok(Packet::V20 { payload, .. }) => check_message(payload),
            Err(_) => check_message(data),
        },
        1 => {
            let nonces = Nonces {
                console_sid: FUZZ_CONSOLE_SID,
                console_random: [0x33; 16],
                tag: FUZZ_TAG,
            };
            let mut hs = Handshake::new(suite, b"admin", b"password", nonces);
            let _ = hs.accept_open_session_response(data);
            let _ = hs.accept_rakp2(data);
            let _ = hs.accept_rakp4(data);
            let _ = hs.rakp1();
        }
        2 => {
            if let Ok(plain) = fixed_session(suite).open(data) {
                check_message(&plain);
            }
        }
        _ => {
            let session = fixed_session(suite);
            let sealed = session.seal_with_seq(data, &[0x44; 16], 7, FUZZ_CONSOLE_SID);
            assert_eq!(
                session.open(&sealed).as_deref(),
                Ok(data),
                "a sealed message must open to itself"
            );
            check_message(data);
        }
    }
}

fn check_message(message: &[u8]) {
    if let Ok(rsp) = wire::decode_response(message) {
        assert_eq!(
            wire::encode_response(&rsp),
            message,
            "a decoded response must re-encode to the same bytes"
        );
        check_command_data(rsp.data);
    }
    check_command_data(message);
}

fn check_command_data(data: &[u8]) {
    let _ = cmd::parse_auth_capabilities(data);
    if let Ok(records) = cmd::parse_cipher_suites_chunk(data) {
        assert!(records.len() <= 16);
        if let Ok(ids) = cmd::parse_cipher_suite_ids(records) {
            let _ = cmd::pick_suite(&ids);
        }
    }
    let _ = cmd::parse_cipher_suite_ids(data);
    let _ = cmd::parse_chassis_power_on(data);
    let _ = cmd::parse_privilege(data);
}

/// For a mode-2 input (selector & 3 == 2): does the datagram pass the fixed session's
/// checks (session id, integrity, decryption)? Lets the corpus replay test prove that
/// seeds sealed by an independent implementation (`fuzz/make_ipmi_seeds.py`) open.
pub fn session_datagram_opens(input: &[u8]) -> bool {
    let Some((&selector, data)) = input.split_first() else {
        return false;
    };
    selector & 3 == 2 && fixed_session(suite_of(selector)).open(data).is_ok()
}
