//! The client against a stand-in of the factory's `POST /schematics` (the real factory
//! cannot be reached from CI): it answers `201 {"id": "<sha256 of the schematic>"}` as the
//! factory does for a canonical schematic, counts requests, and can be told to fail, hang
//! or answer nonsense. Everything listens on 127.0.0.1.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::task::JoinSet;

use super::schematic::hex;
use super::*;

#[derive(Clone, Copy, Debug)]
enum Mode {
    /// Create the schematic after `delay`.
    Ok { delay: Duration },
    /// Answer this status.
    Fail(StatusCode),
    /// Never answer.
    Hang,
    /// 201 with an ID that is not one.
    BadId,
}

#[derive(Clone)]
struct StandInState {
    posts: Arc<AtomicU64>,
    mode: Arc<Mutex<Mode>>,
}

/// A router served on 127.0.0.1 (any free port) until dropped; the factory stand-ins of
/// these tests and of `boot_plan`'s run on it.
pub(crate) struct Served {
    pub(crate) addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Served {
    pub(crate) async fn start(router: axum::Router) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        Self { addr, task }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct StandIn {
    served: Served,
    state: StandInState,
}

impl StandIn {
    async fn start(mode: Mode) -> Self {
        let state = StandInState {
            posts: Arc::default(),
            mode: Arc::new(Mutex::new(mode)),
        };
        let router = axum::Router::new()
            .route("/schematics", axum::routing::post(create))
            .with_state(state.clone());
        Self {
            served: Served::start(router).await,
            state,
        }
    }

    fn set(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    fn posts(&self) -> u64 {
        self.state.posts.load(Ordering::SeqCst)
    }

    fn factory(&self, timeout: Duration) -> ImageFactory {
        ImageFactory::new(
            settings(&format!("http://{}/", self.served.addr), false),
            timeout,
        )
        .unwrap()
    }
}

/// As the factory: YAML in, `201 {"id": ...}` out, 400 for what is not a schematic.
async fn create(State(state): State<StandInState>, headers: HeaderMap, body: Bytes) -> Response {
    state.posts.fetch_add(1, Ordering::SeqCst);
    let mode = *state.mode.lock().unwrap();
    if headers.get("content-type").and_then(|v| v.to_str().ok()) != Some("application/yaml") {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected application/yaml",
        )
            .into_response();
    }
    if !body.starts_with(b"customization:") {
        return (StatusCode::BAD_REQUEST, "yaml: unknown field").into_response();
    }
    match mode {
        Mode::Ok { delay } => {
            tokio::time::sleep(delay).await;
            let id = hex(&Sha256::digest(&body));
            (
                StatusCode::CREATED,
                axum::Json(serde_json::json!({ "id": id })),
            )
                .into_response()
        }
        Mode::Fail(status) => (status, "factory is down").into_response(),
        Mode::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::GATEWAY_TIMEOUT.into_response()
        }
        Mode::BadId => (
            StatusCode::CREATED,
            axum::Json(serde_json::json!({ "id": "../../etc" })),
        )
            .into_response(),
    }
}

fn settings(base_url: &str, secure_boot: bool) -> ImageFactorySettings {
    ImageFactorySettings {
        base_url: base_url.trim_end_matches('/').to_owned(),
        pxe_base_url: "http://127.0.0.1:9/pxe-front".to_owned(),
        agent_mode_talos_version: "v1.13.7".to_owned(),
        secure_boot,
    }
}

fn schematic(arg: &str) -> Schematic {
    Schematic::agent_mode(vec![arg.to_owned(), "console=tty0".to_owned()])
}

fn sha_hex(s: &Schematic) -> String {
    hex(&Sha256::digest(s.canonical_yaml().as_bytes()))
}

/// `n` concurrent `schematic_id` calls for `s`.
async fn concurrently(
    factory: &ImageFactory,
    s: &Schematic,
    n: usize,
) -> Vec<Result<SchematicId, FactoryError>> {
    let mut set = JoinSet::new();
    for _ in 0..n {
        let (f, s) = (factory.clone(), s.clone());
        set.spawn(async move { f.schematic_id(&s).await });
    }
    set.join_all().await
}

#[tokio::test]
async fn concurrent_identical_requests_share_one_post_and_are_cached() {
    let standin = StandIn::start(Mode::Ok {
        delay: Duration::from_millis(300),
    })
    .await;
    let factory = standin.factory(Duration::from_secs(5));
    let a = schematic("talos.config=http://10.0.0.1:50042/config?u=${uuid}");

    let results = concurrently(&factory, &a, 24).await;
    assert_eq!(results.len(), 24);
    for r in &results {
        assert_eq!(r.as_ref().unwrap().as_str(), sha_hex(&a));
    }
    assert_eq!(standin.posts(), 1, "24 concurrent requests, one POST");
    assert_eq!(factory.posts(), 1);

    // Later requests for the same content: from the cache.
    factory.schematic_id(&a).await.unwrap();
    factory.clone().schematic_id(&a.clone()).await.unwrap();
    assert_eq!(standin.posts(), 1);

    // Different content: a second POST, and its own ID.
    let b = schematic("talos.config=http://10.0.0.2:50042/config?u=${uuid}");
    let results = concurrently(&factory, &b, 8).await;
    for r in &results {
        assert_eq!(r.as_ref().unwrap().as_str(), sha_hex(&b));
    }
    assert_ne!(sha_hex(&a), sha_hex(&b));
    assert_eq!(standin.posts(), 2);
}

#[tokio::test]
async fn a_factory_error_is_reported_shared_and_not_cached() {
    let standin = StandIn::start(Mode::Fail(StatusCode::SERVICE_UNAVAILABLE)).await;
    let factory = standin.factory(Duration::from_secs(5));
    let a = schematic("console=ttyS0");

    let results = concurrently(&factory, &a, 6).await;
    let url = format!("http://{}/schematics", standin.served.addr);
    for r in results {
        let e = r.unwrap_err();
        assert_eq!(
            e,
            FactoryError::Status {
                url: url.clone(),
                status: 503,
                body: "factory is down".into()
            }
        );
        assert!(e.is_transient());
        assert!(e.to_string().contains(&url), "{e}");
        let ip = std::net::IpAddr::from([10, 0, 0, 1]);
        assert_eq!(
            e.retry_script(ip, 50042),
            crate::boot::boot_script::retry_script(ip, 50042)
        );
    }
    assert!(standin.posts() <= 6);
    let after_outage = standin.posts();

    // The factory is back: the next request asks again and succeeds.
    standin.set(Mode::Ok {
        delay: Duration::ZERO,
    });
    assert_eq!(
        factory.schematic_id(&a).await.unwrap().as_str(),
        sha_hex(&a)
    );
    assert_eq!(standin.posts(), after_outage + 1);
}

#[tokio::test]
async fn concurrent_requests_during_an_outage_share_one_failing_post() {
    let standin = StandIn::start(Mode::Hang).await;
    let factory = standin.factory(Duration::from_millis(400));
    let a = schematic("console=ttyS1");
    let started = Instant::now();
    let results = concurrently(&factory, &a, 10).await;
    for r in results {
        assert!(matches!(r, Err(FactoryError::Timeout { .. })), "{r:?}");
    }
    assert_eq!(standin.posts(), 1, "one POST for the ten waiting requests");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "all ten gave up with the one POST, after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_hanging_factory_times_out() {
    let standin = StandIn::start(Mode::Hang).await;
    let factory = standin.factory(Duration::from_millis(300));
    let started = Instant::now();
    let e = factory.schematic_id(&schematic("a=b")).await.unwrap_err();
    assert!(
        matches!(&e, FactoryError::Timeout { after, .. } if *after == Duration::from_millis(300)),
        "{e:?}"
    );
    assert!(e.is_transient());
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn an_unreachable_factory_is_an_outage() {
    // A port nobody listens on any more.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let factory = ImageFactory::new(
        settings(&format!("http://{addr}"), false),
        Duration::from_secs(2),
    )
    .unwrap();
    let e = factory.schematic_id(&schematic("a=b")).await.unwrap_err();
    match &e {
        FactoryError::Unreachable { url, .. } => {
            assert_eq!(url, &format!("http://{addr}/schematics"))
        }
        other => panic!("{other:?}"),
    }
    assert!(e.is_transient());
}

#[tokio::test]
async fn refused_schematics_and_bad_answers_are_errors() {
    let standin = StandIn::start(Mode::Fail(StatusCode::BAD_REQUEST)).await;
    let factory = standin.factory(Duration::from_secs(5));
    let e = factory.schematic_id(&schematic("a=b")).await.unwrap_err();
    assert!(
        matches!(&e, FactoryError::InvalidSchematic { details, .. } if details == "factory is down"),
        "{e:?}"
    );
    assert!(!e.is_transient());

    standin.set(Mode::BadId);
    let e = factory.schematic_id(&schematic("c=d")).await.unwrap_err();
    assert!(matches!(e, FactoryError::BadResponse { .. }), "{e:?}");
    // Nothing cached from either.
    standin.set(Mode::Ok {
        delay: Duration::ZERO,
    });
    factory.schematic_id(&schematic("a=b")).await.unwrap();
    factory.schematic_id(&schematic("c=d")).await.unwrap();
    assert_eq!(standin.posts(), 4);
}

fn id_of(c: char) -> SchematicId {
    SchematicId::parse(&c.to_string().repeat(64)).unwrap()
}

#[test]
fn pxe_urls_have_the_go_providers_form() {
    let plain = settings("http://127.0.0.1:1", false);
    let id = id_of('a');
    let ids = "a".repeat(64);
    assert_eq!(
        pxe_url(&plain, &id, "v1.13.7", Arch::Amd64).unwrap(),
        format!("http://127.0.0.1:9/pxe-front/pxe/{ids}/v1.13.7/metal-amd64")
    );
    assert_eq!(
        pxe_url(&plain, &id, "v1.9.0", Arch::Arm64).unwrap(),
        format!("http://127.0.0.1:9/pxe-front/pxe/{ids}/v1.9.0/metal-arm64")
    );
    let secure = settings("http://127.0.0.1:1", true);
    assert_eq!(
        pxe_url(&secure, &id, "v1.13.7", Arch::Amd64).unwrap(),
        format!("http://127.0.0.1:9/pxe-front/pxe/{ids}/v1.13.7/metal-amd64-secureboot")
    );
    assert_eq!(
        pxe_url(&secure, &id, "v1.13.7", Arch::Arm64).unwrap(),
        format!("http://127.0.0.1:9/pxe-front/pxe/{ids}/v1.13.7/metal-arm64-secureboot")
    );
    for bad in ["", "v1.0 ||", "../v1", "v1/x", "${x}"] {
        assert_eq!(
            pxe_url(&plain, &id, bad, Arch::Amd64),
            Err(FactoryError::BadTalosVersion(bad.into())),
            "{bad:?}"
        );
    }
    assert_eq!(Arch::from_query("arm64"), Arch::Arm64);
    for other in ["x86_64", "i386", "", "ARM64"] {
        assert_eq!(Arch::from_query(other), Arch::Amd64, "{other:?}");
    }
    for bad in [
        "A".repeat(64),
        "a".repeat(63),
        "g".repeat(64),
        String::new(),
    ] {
        assert!(SchematicId::parse(&bad).is_none(), "{bad:?}");
    }
}

#[tokio::test]
async fn agent_and_talos_urls_come_from_the_factorys_ids() {
    let standin = StandIn::start(Mode::Ok {
        delay: Duration::ZERO,
    })
    .await;
    let factory = standin.factory(Duration::from_secs(5));
    let args = vec!["console=tty0".to_owned(), "console=ttyAMA0".to_owned()];
    let url = factory
        .agent_mode_url(Arch::Arm64, args.clone())
        .await
        .unwrap();
    let agent_id = sha_hex(&Schematic::agent_mode(args.clone()));
    assert_eq!(
        url,
        format!("http://127.0.0.1:9/pxe-front/pxe/{agent_id}/v1.13.7/metal-arm64")
    );
    let url = factory
        .talos_url(
            "v1.12.1",
            Arch::Amd64,
            vec!["siderolabs/iscsi-tools".into()],
            args.clone(),
        )
        .await
        .unwrap();
    let talos_id = sha_hex(&Schematic {
        extra_kernel_args: args,
        official_extensions: vec!["siderolabs/iscsi-tools".into()],
    });
    assert_eq!(
        url,
        format!("http://127.0.0.1:9/pxe-front/pxe/{talos_id}/v1.12.1/metal-amd64")
    );
    assert_eq!(standin.posts(), 2);
    // A bad version is refused before any POST.
    assert!(matches!(
        factory
            .talos_url("1.0 || shell", Arch::Amd64, vec![], vec![])
            .await,
        Err(FactoryError::BadTalosVersion(_))
    ));
    assert_eq!(standin.posts(), 2);
}
