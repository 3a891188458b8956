//! The capabilities ironboot needs, made effective at start when they are only permitted.
//!
//! The container image runs ironboot as an unprivileged user whose binary carries
//! `CAP_NET_BIND_SERVICE` (UDP 67, 69, 4011) and `CAP_NET_ADMIN` (`SO_RCVBUFFORCE` /
//! `SO_SNDBUFFORCE`) as file capabilities in the permitted set, without the file's
//! effective bit. With that bit, `execve` fails with `EPERM` when the container's bounding
//! set lacks one of them, as it lacks `CAP_NET_ADMIN` unless `--cap-add NET_ADMIN` is
//! given. Without it, the kernel grants whichever of them the bounding set allows, as
//! permitted but not effective, and this raises those to effective.
//!
//! Capabilities belong to each thread and new threads inherit them: this runs before the
//! runtime starts any thread. As root, or under systemd's `AmbientCapabilities=`, they are
//! effective already and nothing changes.

use rustix::thread::{CapabilitySet, capabilities, set_capabilities};
use tracing::{debug, info, warn};

/// What the code uses: binding ports below 1024, and socket buffers past
/// `net.core.rmem_max` / `wmem_max`. No raw socket; `SO_BINDTODEVICE` needs no capability
/// since Linux 5.7.
const NEEDED: CapabilitySet = CapabilitySet::NET_BIND_SERVICE.union(CapabilitySet::NET_ADMIN);

/// Make effective those of [`NEEDED`] that are permitted but not effective; logs what it
/// raised, or why it could not.
pub(crate) fn raise_permitted() {
    let mut sets = match capabilities(None) {
        Ok(sets) => sets,
        Err(e) => {
            warn!(error = %e, "cannot read this process's capabilities");
            return;
        }
    };
    let raise = sets.permitted & NEEDED & !sets.effective;
    if raise.is_empty() {
        debug!(effective = ?sets.effective & NEEDED, "capabilities needed: none to raise");
        return;
    }
    sets.effective |= raise;
    match set_capabilities(None, sets) {
        Ok(()) => info!(
            raised = ?raise,
            effective = ?sets.effective & NEEDED,
            "permitted capabilities made effective"
        ),
        Err(e) => {
            warn!(capabilities = ?raise, error = %e, "cannot make permitted capabilities effective")
        }
    }
}
