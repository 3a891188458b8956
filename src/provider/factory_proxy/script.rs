//! The factory's iPXE script, rewritten so that iPXE loads the kernel and initramfs from
//! ironboot over plain HTTP.
//!
//! The factory's PXE front end answers (its `standard.ipxe` and `secureboot.ipxe`):
//!
//! ```text
//! #!ipxe
//!
//! kernel https://pxe.factory.talos.dev/image/<schematic>/<version>/kernel-<arch> <cmdline>
//! initrd https://pxe.factory.talos.dev/image/<schematic>/<version>/initramfs-<arch>.xz
//! boot
//! ```
//!
//! (secure boot: one `kernel .../image/.../<platform>-<arch>-secureboot.uki.efi`). Every
//! whitespace-separated word that is an `http(s)` URL whose path ends in
//! `image/<schematic>/<version>/<name>` (a boot asset name, no query) becomes
//! `http://<advertise>:<port>/factory/image/<schematic>/<version>/<name>` when it is on
//! one of the factory's hosts (the PXE front end's and the API's, scheme and port compared
//! too) or of the very image the script belongs to (same schematic and version: a factory
//! whose external PXE URL is not the address ironboot reaches it by). Everything else (the
//! command line, other hosts' URLs) is left byte for byte. Rewriting sends no request
//! anywhere: ironboot fetches `/factory/image/...` from its configured factory only.

use super::path::AssetPath;

/// The label [`with_fallback`] adds.
pub(crate) const FALLBACK_LABEL: &str = "ironboot_failed";

/// Commands of the factory's scripts; a script with any other is left as it is.
const KNOWN: [&str; 7] = [
    "kernel", "initrd", "module", "imgfetch", "imgargs", "echo", "boot",
];
/// Those that can fail on a download (or, `boot`, on a bad image).
const CAN_FAIL: [&str; 5] = ["kernel", "initrd", "module", "imgfetch", "boot"];

/// `script` (the factory's, rewritten) with a way out when ironboot cannot deliver an
/// image (the factory went away mid-storm: a 502): every download and the `boot` get
/// `|| goto ironboot_failed`, and `:ironboot_failed` runs `fallback` (ironboot's retrying
/// script, without its `#!ipxe` line). Once the factory's script runs, the `chain --replace`
/// that loaded it has no way back, so the fallback must be in it.
///
/// Only for scripts of the factory's simple shape: `#!ipxe`, then those commands (no
/// labels, `goto`, `||` or `&&`), the last one `boot`. Anything else gives `None`: serve
/// it unchanged.
pub(crate) fn with_fallback(script: &str, fallback: &str) -> Option<String> {
    let mut lines = script.split_inclusive('\n');
    let first = lines.next()?;
    if first.trim_end() != "#!ipxe" {
        return None;
    }
    let mut out = String::with_capacity(script.len() + fallback.len() + 128);
    out.push_str(first);
    let mut last = None;
    for line in lines {
        let body = line.trim_end_matches(['\n', '\r']);
        let words: Vec<&str> = body.split_ascii_whitespace().collect();
        let Some(&cmd) = words.first() else {
            out.push_str(line);
            continue;
        };
        if cmd.starts_with('#') {
            out.push_str(line);
            continue;
        }
        if !KNOWN.contains(&cmd)
            || words
                .iter()
                .any(|w| w.contains("||") || w.contains("&&") || *w == "goto")
        {
            return None;
        }
        last = Some(cmd);
        if CAN_FAIL.contains(&cmd) {
            out.push_str(body.trim_end());
            out.push_str(" || goto ");
            out.push_str(FALLBACK_LABEL);
            out.push_str(&line[body.len()..]);
        } else {
            out.push_str(line);
        }
    }
    if last != Some("boot") {
        return None;
    }
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out.push(':');
    out.push_str(FALLBACK_LABEL);
    out.push('\n');
    out.push_str(fallback);
    Some(out)
}

/// The scheme, host and port of a factory URL, as URLs on it are compared.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
}

impl Origin {
    fn of(url: &reqwest::Url) -> Option<Self> {
        Some(Self {
            scheme: url.scheme().to_owned(),
            host: url.host_str()?.to_ascii_lowercase(),
            port: url.port_or_known_default(),
        })
    }
}

