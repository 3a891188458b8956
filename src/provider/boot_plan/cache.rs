//! What boot decisions need to know about each machine, kept in memory and fed by the Omni
//! watches, so `boot.ipxe` never waits on Omni.

use std::collections::HashMap;
use std::sync::RwLock;

use ironboot_proto::{baremetal, omni};

use crate::provider::lifecycle::{InfraMachine, WipeRecord};
use crate::provider::omni::client::{Phase, Resource};
use crate::provider::omni::watch::Event;

/// Omni's view of one machine, as the boot decision reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InfraView {
    /// The lifecycle model of the `infra.Machine` spec.
    pub(crate) machine: InfraMachine,
    /// `extra_kernel_args`, split at whitespace.
    pub(crate) extra_kernel_args: Vec<String>,
    /// Omni is tearing the `infra.Machine` down (the machine leaves the provider).
    pub(crate) tearing_down: bool,
}

impl InfraView {
    /// Map the protobuf spec once.
    pub(crate) fn from_spec(spec: &omni::InfraMachineSpec, phase: Phase) -> Self {
        Self {
            machine: crate::provider::executor::mapping::infra_machine(spec),
            extra_kernel_args: spec
                .extra_kernel_args
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
            tearing_down: phase == Phase::TearingDown,
        }
    }
}

/// Everything known about one machine (by its UUID).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct MachineBootState {
    /// Omni's `infra.Machine`, once Omni created it (the agent joined).
    pub(crate) infra: Option<InfraView>,
    /// The provider's `WipeStatus` record.
    pub(crate) wipe: Option<WipeRecord>,
    /// A `BMCConfiguration` record exists.
    pub(crate) bmc_configured: bool,
}

impl MachineBootState {
    fn is_empty(&self) -> bool {
        self.infra.is_none() && self.wipe.is_none() && !self.bmc_configured
    }
}

/// One watch event, of one of the kinds the cache follows.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum CacheEvent {
    /// Omni's `InfraMachines.omni.sidero.dev`.
    InfraMachine(Event<omni::InfraMachineSpec>),
    /// The provider's private `WipeStatus`.
    WipeStatus(Event<baremetal::WipeStatusSpec>),
    /// The provider's private `BMCConfiguration` (only its existence matters here).
    BmcConfiguration(Event<baremetal::BmcConfigurationSpec>),
}

/// The kinds, as indexes of [`Inner::synced`].
const KINDS: usize = 3;

#[derive(Default)]
struct Inner {
    machines: HashMap<String, MachineBootState>,
    /// Per kind: its watch delivered its whole contents (and did not start over since).
    synced: [bool; KINDS],
}

/// The machines' boot-relevant state, by UUID (lower case, as iPXE prints `${uuid}`).
#[derive(Default)]
pub(crate) struct MachineStateCache {
    inner: RwLock<Inner>,
}

impl std::fmt::Debug for MachineStateCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        f.debug_struct("MachineStateCache")
            .field("machines", &inner.machines.len())
            .field("synced", &inner.synced)
            .finish()
    }
}

impl MachineStateCache {
    /// An empty cache, not synced.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Fold one watch event in.
    pub(crate) fn apply(&self, event: CacheEvent) {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        match event {
            CacheEvent::InfraMachine(ev) => inner.fold(0, ev, |m, r| {
                m.infra = r.map(|r| InfraView::from_spec(&r.spec, r.metadata.phase));
            }),
            CacheEvent::WipeStatus(ev) => inner.fold(1, ev, |m, r| {
                m.wipe = r.map(|r| WipeRecord {
                    started_wipe_id: None,
                    last_wipe_id: r.spec.last_wipe_id.clone(),
                    last_wipe_install_event_id: r.spec.last_wipe_install_event_id,
                    initial_wipe_done: r.spec.initial_wipe_done,
                    wiped_node_unique_token: r.spec.wiped_node_unique_token.clone(),
                });
            }),
            CacheEvent::BmcConfiguration(ev) => inner.fold(2, ev, |m, r| {
                m.bmc_configured = r.is_some();
            }),
        }
    }

    /// Every watch delivered its whole contents: a machine absent now is unknown to Omni.
    pub(crate) fn is_synced(&self) -> bool {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        inner.synced.iter().all(|s| *s)
    }

    /// A copy of what is known about `uuid`.
    pub(crate) fn get(&self, uuid: &str) -> Option<MachineBootState> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        inner.machines.get(&uuid.to_ascii_lowercase()).cloned()
    }

    /// Machines known.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        inner.machines.len()
    }
}

impl Inner {
    fn fold<S>(
        &mut self,
        kind: usize,
        ev: Event<S>,
        update: impl Fn(&mut MachineBootState, Option<&Resource<S>>),
    ) {
        match ev {
            Event::Created(r) | Event::Updated { new: r, .. } => {
                let key = r.metadata.id.to_ascii_lowercase();
                update(self.machines.entry(key).or_default(), Some(&r));
            }
            Event::Destroyed(r) => {
                let key = r.metadata.id.to_ascii_lowercase();
                if let Some(m) = self.machines.get_mut(&key) {
                    update(m, None);
                    if m.is_empty() {
                        self.machines.remove(&key);
                    }
                }
            }
            Event::Bootstrapped => self.synced[kind] = true,
            Event::Reset => {
                // The whole contents of this kind follow again: forget them until then.
                self.synced[kind] = false;
                for m in self.machines.values_mut() {
                    update(m, None);
                }
                self.machines.retain(|_, m| !m.is_empty());
            }
        }
    }
}
