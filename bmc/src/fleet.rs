//! Driving many BMCs at once without letting one bad BMC hold up the rest.
//!
//! A [`Fleet`] runs power operations on its members concurrently, with:
//! - a **bound** on operations in flight across the fleet (a semaphore), so a rack-wide
//!   sweep does not open hundreds of sessions at once;
//! - **one operation at a time per BMC**: operations on the same BMC queue in order
//!   (many BMCs freeze or drop sessions when two clients talk to them at once); an
//!   operation waits for its BMC *before* it takes a fleet permit, so a queue in front
//!   of a slow BMC holds at most one permit;
//! - a **per-operation bound** ([`FleetOptions::operation_timeout`]) on top of each back
//!   end's own, so a BMC that accepts packets but never finishes is cut off;
//! - **exponential backoff with jitter** after failures: a BMC that failed `n` times in
//!   a row is not tried again before `base * 2^(n-1)` (capped, with "equal jitter":
//!   half fixed, half random), and requests in that window fail at once with
//!   [`FleetError::BackingOff`] instead of waiting. The first success clears it.
//!
//! Results come back per BMC as [`Report`]s, in the order asked.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::{BmcError, BootMode, PowerControl, PowerState};

/// Default number of operations in flight across the fleet.
pub const DEFAULT_CONCURRENCY: usize = 32;
/// Default bound of one operation (upstream's IPMI client gives each 30 s).
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(30);
/// Default wait after a first failure.
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_secs(2);
/// Default longest wait between tries of a failing BMC.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(300);

/// How the fleet runs operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetOptions {
    /// Operations in flight at once across all BMCs (at least 1).
    pub concurrency: usize,
    /// Bound of one operation, from when it starts talking to its BMC.
    pub operation_timeout: Duration,
    /// Backoff after the first failure.
    pub backoff_base: Duration,
    /// Longest backoff.
    pub backoff_max: Duration,
}

impl Default for FleetOptions {
    fn default() -> Self {
        FleetOptions {
            concurrency: DEFAULT_CONCURRENCY,
            operation_timeout: DEFAULT_OPERATION_TIMEOUT,
            backoff_base: DEFAULT_BACKOFF_BASE,
            backoff_max: DEFAULT_BACKOFF_MAX,
        }
    }
}

/// A power operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// Read the power state.
    Status,
    /// Power on.
    On,
    /// Power off.
    Off,
    /// Power cycle.
    Cycle,
    /// Next boot from the network, in this firmware mode.
    PxeOnce(BootMode),
    /// Clear the boot override.
    ResetBootOverride,
}

impl Operation {
    /// The operation's name as the CLI spells it.
    pub fn name(self) -> &'static str {
        match self {
            Operation::Status => "status",
            Operation::On => "on",
            Operation::Off => "off",
            Operation::Cycle => "cycle",
            Operation::PxeOnce(_) => "pxe-once",
            Operation::ResetBootOverride => "reset-boot-override",
        }
    }

    /// Runs this operation on `bmc` (no fleet rules: those are [`Fleet::run`]'s).
    pub async fn apply<B: PowerControl + ?Sized>(self, bmc: &B) -> Result<Outcome, BmcError> {
        match self {
            Operation::Status => bmc.power_status().await.map(Outcome::Power),
            Operation::On => bmc.power_on().await.map(|()| Outcome::Done),
            Operation::Off => bmc.power_off().await.map(|()| Outcome::Done),
            Operation::Cycle => bmc.power_cycle().await.map(|()| Outcome::Done),
            Operation::PxeOnce(mode) => bmc.pxe_boot_once(mode).await.map(|()| Outcome::Done),
            Operation::ResetBootOverride => bmc.reset_boot_override().await.map(|()| Outcome::Done),
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operation::PxeOnce(mode) => write!(f, "pxe-once ({mode})"),
            other => f.write_str(other.name()),
        }
    }
}

/// What a successful operation returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The power state read.
    Power(PowerState),
    /// The BMC accepted the action.
    Done,
}

