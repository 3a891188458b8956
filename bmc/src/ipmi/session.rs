//! RMCP+ session establishment (Open Session, RAKP 1-4) and the established session's
//! packet protection, as a sans-IO state machine: callers pass in the random numbers
//! and the bytes received, and get back the bytes to send.

use std::fmt;

use super::crypto::{self, CipherSuite, RakpParams, SessionKeys};
use super::wire::{
    self, NEXT_HEADER, PAYLOAD_AUTHENTICATED, PAYLOAD_ENCRYPTED, Packet, PayloadType, RMCP_HEADER,
    Reader, WireError,
};

/// Privilege level: administrator.
pub(crate) const PRIV_ADMIN: u8 = 0x04;
/// RAKP 1 role bit: look the user up by name only (not by name and privilege).
const NAME_ONLY_LOOKUP: u8 = 0x10;
/// RMCP+ status code that RAKP 3 sends when RAKP 2's code did not verify.
pub(crate) const STATUS_INVALID_INTEGRITY_CHECK: u8 = 0x0f;

/// What a session-setup step received that stops the handshake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum HandshakeError {
    /// Not parseable.
    #[error("malformed {step}: {source}")]
    Malformed {
        /// The message.
        step: &'static str,
        /// Why.
        source: WireError,
    },
    /// The BMC answered with a non-zero RMCP+ status code.
    #[error("{step} refused with RMCP+ status {code:#04x} ({})", status_text(*code))]
    Status {
        /// The message carrying the status.
        step: &'static str,
        /// The status code.
        code: u8,
    },
    /// The BMC picked other algorithms than those of the suite we asked for.
    #[error("the BMC answered with algorithms {got:?} instead of those of {suite}")]
    Algorithms {
        /// The suite we asked for.
        suite: CipherSuite,
        /// Auth, integrity and confidentiality algorithm numbers the BMC chose.
        got: [u8; 3],
    },
    /// RAKP 2's key exchange code does not verify: the BMC does not know our password.
    #[error("RAKP 2 key exchange code does not verify (wrong password, or not this user)")]
    BadRakp2,
    /// RAKP 4's integrity check value does not verify.
    #[error("RAKP 4 integrity check value does not verify")]
    BadRakp4,
    /// A reply for another exchange (other tag or session id): not an error, ignore it.
    #[error("reply to another exchange")]
    Stale,
}

impl HandshakeError {
    /// True if this means the BMC rejected our credentials or role.
    pub(crate) fn is_auth_rejection(&self) -> bool {
        match self {
            Self::BadRakp2 | Self::BadRakp4 => true,
            // invalid role, unauthorized role/privilege, invalid name length,
            // unauthorized name, unauthorized GUID, invalid integrity check value
            Self::Status { code, .. } => {
                matches!(code, 0x09 | 0x0a | 0x0c | 0x0d | 0x0e | 0x0f)
            }
            _ => false,
        }
    }

    /// True if the BMC refused the cipher suite's algorithms (another suite may work).
    pub(crate) fn is_algorithm_refusal(&self) -> bool {
        match self {
            Self::Algorithms { .. } => true,
            // invalid auth / integrity / confidentiality algorithm, no cipher suite match
            Self::Status { code, .. } => matches!(code, 0x04 | 0x05 | 0x10 | 0x11),
            _ => false,
        }
    }
}

/// The RMCP+ status codes of IPMI v2.0 table 13-15.
pub(crate) fn status_text(code: u8) -> &'static str {
    match code {
        0x00 => "no errors",
        0x01 => "insufficient resources to create a session",
        0x02 => "invalid session id",
        0x03 => "invalid payload type",
        0x04 => "invalid authentication algorithm",
        0x05 => "invalid integrity algorithm",
        0x06 => "no matching authentication payload",
        0x07 => "no matching integrity payload",
        0x08 => "inactive session id",
        0x09 => "invalid role",
        0x0a => "unauthorized role or privilege level requested",
        0x0b => "insufficient resources to create a session at the requested role",
        0x0c => "invalid name length",
        0x0d => "unauthorized name",
        0x0e => "unauthorized GUID",
        0x0f => "invalid integrity check value",
        0x10 => "invalid confidentiality algorithm",
        0x11 => "no cipher suite match with proposed security algorithms",
        0x12 => "illegal or unrecognized parameter",
        _ => "unknown status",
    }
}

