//! The standalone boot policy: an operator's inventory file (`--inventory`, TOML or YAML
//! by extension) saying what each machine boots.
//!
//! ```toml
//! [default]                      # unknown machines
//! script = """#!ipxe
//! echo hello ${uuid}
//! """
//! [[machine]]
//! uuid = "00000000-0000-4000-8000-000000000001"   # or mac = "52:54:00:aa:00:01"
//! boot = "disk"                  # or script = "...", or kernel/initrd/cmdline
//! ```
//!
//! Each entry has exactly one target: `boot = "disk"`, `script` (an iPXE script starting
//! with `#!ipxe`), or `kernel` with optional `initrd` (one URL or a list) and `cmdline`.
//! Machines match by `uuid` first, then by the `mac` of the NIC iPXE boots from; either may
//! be one value or a list. Machines that match no entry get `[default]`; without a
//! `[default]`, and with no `--inventory` at all, they boot from their disk.
//!
//! The file is read in two steps: a strict schema (unknown keys are errors, so a typo
//! never silently changes what machines boot), then [`TryFrom`] into the runtime form,
//! which refuses duplicates, ambiguous or empty entries and malformed values, naming the
//! file, the entry and the field. The running server reloads the file on SIGHUP and when
//! it changes, keeping the inventory in force when the new file is refused ([`reload`]).
//! See `docs/inventory.md`.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tracing::debug;

use crate::boot::boot_script::{BootDecider, BootTarget, IpxeScript, KernelBoot};
use crate::boot::machine::{MacAddr, MachineQuery, Uuid};

pub(crate) mod reload;

/// One string or a list of strings, as a list.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string or a list of strings")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Vec<String>, E> {
            Ok(vec![v.to_owned()])
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut a: A,
        ) -> Result<Vec<String>, A::Error> {
            let mut out = Vec::new();
            while let Some(s) = a.next_element::<String>()? {
                out.push(s);
            }
            Ok(out)
        }
    }
    d.deserialize_any(V)
}

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInventory {
    #[serde(default)]
    default: Option<RawTarget>,
    #[serde(default)]
    machine: Vec<RawMachine>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    boot: Option<String>,
    script: Option<String>,
    kernel: Option<String>,
    #[serde(default, deserialize_with = "one_or_many")]
    initrd: Vec<String>,
    cmdline: Option<String>,
}

// Not `#[serde(flatten)]` of RawTarget: flatten disables `deny_unknown_fields`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMachine {
    name: Option<String>,
    #[serde(default, deserialize_with = "one_or_many")]
    uuid: Vec<String>,
    #[serde(default, deserialize_with = "one_or_many")]
    mac: Vec<String>,
    boot: Option<String>,
    script: Option<String>,
    kernel: Option<String>,
    #[serde(default, deserialize_with = "one_or_many")]
    initrd: Vec<String>,
    cmdline: Option<String>,
}

/// A refused entry: which one, which field, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{entry}: {field}: {problem}")]
pub(crate) struct Invalid {
    /// `[default]`, or `machine[i]` (0-based, in file order) with its name if it has one.
    pub(crate) entry: String,
    /// The field (`uuid[0]`, `script`, `initrd[1]`, ...).
    pub(crate) field: String,
    /// What is wrong.
    pub(crate) problem: String,
}

/// Why an inventory file was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum InventoryError {
    /// The file cannot be read.
    #[error("inventory {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Neither `.toml` nor `.yaml`/`.yml`.
    #[error("inventory {path}: unknown format; name the file *.toml, *.yaml or *.yml")]
    Format {
        /// The file.
        path: PathBuf,
    },
    /// Not valid TOML/YAML, or not the schema (unknown key, wrong type); the message has
    /// the line and column.
    #[error("inventory {path}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// Valid syntax, invalid content.
    #[error("inventory {path}: {invalid}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong where.
        invalid: Invalid,
    },
}

/// File formats, by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// `*.toml`
    Toml,
    /// `*.yaml`, `*.yml`
    Yaml,
}

impl Format {
    /// The format a path's extension names.
    pub(crate) fn of(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "toml" => Some(Format::Toml),
            "yaml" | "yml" => Some(Format::Yaml),
            _ => None,
        }
    }
}

/// A matched inventory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    name: Option<String>,
    target: BootTarget,
}

/// The validated inventory: lookups by UUID and MAC, and the default target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Inventory {
    entries: Vec<Entry>,
    by_uuid: HashMap<Uuid, usize>,
    by_mac: HashMap<MacAddr, usize>,
    default: BootTarget,
    has_default: bool,
}

impl Default for Inventory {
    /// No inventory: every machine boots from its disk.
    fn default() -> Self {
        Inventory {
            entries: Vec::new(),
            by_uuid: HashMap::new(),
            by_mac: HashMap::new(),
            default: BootTarget::Disk,
            has_default: false,
        }
    }
}

