//! The thin executor of the Omni-mode control loop: one task per machine
//! reads the machine's records, folds in its live status, asks [`lifecycle::reconcile`]
//! what to do and does it (BMC through the fleet, agent through its tunnel, records through
//! COSI writes), then either goes again at once (a step was taken: decide from the fresh
//! records) or sleeps until the plan's `wake_at`, the next power poll, or an event.
//!
//! - [`mapping`]: the pure translations resources <-> core;
//! - [`secrets`]: BMC passwords from the OS random source;
//! - [`feed`]: Omni watches and tunnel events that wake machines;
//! - [`real`]: the [`Store`], [`Power`] and [`Agent`] seams over the Omni client, the BMC
//!   fleet and the agent client.
//!
//! Isolation: each machine has its own task, so a slow BMC or agent holds up only its own
//! machine; a semaphore bounds how many passes run at once (a disk wipe holds no permit:
//! it can take hours). Events (PXE boot, tunnel open/close, an Omni resource changed)
//! wake the machine's task at once.
//!
//! Proven with in-process stand-ins for the three seams (`tests`, below) and against real
//! peers by `tests/it/executor_omni.rs` (Omni's COSI state from the Go harness, `ipmi_sim`,
//! the Go metal agent over the real tunnel).
//!
//! Started by the Omni mode ([`crate::provider::mode`]) with the API port's tunnels; PXE
//! boots reach a machine's task as [`Event::PxeBoot`]. The live status is kept in
//! memory and written to the private `MachineStatus` record whenever it changes, as the
//! Go provider keeps it (its `initialized` flag is read back, so it survives a restart).

pub(crate) mod feed;
pub(crate) mod mapping;
pub(crate) mod real;
pub(crate) mod secrets;
pub(crate) mod stats;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ironboot_bmc::{BmcInfo, BootMode, PowerState};
use ironboot_proto::agent::GetPowerManagementResponse;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::provider::agent::client::AgentError;
use crate::provider::lifecycle::{
    self, Action, Event, MachineStatus, Policy, PowerOp, Secret, SecretSource,
};
use crate::provider::omni::client::OmniError;
use mapping::{Records, Write};

/// A failed step, naming the machine and what failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExecError {
    /// Reading or writing Omni failed.
    #[error("machine {machine_id}: Omni: {source}")]
    Omni {
        /// The machine.
        machine_id: String,
        /// The client's error.
        #[source]
        source: OmniError,
    },
    /// A BMC operation failed.
    #[error("machine {machine_id}: BMC {bmc}: {operation}: {detail}")]
    Bmc {
        /// The machine.
        machine_id: String,
        /// The BMC's address.
        bmc: String,
        /// The operation, e.g. `off`.
        operation: String,
        /// What went wrong.
        detail: String,
    },
    /// A power action was planned but no BMC credentials are stored.
    #[error("machine {machine_id}: {operation}: no BMC credentials stored")]
    NoBmc {
        /// The machine.
        machine_id: String,
        /// The operation.
        operation: &'static str,
    },
    /// A metal agent call failed (the error names machine and RPC).
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The emulated machine's HTTP power API address could not be found.
    #[error("machine {machine_id}: HTTP power API: {detail}")]
    PowerApi {
        /// The machine.
        machine_id: String,
        /// What went wrong.
        detail: String,
    },
    /// The agent reports no in-band IPMI to configure.
    #[error("machine {machine_id}: the metal agent reports no in-band IPMI interface")]
    NoIpmi {
        /// The machine.
        machine_id: String,
    },
    /// Omni let the machine go, but records of it are still held by finalizers of
    /// another party than this provider: they are destroyed at a later pass.
    #[error(
        "machine {machine_id}: released, but finalizers of another party still hold \
         {records:?}; retrying"
    )]
    ReleasePending {
        /// The machine.
        machine_id: String,
        /// The types of the records left.
        records: Vec<String>,
    },
    /// The agent reports a BMC address outside `--bmc-allow-cidr` (or no IP address while
    /// the list is set): no credentials are set up.
    #[error(
        "machine {machine_id}: the metal agent reports BMC address {address:?}, outside \
         --bmc-allow-cidr: no credentials set up"
    )]
    BmcAddressRefused {
        /// The machine.
        machine_id: String,
        /// The reported address (bounded by the tunnel's message size).
        address: String,
    },
}

