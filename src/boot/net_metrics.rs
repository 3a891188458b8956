//! `/metrics` text for the packet core's counters: the ProxyDHCP and TFTP servers count
//! with atomics inside `ironboot-net` and hand out plain snapshots; the metric names, help
//! texts and Prometheus formatting live here, with the rest of `/metrics`.

use std::fmt::Write as _;

use ironboot_net::proxy::{ProxyCounters, ProxySnapshot};
use ironboot_net::tftp::{HistogramSnapshot, TftpCounters, TftpSnapshot};

use crate::boot::metrics::PrometheusSource;

impl PrometheusSource for ProxyCounters {
    fn render(&self, out: &mut String) {
        render_proxy(&self.snapshot(), out);
    }
}

impl PrometheusSource for TftpCounters {
    fn render(&self, out: &mut String) {
        render_tftp(&self.snapshot(), out);
    }
}

/// Append one metric family: its HELP and TYPE lines, then a sample per row (`labels` is
/// the inside of the braces; empty for a family without labels).
fn family(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    rows: impl IntoIterator<Item = (String, u64)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, v) in rows {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {v}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    }
}

/// Rows labelled `key="value"` from `(value, count)` pairs.
fn labelled<'a>(
    key: &'a str,
    rows: impl IntoIterator<Item = (&'a str, u64)> + 'a,
) -> impl Iterator<Item = (String, u64)> + 'a {
    rows.into_iter()
        .map(move |(value, v)| (format!("{key}=\"{value}\""), v))
}

/// A family's single unlabelled sample.
fn one(v: u64) -> [(String, u64); 1] {
    [(String::new(), v)]
}

/// The ProxyDHCP families.
pub(crate) fn render_proxy(s: &ProxySnapshot, out: &mut String) {
    family(
        out,
        "ironboot_dhcp_requests_total",
        "counter",
        "Well-formed DHCP requests received, by message type.",
        labelled("type", s.requests),
    );
    family(
        out,
        "ironboot_dhcp_boot_clients_total",
        "counter",
        "Requests from network-boot clients, by firmware and whether the client is iPXE.",
        s.boot_clients.iter().flat_map(|c| {
            [("false", c.other), ("true", c.ipxe)].map(|(ipxe, v)| {
                (
                    format!("firmware=\"{}\",ipxe=\"{ipxe}\"", c.firmware.label()),
                    v,
                )
            })
        }),
    );
    family(
        out,
        "ironboot_dhcp_replies_total",
        "counter",
        "ProxyDHCP replies sent, by message type.",
        labelled("type", s.replies),
    );
    family(
        out,
        "ironboot_dhcp_dropped_total",
        "counter",
        "DHCP datagrams dropped without a reply, by reason.",
        labelled("reason", s.dropped),
    );
}

/// The TFTP families.
pub(crate) fn render_tftp(s: &TftpSnapshot, out: &mut String) {
    family(
        out,
        "ironboot_tftp_requests_total",
        "counter",
        "TFTP requests received on the request port, by how they were answered.",
        labelled("outcome", s.requests.map(|(o, v)| (o.label(), v))),
    );
    family(
        out,
        "ironboot_tftp_errors_sent_total",
        "counter",
        "TFTP ERROR packets sent, by error code.",
        labelled("code", s.errors_sent),
    );
    family(
        out,
        "ironboot_tftp_transfers_started_total",
        "counter",
        "TFTP requests accepted and answered (OACK or DATA 1), proven or not.",
        one(s.transfers_started),
    );
    family(
        out,
        "ironboot_tftp_transfers_completed_total",
        "counter",
        "TFTP transfers whose last block was acknowledged.",
        one(s.transfers_completed),
    );
    family(
        out,
        "ironboot_tftp_transfers_failed_total",
        "counter",
        "TFTP transfers ended before completion, by reason.",
        labelled("reason", s.transfers_failed.map(|(r, v)| (r.label(), v))),
    );
    family(
        out,
        "ironboot_tftp_active_transfers",
        "gauge",
        "TFTP transfers in progress whose client acknowledged the first reply.",
        one(s.active),
    );
    family(
        out,
        "ironboot_tftp_pending_requests",
        "gauge",
        "TFTP requests answered and waiting for the client's first ACK (they hold no transfer slot).",
        one(s.pending),
    );
    family(
        out,
        "ironboot_tftp_retransmissions_total",
        "counter",
        "TFTP blocks and OACKs sent again, by cause.",
        labelled("cause", s.retransmissions),
    );
    family(
        out,
        "ironboot_tftp_sent_packets_total",
        "counter",
        "TFTP DATA and OACK packets sent (ERRORs are in errors_sent).",
        labelled("type", [("data", s.data_packets), ("oack", s.oacks)]),
    );
    family(
        out,
        "ironboot_tftp_sent_bytes_total",
        "counter",
        "File bytes sent in TFTP DATA packets, re-sends included.",
        one(s.data_bytes),
    );
    family(
        out,
        "ironboot_tftp_acks_total",
        "counter",
        "TFTP ACKs received for a transfer, by effect.",
        labelled("result", s.acks),
    );
    family(
        out,
        "ironboot_tftp_dropped_total",
        "counter",
        "TFTP datagrams that were malformed or of no use, by reason (malformed requests are answered with ERROR 4, other datagrams are dropped).",
        labelled("reason", s.dropped),
    );
    histogram(
        out,
        "ironboot_tftp_transfer_duration_seconds",
        "Duration of completed TFTP transfers.",
        &s.duration_micros,
        1e6,
    );
    histogram(
        out,
        "ironboot_tftp_transfer_size_bytes",
        "Size of completed TFTP transfers.",
        &s.size_bytes,
        1.0,
    );
}

