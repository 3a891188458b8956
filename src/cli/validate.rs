//! Validation of the command line ([`Cli`]) into the [`Config`] ironboot runs with: each
//! subsystem's settings, built here from the flags. A bad value is refused at start with
//! the flag's name. Every flag is checked in both modes (a bad Omni flag stops a standalone
//! start too, as the Go provider's), then the mode keeps what it uses.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ironboot_net::proxy::Ipv4Subnet;

use crate::boot::config::ServerConfig;
use crate::boot::netif::InterfaceAddr;
use crate::boot::proxy_dhcp::{DhcpInterface, DhcpProxyConfig};
use crate::boot::store::StoreCaps;
use crate::boot::tftp_service::TftpSettings;
use crate::cli::config::{Config, Mode, Standalone};
use crate::cli::flags::Cli;
use crate::provider::agent::client::{AgentSettings, AgentTimeouts};
use crate::provider::boot_plan::{AgentBootSource, boot_asset_names};
use crate::provider::factory_proxy::FactoryProxyMode;
use crate::provider::image_factory::ImageFactorySettings;
use crate::provider::mode::OmniConfig;
use crate::provider::tls::{TlsSettings, UserCerts};

/// Shortest `--tls-cert-ttl` (the Go provider's bound).
const MIN_TLS_CERT_TTL: Duration = Duration::from_secs(5 * 60);

/// A refused configuration value, naming the flag.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("--{flag}: {message}")]
pub(crate) struct ConfigError {
    /// The flag's name without dashes.
    pub(crate) flag: &'static str,
    /// What is wrong and what to do.
    pub(crate) message: String,
}

fn refuse(flag: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        flag,
        message: message.into(),
    }
}

fn parse_ipv4(flag: &'static str, value: &str) -> Result<Ipv4Addr, ConfigError> {
    value
        .parse()
        .map_err(|_| refuse(flag, format!("{value:?} is not an IPv4 address")))
}

impl Config {
    /// Validate `cli` against the host's interface addresses. The flags are checked in
    /// the same order whatever the mode, so the first bad one is the one named.
    pub(crate) fn from_cli(cli: &Cli, interfaces: &[InterfaceAddr]) -> Result<Config, ConfigError> {
        let id = cli.id.trim();
        if id.is_empty()
            || !id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(refuse(
                "id",
                format!(
                    "{:?} must be non-empty lowercase letters, digits and '-'",
                    cli.id
                ),
            ));
        }
        let api_listen_address = match cli.api_listen_address.as_str() {
            "" => None,
            v => Some(parse_ipv4("api-listen-address", v)?),
        };
        if cli.api_port == 0 {
            return Err(refuse("api-port", "must be between 1 and 65535"));
        }
        let advertise_address = match cli.api_advertise_address.as_str() {
            "" => single_routable(interfaces)?,
            v => parse_ipv4("api-advertise-address", v)?,
        };
        let omni_endpoint = match cli.omni_api_endpoint.trim() {
            "" => None,
            v => Some(base_url("omni-api-endpoint", v)?),
        };
        if omni_endpoint.is_none() && cli.tls_enabled {
            return Err(refuse(
                "tls-enabled",
                "the TLS port carries the metal agents' tunnels, which exist only in Omni \
                 mode: set --omni-api-endpoint or drop --tls-enabled",
            ));
        }
        if omni_endpoint.is_some() && cli.inventory.is_some() {
            return Err(refuse(
                "inventory",
                "an inventory gives boot targets in standalone mode only; with \
                 --omni-api-endpoint, Omni decides what each machine boots",
            ));
        }
        let agent_boot = agent_boot_source(cli, omni_endpoint.is_none())?;
        let dhcp_proxy = if cli.disable_dhcp_proxy {
            None
        } else {
            Some(DhcpProxyConfig {
                interface: dhcp_interface(
                    &cli.dhcp_proxy_iface_or_ip,
                    advertise_address,
                    interfaces,
                )?,
                listen_broadcast: !cli.disable_dhcp_proxy_broadcast,
                efi_ia32_boot_file: match cli.efi_ia32_boot_file.trim() {
                    "" => None,
                    f if f.contains(['/', '\0']) || f.contains("..") => {
                        return Err(refuse(
                            "efi-ia32-boot-file",
                            format!("{f:?} must be a plain file name"),
                        ));
                    }
                    f => Some(f.to_owned()),
                },
                relay_allow: relay_allow(&cli.dhcp_relay_allow)?,
            })
        };
        let extra_machine_config =
            existing_file("extra-machine-config-path", &cli.extra_machine_config_path)?;
        let api_power_mgmt_state_dir = match cli.api_power_mgmt_state_dir.trim() {
            "" => None,
            d if Path::new(d).is_dir() => Some(d.into()),
            d => {
                return Err(refuse(
                    "api-power-mgmt-state-dir",
                    format!("{d:?} is not a directory"),
                ));
            }
        };
        let ipxe_ca_cert = existing_file(
            "tls-custom-ipxe-ca-cert-file",
            &cli.tls_custom_ipxe_ca_cert_file,
        )?;
        let tls = tls_settings(cli)?;
        let udp_workers = udp_workers(&cli.udp_workers, available_cores())?;
        let ipxe_dirs = nonempty_paths("ipxe-dir", &cli.ipxe_dir)?;
        let state_dir =
            nonempty_paths("state-dir", std::slice::from_ref(&cli.state_dir))?.remove(0);
        let store = StoreCaps {
            max_machines: in_range(
                "store-max-machines",
                cli.store_max_machines,
                1..=STORE_MAX_MACHINES_LIMIT,
            )?,
            new_per_source: in_range(
                "store-new-machines-per-source",
                cli.store_new_machines_per_source,
                1..=STORE_NEW_PER_SOURCE_LIMIT,
            )?,
        };
        let tftp = tftp_settings(cli)?;
        let bmc = bmc_selection(cli)?;
        let bmc_allow = ironboot_net::cidr::Cidr::parse_list(&cli.bmc_allow_cidr)
            .map_err(|e| refuse("bmc-allow-cidr", e.to_string()))?;
        let agent = AgentSettings {
            timeouts: AgentTimeouts {
                call: positive_duration("agent-call-timeout", &cli.agent_call_timeout)?,
                fast_wipe: positive_duration(
                    "agent-fast-wipe-timeout",
                    &cli.agent_fast_wipe_timeout,
                )?,
                zeroes_wipe: positive_duration(
                    "agent-zeroes-wipe-timeout",
                    &cli.agent_zeroes_wipe_timeout,
                )?,
            },
            wipe_with_zeroes: cli.wipe_with_zeroes,
        };
        let min_reboot_interval = duration("min-reboot-interval", &cli.min_reboot_interval)?;
        let power_poll_interval =
            positive_duration("power-poll-interval", &cli.power_poll_interval)?;
        let machine_labels = machine_labels(&cli.machine_labels)?;
        let image_factory_proxy = match cli.image_factory_proxy.trim() {
            "auto" => FactoryProxyMode::Auto,
            "on" => FactoryProxyMode::On,
            "off" => FactoryProxyMode::Off,
            other => {
                return Err(refuse(
                    "image-factory-proxy",
                    format!("{other:?}: use auto, on or off"),
                ));
            }
        };
        let http = http_limits(cli)?;
        let server = ServerConfig {
            api_listen_address,
            advertise_address,
            api_port: cli.api_port,
            ipxe_ca_cert,
            dhcp_proxy,
            udp_driver: cli.udp_driver,
            udp_workers,
            ipxe_dirs,
            state_dir,
            store,
            boot_from_disk_method: cli.boot_from_disk_method,
            tftp,
            http,
        };
        let mode = match omni_endpoint {
            None => Mode::Standalone(Standalone {
                inventory: cli.inventory.clone(),
                assets: match agent_boot {
                    AgentBootSource::LocalAssets { path } => Some(path),
                    AgentBootSource::ImageFactory(_) => None,
                },
            }),
            Some(endpoint) => Mode::Omni(Box::new(OmniConfig {
                endpoint,
                provider_id: id.to_owned(),
                insecure_skip_tls_verify: cli.insecure_skip_tls_verify,
                provider_name: cli.provider_name.clone(),
                provider_description: cli.provider_description.clone(),
                agent_test_mode: cli.agent_test_mode,
                extra_machine_config,
                api_power_mgmt_state_dir,
                tls,
                bmc,
                bmc_allow,
                agent,
                min_reboot_interval,
                power_poll_interval,
                machine_labels,
                agent_boot,
                image_factory_proxy,
            })),
        };
        Ok(Config { server, mode })
    }
}

