//! `--api-power-mgmt-state-dir`: where an emulated machine's HTTP power API listens, read
//! from the launch configurations `talosctl cluster create` (Talos `provision`, QEMU
//! provider) leaves in its cluster state directory.
//!
//! Each VM there has a `<node name>.config`, the JSON of Talos' QEMU `LaunchConfig`. The
//! Go provider, with `--agent-test-mode` (the agent then answers `GetPowerManagement`
//! with `api {}`), scans the `*.config` files in name order for the one whose `NodeUUID`
//! is the machine's, and uses the first of its gateway addresses with its API port:
//!
//! - current Talos: `Network.GatewayAddrs[0]` and `APIBindAddress.Port` (a Go
//!   `net.TCPAddr`: `{"IP": "...", "Port": n, "Zone": ""}`);
//! - older Talos: top-level `GatewayAddrs[0]` and `APIPort`.
//!
//! A file that cannot be read or parsed, or whose matching configuration has no gateway
//! or port, is skipped with a warning, as upstream does. The address comes back as
//! `host:port` (`[v6]:port` for IPv6), the form of the HTTP power API back end
//! (`ironboot_bmc::BmcInfo::Api { address }`, `HttpApiClient::new`). UUIDs are compared
//! without regard to case (upstream compares them exactly; Talos writes them lowercase).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tracing::{debug, warn};

/// Largest launch configuration read (they embed the node's machine configuration:
/// tens of KiB).
const MAX_FILE_SIZE: u64 = 16 << 20;

/// The state directory cannot be listed.
#[derive(Debug, thiserror::Error)]
#[error("--api-power-mgmt-state-dir {dir}: cannot list it: {source}")]
pub(crate) struct PowerMgmtDirError {
    /// The directory.
    pub(crate) dir: PathBuf,
    /// The cause.
    pub(crate) source: std::io::Error,
}

