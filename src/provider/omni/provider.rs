//! Registering the provider with Omni (`InfraProviderStatus`, marked static) and the
//! health heartbeat (`InfraProviderHealthStatus` every 30 s, with the last error), as the
//! Go provider and Omni's infra SDK write them; start-up retries while Omni is
//! unreachable instead of exiting.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use ironboot_proto::omni::{InfraProviderHealthStatusSpec, InfraProviderStatusSpec};
use tokio::sync::watch;

use super::client::{Client, OmniError, Resource};
use super::resources::LABEL_IS_STATIC_PROVIDER;

/// Heartbeat period (Omni's `InfraProviderHealthCheckInterval`).
pub(crate) const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);
/// Start-up retry back-off bounds.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Shown in Omni's UI next to the provider.
const ICON_SVG: &[u8] = include_bytes!("icon.svg");

/// What Omni shows about the provider.
#[derive(Clone, Debug)]
pub struct ProviderInfo {
    pub name: String,
    pub description: String,
    pub version: String,
}

impl ProviderInfo {
    fn fill(&self, spec: &mut InfraProviderStatusSpec) {
        spec.name.clone_from(&self.name);
        spec.description.clone_from(&self.description);
        // The Go provider sends the SVG as unpadded base64.
        spec.icon = STANDARD_NO_PAD.encode(ICON_SVG);
        spec.version.clone_from(&self.version);
    }
}

/// Owner of the health status, as the SDK's controller names it (so ironboot can take
/// over from the Go provider on the same Omni).
pub(crate) fn health_owner(provider_id: &str) -> String {
    format!("{provider_id}.ProviderHealthStatusController")
}

/// Creates or updates the provider's `InfraProviderStatus` (ID = provider ID, static
/// label set).
pub async fn register(
    client: &Client,
    info: &ProviderInfo,
) -> Result<Resource<InfraProviderStatusSpec>, OmniError> {
    let id = client.provider_id().to_owned();
    client
        .modify::<InfraProviderStatusSpec>(&id, "", true, |r| {
            info.fill(&mut r.spec);
            r.metadata
                .labels
                .insert(LABEL_IS_STATIC_PROVIDER.to_owned(), String::new());
            true
        })
        .await
}

/// Writes one heartbeat at `now` with `error` ("" = healthy).
pub async fn heartbeat(
    client: &Client,
    now: SystemTime,
    error: &str,
) -> Result<Resource<InfraProviderHealthStatusSpec>, OmniError> {
    let id = client.provider_id().to_owned();
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let ts = prost_types::Timestamp {
        seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(since.subsec_nanos()).unwrap_or(0),
    };
    client
        .modify::<InfraProviderHealthStatusSpec>(&id, &health_owner(&id), true, |r| {
            r.spec.last_heartbeat_timestamp = Some(ts);
            error.clone_into(&mut r.spec.error);
            true
        })
        .await
}

/// Registers the provider, retrying with back-off (and a status line each time) while
/// Omni is unreachable; any other error (e.g. a rejected signature) is returned at once.
pub async fn register_with_retry(
    client: &Client,
    info: &ProviderInfo,
    mut on_retry: impl FnMut(&OmniError, Duration),
) -> Result<Resource<InfraProviderStatusSpec>, OmniError> {
    let mut backoff = BACKOFF_MIN;
    loop {
        match register(client, info).await {
            Err(e) if e.is_unavailable() => {
                tracing::warn!(
                    endpoint = client.endpoint(),
                    error = %e,
                    retry_in = ?backoff,
                    "Omni unreachable, retrying"
                );
                on_retry(&e, backoff);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
            other => return other,
        }
    }
}

/// Sends a heartbeat every `interval` with the latest reported error (from `errors`)
/// until `errors`' sender is dropped. A failed heartbeat is logged and retried at the
/// next tick.
pub async fn run_heartbeat(
    client: Client,
    interval: Duration,
    mut errors: watch::Receiver<String>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            changed = errors.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
        let error = errors.borrow_and_update().clone();
        if let Err(e) = heartbeat(&client, SystemTime::now(), &error).await {
            tracing::warn!(error = %e, "Omni heartbeat failed");
        }
    }
}