/// The HTTP ports' bounds: timeouts of at least a second, caps of at least one, the
/// allowed networks parsed.
fn http_limits(cli: &Cli) -> Result<crate::boot::http::server::Limits, ConfigError> {
    let timeout = |flag: &'static str, value: &str| {
        let d = duration(flag, value)?;
        if d < Duration::from_secs(1) {
            return Err(refuse(flag, format!("{value:?}: must be at least 1s")));
        }
        Ok(d)
    };
    let cap = |flag: &'static str, n: usize| {
        if n == 0 {
            return Err(refuse(flag, "must be at least 1"));
        }
        Ok(n)
    };
    let mut allow = Vec::new();
    for item in cli
        .api_allow_cidr
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
    {
        allow.push(item.parse().map_err(|e| {
            refuse(
                "api-allow-cidr",
                format!("{item:?}: {e} (use CIDRs such as 10.0.0.0/8 or single addresses)"),
            )
        })?);
    }
    Ok(crate::boot::http::server::Limits {
        header_timeout: timeout("http-header-timeout", &cli.http_header_timeout)?,
        idle_timeout: timeout("http-idle-timeout", &cli.http_idle_timeout)?,
        write_timeout: timeout("http-write-timeout", &cli.http_write_timeout)?,
        handshake_timeout: timeout("tls-handshake-timeout", &cli.tls_handshake_timeout)?,
        max_connections: cap("http-max-connections", cli.http_max_connections)?,
        max_per_source: cap(
            "http-max-connections-per-source",
            cli.http_max_connections_per_source,
        )?,
        allow: (!allow.is_empty()).then_some(allow),
    })
}

/// The TLS flags: the port must differ from --api-port; user certificates come as all
/// three files or none, and must exist.
fn tls_settings(cli: &Cli) -> Result<TlsSettings, ConfigError> {
    if cli.tls_enabled && (cli.tls_api_port == 0 || cli.tls_api_port == cli.api_port) {
        return Err(refuse(
            "tls-api-port",
            format!(
                "{}: must be between 1 and 65535 and differ from --api-port",
                cli.tls_api_port
            ),
        ));
    }
    let cert_ttl = duration("tls-cert-ttl", &cli.tls_cert_ttl)?;
    if cert_ttl < MIN_TLS_CERT_TTL {
        return Err(refuse(
            "tls-cert-ttl",
            format!("{:?}: must be at least 5m", cli.tls_cert_ttl),
        ));
    }
    let ca_ttl = positive_duration("tls-ca-ttl", &cli.tls_ca_ttl)?;
    let files = [
        ("tls-ca-cert-file", cli.tls_ca_cert_file.trim()),
        ("tls-cert-file", cli.tls_cert_file.trim()),
        ("tls-key-file", cli.tls_key_file.trim()),
    ];
    let given = files.iter().filter(|(_, v)| !v.is_empty()).count();
    let user_certs = match given {
        0 => None,
        3 => {
            for (flag, path) in files {
                if !Path::new(path).is_file() {
                    return Err(refuse(flag, format!("{path:?} is not a readable file")));
                }
            }
            Some(UserCerts {
                ca_cert: files[0].1.into(),
                cert: files[1].1.into(),
                key: files[2].1.into(),
            })
        }
        _ => {
            let (flag, _) = files
                .iter()
                .find(|(_, v)| v.is_empty())
                .copied()
                .unwrap_or(files[0]);
            return Err(refuse(
                flag,
                "your own TLS certificates need all three of --tls-ca-cert-file, \
                 --tls-cert-file and --tls-key-file",
            ));
        }
    };
    Ok(TlsSettings {
        enabled: cli.tls_enabled,
        port: cli.tls_api_port,
        agent_skip_verify: cli.tls_agent_skip_verify,
        ca_ttl,
        cert_ttl,
        user_certs,
    })
}

/// An optional file flag: empty is `None`; otherwise the file must exist.
fn existing_file(flag: &'static str, value: &str) -> Result<Option<PathBuf>, ConfigError> {
    match value.trim() {
        "" => Ok(None),
        v if Path::new(v).is_file() => Ok(Some(v.into())),
        v => Err(refuse(flag, format!("{v:?} is not a readable file"))),
    }
}

