//! What a PXE storm measured: boots that completed, failures by stage and reason, latency
//! percentiles per stage and for the whole boot, throughput. Each machine task fills a
//! [`BootTally`]; they are merged once at the end (the percentile arithmetic and the TFTP
//! client counters are the TFTP storm's).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::tools::storm::report::{ClientCounters, Latency, percentile};

/// The stages of one boot, in order (also the values of `--stop-after`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub(crate) enum Stage {
    /// DISCOVER broadcast until the proxy OFFER.
    Discover,
    /// 4011 REQUEST until the ACK.
    Request,
    /// TFTP fetch of the boot file (the EDK2 size probe included).
    Tftp,
    /// `GET /ipxe/boot.ipxe`.
    Http,
    /// The script's kernel and initrds over HTTP (a `chain` to the same server followed
    /// once), on one kept-alive connection.
    Image,
}

impl Stage {
    pub(crate) const ALL: [Stage; 5] = [
        Stage::Discover,
        Stage::Request,
        Stage::Tftp,
        Stage::Http,
        Stage::Image,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Stage::Discover => "discover",
            Stage::Request => "request",
            Stage::Tftp => "tftp",
            Stage::Http => "http",
            Stage::Image => "image",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Results of any number of boots.
#[derive(Debug, Default, Clone)]
pub(crate) struct BootTally {
    /// Boots that went through every stage.
    pub(crate) booted: u64,
    /// Whole-boot latency of those.
    pub(crate) boot_latencies: Vec<Duration>,
    /// Per stage: how many completed, and how long each took.
    pub(crate) stage_ok: [u64; 5],
    pub(crate) stage_latencies: [Vec<Duration>; 5],
    /// Failed boots by (stage, reason).
    pub(crate) failures: BTreeMap<(Stage, String), u64>,
    /// DHCP messages sent again after a silent timeout (DISCOVER, REQUEST).
    pub(crate) dhcp_retransmissions: [u64; 2],
    /// Boot file bytes fetched by TFTP.
    pub(crate) tftp_bytes: u64,
    /// TFTP client counters.
    pub(crate) tftp_client: ClientCounters,
    /// HTTP response body bytes.
    pub(crate) http_bytes: u64,
    /// When each completed boot ended, counted from the storm's start.
    pub(crate) completions: Vec<Duration>,
    /// Image body bytes received (kernels and initrds, of failed boots too).
    pub(crate) image_bytes: u64,
    /// Latency of each completed kernel fetch, and of each completed initrd fetch.
    pub(crate) kernel_latencies: Vec<Duration>,
    pub(crate) initrd_latencies: Vec<Duration>,
    /// TCP connections the image stage opened.
    pub(crate) image_connections: u64,
    /// The image stage's span over all machines: the first start and the last end,
    /// counted from the storm's start.
    pub(crate) image_span: Option<(Duration, Duration)>,
}

impl BootTally {
    /// `stage` completed in `latency`.
    pub(crate) fn stage_done(&mut self, stage: Stage, latency: Duration) {
        self.stage_ok[stage.index()] += 1;
        self.stage_latencies[stage.index()].push(latency);
    }

    /// The boot failed in `stage` for `reason`.
    pub(crate) fn failure(&mut self, stage: Stage, reason: &str) {
        *self.failures.entry((stage, reason.to_owned())).or_default() += 1;
    }

    /// Add `other` into this tally.
    pub(crate) fn merge(&mut self, other: BootTally) {
        self.booted += other.booted;
        self.boot_latencies.extend(other.boot_latencies);
        for i in 0..Stage::ALL.len() {
            self.stage_ok[i] += other.stage_ok[i];
            self.stage_latencies[i].extend_from_slice(&other.stage_latencies[i]);
        }
        for (k, n) in other.failures {
            *self.failures.entry(k).or_default() += n;
        }
        for i in 0..2 {
            self.dhcp_retransmissions[i] += other.dhcp_retransmissions[i];
        }
        self.tftp_bytes += other.tftp_bytes;
        self.tftp_client.merge(other.tftp_client);
        self.http_bytes += other.http_bytes;
        self.completions.extend(other.completions);
        self.image_bytes += other.image_bytes;
        self.kernel_latencies.extend(other.kernel_latencies);
        self.initrd_latencies.extend(other.initrd_latencies);
        self.image_connections += other.image_connections;
        if let Some((start, end)) = other.image_span {
            self.image_ran(start, end);
        }
    }

    /// A machine's image stage ran from `start` to `end` (since the storm's start).
    pub(crate) fn image_ran(&mut self, start: Duration, end: Duration) {
        self.image_span = Some(match self.image_span {
            Some((s, e)) => (s.min(start), e.max(end)),
            None => (start, end),
        });
    }
}

/// Points of the completion curve: one per percent of the completed boots.
const CURVE_POINTS: usize = 100;

/// The storm's completion over time: `[ms since the start, boots completed by then]`,
/// at every percent of the completed boots (and the first one), for charts.
fn completion_curve(mut ends: Vec<Duration>) -> Vec<[f64; 2]> {
    ends.sort_unstable();
    let n = ends.len();
    if n == 0 {
        return Vec::new();
    }
    let mut points: Vec<[f64; 2]> = (0..=CURVE_POINTS)
        .map(|k| (k * n).div_ceil(CURVE_POINTS).max(1))
        .map(|count| [ends[count - 1].as_secs_f64() * 1e3, count as f64])
        .collect();
    points.dedup_by(|b, a| a[1] == b[1]);
    points
}

fn latency(mut v: Vec<Duration>) -> Latency {
    v.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Latency {
        p50_ms: ms(percentile(&v, 50.0)),
        p90_ms: ms(percentile(&v, 90.0)),
        p99_ms: ms(percentile(&v, 99.0)),
        max_ms: ms(v.last().copied().unwrap_or_default()),
    }
}

/// One stage in the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct StageReport {
    /// Machines that completed the stage.
    pub(crate) ok: u64,
    /// Machines whose boot failed in it.
    pub(crate) failed: u64,
    /// Failures by reason.
    pub(crate) failures: BTreeMap<String, u64>,
    /// Latency of the completed ones.
    pub(crate) latency: Latency,
}

/// What arrived on the client port: replies by type (whether a machine used them or
/// not: what a server's own reply counters should equal on a lossless link), and those
/// that were not for a waiting machine.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct ReplyCounters {
    /// OFFERs received.
    pub(crate) offers: u64,
    /// ACKs received.
    pub(crate) acks: u64,
    /// Replies whose xid nobody waited on (late duplicates after a retransmission).
    pub(crate) unknown_xid: u64,
    /// Replies whose xid was waited on by another MAC.
    pub(crate) wrong_chaddr: u64,
    /// Datagrams on the client port that were not DHCP replies.
    pub(crate) malformed: u64,
}

