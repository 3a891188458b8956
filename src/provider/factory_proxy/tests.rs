//! The proxy against a stand-in of the factory's PXE front end on 127.0.0.1 (the real one
//! is on the internet): `GET /pxe/<s>/<v>/<asset>` answers the factory's `standard.ipxe`
//! with its own address as the external PXE URL, `GET /image/<s>/<v>/<name>` a
//! multi-megabyte image in slow chunks (so concurrent requests overlap a download), and it
//! counts what it is asked, can be down, or can break image transfers off halfway.
//! ironboot's router is driven in-process.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path as AxPath, State};
use axum::http::{HeaderMap, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tower::ServiceExt as _;

use super::*;
use crate::provider::image_factory::tests::Served as Listening;

const ADVERTISE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
const PORT: u16 = 50042;
const IMAGE_LEN: usize = 3 * 1024 * 1024 + 12345;
const CHUNK: usize = 64 * 1024;

fn schematic() -> String {
    "c0ffee00".repeat(8)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Up,
    /// 503 for everything.
    Down,
    /// Images: headers with the full length, half the bytes, then the connection breaks.
    BreakImages,
    /// Images: the answer starts after [`SLOW_HEADERS`].
    SlowHeaders,
    /// Images: no `Content-Length` (a chunked answer).
    Unannounced,
}

/// How long the stand-in takes to answer in [`Mode::SlowHeaders`].
const SLOW_HEADERS: Duration = Duration::from_millis(2500);

/// Holds image transfers halfway until opened, so a test knows every request joined a
/// download under way.
#[derive(Clone, Default)]
struct Gate(Arc<Mutex<Option<Arc<tokio::sync::Notify>>>>);

impl Gate {
    fn close(&self) {
        *self.0.lock().unwrap() = Some(Arc::new(tokio::sync::Notify::new()));
    }

    fn open(&self) {
        if let Some(n) = self.0.lock().unwrap().take() {
            // A permit for a transfer not waiting yet.
            n.notify_one();
        }
    }

    fn current(&self) -> Option<Arc<tokio::sync::Notify>> {
        self.0.lock().unwrap().clone()
    }
}

/// Poll `cond` until it holds (at most 20 s).
async fn until(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..2000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting until {what}");
}

#[derive(Clone)]
struct Factory {
    mode: Arc<Mutex<Mode>>,
    script_gets: Arc<AtomicU64>,
    image_gets: Arc<Mutex<HashMap<String, u64>>>,
    uris: Arc<Mutex<Vec<String>>>,
    gate: Gate,
}

/// The image's bytes: different for every path, the same every time.
fn image_bytes(path: &str) -> Bytes {
    let mut seed = path.bytes().fold(0x9e37_79b9_7f4a_7c15u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let mut out = Vec::with_capacity(IMAGE_LEN);
    while out.len() < IMAGE_LEN {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(IMAGE_LEN);
    Bytes::from(out)
}

async fn pxe(
    State(f): State<Factory>,
    AxPath((s, v, n)): AxPath<(String, String, String)>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    f.uris.lock().unwrap().push(uri.to_string());
    if *f.mode.lock().unwrap() == Mode::Down {
        return (StatusCode::SERVICE_UNAVAILABLE, "down").into_response();
    }
    f.script_gets.fetch_add(1, Ordering::SeqCst);
    let host = headers.get(header::HOST).unwrap().to_str().unwrap();
    let arch = n.strip_prefix("metal-").unwrap();
    format!(
        "#!ipxe\n\nkernel http://{host}/image/{s}/{v}/kernel-{arch} talos.platform=metal \
         console=ttyS0 talos.config=http://10.0.0.1:50042/config?u=${{uuid}} init_on_alloc=1\n\
         initrd http://{host}/image/{s}/{v}/initramfs-{arch}.xz\nboot\n"
    )
    .into_response()
}

async fn image(State(f): State<Factory>, uri: axum::http::Uri) -> Response {
    f.uris.lock().unwrap().push(uri.to_string());
    let mode = *f.mode.lock().unwrap();
    if mode == Mode::Down {
        return (StatusCode::SERVICE_UNAVAILABLE, "down").into_response();
    }
    if mode == Mode::SlowHeaders {
        tokio::time::sleep(SLOW_HEADERS).await;
    }
    let path = uri.path().to_owned();
    *f.image_gets
        .lock()
        .unwrap()
        .entry(path.clone())
        .or_default() += 1;
    let bytes = image_bytes(&path);
    let mut gate = f.gate.current();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(2);
    tokio::spawn(async move {
        let mut pos = 0;
        while pos < bytes.len() {
            if pos >= bytes.len() / 2 {
                if let Some(g) = gate.take() {
                    g.notified().await;
                }
                if mode == Mode::BreakImages {
                    let _ = tx
                        .send(Err(std::io::Error::other("stand-in breaks off")))
                        .await;
                    return;
                }
            }
            let end = (pos + CHUNK).min(bytes.len());
            if tx.send(Ok(bytes.slice(pos..end))).await.is_err() {
                return;
            }
            pos = end;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    if mode == Mode::Unannounced {
        return body.into_response();
    }
    ([(header::CONTENT_LENGTH, IMAGE_LEN.to_string())], body).into_response()
}

/// `POST /schematics`: every schematic is [`schematic`] here (the proxy does not care
/// what it holds, only who created it).
async fn create_schematic(State(f): State<Factory>, uri: axum::http::Uri) -> Response {
    f.uris.lock().unwrap().push(uri.to_string());
    (
        StatusCode::CREATED,
        format!("{{\"id\": \"{}\"}}", schematic()),
    )
        .into_response()
}

struct StandIn {
    listening: Listening,
    f: Factory,
}

impl StandIn {
    async fn start() -> Self {
        let f = Factory {
            mode: Arc::new(Mutex::new(Mode::Up)),
            script_gets: Arc::default(),
            image_gets: Arc::default(),
            uris: Arc::default(),
            gate: Gate::default(),
        };
        let router = Router::new()
            .route("/schematics", axum::routing::post(create_schematic))
            .route("/pxe/{s}/{v}/{n}", get(pxe))
            .route("/image/{s}/{v}/{n}", get(image))
            .with_state(f.clone());
        Self {
            listening: Listening::start(router).await,
            f,
        }
    }

    fn settings(&self) -> ImageFactorySettings {
        ImageFactorySettings {
            base_url: "https://factory.example.test".into(),
            pxe_base_url: format!("http://{}", self.listening.addr),
            agent_mode_talos_version: "v1.13.7".into(),
            secure_boot: false,
        }
    }

    fn set(&self, mode: Mode) {
        *self.f.mode.lock().unwrap() = mode;
    }

    fn image_gets(&self, version: &str, name: &str) -> u64 {
        let path = format!("/image/{}/{version}/{name}", schematic());
        self.f
            .image_gets
            .lock()
            .unwrap()
            .get(&path)
            .copied()
            .unwrap_or(0)
    }

    fn all_image_gets(&self) -> u64 {
        self.f.image_gets.lock().unwrap().values().sum()
    }
}

fn proxy(standin: &StandIn, dir: &std::path::Path, max: u64) -> (Arc<FactoryProxy>, Router) {
    let mut options = Options::new(dir.to_owned());
    options.max_cache_bytes = max;
    options.read_timeout = Duration::from_secs(10);
    let p = FactoryProxy::new(&standin.settings(), ADVERTISE, PORT, options).unwrap();
    // As if ironboot's Image Factory client had created the schematic.
    p.known().insert(&schematic());
    let router = p.mount(Router::new());
    (p, router)
}

async fn request(
    router: &Router,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Result<Bytes, String>) {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = router
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .map_err(|e| e.to_string());
    (status, headers, body)
}

async fn get_ok(router: &Router, uri: &str) -> Bytes {
    let (status, _, body) = request(router, "GET", uri, &[]).await;
    assert_eq!(status, StatusCode::OK, "{uri}: {body:?}");
    body.unwrap()
}

fn image_uri(version: &str, name: &str) -> String {
    format!("/factory/image/{}/{version}/{name}", schematic())
}

fn upstream_image(version: &str, name: &str) -> Bytes {
    image_bytes(&format!("/image/{}/{version}/{name}", schematic()))
}

/// Complete files and leftovers in the cache directory.
fn cache_files(dir: &std::path::Path) -> (Vec<String>, u64) {
    let mut names = Vec::new();
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        names.push(e.file_name().into_string().unwrap());
        total += e.metadata().unwrap().len();
    }
    names.sort();
    (names, total)
}

#[tokio::test]
async fn the_script_is_rewritten_to_ironboot_and_its_images_follow() {
    let standin = StandIn::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (p, router) = proxy(&standin, dir.path(), DEFAULT_MAX_BYTES);
    let s = schematic();
    let script_uri = format!("/factory/pxe/{s}/v1.13.7/metal-amd64");
    let script = get_ok(&router, &script_uri).await;
    let text = std::str::from_utf8(&script).unwrap();
    let kernel = format!("http://10.0.0.1:50042/factory/image/{s}/v1.13.7/kernel-amd64");
    let initrd = format!("http://10.0.0.1:50042/factory/image/{s}/v1.13.7/initramfs-amd64.xz");
    let (factory_part, fallback) = text.split_once(":ironboot_failed\n").unwrap();
    assert_eq!(
        factory_part,
        format!(
            "#!ipxe\n\nkernel {kernel} talos.platform=metal console=ttyS0 \
             talos.config=http://10.0.0.1:50042/config?u=${{uuid}} init_on_alloc=1 \
             || goto ironboot_failed\n\
             initrd {initrd} || goto ironboot_failed\nboot || goto ironboot_failed\n"
        )
    );
    // An image that cannot be had: wait, then ask ironboot for boot.ipxe again.
    assert!(fallback.contains(IMAGE_FAILED), "{fallback}");
    assert!(
        fallback.contains("chain --replace http://10.0.0.1:50042/ipxe/boot.ipxe?uuid=${uuid}"),
        "{fallback}"
    );
    crate::boot::boot_script::tests::check_debian_2019_commands_and_labels(&script);
    assert!(
        !text.contains(&standin.listening.addr.to_string()),
        "{text}"
    );

    // Kept briefly: a second machine's request does not reach the factory.
    assert_eq!(get_ok(&router, &script_uri).await, script);
    assert_eq!(standin.f.script_gets.load(Ordering::SeqCst), 1);
    assert_eq!(p.stats().requests(Kind::Script, Served::Miss), 1);
    assert_eq!(p.stats().requests(Kind::Script, Served::Hit), 1);

    // What iPXE loads next comes through ironboot too.
    for url in [&kernel, &initrd] {
        let path = url.strip_prefix("http://10.0.0.1:50042").unwrap();
        let name = path.rsplit('/').next().unwrap();
        assert_eq!(
            get_ok(&router, path).await,
            upstream_image("v1.13.7", name),
            "{path}"
        );
    }
    let mut out = String::new();
    p.stats().render_prometheus(&mut out);
    assert!(
        out.contains("ironboot_factory_proxy_requests_total{kind=\"image\",result=\"miss\"} 2"),
        "{out}"
    );
}

#[tokio::test]
async fn bad_paths_are_refused_and_queries_never_reach_the_factory() {
    let standin = StandIn::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (p, router) = proxy(&standin, dir.path(), DEFAULT_MAX_BYTES);
    let s = schematic();
    for uri in [
        format!("/factory/image/{s}/v1.13.7/metal-amd64.iso"),
        format!("/factory/image/{s}/v1.13.7/..%2f..%2fetc%2fpasswd"),
        format!("/factory/image/{s}/..%2fx/kernel-amd64"),
        format!("/factory/image/{}/v1.13.7/kernel-amd64", &s[..63]),
        format!("/factory/pxe/{s}/v1.13.7/metal-amd64.iso"),
        format!("/factory/pxe/{s}/v1%20||%20shell/metal-amd64"),
    ] {
        let (status, _, body) = request(&router, "GET", &uri, &[]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body:?}");
        assert!(body.unwrap().starts_with(b"ironboot: "), "{uri}");
    }
    for uri in [
        format!("/factory/image/{s}/v1.13.7/kernel-amd64/extra"),
        format!("/factory/v2/{s}/manifests/x"),
        "/factory/schematics".to_owned(),
    ] {
        let (status, _, _) = request(&router, "GET", &uri, &[]).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}: no such route");
    }
    assert!(
        standin.f.uris.lock().unwrap().is_empty(),
        "nothing reached the factory"
    );
    assert_eq!(p.stats().requests(Kind::Image, Served::Error), 4);

    let uri = format!(
        "{}?filename=../../x&x=1",
        image_uri("v1.13.7", "kernel-amd64")
    );
    get_ok(&router, &uri).await;
    let uri = format!("/factory/pxe/{s}/v1.13.7/metal-amd64?x=y");
    get_ok(&router, &uri).await;
    let uris = standin.f.uris.lock().unwrap().clone();
    assert_eq!(
        uris,
        [
            format!("/image/{s}/v1.13.7/kernel-amd64"),
            format!("/pxe/{s}/v1.13.7/metal-amd64"),
        ]
    );
}

#[tokio::test]
async fn an_unreachable_factory_is_a_502_with_the_reason() {
    let standin = StandIn::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (p, router) = proxy(&standin, dir.path(), DEFAULT_MAX_BYTES);
    let s = schematic();
    standin.set(Mode::Down);
    let (status, headers, body) = request(
        &router,
        "GET",
        &format!("/factory/pxe/{s}/v1.13.7/metal-amd64"),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        headers.get(header::CONTENT_TYPE).unwrap(),
        "text/plain; charset=utf-8"
    );
    let body = String::from_utf8(body.unwrap().to_vec()).unwrap();
    assert!(body.contains("Image Factory http://127.0.0.1:"), "{body}");
    assert!(body.contains("HTTP 503"), "{body}");
    let (status, _, _) = request(&router, "GET", &image_uri("v1.13.7", "kernel-amd64"), &[]).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(p.stats().upstream_errors(), 2);
    assert_eq!(cache_files(dir.path()).0, Vec::<String>::new());

    // Failures are not kept: the factory is back, the next request gets the script.
    standin.set(Mode::Up);
    get_ok(&router, &format!("/factory/pxe/{s}/v1.13.7/metal-amd64")).await;

    // Nothing listening at all.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut settings = standin.settings();
    settings.pxe_base_url = format!("http://{closed}");
    let dir2 = tempfile::tempdir().unwrap();
    let p2 =
        FactoryProxy::new(&settings, ADVERTISE, PORT, Options::new(dir2.path().into())).unwrap();
    p2.known().insert(&s);
    let router2 = p2.mount(Router::new());
    let (status, _, body) = request(
        &router2,
        "GET",
        &format!("/factory/pxe/{s}/v1.13.7/metal-amd64"),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let body = String::from_utf8(body.unwrap().to_vec()).unwrap();
    assert!(body.contains("unreachable"), "{body}");
    assert!(body.contains(&closed.to_string()), "{body}");
}

#[tokio::test]
async fn twenty_concurrent_requests_make_one_download_and_a_restart_serves_from_disk() {
    let standin = StandIn::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (p, router) = proxy(&standin, dir.path(), DEFAULT_MAX_BYTES);
    let uri = image_uri("v1.13.7", "initramfs-amd64.xz");
    let want = upstream_image("v1.13.7", "initramfs-amd64.xz");

    // The download is held halfway until all 20 have their answer's headers.
    standin.f.gate.close();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let router = router.clone();
        let uri = uri.clone();
        tasks.spawn(async move { request(&router, "GET", &uri, &[]).await });
    }
    let stats = p.stats();
    until("20 requests are being answered", || {
        stats.requests(Kind::Image, Served::Miss) + stats.requests(Kind::Image, Served::Shared)
            == 20
    })
    .await;
    standin.f.gate.open();
    let mut n = 0;
    while let Some(done) = tasks.join_next().await {
        let (status, headers, body) = done.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            headers.get(header::CONTENT_LENGTH).unwrap(),
            &IMAGE_LEN.to_string()
        );
        let body = body.unwrap();
        assert!(body == want, "bytes differ from the factory's");
        n += 1;
    }
    assert_eq!(n, 20);
    assert_eq!(
        standin.image_gets("v1.13.7", "initramfs-amd64.xz"),
        1,
        "one download"
    );
    assert_eq!(stats.requests(Kind::Image, Served::Miss), 1);
    assert_eq!(stats.requests(Kind::Image, Served::Shared), 19);
    assert_eq!(stats.requests(Kind::Image, Served::Hit), 0);
    assert_eq!(stats.fetches(Kind::Image), 1);
    assert_eq!(stats.cache_bytes(), IMAGE_LEN as u64);
    let (files, total) = cache_files(dir.path());
    assert_eq!(
        files,
        [format!("{}_v1.13.7_initramfs-amd64.xz", schematic())]
    );
    assert_eq!(total, IMAGE_LEN as u64);

    // HEAD and a range of the cached image.
    let (status, headers, body) = request(&router, "HEAD", &uri, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers.get(header::CONTENT_LENGTH).unwrap(),
        &IMAGE_LEN.to_string()
    );
    assert_eq!(headers.get(header::ACCEPT_RANGES).unwrap(), "bytes");
    assert!(body.unwrap().is_empty());
    let (status, headers, body) =
        request(&router, "GET", &uri, &[("range", "bytes=1000000-1000099")]).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        headers.get(header::CONTENT_RANGE).unwrap(),
        &format!("bytes 1000000-1000099/{IMAGE_LEN}")
    );
    assert_eq!(body.unwrap(), want.slice(1_000_000..1_000_100));
    let (status, _, _) = request(
        &router,
        "GET",
        &uri,
        &[("range", &format!("bytes={IMAGE_LEN}-"))],
    )
    .await;
    assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);

    // A restart: a new proxy over the same directory (with a crash's leftover in it).
    drop(router);
    drop(p);
    std::fs::write(dir.path().join(".tmp-7-leftover"), b"half an image").unwrap();
    let (p, router) = proxy(&standin, dir.path(), DEFAULT_MAX_BYTES);
    assert_eq!(cache_files(dir.path()).0.len(), 1, "the leftover is gone");
    assert!(get_ok(&router, &uri).await == want);
    assert_eq!(standin.all_image_gets(), 1, "served from disk");
    assert_eq!(p.stats().requests(Kind::Image, Served::Hit), 1);
    assert_eq!(p.stats().cache_bytes(), IMAGE_LEN as u64);
}

#[tokio::test]
async fn an_interrupted_download_leaves_nothing_and_the_next_request_downloads_again() {
    let standin = StandIn::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (p, router) = proxy(&standin, dir.path(), DEFAULT_MAX_BYTES);
    let uri = image_uri("v1.13.7", "kernel-amd64");
    standin.set(Mode::BreakImages);
    standin.f.gate.close();

    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let router = router.clone();
        let uri = uri.clone();
        tasks.spawn(async move { request(&router, "GET", &uri, &[]).await });
    }
    let stats = p.stats();
    until("3 requests are being answered", || {
        stats.requests(Kind::Image, Served::Miss) + stats.requests(Kind::Image, Served::Shared) == 3
    })
    .await;
    // Half the image is on its way; nothing is under an image's name yet.
    let (files, _) = cache_files(dir.path());
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].starts_with(".tmp-"), "{files:?}");
    standin.f.gate.open();
    while let Some(done) = tasks.join_next().await {
        let (status, _, body) = done.unwrap();
        // Headers went out while the download was under way: the transfer is cut short.
        assert_eq!(status, StatusCode::OK);
        assert!(body.is_err(), "a truncated transfer must not look complete");
    }
    assert_eq!(standin.image_gets("v1.13.7", "kernel-amd64"), 1);
    // The download task cleans up after its readers are gone.
    for _ in 0..100 {
        if cache_files(dir.path()).0.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        cache_files(dir.path()).0,
        Vec::<String>::new(),
        "no entry, no leftover"
    );
    assert_eq!(p.stats().upstream_errors(), 1);
    assert_eq!(p.stats().cache_bytes(), 0);

    standin.set(Mode::Up);
    assert!(get_ok(&router, &uri).await == upstream_image("v1.13.7", "kernel-amd64"));
    assert_eq!(standin.image_gets("v1.13.7", "kernel-amd64"), 2);
    assert_eq!(cache_files(dir.path()).0.len(), 1);
}

