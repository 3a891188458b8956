//! The factory paths ironboot proxies, checked before anything reaches the factory or the
//! disk: `<schematic>/<version>/<name>` under the factory's `/pxe/` (iPXE scripts) and
//! `/image/` (kernels, initramfs, UKIs), as its routes `/pxe/:schematic/:version/:path`
//! and `/image/:schematic/:version/:path` take them.
//!
//! Each segment is drawn from a small alphabet and starts with a letter or digit, so none
//! is `.` or `..`, none holds `/`, `%`, `?` or whitespace, and the three joined by `_` are
//! a file name in the cache directory that parses back to the same path.

use std::fmt;

/// Longest version segment accepted.
const MAX_VERSION: usize = 64;
/// Longest name segment accepted.
const MAX_NAME: usize = 128;

/// Which of the factory's PXE routes a path is under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    /// `/pxe/`: the iPXE script of a PXE image.
    Script,
    /// `/image/`: a boot asset (kernel, initramfs, UKI).
    Image,
}

impl Kind {
    /// The factory's route prefix, without slashes.
    pub(crate) fn route(self) -> &'static str {
        match self {
            Kind::Script => "pxe",
            Kind::Image => "image",
        }
    }
}

/// A checked `<schematic>/<version>/<name>` under one of the factory's PXE routes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct AssetPath {
    kind: Kind,
    schematic: String,
    version: String,
    name: String,
}

/// Why a path is not proxied (answered 400 / left alone in a script).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PathError {
    /// Not a factory schematic ID.
    #[error("schematic {0} is not 64 lowercase hex digits")]
    Schematic(Shown),
    /// Not a version like `v1.13.7`.
    #[error("version {0} is not a Talos version like v1.13.7")]
    Version(Shown),
    /// A name outside the alphabet, or not a boot asset of a PXE image.
    #[error("{0} is not a PXE script name (metal-amd64) or a kernel-, initramfs- or .uki.efi name")]
    Name(Shown),
}

/// A request's segment in an error message: quoted, at most 80 characters.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Shown(String);

impl Shown {
    fn of(s: &str) -> Self {
        match s.char_indices().nth(80) {
            Some((cut, _)) => Shown(format!("{:?}...", &s[..cut])),
            None => Shown(format!("{s:?}")),
        }
    }
}

impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn schematic_ok(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn version_ok(v: &str) -> bool {
    v.len() <= MAX_VERSION
        && v.starts_with(|c: char| c.is_ascii_alphanumeric())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+'))
}

fn name_ok(kind: Kind, n: &str) -> bool {
    let alphabet = n.len() <= MAX_NAME
        && n.starts_with(|c: char| c.is_ascii_alphanumeric())
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    alphabet
        && match kind {
            // `metal-amd64`, `metal-arm64-secureboot`: no dots.
            Kind::Script => !n.contains('.'),
            // What the factory's PXE scripts load: `kernel-<arch>`,
            // `initramfs-<arch>.xz`, `<platform>-<arch>-secureboot.uki.efi`. Not ISOs or
            // disk images: the cache is for the PXE storm, not a general mirror.
            Kind::Image => {
                n.starts_with("kernel-") || n.starts_with("initramfs-") || n.ends_with(".uki.efi")
            }
        }
}

impl AssetPath {
    /// Check the three segments of a request for `kind`.
    pub(crate) fn new(
        kind: Kind,
        schematic: &str,
        version: &str,
        name: &str,
    ) -> Result<Self, PathError> {
        if !schematic_ok(schematic) {
            return Err(PathError::Schematic(Shown::of(schematic)));
        }
        if !version_ok(version) {
            return Err(PathError::Version(Shown::of(version)));
        }
        if !name_ok(kind, name) {
            return Err(PathError::Name(Shown::of(name)));
        }
        Ok(Self {
            kind,
            schematic: schematic.to_owned(),
            version: version.to_owned(),
            name: name.to_owned(),
        })
    }

    /// Whether `other` is of the same schematic and version (`1.2.3` and `v1.2.3` are the
    /// same version to the factory).
    pub(crate) fn same_release(&self, other: &AssetPath) -> bool {
        let v = |p: &AssetPath| p.version.strip_prefix('v').unwrap_or(&p.version).to_owned();
        self.schematic == other.schematic && v(self) == v(other)
    }

    /// `<schematic>/<version>/<name>`.
    pub(crate) fn rel(&self) -> String {
        format!("{}/{}/{}", self.schematic, self.version, self.name)
    }

    /// `<base>/<route>/<schematic>/<version>/<name>`: the URL under `base` (the factory's
    /// PXE front end, or ironboot's `/factory`).
    pub(crate) fn url(&self, base: &str) -> String {
        format!(
            "{}/{}/{}",
            base.trim_end_matches('/'),
            self.kind.route(),
            self.rel()
        )
    }

    /// Which route the path is under.
    pub(crate) fn kind(&self) -> Kind {
        self.kind
    }

    /// The schematic ID (64 lowercase hex digits).
    pub(crate) fn schematic(&self) -> &str {
        &self.schematic
    }

    /// The cache file name of an image: `<schematic>_<version>_<name>` (the version has
    /// no `_`, so [`AssetPath::from_cache_name`] splits it back unambiguously).
    pub(crate) fn cache_name(&self) -> String {
        format!("{}_{}_{}", self.schematic, self.version, self.name)
    }

    /// The image path of a cache file name; `None` for any other file.
    pub(crate) fn from_cache_name(file: &str) -> Option<Self> {
        let (schematic, rest) = file.split_at_checked(64)?;
        let rest = rest.strip_prefix('_')?;
        let (version, name) = rest.split_once('_')?;
        Self::new(Kind::Image, schematic, version, name).ok()
    }

    /// The image path of a URL path's last four segments, `image/<s>/<v>/<n>` (any prefix
    /// before them: a factory may sit under a path). `None` if they are not one.
    pub(crate) fn image_from_segments<'a>(
        segments: impl DoubleEndedIterator<Item = &'a str>,
    ) -> Option<Self> {
        let mut last = segments.rev();
        let name = last.next()?;
        let version = last.next()?;
        let schematic = last.next()?;
        if last.next()? != "image" {
            return None;
        }
        Self::new(Kind::Image, schematic, version, name).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> String {
        "0123456789abcdef".repeat(4)
    }

    #[test]
    fn good_paths_are_accepted_and_round_trip_through_the_cache_name() {
        for (kind, version, name) in [
            (Kind::Script, "v1.13.7", "metal-amd64"),
            (Kind::Script, "1.9.0", "metal-arm64-secureboot"),
            (Kind::Image, "v1.13.7", "kernel-amd64"),
            (Kind::Image, "v1.13.7-beta.1", "initramfs-arm64.xz"),
            (
                Kind::Image,
                "v1.13.7+dirty",
                "metal-amd64-secureboot.uki.efi",
            ),
        ] {
            let p = AssetPath::new(kind, &id(), version, name).unwrap();
            assert_eq!(p.rel(), format!("{}/{version}/{name}", id()));
            if kind == Kind::Image {
                assert_eq!(AssetPath::from_cache_name(&p.cache_name()), Some(p.clone()));
            }
        }
        let p = AssetPath::new(Kind::Image, &id(), "v1.2.3", "kernel-amd64").unwrap();
        assert_eq!(
            p.url("https://pxe.example.test/"),
            format!(
                "https://pxe.example.test/image/{}/v1.2.3/kernel-amd64",
                id()
            )
        );
        let p = AssetPath::new(Kind::Script, &id(), "v1.2.3", "metal-amd64").unwrap();
        assert_eq!(
            p.url("http://10.0.0.1:50042/factory"),
            format!(
                "http://10.0.0.1:50042/factory/pxe/{}/v1.2.3/metal-amd64",
                id()
            )
        );
    }

    #[test]
    fn traversal_queries_and_foreign_names_are_refused() {
        let bad_schematics = [
            String::new(),
            "..".into(),
            id().to_uppercase(),
            id()[..63].into(),
            format!("{}0", id()),
            format!("{}/", &id()[..63]),
        ];
        for s in &bad_schematics {
            assert!(
                matches!(
                    AssetPath::new(Kind::Image, s, "v1", "kernel-amd64"),
                    Err(PathError::Schematic(_))
                ),
                "{s:?}"
            );
        }
        for v in [
            "", ".", "..", "../v1", "v1/x", "v1?x=1", "v1%2f", "-v1", "v 1", "v1_2", "${x}",
        ] {
            assert!(
                matches!(
                    AssetPath::new(Kind::Image, &id(), v, "kernel-amd64"),
                    Err(PathError::Version(_))
                ),
                "{v:?}"
            );
        }
        let long = "v".repeat(65);
        assert!(AssetPath::new(Kind::Image, &id(), &long, "kernel-amd64").is_err());
        for (kind, n) in [
            (Kind::Image, ""),
            (Kind::Image, "."),
            (Kind::Image, ".."),
            (Kind::Image, "../kernel-amd64"),
            (Kind::Image, "kernel-amd64/.."),
            (Kind::Image, "kernel-amd64?x"),
            (Kind::Image, "kernel amd64"),
            (Kind::Image, ".kernel-amd64"),
            (Kind::Image, "metal-amd64.iso"),
            (Kind::Image, "metal-amd64.raw.xz"),
            (Kind::Image, "cmdline-metal-amd64"),
            (Kind::Script, "metal-amd64.iso"),
            (Kind::Script, "-metal"),
            (Kind::Script, "metal%2famd64"),
        ] {
            assert!(
                matches!(
                    AssetPath::new(kind, &id(), "v1.13.7", n),
                    Err(PathError::Name(_))
                ),
                "{kind:?} {n:?}"
            );
        }
        // Errors quote the request, shortened.
        let e = AssetPath::new(Kind::Image, &"x".repeat(500), "v1", "kernel-amd64").unwrap_err();
        assert!(e.to_string().len() < 200, "{e}");
    }

    #[test]
    fn cache_names_of_other_files_are_ignored() {
        for f in [
            "",
            ".tmp-1-x",
            "README",
            &format!("{}_v1.2.3", id()),
            &format!("{}-v1.2.3_kernel-amd64", id()),
            &format!("{}_v1.2.3_metal-amd64.iso", id()),
            &format!("{}_v1.2.3_..", id()),
        ] {
            assert_eq!(AssetPath::from_cache_name(f), None, "{f:?}");
        }
    }

    #[test]
    fn image_paths_come_from_the_last_four_url_segments() {
        let ok = format!("image/{}/v1.2.3/kernel-amd64", id());
        let p = AssetPath::image_from_segments(ok.split('/')).unwrap();
        assert_eq!(p.rel(), format!("{}/v1.2.3/kernel-amd64", id()));
        let prefixed = format!("factory/eu/{ok}");
        assert_eq!(AssetPath::image_from_segments(prefixed.split('/')), Some(p));
        for bad in [
            format!("pxe/{}/v1.2.3/kernel-amd64", id()),
            format!("{}/v1.2.3/kernel-amd64", id()),
            format!("image/{}/v1.2.3/metal-amd64.iso", id()),
            format!("image/{}/../kernel-amd64", id()),
        ] {
            assert_eq!(
                AssetPath::image_from_segments(bad.split('/')),
                None,
                "{bad}"
            );
        }
    }
}
