//! Loads the iPXE binaries ironboot serves (over TFTP and at `/tftp/` over HTTP) from the
//! host, into a [`FileSet`] held in memory for the life of the process.
//!
//! ironboot serves the distribution's iPXE (Debian: `apt-get install ipxe`, which puts
//! `undionly.kpxe` and `snponly.efi` in `/usr/lib/ipxe` and `ipxe.efi` in `/boot`) under
//! the names the Go provider serves and ProxyDHCP advertises. iPXE without an embedded
//! script does DHCP again, and ProxyDHCP then sends it to `/ipxe/init.ipxe`.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use ironboot_net::files::FileSet;
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
}
