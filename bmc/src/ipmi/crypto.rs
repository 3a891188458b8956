//! RMCP+ cryptography (IPMI v2.0 sections 13.28-13.32), as pure functions: the RAKP
//! key-exchange codes, the session keys SIK/K1/K2, the integrity AuthCode and the
//! AES-CBC-128 payload encryption.
//!
//! Cipher suite 3 = RAKP-HMAC-SHA1 / HMAC-SHA1-96 / AES-CBC-128; suite 17 =
//! RAKP-HMAC-SHA256 / HMAC-SHA256-128 / AES-CBC-128. Byte orders and key sizes follow
//! the spec as ipmitool implements it (`src/plugins/lanplus/lanplus_crypt.c`): the user
//! key K_UID is the password zero-padded to 20 bytes for both suites, and the K1/K2
//! constants are 20 bytes of 0x01/0x02 for both suites.

use std::fmt;

use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit, block_padding::NoPadding};
use hmac::{Hmac, Mac};

use super::wire::WireError;

/// An RMCP+ cipher suite this client can negotiate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CipherSuite {
    /// Suite 3: RAKP-HMAC-SHA1, HMAC-SHA1-96, AES-CBC-128 (the common default).
    Suite3,
    /// Suite 17: RAKP-HMAC-SHA256, HMAC-SHA256-128, AES-CBC-128.
    Suite17,
}

impl CipherSuite {
    /// The suite's number as BMCs list it.
    pub fn id(self) -> u8 {
        match self {
            Self::Suite3 => 3,
            Self::Suite17 => 17,
        }
    }

    /// The suite with this number, if supported.
    pub fn from_id(id: u8) -> Option<Self> {
        match id {
            3 => Some(Self::Suite3),
            17 => Some(Self::Suite17),
            _ => None,
        }
    }

    /// The other supported suite (for falling back).
    pub(crate) fn other(self) -> Self {
        match self {
            Self::Suite3 => Self::Suite17,
            Self::Suite17 => Self::Suite3,
        }
    }

    /// Authentication (RAKP) algorithm number: 1 = HMAC-SHA1, 3 = HMAC-SHA256.
    pub(crate) fn auth_alg(self) -> u8 {
        match self {
            Self::Suite3 => 0x01,
            Self::Suite17 => 0x03,
        }
    }

    /// Integrity algorithm number: 1 = HMAC-SHA1-96, 4 = HMAC-SHA256-128.
    pub(crate) fn integrity_alg(self) -> u8 {
        match self {
            Self::Suite3 => 0x01,
            Self::Suite17 => 0x04,
        }
    }

    /// Confidentiality algorithm number: 1 = AES-CBC-128 (both suites).
    pub(crate) fn confidentiality_alg(self) -> u8 {
        0x01
    }

    /// Length of the RAKP 2/3 key exchange codes (the full HMAC).
    pub(crate) fn key_exchange_len(self) -> usize {
        match self {
            Self::Suite3 => 20,
            Self::Suite17 => 32,
        }
    }

    /// Length of the RAKP 4 integrity check value and of every packet AuthCode.
    pub(crate) fn auth_code_len(self) -> usize {
        match self {
            Self::Suite3 => 12,
            Self::Suite17 => 16,
        }
    }
}

impl fmt::Display for CipherSuite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cipher suite {}", self.id())
    }
}

/// HMAC over the concatenation of `parts` with the suite's hash.
pub(crate) fn hmac(suite: CipherSuite, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        // HMAC accepts keys of any length: `new_from_slice` cannot fail here.
        let Ok(mut mac) = <M as hmac::digest::KeyInit>::new_from_slice(key) else {
            return Vec::new();
        };
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().to_vec()
    }
    match suite {
        CipherSuite::Suite3 => run::<Hmac<sha1::Sha1>>(key, parts),
        CipherSuite::Suite17 => run::<Hmac<sha2::Sha256>>(key, parts),
    }
}

