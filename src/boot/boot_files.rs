//! Loads the iPXE binaries ironboot serves (over TFTP and at `/tftp/` over HTTP) from the
//! host, into a [`FileSet`] held in memory for the life of the process.
//!
//! ironboot serves the distribution's iPXE (Debian: `apt-get install ipxe`, which puts
//! `undionly.kpxe` and `snponly.efi` in `/usr/lib/ipxe` and `ipxe.efi` in `/boot`) under
//! the names the Go provider serves and ProxyDHCP advertises. iPXE without an embedded
//! script does DHCP again, and ProxyDHCP then sends it to `/ipxe/init.ipxe`.
//!
//! [`trust_ca`] (`--tls-custom-ipxe-ca-cert-file`) then makes the binaries trust another
//! CA than iPXE's own, for HTTPS to a self-hosted Image Factory. Debian's binaries cannot
//! be patched (built without HTTPS; `undionly.kpxe` is compressed): it needs HTTPS-enabled
//! builds in `--ipxe-dir`.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use ironboot_net::files::FileSet;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

/// Where Debian's `ipxe` package installs its binaries; the `--ipxe-dir` default.
pub(crate) const DEFAULT_IPXE_DIRS: [&str; 2] = ["/usr/lib/ipxe", "/boot"];

/// Larger than any iPXE build; a bigger file is a wrong path, not a boot loader.
const MAX_FILE_SIZE: u64 = 32 << 20;

/// One served file and where it may come from.
struct Source {
    /// Served name.
    name: &'static str,
    /// Candidate paths relative to each `--ipxe-dir`, in order of preference.
    candidates: &'static [&'static str],
    /// Advertised by ProxyDHCP to x86 firmware (BIOS, UEFI).
    x86_advertised: bool,
}

const SOURCES: &[Source] = &[
    Source {
        name: "undionly.kpxe",
        candidates: &["undionly.kpxe"],
        x86_advertised: true,
    },
    Source {
        // snponly.efi drives the NIC through the firmware's SNP, as the Go provider's
        // snp.efi; Debian ships it as snponly.efi.
        name: "snp.efi",
        candidates: &["snponly.efi", "snp.efi"],
        x86_advertised: true,
    },
    Source {
        name: "ipxe.efi",
        candidates: &["ipxe.efi"],
        x86_advertised: false,
    },
    Source {
        name: "snp-arm64.efi",
        candidates: &[
            "snp-arm64.efi",
            "snponly-arm64.efi",
            "arm64/snp.efi",
            "arm64/snponly.efi",
            "arm64-efi/snponly.efi",
            "arm64-efi/snp.efi",
        ],
        x86_advertised: false,
    },
    Source {
        name: "ipxe-arm64.efi",
        candidates: &["ipxe-arm64.efi", "arm64/ipxe.efi", "arm64-efi/ipxe.efi"],
        x86_advertised: false,
    },
];

/// The Go provider's extra names (alias, existing). Aliases share the bytes.
const ALIASES: &[(&str, &str)] = &[
    ("amd64/snp.efi", "snp.efi"),
    ("amd64/ipxe.efi", "ipxe.efi"),
    ("arm64/snp.efi", "snp-arm64.efi"),
    ("arm64/ipxe.efi", "ipxe-arm64.efi"),
    ("undionly.kpxe.0", "undionly.kpxe"),
];

/// Why the boot files could not be loaded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BootFilesError {
    /// Neither x86 boot file was found in any directory.
    #[error(
        "no iPXE boot files: neither undionly.kpxe nor snponly.efi/snp.efi is in {dirs}; \
         install them with `apt-get install ipxe` or point --ipxe-dir at a directory holding them"
    )]
    NoneFound {
        /// The searched directories, joined for the message.
        dirs: String,
    },
    /// A candidate exists but cannot be read (permissions, a directory, I/O error).
    #[error("reading iPXE boot file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A candidate is empty or implausibly large.
    #[error("iPXE boot file {path} is {size} bytes, not an iPXE binary")]
    BadSize {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
}

