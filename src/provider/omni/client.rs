//! A typed client of the COSI State API that Omni serves to infra providers: resources
//! carry their spec as protobuf and YAML (as cosi-runtime's client sends them), updates
//! use optimistic concurrency (the version read must still be current) and are retried on
//! conflict, and finalizers and teardown follow COSI's rules.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ironboot_proto::cosi::{self, state_client::StateClient};
use tonic::Code;
use tonic::codec::CompressionEncoding;

use super::auth::ServiceAccountKey;
use super::resources::Spec;
use super::transport::{EndpointError, OmniEndpoint, SignedChannel};

/// Largest message accepted from Omni (the Go client's limit).
const MAX_RECV: usize = 32 << 20;
/// Attempts of a read-modify-write before giving up on version conflicts.
const MAX_CONFLICT_RETRIES: u32 = 16;

/// COSI phase of a resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Phase {
    #[default]
    Running,
    TearingDown,
}

impl Phase {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::TearingDown => "tearingDown",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "running" | "" => Some(Self::Running),
            "tearingDown" => Some(Self::TearingDown),
            _ => None,
        }
    }
}

/// Resource metadata (COSI `Metadata`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metadata {
    pub namespace: String,
    pub type_name: String,
    pub id: String,
    /// `None` before creation ("undefined" on the wire).
    pub version: Option<u64>,
    pub owner: String,
    pub phase: Phase,
    pub(crate) created: Option<prost_types::Timestamp>,
    pub(crate) updated: Option<prost_types::Timestamp>,
    pub finalizers: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub(crate) annotations: BTreeMap<String, String>,
}

/// A typed resource.
#[derive(Clone, Debug, PartialEq)]
pub struct Resource<S> {
    pub metadata: Metadata,
    pub spec: S,
}

/// What failed in a call to Omni. Every variant names the resource or call.
#[derive(Debug, thiserror::Error)]
pub enum OmniError {
    #[error("{what}: not found")]
    NotFound { what: String },
    #[error("{what}: already exists")]
    AlreadyExists { what: String },
    /// The version sent is not current (someone else wrote), or finalizers block a destroy.
    #[error("{what}: conflict: {message}")]
    Conflict { what: String, message: String },
    #[error("{what}: phase conflict: {message}")]
    PhaseConflict { what: String, message: String },
    #[error("{what}: permission denied by Omni: {message}")]
    PermissionDenied { what: String, message: String },
    /// Omni refused the request signature: clock skew of more than 5 minutes, a revoked
    /// or deleted service account, or a key Omni does not know.
    #[error(
        "{what}: Omni rejected the request signature ({message}); check the clock (5 min skew allowed) and that the service account key is current"
    )]
    SignatureRejected { what: String, message: String },
    #[error("{what}: Omni unreachable: {message}")]
    Unavailable { what: String, message: String },
    #[error("{what}: undecodable answer from Omni: {why}")]
    Decode { what: String, why: String },
    #[error("{what}: Omni answered {code:?}: {message}")]
    Rpc {
        what: String,
        code: Code,
        message: String,
    },
    #[error("{what}: {source}")]
    Endpoint {
        what: String,
        #[source]
        source: EndpointError,
    },
}

impl OmniError {
    pub(crate) fn from_status(what: String, s: &tonic::Status) -> Self {
        let message = s.message().to_owned();
        match s.code() {
            Code::NotFound => Self::NotFound { what },
            Code::AlreadyExists => Self::AlreadyExists { what },
            Code::FailedPrecondition => Self::Conflict { what, message },
            Code::InvalidArgument if message.contains("phase") => {
                Self::PhaseConflict { what, message }
            }
            Code::PermissionDenied => Self::PermissionDenied { what, message },
            Code::Unauthenticated => Self::SignatureRejected { what, message },
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
                if is_transport(s) =>
            {
                Self::Unavailable {
                    what,
                    message: transport_message(s),
                }
            }
            Code::Unavailable => Self::Unavailable { what, message },
            code => Self::Rpc {
                what,
                code,
                message,
            },
        }
    }

    /// Worth retrying later as is (Omni unreachable).
    pub(crate) fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}