/// A BMC power action (the side effects of [`Action::PowerOn`], [`Action::PowerOff`] and
/// [`Action::Reboot`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PowerAction {
    /// Optionally PXE-once, then power on.
    On(Option<BootMode>),
    /// Power off.
    Off,
    /// Optionally PXE-once, then power-cycle.
    Reboot(Option<BootMode>),
}

/// Omni as the executor sees it: one machine's records, and writes to them.
pub(crate) trait Store: Send + Sync + 'static {
    /// Reads every record of `machine_id`.
    fn load(&self, machine_id: &str) -> impl Future<Output = Result<Records, ExecError>> + Send;
    /// Applies one write to `machine_id`'s records.
    fn write(
        &self,
        machine_id: &str,
        write: &Write,
    ) -> impl Future<Output = Result<(), ExecError>> + Send;
}

/// A machine's BMC.
pub(crate) trait Power: Send + Sync + 'static {
    /// Reads the power state.
    fn status(
        &self,
        machine_id: &str,
        bmc: &BmcInfo,
    ) -> impl Future<Output = Result<PowerState, ExecError>> + Send;
    /// Runs a power action.
    fn act(
        &self,
        machine_id: &str,
        bmc: &BmcInfo,
        action: PowerAction,
    ) -> impl Future<Output = Result<(), ExecError>> + Send;
}

/// A machine's metal agent.
pub(crate) trait Agent: Send + Sync + 'static {
    /// The agent's tunnel is open now (the registry is the truth; tunnel events only wake
    /// the loop, so a missed event cannot leave a stale "connected").
    fn is_connected(&self, machine_id: &str) -> bool;
    /// GetPowerManagement (in-band IPMI address and port).
    fn get_power_management(
        &self,
        machine_id: &str,
    ) -> impl Future<Output = Result<GetPowerManagementResponse, ExecError>> + Send;
    /// SetPowerManagement (create or claim the IPMI user).
    fn set_power_management(
        &self,
        machine_id: &str,
        username: &str,
        password: &Secret,
    ) -> impl Future<Output = Result<(), ExecError>> + Send;
    /// WipeDisks.
    fn wipe_disks(
        &self,
        machine_id: &str,
        zeroes: bool,
    ) -> impl Future<Output = Result<(), ExecError>> + Send;
}

/// How the executor paces itself.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The lifecycle policy (`--min-reboot-interval`, `--wipe-with-zeroes`, PXE mode).
    pub(crate) policy: Policy,
    /// `--machine-labels`, set on every `InfraMachineStatus`.
    pub(crate) machine_labels: BTreeMap<String, String>,
    /// Passes running at once across all machines.
    pub(crate) concurrency: usize,
    /// How often each machine's BMC power state is read.
    pub power_poll_interval: Duration,
    /// First wait after a failed pass (doubling up to `power_poll_interval`).
    pub(crate) retry_base: Duration,
    /// `--api-power-mgmt-state-dir`: launch configurations of emulated machines.
    pub(crate) power_api_dir: Option<std::path::PathBuf>,
    /// `--bmc-allow-cidr`: where a BMC reported by an agent may be (empty = anywhere).
    pub(crate) bmc_allow: Vec<ironboot_net::cidr::Cidr>,
}

impl Settings {
    /// Upstream-like pacing for `policy` and `labels`.
    pub fn new(policy: Policy, machine_labels: BTreeMap<String, String>) -> Self {
        Self {
            policy,
            machine_labels,
            concurrency: 16,
            power_poll_interval: Duration::from_secs(30),
            retry_base: Duration::from_secs(1),
            power_api_dir: None,
            bmc_allow: Vec::new(),
        }
    }
}

/// Passes in a row taken without waiting before the task rests a poll interval: a guard
/// against a rule that keeps planning steps (every lifecycle step needs far fewer).
const MAX_IMMEDIATE_PASSES: u32 = 32;