/// Rewrites the factory's scripts to point at ironboot.
#[derive(Debug, Clone)]
pub(crate) struct Rewriter {
    factory: Vec<Origin>,
    /// `http://<advertise>:<port>/factory`.
    proxy_base: String,
}

/// A rewritten script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rewritten {
    /// The script.
    pub(crate) text: String,
    /// URLs rewritten.
    pub(crate) rewritten: usize,
    /// URLs on a factory host that could not be rewritten (not an image path, a query):
    /// left as they were; a machine without HTTPS cannot load them.
    pub(crate) left: Vec<String>,
}

/// A URL of the configuration that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Image Factory URL {url:?} is not an absolute http(s) URL with a host")]
pub(crate) struct BadFactoryUrl {
    /// The URL.
    pub(crate) url: String,
}

impl Rewriter {
    /// Rewriting URLs on the hosts of `factory_urls` (the PXE front end's and the API's
    /// base URLs) to `proxy_base` (`http://<advertise>:<port>/factory`).
    pub(crate) fn new(factory_urls: &[&str], proxy_base: String) -> Result<Self, BadFactoryUrl> {
        let mut factory = Vec::new();
        for u in factory_urls {
            let origin = reqwest::Url::parse(u)
                .ok()
                .filter(|p| matches!(p.scheme(), "http" | "https"))
                .as_ref()
                .and_then(Origin::of)
                .ok_or_else(|| BadFactoryUrl {
                    url: (*u).to_owned(),
                })?;
            if !factory.contains(&origin) {
                factory.push(origin);
            }
        }
        Ok(Self {
            factory,
            proxy_base: proxy_base.trim_end_matches('/').to_owned(),
        })
    }

    /// What `word` becomes: `Ok(Some(url))` rewritten, `Ok(None)` not a factory URL,
    /// `Err(())` a factory URL that cannot be rewritten.
    fn word(&self, word: &str, script: &AssetPath) -> Result<Option<String>, ()> {
        let scheme_ok = ["http://", "https://"].iter().any(|s| {
            word.get(..s.len())
                .is_some_and(|w| w.eq_ignore_ascii_case(s))
        });
        if !scheme_ok {
            return Ok(None);
        }
        let Ok(url) = reqwest::Url::parse(word) else {
            return Ok(None);
        };
        let Some(origin) = Origin::of(&url) else {
            return Ok(None);
        };
        let image = url.path_segments().and_then(AssetPath::image_from_segments);
        let plain = url.query().is_none() && url.fragment().is_none() && url.username() == "";
        if !self.factory.contains(&origin) {
            return Ok(image
                .filter(|i| plain && i.same_release(script))
                .map(|i| i.url(&self.proxy_base)));
        }
        match image {
            Some(i) if plain => Ok(Some(i.url(&self.proxy_base))),
            _ => Err(()),
        }
    }