/// A Go duration flag (zero allowed).
fn duration(flag: &'static str, value: &str) -> Result<Duration, ConfigError> {
    crate::cli::go_duration::parse(value.trim()).map_err(|e| refuse(flag, e.to_string()))
}

/// A Go duration flag that must be more than zero (a timeout).
fn positive_duration(flag: &'static str, value: &str) -> Result<Duration, ConfigError> {
    let d = duration(flag, value)?;
    if d.is_zero() {
        return Err(refuse(flag, format!("{value:?}: must be more than zero")));
    }
    Ok(d)
}

/// `--machine-labels` as the Go provider reads it: each item `key=value` or `key` (empty
/// value); a second `=` is refused. A later item with the same key wins, as in Go.
fn machine_labels(items: &[String]) -> Result<BTreeMap<String, String>, ConfigError> {
    const FLAG: &str = "machine-labels";
    let mut labels = BTreeMap::new();
    for item in items {
        let mut parts = item.split('=');
        let key = parts.next().unwrap_or_default();
        let value = parts.next().unwrap_or_default();
        if parts.next().is_some() {
            return Err(refuse(
                FLAG,
                format!("{item:?}: malformed label (use key=value or key; values cannot hold '=')"),
            ));
        }
        if key.is_empty() {
            return Err(refuse(FLAG, format!("{item:?}: a label needs a key")));
        }
        if item.chars().any(char::is_control) {
            return Err(refuse(
                FLAG,
                format!("{item:?}: contains a control character"),
            ));
        }
        labels.insert(key.to_owned(), value.to_owned());
    }
    Ok(labels)
}

/// The agent boot source, with the Go provider's start-up checks: secure boot needs UEFI
/// PXE boots and the factory; in Omni mode local assets must hold one complete
/// architecture, in standalone mode (`standalone`) the asset directory must exist.
fn agent_boot_source(cli: &Cli, standalone: bool) -> Result<AgentBootSource, ConfigError> {
    if cli.secure_boot_enabled {
        if cli.ipmi_pxe_boot_mode.trim() != "uefi" {
            return Err(refuse(
                "secure-boot-enabled",
                "secure boot needs --ipmi-pxe-boot-mode uefi",
            ));
        }
        if cli.use_local_boot_assets {
            return Err(refuse(
                "secure-boot-enabled",
                "local boot assets (--use-local-boot-assets) cannot be used with secure boot",
            ));
        }
    }
    if cli.use_local_boot_assets {
        // Omni mode boots the agent from the assets: one complete architecture must be
        // there. Standalone mode serves whatever the directory holds (the inventory names
        // the files), so the directory must only exist.
        if standalone {
            if !cli.boot_assets_path.is_dir() {
                return Err(refuse(
                    "boot-assets-path",
                    format!(
                        "{} is not a directory (with --use-local-boot-assets ironboot serves \
                         its files on /assets/)",
                        cli.boot_assets_path.display()
                    ),
                ));
            }
        } else {
            check_boot_assets(&cli.boot_assets_path)
                .map_err(|message| refuse("boot-assets-path", message))?;
        }
        return Ok(AgentBootSource::LocalAssets {
            path: cli.boot_assets_path.clone(),
        });
    }
    let version = cli.agent_mode_talos_version.trim();
    if !is_talos_version(version) {
        return Err(refuse(
            "agent-mode-talos-version",
            format!("{version:?} is not a Talos version like v1.13.7"),
        ));
    }
    Ok(AgentBootSource::ImageFactory(ImageFactorySettings {
        base_url: base_url("image-factory-base-url", &cli.image_factory_base_url)?,
        pxe_base_url: base_url(
            "image-factory-pxe-base-url",
            &cli.image_factory_pxe_base_url,
        )?,
        agent_mode_talos_version: version.to_owned(),
        secure_boot: cli.secure_boot_enabled,
    }))
}

/// `vMAJOR.MINOR.PATCH` with an optional `-suffix` of letters, digits, `.` and `-`.
fn is_talos_version(v: &str) -> bool {
    let Some(rest) = v.strip_prefix('v') else {
        return false;
    };
    let (core, suffix) = rest.split_once('-').unwrap_or((rest, ""));
    let numbers: Vec<&str> = core.split('.').collect();
    numbers.len() == 3
        && numbers
            .iter()
            .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        && suffix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        && !(suffix.is_empty() && rest.contains('-'))
}

/// An absolute http(s) URL with a host and no query, returned without a trailing `/`.
fn base_url(flag: &'static str, value: &str) -> Result<String, ConfigError> {
    let value = value.trim();
    let bad = |why: &str| refuse(flag, format!("{value:?}: {why}"));
    let uri: http::Uri = value
        .parse()
        .map_err(|_| bad("not a URL (e.g. https://factory.talos.dev)"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(bad("must be an http:// or https:// URL")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("has no host"));
    }
    if uri.query().is_some() || value.contains('#') {
        return Err(bad("must not have a query or fragment"));
    }
    Ok(value.trim_end_matches('/').to_owned())
}

/// At least one architecture (amd64, arm64) with all three files present, regular and
/// non-empty; incomplete architectures are logged.
fn check_boot_assets(dir: &Path) -> Result<(), String> {
    let mut problems = Vec::new();
    let mut complete = 0;
    for arch in ["amd64", "arm64"] {
        let mut missing = Vec::new();
        for name in boot_asset_names(arch) {
            let path = dir.join(&name);
            match std::fs::metadata(&path) {
                Ok(m) if !m.is_file() => missing.push(format!("{name} is not a regular file")),
                Ok(m) if m.len() == 0 => missing.push(format!("{name} is empty")),
                Ok(_) => {}
                Err(e) => missing.push(format!("{name}: {e}")),
            }
        }
        if missing.is_empty() {
            complete += 1;
        } else {
            tracing::warn!(
                arch,
                dir = %dir.display(),
                problems = %missing.join("; "),
                "boot assets incomplete: machines of this architecture cannot boot the agent"
            );
            problems.extend(missing);
        }
    }
    if complete == 0 {
        return Err(format!(
            "{} has no complete set of boot assets for amd64 or arm64: {}",
            dir.display(),
            problems.join("; ")
        ));
    }
    Ok(())
}

/// The Go provider's BMC selection flags, with ironboot's probe cache bounds.
fn bmc_selection(cli: &Cli) -> Result<ironboot_bmc::SelectorOptions, ConfigError> {
    use ironboot_bmc::BootMode;
    if cli.redfish_port == 0 {
        return Err(refuse("redfish-port", "must be between 1 and 65535"));
    }
    let pxe_boot_mode = match cli.ipmi_pxe_boot_mode.trim() {
        "uefi" => BootMode::Uefi,
        "bios" => BootMode::Bios,
        other => {
            return Err(refuse(
                "ipmi-pxe-boot-mode",
                format!("{other:?} is not a boot mode; use uefi or bios"),
            ));
        }
    };
    Ok(ironboot_bmc::SelectorOptions {
        redfish_use_always: cli.redfish_use_always,
        redfish_use_when_available: cli.redfish_use_when_available,
        redfish_port: cli.redfish_port,
        redfish_use_https: cli.redfish_use_https,
        redfish_insecure_skip_tls_verify: cli.redfish_insecure_skip_tls_verify,
        redfish_set_boot_source_override_mode: cli.redfish_set_boot_source_override_mode,
        pxe_boot_mode,
        ..ironboot_bmc::SelectorOptions::default()
    })
}

/// Largest `--store-max-machines`: the mirror of the store is held in memory.
const STORE_MAX_MACHINES_LIMIT: usize = 10_000_000;
/// Largest `--store-new-machines-per-source`.
const STORE_NEW_PER_SOURCE_LIMIT: u32 = 1_000_000;

/// `value`, or a refusal naming `flag` and the range.
fn in_range<T: PartialOrd + std::fmt::Display + Copy>(
    flag: &'static str,
    value: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<T, ConfigError> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(refuse(
            flag,
            format!(
                "{value}: must be between {} and {}",
                range.start(),
                range.end()
            ),
        ))
    }
}

