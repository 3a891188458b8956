//! `ironboot bmc`: power control of one BMC from the command line, for operators.
//!
//! ```text
//! ironboot bmc status   --ipmi 10.0.0.21 --user admin --password-env BMC_PASSWORD
//! ironboot bmc pxe-once --redfish https://10.0.0.22 --user root --password-env BMC_PASSWORD --mode bios --insecure
//! ironboot bmc on       --api 172.29.0.1:34567 --wait --json
//! ```
//!
//! The password is only ever read from the environment variable named by
//! `--password-env`, never from the command line (where `ps` and shell history show
//! it). Exit status: 0 on success, 1 when the BMC operation failed, 2 for a usage or
//! configuration error. Every error names the BMC.
//!
//! The hidden `ironboot bmc sweep` reads the power state of many IPMI BMCs, one after
//! the other or through the fleet executor, and times it (benches/bmc_sweep.sh).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{ArgGroup, Args, Subcommand, ValueEnum};
use ironboot_bmc::fleet::{Fleet, FleetOptions, Operation, Outcome};
use ironboot_bmc::ipmi::{CipherSuite, DEFAULT_ATTEMPT_TIMEOUT, DEFAULT_PORT as IPMI_PORT};
use ironboot_bmc::select::{Backend, BackendKind};
use ironboot_bmc::{
    BmcError, BootMode, HttpApiClient, IpmiClient, IpmiConfig, PowerControl, PowerState,
    RedfishClient, RedfishConfig, wait_for_power_state,
};
use serde_json::{Value, json};

/// Exit status of a failed BMC operation.
const EXIT_FAILED: u8 = 1;
/// Exit status of a usage or configuration error (as clap's own).
const EXIT_USAGE: u8 = 2;

/// `ironboot bmc`: drive one BMC.
#[derive(Debug, Clone, Args)]
pub(crate) struct BmcArgs {
    /// What to do.
    #[command(subcommand)]
    pub(crate) action: BmcAction,
}

/// The operations.
#[derive(Debug, Clone, Subcommand)]
pub(crate) enum BmcAction {
    /// Print the chassis power state.
    Status(Target),
    /// Power the machine on.
    On(PowerArgs),
    /// Power the machine off (hard).
    Off(PowerArgs),
    /// Power cycle (reboot) the machine.
    Cycle(Target),
    /// Make the next boot, only, a network (PXE) boot.
    PxeOnce(PxeArgs),
    /// Time one power-status sweep of many IPMI BMCs (benchmark tool).
    #[command(hide = true)]
    Sweep(SweepArgs),
}

/// Which BMC and how to reach it.
#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("bmc").required(true).args(["ipmi", "redfish", "api"])))]
pub(crate) struct Target {
    /// IPMI v2.0 (RMCP+) BMC: host or IP, optionally with :PORT (623).
    #[arg(long, value_name = "HOST[:PORT]")]
    pub(crate) ipmi: Option<String>,

    /// Redfish service: http(s)://host[:port].
    #[arg(long, value_name = "URL")]
    pub(crate) redfish: Option<String>,

    /// The Go provider's HTTP power API of an emulated machine: [http://]host:port.
    #[arg(long, value_name = "URL")]
    pub(crate) api: Option<String>,

    /// User name (IPMI and Redfish).
    #[arg(long)]
    pub(crate) user: Option<String>,

    /// Name of the environment variable holding the password (IPMI and Redfish); the
    /// password itself is never taken on the command line.
    #[arg(long, value_name = "VAR")]
    pub(crate) password_env: Option<String>,

    /// Bound of the whole operation (e.g. 20s, 1500ms, 2m).
    #[arg(long, value_name = "DURATION", default_value = "20s", value_parser = parse_duration)]
    pub(crate) timeout: Duration,

    /// IPMI: cipher suite to use, 3 or 17 (default: ask the BMC, prefer 17).
    #[arg(long, value_name = "3|17", value_parser = parse_cipher_suite)]
    pub(crate) cipher_suite: Option<CipherSuite>,

