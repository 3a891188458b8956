//! RMCP / IPMI-over-LAN packet formats (IPMI v2.0 spec, sections 13.6-13.8 and 13.28):
//! encoders for what we send and bounds-checked decoders for what a BMC sends back.
//!
//! Sans-IO: no sockets, no clock, no randomness. Every decoder works on an untrusted
//! byte slice and returns a [`WireError`] instead of panicking, whatever the input.

/// RMCP header of every datagram: version 6, reserved, sequence 0xff (no RMCP ack),
/// class IPMI.
pub(crate) const RMCP_HEADER: [u8; 4] = [0x06, 0x00, 0xff, 0x07];
/// Session auth type of IPMI v1.5 pre-session packets: none.
pub(crate) const AUTH_TYPE_NONE: u8 = 0x00;
/// Session auth type that marks an IPMI v2.0 RMCP+ packet.
pub(crate) const AUTH_TYPE_RMCP_PLUS: u8 = 0x06;
/// "Next header" byte of the integrity trailer (always 0x07, RMCP).
pub(crate) const NEXT_HEADER: u8 = 0x07;
/// Slave address of the BMC (responder).
pub(crate) const BMC_ADDR: u8 = 0x20;
/// Software ID of a remote console (requester).
pub(crate) const CONSOLE_SWID: u8 = 0x81;

/// Payload type bit: payload is encrypted.
pub(crate) const PAYLOAD_ENCRYPTED: u8 = 0x80;
/// Payload type bit: packet carries an integrity trailer.
pub(crate) const PAYLOAD_AUTHENTICATED: u8 = 0x40;

/// RMCP+ payload types (IPMI v2.0 table 13-16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PayloadType {
    /// An IPMI message.
    Ipmi,
    /// RMCP+ Open Session Request.
    OpenSessionRequest,
    /// RMCP+ Open Session Response.
    OpenSessionResponse,
    /// RAKP Message 1.
    Rakp1,
    /// RAKP Message 2.
    Rakp2,
    /// RAKP Message 3.
    Rakp3,
    /// RAKP Message 4.
    Rakp4,
    /// Anything else (SOL, OEM, ...): never expected by this client.
    Other(u8),
}

impl PayloadType {
    /// From the low six bits of the payload type byte.
    pub(crate) fn from_bits(bits: u8) -> Self {
        match bits & 0x3f {
            0x00 => Self::Ipmi,
            0x10 => Self::OpenSessionRequest,
            0x11 => Self::OpenSessionResponse,
            0x12 => Self::Rakp1,
            0x13 => Self::Rakp2,
            0x14 => Self::Rakp3,
            0x15 => Self::Rakp4,
            other => Self::Other(other),
        }
    }

    /// The six-bit wire value.
    pub(crate) fn bits(self) -> u8 {
        match self {
            Self::Ipmi => 0x00,
            Self::OpenSessionRequest => 0x10,
            Self::OpenSessionResponse => 0x11,
            Self::Rakp1 => 0x12,
            Self::Rakp2 => 0x13,
            Self::Rakp3 => 0x14,
            Self::Rakp4 => 0x15,
            Self::Other(bits) => bits & 0x3f,
        }
    }
}

