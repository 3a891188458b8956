//! Redfish back end (DMTF DSP0266/DSP0268) over reqwest with rustls.
//!
//! One operation is one short conversation with the BMC, as the Go provider does it,
//! but with fewer requests: the service root is read once and the chosen system is
//! remembered; each operation then logs in (a Redfish session when the service offers
//! `SessionService`, else HTTP Basic on every request), does its work and logs out.
//!
//! Choices made here (see [`RedfishClient`]):
//! - power on: `On`, else `ForceOn`;
//! - power off: `ForceOff`, else `GracefulShutdown` (soft: the OS must cooperate; poll
//!   with [`wait_for_power_state`]);
//! - power cycle: `ForceRestart`, else `PowerCycle`, else `GracefulRestart`; a machine
//!   that is off is powered on instead (a restart of an off machine is refused or
//!   ignored by many BMCs);
//! - each choice is checked against `ResetType@Redfish.AllowableValues` (or the
//!   action's `@Redfish.ActionInfo`) when the BMC publishes one, else the first
//!   preference is sent.
//!
//! Every request is bounded by [`RedfishConfig::timeout`]; an expired bound is a
//! [`BmcError::Timeout`] naming the request. The password never appears in `Debug`
//! output or logs.

mod model;

use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use reqwest::header::{ACCEPT, ETAG, HeaderMap, IF_MATCH, LOCATION};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use model::{
    AMI_FUTURE_STATE, ActionInfo, CYCLE_PREFERENCES, Collection, ComputerSystem, OFF_PREFERENCES,
    ON_PREFERENCES, ServiceRoot, choose_reset, describe_error_body, parse_power_state,
};
pub use model::{Boot, ResetType};

use crate::{BmcError, BootMode, PowerControl, PowerState};

/// The Go provider's bound for one Redfish operation.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

const SERVICE_ROOT: &str = "/redfish/v1/";

/// How to reach and drive one Redfish service.
#[derive(Clone)]
pub struct RedfishConfig {
    /// Base URL of the service, `http(s)://host[:port]` (a path is ignored).
    pub endpoint: String,
    /// User name.
    pub username: String,
    /// Password (never printed by `Debug`).
    pub password: String,
    /// The system to drive, by `UUID` (or `Id`); `None`: the collection's only member.
    pub system_id: Option<String>,
    /// Accept any TLS certificate (upstream `--redfish-insecure-skip-tls-verify`).
    pub insecure_skip_tls_verify: bool,
    /// Extra trusted CA certificates (PEM) when verifying.
    pub ca_certificates_pem: Vec<Vec<u8>>,
    /// Send `BootSourceOverrideMode` with the PXE override (upstream
    /// `--redfish-set-boot-source-override-mode`).
    pub set_boot_source_override_mode: bool,
    /// Use a Redfish session when the service offers `SessionService`.
    pub use_sessions: bool,
    /// Bound of each HTTP request (connect to end of body).
    pub timeout: Duration,
}

