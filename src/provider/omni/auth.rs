//! The infra provider's service-account key and request signing, as Omni verifies them
//! (go-api-signature's `message.GRPC`): every gRPC call carries
//!
//! - `x-sidero-timestamp`: Unix seconds (Omni allows 5 minutes of skew);
//! - `x-sidero-payload`: JSON `{"headers":{<signed header>: [values] | null, ...},"method":"/pkg.Service/Method"}`
//!   over the fixed list of signed headers (only the timestamp is set by us, the others are `null`);
//! - `x-sidero-signature`: `siderov1 <identity> <key fingerprint, lower hex> <base64 detached OpenPGP signature of the payload bytes>`.
//!
//! The key comes from `OMNI_SERVICE_ACCOUNT_KEY`: base64 of JSON `{"name": "infra-provider:<id>",
//! "pgp_key": "<armored private key>"}` as `omnictl infraprovider create <id>` prints it.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use pgp::composed::{Deserializable as _, DetachedSignature, SignedSecretKey};
use pgp::crypto::hash::HashAlgorithm;
use pgp::ser::Serialize as _;
use pgp::types::{KeyDetails as _, Password};

/// The environment variable holding the key (the Go provider reads the same one).
pub(crate) const KEY_ENV: &str = "OMNI_SERVICE_ACCOUNT_KEY";
/// Older alias of [`KEY_ENV`] that go-api-signature also reads.
pub(crate) const KEY_ENV_ALIAS: &str = "SIDERO_SERVICE_ACCOUNT_KEY";

/// Service-account names of infra providers start with this.
const INFRA_PROVIDER_PREFIX: &str = "infra-provider:";
/// Domain of the e-mail in an infra provider key's user ID.
const INFRA_PROVIDER_EMAIL_DOMAIN: &str = "@infra-provider.serviceaccount.omni.sidero.dev";

/// Signed-request header names (go-api-signature `message`).
pub(crate) const TIMESTAMP_HEADER: &str = "x-sidero-timestamp";
pub(crate) const PAYLOAD_HEADER: &str = "x-sidero-payload";
pub(crate) const SIGNATURE_HEADER: &str = "x-sidero-signature";
const SIGNATURE_VERSION: &str = "siderov1";

/// The headers covered by the payload, in the (sorted) order Go's JSON encoder writes a
/// map. ironboot sends none of them but the timestamp, so the others are `null`.
const SIGNED_HEADERS: [&str; 10] = [
    "authorization",
    "cluster",
    "context",
    "fieldSelectors",
    "namespace",
    "nodes",
    "runtime",
    "selectors",
    "uid",
    TIMESTAMP_HEADER,
];