/// The fields of Talos' QEMU `LaunchConfig` the address is made of.
#[derive(Debug, Default, Deserialize)]
struct LaunchConfig {
    #[serde(rename = "NodeUUID", default)]
    node_uuid: String,
    #[serde(rename = "Network", default)]
    network: Option<Network>,
    #[serde(rename = "GatewayAddrs", default)]
    gateway_addrs: Option<Vec<String>>,
    #[serde(rename = "APIBindAddress", default)]
    api_bind_address: Option<TcpAddr>,
    #[serde(rename = "APIPort", default)]
    api_port: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
struct Network {
    #[serde(rename = "GatewayAddrs", default)]
    gateway_addrs: Option<Vec<String>>,
}

/// Go's `net.TCPAddr` in JSON.
#[derive(Debug, Default, Deserialize)]
struct TcpAddr {
    #[serde(rename = "Port", default)]
    port: u64,
}

/// Why a matching launch configuration gives no address.
fn address_of(config: &LaunchConfig) -> Result<String, String> {
    // The newer layout wins when it has gateways, as upstream reads it.
    let gateways = match config
        .network
        .as_ref()
        .and_then(|n| n.gateway_addrs.as_ref())
    {
        Some(g) if !g.is_empty() => g,
        _ => config.gateway_addrs.as_deref().unwrap_or_default(),
    };
    let first = gateways
        .first()
        .ok_or_else(|| "no gateway address".to_owned())?;
    let ip: IpAddr = first
        .parse()
        .map_err(|_| format!("gateway address {first:?} is not an IP address"))?;
    let port = match &config.api_bind_address {
        Some(bind) => bind.port,
        None => config.api_port.unwrap_or(0),
    };
    let port = u16::try_from(port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("no usable API port ({port})"))?;
    if gateways.len() > 1 {
        debug!(gateway = %ip, "several gateway addresses: the first is used");
    }
    Ok(SocketAddr::new(ip, port).to_string())
}

/// The HTTP power API address (`host:port`) of the machine whose SMBIOS UUID is
/// `machine_uuid`, from the launch configurations in `dir`; `None` when no usable one
/// names it. Blocking file I/O (a handful of small files): call it from a blocking
/// context.
pub(crate) fn lookup(dir: &Path, machine_uuid: &str) -> Result<Option<String>, PowerMgmtDirError> {
    let listing = |source| PowerMgmtDirError {
        dir: dir.to_owned(),
        source,
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(listing)? {
        let entry = entry.map_err(listing)?;
        let name = entry.file_name();
        if name.to_str().is_some_and(|n| n.ends_with(".config")) {
            paths.push(entry.path());
        }
    }
    paths.sort();
    let wanted = machine_uuid.trim();
    for path in &paths {
        let config = match read_config(path) {
            Ok(c) => c,
            Err(reason) => {
                warn!(file = %path.display(), "launch configuration skipped: {reason}");
                continue;
            }
        };
        if !config.node_uuid.trim().eq_ignore_ascii_case(wanted) {
            continue;
        }
        match address_of(&config) {
            Ok(address) => {
                debug!(machine = wanted, file = %path.display(), %address, "power API address found");
                return Ok(Some(address));
            }
            Err(reason) => warn!(
                machine = wanted,
                file = %path.display(),
                "launch configuration of the machine skipped: {reason}"
            ),
        }
    }
    debug!(
        machine = wanted,
        dir = %dir.display(),
        files = paths.len(),
        "no launch configuration names the machine"
    );
    Ok(None)
}

fn read_config(path: &Path) -> Result<LaunchConfig, String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a file".to_owned());
    }
    if meta.len() > MAX_FILE_SIZE {
        return Err(format!("{} bytes, too large", meta.len()));
    }
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    serde_json::from_slice(&bytes).map_err(|e| format!("not a launch configuration: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID_A: &str = "3f1c0a55-7d0e-4c36-9a53-5f0d6a1b2c3d";
    const UUID_B: &str = "9b8e2c71-1f4a-4e0b-8d2c-0a9e7f6b5c4d";

    /// A launch configuration as current Talos writes it (`json.Encoder` of the QEMU
    /// provider's `LaunchConfig`; `networkConfigBase` is embedded in `Network`, so its
    /// fields sit directly in it).
    fn current(uuid: &str, gateways: &str, port: u16) -> String {
        format!(
            r#"{{"StatePath":"/home/operator/.talos/clusters/talos-default","DiskPaths":["/home/operator/.talos/clusters/talos-default/machine-1-0.disk"],"DiskDrivers":["virtio"],"DiskTags":[""],"DiskSerials":[""],"DiskBlockSizes":[512],"VCPUCount":2,"MemSize":4096,"MemShmPath":"/dev/shm/talos-default/shm-machine-1","KernelImagePath":"","InitrdPath":"","ISOPath":"","USBPath":"","UKIPath":"","ExtraISOPath":"","PFlashImages":["/home/operator/.talos/clusters/talos-default/machine-1-flash0.img","/home/operator/.talos/clusters/talos-default/machine-1-flash1.img"],"PFlashSpec":null,"KernelArgs":"","SDStubKernelArgs":"","MonitorPath":"/home/operator/.talos/clusters/talos-default/machine-1.monitor","DefaultBootOrder":"cn","BootloaderEnabled":true,"TPMConfig":{{"NodeName":"","StateDir":"","TPM2":false}},"NodeUUID":"{uuid}","BadRTC":false,"ArchitectureData":"amd64","IOMMUEnabled":false,"SkipInjectingExtraCmdline":false,"Config":"version: v1alpha1\nmachine:\n  type: worker\n","TFTPServer":"","BootFilename":"","IPXEBootFileName":"","APIBindAddress":{{"IP":"10.5.0.1","Port":{port},"Zone":""}},"ExtraQEMUArgs":null,"Network":{{"BridgeName":"talos7a1b2c3d","IPs":["10.5.0.3"],"CIDRs":["10.5.0.0/24"],"GatewayAddrs":{gateways},"Hostname":"machine-1","MTU":1500,"Nameservers":["10.5.0.1"],"Airgapped":false,"CniNetworkConfig":{{"cniVersion":"0.4.0","name":"talos-default","plugins":[{{"type":"bridge"}}]}},"CNI":{{"BinPath":["/home/operator/.talos/cni/bin"],"ConfDir":"/home/operator/.talos/cni/conf.d","CacheDir":"/home/operator/.talos/cni/cache","BundleURL":""}},"NoMasqueradeCIDRs":null}},"VMMac":"5e:aa:0b:31:2c:01","FabricUplinks":null,"CLOSNoNet0":false}}
"#
        )
    }

    /// The older layout: top-level `GatewayAddrs` and `APIPort`.
    fn legacy(uuid: &str, gateway: &str, port: u16) -> String {
        format!(
            r#"{{"StatePath":"/home/operator/.talos/clusters/old","DiskPaths":["/home/operator/.talos/clusters/old/m.disk"],"VCPUCount":2,"MemSize":2048,"NodeUUID":"{uuid}","Config":"","GatewayAddrs":["{gateway}"],"MTU":1500,"TFTPServer":"","APIPort":{port}}}"#
        )
    }

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, content) in files {
            std::fs::write(dir.path().join(name), content).unwrap();
        }
        dir
    }

