//! Image Factory schematics: the customization a Talos image is built with, rendered in
//! the factory's canonical form.
//!
//! The factory names a schematic by the SHA-256 of its canonical YAML (Go's `yaml.v3`
//! marshalling of its `Schematic` struct: four-space indents, empty fields left out).
//! [`Schematic::canonical_yaml`] writes that same text for the fields ironboot sets, so the
//! body ironboot posts is what the factory hashes; the tests check it against IDs the
//! public factory gave. The cache key is the hash of this text.

use std::borrow::Cow;
use std::fmt::Write as _;

use sha2::{Digest, Sha256};

/// The extensions of the agent-mode image, as the Go provider's: every firmware
/// extension, then the metal agent itself.
pub(crate) const AGENT_MODE_EXTENSIONS: [&str; 10] = [
    "siderolabs/amd-ucode",
    "siderolabs/amdgpu-firmware",
    "siderolabs/bnx2-bnx2x",
    "siderolabs/chelsio-firmware",
    "siderolabs/i915-ucode",
    "siderolabs/intel-ice-firmware",
    "siderolabs/intel-ucode",
    "siderolabs/qlogic-firmware",
    "siderolabs/realtek-firmware",
    "siderolabs/metal-agent",
];

/// The customization ironboot asks the factory for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Schematic {
    /// `customization.extraKernelArgs`, in order.
    pub(crate) extra_kernel_args: Vec<String>,
    /// `customization.systemExtensions.officialExtensions`, in order.
    pub(crate) official_extensions: Vec<String>,
}

/// A content key: the SHA-256 of the canonical YAML.
pub(crate) type ContentKey = [u8; 32];

impl Schematic {
    /// The agent-mode schematic: [`AGENT_MODE_EXTENSIONS`] and `kernel_args`.
    pub(crate) fn agent_mode(kernel_args: Vec<String>) -> Self {
        Self {
            extra_kernel_args: kernel_args,
            official_extensions: AGENT_MODE_EXTENSIONS.map(str::to_owned).into(),
        }
    }

    /// The YAML the factory's Go code would marshal for this schematic.
    pub(crate) fn canonical_yaml(&self) -> String {
        if self.extra_kernel_args.is_empty() && self.official_extensions.is_empty() {
            return "customization: {}\n".to_owned();
        }
        let mut out = String::from("customization:\n");
        if !self.extra_kernel_args.is_empty() {
            out.push_str("    extraKernelArgs:\n");
            for arg in &self.extra_kernel_args {
                let _ = writeln!(out, "        - {}", yaml_scalar(arg));
            }
        }
        if !self.official_extensions.is_empty() {
            out.push_str("    systemExtensions:\n        officialExtensions:\n");
            for ext in &self.official_extensions {
                let _ = writeln!(out, "            - {}", yaml_scalar(ext));
            }
        }
        out
    }

    /// The hash of [`Self::canonical_yaml`]: equal for equal content, whatever the call.
    pub(crate) fn content_key(&self) -> ContentKey {
        Sha256::digest(self.canonical_yaml().as_bytes()).into()
    }
}

/// A string as a YAML scalar: plain where `yaml.v3` writes it plain (kernel arguments and
/// extension names are), else double-quoted (JSON escapes are valid YAML). Quoting more
/// than Go would only changes the factory's ID for that schematic, never its meaning.
fn yaml_scalar(s: &str) -> Cow<'_, str> {
    const RESERVED_WORDS: [&str; 11] = [
        "true", "false", "yes", "no", "on", "off", "y", "n", "null", "~", "",
    ];
    let plain = s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '/' || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._/=:?&${}+@%,~-".contains(c))
        && !s.ends_with(':')
        && !RESERVED_WORDS.contains(&s.to_ascii_lowercase().as_str());
    if plain {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(serde_json::Value::from(s).to_string())
    }
}

/// Lowercase hex of a digest.
#[cfg(test)]
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &Schematic) -> String {
        hex(&s.content_key())
    }

    fn extensions(names: &[&str]) -> Schematic {
        Schematic {
            extra_kernel_args: vec![],
            official_extensions: names.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    /// IDs the public Image Factory gave for these schematics (its README's default
    /// schematic, and IDs published with their schematics): the canonical YAML is the
    /// factory's, byte for byte.
    #[test]
    fn canonical_yaml_hashes_to_the_factorys_ids() {
        assert_eq!(
            id(&extensions(&[])),
            "376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba"
        );
        assert_eq!(
            id(&extensions(&[
                "siderolabs/iscsi-tools",
                "siderolabs/qemu-guest-agent"
            ])),
            "dc7b152cb3ea99b821fcb7340ce7168313ce393d663740b791c36f6e95fc8586"
        );
        assert_eq!(
            id(&extensions(&[
                "siderolabs/drbd",
                "siderolabs/tailscale",
                "siderolabs/xen-guest-agent"
            ])),
            "21c55fcf357cbda853e9f91a1fa5fedf72701b1d7e8bcefe24e9cb60b58892d9"
        );
    }

    #[test]
    fn agent_mode_schematic_lists_kernel_args_then_the_extensions() {
        let s = Schematic::agent_mode(vec![
            "talos.config=http://10.0.0.1:50042/config?u=${uuid}".into(),
            "console=tty0".into(),
            "metal.provider.address=10.0.0.1:50042".into(),
        ]);
        let yaml = s.canonical_yaml();
        assert!(
            yaml.starts_with(
                "customization:\n    extraKernelArgs:\n        \
                 - talos.config=http://10.0.0.1:50042/config?u=${uuid}\n        \
                 - console=tty0\n        - metal.provider.address=10.0.0.1:50042\n    \
                 systemExtensions:\n        officialExtensions:\n            \
                 - siderolabs/amd-ucode\n"
            ),
            "{yaml}"
        );
        assert!(
            yaml.ends_with("            - siderolabs/metal-agent\n"),
            "{yaml}"
        );
        assert_eq!(yaml.lines().count(), 1 + 1 + 3 + 2 + 10);
    }

    #[test]
    fn odd_strings_are_quoted_so_they_keep_their_meaning() {
        for (arg, written) in [
            ("quiet", "quiet"),
            ("yes", "\"yes\""),
            ("On", "\"On\""),
            ("1", "\"1\""),
            ("a: b", "\"a: b\""),
            ("-x", "\"-x\""),
            ("#c", "\"#c\""),
            ("k=\"v\"", "\"k=\\\"v\\\"\""),
            ("two\nlines", "\"two\\nlines\""),
            ("end:", "\"end:\""),
            ("", "\"\""),
        ] {
            assert_eq!(yaml_scalar(arg), written, "{arg:?}");
        }
    }

    #[test]
    fn content_keys_differ_by_content_and_order_only() {
        let a = Schematic::agent_mode(vec!["console=tty0".into()]);
        assert_eq!(a.content_key(), a.clone().content_key());
        let b = Schematic::agent_mode(vec!["console=ttyS0".into()]);
        assert_ne!(a.content_key(), b.content_key());
        let ab = extensions(&["x/a", "x/b"]);
        let ba = extensions(&["x/b", "x/a"]);
        assert_ne!(ab.content_key(), ba.content_key());
        assert_eq!(
            hex(&[0x00, 0xab, 0x10]),
            "00ab10",
            "hex is lowercase and zero-padded"
        );
    }
}
