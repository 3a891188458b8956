//! Choosing the back end for one machine's BMC, as the Go provider's
//! `bmc.ClientFactory.GetClient` does, with its flags and defaults:
//!
//! 1. an HTTP power API address (`BMCConfiguration.api`) → [`Backend::Api`];
//! 2. else, for an IPMI address: Redfish if `--redfish-use-always`, or if
//!    `--redfish-use-when-available` and a Redfish probe of the same host (on
//!    `--redfish-port`, `--redfish-use-https`, with the IPMI user name and password)
//!    succeeds → [`Backend::Redfish`];
//! 3. else [`Backend::Ipmi`].
//!
//! Unlike upstream, which remembers a probe's answer for the life of the process, the
//! answer is cached per BMC host for [`DEFAULT_PROBE_TTL_OK`] when Redfish answered and
//! [`DEFAULT_PROBE_TTL_FAILED`] when it did not: a BMC whose Redfish service was down
//! for a moment (firmware update, BMC reboot) is probed again soon, and one whose
//! firmware lost Redfish is noticed within minutes.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, info};

use crate::http_api::{HttpApiClient, HttpApiConfigError};
use crate::ipmi::{IpmiClient, IpmiConfig, IpmiConfigError};
use crate::redfish::{self, RedfishClient, RedfishConfig, RedfishConfigError};
use crate::{BmcError, BootMode, PowerControl, PowerState};

/// Upstream's `--redfish-port` default.
pub const DEFAULT_REDFISH_PORT: u16 = 443;
/// How long a successful Redfish probe is believed (upstream: forever).
pub const DEFAULT_PROBE_TTL_OK: Duration = Duration::from_secs(10 * 60);
/// How long a failed Redfish probe is believed before the BMC is probed again.
pub const DEFAULT_PROBE_TTL_FAILED: Duration = Duration::from_secs(60);
/// Bound of one Redfish probe (upstream uses its 10 s Redfish operation bound).
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Cached probe answers kept at most (expired ones are dropped first).
const PROBE_CACHE_MAX: usize = 65_536;

/// The selection settings: upstream's `--redfish-*` and `--ipmi-pxe-boot-mode` flags
/// plus ironboot's probe cache bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectorOptions {
    /// `--redfish-use-always`: Redfish for every IPMI-configured BMC, without a probe.
    pub redfish_use_always: bool,
    /// `--redfish-use-when-available`: probe Redfish and use it when it answers.
    pub redfish_use_when_available: bool,
    /// `--redfish-port`.
    pub redfish_port: u16,
    /// `--redfish-use-https`.
    pub redfish_use_https: bool,
    /// `--redfish-insecure-skip-tls-verify`.
    pub redfish_insecure_skip_tls_verify: bool,
    /// `--redfish-set-boot-source-override-mode`.
    pub redfish_set_boot_source_override_mode: bool,
    /// `--ipmi-pxe-boot-mode`: the firmware mode of PXE-once overrides (IPMI and
    /// Redfish alike, as upstream).
    pub pxe_boot_mode: BootMode,
    /// Bound of one Redfish probe.
    pub probe_timeout: Duration,
    /// How long a successful probe is cached per BMC host.
    pub probe_ttl_ok: Duration,
    /// How long a failed probe is cached per BMC host.
    pub probe_ttl_failed: Duration,
    /// Bound of each operation of the chosen back end; `None`: each back end's default
    /// (IPMI 20 s, Redfish 10 s per request, HTTP power API 5 s).
    pub operation_timeout: Option<Duration>,
}

impl Default for SelectorOptions {
    /// Upstream's defaults.
    fn default() -> Self {
        SelectorOptions {
            redfish_use_always: false,
            redfish_use_when_available: true,
            redfish_port: DEFAULT_REDFISH_PORT,
            redfish_use_https: true,
            redfish_insecure_skip_tls_verify: true,
            redfish_set_boot_source_override_mode: true,
            pxe_boot_mode: BootMode::Uefi,
            probe_timeout: DEFAULT_PROBE_TIMEOUT,
            probe_ttl_ok: DEFAULT_PROBE_TTL_OK,
            probe_ttl_failed: DEFAULT_PROBE_TTL_FAILED,
            operation_timeout: None,
        }
    }
}

