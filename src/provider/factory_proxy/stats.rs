//! The proxy's counters for `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::path::Kind;

/// How a request was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Served {
    /// From the cache (a complete image, or a script fetched moments ago).
    Hit,
    /// It started the upstream fetch.
    Miss,
    /// It joined a fetch another request had started.
    Shared,
    /// An error answer (upstream failure, bad path).
    Error,
}

const RESULTS: [(Served, &str); 4] = [
    (Served::Hit, "hit"),
    (Served::Miss, "miss"),
    (Served::Shared, "shared"),
    (Served::Error, "error"),
];

/// Counters of the factory proxy (relaxed atomics).
#[derive(Debug, Default)]
pub(crate) struct FactoryProxyStats {
    /// `[kind][result]`, kind 0 script, 1 image.
    requests: [[AtomicU64; 4]; 2],
    /// Upstream fetches started, by kind.
    fetches: [AtomicU64; 2],
    /// Requests for schematics ironboot does not vouch for, by kind.
    unknown: [AtomicU64; 2],
    upstream_errors: AtomicU64,
    upstream_bytes: AtomicU64,
    served_bytes: AtomicU64,
    cache_bytes: AtomicU64,
    cache_entries: AtomicU64,
    evictions: AtomicU64,
}

fn kind_index(kind: Kind) -> usize {
    match kind {
        Kind::Script => 0,
        Kind::Image => 1,
    }
}

fn result_index(served: Served) -> usize {
    match served {
        Served::Hit => 0,
        Served::Miss => 1,
        Served::Shared => 2,
        Served::Error => 3,
    }
}

impl FactoryProxyStats {
    pub(crate) fn request(&self, kind: Kind, served: Served) {
        self.requests[kind_index(kind)][result_index(served)].fetch_add(1, Relaxed);
    }

    /// Requests of `kind` served as `served` so far.
    #[cfg(test)]
    pub(crate) fn requests(&self, kind: Kind, served: Served) -> u64 {
        self.requests[kind_index(kind)][result_index(served)].load(Relaxed)
    }

    /// A request for a schematic ironboot does not vouch for (answered 404 unfetched).
    pub(crate) fn unknown_schematic(&self, kind: Kind) {
        self.unknown[kind_index(kind)].fetch_add(1, Relaxed);
    }

    /// Requests of `kind` refused for an unknown schematic so far.
    #[cfg(test)]
    pub(crate) fn unknown_schematics(&self, kind: Kind) -> u64 {
        self.unknown[kind_index(kind)].load(Relaxed)
    }

    pub(crate) fn fetch_started(&self, kind: Kind) {
        self.fetches[kind_index(kind)].fetch_add(1, Relaxed);
    }

    /// Upstream fetches of `kind` started so far.
    #[cfg(test)]
    pub(crate) fn fetches(&self, kind: Kind) -> u64 {
        self.fetches[kind_index(kind)].load(Relaxed)
    }

    pub(crate) fn upstream_error(&self) {
        self.upstream_errors.fetch_add(1, Relaxed);
    }

    /// Failed upstream fetches so far.
    #[cfg(test)]
    pub(crate) fn upstream_errors(&self) -> u64 {
        self.upstream_errors.load(Relaxed)
    }

    pub(crate) fn upstream_bytes(&self, n: u64) {
        self.upstream_bytes.fetch_add(n, Relaxed);
    }

    pub(crate) fn served_bytes(&self, n: u64) {
        self.served_bytes.fetch_add(n, Relaxed);
    }

    /// Image bytes sent so far.
    #[cfg(test)]
    pub(crate) fn served_bytes_total(&self) -> u64 {
        self.served_bytes.load(Relaxed)
    }

    /// The cache's size now.
    pub(crate) fn set_cache(&self, bytes: u64, entries: u64) {
        self.cache_bytes.store(bytes, Relaxed);
        self.cache_entries.store(entries, Relaxed);
    }

    /// Bytes in the cache now.
    #[cfg(test)]
    pub(crate) fn cache_bytes(&self) -> u64 {
        self.cache_bytes.load(Relaxed)
    }

    pub(crate) fn evicted(&self, n: u64) {
        self.evictions.fetch_add(n, Relaxed);
    }

    /// Cache entries evicted so far.
    #[cfg(test)]
    pub(crate) fn evictions(&self) -> u64 {
        self.evictions.load(Relaxed)
    }

