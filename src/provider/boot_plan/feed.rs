//! The Omni watches that feed [`MachineStateCache`] and [`JoinConfig`]: one per kind,
//! each resumed by [`Watch`] itself after a broken stream.

use std::sync::Arc;

use ironboot_proto::{baremetal, omni};

use super::cache::{CacheEvent, MachineStateCache};
use super::join_config::JoinConfig;
use crate::provider::omni::client::{Client, LabelQuery, OmniError};
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
/// `BMCConfiguration` records into `cache`, its `ProviderJoinConfig` into `join`. Returns
/// only with the first watch error retrying cannot fix (a rejected key, a denied kind).
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
        pump::<omni::ProviderJoinConfigSpec>(client, mine, move |e| join.apply(e)),
    )?;
    Ok(())
}
