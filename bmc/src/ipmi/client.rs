//! The thin I/O side: one UDP socket per operation, retransmission with a bounded
//! per-attempt timeout under an overall deadline, and the [`PowerControl`] mapping.
//! Every protocol decision is in the sans-IO modules ([`super::wire`],
//! [`super::session`], [`super::cmd`]).

use std::fmt;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::{Instant, timeout_at};
use tracing::{debug, warn};

use crate::{BmcError, BootMode, PowerControl, PowerState};

use super::cmd::{self, BootOverride, ChassisControl};
use super::crypto::CipherSuite;
use super::session::{self, Handshake, HandshakeError, Nonces, Session};
use super::suite_cache::{self, DEFAULT_SUITE_CACHE_TTL};
use super::wire::{self, Packet, PayloadType};

/// The IPMI-over-LAN UDP port.
pub const DEFAULT_PORT: u16 = 623;
/// Default bound of one whole operation (session setup, command, close).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);
/// Default wait for a reply before a request is sent again.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default number of retransmissions of one request (so 1 + 3 attempts).
pub const DEFAULT_RETRIES: u32 = 3;
/// Longest user name IPMI v2.0 allows.
pub const MAX_USERNAME_LEN: usize = 16;
/// Longest password IPMI v2.0 allows.
pub const MAX_PASSWORD_LEN: usize = 20;

/// How to reach and log in to one BMC over IPMI v2.0 RMCP+. `Debug` never shows the
/// password.
#[derive(Clone)]
pub struct IpmiConfig {
    /// Host name or IP address of the BMC.
    pub host: String,
    /// UDP port (default [`DEFAULT_PORT`]).
    pub port: u16,
    /// User name (at most 16 bytes).
    pub username: String,
    /// Password (at most 20 bytes).
    pub password: String,
    /// Bound of one whole operation.
    pub timeout: Duration,
    /// Wait for a reply before retransmitting.
    pub attempt_timeout: Duration,
    /// Retransmissions per request.
    pub retries: u32,
    /// Cipher suite to try first. `None`: ask the BMC (Get Channel Cipher Suites) and
    /// take 17 if offered, else 3. Either way, if the BMC refuses the suite's
    /// algorithms at Open Session, the other suite is tried.
    pub cipher_suite: Option<CipherSuite>,
    /// How long the BMC's answer to that question (its silence included) is kept for
    /// its address, shared by every client in the process (default
    /// [`DEFAULT_SUITE_CACHE_TTL`]; zero: ask every time).
    pub suite_cache_ttl: Duration,
}

impl IpmiConfig {
    /// A configuration with the defaults: port 623, [`DEFAULT_TIMEOUT`],
    /// [`DEFAULT_ATTEMPT_TIMEOUT`], [`DEFAULT_RETRIES`], cipher suite chosen by asking
    /// (the answer kept for [`DEFAULT_SUITE_CACHE_TTL`]).
    pub fn new(
        host: impl Into<String>,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        Self {
            host: host.into(),
            port: DEFAULT_PORT,
            username: username.into(),
            password: password.into(),
            timeout: DEFAULT_TIMEOUT,
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
            retries: DEFAULT_RETRIES,
            cipher_suite: None,
            suite_cache_ttl: DEFAULT_SUITE_CACHE_TTL,
        }
    }
}

impl fmt::Debug for IpmiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IpmiConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("timeout", &self.timeout)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("retries", &self.retries)
            .field("cipher_suite", &self.cipher_suite)
            .field("suite_cache_ttl", &self.suite_cache_ttl)
            .finish()
    }
}

/// A configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IpmiConfigError {
    /// No host given.
    #[error("IPMI BMC host is empty")]
    EmptyHost,
    /// The user name is longer than IPMI allows.
    #[error(
        "IPMI user name for BMC {bmc} is {len} bytes; IPMI v2.0 allows at most {MAX_USERNAME_LEN}"
    )]
    UsernameTooLong {
        /// The BMC address.
        bmc: String,
        /// The length given.
        len: usize,
    },
    /// The password is longer than IPMI allows.
    #[error(
        "IPMI password for BMC {bmc} is {len} bytes; IPMI v2.0 allows at most {MAX_PASSWORD_LEN}"
    )]
    PasswordTooLong {
        /// The BMC address.
        bmc: String,
        /// The length given.
        len: usize,
    },
    /// A zero timeout would fail every operation.
    #[error("IPMI timeouts for BMC {bmc} must be non-zero")]
    ZeroTimeout {
        /// The BMC address.
        bmc: String,
    },
}

/// An IPMI v2.0 RMCP+ ("lanplus") client for one BMC. Each operation opens its own
/// session and closes it again (like the Go provider), so clients are cheap to keep and
/// safe to share between tasks.
#[derive(Debug)]
pub struct IpmiClient {
    config: IpmiConfig,
    address: String,
    /// The suite the last successful session used: tried first next time.
    negotiated: Mutex<Option<CipherSuite>>,
}

/// What one operation does inside its session.
#[derive(Debug, Clone, Copy)]
enum Op {
    Status,
    Control(ChassisControl),
    Boot(BootOverride),
}