/// Why `--tls-custom-ipxe-ca-cert-file` cannot be applied.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TrustCaError {
    /// The certificate file cannot be read.
    #[error("--tls-custom-ipxe-ca-cert-file {path}: cannot read it: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The file holds no usable PEM certificate.
    #[error("--tls-custom-ipxe-ca-cert-file {path}: {reason}")]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// No served binary holds iPXE's root CA fingerprint, so none would trust the CA.
    #[error(
        "--tls-custom-ipxe-ca-cert-file {path}: no iPXE binary could be made to trust it, \
         none holds iPXE's root CA fingerprint ({files}); use --ipxe-dir with iPXE builds \
         made with HTTPS (DOWNLOAD_PROTO_HTTPS) and the default trust anchor, and an \
         uncompressed BIOS image"
    )]
    NothingPatched {
        /// The certificate file.
        path: PathBuf,
        /// Each binary and why it was not patched, joined for the message.
        files: String,
    },
}

/// The SHA-256 fingerprint of iPXE's built-in root CA (`ca.crt` of ipxe.org), which iPXE
/// builds with HTTPS and no `TRUST=` carry as their only trust anchor (`rootcert.c`).
pub(crate) const IPXE_ROOT_CA_FINGERPRINT: [u8; 32] = [
    0x9f, 0xaf, 0x71, 0x7b, 0x7f, 0x8c, 0xa2, 0xf9, 0x3c, 0x25, 0x6c, 0x79, 0xf8, 0xac, 0x55, 0x91,
    0x89, 0x5d, 0x66, 0xd1, 0xff, 0x3b, 0xee, 0x63, 0x97, 0xa7, 0x0d, 0x29, 0xc6, 0x5e, 0xed, 0x1a,
];

/// A binary (under all its served names) whose root CA fingerprint was replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CaPatched {
    /// Served names sharing the content.
    pub(crate) names: Vec<String>,
    /// Occurrences replaced.
    pub(crate) occurrences: usize,
}

/// A binary that could not be patched, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CaUnpatched {
    /// Served names sharing the content.
    pub(crate) names: Vec<String>,
    /// Why (no fingerprint in it, and the likely cause).
    pub(crate) reason: &'static str,
}

/// What [`trust_ca`] did, for the start-up log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TrustReport {
    /// The certificate file.
    pub(crate) cert: PathBuf,
    /// SHA-256 of its DER, now the binaries' trust anchor.
    pub(crate) fingerprint: [u8; 32],
    /// Binaries that now trust the certificate.
    pub(crate) patched: Vec<CaPatched>,
    /// Binaries that still trust what they were built with.
    pub(crate) unpatched: Vec<CaUnpatched>,
}

impl TrustReport {
    /// One warning per binary that could not be patched.
    pub(crate) fn warnings(&self) -> Vec<String> {
        self.unpatched
            .iter()
            .map(|u| {
                format!(
                    "{} will not trust --tls-custom-ipxe-ca-cert-file {}: {}",
                    u.names.join("/"),
                    self.cert.display(),
                    u.reason
                )
            })
            .collect()
    }

