//! The Omni watches that feed [`MachineStateCache`] and [`JoinConfig`]: one per kind,
//! each resumed by [`Watch`] itself after a broken stream.

use std::sync::Arc;

use ironboot_proto::{baremetal, omni};

use super::cache::{CacheEvent, MachineStateCache};
use super::join_config::JoinConfig;
use super::legacy_join::PROVIDER_JOIN_CONFIG_DEFINITION;
use crate::provider::omni::client::{Client, LabelQuery, OmniError, retry_while_unavailable};
use crate::provider::omni::resources::{LABEL_INFRA_PROVIDER_ID, Spec};
use crate::provider::omni::watch::{Event, Watch};

/// Feed every event of kind `S` to `apply`, until an error retrying cannot fix.
async fn pump<S: Spec>(
    client: Client,
    labels: LabelQuery,
    apply: impl Fn(Event<S>),
) -> Result<(), OmniError> {
    let mut watch = Watch::<S>::new(client, labels);
    loop {
        apply(watch.next().await?);
    }
}

/// Follow Omni: the provider's `InfraMachine`s, its private `WipeStatus` and
/// `BMCConfiguration` records into `cache`, its join configuration into `join`. Returns
/// only with the first error retrying cannot fix (a rejected key, a denied kind) of the
/// watches feeding `cache`. The join configuration's is logged, and the boot decisions
/// go on without it (machines already joined, and agent boots, need none).
pub(crate) async fn follow(
    client: Client,
    cache: Arc<MachineStateCache>,
    join: Arc<JoinConfig>,
) -> Result<(), OmniError> {
    let mine = LabelQuery::default().equal(LABEL_INFRA_PROVIDER_ID, client.provider_id());
    let (c1, c2, c3) = (cache.clone(), cache.clone(), cache);
    tokio::try_join!(
        pump::<omni::InfraMachineSpec>(client.clone(), mine.clone(), move |e| {
            c1.apply(CacheEvent::InfraMachine(e));
        }),
        pump::<baremetal::WipeStatusSpec>(client.clone(), LabelQuery::default(), move |e| {
            c2.apply(CacheEvent::WipeStatus(e));
        }),
        pump::<baremetal::BmcConfigurationSpec>(client.clone(), LabelQuery::default(), move |e| c3
            .apply(CacheEvent::BmcConfiguration(e)),),
        async {
            if let Err(e) = follow_join(client, mine, join).await {
                tracing::error!(error = %e, "following Omni's join configuration stopped");
            }
            Ok::<(), OmniError>(())
        },
    )?;
    Ok(())
}

/// Follow the join configuration: Omni's `ProviderJoinConfig` where Omni defines it,
/// else (an older Omni) its `ConnectionParams`, as upstream decides at start.
async fn follow_join(
    client: Client,
    mine: LabelQuery,
    join: Arc<JoinConfig>,
) -> Result<(), OmniError> {
    let (namespace, type_name, id) = PROVIDER_JOIN_CONFIG_DEFINITION;
    // Omni not reachable yet is waited for, as the watches wait for it.
    let v2 = retry_while_unavailable("checking Omni's join flow", || {
        client.exists(namespace, type_name, id)
    })
    .await?;
    if v2 {
        pump::<omni::ProviderJoinConfigSpec>(client, mine, move |e| join.apply(e)).await
    } else {
        tracing::info!(
            "Omni defines no ProviderJoinConfig (an older Omni): the join configuration is \
             rendered from its ConnectionParams"
        );
        pump::<omni::ConnectionParamsSpec>(client, LabelQuery::default(), move |e| {
            join.apply_legacy(e)
        })
        .await
    }
}