    /// Redfish: accept any TLS certificate (self-signed BMC certificates).
    #[arg(long)]
    pub(crate) insecure: bool,

    /// Redfish: the system to drive, by UUID or Id (default: the only one).
    #[arg(long, value_name = "UUID")]
    pub(crate) system: Option<String>,

    /// Print the result as one JSON object on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `on` / `off`.
#[derive(Debug, Clone, Args)]
pub(crate) struct PowerArgs {
    /// The BMC.
    #[command(flatten)]
    pub(crate) target: Target,
    /// Poll the power state until the change is seen (within --timeout).
    #[arg(long)]
    pub(crate) wait: bool,
}

/// Firmware mode of a PXE-once override.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ModeArg {
    /// UEFI.
    Uefi,
    /// Legacy BIOS.
    Bios,
}

/// `pxe-once`.
#[derive(Debug, Clone, Args)]
pub(crate) struct PxeArgs {
    /// The BMC.
    #[command(flatten)]
    pub(crate) target: Target,
    /// Firmware mode of the network boot.
    #[arg(long, value_enum, default_value = "uefi")]
    pub(crate) mode: ModeArg,
}

/// `sweep` (hidden): power status of many IPMI BMCs.
#[derive(Debug, Clone, Args)]
pub(crate) struct SweepArgs {
    /// IPMI BMCs, HOST[:PORT], comma-separated or repeated.
    #[arg(
        long,
        value_name = "HOST[:PORT]",
        value_delimiter = ',',
        required = true
    )]
    pub(crate) ipmi: Vec<String>,
    /// User name.
    #[arg(long)]
    pub(crate) user: String,
    /// Environment variable holding the password.
    #[arg(long, value_name = "VAR")]
    pub(crate) password_env: String,
    /// Operations in flight at once through the fleet executor; 0: a plain sequential
    /// loop, without the executor.
    #[arg(long, default_value_t = 32)]
    pub(crate) concurrency: usize,
    /// Timed sweeps (after one untimed warm-up sweep).
    #[arg(long, default_value_t = 3)]
    pub(crate) repeat: usize,
    /// Bound of each operation.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub(crate) timeout: Duration,
    /// Cipher suite, 3 or 17 (default: ask each BMC, in the untimed warm-up sweep).
    #[arg(long, value_name = "3|17", value_parser = parse_cipher_suite)]
    pub(crate) cipher_suite: Option<CipherSuite>,
    /// Print the result as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `--cipher-suite`: 3 or 17.
fn parse_cipher_suite(s: &str) -> Result<CipherSuite, String> {
    match s.trim() {
        "3" => Ok(CipherSuite::Suite3),
        "17" => Ok(CipherSuite::Suite17),
        other => Err(format!("{other:?}: supported cipher suites are 3 and 17")),
    }
}

/// A positive Go duration (`500ms`, `20s`, `2m`, `1h30m`, see [`crate::cli::go_duration`]), or
/// a plain number of seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let d = match s.parse::<f64>() {
        Ok(seconds) if s.bytes().all(|b| b.is_ascii_digit() || b == b'.') => {
            Duration::try_from_secs_f64(seconds).map_err(|e| format!("{s:?}: {e}"))?
        }
        _ => crate::cli::go_duration::parse(s).map_err(|e| e.to_string())?,
    };
    if d.is_zero() {
        return Err(format!("{s:?}: must be more than zero"));
    }
    Ok(d)
}

/// `HOST[:PORT]` of an IPMI BMC: `10.0.0.1`, `10.0.0.1:6230`, `bmc.lan:623`,
/// `[fd00::1]:623` or a bare IPv6 address.
pub(crate) fn parse_ipmi_target(s: &str) -> Result<(String, u16), String> {
    let s = s.trim();
    let bad = |why: &str| format!("--ipmi {s:?}: {why} (expected HOST or HOST:PORT)");
    if s.is_empty() {
        return Err(bad("empty"));
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (host, tail) = rest.split_once(']').ok_or_else(|| bad("unclosed ["))?;
        let port = match tail {
            "" => IPMI_PORT,
            t => t
                .strip_prefix(':')
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| bad("bad port"))?,
        };
        return Ok((host.to_owned(), port));
    }
    match s.matches(':').count() {
        0 => Ok((s.to_owned(), IPMI_PORT)),
        1 => {
            let (host, port) = s.split_once(':').ok_or_else(|| bad("bad port"))?;
            let port: u16 = port.parse().map_err(|_| bad("bad port"))?;
            if host.is_empty() || port == 0 {
                return Err(bad("empty host or port 0"));
            }
            Ok((host.to_owned(), port))
        }
        // A bare IPv6 address.
        _ => Ok((s.to_owned(), IPMI_PORT)),
    }
}

