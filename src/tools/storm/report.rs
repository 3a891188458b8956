//! What a storm measured, and the arithmetic: goodput, latency percentiles, failures by
//! reason. Workers fill a [`Tally`] each (no sharing while they run); the tallies are
//! merged once at the end into a [`Report`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use ironboot_net::tftp::client::ClientStats;
use serde::Serialize;

/// One worker's results.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Tally {
    /// Transfers that delivered the whole file.
    pub(crate) ok: u64,
    /// File bytes of those transfers.
    pub(crate) bytes: u64,
    /// Latency of each successful transfer (request to last block, probe included).
    pub(crate) latencies: Vec<Duration>,
    /// Failed transfers by reason.
    pub(crate) failures: BTreeMap<String, u64>,
    /// Client-side protocol counters, summed.
    pub(crate) client: ClientCounters,
}

/// [`ClientStats`] summed over transfers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct ClientCounters {
    /// Datagrams re-sent after a silent retransmission interval.
    pub(crate) retransmissions: u64,
    /// ACKs sent for a gap in a window.
    pub(crate) gap_acks: u64,
    /// ACKs repeated because their block came again.
    pub(crate) repeated_acks: u64,
    /// Duplicate or out-of-window blocks ignored.
    pub(crate) ignored_blocks: u64,
    /// Datagrams from a foreign transfer ID.
    pub(crate) foreign: u64,
}

impl ClientCounters {
    pub(crate) fn add(&mut self, s: ClientStats) {
        self.retransmissions += u64::from(s.retransmissions);
        self.gap_acks += u64::from(s.gap_acks);
        self.repeated_acks += u64::from(s.repeated_acks);
        self.ignored_blocks += u64::from(s.ignored_blocks);
        self.foreign += u64::from(s.foreign);
    }

    pub(crate) fn merge(&mut self, o: ClientCounters) {
        self.retransmissions += o.retransmissions;
        self.gap_acks += o.gap_acks;
        self.repeated_acks += o.repeated_acks;
        self.ignored_blocks += o.ignored_blocks;
        self.foreign += o.foreign;
    }
}

impl Tally {
    /// A transfer that delivered `bytes` in `latency`.
    pub(crate) fn success(&mut self, latency: Duration, bytes: u64) {
        self.ok += 1;
        self.bytes += bytes;
        self.latencies.push(latency);
    }

    /// A transfer that failed for `reason`.
    pub(crate) fn failure(&mut self, reason: &str) {
        match self.failures.get_mut(reason) {
            Some(n) => *n += 1,
            None => {
                self.failures.insert(reason.to_owned(), 1);
            }
        }
    }

    /// Add `other` into this tally.
    pub(crate) fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.bytes += other.bytes;
        self.latencies.extend(other.latencies);
        for (reason, n) in other.failures {
            *self.failures.entry(reason).or_default() += n;
        }
        self.client.merge(other.client);
    }
}

/// Latency percentiles, milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub(crate) struct Latency {
    pub(crate) p50_ms: f64,
    pub(crate) p90_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
}

/// The `p`-th percentile (0 < p <= 100) of `sorted` by the nearest-rank method: the
/// smallest value with at least p% of the values at or below it. Zero when empty.
pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The final report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Report {
    /// Server address.
    pub(crate) server: String,
    /// File requested.
    pub(crate) file: String,
    /// Concurrent clients.
    pub(crate) clients: usize,
    /// Transfers that delivered the file.
    pub(crate) transfers_ok: u64,
    /// Transfers that did not.
    pub(crate) transfers_failed: u64,
    /// Failed transfers by reason.
    pub(crate) failures: BTreeMap<String, u64>,
    /// File bytes delivered by successful transfers.
    pub(crate) bytes: u64,
    /// Wall time from the first request to the last transfer's end, seconds.
    pub(crate) wall_secs: f64,
    /// `bytes` / `wall_secs`, in 10^6 bytes per second.
    pub(crate) goodput_mb_s: f64,
    /// The same in 10^6 bits per second.
    pub(crate) goodput_mbit_s: f64,
    /// Per-transfer latency of successful transfers.
    pub(crate) latency: Latency,
    /// Client-side protocol counters.
    pub(crate) client: ClientCounters,
    /// CPU time (user + system) the load generator itself used, seconds.
    pub(crate) generator_cpu_secs: f64,
}

/// What the report is about, besides the tally.
#[derive(Debug, Clone)]
pub(crate) struct Context {
    pub(crate) server: String,
    pub(crate) file: String,
    pub(crate) clients: usize,
    pub(crate) wall: Duration,
    pub(crate) cpu: Duration,
}

impl Report {
    /// Build the report from the merged tally.
    pub(crate) fn new(mut tally: Tally, ctx: Context) -> Report {
        tally.latencies.sort_unstable();
        let l = &tally.latencies;
        let wall_secs = ctx.wall.as_secs_f64();
        let goodput_mb_s = if wall_secs > 0.0 {
            tally.bytes as f64 / wall_secs / 1e6
        } else {
            0.0
        };
        Report {
            server: ctx.server,
            file: ctx.file,
            clients: ctx.clients,
            transfers_ok: tally.ok,
            transfers_failed: tally.failures.values().sum(),
            failures: tally.failures,
            bytes: tally.bytes,
            wall_secs,
            goodput_mb_s,
            goodput_mbit_s: goodput_mb_s * 8.0,
            latency: Latency {
                p50_ms: ms(percentile(l, 50.0)),
                p90_ms: ms(percentile(l, 90.0)),
                p99_ms: ms(percentile(l, 99.0)),
                max_ms: ms(l.last().copied().unwrap_or_default()),
            },
            client: tally.client,
            generator_cpu_secs: ctx.cpu.as_secs_f64(),
        }
    }