/// The random values a handshake needs, drawn by the caller.
#[derive(Clone, Copy)]
pub(crate) struct Nonces {
    /// Our session id (non-zero).
    pub(crate) console_sid: u32,
    /// R_M.
    pub(crate) console_random: [u8; 16],
    /// Message tag for this handshake's messages.
    pub(crate) tag: u8,
}

/// A session being established.
pub(crate) struct Handshake {
    suite: CipherSuite,
    username: Vec<u8>,
    kuid: [u8; 20],
    nonces: Nonces,
    role: u8,
    bmc_sid: u32,
    bmc_random: [u8; 16],
    bmc_guid: [u8; 16],
    keys: Option<(Vec<u8>, SessionKeys)>,
}

impl fmt::Debug for Handshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handshake")
            .field("suite", &self.suite)
            .field("username", &String::from_utf8_lossy(&self.username))
            .field("console_sid", &self.nonces.console_sid)
            .field("bmc_sid", &self.bmc_sid)
            .finish_non_exhaustive()
    }
}

fn malformed(step: &'static str) -> impl Fn(WireError) -> HandshakeError {
    move |source| HandshakeError::Malformed { step, source }
}

impl Handshake {
    /// A handshake for `username`/`password` (at most 16 / 20 bytes; the caller checks)
    /// asking for administrator privilege.
    pub(crate) fn new(
        suite: CipherSuite,
        username: &[u8],
        password: &[u8],
        nonces: Nonces,
    ) -> Self {
        Self {
            suite,
            username: username.to_vec(),
            kuid: crypto::user_key(password),
            nonces,
            role: PRIV_ADMIN | NAME_ONLY_LOOKUP,
            bmc_sid: 0,
            bmc_random: [0; 16],
            bmc_guid: [0; 16],
            keys: None,
        }
    }

    /// The RMCP+ Open Session Request payload.
    pub(crate) fn open_session_request(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(32);
        p.extend_from_slice(&[self.nonces.tag, PRIV_ADMIN, 0, 0]);
        p.extend_from_slice(&self.nonces.console_sid.to_le_bytes());
        for (payload, alg) in [
            (0x00, self.suite.auth_alg()),
            (0x01, self.suite.integrity_alg()),
            (0x02, self.suite.confidentiality_alg()),
        ] {
            p.extend_from_slice(&[payload, 0, 0, 0x08, alg, 0, 0, 0]);
        }
        p
    }

    /// The start of every handshake reply: the message tag, which must be ours (else the
    /// reply is [`HandshakeError::Stale`]), and the status code, which must be 0.
    fn reply_status(&self, r: &mut Reader<'_>, step: &'static str) -> Result<(), HandshakeError> {
        let tag = r.u8("message tag").map_err(malformed(step))?;
        let status = r.u8("status code").map_err(malformed(step))?;
        if tag != self.nonces.tag {
            return Err(HandshakeError::Stale);
        }
        if status != 0 {
            return Err(HandshakeError::Status { step, code: status });
        }
        Ok(())
    }

    /// The console session ID a reply echoes: ours, or the reply is stale.
    fn reply_console_sid(
        &self,
        r: &mut Reader<'_>,
        step: &'static str,
    ) -> Result<(), HandshakeError> {
        let console_sid = r.u32_le("console session id").map_err(malformed(step))?;
        if console_sid != self.nonces.console_sid {
            return Err(HandshakeError::Stale);
        }
        Ok(())
    }