/// Why a service-account key was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{KEY_ENV} is not set: Omni mode needs the infra provider's service-account key")]
    Missing,
    #[error("{KEY_ENV} is not valid base64: {0}")]
    Base64(#[source] base64::DecodeError),
    #[error("{KEY_ENV} does not hold the JSON {{\"name\", \"pgp_key\"}}: {0}")]
    Json(#[source] serde_json::Error),
    #[error(
        "{KEY_ENV}: service account {name:?} is not an infra provider account (want \"infra-provider:<id>\", as `omnictl infraprovider create <id>` makes)"
    )]
    NotInfraProvider { name: String },
    #[error(
        "{KEY_ENV}: service account {name:?} belongs to provider {account_id:?}, but --id is {provider_id:?}"
    )]
    WrongProvider {
        name: String,
        account_id: String,
        provider_id: String,
    },
    #[error("{KEY_ENV}: pgp_key is not an armored OpenPGP private key: {0}")]
    Armor(#[source] pgp::errors::Error),
    #[error("{KEY_ENV}: the key has no user ID {expected:?} (found {found:?})")]
    WrongIdentity {
        expected: String,
        found: Vec<String>,
    },
    #[error("{KEY_ENV}: the key is revoked; create a new one with omnictl")]
    Revoked,
    #[error("{KEY_ENV}: the key expired at {expired_at} (Unix seconds); renew it with omnictl")]
    Expired { expired_at: u64 },
    #[error("{KEY_ENV}: the key cannot sign (passphrase-protected or not a signing key): {0}")]
    CannotSign(#[source] pgp::errors::Error),
}

/// An infra provider's service-account key, validated. Its `Debug` shows the account and
/// the fingerprint, never key material.
pub struct ServiceAccountKey {
    name: String,
    provider_id: String,
    fingerprint: String,
    expires_at: Option<SystemTime>,
    key: SignedSecretKey,
}

impl fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("name", &self.name)
            .field("fingerprint", &self.fingerprint)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

#[derive(serde::Deserialize)]
struct KeyJson {
    name: String,
    pgp_key: String,
}

impl ServiceAccountKey {
    /// Reads the key from [`KEY_ENV`] (or its alias), for provider `provider_id`.
    pub(crate) fn from_env(provider_id: &str, now: SystemTime) -> Result<Self, KeyError> {
        let value = std::env::var(KEY_ENV)
            .or_else(|_| std::env::var(KEY_ENV_ALIAS))
            .map_err(|_| KeyError::Missing)?;
        Self::parse(&value, provider_id, now)
    }

    /// Parses and validates the base64 form; refuses a key of another provider, one
    /// without the account's identity, an expired one, and one that cannot sign.
    pub fn parse(base64_json: &str, provider_id: &str, now: SystemTime) -> Result<Self, KeyError> {
        let json = BASE64
            .decode(base64_json.trim())
            .map_err(KeyError::Base64)?;
        let parsed: KeyJson = serde_json::from_slice(&json).map_err(KeyError::Json)?;
        let account_id = parsed
            .name
            .strip_prefix(INFRA_PROVIDER_PREFIX)
            .filter(|id| !id.is_empty() && !id.contains(['@', ':', ' ']))
            .ok_or_else(|| KeyError::NotInfraProvider {
                name: parsed.name.clone(),
            })?
            .to_owned();
        if account_id != provider_id {
            return Err(KeyError::WrongProvider {
                name: parsed.name,
                account_id,
                provider_id: provider_id.to_owned(),
            });
        }
        let (key, _headers) =
            SignedSecretKey::from_string(&parsed.pgp_key).map_err(KeyError::Armor)?;

        if !key.details.revocation_signatures.is_empty() {
            return Err(KeyError::Revoked);
        }
        let expected_email = format!("{account_id}{INFRA_PROVIDER_EMAIL_DOMAIN}");
        let users: Vec<String> = key
            .details
            .users
            .iter()
            .map(|u| String::from_utf8_lossy(u.id.id()).into_owned())
            .collect();
        let user = key
            .details
            .users
            .iter()
            .find(|u| user_id_email(u.id.id()) == Some(expected_email.as_str()))
            .ok_or_else(|| KeyError::WrongIdentity {
                expected: expected_email.clone(),
                found: users,
            })?;

        // Key expiry: the newest self-signature's key-expiration subpacket, counted from
        // the key's creation (RFC 9580 5.2.3.13).
        let created: SystemTime = key.primary_key.created_at().into();
        let lifetime = user
            .signatures
            .iter()
            .max_by_key(|s| s.created().map(|t| t.as_secs()))
            .and_then(|s| s.key_expiration_time())
            .map(|d| Duration::from_secs(u64::from(d.as_secs())))
            .filter(|d| !d.is_zero());
        let expires_at = lifetime.map(|d| created + d);
        if let Some(at) = expires_at
            && at <= now
        {
            return Err(KeyError::Expired {
                expired_at: at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            });
        }

        let fingerprint = format!("{:x}", key.primary_key.fingerprint());
        let sa = Self {
            name: parsed.name,
            provider_id: account_id,
            fingerprint,
            expires_at,
            key,
        };
        // Prove now that the key signs (not passphrase-protected), not at the first call.
        sa.sign(b"ironboot key check")
            .map_err(KeyError::CannotSign)?;
        Ok(sa)
    }

    /// The account name, `infra-provider:<id>`: the identity in signatures.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The provider ID the account belongs to.
    pub fn provider_id(&self) -> &str {
        &self.provider_id
    }

    /// Primary key fingerprint, lower-case hex (how Omni looks the key up).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// When the key expires, if it does.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }

    /// A binary detached OpenPGP signature (SHA-256) of `data`.
    fn sign(&self, data: &[u8]) -> Result<Vec<u8>, pgp::errors::Error> {
        let sig = DetachedSignature::sign_binary_data(
            rand::thread_rng(),
            &self.key.primary_key,
            &Password::empty(),
            HashAlgorithm::Sha256,
            data,
        )?;
        // The whole packet, header included (as gopenpgp's GetBinary()).
        sig.to_bytes()
    }

    /// The three signature headers for a call of `method` (`/pkg.Service/Method`) at
    /// `unix_seconds`.
    pub(crate) fn sign_call(
        &self,
        method: &str,
        unix_seconds: u64,
    ) -> Result<SignedHeaders, pgp::errors::Error> {
        let timestamp = unix_seconds.to_string();
        let payload = grpc_payload(method, &timestamp);
        let sig = self.sign(payload.as_bytes())?;
        let signature = format!(
            "{SIGNATURE_VERSION} {} {} {}",
            self.name,
            self.fingerprint,
            BASE64.encode(sig)
        );
        Ok(SignedHeaders {
            timestamp,
            payload,
            signature,
        })
    }
}

/// The e-mail of an OpenPGP user ID `Name (comment) <email>`, or the whole ID if it is
/// a bare address.
fn user_id_email(id: &[u8]) -> Option<&str> {
    let id = std::str::from_utf8(id).ok()?.trim();
    match (id.rfind('<'), id.strip_suffix('>')) {
        (Some(start), Some(_)) => Some(&id[start + 1..id.len() - 1]),
        _ => Some(id),
    }
}

/// Header values for one signed call.
#[derive(Clone)]
pub(crate) struct SignedHeaders {
    pub(crate) timestamp: String,
    pub(crate) payload: String,
    pub(crate) signature: String,
}

/// The payload JSON exactly as go-api-signature builds it (Go's `encoding/json` on a
/// map: keys sorted; a header absent from the metadata is `null`).
pub(crate) fn grpc_payload(method: &str, timestamp: &str) -> String {
    let mut out = String::with_capacity(256);
    out.push_str("{\"headers\":{");
    for (i, h) in SIGNED_HEADERS.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&json_string(h));
        out.push(':');
        if *h == TIMESTAMP_HEADER {
            out.push('[');
            out.push_str(&json_string(timestamp));
            out.push(']');
        } else {
            out.push_str("null");
        }
    }
    out.push_str("},\"method\":");
    out.push_str(&json_string(method));
    out.push('}');
    out
}

