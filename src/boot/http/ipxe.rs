//! `/ipxe/init.ipxe` and `/ipxe/boot.ipxe`.

use std::net::SocketAddr;

use axum::Extension;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use tracing::{debug, info};

use super::{AppState, text};
use crate::boot::boot_script::{Answer, Rendered};
use crate::boot::machine::{Arch, MacAddr, MachineQuery, Uuid, clean_text};
use crate::boot::store::{Sighting, now_ms};

pub(super) async fn init(State(s): State<AppState>) -> Response {
    text(StatusCode::OK, s.api.init_script.clone())
}

/// The query the init script sends. Unknown parameters are ignored: old iPXE releases
/// decode `%26` in a value back to `&`, which can split a serial number into two.
#[derive(Debug, Default, Deserialize)]
pub(super) struct BootParams {
    uuid: Option<String>,
    mac: Option<String>,
    arch: Option<String>,
    serial: Option<String>,
    hostname: Option<String>,
    domain: Option<String>,
}

/// Longest value echoed in an error message.
const MAX_ECHO: usize = 64;

fn echo(value: &str) -> String {
    let cut: String = value.chars().take(MAX_ECHO).collect();
    format!("{cut:?}")
}

/// Validate the query. The message of an `Err` is the 400 body.
pub(super) fn machine_query(p: BootParams) -> Result<MachineQuery, String> {
    let present = |v: &Option<String>| {
        v.as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let uuid = match present(&p.uuid) {
        None => None,
        Some(u) => {
            let u: Uuid = u.parse().map_err(|e| format!("bad uuid: {e}"))?;
            // A placeholder UUID is shared by many boards: identify by MAC instead.
            (!u.is_placeholder()).then_some(u)
        }
    };
    let mac = match present(&p.mac) {
        None => None,
        Some(m) => Some(m.parse::<MacAddr>().map_err(|e| format!("bad mac: {e}"))?),
    };
    if uuid.is_none() && mac.is_none() {
        return Err(
            "need a uuid or a mac to identify the machine (the init script sends \
                    uuid=${uuid}&mac=${netX/mac:hexhyp}); this request had neither, or only a \
                    placeholder uuid"
                .to_owned(),
        );
    }
    let arch = match present(&p.arch) {
        // iPXE builds without ${buildarch} are all x86; the Go provider defaults the same.
        None => Arch::Amd64,
        Some(a) => Arch::from_buildarch(&a).ok_or_else(|| {
            format!(
                "unknown arch {}: ironboot boots x86_64 and i386 (as amd64) and arm64",
                echo(&a)
            )
        })?,
    };
    Ok(MachineQuery {
        uuid,
        mac,
        arch,
        serial: p.serial.as_deref().and_then(clean_text),
        hostname: p.hostname.as_deref().and_then(clean_text),
        domain: p.domain.as_deref().and_then(clean_text),
    })
}

pub(super) async fn boot(
    State(s): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    query: Result<Query<BootParams>, QueryRejection>,
) -> Response {
    let ip = peer.map(|Extension(ConnectInfo(a))| a.ip());
    let params = match query {
        Ok(Query(p)) => p,
        Err(e) => {
            debug!(?ip, error = %e.body_text(), "bad boot.ipxe query");
            return text(
                StatusCode::BAD_REQUEST,
                format!("bad query: {}\n", e.body_text()),
            );
        }
    };
    let who = match machine_query(params) {
        Ok(w) => w,
        Err(msg) => {
            debug!(?ip, error = %msg, "bad boot.ipxe request");
            return text(StatusCode::BAD_REQUEST, msg + "\n");
        }
    };
    let Answer {
        kind,
        rendered,
        entry,
    } = s.api.decider.answer(&who, s.api.disk_method).await;
    s.api.decider.booted(&who, ip);
    s.http.decision(kind);
    // One line per machine boot: useful to operators, and bounded by the machines' boots.
    info!(
        machine = %who.machine_id(),
        mac = who.mac.map(tracing::field::display),
        arch = %who.arch,
        ip = ip.map(tracing::field::display),
        decision = kind,
        inventory_entry = entry.map(tracing::field::display),
        "boot script"
    );
    let response = match rendered {
        Rendered::Script(script) => text(StatusCode::OK, script),
        Rendered::NotFound(msg) => text(StatusCode::NOT_FOUND, msg),
    };
    s.api.recorder.record(Sighting {
        query: who,
        ip,
        decision: kind,
        entry,
        at_ms: now_ms(),
    });
    response
}
