//! What the control loop did, for `/metrics`: steps taken by kind, failed passes, and the
//! machines it follows. Counters only grow; rendered as Prometheus text.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::provider::lifecycle::Action;

/// The kinds of steps counted, as their `step` label.
const STEPS: [&str; 9] = [
    "bmc_setup",
    "wipe",
    "power_on",
    "power_off",
    "reboot",
    "hold",
    "release",
    "record",
    "status",
];

/// Counters of one executor.
#[derive(Debug, Default)]
pub(crate) struct ExecutorStats {
    steps: [AtomicU64; STEPS.len()],
    failed_passes: AtomicU64,
    machines: AtomicU64,
}

impl ExecutorStats {
    /// `action` was carried out.
    pub(crate) fn step(&self, action: &Action) {
        let kind = match action {
            Action::ConfigureBmcViaAgent { .. } => "bmc_setup",
            Action::WipeDisks { .. } => "wipe",
            Action::PowerOn { .. } => "power_on",
            Action::PowerOff => "power_off",
            Action::Reboot { .. } => "reboot",
            Action::HoldMachine => "hold",
            Action::ReleaseMachine { .. } => "release",
            Action::WriteInfraMachineStatus(_) => "status",
            Action::RecordWipeStarted { .. }
            | Action::RecordWipeDone { .. }
            | Action::RecordPowerOp { .. }
            | Action::RecordRebootHandled { .. }
            | Action::WriteMachineStatus(_)
            | Action::AcknowledgePowerOffRequest { .. } => "record",
        };
        if let Some(i) = STEPS.iter().position(|s| *s == kind) {
            self.steps[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A pass ended with an error (retried with backoff).
    pub(crate) fn failed_pass(&self) {
        self.failed_passes.fetch_add(1, Ordering::Relaxed);
    }

    /// A machine got its task.
    pub(crate) fn machine_added(&self) {
        self.machines.fetch_add(1, Ordering::Relaxed);
    }

    /// Steps of `kind` taken so far.
    #[cfg(test)]
    pub(crate) fn steps(&self, kind: &str) -> u64 {
        STEPS
            .iter()
            .position(|s| *s == kind)
            .map_or(0, |i| self.steps[i].load(Ordering::Relaxed))
    }

    /// Appends the metric families to `out`.
    pub(crate) fn render_prometheus(&self, out: &mut String) {
        out.push_str(
            "# HELP ironboot_lifecycle_steps_total Lifecycle steps carried out, by kind.\n\
             # TYPE ironboot_lifecycle_steps_total counter\n",
        );
        for (name, n) in STEPS.iter().zip(&self.steps) {
            let _ = writeln!(
                out,
                "ironboot_lifecycle_steps_total{{step=\"{name}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        let _ = write!(
            out,
            "# HELP ironboot_lifecycle_failed_passes_total Lifecycle passes that ended with an \
             error (BMC, agent or Omni), each retried with backoff.\n\
             # TYPE ironboot_lifecycle_failed_passes_total counter\n\
             ironboot_lifecycle_failed_passes_total {}\n\
             # HELP ironboot_lifecycle_machines Machines the control loop follows.\n\
             # TYPE ironboot_lifecycle_machines gauge\n\
             ironboot_lifecycle_machines {}\n",
            self.failed_passes.load(Ordering::Relaxed),
            self.machines.load(Ordering::Relaxed),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_step_kind_and_counts() {
        let s = ExecutorStats::default();
        s.step(&Action::PowerOff);
        s.step(&Action::PowerOff);
        s.step(&Action::WipeDisks { zeroes: false });
        s.failed_pass();
        s.machine_added();
        let mut out = String::new();
        s.render_prometheus(&mut out);
        assert!(out.contains("ironboot_lifecycle_steps_total{step=\"power_off\"} 2\n"));
        assert!(out.contains("ironboot_lifecycle_steps_total{step=\"wipe\"} 1\n"));
        assert!(out.contains("ironboot_lifecycle_steps_total{step=\"reboot\"} 0\n"));
        assert!(out.contains("ironboot_lifecycle_failed_passes_total 1\n"));
        assert!(out.contains("ironboot_lifecycle_machines 1\n"));
        assert_eq!(out.matches("# TYPE").count(), 3);
    }
}