fn tftp_settings(cli: &Cli) -> Result<TftpSettings, ConfigError> {
    use ironboot_net::tftp::MAX_WINDOWSIZE_LIMIT;
    if !(512..=65464).contains(&cli.tftp_max_blksize) {
        return Err(refuse(
            "tftp-max-blksize",
            "must be between 512 and 65464 (RFC 2348)",
        ));
    }
    if !(1..=MAX_WINDOWSIZE_LIMIT).contains(&cli.tftp_max_windowsize) {
        return Err(refuse(
            "tftp-max-windowsize",
            format!("must be between 1 and {MAX_WINDOWSIZE_LIMIT}"),
        ));
    }
    if cli.tftp_max_transfers == 0 {
        return Err(refuse("tftp-max-transfers", "must be at least 1"));
    }
    if cli.tftp_max_per_client == 0 {
        return Err(refuse("tftp-max-per-client", "must be at least 1"));
    }
    if !cli.tftp_single_port && !(1..=1024).contains(&cli.tftp_port_pool) {
        return Err(refuse("tftp-port-pool", "must be between 1 and 1024"));
    }
    Ok(TftpSettings {
        single_port: cli.tftp_single_port,
        max_blksize: cli.tftp_max_blksize,
        max_windowsize: cli.tftp_max_windowsize,
        max_transfers: cli.tftp_max_transfers,
        max_per_client: cli.tftp_max_per_client,
        port_pool: cli.tftp_port_pool,
    })
}

/// Most `--udp-workers`: far more than the cores of any machine this serves from.
pub(crate) const MAX_UDP_WORKERS: usize = 256;

/// The cores this process may run on (1 when the system cannot say).
fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `--udp-workers`: `auto` or 0 for one worker per core (`cores`, capped), else a count
/// from 1 to [`MAX_UDP_WORKERS`].
fn udp_workers(value: &str, cores: usize) -> Result<usize, ConfigError> {
    let refused = || {
        refuse(
            "udp-workers",
            format!(
                "{value:?} is not a worker count: expected auto, 0 (one per core) or 1 to {MAX_UDP_WORKERS}"
            ),
        )
    };
    let value = value.trim();
    if value == "auto" {
        return Ok(cores.clamp(1, MAX_UDP_WORKERS));
    }
    match value.parse::<usize>() {
        Ok(0) => Ok(cores.clamp(1, MAX_UDP_WORKERS)),
        Ok(n) if n <= MAX_UDP_WORKERS => Ok(n),
        _ => Err(refused()),
    }
}

/// The paths of a path flag, refusing an empty list or an empty path.
fn nonempty_paths(flag: &'static str, paths: &[PathBuf]) -> Result<Vec<PathBuf>, ConfigError> {
    if paths.is_empty() || paths.iter().any(|p| p.as_os_str().is_empty()) {
        return Err(refuse(flag, "must name a directory"));
    }
    Ok(paths.to_vec())
}

/// `--dhcp-relay-allow`: every entry a subnet with no host bits set that can hold a
/// relay's unicast address. Empty entries (a trailing comma) are skipped.
fn relay_allow(values: &[String]) -> Result<Vec<Ipv4Subnet>, ConfigError> {
    values
        .iter()
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.parse::<Ipv4Subnet>()
                .map_err(|e| refuse("dhcp-relay-allow", format!("{v:?}: {e}")))
        })
        .collect()
}

/// The host's single routable IPv4, as the Go provider picks its advertise address.
fn single_routable(interfaces: &[InterfaceAddr]) -> Result<Ipv4Addr, ConfigError> {
    let routable: Vec<&InterfaceAddr> = interfaces.iter().filter(|i| i.is_routable()).collect();
    match routable.as_slice() {
        [one] => Ok(one.addr),
        [] => Err(refuse(
            "api-advertise-address",
            "not set, and this host has no routable IPv4 address to advertise; set it",
        )),
        many => {
            let list: Vec<String> = many
                .iter()
                .map(|i| format!("{} ({})", i.addr, i.name))
                .collect();
            Err(refuse(
                "api-advertise-address",
                format!(
                    "not set, and this host has several routable IPv4 addresses: {}; set it to \
                     the one machines should use",
                    list.join(", ")
                ),
            ))
        }
    }
}

