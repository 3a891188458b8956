//! The boot files ironboot serves (over TFTP and HTTP), held in memory once.
//!
//! Each file is one shared, immutable [`Bytes`]: every transfer reads from it, nothing is
//! copied per transfer, and the same file may be registered under several names (the Go
//! provider's `amd64/snp.efi` is `snp.efi`). Loading from disk is the binary's job; this
//! module only holds and looks up.

use std::collections::BTreeMap;

use bytes::Bytes;

/// Why a requested file name was refused before any lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// Empty (or only slashes).
    #[error("empty file name")]
    Empty,
    /// Contains a NUL byte.
    #[error("file name contains NUL")]
    Nul,
    /// Contains a `..` component, a backslash, or an empty/`.` component: never resolved,
    /// so nothing outside the served set can be named.
    #[error("file name has a forbidden path component")]
    Traversal,
    /// Longer than any name we serve.
    #[error("file name too long")]
    TooLong,
}

/// Longest accepted file name, in bytes (TFTP requests carry short names; a URL path
/// segment longer than this is an attack or a mistake).
pub const MAX_NAME_LEN: usize = 255;

/// Normalise a requested name: strip leading slashes (TFTP clients send `/snp.efi` as
/// often as `snp.efi`) and refuse anything that could escape the served set.
pub fn normalize(name: &str) -> Result<&str, NameError> {
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong);
    }
    if name.contains('\0') {
        return Err(NameError::Nul);
    }
    let trimmed = name.trim_start_matches('/');
    if trimmed.is_empty() {
        return Err(NameError::Empty);
    }
    if trimmed.contains('\\')
        || trimmed
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(NameError::Traversal);
    }
    Ok(trimmed)
}

/// An immutable set of named files.
#[derive(Debug, Clone, Default)]
pub struct FileSet {
    files: BTreeMap<String, Bytes>,
}

impl FileSet {
    /// An empty set.
    pub fn new() -> Self {
        FileSet::default()
    }

    /// Add (or replace) `name` with `content`. The name is stored normalised.
    pub fn insert(&mut self, name: &str, content: Bytes) -> Result<(), NameError> {
        let name = normalize(name)?;
        self.files.insert(name.to_owned(), content);
        Ok(())
    }

    /// Register an existing file under another name too (no copy). Returns false if
    /// `existing` is not in the set.
    pub fn alias(&mut self, alias: &str, existing: &str) -> Result<bool, NameError> {
        let Some(content) = self.files.get(normalize(existing)?).cloned() else {
            return Ok(false);
        };
        self.insert(alias, content)?;
        Ok(true)
    }

    /// Look up a requested name (normalised first). `Ok(None)` means "not served".
    pub fn get(&self, name: &str) -> Result<Option<&Bytes>, NameError> {
        Ok(self.files.get(normalize(name)?))
    }

    /// The served names, sorted, with their sizes.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Bytes)> {
        self.files.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of names served.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether nothing is served.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalised_and_escapes_refused() {
        assert_eq!(normalize("snp.efi"), Ok("snp.efi"));
        assert_eq!(normalize("/snp.efi"), Ok("snp.efi"));
        assert_eq!(normalize("//amd64/snp.efi"), Ok("amd64/snp.efi"));
        for bad in [
            "../etc/passwd",
            "a/../b",
            "a//b",
            "./a",
            "a/.",
            "a\\b",
            "..",
            "a/",
        ] {
            assert_eq!(normalize(bad), Err(NameError::Traversal), "{bad:?}");
        }
        assert_eq!(normalize(""), Err(NameError::Empty));
        assert_eq!(normalize("///"), Err(NameError::Empty));
        assert_eq!(normalize("a\0b"), Err(NameError::Nul));
        assert_eq!(normalize(&"a".repeat(256)), Err(NameError::TooLong));
    }

    #[test]
    fn aliases_share_the_bytes() {
        let mut set = FileSet::new();
        set.insert("snp.efi", Bytes::from_static(b"MZ..")).unwrap();
        assert!(set.alias("amd64/snp.efi", "snp.efi").unwrap());
        assert!(!set.alias("arm64/snp.efi", "snp-arm64.efi").unwrap());
        let a = set.get("/amd64/snp.efi").unwrap().unwrap();
        let b = set.get("snp.efi").unwrap().unwrap();
        assert_eq!(a.as_ptr(), b.as_ptr(), "same buffer, not a copy");
        assert_eq!(set.get("missing.efi"), Ok(None));
        assert_eq!(set.get("../snp.efi"), Err(NameError::Traversal));
        assert_eq!(set.len(), 2);
    }
}
