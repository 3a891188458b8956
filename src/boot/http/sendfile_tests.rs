//! The image path on the real accept loop, on 127.0.0.1, against real `curl` (Debian's
//! `curl` package) and raw sockets: whole files, ranges, resume, conditionals, `HEAD`,
//! `416`, keep-alive beside hyper's routes and h2c, a file replaced by rename while it
//! is sent, and a client that stops reading.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;

use super::super::server::{self, ConnCounters, Gate, Limits, Listener, Plain, Reason};
use super::{ImagePath, ImageRoutes, ImageStats};
use crate::provider::boot_plan::{BootImages, LocalAssets};

/// The accept loop on 127.0.0.1 with `routes` on the image path and `router` behind.
pub(crate) struct Running {
    pub(crate) addr: SocketAddr,
    pub(crate) counters: Arc<ConnCounters>,
    pub(crate) images: Arc<ImageStats>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Running {
    pub(crate) async fn start(
        routes: Arc<dyn ImageRoutes>,
        router: Router,
        limits: Limits,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counters = Arc::new(ConnCounters::default());
        let gate = Gate::new(limits, counters.clone());
        let images = Arc::new(ImageStats::default());
        let raw: Arc<dyn server::RawPath> = Arc::new(ImagePath::new(routes, images.clone()));
        let task = tokio::spawn(async move {
            let _ = server::serve_with(
                listener,
                Listener::Api,
                gate,
                router,
                Plain,
                Some(raw),
                std::future::pending(),
            )
            .await;
        });
        Running {
            addr,
            counters,
            images,
            task,
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// Output of a `curl` run on a blocking thread: exit code, response headers (all
/// responses, `-D`), body.
pub(crate) struct Curl {
    pub(crate) code: i32,
    pub(crate) headers: String,
    pub(crate) body: Vec<u8>,
    pub(crate) stderr: String,
}

impl Curl {
    /// The value of `name` in the last response's headers.
    pub(crate) fn header(&self, name: &str) -> Option<String> {
        let last = self.headers.rsplit("HTTP/").next().unwrap_or("");
        last.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }

    /// The status of every response, in order.
    pub(crate) fn statuses(&self) -> Vec<u16> {
        self.headers
            .lines()
            .filter_map(|l| l.strip_prefix("HTTP/")?.split(' ').nth(1)?.parse().ok())
            .collect()
    }
}

/// Run `curl -sS -D <headers> <args>` (body to stdout unless `args` say otherwise).
pub(crate) async fn curl(args: &[&str]) -> Curl {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let headers = dir.path().join("headers");
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "60", "-D"])
            .arg(&headers)
            .args(&args)
            .output()
            .unwrap_or_else(|e| {
                panic!("running curl failed ({e}): install Debian's `curl` package")
            });
        Curl {
            code: out.status.code().unwrap_or(-1),
            headers: std::fs::read_to_string(&headers).unwrap_or_default(),
            body: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    })
    .await
    .unwrap()
}

/// `len` bytes that differ with `seed` and position.
pub(crate) fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect()
}

const KERNEL: &str = "kernel-amd64";
const LEN: usize = 5 * 1024 * 1024 + 4321;

struct Setup {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    data: Vec<u8>,
    running: Running,
}

async fn setup(limits: Limits) -> Setup {
    setup_with(limits, LEN).await
}

async fn setup_with(limits: Limits, len: usize) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let data = pattern(len, 1);
    std::fs::write(dir.join(KERNEL), &data).unwrap();
    std::fs::write(dir.join("cmdline-metal-amd64"), b"console=ttyS0\n").unwrap();
    let assets = LocalAssets::new(dir.clone());
    let router = assets.mount(Router::new().route("/hello", get(|| async { "hello\n" })));
    let routes = Arc::new(BootImages {
        assets: Some(assets),
        factory: None,
    });
    let running = Running::start(routes, router, limits).await;
    Setup {
        _dir: tmp,
        dir,
        data,
        running,
    }
}