/// The interface named by `--dhcp-proxy-iface-or-ip`, or the one holding the advertise
/// address.
fn dhcp_interface(
    value: &str,
    advertise: Ipv4Addr,
    interfaces: &[InterfaceAddr],
) -> Result<DhcpInterface, ConfigError> {
    const FLAG: &str = "dhcp-proxy-iface-or-ip";
    let found = match value.trim() {
        "" => interfaces
            .iter()
            .find(|i| i.addr == advertise)
            .ok_or_else(|| {
                refuse(
                    FLAG,
                    format!(
                        "not set, and no interface holds the advertise address {advertise}; name \
                     the interface to serve ProxyDHCP on"
                    ),
                )
            })?,
        v => match v.parse::<Ipv4Addr>() {
            Ok(ip) => interfaces
                .iter()
                .find(|i| i.addr == ip)
                .ok_or_else(|| refuse(FLAG, format!("no interface holds the address {ip}")))?,
            Err(_) => interfaces.iter().find(|i| i.name == v).ok_or_else(|| {
                refuse(
                    FLAG,
                    format!("no interface named {v:?} with an IPv4 address"),
                )
            })?,
        },
    };
    Ok(DhcpInterface {
        name: found.name.clone(),
        index: found.index,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::boot_script::BootFromDiskMethod;
    use clap::Parser;
    use ironboot_net::udp::DriverKind;

    /// Omni mode's settings from `args` and an Omni endpoint.
    fn omni(args: &[&str]) -> Box<OmniConfig> {
        let mut all = vec!["--omni-api-endpoint", "https://omni.example"];
        all.extend_from_slice(args);
        match Config::from_cli(&cli(&all), &host()).unwrap().mode {
            Mode::Omni(omni) => omni,
            Mode::Standalone(s) => panic!("standalone: {s:?}"),
        }
    }

    /// The directory standalone mode serves on `/assets/`, if any.
    fn standalone_assets(c: &Config) -> Option<&Path> {
        match &c.mode {
            Mode::Standalone(s) => s.assets.as_deref(),
            Mode::Omni(_) => None,
        }
    }

    fn iface(name: &str, index: u32, addr: [u8; 4], loopback: bool) -> InterfaceAddr {
        InterfaceAddr {
            name: name.into(),
            index,
            addr: Ipv4Addr::from(addr),
            loopback,
            up: true,
        }
    }

    fn host() -> Vec<InterfaceAddr> {
        vec![
            iface("lo", 1, [127, 0, 0, 1], true),
            iface("eth0", 2, [10, 98, 0, 3], false),
            iface("eth1", 3, [169, 254, 1, 1], false),
        ]
    }

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("ironboot").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn defaults_match_the_go_provider_and_pick_the_single_routable_address() {
        let c = Config::from_cli(&cli(&[]), &host()).unwrap();
        assert_eq!(c.server.api_port, 50042);
        assert_eq!(c.server.advertise_address, Ipv4Addr::new(10, 98, 0, 3));
        assert_eq!(c.server.api_listen_address, None);
        assert_eq!(c.mode, Mode::Standalone(Standalone::default()));
        assert_eq!(c.server.udp_driver, DriverKind::Auto);
        assert_eq!(c.server.udp_workers, 1, "one worker unless asked");
        assert_eq!(
            (c.server.store.max_machines, c.server.store.new_per_source),
            (100_000, 16)
        );
        let dhcp = c.server.dhcp_proxy.unwrap();
        assert_eq!(
            dhcp.interface,
            DhcpInterface {
                name: "eth0".into(),
                index: 2
            }
        );
        assert!(dhcp.listen_broadcast);
        assert_eq!(dhcp.efi_ia32_boot_file, None);
        assert_eq!(
            c.server.ipxe_dirs,
            [PathBuf::from("/usr/lib/ipxe"), PathBuf::from("/boot")]
        );
        assert_eq!(c.server.state_dir, PathBuf::from("/var/lib/ironboot"));
        assert_eq!(c.server.boot_from_disk_method, BootFromDiskMethod::IpxeExit);
        assert_eq!(
            c.server.tftp,
            TftpSettings {
                single_port: false,
                max_blksize: 1468,
                max_windowsize: 64,
                max_transfers: 8192,
                max_per_client: 8,
                port_pool: 32,
            }
        );
    }

    #[test]
    fn several_routable_addresses_are_refused_naming_the_flag_and_the_candidates() {
        let mut h = host();
        h.push(iface("eth2", 4, [192, 168, 1, 5], false));
        let e = Config::from_cli(&cli(&[]), &h).unwrap_err();
        assert_eq!(e.flag, "api-advertise-address");
        assert!(e.message.contains("10.98.0.3 (eth0)") && e.message.contains("192.168.1.5 (eth2)"));
        assert!(e.to_string().starts_with("--api-advertise-address: "));
        // Naming it resolves the ambiguity.
        let c = Config::from_cli(&cli(&["--api-advertise-address", "192.168.1.5"]), &h).unwrap();
        assert_eq!(c.server.dhcp_proxy.unwrap().interface.name, "eth2");
    }

    #[test]
    fn no_routable_address_is_refused() {
        let h = vec![iface("lo", 1, [127, 0, 0, 1], true)];
        let e = Config::from_cli(&cli(&[]), &h).unwrap_err();
        assert_eq!(e.flag, "api-advertise-address");
    }

    #[test]
    fn dhcp_relay_allow_takes_subnets_and_refuses_bad_ones_naming_the_flag() {
        let c = Config::from_cli(&cli(&[]), &host()).unwrap();
        assert_eq!(
            c.server.dhcp_proxy.unwrap().relay_allow,
            [],
            "empty: any unicast relay"
        );
        let c = Config::from_cli(
            &cli(&["--dhcp-relay-allow", "10.20.0.0/24,192.0.2.8/31,"]),
            &host(),
        )
        .unwrap();
        let allowed: Vec<String> = c
            .server
            .dhcp_proxy
            .unwrap()
            .relay_allow
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(allowed, ["10.20.0.0/24", "192.0.2.8/31"]);
        let twice = Config::from_cli(
            &cli(&[
                "--dhcp-relay-allow",
                "10.20.0.0/24",
                "--dhcp-relay-allow=10.30.0.0/16",
            ]),
            &host(),
        )
        .unwrap();
        assert_eq!(twice.server.dhcp_proxy.unwrap().relay_allow.len(), 2);
        for bad in [
            "10.20.0.1/24",
            "10.20.0.0",
            "10.20.0.0/33",
            "224.0.0.0/4",
            "eth0",
        ] {
            let e = Config::from_cli(&cli(&["--dhcp-relay-allow", bad]), &host()).unwrap_err();
            assert_eq!(e.flag, "dhcp-relay-allow", "{bad}");
            assert!(e.message.contains(bad), "{bad}: {}", e.message);
        }
    }

    #[test]
    fn dhcp_interface_by_name_or_by_address() {
        let by_name =
            Config::from_cli(&cli(&["--dhcp-proxy-iface-or-ip", "eth1"]), &host()).unwrap();
        assert_eq!(by_name.server.dhcp_proxy.unwrap().interface.index, 3);
        let by_ip =
            Config::from_cli(&cli(&["--dhcp-proxy-iface-or-ip", "169.254.1.1"]), &host()).unwrap();
        assert_eq!(by_ip.server.dhcp_proxy.unwrap().interface.name, "eth1");
        for bad in ["eth9", "10.0.0.1"] {
            let e =
                Config::from_cli(&cli(&["--dhcp-proxy-iface-or-ip", bad]), &host()).unwrap_err();
            assert_eq!(e.flag, "dhcp-proxy-iface-or-ip", "{bad}");
        }
    }

    #[test]
    fn bad_values_are_refused_with_the_flag_name() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["--api-advertise-address", "example.com"],
                "api-advertise-address",
            ),
            (&["--api-listen-address", "::1"], "api-listen-address"),
            (&["--api-port", "0"], "api-port"),
            (&["--id", ""], "id"),
            (&["--id", "Bare Metal"], "id"),
            (&["--efi-ia32-boot-file", "../x.efi"], "efi-ia32-boot-file"),
            (
                &["--omni-api-endpoint", "omni.example"],
                "omni-api-endpoint",
            ),
            (
                &["--omni-api-endpoint", "grpc://omni.example"],
                "omni-api-endpoint",
            ),
            (
                &[
                    "--omni-api-endpoint",
                    "http://omni.example",
                    "--tls-enabled",
                    "--tls-api-port",
                    "50042",
                ],
                "tls-api-port",
            ),
            (&["--tls-enabled"], "tls-enabled"),
            (&["--bmc-allow-cidr", "10.0.0.0/33"], "bmc-allow-cidr"),
            (&["--bmc-allow-cidr", "10.0.0.0/8,rack"], "bmc-allow-cidr"),
            (&["--tls-cert-ttl", "1m"], "tls-cert-ttl"),
            (&["--image-factory-proxy", "yes"], "image-factory-proxy"),
            (
                &["--extra-machine-config-path", "/nonexistent.yaml"],
                "extra-machine-config-path",
            ),
            (
                &["--api-power-mgmt-state-dir", "/nonexistent"],
                "api-power-mgmt-state-dir",
            ),
            (
                &["--tls-custom-ipxe-ca-cert-file", "/nonexistent.pem"],
                "tls-custom-ipxe-ca-cert-file",
            ),
            (&["--tls-ca-ttl", "0s"], "tls-ca-ttl"),
            (&["--store-max-machines", "0"], "store-max-machines"),
            (&["--store-max-machines", "10000001"], "store-max-machines"),
            (
                &["--store-new-machines-per-source", "0"],
                "store-new-machines-per-source",
            ),
            (&["--tls-cert-file", "cert.pem"], "tls-ca-cert-file"),
            (
                &[
                    "--tls-ca-cert-file",
                    "/nonexistent/ca.pem",
                    "--tls-cert-file",
                    "/nonexistent/c.pem",
                    "--tls-key-file",
                    "/nonexistent/k.pem",
                ],
                "tls-ca-cert-file",
            ),
        ];
        for (args, flag) in cases {
            let e = Config::from_cli(&cli(args), &host()).unwrap_err();
            assert_eq!(e.flag, *flag, "{args:?}");
        }
    }

    #[test]
    fn http_limits_have_safe_defaults_and_bad_values_name_the_flag() {
        let c = Config::from_cli(&cli(&[]), &host()).unwrap();
        assert_eq!(c.server.http, crate::boot::http::server::Limits::default());
        assert_eq!(c.server.http.header_timeout, Duration::from_secs(10));
        assert_eq!(c.server.http.max_per_source, 64);
        assert_eq!(c.server.http.allow, None);
        let c = Config::from_cli(
            &cli(&[
                "--http-header-timeout",
                "2s",
                "--http-idle-timeout",
                "1m30s",
                "--http-max-connections-per-source",
                "8",
                "--api-allow-cidr",
                "10.0.0.0/8, 192.0.2.7",
                "--api-allow-cidr",
                "fd00::/8",
            ]),
            &host(),
        )
        .unwrap();
        assert_eq!(c.server.http.header_timeout, Duration::from_secs(2));
        assert_eq!(c.server.http.idle_timeout, Duration::from_secs(90));
        assert_eq!(c.server.http.max_per_source, 8);
        let allow = c.server.http.allow.unwrap();
        assert_eq!(allow.len(), 3);
        assert!(allow[1].contains("192.0.2.7".parse().unwrap()));
        let cases: &[(&[&str], &str)] = &[
            (&["--http-header-timeout", "500ms"], "http-header-timeout"),
            (&["--http-idle-timeout", "0s"], "http-idle-timeout"),
            (&["--http-write-timeout", "soon"], "http-write-timeout"),
            (&["--tls-handshake-timeout", "-1s"], "tls-handshake-timeout"),
            (&["--http-max-connections", "0"], "http-max-connections"),
            (
                &["--http-max-connections-per-source", "0"],
                "http-max-connections-per-source",
            ),
            (&["--api-allow-cidr", "10.0.0.0/40"], "api-allow-cidr"),
            (&["--api-allow-cidr", "lan"], "api-allow-cidr"),
        ];
        for (args, flag) in cases {
            let e = Config::from_cli(&cli(args), &host()).unwrap_err();
            assert_eq!(e.flag, *flag, "{args:?}");
        }
    }

    #[test]
    fn udp_workers_default_to_one_per_core_and_refuse_bad_counts_naming_the_flag() {
        assert_eq!(udp_workers("auto", 6), Ok(6));
        assert_eq!(udp_workers("0", 6), Ok(6));
        assert_eq!(udp_workers("auto", 1000), Ok(MAX_UDP_WORKERS));
        assert_eq!(udp_workers("1", 6), Ok(1));
        assert_eq!(udp_workers("12", 2), Ok(12));
        assert_eq!(udp_workers("256", 2), Ok(256));
        for bad in ["257", "-1", "two", "", "1.5", "auto2"] {
            let e = udp_workers(bad, 2).unwrap_err();
            assert_eq!(e.flag, "udp-workers", "{bad:?}");
            assert!(e.to_string().starts_with("--udp-workers: "), "{e}");
            assert!(e.message.contains(&format!("{bad:?}")), "{e}");
        }
        let c = Config::from_cli(&cli(&["--udp-workers", "1"]), &host()).unwrap();
        assert_eq!(c.server.udp_workers, 1);
        let c = Config::from_cli(&cli(&["--udp-workers", "0"]), &host()).unwrap();
        assert_eq!(c.server.udp_workers, available_cores());
        let e = Config::from_cli(&cli(&["--udp-workers", "many"]), &host()).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "--udp-workers: \"many\" is not a worker count: expected auto, 0 (one per core) or 1 to {MAX_UDP_WORKERS}"
            )
        );
    }

    #[test]
    fn bmc_selection_flags_have_upstreams_names_and_defaults() {
        let c = omni(&[]);
        assert_eq!(c.bmc, ironboot_bmc::SelectorOptions::default());
        assert!(!c.bmc.redfish_use_always && c.bmc.redfish_use_when_available);
        assert_eq!(c.bmc.redfish_port, 443);
        assert!(c.bmc.redfish_use_https && c.bmc.redfish_insecure_skip_tls_verify);
        assert!(c.bmc.redfish_set_boot_source_override_mode);
        assert_eq!(c.bmc.pxe_boot_mode, ironboot_bmc::BootMode::Uefi);

        let c = omni(&[
            "--redfish-use-always",
            "--redfish-use-when-available=false",
            "--redfish-port",
            "8443",
            "--redfish-use-https=false",
            "--redfish-insecure-skip-tls-verify=false",
            "--redfish-set-boot-source-override-mode=false",
            "--ipmi-pxe-boot-mode",
            "bios",
        ]);
        assert!(c.bmc.redfish_use_always && !c.bmc.redfish_use_when_available);
        assert_eq!(c.bmc.redfish_port, 8443);
        assert!(!c.bmc.redfish_use_https && !c.bmc.redfish_insecure_skip_tls_verify);
        assert!(!c.bmc.redfish_set_boot_source_override_mode);
        assert_eq!(c.bmc.pxe_boot_mode, ironboot_bmc::BootMode::Bios);
    }

    #[test]
    fn bad_bmc_selection_values_name_the_flag() {
        for (args, flag) in [
            (vec!["--ipmi-pxe-boot-mode", "efi"], "ipmi-pxe-boot-mode"),
            (vec!["--ipmi-pxe-boot-mode", ""], "ipmi-pxe-boot-mode"),
            (vec!["--redfish-port", "0"], "redfish-port"),
        ] {
            let e = Config::from_cli(&cli(&args), &host()).unwrap_err();
            assert_eq!(e.flag, flag, "{args:?}");
            assert!(e.to_string().starts_with(&format!("--{flag}: ")), "{e}");
        }
        for (args, flag) in [
            (vec!["--redfish-port", "65536"], "--redfish-port"),
            (vec!["--redfish-use-https=maybe"], "--redfish-use-https"),
            (vec!["--redfish-use-always=yes"], "--redfish-use-always"),
        ] {
            let e =
                Cli::try_parse_from(std::iter::once("ironboot").chain(args.clone())).unwrap_err();
            assert!(e.to_string().contains(flag), "{args:?}: {e}");
        }
    }

    #[test]
    fn agent_and_lifecycle_flags_have_upstreams_defaults() {
        let c = omni(&[]);
        assert_eq!(c.provider_id, "bare-metal");
        assert_eq!(c.endpoint, "https://omni.example");
        assert_eq!(
            c.agent,
            AgentSettings {
                timeouts: AgentTimeouts {
                    call: Duration::from_secs(30),
                    fast_wipe: Duration::from_secs(5 * 60),
                    zeroes_wipe: Duration::from_secs(24 * 3600),
                },
                wipe_with_zeroes: false,
            }
        );
        assert_eq!(c.min_reboot_interval, Duration::from_secs(15 * 60));
        assert!(c.machine_labels.is_empty());
        assert_eq!(
            c.agent_boot,
            AgentBootSource::ImageFactory(ImageFactorySettings {
                base_url: "https://factory.talos.dev".into(),
                pxe_base_url: "https://pxe.factory.talos.dev".into(),
                agent_mode_talos_version: "v1.13.7".into(),
                secure_boot: false,
            })
        );
        let parsed = cli(&[]);
        assert_eq!(parsed.boot_assets_path, PathBuf::from("/assets"));
        assert!(!parsed.use_local_boot_assets);
    }

    #[test]
    fn agent_and_lifecycle_flags_parse_go_values() {
        let c = omni(&[
            "--agent-call-timeout",
            "1m30s",
            "--agent-fast-wipe-timeout=10m",
            "--agent-zeroes-wipe-timeout",
            "48h",
            "--wipe-with-zeroes",
            "--min-reboot-interval",
            "0",
            "--machine-labels",
            "rack=a1,gpu,zone=",
            "--machine-labels=site=par,rack=a2",
            "--image-factory-base-url",
            "http://10.0.0.9:8080/",
            "--image-factory-pxe-base-url=http://10.0.0.9:8081/prefix",
            "--agent-mode-talos-version",
            "v1.10.0-beta.1",
            "--secure-boot-enabled=true",
        ]);
        assert_eq!(c.agent.timeouts.call, Duration::from_secs(90));
        assert_eq!(c.agent.timeouts.fast_wipe, Duration::from_secs(600));
        assert_eq!(c.agent.timeouts.zeroes_wipe, Duration::from_secs(48 * 3600));
        assert!(c.agent.wipe_with_zeroes);
        assert_eq!(c.min_reboot_interval, Duration::ZERO);
        let labels: Vec<(&str, &str)> = c
            .machine_labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        // A later value of the same key wins, as in Go's map.
        assert_eq!(
            labels,
            [("gpu", ""), ("rack", "a2"), ("site", "par"), ("zone", "")]
        );
        assert_eq!(
            c.agent_boot,
            AgentBootSource::ImageFactory(ImageFactorySettings {
                base_url: "http://10.0.0.9:8080".into(),
                pxe_base_url: "http://10.0.0.9:8081/prefix".into(),
                agent_mode_talos_version: "v1.10.0-beta.1".into(),
                secure_boot: true,
            })
        );
    }

    #[test]
    fn bad_agent_and_factory_values_are_refused_with_the_flag_name() {
        let cases: &[(&[&str], &str)] = &[
            (&["--agent-call-timeout", "30"], "agent-call-timeout"),
            (&["--agent-call-timeout", "0s"], "agent-call-timeout"),
            (&["--agent-call-timeout", "-5s"], "agent-call-timeout"),
            (
                &["--agent-fast-wipe-timeout", "5 m"],
                "agent-fast-wipe-timeout",
            ),
            (
                &["--agent-zeroes-wipe-timeout", "1d"],
                "agent-zeroes-wipe-timeout",
            ),
            (&["--min-reboot-interval", "15"], "min-reboot-interval"),
            (&["--min-reboot-interval", "-1m"], "min-reboot-interval"),
            (&["--machine-labels", "a=b=c"], "machine-labels"),
            (&["--machine-labels", "=v"], "machine-labels"),
            (
                &["--image-factory-base-url", "factory.example"],
                "image-factory-base-url",
            ),
            (
                &["--image-factory-base-url", "ftp://10.0.0.1"],
                "image-factory-base-url",
            ),
            (
                &["--image-factory-pxe-base-url", "http://10.0.0.1/?a=b"],
                "image-factory-pxe-base-url",
            ),
            (
                &["--agent-mode-talos-version", "1.13.7"],
                "agent-mode-talos-version",
            ),
            (
                &["--agent-mode-talos-version", "v1.13"],
                "agent-mode-talos-version",
            ),
            (
                &["--agent-mode-talos-version", "v1.13.7 || shell"],
                "agent-mode-talos-version",
            ),
            (
                &["--secure-boot-enabled", "--ipmi-pxe-boot-mode", "bios"],
                "secure-boot-enabled",
            ),
            (
                &["--secure-boot-enabled", "--use-local-boot-assets"],
                "secure-boot-enabled",
            ),
        ];
        for (args, flag) in cases {
            let e = Config::from_cli(&cli(args), &host()).unwrap_err();
            assert_eq!(e.flag, *flag, "{args:?}: {e}");
            assert!(e.to_string().starts_with(&format!("--{flag}: ")), "{e}");
        }
        let e = Config::from_cli(&cli(&["--agent-call-timeout", "1d"]), &host()).unwrap_err();
        assert!(e.message.contains("unknown unit \"d\""), "{e}");
    }

    #[test]
    fn local_boot_assets_need_one_complete_architecture_in_omni_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_str().unwrap().to_owned();
        let with_assets = |extra: &[&str]| {
            let mut args = vec![
                "--omni-api-endpoint",
                "https://omni.example",
                "--use-local-boot-assets",
                "--boot-assets-path",
                path.as_str(),
            ];
            args.extend_from_slice(extra);
            Config::from_cli(&cli(&args), &host())
        };
        // Empty directory: refused, naming what is missing.
        let e = with_assets(&[]).unwrap_err();
        assert_eq!(e.flag, "boot-assets-path");
        assert!(
            e.message.contains("kernel-amd64") && e.message.contains("kernel-arm64"),
            "{e}"
        );
        // arm64 almost complete: an empty initramfs does not count.
        std::fs::write(dir.path().join("kernel-arm64"), b"k").unwrap();
        std::fs::write(dir.path().join("initramfs-metal-arm64.xz"), b"").unwrap();
        std::fs::write(
            dir.path().join("cmdline-metal-arm64"),
            b"talos.platform=metal",
        )
        .unwrap();
        let e = with_assets(&[]).unwrap_err();
        assert!(
            e.message.contains("initramfs-metal-arm64.xz is empty"),
            "{e}"
        );
        std::fs::write(dir.path().join("initramfs-metal-arm64.xz"), b"i").unwrap();
        let c = with_assets(&[]).unwrap();
        let Mode::Omni(omni_config) = &c.mode else {
            panic!("standalone")
        };
        assert_eq!(
            omni_config.agent_boot,
            AgentBootSource::LocalAssets {
                path: dir.path().to_owned()
            }
        );
        // A directory where a file should be is not an asset.
        std::fs::remove_file(dir.path().join("kernel-arm64")).unwrap();
        std::fs::create_dir(dir.path().join("kernel-arm64")).unwrap();
        let e = with_assets(&[]).unwrap_err();
        assert!(
            e.message.contains("kernel-arm64 is not a regular file"),
            "{e}"
        );
        assert_eq!(
            standalone_assets(&c),
            None,
            "Omni mode serves its allowlist only"
        );
        // Without --use-local-boot-assets the directory is not looked at.
        let c = omni(&["--boot-assets-path", "/nonexistent"]);
        assert!(matches!(c.agent_boot, AgentBootSource::ImageFactory(_)));
        let c = Config::from_cli(&cli(&["--boot-assets-path", "/nonexistent"]), &host()).unwrap();
        assert_eq!(standalone_assets(&c), None);
    }

    /// Standalone mode serves any directory's files: no agent files are needed, but the
    /// directory must exist, and a missing one or a file is refused naming the flag.
    #[test]
    fn standalone_local_boot_assets_need_only_an_existing_directory() {
        let dir = tempfile::tempdir().unwrap();
        let standalone = |path: &Path| {
            let path = path.to_str().unwrap();
            Config::from_cli(
                &cli(&["--use-local-boot-assets", "--boot-assets-path", path]),
                &host(),
            )
        };
        let c = standalone(dir.path()).unwrap();
        assert_eq!(standalone_assets(&c), Some(dir.path()));
        let missing = dir.path().join("missing");
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"x").unwrap();
        for path in [&missing, &file] {
            let e = standalone(path).unwrap_err();
            assert_eq!(e.flag, "boot-assets-path", "{e}");
            assert!(e.message.contains("is not a directory"), "{e}");
            assert!(e.to_string().starts_with("--boot-assets-path: "), "{e}");
        }
        // The Omni-mode check of the agent's files does not apply: the empty directory
        // above was accepted; in Omni mode it is refused.
        let path = dir.path().to_str().unwrap();
        let e = Config::from_cli(
            &cli(&[
                "--omni-api-endpoint",
                "https://omni.example",
                "--use-local-boot-assets",
                "--boot-assets-path",
                path,
            ]),
            &host(),
        )
        .unwrap_err();
        assert!(e.message.contains("kernel-amd64"), "{e}");
    }

    #[test]
    fn go_style_boolean_flags_are_accepted() {
        let c = cli(&[
            "--debug",
            "--disable-dhcp-proxy-broadcast=true",
            "--disable-dhcp-proxy=false",
        ]);
        assert!(c.debug && c.disable_dhcp_proxy_broadcast && !c.disable_dhcp_proxy);
        let cfg = Config::from_cli(&c, &host()).unwrap();
        assert!(!cfg.server.dhcp_proxy.unwrap().listen_broadcast);
        let off = Config::from_cli(&cli(&["--disable-dhcp-proxy"]), &host()).unwrap();
        assert_eq!(off.server.dhcp_proxy, None);
    }
}