#[tokio::test]
async fn eviction_keeps_the_cache_under_its_bound_least_recently_used_first() {
    let standin = StandIn::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bound = (IMAGE_LEN as u64) * 5 / 2;
    let (p, router) = proxy(&standin, dir.path(), bound);
    let name = "kernel-arm64";
    for v in ["v1.1.0", "v1.2.0"] {
        get_ok(&router, &image_uri(v, name)).await;
    }
    // v1.1.0 used again: v1.2.0 is now the least recently used.
    get_ok(&router, &image_uri("v1.1.0", name)).await;
    assert_eq!(standin.all_image_gets(), 2);
    let body = get_ok(&router, &image_uri("v1.3.0", name)).await;
    assert!(body == upstream_image("v1.3.0", name));

    let (files, total) = cache_files(dir.path());
    assert!(total <= bound, "{total} > {bound}");
    let s = schematic();
    assert_eq!(
        files,
        [format!("{s}_v1.1.0_{name}"), format!("{s}_v1.3.0_{name}")]
    );
    assert_eq!(p.stats().evictions(), 1);
    assert_eq!(p.stats().cache_bytes(), total);

    get_ok(&router, &image_uri("v1.1.0", name)).await;
    assert_eq!(standin.image_gets("v1.1.0", name), 1, "kept");
    get_ok(&router, &image_uri("v1.2.0", name)).await;
    assert_eq!(
        standin.image_gets("v1.2.0", name),
        2,
        "evicted, downloaded again"
    );
    assert!(cache_files(dir.path()).1 <= bound);

    // A restart with a smaller bound trims the cache at once.
    drop(router);
    drop(p);
    let (p, _router) = proxy(&standin, dir.path(), IMAGE_LEN as u64);
    let (files, total) = cache_files(dir.path());
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(total <= IMAGE_LEN as u64);
    assert_eq!(p.stats().cache_bytes(), total);

    // An image larger than the whole bound is served, then not kept.
    let tiny = tempfile::tempdir().unwrap();
    let (_, router) = proxy(&standin, tiny.path(), 1024);
    let body = get_ok(&router, &image_uri("v1.4.0", name)).await;
    assert!(body == upstream_image("v1.4.0", name));
    assert_eq!(cache_files(tiny.path()).0, Vec::<String>::new());
}

