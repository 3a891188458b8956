//! `ironboot storm pxe`: N emulated machines booting the whole PXE way against any
//! ProxyDHCP + TFTP (+ HTTP) server: DISCOVER broadcast to 67, the proxy OFFER, a REQUEST
//! to the boot server's port 4011, the ACK, the TFTP fetch of the boot file (EDK2's or
//! iPXE's way), the `boot.ipxe` request the chained iPXE makes, and with `--stop-after
//! image` the kernel and initrds that script names.
//!
//! `packet` builds and parses the DHCP messages and demultiplexes replies (sans-IO),
//! `run` moves them and runs the machines, `http` fetches the script, `image` follows it,
//! `report` does the arithmetic. The TFTP stage is the TFTP storm's client (`super::transfer`).

mod http;
mod image;
mod packet;
mod report;
mod run;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use ironboot_net::tftp::client::ClientOptions;

pub(crate) use report::PxeReport;
use report::Stage;

use super::{EDK2_BLKSIZE, EDK2_WINDOWSIZE, IPXE_BLKSIZE, StormError, flag};
use packet::Firmware;

/// Which firmware the machines emulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum FirmwareChoice {
    /// x86-64 UEFI (EDK2): arch 7, `PXEClient:Arch:00007:UNDI:003016`.
    Uefi,
    /// x86 BIOS PXE ROM: arch 0, `PXEClient:Arch:00000:UNDI:002001`.
    Bios,
    /// Every other machine BIOS, the rest UEFI.
    Mixed,
}

/// How the machines fetch the boot file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum TftpMode {
    /// EDK2 for UEFI machines, iPXE-like lock-step for BIOS ones.
    Auto,
    /// OVMF's way: tsize probe aborted with ERROR 8, then blksize 1468 windowsize 4.
    Edk2,
    /// Lock-step, blksize 1432 and tsize (iPXE's way).
    Ipxe,
}

/// `ironboot storm pxe`.
#[derive(Debug, Clone, Args)]
pub(crate) struct PxeArgs {
    /// The boot server: where HTTP goes, and the 4011/TFTP server when its replies name
    /// none.
    #[arg(long)]
    pub(crate) server: Ipv4Addr,

    /// Interface the DISCOVERs are broadcast on (SO_BINDTODEVICE; needs CAP_NET_RAW).
    /// Without it the kernel's route for 255.255.255.255 decides.
    #[arg(long)]
    pub(crate) interface: Option<String>,

    /// Machines to boot in all.
    #[arg(long, default_value_t = 1)]
    pub(crate) machines: u64,

    /// Open loop: power on this many machines per second.
    #[arg(long, conflicts_with = "concurrency")]
    pub(crate) rate: Option<f64>,

    /// Closed loop: this many machines booting at once, the next powering on when one
    /// ends (default: all of them at once).
    #[arg(long)]
    pub(crate) concurrency: Option<u64>,

    /// Firmware to emulate.
    #[arg(long, value_enum, default_value_t = FirmwareChoice::Uefi)]
    pub(crate) firmware: FirmwareChoice,

    /// How the boot file is fetched.
    #[arg(long, value_enum, default_value_t = TftpMode::Auto)]
    pub(crate) tftp: TftpMode,

    /// Multiply the firmware's timeouts by this (1 = real firmware: DISCOVER 4, 8, 16,
    /// 32 s; 4011 REQUEST 4 x 1 s; TFTP 4 s (EDK2) or 1 s (iPXE), 6 tries; HTTP 15 s).
    /// 0.1 suits a lab that should fail fast.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) timeout_scale: f64,

    /// Stop after TFTP (servers without ironboot's HTTP API, e.g. dnsmasq); the same as
    /// `--stop-after tftp`.
    #[arg(long, conflicts_with = "stop_after")]
    pub(crate) no_http: bool,

    /// The last stage of each boot: `discover` measures ProxyDHCP alone (DISCOVER to
    /// OFFER), `request` adds the 4011 exchange, `tftp` the boot file, `http` the script,
    /// `image` the script's kernel and initrds.
    #[arg(long, value_enum, default_value_t = Stage::Http)]
    pub(crate) stop_after: Stage,