/// A JSON string as Go writes it (Go also escapes `<`, `>` and `&`).
fn json_string(s: &str) -> String {
    let quoted = serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned());
    quoted
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn payload_is_the_go_json_form() {
        let p = grpc_payload("/cosi.resource.State/Get", "1700000000");
        assert_eq!(
            p,
            "{\"headers\":{\"authorization\":null,\"cluster\":null,\"context\":null,\
             \"fieldSelectors\":null,\"namespace\":null,\"nodes\":null,\"runtime\":null,\
             \"selectors\":null,\"uid\":null,\"x-sidero-timestamp\":[\"1700000000\"]},\
             \"method\":\"/cosi.resource.State/Get\"}"
        );
        // Sorted as Go sorts map keys (byte order).
        let mut sorted = SIGNED_HEADERS;
        sorted.sort_unstable();
        assert_eq!(sorted, SIGNED_HEADERS);
    }

    #[test]
    fn json_strings_escape_like_go() {
        assert_eq!(json_string("a<b>&\"c"), "\"a\\u003cb\\u003e\\u0026\\\"c\"");
    }

    #[test]
    fn user_id_email_forms() {
        assert_eq!(
            user_id_email(b"bare-metal (linux/amd64) <bare-metal@x.dev>"),
            Some("bare-metal@x.dev")
        );
        assert_eq!(user_id_email(b"a@b"), Some("a@b"));
    }

    fn refused(value: &str, id: &str) -> KeyError {
        ServiceAccountKey::parse(value, id, SystemTime::now()).expect_err("must be refused")
    }

    #[test]
    fn malformed_keys_are_refused_naming_the_variable() {
        let e = refused("not base64!!", "bare-metal");
        assert!(matches!(e, KeyError::Base64(_)), "{e}");
        assert!(e.to_string().contains(KEY_ENV), "{e}");
        let e = refused(&BASE64.encode("{\"nom\": 1}"), "bare-metal");
        assert!(matches!(e, KeyError::Json(_)), "{e}");
        let e = refused(
            &BASE64.encode("{\"name\":\"alice\",\"pgp_key\":\"x\"}"),
            "bare-metal",
        );
        assert!(matches!(e, KeyError::NotInfraProvider { .. }), "{e}");
        let e = refused(
            &BASE64.encode("{\"name\":\"infra-provider:other\",\"pgp_key\":\"x\"}"),
            "bare-metal",
        );
        assert!(matches!(e, KeyError::WrongProvider { .. }), "{e}");
        assert!(e.to_string().contains("--id"), "{e}");
        let e = refused(
            &BASE64.encode("{\"name\":\"infra-provider:bare-metal\",\"pgp_key\":\"garbage\"}"),
            "bare-metal",
        );
        assert!(matches!(e, KeyError::Armor(_)), "{e}");
    }
}
