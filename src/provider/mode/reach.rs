//! Whether Omni answers: a probe every [`PROBE_INTERVAL`] (a read of the provider's own
//! `InfraProviderStatus`, bounded by [`PROBE_TIMEOUT`]), shown on `/healthz` and as the
//! `ironboot_omni_reachable` gauge.
//!
//! An outage changes nothing else: boots are answered from the state the watches cached,
//! the control loop retries its steps (each recorded in Omni before or after it is taken,
//! so none is repeated) and the watches resume from their bookmarks. When Omni answers
//! again the probe sends the health heartbeat at once, so Omni shows the provider healthy
//! without waiting for the heartbeat's next tick.
//!
//! `/healthz` stays `200` during an outage, with `omni: unreachable since <time>` in its
//! body: ironboot keeps serving every boot it can, and a restart would not bring Omni
//! back; monitoring reads the line or the gauge.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use ironboot_proto::omni::InfraProviderStatusSpec;
use tracing::{info, warn};

use crate::provider::omni::client::Client;

/// How often Omni is probed.
pub(crate) const PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// How long a probe may take before Omni counts as unreachable.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest `/healthz` body the layer extends (the route's own is a few bytes).
const MAX_HEALTH_BODY: usize = 4096;

#[derive(Debug, Default)]
struct Seen {
    /// At least one probe finished.
    probed: bool,
    /// Since when Omni does not answer (wall clock, for people), and why.
    unreachable: Option<(SystemTime, String)>,
}

/// What the probe last saw; shared by the probe task, `/healthz` and `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct OmniReachability {
    seen: Mutex<Seen>,
    outages: AtomicU64,
}

/// A change the probe reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transition {
    /// Nothing changed.
    None,
    /// Omni stopped answering.
    Lost,
    /// Omni answers again (or for the first time).
    Back,
}

impl OmniReachability {
    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A probe got an answer.
    pub(crate) fn answered(&self) -> Transition {
        let mut s = self.seen();
        let first = !s.probed;
        s.probed = true;
        match s.unreachable.take() {
            Some(_) => Transition::Back,
            None if first => Transition::Back,
            None => Transition::None,
        }
    }

    /// A probe got no answer at `now`, for `why`.
    pub(crate) fn unanswered(&self, now: SystemTime, why: String) -> Transition {
        let mut s = self.seen();
        s.probed = true;
        match &mut s.unreachable {
            Some((_, reason)) => {
                *reason = why;
                Transition::None
            }
            None => {
                s.unreachable = Some((now, why));
                self.outages.fetch_add(1, Relaxed);
                Transition::Lost
            }
        }
    }

    /// Whether the last probe got an answer (`None` before the first).
    pub(crate) fn reachable(&self) -> Option<bool> {
        let s = self.seen();
        s.probed.then_some(s.unreachable.is_none())
    }

    /// The `/healthz` line: `omni: reachable`, `omni: unreachable since <RFC 3339> (<n>s):
    /// <reason>` or `omni: not probed yet`.
    pub(crate) fn health_line(&self, now: SystemTime) -> String {
        let s = self.seen();
        match (&s.unreachable, s.probed) {
            (Some((since, why)), _) => {
                let ms = since
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
                let secs = now.duration_since(*since).map_or(0, |d| d.as_secs());
                format!(
                    "omni: unreachable since {} ({secs}s): {why}\n",
                    crate::boot::store::format_time(ms)
                )
            }
            (None, true) => "omni: reachable\n".to_owned(),
            (None, false) => "omni: not probed yet\n".to_owned(),
        }
    }

    /// Appends the metric families to `out` (Prometheus text format).
    pub(crate) fn render_prometheus(&self, out: &mut String) {
        let reachable = match self.reachable() {
            Some(true) => 1,
            _ => 0,
        };
        let _ = write!(
            out,
            "# HELP ironboot_omni_reachable Whether Omni answered ironboot's last probe (0 \
             also before the first one).\n\
             # TYPE ironboot_omni_reachable gauge\n\
             ironboot_omni_reachable {reachable}\n\
             # HELP ironboot_omni_outages_total Times Omni stopped answering ironboot's probes.\n\
             # TYPE ironboot_omni_outages_total counter\n\
             ironboot_omni_outages_total {}\n",
            self.outages.load(Relaxed)
        );
    }
}

impl crate::boot::metrics::PrometheusSource for OmniReachability {
    fn render(&self, out: &mut String) {
        self.render_prometheus(out);
    }
}

/// Probes Omni through `client` every `interval` for ever; when Omni answers again, kicks
/// the heartbeat (`heartbeat`: a send wakes it).
pub(crate) async fn probe(
    client: Client,
    reach: std::sync::Arc<OmniReachability>,
    heartbeat: tokio::sync::watch::Sender<String>,
    interval: Duration,
) {
    let id = client.provider_id().to_owned();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let outcome = tokio::time::timeout(
            PROBE_TIMEOUT,
            client.get_opt::<InfraProviderStatusSpec>(&id),
        )
        .await;
        let why = match outcome {
            Err(_) => Some(format!("no answer within {PROBE_TIMEOUT:?}")),
            Ok(Err(e)) if e.is_unavailable() => Some(e.to_string()),
            // Any answer, an error one included, is Omni answering.
            Ok(_) => None,
        };
        match why {
            Some(why) => {
                if reach.unanswered(SystemTime::now(), why.clone()) == Transition::Lost {
                    warn!(endpoint = client.endpoint(), error = %why, "Omni unreachable: boots are answered from the cached state");
                }
            }
            None => {
                if reach.answered() == Transition::Back {
                    info!(endpoint = client.endpoint(), "Omni reachable");
                    heartbeat.send_modify(|_| {});
                }
            }
        }
    }
}

/// Middleware: `/healthz` answers as the boot server does, with the [`OmniReachability::health_line`]
/// appended.
pub(crate) async fn healthz_layer(
    State(reach): State<std::sync::Arc<OmniReachability>>,
    req: Request,
    next: Next,
) -> Response {
    let health = req.uri().path() == "/healthz";
    let response = next.run(req).await;
    if !health {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let mut bytes = axum::body::to_bytes(body, MAX_HEALTH_BODY)
        .await
        .map(|b| b.to_vec())
        .unwrap_or_default();
    bytes.extend_from_slice(reach.health_line(SystemTime::now()).as_bytes());
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_seen_once_reported_and_ended() {
        let r = OmniReachability::default();
        assert_eq!(r.reachable(), None);
        assert_eq!(
            r.health_line(SystemTime::UNIX_EPOCH),
            "omni: not probed yet\n"
        );
        assert_eq!(r.answered(), Transition::Back);
        assert_eq!(r.answered(), Transition::None);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(r.unanswered(t0, "refused".into()), Transition::Lost);
        assert_eq!(
            r.unanswered(t0 + Duration::from_secs(5), "reset".into()),
            Transition::None
        );
        assert_eq!(r.reachable(), Some(false));
        assert_eq!(
            r.health_line(t0 + Duration::from_secs(42)),
            "omni: unreachable since 2027-01-15T08:00:00.000Z (42s): reset\n"
        );
        let mut out = String::new();
        r.render_prometheus(&mut out);
        assert!(out.contains("\nironboot_omni_reachable 0\n"), "{out}");
        assert!(out.contains("\nironboot_omni_outages_total 1\n"), "{out}");
        assert_eq!(r.answered(), Transition::Back);
        assert_eq!(r.health_line(t0), "omni: reachable\n");
        let mut out = String::new();
        r.render_prometheus(&mut out);
        assert!(out.contains("\nironboot_omni_reachable 1\n"), "{out}");
    }
}