/// Where a decision came from, for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Matched<'a> {
    /// An entry matched by UUID (its name, if any).
    Uuid(Option<&'a str>),
    /// An entry matched by MAC.
    Mac(Option<&'a str>),
    /// No entry: the default.
    Default,
}

/// Which entry chose a machine's boot target, as the machine list shows it
/// (`inventory_entry` of `/api/v1/machines`): the UUID or MAC the entry matched, or its
/// `[default]`. Plain values, so naming the entry costs the boot path no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EntryKey {
    /// A `[[machine]]` entry listing this UUID.
    Uuid(Uuid),
    /// A `[[machine]]` entry listing this MAC.
    Mac(MacAddr),
    /// The `[default]` entry.
    Default,
}

impl fmt::Display for EntryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EntryKey::Uuid(u) => fmt::Display::fmt(u, f),
            EntryKey::Mac(m) => fmt::Display::fmt(m, f),
            EntryKey::Default => f.write_str("default"),
        }
    }
}

/// How many entries an inventory has, for the logs and `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EntryCounts {
    /// `[[machine]]` entries.
    pub(crate) machines: usize,
    /// UUIDs they list.
    pub(crate) uuids: usize,
    /// MACs they list.
    pub(crate) macs: usize,
    /// Whether there is a `[default]`.
    pub(crate) default: bool,
}

impl fmt::Display for Matched<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (by, name) = match self {
            Matched::Uuid(n) => ("uuid", n),
            Matched::Mac(n) => ("mac", n),
            Matched::Default => return f.write_str("[default]"),
        };
        match name {
            Some(n) => write!(f, "machine {n:?} by {by}"),
            None => write!(f, "machine entry by {by}"),
        }
    }
}

fn control_free(entry: &str, field: &str, value: &str) -> Result<(), Invalid> {
    if value.chars().any(char::is_control) {
        return Err(invalid(entry, field, "contains a control character"));
    }
    Ok(())
}

fn invalid(entry: &str, field: impl Into<String>, problem: impl Into<String>) -> Invalid {
    Invalid {
        entry: entry.to_owned(),
        field: field.into(),
        problem: problem.into(),
    }
}

/// The prefix of inventory paths served by ironboot itself (standalone mode with
/// `--use-local-boot-assets`).
const ASSETS_PREFIX: &str = "/assets/";

/// A `kernel` or `initrd` value as iPXE fetches it: an `/assets/...` path becomes
/// ironboot's own URL (`assets`, e.g. `http://10.0.0.1:50042/assets/`); without assets
/// served such a path is refused, as is one with an empty, `.` or `..` segment (ironboot
/// would answer it 404). Anything else is kept as written (checked as a URL later).
fn asset_url(
    entry: &str,
    field: &str,
    value: String,
    assets: Option<&str>,
) -> Result<String, Invalid> {
    let Some(rest) = value.strip_prefix(ASSETS_PREFIX) else {
        return Ok(value);
    };
    if rest
        .split('/')
        .any(|segment| matches!(segment, "" | "." | ".."))
    {
        return Err(invalid(
            entry,
            field,
            format!(
                "{value:?}: an /assets/ path names a file under --boot-assets-path: no empty, \
                 '.' or '..' segments"
            ),
        ));
    }
    match assets {
        Some(base) => Ok(format!("{base}{rest}")),
        None => Err(invalid(
            entry,
            field,
            format!(
                "{value:?} is an /assets/ path, but ironboot serves no assets: start it in \
                 standalone mode with --use-local-boot-assets --boot-assets-path DIR"
            ),
        )),
    }
}

/// Validate one target (the `[default]` or a machine's); `assets` is the URL of
/// ironboot's `/assets/`, if it serves them.
fn target(entry: &str, raw: RawTarget, assets: Option<&str>) -> Result<BootTarget, Invalid> {
    let kernel_given = raw.kernel.is_some() || !raw.initrd.is_empty() || raw.cmdline.is_some();
    let given: Vec<&str> = [
        (raw.boot.is_some(), "boot"),
        (raw.script.is_some(), "script"),
        (kernel_given, "kernel"),
    ]
    .into_iter()
    .filter_map(|(set, name)| set.then_some(name))
    .collect();
    match given.as_slice() {
        [] => {
            return Err(invalid(
                entry,
                "boot",
                "no boot target; set one of boot = \"disk\", script, or kernel (with initrd and cmdline)",
            ));
        }
        [_] => {}
        [a, b, ..] => {
            return Err(invalid(
                entry,
                *b,
                format!("{a} and {b} are both set; an entry has exactly one boot target"),
            ));
        }
    }
    if let Some(boot) = raw.boot {
        return match boot.as_str() {
            "disk" => Ok(BootTarget::Disk),
            other => Err(invalid(
                entry,
                "boot",
                format!(
                    "unknown value {other:?}; the only value is \"disk\" (use script or kernel for the others)"
                ),
            )),
        };
    }
    if let Some(script) = raw.script {
        return IpxeScript::new(&script)
            .map(BootTarget::Script)
            .map_err(|e| invalid(entry, "script", e.to_string()));
    }
    let Some(kernel) = raw.kernel else {
        let field = if raw.initrd.is_empty() {
            "cmdline"
        } else {
            "initrd"
        };
        return Err(invalid(
            entry,
            "kernel",
            format!("missing: {field} needs a kernel"),
        ));
    };
    let kernel = asset_url(entry, "kernel", kernel, assets)?;
    let initrds = raw
        .initrd
        .into_iter()
        .enumerate()
        .map(|(i, initrd)| asset_url(entry, &format!("initrd[{i}]"), initrd, assets))
        .collect::<Result<Vec<_>, _>>()?;
    KernelBoot::new(&kernel, &initrds, raw.cmdline.as_deref().unwrap_or(""))
        .map(BootTarget::Kernel)
        .map_err(|(field, e)| invalid(entry, field.to_string(), e.to_string()))
}