#[test]
fn ranges() {
    let r = |v: &str, len| parse_range(Some(&HeaderValue::from_str(v).unwrap()), len);
    assert_eq!(r("bytes=0-9", 100), RangeAnswer::Partial(0..10));
    assert_eq!(r("bytes=90-", 100), RangeAnswer::Partial(90..100));
    assert_eq!(r("bytes=-5", 100), RangeAnswer::Partial(95..100));
    assert_eq!(r("bytes=50-500", 100), RangeAnswer::Partial(50..100));
    assert_eq!(r("bytes=100-", 100), RangeAnswer::Unsatisfiable);
    assert_eq!(r("bytes=-0", 100), RangeAnswer::Unsatisfiable);
    for full in [
        "bytes=5-2",
        "bytes=0-1,3-4",
        "items=0-1",
        "bytes=a-b",
        "bytes=-",
    ] {
        assert_eq!(r(full, 100), RangeAnswer::Full, "{full}");
    }
    assert_eq!(parse_range(None, 100), RangeAnswer::Full);
}

#[test]
fn proxied_urls_use_the_advertised_address() {
    assert_eq!(
        proxy_base(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), 8080),
        "http://[::1]:8080/factory"
    );
    assert_eq!(proxy_base(ADVERTISE, PORT), "http://10.0.0.1:50042/factory");
}

