//! The executor's seams over the real peers: Omni through the COSI client
//! ([`OmniStore`]), BMCs through the selector and the fleet ([`FleetPower`]), metal agents
//! through their tunnels ([`crate::provider::agent::client::AgentClient`]).

use std::collections::HashMap;
use std::sync::Mutex;

use ironboot_bmc::fleet::{Fleet, Operation, Outcome};
use ironboot_bmc::{Backend, BmcInfo, PowerState, Selector};
use ironboot_proto::agent::{
    GetPowerManagementRequest, GetPowerManagementResponse, SetPowerManagementRequest,
    set_power_management_request,
};
use ironboot_proto::{baremetal, omni};

use super::mapping::{self, Records, WIPE_STARTED_ANNOTATION, Write};
use super::{Agent, ExecError, Power, PowerAction, Store};
use crate::provider::agent::client::AgentClient;
use crate::provider::lifecycle::Secret;
use crate::provider::omni::client::{Client, OmniError, Phase};
use crate::provider::omni::resources::Spec;

/// The owner of each record: the Go provider's controller names (prefixed with the
/// provider ID), so either provider can take over the other's records.
fn owner(provider_id: &str, controller: &str) -> String {
    format!("{provider_id}.{controller}")
}

/// Omni as the executor's [`Store`].
#[derive(Clone)]
pub(crate) struct OmniStore {
    client: Client,
}

impl OmniStore {
    /// A store over `client` (which knows the provider ID).
    pub(crate) fn new(client: Client) -> Self {
        Self { client }
    }

    fn omni_error(machine_id: &str) -> impl Fn(OmniError) -> ExecError + '_ {
        move |source| ExecError::Omni {
            machine_id: machine_id.to_owned(),
            source,
        }
    }

    /// The finalizer this provider puts on its `InfraMachine`s (upstream's controller
    /// name, so either provider can release the other's machines).
    fn finalizer(&self) -> String {
        owner(self.client.provider_id(), "MachineStatusController")
    }

    /// This provider's prefix of finalizers and owners: `<provider-id>.`.
    fn prefix(&self) -> String {
        format!("{}.", self.client.provider_id())
    }

    /// Destroys `machine_id`'s records (absent ones are fine: a release interrupted by a
    /// restart is run again), then lifts every finalizer of this provider (ours, and the
    /// Go provider's controllers' after a takeover) from the InfraMachine.
    ///
    /// A record another party still holds by its finalizer does not keep the machine in
    /// Omni: the InfraMachine's finalizers are lifted all the same, and the release ends
    /// with [`ExecError::ReleasePending`], so that the executor runs it again later (the
    /// lifecycle plans a release for records left of a machine Omni no longer knows).
    async fn release(&self, machine_id: &str) -> Result<(), ExecError> {
        let mut pending = Vec::new();
        pending.extend(
            self.destroy_record::<baremetal::BmcConfigurationSpec>(machine_id)
                .await?,
        );
        pending.extend(
            self.destroy_record::<baremetal::WipeStatusSpec>(machine_id)
                .await?,
        );
        pending.extend(
            self.destroy_record::<baremetal::PowerOperationSpec>(machine_id)
                .await?,
        );
        pending.extend(
            self.destroy_record::<baremetal::RebootStatusSpec>(machine_id)
                .await?,
        );
        pending.extend(
            self.destroy_record::<baremetal::MachineStatusSpec>(machine_id)
                .await?,
        );
        pending.extend(
            self.destroy_record::<omni::InfraMachineStatusSpec>(machine_id)
                .await?,
        );
        match self
            .client
            .remove_finalizers_with_prefix::<omni::InfraMachineSpec>(machine_id, &self.prefix())
            .await
        {
            Ok(_) | Err(OmniError::NotFound { .. }) => {}
            Err(e) => return Err(Self::omni_error(machine_id)(e)),
        }
        if pending.is_empty() {
            Ok(())
        } else {
            Err(ExecError::ReleasePending {
                machine_id: machine_id.to_owned(),
                records: pending,
            })
        }
    }

    /// Destroys `machine_id`'s record of type `S`, first lifting the finalizers this
    /// provider's controllers put on it (the Go provider's controllers hold each other's
    /// inputs that way, e.g. `<id>.RebootStatusController` on `BMCConfiguration`). One
    /// already gone is fine. `Some(type)` when finalizers of another party still hold it.
    async fn destroy_record<S: Spec>(&self, machine_id: &str) -> Result<Option<String>, ExecError> {
        let c = &self.client;
        let err = Self::omni_error(machine_id);
        let record = match c.get_opt::<S>(machine_id).await {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(None),
            Err(e) => return Err(err(e)),
        };
        let prefix = self.prefix();
        if record
            .metadata
            .finalizers
            .iter()
            .any(|f| f.starts_with(&prefix))
        {
            match c
                .remove_finalizers_with_prefix::<S>(machine_id, &prefix)
                .await
            {
                Ok(_) => {}
                Err(OmniError::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(err(e)),
            }
        }
        // Destroyed as the owner that wrote it: one of the Go provider's controller names,
        // which this provider writes with too.
        match c.destroy::<S>(machine_id, &record.metadata.owner).await {
            Ok(()) | Err(OmniError::NotFound { .. }) => Ok(None),
            Err(OmniError::Conflict { .. }) => Ok(Some(c.type_of::<S>())),
            Err(e) => Err(err(e)),
        }
    }

    async fn modify<S: Spec>(
        &self,
        machine_id: &str,
        controller: &str,
        mut f: impl FnMut(&mut crate::provider::omni::client::Resource<S>),
    ) -> Result<(), ExecError> {
        let owner = owner(self.client.provider_id(), controller);
        self.client
            .modify::<S>(machine_id, &owner, true, |r| {
                f(r);
                true
            })
            .await
            .map(|_| ())
            .map_err(Self::omni_error(machine_id))
    }
}