    #[test]
    fn finds_the_machine_by_uuid_in_the_current_layout() {
        let dir = dir_with(&[
            (
                "machine-1.config",
                &current(UUID_A, r#"["10.5.0.1"]"#, 41271),
            ),
            (
                "machine-2.config",
                &current(UUID_B, r#"["10.5.0.1"]"#, 41272),
            ),
            ("machine-2.log", "not a config"),
            ("machine-2.pid", "1234"),
        ]);
        assert_eq!(
            lookup(dir.path(), UUID_B).unwrap().as_deref(),
            Some("10.5.0.1:41272")
        );
        assert_eq!(
            lookup(dir.path(), &UUID_A.to_uppercase())
                .unwrap()
                .as_deref(),
            Some("10.5.0.1:41271"),
            "case does not matter"
        );
        assert_eq!(
            lookup(dir.path(), "00000000-0000-0000-0000-000000000000").unwrap(),
            None
        );
    }

    #[test]
    fn the_address_is_what_the_http_power_api_back_end_takes() {
        let dir = dir_with(&[
            (
                "a.config",
                &current(UUID_A, r#"["fd00:10:5::1","10.5.0.1"]"#, 41271),
            ),
            ("b.config", &current(UUID_B, r#"["10.5.0.1"]"#, 41272)),
        ]);
        let v6 = lookup(dir.path(), UUID_A).unwrap().unwrap();
        assert_eq!(v6, "[fd00:10:5::1]:41271", "the first gateway, bracketed");
        for address in [v6, lookup(dir.path(), UUID_B).unwrap().unwrap()] {
            ironboot_bmc::HttpApiClient::new(address.clone())
                .unwrap_or_else(|e| panic!("{address}: {e}"));
        }
    }

    #[test]
    fn reads_the_older_layout() {
        let dir = dir_with(&[("m.config", &legacy(UUID_A, "172.29.0.1", 35001))]);
        assert_eq!(
            lookup(dir.path(), UUID_A).unwrap().as_deref(),
            Some("172.29.0.1:35001")
        );
    }

    #[test]
    fn the_newer_fields_win_over_the_older_ones() {
        let both = current(UUID_A, r#"["10.5.0.1"]"#, 41271).replacen(
            r#""NodeUUID""#,
            r#""GatewayAddrs":["192.0.2.1"],"APIPort":9,"NodeUUID""#,
            1,
        );
        let dir = dir_with(&[("m.config", &both)]);
        assert_eq!(
            lookup(dir.path(), UUID_A).unwrap().as_deref(),
            Some("10.5.0.1:41271")
        );
        // Empty new gateways fall back to the older ones (upstream's rule); the port of
        // a present APIBindAddress is taken even then.
        let fallback = both.replace(r#""GatewayAddrs":["10.5.0.1"]"#, r#""GatewayAddrs":[]"#);
        let dir = dir_with(&[("m.config", &fallback)]);
        assert_eq!(
            lookup(dir.path(), UUID_A).unwrap().as_deref(),
            Some("192.0.2.1:41271")
        );
    }

    #[test]
    fn broken_or_incomplete_files_are_skipped_for_later_ones() {
        let no_gateway = current(UUID_A, "null", 41271);
        let no_port = current(UUID_A, r#"["10.5.0.1"]"#, 0);
        let bad_ip = current(UUID_A, r#"["gateway"]"#, 41271);
        let dir = dir_with(&[
            ("0-garbage.config", "{not json"),
            ("1-no-gateway.config", &no_gateway),
            ("2-no-port.config", &no_port),
            ("3-bad-ip.config", &bad_ip),
            ("4-good.config", &current(UUID_A, r#"["10.5.0.9"]"#, 41279)),
            ("5-later.config", &current(UUID_A, r#"["10.5.0.1"]"#, 41280)),
        ]);
        std::fs::create_dir(dir.path().join("00-dir.config")).unwrap();
        assert_eq!(
            lookup(dir.path(), UUID_A).unwrap().as_deref(),
            Some("10.5.0.9:41279"),
            "the first usable file in name order"
        );
        let dir = dir_with(&[("1.config", &no_gateway), ("2.config", &no_port)]);
        assert_eq!(lookup(dir.path(), UUID_A).unwrap(), None);
    }

    #[test]
    fn an_unreadable_directory_is_an_error_naming_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("gone");
        let msg = lookup(&missing, UUID_A).unwrap_err().to_string();
        assert!(
            msg.starts_with("--api-power-mgmt-state-dir ") && msg.contains("gone"),
            "{msg}"
        );
    }
}