    /// Append the metric families to `out` (Prometheus text format).
    pub(crate) fn render_prometheus(&self, out: &mut String) {
        out.push_str(
            "# HELP ironboot_factory_proxy_requests_total Requests for Image Factory PXE \
             scripts and images through ironboot, by how they were served (hit: cache, \
             miss: fetched upstream, shared: joined a fetch under way, error).\n\
             # TYPE ironboot_factory_proxy_requests_total counter\n",
        );
        for (k, kind) in ["script", "image"].iter().enumerate() {
            for (served, label) in RESULTS {
                let _ = writeln!(
                    out,
                    "ironboot_factory_proxy_requests_total{{kind=\"{kind}\",result=\"{label}\"}} {}",
                    self.requests[k][result_index(served)].load(Relaxed)
                );
            }
        }
        out.push_str(
            "# HELP ironboot_factory_proxy_upstream_fetches_total Fetches from the Image \
             Factory started.\n\
             # TYPE ironboot_factory_proxy_upstream_fetches_total counter\n",
        );
        for (k, kind) in ["script", "image"].iter().enumerate() {
            let _ = writeln!(
                out,
                "ironboot_factory_proxy_upstream_fetches_total{{kind=\"{kind}\"}} {}",
                self.fetches[k].load(Relaxed)
            );
        }
        out.push_str(
            "# HELP ironboot_factory_proxy_unknown_schematic_total Requests for a schematic \
             ironboot did not create (nor has cached), answered 404 without asking the Image \
             Factory.\n\
             # TYPE ironboot_factory_proxy_unknown_schematic_total counter\n",
        );
        for (k, kind) in ["script", "image"].iter().enumerate() {
            let _ = writeln!(
                out,
                "ironboot_factory_proxy_unknown_schematic_total{{kind=\"{kind}\"}} {}",
                self.unknown[k].load(Relaxed)
            );
        }
        let _ = write!(
            out,
            "# HELP ironboot_factory_proxy_upstream_errors_total Fetches from the Image \
             Factory that failed (unreachable, error status, interrupted, disk).\n\
             # TYPE ironboot_factory_proxy_upstream_errors_total counter\n\
             ironboot_factory_proxy_upstream_errors_total {}\n\
             # HELP ironboot_factory_proxy_upstream_bytes_total Image bytes received from \
             the Image Factory.\n\
             # TYPE ironboot_factory_proxy_upstream_bytes_total counter\n\
             ironboot_factory_proxy_upstream_bytes_total {}\n\
             # HELP ironboot_factory_proxy_served_bytes_total Image bytes sent to machines.\n\
             # TYPE ironboot_factory_proxy_served_bytes_total counter\n\
             ironboot_factory_proxy_served_bytes_total {}\n\
             # HELP ironboot_factory_proxy_cache_bytes Bytes of complete images in the cache.\n\
             # TYPE ironboot_factory_proxy_cache_bytes gauge\n\
             ironboot_factory_proxy_cache_bytes {}\n\
             # HELP ironboot_factory_proxy_cache_entries Complete images in the cache.\n\
             # TYPE ironboot_factory_proxy_cache_entries gauge\n\
             ironboot_factory_proxy_cache_entries {}\n\
             # HELP ironboot_factory_proxy_cache_evictions_total Images removed from the \
             cache to keep it under its size bound.\n\
             # TYPE ironboot_factory_proxy_cache_evictions_total counter\n\
             ironboot_factory_proxy_cache_evictions_total {}\n",
            self.upstream_errors.load(Relaxed),
            self.upstream_bytes.load(Relaxed),
            self.served_bytes.load(Relaxed),
            self.cache_bytes.load(Relaxed),
            self.cache_entries.load(Relaxed),
            self.evictions.load(Relaxed),
        );
    }
}

impl crate::boot::metrics::PrometheusSource for FactoryProxyStats {
    fn render(&self, out: &mut String) {
        self.render_prometheus(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_its_counts() {
        let s = FactoryProxyStats::default();
        s.request(Kind::Image, Served::Miss);
        s.request(Kind::Image, Served::Shared);
        s.request(Kind::Image, Served::Shared);
        s.request(Kind::Script, Served::Error);
        s.fetch_started(Kind::Image);
        s.unknown_schematic(Kind::Script);
        s.upstream_error();
        s.upstream_bytes(100);
        s.served_bytes(300);
        s.set_cache(100, 1);
        s.evicted(2);
        let mut out = String::new();
        s.render_prometheus(&mut out);
        for line in [
            "ironboot_factory_proxy_requests_total{kind=\"image\",result=\"miss\"} 1",
            "ironboot_factory_proxy_requests_total{kind=\"image\",result=\"shared\"} 2",
            "ironboot_factory_proxy_requests_total{kind=\"image\",result=\"hit\"} 0",
            "ironboot_factory_proxy_requests_total{kind=\"script\",result=\"error\"} 1",
            "ironboot_factory_proxy_upstream_fetches_total{kind=\"image\"} 1",
            "ironboot_factory_proxy_upstream_fetches_total{kind=\"script\"} 0",
            "ironboot_factory_proxy_unknown_schematic_total{kind=\"script\"} 1",
            "ironboot_factory_proxy_unknown_schematic_total{kind=\"image\"} 0",
            "ironboot_factory_proxy_upstream_errors_total 1",
            "ironboot_factory_proxy_upstream_bytes_total 100",
            "ironboot_factory_proxy_served_bytes_total 300",
            "ironboot_factory_proxy_cache_bytes 100",
            "ironboot_factory_proxy_cache_entries 1",
            "ironboot_factory_proxy_cache_evictions_total 2",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} missing:\n{out}");
        }
        crate::boot::metrics::assert_families_declared(&out);
    }
}