impl Store for OmniStore {
    async fn load(&self, machine_id: &str) -> Result<Records, ExecError> {
        let c = &self.client;
        let (infra, bmc_config, bmc_configuration, wipe, power, reboot, status, machine_status) =
            tokio::try_join!(
                c.get_opt::<omni::InfraMachineSpec>(machine_id),
                c.get_opt::<omni::BmcConfigSpec>(machine_id),
                c.get_opt::<baremetal::BmcConfigurationSpec>(machine_id),
                c.get_opt::<baremetal::WipeStatusSpec>(machine_id),
                c.get_opt::<baremetal::PowerOperationSpec>(machine_id),
                c.get_opt::<baremetal::RebootStatusSpec>(machine_id),
                c.get_opt::<omni::InfraMachineStatusSpec>(machine_id),
                c.get_opt::<baremetal::MachineStatusSpec>(machine_id),
            )
            .map_err(Self::omni_error(machine_id))?;
        let wipe_started = wipe
            .as_ref()
            .and_then(|w| w.metadata.annotations.get(WIPE_STARTED_ANNOTATION).cloned());
        let (infra_tearing_down, held) = infra.as_ref().map_or((false, false), |r| {
            let finalizer = self.finalizer();
            (
                r.metadata.phase == Phase::TearingDown,
                r.metadata.finalizers.contains(&finalizer),
            )
        });
        Ok(Records {
            infra_tearing_down,
            held,
            infra_labels: infra
                .as_ref()
                .map(|r| r.metadata.labels.clone())
                .unwrap_or_default(),
            status_labels: status
                .as_ref()
                .map(|r| r.metadata.labels.clone())
                .unwrap_or_default(),
            infra: infra.map(|r| r.spec),
            bmc_config: bmc_config.map(|r| r.spec),
            bmc_configuration: bmc_configuration.map(|r| r.spec),
            wipe: wipe.map(|r| r.spec),
            wipe_started,
            power: power.map(|r| r.spec),
            reboot: reboot.map(|r| r.spec),
            status: status.map(|r| r.spec),
            machine_status: machine_status.map(|r| r.spec),
        })
    }

    async fn write(&self, machine_id: &str, write: &Write) -> Result<(), ExecError> {
        match write {
            Write::BmcConfiguration(spec) => {
                self.modify::<baremetal::BmcConfigurationSpec>(
                    machine_id,
                    "BMCConfigurationController",
                    |r| r.spec = spec.clone(),
                )
                .await
            }
            Write::WipeStarted { wipe_id } => {
                self.modify::<baremetal::WipeStatusSpec>(machine_id, "WipeStatusController", |r| {
                    r.metadata
                        .annotations
                        .insert(WIPE_STARTED_ANNOTATION.to_owned(), wipe_id.clone());
                })
                .await
            }
            Write::WipeDone { .. } => {
                self.modify::<baremetal::WipeStatusSpec>(machine_id, "WipeStatusController", |r| {
                    mapping::apply_wipe(&mut r.spec, write);
                })
                .await
            }
            Write::PowerOp { .. } | Write::PowerOffAcknowledged { .. } => {
                self.modify::<baremetal::PowerOperationSpec>(
                    machine_id,
                    "PowerOperationController",
                    |r| mapping::apply_power(&mut r.spec, write),
                )
                .await
            }
            Write::RebootHandled { .. } => {
                self.modify::<baremetal::RebootStatusSpec>(
                    machine_id,
                    "RebootStatusController",
                    |r| mapping::apply_reboot(&mut r.spec, write),
                )
                .await
            }
            Write::MachineStatus(spec) => {
                self.modify::<baremetal::MachineStatusSpec>(
                    machine_id,
                    "MachineStatusController",
                    |r| r.spec = *spec,
                )
                .await
            }
            Write::Hold => self
                .client
                .add_finalizer::<omni::InfraMachineSpec>(machine_id, &self.finalizer())
                .await
                .map(drop)
                .map_err(Self::omni_error(machine_id)),
            Write::Release => self.release(machine_id).await,
            Write::Status {
                spec,
                labels,
                infra_labels,
            } => {
                self.modify::<omni::InfraMachineStatusSpec>(
                    machine_id,
                    "InfraMachineStatusController",
                    |r| {
                        r.spec = spec.clone();
                        r.metadata.labels =
                            mapping::status_labels(&r.metadata.labels, labels, infra_labels);
                    },
                )
                .await
            }
        }
    }
}