    /// Rewrite `text`, the script of `script`.
    pub(crate) fn rewrite(&self, text: &str, script: &AssetPath) -> Rewritten {
        let mut out = Rewritten {
            text: String::with_capacity(text.len() + 256),
            rewritten: 0,
            left: Vec::new(),
        };
        let mut rest = text;
        while !rest.is_empty() {
            // Whitespace as it is, then one word.
            let ws = rest
                .find(|c: char| !c.is_ascii_whitespace())
                .unwrap_or(rest.len());
            out.text.push_str(&rest[..ws]);
            rest = &rest[ws..];
            let end = rest
                .find(|c: char| c.is_ascii_whitespace())
                .unwrap_or(rest.len());
            let word = &rest[..end];
            match self.word(word, script) {
                Ok(Some(url)) => {
                    out.text.push_str(&url);
                    out.rewritten += 1;
                }
                Ok(None) => out.text.push_str(word),
                Err(()) => {
                    out.text.push_str(word);
                    out.left.push(word.to_owned());
                }
            }
            rest = &rest[end..];
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> String {
        "5b4c4f3e".repeat(8)
    }

    impl Rewriter {
        fn rewrite_of(&self, text: &str) -> Rewritten {
            self.rewrite(text, &script_path())
        }
    }

    fn script_path() -> AssetPath {
        AssetPath::new(
            super::super::path::Kind::Script,
            &id(),
            "1.13.7",
            "metal-amd64",
        )
        .unwrap()
    }

    fn rewriter() -> Rewriter {
        Rewriter::new(
            &[
                "https://pxe.factory.example.test",
                "https://factory.example.test/",
            ],
            "http://10.0.0.1:50042/factory".into(),
        )
        .unwrap()
    }

    /// The factory's `standard.ipxe` as it renders it.
    fn standard(host: &str, cmdline: &str) -> String {
        let id = id();
        format!(
            "#!ipxe\n\nkernel {host}/image/{id}/v1.13.7/kernel-amd64 {cmdline}\n\
             initrd {host}/image/{id}/v1.13.7/initramfs-amd64.xz\nboot\n"
        )
    }

    #[test]
    fn the_factorys_kernel_and_initramfs_urls_point_at_ironboot() {
        let cmdline = "talos.platform=metal console=ttyS0 talos.config=http://10.0.0.1:50042/config?u=${uuid} \
                       siderolink.api=https://omni.example.test:8090/?jointoken=x init_on_alloc=1";
        let r = rewriter().rewrite_of(&standard("https://pxe.factory.example.test", cmdline));
        let id = id();
        assert_eq!(
            r.text,
            format!(
                "#!ipxe\n\nkernel http://10.0.0.1:50042/factory/image/{id}/v1.13.7/kernel-amd64 {cmdline}\n\
                 initrd http://10.0.0.1:50042/factory/image/{id}/v1.13.7/initramfs-amd64.xz\nboot\n"
            )
        );
        assert_eq!(r.rewritten, 2);
        assert!(r.left.is_empty());
    }

    #[test]
    fn the_api_host_default_ports_case_and_path_prefixes_match_too() {
        let id = id();
        for host in [
            "https://factory.example.test",
            "https://FACTORY.example.test:443",
            "https://pxe.factory.example.test/some/prefix",
        ] {
            let r = rewriter().rewrite_of(&standard(host, "a=b"));
            assert_eq!(r.rewritten, 2, "{host}");
            assert!(
                r.text.contains(&format!(
                    "kernel http://10.0.0.1:50042/factory/image/{id}/v1.13.7/kernel-amd64 a=b\n"
                )),
                "{}",
                r.text
            );
        }
        // The secure-boot script.
        let uki = format!(
            "#!ipxe\n\nkernel https://pxe.factory.example.test/image/{id}/v1.13.7/metal-amd64-secureboot.uki.efi\nboot\n"
        );
        let r = rewriter().rewrite_of(&uki);
        assert_eq!(
            r.text,
            format!(
                "#!ipxe\n\nkernel http://10.0.0.1:50042/factory/image/{id}/v1.13.7/metal-amd64-secureboot.uki.efi\nboot\n"
            )
        );
    }

    #[test]
    fn other_hosts_schemes_ports_and_odd_paths_are_left_alone() {
        let id = id();
        for host in [
            "http://pxe.factory.example.test",
            "https://pxe.factory.example.test:8443",
            "https://evil.example.test",
            "https://pxe.factory.example.test.evil.example.test",
        ] {
            // Another image than the script's (its version here).
            let script = standard(host, "a=b").replace("v1.13.7", "v1.12.0");
            let r = rewriter().rewrite_of(&script);
            assert_eq!(
                (r.text.as_str(), r.rewritten),
                (script.as_str(), 0),
                "{host}"
            );
            assert!(r.left.is_empty());
        }
        // On the factory's host, but not an image path ironboot proxies: left, reported.
        for url in [
            format!("https://pxe.factory.example.test/image/{id}/v1.13.7/kernel-amd64?x=1"),
            format!("https://pxe.factory.example.test/image/{id}/v1.13.7/metal-amd64.iso"),
            format!("https://pxe.factory.example.test/image/{id}/../kernel-amd64"),
            format!("https://user@pxe.factory.example.test/image/{id}/v1.13.7/kernel-amd64"),
            "https://pxe.factory.example.test/".to_owned(),
        ] {
            let script = format!("#!ipxe\nkernel {url} a=b\nboot\n");
            let r = rewriter().rewrite_of(&script);
            assert_eq!(r.text, script);
            assert_eq!(r.left, vec![url.clone()], "{url}");
        }
    }

    #[test]
    fn the_scripts_own_image_is_rewritten_on_any_host() {
        // The factory's external PXE URL is another name than the one ironboot uses.
        let id = id();
        let r = rewriter().rewrite_of(&standard("https://pxe.internal.example.test:8443", "a=b"));
        assert_eq!(r.rewritten, 2, "{}", r.text);
        assert!(r.text.contains(&format!(
            "initrd http://10.0.0.1:50042/factory/image/{id}/v1.13.7/initramfs-amd64.xz\n"
        )));
        // Not with a query, nor another schematic.
        let other = "0".repeat(64);
        for script in [
            format!("#!ipxe\nkernel https://x.example.test/image/{id}/v1.13.7/kernel-amd64?a=b\n"),
            format!("#!ipxe\nkernel https://x.example.test/image/{other}/v1.13.7/kernel-amd64\n"),
        ] {
            let r = rewriter().rewrite_of(&script);
            assert_eq!((r.text.as_str(), r.rewritten), (script.as_str(), 0));
            assert!(r.left.is_empty());
        }
    }

    #[test]
    fn whitespace_and_crlf_are_kept() {
        let id = id();
        let script = format!(
            "#!ipxe\r\n\tkernel  https://pxe.factory.example.test/image/{id}/v1/kernel-arm64\t x \r\nboot"
        );
        let r = rewriter().rewrite_of(&script);
        assert_eq!(
            r.text,
            format!(
                "#!ipxe\r\n\tkernel  http://10.0.0.1:50042/factory/image/{id}/v1/kernel-arm64\t x \r\nboot"
            )
        );
    }

    const FALLBACK: &str = "echo retrying\nsleep 30\nchain --replace http://10.0.0.1:50042/ipxe/boot.ipxe || goto failed\n:failed\nreboot\n";

    #[test]
    fn the_factorys_scripts_get_a_way_back_to_ironboot() {
        let id = id();
        let standard = rewriter()
            .rewrite_of(&standard(
                "https://pxe.factory.example.test",
                "a=b c=${uuid}",
            ))
            .text;
        let with = with_fallback(&standard, FALLBACK).unwrap();
        assert_eq!(
            with,
            format!(
                "#!ipxe\n\nkernel http://10.0.0.1:50042/factory/image/{id}/v1.13.7/kernel-amd64 a=b c=${{uuid}} || goto ironboot_failed\n\
                 initrd http://10.0.0.1:50042/factory/image/{id}/v1.13.7/initramfs-amd64.xz || goto ironboot_failed\n\
                 boot || goto ironboot_failed\n:ironboot_failed\n{FALLBACK}"
            )
        );
        crate::boot::boot_script::tests::check_debian_2019_commands_and_labels(with.as_bytes());
        // Secure boot's, CRLF, comments, no final newline.
        let uki = "#!ipxe\r\n# uki\r\nkernel http://x/image/k.uki.efi\r\nboot";
        assert_eq!(
            with_fallback(uki, FALLBACK).unwrap(),
            format!(
                "#!ipxe\r\n# uki\r\nkernel http://x/image/k.uki.efi || goto ironboot_failed\r\n\
                 boot || goto ironboot_failed\n:ironboot_failed\n{FALLBACK}"
            )
        );
    }

    #[test]
    fn scripts_of_another_shape_are_left_as_they_are() {
        for script in [
            "kernel x\nboot\n",
            "#!gpxe\nkernel x\nboot\n",
            "#!ipxe\nkernel x\ninitrd y\n",
            "#!ipxe\nkernel x || goto y\n:y\nboot\n",
            "#!ipxe\nkernel x\nboot && echo\n",
            "#!ipxe\nset a b\nkernel x\nboot\n",
            "#!ipxe\nkernel x\nboot\nshell\n",
        ] {
            assert_eq!(with_fallback(script, FALLBACK), None, "{script:?}");
        }
    }

    #[test]
    fn configuration_urls_must_be_absolute() {
        for bad in ["", "pxe.factory.example.test", "ftp://x", "http://"] {
            assert!(
                Rewriter::new(&[bad], "http://x/factory".into()).is_err(),
                "{bad:?}"
            );
        }
    }
}