    /// Log the report: one info line per patched binary, a warning per other one.
    pub(crate) fn log(&self) {
        let fingerprint = hex(&self.fingerprint);
        for p in &self.patched {
            info!(
                files = %p.names.join(", "),
                occurrences = p.occurrences,
                original = %hex(&IPXE_ROOT_CA_FINGERPRINT),
                custom = %fingerprint,
                "iPXE root CA replaced with the custom CA"
            );
        }
        for w in self.warnings() {
            warn!("{w}");
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of the DER of the first PEM block of `path`, which must be a certificate
/// (upstream's rule; the certificate is also parsed, so a damaged one is refused here
/// rather than at every boot).
pub(crate) fn ca_fingerprint(path: &Path) -> Result<[u8; 32], TrustCaError> {
    let pem = std::fs::read(path).map_err(|source| TrustCaError::Read {
        path: path.to_owned(),
        source,
    })?;
    let bad = |reason: String| TrustCaError::BadCertificate {
        path: path.to_owned(),
        reason,
    };
    let (_, block) =
        x509_parser::pem::parse_x509_pem(&pem).map_err(|e| bad(format!("no PEM block: {e}")))?;
    if block.label != "CERTIFICATE" {
        return Err(bad(format!(
            "expected a PEM CERTIFICATE, found {:?}",
            block.label
        )));
    }
    x509_parser::parse_x509_certificate(&block.contents)
        .map_err(|e| bad(format!("not an X.509 certificate: {e}")))?;
    Ok(Sha256::digest(&block.contents).into())
}

/// Replace every occurrence of [`IPXE_ROOT_CA_FINGERPRINT`] in `image` with
/// `fingerprint`; returns how many there were.
pub(crate) fn replace_root_ca(image: &mut [u8], fingerprint: &[u8; 32]) -> usize {
    let old = &IPXE_ROOT_CA_FINGERPRINT;
    let mut count = 0;
    let mut at = 0;
    while let Some(found) = image[at..].windows(old.len()).position(|w| w == old) {
        let start = at + found;
        image[start..start + old.len()].copy_from_slice(fingerprint);
        at = start + old.len();
        count += 1;
    }
    count
}

/// Why an image without the fingerprint has none.
fn unpatched_reason(names: &[String], image: &[u8]) -> &'static str {
    if names.iter().any(|n| n.contains(".kpxe")) {
        "a compressed BIOS image (the fingerprint is not visible in it; upstream patches the \
         uncompressed undionly.kpxe.bin and recompresses it with its .zinfo, which Debian's \
         package does not ship)"
    } else if !image.windows(6).any(|w| w == b"https\0") {
        "built without HTTPS (no https:// support, hence no root CA; Debian's ipxe package \
         is built so)"
    } else {
        "it does not trust iPXE's root CA (built with other trust anchors, TRUST=)"
    }
}

/// `--tls-custom-ipxe-ca-cert-file`: make every binary in `files` that trusts iPXE's
/// root CA trust the certificate at `cert` instead, as upstream does (the fingerprint
/// iPXE checks a server's chain against is replaced in place: sizes do not change).
/// Names sharing content ([`load`]'s aliases) keep sharing the patched copy.
///
/// Binaries without the fingerprint are left as they are and listed in the report's
/// warnings; an error when no binary at all could be patched.
/// The UEFI iPXE (`snp.efi`) can fetch `https://` URLs: its binary names the scheme (an
/// iPXE built with HTTPS registers an opener for "https"; one without never names it).
/// `None` without that file. Debian's builds cannot (no HTTPS in them).
pub(crate) fn efi_ipxe_speaks_https(files: &FileSet) -> Option<bool> {
    let image = files.get("snp.efi").ok().flatten()?;
    Some(image.windows(5).any(|w| w == b"https"))
}

pub(crate) fn trust_ca(files: &mut FileSet, cert: &Path) -> Result<TrustReport, TrustCaError> {
    let fingerprint = ca_fingerprint(cert)?;
    // Group names by content (aliases share the same bytes).
    let mut groups: Vec<(Bytes, Vec<String>)> = Vec::new();
    for (name, content) in files.iter() {
        match groups
            .iter_mut()
            .find(|(c, _)| c.as_ptr() == content.as_ptr() && c.len() == content.len())
        {
            Some((_, names)) => names.push(name.to_owned()),
            None => groups.push((content.clone(), vec![name.to_owned()])),
        }
    }
    let mut report = TrustReport {
        cert: cert.to_owned(),
        fingerprint,
        patched: Vec::new(),
        unpatched: Vec::new(),
    };
    for (content, names) in groups {
        let mut image = content.to_vec();
        let occurrences = replace_root_ca(&mut image, &fingerprint);
        if occurrences == 0 {
            let reason = unpatched_reason(&names, &content);
            report.unpatched.push(CaUnpatched { names, reason });
            continue;
        }
        let image = Bytes::from(image);
        for name in &names {
            // Names come from the set itself: they are valid.
            files
                .insert(name, image.clone())
                .expect("served names are valid");
        }
        report.patched.push(CaPatched { names, occurrences });
    }
    if report.patched.is_empty() {
        let files = report
            .unpatched
            .iter()
            .map(|u| format!("{}: {}", u.names.join("/"), u.reason))
            .collect::<Vec<_>>()
            .join("; ");
        return Err(TrustCaError::NothingPatched {
            path: cert.to_owned(),
            files: if files.is_empty() {
                "no binaries loaded".to_owned()
            } else {
                files
            },
        });
    }
    Ok(report)
}

/// A file that was loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Loaded {
    /// Served name.
    pub(crate) name: &'static str,
    /// Where it came from.
    pub(crate) path: PathBuf,
    /// Size in bytes.
    pub(crate) size: usize,
}

/// A file that was not found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Missing {
    /// Served name.
    pub(crate) name: &'static str,
    /// Whether ProxyDHCP advertises it to x86 machines (those would fail to boot).
    pub(crate) x86_advertised: bool,
}

