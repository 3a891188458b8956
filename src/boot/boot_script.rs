//! iPXE scripts: the init script every iPXE runs first (`/ipxe/init.ipxe`), and the boot
//! targets a boot decision renders into (`/ipxe/boot.ipxe`).
//!
//! Scripts are built once (at start or when the inventory is loaded) and served as shared
//! [`Bytes`]; nothing from a request is ever interpolated into a script, and every
//! operator-supplied value that is (kernel and initrd URLs, the kernel command line) is
//! validated so it cannot add script lines or commands.

use std::fmt::{self, Write as _};
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::str::FromStr;

use bytes::Bytes;

use crate::boot::inventory::EntryKey;
use crate::boot::machine::MachineQuery;

/// How many NICs (`net0`..) the init script tries per round: more than any server has,
/// and the loop also stops at the first index without a NIC.
pub(crate) const INIT_MAX_NICS: u32 = 8;
/// Rounds over all NICs before the init script gives up (as the Go provider's script).
pub(crate) const INIT_ROUNDS: u32 = 10;

/// The script iPXE runs first: offers a shell on Ctrl-B, then brings up each NIC in turn
/// with DHCP and chains to `boot.ipxe` on ironboot, identifying the machine in the query;
/// after [`INIT_ROUNDS`] rounds without a boot script it waits and reboots.
///
/// With `--boot-from-disk-method http-404` a failed chain after a successful DHCP is how
/// ironboot says "boot from disk", so the script then `exit`s to the firmware (which boots
/// the next device) instead of trying the other NICs and rebooting: without this the
/// machine would never reach its disk. A server that is down at that moment also sends
/// the machine to its disk; that is what this method means.
///
/// Written for every iPXE in use, down to Debian's 1.0.0+git-20190125, so only classic
/// commands appear (checked against that release's command table in the tests):
/// - no `iflinkwait`: it became a command only in 2021; `dhcp` itself waits for link-up
///   (15 s) in every release, so nothing is lost;
/// - no `poweroff` (not in Debian's build); `reboot` is, and is `||`-guarded anyway;
/// - counters are `:int32` settings with `inc` (iPXE 2013 and later) and `iseq`;
/// - every command that can fail ends in `||` or `|| goto`: an unguarded failure would
///   abort the script;
/// - free-form values (DHCP host name and domain, SMBIOS serial) go out as `:uristring`,
///   so spaces, `#` or `&` in them cannot break the URL. The MAC uses `:hexhyp` (a `:` in
///   a query would be escaped) and the UUID and `${buildarch}` have fixed alphabets.
pub(crate) fn init_script(advertise: IpAddr, port: u16, disk: BootFromDiskMethod) -> Bytes {
    let host = url_host(advertise);
    let boot_url = boot_url(advertise, port);
    let on_chain_failure = match disk {
        BootFromDiskMethod::Http404 => "goto to_disk",
        BootFromDiskMethod::IpxeExit | BootFromDiskMethod::IpxeSanboot => "goto next_nic",
    };
    let mut s = String::with_capacity(1024);
    let _ = write!(
        s,
        "#!ipxe\n\
         # ironboot init script: DHCP on each NIC in turn, then chain to this machine's boot script.\n\
         prompt --key 0x02 --timeout 2000 Press Ctrl-B for the iPXE command line... && shell ||\n\
         ifstat ||\n\
         set round:int32 0\n\
         :round\n\
         inc round\n\
         set idx:int32 0\n\
         :nic\n\
         isset ${{net${{idx}}/mac}} || goto next_round\n\
         echo ironboot: round ${{round}} of {INIT_ROUNDS}: DHCP on net${{idx}}\n\
         ifclose ||\n\
         dhcp net${{idx}} || goto next_nic\n\
         route ||\n\
         chain --replace {boot_url} || {on_chain_failure}\n\
         :next_nic\n\
         inc idx\n\
         iseq ${{idx}} {INIT_MAX_NICS} || goto nic\n\
         :next_round\n\
         iseq ${{round}} {INIT_ROUNDS} || goto round\n\
         echo ironboot: no boot script from http://{host}:{port} after {INIT_ROUNDS} rounds, rebooting in 5 seconds\n\
         sleep 5\n\
         reboot ||\n\
         exit 1\n\
         :to_disk\n\
         echo ironboot: no boot script for this machine: returning to the firmware to boot from disk\n\
         exit 0\n"
    );
    Bytes::from(s)
}

fn url_host(advertise: IpAddr) -> String {
    match advertise {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    }
}

/// The URL of ironboot's own `/assets/` (standalone mode with `--use-local-boot-assets`),
/// ending in `/`: inventory paths `/assets/<file>` become this URL followed by `<file>`.
pub(crate) fn assets_url(advertise: IpAddr, port: u16) -> String {
    format!("http://{}:{port}/assets/", url_host(advertise))
}

