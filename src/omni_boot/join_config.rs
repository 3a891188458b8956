//! `GET /config?u=<uuid>`: the machine configuration every Talos booted by ironboot loads
//! (`talos.config=` in its kernel arguments), built from Omni's `ProviderJoinConfig`.
//!
//! Omni renders the join documents (`SideroLinkConfig` with the join token,
//! `EventSinkConfig`, `KmsgLogConfig`) into `ProviderJoinConfig.config.config`; ironboot
//! serves them as they are. Unlike the Go provider, which reads them once at start (a
//! rotated join token needed a restart), the served document follows every change the
//! watch delivers. Until the first one arrives the route answers 503 with a message, and
//! Talos retries.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::Query;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use ironboot_proto::omni::ProviderJoinConfigSpec;
use tracing::{debug, info};

use crate::omni::watch::Event;

/// The served join configuration, shared by the watch (writer) and the route (readers).
/// Its `Debug` leaves the document out: it carries the join token.
pub(crate) struct JoinConfig {
    provider_id: String,
    current: RwLock<Option<Bytes>>,
}

impl std::fmt::Debug for JoinConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinConfig")
            .field("provider_id", &self.provider_id)
            .field("known", &self.current().is_some())
            .finish()
    }
}

impl JoinConfig {
    /// Nothing known yet, for the `ProviderJoinConfig` whose ID is `provider_id`.
    pub(crate) fn new(provider_id: &str) -> Arc<Self> {
        Arc::new(Self {
            provider_id: provider_id.to_owned(),
            current: RwLock::new(None),
        })
    }

    /// Fold a watch event in. Events of other IDs are ignored; a destroyed resource makes
    /// the configuration unknown again; on a reset the last known one is kept until the
    /// contents arrive again (a stale join token beats none).
    pub(crate) fn apply(&self, event: Event<ProviderJoinConfigSpec>) {
        let (id, value) = match event {
            Event::Created(r) | Event::Updated { new: r, .. } => {
                let config = r
                    .spec
                    .config
                    .as_ref()
                    .map(|c| c.config.as_str())
                    .unwrap_or("");
                let value = (!config.trim().is_empty()).then(|| {
                    let mut text = config.to_owned();
                    if !text.ends_with('\n') {
                        text.push('\n');
                    }
                    Bytes::from(text)
                });
                (r.metadata.id, value)
            }
            Event::Destroyed(r) => (r.metadata.id, None),
            Event::Bootstrapped | Event::Reset => return,
        };
        if id != self.provider_id {
            return;
        }
        info!(
            provider = %self.provider_id,
            known = value.is_some(),
            "machine join configuration updated from Omni"
        );
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = value;
    }

    /// The document served now, if any.
    pub(crate) fn current(&self) -> Option<Bytes> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn respond(&self, query: &HashMap<String, String>) -> Response {
        let uuid = query.get("u").map(String::as_str).unwrap_or("");
        match self.current() {
            Some(body) => {
                debug!(machine = uuid, "machine configuration served");
                (
                    StatusCode::OK,
                    [
                        (
                            header::CONTENT_TYPE,
                            HeaderValue::from_static("application/yaml"),
                        ),
                        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
                    ],
                    body,
                )
                    .into_response()
            }
            None => {
                debug!(
                    machine = uuid,
                    "machine configuration asked for before it is known"
                );
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [
                        (
                            header::CONTENT_TYPE,
                            HeaderValue::from_static("text/plain; charset=utf-8"),
                        ),
                        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
                        (header::RETRY_AFTER, HeaderValue::from_static("5")),
                    ],
                    format!(
                        "the machine configuration is not known yet: waiting for Omni's \
                         ProviderJoinConfig {:?}\n",
                        self.provider_id
                    ),
                )
                    .into_response()
            }
        }
    }

    /// Add `GET /config` to `router`.
    pub(crate) fn mount(self: &Arc<Self>, router: Router) -> Router {
        let me = self.clone();
        router.route(
            "/config",
            get(move |Query(q): Query<HashMap<String, String>>| async move { me.respond(&q) }),
        )
    }
}