/// One machine's live state and its task's wake-up.
#[derive(Default)]
struct Machine {
    status: Mutex<MachineStatus>,
    last_poll: Mutex<Option<Instant>>,
    /// The provider's last recorded start of the machine, tied to monotonic time
    /// ([`Machine::boot_at`]).
    boot_anchor: Mutex<Option<BootAnchor>>,
    wake: Notify,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// A recorded power-on or reboot (at wall-clock `at`, as in Omni) and its age on the
/// monotonic clock: `age` when first seen at `seen`.
#[derive(Debug, Clone, Copy)]
struct BootAnchor {
    at: SystemTime,
    age: Duration,
    seen: Instant,
}

impl Machine {
    fn status(&self) -> MachineStatus {
        *self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn apply(&self, event: Event) {
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        *s = lifecycle::apply_event(*s, event);
    }

    /// This executor recorded a start of the machine (power-on or reboot) at wall-clock
    /// `at` just now: its age is zero.
    fn recorded_boot(&self, at: SystemTime) {
        *self.boot_anchor.lock().unwrap_or_else(|e| e.into_inner()) = Some(BootAnchor {
            at,
            age: Duration::ZERO,
            seen: Instant::now(),
        });
    }

    /// The recorded start at `at`, moved to where it lies before `now` on the monotonic
    /// clock: the cooldown it starts then runs on elapsed time, and a wall clock set
    /// forward or back neither ends it early nor stretches it. A record this executor did
    /// not take is aged by the wall clock once, when first seen (a record from the future
    /// counts as new).
    fn boot_at(&self, at: SystemTime, now: SystemTime) -> SystemTime {
        let mut anchor = self.boot_anchor.lock().unwrap_or_else(|e| e.into_inner());
        let a = match *anchor {
            Some(a) if a.at == at => a,
            _ => {
                let a = BootAnchor {
                    at,
                    age: now.duration_since(at).unwrap_or_default(),
                    seen: Instant::now(),
                };
                *anchor = Some(a);
                a
            }
        };
        let age = a.age.saturating_add(a.seen.elapsed());
        now.checked_sub(age).unwrap_or(SystemTime::UNIX_EPOCH)
    }
}

type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

struct Inner<S, P, A> {
    store: S,
    power: P,
    agent: A,
    settings: Settings,
    clock: Clock,
    /// When this executor started (monotonic): agents get a grace to reconnect from then.
    started_at: Instant,
    secrets: Mutex<Box<dyn SecretSource + Send>>,
    permits: Semaphore,
    machines: Mutex<HashMap<String, Arc<Machine>>>,
    stats: Arc<stats::ExecutorStats>,
    /// Cancelled by [`Executor::shutdown`]: each machine's loop ends at its next await
    /// point between lifecycle steps, never within one.
    stop: tokio_util::sync::CancellationToken,
}

/// Runs the control loop of every machine it is told about. Dropping it stops the tasks.
pub(crate) struct Executor<S: Store, P: Power, A: Agent> {
    inner: Arc<Inner<S, P, A>>,
}

/// What one pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PassOutcome {
    /// Actions were run: decide again at once.
    acted: bool,
    /// The plan's wake-up time.
    wake_at: Option<SystemTime>,
}

impl<S: Store, P: Power, A: Agent> Executor<S, P, A> {
    /// An executor with the system clock and OS-random passwords.
    pub(crate) fn new(store: S, power: P, agent: A, settings: Settings) -> Self {
        Self::with_sources(
            store,
            power,
            agent,
            settings,
            Arc::new(SystemTime::now),
            Box::new(secrets::OsSecrets),
        )
    }

    /// An executor with an injected clock and password source.
    pub(crate) fn with_sources(
        store: S,
        power: P,
        agent: A,
        settings: Settings,
        clock: Clock,
        secrets: Box<dyn SecretSource + Send>,
    ) -> Self {
        let permits = Semaphore::new(settings.concurrency.max(1));
        Self {
            inner: Arc::new(Inner {
                store,
                power,
                agent,
                settings,
                started_at: Instant::now(),
                clock,
                secrets: Mutex::new(secrets),
                permits,
                machines: Mutex::new(HashMap::new()),
                stats: Arc::default(),
                stop: tokio_util::sync::CancellationToken::new(),
            }),
        }
    }

    /// Something about `machine_id` changed in Omni: run its loop now (starting its task
    /// if it has none).
    pub(crate) fn wake(&self, machine_id: &str) {
        self.machine(machine_id).wake.notify_one();
    }

    /// A PXE boot, tunnel open/close or power reading of `machine_id`: fold it into the
    /// live status and run the machine's loop now.
    pub(crate) fn event(&self, machine_id: &str, event: Event) {
        let m = self.machine(machine_id);
        m.apply(event);
        m.wake.notify_one();
    }