/// Append a histogram family; bounds and sum are divided by `scale` (the snapshot's unit
/// per the metric's: 1e6 for microseconds shown as seconds).
fn histogram<const N: usize>(
    out: &mut String,
    name: &str,
    help: &str,
    h: &HistogramSnapshot<N>,
    scale: f64,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (bound, cumulative) in h.buckets {
        match bound {
            Some(b) => {
                let le = b as f64 / scale;
                let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
            }
            None => {
                let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
            }
        }
    }
    let sum = h.sum as f64 / scale;
    let _ = writeln!(out, "{name}_sum {sum}");
    let _ = writeln!(out, "{name}_count {}", h.count);
}

#[cfg(test)]
mod tests {
    use ironboot_net::tftp::{RequestOutcome, TransferFailure};

    use super::*;

    /// `n` counts numbered from `base + 1`, so every sample of the golden text differs.
    fn numbered<const N: usize>(base: u64) -> [u64; N] {
        core::array::from_fn(|i| base + i as u64 + 1)
    }

    /// Every counter of a snapshot set to its own value, by `numbered` per field in order,
    /// the rows named as the counters name them.
    fn proxy_snapshot() -> ProxySnapshot {
        let set = |rows: &mut [(&'static str, u64)], base: u64| {
            for (i, row) in rows.iter_mut().enumerate() {
                row.1 = base + i as u64 + 1;
            }
        };
        let mut s = ProxyCounters::default().snapshot();
        set(&mut s.requests, 100);
        for (i, c) in s.boot_clients.iter_mut().enumerate() {
            c.other = 200 + 2 * i as u64 + 1;
            c.ipxe = 200 + 2 * i as u64 + 2;
        }
        set(&mut s.replies, 300);
        // Ignored requests, then malformed ones, then the driver's drops, numbered apart.
        let ignored = ironboot_net::proxy::Ignored::ALL.len();
        let (ign, rest) = s.dropped.split_at_mut(ignored);
        set(ign, 400);
        let (malformed, driver) = rest.split_at_mut(rest.len() - 3);
        set(malformed, 500);
        set(driver, 600);
        s
    }

    fn tftp_snapshot() -> TftpSnapshot {
        let mut s = TftpCounters::default().snapshot();
        let requests: [u64; RequestOutcome::ALL.len()] = numbered(100);
        for (row, v) in s.requests.iter_mut().zip(requests) {
            row.1 = v;
        }
        for (i, row) in s.errors_sent.iter_mut().enumerate() {
            row.1 = 200 + i as u64 + 1;
        }
        s.transfers_started = 301;
        s.transfers_completed = 401;
        let failed: [u64; TransferFailure::ALL.len()] = numbered(500);
        for (row, v) in s.transfers_failed.iter_mut().zip(failed) {
            row.1 = v;
        }
        s.active = 601;
        s.pending = 701;
        for (i, row) in s.retransmissions.iter_mut().enumerate() {
            row.1 = 800 + i as u64 + 1;
        }
        s.data_packets = 901;
        s.data_bytes = 1001;
        s.oacks = 1101;
        for (i, row) in s.acks.iter_mut().enumerate() {
            row.1 = 1200 + i as u64 + 1;
        }
        // Malformations, then the other drops, numbered apart.
        let malformed = ironboot_net::wire::tftp::Error::REASONS.len();
        for (i, row) in s.dropped.iter_mut().enumerate() {
            row.1 = if i < malformed {
                1300 + i as u64 + 1
            } else {
                1400 + (i - malformed) as u64 + 1
            };
        }
        // Per-bucket counts of 1501, 1502, ... cumulated, as the snapshot holds them.
        let mut cumulative = 0;
        for (i, b) in s.duration_micros.buckets.iter_mut().enumerate() {
            cumulative += 1500 + i as u64 + 1;
            b.1 = cumulative;
        }
        s.duration_micros.sum = 1_234_567;
        s.duration_micros.count = 16;
        let mut cumulative = 0;
        for (i, b) in s.size_bytes.buckets.iter_mut().enumerate() {
            cumulative += 1700 + i as u64 + 1;
            b.1 = cumulative;
        }
        s.size_bytes.sum = 987_654_321;
        s.size_bytes.count = 18;
        s
    }

    /// The exact text `/metrics` shows for these counters: every family, label, help text
    /// and value format, as dashboards and the docs know them.
    #[test]
    fn the_packet_core_metrics_text_is_unchanged() {
        let mut out = String::new();
        render_proxy(&proxy_snapshot(), &mut out);
        assert_eq!(out, include_str!("net_metrics/proxy.prom"));
        let mut out = String::new();
        render_tftp(&tftp_snapshot(), &mut out);
        assert_eq!(out, include_str!("net_metrics/tftp.prom"));
    }

    #[test]
    fn every_sample_belongs_to_a_family_declared_before_it() {
        let mut out = String::new();
        ProxyCounters::default().render(&mut out);
        TftpCounters::default().render(&mut out);
        crate::boot::metrics::assert_families_declared(&out);
    }
}