/// What [`load`] did, for the start-up log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LoadReport {
    /// Loaded files.
    pub(crate) loaded: Vec<Loaded>,
    /// Aliases registered (alias, existing).
    pub(crate) aliases: Vec<(&'static str, &'static str)>,
    /// Files not found.
    pub(crate) missing: Vec<Missing>,
}

impl LoadReport {
    /// One warning per missing file, saying what fails without it and what to do.
    pub(crate) fn warnings(&self) -> Vec<String> {
        self.missing
            .iter()
            .map(|m| {
                if m.x86_advertised {
                    format!(
                        "{} not found: x86 machines ProxyDHCP sends to it will not boot; \
                         `apt-get install ipxe` or add a --ipxe-dir holding it",
                        m.name
                    )
                } else if m.name.contains("arm64") {
                    format!(
                        "{} not found: arm64 machines cannot network-boot (Debian's ipxe \
                         package has no arm64 build; add a --ipxe-dir holding one)",
                        m.name
                    )
                } else {
                    format!("{} not found (optional, not advertised)", m.name)
                }
            })
            .collect()
    }

    /// Log the report: one info line, plus one warning per missing file.
    pub(crate) fn log(&self) {
        info!(files = %self, "iPXE boot files loaded");
        for w in self.warnings() {
            warn!("{w}");
        }
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, l) in self.loaded.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{}={} ({} B)", l.name, l.path.display(), l.size)?;
        }
        if !self.aliases.is_empty() {
            f.write_str("; aliases: ")?;
            for (i, (a, e)) in self.aliases.iter().enumerate() {
                let sep = if i == 0 { "" } else { ", " };
                write!(f, "{sep}{a}->{e}")?;
            }
        }
        if !self.missing.is_empty() {
            f.write_str("; missing: ")?;
            for (i, m) in self.missing.iter().enumerate() {
                let sep = if i == 0 { "" } else { ", " };
                write!(f, "{sep}{}", m.name)?;
            }
        }
        Ok(())
    }
}

/// Read `path` if it exists. `Ok(None)` when it does not.
fn read_candidate(path: &Path) -> Result<Option<Bytes>, BootFilesError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(BootFilesError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    if meta.is_file() && (meta.len() == 0 || meta.len() > MAX_FILE_SIZE) {
        return Err(BootFilesError::BadSize {
            path: path.to_owned(),
            size: meta.len(),
        });
    }
    let content = std::fs::read(path).map_err(|source| BootFilesError::Read {
        path: path.to_owned(),
        source,
    })?;
    Ok(Some(Bytes::from(content)))
}

