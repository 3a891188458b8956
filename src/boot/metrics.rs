//! `/metrics`: a registry of counter sources rendered in the Prometheus text format.
//!
//! Each subsystem keeps its own counters (relaxed atomics bumped on its hot path) and
//! renders them itself; the registry only concatenates. The packet core's counters
//! (ProxyDHCP, TFTP) only hand out snapshots: their text is rendered in `net_metrics`.
//! Nothing here allocates per event.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::boot::boot_script::BootTarget;

/// Content type of the Prometheus text exposition format.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Something with counters to expose.
pub(crate) trait PrometheusSource: Send + Sync {
    /// Append complete metric families (`# HELP`, `# TYPE`, samples) to `out`.
    fn render(&self, out: &mut String);
}

impl PrometheusSource for crate::provider::agent::tunnel::Tunnels {
    fn render(&self, out: &mut String) {
        self.render_prometheus(out);
    }
}

impl PrometheusSource for crate::boot::http::server::ConnCounters {
    fn render(&self, out: &mut String) {
        self.render_prometheus(out);
    }
}

impl PrometheusSource for crate::provider::executor::stats::ExecutorStats {
    fn render(&self, out: &mut String) {
        self.render_prometheus(out);
    }
}

/// The sources `/metrics` shows, in registration order.
#[derive(Default, Clone)]
pub(crate) struct Registry {
    sources: Vec<Arc<dyn PrometheusSource>>,
}

impl Registry {
    /// An empty registry.
    pub(crate) fn new() -> Self {
        Registry::default()
    }

    /// Add a source.
    pub(crate) fn register(&mut self, source: Arc<dyn PrometheusSource>) {
        self.sources.push(source);
    }

    /// Render every source.
    pub(crate) fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        for s in &self.sources {
            s.render(&mut out);
        }
        out
    }
}

/// The HTTP routes, as metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// `/ipxe/init.ipxe`
    InitScript,
    /// `/ipxe/boot.ipxe`
    BootScript,
    /// Any other `/ipxe/...`
    OtherScript,
    /// `/tftp/...`
    Files,
    /// `/metrics`
    Metrics,
    /// `/healthz`
    Health,
    /// `/api/v1/machines`
    Machines,
    /// Anything else.
    Other,
}

impl Route {
    const ALL: [Route; 8] = [
        Route::InitScript,
        Route::BootScript,
        Route::OtherScript,
        Route::Files,
        Route::Metrics,
        Route::Health,
        Route::Machines,
        Route::Other,
    ];

    /// Classify a request path (cheap prefix checks, no allocation).
    pub(crate) fn of(path: &str) -> Route {
        match path {
            "/ipxe/init.ipxe" => Route::InitScript,
            "/ipxe/boot.ipxe" => Route::BootScript,
            "/metrics" => Route::Metrics,
            "/healthz" => Route::Health,
            "/api/v1/machines" => Route::Machines,
            p if p.starts_with("/ipxe/") => Route::OtherScript,
            p if p.starts_with("/tftp/") => Route::Files,
            _ => Route::Other,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Route::InitScript => "init_script",
            Route::BootScript => "boot_script",
            Route::OtherScript => "other_script",
            Route::Files => "files",
            Route::Metrics => "metrics",
            Route::Health => "healthz",
            Route::Machines => "machines",
            Route::Other => "other",
        }
    }
}

/// Status codes counted by value; anything else is counted as its class.
const STATUSES: [u16; 10] = [200, 206, 304, 400, 404, 405, 416, 500, 503, 0];
const STATUS_LABELS: [&str; 10] = [
    "200", "206", "304", "400", "404", "405", "416", "500", "503", "other",
];

fn status_index(status: u16) -> usize {
    STATUSES
        .iter()
        .position(|&s| s == status)
        .unwrap_or(STATUSES.len() - 1)
}

/// The HTTP API's own counters.
#[derive(Debug, Default)]
pub(crate) struct HttpCounters {
    requests: [[AtomicU64; STATUSES.len()]; Route::ALL.len()],
    decisions: [AtomicU64; BootTarget::KINDS.len()],
}

impl HttpCounters {
    /// A request answered.
    pub(crate) fn request(&self, route: Route, status: u16) {
        let r = Route::ALL.iter().position(|x| *x == route).unwrap_or(0);
        self.requests[r][status_index(status)].fetch_add(1, Relaxed);
    }