/// Runs `attempt` until it answers, waiting while Omni is unreachable (half a second
/// longer after each unreachable try, at most 10 s); any other error is returned. `what`
/// names the call in the debug log.
pub(crate) async fn retry_while_unavailable<T, Fut>(
    what: &str,
    mut attempt: impl FnMut() -> Fut,
) -> Result<T, OmniError>
where
    Fut: std::future::Future<Output = Result<T, OmniError>>,
{
    let mut tries = 0u32;
    loop {
        match attempt().await {
            Err(e) if e.is_unavailable() => {
                tries = tries.saturating_add(1);
                tracing::debug!(error = %e, tries, "{what}: Omni unreachable; retrying");
                tokio::time::sleep(Duration::from_millis(500) * tries.min(20)).await;
            }
            answer => return answer,
        }
    }
}

fn is_transport(s: &tonic::Status) -> bool {
    use std::error::Error as _;
    s.source().is_some() || s.code() == Code::Unavailable
}

fn transport_message(s: &tonic::Status) -> String {
    use std::error::Error as _;
    let mut msg = s.message().to_owned();
    let mut src = s.source();
    while let Some(e) = src {
        msg.push_str(": ");
        msg.push_str(&e.to_string());
        src = e.source();
    }
    msg
}

/// Label selectors of List and Watch (terms are ANDed).
#[derive(Clone, Debug, Default)]
pub struct LabelQuery {
    terms: Vec<cosi::LabelTerm>,
}

impl LabelQuery {
    pub fn equal(mut self, key: &str, value: &str) -> Self {
        self.terms.push(cosi::LabelTerm {
            key: key.to_owned(),
            op: cosi::label_term::Operation::Equal as i32,
            value: vec![value.to_owned()],
            invert: false,
        });
        self
    }

    pub(crate) fn to_proto(&self) -> Vec<cosi::LabelQuery> {
        if self.terms.is_empty() {
            return Vec::new();
        }
        vec![cosi::LabelQuery {
            terms: self.terms.clone(),
        }]
    }
}

/// Encodes a typed resource the way cosi-runtime's client does.
pub(crate) fn to_proto<S: Spec>(r: &Resource<S>) -> cosi::Resource {
    let m = &r.metadata;
    cosi::Resource {
        metadata: Some(cosi::Metadata {
            namespace: m.namespace.clone(),
            r#type: m.type_name.clone(),
            id: m.id.clone(),
            version: m
                .version
                .map_or_else(|| "undefined".to_owned(), |v| v.to_string()),
            owner: m.owner.clone(),
            phase: m.phase.as_str().to_owned(),
            created: m.created,
            updated: m.updated,
            finalizers: m.finalizers.clone(),
            labels: m.labels.clone().into_iter().collect(),
            annotations: m.annotations.clone().into_iter().collect(),
        }),
        spec: Some(cosi::Spec {
            proto_spec: r.spec.encode_to_vec(),
            yaml_spec: r.spec.to_yaml(),
        }),
    }
}

/// The resource a Get, Create or Update answered with (`what` names the call).
fn answered<S: Spec>(what: &str, r: Option<cosi::Resource>) -> Result<Resource<S>, OmniError> {
    let r = r.ok_or_else(|| OmniError::Decode {
        what: what.to_owned(),
        why: "empty answer".into(),
    })?;
    from_proto(what, r)
}

/// Decodes a resource; `what` names it in errors.
pub(crate) fn from_proto<S: Spec>(what: &str, r: cosi::Resource) -> Result<Resource<S>, OmniError> {
    let decode = |why: String| OmniError::Decode {
        what: what.to_owned(),
        why,
    };
    let m = r.metadata.ok_or_else(|| decode("no metadata".into()))?;
    let version = match m.version.as_str() {
        "undefined" | "" => None,
        v => Some(v.parse().map_err(|_| decode(format!("version {v:?}")))?),
    };
    let phase = Phase::parse(&m.phase).ok_or_else(|| decode(format!("phase {:?}", m.phase)))?;
    let spec = match r.spec {
        Some(s) => S::decode(s.proto_spec.as_slice()).map_err(|e| decode(format!("spec: {e}")))?,
        None => S::default(),
    };
    Ok(Resource {
        metadata: Metadata {
            namespace: m.namespace,
            type_name: m.r#type,
            id: m.id,
            version,
            owner: m.owner,
            phase,
            created: m.created,
            updated: m.updated,
            finalizers: m.finalizers,
            labels: m.labels.into_iter().collect(),
            annotations: m.annotations.into_iter().collect(),
        },
        spec,
    })
}

/// A client of Omni's COSI State API for one provider.
#[derive(Clone)]
pub struct Client {
    grpc: StateClient<SignedChannel>,
    provider_id: String,
    endpoint: String,
}

