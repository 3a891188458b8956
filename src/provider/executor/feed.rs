//! What wakes the executor: changes watched in Omni and the agents' tunnels opening and
//! closing. Each feeder runs until its source ends.

use std::collections::BTreeSet;

use ironboot_proto::{baremetal, omni};
use tokio::sync::broadcast;

use crate::provider::agent::tunnel::TunnelEvent;
use crate::provider::lifecycle::Event;
use crate::provider::omni::client::{Client, LabelQuery, OmniError, retry_while_unavailable};
use crate::provider::omni::resources::{LABEL_INFRA_PROVIDER_ID, Spec};
use crate::provider::omni::watch::{Event as WatchEvent, Watch};

/// Omni's resources of this provider's machines carry its ID in this label.
pub(crate) fn provider_machines(client: &Client) -> LabelQuery {
    LabelQuery::default().equal(LABEL_INFRA_PROVIDER_ID, client.provider_id())
}

/// Calls `wake` with the ID of every resource of kind `S` created, changed or destroyed
/// (the initial contents count as created). Returns only on an error the watch cannot
/// retry (a rejected signature, say).
pub(crate) async fn follow_kind<S: Spec>(
    mut watch: Watch<S>,
    wake: impl Fn(&str) + Send,
) -> Result<(), OmniError> {
    loop {
        match watch.next().await? {
            WatchEvent::Created(r)
            | WatchEvent::Destroyed(r)
            | WatchEvent::Updated { new: r, .. } => {
                wake(&r.metadata.id);
            }
            // A reset is followed by the whole contents again: each wakes its machine.
            WatchEvent::Bootstrapped | WatchEvent::Reset => {}
        }
    }
}

/// Calls `wake` once with the ID of every machine the provider holds a record of, read at
/// start. A machine Omni no longer knows, whose release was held up by another party's
/// finalizer on one of its records, is in no watch of InfraMachines: this is how a
/// restarted provider takes up its release again. Omni unreachable is waited for; any
/// other error is returned.
pub(crate) async fn wake_recorded(client: &Client, wake: impl Fn(&str)) -> Result<(), OmniError> {
    let ids =
        retry_while_unavailable("listing the provider's records", || recorded_ids(client)).await?;
    for id in &ids {
        wake(id);
    }
    Ok(())
}

/// The IDs of the machines with a record of the provider's, of any kind.
async fn recorded_ids(client: &Client) -> Result<BTreeSet<String>, OmniError> {
    async fn ids<S: Spec>(
        client: &Client,
        labels: &LabelQuery,
        into: &mut BTreeSet<String>,
    ) -> Result<(), OmniError> {
        into.extend(
            client
                .list::<S>(labels)
                .await?
                .into_iter()
                .map(|r| r.metadata.id),
        );
        Ok(())
    }
    let private = LabelQuery::default();
    let mut found = BTreeSet::new();
    ids::<baremetal::BmcConfigurationSpec>(client, &private, &mut found).await?;
    ids::<baremetal::WipeStatusSpec>(client, &private, &mut found).await?;
    ids::<baremetal::PowerOperationSpec>(client, &private, &mut found).await?;
    ids::<baremetal::RebootStatusSpec>(client, &private, &mut found).await?;
    ids::<baremetal::MachineStatusSpec>(client, &private, &mut found).await?;
    ids::<omni::InfraMachineStatusSpec>(client, &provider_machines(client), &mut found).await?;
    Ok(found)
}

/// Turns tunnel opens and closes into lifecycle events. Returns when the tunnel registry
/// is gone.
pub(crate) async fn follow_tunnels(
    mut events: broadcast::Receiver<TunnelEvent>,
    event: impl Fn(&str, Event) + Send,
) {
    loop {
        match events.recv().await {
            Ok(TunnelEvent::Connected { machine_id }) => {
                event(&machine_id, Event::TunnelConnected);
            }
            Ok(TunnelEvent::Disconnected { machine_id }) => {
                event(&machine_id, Event::TunnelClosed);
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "tunnel events were missed; machines catch up on their next pass"
                );
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[tokio::test]
    async fn tunnel_events_become_lifecycle_events_in_order() {
        let (tx, rx) = broadcast::channel(8);
        for ev in [
            TunnelEvent::Connected {
                machine_id: "m1".into(),
            },
            TunnelEvent::Connected {
                machine_id: "m2".into(),
            },
            TunnelEvent::Disconnected {
                machine_id: "m1".into(),
            },
        ] {
            tx.send(ev).unwrap();
        }
        drop(tx);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        follow_tunnels(rx, move |id, e| {
            sink.lock().unwrap().push((id.to_owned(), e))
        })
        .await;
        assert_eq!(
            *seen.lock().unwrap(),
            [
                ("m1".to_owned(), Event::TunnelConnected),
                ("m2".to_owned(), Event::TunnelConnected),
                ("m1".to_owned(), Event::TunnelClosed),
            ]
        );
    }
}