/// Why an operation on one fleet member did not succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FleetError {
    /// The BMC (or its back end's own bound) failed the operation.
    #[error(transparent)]
    Bmc(#[from] BmcError),
    /// The fleet's per-operation bound expired.
    #[error("BMC {bmc}: {operation} did not finish within the fleet's bound of {timeout_ms} ms")]
    Timeout {
        /// The BMC address.
        bmc: String,
        /// The operation.
        operation: Operation,
        /// The bound.
        timeout_ms: u64,
    },
    /// The BMC failed recently and is left alone until its backoff ends.
    #[error(
        "BMC {bmc}: not tried: backing off after {failures} failure(s) in a row, next try in {retry_in_ms} ms (last error: {last_error})"
    )]
    BackingOff {
        /// The BMC address.
        bmc: String,
        /// Consecutive failures.
        failures: u32,
        /// Time left.
        retry_in_ms: u64,
        /// The last failure.
        last_error: String,
    },
    /// No such member.
    #[error("BMC {bmc} is not in the fleet")]
    Unknown {
        /// The address asked for.
        bmc: String,
    },
}

impl FleetError {
    /// The BMC address this error is about.
    pub fn bmc(&self) -> &str {
        match self {
            FleetError::Bmc(e) => e.bmc(),
            FleetError::Timeout { bmc, .. }
            | FleetError::BackingOff { bmc, .. }
            | FleetError::Unknown { bmc } => bmc,
        }
    }
}

/// One operation's result on one BMC.
#[derive(Debug)]
pub struct Report {
    /// The BMC address.
    pub bmc: String,
    /// The operation.
    pub operation: Operation,
    /// Its result.
    pub result: Result<Outcome, FleetError>,
    /// Time spent waiting for the BMC (earlier operations on it) and a fleet permit.
    pub queued: Duration,
    /// Time spent talking to the BMC.
    pub elapsed: Duration,
    /// When the operation ended.
    pub finished_at: Instant,
}

/// A member's failure record.
#[derive(Debug, Clone, Default)]
struct Health {
    failures: u32,
    retry_at: Option<Instant>,
    last_error: String,
}

/// The failure record of a member, as [`Fleet::health`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSnapshot {
    /// Consecutive failures.
    pub failures: u32,
    /// Time until the next try is allowed (zero: now).
    pub retry_in: Duration,
}

struct Member<B> {
    bmc: B,
    /// Held for the whole of each operation on this BMC; shared with the member that
    /// replaces this one, so a replaced BMC is still never driven twice at once.
    serial: Arc<tokio::sync::Mutex<()>>,
    health: Mutex<Health>,
}

struct Inner<B> {
    options: FleetOptions,
    permits: Semaphore,
    members: Mutex<HashMap<String, Arc<Member<B>>>>,
}

/// A set of BMCs, keyed by address, driven under the rules of the module docs. Cheap
/// to clone (shared).
pub struct Fleet<B> {
    inner: Arc<Inner<B>>,
}

impl<B> Clone for Fleet<B> {
    fn clone(&self) -> Self {
        Fleet {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<B> fmt::Debug for Fleet<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fleet")
            .field("options", &self.inner.options)
            .field(
                "members",
                &self
                    .inner
                    .members
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .len(),
            )
            .finish()
    }
}

/// Backoff after `failures` consecutive failures: `base * 2^(failures-1)` capped at
/// `max`, of which the second half is scaled by `random` (0.0..1.0) ("equal jitter",
/// so retries of BMCs that failed together spread out but never come sooner than half).
pub fn backoff_delay(failures: u32, base: Duration, max: Duration, random: f64) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let exp = base
        .checked_mul(1u32 << (failures - 1).min(30))
        .unwrap_or(max)
        .min(max);
    let half = exp / 2;
    half + half.mul_f64(random.clamp(0.0, 1.0))
}

