//! Which agent may open a machine's tunnel.
//!
//! The metal agent proves nothing by itself: it sends its SMBIOS UUID as `machine-id`,
//! dials the bare `metal.provider.address` and offers no client certificate. Whoever holds
//! a machine's tunnel receives its BMC credentials (SetPowerManagement) and can answer a
//! wipe, so a tunnel is admitted only when:
//!
//! 1. its `machine-id` is a UUID that ironboot knows: a machine in Omni's state, or one
//!    that PXE-booted through ironboot recently;
//! 2. it comes from the address bound to that machine: the address that fetched the
//!    machine's `/config?u=<uuid>`. That fetch is made by the booted Talos itself (the agent
//!    runs on it), from the lease Talos got; the earlier `boot.ipxe` fetch used iPXE's
//!    lease, which may differ.
//!
//! One binding per boot: once a machine's address is bound, a `/config` fetch from another
//! address moves the binding only if the machine PXE-booted again since (a new boot, maybe
//! a new lease), or if the new address is the one the machine's last PXE boot came from
//! and the bound one is not. Any other fetch from a second address makes the binding
//! *contested*: two hosts claim the machine in the same boot, so no tunnel of it is
//! admitted (and a live one is closed) until its next PXE boot. An impostor who wins the
//! race to `/config` after a real boot therefore loses the machine again as soon as the
//! real Talos fetches its configuration.
//!
//! The limit: a host on the same link that takes over the machine's address (ARP or DHCP
//! spoofing) passes these checks. The bindings are kept in `<state-dir>/agent-bindings.json`,
//! so agents reconnecting after an ironboot restart are still recognised.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ironboot_net::cidr::canonical;
use ironboot_net::machine::Uuid;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

/// The bindings file in the state directory.
pub(crate) const BINDINGS_FILE: &str = "agent-bindings.json";
/// Most machines remembered; the least recently active are forgotten first.
pub(crate) const MAX_BINDINGS: usize = 65_536;
/// How long a PXE boot makes an otherwise unknown machine known.
pub(crate) const RECENT_BOOT: Duration = Duration::from_secs(24 * 3600);
/// How often the bindings are written when they changed.
const SAVE_INTERVAL: Duration = Duration::from_secs(1);

/// Whether Omni's state names a machine (its `InfraMachine`).
pub trait KnownMachines: Send + Sync {
    /// `uuid` (lower case) is a machine ironboot provisions.
    fn is_known(&self, uuid: &str) -> bool;
}

/// Why a tunnel was refused. The texts go back to the agent as the gRPC status message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    /// Neither in Omni's state nor PXE-booted through ironboot recently.
    #[error("machine {uuid} is unknown to this provider")]
    Unknown {
        /// The claimed machine.
        uuid: String,
    },
    /// No `/config` fetch names this machine: nothing to bind the agent to.
    #[error("machine {uuid} has not loaded its configuration from this provider")]
    NotBound {
        /// The claimed machine.
        uuid: String,
    },
    /// The agent's address is not the one that loaded the machine's configuration.
    #[error("machine {uuid} is bound to another address than {peer}")]
    OtherAddress {
        /// The claimed machine.
        uuid: String,
        /// The agent's address.
        peer: IpAddr,
        /// The bound address (logged, not sent).
        bound: IpAddr,
    },
    /// Two addresses loaded the machine's configuration since its last PXE boot.
    #[error("machine {uuid} is claimed from two addresses; it must PXE-boot again")]
    Contested {
        /// The claimed machine.
        uuid: String,
    },
    /// The peer's address is unknown (the listener did not say).
    #[error("the agent's address is unknown")]
    NoPeerAddress,
}