#[tokio::test]
async fn only_schematics_ironboot_created_or_cached_are_fetched() {
    let standin = StandIn::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = standin.settings();
    settings.base_url.clone_from(&settings.pxe_base_url);
    let mut options = Options::new(dir.path().to_owned());
    options.read_timeout = Duration::from_secs(10);
    let p = FactoryProxy::new(&settings, ADVERTISE, PORT, options.clone()).unwrap();
    let router = p.mount(Router::new());
    let s = schematic();
    let script_uri = format!("/factory/pxe/{s}/v1.13.7/metal-amd64");
    let kernel_uri = image_uri("v1.13.7", "kernel-amd64");

    // Well-formed IDs ironboot never created: 404, counted, the factory never asked.
    let stranger = "5eed".repeat(16);
    for uri in [
        script_uri.clone(),
        kernel_uri.clone(),
        format!("/factory/pxe/{stranger}/v1.13.7/metal-amd64"),
        format!("/factory/image/{stranger}/v1.13.7/initramfs-amd64.xz"),
    ] {
        let (status, _, body) = request(&router, "GET", &uri, &[]).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}: {body:?}");
        let body = String::from_utf8(body.unwrap().to_vec()).unwrap();
        assert!(
            body.contains("was not created by ironboot"),
            "{uri}: {body}"
        );
    }
    assert!(
        standin.f.uris.lock().unwrap().is_empty(),
        "nothing reached the factory: {:?}",
        standin.f.uris.lock().unwrap()
    );
    assert_eq!(p.stats().unknown_schematics(Kind::Script), 2);
    assert_eq!(p.stats().unknown_schematics(Kind::Image), 2);
    assert_eq!(p.stats().fetches(Kind::Script), 0);
    assert_eq!(p.stats().fetches(Kind::Image), 0);
    assert_eq!(cache_files(dir.path()).0, Vec::<String>::new());
    let mut out = String::new();
    p.stats().render_prometheus(&mut out);
    assert!(
        out.contains("ironboot_factory_proxy_unknown_schematic_total{kind=\"image\"} 2"),
        "{out}"
    );

    // ironboot's own Image Factory client creates the schematic: from then on the proxy
    // fetches it (the client reports to the proxy as Omni mode wires them).
    let factory = crate::provider::image_factory::ImageFactory::new(
        settings.clone(),
        Duration::from_secs(10),
    )
    .unwrap();
    factory.report_to(p.known());
    let image = factory
        .agent_mode_image(crate::provider::image_factory::Arch::Amd64, Vec::new())
        .await
        .unwrap();
    assert_eq!(image.schematic.as_str(), s);
    get_ok(&router, &script_uri).await;
    assert_eq!(
        get_ok(&router, &kernel_uri).await,
        upstream_image("v1.13.7", "kernel-amd64")
    );
    // The stranger is still refused.
    let (status, _, _) = request(
        &router,
        "GET",
        &format!("/factory/image/{stranger}/v1.13.7/kernel-amd64"),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(p.stats().unknown_schematics(Kind::Image), 3);
    assert_eq!(
        standin.f.uris.lock().unwrap().clone(),
        [
            "/schematics".to_owned(),
            format!("/pxe/{s}/v1.13.7/metal-amd64"),
            format!("/image/{s}/v1.13.7/kernel-amd64"),
        ]
    );

    // A schematic created before the proxy was named is reported too.
    let early = crate::provider::image_factory::ImageFactory::new(
        settings.clone(),
        Duration::from_secs(10),
    )
    .unwrap();
    early
        .agent_mode_image(crate::provider::image_factory::Arch::Amd64, Vec::new())
        .await
        .unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let p_b = FactoryProxy::new(
        &settings,
        ADVERTISE,
        PORT,
        Options::new(dir_b.path().into()),
    )
    .unwrap();
    assert!(!p_b.known().contains(&s));
    early.report_to(p_b.known());
    assert!(p_b.known().contains(&s));

    // A restarted proxy over the same cache still serves the images it cached (machines
    // booting across a restart), and still refuses strangers.
    drop(router);
    drop(p);
    let p = FactoryProxy::new(&settings, ADVERTISE, PORT, options).unwrap();
    let router = p.mount(Router::new());
    assert_eq!(
        get_ok(&router, &kernel_uri).await,
        upstream_image("v1.13.7", "kernel-amd64")
    );
    assert_eq!(p.stats().requests(Kind::Image, Served::Hit), 1);
    let (status, _, _) = request(
        &router,
        "GET",
        &format!("/factory/pxe/{stranger}/v1.13.7/metal-amd64"),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(standin.image_gets("v1.13.7", "kernel-amd64"), 1);
}

/// The proxy's images through the accept loop's zero-copy image path, fetched by curl.
async fn serve_with_sendfile(
    p: &Arc<FactoryProxy>,
    router: Router,
    limits: crate::boot::http::server::Limits,
) -> crate::boot::http::sendfile::real::Running {
    let routes = Arc::new(crate::provider::boot_plan::BootImages {
        assets: None,
        factory: Some(p.clone()),
    });
    crate::boot::http::sendfile::real::Running::start(routes, router, limits).await
}

#[tokio::test]
async fn sendfile_readers_follow_a_slow_download_then_the_cache() {
    use crate::boot::http::sendfile::real::curl;
    let standin = StandIn::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (p, router) = proxy(&standin, dir.path(), DEFAULT_MAX_BYTES);
    let running = serve_with_sendfile(&p, router, Default::default()).await;
    let url = running.url(&image_uri("v1.13.7", "kernel-amd64"));
    let want = upstream_image("v1.13.7", "kernel-amd64");
    // The stand-in holds the download halfway until the gate opens.
    standin.f.gate.close();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let url = url.clone();
        tasks.spawn(async move { curl(&[&url]).await });
    }
    let stats = p.stats();
    until("3 requests are being answered", || {
        stats.requests(Kind::Image, Served::Miss) + stats.requests(Kind::Image, Served::Shared) == 3
    })
    .await;
    // The readers have caught up with the download and wait for more.
    until("half the image was sent to each reader", || {
        stats.served_bytes_total() >= 3 * (IMAGE_LEN as u64 / 2) - 3 * CHUNK as u64
    })
    .await;
    let (files, _) = cache_files(dir.path());
    assert!(
        files.len() == 1 && files[0].starts_with(".tmp-"),
        "{files:?}"
    );
    standin.f.gate.open();
    while let Some(done) = tasks.join_next().await {
        let r = done.unwrap();
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_eq!(r.statuses(), [200]);
        assert_eq!(r.header("content-length"), Some(IMAGE_LEN.to_string()));
        assert!(r.body == want, "every reader gets the whole image");
    }
    assert_eq!(standin.image_gets("v1.13.7", "kernel-amd64"), 1);
    assert_eq!(stats.served_bytes_total(), 3 * IMAGE_LEN as u64);
    // The readers may finish before the download is committed to the cache (renamed
    // from its temporary name); a request before that would share the download.
    until("the download is committed to the cache", || {
        let (files, _) = cache_files(dir.path());
        files.len() == 1 && !files[0].starts_with(".tmp-")
    })
    .await;
    // Then from the cache: validators and ranges.
    let hit = curl(&["-r", "100-199", &url]).await;
    assert_eq!(hit.statuses(), [206]);
    assert!(hit.body == want[100..200]);
    assert!(hit.header("etag").is_some());
    assert_eq!(stats.requests(Kind::Image, Served::Hit), 1);
    assert_eq!(standin.image_gets("v1.13.7", "kernel-amd64"), 1);
    // Errors are the route's own answers.
    let unknown = curl(&[&running.url(&format!(
        "/factory/image/{}/v1.13.7/kernel-amd64",
        "ab".repeat(32)
    ))])
    .await;
    assert_eq!(unknown.statuses(), [404]);
    assert!(String::from_utf8_lossy(&unknown.body).contains("not created by ironboot"));
    assert_eq!(
        running.images.responses("other"),
        1,
        "the 404 went out on the image path"
    );
}