    /// A boot decision made (`kind` is [`BootTarget::kind`]).
    pub(crate) fn decision(&self, kind: &str) {
        if let Some(i) = BootTarget::KINDS.iter().position(|k| *k == kind) {
            self.decisions[i].fetch_add(1, Relaxed);
        }
    }

    /// Requests so far for `route` with `status`.
    #[cfg(test)]
    pub(crate) fn requests(&self, route: Route, status: u16) -> u64 {
        let r = Route::ALL.iter().position(|x| *x == route).unwrap_or(0);
        self.requests[r][status_index(status)].load(Relaxed)
    }
}

impl PrometheusSource for HttpCounters {
    fn render(&self, out: &mut String) {
        out.push_str(
            "# HELP ironboot_http_requests_total HTTP API requests answered, by route and status.\n\
             # TYPE ironboot_http_requests_total counter\n",
        );
        for (route, row) in Route::ALL.iter().zip(&self.requests) {
            for (status, c) in STATUS_LABELS.iter().zip(row) {
                let v = c.load(Relaxed);
                // Only rows that happened: 80 mostly-zero rows would bury the useful ones.
                if v != 0 {
                    let _ = writeln!(
                        out,
                        "ironboot_http_requests_total{{route=\"{}\",status=\"{status}\"}} {v}",
                        route.label()
                    );
                }
            }
        }
        out.push_str(
            "# HELP ironboot_boot_decisions_total Boot scripts decided, by target kind.\n\
             # TYPE ironboot_boot_decisions_total counter\n",
        );
        for (kind, c) in BootTarget::KINDS.iter().zip(&self.decisions) {
            let _ = writeln!(
                out,
                "ironboot_boot_decisions_total{{kind=\"{kind}\"}} {}",
                c.load(Relaxed)
            );
        }
    }
}

/// Test check: every sample line of the Prometheus `text` belongs to a family whose
/// `# TYPE` line comes before it (a histogram's `_bucket`, `_sum` and `_count` samples to
/// their family).
#[cfg(test)]
pub(crate) fn assert_families_declared(text: &str) {
    let mut declared = Vec::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            declared.push(rest.split(' ').next().unwrap_or_default().to_owned());
        } else if !l.starts_with('#') && !l.is_empty() {
            let name = l.split(['{', ' ']).next().unwrap_or_default();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    name.strip_suffix(suffix)
                        .filter(|f| declared.iter().any(|d| d == f))
                })
                .unwrap_or(name);
            assert!(
                declared.iter().any(|d| d == family),
                "{l}: no # TYPE line for {family} before it"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use ironboot_net::proxy::ProxyCounters;

    use super::*;

    #[test]
    fn routes_are_classified_by_path() {
        for (path, route) in [
            ("/ipxe/init.ipxe", Route::InitScript),
            ("/ipxe/boot.ipxe", Route::BootScript),
            ("/ipxe/other.ipxe", Route::OtherScript),
            ("/tftp/snp.efi", Route::Files),
            ("/metrics", Route::Metrics),
            ("/healthz", Route::Health),
            ("/api/v1/machines", Route::Machines),
            ("/", Route::Other),
            ("/tftpx", Route::Other),
        ] {
            assert_eq!(Route::of(path), route, "{path}");
        }
    }

    #[test]
    fn registry_renders_every_source_in_order() {
        let http = Arc::new(HttpCounters::default());
        http.request(Route::BootScript, 200);
        http.request(Route::BootScript, 200);
        http.request(Route::Files, 416);
        http.request(Route::Files, 418);
        http.decision("disk");
        http.decision("nonsense");
        let mut reg = Registry::new();
        reg.register(Arc::new(ProxyCounters::default()));
        reg.register(http.clone());
        let text = reg.render();
        let dhcp = text.find("ironboot_dhcp_requests_total").unwrap();
        let ours = text.find("ironboot_http_requests_total").unwrap();
        assert!(dhcp < ours);
        for line in [
            "ironboot_http_requests_total{route=\"boot_script\",status=\"200\"} 2",
            "ironboot_http_requests_total{route=\"files\",status=\"416\"} 1",
            "ironboot_http_requests_total{route=\"files\",status=\"other\"} 1",
            "ironboot_boot_decisions_total{kind=\"disk\"} 1",
            "ironboot_boot_decisions_total{kind=\"kernel\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert_eq!(http.requests(Route::BootScript, 200), 2);
        crate::boot::metrics::assert_families_declared(&text);
    }
}