/// IPMI-over-LAN credentials of a BMC, as Omni's `BMCConfiguration.ipmi` carries them.
/// `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct IpmiInfo {
    /// Host name or IP address of the BMC (Redfish uses the same host).
    pub address: String,
    /// IPMI UDP port (0 means the default, 623).
    pub port: u16,
    /// User name (also used for Redfish).
    pub username: String,
    /// Password (also used for Redfish).
    pub password: String,
}

impl fmt::Debug for IpmiInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IpmiInfo")
            .field("address", &self.address)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// What is known about one machine's power control.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BmcInfo {
    /// A BMC reached with IPMI credentials (maybe driven over Redfish).
    Ipmi(IpmiInfo),
    /// The Go provider's HTTP power API (`host:port`), for emulated machines.
    Api {
        /// `host:port` of the power API.
        address: String,
    },
}

/// Which protocol a [`Backend`] speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// IPMI v2.0 RMCP+.
    Ipmi,
    /// Redfish.
    Redfish,
    /// The HTTP power API.
    Api,
}

impl BackendKind {
    /// `ipmi`, `redfish` or `api`.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Ipmi => "ipmi",
            BackendKind::Redfish => "redfish",
            BackendKind::Api => "api",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One BMC's chosen back end.
#[derive(Debug)]
pub enum Backend {
    /// IPMI v2.0 RMCP+.
    Ipmi(IpmiClient),
    /// Redfish (boxed: the client is several times larger than the others).
    Redfish(Box<RedfishClient>),
    /// The HTTP power API.
    Api(HttpApiClient),
}

impl Backend {
    /// The protocol spoken.
    pub fn kind(&self) -> BackendKind {
        match self {
            Backend::Ipmi(_) => BackendKind::Ipmi,
            Backend::Redfish(_) => BackendKind::Redfish,
            Backend::Api(_) => BackendKind::Api,
        }
    }
}

impl PowerControl for Backend {
    fn address(&self) -> &str {
        match self {
            Backend::Ipmi(b) => b.address(),
            Backend::Redfish(b) => b.address(),
            Backend::Api(b) => b.address(),
        }
    }

    async fn power_status(&self) -> Result<PowerState, BmcError> {
        match self {
            Backend::Ipmi(b) => b.power_status().await,
            Backend::Redfish(b) => b.power_status().await,
            Backend::Api(b) => b.power_status().await,
        }
    }

    async fn power_on(&self) -> Result<(), BmcError> {
        match self {
            Backend::Ipmi(b) => b.power_on().await,
            Backend::Redfish(b) => b.power_on().await,
            Backend::Api(b) => b.power_on().await,
        }
    }

    async fn power_off(&self) -> Result<(), BmcError> {
        match self {
            Backend::Ipmi(b) => b.power_off().await,
            Backend::Redfish(b) => b.power_off().await,
            Backend::Api(b) => b.power_off().await,
        }
    }

    async fn power_cycle(&self) -> Result<(), BmcError> {
        match self {
            Backend::Ipmi(b) => b.power_cycle().await,
            Backend::Redfish(b) => b.power_cycle().await,
            Backend::Api(b) => b.power_cycle().await,
        }
    }

    async fn pxe_boot_once(&self, mode: BootMode) -> Result<(), BmcError> {
        match self {
            Backend::Ipmi(b) => b.pxe_boot_once(mode).await,
            Backend::Redfish(b) => b.pxe_boot_once(mode).await,
            Backend::Api(b) => b.pxe_boot_once(mode).await,
        }
    }

