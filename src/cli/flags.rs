//! The command line as clap parses it: the Go provider's flag names, environment
//! variables and defaults (so ironboot drops into its deployments), ironboot's own flags,
//! and the tools' subcommands. Only the surface: [`crate::cli::validate`] turns it into a
//! [`crate::cli::config::Config`].

use std::path::PathBuf;

use clap::{ArgAction, Parser, Subcommand};
use ironboot_net::udp::DriverKind;

use crate::boot::boot_script::BootFromDiskMethod;
use crate::boot::tftp_service::DEFAULT_TFTP_PORT_POOL;

/// Default provider ID, as the Go provider's `--id`.
pub(crate) const DEFAULT_PROVIDER_ID: &str = "bare-metal";
/// Default HTTP/gRPC API port, as the Go provider's `--api-port`.
pub(crate) const DEFAULT_API_PORT: u16 = 50042;

/// ironboot: ProxyDHCP, TFTP/HTTP iPXE boot and BMC power for bare-metal machines.
///
/// Without --omni-api-endpoint (or OMNI_ENDPOINT) it runs standalone, with no Omni.
/// Without a subcommand it runs the server (the Go provider's flat flags).
#[derive(Debug, Clone, Parser)]
#[command(name = "ironboot", version, about, long_about = None, args_conflicts_with_subcommands = true)]
pub(crate) struct Cli {
    /// A tool instead of the server.
    #[command(subcommand)]
    pub(crate) command: Option<Command>,

    /// Provider ID (names the Omni service account, namespace and resource types).
    #[arg(long, default_value = DEFAULT_PROVIDER_ID)]
    pub(crate) id: String,

    /// Debug logging.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_value_t = false, default_missing_value = "true")]
    pub(crate) debug: bool,

    /// Address the HTTP API and TFTP listen on (empty: all addresses).
    #[arg(long, default_value = "")]
    pub(crate) api_listen_address: String,

    /// Address advertised to machines for TFTP/HTTP (empty: the host's single routable IPv4).
    #[arg(long, default_value = "")]
    pub(crate) api_advertise_address: String,

    /// Port of the HTTP API (iPXE scripts, boot files over HTTP, metrics).
    #[arg(long, default_value_t = DEFAULT_API_PORT)]
    pub(crate) api_port: u16,

    /// Omni API endpoint; empty runs ironboot standalone. Omni mode reads the
    /// service-account key from OMNI_SERVICE_ACCOUNT_KEY.
    #[arg(long, env = "OMNI_ENDPOINT", default_value = "")]
    pub(crate) omni_api_endpoint: String,

    /// Accept any TLS certificate from Omni.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_value_t = false, default_missing_value = "true")]
    pub(crate) insecure_skip_tls_verify: bool,

    /// Provider name shown in Omni.
    #[arg(long, default_value = DEFAULT_PROVIDER_NAME)]
    pub(crate) provider_name: String,

    /// Provider description shown in Omni.
    #[arg(long, default_value = DEFAULT_PROVIDER_DESCRIPTION)]
    pub(crate) provider_description: String,

    /// Kept for the Go provider's command lines; ironboot always caches Omni's state in
    /// memory (its watches feed the boot decisions), so this changes nothing.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_value_t = false, default_missing_value = "true")]
    pub(crate) enable_resource_cache: bool,