/// Constant-time check that `tag` equals the first `tag.len()` bytes of the HMAC.
/// An empty tag never verifies.
pub(crate) fn verify(suite: CipherSuite, key: &[u8], parts: &[&[u8]], tag: &[u8]) -> bool {
    fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], parts: &[&[u8]], tag: &[u8]) -> bool {
        let Ok(mut mac) = <M as hmac::digest::KeyInit>::new_from_slice(key) else {
            return false;
        };
        for part in parts {
            mac.update(part);
        }
        !tag.is_empty() && mac.verify_truncated_left(tag).is_ok()
    }
    match suite {
        CipherSuite::Suite3 => run::<Hmac<sha1::Sha1>>(key, parts, tag),
        CipherSuite::Suite17 => run::<Hmac<sha2::Sha256>>(key, parts, tag),
    }
}

/// The user key K_UID: the password zero-padded to 20 bytes (IPMI v2.0 passwords are
/// at most 20 bytes; callers check that).
pub(crate) fn user_key(password: &[u8]) -> [u8; 20] {
    let mut key = [0u8; 20];
    let n = password.len().min(20);
    key[..n].copy_from_slice(&password[..n]);
    key
}

/// Everything both sides know after RAKP 2, which the codes and keys are computed over.
#[derive(Clone, Copy)]
pub(crate) struct RakpParams<'a> {
    /// SID_M: the remote console's (our) session id.
    pub(crate) console_sid: u32,
    /// SID_C: the BMC's session id.
    pub(crate) bmc_sid: u32,
    /// R_M: our random number.
    pub(crate) console_random: &'a [u8; 16],
    /// R_C: the BMC's random number.
    pub(crate) bmc_random: &'a [u8; 16],
    /// GUID_C: the BMC's GUID as sent in RAKP 2.
    pub(crate) bmc_guid: &'a [u8; 16],
    /// ROLE_M: the privilege byte sent in RAKP 1 (with the name-only lookup bit).
    pub(crate) role: u8,
    /// UNAME_M: the user name (at most 16 bytes).
    pub(crate) username: &'a [u8],
}

impl RakpParams<'_> {
    fn ulen(&self) -> [u8; 1] {
        [u8::try_from(self.username.len()).unwrap_or(u8::MAX)]
    }
}

/// The key exchange AuthCode a genuine BMC puts in RAKP 2:
/// HMAC_KUID(SID_M | SID_C | R_M | R_C | GUID_C | ROLE_M | ULEN | UNAME).
pub(crate) fn rakp2_parts<'a>(p: &'a RakpParams<'a>, buf: &'a mut [u8; 10]) -> [&'a [u8]; 7] {
    buf[..4].copy_from_slice(&p.console_sid.to_le_bytes());
    buf[4..8].copy_from_slice(&p.bmc_sid.to_le_bytes());
    buf[8] = p.role;
    buf[9] = p.ulen()[0];
    let (sids, tail) = buf.split_at(8);
    [
        sids,
        p.console_random,
        p.bmc_random,
        p.bmc_guid,
        &tail[..1],
        &tail[1..],
        p.username,
    ]
}

/// RAKP 2 key exchange AuthCode (full HMAC); the handshake verifies it with [`verify`].
#[cfg(test)]
pub(crate) fn rakp2_auth_code(suite: CipherSuite, kuid: &[u8], p: &RakpParams<'_>) -> Vec<u8> {
    let mut buf = [0u8; 10];
    hmac(suite, kuid, &rakp2_parts(p, &mut buf))
}

/// RAKP 3 key exchange AuthCode: HMAC_KUID(R_C | SID_M | ROLE_M | ULEN | UNAME).
pub(crate) fn rakp3_auth_code(suite: CipherSuite, kuid: &[u8], p: &RakpParams<'_>) -> Vec<u8> {
    hmac(
        suite,
        kuid,
        &[
            p.bmc_random,
            &p.console_sid.to_le_bytes(),
            &[p.role],
            &p.ulen(),
            p.username,
        ],
    )
}