#[tokio::test]
async fn curl_gets_whole_files_ranges_heads_and_conditionals() {
    let s = setup(Limits::default()).await;
    let url = s.running.url(&format!("/assets/{KERNEL}"));

    let whole = curl(&[&url]).await;
    assert_eq!(whole.code, 0, "{}", whole.stderr);
    assert_eq!(whole.statuses(), [200]);
    assert!(whole.body == s.data, "the whole file, byte for byte");
    assert_eq!(whole.header("content-length"), Some(LEN.to_string()));
    assert_eq!(whole.header("accept-ranges").as_deref(), Some("bytes"));
    let etag = whole.header("etag").expect("an ETag");
    let modified = whole.header("last-modified").expect("a Last-Modified");

    let head = curl(&["-I", &url]).await;
    assert_eq!(head.code, 0, "{}", head.stderr);
    assert_eq!(head.statuses(), [200]);
    assert_eq!(head.header("content-length"), Some(LEN.to_string()));
    assert_eq!(head.header("etag"), Some(etag.clone()));
    assert!(head.body.is_empty() || head.body == head.headers.as_bytes());

    let part = curl(&["-r", "1000-1999", &url]).await;
    assert_eq!(part.statuses(), [206]);
    assert!(part.body == s.data[1000..2000]);
    assert_eq!(
        part.header("content-range"),
        Some(format!("bytes 1000-1999/{LEN}"))
    );
    let tail = curl(&["-r", "-100", &url]).await;
    assert_eq!(tail.statuses(), [206]);
    assert!(tail.body == s.data[LEN - 100..]);
    // Several ranges: the whole file.
    let multi = curl(&["-r", "0-1,10-11", &url]).await;
    assert_eq!(multi.statuses(), [200]);
    assert!(multi.body == s.data);

    let past = curl(&["-r", &format!("{LEN}-"), &url]).await;
    assert_eq!(past.statuses(), [416]);
    assert_eq!(past.header("content-range"), Some(format!("bytes */{LEN}")));

    let fresh = curl(&["-H", &format!("If-None-Match: {etag}"), &url]).await;
    assert_eq!(fresh.statuses(), [304]);
    assert!(fresh.body.is_empty());
    let stale = curl(&["-H", "If-None-Match: \"other\"", &url]).await;
    assert_eq!(stale.statuses(), [200]);
    assert!(stale.body == s.data);

    let same = curl(&["-r", "5-9", "-H", &format!("If-Range: {etag}"), &url]).await;
    assert_eq!(same.statuses(), [206]);
    assert!(same.body == s.data[5..10]);
    let by_date = curl(&["-r", "5-9", "-H", &format!("If-Range: {modified}"), &url]).await;
    assert_eq!(by_date.statuses(), [206]);
    let changed = curl(&["-r", "5-9", "-H", "If-Range: \"other\"", &url]).await;
    assert_eq!(changed.statuses(), [200]);
    assert!(changed.body == s.data, "a changed file is sent whole");

    // Every one of those went out on the image path.
    let st = &s.running.images;
    let counts: Vec<u64> = ["200", "206", "304", "416", "other"]
        .iter()
        .map(|c| st.responses(c))
        .collect();
    assert_eq!(counts, [5, 4, 1, 1, 0]);
    assert_eq!(st.body_bytes(), 4 * LEN as u64 + 1000 + 100 + 5 + 5);
    assert_eq!(st.cut_short(), 0);

    // A name that is not an asset, and an absent asset: the route's own 404s (hyper).
    let other = curl(&[&s.running.url("/assets/nope")]).await;
    assert_eq!(other.statuses(), [404]);
    let absent = curl(&[&s.running.url("/assets/kernel-arm64")]).await;
    assert_eq!(absent.statuses(), [404]);
    assert!(String::from_utf8_lossy(&absent.body).contains("absent"));
}

