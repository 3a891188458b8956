//! `/metrics`, `/healthz`, `/api/v1/machines`.

use std::collections::BTreeSet;
use std::net::IpAddr;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tracing::error;

use super::{AppState, text};
use crate::metrics::CONTENT_TYPE;
use crate::store::{MachineRecord, format_time};

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
        }
    }
}

pub(super) async fn machines(State(s): State<AppState>) -> Response {
    let json = s.api.machines.with_all(|all| {
        let list: Vec<MachineJson<'_>> = all.map(MachineJson::from).collect();
        serde_json::to_vec(&list)
    });
    match json {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response(),
        Err(e) => {
            error!(error = %e, "encoding the machine list");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("internal error: encoding the machine list: {e}\n"),
            )
        }
    }
}