/// A usage or configuration problem, said before any BMC is contacted.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct UsageError(String);

fn usage(msg: impl Into<String>) -> UsageError {
    UsageError(msg.into())
}

/// The password from `--password-env VAR`.
fn password(password_env: Option<&str>, what: &str) -> Result<String, UsageError> {
    let Some(var) = password_env else {
        return Err(usage(format!(
            "{what} needs --password-env VAR naming the environment variable that holds the \
             password (it is never taken on the command line)"
        )));
    };
    match std::env::var(var) {
        Ok(p) if !p.is_empty() => Ok(p),
        Ok(_) => Err(usage(format!(
            "--password-env: environment variable {var} is empty"
        ))),
        Err(std::env::VarError::NotPresent) => Err(usage(format!(
            "--password-env: environment variable {var} is not set"
        ))),
        Err(std::env::VarError::NotUnicode(_)) => Err(usage(format!(
            "--password-env: environment variable {var} is not valid UTF-8"
        ))),
    }
}

fn user(user: Option<&str>, what: &str) -> Result<String, UsageError> {
    user.map(str::to_owned)
        .ok_or_else(|| usage(format!("{what} needs --user")))
}

/// An IPMI configuration whose retransmissions fill `timeout`.
fn ipmi_config(
    host: String,
    port: u16,
    user: String,
    pass: String,
    timeout: Duration,
) -> IpmiConfig {
    let mut cfg = IpmiConfig::new(host, user, pass);
    cfg.port = port;
    cfg.timeout = timeout;
    // At least a few attempts however short the bound, never more than 1 s apart.
    cfg.attempt_timeout = DEFAULT_ATTEMPT_TIMEOUT
        .min((timeout / 4).max(Duration::from_millis(100)))
        .min(timeout);
    let attempts = timeout.as_millis() / cfg.attempt_timeout.as_millis().max(1);
    cfg.retries = u32::try_from(attempts).unwrap_or(u32::MAX).max(cfg.retries);
    cfg
}

/// The back end `target` names, built but not yet contacted.
fn backend(target: &Target) -> Result<Backend, UsageError> {
    if let Some(ipmi) = &target.ipmi {
        let (host, port) = parse_ipmi_target(ipmi).map_err(usage)?;
        let user = user(target.user.as_deref(), "--ipmi")?;
        let pass = password(target.password_env.as_deref(), "--ipmi")?;
        let mut cfg = ipmi_config(host, port, user, pass, target.timeout);
        cfg.cipher_suite = target.cipher_suite;
        return IpmiClient::new(cfg)
            .map(Backend::Ipmi)
            .map_err(|e| usage(e.to_string()));
    }
    if let Some(url) = &target.redfish {
        let user = user(target.user.as_deref(), "--redfish")?;
        let pass = password(target.password_env.as_deref(), "--redfish")?;
        let mut cfg = RedfishConfig::new(url.trim(), user, pass);
        cfg.insecure_skip_tls_verify = target.insecure;
        cfg.system_id = target.system.clone();
        cfg.timeout = target.timeout;
        return RedfishClient::new(cfg)
            .map(|c| Backend::Redfish(Box::new(c)))
            .map_err(|e| usage(e.to_string()));
    }
    if let Some(api) = &target.api {
        let address = api
            .trim()
            .trim_start_matches("http://")
            .trim_end_matches('/');
        return HttpApiClient::with_timeout(address, target.timeout)
            .map(Backend::Api)
            .map_err(|e| usage(e.to_string()));
    }
    Err(usage("name the BMC with --ipmi, --redfish or --api"))
}

