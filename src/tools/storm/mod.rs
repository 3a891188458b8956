//! `ironboot storm`: load generators that behave like a rack of booting machines.
//!
//! `storm pxe` boots N emulated machines the whole PXE way (DISCOVER, proxy OFFER, 4011
//! REQUEST, ACK, TFTP, HTTP boot script) and reports per stage; see [`pxe`].
//!
//! `storm tftp` runs N concurrent TFTP clients against any server (ironboot, dnsmasq,
//! tftpd-hpa, ...), each fetching a file over and over like firmware would, and reports
//! goodput, latency percentiles, failures by reason and retransmissions. The protocol is
//! the library's sans-IO [`ironboot_net::tftp::TftpClient`]; this module only moves its
//! datagrams (`transfer`), runs the clients (`run`) and does the arithmetic (`report`).

mod pxe;
mod report;
mod run;
mod transfer;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, Subcommand};
use ironboot_net::tftp::client::ClientOptions;

pub(crate) use report::Report;
pub(crate) use run::{Plan, Work, run};

/// Load generators: many concurrent clients against a boot server.
#[derive(Debug, Clone, Args)]
pub(crate) struct StormArgs {
    /// What to storm.
    #[command(subcommand)]
    pub(crate) target: StormTarget,
}

/// The protocols `storm` can load.
#[derive(Debug, Clone, Subcommand)]
pub(crate) enum StormTarget {
    /// Concurrent TFTP read transfers, closed loop (each client starts its next transfer
    /// when the last one ends).
    Tftp(TftpArgs),
    /// Whole PXE boots of emulated machines: DISCOVER, proxy OFFER, 4011 REQUEST, ACK,
    /// TFTP fetch, HTTP boot script; open loop (--rate) or closed loop (--concurrency).
    Pxe(pxe::PxeArgs),
}

/// `ironboot storm tftp`.
#[derive(Debug, Clone, Args)]
pub(crate) struct TftpArgs {
    /// The server: IP or IP:port (port 69 when left out).
    #[arg(long, value_parser = parse_server)]
    pub(crate) server: SocketAddrV4,

    /// File name to request.
    #[arg(long)]
    pub(crate) file: String,

    /// Concurrent clients.
    #[arg(long, default_value_t = 1)]
    pub(crate) clients: usize,

    /// Transfers per client.
    #[arg(long, default_value_t = 1, conflicts_with = "transfers")]
    pub(crate) count: u64,

    /// Total transfers, shared out among the clients as they become free (instead of
    /// --count).
    #[arg(long)]
    pub(crate) transfers: Option<u64>,

    /// Ask for this block size (RFC 2348).
    #[arg(long)]
    pub(crate) blksize: Option<u16>,

    /// Ask for this window size (RFC 7440).
    #[arg(long)]
    pub(crate) windowsize: Option<u16>,

    /// Ask for the transfer size (RFC 2349 tsize).
    #[arg(long)]
    pub(crate) tsize: bool,

    /// Ask for this retransmission timeout in seconds (RFC 2349); the clients then also
    /// retransmit at that interval unless --retransmit-ms is given.
    #[arg(long)]
    pub(crate) timeout: Option<u8>,

    /// Behave like OVMF/EDK2: a size probe (tsize, blksize 1468, windowsize 4) aborted
    /// with ERROR 8 once the OACK arrives, then the real request (blksize 1468, windowsize
    /// 4) from a new port.
    #[arg(long, conflicts_with_all = ["ipxe", "blksize", "windowsize", "tsize"])]
    pub(crate) edk2: bool,

    /// Behave like iPXE: blksize 1432 and tsize, no window.
    #[arg(long, conflicts_with_all = ["blksize", "windowsize", "tsize"])]
    pub(crate) ipxe: bool,

    /// The clients' retransmission interval in milliseconds (default: the accepted
    /// timeout option, else 1000).
    #[arg(long)]
    pub(crate) retransmit_ms: Option<u64>,

    /// Timeouts in a row before a client gives a transfer up.
    #[arg(long, default_value_t = 6)]
    pub(crate) retries: u32,

    /// Source address of the clients' sockets; repeat it (or give a comma-separated
    /// list) to spread the clients over several addresses in turn, as a rack of machines
    /// would be (servers may cap transfers per address).
    #[arg(long, value_delimiter = ',')]
    pub(crate) bind: Vec<Ipv4Addr>,