/// `boot.ipxe` on ironboot, with every identifier of the machine in the query (iPXE
/// expands the settings when it fetches it).
fn boot_url(advertise: IpAddr, port: u16) -> String {
    let host = url_host(advertise);
    format!(
        "http://{host}:{port}/ipxe/boot.ipxe?uuid=${{uuid}}&mac=${{net${{idx}}/mac:hexhyp}}\
         &domain=${{domain:uristring}}&hostname=${{hostname:uristring}}\
         &serial=${{serial:uristring}}&arch=${{buildarch}}"
    )
}

/// How long a machine waits before asking again when its boot image is not available yet
/// (e.g. the Image Factory is down).
pub(crate) const RETRY_DELAY_SECS: u32 = 30;

/// The answer to `boot.ipxe` while the machine's boot image cannot be had (an Image
/// Factory outage): say so, wait [`RETRY_DELAY_SECS`], and ask for `boot.ipxe` again.
/// If ironboot itself is unreachable then, the machine reboots (and PXE-boots again).
///
/// Nothing from the failure is written into the script (its text is fixed); only classic
/// commands appear, as in [`init_script`]. `${net${idx}/mac}` still names the NIC the
/// init script booted from: settings survive `chain --replace`.
pub(crate) fn retry_script(advertise: IpAddr, port: u16) -> Bytes {
    retry_script_because(advertise, port, "Image Factory unreachable")
}

/// [`retry_script`] with another `reason` in its message (a fixed text of ironboot's, never
/// anything from a request or a peer).
pub(crate) fn retry_script_because(advertise: IpAddr, port: u16, reason: &'static str) -> Bytes {
    let boot_url = boot_url(advertise, port);
    Bytes::from(format!(
        "#!ipxe\n\
         echo ironboot: the boot image for this machine is not available yet ({reason})\n\
         echo ironboot: asking again in {RETRY_DELAY_SECS} seconds\n\
         sleep {RETRY_DELAY_SECS}\n\
         chain --replace {boot_url} || goto failed\n\
         :failed\n\
         echo ironboot: no boot script from ironboot, rebooting in 5 seconds\n\
         sleep 5\n\
         reboot ||\n\
         exit 1\n"
    ))
}

/// Why an operator-supplied value cannot go into a script.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ScriptError {
    /// An inline script without the `#!ipxe` signature iPXE requires.
    #[error("must start with the line \"#!ipxe\"")]
    NoSignature,
    /// Empty where a value is required.
    #[error("is empty")]
    Empty,
    /// A control character (newline, tab, NUL, ...), which could start a new script line.
    #[error("contains a control character (newline, tab, ...), which could add script lines")]
    ControlChar,
    /// Whitespace inside a URL (iPXE would split it into two arguments).
    #[error("contains whitespace; URLs are single tokens (percent-encode spaces)")]
    Whitespace,
    /// A scheme iPXE does not fetch with here.
    #[error("must be an absolute http://, https:// or tftp:// URL")]
    Scheme,
    /// A token iPXE's shell reads as a command separator or a comment.
    #[error("contains the token {0:?}, which iPXE reads as a command separator or comment")]
    ShellToken(String),
    /// An iPXE setting whose value the network or the machine chooses freely (a DHCP
    /// host name, an SMBIOS serial): expanded at boot, it could add arguments or commands.
    #[error(
        "uses the setting ${{{0}}}, whose value comes from DHCP or the machine and may hold \
         spaces or script tokens; use settings with fixed formats (uuid, mac, buildarch, \
         platform, ip) or a :uristring / :hex / :hexhyp format"
    )]
    UnsafeSetting(String),
    /// A `${` without its closing brace.
    #[error("has a ${{ without its closing }}")]
    UnclosedSetting,
}

/// Settings whose expanded value has a fixed alphabet (no spaces, no script tokens).
const SAFE_SETTINGS: [&str; 9] = [
    "uuid",
    "mac",
    "busid",
    "buildarch",
    "platform",
    "ip",
    "netmask",
    "gateway",
    "dns",
];

/// Formats that make any setting's value safe: percent-encoded or hexadecimal.
const SAFE_FORMATS: [&str; 4] = ["uristring", "hex", "hexhyp", "hexraw"];