/// A uniform number in 0.0..1.0 from the OS (0.5 if it has none to give).
fn jitter() -> f64 {
    match getrandom::u64() {
        Ok(r) => (r >> 11) as f64 / (1u64 << 53) as f64,
        Err(_) => 0.5,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl<B: PowerControl + 'static> Fleet<B> {
    /// An empty fleet.
    pub fn new(options: FleetOptions) -> Self {
        let permits = Semaphore::new(options.concurrency.max(1));
        Fleet {
            inner: Arc::new(Inner {
                options,
                permits,
                members: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The options.
    pub fn options(&self) -> &FleetOptions {
        &self.inner.options
    }

    fn lock_members(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Member<B>>>> {
        self.inner.members.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `bmc` under its address and returns the address. A member with the same
    /// address is replaced (new credentials, say) and its failure record cleared; an
    /// operation still running on the old one finishes before one on the new one starts.
    pub fn insert(&self, bmc: B) -> String {
        let address = bmc.address().to_owned();
        let mut members = self.lock_members();
        let serial = members
            .get(&address)
            .map(|m| Arc::clone(&m.serial))
            .unwrap_or_default();
        members.insert(
            address.clone(),
            Arc::new(Member {
                bmc,
                serial,
                health: Mutex::new(Health::default()),
            }),
        );
        address
    }

    /// Removes a member; `false` if there was none.
    pub fn remove(&self, address: &str) -> bool {
        self.lock_members().remove(address).is_some()
    }

    /// The members' addresses, sorted.
    pub fn addresses(&self) -> Vec<String> {
        let mut out: Vec<String> = self.lock_members().keys().cloned().collect();
        out.sort();
        out
    }

    /// A member's failure record.
    pub fn health(&self, address: &str) -> Option<HealthSnapshot> {
        let member = self.lock_members().get(address).cloned()?;
        let health = member.health.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        Some(HealthSnapshot {
            failures: health.failures,
            retry_in: health
                .retry_at
                .map_or(Duration::ZERO, |at| at.saturating_duration_since(now)),
        })
    }

    /// Forgets a member's failures, so the next operation runs at once.
    pub fn clear_backoff(&self, address: &str) {
        if let Some(member) = self.lock_members().get(address).cloned() {
            *member.health.lock().unwrap_or_else(|e| e.into_inner()) = Health::default();
        }
    }

    /// Runs `operation` on the member at `address`, under the fleet's rules.
    pub async fn run(&self, address: &str, operation: Operation) -> Report {
        let asked = Instant::now();
        let report = |result, queued, elapsed| Report {
            bmc: address.to_owned(),
            operation,
            result,
            queued,
            elapsed,
            finished_at: Instant::now(),
        };
        let Some(member) = self.lock_members().get(address).cloned() else {
            let e = FleetError::Unknown {
                bmc: address.to_owned(),
            };
            return report(Err(e), Duration::ZERO, Duration::ZERO);
        };
        if let Some(e) = backing_off(&member, address) {
            return report(Err(e), Duration::ZERO, Duration::ZERO);
        }
        // This BMC first, then a fleet permit: waiting behind a slow BMC holds no permit.
        let _serial = member.serial.lock().await;
        if let Some(e) = backing_off(&member, address) {
            return report(Err(e), asked.elapsed(), Duration::ZERO);
        }
        // The semaphore is never closed, so this always holds a permit.
        let _permit = self.inner.permits.acquire().await.ok();
        let started = Instant::now();
        let queued = started - asked;
        let bound = self.inner.options.operation_timeout;
        let result = match tokio::time::timeout(bound, operation.apply(&member.bmc)).await {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(e)) => Err(FleetError::Bmc(e)),
            Err(_) => Err(FleetError::Timeout {
                bmc: address.to_owned(),
                operation,
                timeout_ms: millis(bound),
            }),
        };
        let elapsed = started.elapsed();
        self.record(&member, address, operation, &result);
        report(result, queued, elapsed)
    }

    fn record(
        &self,
        member: &Member<B>,
        address: &str,
        operation: Operation,
        result: &Result<Outcome, FleetError>,
    ) {
        let mut health = member.health.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(_) => {
                if health.failures > 0 {
                    debug!(
                        bmc = address,
                        failures = health.failures,
                        "BMC answers again"
                    );
                }
                *health = Health::default();
            }
            Err(e) => {
                health.failures = health.failures.saturating_add(1);
                let o = &self.inner.options;
                let delay = backoff_delay(health.failures, o.backoff_base, o.backoff_max, jitter());
                health.retry_at = Some(Instant::now() + delay);
                health.last_error = e.to_string();
                warn!(
                    bmc = address,
                    %operation,
                    failures = health.failures,
                    backoff_ms = millis(delay),
                    "BMC operation failed: {e}"
                );
            }
        }
    }

    /// Runs every `(address, operation)` concurrently under the fleet's rules; the
    /// reports come back in the order given. Several operations on one address run
    /// one after the other, in the order given.
    pub async fn run_many<I, S>(&self, jobs: I) -> Vec<Report>
    where
        I: IntoIterator<Item = (S, Operation)>,
        S: Into<String>,
    {
        // One task per BMC, running that BMC's operations in the order given.
        let mut per_bmc: Vec<(String, Vec<(usize, Operation)>)> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut count = 0;
        for (i, (address, op)) in jobs.into_iter().enumerate() {
            let address: String = address.into();
            let slot = *index.entry(address.clone()).or_insert_with(|| {
                per_bmc.push((address, Vec::new()));
                per_bmc.len() - 1
            });
            per_bmc[slot].1.push((i, op));
            count += 1;
        }
        let mut set = JoinSet::new();
        for (address, ops) in per_bmc {
            let fleet = self.clone();
            set.spawn(async move {
                let mut done = Vec::with_capacity(ops.len());
                for (i, op) in ops {
                    done.push((i, fleet.run(&address, op).await));
                }
                done
            });
        }
        let mut out: Vec<Option<Report>> = (0..count).map(|_| None).collect();
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok(done) => {
                    for (i, report) in done {
                        out[i] = Some(report);
                    }
                }
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                // Cancelled: only when the runtime shuts down.
                Err(_) => {}
            }
        }
        out.into_iter().flatten().collect()
    }

    /// Reads the power state of every member (sorted by address).
    pub async fn sweep_status(&self) -> Vec<Report> {
        self.run_many(self.addresses().into_iter().map(|a| (a, Operation::Status)))
            .await
    }
}

/// `Some(BackingOff)` while the member's backoff runs.
fn backing_off<B>(member: &Member<B>, address: &str) -> Option<FleetError> {
    let health = member.health.lock().unwrap_or_else(|e| e.into_inner());
    let retry_at = health.retry_at?;
    let now = Instant::now();
    (now < retry_at).then(|| FleetError::BackingOff {
        bmc: address.to_owned(),
        failures: health.failures,
        retry_in_ms: millis(retry_at - now),
        last_error: health.last_error.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_equal_jitter_and_is_capped() {
        let base = Duration::from_secs(2);
        let max = Duration::from_secs(60);
        assert_eq!(backoff_delay(0, base, max, 0.7), Duration::ZERO);
        assert_eq!(backoff_delay(1, base, max, 0.0), Duration::from_secs(1));
        assert_eq!(backoff_delay(1, base, max, 1.0), Duration::from_secs(2));
        assert_eq!(backoff_delay(3, base, max, 0.0), Duration::from_secs(4));
        assert_eq!(backoff_delay(3, base, max, 0.5), Duration::from_secs(6));
        assert_eq!(backoff_delay(10, base, max, 1.0), max);
        assert_eq!(backoff_delay(u32::MAX, base, max, 0.0), max / 2);
        for _ in 0..100 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j), "{j}");
        }
    }

    #[test]
    fn operations_have_cli_names() {
        assert_eq!(Operation::PxeOnce(BootMode::Bios).name(), "pxe-once");
        assert_eq!(
            Operation::PxeOnce(BootMode::Uefi).to_string(),
            "pxe-once (uefi)"
        );
        assert_eq!(Operation::Cycle.to_string(), "cycle");
    }
}