/// Load every known iPXE binary from the first of `dirs` that has it (directories in
/// order, then candidate names in order), and register the Go provider's aliases.
///
/// Fails only when neither x86 boot file is found anywhere, or a file that exists cannot
/// be read; other missing files are in the report's warnings.
pub(crate) fn load(dirs: &[PathBuf]) -> Result<(FileSet, LoadReport), BootFilesError> {
    let mut files = FileSet::new();
    let mut report = LoadReport::default();
    for source in SOURCES {
        let mut found = None;
        'search: for dir in dirs {
            for candidate in source.candidates {
                let path = dir.join(candidate);
                if let Some(content) = read_candidate(&path)? {
                    found = Some((path, content));
                    break 'search;
                }
            }
        }
        match found {
            Some((path, content)) => {
                report.loaded.push(Loaded {
                    name: source.name,
                    path,
                    size: content.len(),
                });
                // Served names are constants that normalise cleanly.
                files
                    .insert(source.name, content)
                    .expect("constant file names are valid");
            }
            None => report.missing.push(Missing {
                name: source.name,
                x86_advertised: source.x86_advertised,
            }),
        }
    }
    let x86_found = SOURCES
        .iter()
        .filter(|s| s.x86_advertised)
        .any(|s| report.loaded.iter().any(|l| l.name == s.name));
    if !x86_found {
        let dirs: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        return Err(BootFilesError::NoneFound {
            dirs: if dirs.is_empty() {
                "(no --ipxe-dir)".to_owned()
            } else {
                dirs.join(", ")
            },
        });
    }
    for &(alias, existing) in ALIASES {
        if files
            .alias(alias, existing)
            .expect("constant file names are valid")
        {
            report.aliases.push((alias, existing));
        }
    }
    Ok((files, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, content: &[u8]) {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }

    #[test]
    fn loads_debian_names_and_registers_the_go_aliases() {
        let lib = tempfile::tempdir().unwrap();
        let boot = tempfile::tempdir().unwrap();
        write(lib.path(), "undionly.kpxe", b"kpxe");
        write(lib.path(), "snponly.efi", b"snponly");
        write(boot.path(), "ipxe.efi", b"ipxe-efi");
        let (files, report) = load(&[lib.path().into(), boot.path().into()]).unwrap();
        let get = |n: &str| files.get(n).unwrap().map(|b| b.as_ref().to_vec());
        assert_eq!(get("snp.efi"), Some(b"snponly".to_vec()));
        assert_eq!(get("amd64/snp.efi"), Some(b"snponly".to_vec()));
        assert_eq!(get("amd64/ipxe.efi"), Some(b"ipxe-efi".to_vec()));
        assert_eq!(get("undionly.kpxe.0"), Some(b"kpxe".to_vec()));
        assert_eq!(get("arm64/snp.efi"), None);
        let same = files.get("snp.efi").unwrap().unwrap().as_ptr();
        assert_eq!(
            files.get("amd64/snp.efi").unwrap().unwrap().as_ptr(),
            same,
            "no copy"
        );
        assert_eq!(
            report.missing.iter().map(|m| m.name).collect::<Vec<_>>(),
            ["snp-arm64.efi", "ipxe-arm64.efi"]
        );
        assert_eq!(report.loaded[1].path, lib.path().join("snponly.efi"));
        assert_eq!(report.loaded[1].size, 7);
        assert_eq!(report.aliases.len(), 3);
        let line = report.to_string();
        assert!(
            line.contains("snp.efi=") && line.contains("(7 B)"),
            "{line}"
        );
        assert!(
            line.contains("missing: snp-arm64.efi, ipxe-arm64.efi"),
            "{line}"
        );
        let warnings = report.warnings();
        assert_eq!(warnings.len(), 2);
        assert!(warnings[0].contains("arm64"), "{warnings:?}");
    }

    #[test]
    fn first_directory_and_first_candidate_win_and_arm64_layouts_are_found() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        write(a.path(), "snp.efi", b"a-snp");
        write(b.path(), "snponly.efi", b"b-snponly");
        write(b.path(), "undionly.kpxe", b"b-kpxe");
        write(b.path(), "arm64/snp.efi", b"b-arm-snp");
        write(b.path(), "ipxe-arm64.efi", b"b-arm-ipxe");
        let (files, report) = load(&[a.path().into(), b.path().into()]).unwrap();
        // Directory order beats candidate order.
        assert_eq!(files.get("snp.efi").unwrap().unwrap().as_ref(), b"a-snp");
        assert_eq!(
            files.get("snp-arm64.efi").unwrap().unwrap().as_ref(),
            b"b-arm-snp"
        );
        assert_eq!(
            files.get("arm64/snp.efi").unwrap().unwrap().as_ref(),
            b"b-arm-snp"
        );
        assert_eq!(
            files.get("arm64/ipxe.efi").unwrap().unwrap().as_ref(),
            b"b-arm-ipxe"
        );
        assert_eq!(report.missing.len(), 1, "{report}");
        assert_eq!(report.missing[0].name, "ipxe.efi");
    }

    #[test]
    fn one_x86_file_is_enough_with_a_warning() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "undionly.kpxe", b"kpxe");
        let (files, report) = load(&[d.path().into()]).unwrap();
        assert!(files.get("undionly.kpxe").unwrap().is_some());
        let w = report.warnings();
        assert!(
            w.iter()
                .any(|w| w.starts_with("snp.efi not found: x86")
                    && w.contains("apt-get install ipxe")),
            "{w:?}"
        );
    }

    #[test]
    fn no_x86_file_is_an_error_naming_the_directories_and_the_package() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "ipxe.efi", b"only-ipxe");
        let e = load(&[d.path().into(), "/nonexistent-ironboot".into()]).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, BootFilesError::NoneFound { .. }), "{msg}");
        assert!(msg.contains(&d.path().display().to_string()), "{msg}");
        assert!(
            msg.contains("/nonexistent-ironboot") && msg.contains("apt-get install ipxe"),
            "{msg}"
        );
        assert!(matches!(
            load(&[]).unwrap_err(),
            BootFilesError::NoneFound { .. }
        ));
    }

    #[test]
    fn unreadable_or_empty_candidates_are_errors_naming_the_path() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "undionly.kpxe", b"");
        let e = load(&[d.path().into()]).unwrap_err();
        assert!(matches!(e, BootFilesError::BadSize { size: 0, .. }), "{e}");
        assert!(e.to_string().contains("undionly.kpxe"));
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("undionly.kpxe")).unwrap();
        let e = load(&[d.path().into()]).unwrap_err();
        assert!(matches!(e, BootFilesError::Read { .. }), "{e}");
        assert!(
            e.to_string()
                .contains(&d.path().join("undionly.kpxe").display().to_string())
        );
    }

    /// A self-signed CA: its PEM and its DER.
    /// Every served name with its bytes, to compare before and after.
    fn snapshot(files: &FileSet) -> Vec<(String, Bytes)> {
        files
            .iter()
            .map(|(n, c)| (n.to_owned(), c.clone()))
            .collect()
    }

    fn ca() -> (String, Vec<u8>) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, PKCS_ECDSA_P256_SHA256};
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(vec!["factory.example".to_owned()]).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), cert.der().to_vec())
    }

    fn write_ca(dir: &Path, content: &str) -> PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, content).unwrap();
        path
    }

    fn count(hay: &[u8], needle: &[u8]) -> usize {
        hay.windows(needle.len()).filter(|w| *w == needle).count()
    }

    #[test]
    fn the_fingerprint_is_the_sha256_of_the_first_pem_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (pem, der) = ca();
        let expected: [u8; 32] = Sha256::digest(&der).into();
        let path = write_ca(dir.path(), &format!("a comment line\n{pem}{}", ca().0));
        assert_eq!(ca_fingerprint(&path).unwrap(), expected);

        let path = write_ca(
            dir.path(),
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        );
        let e = ca_fingerprint(&path).unwrap_err().to_string();
        assert!(
            e.starts_with("--tls-custom-ipxe-ca-cert-file ") && e.contains("\"PRIVATE KEY\""),
            "{e}"
        );
        let path = write_ca(dir.path(), "not pem at all\n");
        let e = ca_fingerprint(&path).unwrap_err();
        assert!(matches!(e, TrustCaError::BadCertificate { .. }), "{e}");
        let path = write_ca(
            dir.path(),
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        );
        let e = ca_fingerprint(&path).unwrap_err().to_string();
        assert!(e.contains("not an X.509 certificate"), "{e}");
        let e = ca_fingerprint(&dir.path().join("missing.pem")).unwrap_err();
        assert!(
            matches!(e, TrustCaError::Read { .. }) && e.to_string().contains("missing.pem"),
            "{e}"
        );
    }

    #[test]
    fn every_occurrence_is_replaced_in_place() {
        let new = [0x42; 32];
        let mut image = b"MZ..".to_vec();
        image.extend_from_slice(&IPXE_ROOT_CA_FINGERPRINT);
        image.extend_from_slice(&IPXE_ROOT_CA_FINGERPRINT);
        image.extend_from_slice(b"middle");
        image.extend_from_slice(&IPXE_ROOT_CA_FINGERPRINT[..31]);
        image.extend_from_slice(b"!tail");
        let before = image.clone();
        assert_eq!(replace_root_ca(&mut image, &new), 2);
        assert_eq!(image.len(), before.len());
        assert_eq!(&image[4..36], &new);
        assert_eq!(&image[36..68], &new);
        assert_eq!(image[68..], before[68..], "a partial match is left alone");
        assert_eq!(replace_root_ca(&mut image, &new), 0);
    }

    #[test]
    fn trust_ca_patches_binaries_holding_the_root_ca_and_keeps_aliases_shared() {
        let lib = tempfile::tempdir().unwrap();
        // An HTTPS-enabled EFI build: the root CA fingerprint in its data, twice.
        let mut efi = b"MZ\x90\0 https\0 code".to_vec();
        efi.extend_from_slice(&IPXE_ROOT_CA_FINGERPRINT);
        efi.extend_from_slice(b" data ");
        efi.extend_from_slice(&IPXE_ROOT_CA_FINGERPRINT);
        write(lib.path(), "snponly.efi", &efi);
        write(lib.path(), "undionly.kpxe", b"compressed kpxe");
        write(lib.path(), "ipxe.efi", b"MZ no tls here");
        let (mut files, _) = load(&[lib.path().into()]).unwrap();
        let (pem, der) = ca();
        let custom: [u8; 32] = Sha256::digest(&der).into();
        let report = trust_ca(&mut files, &write_ca(lib.path(), &pem)).unwrap();

        assert_eq!(report.fingerprint, custom);
        assert_eq!(
            report.patched,
            [CaPatched {
                names: vec!["amd64/snp.efi".to_owned(), "snp.efi".to_owned()],
                occurrences: 2
            }]
        );
        let snp = files.get("snp.efi").unwrap().unwrap();
        assert_eq!(snp.len(), efi.len());
        assert_eq!(count(snp, &custom), 2);
        assert_eq!(count(snp, &IPXE_ROOT_CA_FINGERPRINT), 0);
        assert_eq!(
            files.get("amd64/snp.efi").unwrap().unwrap().as_ptr(),
            snp.as_ptr(),
            "the alias serves the patched copy"
        );
        assert_eq!(
            files.get("undionly.kpxe.0").unwrap().unwrap().as_ref(),
            b"compressed kpxe"
        );

        let reasons: Vec<(String, &str)> = report
            .unpatched
            .iter()
            .map(|u| (u.names.join("/"), u.reason))
            .collect();
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert!(
            reasons[0].0 == "amd64/ipxe.efi/ipxe.efi" && reasons[0].1.contains("without HTTPS")
        );
        assert!(
            reasons[1].0 == "undionly.kpxe/undionly.kpxe.0" && reasons[1].1.contains("compressed")
        );
        let warnings = report.warnings();
        assert!(
            warnings[1].starts_with(
                "undionly.kpxe/undionly.kpxe.0 will not trust --tls-custom-ipxe-ca-cert-file "
            ),
            "{warnings:?}"
        );
    }

    #[test]
    fn trust_ca_fails_when_no_binary_can_be_patched() {
        let lib = tempfile::tempdir().unwrap();
        let mut other_trust = b"MZ https\0".to_vec();
        other_trust.extend_from_slice(&[7; 32]);
        write(lib.path(), "snponly.efi", &other_trust);
        write(lib.path(), "undionly.kpxe", b"compressed kpxe");
        let (mut files, _) = load(&[lib.path().into()]).unwrap();
        let before = snapshot(&files);
        let cert = write_ca(lib.path(), &ca().0);
        let e = trust_ca(&mut files, &cert).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, TrustCaError::NothingPatched { .. }), "{msg}");
        assert!(
            msg.starts_with(&format!(
                "--tls-custom-ipxe-ca-cert-file {}",
                cert.display()
            )),
            "{msg}"
        );
        assert!(
            msg.contains("amd64/snp.efi/snp.efi: it does not trust iPXE's root CA"),
            "{msg}"
        );
        assert!(
            msg.contains("undionly.kpxe/undionly.kpxe.0: a compressed BIOS image"),
            "{msg}"
        );
        let after = snapshot(&files);
        assert_eq!(before, after, "nothing changed");
    }

    /// Debian's binaries (bookworm: ipxe 1.0.0+git-20190125) are built without HTTPS, so
    /// they hold no root CA fingerprint; `undionly.kpxe` is compressed anyway. The flag
    /// is then an error that says why, and nothing is changed. Should a later package
    /// carry the fingerprint, its EFI binaries must come out patched (same size, the
    /// custom fingerprint in place of the old).
    #[test]
    fn trust_ca_on_the_installed_debian_package() {
        assert!(
            Path::new("/usr/lib/ipxe/undionly.kpxe").exists(),
            "Debian's ipxe package is missing: run tests/install-prereqs.sh (apt-get install ipxe)"
        );
        let dirs: Vec<PathBuf> = DEFAULT_IPXE_DIRS.iter().map(PathBuf::from).collect();
        let (mut files, _) = load(&dirs).unwrap();
        let original = snapshot(&files);
        let holding: Vec<&str> = original
            .iter()
            .filter(|(_, c)| count(c, &IPXE_ROOT_CA_FINGERPRINT) > 0)
            .map(|(n, _)| n.as_str())
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let (pem, der) = ca();
        let custom: [u8; 32] = Sha256::digest(&der).into();
        let result = trust_ca(&mut files, &write_ca(dir.path(), &pem));
        assert!(
            !holding.iter().any(|n| n.contains("kpxe")),
            "a compressed image cannot show the fingerprint: {holding:?}"
        );
        if holding.is_empty() {
            let msg = result.unwrap_err().to_string();
            assert!(msg.contains("snp.efi: built without HTTPS"), "{msg}");
            assert!(
                msg.contains("undionly.kpxe/undionly.kpxe.0: a compressed BIOS image"),
                "{msg}"
            );
            let after = snapshot(&files);
            assert_eq!(original, after, "nothing changed");
        } else {
            let report = result.unwrap();
            assert!(!report.patched.is_empty());
            for (name, before) in &original {
                let after = files.get(name).unwrap().unwrap();
                assert_eq!(after.len(), before.len(), "{name}");
                if holding.contains(&name.as_str()) {
                    assert_eq!(count(after, &IPXE_ROOT_CA_FINGERPRINT), 0, "{name}");
                    assert!(count(after, &custom) > 0, "{name}");
                } else {
                    assert_eq!(after, before, "{name}");
                }
            }
        }
    }

    /// Debian's `ipxe` package (installed on development machines and in CI by
    /// tests/install-prereqs.sh; the test fails without it).
    #[test]
    fn loads_the_installed_debian_package() {
        let dirs: Vec<PathBuf> = DEFAULT_IPXE_DIRS.iter().map(PathBuf::from).collect();
        assert!(
            Path::new("/usr/lib/ipxe/undionly.kpxe").exists(),
            "Debian's ipxe package is missing: run tests/install-prereqs.sh (apt-get install ipxe)"
        );
        let (files, report) = load(&dirs).unwrap();
        for name in [
            "undionly.kpxe",
            "snp.efi",
            "ipxe.efi",
            "amd64/snp.efi",
            "undionly.kpxe.0",
        ] {
            let f = files
                .get(name)
                .unwrap()
                .unwrap_or_else(|| panic!("{name}: {report}"));
            assert!(f.len() > 10_000, "{name}");
        }
        let snp = files.get("snp.efi").unwrap().unwrap();
        assert_eq!(&snp[..2], b"MZ", "a PE image");
        assert!(
            report
                .to_string()
                .contains("snp.efi=/usr/lib/ipxe/snponly.efi"),
            "{report}"
        );
    }

    #[test]
    fn https_support_is_read_from_the_efi_binary() {
        let mut files = FileSet::new();
        assert_eq!(efi_ipxe_speaks_https(&files), None);
        files
            .insert("snp.efi", Bytes::from_static(b"\0iPXE http\0tftp\0"))
            .unwrap();
        assert_eq!(efi_ipxe_speaks_https(&files), Some(false));
        files
            .insert("snp.efi", Bytes::from_static(b"\0iPXE http\0https\0tftp\0"))
            .unwrap();
        assert_eq!(efi_ipxe_speaks_https(&files), Some(true));
    }
}