    /// The first 8 bytes of RAKP Messages 1 and 3: our tag, `status`, 2 reserved bytes
    /// and the BMC's session ID, in a buffer with room for `rest` more.
    fn rakp_head(&self, status: u8, rest: usize) -> Vec<u8> {
        let mut p = Vec::with_capacity(8 + rest);
        p.extend_from_slice(&[self.nonces.tag, status, 0, 0]);
        p.extend_from_slice(&self.bmc_sid.to_le_bytes());
        p
    }

    /// Takes the Open Session Response payload.
    pub(crate) fn accept_open_session_response(
        &mut self,
        payload: &[u8],
    ) -> Result<(), HandshakeError> {
        const STEP: &str = "Open Session Response";
        let mut r = Reader::new(payload);
        self.reply_status(&mut r, STEP)?;
        let _max_priv = r.u8("maximum privilege").map_err(malformed(STEP))?;
        r.u8("reserved").map_err(malformed(STEP))?;
        self.reply_console_sid(&mut r, STEP)?;
        let bmc_sid = r.u32_le("BMC session id").map_err(malformed(STEP))?;
        let mut got = [0u8; 3];
        for (i, slot) in got.iter_mut().enumerate() {
            let rec: [u8; 8] = r.array("algorithm payload").map_err(malformed(STEP))?;
            if usize::from(rec[0]) != i {
                return Err(HandshakeError::Malformed {
                    step: STEP,
                    source: WireError::Trailer("algorithm payloads out of order"),
                });
            }
            *slot = rec[4] & 0x3f;
        }
        r.finish(STEP).map_err(malformed(STEP))?;
        let wanted = [
            self.suite.auth_alg(),
            self.suite.integrity_alg(),
            self.suite.confidentiality_alg(),
        ];
        if got != wanted {
            return Err(HandshakeError::Algorithms {
                suite: self.suite,
                got,
            });
        }
        if bmc_sid == 0 {
            return Err(HandshakeError::Malformed {
                step: STEP,
                source: WireError::SessionId { got: 0, ours: 0 },
            });
        }
        self.bmc_sid = bmc_sid;
        Ok(())
    }

    /// The RAKP Message 1 payload.
    pub(crate) fn rakp1(&self) -> Vec<u8> {
        let mut p = self.rakp_head(0, 20 + self.username.len());
        p.extend_from_slice(&self.nonces.console_random);
        p.extend_from_slice(&[self.role, 0, 0]);
        p.push(u8::try_from(self.username.len()).unwrap_or(u8::MAX));
        p.extend_from_slice(&self.username);
        p
    }