impl Inventory {
    /// Validate `raw`; `assets` is the URL `/assets/...` paths become (see
    /// [`asset_url`]), `None` if ironboot serves no assets.
    fn validate(raw: RawInventory, assets: Option<&str>) -> Result<Self, Invalid> {
        let mut inv = Inventory::default();
        if let Some(default) = raw.default {
            inv.default = target("[default]", default, assets)?;
            inv.has_default = true;
        }
        // Entry labels of earlier entries, to name both sides of a duplicate.
        let mut labels: Vec<String> = Vec::with_capacity(raw.machine.len());
        for (i, m) in raw.machine.into_iter().enumerate() {
            let label = match &m.name {
                Some(n) => format!("machine[{i}] ({n:?})"),
                None => format!("machine[{i}]"),
            };
            if let Some(name) = &m.name {
                control_free(&label, "name", name)?;
            }
            if m.uuid.is_empty() && m.mac.is_empty() {
                return Err(invalid(
                    &label,
                    "uuid",
                    "missing: an entry needs a uuid or a mac to match",
                ));
            }
            for (j, s) in m.uuid.iter().enumerate() {
                let field = format!("uuid[{j}]");
                let u: Uuid = s
                    .trim()
                    .parse()
                    .map_err(|e: crate::boot::machine::IdError| {
                        invalid(&label, &field, e.to_string())
                    })?;
                if u.is_placeholder() {
                    return Err(invalid(
                        &label,
                        &field,
                        format!("{u} is a placeholder many boards report; match by mac instead"),
                    ));
                }
                if let Some(&other) = inv.by_uuid.get(&u) {
                    let first = labels.get(other).map_or(label.as_str(), String::as_str);
                    return Err(invalid(
                        &label,
                        &field,
                        format!("{u} is already used by {first}"),
                    ));
                }
                inv.by_uuid.insert(u, i);
            }
            for (j, s) in m.mac.iter().enumerate() {
                let field = format!("mac[{j}]");
                let mac: MacAddr =
                    s.trim()
                        .parse()
                        .map_err(|e: crate::boot::machine::IdError| {
                            invalid(&label, &field, e.to_string())
                        })?;
                if let Some(&other) = inv.by_mac.get(&mac) {
                    let first = labels.get(other).map_or(label.as_str(), String::as_str);
                    return Err(invalid(
                        &label,
                        &field,
                        format!("{mac} is already used by {first}"),
                    ));
                }
                inv.by_mac.insert(mac, i);
            }
            let t = target(
                &label,
                RawTarget {
                    boot: m.boot,
                    script: m.script,
                    kernel: m.kernel,
                    initrd: m.initrd,
                    cmdline: m.cmdline,
                },
                assets,
            )?;
            inv.entries.push(Entry {
                name: m.name,
                target: t,
            });
            labels.push(label);
        }
        Ok(inv)
    }
}

impl TryFrom<RawInventory> for Inventory {
    type Error = Invalid;

    /// Validate `raw` for an ironboot serving no assets.
    fn try_from(raw: RawInventory) -> Result<Self, Invalid> {
        Inventory::validate(raw, None)
    }
}

impl Inventory {
    /// Read and validate `path` (format by extension) as ironboot does at start and on
    /// each reload ([`reload::Source::load`]); `assets` is the URL of ironboot's own
    /// `/assets/` (e.g. `http://10.0.0.1:50042/assets/`) when it serves them, which
    /// `kernel` and `initrd` values of the form `/assets/...` are turned into.
    #[cfg(test)]
    pub(crate) fn load(path: &Path, assets: Option<&str>) -> Result<Inventory, InventoryError> {
        reload::Source {
            path: path.to_owned(),
            assets: assets.map(str::to_owned),
        }
        .load()
        .result
    }

    /// Validate inventory text; `path` only names the source in errors.
    pub(crate) fn parse(
        text: &str,
        format: Format,
        path: &Path,
    ) -> Result<Inventory, InventoryError> {
        Inventory::parse_with_assets(text, format, path, None)
    }