#[tokio::test]
async fn sendfile_readers_of_a_failed_download_get_a_truncated_transfer() {
    use crate::boot::http::sendfile::real::curl;
    let standin = StandIn::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (_p, router) = proxy(&standin, dir.path(), DEFAULT_MAX_BYTES);
    let running = serve_with_sendfile(&_p, router, Default::default()).await;
    let url = running.url(&image_uri("v1.13.7", "kernel-amd64"));
    standin.set(Mode::BreakImages);
    let r = curl(&[&url]).await;
    assert_eq!(r.statuses(), [200]);
    assert_eq!(r.header("content-length"), Some(IMAGE_LEN.to_string()));
    assert_ne!(r.code, 0, "curl must see the transfer fail");
    assert!(r.body.len() < IMAGE_LEN, "{} bytes", r.body.len());
    assert!(
        r.body[..] == upstream_image("v1.13.7", "kernel-amd64")[..r.body.len()],
        "what was sent is the image's beginning"
    );
    assert_eq!(running.images.cut_short(), 1);
    assert_eq!(running.images.responses("200"), 1);
}

#[tokio::test]
async fn sendfile_waits_for_a_factory_slower_than_the_header_deadline() {
    use crate::boot::http::sendfile::real::curl;
    let standin = StandIn::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (p, router) = proxy(&standin, dir.path(), DEFAULT_MAX_BYTES);
    // The client's head is complete at once; the factory answers after the header
    // deadline: the request is in flight, not a slow client.
    let limits = crate::boot::http::server::Limits {
        header_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let running = serve_with_sendfile(&p, router, limits).await;
    standin.set(Mode::SlowHeaders);
    let r = curl(&[&running.url(&image_uri("v1.13.7", "kernel-amd64"))]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.body == upstream_image("v1.13.7", "kernel-amd64"));
    let dropped = running.counters.ended_total(
        crate::boot::http::server::Listener::Api,
        crate::boot::http::server::Reason::HeaderTimeout,
    );
    assert_eq!(dropped, 0);
}

#[tokio::test]
async fn sendfile_readers_of_a_download_of_unknown_length_get_a_chunked_body() {
    use crate::boot::http::sendfile::real::curl;
    let standin = StandIn::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (p, router) = proxy(&standin, dir.path(), DEFAULT_MAX_BYTES);
    let running = serve_with_sendfile(&p, router, Default::default()).await;
    standin.set(Mode::Unannounced);
    let r = curl(&[&running.url(&image_uri("v1.13.7", "kernel-amd64"))]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.statuses(), [200]);
    assert_eq!(r.header("transfer-encoding").as_deref(), Some("chunked"));
    assert_eq!(r.header("content-length"), None);
    assert!(r.body == upstream_image("v1.13.7", "kernel-amd64"));
}
