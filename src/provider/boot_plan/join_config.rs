//! `GET /config?u=<uuid>`: the machine configuration every Talos booted by ironboot loads
//! (`talos.config=` in its kernel arguments), built from Omni's `ProviderJoinConfig` (or,
//! on an older Omni without it, from its `ConnectionParams`: [`super::legacy_join`]).
//!
//! Omni renders the join documents (`SideroLinkConfig` with the join token,
//! `EventSinkConfig`, `KmsgLogConfig`) into `ProviderJoinConfig.config.config`; ironboot
//! serves them as they are. Unlike the Go provider, which reads them once at start (a
//! rotated join token needed a restart), the served document follows every change the
//! watch delivers. Until the first one arrives the route answers 503 with a message, and
//! Talos retries.
//!
//! In TLS mode ([`JoinConfig::set_trusted_ca`]) a `TrustedRootsConfig` document named
//! `infra-provider-ca` with the agents' CA follows Omni's documents, as upstream adds it,
//! so Talos (and the metal agent on it) trusts ironboot's TLS listener.
//!
//! Each fetch binds the machine's metal agent to the fetching address
//! ([`crate::provider::agent::admission`]): only an agent from there may open the machine's tunnel.
//!
//! The operator's documents from `--extra-machine-config-path`
//! ([`JoinConfig::set_extra_documents`], checked by [`ExtraDocuments`]) come last, as
//! upstream appends them after the CA.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::{ConnectInfo, Query};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use ironboot_net::machine::Uuid;
use ironboot_proto::omni::{ConnectionParamsSpec, ProviderJoinConfigSpec};
use tracing::{debug, info, warn};

use super::ExtraDocuments;
use super::legacy_join::{self, CONNECTION_PARAMS_ID};
use crate::provider::agent::admission::Bound;
use crate::provider::agent::tunnel::Tunnels;
use crate::provider::omni::watch::Event;

/// The served join configuration, shared by the watch (writer) and the route (readers).
/// Its `Debug` leaves the document out: it carries the join token.
pub(crate) struct JoinConfig {
    provider_id: String,
    docs: RwLock<Docs>,
}

/// Omni's documents, the CA and the operator's documents to add, and what is served.
#[derive(Default)]
struct Docs {
    omni: Option<Bytes>,
    trusted_ca: Option<String>,
    extra: ExtraDocuments,
    served: Option<Bytes>,
}

impl Docs {
    fn recompute(&mut self) {
        self.served = self.omni.as_ref().map(|omni| {
            if self.trusted_ca.is_none() && self.extra.is_empty() {
                return omni.clone();
            }
            let mut text = String::from_utf8_lossy(omni).into_owned();
            if let Some(pem) = &self.trusted_ca {
                append_document(&mut text, &trusted_roots_document(pem));
            }
            for doc in self.extra.texts() {
                append_document(&mut text, doc);
            }
            Bytes::from(text)
        });
    }
}

/// Append `doc` to the YAML stream `text` as a document of its own.
fn append_document(text: &mut String, doc: &str) {
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    // Omni's documents may end with a separator already.
    if text.trim_end().rsplit('\n').next().map(str::trim_end) != Some("---") {
        text.push_str("---\n");
    }
    text.push_str(doc);
    if !doc.ends_with('\n') {
        text.push('\n');
    }
}

/// Name of the `TrustedRootsConfig` document carrying the agents' CA (upstream's).
pub(crate) const INFRA_PROVIDER_CA: &str = "infra-provider-ca";

