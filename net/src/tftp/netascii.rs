//! `netascii` mode (RFC 1350, after the TELNET NVT of RFC 764): line ends go out as CR LF
//! and a bare CR as CR NUL. tftp-hpa's `tftp` client asks for netascii unless told
//! `binary`, so a text file fetched by hand arrives intact.
//!
//! A file is encoded once, on its first netascii request, and the result is kept: every
//! later transfer shares it like an octet transfer shares the original.

use std::collections::HashMap;

use bytes::Bytes;

/// The netascii encoding of `data`: LF becomes CR LF, CR becomes CR NUL.
pub fn encode(data: &[u8]) -> Vec<u8> {
    let extra = data.iter().filter(|&&c| c == b'\n' || c == b'\r').count();
    let mut out = Vec::with_capacity(data.len() + extra);
    for &c in data {
        match c {
            b'\n' => out.extend_from_slice(b"\r\n"),
            b'\r' => out.extend_from_slice(b"\r\0"),
            _ => out.push(c),
        }
    }
    out
}

/// Encoded files, keyed by the identity (address and length) of the original bytes: the
/// served set is immutable while the cache lives, and aliases of one file share one entry.
#[derive(Debug, Default)]
pub(crate) struct NetasciiCache {
    encoded: HashMap<(usize, usize), Bytes>,
}

impl NetasciiCache {
    /// The netascii form of `file`, encoded now if this is the first time.
    pub(crate) fn get(&mut self, file: &Bytes) -> Bytes {
        let key = (file.as_ptr() as usize, file.len());
        self.encoded
            .entry(key)
            .or_insert_with(|| Bytes::from(encode(file)))
            .clone()
    }

    /// Forget everything (the served set changed).
    pub(crate) fn clear(&mut self) {
        self.encoded.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_ends_and_bare_cr() {
        assert_eq!(encode(b""), b"");
        assert_eq!(encode(b"a\nb"), b"a\r\nb");
        assert_eq!(encode(b"a\r\nb"), b"a\r\0\r\nb");
        assert_eq!(encode(b"\r"), b"\r\0");
        assert_eq!(encode(b"\n\n"), b"\r\n\r\n");
    }

    #[test]
    fn encoded_once_and_shared() {
        let mut cache = NetasciiCache::default();
        let file = Bytes::from_static(b"x\ny\n");
        let a = cache.get(&file);
        let b = cache.get(&file.clone());
        assert_eq!(&a[..], b"x\r\ny\r\n");
        assert_eq!(a.as_ptr(), b.as_ptr(), "second request reuses the encoding");
    }
}