/// Why a datagram or message from a BMC was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum WireError {
    /// Fewer bytes than the field needs.
    #[error("truncated: {what} needs {need} bytes, {have} left")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Bytes the field needs.
        need: usize,
        /// Bytes that were left.
        have: usize,
    },
    /// Bytes after the end of a structure whose length is fixed by its header.
    #[error("{len} bytes of trailing data after {what}")]
    Trailing {
        /// The structure.
        what: &'static str,
        /// How many bytes were left over.
        len: usize,
    },
    /// Not an RMCP datagram of class IPMI.
    #[error("not an RMCP/IPMI datagram (header {0:02x?})")]
    NotIpmi([u8; 4]),
    /// A session auth type this client does not speak.
    #[error("unsupported session auth type {0:#04x}")]
    AuthType(u8),
    /// An OEM payload (explicit IANA in the header): never expected.
    #[error("OEM explicit payload type is not supported")]
    OemPayload,
    /// An IPMI message checksum did not match.
    #[error("IPMI message {0} checksum mismatch")]
    Checksum(&'static str),
    /// The integrity trailer is malformed.
    #[error("malformed integrity trailer: {0}")]
    Trailer(&'static str),
    /// The integrity AuthCode did not match (corrupted or forged packet, or wrong keys).
    #[error("integrity check failed")]
    Integrity,
    /// The encrypted payload is not IV + whole AES blocks, or its padding is wrong.
    #[error("malformed encrypted payload: {0}")]
    Cipher(&'static str),
    /// A session packet that is not authenticated and encrypted as negotiated.
    #[error("session packet is not {0}")]
    NotProtected(&'static str),
    /// A session packet for another session.
    #[error("packet for session {got:#010x}, ours is {ours:#010x}")]
    SessionId {
        /// The session id in the packet.
        got: u32,
        /// Our session id.
        ours: u32,
    },
    /// A session packet with a payload type other than IPMI.
    #[error("unexpected payload type {0:#04x} in a session")]
    PayloadType(u8),
}

/// A bounded reader over untrusted bytes: every read is checked, nothing panics.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `buf`.
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// The next `n` bytes.
    pub(crate) fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::Truncated {
                what,
                need: n,
                have: self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// The next `N` bytes as an array.
    pub(crate) fn array<const N: usize>(
        &mut self,
        what: &'static str,
    ) -> Result<[u8; N], WireError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    /// One byte.
    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        Ok(self.array::<1>(what)?[0])
    }

    /// A little-endian u16.
    pub(crate) fn u16_le(&mut self, what: &'static str) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    /// A little-endian u32.
    pub(crate) fn u32_le(&mut self, what: &'static str) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    /// Everything left.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// Fails if anything is left.
    pub(crate) fn finish(&self, what: &'static str) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(WireError::Trailing {
                what,
                len: self.buf.len(),
            })
        }
    }
}

/// A decoded datagram: the session layer, payload still as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Packet<'a> {
    /// IPMI v1.5 session (pre-session replies, e.g. Get Channel Auth Capabilities).
    V15 {
        /// Session auth type (0 = none).
        auth_type: u8,
        /// Session sequence number.
        seq: u32,
        /// Session id.
        session_id: u32,
        /// The IPMI message.
        message: &'a [u8],
    },
    /// IPMI v2.0 RMCP+ session.
    V20 {
        /// Payload type.
        payload_type: PayloadType,
        /// The encrypted bit.
        encrypted: bool,
        /// The authenticated bit.
        authenticated: bool,
        /// Session id (the receiver's: ours in replies).
        session_id: u32,
        /// Session sequence number.
        seq: u32,
        /// The payload (still encrypted if `encrypted`).
        payload: &'a [u8],
        /// If `authenticated`: the bytes the AuthCode covers and the AuthCode.
        trailer: Option<Trailer<'a>>,
    },
}

/// The integrity-protected part of an authenticated RMCP+ packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Trailer<'a> {
    /// From the auth type byte through the next-header byte.
    pub(crate) signed: &'a [u8],
    /// The AuthCode as received.
    pub(crate) auth_code: &'a [u8],
}