/// Session Integrity Key: HMAC_KG(R_M | R_C | ROLE_M | ULEN | UNAME), with K_G = K_UID
/// when the BMC has no BMC key set (the usual case; this client does not take a K_G).
pub(crate) fn sik(suite: CipherSuite, kg: &[u8], p: &RakpParams<'_>) -> Vec<u8> {
    hmac(
        suite,
        kg,
        &[
            p.console_random,
            p.bmc_random,
            &[p.role],
            &p.ulen(),
            p.username,
        ],
    )
}

/// K1 = HMAC_SIK(20 x 0x01): the integrity key.
pub(crate) fn k1(suite: CipherSuite, sik: &[u8]) -> Vec<u8> {
    hmac(suite, sik, &[&[0x01; 20]])
}

/// K2 = HMAC_SIK(20 x 0x02): its first 16 bytes are the AES-CBC-128 key.
pub(crate) fn k2(suite: CipherSuite, sik: &[u8]) -> Vec<u8> {
    hmac(suite, sik, &[&[0x02; 20]])
}

/// The RAKP 4 integrity check value (full HMAC; the message carries the first
/// `auth_code_len` bytes): HMAC_SIK(R_M | SID_C | GUID_C). The handshake verifies it
/// with [`verify`] over the same parts.
#[cfg(test)]
pub(crate) fn rakp4_icv(suite: CipherSuite, sik: &[u8], p: &RakpParams<'_>) -> Vec<u8> {
    hmac(
        suite,
        sik,
        &[p.console_random, &p.bmc_sid.to_le_bytes(), p.bmc_guid],
    )
}

/// The keys of an established session. Debug output never shows them.
#[derive(Clone)]
pub(crate) struct SessionKeys {
    /// K1, the integrity key (20 or 32 bytes).
    pub(crate) k1: Vec<u8>,
    /// The AES-CBC-128 key (the first 16 bytes of K2).
    pub(crate) aes: [u8; 16],
}

impl fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionKeys { .. }")
    }
}

impl SessionKeys {
    /// Derives K1 and the AES key from the SIK.
    pub(crate) fn from_sik(suite: CipherSuite, sik: &[u8]) -> Self {
        let k2 = k2(suite, sik);
        let mut aes = [0u8; 16];
        let n = k2.len().min(16);
        aes[..n].copy_from_slice(&k2[..n]);
        Self {
            k1: k1(suite, sik),
            aes,
        }
    }
}

/// The packet AuthCode: the suite's integrity HMAC keyed with K1 over `signed` (auth
/// type through next header), truncated to 12 (SHA1-96) or 16 (SHA256-128) bytes.
pub(crate) fn integrity_auth_code(suite: CipherSuite, k1: &[u8], signed: &[u8]) -> Vec<u8> {
    let mut code = hmac(suite, k1, &[signed]);
    code.truncate(suite.auth_code_len());
    code
}

const AES_BLOCK: usize = 16;

/// AES-CBC-128 payload encryption (IPMI v2.0 13.29): `IV | E(data | 1, 2, .., n | n)`
/// where n pads data + pad + pad-length byte to whole blocks.
pub(crate) fn encrypt_payload(key: &[u8; 16], iv: &[u8; 16], data: &[u8]) -> Vec<u8> {
    let pad = (AES_BLOCK - (data.len() + 1) % AES_BLOCK) % AES_BLOCK;
    let mut plain = Vec::with_capacity(AES_BLOCK + data.len() + pad + 1);
    plain.extend_from_slice(data);
    // pad < 16, so the casts cannot truncate
    plain.extend((1..=pad).map(|i| i as u8));
    plain.push(pad as u8);
    let len = plain.len();
    let encryptor = cbc::Encryptor::<aes::Aes128>::new(key.into(), iv.into());
    let mut out = Vec::with_capacity(AES_BLOCK + len);
    out.extend_from_slice(iv);
    match encryptor.encrypt_padded_mut::<NoPadding>(&mut plain, len) {
        Ok(cipher) => out.extend_from_slice(cipher),
        // unreachable: `plain` is whole blocks by construction
        Err(_) => return Vec::new(),
    }
    out
}