impl Client {
    /// A client of `endpoint` signing with `key` (connects lazily, on the first call).
    /// Must be called within a Tokio runtime.
    pub fn new(endpoint: &OmniEndpoint, key: Arc<ServiceAccountKey>) -> Result<Self, OmniError> {
        let channel = endpoint.channel().map_err(|source| OmniError::Endpoint {
            what: "connecting to Omni".into(),
            source,
        })?;
        let provider_id = key.provider_id().to_owned();
        Ok(Self::from_signed(
            SignedChannel::new(channel, key),
            provider_id,
            endpoint.url().to_owned(),
        ))
    }

    pub fn from_signed(signed: SignedChannel, provider_id: String, endpoint: String) -> Self {
        let grpc = StateClient::new(signed)
            .send_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(MAX_RECV);
        Self {
            grpc,
            provider_id,
            endpoint,
        }
    }

    /// The provider ID resources are namespaced with.
    pub(crate) fn provider_id(&self) -> &str {
        &self.provider_id
    }

    /// The endpoint URL, for messages.
    pub(crate) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn namespace_of<S: Spec>(&self) -> String {
        S::KIND.namespace(&self.provider_id)
    }

    pub fn type_of<S: Spec>(&self) -> String {
        S::KIND.type_name(&self.provider_id)
    }

    fn what<S: Spec>(&self, op: &str, id: &str) -> String {
        format!(
            "{op} {}/{}/{id} at {}",
            self.namespace_of::<S>(),
            self.type_of::<S>(),
            self.endpoint
        )
    }

    /// A new resource of type `S` (version undefined, phase running).
    pub fn new_resource<S: Spec>(&self, id: &str, spec: S) -> Resource<S> {
        Resource {
            metadata: Metadata {
                namespace: self.namespace_of::<S>(),
                type_name: self.type_of::<S>(),
                id: id.to_owned(),
                ..Metadata::default()
            },
            spec,
        }
    }

    pub async fn get<S: Spec>(&self, id: &str) -> Result<Resource<S>, OmniError> {
        let what = self.what::<S>("get", id);
        let raw = self.get_raw::<S>(id).await?;
        from_proto(&what, raw)
    }

    /// Resource `id` as Omni sent it (its spec as the bytes read).
    async fn get_raw<S: Spec>(&self, id: &str) -> Result<cosi::Resource, OmniError> {
        let what = self.what::<S>("get", id);
        let resp = self
            .grpc
            .clone()
            .get(cosi::GetRequest {
                namespace: self.namespace_of::<S>(),
                r#type: self.type_of::<S>(),
                id: id.to_owned(),
                options: Some(cosi::GetOptions {}),
            })
            .await
            .map_err(|s| OmniError::from_status(what.clone(), &s))?
            .into_inner();
        resp.resource.ok_or_else(|| OmniError::Decode {
            what,
            why: "empty answer".into(),
        })
    }

    /// Whether resource `namespace`/`type_name`/`id` exists (its spec is not decoded: any
    /// type can be probed, e.g. a resource definition in `meta`).
    pub async fn exists(
        &self,
        namespace: &str,
        type_name: &str,
        id: &str,
    ) -> Result<bool, OmniError> {
        let what = format!("get {namespace}/{type_name}/{id} at {}", self.endpoint);
        let answer = self
            .grpc
            .clone()
            .get(cosi::GetRequest {
                namespace: namespace.to_owned(),
                r#type: type_name.to_owned(),
                id: id.to_owned(),
                options: Some(cosi::GetOptions {}),
            })
            .await;
        match answer {
            Ok(_) => Ok(true),
            Err(s) => match OmniError::from_status(what, &s) {
                OmniError::NotFound { .. } => Ok(false),
                e => Err(e),
            },
        }
    }