/// Decodes a datagram from a BMC. `auth_code_len` is the AuthCode length of the
/// session's integrity algorithm (12 or 16), or 0 before a session exists (an
/// authenticated packet is then an error).
pub(crate) fn decode_packet(
    datagram: &[u8],
    auth_code_len: usize,
) -> Result<Packet<'_>, WireError> {
    let mut r = Reader::new(datagram);
    let rmcp: [u8; 4] = r.array("RMCP header")?;
    // Byte 2 is the RMCP sequence number (0xff = no ack); byte 1 is reserved.
    if rmcp[0] != RMCP_HEADER[0] || rmcp[3] != RMCP_HEADER[3] {
        return Err(WireError::NotIpmi(rmcp));
    }
    let session_start = datagram.len() - r.remaining();
    let auth_type = r.u8("session auth type")?;
    match auth_type {
        AUTH_TYPE_RMCP_PLUS => {
            let type_byte = r.u8("payload type")?;
            let payload_type = PayloadType::from_bits(type_byte);
            if payload_type == PayloadType::Other(0x02) {
                return Err(WireError::OemPayload);
            }
            let session_id = r.u32_le("session id")?;
            let seq = r.u32_le("session sequence")?;
            let len = usize::from(r.u16_le("payload length")?);
            let payload = r.take(len, "payload")?;
            let authenticated = type_byte & PAYLOAD_AUTHENTICATED != 0;
            let trailer = if authenticated {
                if auth_code_len == 0 {
                    return Err(WireError::Trailer("authenticated packet outside a session"));
                }
                let rest = r.rest();
                // pad (0..=3 bytes of 0xff), pad length, next header, AuthCode
                let Some(signed_tail_len) = rest.len().checked_sub(auth_code_len) else {
                    return Err(WireError::Trailer("shorter than the AuthCode"));
                };
                let (tail, auth_code) = rest.split_at(signed_tail_len);
                let [pad @ .., pad_len, next] = tail else {
                    return Err(WireError::Trailer("no pad length / next header"));
                };
                if *next != NEXT_HEADER {
                    return Err(WireError::Trailer("next header is not 0x07"));
                }
                if usize::from(*pad_len) != pad.len() {
                    return Err(WireError::Trailer("pad length does not match"));
                }
                if pad.iter().any(|&b| b != 0xff) {
                    return Err(WireError::Trailer("pad bytes are not 0xff"));
                }
                let signed_end = datagram.len() - auth_code_len;
                Some(Trailer {
                    signed: &datagram[session_start..signed_end],
                    auth_code,
                })
            } else {
                r.finish("RMCP+ payload")?;
                None
            };
            Ok(Packet::V20 {
                payload_type,
                encrypted: type_byte & PAYLOAD_ENCRYPTED != 0,
                authenticated,
                session_id,
                seq,
                payload,
                trailer,
            })
        }
        0x00 | 0x01 | 0x02 | 0x04 | 0x05 => {
            let seq = r.u32_le("session sequence")?;
            let session_id = r.u32_le("session id")?;
            if auth_type != AUTH_TYPE_NONE {
                r.take(16, "v1.5 AuthCode")?;
            }
            let len = usize::from(r.u8("message length")?);
            let message = r.take(len, "IPMI message")?;
            // Some BMCs append a legacy pad byte after the message.
            if r.remaining() > 1 {
                return Err(WireError::Trailing {
                    what: "IPMI v1.5 message",
                    len: r.remaining(),
                });
            }
            Ok(Packet::V15 {
                auth_type,
                seq,
                session_id,
                message,
            })
        }
        other => Err(WireError::AuthType(other)),
    }
}

/// An IPMI v1.5 datagram, auth type none, session 0: the pre-session form of
/// Get Channel Authentication Capabilities.
pub(crate) fn encode_v15_presession(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(14 + message.len());
    out.extend_from_slice(&RMCP_HEADER);
    out.push(AUTH_TYPE_NONE);
    out.extend_from_slice(&0u32.to_le_bytes()); // sequence
    out.extend_from_slice(&0u32.to_le_bytes()); // session id
    out.push(u8::try_from(message.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(message);
    out
}

/// An unauthenticated, unencrypted RMCP+ datagram outside a session (session id and
/// sequence number 0): session setup and pre-session IPMI.
pub(crate) fn encode_v20_plain(payload_type: PayloadType, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + payload.len());
    push_v20(&mut out, payload_type.bits(), 0, 0, payload);
    out
}

/// Appends an RMCP+ datagram up to its payload to `out`: the RMCP header, auth type
/// RMCP+, the payload type byte `kind` (with its encrypted and authenticated bits),
/// session id, sequence number, payload length and `payload`.
pub(crate) fn push_v20(out: &mut Vec<u8>, kind: u8, session_id: u32, seq: u32, payload: &[u8]) {
    out.extend_from_slice(&RMCP_HEADER);
    out.push(AUTH_TYPE_RMCP_PLUS);
    out.push(kind);
    out.extend_from_slice(&session_id.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(
        &u16::try_from(payload.len())
            .unwrap_or(u16::MAX)
            .to_le_bytes(),
    );
    out.extend_from_slice(payload);
}

/// IPMI two's-complement checksum: the byte that makes the sum zero.
pub(crate) fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |sum, &b| sum.wrapping_add(b))
        .wrapping_neg()
}

/// An IPMI request message (LAN format) from the remote console to the BMC, LUN 0.
pub(crate) fn encode_request(netfn: u8, cmd: u8, rq_seq: u8, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(7 + data.len());
    out.extend_from_slice(&[BMC_ADDR, netfn << 2]);
    out.push(checksum(&out[0..2]));
    out.extend_from_slice(&[CONSOLE_SWID, (rq_seq & 0x3f) << 2, cmd]);
    out.extend_from_slice(data);
    out.push(checksum(&out[3..]));
    out
}

/// A decoded IPMI response message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Response<'a> {
    /// Requester address (ours: 0x81).
    pub(crate) rq_addr: u8,
    /// Network function (odd: a response).
    pub(crate) netfn: u8,
    /// Requester LUN.
    pub(crate) rq_lun: u8,
    /// Responder address (the BMC: 0x20).
    pub(crate) rs_addr: u8,
    /// Our request sequence number, echoed.
    pub(crate) rq_seq: u8,
    /// Responder LUN.
    pub(crate) rs_lun: u8,
    /// Command.
    pub(crate) cmd: u8,
    /// Completion code (0 = success).
    pub(crate) completion: u8,
    /// Response data after the completion code.
    pub(crate) data: &'a [u8],
}