    /// Transfers that failed.
    pub(crate) fn failed(&self) -> u64 {
        self.transfers_failed
    }

    /// One JSON object.
    pub(crate) fn to_json(&self) -> String {
        // Only plain numbers, strings and maps of them: serialisation cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The human-readable report.
    pub(crate) fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "storm tftp: {} {:?}, {} clients",
            self.server, self.file, self.clients
        );
        let _ = writeln!(
            s,
            "transfers:  {} ok, {} failed",
            self.transfers_ok, self.transfers_failed
        );
        if !self.failures.is_empty() {
            let list: Vec<String> = self
                .failures
                .iter()
                .map(|(r, n)| format!("{r} {n}"))
                .collect();
            let _ = writeln!(s, "failures:   {}", list.join(", "));
        }
        let _ = writeln!(s, "bytes:      {} in {:.3} s", self.bytes, self.wall_secs);
        let _ = writeln!(
            s,
            "goodput:    {:.2} MB/s ({:.1} Mbit/s)",
            self.goodput_mb_s, self.goodput_mbit_s
        );
        let l = &self.latency;
        let _ = writeln!(
            s,
            "latency:    p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms
        );
        let c = &self.client;
        let _ = writeln!(
            s,
            "client:     {} retransmissions, {} gap ACKs, {} repeated ACKs, {} ignored blocks, \
             {} foreign; {:.2} s CPU",
            c.retransmissions,
            c.gap_acks,
            c.repeated_acks,
            c.ignored_blocks,
            c.foreign,
            self.generator_cpu_secs
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms_list(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    #[test]
    fn nearest_rank_percentiles() {
        let sorted = ms_list(&(1..=100).collect::<Vec<_>>());
        assert_eq!(percentile(&sorted, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&sorted, 90.0), Duration::from_millis(90));
        assert_eq!(percentile(&sorted, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&sorted, 100.0), Duration::from_millis(100));
        // Few values: p99 of 10 is the largest, p50 of 4 the second.
        let ten = ms_list(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        assert_eq!(percentile(&ten, 99.0), Duration::from_millis(10));
        assert_eq!(
            percentile(&ms_list(&[5, 6, 7, 8]), 50.0),
            Duration::from_millis(6)
        );
        assert_eq!(percentile(&ms_list(&[42]), 1.0), Duration::from_millis(42));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }

    #[test]
    fn goodput_failures_and_merging() {
        let mut a = Tally::default();
        a.success(Duration::from_millis(30), 173_792);
        a.success(Duration::from_millis(10), 173_792);
        a.failure("timeout");
        let mut b = Tally::default();
        b.success(Duration::from_millis(20), 173_792);
        b.failure("timeout");
        b.failure("server_error_0");
        b.client.add(ClientStats {
            retransmissions: 3,
            gap_acks: 1,
            ..ClientStats::default()
        });
        a.merge(b);
        let r = Report::new(
            a,
            Context {
                server: "10.97.0.1:69".into(),
                file: "snp.efi".into(),
                clients: 2,
                wall: Duration::from_millis(500),
                cpu: Duration::from_millis(250),
            },
        );
        assert_eq!(r.transfers_ok, 3);
        assert_eq!(r.transfers_failed, 3);
        assert_eq!(r.failures["timeout"], 2);
        assert_eq!(r.failures["server_error_0"], 1);
        assert_eq!(r.bytes, 3 * 173_792);
        // 521,376 bytes in 0.5 s: 1.042752 MB/s, 8.342016 Mbit/s.
        assert!(
            (r.goodput_mb_s - 1.042_752).abs() < 1e-9,
            "{}",
            r.goodput_mb_s
        );
        assert!((r.goodput_mbit_s - 8.342_016).abs() < 1e-9);
        assert_eq!(r.latency.p50_ms, 20.0);
        assert_eq!(r.latency.max_ms, 30.0);
        assert_eq!(r.client.retransmissions, 3);
        let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(json["transfers_failed"], 3);
        assert_eq!(json["latency"]["p99_ms"], 30.0);
        let text = r.to_text();
        assert!(text.contains("3 ok, 3 failed"), "{text}");
        assert!(text.contains("server_error_0 1, timeout 2"), "{text}");
        assert!(text.contains("1.04 MB/s (8.3 Mbit/s)"), "{text}");
    }

    #[test]
    fn an_empty_run_reports_zeros() {
        let r = Report::new(
            Tally::default(),
            Context {
                server: "s".into(),
                file: "f".into(),
                clients: 1,
                wall: Duration::ZERO,
                cpu: Duration::ZERO,
            },
        );
        assert_eq!(r.goodput_mb_s, 0.0);
        assert_eq!(r.latency, Latency::default());
        assert_eq!(r.failed(), 0);
    }
}