/// BMCs as the executor's [`Power`]: a back end chosen by the selector per machine, run
/// through the fleet (one operation at a time per BMC, bounded, with backoff).
pub struct FleetPower {
    selector: Selector,
    fleet: Fleet<Backend>,
    /// Per machine: the credentials its fleet member was built from, and the member key.
    members: Mutex<HashMap<String, (BmcInfo, String)>>,
}

impl FleetPower {
    /// Power control through `fleet`, choosing back ends with `selector`.
    pub fn new(selector: Selector, fleet: Fleet<Backend>) -> Self {
        Self {
            selector,
            fleet,
            members: Mutex::new(HashMap::new()),
        }
    }

    /// The fleet key of `machine_id`'s BMC, (re)built when its credentials changed.
    async fn member(&self, machine_id: &str, bmc: &BmcInfo) -> Result<String, ExecError> {
        {
            let members = self.members.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((info, key)) = members.get(machine_id)
                && info == bmc
            {
                return Ok(key.clone());
            }
        }
        let backend = self
            .selector
            .select(bmc)
            .await
            .map_err(|e| ExecError::Bmc {
                machine_id: machine_id.to_owned(),
                bmc: bmc_address(bmc),
                operation: "select".into(),
                detail: e.to_string(),
            })?;
        let key = self.fleet.insert(backend);
        self.members
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(machine_id.to_owned(), (bmc.clone(), key.clone()));
        Ok(key)
    }

    async fn run(
        &self,
        machine_id: &str,
        key: &str,
        operation: Operation,
    ) -> Result<Outcome, ExecError> {
        let report = self.fleet.run(key, operation).await;
        report.result.map_err(|e| ExecError::Bmc {
            machine_id: machine_id.to_owned(),
            bmc: key.to_owned(),
            operation: operation.to_string(),
            detail: e.to_string(),
        })
    }
}

fn bmc_address(bmc: &BmcInfo) -> String {
    match bmc {
        BmcInfo::Ipmi(i) => format!("{}:{}", i.address, i.port),
        BmcInfo::Api { address } => address.clone(),
    }
}

impl Power for FleetPower {
    async fn status(&self, machine_id: &str, bmc: &BmcInfo) -> Result<PowerState, ExecError> {
        let key = self.member(machine_id, bmc).await?;
        match self.run(machine_id, &key, Operation::Status).await? {
            Outcome::Power(state) => Ok(state),
            Outcome::Done => Err(ExecError::Bmc {
                machine_id: machine_id.to_owned(),
                bmc: key,
                operation: "status".into(),
                detail: "no power state in the answer".into(),
            }),
        }
    }

    async fn act(
        &self,
        machine_id: &str,
        bmc: &BmcInfo,
        action: PowerAction,
    ) -> Result<(), ExecError> {
        let key = self.member(machine_id, bmc).await?;
        let (pxe, operation) = match action {
            PowerAction::On(pxe) => (pxe, Operation::On),
            PowerAction::Off => (None, Operation::Off),
            PowerAction::Reboot(pxe) => (pxe, Operation::Cycle),
        };
        if let Some(mode) = pxe {
            self.run(machine_id, &key, Operation::PxeOnce(mode)).await?;
        }
        self.run(machine_id, &key, operation).await.map(|_| ())
    }
}

impl Agent for AgentClient {
    fn is_connected(&self, machine_id: &str) -> bool {
        AgentClient::is_connected(self, machine_id)
    }

    async fn get_power_management(
        &self,
        machine_id: &str,
    ) -> Result<GetPowerManagementResponse, ExecError> {
        // The provider sends an empty request, as upstream does.
        Ok(AgentClient::get_power_management(
            self,
            machine_id,
            GetPowerManagementRequest::default(),
        )
        .await?)
    }

