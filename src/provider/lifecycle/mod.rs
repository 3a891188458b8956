//! The pure core of the Omni-mode control loop.
//!
//! Everything a machine's lifecycle decides lives here as plain functions over plain data:
//! [`reconcile`] takes what was observed (Omni's `InfraMachine`, the provider's private
//! records, the machine's power/agent status), the policy from the command line, the
//! current time and a source of fresh secrets, and returns the actions to take. No I/O, no
//! async, no clock reads: the executor (BMC, agent and COSI writes) is a thin layer on top,
//! and every rule, every upstream bug and every restart point is tested here in
//! milliseconds with a virtual clock.
//!
//! Why the records matter: the provider keeps no state of its own across restarts. Every
//! destructive decision (wipe, power) is made from state recorded in Omni, so a restarted
//! provider rebuilt from those records decides exactly what the old one would have. Where
//! a crash can fall between a side effect and its record, each action picks the safer
//! side explicitly (see [`Action`]): wipes are at-least-once (a half-wiped disk must never
//! reach a cluster), power actions are at-most-once per cooldown window (a reboot loop is
//! the worse failure, and a power decision that was lost is taken again from the observed
//! power state).

mod action;
mod model;
mod reconcile;
mod rules;
#[cfg(test)]
mod tests;

pub(crate) use action::{Action, InfraMachineStatus, PowerOp, Secret};
pub use model::Policy;
pub(crate) use model::{
    Acceptance, BmcRecord, Event, InfraMachine, MachineStatus, Observed, PowerRecord, RebootRecord,
    Recorded, SecretSource, WipeRecord, apply_event,
};
#[cfg(test)]
pub(crate) use reconcile::Plan;
pub(crate) use reconcile::reconcile;
pub(crate) use rules::{BootDecision, required_boot};