    /// [`Inventory::parse`] for an ironboot serving `/assets/` at `assets`.
    pub(crate) fn parse_with_assets(
        text: &str,
        format: Format,
        path: &Path,
        assets: Option<&str>,
    ) -> Result<Inventory, InventoryError> {
        let raw: RawInventory = match format {
            Format::Toml => toml::from_str(text).map_err(|e| e.to_string()),
            Format::Yaml => serde_saphyr::from_str(text).map_err(|e| e.to_string()),
        }
        .map_err(|message| InventoryError::Syntax {
            path: path.to_owned(),
            message: message.trim_end().to_owned(),
        })?;
        Inventory::validate(raw, assets).map_err(|invalid| InventoryError::Invalid {
            path: path.to_owned(),
            invalid,
        })
    }

    /// The target for `who` and where it came from: UUID first (the stable identity),
    /// then the MAC, then the default.
    pub(crate) fn lookup(&self, who: &MachineQuery) -> (&BootTarget, Matched<'_>) {
        let by_uuid = who.uuid.and_then(|u| self.by_uuid.get(&u));
        if let Some(e) = by_uuid.and_then(|&i| self.entries.get(i)) {
            return (&e.target, Matched::Uuid(e.name.as_deref()));
        }
        let by_mac = who.mac.and_then(|m| self.by_mac.get(&m));
        if let Some(e) = by_mac.and_then(|&i| self.entries.get(i)) {
            return (&e.target, Matched::Mac(e.name.as_deref()));
        }
        (&self.default, Matched::Default)
    }

    /// The target for `who` and the entry that chose it: `None` when no entry did (no
    /// `[default]`, or no inventory at all), and the machine boots from its disk.
    pub(crate) fn decide_entry(&self, who: &MachineQuery) -> (&BootTarget, Option<EntryKey>) {
        let (target, matched) = self.lookup(who);
        let key = match matched {
            Matched::Uuid(_) => who.uuid.map(EntryKey::Uuid),
            Matched::Mac(_) => who.mac.map(EntryKey::Mac),
            Matched::Default => self.has_default.then_some(EntryKey::Default),
        };
        debug!(machine = %who.machine_id(), %matched, decision = target.kind(), "inventory");
        (target, key)
    }

    /// How many entries it has.
    pub(crate) fn counts(&self) -> EntryCounts {
        EntryCounts {
            machines: self.entries.len(),
            uuids: self.by_uuid.len(),
            macs: self.by_mac.len(),
            default: self.has_default,
        }
    }

    /// For the start-up log line.
    pub(crate) fn summary(&self) -> String {
        if self.entries.is_empty() && !self.has_default {
            return "no machine entries and no [default]: every machine boots from its disk"
                .to_owned();
        }
        let default = if self.has_default {
            self.default.kind()
        } else {
            "disk (no [default])"
        };
        format!(
            "{} machine entries ({} UUIDs, {} MACs); unknown machines: {default}",
            self.entries.len(),
            self.by_uuid.len(),
            self.by_mac.len()
        )
    }
}

/// The machines an inventory entry names are the operator's own: the store never evicts
/// them (see [`crate::boot::store`]). Entries match by UUID or MAC, as lookups do.
impl crate::boot::store::Pinned for Inventory {
    fn pinned(&self, uuid: Option<Uuid>, macs: &mut dyn Iterator<Item = MacAddr>) -> bool {
        if uuid.is_some_and(|u| self.by_uuid.contains_key(&u)) {
            return true;
        }
        for m in macs {
            if self.by_mac.contains_key(&m) {
                return true;
            }
        }
        false
    }
}

impl BootDecider for Inventory {
    fn decide(&self, who: &MachineQuery) -> BootTarget {
        self.decide_entry(who).0.clone()
    }