    async fn reset_boot_override(&self) -> Result<(), BmcError> {
        match self {
            Backend::Ipmi(b) => b.reset_boot_override().await,
            Backend::Redfish(b) => b.reset_boot_override().await,
            Backend::Api(b) => b.reset_boot_override().await,
        }
    }
}

/// A BMC configuration no back end can be built from.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SelectError {
    /// The IPMI settings are unusable.
    #[error(transparent)]
    Ipmi(#[from] IpmiConfigError),
    /// The derived Redfish settings are unusable.
    #[error(transparent)]
    Redfish(#[from] RedfishConfigError),
    /// The power API address is unusable.
    #[error(transparent)]
    Api(#[from] HttpApiConfigError),
}

/// Probe answers per BMC host, each with its own expiry.
#[derive(Debug, Default)]
struct ProbeCache {
    entries: HashMap<String, (bool, Instant)>,
}

impl ProbeCache {
    /// The cached answer for `host`, if it has not expired at `now`.
    fn lookup(&self, host: &str, now: Instant) -> Option<bool> {
        self.entries
            .get(host)
            .filter(|(_, expires)| now < *expires)
            .map(|(ok, _)| *ok)
    }

    fn record(&mut self, host: &str, ok: bool, expires: Instant, now: Instant) {
        if self.entries.len() >= PROBE_CACHE_MAX {
            self.entries.retain(|_, (_, e)| now < *e);
            if self.entries.len() >= PROBE_CACHE_MAX {
                self.entries.clear();
            }
        }
        self.entries.insert(host.to_owned(), (ok, expires));
    }
}

/// Builds a [`Backend`] for a machine's BMC information, probing Redfish per the
/// options and caching the answer per host. Share one selector (it is `Sync`).
#[derive(Debug)]
pub struct Selector {
    options: SelectorOptions,
    cache: Mutex<ProbeCache>,
}

impl Selector {
    /// A selector with these options and an empty probe cache.
    pub fn new(options: SelectorOptions) -> Self {
        Selector {
            options,
            cache: Mutex::new(ProbeCache::default()),
        }
    }

    /// The options.
    pub fn options(&self) -> &SelectorOptions {
        &self.options
    }

    /// The firmware mode for PXE-once overrides (`--ipmi-pxe-boot-mode`).
    pub fn pxe_boot_mode(&self) -> BootMode {
        self.options.pxe_boot_mode
    }

    /// The back end for `info`. Probing never fails the selection: a BMC without a
    /// working Redfish service is driven over IPMI.
    pub async fn select(&self, info: &BmcInfo) -> Result<Backend, SelectError> {
        let ipmi = match info {
            BmcInfo::Api { address } => {
                let client = match self.options.operation_timeout {
                    Some(t) => HttpApiClient::with_timeout(address.clone(), t)?,
                    None => HttpApiClient::new(address.clone())?,
                };
                return Ok(Backend::Api(client));
            }
            BmcInfo::Ipmi(ipmi) => ipmi,
        };
        let use_redfish = if self.options.redfish_use_always {
            true
        } else if self.options.redfish_use_when_available {
            self.redfish_available(ipmi).await?
        } else {
            false
        };
        if use_redfish {
            return Ok(Backend::Redfish(Box::new(RedfishClient::new(
                self.redfish_config(ipmi),
            )?)));
        }
        Ok(Backend::Ipmi(IpmiClient::new(self.ipmi_config(ipmi))?))
    }

    /// The Redfish settings derived from IPMI credentials and the flags.
    pub fn redfish_config(&self, ipmi: &IpmiInfo) -> RedfishConfig {
        let o = &self.options;
        let endpoint = RedfishConfig::endpoint_for(
            ipmi.address.trim_start_matches('[').trim_end_matches(']'),
            o.redfish_port,
            o.redfish_use_https,
        );
        let mut cfg = RedfishConfig::new(endpoint, &ipmi.username, &ipmi.password);
        cfg.insecure_skip_tls_verify = o.redfish_insecure_skip_tls_verify;
        cfg.set_boot_source_override_mode = o.redfish_set_boot_source_override_mode;
        if let Some(t) = o.operation_timeout {
            cfg.timeout = t;
        }
        cfg
    }

    /// The IPMI settings for `ipmi`.
    pub fn ipmi_config(&self, ipmi: &IpmiInfo) -> IpmiConfig {
        let host = ipmi.address.trim_start_matches('[').trim_end_matches(']');
        let mut cfg = IpmiConfig::new(host, &ipmi.username, &ipmi.password);
        if ipmi.port != 0 {
            cfg.port = ipmi.port;
        }
        if let Some(t) = self.options.operation_timeout {
            cfg.timeout = t;
        }
        cfg
    }

    /// The cached probe answer for `host`, or a new probe.
    async fn redfish_available(&self, ipmi: &IpmiInfo) -> Result<bool, SelectError> {
        let host = ipmi.address.as_str();
        if let Some(ok) = self.lock_cache().lookup(host, Instant::now()) {
            return Ok(ok);
        }
        let cfg = self.redfish_config(ipmi);
        // An unusable endpoint is a configuration error, not "no Redfish".
        RedfishClient::new(cfg.clone())?;
        let endpoint = cfg.endpoint.clone();
        let ok = match redfish::probe(cfg, self.options.probe_timeout).await {
            Ok(report) => {
                info!(bmc = host, %endpoint, systems = report.systems.len(), "Redfish available; using it");
                true
            }
            Err(e) => {
                debug!(bmc = host, %endpoint, "Redfish probe failed, using IPMI: {e}");
                false
            }
        };
        let now = Instant::now();
        let ttl = if ok {
            self.options.probe_ttl_ok
        } else {
            self.options.probe_ttl_failed
        };
        self.lock_cache().record(host, ok, now + ttl, now);
        Ok(ok)
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, ProbeCache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(address: &str) -> IpmiInfo {
        IpmiInfo {
            address: address.to_owned(),
            port: 0,
            username: "admin".to_owned(),
            password: "hunter2-secret".to_owned(),
        }
    }

    #[test]
    fn defaults_are_upstreams() {
        let o = SelectorOptions::default();
        assert!(!o.redfish_use_always);
        assert!(o.redfish_use_when_available);
        assert_eq!(o.redfish_port, 443);
        assert!(o.redfish_use_https);
        assert!(o.redfish_insecure_skip_tls_verify);
        assert!(o.redfish_set_boot_source_override_mode);
        assert_eq!(o.pxe_boot_mode, BootMode::Uefi);
        assert!(o.probe_ttl_failed < o.probe_ttl_ok);
    }

    #[test]
    fn cache_entries_expire() {
        let mut cache = ProbeCache::default();
        let t0 = Instant::now();
        cache.record("10.0.0.1", true, t0 + Duration::from_secs(600), t0);
        cache.record("10.0.0.2", false, t0 + Duration::from_secs(60), t0);
        assert_eq!(cache.lookup("10.0.0.1", t0), Some(true));
        assert_eq!(cache.lookup("10.0.0.2", t0), Some(false));
        assert_eq!(cache.lookup("10.0.0.3", t0), None);
        let later = t0 + Duration::from_secs(61);
        assert_eq!(cache.lookup("10.0.0.2", later), None);
        assert_eq!(cache.lookup("10.0.0.1", later), Some(true));
        assert_eq!(
            cache.lookup("10.0.0.1", t0 + Duration::from_secs(600)),
            None
        );
    }

    #[test]
    fn redfish_reuses_the_ipmi_host_and_credentials_with_the_flags() {
        let sel = Selector::new(SelectorOptions {
            redfish_port: 8443,
            redfish_insecure_skip_tls_verify: false,
            redfish_set_boot_source_override_mode: false,
            ..SelectorOptions::default()
        });
        let cfg = sel.redfish_config(&info("10.0.0.7"));
        assert_eq!(cfg.endpoint, "https://10.0.0.7:8443");
        assert_eq!(cfg.username, "admin");
        assert!(!cfg.insecure_skip_tls_verify && !cfg.set_boot_source_override_mode);
        let v6 = sel.redfish_config(&info("[fd00::7]"));
        assert_eq!(v6.endpoint, "https://[fd00::7]:8443");
        let ipmi = sel.ipmi_config(&info("10.0.0.7"));
        assert_eq!((ipmi.host.as_str(), ipmi.port), ("10.0.0.7", 623));
    }

    #[test]
    fn debug_hides_the_password() {
        let text = format!("{:?}", BmcInfo::Ipmi(info("10.0.0.7")));
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[tokio::test]
    async fn without_redfish_flags_ipmi_is_chosen_without_a_probe_and_api_wins() {
        let sel = Selector::new(SelectorOptions {
            redfish_use_when_available: false,
            ..SelectorOptions::default()
        });
        let b = sel.select(&BmcInfo::Ipmi(info("10.0.0.7"))).await.unwrap();
        assert_eq!(b.kind(), BackendKind::Ipmi);
        assert_eq!(b.address(), "10.0.0.7:623");
        let always = Selector::new(SelectorOptions {
            redfish_use_always: true,
            ..SelectorOptions::default()
        });
        let b = always
            .select(&BmcInfo::Ipmi(info("10.0.0.7")))
            .await
            .unwrap();
        assert_eq!(b.kind(), BackendKind::Redfish);
        assert_eq!(b.address(), "https://10.0.0.7");
        let api = always
            .select(&BmcInfo::Api {
                address: "172.29.0.1:4000".into(),
            })
            .await
            .unwrap();
        assert_eq!(api.kind(), BackendKind::Api);
        let bad = sel
            .select(&BmcInfo::Ipmi(IpmiInfo {
                username: "a-user-name-far-too-long".into(),
                ..info("10.0.0.7")
            }))
            .await
            .unwrap_err();
        assert!(bad.to_string().contains("10.0.0.7"), "{bad}");
    }
}