/// Every `${name}` or `${name:format}` in `value` must expand to a fixed alphabet: a
/// setting from [`SAFE_SETTINGS`] (per NIC too, `netX/mac`), or any setting in a
/// [`SAFE_FORMATS`] format. A nested reference is checked too, so script variables such
/// as `${net${idx}/mac}`'s `idx` are refused.
fn safe_settings(value: &str) -> Result<(), ScriptError> {
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        let inner = &rest[start + 2..];
        // The reference ends at the first `}` not closing a nested `${`.
        let mut depth = 0usize;
        let mut end = None;
        let bytes = inner.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'$' && bytes.get(i + 1) == Some(&b'{') {
                depth += 1;
                i += 2;
                continue;
            }
            if bytes[i] == b'}' {
                if depth == 0 {
                    end = Some(i);
                    break;
                }
                depth -= 1;
            }
            i += 1;
        }
        let end = end.ok_or(ScriptError::UnclosedSetting)?;
        let reference = &inner[..end];
        safe_settings(reference)?;
        let (name, format) = match reference.rsplit_once(':') {
            Some((n, f)) => (n, Some(f)),
            None => (reference, None),
        };
        let base = name.rsplit('/').next().unwrap_or(name);
        let safe =
            format.is_some_and(|f| SAFE_FORMATS.contains(&f)) || SAFE_SETTINGS.contains(&base);
        if !safe {
            return Err(ScriptError::UnsafeSetting(reference.to_owned()));
        }
        rest = &inner[end + 1..];
    }
    Ok(())
}

fn no_control(value: &str) -> Result<(), ScriptError> {
    if value.chars().any(char::is_control) {
        return Err(ScriptError::ControlChar);
    }
    Ok(())
}

/// iPXE splits a line at whitespace, then treats the tokens `||`, `&&`, `;` as command
/// separators and a token starting with `#` as the start of a comment.
fn no_shell_tokens(value: &str) -> Result<(), ScriptError> {
    match value
        .split(' ')
        .find(|t| matches!(*t, "||" | "&&" | ";") || t.starts_with('#'))
    {
        Some(t) => Err(ScriptError::ShellToken(t.to_owned())),
        None => Ok(()),
    }
}

/// A kernel or initrd URL: one token, absolute, of a scheme iPXE fetches.
fn check_url(value: &str) -> Result<(), ScriptError> {
    if value.is_empty() {
        return Err(ScriptError::Empty);
    }
    no_control(value)?;
    if value.contains(char::is_whitespace) {
        return Err(ScriptError::Whitespace);
    }
    safe_settings(value)?;
    let lower = value.to_ascii_lowercase();
    let has_scheme = ["http://", "https://", "tftp://"]
        .iter()
        .any(|s| lower.len() > s.len() && lower.starts_with(s));
    if !has_scheme {
        return Err(ScriptError::Scheme);
    }
    Ok(())
}

/// An inline iPXE script, served verbatim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IpxeScript(Bytes);

impl IpxeScript {
    /// Accept `text` if its first line is `#!ipxe` (iPXE refuses anything else).
    pub(crate) fn new(text: &str) -> Result<Self, ScriptError> {
        let first = text.lines().next().unwrap_or("");
        if first.trim_end() != "#!ipxe" {
            return Err(ScriptError::NoSignature);
        }
        Ok(IpxeScript(Bytes::copy_from_slice(text.as_bytes())))
    }

    /// The script text.
    pub(crate) fn bytes(&self) -> &Bytes {
        &self.0
    }
}

/// A kernel boot: rendered once into `kernel`/`initrd`/`boot` lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KernelBoot {
    script: Bytes,
}

/// Which part of a kernel boot a validation error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KernelField {
    /// The kernel URL.
    Kernel,
    /// The initrd URL at this index.
    Initrd(usize),
    /// The command line.
    Cmdline,
}

impl fmt::Display for KernelField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelField::Kernel => f.write_str("kernel"),
            KernelField::Initrd(i) => write!(f, "initrd[{i}]"),
            KernelField::Cmdline => f.write_str("cmdline"),
        }
    }
}

impl KernelBoot {
    /// Validate and render. The command line may use iPXE settings with fixed formats
    /// such as `${uuid}` (iPXE expands them at boot, after this check), but no settings
    /// whose values DHCP or the machine choose, no control characters, no shell tokens.
    pub(crate) fn new(
        kernel: &str,
        initrds: &[String],
        cmdline: &str,
    ) -> Result<Self, (KernelField, ScriptError)> {
        check_url(kernel).map_err(|e| (KernelField::Kernel, e))?;
        for (i, initrd) in initrds.iter().enumerate() {
            check_url(initrd).map_err(|e| (KernelField::Initrd(i), e))?;
        }
        let cmdline = cmdline.trim();
        no_control(cmdline)
            .and_then(|()| no_shell_tokens(cmdline))
            .and_then(|()| safe_settings(cmdline))
            .map_err(|e| (KernelField::Cmdline, e))?;
        let mut s = String::from("#!ipxe\nkernel ");
        s.push_str(kernel);
        if !cmdline.is_empty() {
            s.push(' ');
            s.push_str(cmdline);
        }
        s.push('\n');
        for initrd in initrds {
            let _ = writeln!(s, "initrd {initrd}");
        }
        s.push_str("boot\n");
        Ok(KernelBoot {
            script: Bytes::from(s),
        })
    }