    /// With `--stop-after image`: the expected contents of the images, in the order the
    /// script fetches them (the kernel, then each initrd); repeat it for each. A body that
    /// differs fails the boot (`kernel_hash_mismatch`, `initrd_hash_mismatch`).
    #[arg(long)]
    pub(crate) verify_image: Vec<PathBuf>,

    /// The server's HTTP API port.
    #[arg(long, default_value_t = crate::cli::flags::DEFAULT_API_PORT)]
    pub(crate) api_port: u16,

    /// Addresses the machines use once "configured" (4011 REQUEST, TFTP, HTTP), given to
    /// them in turn; they must be local. Default: the address the kernel picks.
    #[arg(long, value_delimiter = ',')]
    pub(crate) bind: Vec<Ipv4Addr>,

    /// MAC of machine 0; machine i has this plus i.
    #[arg(long, value_parser = parse_mac, default_value = "52:54:00:00:00:00")]
    pub(crate) mac_base: [u8; 6],

    /// Index of the first machine (MAC offset and the UUID's last field), so storms from
    /// several generators do not collide.
    #[arg(long, default_value_t = 1)]
    pub(crate) first: u64,

    /// Send the DISCOVER to the server's port 67 instead of broadcasting it (the OFFER is
    /// still expected on the client port).
    #[arg(long)]
    pub(crate) unicast_discover: bool,

    /// The machines' DHCP port (68; other values only for servers configured alike).
    #[arg(long, default_value_t = 68)]
    pub(crate) client_port: u16,

    /// The server's DHCP port.
    #[arg(long, default_value_t = 67)]
    pub(crate) dhcp_port: u16,

    /// The server's boot server discovery port.
    #[arg(long, default_value_t = 4011)]
    pub(crate) pxe_port: u16,

    /// The TFTP server's port.
    #[arg(long, default_value_t = 69)]
    pub(crate) tftp_port: u16,

    /// Worker threads of the load generator.
    #[arg(long, default_value_t = 1)]
    pub(crate) threads: usize,

    /// No progress line on stderr.
    #[arg(long)]
    pub(crate) quiet: bool,

    /// Print the final report as JSON on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

/// The firmware's timeouts at scale 1.
pub(crate) mod timeouts {
    use std::time::Duration;

