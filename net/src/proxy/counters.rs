//! ProxyDHCP counters, shared between the packet path (one relaxed atomic add per event)
//! and whoever reads them: [`ProxyCounters::snapshot`] gives plain numbers, which the
//! binary renders for `/metrics`.

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::decide::{Firmware, Ignored};
use crate::service::DriverDrop;
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

    /// The counters as they are now, as plain numbers (for `/metrics`).
    pub fn snapshot(&self) -> ProxySnapshot {
        let load = |c: &AtomicU64| c.load(Relaxed);
        let mut dropped = [("", 0); DROP_REASONS];
        let reasons = Ignored::ALL
            .iter()
            .map(|r| r.label())
            .zip(&self.ignored)
            .chain(MALFORMED.iter().copied().zip(&self.malformed))
            .chain(DRIVER_DROPS.iter().copied().zip(&self.driver_drops));
        for (slot, (reason, c)) in dropped.iter_mut().zip(reasons) {
            *slot = (reason, load(c));
        }
        ProxySnapshot {
            requests: core::array::from_fn(|i| (REQUEST_TYPES[i], load(&self.requests[i]))),
            boot_clients: core::array::from_fn(|i| BootClients {
                firmware: Firmware::ALL[i],
                other: load(&self.boot_clients[i][0]),
                ipxe: load(&self.boot_clients[i][1]),
            }),
            replies: core::array::from_fn(|i| (REPLY_TYPES[i], load(&self.replies[i]))),
            dropped,
        }
    }
}

/// Drop reasons: every [`Ignored`], every malformation, then the driver's drops.
const DROP_REASONS: usize = Ignored::ALL.len() + MALFORMED.len() + DRIVER_DROPS.len();

/// The ProxyDHCP counters at one moment: plain numbers, each with the name of what it
/// counts (the label values `/metrics` shows), in a fixed order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxySnapshot {
    /// Well-formed requests, by message type: `discover`, `request`, `inform`, `other`
    /// (any other DHCP message type) and `bootp` (no message type).
    pub requests: [(&'static str, u64); REQUEST_TYPES.len()],
    /// Requests from network-boot clients, for each of [`Firmware::ALL`].
    pub boot_clients: [BootClients; Firmware::ALL.len()],
    /// Replies sent, by message type: `offer`, `ack`.
    pub replies: [(&'static str, u64); REPLY_TYPES.len()],
    /// Datagrams dropped without a reply, by reason: each [`Ignored::label`], then each
    /// malformation ([`Error::reason`]), then the driver's drops (`truncated`,
    /// `no_packet_info`, `send_queue_full`).
    pub dropped: [(&'static str, u64); DROP_REASONS],
}

/// Requests from network-boot clients of one firmware.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootClients {
    /// The firmware.
    pub firmware: Firmware,
    /// Requests from a client that is not iPXE.
    pub other: u64,
    /// Requests from iPXE.
    pub ipxe: u64,
}