    /// The rendered script.
    pub(crate) fn bytes(&self) -> &Bytes {
        &self.script
    }
}

/// What a machine should boot. Cheap to clone (shared bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BootTarget {
    /// Its own disk, by the `--boot-from-disk-method`.
    Disk,
    /// An inline iPXE script.
    Script(IpxeScript),
    /// A kernel with initrds and a command line.
    Kernel(KernelBoot),
}

impl BootTarget {
    /// Label for metrics, logs and the machine record.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            BootTarget::Disk => "disk",
            BootTarget::Script(_) => "script",
            BootTarget::Kernel(_) => "kernel",
        }
    }

    /// Every kind, for metrics.
    pub(crate) const KINDS: [&'static str; 3] = ["disk", "script", "kernel"];
}

/// Decides what a machine boots. The standalone implementation is the inventory; Omni
/// mode decides from the machine's state in Omni ([`BootAnswerer`] directly, as it may
/// have to ask the Image Factory).
pub(crate) trait BootDecider: Send + Sync {
    /// The target for this machine. Must not block: it runs on the HTTP path.
    fn decide(&self, who: &MachineQuery) -> BootTarget;

    /// [`BootDecider::decide`], with the inventory entry that chose the target (recorded
    /// with the machine); both from one inventory, even while it is being reloaded.
    fn decide_with_entry(&self, who: &MachineQuery) -> (BootTarget, Option<EntryKey>) {
        (self.decide(who), None)
    }
}

/// The answer to one `boot.ipxe` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    /// Label for metrics, logs and the machine record ([`BootTarget::kind`], or `refused`
    /// and `retry` for answers that are no boot target).
    pub(crate) kind: &'static str,
    /// The response.
    pub(crate) rendered: Rendered,
    /// The inventory entry that chose it (standalone mode), recorded with the machine;
    /// `None` when no entry did, and in Omni mode.
    pub(crate) entry: Option<EntryKey>,
}

/// A boxed answer, so deciders that wait (on the Image Factory) fit behind one `dyn`.
pub(crate) type AnswerFuture<'a> = Pin<Box<dyn Future<Output = Answer> + Send + 'a>>;

/// What the `boot.ipxe` handler calls: every [`BootDecider`] is one (answered at once);
/// Omni mode implements it itself.
pub(crate) trait BootAnswerer: Send + Sync {
    /// The answer for this machine, with "boot from disk" told by `disk`.
    fn answer<'a>(&'a self, who: &'a MachineQuery, disk: BootFromDiskMethod) -> AnswerFuture<'a>;

    /// The machine `who` was answered, its request coming from `ip`: a PXE boot seen.
    fn booted(&self, who: &MachineQuery, ip: Option<std::net::IpAddr>) {
        let _ = (who, ip);
    }
}

impl<T: BootDecider> BootAnswerer for T {
    fn answer<'a>(&'a self, who: &'a MachineQuery, disk: BootFromDiskMethod) -> AnswerFuture<'a> {
        let (target, entry) = self.decide_with_entry(who);
        Box::pin(std::future::ready(Answer {
            kind: target.kind(),
            rendered: render(&target, disk),
            entry,
        }))
    }
}

/// How "boot from disk" is told to iPXE, as the Go provider's `--boot-from-disk-method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum BootFromDiskMethod {
    /// `#!ipxe` + `exit`: iPXE returns to the firmware, which boots the next device.
    #[default]
    IpxeExit,
    /// HTTP 404 for `boot.ipxe`: the fetch fails and the firmware moves on.
    Http404,
    /// `sanboot --no-describe --drive 0x80`: iPXE boots the first BIOS disk itself.
    IpxeSanboot,
}

impl BootFromDiskMethod {
    /// All values, in flag spelling.
    #[cfg(test)]
    pub(crate) const NAMES: [&'static str; 3] = ["ipxe-exit", "http-404", "ipxe-sanboot"];

    /// Flag spelling.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            BootFromDiskMethod::IpxeExit => "ipxe-exit",
            BootFromDiskMethod::Http404 => "http-404",
            BootFromDiskMethod::IpxeSanboot => "ipxe-sanboot",
        }
    }
}

impl fmt::Display for BootFromDiskMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown `--boot-from-disk-method` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown boot-from-disk method {0:?}; use one of ipxe-exit, http-404, ipxe-sanboot")]
pub(crate) struct UnknownMethod(String);