/// What a `/config` fetch did to the machine's binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// Bound to the fetching address (the first fetch, or the same address again).
    To(IpAddr),
    /// Bound anew after a new PXE boot: a tunnel from `from` is no longer the machine's.
    NewBoot {
        /// The address bound before.
        from: IpAddr,
        /// The address bound now.
        to: IpAddr,
    },
    /// Moved in the same boot to the address the machine PXE-booted from: a tunnel from
    /// `from` is no longer the machine's.
    Moved {
        /// The address bound before.
        from: IpAddr,
        /// The address bound now.
        to: IpAddr,
    },
    /// Two addresses in one boot: nobody is admitted until the next PXE boot.
    Contested,
}

/// The state kept per machine. Sequence numbers order events without a clock.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
struct Binding {
    /// The address that loaded the machine's configuration, if any.
    #[serde(default)]
    config_ip: Option<IpAddr>,
    #[serde(default)]
    bound_seq: u64,
    /// The address of the machine's last PXE boot (`boot.ipxe`).
    #[serde(default)]
    boot_ip: Option<IpAddr>,
    #[serde(default)]
    boot_seq: u64,
    /// Wall-clock time of that boot, Unix milliseconds (for "recently booted").
    #[serde(default)]
    boot_ms: u64,
    #[serde(default)]
    contested: bool,
    /// Last event of any kind, for eviction.
    #[serde(default)]
    last_seq: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    machines: HashMap<String, Binding>,
}

#[derive(Default)]
struct State {
    machines: HashMap<String, Binding>,
    seq: u64,
}

impl State {
    fn next(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// The machine's entry, made room for at the cap.
    fn entry(&mut self, uuid: &str) -> &mut Binding {
        if !self.machines.contains_key(uuid) && self.machines.len() >= MAX_BINDINGS {
            let oldest = self
                .machines
                .iter()
                .min_by_key(|(_, b)| b.last_seq)
                .map(|(id, _)| id.clone());
            if let Some(id) = oldest {
                self.machines.remove(&id);
            }
        }
        self.machines.entry(uuid.to_owned()).or_default()
    }
}

/// The admission policy of the agents' tunnels. Cheap to share (`Arc`).
pub struct AgentGate {
    mode: Mode,
    state: Mutex<State>,
    file: Option<PathBuf>,
    dirty: AtomicBool,
    /// One save at a time; a waiter whose change an earlier save took along returns at
    /// once.
    saving: tokio::sync::Mutex<()>,
}

enum Mode {
    /// Every well-formed machine ID is admitted, from anywhere (tests of the tunnel
    /// protocol itself).
    #[cfg(any(test, feature = "test-support"))]
    Open,
    /// The checks described in the module documentation.
    Bound(Arc<dyn KnownMachines>),
}

impl AgentGate {
    /// Admits any agent whose `machine-id` is a UUID: for tests of the tunnel protocol.
    #[cfg(any(test, feature = "test-support"))]
    pub fn open() -> Arc<Self> {
        Arc::new(Self {
            mode: Mode::Open,
            state: Mutex::default(),
            file: None,
            dirty: AtomicBool::new(false),
            saving: tokio::sync::Mutex::new(()),
        })
    }

