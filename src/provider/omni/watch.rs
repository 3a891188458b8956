//! Watching a resource kind: bootstrap (current contents, then `Bootstrapped`), every
//! later change in order, and a broken stream resumed from the last bookmark, so no
//! event is lost or repeated. If Omni no longer knows the bookmark, the watch starts
//! over with a fresh bootstrap and says so with [`Event::Reset`].

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::time::Duration;

use ironboot_proto::cosi;
use tonic::Streaming;

use super::client::{Client, LabelQuery, OmniError, Resource, from_proto};
use super::resources::Spec;

/// Watch API version: 1 adds `BOOTSTRAPPED` and `ERRORED` events.
const API_VERSION: i32 = 1;
/// Reconnect back-off bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// One change.
#[derive(Debug, Clone, PartialEq)]
pub enum Event<S> {
    Created(Resource<S>),
    Updated {
        /// The previous version, when Omni sends it.
        old: Option<Box<Resource<S>>>,
        new: Resource<S>,
    },
    Destroyed(Resource<S>),
    /// The initial contents have all been delivered.
    Bootstrapped,
    /// The watch started over (its bookmark was lost): forget what was learned, the
    /// whole contents follow again.
    Reset,
}

/// A kind watch that survives broken streams.
pub struct Watch<S> {
    client: Client,
    labels: LabelQuery,
    bookmark: Option<Vec<u8>>,
    stream: Option<Streaming<cosi::WatchResponse>>,
    pending: VecDeque<Event<S>>,
    /// Counts resumptions (for tests and status).
    resumes: u64,
    _spec: PhantomData<S>,
}

impl<S: Spec> Watch<S> {
    /// Watches every resource of type `S` matching `labels`, bootstrapping with the
    /// current contents.
    pub fn new(client: Client, labels: LabelQuery) -> Self {
        Self {
            client,
            labels,
            bookmark: None,
            stream: None,
            pending: VecDeque::new(),
            resumes: 0,
            _spec: PhantomData,
        }
    }

    /// How many times the stream was re-opened after a break.
    pub fn resumes(&self) -> u64 {
        self.resumes
    }

    fn what(&self) -> String {
        format!(
            "watch {}/{} at {}",
            self.client.namespace_of::<S>(),
            self.client.type_of::<S>(),
            self.client.endpoint()
        )
    }

    async fn open(&mut self) -> Result<(), OmniError> {
        let resume = self.bookmark.clone();
        let bootstrap = resume.is_none();
        let req = cosi::WatchRequest {
            namespace: self.client.namespace_of::<S>(),
            r#type: self.client.type_of::<S>(),
            id: None,
            options: Some(cosi::WatchOptions {
                bootstrap_contents: bootstrap,
                tail_events: 0,
                label_query: self.labels.to_proto(),
                id_query: None,
                aggregated: false,
                start_from_bookmark: resume,
                bootstrap_bookmark: bootstrap,
            }),
            api_version: API_VERSION,
        };
        let what = self.what();
        let stream = self
            .client
            .grpc()
            .watch(req)
            .await
            .map_err(|s| OmniError::from_status(what, &s))?
            .into_inner();
        self.stream = Some(stream);
        Ok(())
    }

    /// The next event. Reconnects by itself while Omni is unreachable; returns an error
    /// only for what retrying cannot fix (a rejected signature, permission denied, ...).
    pub async fn next(&mut self) -> Result<Event<S>, OmniError> {
        let mut backoff = BACKOFF_MIN;
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Ok(ev);
            }
            if self.stream.is_none() {
                match self.open().await {
                    Ok(()) => {}
                    Err(OmniError::Conflict { .. }) if self.bookmark.is_some() => {
                        // The bookmark is too old or from another Omni run.
                        tracing::warn!(what = %self.what(), "watch bookmark no longer valid, bootstrapping again");
                        self.bookmark = None;
                        return Ok(Event::Reset);
                    }
                    Err(e) if e.is_unavailable() => {
                        tracing::warn!(error = %e, retry_in = ?backoff, "Omni watch: cannot connect, retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let Some(stream) = self.stream.as_mut() else {
                continue;
            };
            match stream.message().await {
                Ok(Some(resp)) => {
                    backoff = BACKOFF_MIN;
                    for ev in resp.event {
                        self.accept(ev)?;
                    }
                }
                Ok(None) | Err(_) => {
                    // Broken or ended stream: resume from the bookmark (or bootstrap
                    // again if none was received yet).
                    self.stream = None;
                    self.resumes += 1;
                    if self.bookmark.is_none() {
                        self.pending.clear();
                        self.pending.push_back(Event::Reset);
                    }
                    tracing::info!(what = %self.what(), "watch stream broken, resuming");
                }
            }
        }
    }

    fn accept(&mut self, ev: cosi::Event) -> Result<(), OmniError> {
        let what = self.what();
        if let Some(b) = ev.bookmark.filter(|b| !b.is_empty()) {
            self.bookmark = Some(b);
        }
        let decode = |r: Option<cosi::Resource>| -> Result<Resource<S>, OmniError> {
            let r = r.ok_or_else(|| OmniError::Decode {
                what: what.clone(),
                why: "event without resource".into(),
            })?;
            from_proto(&what, r)
        };
        let event = match cosi::EventType::try_from(ev.event_type) {
            Ok(cosi::EventType::Created) => Event::Created(decode(ev.resource)?),
            Ok(cosi::EventType::Updated) => Event::Updated {
                old: ev
                    .old
                    .map(|o| from_proto(&what, o).map(Box::new))
                    .transpose()?,
                new: decode(ev.resource)?,
            },
            Ok(cosi::EventType::Destroyed) => Event::Destroyed(decode(ev.resource)?),
            Ok(cosi::EventType::Bootstrapped) => Event::Bootstrapped,
            Ok(cosi::EventType::Noop) => return Ok(()),
            Ok(cosi::EventType::Errored) => {
                return Err(OmniError::Rpc {
                    what,
                    code: tonic::Code::Internal,
                    message: ev.error.unwrap_or_default(),
                });
            }
            Err(_) => {
                return Err(OmniError::Decode {
                    what,
                    why: format!("unknown event type {}", ev.event_type),
                });
            }
        };
        self.pending.push_back(event);
        Ok(())
    }
}
