//! What must hold for any boot-script query value (the `boot_query` fuzz target and
//! `net/tests/boot_query_fuzz_corpus.rs` run the same checks): the input is split into
//! `uuid`, `mac`, `arch` and a free-text value at the first NUL bytes, as they arrive from
//! iPXE once URL-decoded.
//!
//! - no parser panics;
//! - a UUID or MAC that parses prints in its canonical form, which parses back to the
//!   same value (and the placeholder check agrees);
//! - an architecture maps to amd64 or arm64 only;
//! - cleaned text is never empty, never longer than [`super::MAX_TEXT`] characters, and
//!   holds no control character.

use super::{Arch, MAX_TEXT, MacAddr, Uuid, clean_text};

/// Runs every check on `input`; panics on a violation.
pub fn check_query(input: &[u8]) {
    let mut fields = input.splitn(4, |b| *b == 0);
    let mut next = || String::from_utf8_lossy(fields.next().unwrap_or_default()).into_owned();
    let (uuid, mac, arch, text) = (next(), next(), next(), next());

    if let Ok(u) = uuid.parse::<Uuid>() {
        let printed = u.to_string();
        assert_eq!(printed.len(), 36, "canonical UUID form: {printed}");
        let again: Uuid = printed.parse().expect("a printed UUID parses");
        assert_eq!(again, u, "UUID round trip of {uuid:?}");
        assert_eq!(again.is_placeholder(), u.is_placeholder());
    }
    if let Ok(m) = mac.parse::<MacAddr>() {
        let printed = m.to_string();
        assert_eq!(printed.len(), 17, "canonical MAC form: {printed}");
        let again: MacAddr = printed.parse().expect("a printed MAC parses");
        assert_eq!(again, m, "MAC round trip of {mac:?}");
    }
    if let Some(a) = Arch::from_buildarch(&arch) {
        assert!(matches!(a.as_str(), "amd64" | "arm64"), "{a}");
    }
    if let Some(clean) = clean_text(&text) {
        assert!(!clean.is_empty(), "clean text is never empty");
        assert!(
            clean.chars().count() <= MAX_TEXT,
            "{} chars",
            clean.chars().count()
        );
        assert!(!clean.chars().any(char::is_control), "{clean:?}");
    }
}
