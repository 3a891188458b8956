//! What each BMC said about its cipher suites, remembered per BMC address for a while.
//!
//! Finding the suite costs Get Channel Authentication Capabilities and Get Channel
//! Cipher Suites; a BMC that never answers the latter (OpenIPMI's ipmi_sim, many older
//! firmwares) costs a whole attempt timeout each time. Clients are built per operation
//! (the selector makes a new one each time), so the answer, silence included, is kept
//! here, process-wide, keyed by the BMC's `host:port`, until it expires: a BMC whose
//! firmware was updated is asked again within [`DEFAULT_SUITE_CACHE_TTL`].

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::crypto::CipherSuite;

/// How long a BMC's cipher suite answer (or its silence) is believed.
pub const DEFAULT_SUITE_CACHE_TTL: Duration = Duration::from_secs(10 * 60);
/// Addresses remembered at most (expired ones are dropped first).
const MAX_ENTRIES: usize = 65_536;

/// The suite to start with per BMC address, each with its expiry.
#[derive(Debug, Default)]
pub(crate) struct SuiteCache {
    entries: HashMap<String, (CipherSuite, Instant)>,
}

impl SuiteCache {
    /// The remembered suite for `bmc`, if it has not expired at `now`.
    pub(crate) fn lookup(&self, bmc: &str, now: Instant) -> Option<CipherSuite> {
        self.entries
            .get(bmc)
            .filter(|(_, expires)| now < *expires)
            .map(|(suite, _)| *suite)
    }

    /// Remembers `suite` for `bmc` until `now + ttl` (a zero `ttl` remembers nothing).
    pub(crate) fn record(&mut self, bmc: &str, suite: CipherSuite, ttl: Duration, now: Instant) {
        if ttl.is_zero() {
            return;
        }
        if self.entries.len() >= MAX_ENTRIES {
            self.entries.retain(|_, (_, e)| now < *e);
            if self.entries.len() >= MAX_ENTRIES {
                self.entries.clear();
            }
        }
        self.entries.insert(bmc.to_owned(), (suite, now + ttl));
    }

    /// Replaces the suite of a live entry with the one a session was really opened
    /// with (the BMC refused the suite it listed), keeping the entry's expiry.
    pub(crate) fn correct(&mut self, bmc: &str, suite: CipherSuite, now: Instant) {
        if let Some(entry) = self.entries.get_mut(bmc).filter(|(_, e)| now < *e) {
            entry.0 = suite;
        }
    }
}

/// The process-wide cache every [`super::IpmiClient`] shares.
pub(crate) fn shared() -> std::sync::MutexGuard<'static, SuiteCache> {
    static CACHE: LazyLock<Mutex<SuiteCache>> = LazyLock::new(Mutex::default);
    CACHE.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_are_corrected_without_extending_them() {
        let mut cache = SuiteCache::default();
        let t0 = Instant::now();
        let ttl = Duration::from_secs(600);
        cache.record("10.0.0.1:623", CipherSuite::Suite17, ttl, t0);
        cache.record("10.0.0.2:623", CipherSuite::Suite3, Duration::ZERO, t0);
        assert_eq!(cache.lookup("10.0.0.1:623", t0), Some(CipherSuite::Suite17));
        assert_eq!(cache.lookup("10.0.0.2:623", t0), None, "zero TTL");
        assert_eq!(cache.lookup("10.0.0.1:6230", t0), None, "per port");
        let later = t0 + Duration::from_secs(300);
        cache.correct("10.0.0.1:623", CipherSuite::Suite3, later);
        assert_eq!(
            cache.lookup("10.0.0.1:623", later),
            Some(CipherSuite::Suite3)
        );
        assert_eq!(cache.lookup("10.0.0.1:623", t0 + ttl), None, "expired");
        cache.correct("10.0.0.3:623", CipherSuite::Suite3, later);
        assert_eq!(cache.lookup("10.0.0.3:623", later), None, "no entry made");
    }
}