/// What a storm was asked to do (the head of its report).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct PxeSetup {
    /// The server address given.
    pub(crate) server: String,
    /// Machines emulated.
    pub(crate) machines: u64,
    /// `uefi`, `bios` or `mixed`.
    pub(crate) firmware: String,
    /// `edk2`, `ipxe` or `auto`.
    pub(crate) tftp_mode: String,
    /// `rate N/s` or `concurrency N`.
    pub(crate) load: String,
    /// Whether the HTTP stage (the boot script) ran.
    pub(crate) http: bool,
    /// The last stage a boot went through (`discover` ... `http`).
    pub(crate) stop_after: &'static str,
}

/// The final report of `storm pxe`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct PxeReport {
    /// What was asked.
    #[serde(flatten)]
    pub(crate) setup: PxeSetup,
    /// Boots that went through every stage.
    pub(crate) booted: u64,
    /// Boots that failed (in some stage).
    pub(crate) failed: u64,
    /// Per stage (`discover`, `request`, `tftp`, `http`, `image`).
    pub(crate) stages: BTreeMap<String, StageReport>,
    /// Whole-boot latency (first DISCOVER to the last stage's end) of completed boots.
    pub(crate) boot_latency: Latency,
    /// First DISCOVER to the last boot's end, seconds.
    pub(crate) wall_secs: f64,
    /// `booted / wall_secs`.
    pub(crate) boots_per_sec: f64,
    /// Boot file bytes fetched by TFTP.
    pub(crate) tftp_bytes: u64,
    /// `tftp_bytes / wall_secs`, 10^6 bytes per second.
    pub(crate) tftp_mb_s: f64,
    /// HTTP body bytes of the boot scripts.
    pub(crate) http_bytes: u64,
    /// Image body bytes received (kernels and initrds; `--stop-after image`).
    pub(crate) image_bytes: u64,
    /// The image stage's span: the first machine's start to the last one's end, seconds.
    pub(crate) image_secs: f64,
    /// Goodput of the image stage: `image_bytes / image_secs`, 10^6 bytes per second.
    pub(crate) image_mb_s: f64,
    /// Latency of each completed kernel fetch.
    pub(crate) kernel_latency: Latency,
    /// Latency of each completed initrd fetch (one per `initrd` line).
    pub(crate) initrd_latency: Latency,
    /// Completed kernel and initrd fetches.
    pub(crate) kernel_fetches: u64,
    pub(crate) initrd_fetches: u64,
    /// TCP connections the image stage opened (one per machine when kept alive).
    pub(crate) image_connections: u64,
    /// DISCOVERs sent again after a silent timeout.
    pub(crate) discover_retransmissions: u64,
    /// 4011 REQUESTs sent again.
    pub(crate) request_retransmissions: u64,
    /// TFTP client counters.
    pub(crate) tftp_client: ClientCounters,
    /// Replies received on the client port, and those not for a waiting machine.
    pub(crate) replies: ReplyCounters,
    /// CPU time (user + system) of the load generator itself, seconds.
    pub(crate) generator_cpu_secs: f64,
    /// `[ms since the start, boots completed by then]` at every percent of the completed
    /// boots: the storm's completion over time.
    pub(crate) completion_curve: Vec<[f64; 2]>,
}

