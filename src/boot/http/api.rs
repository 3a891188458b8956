//! `/metrics`, `/healthz`, `/api/v1/machines` (paginated and streamed).

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio_stream::Stream;
use tracing::error;

use super::{AppState, text};
use crate::boot::metrics::CONTENT_TYPE;
use crate::boot::store::{MachineRecord, Machines, format_time};

pub(super) async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
        s.api.metrics.render(),
    )
        .into_response()
}

pub(super) async fn healthz() -> Response {
    text(StatusCode::OK, "ok\n")
}

/// A machine as the API shows it: times in RFC 3339.
#[derive(Serialize)]
struct MachineJson<'a> {
    id: &'a str,
    uuid: Option<&'a str>,
    macs: &'a BTreeSet<String>,
    arch: &'a str,
    last_ip: Option<IpAddr>,
    serial: Option<&'a str>,
    hostname: Option<&'a str>,
    domain: Option<&'a str>,
    first_seen: String,
    last_seen: String,
    last_boot: &'a str,
    boots: u64,
    /// The inventory entry its last boot script came from: the UUID or MAC it matched,
    /// `default`, or `null` (no entry matched, or Omni mode).
    inventory_entry: Option<&'a str>,
}

impl<'a> From<&'a MachineRecord> for MachineJson<'a> {
    fn from(r: &'a MachineRecord) -> Self {
        MachineJson {
            id: &r.id,
            uuid: r.uuid.as_deref(),
            macs: &r.macs,
            arch: &r.arch,
            last_ip: r.last_ip,
            serial: r.serial.as_deref(),
            hostname: r.hostname.as_deref(),
            domain: r.domain.as_deref(),
            first_seen: format_time(r.first_seen_ms),
            last_seen: format_time(r.last_seen_ms),
            last_boot: &r.last_boot,
            boots: r.boots,
            inventory_entry: r.inventory_entry.as_deref(),
        }
    }
}

/// Machines per page when the request names no `limit`: small fleets get the whole list
/// in one answer.
pub(crate) const DEFAULT_LIMIT: usize = 1000;
/// Largest `limit` a request may ask for.
pub(crate) const MAX_LIMIT: usize = 10_000;
/// Records serialised per body chunk: a client that does not read holds at most this many
/// in the server's memory (the rest stay in the mirror).
const CHUNK_RECORDS: usize = 64;
/// Longest `after` cursor accepted (machine IDs are at most 36 bytes).
const MAX_CURSOR: usize = 64;

/// The query of `GET /api/v1/machines`.
#[derive(Debug, Default, Deserialize)]
pub(super) struct ListParams {
    limit: Option<String>,
    after: Option<String>,
}

/// The page asked for: at most `limit` machines with IDs after `after`.
fn page(p: ListParams) -> Result<(usize, Option<String>), String> {
    let limit = match p.limit.as_deref().map(str::trim) {
        None | Some("") => DEFAULT_LIMIT,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                let cut: String = v.chars().take(MAX_CURSOR).collect();
                return Err(format!(
                    "bad limit {cut:?}: must be a number from 1 to {MAX_LIMIT}"
                ));
            }
        },
    };
    let after = match p.after {
        Some(a) if a.len() > MAX_CURSOR => {
            return Err(format!(
                "bad after: longer than {MAX_CURSOR} bytes; it is the last id of the previous page"
            ));
        }
        Some(a) if a.is_empty() => None,
        a => a,
    };
    Ok((limit, after))
}

/// `value` for a URL query: unreserved characters as they are, the rest percent-encoded.
fn query_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The machines in ID order, a page at a time (`?limit=N&after=ID`); the body is a JSON
/// array and, when more machines follow, `Link: <...>; rel="next"` names the next page.
/// The body is produced in chunks of [`CHUNK_RECORDS`] records, each read from the mirror
/// when the connection can take it, so a whole list is never one buffer and a client that
/// does not read costs one chunk.
pub(super) async fn machines(
    State(s): State<AppState>,
    query: Result<Query<ListParams>, QueryRejection>,
) -> Response {
    let params = match query {
        Ok(Query(p)) => p,
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("bad query: {}\n", e.body_text()),
            );
        }
    };
    let (limit, after) = match page(params) {
        Ok(p) => p,
        Err(msg) => return text(StatusCode::BAD_REQUEST, msg + "\n"),
    };
    let end = s.api.machines.page_end(after.as_deref(), limit);
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some((last, true)) = &end {
        let link = format!(
            "</api/v1/machines?limit={limit}&after={}>; rel=\"next\"",
            query_escape(last)
        );
        if let Ok(v) = HeaderValue::from_str(&link) {
            headers.insert(header::LINK, v);
        }
    }
    let chunks = Chunks {
        machines: s.api.machines.clone(),
        cursor: after,
        through: end.map(|(last, _)| last),
        started: false,
        done: false,
    };
    (headers, Body::from_stream(chunks)).into_response()
}

/// The body of one page: `[`, the records in chunks, `]`.
struct Chunks {
    machines: Machines,
    /// The last ID sent (or the page's `after`).
    cursor: Option<String>,
    /// The page's last ID; `None` for an empty page.
    through: Option<String>,
    started: bool,
    done: bool,
}

impl Chunks {
    fn next_chunk(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        let mut out = Vec::with_capacity(16 * 1024);
        if !self.started {
            out.push(b'[');
        }
        let mut first = !self.started;
        self.started = true;
        let mut failed = None;
        let visited = match &self.through {
            Some(through) => {
                self.machines
                    .visit(self.cursor.as_deref(), through, CHUNK_RECORDS, |r| {
                        if !first {
                            out.push(b',');
                        }
                        first = false;
                        if let Err(e) = serde_json::to_writer(&mut out, &MachineJson::from(r)) {
                            failed = Some(e);
                        }
                    })
            }
            None => None,
        };
        if let Some(e) = failed {
            // Plain owned data always serialises; should it not, end the body short (the
            // client sees invalid JSON) rather than send a wrong list.
            error!(error = %e, "encoding the machine list");
            self.done = true;
            return None;
        }
        let at_end = match (&visited, &self.through) {
            (Some(last), Some(through)) => last == through,
            _ => true,
        };
        if visited.is_some() {
            self.cursor = visited;
        }
        if at_end {
            out.push(b']');
            self.done = true;
        }
        Some(Bytes::from(out))
    }
}

impl Stream for Chunks {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Poll::Ready(self.get_mut().next_chunk().map(Ok))
    }
}