/// The Talos `TrustedRootsConfig` document named [`INFRA_PROVIDER_CA`] holding `pem`
/// (a literal block: every line of the PEM text, indented).
pub(crate) fn trusted_roots_document(pem: &str) -> String {
    let lines: Vec<&str> = pem.trim_matches('\n').lines().map(str::trim_end).collect();
    // A first line starting with a blank would defeat indentation detection.
    let indicator = if lines.first().is_some_and(|l| l.starts_with([' ', '\t'])) {
        "|2"
    } else {
        "|"
    };
    let mut doc = format!(
        "apiVersion: v1alpha1\nkind: TrustedRootsConfig\nname: {INFRA_PROVIDER_CA}\ncertificates: {indicator}\n"
    );
    for line in lines {
        if !line.is_empty() {
            doc.push_str("  ");
            doc.push_str(line);
        }
        doc.push('\n');
    }
    doc
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
            docs: RwLock::new(Docs::default()),
        })
    }

    /// TLS mode: serve a `TrustedRootsConfig` named `infra-provider-ca` with `ca_pem`
    /// after Omni's documents (`None`: none).
    pub(crate) fn set_trusted_ca(&self, ca_pem: Option<String>) {
        let mut docs = self.docs.write().unwrap_or_else(|p| p.into_inner());
        docs.trusted_ca = ca_pem;
        docs.recompute();
    }

    /// `--extra-machine-config-path`: serve `extra` after Omni's documents and the CA.
    pub(crate) fn set_extra_documents(&self, extra: ExtraDocuments) {
        let mut docs = self.docs.write().unwrap_or_else(|p| p.into_inner());
        docs.extra = extra;
        docs.recompute();
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
        self.set_omni(value);
    }

    /// An older Omni's `ConnectionParams` changed (the legacy join flow, see
    /// [`super::legacy_join`]): the documents rendered from them are served in place of
    /// Omni's own. Parameters that give none are logged, and the last good documents stay.
    pub(crate) fn apply_legacy(&self, event: Event<ConnectionParamsSpec>) {
        let value = match event {
            Event::Created(r) | Event::Updated { new: r, .. } => {
                if r.metadata.id != CONNECTION_PARAMS_ID {
                    return;
                }
                match legacy_join::render(&r.spec, &self.provider_id) {
                    Ok(text) => Some(Bytes::from(text)),
                    Err(e) => {
                        warn!(
                            error = %e,
                            "Omni's ConnectionParams give no join configuration; the last one stays"
                        );
                        return;
                    }
                }
            }
            Event::Destroyed(r) if r.metadata.id == CONNECTION_PARAMS_ID => None,
            Event::Destroyed(_) | Event::Bootstrapped | Event::Reset => return,
        };
        info!(
            provider = %self.provider_id,
            known = value.is_some(),
            "machine join configuration updated from Omni's ConnectionParams (legacy join flow)"
        );
        self.set_omni(value);
    }

    fn set_omni(&self, value: Option<Bytes>) {
        let mut docs = self.docs.write().unwrap_or_else(|p| p.into_inner());
        docs.omni = value;
        docs.recompute();
    }

    /// The document served now (Omni's, then the CA in TLS mode, then the operator's), if
    /// any.
    pub(crate) fn current(&self) -> Option<Bytes> {
        self.docs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .served
            .clone()
    }

    async fn respond(
        &self,
        query: &HashMap<String, String>,
        peer: Option<SocketAddr>,
        agents: Option<&Tunnels>,
    ) -> Response {
        // Served to anyone (the document is the same for every machine); only a valid
        // UUID is logged or bound.
        let uuid = query.get("u").and_then(|u| u.parse::<Uuid>().ok());
        match self.current() {
            Some(body) => {
                if let (Some(uuid), Some(peer), Some(agents)) = (&uuid, peer, agents) {
                    bind_agent(agents, uuid, peer);
                    // On disk before Talos starts the agent, so that a restart of ironboot
                    // does not forget it.
                    if let Err(e) = agents.gate().persist().await {
                        warn!(error = %e, "saving the agent bindings failed; retrying in the background");
                    }
                }
                debug!(
                    machine = uuid.map(tracing::field::display),
                    "machine configuration served"
                );
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
                    machine = uuid.map(tracing::field::display),
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

    /// Add `GET /config` to `router`; each fetch binds the machine's agent to the
    /// fetching address in `agents`' gate.
    pub(crate) fn mount(self: &Arc<Self>, router: Router, agents: Option<Tunnels>) -> Router {
        let me = self.clone();
        router.route(
            "/config",
            get(
                move |peer: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
                      Query(q): Query<HashMap<String, String>>| async move {
                    let peer = peer.map(|axum::Extension(ConnectInfo(a))| a);
                    me.respond(&q, peer, agents.as_ref()).await
                },
            ),
        )
    }
}

/// Binds `uuid`'s agent to `peer`, closing a tunnel the binding no longer covers.
fn bind_agent(agents: &Tunnels, uuid: &Uuid, peer: SocketAddr) {
    let machine_id = uuid.to_string();
    match agents.gate().config_fetch(uuid, peer.ip()) {
        Bound::To(ip) => {
            debug!(%machine_id, %ip, "agent bound to the address that loaded the configuration")
        }
        Bound::NewBoot { from, to } => {
            debug!(%machine_id, %from, %to, "agent bound anew after a PXE boot");
            agents.close_unless_from(&machine_id, Some(to));
        }
        Bound::Moved { from, to } => {
            warn!(
                %machine_id,
                %from,
                %to,
                "a second address loaded the machine's configuration in one boot: the \
                 machine's PXE-boot address wins"
            );
            agents.close_unless_from(&machine_id, Some(to));
        }
        Bound::Contested => {
            warn!(
                %machine_id,
                ip = %peer.ip(),
                "the machine's configuration was loaded from several addresses in one boot: \
                 no agent tunnel is admitted for it until it PXE-boots again"
            );
            agents.close_unless_from(&machine_id, None);
        }
    }
}