    fn params(&self) -> RakpParams<'_> {
        RakpParams {
            console_sid: self.nonces.console_sid,
            bmc_sid: self.bmc_sid,
            console_random: &self.nonces.console_random,
            bmc_random: &self.bmc_random,
            bmc_guid: &self.bmc_guid,
            role: self.role,
            username: &self.username,
        }
    }

    /// Takes RAKP Message 2; on success derives the session keys and returns the RAKP
    /// Message 3 payload. On [`HandshakeError::BadRakp2`] send [`Self::rakp3_failure`].
    pub(crate) fn accept_rakp2(&mut self, payload: &[u8]) -> Result<Vec<u8>, HandshakeError> {
        const STEP: &str = "RAKP Message 2";
        let mut r = Reader::new(payload);
        self.reply_status(&mut r, STEP)?;
        r.take(2, "reserved").map_err(malformed(STEP))?;
        self.reply_console_sid(&mut r, STEP)?;
        self.bmc_random = r.array("BMC random number").map_err(malformed(STEP))?;
        self.bmc_guid = r.array("BMC GUID").map_err(malformed(STEP))?;
        let code = r
            .take(self.suite.key_exchange_len(), "key exchange code")
            .map_err(malformed(STEP))?;
        r.finish(STEP).map_err(malformed(STEP))?;
        let mut buf = [0u8; 10];
        let params = self.params();
        if !crypto::verify(
            self.suite,
            &self.kuid,
            &crypto::rakp2_parts(&params, &mut buf),
            code,
        ) {
            return Err(HandshakeError::BadRakp2);
        }
        let sik = crypto::sik(self.suite, &self.kuid, &params);
        let rakp3_code = crypto::rakp3_auth_code(self.suite, &self.kuid, &params);
        let keys = SessionKeys::from_sik(self.suite, &sik);
        self.keys = Some((sik, keys));
        let mut p = self.rakp_head(0, rakp3_code.len());
        p.extend_from_slice(&rakp3_code);
        Ok(p)
    }

    /// A RAKP Message 3 that tells the BMC we abandon the handshake (so it can free the
    /// session slot at once).
    pub(crate) fn rakp3_failure(&self, status: u8) -> Vec<u8> {
        self.rakp_head(status, 0)
    }

    /// The session as derived after RAKP 2, without RAKP 4's proof: only good for
    /// closing a session the BMC may have activated when its RAKP 4 got lost.
    pub(crate) fn unverified_session(&self) -> Option<Session> {
        let (_, keys) = self.keys.as_ref()?;
        Some(Session {
            suite: self.suite,
            console_sid: self.nonces.console_sid,
            bmc_sid: self.bmc_sid,
            keys: keys.clone(),
            out_seq: 0,
        })
    }

    /// Takes RAKP Message 4: the established session.
    pub(crate) fn accept_rakp4(&self, payload: &[u8]) -> Result<Session, HandshakeError> {
        const STEP: &str = "RAKP Message 4";
        let mut r = Reader::new(payload);
        self.reply_status(&mut r, STEP)?;
        r.take(2, "reserved").map_err(malformed(STEP))?;
        self.reply_console_sid(&mut r, STEP)?;
        let icv = r
            .take(self.suite.auth_code_len(), "integrity check value")
            .map_err(malformed(STEP))?;
        r.finish(STEP).map_err(malformed(STEP))?;
        // RAKP 4 before RAKP 2 was accepted: not for us.
        let Some((sik, keys)) = &self.keys else {
            return Err(HandshakeError::Stale);
        };
        let p = self.params();
        if !crypto::verify(
            self.suite,
            sik,
            &[p.console_random, &p.bmc_sid.to_le_bytes(), p.bmc_guid],
            icv,
        ) {
            return Err(HandshakeError::BadRakp4);
        }
        Ok(Session {
            suite: self.suite,
            console_sid: self.nonces.console_sid,
            bmc_sid: self.bmc_sid,
            keys: keys.clone(),
            out_seq: 0,
        })
    }
}

/// An established RMCP+ session: protects what we send, checks what we receive.
#[derive(Debug)]
pub(crate) struct Session {
    suite: CipherSuite,
    console_sid: u32,
    bmc_sid: u32,
    keys: SessionKeys,
    out_seq: u32,
}