    /// Compare every transfer's bytes with this local file.
    #[arg(long)]
    pub(crate) verify: Option<PathBuf>,

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

/// The client retransmission interval when nothing else says.
const DEFAULT_RETRANSMIT: Duration = Duration::from_secs(1);
/// What OVMF asks for (captured; see the rig notes).
const EDK2_BLKSIZE: u16 = 1468;
/// What OVMF asks for.
const EDK2_WINDOWSIZE: u16 = 4;
/// What iPXE asks for.
const IPXE_BLKSIZE: u16 = 1432;

/// Why a storm could not run.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StormError {
    /// A flag value that makes no sense.
    #[error("--{flag}: {message}")]
    Flag {
        /// The flag's name.
        flag: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The --verify file could not be read.
    #[error("--verify: reading {path}")]
    Verify {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Too few file descriptors for the clients' sockets.
    #[error("RLIMIT_NOFILE: {0}")]
    FileLimit(String),
    /// The async runtime could not start.
    #[error("starting the async runtime")]
    Runtime(#[source] std::io::Error),
    /// No client socket could be opened at all.
    #[error("opening a client socket on {addr}")]
    Socket {
        /// The local address.
        addr: SocketAddrV4,
        /// The OS error.
        source: std::io::Error,
    },
}

fn parse_server(s: &str) -> Result<SocketAddrV4, String> {
    if let Ok(addr) = s.parse::<SocketAddrV4>() {
        return Ok(addr);
    }
    s.parse::<Ipv4Addr>()
        .map(|ip| SocketAddrV4::new(ip, 69))
        .map_err(|_| format!("{s:?} is not IPv4 or IPv4:port"))
}

fn flag(flag: &'static str, message: impl Into<String>) -> StormError {
    StormError::Flag {
        flag,
        message: message.into(),
    }
}

impl TftpArgs {
    /// The request every transfer makes (and the probe, for --edk2).
    fn requests(&self) -> (ClientOptions, Option<ClientOptions>) {
        let retransmit = self
            .retransmit_ms
            .map(Duration::from_millis)
            .or(self.timeout.map(|s| Duration::from_secs(u64::from(s))))
            .unwrap_or(DEFAULT_RETRANSMIT);
        let base = || {
            ClientOptions::new(self.file.as_str())
                .retransmit(retransmit)
                .retries(self.retries)
        };
        let timeout = |o: ClientOptions| match self.timeout {
            Some(t) => o.timeout(t),
            None => o,
        };
        if self.edk2 {
            // The capture's order: tsize, blksize, windowsize; then blksize, windowsize.
            let probe = base()
                .tsize()
                .blksize(EDK2_BLKSIZE)
                .windowsize(EDK2_WINDOWSIZE)
                .probe();
            let real = base().blksize(EDK2_BLKSIZE).windowsize(EDK2_WINDOWSIZE);
            return (timeout(real), Some(timeout(probe)));
        }
        if self.ipxe {
            return (timeout(base().blksize(IPXE_BLKSIZE).tsize()), None);
        }
        let mut o = base();
        if let Some(b) = self.blksize {
            o = o.blksize(b);
        }
        if let Some(w) = self.windowsize {
            o = o.windowsize(w);
        }
        if self.tsize {
            o = o.tsize();
        }
        (timeout(o), None)
    }

    /// Check the flags and build the plan.
    pub(crate) fn plan(&self) -> Result<Plan, StormError> {
        if self.clients == 0 {
            return Err(flag("clients", "must be at least 1"));
        }
        if self.count == 0 || self.transfers == Some(0) {
            return Err(flag("count", "at least one transfer"));
        }
        if self.blksize.is_some_and(|b| !(8..=65464).contains(&b)) {
            return Err(flag("blksize", "must be 8..65464 (RFC 2348)"));
        }
        if self.windowsize == Some(0) {
            return Err(flag("windowsize", "must be at least 1"));
        }
        if self.timeout == Some(0) {
            return Err(flag("timeout", "must be 1..255 (RFC 2349)"));
        }
        if self.retransmit_ms == Some(0) {
            return Err(flag("retransmit-ms", "must be positive"));
        }
        if self.threads == 0 {
            return Err(flag("threads", "must be at least 1"));
        }
        if self.file.is_empty() || self.file.contains('\0') {
            return Err(flag("file", "must be a non-empty name without NUL"));
        }
        let expect = match &self.verify {
            Some(path) => Some(Bytes::from(std::fs::read(path).map_err(|source| {
                StormError::Verify {
                    path: path.clone(),
                    source,
                }
            })?)),
            None => None,
        };
        let (request, probe) = self.requests();
        let work = match self.transfers {
            Some(total) => Work::Total(total),
            None => Work::PerClient(self.count),
        };
        Ok(Plan {
            server: self.server,
            bind: if self.bind.is_empty() {
                vec![Ipv4Addr::UNSPECIFIED]
            } else {
                self.bind.clone()
            },
            clients: self.clients,
            work,
            request,
            probe,
            expect,
            progress: !self.quiet,
        })
    }
}

/// Raise the soft limit of open files to the hard limit if `needed` descriptors do not
/// fit under it (every client holds a socket, a probing one briefly two).
fn raise_file_limit(needed: u64, fewer: &str) -> Result<(), StormError> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) =
        getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| StormError::FileLimit(e.to_string()))?;
    if needed <= soft {
        return Ok(());
    }
    if needed > hard {
        return Err(StormError::FileLimit(format!(
            "{needed} descriptors needed, the hard limit is {hard}; raise it (ulimit -Hn) or \
             use fewer {fewer}"
        )));
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(|e| StormError::FileLimit(e.to_string()))
}

/// Run `ironboot storm ...`: exit 0 if every transfer succeeded, 1 if any failed, 2 if
/// the storm could not run.
pub(crate) fn main(args: &StormArgs) -> ExitCode {
    let failed = match &args.target {
        StormTarget::Tftp(tftp) => storm_tftp(tftp).map(|r| r.failed()),
        StormTarget::Pxe(p) => pxe::storm_pxe(p).map(|r| r.failed),
    };
    match failed {
        Ok(0) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(e) => {
            let mut msg = format!("ironboot storm: error: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg.push_str(&format!(": {s}"));
                source = s.source();
            }
            eprintln!("{msg}");
            ExitCode::from(2)
        }
    }
}

fn storm_tftp(args: &TftpArgs) -> Result<Report, StormError> {
    let plan = args.plan()?;
    raise_file_limit(2 * plan.clients as u64 + 64, "--clients")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()
        .map_err(StormError::Runtime)?;
    let report = runtime.block_on(run(plan))?;
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

    /// `ironboot storm tftp --server 10.97.0.1 --file f` plus `args`.
    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        let base = [
            "ironboot",
            "storm",
            "tftp",
            "--server",
            "10.97.0.1",
            "--file",
            "f",
        ];
        Cli::try_parse_from(base.into_iter().chain(args.iter().copied()))
    }