    /// Boot the metal agent in test mode (`metal.provider.test.mode=1`: power through
    /// the HTTP power API of emulated machines instead of IPMI).
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_value_t = false, default_missing_value = "true")]
    pub(crate) agent_test_mode: bool,

    /// Extra Talos machine configuration documents (YAML) appended to the join
    /// configuration served on /config.
    #[arg(long, default_value = "")]
    pub(crate) extra_machine_config_path: String,

    /// Directory of `talos provision` launch configs (`*.config`, JSON) giving each emulated
    /// machine's HTTP power API address (with --agent-test-mode).
    #[arg(long, default_value = "")]
    pub(crate) api_power_mgmt_state_dir: String,

    /// A CA certificate (PEM) iPXE should trust instead of its built-in root CA (for a
    /// self-hosted Image Factory over HTTPS).
    #[arg(long, default_value = "")]
    pub(crate) tls_custom_ipxe_ca_cert_file: String,

    /// Serve the metal agents' gRPC tunnel over TLS too, on --tls-api-port.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_value_t = false, default_missing_value = "true")]
    pub(crate) tls_enabled: bool,

    /// Port of the TLS gRPC listener (with --tls-enabled).
    #[arg(long, default_value_t = DEFAULT_TLS_API_PORT)]
    pub(crate) tls_api_port: u16,

    /// Tell the agents not to verify ironboot's TLS certificate
    /// (`metal.provider.tls.skip.verify=1`).
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_value_t = false, default_missing_value = "true")]
    pub(crate) tls_agent_skip_verify: bool,

    /// Lifetime of the generated CA (stored in Omni).
    #[arg(
        long,
        value_name = "DURATION",
        allow_hyphen_values = true,
        default_value = "262800h"
    )]
    pub(crate) tls_ca_ttl: String,

    /// Lifetime of the serving certificate issued by the generated CA (renewed when less
    /// than a tenth is left; at least 5m).
    #[arg(
        long,
        value_name = "DURATION",
        allow_hyphen_values = true,
        default_value = "24h"
    )]
    pub(crate) tls_cert_ttl: String,

    /// Your own CA certificate (PEM) instead of the generated CA; with --tls-cert-file and
    /// --tls-key-file.
    #[arg(long, default_value = "")]
    pub(crate) tls_ca_cert_file: String,

    /// Your own serving certificate (PEM), valid for the advertise address.
    #[arg(long, default_value = "")]
    pub(crate) tls_cert_file: String,

    /// The key of --tls-cert-file (PEM).
    #[arg(long, default_value = "")]
    pub(crate) tls_key_file: String,

    /// Interface name, or an IP address whose interface serves ProxyDHCP (empty: the
    /// interface of the advertise address).
    #[arg(long, default_value = "")]
    pub(crate) dhcp_proxy_iface_or_ip: String,

    /// Do not listen on UDP 67, only on 4011 (beside a DHCP server on the same host).
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_value_t = false, default_missing_value = "true")]
    pub(crate) disable_dhcp_proxy_broadcast: bool,

    /// No ProxyDHCP at all.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_value_t = false, default_missing_value = "true")]
    pub(crate) disable_dhcp_proxy: bool,

    /// UDP driver: io_uring, the portable one, or auto (io_uring where the kernel allows it).
    #[arg(long, default_value = "auto")]
    pub(crate) udp_driver: DriverKind,

    /// UDP driver instances per service (ProxyDHCP, TFTP), each with its own sockets on
    /// shared `SO_REUSEPORT` ports: `auto` or 0 for one per available core, or a count.
    /// Default 1: on the 2-core machine measured, 2 workers moved 7-9% less TFTP data for
    /// 13-22% more CPU (BENCHMARKS.md, "UDP workers").
    #[arg(long, default_value = "1")]
    pub(crate) udp_workers: String,

    /// Boot file for 32-bit x86 UEFI clients (empty: they get no offer, since the x86-64
    /// binary cannot run on them).
    #[arg(long, default_value = "")]
    pub(crate) efi_ia32_boot_file: String,

    /// Subnets (`a.b.c.d/len`, comma-separated) whose DHCP relays are answered: a relayed
    /// request's `giaddr` must lie in one of them (empty: any unicast relay address).
    #[arg(long, value_delimiter = ',')]
    pub(crate) dhcp_relay_allow: Vec<String>,

    /// Directories searched, in order, for the iPXE binaries (Debian: `apt-get install ipxe`).
    #[arg(long, value_delimiter = ',', default_values = crate::boot::boot_files::DEFAULT_IPXE_DIRS)]
    pub(crate) ipxe_dir: Vec<PathBuf>,

    /// Inventory file (.toml, .yaml or .yml) giving machines their boot target. Without it
    /// every machine boots from its disk.
    #[arg(long)]
    pub(crate) inventory: Option<PathBuf>,

    /// Directory for ironboot's state (the database of machines seen).
    #[arg(long, default_value = crate::boot::store::DEFAULT_STATE_DIR)]
    pub(crate) state_dir: PathBuf,

    /// Most machines the store records; at the cap, new machines replace unconfirmed ones.
    #[arg(long, default_value_t = crate::boot::store::MAX_MACHINES)]
    pub(crate) store_max_machines: usize,

    /// New machines one source address may add to the store at once, and again per minute.
    #[arg(long, default_value_t = crate::boot::store::DEFAULT_NEW_PER_SOURCE)]
    pub(crate) store_new_machines_per_source: u32,

    /// How a machine is told to boot from its disk: ipxe-exit, http-404 or ipxe-sanboot.
    #[arg(long, default_value = "ipxe-exit")]
    pub(crate) boot_from_disk_method: BootFromDiskMethod,

    /// Serve whole TFTP transfers from port 69 (the Go provider's behaviour, for NAT or
    /// Kubernetes services) instead of a per-transfer port.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_value_t = false, default_missing_value = "true")]
    pub(crate) tftp_single_port: bool,

    /// Largest TFTP block size granted (RFC 2348); the default fits a 1500-byte MTU.
    #[arg(long, default_value_t = ironboot_net::tftp::DEFAULT_MAX_BLKSIZE)]
    pub(crate) tftp_max_blksize: u16,

    /// Largest TFTP window granted (RFC 7440).
    #[arg(long, default_value_t = ironboot_net::tftp::DEFAULT_MAX_WINDOWSIZE)]
    pub(crate) tftp_max_windowsize: u16,

    /// Most concurrent TFTP transfers; more are answered "server busy". Only transfers
    /// whose client acknowledged the first reply count (a forged request takes no slot).
    #[arg(long, default_value_t = ironboot_net::tftp::DEFAULT_MAX_TRANSFERS)]
    pub(crate) tftp_max_transfers: usize,

    /// Most concurrent TFTP transfers per client address, counted like
    /// --tftp-max-transfers.
    #[arg(long, default_value_t = ironboot_net::tftp::DEFAULT_MAX_PER_CLIENT)]
    pub(crate) tftp_max_per_client: usize,

    /// Number of UDP ports transfers are spread over (without --tftp-single-port).
    #[arg(long, default_value_t = DEFAULT_TFTP_PORT_POOL)]
    pub(crate) tftp_port_pool: usize,

    /// BMC addresses a metal agent may report (comma-separated CIDRs or addresses); an
    /// address outside is refused and no credentials are set up. Empty = any (ironboot's
    /// own).
    #[arg(long, value_name = "CIDR,...", default_value = "")]
    pub(crate) bmc_allow_cidr: String,

    /// Drive every IPMI-configured BMC over Redfish, without probing.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_value_t = false, default_missing_value = "true")]
    pub(crate) redfish_use_always: bool,

    /// Probe each BMC for Redfish (on --redfish-port, with its IPMI credentials) and use
    /// it when it answers; the answer is cached per BMC (10 min, 1 min after a failure).
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_value_t = true, default_missing_value = "true")]
    pub(crate) redfish_use_when_available: bool,

    /// Redfish port of the BMCs.
    #[arg(long, default_value_t = ironboot_bmc::select::DEFAULT_REDFISH_PORT)]
    pub(crate) redfish_port: u16,

    /// Talk Redfish over HTTPS.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_value_t = true, default_missing_value = "true")]
    pub(crate) redfish_use_https: bool,

    /// Accept any TLS certificate from Redfish BMCs.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_value_t = true, default_missing_value = "true")]
    pub(crate) redfish_insecure_skip_tls_verify: bool,

    /// Send BootSourceOverrideMode (UEFI/Legacy) with Redfish PXE boot overrides.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_value_t = true, default_missing_value = "true")]
    pub(crate) redfish_set_boot_source_override_mode: bool,

    /// Firmware mode of one-time PXE boots set through the BMC (IPMI and Redfish): uefi
    /// or bios.
    #[arg(long, default_value = "uefi")]
    pub(crate) ipmi_pxe_boot_mode: String,

    /// Timeout of the metal agent's Hello, GetPowerManagement and SetPowerManagement
    /// calls (a Go duration: 30s, 5m, 1h30m).
    #[arg(
        long,
        value_name = "DURATION",
        allow_hyphen_values = true,
        default_value = "30s"
    )]
    pub(crate) agent_call_timeout: String,

    /// Timeout of a fast disk wipe by the metal agent.
    #[arg(
        long,
        value_name = "DURATION",
        allow_hyphen_values = true,
        default_value = "5m"
    )]
    pub(crate) agent_fast_wipe_timeout: String,

    /// Timeout of a disk wipe writing zeroes (--wipe-with-zeroes) by the metal agent.
    #[arg(
        long,
        value_name = "DURATION",
        allow_hyphen_values = true,
        default_value = "24h"
    )]
    pub(crate) agent_zeroes_wipe_timeout: String,

    /// Wipe disks by writing zeroes over them instead of a fast wipe.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_value_t = false, default_missing_value = "true")]
    pub(crate) wipe_with_zeroes: bool,

    /// Least time between a power-on or reboot issued by ironboot and its next reboot or
    /// power-off of the same machine (0 for none).
    #[arg(
        long,
        value_name = "DURATION",
        allow_hyphen_values = true,
        default_value = "15m"
    )]
    pub(crate) min_reboot_interval: String,

    /// How often each machine's BMC power state is read (tuning and tests; upstream's is
    /// fixed at 30s).
    #[arg(
        long,
        hide = true,
        value_name = "DURATION",
        allow_hyphen_values = true,
        default_value = "30s"
    )]
    pub(crate) power_poll_interval: String,

    /// Labels set on every machine, comma-separated `key=value` or `key` (empty value);
    /// may be repeated. Example: key1=value1,key2,key3=value3
    #[arg(long, value_delimiter = ',')]
    pub(crate) machine_labels: Vec<String>,

    /// Boot the metal agent from the kernel and initramfs in --boot-assets-path instead of
    /// the Image Factory (air-gapped sites).
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_value_t = false, default_missing_value = "true")]
    pub(crate) use_local_boot_assets: bool,

    /// Directory of the local boot assets: `kernel-<arch>`, `initramfs-metal-<arch>.xz`
    /// and `cmdline-metal-<arch>` for amd64 and/or arm64.
    #[arg(long, default_value = DEFAULT_BOOT_ASSETS_PATH)]
    pub(crate) boot_assets_path: PathBuf,

    /// Base URL of the Image Factory API (schematics).
    #[arg(long, default_value = DEFAULT_IMAGE_FACTORY_BASE_URL)]
    pub(crate) image_factory_base_url: String,

    /// Base URL of the Image Factory's PXE front end (iPXE scripts).
    #[arg(long, default_value = DEFAULT_IMAGE_FACTORY_PXE_BASE_URL)]
    pub(crate) image_factory_pxe_base_url: String,

    /// Talos version the metal agent boots (Image Factory; ignored with local boot assets).
    #[arg(long, default_value = DEFAULT_AGENT_MODE_TALOS_VERSION)]
    pub(crate) agent_mode_talos_version: String,

    /// Serve the Image Factory's PXE scripts, kernels and initramfs to machines through
    /// ironboot over plain HTTP on --api-port, caching the images under
    /// <--state-dir>/factory-cache (one download per image for the whole fleet): auto = when
    /// the iPXE binaries served cannot fetch https:// URLs (Debian's), on, or off (machines
    /// fetch from --image-factory-pxe-base-url themselves).
    #[arg(long, default_value = "auto")]
    pub(crate) image_factory_proxy: String,

    /// Boot the Image Factory's secure-boot (UKI) PXE assets; needs
    /// --ipmi-pxe-boot-mode uefi and no local boot assets.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_value_t = false, default_missing_value = "true")]
    pub(crate) secure_boot_enabled: bool,

    /// Longest a client of --api-port or --tls-api-port may take to send a complete
    /// request head (the first from its connection, or each later HTTP/1 one from its
    /// first byte); then it is dropped.
    #[arg(
        long,
        value_name = "DURATION",
        allow_hyphen_values = true,
        default_value = "10s"
    )]
    pub(crate) http_header_timeout: String,

    /// A connection with no request in flight for this long is closed (HTTP/2 connections
    /// are pinged at this interval; a long-lived stream is a request in flight).
    #[arg(
        long,
        value_name = "DURATION",
        allow_hyphen_values = true,
        default_value = "30s"
    )]
    pub(crate) http_idle_timeout: String,

    /// A connection whose writes make no progress for this long (a client that stopped
    /// reading) is dropped; also how long an HTTP/2 ping may go unanswered. As nginx's
    /// `send_timeout`: a live client on a congested link can go tens of seconds without
    /// taking a byte of a boot image.
    #[arg(
        long,
        value_name = "DURATION",
        allow_hyphen_values = true,
        default_value = "60s"
    )]
    pub(crate) http_write_timeout: String,

    /// Most connections open on --api-port and --tls-api-port together; more are answered
    /// 503 and closed (lowered at start to keep descriptors for the rest of ironboot).
    #[arg(long, default_value_t = crate::boot::http::server::DEFAULT_MAX_CONNECTIONS)]
    pub(crate) http_max_connections: usize,

    /// Most connections open from one IP address (both ports together); more are
    /// answered 503 and closed.
    #[arg(long, default_value_t = crate::boot::http::server::DEFAULT_MAX_PER_SOURCE)]
    pub(crate) http_max_connections_per_source: usize,

    /// Longest a client of --tls-api-port may take to finish its TLS handshake.
    #[arg(
        long,
        value_name = "DURATION",
        allow_hyphen_values = true,
        default_value = "10s"
    )]
    pub(crate) tls_handshake_timeout: String,

    /// Networks (CIDR, or single addresses) allowed to reach the operator routes
    /// (/metrics, /api/...); others get 403. The boot path stays open to all. Empty = all.
    #[arg(long, value_delimiter = ',')]
    pub(crate) api_allow_cidr: Vec<String>,
}