impl Session {
    /// A session from known keys (tests, the fuzz target).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn from_parts(
        suite: CipherSuite,
        console_sid: u32,
        bmc_sid: u32,
        keys: SessionKeys,
    ) -> Self {
        Self {
            suite,
            console_sid,
            bmc_sid,
            keys,
            out_seq: 0,
        }
    }

    /// The negotiated suite.
    pub(crate) fn suite(&self) -> CipherSuite {
        self.suite
    }

    /// The BMC's session id (what Close Session names).
    pub(crate) fn bmc_sid(&self) -> u32 {
        self.bmc_sid
    }

    /// Our session id (what the BMC's packets carry).
    #[cfg(test)]
    pub(crate) fn console_sid(&self) -> u32 {
        self.console_sid
    }

    /// An authenticated, encrypted datagram carrying the IPMI `message`, with a fresh
    /// session sequence number (every datagram, retransmissions included, gets one).
    pub(crate) fn seal(&mut self, message: &[u8], iv: &[u8; 16]) -> Vec<u8> {
        self.out_seq = self.out_seq.wrapping_add(1);
        if self.out_seq == 0 {
            self.out_seq = 1;
        }
        self.seal_with_seq(message, iv, self.out_seq, self.bmc_sid)
    }

    /// [`Self::seal`] with an explicit sequence number and session id.
    pub(crate) fn seal_with_seq(
        &self,
        message: &[u8],
        iv: &[u8; 16],
        seq: u32,
        session_id: u32,
    ) -> Vec<u8> {
        let payload = crypto::encrypt_payload(&self.keys.aes, iv, message);
        let mut out = Vec::with_capacity(16 + payload.len() + 4 + self.suite.auth_code_len());
        let kind = PAYLOAD_ENCRYPTED | PAYLOAD_AUTHENTICATED | PayloadType::Ipmi.bits();
        wire::push_v20(&mut out, kind, session_id, seq, &payload);
        // Pad so that auth type .. next header is a multiple of four bytes.
        let signed_len = out.len() - RMCP_HEADER.len() + 2;
        let pad = (4 - signed_len % 4) % 4;
        out.extend(std::iter::repeat_n(0xff, pad));
        out.push(pad as u8); // pad < 4
        out.push(NEXT_HEADER);
        let code =
            crypto::integrity_auth_code(self.suite, &self.keys.k1, &out[RMCP_HEADER.len()..]);
        out.extend_from_slice(&code);
        out
    }

    /// Checks and decrypts a datagram from the BMC: our session id, IPMI payload,
    /// authenticated and encrypted, AuthCode valid. Returns the IPMI message.
    pub(crate) fn open(&self, datagram: &[u8]) -> Result<Vec<u8>, WireError> {
        let packet = wire::decode_packet(datagram, self.suite.auth_code_len())?;
        let Packet::V20 {
            payload_type,
            encrypted,
            session_id,
            payload,
            trailer,
            ..
        } = packet
        else {
            return Err(WireError::NotProtected("an RMCP+ packet"));
        };
        if session_id != self.console_sid {
            return Err(WireError::SessionId {
                got: session_id,
                ours: self.console_sid,
            });
        }
        if payload_type != PayloadType::Ipmi {
            return Err(WireError::PayloadType(payload_type.bits()));
        }
        let Some(trailer) = trailer else {
            return Err(WireError::NotProtected("authenticated"));
        };
        if !crypto::verify(
            self.suite,
            &self.keys.k1,
            &[trailer.signed],
            trailer.auth_code,
        ) {
            return Err(WireError::Integrity);
        }
        if !encrypted {
            return Err(WireError::NotProtected("encrypted"));
        }
        crypto::decrypt_payload(&self.keys.aes, payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BMC side of the handshake, written from the spec with the crypto functions, to
    /// drive [`Handshake`] without a network (the real BMC is ipmi_sim, in
    /// `bmc/tests/ipmi_sim.rs`).
    fn bmc_replies(
        suite: CipherSuite,
        password: &[u8],
        hs: &mut Handshake,
    ) -> Result<Session, HandshakeError> {
        let req = hs.open_session_request();
        assert_eq!(req.len(), 32);
        let mut rsp = vec![req[0], 0, PRIV_ADMIN, 0];
        rsp.extend_from_slice(&req[4..8]);
        rsp.extend_from_slice(&0x0203_0405u32.to_le_bytes());
        rsp.extend_from_slice(&req[8..32]);
        hs.accept_open_session_response(&rsp)?;
        let rakp1 = hs.rakp1();
        let rm: [u8; 16] = rakp1[8..24].try_into().expect("R_M");
        let rc = [0x5a; 16];
        let guid = [0xa5; 16];
        let kuid = crypto::user_key(password);
        let p = RakpParams {
            console_sid: hs.nonces.console_sid,
            bmc_sid: 0x0203_0405,
            console_random: &rm,
            bmc_random: &rc,
            bmc_guid: &guid,
            role: rakp1[24],
            username: &rakp1[28..],
        };
        let mut rakp2 = vec![rakp1[0], 0, 0, 0];
        rakp2.extend_from_slice(&hs.nonces.console_sid.to_le_bytes());
        rakp2.extend_from_slice(&rc);
        rakp2.extend_from_slice(&guid);
        rakp2.extend_from_slice(&crypto::rakp2_auth_code(suite, &kuid, &p));
        let rakp3 = hs.accept_rakp2(&rakp2)?;
        assert_eq!(&rakp3[8..], &crypto::rakp3_auth_code(suite, &kuid, &p)[..]);
        let sik = crypto::sik(suite, &kuid, &p);
        let mut rakp4 = vec![rakp3[0], 0, 0, 0];
        rakp4.extend_from_slice(&hs.nonces.console_sid.to_le_bytes());
        rakp4.extend_from_slice(&crypto::rakp4_icv(suite, &sik, &p)[..suite.auth_code_len()]);
        hs.accept_rakp4(&rakp4)
    }

    fn nonces() -> Nonces {
        Nonces {
            console_sid: 0x1122_3344,
            console_random: [7; 16],
            tag: 9,
        }
    }

    #[test]
    fn handshake_completes_for_both_suites_and_packets_round_trip() {
        for suite in [CipherSuite::Suite3, CipherSuite::Suite17] {
            let mut hs = Handshake::new(suite, b"admin", b"password", nonces());
            let mut session = bmc_replies(suite, b"password", &mut hs).expect("handshake");
            assert_eq!(session.bmc_sid(), 0x0203_0405);
            let msg = wire::encode_request(0x00, 0x01, 3, &[]);
            let sealed = session.seal(&msg, &[1; 16]);
            // The BMC's reply is sealed the same way, with our session id.
            let reply = session.seal_with_seq(&msg, &[2; 16], 1, session.console_sid());
            assert_eq!(session.open(&reply), Ok(msg.clone()));
            // Our own request names the BMC's session: refused as a reply.
            assert!(matches!(
                session.open(&sealed),
                Err(WireError::SessionId { .. })
            ));
            // Every bit flip in the signed part or AuthCode is caught.
            for i in RMCP_HEADER.len()..reply.len() {
                let mut bad = reply.clone();
                bad[i] ^= 0x01;
                assert!(session.open(&bad).is_err(), "{suite}: flip at {i}");
            }
        }
    }

    #[test]
    fn wrong_password_is_an_auth_rejection() {
        for suite in [CipherSuite::Suite3, CipherSuite::Suite17] {
            let mut hs = Handshake::new(suite, b"admin", b"wrong", nonces());
            let err = bmc_replies(suite, b"password", &mut hs).expect_err("must fail");
            assert_eq!(err, HandshakeError::BadRakp2);
            assert!(err.is_auth_rejection());
            assert_eq!(hs.rakp3_failure(STATUS_INVALID_INTEGRITY_CHECK)[1], 0x0f);
        }
    }

    #[test]
    fn open_session_refusals_are_classified() {
        let mut hs = Handshake::new(CipherSuite::Suite17, b"admin", b"password", nonces());
        let err = hs
            .accept_open_session_response(&[9, 0x11, 0, 0])
            .expect_err("refused");
        assert!(err.is_algorithm_refusal());
        assert!(err.to_string().contains("no cipher suite match"), "{err}");
        assert_eq!(
            hs.accept_open_session_response(&[8, 0x11]),
            Err(HandshakeError::Stale)
        );
        // A BMC that answers with suite 3's algorithms to a suite 17 request.
        let mut rsp = vec![9, 0, 4, 0];
        rsp.extend_from_slice(&0x1122_3344u32.to_le_bytes());
        rsp.extend_from_slice(&5u32.to_le_bytes());
        for (i, alg) in [1u8, 1, 1].into_iter().enumerate() {
            rsp.extend_from_slice(&[i as u8, 0, 0, 8, alg, 0, 0, 0]);
        }
        let err = hs.accept_open_session_response(&rsp).expect_err("algs");
        assert!(err.is_algorithm_refusal());
    }
}