impl RedfishConfig {
    /// A configuration with the library's defaults: TLS verified, sessions when
    /// offered, boot mode sent, [`DEFAULT_TIMEOUT`].
    pub fn new(
        endpoint: impl Into<String>,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        RedfishConfig {
            endpoint: endpoint.into(),
            username: username.into(),
            password: password.into(),
            system_id: None,
            insecure_skip_tls_verify: false,
            ca_certificates_pem: Vec::new(),
            set_boot_source_override_mode: true,
            use_sessions: true,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The base URL the Go provider derives from a BMC host and its flags
    /// (`--redfish-use-https`, `--redfish-port`); IPv6 hosts are bracketed.
    pub fn endpoint_for(host: &str, port: u16, use_https: bool) -> String {
        let scheme = if use_https { "https" } else { "http" };
        if host.contains(':') && !host.starts_with('[') {
            format!("{scheme}://[{host}]:{port}")
        } else {
            format!("{scheme}://{host}:{port}")
        }
    }
}

impl fmt::Debug for RedfishConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedfishConfig")
            .field("endpoint", &self.endpoint)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("system_id", &self.system_id)
            .field("insecure_skip_tls_verify", &self.insecure_skip_tls_verify)
            .field("ca_certificates", &self.ca_certificates_pem.len())
            .field(
                "set_boot_source_override_mode",
                &self.set_boot_source_override_mode,
            )
            .field("use_sessions", &self.use_sessions)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A Redfish configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RedfishConfigError {
    /// The endpoint is not an `http`/`https` URL with a host.
    #[error("invalid Redfish endpoint {endpoint:?}: {reason}")]
    Endpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A CA certificate could not be read, or the HTTP client not built.
    #[error("Redfish client for {endpoint}: {reason}")]
    Client {
        /// The endpoint.
        endpoint: String,
        /// What failed.
        reason: String,
    },
}

/// What [`probe`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeReport {
    /// `RedfishVersion` of the service root, when given.
    pub redfish_version: Option<String>,
    /// The members of the Systems collection (`@odata.id`).
    pub systems: Vec<String>,
}

/// Where things are on this service, learnt once.
#[derive(Debug, Clone)]
struct Layout {
    redfish_version: Option<String>,
    sessions: Option<String>,
    systems: String,
    system: Option<String>,
}

/// How a conversation authenticates.
enum Auth {
    /// No credentials (session login).
    Anonymous,
    /// HTTP Basic on each request.
    Basic,
    /// A Redfish session.
    Session { token: String, uri: Option<String> },
}

/// One logged-in conversation.
struct Conn {
    auth: Auth,
    layout: Layout,
}

/// An answer, read whole.
struct Resp {
    during: String,
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Resp {
    fn etag(&self) -> Option<String> {
        if let Some(tag) = self.headers.get(ETAG).and_then(|v| v.to_str().ok()) {
            return Some(tag.to_owned());
        }
        serde_json::from_slice::<Value>(&self.body)
            .ok()?
            .get("@odata.etag")?
            .as_str()
            .map(str::to_owned)
    }
}

/// A Redfish service driving one computer system. Cheap to share behind an `Arc`.
pub struct RedfishClient {
    cfg: RedfishConfig,
    base: Url,
    address: String,
    http: reqwest::Client,
    layout: Mutex<Option<Layout>>,
}

impl fmt::Debug for RedfishClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedfishClient")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl RedfishClient {
    /// Builds a client; nothing is sent yet.
    pub fn new(cfg: RedfishConfig) -> Result<Self, RedfishConfigError> {
        let bad = |reason: &str| RedfishConfigError::Endpoint {
            endpoint: cfg.endpoint.clone(),
            reason: reason.to_owned(),
        };
        let mut base = Url::parse(&cfg.endpoint).map_err(|e| bad(&e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(bad("the scheme must be http or https"));
        }
        if base.host_str().is_none_or(str::is_empty) {
            return Err(bad("no host"));
        }
        if !base.username().is_empty() || base.password().is_some() {
            return Err(bad("put the credentials in the configuration, not the URL"));
        }
        base.set_path("/");
        base.set_query(None);
        base.set_fragment(None);
        let address = base.as_str().trim_end_matches('/').to_owned();

        let client_err = |reason: String| RedfishConfigError::Client {
            endpoint: address.clone(),
            reason,
        };
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(cfg.timeout)
            .timeout(cfg.timeout)
            .tls_danger_accept_invalid_certs(cfg.insecure_skip_tls_verify)
            .pool_idle_timeout(Duration::from_secs(30));
        if !cfg.ca_certificates_pem.is_empty() {
            let mut certs = Vec::new();
            for pem in &cfg.ca_certificates_pem {
                certs.push(
                    reqwest::Certificate::from_pem(pem)
                        .map_err(|e| client_err(format!("CA certificate: {e}")))?,
                );
            }
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder.build().map_err(|e| client_err(error_chain(&e)))?;
        Ok(RedfishClient {
            cfg,
            base,
            address,
            http,
            layout: Mutex::new(None),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &RedfishConfig {
        &self.cfg
    }

    /// The `@odata.id` of the system driven, once known (after the first operation).
    pub fn system_uri(&self) -> Option<String> {
        self.cached_layout().and_then(|l| l.system)
    }

    /// Reads the system's boot override (`Boot.BootSourceOverride*`).
    pub async fn boot_override(&self) -> Result<Boot, BmcError> {
        let conn = self.open().await?;
        let result = self.get_system(&conn).await;
        self.close(conn).await;
        Ok(result?.0.boot.unwrap_or_default())
    }

    /// Sends `ComputerSystem.Reset` with exactly `reset_type`, refused without a request
    /// when the BMC's allowable values exclude it.
    pub async fn reset(&self, reset_type: ResetType) -> Result<(), BmcError> {
        let conn = self.open().await?;
        let result = async {
            let (system, _) = self.get_system(&conn).await?;
            self.reset_with(&conn, &system, &[reset_type], "ComputerSystem.Reset")
                .await
        }
        .await;
        self.close(conn).await;
        result.map(|_| ())
    }

    fn cached_layout(&self) -> Option<Layout> {
        self.layout
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn store_layout(&self, layout: &Layout) {
        *self.layout.lock().unwrap_or_else(PoisonError::into_inner) = Some(layout.clone());
    }

    fn timeout_ms(&self) -> u64 {
        u64::try_from(self.cfg.timeout.as_millis()).unwrap_or(u64::MAX)
    }

    /// Resolves a path or URL given by the service, refusing other origins (a BMC must
    /// not send our credentials elsewhere).
    fn url(&self, target: &str) -> Result<Url, BmcError> {
        let url = self.base.join(target).map_err(|e| BmcError::Protocol {
            bmc: self.address.clone(),
            during: "resolving a link".to_owned(),
            detail: format!("{target:?}: {e}"),
        })?;
        if url.origin() != self.base.origin() {
            return Err(BmcError::Protocol {
                bmc: self.address.clone(),
                during: "resolving a link".to_owned(),
                detail: format!("{target:?} points outside the service {}", self.address),
            });
        }
        Ok(url)
    }

    async fn send(
        &self,
        auth: &Auth,
        method: Method,
        target: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> Result<Resp, BmcError> {
        let url = self.url(target)?;
        let during = format!("{method} {url}");
        let mut req = self
            .http
            .request(method, url)
            .header(ACCEPT, "application/json")
            .header("OData-Version", "4.0");
        req = match auth {
            Auth::Anonymous => req,
            Auth::Basic => req.basic_auth(&self.cfg.username, Some(&self.cfg.password)),
            Auth::Session { token, .. } => {
                let mut value = reqwest::header::HeaderValue::from_str(token).map_err(|_| {
                    BmcError::Protocol {
                        bmc: self.address.clone(),
                        during: during.clone(),
                        detail: "the session token is not a valid header value".to_owned(),
                    }
                })?;
                value.set_sensitive(true);
                req.header("X-Auth-Token", value)
            }
        };
        if let Some(body) = body {
            req = req.json(body);
        }
        if let Some(tag) = if_match {
            req = req.header(IF_MATCH, tag);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| self.transport_error(&e, &during))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .bytes()
            .await
            .map_err(|e| self.transport_error(&e, &during))?
            .to_vec();
        tracing::debug!(bmc = %self.address, request = %during, status = status.as_u16(), "redfish");
        Ok(Resp {
            during,
            status,
            headers,
            body,
        })
    }

    fn transport_error(&self, e: &reqwest::Error, during: &str) -> BmcError {
        if e.is_timeout() {
            BmcError::Timeout {
                bmc: self.address.clone(),
                timeout_ms: self.timeout_ms(),
                during: during.to_owned(),
            }
        } else {
            let mut detail = format!("{during}: {}", error_chain(e));
            if detail.contains("certificate") && !self.cfg.insecure_skip_tls_verify {
                detail.push_str(
                    " (TLS verification is on: trust the BMC's CA, or skip verification \
                     with --redfish-insecure-skip-tls-verify)",
                );
            }
            BmcError::Unreachable {
                bmc: self.address.clone(),
                detail,
            }
        }
    }

    /// Turns a non-2xx answer into the error it means.
    fn ensure_ok(&self, resp: Resp, operation: &'static str) -> Result<Resp, BmcError> {
        if resp.status.is_success() {
            return Ok(resp);
        }
        let said = describe_error_body(&resp.body);
        let detail = if said.is_empty() {
            format!("HTTP {}", resp.status)
        } else {
            format!("HTTP {}: {said}", resp.status)
        };
        Err(match resp.status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => BmcError::AuthRejected {
                bmc: self.address.clone(),
                detail: format!("{}: {detail}", resp.during),
            },
            StatusCode::NOT_IMPLEMENTED | StatusCode::METHOD_NOT_ALLOWED => BmcError::Unsupported {
                bmc: self.address.clone(),
                operation,
                detail: format!("{}: {detail}", resp.during),
            },
            _ => BmcError::Protocol {
                bmc: self.address.clone(),
                during: resp.during,
                detail,
            },
        })
    }

    fn parse<T: DeserializeOwned>(&self, resp: &Resp) -> Result<T, BmcError> {
        serde_json::from_slice(&resp.body).map_err(|e| BmcError::Protocol {
            bmc: self.address.clone(),
            during: resp.during.clone(),
            detail: format!("unexpected answer: {e}"),
        })
    }

    async fn get_json<T: DeserializeOwned>(
        &self,
        auth: &Auth,
        target: &str,
        operation: &'static str,
    ) -> Result<(T, Resp), BmcError> {
        let resp = self.send(auth, Method::GET, target, None, None).await?;
        let resp = self.ensure_ok(resp, operation)?;
        Ok((self.parse(&resp)?, resp))
    }

    /// Service root, login, system choice: everything an operation starts with.
    async fn open(&self) -> Result<Conn, BmcError> {
        let layout = match self.cached_layout() {
            Some(layout) => layout,
            None => self.read_service_root().await?,
        };
        let auth = self.authenticate(&layout).await?;
        let mut conn = Conn { auth, layout };
        if conn.layout.system.is_none() {
            match self.pick_system(&conn).await {
                Ok(system) => conn.layout.system = Some(system),
                Err(e) => {
                    self.close(conn).await;
                    return Err(e);
                }
            }
        }
        self.store_layout(&conn.layout);
        Ok(conn)
    }

    /// The layout the service root gives (no system chosen yet).
    async fn read_service_root(&self) -> Result<Layout, BmcError> {
        // The service root needs no credentials (DSP0266); Basic is sent anyway for
        // services that want it.
        let (root, _): (ServiceRoot, _) = self
            .get_json(&Auth::Basic, SERVICE_ROOT, "service root")
            .await?;
        let Some(systems) = root.systems.as_ref().map(|l| l.id.clone()) else {
            return Err(BmcError::Unsupported {
                bmc: self.address.clone(),
                operation: "Systems",
                detail: format!("the service root {SERVICE_ROOT} has no Systems link"),
            });
        };
        Ok(Layout {
            redfish_version: root.redfish_version.clone(),
            sessions: root.sessions_uri(),
            systems,
            system: None,
        })
    }

    /// A session when the service offers them and the configuration wants them, else
    /// Basic authentication.
    async fn authenticate(&self, layout: &Layout) -> Result<Auth, BmcError> {
        match (&layout.sessions, self.cfg.use_sessions) {
            (Some(sessions), true) => self.login(sessions).await,
            _ => Ok(Auth::Basic),
        }
    }

    async fn login(&self, sessions: &str) -> Result<Auth, BmcError> {
        let body = json!({"UserName": self.cfg.username, "Password": self.cfg.password});
        let resp = self
            .send(&Auth::Anonymous, Method::POST, sessions, Some(&body), None)
            .await?;
        if matches!(
            resp.status,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
        ) {
            return Err(self
                .ensure_ok(resp, "session login")
                .err()
                .unwrap_or_else(|| BmcError::AuthRejected {
                    bmc: self.address.clone(),
                    detail: "session login refused".to_owned(),
                }));
        }
        let token = resp
            .headers
            .get("X-Auth-Token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        match (resp.status.is_success(), token) {
            (true, Some(token)) => {
                let uri = resp
                    .headers
                    .get(LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
                    .or_else(|| {
                        serde_json::from_slice::<Value>(&resp.body)
                            .ok()?
                            .get("@odata.id")?
                            .as_str()
                            .map(str::to_owned)
                    });
                tracing::debug!(bmc = %self.address, "redfish session opened");
                Ok(Auth::Session { token, uri })
            }
            (ok, _) => {
                tracing::debug!(
                    bmc = %self.address,
                    status = resp.status.as_u16(),
                    token = ok,
                    "redfish session refused, using Basic authentication"
                );
                Ok(Auth::Basic)
            }
        }
    }

    /// Logs out of a session (best effort: a BMC expires it anyway).
    async fn close(&self, conn: Conn) {
        if let Auth::Session {
            uri: Some(ref uri), ..
        } = conn.auth
        {
            match self.send(&conn.auth, Method::DELETE, uri, None, None).await {
                Ok(resp) if resp.status.is_success() => {}
                Ok(resp) => {
                    tracing::debug!(bmc = %self.address, status = resp.status.as_u16(), "redfish session logout refused")
                }
                Err(e) => {
                    tracing::debug!(bmc = %self.address, error = %e, "redfish session logout failed")
                }
            }
        }
    }

    async fn pick_system(&self, conn: &Conn) -> Result<String, BmcError> {
        let (collection, _): (Collection, _) = self
            .get_json(&conn.auth, &conn.layout.systems, "Systems")
            .await?;
        let members: Vec<String> = collection.members.into_iter().map(|m| m.id).collect();
        if members.len() == 1 && self.cfg.system_id.is_none() {
            return Ok(members[0].clone());
        }
        if members.is_empty() {
            return Err(BmcError::Protocol {
                bmc: self.address.clone(),
                during: format!("choosing a system in {}", conn.layout.systems),
                detail: "the Systems collection is empty".to_owned(),
            });
        }
        // Several members, or a UUID to match: read each (bounded list).
        let mut seen = Vec::new();
        for member in members.iter().take(64) {
            let (system, _): (ComputerSystem, _) =
                self.get_json(&conn.auth, member, "Systems").await?;
            if let Some(want) = &self.cfg.system_id {
                let by_uuid = system
                    .uuid
                    .as_deref()
                    .is_some_and(|u| u.eq_ignore_ascii_case(want));
                if by_uuid || system.id.as_deref() == Some(want.as_str()) {
                    return Ok(member.clone());
                }
            }
            seen.push(format!(
                "{member} (UUID {})",
                system.uuid.as_deref().unwrap_or("unknown")
            ));
        }
        let detail = match &self.cfg.system_id {
            Some(want) => format!("no system has UUID {want}; members: {}", seen.join(", ")),
            None => format!(
                "{} systems and no UUID configured to choose one; members: {}",
                members.len(),
                seen.join(", ")
            ),
        };
        Err(BmcError::Protocol {
            bmc: self.address.clone(),
            during: format!("choosing a system in {}", conn.layout.systems),
            detail,
        })
    }

    fn system_path<'c>(&self, conn: &'c Conn) -> &'c str {
        conn.layout.system.as_deref().unwrap_or_default()
    }

    async fn get_system(&self, conn: &Conn) -> Result<(ComputerSystem, Option<String>), BmcError> {
        let (system, resp): (ComputerSystem, _) = self
            .get_json(&conn.auth, self.system_path(conn), "ComputerSystem")
            .await?;
        let etag = resp.etag();
        Ok((system, etag))
    }

    fn power_of(&self, conn: &Conn, system: &ComputerSystem) -> Result<PowerState, BmcError> {
        let raw = system.power_state.as_deref().unwrap_or("");
        parse_power_state(raw).ok_or_else(|| BmcError::Protocol {
            bmc: self.address.clone(),
            during: format!("GET {}", self.system_path(conn)),
            detail: format!("unknown PowerState {raw:?}"),
        })
    }

    /// Chooses a reset type among `preferences` and posts it to the action target.
    async fn reset_with(
        &self,
        conn: &Conn,
        system: &ComputerSystem,
        preferences: &[ResetType],
        operation: &'static str,
    ) -> Result<ResetType, BmcError> {
        let action = system.actions.as_ref().and_then(|a| a.reset.as_ref());
        let Some(target) = action.and_then(|a| a.target.clone()) else {
            return Err(BmcError::Unsupported {
                bmc: self.address.clone(),
                operation,
                detail: format!(
                    "{} offers no #ComputerSystem.Reset action",
                    self.system_path(conn)
                ),
            });
        };
        let mut allowed = action.and_then(|a| a.allowable.clone());
        if allowed.is_none() {
            if let Some(info) = action.and_then(|a| a.action_info.clone()) {
                match self
                    .get_json::<ActionInfo>(&conn.auth, &info, "ActionInfo")
                    .await
                {
                    Ok((info, _)) => allowed = info.reset_types(),
                    Err(e) => {
                        tracing::debug!(bmc = %self.address, error = %e, "redfish ActionInfo unreadable, not checking ResetType")
                    }
                }
            }
        }
        let reset_type =
            choose_reset(preferences, allowed.as_deref()).map_err(|why| BmcError::Unsupported {
                bmc: self.address.clone(),
                operation,
                detail: format!("{target}: {why}"),
            })?;
        let body = json!({"ResetType": reset_type.as_str()});
        let resp = self
            .send(&conn.auth, Method::POST, &target, Some(&body), None)
            .await?;
        self.ensure_ok(resp, operation)?;
        tracing::info!(bmc = %self.address, reset = %reset_type, "redfish reset sent");
        Ok(reset_type)
    }

    async fn reset_for(
        &self,
        conn: &Conn,
        preferences: &[ResetType],
        operation: &'static str,
    ) -> Result<(), BmcError> {
        let (system, _) = self.get_system(conn).await?;
        self.reset_with(conn, &system, preferences, operation)
            .await
            .map(|_| ())
    }

    async fn cycle(&self, conn: &Conn) -> Result<(), BmcError> {
        let (system, _) = self.get_system(conn).await?;
        let preferences = match self.power_of(conn, &system)? {
            PowerState::Off => {
                tracing::info!(bmc = %self.address, "power cycle of a machine that is off: powering on");
                ON_PREFERENCES
            }
            PowerState::On => CYCLE_PREFERENCES,
        };
        self.reset_with(conn, &system, preferences, "power cycle")
            .await
            .map(|_| ())
    }

    /// PATCHes `body` to `system`, If-Match the ETag of a GET just before.
    async fn patch_with_fresh_etag(
        &self,
        conn: &Conn,
        system: &str,
        body: &Value,
    ) -> Result<Resp, BmcError> {
        let (_, etag) = self.get_system(conn).await?;
        self.send(
            &conn.auth,
            Method::PATCH,
            system,
            Some(body),
            etag.as_deref(),
        )
        .await
    }

    /// PATCHes `{"Boot": boot}` on the system with `If-Match` when the system has an
    /// ETag, retrying once on 412 with a fresh one, and taking AMI's `<system>/SD`
    /// detour when the BMC asks for it.
    async fn patch_boot(
        &self,
        conn: &Conn,
        boot: Value,
        operation: &'static str,
    ) -> Result<(), BmcError> {
        let system = self.system_path(conn).to_owned();
        let body = json!({ "Boot": boot });
        let mut resp = self.patch_with_fresh_etag(conn, &system, &body).await?;
        if resp.status == StatusCode::PRECONDITION_FAILED {
            resp = self.patch_with_fresh_etag(conn, &system, &body).await?;
        }
        if !resp.status.is_success() && describe_error_body(&resp.body).contains(AMI_FUTURE_STATE) {
            let sd = format!("{}/SD", system.trim_end_matches('/'));
            tracing::debug!(bmc = %self.address, uri = %sd, "redfish: AMI future-state URI");
            let current = self.send(&conn.auth, Method::GET, &sd, None, None).await?;
            let current = self.ensure_ok(current, operation)?;
            let etag = current.etag();
            let resp = self
                .send(&conn.auth, Method::PATCH, &sd, Some(&body), etag.as_deref())
                .await?;
            self.ensure_ok(resp, operation)?;
            return Ok(());
        }
        self.ensure_ok(resp, operation).map(|_| ())
    }

    fn pxe_body(&self, mode: BootMode) -> Value {
        let mut boot = json!({
            "BootSourceOverrideTarget": "Pxe",
            "BootSourceOverrideEnabled": "Once",
        });
        if self.cfg.set_boot_source_override_mode {
            boot["BootSourceOverrideMode"] = json!(match mode {
                BootMode::Uefi => "UEFI",
                BootMode::Bios => "Legacy",
            });
        }
        boot
    }
}

impl PowerControl for RedfishClient {
    fn address(&self) -> &str {
        &self.address
    }

    async fn power_status(&self) -> Result<PowerState, BmcError> {
        let conn = self.open().await?;
        let result = match self.get_system(&conn).await {
            Ok((system, _)) => self.power_of(&conn, &system),
            Err(e) => Err(e),
        };
        self.close(conn).await;
        result
    }

    async fn power_on(&self) -> Result<(), BmcError> {
        let conn = self.open().await?;
        let result = self.reset_for(&conn, ON_PREFERENCES, "power on").await;
        self.close(conn).await;
        result
    }

    async fn power_off(&self) -> Result<(), BmcError> {
        let conn = self.open().await?;
        let result = self.reset_for(&conn, OFF_PREFERENCES, "power off").await;
        self.close(conn).await;
        result
    }

    async fn power_cycle(&self) -> Result<(), BmcError> {
        let conn = self.open().await?;
        let result = self.cycle(&conn).await;
        self.close(conn).await;
        result
    }

    async fn pxe_boot_once(&self, mode: BootMode) -> Result<(), BmcError> {
        let conn = self.open().await?;
        let result = self
            .patch_boot(&conn, self.pxe_body(mode), "one-time PXE boot")
            .await;
        self.close(conn).await;
        result
    }

    async fn reset_boot_override(&self) -> Result<(), BmcError> {
        let conn = self.open().await?;
        let boot = json!({
            "BootSourceOverrideEnabled": "Disabled",
            "BootSourceOverrideTarget": "None",
        });
        let result = self.patch_boot(&conn, boot, "reset boot override").await;
        self.close(conn).await;
        result
    }
}

/// Does `cfg.endpoint` speak Redfish and accept these credentials? Reads the service
/// root and the Systems collection (logging in and out when sessions are offered),
/// all within `bound`.
pub async fn probe(cfg: RedfishConfig, bound: Duration) -> Result<ProbeReport, BmcError> {
    let mut cfg = cfg;
    cfg.timeout = cfg.timeout.min(bound);
    let endpoint = cfg.endpoint.clone();
    let client = RedfishClient::new(cfg).map_err(|e| BmcError::Unreachable {
        bmc: endpoint,
        detail: e.to_string(),
    })?;
    let work = async {
        let layout = client.read_service_root().await?;
        let auth = client.authenticate(&layout).await?;
        let conn = Conn { auth, layout };
        let result = client
            .get_json::<Collection>(&conn.auth, &conn.layout.systems, "Systems")
            .await;
        let report = result.map(|(c, _)| ProbeReport {
            redfish_version: conn.layout.redfish_version.clone(),
            systems: c.members.into_iter().map(|m| m.id).collect(),
        });
        client.close(conn).await;
        report
    };
    match tokio::time::timeout(bound, work).await {
        Ok(result) => result,
        Err(_) => Err(BmcError::Timeout {
            bmc: client.address.clone(),
            timeout_ms: u64::try_from(bound.as_millis()).unwrap_or(u64::MAX),
            during: format!("probing Redfish at {}{SERVICE_ROOT}", client.address),
        }),
    }
}

/// Polls `power_status` every `interval` until it reads `want`, for at most `bound`.
/// BMCs apply power changes asynchronously (seconds); errors while polling are
/// tolerated until the bound and then reported in the timeout.
pub async fn wait_for_power_state<P: PowerControl + ?Sized>(
    bmc: &P,
    want: PowerState,
    bound: Duration,
    interval: Duration,
) -> Result<(), BmcError> {
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        let last = match bmc.power_status().await {
            Ok(state) if state == want => return Ok(()),
            Ok(state) => format!("last read {state:?}"),
            Err(e) => format!("last error: {e}"),
        };
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(BmcError::Timeout {
                bmc: bmc.address().to_owned(),
                timeout_ms: u64::try_from(bound.as_millis()).unwrap_or(u64::MAX),
                during: format!("waiting for power state {want:?} ({last})"),
            });
        }
        tokio::time::sleep(interval.min(deadline - now)).await;
    }
}

/// `e` and its sources, joined: reqwest's own message alone hides the cause
/// ("error sending request") that an operator needs (refused, certificate, ...).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_password() {
        let cfg = RedfishConfig::new("https://10.0.0.1", "admin", "s3cr3t-pass");
        let text = format!("{cfg:?}");
        assert!(!text.contains("s3cr3t-pass"), "{text}");
        let client = RedfishClient::new(cfg).unwrap();
        let text = format!("{client:?}");
        assert!(!text.contains("s3cr3t-pass"), "{text}");
        assert_eq!(client.address(), "https://10.0.0.1");
    }

    fn resp(etag_header: Option<&str>, body: &str) -> Resp {
        let mut headers = HeaderMap::new();
        if let Some(tag) = etag_header {
            headers.insert(ETAG, tag.parse().unwrap());
        }
        Resp {
            during: "GET /redfish/v1/Systems/1".to_owned(),
            status: StatusCode::OK,
            headers,
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn etags_come_from_the_header_else_the_body() {
        let body = r#"{"@odata.etag":"W/\"body-tag\""}"#;
        assert_eq!(
            resp(Some("\"hdr\""), body).etag().as_deref(),
            Some("\"hdr\"")
        );
        assert_eq!(resp(None, body).etag().as_deref(), Some("W/\"body-tag\""));
        assert_eq!(resp(None, "{}").etag(), None);
        assert_eq!(resp(None, "not json").etag(), None);
    }

    #[test]
    fn the_pxe_override_carries_the_mode_only_when_configured() {
        let mut cfg = RedfishConfig::new("http://h", "u", "p");
        let with = RedfishClient::new(cfg.clone()).unwrap();
        assert_eq!(
            with.pxe_body(BootMode::Uefi),
            json!({"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once",
                   "BootSourceOverrideMode": "UEFI"})
        );
        assert_eq!(
            with.pxe_body(BootMode::Bios)["BootSourceOverrideMode"],
            "Legacy"
        );
        cfg.set_boot_source_override_mode = false;
        let without = RedfishClient::new(cfg).unwrap();
        assert_eq!(
            without.pxe_body(BootMode::Bios),
            json!({"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once"})
        );
    }

    #[test]
    fn endpoints_are_checked_and_built() {
        assert_eq!(
            RedfishConfig::endpoint_for("10.0.0.5", 443, true),
            "https://10.0.0.5:443"
        );
        assert_eq!(
            RedfishConfig::endpoint_for("fd00::5", 8000, false),
            "http://[fd00::5]:8000"
        );
        for bad in ["ftp://x", "not a url", "https://u:p@host"] {
            let err = RedfishClient::new(RedfishConfig::new(bad, "u", "p")).unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
        let client =
            RedfishClient::new(RedfishConfig::new("http://h:8000/redfish/v1", "u", "p")).unwrap();
        assert_eq!(client.address(), "http://h:8000");
        // Links leading elsewhere are refused.
        assert!(client.url("/redfish/v1/Systems/1").is_ok());
        assert!(client.url("http://other:8000/redfish/v1").is_err());
    }
}