    fn tftp(args: &[&str]) -> TftpArgs {
        let cli = parse(args).unwrap();
        match cli.command {
            Some(Command::Storm(StormArgs {
                target: StormTarget::Tftp(t),
            })) => t,
            other => panic!("{other:?}"),
        }
    }

    fn request_options(o: &ClientOptions) -> Vec<(&str, &str)> {
        o.options()
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect()
    }

    #[test]
    fn presets_ask_what_the_firmware_asks() {
        let edk2 = tftp(&["--edk2"]).plan().unwrap();
        assert_eq!(edk2.server, "10.97.0.1:69".parse().unwrap());
        assert_eq!(
            request_options(&edk2.request),
            [("blksize", "1468"), ("windowsize", "4")]
        );
        assert_eq!(
            request_options(edk2.probe.as_ref().unwrap()),
            [("tsize", "0"), ("blksize", "1468"), ("windowsize", "4")]
        );
        let ipxe = tftp(&["--ipxe"]).plan().unwrap();
        assert_eq!(
            request_options(&ipxe.request),
            [("blksize", "1432"), ("tsize", "0")]
        );
        assert!(ipxe.probe.is_none());
        let custom = tftp(&["--blksize", "512", "--windowsize", "16", "--timeout", "3"]);
        let plan = custom.plan().unwrap();
        assert_eq!(
            request_options(&plan.request),
            [("blksize", "512"), ("windowsize", "16"), ("timeout", "3")]
        );
    }

    #[test]
    fn bad_flags_are_refused() {
        for (args, name) in [
            (&["--clients", "0"][..], "clients"),
            (&["--blksize", "7"][..], "blksize"),
            (&["--windowsize", "0"][..], "windowsize"),
            (&["--count", "0"][..], "count"),
        ] {
            match tftp(args).plan() {
                Err(StormError::Flag { flag, .. }) => assert_eq!(flag, name),
                other => panic!("{args:?}: {other:?}"),
            }
        }
        for args in [
            &["--edk2", "--ipxe"][..],
            &["--edk2", "--blksize", "512"][..],
            &["--count", "2", "--transfers", "9"][..],
        ] {
            let r = parse(args);
            assert!(r.is_err(), "{args:?}");
        }
        assert_eq!(
            parse_server("10.0.0.1:6969").unwrap(),
            "10.0.0.1:6969".parse().unwrap()
        );
        assert!(parse_server("example.com").is_err());
    }
}
