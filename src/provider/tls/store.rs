//! The generated CA's home: the provider-private `TLSConfig` resource (ID `tls-config`)
//! in Omni, shared with the Go provider (same type, ID and spec), so either can take over
//! from the other and the machines keep trusting the same CA.

use std::time::{Duration, SystemTime};

use ironboot_proto::baremetal::TlsConfigSpec;
use tracing::{info, warn};

use super::TlsError;
use super::ca::{Ca, StoredCa, examine};
use crate::provider::omni::client::{Client, OmniError, Phase};

/// ID of the `TLSConfig` resource (the Go provider's `resources.TLSConfigID`).
pub const TLS_CONFIG_ID: &str = "tls-config";

/// Owner of the `TLSConfig` resource: none. The Go provider creates and updates it with
/// plain state calls (no controller, so no owner); COSI refuses an update whose owner
/// differs from the stored one, so any other owner would lock one of the two out.
pub(crate) const TLS_CONFIG_OWNER: &str = "";

/// Attempts when another instance writes the resource at the same time.
const ATTEMPTS: u32 = 3;

/// The CA stored in Omni, or a new one valid for `ttl` created there (also when the
/// stored one has ended). An undecodable stored CA is an error, never overwritten.
pub(crate) async fn load_or_create(client: &Client, ttl: Duration) -> Result<Ca, TlsError> {
    let omni = |source: OmniError| TlsError::Omni { source };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let stored = client
            .get_opt::<TlsConfigSpec>(TLS_CONFIG_ID)
            .await
            .map_err(omni)?;
        let now = SystemTime::now();
        let result = match examine(stored.as_ref().map(|r| &r.spec), now)? {
            StoredCa::Valid(ca) => {
                info!("agents' TLS CA loaded from Omni");
                return Ok(*ca);
            }
            StoredCa::Missing => {
                info!("no agents' TLS CA in Omni: creating one");
                let ca = Ca::generate(now, ttl)?;
                let r = client.new_resource(TLS_CONFIG_ID, ca.to_spec());
                client.create(&r, TLS_CONFIG_OWNER).await.map(|_| ca)
            }
            StoredCa::Expired { not_after } => {
                warn!(
                    ended = %crate::provider::tls::rfc3339(not_after),
                    "the agents' TLS CA in Omni has ended: replacing it (machines booted \
                     before trust the old one until they boot again)"
                );
                let ca = Ca::generate(now, ttl)?;
                let Some(mut r) = stored else {
                    continue;
                };
                r.spec = ca.to_spec();
                client
                    .update(&r, TLS_CONFIG_OWNER, Some(Phase::Running))
                    .await
                    .map(|_| ca)
            }
        };
        match result {
            Ok(ca) => return Ok(ca),
            // Another instance wrote it first: use theirs.
            Err(OmniError::AlreadyExists { .. } | OmniError::Conflict { .. })
                if attempt < ATTEMPTS =>
            {
                continue;
            }
            Err(e) => return Err(omni(e)),
        }
    }
}
