//! Omni mode's settings: how ironboot reaches and shows itself in Omni, the agents' TLS
//! listener, the metal agent and its boot, the BMCs, the lifecycle's timing, the labels.
//! Built from the command line by [`crate::cli::validate`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::provider::agent::client::AgentSettings;
use crate::provider::boot_plan::AgentBootSource;
use crate::provider::factory_proxy::FactoryProxyMode;
use crate::provider::tls::TlsSettings;

/// Omni mode's validated settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OmniConfig {
    /// `--omni-api-endpoint`, without a trailing `/`.
    pub(crate) endpoint: String,
    /// `--id`: names the service account, namespace and resource types.
    pub(crate) provider_id: String,
    /// `--insecure-skip-tls-verify`: accept any certificate from Omni.
    pub(crate) insecure_skip_tls_verify: bool,
    /// `--provider-name`, shown in Omni.
    pub(crate) provider_name: String,
    /// `--provider-description`, shown in Omni.
    pub(crate) provider_description: String,
    /// `--agent-test-mode`.
    pub(crate) agent_test_mode: bool,
    /// `--extra-machine-config-path`.
    pub(crate) extra_machine_config: Option<PathBuf>,
    /// `--api-power-mgmt-state-dir`.
    pub(crate) api_power_mgmt_state_dir: Option<PathBuf>,
    /// The agents' TLS listener.
    pub(crate) tls: TlsSettings,
    /// BMC back-end selection (`--redfish-*`, `--ipmi-pxe-boot-mode`).
    pub(crate) bmc: ironboot_bmc::SelectorOptions,
    /// `--bmc-allow-cidr`: where agent-reported BMCs may be (empty = anywhere).
    pub(crate) bmc_allow: Vec<ironboot_net::cidr::Cidr>,
    /// Metal agent calls (`--agent-*-timeout`, `--wipe-with-zeroes`).
    pub(crate) agent: AgentSettings,
    /// `--min-reboot-interval`.
    pub(crate) min_reboot_interval: Duration,
    /// `--power-poll-interval` (hidden).
    pub(crate) power_poll_interval: Duration,
    /// `--machine-labels`, key to value.
    pub(crate) machine_labels: BTreeMap<String, String>,
    /// Where the metal agent's boot files come from.
    pub(crate) agent_boot: AgentBootSource,
    /// `--image-factory-proxy`.
    pub(crate) image_factory_proxy: FactoryProxyMode,
}