impl FromStr for BootFromDiskMethod {
    type Err = UnknownMethod;

    fn from_str(s: &str) -> Result<Self, UnknownMethod> {
        match s {
            "ipxe-exit" => Ok(BootFromDiskMethod::IpxeExit),
            "http-404" => Ok(BootFromDiskMethod::Http404),
            "ipxe-sanboot" => Ok(BootFromDiskMethod::IpxeSanboot),
            _ => Err(UnknownMethod(s.to_owned())),
        }
    }
}

/// What `/ipxe/boot.ipxe` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rendered {
    /// 200 with this script.
    Script(Bytes),
    /// 404 with this message (boot from disk by `http-404`).
    NotFound(&'static str),
}

const EXIT_SCRIPT: &[u8] = b"#!ipxe\nexit\n";
const SANBOOT_SCRIPT: &[u8] = b"#!ipxe\nsanboot --no-describe --drive 0x80\n";

/// The response for `target`. No allocation: every script is shared bytes.
pub(crate) fn render(target: &BootTarget, disk: BootFromDiskMethod) -> Rendered {
    match target {
        BootTarget::Script(s) => Rendered::Script(s.bytes().clone()),
        BootTarget::Kernel(k) => Rendered::Script(k.bytes().clone()),
        BootTarget::Disk => match disk {
            BootFromDiskMethod::IpxeExit => Rendered::Script(Bytes::from_static(EXIT_SCRIPT)),
            BootFromDiskMethod::IpxeSanboot => Rendered::Script(Bytes::from_static(SANBOOT_SCRIPT)),
            BootFromDiskMethod::Http404 => {
                Rendered::NotFound("boot from disk (--boot-from-disk-method=http-404)\n")
            }
        },
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    /// Commands of Debian's iPXE 1.0.0+git-20190125.36a4c85 (the `struct command` names in
    /// its `src/core`, `src/hci/commands` and `src/image` with Debian's config, whose
    /// `general.h` adds `REBOOT_CMD`). `iflinkwait` and `poweroff` are not among them.
    const DEBIAN_2019_COMMANDS: &[&str] = &[
        "autoboot",
        "chain",
        "clear",
        "cpuid",
        "dhcp",
        "echo",
        "exit",
        "goto",
        "ifclose",
        "ifconf",
        "ifopen",
        "ifstat",
        "imgexec",
        "imgfetch",
        "imgfree",
        "imgselect",
        "inc",
        "initrd",
        "iseq",
        "isset",
        "kernel",
        "login",
        "menu",
        "item",
        "choose",
        "prompt",
        "read",
        "reboot",
        "route",
        "sanboot",
        "set",
        "shell",
        "show",
        "sleep",
        "sync",
        "boot",
    ];

    /// Split a script line like iPXE's `system()`: whitespace tokens, commands separated by
    /// `||`, `&&`, `;`, a `#` token starts a comment. Returns the command names.
    fn commands_of(line: &str) -> Vec<&str> {
        let mut out = Vec::new();
        let mut expect_command = true;
        for token in line.split_whitespace() {
            if token.starts_with('#') {
                break;
            }
            if matches!(token, "||" | "&&" | ";") {
                expect_command = true;
            } else if expect_command {
                out.push(token);
                expect_command = false;
            }
        }
        out
    }

    fn lines(script: &[u8]) -> Vec<&str> {
        std::str::from_utf8(script).unwrap().lines().collect()
    }

    #[test]
    fn init_script_uses_only_commands_of_debians_2019_ipxe() {
        for script in all_init_scripts() {
            check_debian_2019_commands_and_labels(&script);
        }
    }

    /// The init script for every `--boot-from-disk-method`.
    fn all_init_scripts() -> Vec<Bytes> {
        [
            BootFromDiskMethod::IpxeExit,
            BootFromDiskMethod::Http404,
            BootFromDiskMethod::IpxeSanboot,
        ]
        .map(|m| init_script(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 50042, m))
        .into()
    }

    #[test]
    fn http_404_init_script_returns_to_the_firmware_when_the_chain_fails() {
        let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let script = init_script(ip, 50042, BootFromDiskMethod::Http404);
        let text = std::str::from_utf8(&script).unwrap();
        let chain = text.lines().find(|l| l.starts_with("chain ")).unwrap();
        assert!(chain.ends_with(" || goto to_disk"), "{chain}");
        let to_disk = text.split(":to_disk\n").nth(1).expect("the to_disk label");
        assert!(to_disk.contains("\nexit 0\n"), "{to_disk}");
        assert!(!to_disk.contains("reboot"), "{to_disk}");
        // A failed DHCP still tries the next NIC.
        assert!(text.contains("dhcp net${idx} || goto next_nic"));
        // The other methods keep trying the other NICs after a failed chain.
        let exit = init_script(ip, 50042, BootFromDiskMethod::IpxeExit);
        assert!(
            std::str::from_utf8(&exit)
                .unwrap()
                .contains("|| goto next_nic\n:next_nic")
        );
    }

    /// Every command of `script` is one of Debian's 2019 iPXE, and every `goto` has its
    /// label (shared with the Omni-mode tests).
    pub(crate) fn check_debian_2019_commands_and_labels(script: &[u8]) {
        let lines = lines(script);
        assert_eq!(lines[0], "#!ipxe");
        let mut labels = Vec::new();
        let mut gotos = Vec::new();
        for line in &lines[1..] {
            if let Some(label) = line.strip_prefix(':') {
                labels.push(label);
                continue;
            }
            for cmd in commands_of(line) {
                assert!(
                    DEBIAN_2019_COMMANDS.contains(&cmd),
                    "{cmd:?} is not a command of Debian's iPXE (line {line:?})"
                );
            }
            let tokens: Vec<&str> = line.split_whitespace().collect();
            for w in tokens.windows(2) {
                if w[0] == "goto" {
                    gotos.push(w[1]);
                }
            }
        }
        for g in gotos {
            assert!(labels.contains(&g), "goto {g} has no label");
        }
    }

    /// Where Debian's `ipxe` package is installed, its EFI binaries hold every command name
    /// as a NUL-terminated string (possibly the tail of a longer one, after the linker's
    /// string merging): a command a script uses must be there. This catches `iflinkwait`
    /// and `poweroff`, which are absent from that build.
    fn assert_commands_in_installed_debian_ipxe(scripts: &[Bytes]) {
        // A missing prerequisite fails the test: tests/install-prereqs.sh installs it.
        let binary = std::fs::read("/usr/lib/ipxe/snponly.efi").expect(
            "/usr/lib/ipxe/snponly.efi is missing: run tests/install-prereqs.sh (apt-get install ipxe)",
        );
        let has = |name: &str| {
            let needle = [name.as_bytes(), b"\0"].concat();
            binary.windows(needle.len()).any(|w| w == needle.as_slice())
        };
        assert!(
            !has("iflinkwait") && !has("poweroff"),
            "the probe itself works"
        );
        for script in scripts {
            for line in lines(script).iter().skip(1).filter(|l| !l.starts_with(':')) {
                for cmd in commands_of(line) {
                    assert!(has(cmd), "{cmd:?} not in Debian's snponly.efi");
                }
            }
        }
    }

    #[test]
    fn init_script_commands_are_in_the_installed_debian_ipxe() {
        assert_commands_in_installed_debian_ipxe(&all_init_scripts());
    }

    fn retry_scripts() -> Vec<Bytes> {
        vec![
            retry_script(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 50042),
            retry_script(IpAddr::V6(Ipv6Addr::LOCALHOST), 8080),
        ]
    }

    #[test]
    fn retry_script_waits_then_chains_back_to_boot_ipxe_with_debian_2019_commands() {
        for script in retry_scripts() {
            check_debian_2019_commands_and_labels(&script);
            check_guards(&script);
        }
        let script = retry_script(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 50042);
        let lines = lines(&script);
        let commands: Vec<&str> = lines
            .iter()
            .filter(|l| !l.starts_with(':'))
            .flat_map(|l| commands_of(l))
            .collect();
        assert_eq!(
            commands,
            [
                "echo", "echo", "sleep", "chain", "goto", "echo", "sleep", "reboot", "exit"
            ]
        );
        assert_eq!(lines[3], format!("sleep {RETRY_DELAY_SECS}"));
        // The same boot.ipxe request as the init script's.
        let init = init_script(
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            50042,
            BootFromDiskMethod::IpxeExit,
        );
        let init_chain = lines_owned(&init)
            .into_iter()
            .find(|l| l.starts_with("chain "))
            .unwrap();
        let url = |l: &str| l.split_whitespace().nth(2).unwrap().to_owned();
        assert_eq!(url(lines[4]), url(&init_chain));
        assert!(lines[4].ends_with(" || goto failed"), "{}", lines[4]);
        let v6 = retry_script(IpAddr::V6(Ipv6Addr::LOCALHOST), 8080);
        assert!(
            std::str::from_utf8(&v6)
                .unwrap()
                .contains("chain --replace http://[::1]:8080/ipxe/boot.ipxe?uuid=${uuid}&")
        );
    }

    fn lines_owned(script: &[u8]) -> Vec<String> {
        lines(script).into_iter().map(str::to_owned).collect()
    }

    #[test]
    fn retry_script_commands_are_in_the_installed_debian_ipxe() {
        assert_commands_in_installed_debian_ipxe(&retry_scripts());
    }

    #[test]
    fn init_script_guards_every_command_that_can_fail() {
        for script in all_init_scripts() {
            check_guards(&script);
        }
    }

    fn check_guards(script: &[u8]) {
        // Commands that cannot fail with these arguments (set/inc of a local setting,
        // echo, sleep, exit, goto of an existing label; iseq/isset only in a guard).
        let safe = ["set", "inc", "echo", "sleep", "exit", "goto"];
        for line in lines(script).iter().skip(1) {
            if line.starts_with(':') || line.starts_with('#') {
                continue;
            }
            let cmds = commands_of(line);
            if cmds.iter().all(|c| safe.contains(c)) {
                continue;
            }
            assert!(line.contains("||"), "unguarded line {line:?}");
        }
    }

    #[test]
    fn init_script_chains_to_boot_ipxe_with_every_identifier() {
        let script = init_script(
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            50042,
            BootFromDiskMethod::IpxeExit,
        );
        let text = std::str::from_utf8(&script).unwrap();
        let chain = text
            .lines()
            .find(|l| l.starts_with("chain "))
            .expect("a chain line");
        assert_eq!(
            chain,
            "chain --replace http://10.0.0.1:50042/ipxe/boot.ipxe?uuid=${uuid}\
             &mac=${net${idx}/mac:hexhyp}&domain=${domain:uristring}\
             &hostname=${hostname:uristring}&serial=${serial:uristring}&arch=${buildarch} \
             || goto next_nic"
        );
        assert!(text.contains("prompt --key 0x02 --timeout 2000 "));
        assert!(text.contains(&format!("iseq ${{round}} {INIT_ROUNDS} || goto round")));
        assert!(text.contains("sleep 5\nreboot ||\n"));
        // Settings with balanced braces: every `${` closes.
        assert_eq!(text.matches("${").count(), text.matches('}').count());
        assert!(text.len() < 1500, "short enough to embed in a binary");
        let v6 = init_script(
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            8080,
            BootFromDiskMethod::IpxeExit,
        );
        assert!(
            std::str::from_utf8(&v6)
                .unwrap()
                .contains("http://[::1]:8080/ipxe/boot.ipxe?")
        );
    }

    #[test]
    fn disk_methods_render_like_the_go_provider() {
        let cases = [
            (
                BootFromDiskMethod::IpxeExit,
                Rendered::Script(Bytes::from_static(b"#!ipxe\nexit\n")),
            ),
            (
                BootFromDiskMethod::IpxeSanboot,
                Rendered::Script(Bytes::from_static(
                    b"#!ipxe\nsanboot --no-describe --drive 0x80\n",
                )),
            ),
        ];
        for (method, want) in cases {
            assert_eq!(render(&BootTarget::Disk, method), want, "{method}");
        }
        assert!(matches!(
            render(&BootTarget::Disk, BootFromDiskMethod::Http404),
            Rendered::NotFound(_)
        ));
        assert_eq!(BootFromDiskMethod::default(), BootFromDiskMethod::IpxeExit);
        for name in BootFromDiskMethod::NAMES {
            assert_eq!(name.parse::<BootFromDiskMethod>().unwrap().as_str(), name);
        }
        let e = "exit".parse::<BootFromDiskMethod>().unwrap_err();
        assert!(e.to_string().contains("ipxe-exit, http-404, ipxe-sanboot"));
    }

    #[test]
    fn kernel_boots_render_one_line_per_image() {
        let k = KernelBoot::new(
            "http://10.0.0.1/vmlinuz",
            &[
                "http://10.0.0.1/initrd.img".into(),
                "http://10.0.0.1/extra.cpio".into(),
            ],
            "  console=ttyS0 talos.config=http://10.0.0.1/config?u=${uuid} ",
        )
        .unwrap();
        assert_eq!(
            std::str::from_utf8(k.bytes()).unwrap(),
            "#!ipxe\nkernel http://10.0.0.1/vmlinuz console=ttyS0 \
             talos.config=http://10.0.0.1/config?u=${uuid}\ninitrd http://10.0.0.1/initrd.img\n\
             initrd http://10.0.0.1/extra.cpio\nboot\n"
        );
        let bare = KernelBoot::new("tftp://10.0.0.1/k", &[], "").unwrap();
        assert_eq!(
            bare.bytes().as_ref(),
            b"#!ipxe\nkernel tftp://10.0.0.1/k\nboot\n"
        );
    }

    #[test]
    fn injection_attempts_are_refused() {
        use KernelField::*;
        use ScriptError::*;
        let ok = "http://h/k";
        let cases: &[(&str, &[&str], &str, KernelField, ScriptError)] = &[
            ("http://h/k\nshell", &[], "", Kernel, ControlChar),
            ("http://h/k shell", &[], "", Kernel, Whitespace),
            ("http://h/k\tshell", &[], "", Kernel, ControlChar),
            ("", &[], "", Kernel, Empty),
            ("http://", &[], "", Kernel, Scheme),
            ("file:///etc/passwd", &[], "", Kernel, Scheme),
            ("vmlinuz", &[], "", Kernel, Scheme),
            (
                ok,
                &["http://h/i\r\nchain http://evil/"],
                "",
                Initrd(0),
                ControlChar,
            ),
            (
                ok,
                &["http://h/i", "http://h/j || shell"],
                "",
                Initrd(1),
                Whitespace,
            ),
            (ok, &[], "quiet\nshell", Cmdline, ControlChar),
            (ok, &[], "quiet\0", Cmdline, ControlChar),
            (ok, &[], "quiet || shell", Cmdline, ShellToken("||".into())),
            (ok, &[], "quiet && shell", Cmdline, ShellToken("&&".into())),
            (ok, &[], "quiet ; shell", Cmdline, ShellToken(";".into())),
            (
                ok,
                &[],
                "quiet #comment",
                Cmdline,
                ShellToken("#comment".into()),
            ),
        ];
        for (kernel, initrds, cmdline, field, err) in cases {
            let initrds: Vec<String> = initrds.iter().map(|s| s.to_string()).collect();
            assert_eq!(
                KernelBoot::new(kernel, &initrds, cmdline),
                Err((*field, err.clone())),
                "{kernel:?} {initrds:?} {cmdline:?}"
            );
        }
        // Tokens merely containing the characters are fine (iPXE only splits on whole tokens).
        assert!(KernelBoot::new(ok, &[], "a=b;c x#y ip=::::eth0:dhcp").is_ok());
    }

    #[test]
    fn settings_chosen_by_dhcp_or_the_machine_are_refused() {
        use KernelField::*;
        use ScriptError::*;
        let ok = "http://h/k";
        // A DHCP host name "x talos.config=http://evil/" would add an argument at boot.
        let refused: &[(&str, &[&str], &str, KernelField, ScriptError)] = &[
            (
                ok,
                &[],
                "hostname=${hostname}",
                Cmdline,
                UnsafeSetting("hostname".into()),
            ),
            (
                ok,
                &[],
                "s=${serial}",
                Cmdline,
                UnsafeSetting("serial".into()),
            ),
            (
                ok,
                &[],
                "d=${net0/domain}",
                Cmdline,
                UnsafeSetting("net0/domain".into()),
            ),
            (
                ok,
                &[],
                "m=${net${idx}/mac}",
                Cmdline,
                UnsafeSetting("idx".into()),
            ),
            (ok, &[], "x=${uuid", Cmdline, UnclosedSetting),
            (
                "http://h/${hostname}/k",
                &[],
                "",
                Kernel,
                UnsafeSetting("hostname".into()),
            ),
            (
                ok,
                &["http://h/${product}.img"],
                "",
                Initrd(0),
                UnsafeSetting("product".into()),
            ),
        ];
        for (kernel, initrds, cmdline, field, err) in refused {
            let initrds: Vec<String> = initrds.iter().map(|s| s.to_string()).collect();
            assert_eq!(
                KernelBoot::new(kernel, &initrds, cmdline),
                Err((*field, err.clone())),
                "{kernel:?} {initrds:?} {cmdline:?}"
            );
        }
        let fixed_formats = "u=${uuid} m=${mac:hexhyp} n=${net1/mac} a=${buildarch} \
                             i=${ip} h=${hostname:uristring} s=${serial:hex}";
        assert!(KernelBoot::new("http://h/${buildarch}/k", &[], fixed_formats).is_ok());
        let message = ScriptError::UnsafeSetting("hostname".into()).to_string();
        assert!(message.contains("${hostname}"), "{message}");
    }

    #[test]
    fn inline_scripts_need_the_signature() {
        for ok in ["#!ipxe\necho hi\n", "#!ipxe", "#!ipxe  \r\nexit\n"] {
            assert_eq!(
                IpxeScript::new(ok).unwrap().bytes().as_ref(),
                ok.as_bytes(),
                "{ok:?}"
            );
        }
        for bad in [
            "",
            "echo hi",
            " #!ipxe\n",
            "#!ipxefoo\n",
            "#!IPXE\n",
            "#!/bin/sh\n",
        ] {
            assert_eq!(
                IpxeScript::new(bad),
                Err(ScriptError::NoSignature),
                "{bad:?}"
            );
        }
    }
}
