//! What the TFTP server negotiates and how many transfers it carries, with named defaults.

use std::time::Duration;

use crate::wire::tftp::{MAX_BLOCK_SIZE, MIN_BLOCK_SIZE};

/// The well-known TFTP port, where read requests arrive.
pub const DEFAULT_PORT: u16 = 69;
/// Largest block size granted by default: one 1500-byte Ethernet frame's UDP payload
/// (1500 - 20 IPv4 - 8 UDP) minus the 4-byte TFTP header, so no block is ever fragmented.
pub const DEFAULT_MAX_BLKSIZE: u16 = 1468;
/// Largest window granted by default (RFC 7440). 64 blocks of 1468 bytes is 94 KB in
/// flight per transfer, enough to fill a LAN while the client's ACK travels back.
pub const DEFAULT_MAX_WINDOWSIZE: u16 = 64;
/// The most a configuration may grant: every window must fit one driver event.
pub const MAX_WINDOWSIZE_LIMIT: u16 = 256;
/// Retransmission interval when the client does not ask for one (RFC 2349 `timeout`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// Retransmissions of the same window (or OACK) before a transfer is given up.
pub const DEFAULT_RETRIES: u8 = 5;
/// Transfers served at once; more requests are answered "server busy".
pub const DEFAULT_MAX_TRANSFERS: usize = 8192;
/// Transfers one client IP may hold at once: a booting machine needs one or two; a NAT or
/// a relay may show several machines as one address.
pub const DEFAULT_MAX_PER_CLIENT: usize = 8;

/// Requests answered but not yet acknowledged, at most. A request holds no transfer slot
/// until its client acknowledges the first reply (proving it receives at the address it
/// claims); until then it waits in this table, and when the table is full the oldest entry
/// is dropped. A real client acknowledges within a round trip, so even a flood of spoofed
/// requests at tens of thousands per second leaves each entry tens of milliseconds.
pub const DEFAULT_MAX_PENDING: usize = 2048;

/// Longest client-requested `timeout` accepted, in seconds; longer requests are declined so
/// a vanished client frees its slot within about a minute (6 x 10 s).
pub const DEFAULT_MAX_TIMEOUT_SECS: u8 = 10;

/// TFTP server settings. Build with [`Default`] and adjust fields; [`TftpConfig::validate`]
/// runs when the server is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TftpConfig {
    /// Port read requests arrive on ([`DEFAULT_PORT`]; tests use a high port).
    pub port: u16,
    /// Largest `blksize` granted; larger requests are lowered to it (RFC 2348 lets the
    /// server answer less). [`DEFAULT_MAX_BLKSIZE`].
    pub max_blksize: u16,
    /// Largest `windowsize` granted ([`DEFAULT_MAX_WINDOWSIZE`]).
    pub max_windowsize: u16,
    /// Retransmission interval for clients that send no `timeout` option.
    pub default_timeout: Duration,
    /// Longest client `timeout` option accepted ([`DEFAULT_MAX_TIMEOUT_SECS`]); longer
    /// ones are left out of the OACK.
    pub max_timeout_secs: u8,
    /// Retransmissions before giving up on a silent client ([`DEFAULT_RETRIES`]).
    pub retries: u8,
    /// Transfers at once ([`DEFAULT_MAX_TRANSFERS`]).
    pub max_transfers: usize,
    /// Transfers at once per client IP ([`DEFAULT_MAX_PER_CLIENT`]).
    pub max_per_client: usize,
    /// Requests waiting for their client's first ACK ([`DEFAULT_MAX_PENDING`]); they
    /// count toward neither limit above.
    pub max_pending: usize,
    /// Serve every transfer from [`TftpConfig::port`] instead of a per-transfer port from
    /// the pool (the Go provider's `--tftp-single-port`): for firewalls and NAT that only
    /// let port 69 through.
    pub single_port: bool,
}

impl Default for TftpConfig {
    fn default() -> Self {
        TftpConfig {
            port: DEFAULT_PORT,
            max_blksize: DEFAULT_MAX_BLKSIZE,
            max_windowsize: DEFAULT_MAX_WINDOWSIZE,
            default_timeout: DEFAULT_TIMEOUT,
            max_timeout_secs: DEFAULT_MAX_TIMEOUT_SECS,
            retries: DEFAULT_RETRIES,
            max_transfers: DEFAULT_MAX_TRANSFERS,
            max_per_client: DEFAULT_MAX_PER_CLIENT,
            max_pending: DEFAULT_MAX_PENDING,
            single_port: false,
        }
    }
}

/// A configuration (or port pool) the server cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `max_blksize` outside RFC 2348's 8..=65464.
    #[error("max block size {0} is outside 8..=65464")]
    BlockSize(u16),
    /// `max_windowsize` is 0 or above [`MAX_WINDOWSIZE_LIMIT`].
    #[error("max window size {0} is outside 1..={MAX_WINDOWSIZE_LIMIT}")]
    WindowSize(u16),
    /// `default_timeout` is zero.
    #[error("the retransmission timeout must be positive")]
    ZeroTimeout,
    /// `max_transfers`, `max_per_client` or `max_pending` is zero: nothing could be
    /// served.
    #[error("transfer limits must be positive")]
    ZeroLimit,
    /// Pool mode without pool ports.
    #[error("no transfer ports: give pool ports or use single-port mode")]
    EmptyPool,
    /// A pool port is the request port, or appears twice.
    #[error("transfer port {0} is the request port or listed twice")]
    BadPoolPort(u16),
}

impl TftpConfig {
    /// Check the values make sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&self.max_blksize) {
            return Err(ConfigError::BlockSize(self.max_blksize));
        }
        if !(1..=MAX_WINDOWSIZE_LIMIT).contains(&self.max_windowsize) {
            return Err(ConfigError::WindowSize(self.max_windowsize));
        }
        if self.default_timeout.is_zero() {
            return Err(ConfigError::ZeroTimeout);
        }
        if self.max_transfers == 0 || self.max_per_client == 0 || self.max_pending == 0 {
            return Err(ConfigError::ZeroLimit);
        }
        Ok(())
    }

    /// Check `pool` as the transfer ports for this configuration (ignored, and so not
    /// checked, in single-port mode).
    pub fn validate_pool(&self, pool: &[u16]) -> Result<(), ConfigError> {
        if self.single_port {
            return Ok(());
        }
        if pool.is_empty() {
            return Err(ConfigError::EmptyPool);
        }
        for (i, &p) in pool.iter().enumerate() {
            if p == self.port || p == 0 || pool[..i].contains(&p) {
                return Err(ConfigError::BadPoolPort(p));
            }
        }
        Ok(())
    }
}