#[tokio::test]
async fn curl_resumes_a_partial_download() {
    let s = setup(Limits::default()).await;
    let url = s.running.url(&format!("/assets/{KERNEL}"));
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("kernel");
    std::fs::write(&file, &s.data[..1_234_567]).unwrap();
    let resumed = curl(&["-C", "-", "-o", file.to_str().unwrap(), &url]).await;
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    assert_eq!(resumed.statuses(), [206]);
    assert!(
        std::fs::read(&file).unwrap() == s.data,
        "the resumed file is whole"
    );
}

#[tokio::test]
async fn keep_alive_carries_images_then_hyper_routes_and_h2c_still_works() {
    let s = setup(Limits::default()).await;
    let kernel = s.running.url(&format!("/assets/{KERNEL}"));
    let cmdline = s.running.url("/assets/cmdline-metal-amd64");
    let hello = s.running.url("/hello");
    // One curl, one connection: two images, then a route of hyper's, pipelined by turn.
    let r = curl(&[
        "-w",
        "%{num_connects}\n",
        &kernel,
        &cmdline,
        &kernel,
        &hello,
    ])
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.statuses(), [200, 200, 200, 200]);
    let mut expected = s.data.clone();
    expected.extend_from_slice(b"1\n");
    expected.extend_from_slice(b"console=ttyS0\n0\n");
    expected.extend_from_slice(&s.data);
    expected.extend_from_slice(b"0\nhello\n0\n");
    assert!(
        r.body == expected,
        "bodies and connection reuse: {:?}",
        String::from_utf8_lossy(&r.body[LEN..])
    );
    let h2 = curl(&["--http2-prior-knowledge", &hello]).await;
    assert_eq!(h2.code, 0, "{}", h2.stderr);
    assert!(h2.headers.starts_with("HTTP/2 200"), "{}", h2.headers);
    assert_eq!(h2.body, b"hello\n");
    // HTTP/1.0: closed unless asked to keep it open.
    let old = curl(&["-0", &cmdline, &cmdline]).await;
    assert_eq!(old.statuses(), [200, 200]);
    assert_eq!(old.header("connection").as_deref(), Some("close"));
    let kept = curl(&[
        "-0",
        "-H",
        "Connection: keep-alive",
        "-w",
        "%{num_connects}\n",
        &cmdline,
        &cmdline,
    ])
    .await;
    assert_eq!(kept.header("connection").as_deref(), Some("keep-alive"));
    assert_eq!(kept.body, b"console=ttyS0\n1\nconsole=ttyS0\n0\n");
    let closed = curl(&["-H", "Connection: close", &kernel]).await;
    assert_eq!(closed.header("connection").as_deref(), Some("close"));
    assert!(closed.body == s.data);
}

/// Send `request` on a fresh connection with a small receive buffer.
fn connect(addr: SocketAddr, request: &str) -> std::net::TcpStream {
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Stream,
        nix::sys::socket::SockFlag::empty(),
        None,
    )
    .unwrap();
    nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::RcvBuf, &4096).unwrap();
    let sa = nix::sys::socket::SockaddrIn::from(match addr {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => unreachable!("the tests listen on 127.0.0.1"),
    });
    nix::sys::socket::connect(std::os::fd::AsRawFd::as_raw_fd(&sock), &sa).unwrap();
    let mut conn = std::net::TcpStream::from(sock);
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    conn.write_all(request.as_bytes()).unwrap();
    conn
}

/// Read one response with a `Content-Length` off `conn`: head and body.
fn read_response(
    conn: &mut std::net::TcpStream,
    mut body_hook: impl FnMut(usize),
) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        conn.read_exact(&mut byte).unwrap();
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap();
    let mut body = vec![0u8; len];
    let mut at = 0;
    while at < len {
        let n = conn.read(&mut body[at..(at + 65536).min(len)]).unwrap();
        assert!(n > 0, "closed after {at} of {len} bytes");
        at += n;
        body_hook(at);
    }
    (head, body)
}

