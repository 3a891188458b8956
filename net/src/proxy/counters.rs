//! ProxyDHCP counters, shared between the packet path (one relaxed atomic add per event)
//! and the `/metrics` renderer.

use core::fmt::Write;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::decide::{Firmware, Ignored};
use crate::udp::DriverDrop;
use crate::wire::{Error, MessageType};

const REQUEST_TYPES: [&str; 5] = ["discover", "request", "inform", "other", "bootp"];
const REPLY_TYPES: [&str; 2] = ["offer", "ack"];
const MALFORMED: [&str; 9] = [
    "too_short",
    "too_long",
    "bad_magic_cookie",
    "bad_op",
    "bad_hlen",
    "truncated_option",
    "bad_option_length",
    "buffer_too_small",
    "option_too_long",
];
const DRIVER_DROPS: [&str; 3] = ["truncated", "no_packet_info", "send_queue_full"];

/// Counts of everything the ProxyDHCP path saw and did.
#[derive(Debug, Default)]
pub struct ProxyCounters {
    requests: [AtomicU64; REQUEST_TYPES.len()],
    boot_clients: [[AtomicU64; 2]; Firmware::ALL.len()],
    replies: [AtomicU64; REPLY_TYPES.len()],
    ignored: [AtomicU64; Ignored::ALL.len()],
    malformed: [AtomicU64; MALFORMED.len()],
    driver_drops: [AtomicU64; DRIVER_DROPS.len()],
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

impl ProxyCounters {
    /// A well-formed request of this type (or plain BOOTP with `None`).
    pub fn request(&self, message_type: Option<MessageType>) {
        let i = match message_type {
            Some(MessageType::Discover) => 0,
            Some(MessageType::Request) => 1,
            Some(MessageType::Inform) => 2,
            Some(_) => 3,
            None => 4,
        };
        bump(&self.requests[i]);
    }

    /// A network-boot client we recognised.
    pub fn boot_client(&self, firmware: Firmware, ipxe: bool) {
        let i = Firmware::ALL
            .iter()
            .position(|f| *f == firmware)
            .unwrap_or(0);
        bump(&self.boot_clients[i][usize::from(ipxe)]);
    }

    /// A reply sent (queued to the driver).
    pub fn reply(&self, message_type: MessageType) {
        bump(&self.replies[usize::from(message_type != MessageType::Offer)]);
    }

    /// A request answered with silence.
    pub fn ignored(&self, why: Ignored) {
        let i = Ignored::ALL.iter().position(|r| *r == why).unwrap_or(0);
        bump(&self.ignored[i]);
    }

    /// Bytes that were not a valid DHCP message.
    pub fn malformed(&self, error: &Error) {
        let i = MALFORMED
            .iter()
            .position(|r| *r == error.reason())
            .unwrap_or(0);
        bump(&self.malformed[i]);
    }

    /// A datagram the driver dropped, or a reply that found the send queue full.
    pub fn driver_drop(&self, why: Option<DriverDrop>) {
        let i = match why {
            Some(DriverDrop::Truncated) => 0,
            Some(DriverDrop::NoPacketInfo) => 1,
            None => 2,
        };
        bump(&self.driver_drops[i]);
    }

    /// Replies of this type so far.
    pub fn replies(&self, message_type: MessageType) -> u64 {
        self.replies[usize::from(message_type != MessageType::Offer)].load(Relaxed)
    }

    /// Requests ignored for this reason so far.
    pub fn ignored_count(&self, why: Ignored) -> u64 {
        let i = Ignored::ALL.iter().position(|r| *r == why).unwrap_or(0);
        self.ignored[i].load(Relaxed)
    }

    /// Malformed datagrams so far, all reasons.
    pub fn malformed_total(&self) -> u64 {
        self.malformed.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// Datagrams dropped without a reply so far, all reasons (ignored, malformed, driver).
    pub fn dropped_total(&self) -> u64 {
        let sum = |cs: &[AtomicU64]| cs.iter().map(|c| c.load(Relaxed)).sum::<u64>();
        sum(&self.ignored) + sum(&self.malformed) + sum(&self.driver_drops)
    }

    /// Append the counters in Prometheus text exposition format.
    pub fn render_prometheus(&self, out: &mut String) {
        let mut family = |name: &str, help: &str, rows: &mut dyn Iterator<Item = (String, u64)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (labels, v) in rows {
                let _ = writeln!(out, "{name}{{{labels}}} {v}");
            }
        };
        family(
            "ironboot_dhcp_requests_total",
            "Well-formed DHCP requests received, by message type.",
            &mut REQUEST_TYPES
                .iter()
                .zip(&self.requests)
                .map(|(t, c)| (format!("type=\"{t}\""), c.load(Relaxed))),
        );
        family(
            "ironboot_dhcp_boot_clients_total",
            "Requests from network-boot clients, by firmware and whether the client is iPXE.",
            &mut Firmware::ALL
                .iter()
                .zip(&self.boot_clients)
                .flat_map(|(f, c)| {
                    [("false", &c[0]), ("true", &c[1])].map(|(ipxe, c)| {
                        (
                            format!("firmware=\"{}\",ipxe=\"{ipxe}\"", f.label()),
                            c.load(Relaxed),
                        )
                    })
                }),
        );
        family(
            "ironboot_dhcp_replies_total",
            "ProxyDHCP replies sent, by message type.",
            &mut REPLY_TYPES
                .iter()
                .zip(&self.replies)
                .map(|(t, c)| (format!("type=\"{t}\""), c.load(Relaxed))),
        );
        family(
            "ironboot_dhcp_dropped_total",
            "DHCP datagrams dropped without a reply, by reason.",
            &mut Ignored::ALL
                .iter()
                .map(|r| r.label())
                .zip(&self.ignored)
                .chain(MALFORMED.iter().copied().zip(&self.malformed))
                .chain(DRIVER_DROPS.iter().copied().zip(&self.driver_drops))
                .map(|(r, c)| (format!("reason=\"{r}\""), c.load(Relaxed))),
        );
    }
}