    async fn set_power_management(
        &self,
        machine_id: &str,
        username: &str,
        password: &Secret,
    ) -> Result<(), ExecError> {
        let request = SetPowerManagementRequest {
            ipmi: Some(set_power_management_request::Ipmi {
                username: username.to_owned(),
                password: password.expose().to_owned(),
            }),
            api: None,
        };
        Ok(AgentClient::set_power_management(self, machine_id, request).await?)
    }

    async fn wipe_disks(&self, machine_id: &str, zeroes: bool) -> Result<(), ExecError> {
        Ok(AgentClient::wipe_disks(self, machine_id, zeroes).await?)
    }
}

/// The executor over the real peers, with the tasks that feed it.
pub(crate) type OmniExecutor = super::Executor<OmniStore, FleetPower, AgentClient>;

/// A running Omni-mode control loop: the executor and its feeders (Omni watches of this
/// provider's `InfraMachine`s and `BMCConfig`s, the machines with records at start, the
/// agents' tunnel events).
pub struct Running {
    /// The executor (also the target of PXE-boot events from the HTTP routes).
    pub(crate) executor: std::sync::Arc<OmniExecutor>,
    feeders: Vec<tokio::task::JoinHandle<()>>,
    /// Cancelled to stop the feeders (they only read Omni's watches and the tunnels'
    /// events, so they end at any await point).
    stop: tokio_util::sync::CancellationToken,
}

impl Running {
    /// Appends the executor's metric families to `out`, as `/metrics` renders them.
    #[cfg(feature = "test-support")]
    pub fn render_prometheus(&self, out: &mut String) {
        self.executor.stats().render_prometheus(out);
    }

    /// Tells the feeders and every machine's task to stop; none is aborted.
    pub(crate) fn stop(&self) {
        self.stop.cancel();
        self.executor.shutdown();
    }

    /// Stops, then waits for the feeders and the machines' tasks to end (a machine in a
    /// lifecycle step finishes it first).
    pub(crate) async fn stopped(&mut self) {
        self.stop();
        for feeder in self.feeders.drain(..) {
            let _ = feeder.await;
        }
        self.executor.stopped().await;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts the control loop: machines are woken by Omni's changes (the watches' initial
/// contents start every known machine) and by tunnel opens and closes. Must be called
/// within a Tokio runtime. A watch that fails for good (its key rejected, say) is logged;
/// the machines it fed keep running on their power polls.
pub fn start(
    client: &Client,
    power: FleetPower,
    agents: AgentClient,
    tunnel_events: tokio::sync::broadcast::Receiver<crate::provider::agent::tunnel::TunnelEvent>,
    settings: super::Settings,
) -> Running {
    use super::feed;
    use crate::provider::omni::watch::Watch;
    use std::sync::Arc;

    let executor = Arc::new(super::Executor::new(
        OmniStore::new(client.clone()),
        power,
        agents,
        settings,
    ));
    let labels = feed::provider_machines(client);
    let stop = tokio_util::sync::CancellationToken::new();
    let mut feeders = Vec::new();
    let waker = Arc::clone(&executor);
    let watch = Watch::<omni::InfraMachineSpec>::new(client.clone(), labels.clone());
    let token = stop.clone();
    feeders.push(tokio::spawn(async move {
        let followed = feed::follow_kind(watch, move |id: &str| waker.wake(id));
        if let Some(Err(e)) = token.run_until_cancelled(followed).await {
            tracing::error!(error = %e, "watching InfraMachines stopped");
        }
    }));
    let waker = Arc::clone(&executor);
    let watch = Watch::<omni::BmcConfigSpec>::new(client.clone(), labels);
    let token = stop.clone();
    feeders.push(tokio::spawn(async move {
        let followed = feed::follow_kind(watch, move |id: &str| waker.wake(id));
        if let Some(Err(e)) = token.run_until_cancelled(followed).await {
            tracing::error!(error = %e, "watching BMCConfigs stopped");
        }
    }));
    let waker = Arc::clone(&executor);
    let token = stop.clone();
    let reader = client.clone();
    feeders.push(tokio::spawn(async move {
        let woken = feed::wake_recorded(&reader, |id: &str| waker.wake(id));
        if let Some(Err(e)) = token.run_until_cancelled(woken).await {
            tracing::error!(error = %e, "listing the provider's records at start failed");
        }
    }));
    let target = Arc::clone(&executor);
    let token = stop.clone();
    feeders.push(tokio::spawn(async move {
        let followed = feed::follow_tunnels(tunnel_events, move |id: &str, event| {
            target.event(id, event)
        });
        token.run_until_cancelled(followed).await;
    }));
    Running {
        executor,
        feeders,
        stop,
    }
}