/// Inverse of [`encrypt_payload`]: checks the block structure and the padding.
pub(crate) fn decrypt_payload(key: &[u8; 16], payload: &[u8]) -> Result<Vec<u8>, WireError> {
    if payload.len() < 2 * AES_BLOCK {
        return Err(WireError::Cipher("shorter than IV + one block"));
    }
    let (iv, cipher) = payload.split_at(AES_BLOCK);
    if cipher.len() % AES_BLOCK != 0 {
        return Err(WireError::Cipher("not a whole number of AES blocks"));
    }
    let mut iv_arr = [0u8; 16];
    iv_arr.copy_from_slice(iv);
    let mut buf = cipher.to_vec();
    let decryptor = cbc::Decryptor::<aes::Aes128>::new(key.into(), (&iv_arr).into());
    let plain_len = decryptor
        .decrypt_padded_mut::<NoPadding>(&mut buf)
        .map_err(|_| WireError::Cipher("decryption failed"))?
        .len();
    buf.truncate(plain_len);
    let Some((&pad_len, rest)) = buf.split_last() else {
        return Err(WireError::Cipher("empty plaintext"));
    };
    let pad_len = usize::from(pad_len);
    if pad_len >= AES_BLOCK || pad_len > rest.len() {
        return Err(WireError::Cipher("pad length out of range"));
    }
    let data_len = rest.len() - pad_len;
    if rest[data_len..]
        .iter()
        .zip(1u8..)
        .any(|(&b, expected)| b != expected)
    {
        return Err(WireError::Cipher("pad bytes are not 1, 2, 3, .."));
    }
    buf.truncate(data_len);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    //! Known-answer tests. Two independent sources:
    //!
    //! * Suite 3: a real exchange between ipmitool 1.8.19 and OpenIPMI's ipmi_sim on this
    //!   project's rig (`ipmitool -I lanplus -C 3 -vvv ... chassis power status`, user
    //!   `admin`, password `password`), whose debug output prints the RAKP 2 / RAKP 3
    //!   codes, SIK, K1 and K2 it computed. The numbers below are copied from that output.
    //! * Suite 17 and the packet AuthCodes: computed with Python's `hmac`/`hashlib` by
    //!   `bmc/tests/data/ipmi/rmcp_vectors.py` (independent of RustCrypto), whose output is
    //!   pasted here; that script documents each input.
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    fn arr16(s: &str) -> [u8; 16] {
        hex(s).try_into().expect("16 bytes")
    }

    /// The ipmitool <-> ipmi_sim session (suite 3).
    struct Captured {
        rm: [u8; 16],
        rc: [u8; 16],
        guid: [u8; 16],
    }

    fn captured() -> Captured {
        Captured {
            rm: arr16("37 48 6f 9c 27 c3 94 d8 af 20 24 3d a8 ae 10 26"),
            rc: arr16("00 5c d8 41 25 af 56 59 6b c6 c2 c4 c2 c6 b4 0d"),
            guid: arr16("a1 23 45 67 89 ab cd ef a1 23 45 67 89 ab cd ef"),
        }
    }

    fn params(c: &Captured) -> RakpParams<'_> {
        RakpParams {
            console_sid: 0xa0a2a3a4,
            bmc_sid: 0x0000_0002,
            console_random: &c.rm,
            bmc_random: &c.rc,
            bmc_guid: &c.guid,
            role: 0x14,
            username: b"admin",
        }
    }

    #[test]
    fn suite3_rakp_codes_and_keys_match_ipmitool() {
        let c = captured();
        let p = params(&c);
        let kuid = user_key(b"password");
        assert_eq!(
            &kuid[..],
            hex("70 61 73 73 77 6f 72 64 00 00 00 00 00 00 00 00 00 00 00 00")
        );
        // ipmitool's "rakp2 mac input buffer" is exactly our concatenation.
        let mut buf = [0u8; 10];
        let input: Vec<u8> = rakp2_parts(&p, &mut buf).concat();
        assert_eq!(
            input,
            hex("a4 a3 a2 a0 02 00 00 00 37 48 6f 9c 27 c3 94 d8
                 af 20 24 3d a8 ae 10 26 00 5c d8 41 25 af 56 59
                 6b c6 c2 c4 c2 c6 b4 0d a1 23 45 67 89 ab cd ef
                 a1 23 45 67 89 ab cd ef 14 05 61 64 6d 69 6e")
        );
        let suite = CipherSuite::Suite3;
        assert_eq!(
            rakp2_auth_code(suite, &kuid, &p),
            hex("c3 ab 04 bb 4b c3 56 b5 18 2b e7 88 ee ff 88 66 cd ea c2 a8")
        );
        assert_eq!(
            rakp3_auth_code(suite, &kuid, &p),
            hex("ff 8d 33 e1 c2 a7 0d cc 5d b1 ab 0c 1b 1d 9c e0 c4 7c 1a 23")
        );
        let sik = sik(suite, &kuid, &p);
        assert_eq!(
            sik,
            hex("f3 27 d8 67 0a 43 96 0f 5d 70 a1 74 ca b1 97 78 e2 fe e6 10")
        );
        assert_eq!(
            k1(suite, &sik),
            hex("12 98 35 fa df 54 15 2b c4 90 33 1b 5a a1 e8 3b ff 08 15 3d")
        );
        assert_eq!(
            k2(suite, &sik),
            hex("9c ec b6 a0 eb 32 02 94 77 eb 8e 59 b3 c0 20 cc 4d 19 bf 43")
        );
        let keys = SessionKeys::from_sik(suite, &sik);
        assert_eq!(
            &keys.aes[..],
            hex("9c ec b6 a0 eb 32 02 94 77 eb 8e 59 b3 c0 20 cc")
        );
        assert_eq!(format!("{keys:?}"), "SessionKeys { .. }");
    }

    #[test]
    fn suite3_rakp4_and_integrity_match_python() {
        let c = captured();
        let p = params(&c);
        let suite = CipherSuite::Suite3;
        let sik = sik(suite, &user_key(b"password"), &p);
        assert_eq!(
            rakp4_icv(suite, &sik, &p)[..12],
            hex(PY_SUITE3_RAKP4_ICV)[..]
        );
        let keys = SessionKeys::from_sik(suite, &sik);
        assert_eq!(
            integrity_auth_code(suite, &keys.k1, &hex(PY_SIGNED)),
            hex(PY_SUITE3_AUTHCODE)
        );
        assert!(verify(
            suite,
            &keys.k1,
            &[&hex(PY_SIGNED)],
            &hex(PY_SUITE3_AUTHCODE)
        ));
        assert!(!verify(suite, &keys.k1, &[&hex(PY_SIGNED)], &[]));
        let mut wrong = hex(PY_SUITE3_AUTHCODE);
        wrong[11] ^= 1;
        assert!(!verify(suite, &keys.k1, &[&hex(PY_SIGNED)], &wrong));
    }

    #[test]
    fn suite17_rakp_codes_and_keys_match_python() {
        let c = captured();
        let p = params(&c);
        let kuid = user_key(b"password");
        let suite = CipherSuite::Suite17;
        assert_eq!(rakp2_auth_code(suite, &kuid, &p), hex(PY_SUITE17_RAKP2));
        assert_eq!(rakp3_auth_code(suite, &kuid, &p), hex(PY_SUITE17_RAKP3));
        let sik = sik(suite, &kuid, &p);
        assert_eq!(sik, hex(PY_SUITE17_SIK));
        assert_eq!(k1(suite, &sik), hex(PY_SUITE17_K1));
        assert_eq!(k2(suite, &sik), hex(PY_SUITE17_K2));
        assert_eq!(
            rakp4_icv(suite, &sik, &p)[..16],
            hex(PY_SUITE17_RAKP4_ICV)[..]
        );
        let keys = SessionKeys::from_sik(suite, &sik);
        assert_eq!(
            integrity_auth_code(suite, &keys.k1, &hex(PY_SIGNED)),
            hex(PY_SUITE17_AUTHCODE)
        );
    }

    #[test]
    fn aes_cbc_payload_matches_python_and_round_trips() {
        // Key and IV from the script; plaintext = 9 bytes -> 6 pad bytes + pad length.
        let key = arr16("000102030405060708090a0b0c0d0e0f");
        let iv = arr16("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff");
        let data = hex("2018c881043801b5ff");
        let sealed = encrypt_payload(&key, &iv, &data);
        assert_eq!(sealed, hex(PY_AES_PAYLOAD));
        assert_eq!(decrypt_payload(&key, &sealed), Ok(data.clone()));
        for len in 0..40 {
            let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let sealed = encrypt_payload(&key, &iv, &data);
            assert_eq!(sealed.len() % 16, 0);
            assert_eq!(decrypt_payload(&key, &sealed), Ok(data));
        }
        // A flipped last ciphertext byte breaks the padding (with this key and data).
        let mut bad = sealed_for_padding_test(&key, &iv);
        let last = bad.len() - 1;
        bad[last] ^= 0x55;
        assert!(decrypt_payload(&key, &bad).is_err());
        assert!(decrypt_payload(&key, &[0u8; 16]).is_err());
        assert!(decrypt_payload(&key, &[0u8; 33]).is_err());
    }

    fn sealed_for_padding_test(key: &[u8; 16], iv: &[u8; 16]) -> Vec<u8> {
        encrypt_payload(key, iv, &hex("2018c881043801b5ff"))
    }

    // Output of `python3 bmc/tests/data/ipmi/rmcp_vectors.py`.
    const PY_SIGNED: &str = "06c0a4a3a2a0010000002000000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1fffff0207";
    const PY_SUITE3_RAKP4_ICV: &str = "42a76ad19045b6dae78bd924";
    const PY_SUITE3_AUTHCODE: &str = "e89b1797ba06cfde34e86a2a";
    const PY_SUITE17_RAKP2: &str =
        "fdec538a1b8ce09e7e24ae2554e4ff2bafe6a980a22fdb816db1ee955496c6f7";
    const PY_SUITE17_RAKP3: &str =
        "27bc6b0b2ee51368dc87a6107134043892d120d9231bd05285f0833f222773e4";
    const PY_SUITE17_SIK: &str = "d5f46e0d8c10cfa7f60251d65d2ce7bc65aac9b26b3a8faccea71885ac796655";
    const PY_SUITE17_K1: &str = "4df531cf229e1cd2b36d401f7a0fbf9885af20a9e77957d407dc8ff0cecd4fd7";
    const PY_SUITE17_K2: &str = "2cfb929f80dd69d4066fac5c941ba6299bf57e934db2e8feaf8aea592f8c67ac";
    const PY_SUITE17_RAKP4_ICV: &str = "1ae4935a738249937de3e92f6c808e70";
    const PY_SUITE17_AUTHCODE: &str = "59ff82d412bf77d722c8a3d3ccb9ee0a";
    const PY_AES_PAYLOAD: &str = "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeffe6ac412555ec062c9956e24c37d0730f";
}