    /// The machines with a task.
    #[cfg(test)]
    pub(crate) fn machines(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.lock_machines().keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Its counters, for `/metrics`.
    pub(crate) fn stats(&self) -> Arc<stats::ExecutorStats> {
        Arc::clone(&self.inner.stats)
    }

    /// Tells every machine's task to stop (also done on drop): a task between passes
    /// ends at once, one in a pass finishes the step it is taking and starts no other.
    /// No task is aborted: a step cut off could leave a machine half-changed.
    pub(crate) fn shutdown(&self) {
        self.inner.stop.cancel();
    }

    /// Waits for every machine's task to end (after [`Executor::shutdown`]).
    pub(crate) async fn stopped(&self) {
        let tasks: Vec<_> = self
            .lock_machines()
            .values()
            .filter_map(|m| m.task.lock().unwrap_or_else(|e| e.into_inner()).take())
            .collect();
        for task in tasks {
            let _ = task.await;
        }
    }

    fn lock_machines(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Machine>>> {
        self.inner
            .machines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn machine(&self, machine_id: &str) -> Arc<Machine> {
        let mut machines = self.lock_machines();
        if let Some(m) = machines.get(machine_id) {
            return Arc::clone(m);
        }
        self.inner.stats.machine_added();
        let m = Arc::new(Machine::default());
        machines.insert(machine_id.to_owned(), Arc::clone(&m));
        if self.inner.stop.is_cancelled() {
            return m;
        }
        let task = tokio::spawn(run_machine(
            Arc::clone(&self.inner),
            machine_id.to_owned(),
            Arc::clone(&m),
        ));
        *m.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        m
    }
}

impl<S: Store, P: Power, A: Agent> Drop for Executor<S, P, A> {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// One machine's loop: pass, then go again, rest until a time, or back off.
async fn run_machine<S: Store, P: Power, A: Agent>(
    inner: Arc<Inner<S, P, A>>,
    machine_id: String,
    machine: Arc<Machine>,
) {
    let poll = inner.settings.power_poll_interval;
    let mut streak = 0u32;
    let mut failures = 0u32;
    loop {
        let permit = tokio::select! {
            () = inner.stop.cancelled() => return,
            permit = inner.permits.acquire() => permit,
        };
        let Ok(permit) = permit else {
            return;
        };
        let result = pass(&inner, &machine_id, &machine, permit).await;
        let rest = match result {
            Ok(outcome) => {
                failures = 0;
                if outcome.acted && streak < MAX_IMMEDIATE_PASSES {
                    streak += 1;
                    continue;
                }
                if outcome.acted {
                    tracing::warn!(
                        machine_id,
                        "still planning steps after {MAX_IMMEDIATE_PASSES} passes; resting"
                    );
                }
                streak = 0;
                let until_wake = outcome
                    .wake_at
                    .map(|at| at.duration_since((inner.clock)()).unwrap_or_default());
                until_wake.map_or(poll, |d| d.min(poll))
            }
            Err(e) => {
                streak = 0;
                failures = failures.saturating_add(1);
                inner.stats.failed_pass();
                // Records held by another party are retried quietly after the first
                // report: their holder may take long to let go.
                if failures > 1 && matches!(e, ExecError::ReleasePending { .. }) {
                    tracing::debug!(machine_id, error = %e, failures, "lifecycle step failed");
                } else {
                    tracing::warn!(machine_id, error = %e, failures, "lifecycle step failed");
                }
                let shift = failures.saturating_sub(1).min(16);
                inner
                    .settings
                    .retry_base
                    .saturating_mul(1u32 << shift)
                    .min(poll)
            }
        };
        tokio::select! {
            () = inner.stop.cancelled() => return,
            () = machine.wake.notified() => {}
            () = tokio::time::sleep(rest) => {}
        }
    }
}

/// Reads, decides and acts once, holding one of the executor's permits except during a
/// disk wipe (minutes, or hours with zeroes: it must not hold up other machines).
async fn pass<S: Store, P: Power, A: Agent>(
    inner: &Inner<S, P, A>,
    machine_id: &str,
    machine: &Machine,
    permit: tokio::sync::SemaphorePermit<'_>,
) -> Result<PassOutcome, ExecError> {
    let mut permit = Some(permit);
    let records = inner.store.load(machine_id).await?;
    let bmc = mapping::bmc_info(
        records.bmc_config.as_ref(),
        records.bmc_configuration.as_ref(),
    );
    let poll_failed = match &bmc {
        Some(bmc) => poll_power(inner, machine_id, machine, bmc).await.err(),
        None => None,
    };
    let mut status = machine.status();
    status.agent_connected = inner.agent.is_connected(machine_id);
    let mut observed = mapping::observed(&records, status);
    if mapping::status_labels_stale(&records, &inner.settings.machine_labels) {
        observed.written_status = None;
    }
    // The rules compare wall-clock times (records in Omni carry them); the grace and the
    // cooldown are handed over as times before or after `now` measured on the monotonic
    // clock, so a wall clock that jumps moves neither.
    let now = (inner.clock)();
    observed.agent_grace_until = inner
        .settings
        .policy
        .agent_reconnect_grace
        .checked_sub(inner.started_at.elapsed())
        .map(|left| now + left);
    observed.cooldown_from = observed.cooldown_from.map(|at| machine.boot_at(at, now));
    let plan = {
        let mut secrets = inner.secrets.lock().unwrap_or_else(|e| e.into_inner());
        lifecycle::reconcile(&observed, &inner.settings.policy, now, secrets.as_mut())
    };
    if !plan.actions.is_empty() {
        tracing::debug!(machine_id, actions = ?plan.actions, "lifecycle plan");
    }
    for (index, action) in plan.actions.iter().enumerate() {
        // Stopping: a destructive step already under way has finished, and the records
        // that follow it (a wipe's "done") are still written; no other destructive step
        // starts, nor the records announcing it. The rest of the plan is decided again at
        // the next start, from what the machine then is.
        if inner.stop.is_cancelled() && plan.actions[index..].iter().any(Action::is_destructive) {
            tracing::info!(machine_id, "stopping: no further lifecycle step started");
            break;
        }
        if matches!(action, Action::WipeDisks { .. }) {
            permit = None;
        } else if permit.is_none() {
            permit = inner.permits.acquire().await.ok();
        }
        execute(
            inner,
            machine_id,
            machine,
            bmc.as_ref(),
            &records.infra_labels,
            action,
        )
        .await?;
        match action {
            Action::RecordPowerOp {
                op: PowerOp::On,
                at,
            }
            | Action::RecordRebootHandled { at: Some(at), .. } => machine.recorded_boot(*at),
            _ => {}
        }
        inner.stats.step(action);
    }
    drop(permit);
    // A BMC that could not be read is retried with the failure backoff, not at the next
    // poll: power decisions wait for a reading.
    if let Some(e) = poll_failed {
        return Err(e);
    }
    Ok(PassOutcome {
        acted: !plan.actions.is_empty(),
        wake_at: plan.wake_at,
    })
}

/// Reads the BMC's power state if the last reading is older than the poll interval. A
/// failed reading keeps the last state and is returned (the pass is retried).
async fn poll_power<S: Store, P: Power, A: Agent>(
    inner: &Inner<S, P, A>,
    machine_id: &str,
    machine: &Machine,
    bmc: &BmcInfo,
) -> Result<(), ExecError> {
    let due = {
        let last = machine.last_poll.lock().unwrap_or_else(|e| e.into_inner());
        last.is_none_or(|t| t.elapsed() >= inner.settings.power_poll_interval)
    };
    if !due {
        return Ok(());
    }
    let state = inner.power.status(machine_id, bmc).await?;
    machine.apply(Event::PowerPolled(state));
    *machine.last_poll.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    Ok(())
}

/// The `BMCConfiguration` of an emulated machine: its power API address from the launch
/// configurations in `--api-power-mgmt-state-dir`.
async fn power_api_configuration<S: Store, P: Power, A: Agent>(
    inner: &Inner<S, P, A>,
    machine_id: &str,
) -> Result<ironboot_proto::baremetal::BmcConfigurationSpec, ExecError> {
    use ironboot_proto::baremetal::{BmcConfigurationSpec, bmc_configuration_spec::Api};
    let failed = |detail: String| ExecError::PowerApi {
        machine_id: machine_id.to_owned(),
        detail,
    };
    let Some(dir) = inner.settings.power_api_dir.clone() else {
        return Err(failed(
            "the agent offers an HTTP power API (test mode), which needs \
             --api-power-mgmt-state-dir"
                .into(),
        ));
    };
    let uuid = machine_id.to_owned();
    let found =
        tokio::task::spawn_blocking(move || crate::provider::power_mgmt_dir::lookup(&dir, &uuid))
            .await
            .map_err(|e| failed(format!("looking the address up: {e}")))?
            .map_err(|e| failed(e.to_string()))?;
    let address = found.ok_or_else(|| {
        failed("no launch configuration in --api-power-mgmt-state-dir names this machine".into())
    })?;
    Ok(BmcConfigurationSpec {
        ipmi: None,
        api: Some(Api { address }),
        manually_configured: false,
    })
}

async fn execute<S: Store, P: Power, A: Agent>(
    inner: &Inner<S, P, A>,
    machine_id: &str,
    machine: &Machine,
    bmc: Option<&BmcInfo>,
    infra_labels: &BTreeMap<String, String>,
    action: &Action,
) -> Result<(), ExecError> {
    if let Some(write) = mapping::write_for(action, &inner.settings.machine_labels, infra_labels) {
        return inner.store.write(machine_id, &write).await;
    }
    let (power_action, after, operation) = match action {
        Action::ConfigureBmcViaAgent { username, password } => {
            let answer = inner.agent.get_power_management(machine_id).await?;
            // An agent in test mode offers the emulated machine's HTTP power API: its
            // address comes from the launch configurations (upstream's behaviour).
            if answer.ipmi.is_none() && answer.api.is_some() {
                let spec = power_api_configuration(inner, machine_id).await?;
                tracing::info!(machine_id, "BMC: the HTTP power API of an emulated machine");
                return inner
                    .store
                    .write(machine_id, &Write::BmcConfiguration(spec))
                    .await;
            }
            // Check before creating the user: nothing to store without an address, and
            // the address is the agent's word, so it must be where BMCs may be.
            let Some(ipmi) = &answer.ipmi else {
                return Err(ExecError::NoIpmi {
                    machine_id: machine_id.to_owned(),
                });
            };
            let address = ipmi.address.as_str();
            let allowed = match address.parse::<std::net::IpAddr>() {
                Ok(ip) => ironboot_net::cidr::Cidr::allows(&inner.settings.bmc_allow, ip),
                Err(_) => inner.settings.bmc_allow.is_empty(),
            };
            if !allowed {
                let address: String = address.chars().take(64).collect();
                tracing::warn!(
                    machine_id,
                    bmc_address = %address,
                    "the metal agent reports a BMC outside --bmc-allow-cidr: refused"
                );
                return Err(ExecError::BmcAddressRefused {
                    machine_id: machine_id.to_owned(),
                    address,
                });
            }
            tracing::info!(
                machine_id,
                bmc_address = %address.chars().take(64).collect::<String>(),
                bmc_port = ipmi.port,
                "the metal agent reports its BMC"
            );
            inner
                .agent
                .set_power_management(machine_id, username, password)
                .await?;
            let spec = mapping::bmc_configuration_from_agent(&answer, username, password.expose())
                .ok_or_else(|| ExecError::NoIpmi {
                    machine_id: machine_id.to_owned(),
                })?;
            tracing::info!(machine_id, "BMC credentials set up through the metal agent");
            return inner
                .store
                .write(machine_id, &Write::BmcConfiguration(spec))
                .await;
        }
        Action::WipeDisks { zeroes } => {
            tracing::info!(machine_id, zeroes, "wiping disks");
            return inner.agent.wipe_disks(machine_id, *zeroes).await;
        }
        Action::ReleaseMachine { reboot_into_agent } => {
            if let (Some(mode), Some(bmc)) = (reboot_into_agent, bmc) {
                let reboot = PowerAction::Reboot(Some(*mode));
                match inner.power.act(machine_id, bmc, reboot).await {
                    Ok(()) => machine.apply(Event::PowerPolled(PowerState::On)),
                    // Best effort: the machine leaves Omni either way.
                    Err(e) => tracing::warn!(
                        machine_id,
                        error = %e,
                        "could not reboot the removed machine into the agent"
                    ),
                }
            }
            tracing::info!(
                machine_id,
                "Omni removed the machine: releasing its records"
            );
            return inner.store.write(machine_id, &Write::Release).await;
        }
        Action::PowerOn { pxe_once } => (PowerAction::On(*pxe_once), PowerState::On, "on"),
        Action::PowerOff => (PowerAction::Off, PowerState::Off, "off"),
        Action::Reboot { pxe_once } => (PowerAction::Reboot(*pxe_once), PowerState::On, "reboot"),
        // Every other action is a record write, handled above.
        _ => return Ok(()),
    };
    let Some(bmc) = bmc else {
        return Err(ExecError::NoBmc {
            machine_id: machine_id.to_owned(),
            operation,
        });
    };
    tracing::info!(machine_id, action = ?power_action, "power action");
    inner.power.act(machine_id, bmc, power_action).await?;
    // The BMC accepted it: until the next reading, the machine is in the new state, so
    // the next pass does not repeat the action on a stale reading.
    // The reading is restarted too: a BMC may report the old state for a while.
    machine.apply(Event::PowerPolled(after));
    *machine.last_poll.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    Ok(())
}