impl IpmiClient {
    /// A client for the BMC `config` describes. Nothing is sent until an operation runs.
    pub fn new(config: IpmiConfig) -> Result<Self, IpmiConfigError> {
        if config.host.is_empty() {
            return Err(IpmiConfigError::EmptyHost);
        }
        let address = if config.host.contains(':') {
            format!("[{}]:{}", config.host, config.port)
        } else {
            format!("{}:{}", config.host, config.port)
        };
        if config.username.len() > MAX_USERNAME_LEN {
            return Err(IpmiConfigError::UsernameTooLong {
                bmc: address,
                len: config.username.len(),
            });
        }
        if config.password.len() > MAX_PASSWORD_LEN {
            return Err(IpmiConfigError::PasswordTooLong {
                bmc: address,
                len: config.password.len(),
            });
        }
        if config.timeout.is_zero() || config.attempt_timeout.is_zero() {
            return Err(IpmiConfigError::ZeroTimeout { bmc: address });
        }
        Ok(Self {
            config,
            address,
            negotiated: Mutex::new(None),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &IpmiConfig {
        &self.config
    }

    /// The cipher suite of the last session that was established, if any.
    pub fn negotiated_cipher_suite(&self) -> Option<CipherSuite> {
        *self.negotiated.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Chassis Control with any action (the [`PowerControl`] methods cover up, down and
    /// cycle; this adds hard reset).
    pub async fn chassis_control(&self, action: ChassisControl) -> Result<(), BmcError> {
        self.perform(Op::Control(action)).await.map(drop)
    }

    /// Hard reset (reset line pulse).
    pub async fn hard_reset(&self) -> Result<(), BmcError> {
        self.chassis_control(ChassisControl::HardReset).await
    }

    /// Set System Boot Options parameter 5 (boot flags).
    pub async fn set_boot_override(&self, boot: BootOverride) -> Result<(), BmcError> {
        self.perform(Op::Boot(boot)).await.map(drop)
    }

    async fn perform(&self, op: Op) -> Result<bool, BmcError> {
        let deadline = Instant::now() + self.config.timeout;
        let mut link = Link::open(self, deadline).await?;
        let mut session = self.establish(&mut link).await?;
        let result = link.run(&mut session, op).await;
        link.close(&mut session).await;
        result
    }

    async fn establish(&self, link: &mut Link<'_>) -> Result<Session, BmcError> {
        let ttl = self.config.suite_cache_ttl;
        let first = match (self.negotiated_cipher_suite(), self.config.cipher_suite) {
            (Some(suite), _) | (None, Some(suite)) => suite,
            (None, None) if ttl.is_zero() => link.discover_suite().await?,
            (None, None) => {
                let cached = suite_cache::shared().lookup(&self.address, Instant::now());
                match cached {
                    Some(suite) => {
                        debug!(bmc = %self.address, %suite, "cipher suite remembered for this BMC");
                        suite
                    }
                    None => {
                        let suite = link.discover_suite().await?;
                        suite_cache::shared().record(&self.address, suite, ttl, Instant::now());
                        suite
                    }
                }
            }
        };
        let mut session = match link.handshake_with_restarts(first).await? {
            Ok(session) => session,
            Err(e) if e.is_algorithm_refusal() => {
                let other = first.other();
                warn!(bmc = %self.address, "BMC refused {first} ({e}); trying {other}");
                link.handshake_with_restarts(other)
                    .await?
                    .map_err(|e| link.handshake_error(e))?
            }
            Err(e) => return Err(link.handshake_error(e)),
        };
        *self.negotiated.lock().unwrap_or_else(|e| e.into_inner()) = Some(session.suite());
        if session.suite() != first && self.config.cipher_suite.is_none() && !ttl.is_zero() {
            suite_cache::shared().correct(&self.address, session.suite(), Instant::now());
        }
        if let Err(e) = link.raise_privilege(&mut session).await {
            link.close(&mut session).await;
            return Err(e);
        }
        Ok(session)
    }
}

impl PowerControl for IpmiClient {
    fn address(&self) -> &str {
        &self.address
    }

    async fn power_status(&self) -> Result<PowerState, BmcError> {
        Ok(if self.perform(Op::Status).await? {
            PowerState::On
        } else {
            PowerState::Off
        })
    }

    async fn power_on(&self) -> Result<(), BmcError> {
        self.chassis_control(ChassisControl::PowerUp).await
    }

    async fn power_off(&self) -> Result<(), BmcError> {
        self.chassis_control(ChassisControl::PowerDown).await
    }

    async fn power_cycle(&self) -> Result<(), BmcError> {
        self.chassis_control(ChassisControl::PowerCycle).await
    }

    async fn pxe_boot_once(&self, mode: BootMode) -> Result<(), BmcError> {
        self.set_boot_override(BootOverride::PxeOnce(mode)).await
    }

    async fn reset_boot_override(&self) -> Result<(), BmcError> {
        self.set_boot_override(BootOverride::None).await
    }
}

fn random<const N: usize>(bmc: &str) -> Result<[u8; N], BmcError> {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).map_err(|e| BmcError::Protocol {
        bmc: bmc.to_owned(),
        during: "drawing random numbers".to_owned(),
        detail: e.to_string(),
    })?;
    Ok(out)
}

/// The payload of an unauthenticated RMCP+ packet of `expected` type, for session 0.
fn setup_payload(datagram: &[u8], expected: PayloadType) -> Option<&[u8]> {
    match wire::decode_packet(datagram, 0) {
        Ok(Packet::V20 {
            payload_type,
            authenticated: false,
            encrypted: false,
            session_id: 0,
            payload,
            ..
        }) if payload_type == expected => Some(payload),
        _ => None,
    }
}

/// A reply to one IPMI request: completion code and data.
type Reply = (u8, Vec<u8>);

/// One operation's socket and deadline.
struct Link<'c> {
    client: &'c IpmiClient,
    socket: UdpSocket,
    peer: SocketAddr,
    deadline: Instant,
    rq_seq: u8,
    /// Why the last datagram from the BMC was dropped (added to timeout messages).
    last_dropped: Option<String>,
    /// The current handshake got past Open Session.
    session_opened: bool,
}

impl<'c> Link<'c> {
    async fn open(client: &'c IpmiClient, deadline: Instant) -> Result<Self, BmcError> {
        let bmc = &client.address;
        let cfg = &client.config;
        let resolved = timeout_at(
            deadline,
            tokio::net::lookup_host((cfg.host.as_str(), cfg.port)),
        )
        .await
        .map_err(|_| BmcError::Timeout {
            bmc: bmc.clone(),
            timeout_ms: duration_ms(cfg.timeout),
            during: "resolving the BMC address".to_owned(),
        })?
        .map_err(|e| BmcError::Unreachable {
            bmc: bmc.clone(),
            detail: format!("cannot resolve {}: {e}", cfg.host),
        })?;
        let addrs: Vec<SocketAddr> = resolved.collect();
        let Some(peer) = addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or(addrs.first())
            .copied()
        else {
            return Err(BmcError::Unreachable {
                bmc: bmc.clone(),
                detail: format!("{} resolves to no address", cfg.host),
            });
        };
        let local: SocketAddr = if peer.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        // Not connected: a BMC that is down gives silence (a timeout), as on a real
        // network, rather than an ICMP error on loopback.
        let socket = UdpSocket::bind(local)
            .await
            .map_err(|e| BmcError::Unreachable {
                bmc: bmc.clone(),
                detail: format!("cannot open a UDP socket: {e}"),
            })?;
        Ok(Self {
            client,
            socket,
            peer,
            deadline,
            rq_seq: random::<1>(bmc)?[0] & 0x3f,
            last_dropped: None,
            session_opened: false,
        })
    }

    fn bmc(&self) -> String {
        self.client.address.clone()
    }

    fn next_rq_seq(&mut self) -> u8 {
        self.rq_seq = (self.rq_seq + 1) & 0x3f;
        self.rq_seq
    }

    fn attempts(&self) -> u32 {
        self.client.config.retries.saturating_add(1)
    }

    /// Sends `build(state)` and waits for a datagram that `accept` takes (`Some`),
    /// retransmitting a freshly built datagram after each attempt timeout, at most
    /// `attempts` times and never past the operation's deadline. The outer error is the
    /// transport's (timeout, unreachable); the inner result is what the BMC said.
    async fn exchange<S, T, E>(
        &mut self,
        step: &str,
        attempts: u32,
        state: &mut S,
        build: impl Fn(&mut S) -> Result<Vec<u8>, BmcError>,
        accept: impl Fn(&mut S, &[u8]) -> Option<Result<T, E>>,
    ) -> Result<Result<T, E>, BmcError> {
        let started = Instant::now();
        self.last_dropped = None;
        let mut buf = vec![0u8; 2048];
        let mut sent = 0;
        while sent < attempts && Instant::now() < self.deadline {
            let datagram = build(state)?;
            self.socket
                .send_to(&datagram, self.peer)
                .await
                .map_err(|e| BmcError::Unreachable {
                    bmc: self.bmc(),
                    detail: format!("sending {step}: {e}"),
                })?;
            sent += 1;
            let attempt_deadline =
                (Instant::now() + self.client.config.attempt_timeout).min(self.deadline);
            loop {
                let (len, from) =
                    match timeout_at(attempt_deadline, self.socket.recv_from(&mut buf)).await {
                        Err(_) => break,
                        Ok(Err(e)) => {
                            debug!(bmc = %self.client.address, step, "receive error: {e}");
                            self.last_dropped = Some(format!("receive error: {e}"));
                            break;
                        }
                        Ok(Ok(got)) => got,
                    };
                if from != self.peer {
                    continue;
                }
                match accept(state, &buf[..len]) {
                    Some(result) => return Ok(result),
                    None => {
                        debug!(bmc = %self.client.address, step, len, "ignoring an unrelated datagram");
                    }
                }
            }
            if sent < attempts {
                debug!(bmc = %self.client.address, step, attempt = sent, "no reply, sending again");
            }
        }
        let mut during = format!("{step} ({sent} attempts)");
        if let Some(why) = &self.last_dropped {
            during.push_str(&format!("; last reply dropped: {why}"));
        }
        Err(BmcError::Timeout {
            bmc: self.bmc(),
            timeout_ms: duration_ms(started.elapsed()),
            during,
        })
    }

    /// An IPMI request outside a session: v1.5 framing (Get Channel Authentication
    /// Capabilities) or RMCP+ framing with session 0 (Get Channel Cipher Suites).
    async fn presession_request(
        &mut self,
        v15: bool,
        netfn: u8,
        command: u8,
        data: &[u8],
        step: &'static str,
        attempts: u32,
    ) -> Result<Reply, BmcError> {
        let rq_seq = self.next_rq_seq();
        let message = wire::encode_request(netfn, command, rq_seq, data);
        let datagram = if v15 {
            wire::encode_v15_presession(&message)
        } else {
            wire::encode_v20_plain(PayloadType::Ipmi, &message)
        };
        let bmc = self.bmc();
        self.exchange(
            step,
            attempts,
            &mut (),
            |_| Ok(datagram.clone()),
            |_, got| {
                let message = match wire::decode_packet(got, 0) {
                    Ok(Packet::V15 { message, .. }) => message,
                    Ok(Packet::V20 {
                        payload_type: PayloadType::Ipmi,
                        authenticated: false,
                        encrypted: false,
                        session_id: 0,
                        payload,
                        ..
                    }) => payload,
                    _ => return None,
                };
                match_reply(&bmc, step, message, netfn, command, rq_seq)
            },
        )
        .await?
    }

    /// An IPMI request inside the session.
    async fn session_request(
        &mut self,
        session: &mut Session,
        netfn: u8,
        command: u8,
        data: &[u8],
        step: &'static str,
        attempts: u32,
    ) -> Result<Reply, BmcError> {
        let rq_seq = self.next_rq_seq();
        let message = wire::encode_request(netfn, command, rq_seq, data);
        self.session_send(session, &message, netfn, command, rq_seq, step, attempts)
            .await
    }

    /// Sends the IPMI `message` (request `rq_seq`) inside the session, `attempts`
    /// times at most. Every datagram gets the next session sequence number (an RMCP+
    /// BMC drops a datagram whose session sequence number it has seen, as a replay)
    /// while the message inside keeps its rqSeq: by the IPMI v2.0 sequence number
    /// rules, a request with the same rqSeq, netFn and command is a retry, which a
    /// compliant BMC answers again without running the command a second time.
    #[allow(clippy::too_many_arguments)]
    async fn session_send(
        &mut self,
        session: &mut Session,
        message: &[u8],
        netfn: u8,
        command: u8,
        rq_seq: u8,
        step: &'static str,
        attempts: u32,
    ) -> Result<Reply, BmcError> {
        let bmc = self.bmc();
        let dropped = std::sync::Mutex::new(None);
        let result = self
            .exchange(
                step,
                attempts,
                session,
                |s| Ok(s.seal(message, &random::<16>(&bmc)?)),
                |s, got| match s.open(got) {
                    Ok(plain) => match_reply(&bmc, step, &plain, netfn, command, rq_seq),
                    Err(e) => {
                        *dropped.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
                        None
                    }
                },
            )
            .await;
        let why = dropped.into_inner().unwrap_or_else(|e| e.into_inner());
        match (result, why) {
            // Say why replies were not taken (e.g. failing integrity checks).
            (
                Err(BmcError::Timeout {
                    bmc,
                    timeout_ms,
                    mut during,
                }),
                Some(why),
            ) => {
                during.push_str(&format!("; a reply was dropped: {why}"));
                Err(BmcError::Timeout {
                    bmc,
                    timeout_ms,
                    during,
                })
            }
            (result, _) => result?,
        }
    }

    /// Get Channel Authentication Capabilities, then Get Channel Cipher Suites: 17 if
    /// offered, else 3. A BMC that does not answer the latter (OpenIPMI's ipmi_sim is
    /// one) gets suite 3, the IPMI v2.0 default.
    async fn discover_suite(&mut self) -> Result<CipherSuite, BmcError> {
        const CAPS: &str = "Get Channel Authentication Capabilities";
        const SUITES: &str = "Get Channel Cipher Suites";
        let attempts = self.attempts();
        let (cc, data) = self
            .presession_request(
                true,
                cmd::NETFN_APP,
                cmd::CMD_GET_CHANNEL_AUTH_CAPABILITIES,
                &cmd::auth_capabilities_request(),
                CAPS,
                attempts,
            )
            .await?;
        self.check_completion(
            CAPS,
            cmd::NETFN_APP,
            cmd::CMD_GET_CHANNEL_AUTH_CAPABILITIES,
            cc,
        )?;
        let caps = cmd::parse_auth_capabilities(&data).map_err(|e| self.protocol(CAPS, e))?;
        if !caps.ipmi_v2 {
            return Err(BmcError::Unsupported {
                bmc: self.bmc(),
                operation: "IPMI v2.0 (RMCP+) sessions",
                detail: "Get Channel Authentication Capabilities reports no IPMI v2.0 support"
                    .to_owned(),
            });
        }
        let mut records = Vec::new();
        for index in 0..64u8 {
            // One attempt: many BMCs stay silent on this command instead of refusing it.
            let reply = self
                .presession_request(
                    false,
                    cmd::NETFN_APP,
                    cmd::CMD_GET_CHANNEL_CIPHER_SUITES,
                    &cmd::cipher_suites_request(index),
                    SUITES,
                    1,
                )
                .await;
            let data = match reply {
                Ok((0, data)) => data,
                Ok((cc, _)) => {
                    debug!(bmc = %self.client.address, "{SUITES}: completion code {cc:#04x}; using suite 3");
                    return Ok(CipherSuite::Suite3);
                }
                Err(BmcError::Timeout { .. }) if Instant::now() < self.deadline && index == 0 => {
                    debug!(bmc = %self.client.address, "{SUITES}: no answer; using suite 3");
                    return Ok(CipherSuite::Suite3);
                }
                Err(e) => return Err(e),
            };
            let chunk =
                cmd::parse_cipher_suites_chunk(&data).map_err(|e| self.protocol(SUITES, e))?;
            records.extend_from_slice(chunk);
            if chunk.len() < 16 {
                break;
            }
        }
        let ids = cmd::parse_cipher_suite_ids(&records).map_err(|e| self.protocol(SUITES, e))?;
        cmd::pick_suite(&ids).ok_or_else(|| BmcError::Unsupported {
            bmc: self.bmc(),
            operation: "RMCP+ cipher suite 3 or 17",
            detail: format!("the BMC offers cipher suites {ids:?}"),
        })
    }

    /// Open Session and RAKP 1-4. Outer error: transport; inner: the BMC's refusal.
    async fn handshake(
        &mut self,
        suite: CipherSuite,
    ) -> Result<Result<Session, HandshakeError>, BmcError> {
        let bmc = self.bmc();
        let mut console_sid = u32::from_le_bytes(random(&bmc)?);
        if console_sid == 0 {
            console_sid = 1;
        }
        let nonces = Nonces {
            console_sid,
            console_random: random(&bmc)?,
            tag: random::<1>(&bmc)?[0],
        };
        let cfg = &self.client.config;
        let mut hs = Handshake::new(
            suite,
            cfg.username.as_bytes(),
            cfg.password.as_bytes(),
            nonces,
        );
        debug!(bmc = %bmc, %suite, "opening an RMCP+ session");
        let attempts = self.attempts();

        let opened = self
            .exchange(
                "RMCP+ Open Session",
                attempts,
                &mut hs,
                |hs| {
                    Ok(wire::encode_v20_plain(
                        PayloadType::OpenSessionRequest,
                        &hs.open_session_request(),
                    ))
                },
                |hs, got| {
                    let payload = setup_payload(got, PayloadType::OpenSessionResponse)?;
                    not_stale(hs.accept_open_session_response(payload))
                },
            )
            .await?;
        if let Err(e) = opened {
            return Ok(Err(e));
        }
        self.session_opened = true;

        let rakp3 = self
            .exchange(
                "RAKP Message 1",
                attempts,
                &mut hs,
                |hs| Ok(wire::encode_v20_plain(PayloadType::Rakp1, &hs.rakp1())),
                |hs, got| {
                    let payload = setup_payload(got, PayloadType::Rakp2)?;
                    not_stale(hs.accept_rakp2(payload))
                },
            )
            .await?;
        let rakp3 = match rakp3 {
            Ok(rakp3) => rakp3,
            Err(e) => {
                if e == HandshakeError::BadRakp2 {
                    // Tell the BMC, so it frees the session slot now (best effort).
                    let abort = hs.rakp3_failure(session::STATUS_INVALID_INTEGRITY_CHECK);
                    let datagram = wire::encode_v20_plain(PayloadType::Rakp3, &abort);
                    let _ = self.socket.send_to(&datagram, self.peer).await;
                }
                return Ok(Err(e));
            }
        };

        let result = self
            .exchange(
                "RAKP Message 3",
                // Twice at most: a BMC answers RAKP 3 once, so if its RAKP 4 was lost
                // only a new handshake helps (see `handshake_with_restarts`).
                attempts.min(2),
                &mut hs,
                |_| Ok(wire::encode_v20_plain(PayloadType::Rakp3, &rakp3)),
                |hs, got| {
                    let payload = setup_payload(got, PayloadType::Rakp4)?;
                    not_stale(hs.accept_rakp4(payload))
                },
            )
            .await;
        if result.is_err() {
            // The BMC may have taken RAKP 3 and activated the session (its RAKP 4 was
            // lost): close it with the keys we derived, so it does not hold a slot.
            if let Some(mut dangling) = hs.unverified_session() {
                self.close(&mut dangling).await;
            }
        }
        result
    }

    /// [`Self::handshake`], started again from Open Session when a later step goes
    /// unanswered: resending RAKP 3 cannot recover a lost RAKP 4, as BMCs (ipmi_sim
    /// among them) answer RAKP 3 only once.
    async fn handshake_with_restarts(
        &mut self,
        suite: CipherSuite,
    ) -> Result<Result<Session, HandshakeError>, BmcError> {
        let mut restarts = 0;
        loop {
            self.session_opened = false;
            match self.handshake(suite).await {
                Err(BmcError::Timeout { during, .. })
                    if self.session_opened
                        && restarts < self.client.config.retries
                        && Instant::now() < self.deadline =>
                {
                    restarts += 1;
                    debug!(bmc = %self.client.address, "no answer during {during}; opening a new session");
                }
                other => return other,
            }
        }
    }

    fn handshake_error(&self, e: HandshakeError) -> BmcError {
        if e.is_auth_rejection() {
            BmcError::AuthRejected {
                bmc: self.bmc(),
                detail: e.to_string(),
            }
        } else {
            BmcError::Protocol {
                bmc: self.bmc(),
                during: "RMCP+ session setup".to_owned(),
                detail: e.to_string(),
            }
        }
    }

    /// Set Session Privilege Level (administrator): chassis control needs it.
    async fn raise_privilege(&mut self, session: &mut Session) -> Result<(), BmcError> {
        const STEP: &str = "Set Session Privilege Level (administrator)";
        let attempts = self.attempts();
        let (cc, data) = self
            .session_request(
                session,
                cmd::NETFN_APP,
                cmd::CMD_SET_SESSION_PRIVILEGE,
                &[session::PRIV_ADMIN],
                STEP,
                attempts,
            )
            .await?;
        if cc != 0 {
            let text = cmd::completion_text(cmd::NETFN_APP, cmd::CMD_SET_SESSION_PRIVILEGE, cc);
            return Err(BmcError::AuthRejected {
                bmc: self.bmc(),
                detail: format!("{STEP}: completion code {cc:#04x} ({text})"),
            });
        }
        let level = cmd::parse_privilege(&data).map_err(|e| self.protocol(STEP, e))?;
        if level != session::PRIV_ADMIN {
            return Err(BmcError::AuthRejected {
                bmc: self.bmc(),
                detail: format!(
                    "{STEP}: the BMC granted privilege level {level}, not administrator (4)"
                ),
            });
        }
        Ok(())
    }

    async fn run(&mut self, session: &mut Session, op: Op) -> Result<bool, BmcError> {
        let attempts = self.attempts();
        let (netfn, command, data, step): (u8, u8, Vec<u8>, &'static str) = match op {
            Op::Status => return self.power_is_on(session, "Get Chassis Status").await,
            Op::Control(action) => return self.control(session, action).await.map(|()| true),
            Op::Boot(boot) => (
                cmd::NETFN_CHASSIS,
                cmd::CMD_SET_SYSTEM_BOOT_OPTIONS,
                boot.request_data().to_vec(),
                boot.describe(),
            ),
        };
        debug!(bmc = %self.client.address, step, "sending");
        let (cc, _) = self
            .session_request(session, netfn, command, &data, step, attempts)
            .await?;
        self.check_completion(step, netfn, command, cc)?;
        Ok(true)
    }

    /// Get Chassis Status: true if the chassis is powered on.
    async fn power_is_on(
        &mut self,
        session: &mut Session,
        step: &'static str,
    ) -> Result<bool, BmcError> {
        let (netfn, command) = (cmd::NETFN_CHASSIS, cmd::CMD_GET_CHASSIS_STATUS);
        let attempts = self.attempts();
        let (cc, reply) = self
            .session_request(session, netfn, command, &[], step, attempts)
            .await?;
        self.check_completion(step, netfn, command, cc)?;
        cmd::parse_chassis_power_on(&reply).map_err(|e| self.protocol(step, e))
    }

    /// Chassis Control, sent so that a lost reply does not repeat the action: each
    /// copy waits one attempt timeout; when it goes unanswered the chassis state is
    /// read, and if that shows the action took effect (powered on after power up, off
    /// after power down, changed after a power cycle) nothing is sent again. Only when
    /// the state cannot tell (it did not change yet, or a cycle already ended, or a
    /// hard reset, which leaves no trace in it) is the same request sent again, with
    /// its rqSeq, for the BMC to recognise as a retry.
    async fn control(
        &mut self,
        session: &mut Session,
        action: ChassisControl,
    ) -> Result<(), BmcError> {
        const BEFORE: &str = "Get Chassis Status (before a power cycle)";
        let (netfn, command) = (cmd::NETFN_CHASSIS, cmd::CMD_CHASSIS_CONTROL);
        let step = action.describe();
        let before = match action {
            ChassisControl::PowerCycle => Some(self.power_is_on(session, BEFORE).await?),
            _ => None,
        };
        let rq_seq = self.next_rq_seq();
        let message = wire::encode_request(netfn, command, rq_seq, &[action.code()]);
        let attempts = self.attempts();
        let mut sent = 0;
        loop {
            debug!(bmc = %self.client.address, step, attempt = sent + 1, "sending");
            let result = self
                .session_send(session, &message, netfn, command, rq_seq, step, 1)
                .await;
            sent += 1;
            match result {
                Ok((cc, _)) => return self.check_completion(step, netfn, command, cc),
                Err(BmcError::Timeout { .. }) if sent < attempts && !self.expired() => {}
                Err(e) => return Err(e),
            }
            let on = self.power_is_on(session, action.check_step()).await.map_err(|e| {
                warn!(bmc = %self.client.address, step, "no reply, and the chassis state cannot be read: not sending it again: {e}");
                e
            })?;
            if action.took_effect(before, on) {
                warn!(bmc = %self.client.address, step, power_on = on, "the reply was lost; the chassis state shows the action took effect, so it is not sent again");
                return Ok(());
            }
            debug!(bmc = %self.client.address, step, power_on = on, "no reply and no effect seen; sending the same request again");
        }
    }

    /// True once the operation's deadline has passed.
    fn expired(&self) -> bool {
        Instant::now() >= self.deadline
    }

    /// Close Session, best effort: two attempts at most, within the deadline.
    async fn close(&mut self, session: &mut Session) {
        if Instant::now() >= self.deadline {
            return;
        }
        let data = session.bmc_sid().to_le_bytes();
        let result = self
            .session_request(
                session,
                cmd::NETFN_APP,
                cmd::CMD_CLOSE_SESSION,
                &data,
                "Close Session",
                2,
            )
            .await;
        match result {
            Ok((0, _)) => {}
            Ok((cc, _)) => {
                debug!(bmc = %self.client.address, "Close Session: completion code {cc:#04x}")
            }
            Err(e) => debug!(bmc = %self.client.address, "Close Session: {e}"),
        }
    }

    fn check_completion(
        &self,
        step: &'static str,
        netfn: u8,
        command: u8,
        cc: u8,
    ) -> Result<(), BmcError> {
        let text = cmd::completion_text(netfn, command, cc);
        let detail = format!("completion code {cc:#04x} ({text})");
        match cc {
            0 => Ok(()),
            0xc1 => Err(BmcError::Unsupported {
                bmc: self.bmc(),
                operation: step,
                detail,
            }),
            0x80 if command == cmd::CMD_SET_SYSTEM_BOOT_OPTIONS => Err(BmcError::Unsupported {
                bmc: self.bmc(),
                operation: step,
                detail,
            }),
            0xd4 => Err(BmcError::AuthRejected {
                bmc: self.bmc(),
                detail: format!("{step}: {detail}"),
            }),
            _ => Err(BmcError::Protocol {
                bmc: self.bmc(),
                during: step.to_owned(),
                detail,
            }),
        }
    }

    fn protocol(&self, step: &str, e: wire::WireError) -> BmcError {
        BmcError::Protocol {
            bmc: self.bmc(),
            during: step.to_owned(),
            detail: e.to_string(),
        }
    }
}

/// Stale replies (another exchange's) are ignored; anything else ends the exchange.
fn not_stale<T>(result: Result<T, HandshakeError>) -> Option<Result<T, HandshakeError>> {
    match result {
        Err(HandshakeError::Stale) => None,
        other => Some(other),
    }
}

/// The reply to our request (`netfn`, `command`, `rq_seq`) in `message`, or `None` for
/// someone else's. An undecodable message that is ours by session is a protocol error.
fn match_reply(
    bmc: &str,
    step: &str,
    message: &[u8],
    netfn: u8,
    command: u8,
    rq_seq: u8,
) -> Option<Result<Reply, BmcError>> {
    match wire::decode_response(message) {
        Ok(rsp) => (rsp.netfn == netfn | 1 && rsp.cmd == command && rsp.rq_seq == rq_seq)
            .then(|| Ok((rsp.completion, rsp.data.to_vec()))),
        Err(e) => Some(Err(BmcError::Protocol {
            bmc: bmc.to_owned(),
            during: step.to_owned(),
            detail: e.to_string(),
        })),
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipmi::crypto::SessionKeys;

    /// The BMC's end of an established session, on a loopback socket: it sees what the
    /// client sends (datagram and decrypted IPMI message) and answers as it is told.
    struct FakeBmc {
        socket: UdpSocket,
        session: Session,
    }

    const CONSOLE_SID: u32 = 0x0c0c_0c0c;
    const BMC_SID: u32 = 0x0b0b_0b0b;

    impl FakeBmc {
        /// A fake BMC, a client for it and the client's end of a shared session.
        async fn start(attempt: Duration) -> (Self, IpmiClient, Session) {
            let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
            let mut cfg = IpmiConfig::new("127.0.0.1", "admin", "password");
            cfg.port = socket.local_addr().expect("address").port();
            cfg.attempt_timeout = attempt;
            cfg.timeout = Duration::from_secs(30);
            let client = IpmiClient::new(cfg).expect("valid");
            let keys = SessionKeys::from_sik(CipherSuite::Suite3, &[0x5a; 20]);
            let ours = Session::from_parts(CipherSuite::Suite3, CONSOLE_SID, BMC_SID, keys.clone());
            let theirs = Session::from_parts(CipherSuite::Suite3, BMC_SID, CONSOLE_SID, keys);
            (
                FakeBmc {
                    socket,
                    session: theirs,
                },
                client,
                ours,
            )
        }

        /// The next datagram: (who sent it, its session sequence number, the IPMI
        /// request message inside).
        async fn receive(&mut self) -> (SocketAddr, u32, Vec<u8>) {
            let mut buf = [0u8; 2048];
            let (len, from) = self.socket.recv_from(&mut buf).await.expect("receive");
            let seq = u32::from_le_bytes(buf[10..14].try_into().expect("sequence"));
            let message = self.session.open(&buf[..len]).expect("a valid request");
            (from, seq, message)
        }

        /// Answers `request` with completion code `cc` and `data`.
        async fn answer(&mut self, to: SocketAddr, request: &[u8], cc: u8, data: &[u8]) {
            let rsp = wire::encode_response(&wire::Response {
                rq_addr: request[3],
                netfn: (request[1] >> 2) | 1,
                rq_lun: request[4] & 3,
                rs_addr: request[0],
                rq_seq: request[4] >> 2,
                rs_lun: request[1] & 3,
                cmd: request[5],
                completion: cc,
                data,
            });
            let datagram = self.session.seal(&rsp, &[3; 16]);
            self.socket.send_to(&datagram, to).await.expect("send");
        }
    }

    #[tokio::test]
    async fn a_retransmission_keeps_the_request_and_advances_the_session_sequence() {
        let (mut bmc, client, mut session) = FakeBmc::start(Duration::from_millis(200)).await;
        let fake = tokio::spawn(async move {
            // The first copy goes unanswered; the second is answered.
            let (_, seq1, first) = bmc.receive().await;
            let (from, seq2, second) = bmc.receive().await;
            bmc.answer(from, &second, 0, &[0x01, 0, 0, 0]).await;
            (seq1, first, seq2, second)
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut link = Link::open(&client, deadline).await.expect("link");
        let (cc, data) = link
            .session_request(
                &mut session,
                cmd::NETFN_CHASSIS,
                cmd::CMD_GET_CHASSIS_STATUS,
                &[],
                "Get Chassis Status",
                2,
            )
            .await
            .expect("answered the second time");
        assert_eq!((cc, data), (0, vec![0x01, 0, 0, 0]));
        let (seq1, first, seq2, second) = fake.await.expect("fake BMC");
        assert_eq!(
            first, second,
            "the retry carries the same IPMI message (rqSeq)"
        );
        assert_eq!(
            seq2,
            seq1 + 1,
            "each datagram has its own session sequence number"
        );
    }

    /// A power cycle whose reply is lost while the chassis state reads the same before
    /// and after (the cycle may not have run, or already ended): the same request is
    /// sent again, and a BMC that follows the sequence number rules recognises the
    /// retry by its rqSeq, answers it and does not cycle again.
    #[tokio::test]
    async fn an_unprovable_cycle_is_resent_as_a_retry_a_compliant_bmc_recognises() {
        let (mut bmc, client, mut session) = FakeBmc::start(Duration::from_millis(200)).await;
        let fake = tokio::spawn(async move {
            let mut controls = Vec::new();
            let mut executed = Vec::new();
            loop {
                let (from, _, request) = bmc.receive().await;
                match (request[1] >> 2, request[5]) {
                    (cmd::NETFN_CHASSIS, cmd::CMD_GET_CHASSIS_STATUS) => {
                        bmc.answer(from, &request, 0, &[0x01, 0, 0, 0]).await;
                    }
                    (cmd::NETFN_CHASSIS, cmd::CMD_CHASSIS_CONTROL) => {
                        let rq_seq = request[4] >> 2;
                        controls.push(request.clone());
                        if !executed.contains(&rq_seq) {
                            executed.push(rq_seq);
                            // The first reply is lost on the way.
                            continue;
                        }
                        bmc.answer(from, &request, 0, &[]).await;
                        return (controls, executed);
                    }
                    other => panic!("unexpected request {other:?}"),
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut link = Link::open(&client, deadline).await.expect("link");
        link.control(&mut session, ChassisControl::PowerCycle)
            .await
            .expect("the retry is answered");
        let (controls, executed) = fake.await.expect("fake BMC");
        assert_eq!(controls.len(), 2, "sent once, then once more");
        assert_eq!(controls[0], controls[1], "the same request, same rqSeq");
        assert_eq!(executed.len(), 1, "a compliant BMC cycled once");
    }

    /// What the client does when the BMC answers Set Session Privilege Level
    /// (administrator) with `cc` and `data`.
    async fn privilege_answer(cc: u8, data: &'static [u8]) -> Result<(), BmcError> {
        let (mut bmc, client, mut session) = FakeBmc::start(Duration::from_secs(5)).await;
        let fake = tokio::spawn(async move {
            let (from, _, request) = bmc.receive().await;
            assert_eq!(
                (request[1] >> 2, request[5], &request[6..7]),
                (
                    cmd::NETFN_APP,
                    cmd::CMD_SET_SESSION_PRIVILEGE,
                    &[session::PRIV_ADMIN][..]
                ),
                "Set Session Privilege Level (administrator)"
            );
            bmc.answer(from, &request, cc, data).await;
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut link = Link::open(&client, deadline).await.expect("link");
        let result = link.raise_privilege(&mut session).await;
        fake.await.expect("fake BMC");
        result
    }

    #[tokio::test]
    async fn a_session_not_granted_administrator_is_refused() {
        privilege_answer(0, &[0x04])
            .await
            .expect("administrator granted");
        // Granted, but only operator (3) or user (2): refused, naming what was granted.
        const GRANTS: [(u8, &[u8]); 2] = [(3, &[0x03]), (2, &[0x02])];
        for (level, data) in GRANTS {
            let err = privilege_answer(0, data)
                .await
                .expect_err("less than administrator");
            assert!(matches!(err, BmcError::AuthRejected { .. }), "{err}");
            let text = err.to_string();
            assert!(text.contains(&format!("privilege level {level}")), "{text}");
            assert!(text.contains("127.0.0.1:"), "{text}");
        }
        // Refused by completion code (the user's limit is lower).
        let err = privilege_answer(0x81, &[]).await.expect_err("refused");
        assert!(matches!(err, BmcError::AuthRejected { .. }), "{err}");
        assert!(err.to_string().contains("0x81"), "{err}");
    }

    #[test]
    fn debug_output_hides_the_password() {
        let cfg = IpmiConfig::new("10.0.0.1", "admin", "s3cr3t-pass");
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("s3cr3t-pass"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        let client = IpmiClient::new(cfg).expect("valid");
        let shown = format!("{client:?}");
        assert!(!shown.contains("s3cr3t-pass"), "{shown}");
        assert_eq!(client.address(), "10.0.0.1:623");
    }

    #[test]
    fn invalid_configs_are_refused_naming_the_bmc() {
        let long = IpmiConfig::new("bmc1", "admin", "x".repeat(21));
        let err = IpmiClient::new(long).expect_err("too long");
        assert!(err.to_string().contains("bmc1:623"), "{err}");
        assert!(matches!(
            IpmiClient::new(IpmiConfig::new("bmc1", "u".repeat(17), "p")),
            Err(IpmiConfigError::UsernameTooLong { len: 17, .. })
        ));
        assert_eq!(
            IpmiClient::new(IpmiConfig::new("", "u", "p")).err(),
            Some(IpmiConfigError::EmptyHost)
        );
        let mut v6 = IpmiConfig::new("fd00::1", "u", "p");
        v6.port = 6230;
        assert_eq!(
            IpmiClient::new(v6).expect("valid").address(),
            "[fd00::1]:6230"
        );
    }
}