/// The BMC as the user named it, for errors before a client exists.
fn named(target: &Target) -> String {
    target
        .ipmi
        .as_ref()
        .or(target.redfish.as_ref())
        .or(target.api.as_ref())
        .cloned()
        .unwrap_or_default()
}

fn error_kind(e: &BmcError) -> &'static str {
    match e {
        BmcError::AuthRejected { .. } => "auth_rejected",
        BmcError::Timeout { .. } => "timeout",
        BmcError::Unreachable { .. } => "unreachable",
        BmcError::Unsupported { .. } => "unsupported",
        BmcError::Protocol { .. } => "protocol",
    }
}

fn power_word(state: PowerState) -> &'static str {
    match state {
        PowerState::On => "on",
        PowerState::Off => "off",
    }
}

/// Runs `ironboot bmc ...`.
pub(crate) fn main(args: &BmcArgs) -> ExitCode {
    init_logging();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ironboot bmc: error: starting the async runtime: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match &args.action {
        BmcAction::Sweep(sweep_args) => runtime.block_on(sweep(sweep_args)),
        action => runtime.block_on(one(action)),
    }
}

/// Errors only, unless RUST_LOG asks for more: the command prints its own result.
fn init_logging() {
    let filter = crate::cli::log_filter::from_env("off");
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

/// One operation on one BMC.
async fn one(action: &BmcAction) -> ExitCode {
    let (target, operation, wait) = match action {
        BmcAction::Status(t) => (t, Operation::Status, false),
        BmcAction::On(p) => (&p.target, Operation::On, p.wait),
        BmcAction::Off(p) => (&p.target, Operation::Off, p.wait),
        BmcAction::Cycle(t) => (t, Operation::Cycle, false),
        BmcAction::PxeOnce(p) => {
            let mode = match p.mode {
                ModeArg::Uefi => BootMode::Uefi,
                ModeArg::Bios => BootMode::Bios,
            };
            (&p.target, Operation::PxeOnce(mode), false)
        }
        BmcAction::Sweep(_) => unreachable!("handled by main"),
    };
    let bmc = match backend(target) {
        Ok(b) => b,
        Err(e) => {
            let bmc = named(target);
            if target.json {
                println!(
                    "{}",
                    json!({"bmc": bmc, "operation": operation.name(), "ok": false,
                           "error_kind": "usage", "error": e.to_string()})
                );
            }
            eprintln!("ironboot bmc: error: BMC {bmc}: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let started = Instant::now();
    let result = async {
        let outcome = operation.apply(&bmc).await?;
        if wait {
            let want = if operation == Operation::On {
                PowerState::On
            } else {
                PowerState::Off
            };
            let left = target.timeout.saturating_sub(started.elapsed());
            wait_for_power_state(&bmc, want, left, Duration::from_millis(500)).await?;
            return Ok(Outcome::Power(want));
        }
        Ok::<_, BmcError>(outcome)
    }
    .await;
    let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    report(&bmc, operation, &result, target.json, elapsed_ms)
}

fn report(
    bmc: &Backend,
    operation: Operation,
    result: &Result<Outcome, BmcError>,
    as_json: bool,
    elapsed_ms: u64,
) -> ExitCode {
    let address = bmc.address();
    let kind: BackendKind = bmc.kind();
    match result {
        Ok(outcome) => {
            if as_json {
                let mut out = json!({"bmc": address, "backend": kind.as_str(),
                    "operation": operation.name(), "ok": true, "elapsed_ms": elapsed_ms});
                if let Outcome::Power(state) = outcome {
                    out["power"] = Value::from(power_word(*state));
                }
                if let Operation::PxeOnce(mode) = operation {
                    out["mode"] = Value::from(mode.to_string());
                }
                println!("{out}");
            } else {
                let what = match (operation, outcome) {
                    (Operation::Status, Outcome::Power(s)) => format!("power {}", power_word(*s)),
                    (_, Outcome::Power(s)) => format!("powered {}", power_word(*s)),
                    (Operation::On, _) => "power on accepted".to_owned(),
                    (Operation::Off, _) => "power off accepted".to_owned(),
                    (Operation::Cycle, _) => "power cycle accepted".to_owned(),
                    (Operation::PxeOnce(mode), _) => {
                        format!("next boot from the network ({mode}) set")
                    }
                    (op, _) => format!("{op} done"),
                };
                println!("{address} ({kind}): {what}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            if as_json {
                println!(
                    "{}",
                    json!({"bmc": address, "backend": kind.as_str(),
                           "operation": operation.name(), "ok": false,
                           "error_kind": error_kind(e), "error": e.to_string(),
                           "elapsed_ms": elapsed_ms})
                );
            }
            eprintln!("ironboot bmc: error: {operation} over {kind}: {e}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// Median of some durations in ms.
fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// `ironboot bmc sweep`.
async fn sweep(args: &SweepArgs) -> ExitCode {
    let pass = match password(Some(&args.password_env), "sweep") {
        Ok(p) => p,
        Err(e) => {
            eprintln!("ironboot bmc sweep: error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let mut clients = Vec::new();
    for spec in &args.ipmi {
        let built = parse_ipmi_target(spec).and_then(|(host, port)| {
            let mut cfg = ipmi_config(host, port, args.user.clone(), pass.clone(), args.timeout);
            cfg.cipher_suite = args.cipher_suite;
            IpmiClient::new(cfg).map_err(|e| e.to_string())
        });
        match built {
            Ok(c) => clients.push(c),
            Err(e) => {
                eprintln!("ironboot bmc sweep: error: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }
    let n = clients.len();
    let mode = if args.concurrency == 0 {
        "sequential"
    } else {
        "fleet"
    };
    // Sequential: a plain loop, one BMC after the other. Fleet: the executor.
    let fleet = (args.concurrency > 0).then(|| {
        let fleet = Fleet::new(FleetOptions {
            concurrency: args.concurrency,
            operation_timeout: args.timeout,
            // A failure in one timed sweep must not turn into "backing off" in the next.
            backoff_base: Duration::from_millis(1),
            backoff_max: Duration::from_millis(1),
        });
        let addrs: Vec<String> = clients.drain(..).map(|c| fleet.insert(c)).collect();
        (fleet, addrs)
    });
    let mut runs = Vec::new();
    // Run 0 is the warm-up (cipher suite discovery), not reported.
    for run in 0..=args.repeat {
        let started = Instant::now();
        let (ok, failed) = match &fleet {
            Some((fleet, addrs)) => {
                let reports = fleet
                    .run_many(addrs.iter().map(|a| (a.clone(), Operation::Status)))
                    .await;
                let ok = reports.iter().filter(|r| r.result.is_ok()).count();
                for r in reports.iter().filter_map(|r| r.result.as_ref().err()) {
                    eprintln!("ironboot bmc sweep: {r}");
                }
                (ok, reports.len() - ok)
            }
            None => {
                let mut ok = 0;
                for c in &clients {
                    match c.power_status().await {
                        Ok(_) => ok += 1,
                        Err(e) => eprintln!("ironboot bmc sweep: {e}"),
                    }
                }
                (ok, n - ok)
            }
        };
        let wall_ms = started.elapsed().as_secs_f64() * 1000.0;
        if run > 0 {
            runs.push((wall_ms, ok, failed));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let med = median(runs.iter().map(|r| r.0).collect());
    let all_ok = runs.iter().all(|r| r.2 == 0);
    if args.json {
        let list: Vec<Value> = runs
            .iter()
            .map(|(w, ok, failed)| json!({"wall_ms": w, "ok": ok, "failed": failed}))
            .collect();
        println!(
            "{}",
            json!({"bmcs": n, "mode": mode, "concurrency": args.concurrency,
                   "runs": list, "median_ms": med})
        );
    } else {
        for (i, (w, ok, failed)) in runs.iter().enumerate() {
            println!(
                "run {}: {n} BMCs, {mode}: {w:.1} ms ({ok} ok, {failed} failed)",
                i + 1
            );
        }
        println!("median: {med:.1} ms");
    }
    if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct T {
        #[command(subcommand)]
        action: BmcAction,
    }

    fn parse(args: &[&str]) -> Result<BmcAction, clap::Error> {
        T::try_parse_from(std::iter::once("bmc").chain(args.iter().copied())).map(|t| t.action)
    }

    #[test]
    fn durations_parse_go_style() {
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("0.5s"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        for bad in ["", "s", "10x", "0s", "0", "-1s", "1e3"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ipmi_targets() {
        assert_eq!(parse_ipmi_target("10.0.0.1"), Ok(("10.0.0.1".into(), 623)));
        assert_eq!(
            parse_ipmi_target("10.0.0.1:6230"),
            Ok(("10.0.0.1".into(), 6230))
        );
        assert_eq!(
            parse_ipmi_target("bmc.lan:624"),
            Ok(("bmc.lan".into(), 624))
        );
        assert_eq!(
            parse_ipmi_target("[fd00::1]:6230"),
            Ok(("fd00::1".into(), 6230))
        );
        assert_eq!(parse_ipmi_target("fd00::1"), Ok(("fd00::1".into(), 623)));
        for bad in ["", "h:", "h:0", "h:x", ":623", "[fd00::1", "[fd00::1]x"] {
            let e = parse_ipmi_target(bad).unwrap_err();
            assert!(e.contains("--ipmi"), "{bad}: {e}");
        }
    }

    #[test]
    fn exactly_one_bmc_and_no_password_flag() {
        assert!(
            parse(&[
                "status",
                "--ipmi",
                "h",
                "--user",
                "u",
                "--password-env",
                "P"
            ])
            .is_ok()
        );
        let none = parse(&["status"]).unwrap_err().to_string();
        assert!(
            none.contains("--ipmi") && none.contains("--redfish"),
            "{none}"
        );
        let two = parse(&["status", "--ipmi", "h", "--api", "h:1"]).unwrap_err();
        assert!(two.to_string().contains("cannot be used with"), "{two}");
        let pw = parse(&["status", "--ipmi", "h", "--password", "x"]).unwrap_err();
        assert!(pw.to_string().contains("--password"), "{pw}");
        let bad_mode = parse(&["pxe-once", "--api", "h:1", "--mode", "efi"]).unwrap_err();
        assert!(bad_mode.to_string().contains("--mode"), "{bad_mode}");
        match parse(&["pxe-once", "--api", "h:1", "--mode", "bios"]).unwrap() {
            BmcAction::PxeOnce(p) => assert_eq!(p.mode, ModeArg::Bios),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_password_comes_from_a_set_non_empty_variable() {
        let e = password(None, "--ipmi").unwrap_err().to_string();
        assert!(e.contains("--password-env"), "{e}");
        let e = password(Some("IRONBOOT_TEST_SURELY_UNSET_VAR"), "--ipmi")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("IRONBOOT_TEST_SURELY_UNSET_VAR") && e.contains("not set"),
            "{e}"
        );
        // PATH is set and non-empty in any test environment.
        assert!(password(Some("PATH"), "--ipmi").is_ok());
    }

    #[test]
    fn ipmi_retransmissions_fill_the_timeout() {
        let cfg = ipmi_config(
            "h".into(),
            623,
            "u".into(),
            "p".into(),
            Duration::from_secs(20),
        );
        assert_eq!(cfg.attempt_timeout, Duration::from_secs(1));
        assert_eq!(cfg.retries, 20);
        let short = ipmi_config(
            "h".into(),
            623,
            "u".into(),
            "p".into(),
            Duration::from_millis(300),
        );
        assert_eq!(short.attempt_timeout, Duration::from_millis(100));
        assert_eq!(short.retries, 3);
        let two = ipmi_config(
            "h".into(),
            623,
            "u".into(),
            "p".into(),
            Duration::from_secs(2),
        );
        assert_eq!(two.attempt_timeout, Duration::from_millis(500));
        assert_eq!(two.retries, 4);
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
    }
}