/// What the report is about, besides the tally.
#[derive(Debug, Clone)]
pub(crate) struct PxeContext {
    pub(crate) setup: PxeSetup,
    /// The last stage each boot runs.
    pub(crate) last_stage: Stage,
    pub(crate) replies: ReplyCounters,
    pub(crate) wall: Duration,
    pub(crate) cpu: Duration,
}

impl PxeReport {
    pub(crate) fn new(tally: BootTally, ctx: PxeContext) -> PxeReport {
        let wall_secs = ctx.wall.as_secs_f64();
        let per_sec = |n: f64| if wall_secs > 0.0 { n / wall_secs } else { 0.0 };
        let image_secs = tally
            .image_span
            .map_or(0.0, |(s, e)| e.saturating_sub(s).as_secs_f64());
        let image_mb_s = if image_secs > 0.0 {
            tally.image_bytes as f64 / image_secs / 1e6
        } else {
            0.0
        };
        let mut stages = BTreeMap::new();
        for (stage, lat) in Stage::ALL.into_iter().zip(tally.stage_latencies) {
            if stage > ctx.last_stage {
                continue;
            }
            let failures: BTreeMap<String, u64> = tally
                .failures
                .iter()
                .filter(|((s, _), _)| *s == stage)
                .map(|((_, r), n)| (r.clone(), *n))
                .collect();
            stages.insert(
                stage.label().to_owned(),
                StageReport {
                    ok: tally.stage_ok[stage.index()],
                    failed: failures.values().sum(),
                    failures,
                    latency: latency(lat),
                },
            );
        }
        PxeReport {
            setup: ctx.setup,
            booted: tally.booted,
            failed: tally.failures.values().sum(),
            stages,
            boot_latency: latency(tally.boot_latencies),
            wall_secs,
            boots_per_sec: per_sec(tally.booted as f64),
            tftp_bytes: tally.tftp_bytes,
            tftp_mb_s: per_sec(tally.tftp_bytes as f64) / 1e6,
            http_bytes: tally.http_bytes,
            image_bytes: tally.image_bytes,
            image_secs,
            image_mb_s,
            kernel_fetches: tally.kernel_latencies.len() as u64,
            initrd_fetches: tally.initrd_latencies.len() as u64,
            kernel_latency: latency(tally.kernel_latencies),
            initrd_latency: latency(tally.initrd_latencies),
            image_connections: tally.image_connections,
            discover_retransmissions: tally.dhcp_retransmissions[0],
            request_retransmissions: tally.dhcp_retransmissions[1],
            tftp_client: tally.tftp_client,
            replies: ctx.replies,
            generator_cpu_secs: ctx.cpu.as_secs_f64(),
            completion_curve: completion_curve(tally.completions),
        }
    }