#[tokio::test]
async fn a_file_replaced_by_rename_while_sent_reaches_each_client_whole() {
    // Larger than what the socket buffers hold, so most of it is still to be sent when
    // the file is replaced.
    const BIG: usize = 24 << 20;
    let s = setup_with(Limits::default(), BIG).await;
    let addr = s.running.addr;
    let dir = s.dir.clone();
    let old = s.data.clone();
    let new = pattern(BIG + 777, 2);
    let new2 = new.clone();
    tokio::task::spawn_blocking(move || {
        let req = format!("GET /assets/{KERNEL} HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut conn = connect(addr, &req);
        let mut replaced = false;
        let (_, body) = read_response(&mut conn, |at| {
            // A quarter in, the file is replaced by a rename.
            if !replaced && at > BIG / 8 {
                replace(&dir, &new2);
                replaced = true;
            }
        });
        assert!(replaced);
        assert!(
            body == old,
            "the client that started on the old file gets it whole"
        );
        // The next request on the same connection opens the new file.
        conn.write_all(req.as_bytes()).unwrap();
        let (head, body) = read_response(&mut conn, |_| {});
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(body == new2, "and the next request gets the new one whole");
    })
    .await
    .unwrap();
    let _ = new;
}

fn replace(dir: &Path, data: &[u8]) {
    let tmp = dir.join(".next");
    std::fs::write(&tmp, data).unwrap();
    std::fs::rename(&tmp, dir.join(KERNEL)).unwrap();
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_after_the_write_timeout() {
    let limits = Limits {
        write_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let s = setup(limits).await;
    let addr = s.running.addr;
    let conn = tokio::task::spawn_blocking(move || {
        connect(
            addr,
            &format!("GET /assets/{KERNEL} HTTP/1.1\r\nHost: x\r\n\r\n"),
        )
    })
    .await
    .unwrap();
    let started = Instant::now();
    while s
        .running
        .counters
        .ended_total(Listener::Api, Reason::WriteTimeout)
        == 0
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the stalled client is still connected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "not before the write timeout"
    );
    // The server's side is gone: draining the connection ends before the whole file.
    let got = tokio::task::spawn_blocking(move || {
        let mut conn = conn;
        let mut got = 0usize;
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = conn.read(&mut buf) {
            if n == 0 {
                break;
            }
            got += n;
        }
        got
    })
    .await
    .unwrap();
    assert!(
        got < LEN,
        "{got} bytes: the response was cut, as it must be"
    );
    assert_eq!(
        s.running.images.cut_short(),
        1,
        "the response the watchdog dropped is counted as cut short"
    );
    let started = Instant::now();
    while s.running.counters.open(Listener::Api) != 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the connection stays open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn standalone_assets_go_out_on_the_image_path_with_the_same_refusals() {
    use crate::boot::assets::{AssetImages, AssetTree, Refused};
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("assets");
    std::fs::create_dir_all(root.join("talos")).unwrap();
    let data = pattern(300_000, 3);
    std::fs::write(root.join("talos/vmlinuz"), &data).unwrap();
    std::fs::write(tmp.path().join("secret"), b"outside").unwrap();
    let tree = AssetTree::new(&root).unwrap();
    let router = tree.mount(Router::new());
    let running = Running::start(
        Arc::new(AssetImages(tree.clone())),
        router,
        Limits::default(),
    )
    .await;
    let url = running.url("/assets/talos/vmlinuz");
    let part = curl(&["-r", "10-19", &url]).await;
    assert_eq!(part.statuses(), [206]);
    assert!(part.body == data[10..20]);
    assert!(part.header("etag").is_some(), "sent by the image path");
    let whole = curl(&[&url]).await;
    assert!(whole.body == data);
    assert_eq!(tree.counters().served(), 2);
    let escape = curl(&["--path-as-is", &running.url("/assets/../secret")]).await;
    assert_eq!(escape.statuses(), [404]);
    assert!(!escape.body.starts_with(b"outside"));
    let bad = curl(&[&running.url("/assets/%zz")]).await;
    assert_eq!(bad.statuses(), [404]);
    assert_eq!(tree.counters().refused(Refused::BadName), 1);
    assert_eq!(
        running.images.responses("other"),
        2,
        "both 404s from the image path"
    );
    assert_eq!(running.images.responses("206"), 1);
}