    /// Admits known machines from their bound address, the bindings kept in
    /// `state_dir` (`None`: in memory only). A missing or unreadable file starts empty
    /// (logged): agents then re-bind on their machine's next boot.
    pub fn bound(known: Arc<dyn KnownMachines>, state_dir: Option<&Path>) -> Arc<Self> {
        let file = state_dir.map(|d| d.join(BINDINGS_FILE));
        let mut state = State::default();
        if let Some(path) = &file {
            match std::fs::read(path) {
                Ok(bytes) => match serde_json::from_slice::<Saved>(&bytes) {
                    Ok(saved) => {
                        state.seq = saved
                            .machines
                            .values()
                            .map(|b| b.last_seq.max(b.bound_seq).max(b.boot_seq))
                            .max()
                            .unwrap_or(0);
                        state.machines = saved
                            .machines
                            .into_iter()
                            .filter(|(id, _)| id.parse::<Uuid>().is_ok())
                            .take(MAX_BINDINGS)
                            .collect();
                    }
                    Err(e) => warn!(
                        path = %path.display(),
                        error = %e,
                        "agent bindings unreadable: starting without them"
                    ),
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => warn!(
                    path = %path.display(),
                    error = %e,
                    "agent bindings unreadable: starting without them"
                ),
            }
        }
        Arc::new(Self {
            mode: Mode::Bound(known),
            state: Mutex::new(state),
            file,
            dirty: AtomicBool::new(false),
            saving: tokio::sync::Mutex::new(()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_open(&self) -> bool {
        #[cfg(any(test, feature = "test-support"))]
        if matches!(self.mode, Mode::Open) {
            return true;
        }
        false
    }

    /// A PXE boot of `uuid` from `ip` (`boot.ipxe`): the next `/config` fetch may bind the
    /// machine anew.
    pub(crate) fn pxe_boot(&self, uuid: &Uuid, ip: Option<IpAddr>) {
        if self.is_open() {
            return;
        }
        let id = uuid.to_string();
        let now_ms = unix_ms(SystemTime::now());
        let mut state = self.lock();
        let seq = state.next();
        let b = state.entry(&id);
        b.boot_ip = ip.map(canonical);
        b.boot_seq = seq;
        b.boot_ms = now_ms;
        b.contested = false;
        b.last_seq = seq;
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// A `/config?u=<uuid>` fetch from `ip`: binds the machine's agent to that address
    /// under the rules of the module documentation.
    pub fn config_fetch(&self, uuid: &Uuid, ip: IpAddr) -> Bound {
        let ip = canonical(ip);
        if self.is_open() {
            return Bound::To(ip);
        }
        let id = uuid.to_string();
        let mut state = self.lock();
        let seq = state.next();
        let b = state.entry(&id);
        b.last_seq = seq;
        let outcome = match b.config_ip {
            _ if b.contested => Bound::Contested,
            None => Bound::To(ip),
            Some(old) if old == ip => Bound::To(ip),
            Some(old) if b.boot_seq > b.bound_seq => Bound::NewBoot { from: old, to: ip },
            Some(old) if b.boot_ip == Some(ip) && b.boot_ip != Some(old) => {
                Bound::Moved { from: old, to: ip }
            }
            Some(_) => Bound::Contested,
        };
        match outcome {
            Bound::To(ip) | Bound::NewBoot { to: ip, .. } | Bound::Moved { to: ip, .. } => {
                if b.config_ip != Some(ip) {
                    self.dirty.store(true, Ordering::Relaxed);
                }
                b.config_ip = Some(ip);
                b.bound_seq = seq;
            }
            Bound::Contested => {
                if !b.contested {
                    self.dirty.store(true, Ordering::Relaxed);
                }
                b.contested = true;
            }
        }
        outcome
    }

    /// Whether the agent of `uuid` may open a tunnel from `peer`.
    pub(crate) fn admit(&self, uuid: &Uuid, peer: Option<IpAddr>) -> Result<(), Refusal> {
        #[cfg_attr(not(test), allow(clippy::infallible_destructuring_match))]
        let known = match &self.mode {
            Mode::Bound(known) => known,
            #[cfg(any(test, feature = "test-support"))]
            Mode::Open => return Ok(()),
        };
        let id = uuid.to_string();
        let peer = peer.map(canonical).ok_or(Refusal::NoPeerAddress)?;
        let state = self.lock();
        let binding = state.machines.get(&id);
        let booted_recently = binding.is_some_and(|b| {
            b.boot_seq > 0
                && unix_ms(SystemTime::now()).saturating_sub(b.boot_ms)
                    < RECENT_BOOT.as_millis() as u64
        });
        if !booted_recently && !known.is_known(&id) {
            return Err(Refusal::Unknown { uuid: id });
        }
        let Some(b) = binding else {
            return Err(Refusal::NotBound { uuid: id });
        };
        if b.contested {
            return Err(Refusal::Contested { uuid: id });
        }
        match b.config_ip {
            None => Err(Refusal::NotBound { uuid: id }),
            Some(bound) if bound == peer => Ok(()),
            Some(bound) => Err(Refusal::OtherAddress {
                uuid: id,
                peer,
                bound,
            }),
        }
    }

    /// Writes the bindings now if they changed (atomically: a temporary file renamed).
    pub(crate) fn save(&self) -> std::io::Result<()> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        let bytes = {
            let state = self.lock();
            serde_json::to_vec(&SavedRef {
                machines: &state.machines,
            })
            .map_err(std::io::Error::other)?
        };
        let tmp = path.with_extension("json.tmp");
        let written = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
        if written.is_err() {
            // Try again at the next round.
            self.dirty.store(true, Ordering::Relaxed);
        }
        written
    }

    /// Saves the bindings now, off the async workers: a binding must be on disk before
    /// its agent can connect, or an agent reconnecting after a restart would be refused.
    pub(crate) async fn persist(self: &Arc<Self>) -> std::io::Result<()> {
        if self.file.is_none() {
            return Ok(());
        }
        let _one_at_a_time = self.saving.lock().await;
        let gate = self.clone();
        tokio::task::spawn_blocking(move || gate.save())
            .await
            .map_err(std::io::Error::other)?
    }

    /// Saves the bindings every second while they change, until the gate is dropped
    /// elsewhere (the task then ends at its next round).
    pub(crate) fn spawn_saver(
        self: &Arc<Self>,
        stop: tokio_util::sync::CancellationToken,
    ) -> Option<tokio::task::JoinHandle<()>> {
        self.file.as_ref()?;
        let gate = Arc::downgrade(self);
        Some(tokio::spawn(async move {
            let mut failing = false;
            loop {
                // Stops only while waiting: a save in progress finishes.
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(SAVE_INTERVAL) => {}
                }
                let Some(gate) = gate.upgrade() else { return };
                let saved = tokio::task::spawn_blocking(move || gate.save()).await;
                match saved {
                    Ok(Ok(())) if failing => {
                        failing = false;
                        debug!("agent bindings saved again");
                    }
                    Ok(Err(e)) if !failing => {
                        failing = true;
                        warn!(error = %e, "saving the agent bindings failed; retrying");
                    }
                    _ => {}
                }
            }
        }))
    }
}

#[derive(Serialize)]
struct SavedRef<'a> {
    machines: &'a HashMap<String, Binding>,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Known(Vec<&'static str>);

    impl KnownMachines for Known {
        fn is_known(&self, uuid: &str) -> bool {
            self.0.contains(&uuid)
        }
    }

    const A: &str = "5c0e1b7a-0000-4000-8000-00000000000a";
    const B: &str = "5c0e1b7a-0000-4000-8000-00000000000b";

    fn uuid(s: &str) -> Uuid {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn gate() -> Arc<AgentGate> {
        AgentGate::bound(Arc::new(Known(vec![A])), None)
    }

    #[test]
    fn only_the_address_that_loaded_the_configuration_is_admitted() {
        let g = gate();
        assert_eq!(
            g.admit(&uuid(A), Some(ip("10.0.0.5"))),
            Err(Refusal::NotBound { uuid: A.into() })
        );
        assert_eq!(
            g.config_fetch(&uuid(A), ip("10.0.0.5")),
            Bound::To(ip("10.0.0.5"))
        );
        assert_eq!(g.admit(&uuid(A), Some(ip("10.0.0.5"))), Ok(()));
        assert_eq!(
            g.admit(&uuid(A), Some(ip("::ffff:10.0.0.5"))),
            Ok(()),
            "IPv4-mapped"
        );
        assert!(matches!(
            g.admit(&uuid(A), Some(ip("10.0.0.66"))),
            Err(Refusal::OtherAddress { .. })
        ));
        assert_eq!(g.admit(&uuid(A), None), Err(Refusal::NoPeerAddress));
    }

    #[test]
    fn unknown_machines_are_refused_until_they_pxe_boot() {
        let g = gate();
        g.config_fetch(&uuid(B), ip("10.0.0.7"));
        assert_eq!(
            g.admit(&uuid(B), Some(ip("10.0.0.7"))),
            Err(Refusal::Unknown { uuid: B.into() })
        );
        g.pxe_boot(&uuid(B), Some(ip("10.0.0.7")));
        g.config_fetch(&uuid(B), ip("10.0.0.7"));
        assert_eq!(g.admit(&uuid(B), Some(ip("10.0.0.7"))), Ok(()));
    }

    #[test]
    fn a_second_address_in_one_boot_contests_until_the_next_boot() {
        let g = gate();
        g.pxe_boot(&uuid(A), Some(ip("10.0.0.5")));
        assert_eq!(
            g.config_fetch(&uuid(A), ip("10.0.0.9")),
            Bound::To(ip("10.0.0.9"))
        );
        // The real machine (same address as its PXE boot) takes the binding back.
        assert_eq!(
            g.config_fetch(&uuid(A), ip("10.0.0.5")),
            Bound::Moved {
                from: ip("10.0.0.9"),
                to: ip("10.0.0.5")
            }
        );
        assert_eq!(g.admit(&uuid(A), Some(ip("10.0.0.5"))), Ok(()));
        // A third address in the same boot: nobody until the next boot.
        assert_eq!(g.config_fetch(&uuid(A), ip("10.0.0.10")), Bound::Contested);
        assert_eq!(
            g.admit(&uuid(A), Some(ip("10.0.0.5"))),
            Err(Refusal::Contested { uuid: A.into() })
        );
        assert_eq!(g.config_fetch(&uuid(A), ip("10.0.0.5")), Bound::Contested);
        g.pxe_boot(&uuid(A), Some(ip("10.0.0.6")));
        assert_eq!(
            g.config_fetch(&uuid(A), ip("10.0.0.6")),
            Bound::NewBoot {
                from: ip("10.0.0.5"),
                to: ip("10.0.0.6")
            }
        );
        assert_eq!(g.admit(&uuid(A), Some(ip("10.0.0.6"))), Ok(()));
    }

    #[test]
    fn bindings_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let g = AgentGate::bound(Arc::new(Known(vec![A])), Some(dir.path()));
        g.config_fetch(&uuid(A), ip("10.0.0.5"));
        g.save().unwrap();
        drop(g);
        let g = AgentGate::bound(Arc::new(Known(vec![A])), Some(dir.path()));
        assert_eq!(g.admit(&uuid(A), Some(ip("10.0.0.5"))), Ok(()));
        // A later boot still orders after the saved events.
        g.pxe_boot(&uuid(A), Some(ip("10.0.0.8")));
        assert!(matches!(
            g.config_fetch(&uuid(A), ip("10.0.0.8")),
            Bound::NewBoot { .. }
        ));
        // A corrupt file starts empty instead of failing.
        std::fs::write(dir.path().join(BINDINGS_FILE), b"{not json").unwrap();
        let g = AgentGate::bound(Arc::new(Known(vec![A])), Some(dir.path()));
        assert!(g.admit(&uuid(A), Some(ip("10.0.0.8"))).is_err());
    }

    #[test]
    fn the_open_gate_admits_any_uuid_from_anywhere() {
        let g = AgentGate::open();
        assert_eq!(g.admit(&uuid(B), None), Ok(()));
    }

    #[test]
    fn the_table_is_bounded() {
        let g = gate();
        let mut state = g.lock();
        for i in 0..MAX_BINDINGS + 10 {
            let id = format!("5c0e1b7a-0000-4000-8000-{i:012x}");
            let seq = state.next();
            state.entry(&id).last_seq = seq;
        }
        assert_eq!(state.machines.len(), MAX_BINDINGS);
        assert!(
            !state
                .machines
                .contains_key("5c0e1b7a-0000-4000-8000-000000000000")
        );
    }
}