    /// One JSON object.
    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The human-readable report.
    pub(crate) fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "storm pxe: {} machines ({}, tftp {}, {}, to {}) against {}",
            self.setup.machines,
            self.setup.firmware,
            self.setup.tftp_mode,
            self.setup.load,
            self.setup.stop_after,
            self.setup.server
        );
        let _ = writeln!(
            s,
            "boots:      {} ok, {} failed in {:.3} s ({:.1} boots/s)",
            self.booted, self.failed, self.wall_secs, self.boots_per_sec
        );
        let _ = writeln!(
            s,
            "{:<10}{:>7}{:>7}{:>10}{:>10}{:>10}{:>10}  failures",
            "stage", "ok", "failed", "p50 ms", "p90 ms", "p99 ms", "max ms"
        );
        let row = |s: &mut String, name: &str, ok: u64, failed: u64, l: &Latency, f: String| {
            let _ = writeln!(
                s,
                "{name:<10}{ok:>7}{failed:>7}{:>10.1}{:>10.1}{:>10.1}{:>10.1}  {f}",
                l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms
            );
        };
        for stage in Stage::ALL {
            let Some(st) = self.stages.get(stage.label()) else {
                continue;
            };
            let f: Vec<String> = st
                .failures
                .iter()
                .map(|(r, n)| format!("{r} {n}"))
                .collect();
            row(
                &mut s,
                stage.label(),
                st.ok,
                st.failed,
                &st.latency,
                f.join(", "),
            );
        }
        row(
            &mut s,
            "boot",
            self.booted,
            self.failed,
            &self.boot_latency,
            String::new(),
        );
        let _ = writeln!(
            s,
            "tftp:       {} bytes, {:.2} MB/s; {} retransmissions, {} gap ACKs, {} foreign",
            self.tftp_bytes,
            self.tftp_mb_s,
            self.tftp_client.retransmissions,
            self.tftp_client.gap_acks,
            self.tftp_client.foreign
        );
        if self.stages.contains_key(Stage::Image.label()) {
            for (name, n, l) in [
                ("kernel", self.kernel_fetches, &self.kernel_latency),
                ("initrd", self.initrd_fetches, &self.initrd_latency),
            ] {
                row(&mut s, name, n, 0, l, "(per file)".to_owned());
            }
            let _ = writeln!(
                s,
                "image:      {} bytes in {:.3} s, {:.2} MB/s; {} connections",
                self.image_bytes, self.image_secs, self.image_mb_s, self.image_connections
            );
        }
        let _ = writeln!(
            s,
            "dhcp:       {} DISCOVER and {} REQUEST retransmissions; {} OFFERs and {} ACKs \
             received; stray: {} unknown xid, {} wrong chaddr, {} malformed",
            self.discover_retransmissions,
            self.request_retransmissions,
            self.replies.offers,
            self.replies.acks,
            self.replies.unknown_xid,
            self.replies.wrong_chaddr,
            self.replies.malformed
        );
        let _ = writeln!(s, "generator:  {:.2} s CPU", self.generator_cpu_secs);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn setup(machines: u64, last: Stage) -> PxeSetup {
        PxeSetup {
            server: "10.0.0.1".into(),
            machines,
            firmware: "uefi".into(),
            tftp_mode: "edk2".into(),
            load: "concurrency 4".into(),
            http: last == Stage::Http,
            stop_after: last.label(),
        }
    }

    #[test]
    fn stages_failures_and_throughput() {
        let mut a = BootTally::default();
        for (i, stage) in Stage::ALL.into_iter().enumerate() {
            a.stage_done(stage, ms(10 * (i as u64 + 1)));
        }
        a.booted = 1;
        a.boot_latencies.push(ms(100));
        a.tftp_bytes = 1_000_000;
        let mut b = BootTally::default();
        b.stage_done(Stage::Discover, ms(30));
        b.failure(Stage::Request, "timeout");
        b.dhcp_retransmissions = [2, 4];
        let mut c = BootTally::default();
        c.failure(Stage::Request, "timeout");
        c.failure(Stage::Tftp, "server_error_1");
        b.merge(c);
        a.merge(b);
        let r = PxeReport::new(
            a,
            PxeContext {
                setup: setup(4, Stage::Http),
                last_stage: Stage::Http,
                replies: ReplyCounters::default(),
                wall: ms(500),
                cpu: ms(20),
            },
        );
        assert_eq!((r.booted, r.failed), (1, 3));
        assert_eq!(r.stages["discover"].ok, 2);
        assert_eq!(r.stages["discover"].latency.max_ms, 30.0);
        assert_eq!(r.stages["discover"].latency.p50_ms, 10.0);
        assert_eq!(r.stages["request"].failed, 2);
        assert_eq!(r.stages["request"].failures["timeout"], 2);
        assert_eq!(r.stages["tftp"].failures["server_error_1"], 1);
        assert_eq!(r.stages["http"].ok, 1);
        assert!((r.boots_per_sec - 2.0).abs() < 1e-9);
        assert!((r.tftp_mb_s - 2.0).abs() < 1e-9);
        assert_eq!(
            (r.discover_retransmissions, r.request_retransmissions),
            (2, 4)
        );
        let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(json["stages"]["request"]["failures"]["timeout"], 2);
        assert_eq!(json["boot_latency"]["p99_ms"], 100.0);
        let text = r.to_text();
        assert!(text.contains("1 ok, 3 failed"), "{text}");
        assert!(text.contains("timeout 2"), "{text}");
        // Without HTTP there is no http stage.
        let r = PxeReport::new(
            BootTally::default(),
            PxeContext {
                setup: setup(0, Stage::Tftp),
                last_stage: Stage::Tftp,
                replies: ReplyCounters::default(),
                wall: Duration::ZERO,
                cpu: Duration::ZERO,
            },
        );
        assert!(!r.stages.contains_key("http"));
        assert_eq!(r.boots_per_sec, 0.0);
        assert!(r.completion_curve.is_empty());
    }

    #[test]
    fn the_image_stage_reports_bytes_goodput_and_per_file_latency() {
        let mut a = BootTally::default();
        a.stage_done(Stage::Image, ms(300));
        a.image_bytes = 3_000_000;
        a.kernel_latencies.push(ms(100));
        a.initrd_latencies.extend([ms(150), ms(50)]);
        a.image_connections = 1;
        a.image_ran(ms(200), ms(1200));
        let mut b = BootTally::default();
        b.failure(Stage::Image, "initrd_status_404");
        b.image_bytes = 1_000_000;
        b.kernel_latencies.push(ms(400));
        b.image_connections = 1;
        b.image_ran(ms(100), ms(900));
        a.merge(b);
        a.booted = 1;
        let r = PxeReport::new(
            a,
            PxeContext {
                setup: setup(2, Stage::Image),
                last_stage: Stage::Image,
                replies: ReplyCounters::default(),
                wall: ms(2000),
                cpu: ms(1),
            },
        );
        assert_eq!(r.image_bytes, 4_000_000);
        assert!((r.image_secs - 1.1).abs() < 1e-9, "{}", r.image_secs);
        assert!((r.image_mb_s - 4.0 / 1.1).abs() < 1e-9, "{}", r.image_mb_s);
        assert_eq!((r.kernel_fetches, r.initrd_fetches), (2, 2));
        assert_eq!(r.kernel_latency.max_ms, 400.0);
        assert_eq!(r.initrd_latency.p50_ms, 50.0);
        assert_eq!(r.stages["image"].failures["initrd_status_404"], 1);
        let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        for field in [
            "image_bytes",
            "image_secs",
            "image_mb_s",
            "kernel_fetches",
            "initrd_fetches",
            "image_connections",
        ] {
            assert!(json[field].is_number(), "{field}: {json}");
        }
        assert_eq!(json["kernel_latency"]["p99_ms"], 400.0);
        assert_eq!(json["stages"]["image"]["ok"], 1);
        let text = r.to_text();
        assert!(
            text.contains("image:      4000000 bytes in 1.100 s"),
            "{text}"
        );
        assert!(text.contains("initrd_status_404 1"), "{text}");
        assert!(text.lines().any(|l| l.starts_with("kernel ")), "{text}");
    }

    #[test]
    fn the_report_keeps_the_setup_at_the_top_level_of_the_json() {
        let r = PxeReport::new(
            BootTally::default(),
            PxeContext {
                setup: setup(3, Stage::Discover),
                last_stage: Stage::Discover,
                replies: ReplyCounters::default(),
                wall: ms(1),
                cpu: ms(1),
            },
        );
        let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(json["machines"], 3);
        assert_eq!(json["server"], "10.0.0.1");
        assert_eq!(json["stop_after"], "discover");
        assert_eq!(json["http"], false);
        assert!(json.get("setup").is_none());
        let stages: Vec<&String> = r.stages.keys().collect();
        assert_eq!(
            stages,
            ["discover"],
            "stages after --stop-after are left out"
        );
    }

    #[test]
    fn the_completion_curve_has_a_point_per_percent_ending_at_the_last_boot() {
        let ends: Vec<Duration> = (1..=1000).rev().map(ms).collect();
        let curve = completion_curve(ends);
        assert_eq!(curve.len(), 101, "the first boot, then every percent");
        assert_eq!(curve[0], [1.0, 1.0]);
        assert_eq!(curve[1], [10.0, 10.0]);
        assert_eq!(curve[100], [1000.0, 1000.0]);
        assert!(
            curve
                .windows(2)
                .all(|w| w[0][0] <= w[1][0] && w[0][1] < w[1][1])
        );
        // Fewer boots than points: one point per boot, no repeats.
        let curve = completion_curve(vec![ms(5), ms(3), ms(9)]);
        assert_eq!(curve, [[3.0, 1.0], [5.0, 2.0], [9.0, 3.0]]);
    }
}