    /// EDK2: `PXEBC_DHCP4_DISCOVER_INIT_TIMEOUT << try`, 4 tries.
    pub(crate) const DISCOVER: [Duration; 4] = [
        Duration::from_secs(4),
        Duration::from_secs(8),
        Duration::from_secs(16),
        Duration::from_secs(32),
    ];
    /// EDK2: `PXEBC_BOOT_REQUEST_TIMEOUT` 1 s, `PXEBC_BOOT_REQUEST_RETRIES` 4.
    pub(crate) const REQUEST: [Duration; 4] = [Duration::from_secs(1); 4];
    /// EDK2: `PXEBC_MTFTP_TIMEOUT` 4 s.
    pub(crate) const TFTP_EDK2: Duration = Duration::from_secs(4);
    /// iPXE starts at a fraction of a second and backs off; 1 s as a steady value.
    pub(crate) const TFTP_IPXE: Duration = Duration::from_secs(1);
    /// EDK2: `PXEBC_MTFTP_RETRIES` 6.
    pub(crate) const TFTP_RETRIES: u32 = 6;
    /// iPXE's HTTP stage.
    pub(crate) const HTTP: Duration = Duration::from_secs(15);
    /// Never below this, whatever the scale: a lab's loaded server must not read as dead.
    pub(crate) const FLOOR: Duration = Duration::from_millis(50);
    /// The HTTP floor (a TCP handshake and a script on a busy 2-core machine).
    pub(crate) const HTTP_FLOOR: Duration = Duration::from_secs(2);
}

fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    let mut mac = [0u8; 6];
    if parts.len() != 6 {
        return Err(format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"));
    }
    for (b, p) in mac.iter_mut().zip(parts) {
        *b = u8::from_str_radix(p, 16)
            .ok()
            .filter(|_| p.len() == 2)
            .ok_or_else(|| format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"))?;
    }
    Ok(mac)
}

/// How machines are started.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Load {
    /// This many per second, whatever the server does.
    Rate(f64),
    /// This many at once.
    Concurrency(u64),
}

/// A validated PXE storm.
#[derive(Debug, Clone)]
pub(crate) struct PxePlan {
    pub(crate) server: Ipv4Addr,
    pub(crate) interface: Option<String>,
    pub(crate) machines: u64,
    pub(crate) load: Load,
    pub(crate) firmware: FirmwareChoice,
    pub(crate) tftp: TftpMode,
    /// The last stage each boot runs.
    pub(crate) last_stage: Stage,
    pub(crate) api_port: u16,
    pub(crate) bind: Vec<Ipv4Addr>,
    pub(crate) mac_base: [u8; 6],
    pub(crate) first: u64,
    pub(crate) unicast_discover: bool,
    pub(crate) client_port: u16,
    pub(crate) dhcp_port: u16,
    pub(crate) pxe_port: u16,
    pub(crate) tftp_port: u16,
    pub(crate) discover_timeouts: Vec<Duration>,
    pub(crate) request_timeouts: Vec<Duration>,
    pub(crate) tftp_edk2_retransmit: Duration,
    pub(crate) tftp_ipxe_retransmit: Duration,
    pub(crate) http_timeout: Duration,
    /// SHA-256 of each `--verify-image` file, in order.
    pub(crate) image_digests: Vec<[u8; 32]>,
    pub(crate) progress: bool,
}

/// UUIDs of storm machines: `57a7c000-0000-4000-8000-<index>`.
pub(crate) const UUID_TAG: u32 = 0x57a7_c000;

impl PxePlan {
    /// Machine `i` (0-based within this run).
    pub(crate) fn identity(&self, i: u64) -> packet::Identity {
        let firmware = match self.firmware {
            FirmwareChoice::Uefi => Firmware::Uefi,
            FirmwareChoice::Bios => Firmware::Bios,
            FirmwareChoice::Mixed if i % 2 == 1 => Firmware::Bios,
            FirmwareChoice::Mixed => Firmware::Uefi,
        };
        packet::Identity::nth(self.mac_base, UUID_TAG, self.first + i, firmware)
    }

    /// The TFTP request (and the EDK2 probe before it) for `file`.
    pub(crate) fn tftp_requests(
        &self,
        firmware: Firmware,
        file: &str,
    ) -> (ClientOptions, Option<ClientOptions>) {
        let edk2 = match self.tftp {
            TftpMode::Edk2 => true,
            TftpMode::Ipxe => false,
            TftpMode::Auto => firmware == Firmware::Uefi,
        };
        let base = |retransmit| {
            ClientOptions::new(file)
                .retransmit(retransmit)
                .retries(timeouts::TFTP_RETRIES)
        };
        if edk2 {
            let r = self.tftp_edk2_retransmit;
            let probe = base(r)
                .tsize()
                .blksize(EDK2_BLKSIZE)
                .windowsize(EDK2_WINDOWSIZE)
                .probe();
            (
                base(r).blksize(EDK2_BLKSIZE).windowsize(EDK2_WINDOWSIZE),
                Some(probe),
            )
        } else {
            (
                base(self.tftp_ipxe_retransmit)
                    .blksize(IPXE_BLKSIZE)
                    .tsize(),
                None,
            )
        }
    }
}

fn label<T: ValueEnum>(v: T) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_owned())
        .unwrap_or_default()
}