    /// Like [`Self::get`], `None` if the resource does not exist.
    pub async fn get_opt<S: Spec>(&self, id: &str) -> Result<Option<Resource<S>>, OmniError> {
        match self.get(id).await {
            Ok(r) => Ok(Some(r)),
            Err(OmniError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn list<S: Spec>(&self, labels: &LabelQuery) -> Result<Vec<Resource<S>>, OmniError> {
        let what = self.what::<S>("list", "*");
        let mut stream = self
            .grpc
            .clone()
            .list(cosi::ListRequest {
                namespace: self.namespace_of::<S>(),
                r#type: self.type_of::<S>(),
                options: Some(cosi::ListOptions {
                    label_query: labels.to_proto(),
                    id_query: None,
                }),
            })
            .await
            .map_err(|s| OmniError::from_status(what.clone(), &s))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(msg) = stream
            .message()
            .await
            .map_err(|s| OmniError::from_status(what.clone(), &s))?
        {
            if let Some(r) = msg.resource {
                out.push(from_proto(&what, r)?);
            }
        }
        Ok(out)
    }

    /// Creates `r`; returns Omni's copy (version 1, labels stamped by Omni).
    pub async fn create<S: Spec>(
        &self,
        r: &Resource<S>,
        owner: &str,
    ) -> Result<Resource<S>, OmniError> {
        let what = self.what::<S>("create", &r.metadata.id);
        let resp = self
            .grpc
            .clone()
            .create(cosi::CreateRequest {
                resource: Some(to_proto(r)),
                options: Some(cosi::CreateOptions {
                    owner: owner.to_owned(),
                }),
            })
            .await
            .map_err(|s| OmniError::from_status(what.clone(), &s))?
            .into_inner();
        answered(&what, resp.resource)
    }

    /// Updates `r`, which must carry the current version (else [`OmniError::Conflict`]).
    /// `expected_phase` `None` accepts any phase (to release finalizers during teardown).
    pub async fn update<S: Spec>(
        &self,
        r: &Resource<S>,
        owner: &str,
        expected_phase: Option<Phase>,
    ) -> Result<Resource<S>, OmniError> {
        self.update_raw(to_proto(r), owner, expected_phase).await
    }

    /// Like [`Self::update`], with the resource as sent on the wire.
    async fn update_raw<S: Spec>(
        &self,
        r: cosi::Resource,
        owner: &str,
        expected_phase: Option<Phase>,
    ) -> Result<Resource<S>, OmniError> {
        let id = r.metadata.as_ref().map_or("", |m| m.id.as_str());
        let what = self.what::<S>("update", id);
        let resp = self
            .grpc
            .clone()
            .update(cosi::UpdateRequest {
                new_resource: Some(r),
                options: Some(cosi::UpdateOptions {
                    owner: owner.to_owned(),
                    expected_phase: expected_phase.map(|p| p.as_str().to_owned()),
                }),
            })
            .await
            .map_err(|s| OmniError::from_status(what.clone(), &s))?
            .into_inner();
        answered(&what, resp.resource)
    }

    /// Read-modify-write of resource `id`: `f` changes it (returning false = nothing to
    /// do); on a version conflict it is read again and `f` runs again. With `create`, a
    /// missing resource is created from `S::default()` passed through `f`. The update
    /// expects the resource running, as the Go SDK's updates do: one being torn down is
    /// refused ([`OmniError::PhaseConflict`]) rather than written again.
    pub async fn modify<S: Spec>(
        &self,
        id: &str,
        owner: &str,
        create: bool,
        mut f: impl FnMut(&mut Resource<S>) -> bool,
    ) -> Result<Resource<S>, OmniError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = match self.get_opt::<S>(id).await? {
                None if create => {
                    let mut r = self.new_resource(id, S::default());
                    f(&mut r);
                    self.create(&r, owner).await
                }
                None => {
                    return Err(OmniError::NotFound {
                        what: self.what::<S>("modify", id),
                    });
                }
                Some(mut r) => {
                    let before = r.clone();
                    if !f(&mut r) || r == before {
                        return Ok(before);
                    }
                    // The version read is the one the update must match.
                    r.metadata.version = before.metadata.version;
                    self.update(&r, owner, Some(Phase::Running)).await
                }
            };
            match result {
                Err(OmniError::Conflict { .. } | OmniError::AlreadyExists { .. })
                    if attempt < MAX_CONFLICT_RETRIES =>
                {
                    tracing::debug!(id, attempt, "version conflict, reading again");
                    tokio::time::sleep(Duration::from_millis(5 * u64::from(attempt))).await;
                }
                other => return other,
            }
        }
    }
}

// Finalizers and destruction: the control loop holds a finalizer on each InfraMachine
// it manages and destroys private resources. Teardown is only exercised by the Omni
// conformance tests (`tests/it/omni_conformance.rs`) against the real COSI runtime.
impl Client {
    /// Adds `finalizer` to resource `id` (any phase; idempotent).
    pub async fn add_finalizer<S: Spec>(
        &self,
        id: &str,
        finalizer: &str,
    ) -> Result<Resource<S>, OmniError> {
        self.modify_finalizers::<S>(id, |f| {
            if f.iter().any(|x| x == finalizer) {
                false
            } else {
                f.push(finalizer.to_owned());
                true
            }
        })
        .await
    }