/// Default `--provider-name`, as the Go provider's.
pub(crate) const DEFAULT_PROVIDER_NAME: &str = "Bare Metal";
/// Default `--provider-description`, as the Go provider's.
pub(crate) const DEFAULT_PROVIDER_DESCRIPTION: &str = "Bare metal infrastructure provider";
/// Default `--tls-api-port`, as the Go provider's.
pub(crate) const DEFAULT_TLS_API_PORT: u16 = 50043;

/// Default `--boot-assets-path`, as the Go provider's (its container image's asset dir).
pub(crate) const DEFAULT_BOOT_ASSETS_PATH: &str = "/assets";
/// Default `--image-factory-base-url`, as the Go provider's.
pub(crate) const DEFAULT_IMAGE_FACTORY_BASE_URL: &str = "https://factory.talos.dev";
/// Default `--image-factory-pxe-base-url`, as the Go provider's.
pub(crate) const DEFAULT_IMAGE_FACTORY_PXE_BASE_URL: &str = "https://pxe.factory.talos.dev";
/// Default `--agent-mode-talos-version`, as the Go provider's.
pub(crate) const DEFAULT_AGENT_MODE_TALOS_VERSION: &str = "v1.13.7";

/// Tools the binary carries besides the server.
#[derive(Debug, Clone, Subcommand)]
pub(crate) enum Command {
    /// Load generators: many concurrent clients against a boot server.
    Storm(crate::tools::storm::StormArgs),
    /// Power control of one BMC (IPMI, Redfish or the HTTP power API).
    Bmc(crate::tools::bmc::BmcArgs),
    /// Omni connectivity tools.
    Omni(crate::tools::omni_check::OmniArgs),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("ironboot").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn clap_refuses_malformed_values_naming_the_flag() {
        for (args, flag) in [
            (vec!["--api-port", "70000"], "--api-port"),
            (vec!["--udp-driver", "fast"], "--udp-driver"),
            (vec!["--debug=maybe"], "--debug"),
            (
                vec!["--boot-from-disk-method", "pxe"],
                "--boot-from-disk-method",
            ),
        ] {
            let e =
                Cli::try_parse_from(std::iter::once("ironboot").chain(args.clone())).unwrap_err();
            assert!(e.to_string().contains(flag), "{args:?}: {e}");
        }
    }

