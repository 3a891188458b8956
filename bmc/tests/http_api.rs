//! The HTTP power API back end against an in-test server shaped like the real peer (the
//! per-VM power API of talos `provision`, which cannot run here): `POST /poweron`,
//! `/poweroff`, `/reboot`, `/pxeboot`, `GET /status` -> `{"PoweredOn": bool}`; any other
//! method or path is refused.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use ironboot_bmc::http_api::{DEFAULT_TIMEOUT, HttpApiClient};
use ironboot_bmc::{BmcError, BootMode, PowerControl, PowerState};

#[derive(Default)]
struct Vm {
    powered_on: bool,
    pxe_next_boot: bool,
    /// Every call, in order.
    calls: Vec<&'static str>,
    /// Answer everything with this failure.
    fail: Option<(StatusCode, &'static str)>,
    /// Stall every answer this long.
    stall: Option<Duration>,
}

type Shared = Arc<Mutex<Vm>>;

async fn act(
    vm: &Shared,
    call: &'static str,
    change: impl FnOnce(&mut Vm),
) -> axum::response::Response {
    let (fail, stall) = {
        let mut vm = vm.lock().unwrap();
        vm.calls.push(call);
        (vm.fail, vm.stall)
    };
    if let Some(stall) = stall {
        tokio::time::sleep(stall).await;
    }
    if let Some((status, body)) = fail {
        return (status, body).into_response();
    }
    change(&mut vm.lock().unwrap());
    StatusCode::OK.into_response()
}

async fn start(vm: Shared) -> String {
    let app = Router::new()
        .route(
            "/status",
            get(|State(vm): State<Shared>| async move {
                let (fail, stall, on) = {
                    let mut g = vm.lock().unwrap();
                    g.calls.push("status");
                    (g.fail, g.stall, g.powered_on)
                };
                if let Some(stall) = stall {
                    tokio::time::sleep(stall).await;
                }
                if let Some((status, body)) = fail {
                    return (status, body).into_response();
                }
                axum::Json(serde_json::json!({ "PoweredOn": on })).into_response()
            }),
        )
        .route(
            "/poweron",
            post(|State(vm): State<Shared>| async move {
                act(&vm, "poweron", |v| v.powered_on = true).await
            }),
        )
        .route(
            "/poweroff",
            post(|State(vm): State<Shared>| async move {
                act(&vm, "poweroff", |v| v.powered_on = false).await
            }),
        )
        .route(
            "/reboot",
            post(|State(vm): State<Shared>| async move {
                act(&vm, "reboot", |v| v.powered_on = true).await
            }),
        )
        .route(
            "/pxeboot",
            post(|State(vm): State<Shared>| async move {
                act(&vm, "pxeboot", |v| v.pxe_next_boot = true).await
            }),
        )
        .with_state(vm);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr.to_string()
}

#[tokio::test]
async fn every_operation_reaches_the_api() {
    let vm = Shared::default();
    let addr = start(vm.clone()).await;
    let bmc = HttpApiClient::new(addr.clone()).unwrap();
    assert_eq!(bmc.address(), addr);

    assert_eq!(bmc.power_status().await.unwrap(), PowerState::Off);
    bmc.pxe_boot_once(BootMode::Bios).await.unwrap();
    assert!(vm.lock().unwrap().pxe_next_boot);
    bmc.power_on().await.unwrap();
    assert_eq!(bmc.power_status().await.unwrap(), PowerState::On);
    bmc.power_cycle().await.unwrap();
    bmc.power_off().await.unwrap();
    assert_eq!(bmc.power_status().await.unwrap(), PowerState::Off);
    // Nothing to clear on this API: no request.
    bmc.reset_boot_override().await.unwrap();
    assert_eq!(
        vm.lock().unwrap().calls,
        [
            "status", "pxeboot", "poweron", "status", "reboot", "poweroff", "status"
        ]
    );
}

#[tokio::test]
async fn a_non_200_answer_is_an_error_quoting_the_body() {
    let vm = Shared::default();
    vm.lock().unwrap().fail = Some((StatusCode::INTERNAL_SERVER_ERROR, "qemu process is gone"));
    let addr = start(vm.clone()).await;
    let bmc = HttpApiClient::new(addr.clone()).unwrap();

    let err = bmc.power_on().await.unwrap_err();
    assert!(matches!(err, BmcError::Protocol { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("500"), "{text}");
    assert!(text.contains("qemu process is gone"), "{text}");
    assert!(
        text.contains(&format!("POST http://{addr}/poweron")),
        "{text}"
    );

    let err = bmc.power_status().await.unwrap_err();
    assert!(err.to_string().contains("qemu process is gone"), "{err}");

    // A 2xx that is not 200 is refused too (the Go provider wants exactly 200).
    vm.lock().unwrap().fail = Some((StatusCode::ACCEPTED, ""));
    let err = bmc.power_off().await.unwrap_err();
    assert!(err.to_string().contains("202"), "{err}");

    // A status body that is not the API's JSON.
    let app = Router::new().route("/status", get(|| async { "powered: yes" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let odd = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let err = HttpApiClient::new(odd)
        .unwrap()
        .power_status()
        .await
        .unwrap_err();
    assert!(matches!(err, BmcError::Protocol { .. }), "{err:?}");
}

#[tokio::test]
async fn a_stalled_api_times_out_and_a_closed_one_is_unreachable() {
    assert_eq!(DEFAULT_TIMEOUT, Duration::from_secs(5));
    let vm = Shared::default();
    vm.lock().unwrap().stall = Some(Duration::from_secs(5));
    let addr = start(vm.clone()).await;
    let bmc = HttpApiClient::with_timeout(addr.clone(), Duration::from_millis(300)).unwrap();
    let started = Instant::now();
    let err = bmc.power_status().await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(err, BmcError::Timeout { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains(&format!("GET http://{addr}/status")),
        "{err}"
    );
    let err = bmc.power_cycle().await.unwrap_err();
    assert!(matches!(err, BmcError::Timeout { .. }), "{err:?}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let err = HttpApiClient::new(closed.clone())
        .unwrap()
        .power_on()
        .await
        .unwrap_err();
    assert!(matches!(err, BmcError::Unreachable { .. }), "{err:?}");
    assert_eq!(err.bmc(), closed);
}