    /// Removes `finalizer` from resource `id` (any phase; idempotent). The provider
    /// removes finalizers by prefix; this one is for the conformance tests.
    #[cfg(feature = "test-support")]
    pub async fn remove_finalizer<S: Spec>(
        &self,
        id: &str,
        finalizer: &str,
    ) -> Result<Resource<S>, OmniError> {
        self.modify_finalizers::<S>(id, |f| {
            let before = f.len();
            f.retain(|x| x != finalizer);
            f.len() != before
        })
        .await
    }

    /// Removes every finalizer starting with `prefix` from resource `id` in one update (any
    /// phase; idempotent).
    pub async fn remove_finalizers_with_prefix<S: Spec>(
        &self,
        id: &str,
        prefix: &str,
    ) -> Result<Resource<S>, OmniError> {
        self.modify_finalizers::<S>(id, |f| {
            let before = f.len();
            f.retain(|x| !x.starts_with(prefix));
            f.len() != before
        })
        .await
    }

    async fn modify_finalizers<S: Spec>(
        &self,
        id: &str,
        mut change: impl FnMut(&mut Vec<String>) -> bool,
    ) -> Result<Resource<S>, OmniError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            // Only the finalizers change: the rest goes back as read, the spec as its
            // bytes. Re-encoding would drop the spec fields this build does not know
            // (prost keeps none), and Omni refuses any change but to the finalizers of
            // its resources that providers only read (InfraMachines).
            let mut raw = self.get_raw::<S>(id).await?;
            let Some(metadata) = raw.metadata.as_mut() else {
                return Err(OmniError::Decode {
                    what: self.what::<S>("get", id),
                    why: "no metadata".into(),
                });
            };
            if !change(&mut metadata.finalizers) {
                return from_proto(&self.what::<S>("get", id), raw);
            }
            // Finalizers are set through Update with the resource's own owner.
            let owner = metadata.owner.clone();
            match self.update_raw(raw, &owner, None).await {
                Err(OmniError::Conflict { .. }) if attempt < MAX_CONFLICT_RETRIES => continue,
                other => return other,
            }
        }
    }

    /// Destroys resource `id` (fails with [`OmniError::Conflict`] while finalizers remain).
    pub async fn destroy<S: Spec>(&self, id: &str, owner: &str) -> Result<(), OmniError> {
        let what = self.what::<S>("destroy", id);
        self.grpc
            .clone()
            .destroy(cosi::DestroyRequest {
                namespace: self.namespace_of::<S>(),
                r#type: self.type_of::<S>(),
                id: id.to_owned(),
                options: Some(cosi::DestroyOptions {
                    owner: owner.to_owned(),
                }),
            })
            .await
            .map_err(|s| OmniError::from_status(what, &s))?;
        Ok(())
    }

    /// Marks resource `id` as tearing down; true if it has no finalizers left.
    #[cfg(feature = "test-support")]
    pub async fn teardown<S: Spec>(&self, id: &str, owner: &str) -> Result<bool, OmniError> {
        let what = self.what::<S>("teardown", id);
        let resp = self
            .grpc
            .clone()
            .teardown(cosi::TeardownRequest {
                namespace: self.namespace_of::<S>(),
                r#type: self.type_of::<S>(),
                id: id.to_owned(),
                options: Some(cosi::TeardownOptions {
                    owner: owner.to_owned(),
                }),
            })
            .await
            .map_err(|s| OmniError::from_status(what, &s))?;
        Ok(resp.into_inner().destroy_ready)
    }

    /// Tears resource `id` down and destroys it once its finalizers are gone (blocks).
    #[cfg(feature = "test-support")]
    pub async fn teardown_and_destroy<S: Spec>(
        &self,
        id: &str,
        owner: &str,
    ) -> Result<(), OmniError> {
        let what = self.what::<S>("teardown-and-destroy", id);
        self.grpc
            .clone()
            .teardown_and_destroy(cosi::TeardownAndDestroyRequest {
                namespace: self.namespace_of::<S>(),
                r#type: self.type_of::<S>(),
                id: id.to_owned(),
                options: Some(cosi::TeardownAndDestroyOptions {
                    owner: owner.to_owned(),
                }),
            })
            .await
            .map_err(|s| OmniError::from_status(what, &s))?;
        Ok(())
    }

    /// The raw gRPC client, for [`super::watch`].
    pub(crate) fn grpc(&self) -> StateClient<SignedChannel> {
        self.grpc.clone()
    }
}