    #[test]
    fn flat_flags_run_the_server_and_do_not_mix_with_subcommands() {
        let c = cli(&["--api-port", "8080", "--debug"]);
        assert!(c.command.is_none());
        assert_eq!(c.api_port, 8080);
        let storm = cli(&["storm", "tftp", "--server", "10.0.0.1", "--file", "f"]);
        assert!(matches!(storm.command, Some(Command::Storm(_))));
        let mixed = Cli::try_parse_from([
            "ironboot",
            "--api-port",
            "8080",
            "storm",
            "tftp",
            "--server",
            "10.0.0.1",
            "--file",
            "f",
        ]);
        assert!(mixed.is_err());
    }

    #[test]
    fn the_bmc_subcommand_parses() {
        let c = cli(&[
            "bmc",
            "status",
            "--ipmi",
            "10.0.0.5:6230",
            "--user",
            "admin",
            "--password-env",
            "BMC_PW",
        ]);
        assert!(matches!(
            c.command,
            Some(Command::Bmc(crate::tools::bmc::BmcArgs {
                action: crate::tools::bmc::BmcAction::Status(_)
            }))
        ));
    }

    #[test]
    fn the_omni_subcommand_parses_and_keeps_its_own_flags() {
        let c = cli(&[
            "omni",
            "check",
            "--omni-api-endpoint",
            "https://omni.example",
            "--id",
            "rack-1",
            "--watch",
        ]);
        assert!(matches!(c.command, Some(Command::Omni(_))), "{c:?}");
        // A subcommand is not mixed with the server's flags.
        let mixed = Cli::try_parse_from(["ironboot", "--api-port", "8080", "omni", "check"]);
        assert!(mixed.is_err());
        // Without its subcommand, `omni` is refused (clap's usage error, exit status 2).
        let e = Cli::try_parse_from(["ironboot", "omni"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
    }
}