    fn decide_with_entry(&self, who: &MachineQuery) -> (BootTarget, Option<EntryKey>) {
        let (target, key) = self.decide_entry(who);
        (target.clone(), key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::machine::Arch;

    /// The sample from the design brief, verbatim.
    const SAMPLE: &str = r##"[default]                      # unknown machines
script = """#!ipxe
echo hello ${uuid}
"""
[[machine]]
uuid = "00000000-0000-4000-8000-000000000001"   # or mac = "52:54:00:aa:00:01"
boot = "disk"                  # or script = "...", or kernel/initrd/cmdline
"##;

    const SAMPLE_YAML: &str = r##"default:            # unknown machines
  script: |
    #!ipxe
    echo hello ${uuid}
machine:
  - uuid: 00000000-0000-4000-8000-000000000001
    boot: disk
"##;

    fn toml(text: &str) -> Result<Inventory, InventoryError> {
        Inventory::parse(
            text,
            Format::Toml,
            Path::new("/etc/ironboot/inventory.toml"),
        )
    }

    fn yaml(text: &str) -> Result<Inventory, InventoryError> {
        Inventory::parse(
            text,
            Format::Yaml,
            Path::new("/etc/ironboot/inventory.yaml"),
        )
    }

    fn who(uuid: Option<&str>, mac: Option<&str>) -> MachineQuery {
        MachineQuery {
            uuid: uuid.map(|u| u.parse().unwrap()),
            mac: mac.map(|m| m.parse().unwrap()),
            arch: Arch::Amd64,
            serial: None,
            hostname: None,
            domain: None,
        }
    }

    fn script_text(t: &BootTarget) -> &str {
        match t {
            BootTarget::Script(s) => std::str::from_utf8(s.bytes()).unwrap(),
            BootTarget::Kernel(k) => std::str::from_utf8(k.bytes()).unwrap(),
            BootTarget::Disk => "disk",
        }
    }

    #[test]
    fn listed_machines_are_pinned_in_the_store_by_uuid_or_any_mac() {
        use crate::boot::store::Pinned;
        let inv = toml(
            r#"
[default]
boot = "disk"
[[machine]]
uuid = "00000000-0000-4000-8000-000000000001"
boot = "disk"
[[machine]]
mac = ["52:54:00:aa:00:02", "52:54:00:aa:00:03"]
boot = "disk"
"#,
        )
        .unwrap();
        let u = |s: &str| Some(s.parse::<Uuid>().unwrap());
        let macs = |l: &[&str]| {
            l.iter()
                .map(|m| m.parse::<MacAddr>().unwrap())
                .collect::<Vec<_>>()
        };
        let pinned = |uuid, l: &[&str]| inv.pinned(uuid, &mut macs(l).into_iter());
        assert!(pinned(u("00000000-0000-4000-8000-000000000001"), &[]));
        assert!(pinned(None, &["52:54:00:aa:00:09", "52:54:00:aa:00:03"]));
        assert!(pinned(
            u("00000000-0000-4000-8000-000000000009"),
            &["52:54:00:aa:00:02"]
        ));
        assert!(!pinned(
            u("00000000-0000-4000-8000-000000000009"),
            &["52:54:00:aa:00:09"]
        ));
        assert!(!pinned(None, &[]), "the [default] pins nothing");
        assert!(!Inventory::default().pinned(
            u("00000000-0000-4000-8000-000000000001"),
            &mut std::iter::empty()
        ));
    }

    #[test]
    fn the_brief_sample_parses_verbatim_and_its_yaml_twin_is_the_same() {
        let inv = toml(SAMPLE).unwrap();
        let known = who(Some("00000000-0000-4000-8000-000000000001"), None);
        assert_eq!(inv.decide(&known), BootTarget::Disk);
        let unknown = who(
            Some("00000000-0000-4000-8000-000000000002"),
            Some("52:54:00:aa:00:09"),
        );
        assert_eq!(
            script_text(&inv.decide(&unknown)),
            "#!ipxe\necho hello ${uuid}\n"
        );
        assert_eq!(yaml(SAMPLE_YAML).unwrap(), inv);
        assert!(
            inv.summary().contains("1 machine entries"),
            "{}",
            inv.summary()
        );
    }

    #[test]
    fn lookup_is_by_uuid_then_mac_then_default() {
        let inv = toml(
            r##"
[default]
boot = "disk"
[[machine]]
name = "by-uuid"
uuid = "00000000-0000-4000-8000-000000000001"
script = "#!ipxe\necho uuid\n"
[[machine]]
name = "by-mac"
mac = ["52:54:00:aa:00:01", "52-54-00-aa-00-02"]
kernel = "http://10.0.0.1/vmlinuz"
initrd = "http://10.0.0.1/initrd"
cmdline = "console=ttyS0"
"##,
        )
        .unwrap();
        let (_, m) = inv.lookup(&who(
            Some("00000000-0000-4000-8000-000000000001"),
            Some("52:54:00:aa:00:01"),
        ));
        assert_eq!(
            m,
            Matched::Uuid(Some("by-uuid")),
            "the UUID wins over the MAC"
        );
        let (t, m) = inv.lookup(&who(
            Some("00000000-0000-4000-8000-000000000009"),
            Some("52:54:00:AA:00:02"),
        ));
        assert_eq!(m, Matched::Mac(Some("by-mac")));
        assert_eq!(
            script_text(t),
            "#!ipxe\nkernel http://10.0.0.1/vmlinuz console=ttyS0\ninitrd http://10.0.0.1/initrd\nboot\n"
        );
        let (t, m) = inv.lookup(&who(None, Some("52:54:00:aa:00:03")));
        assert_eq!((t, m), (&BootTarget::Disk, Matched::Default));
    }

    /// The entry a machine is recorded with: the UUID or MAC matched, or the default;
    /// none without a `[default]` or an inventory.
    #[test]
    fn decisions_name_the_entry_by_the_key_that_matched() {
        let inv = toml(
            r##"
[default]
boot = "disk"
[[machine]]
uuid = ["00000000-0000-4000-8000-000000000001", "00000000-0000-4000-8000-000000000002"]
mac = "52:54:00:aa:00:01"
script = "#!ipxe\necho one\n"
[[machine]]
mac = ["52:54:00:aa:00:02", "52-54-00-AA-00-03"]
boot = "disk"
"##,
        )
        .unwrap();
        let key = |inv: &Inventory, uuid, mac| {
            inv.decide_with_entry(&who(uuid, mac))
                .1
                .map(|k| k.to_string())
        };
        for (uuid, mac, expected) in [
            (
                Some("00000000-0000-4000-8000-000000000002"),
                Some("52:54:00:aa:00:03"),
                Some("00000000-0000-4000-8000-000000000002"),
            ),
            (None, Some("52:54:00:AA:00:01"), Some("52:54:00:aa:00:01")),
            (
                Some("00000000-0000-4000-8000-000000000009"),
                Some("52-54-00-aa-00-03"),
                Some("52:54:00:aa:00:03"),
            ),
            (None, Some("52:54:00:aa:00:09"), Some("default")),
        ] {
            assert_eq!(
                key(&inv, uuid, mac).as_deref(),
                expected,
                "{uuid:?} {mac:?}"
            );
        }
        assert_eq!(
            inv.decide_with_entry(&who(None, Some("52:54:00:aa:00:09"))),
            (BootTarget::Disk, Some(EntryKey::Default))
        );
        let no_default =
            toml("[[machine]]\nmac = \"52:54:00:aa:00:01\"\nboot = \"disk\"\n").unwrap();
        assert_eq!(key(&no_default, None, Some("52:54:00:aa:00:09")), None);
        assert_eq!(
            key(&no_default, None, Some("52:54:00:aa:00:01")).as_deref(),
            Some("52:54:00:aa:00:01")
        );
        assert_eq!(
            key(&Inventory::default(), None, Some("52:54:00:aa:00:01")),
            None
        );
        assert_eq!(
            inv.counts(),
            EntryCounts {
                machines: 2,
                uuids: 2,
                macs: 3,
                default: true
            }
        );
    }

    #[test]
    fn no_inventory_and_no_default_mean_disk() {
        let q = who(None, Some("52:54:00:aa:00:01"));
        assert_eq!(Inventory::default().decide(&q), BootTarget::Disk);
        assert!(
            Inventory::default()
                .summary()
                .contains("every machine boots from its disk")
        );
        assert_eq!(toml("").unwrap().decide(&q), BootTarget::Disk);
        let only_machines =
            toml("[[machine]]\nmac = \"52:54:00:aa:00:09\"\nscript = \"#!ipxe\"\n").unwrap();
        assert_eq!(only_machines.decide(&q), BootTarget::Disk);
        assert!(
            only_machines
                .summary()
                .ends_with("unknown machines: disk (no [default])")
        );
    }

    #[test]
    fn yaml_accepts_unquoted_macs_lists_and_block_scripts() {
        let inv = yaml(
            r##"
machine:
  - name: n1
    mac: 52:54:00:aa:00:01
    kernel: http://10.0.0.1/vmlinuz
    initrd:
      - http://10.0.0.1/a.img
      - http://10.0.0.1/b.img
  - mac: [52:54:00:aa:00:02]
    script: |
      #!ipxe
      exit
"##,
        )
        .unwrap();
        let t = inv.decide(&who(None, Some("52:54:00:aa:00:01")));
        assert!(script_text(&t).contains("initrd http://10.0.0.1/b.img\n"));
        assert_eq!(
            script_text(&inv.decide(&who(None, Some("52:54:00:aa:00:02")))),
            "#!ipxe\nexit\n"
        );
    }

    /// (file text, entry, field, part of the problem) for every refusal.
    #[test]
    fn invalid_entries_name_the_entry_and_the_field() {
        let u1 = "00000000-0000-4000-8000-000000000001";
        let cases: Vec<(String, &str, &str, &str)> = vec![
            (format!("[[machine]]\nuuid = \"{u1}\"\n"), "machine[0]", "boot", "no boot target"),
            ("[default]\n".into(), "[default]", "boot", "no boot target"),
            (
                format!("[[machine]]\nuuid = \"{u1}\"\nboot = \"disk\"\nscript = \"#!ipxe\"\n"),
                "machine[0]",
                "script",
                "boot and script are both set",
            ),
            (
                "[default]\nscript = \"#!ipxe\"\nkernel = \"http://h/k\"\n".into(),
                "[default]",
                "kernel",
                "script and kernel",
            ),
            (
                "[default]\nboot = \"disk\"\ncmdline = \"quiet\"\n".into(),
                "[default]",
                "kernel",
                "both set",
            ),
            ("[default]\ninitrd = \"http://h/i\"\n".into(), "[default]", "kernel", "initrd needs a kernel"),
            ("[default]\ncmdline = \"quiet\"\n".into(), "[default]", "kernel", "cmdline needs a kernel"),
            ("[default]\nboot = \"pxe\"\n".into(), "[default]", "boot", "unknown value \"pxe\""),
            ("[default]\nscript = \"echo hi\"\n".into(), "[default]", "script", "#!ipxe"),
            (
                format!("[[machine]]\nname = \"n0\"\nuuid = \"{u1}\"\nboot = \"disk\"\n[[machine]]\nuuid = \"{}\"\nboot = \"disk\"\n", u1.to_uppercase()),
                "machine[1]",
                "uuid[0]",
                "already used by machine[0] (\"n0\")",
            ),
            (
                "[[machine]]\nmac = [\"52:54:00:aa:00:01\", \"52-54-00-AA-00-01\"]\nboot = \"disk\"\n".into(),
                "machine[0]",
                "mac[1]",
                "already used by machine[0]",
            ),
            (
                "[[machine]]\nmac = \"52:54:00:aa:00:01\"\nboot = \"disk\"\n[[machine]]\nname = \"b\"\nmac = \"525400aa0001\"\nboot = \"disk\"\n".into(),
                "machine[1] (\"b\")",
                "mac[0]",
                "already used by machine[0]",
            ),
            ("[[machine]]\nuuid = \"not-a-uuid\"\nboot = \"disk\"\n".into(), "machine[0]", "uuid[0]", "malformed"),
            ("[[machine]]\nmac = \"52:54:00:aa:00\"\nboot = \"disk\"\n".into(), "machine[0]", "mac[0]", "malformed"),
            (
                "[[machine]]\nuuid = \"00000000-0000-0000-0000-000000000000\"\nboot = \"disk\"\n".into(),
                "machine[0]",
                "uuid[0]",
                "placeholder",
            ),
            ("[[machine]]\nname = \"x\"\nboot = \"disk\"\n".into(), "machine[0] (\"x\")", "uuid", "needs a uuid or a mac"),
            ("[[machine]]\nname = \"a\\nb\"\nmac = \"52:54:00:aa:00:01\"\nboot = \"disk\"\n".into(), "machine[0] (\"a\\nb\")", "name", "control"),
            (
                "[default]\nkernel = \"http://h/k\"\ninitrd = [\"http://h/a\", \"http://h/b\\nshell\"]\n".into(),
                "[default]",
                "initrd[1]",
                "control character",
            ),
            ("[default]\nkernel = \"http://h/k\"\ncmdline = \"quiet || shell\"\n".into(), "[default]", "cmdline", "\"||\""),
            ("[default]\nkernel = \"vmlinuz\"\n".into(), "[default]", "kernel", "http://"),
        ];
        for (text, entry, field, problem) in &cases {
            let e = toml(text).unwrap_err();
            let InventoryError::Invalid { path, invalid } = &e else {
                panic!("{text}: not an Invalid: {e}");
            };
            assert_eq!(path, Path::new("/etc/ironboot/inventory.toml"));
            assert_eq!(
                (invalid.entry.as_str(), invalid.field.as_str()),
                (*entry, *field),
                "{text}: {e}"
            );
            assert!(invalid.problem.contains(problem), "{text}: {e}");
            assert!(
                e.to_string()
                    .starts_with("inventory /etc/ironboot/inventory.toml: "),
                "{e}"
            );
        }
    }

    #[test]
    fn schema_errors_name_the_file_and_the_place() {
        for (text, needle) in [
            ("[defaults]\nboot = \"disk\"\n", "defaults"),
            ("[default]\nbot = \"disk\"\n", "bot"),
            ("[[machine]]\nuid = \"x\"\nboot = \"disk\"\n", "uid"),
            ("[[machine]]\nmac = 5\nboot = \"disk\"\n", "string"),
            ("[default\n", "inventory.toml"),
            (
                "[default]\nboot = \"disk\"\n[default]\nboot = \"disk\"\n",
                "default",
            ),
        ] {
            let e = toml(text).unwrap_err();
            assert!(matches!(e, InventoryError::Syntax { .. }), "{text}: {e}");
            let msg = e.to_string();
            assert!(
                msg.starts_with("inventory /etc/ironboot/inventory.toml: "),
                "{msg}"
            );
            assert!(msg.contains(needle), "{text}: {msg}");
        }
        for text in ["default:\n  bot: disk\n", "machine: 5\n", "default: [\n"] {
            let e = yaml(text).unwrap_err();
            assert!(matches!(e, InventoryError::Syntax { .. }), "{text}: {e}");
        }
    }

    #[test]
    fn files_are_read_by_extension() {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in [
            ("inv.toml", SAMPLE),
            ("inv.yaml", SAMPLE_YAML),
            ("inv.YML", SAMPLE_YAML),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            assert_eq!(
                Inventory::load(&path, None).unwrap(),
                toml(SAMPLE).unwrap(),
                "{name}"
            );
        }
        let json = dir.path().join("inv.json");
        std::fs::write(&json, "{}").unwrap();
        assert!(matches!(
            Inventory::load(&json, None),
            Err(InventoryError::Format { .. })
        ));
        let missing = dir.path().join("missing.toml");
        let e = Inventory::load(&missing, None).unwrap_err();
        assert!(matches!(e, InventoryError::Read { .. }));
        assert!(e.to_string().contains("missing.toml"), "{e}");
    }

    const ASSETS: &str = "http://10.0.0.1:50042/assets/";

    /// `/assets/...` kernels and initrds become ironboot's own URLs; other URLs stay.
    #[test]
    fn assets_paths_become_ironboot_urls() {
        let text = r#"
[default]
kernel = "/assets/talos/v1.13.7/vmlinuz-amd64"
initrd = ["/assets/talos/v1.13.7/initramfs-amd64.xz", "http://10.0.0.9/extra.cpio"]
cmdline = "console=ttyS0 talos.platform=metal"
[[machine]]
mac = "52:54:00:aa:00:01"
kernel = "/assets/${buildarch}/vmlinuz"
"#;
        let path = Path::new("/etc/ironboot/inventory.toml");
        let inv = Inventory::parse_with_assets(text, Format::Toml, path, Some(ASSETS)).unwrap();
        assert_eq!(
            script_text(&inv.decide(&who(None, Some("52:54:00:aa:00:09")))),
            "#!ipxe\nkernel http://10.0.0.1:50042/assets/talos/v1.13.7/vmlinuz-amd64 \
             console=ttyS0 talos.platform=metal\n\
             initrd http://10.0.0.1:50042/assets/talos/v1.13.7/initramfs-amd64.xz\n\
             initrd http://10.0.0.9/extra.cpio\nboot\n"
        );
        assert_eq!(
            script_text(&inv.decide(&who(None, Some("52:54:00:aa:00:01")))),
            "#!ipxe\nkernel http://10.0.0.1:50042/assets/${buildarch}/vmlinuz\nboot\n"
        );
        // The URL comes from the running ironboot: another advertise address, another URL.
        let other = Inventory::parse_with_assets(
            text,
            Format::Toml,
            path,
            Some(&crate::boot::boot_script::assets_url(
                "192.0.2.7".parse().unwrap(),
                8080,
            )),
        )
        .unwrap();
        assert!(
            script_text(&other.decide(&who(None, None)))
                .starts_with("#!ipxe\nkernel http://192.0.2.7:8080/assets/talos/")
        );
    }

    /// Without assets served, or with a path ironboot would refuse, the entry and field
    /// are named.
    #[test]
    fn assets_paths_are_refused_without_assets_or_with_dot_segments() {
        let path = Path::new("/etc/ironboot/inventory.toml");
        let cases: [(&str, Option<&str>, &str, &str, &str); 6] = [
            (
                "[default]\nkernel = \"/assets/vmlinuz\"\n",
                None,
                "[default]",
                "kernel",
                "--use-local-boot-assets",
            ),
            (
                "[[machine]]\nname = \"n1\"\nmac = \"52:54:00:aa:00:01\"\nkernel = \"http://h/k\"\ninitrd = [\"http://h/i\", \"/assets/initrd\"]\n",
                None,
                "machine[0] (\"n1\")",
                "initrd[1]",
                "serves no assets",
            ),
            (
                "[default]\nkernel = \"/assets/../etc/shadow\"\n",
                Some(ASSETS),
                "[default]",
                "kernel",
                "'..'",
            ),
            (
                "[default]\nkernel = \"/assets/\"\n",
                Some(ASSETS),
                "[default]",
                "kernel",
                "no empty",
            ),
            (
                "[default]\nkernel = \"/assets/a//b\"\n",
                Some(ASSETS),
                "[default]",
                "kernel",
                "no empty",
            ),
            (
                "[default]\nkernel = \"/assets/vmlinuz\"\ninitrd = \"/assets/./i\"\n",
                Some(ASSETS),
                "[default]",
                "initrd[0]",
                "'.'",
            ),
        ];
        for (text, assets, entry, field, problem) in cases {
            let e = Inventory::parse_with_assets(text, Format::Toml, path, assets).unwrap_err();
            let InventoryError::Invalid { invalid, .. } = &e else {
                panic!("{text}: not an Invalid: {e}");
            };
            assert_eq!(
                (invalid.entry.as_str(), invalid.field.as_str()),
                (entry, field),
                "{text}: {e}"
            );
            assert!(invalid.problem.contains(problem), "{text}: {e}");
        }
        // Loading a file refuses the same, naming the file.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("inv.toml");
        std::fs::write(&file, cases[0].0).unwrap();
        let e = Inventory::load(&file, None).unwrap_err();
        assert!(
            e.to_string().contains("inv.toml: [default]: kernel: "),
            "{e}"
        );
        assert!(Inventory::load(&file, Some(ASSETS)).is_ok());
    }

    /// Every TOML and YAML block in docs/inventory.md is a valid inventory.
    #[test]
    fn every_documented_sample_parses() {
        let doc = include_str!("../../docs/inventory.md");
        let mut count = 0;
        let mut lines = doc.lines();
        while let Some(line) = lines.next() {
            let format = match line.trim() {
                "```toml" => Format::Toml,
                "```yaml" => Format::Yaml,
                _ => continue,
            };
            let block: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
            let text = block.join("\n") + "\n";
            // The samples booting from ironboot's /assets/ need it to serve them.
            Inventory::parse_with_assets(
                &text,
                format,
                Path::new("docs/inventory.md"),
                Some(ASSETS),
            )
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
            count += 1;
        }
        assert!(count >= 5, "found only {count} samples");
    }
}
