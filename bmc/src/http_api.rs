//! The Go provider's HTTP power API back end, for emulated machines (the per-VM power
//! API of `talosctl cluster create` / talos `provision`).
//!
//! Wire contract, as the Go provider speaks it: plain HTTP to `http://<address>`,
//! `POST /poweron`, `/poweroff`, `/reboot`, `/pxeboot` (the boot mode is not sent),
//! `GET /status` answering `{"PoweredOn": bool}`; 5 s per request; any status other
//! than 200 is an error (its body is quoted in ours).

use std::time::Duration;

use reqwest::StatusCode;
use serde::Deserialize;

use crate::{BmcError, BootMode, PowerControl, PowerState};

/// The Go provider's bound for one power API request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// A power API address that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid power API address {address:?}: {reason}")]
pub struct HttpApiConfigError {
    /// The address as given.
    pub address: String,
    /// What is wrong.
    pub reason: String,
}

/// `GET /status`.
#[derive(Debug, Deserialize)]
struct Status {
    #[serde(rename = "PoweredOn")]
    powered_on: bool,
}

/// Client of one machine's HTTP power API.
#[derive(Debug, Clone)]
pub struct HttpApiClient {
    address: String,
    base: String,
    timeout: Duration,
    http: reqwest::Client,
}

impl HttpApiClient {
    /// A client for `address` (`host:port`, as in the Go provider's `BMCConfiguration`)
    /// with [`DEFAULT_TIMEOUT`].
    pub fn new(address: impl Into<String>) -> Result<Self, HttpApiConfigError> {
        Self::with_timeout(address, DEFAULT_TIMEOUT)
    }

    /// A client with another per-request bound.
    pub fn with_timeout(
        address: impl Into<String>,
        timeout: Duration,
    ) -> Result<Self, HttpApiConfigError> {
        let address = address.into();
        let bad = |reason: String| HttpApiConfigError {
            address: address.clone(),
            reason,
        };
        if address.is_empty() || address.contains('/') || address.contains('@') {
            return Err(bad("expected host:port".to_owned()));
        }
        let base = format!("http://{address}");
        let parsed = reqwest::Url::parse(&base).map_err(|e| bad(e.to_string()))?;
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(bad("no host".to_owned()));
        }
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(timeout)
            .timeout(timeout)
            .build()
            .map_err(|e| bad(e.to_string()))?;
        Ok(HttpApiClient {
            address,
            base,
            timeout,
            http,
        })
    }

    fn transport_error(&self, e: &reqwest::Error, during: String) -> BmcError {
        if e.is_timeout() {
            BmcError::Timeout {
                bmc: self.address.clone(),
                timeout_ms: u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX),
                during,
            }
        } else {
            let mut detail = format!("{during}: {e}");
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                detail.push_str(&format!(": {s}"));
                source = s.source();
            }
            BmcError::Unreachable {
                bmc: self.address.clone(),
                detail,
            }
        }
    }

    /// Sends one request and returns the body of a 200 answer.
    async fn call(&self, method: reqwest::Method, path: &str) -> Result<Vec<u8>, BmcError> {
        let url = format!("{}{path}", self.base);
        let during = format!("{method} {url}");
        let resp = self
            .http
            .request(method, &url)
            .send()
            .await
            .map_err(|e| self.transport_error(&e, during.clone()))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| self.transport_error(&e, during.clone()))?;
        tracing::debug!(bmc = %self.address, request = %during, status = status.as_u16(), "power api");
        if status != StatusCode::OK {
            let text = String::from_utf8_lossy(&body);
            let text: String = text.trim().chars().take(300).collect();
            return Err(BmcError::Protocol {
                bmc: self.address.clone(),
                during,
                detail: if text.is_empty() {
                    format!("HTTP {status}")
                } else {
                    format!("HTTP {status}: {text}")
                },
            });
        }
        Ok(body.to_vec())
    }

    async fn post(&self, path: &str) -> Result<(), BmcError> {
        self.call(reqwest::Method::POST, path).await.map(|_| ())
    }
}

impl PowerControl for HttpApiClient {
    fn address(&self) -> &str {
        &self.address
    }

    async fn power_status(&self) -> Result<PowerState, BmcError> {
        let body = self.call(reqwest::Method::GET, "/status").await?;
        let status: Status = serde_json::from_slice(&body).map_err(|e| BmcError::Protocol {
            bmc: self.address.clone(),
            during: format!("GET {}/status", self.base),
            detail: format!("unexpected answer: {e}"),
        })?;
        Ok(if status.powered_on {
            PowerState::On
        } else {
            PowerState::Off
        })
    }

    async fn power_on(&self) -> Result<(), BmcError> {
        self.post("/poweron").await
    }

    async fn power_off(&self) -> Result<(), BmcError> {
        self.post("/poweroff").await
    }

    async fn power_cycle(&self) -> Result<(), BmcError> {
        self.post("/reboot").await
    }

    /// The API has no boot mode: `mode` is not sent (as upstream).
    async fn pxe_boot_once(&self, _mode: BootMode) -> Result<(), BmcError> {
        self.post("/pxeboot").await
    }

    /// Nothing to clear: the API's PXE boot applies to the next boot only and it has
    /// no endpoint for an override, so this succeeds without a request.
    async fn reset_boot_override(&self) -> Result<(), BmcError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_checked() {
        assert!(HttpApiClient::new("172.29.0.1:34567").is_ok());
        assert!(HttpApiClient::new("[fd00::1]:80").is_ok());
        for bad in ["", "http://x:1", "a/b", "u@h:1"] {
            let err = HttpApiClient::new(bad).unwrap_err();
            assert!(
                err.to_string().contains("invalid power API address"),
                "{err}"
            );
        }
    }
}