impl PxeArgs {
    /// Check the flags and build the plan.
    pub(crate) fn plan(&self) -> Result<PxePlan, StormError> {
        if self.machines == 0 {
            return Err(flag("machines", "must be at least 1"));
        }
        if self.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
            return Err(flag(
                "rate",
                "must be a positive number of machines per second",
            ));
        }
        if self.concurrency == Some(0) {
            return Err(flag("concurrency", "must be at least 1"));
        }
        if !(self.timeout_scale.is_finite()
            && self.timeout_scale > 0.0
            && self.timeout_scale <= 100.0)
        {
            return Err(flag("timeout-scale", "must be in (0, 100]"));
        }
        if self.threads == 0 {
            return Err(flag("threads", "must be at least 1"));
        }
        if self.interface.as_deref().is_some_and(str::is_empty) {
            return Err(flag("interface", "must not be empty"));
        }
        let last_stage = if self.no_http {
            Stage::Tftp
        } else {
            self.stop_after
        };
        if !self.verify_image.is_empty() && last_stage != Stage::Image {
            return Err(flag("verify-image", "needs --stop-after image"));
        }
        let image_digests = self
            .verify_image
            .iter()
            .map(|path| {
                image::file_digest(path)
                    .map_err(|e| flag("verify-image", format!("reading {}: {e}", path.display())))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let scale = |d: Duration, floor: Duration| d.mul_f64(self.timeout_scale).max(floor);
        let load = match (self.rate, self.concurrency) {
            (Some(r), _) => Load::Rate(r),
            (None, Some(c)) => Load::Concurrency(c.min(self.machines)),
            (None, None) => Load::Concurrency(self.machines),
        };
        Ok(PxePlan {
            server: self.server,
            interface: self.interface.clone(),
            machines: self.machines,
            load,
            firmware: self.firmware,
            tftp: self.tftp,
            last_stage,
            api_port: self.api_port,
            bind: self.bind.clone(),
            mac_base: self.mac_base,
            first: self.first,
            unicast_discover: self.unicast_discover,
            client_port: self.client_port,
            dhcp_port: self.dhcp_port,
            pxe_port: self.pxe_port,
            tftp_port: self.tftp_port,
            discover_timeouts: timeouts::DISCOVER
                .iter()
                .map(|&d| scale(d, timeouts::FLOOR))
                .collect(),
            request_timeouts: timeouts::REQUEST
                .iter()
                .map(|&d| scale(d, timeouts::FLOOR))
                .collect(),
            tftp_edk2_retransmit: scale(timeouts::TFTP_EDK2, timeouts::FLOOR),
            tftp_ipxe_retransmit: scale(timeouts::TFTP_IPXE, timeouts::FLOOR),
            http_timeout: scale(timeouts::HTTP, timeouts::HTTP_FLOOR),
            image_digests,
            progress: !self.quiet,
        })
    }
}

/// Run `ironboot storm pxe` and print its report.
pub(crate) fn storm_pxe(args: &PxeArgs) -> Result<PxeReport, StormError> {
    let plan = args.plan()?;
    let concurrent = match plan.load {
        Load::Concurrency(c) => c,
        Load::Rate(_) => plan.machines,
    };
    // A TFTP socket (two while the EDK2 probe's lingers), an HTTP socket for the script
    // and one kept-alive TCP connection for the images per machine that gets that far;
    // the DHCP stages share the client-port sockets.
    let per_machine = match plan.last_stage {
        Stage::Discover | Stage::Request => 0,
        Stage::Tftp => 2,
        Stage::Http => 3,
        Stage::Image => 4,
    };
    super::raise_file_limit(
        per_machine * concurrent + 64 + plan.bind.len() as u64,
        "machines at once (--concurrency, --rate)",
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()
        .map_err(StormError::Runtime)?;
    let firmware = label(plan.firmware);
    let tftp = label(plan.tftp);
    let report = runtime.block_on(run::run(plan, firmware, tftp))?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::flags::{Cli, Command};
    use crate::tools::storm::{StormArgs, StormTarget};

    fn parse(args: &[&str]) -> Result<PxeArgs, clap::Error> {
        let base = ["ironboot", "storm", "pxe", "--server", "10.97.0.1"];
        let cli = Cli::try_parse_from(base.into_iter().chain(args.iter().copied()))?;
        match cli.command {
            Some(Command::Storm(StormArgs {
                target: StormTarget::Pxe(p),
            })) => Ok(p),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults_and_scaled_timeouts() {
        let plan = parse(&["--machines", "10"]).unwrap().plan().unwrap();
        assert_eq!(plan.load, Load::Concurrency(10));
        assert_eq!(plan.last_stage, Stage::Http);
        assert_eq!(plan.discover_timeouts, timeouts::DISCOVER);
        assert_eq!(plan.tftp_edk2_retransmit, Duration::from_secs(4));
        let id = plan.identity(0);
        assert_eq!(id.mac, [0x52, 0x54, 0, 0, 0, 1]);
        assert_eq!(id.uuid_string(), "57a7c000-0000-4000-8000-000000000001");
        let (real, probe) = plan.tftp_requests(id.firmware, "snp.efi");
        let opts = |o: &ClientOptions| {
            o.options()
                .iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect::<Vec<_>>()
        };
        assert_eq!(opts(&real), ["blksize=1468", "windowsize=4"]);
        assert_eq!(
            opts(&probe.unwrap()),
            ["tsize=0", "blksize=1468", "windowsize=4"]
        );

        let plan = parse(&[
            "--machines",
            "4",
            "--firmware",
            "mixed",
            "--timeout-scale",
            "0.1",
            "--concurrency",
            "9",
            "--mac-base",
            "02-00-00-00-00-00",
            "--first",
            "0",
            "--no-http",
        ])
        .unwrap()
        .plan()
        .unwrap();
        assert_eq!(
            plan.load,
            Load::Concurrency(4),
            "never more than the machines"
        );
        assert_eq!(plan.last_stage, Stage::Tftp, "--no-http stops after TFTP");
        assert_eq!(plan.discover_timeouts[0], Duration::from_millis(400));
        assert_eq!(plan.request_timeouts[3], Duration::from_millis(100));
        assert_eq!(plan.http_timeout, timeouts::HTTP_FLOOR);
        assert_eq!(plan.identity(0).firmware, Firmware::Uefi);
        let bios = plan.identity(1);
        assert_eq!(bios.firmware, Firmware::Bios);
        assert_eq!(bios.mac, [2, 0, 0, 0, 0, 1]);
        let (real, probe) = plan.tftp_requests(bios.firmware, "undionly.kpxe");
        assert!(probe.is_none());
        assert_eq!(opts(&real), ["blksize=1432", "tsize=0"]);
        let plan = parse(&["--rate", "50", "--tftp", "edk2", "--firmware", "bios"])
            .unwrap()
            .plan()
            .unwrap();
        assert_eq!(plan.load, Load::Rate(50.0));
        assert!(plan.tftp_requests(Firmware::Bios, "f").1.is_some());
        let plan = parse(&["--stop-after", "discover"])
            .unwrap()
            .plan()
            .unwrap();
        assert_eq!(plan.last_stage, Stage::Discover);
        let plan = parse(&["--stop-after", "image", "--verify-image", "/dev/null"])
            .unwrap()
            .plan()
            .unwrap();
        assert_eq!(plan.last_stage, Stage::Image);
        assert_eq!(
            plan.image_digests,
            [image::file_digest(std::path::Path::new("/dev/null")).unwrap()]
        );
        assert_ne!(plan.image_digests[0], [0; 32], "the SHA-256 of no bytes");
    }

    #[test]
    fn bad_flags_are_refused() {
        for (args, name) in [
            (&["--machines", "0"][..], "machines"),
            (&["--rate", "0"][..], "rate"),
            (&["--rate", "NaN"][..], "rate"),
            (&["--concurrency", "0"][..], "concurrency"),
            (&["--timeout-scale", "0"][..], "timeout-scale"),
            (&["--interface", ""][..], "interface"),
            (&["--verify-image", "/dev/null"][..], "verify-image"),
            (
                &["--stop-after", "image", "--verify-image", "/nonexistent/k"][..],
                "verify-image",
            ),
        ] {
            match parse(args).unwrap().plan() {
                Err(StormError::Flag { flag, .. }) => assert_eq!(flag, name),
                other => panic!("{args:?}: {other:?}"),
            }
        }
        assert!(parse(&["--rate", "5", "--concurrency", "5"]).is_err());
        assert!(parse(&["--mac-base", "52:54:00:00:00"]).is_err());
        assert!(parse(&["--mac-base", "52:54:00:00:00:0g"]).is_err());
        assert!(parse(&["--firmware", "arm"]).is_err());
        assert!(parse(&["--stop-after", "tftp", "--no-http"]).is_err());
        assert!(parse(&["--stop-after", "boot"]).is_err());
    }
}