/// Decodes an IPMI response message (LAN format) and checks both checksums.
pub(crate) fn decode_response(message: &[u8]) -> Result<Response<'_>, WireError> {
    let mut r = Reader::new(message);
    let [rq_addr, netfn_lun, chk1] = r.array("IPMI response header")?;
    if checksum(&[rq_addr, netfn_lun]) != chk1 {
        return Err(WireError::Checksum("header"));
    }
    let [rs_addr, seq_lun, cmd, completion] = r.array("IPMI response body")?;
    let rest = r.rest();
    let [data @ .., chk2] = rest else {
        return Err(WireError::Truncated {
            what: "IPMI response checksum",
            need: 1,
            have: 0,
        });
    };
    // Sum over rsAddr .. data plus the checksum itself must be zero.
    let body_sum = message[3..].iter().fold(0u8, |sum, &b| sum.wrapping_add(b));
    if body_sum != 0 {
        let _ = chk2;
        return Err(WireError::Checksum("body"));
    }
    Ok(Response {
        rq_addr,
        netfn: netfn_lun >> 2,
        rq_lun: netfn_lun & 3,
        rs_addr,
        rq_seq: seq_lun >> 2,
        rs_lun: seq_lun & 3,
        cmd,
        completion,
        data,
    })
}

/// Encodes a response message: the inverse of [`decode_response`] (simulators in
/// tests, and the fuzz target's round-trip property).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn encode_response(rsp: &Response<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + rsp.data.len());
    out.extend_from_slice(&[rsp.rq_addr, (rsp.netfn << 2) | (rsp.rq_lun & 3)]);
    out.push(checksum(&out[0..2]));
    out.extend_from_slice(&[
        rsp.rs_addr,
        (rsp.rq_seq << 2) | (rsp.rs_lun & 3),
        rsp.cmd,
        rsp.completion,
    ]);
    out.extend_from_slice(rsp.data);
    out.push(checksum(&out[3..]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_matches_ipmitool_layout() {
        // Get Channel Auth Capabilities as ipmitool -vvv prints it: rsAddr 20, netfn 06,
        // rqAddr 81, rqSeq 0, cmd 38, data 8e 04.
        let msg = encode_request(0x06, 0x38, 0, &[0x8e, 0x04]);
        assert_eq!(msg, [0x20, 0x18, 0xc8, 0x81, 0x00, 0x38, 0x8e, 0x04, 0xb5]);
        let datagram = encode_v15_presession(&msg);
        assert_eq!(
            &datagram[..14],
            &[6, 0, 0xff, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9][..]
        );
    }

    #[test]
    fn response_round_trips_and_checksums_are_checked() {
        let rsp = Response {
            rq_addr: 0x81,
            netfn: 0x07,
            rq_lun: 0,
            rs_addr: 0x20,
            rq_seq: 5,
            rs_lun: 0,
            cmd: 0x38,
            completion: 0,
            data: &[1, 2, 3],
        };
        let bytes = encode_response(&rsp);
        assert_eq!(decode_response(&bytes), Ok(rsp));
        let mut bad = bytes.clone();
        bad[2] ^= 1;
        assert_eq!(decode_response(&bad), Err(WireError::Checksum("header")));
        let mut bad = bytes.clone();
        bad[7] ^= 1;
        assert_eq!(decode_response(&bad), Err(WireError::Checksum("body")));
        for len in 0..bytes.len() {
            assert!(
                decode_response(&bytes[..len]).is_err(),
                "prefix of {len} bytes"
            );
        }
    }

    #[test]
    fn v20_plain_round_trips() {
        let datagram = encode_v20_plain(PayloadType::Rakp1, &[1, 2, 3]);
        assert_eq!(
            decode_packet(&datagram, 0),
            Ok(Packet::V20 {
                payload_type: PayloadType::Rakp1,
                encrypted: false,
                authenticated: false,
                session_id: 0,
                seq: 0,
                payload: &[1, 2, 3],
                trailer: None,
            })
        );
        let mut longer = datagram.clone();
        longer.push(0);
        assert!(matches!(
            decode_packet(&longer, 0),
            Err(WireError::Trailing { .. })
        ));
    }
}
