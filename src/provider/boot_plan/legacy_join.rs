//! The join configuration on an older Omni, which has no `ProviderJoinConfig` (its
//! resource definition `providerjoinconfigs.omni.sidero.dev` is missing from namespace
//! `meta`): ironboot renders the documents itself from Omni's `ConnectionParams`
//! (`default/siderolink-config`), as the Go provider and Omni's client module do:
//!
//! - `SideroLinkConfig` with `apiUrl` = Omni's machine API endpoint plus the query
//!   parameter `jointoken`. A plain join token is wrapped as a version-1 token naming the
//!   provider (`v1:` + base64 of `{"extra_data":{"omni.sidero.dev/infra-provider-id":ID},
//!   "signature":HMAC-SHA256(key = the token, message = the extra data as JSON)}`), so
//!   Omni knows which provider's machine joins; a token already versioned is kept.
//! - `EventSinkConfig` and `KmsgLogConfig` (`omni-kmsg`) on Omni's SideroLink address, the
//!   first host of the default SideroLink prefix, with Omni's events and logs ports.
//!
//! [`render`] is pure; `tests/it/omni_join_legacy.rs` compares it with what Omni's Go
//! module renders for the same parameters.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use ironboot_proto::omni::ConnectionParamsSpec;
use sha2::Sha256;

/// The ID of the `ConnectionParams` an older Omni keeps (its `siderolink.ConfigID`).
pub(crate) const CONNECTION_PARAMS_ID: &str = "siderolink-config";

/// The resource definition whose presence in namespace `meta` means Omni has
/// `ProviderJoinConfig` (the V2 join flow).
pub(crate) const PROVIDER_JOIN_CONFIG_DEFINITION: (&str, &str, &str) = (
    "meta",
    "ResourceDefinitions.meta.cosi.dev",
    "providerjoinconfigs.omni.sidero.dev",
);

/// Omni's address on the SideroLink network: the first host of the default SideroLink
/// prefix (`fdae:41e4:649b:9303::/64`, derived by the siderolink module from an empty
/// installation ID), where its event sink and log receiver listen.
const SIDEROLINK_OMNI_HOST: &str = "fdae:41e4:649b:9303::1";

/// The label naming the provider in a join token's extra data.
const PROVIDER_ID_LABEL: &str = "omni.sidero.dev/infra-provider-id";

/// Why `ConnectionParams` give no join configuration (upstream refuses the same cases).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum LegacyJoinError {
    /// A field the documents need is empty.
    #[error("ConnectionParams has no {0}")]
    Missing(&'static str),
    /// A versioned join token that is not valid base64 JSON.
    #[error("the join token in ConnectionParams is not a valid versioned token")]
    BadToken,
}

/// The join documents for machines of provider `provider_id`, from an older Omni's
/// `ConnectionParams`.
pub(crate) fn render(
    params: &ConnectionParamsSpec,
    provider_id: &str,
) -> Result<String, LegacyJoinError> {
    if params.logs_port == 0 {
        return Err(LegacyJoinError::Missing("logs port"));
    }
    if params.events_port == 0 {
        return Err(LegacyJoinError::Missing("events port"));
    }
    if params.api_endpoint.is_empty() {
        return Err(LegacyJoinError::Missing("API endpoint"));
    }
    if params.join_token.is_empty() {
        return Err(LegacyJoinError::Missing("join token"));
    }
    let token = provider_token(&params.join_token, provider_id)?;
    let api_url = with_query_param(&params.api_endpoint, "jointoken", &token);
    let events = format!("[{SIDEROLINK_OMNI_HOST}]:{}", params.events_port);
    let logs = format!("tcp://[{SIDEROLINK_OMNI_HOST}]:{}", params.logs_port);
    Ok(format!(
        "apiVersion: v1alpha1\nkind: SideroLinkConfig\napiUrl: {}\n---\n\
         apiVersion: v1alpha1\nkind: EventSinkConfig\nendpoint: {}\n---\n\
         apiVersion: v1alpha1\nkind: KmsgLogConfig\nname: omni-kmsg\nurl: {}\n",
        yaml_scalar(&api_url),
        yaml_scalar(&events),
        yaml_scalar(&logs),
    ))
}

/// The join token machines of `provider_id` present: a plain token becomes a version-1
/// token carrying the provider ID, signed with the plain token; a versioned one is kept.
fn provider_token(token: &str, provider_id: &str) -> Result<String, LegacyJoinError> {
    if let Some(encoded) = token
        .strip_prefix("v1:")
        .or_else(|| token.strip_prefix("v2:"))
    {
        // Kept as it is, but it must be what Omni can read.
        let json = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| LegacyJoinError::BadToken)?;
        serde_json::from_slice::<serde_json::Value>(&json)
            .map_err(|_| LegacyJoinError::BadToken)?;
        return Ok(token.to_owned());
    }
    let extra = BTreeMap::from([(PROVIDER_ID_LABEL, provider_id)]);
    let extra_json = go_json(&serde_json::to_string(&extra).unwrap_or_default());
    let mut mac =
        Hmac::<Sha256>::new_from_slice(token.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(extra_json.as_bytes());
    let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let body = format!(
        "{{\"extra_data\":{extra_json},\"signature\":{}}}",
        serde_json::Value::String(signature)
    );
    Ok(format!(
        "v1:{}",
        base64::engine::general_purpose::STANDARD.encode(body)
    ))
}

/// JSON text as Go's `encoding/json` writes it: `<`, `>` and `&` (and U+2028, U+2029)
/// escaped, which serde_json leaves alone. The signature covers these exact bytes.
fn go_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        match c {
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

/// `endpoint` with `key=value` added to its query, the query's parameters then sorted by
/// key and each escaped as Go's `url.Values.Encode` does (a fragment is dropped).
fn with_query_param(endpoint: &str, key: &str, value: &str) -> String {
    let endpoint = endpoint.split_once('#').map_or(endpoint, |(e, _)| e);
    let (base, query) = endpoint.split_once('?').unwrap_or((endpoint, ""));
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (query_unescape(k), query_unescape(v))
        })
        .collect();
    pairs.push((key.to_owned(), value.to_owned()));
    // Stable: the values of one key keep their order.
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    let query: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{}={}", query_escape(k), query_escape(v)))
        .collect();
    format!("{base}?{}", query.join("&"))
}

/// Go's `url.QueryEscape`: unreserved bytes kept, a space as `+`, the rest `%XX`.
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            b => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// Go's `url.QueryUnescape`, leniently: a bad escape is kept as it is.
fn query_unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `s` as a YAML scalar: plain when that reads back as the same string, else
/// single-quoted (quotes doubled).
fn yaml_scalar(s: &str) -> String {
    let plain = !s.is_empty()
        && !s.starts_with(|c: char| c.is_whitespace() || "[]{}#&*!|>'\"%@`,?:-".contains(c))
        && !s.ends_with(char::is_whitespace)
        && !s.contains(": ")
        && !s.contains(" #")
        && s.chars().all(|c| !c.is_control());
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> ConnectionParamsSpec {
        ConnectionParamsSpec {
            api_endpoint: "https://omni.example.org:8090".into(),
            join_token: "plain-token".into(),
            events_port: 8091,
            logs_port: 8092,
            ..Default::default()
        }
    }

    #[test]
    fn a_plain_token_is_wrapped_naming_the_provider() {
        let token = provider_token("plain-token", "bare-metal").unwrap();
        let body = token.strip_prefix("v1:").expect("version 1");
        let json = base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(
            v["extra_data"],
            serde_json::json!({"omni.sidero.dev/infra-provider-id": "bare-metal"})
        );
        // The signature is the HMAC of the extra data's JSON, keyed with the plain token.
        let mut mac = Hmac::<Sha256>::new_from_slice(b"plain-token").unwrap();
        mac.update(br#"{"omni.sidero.dev/infra-provider-id":"bare-metal"}"#);
        let want = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        assert_eq!(v["signature"], want);
    }

    #[test]
    fn a_versioned_token_is_kept_and_a_broken_one_refused() {
        let v2 = format!(
            "v2:{}",
            base64::engine::general_purpose::STANDARD.encode(r#"{"extra_data":{}}"#)
        );
        assert_eq!(provider_token(&v2, "p").unwrap(), v2);
        assert_eq!(
            provider_token("v1:!!!", "p"),
            Err(LegacyJoinError::BadToken)
        );
    }

    #[test]
    fn go_json_escapes_html_characters() {
        assert_eq!(go_json(r#"{"a":"<&>"}"#), r#"{"a":"\u003c\u0026\u003e"}"#);
    }

    #[test]
    fn the_query_is_sorted_and_escaped_as_go_does() {
        assert_eq!(
            with_query_param(
                "https://o.example/api?z=1&a=b%20c#frag",
                "jointoken",
                "v1:a+b/="
            ),
            "https://o.example/api?a=b+c&jointoken=v1%3Aa%2Bb%2F%3D&z=1"
        );
        assert_eq!(
            with_query_param("https://o.example", "jointoken", "t"),
            "https://o.example?jointoken=t"
        );
    }

    #[test]
    fn documents_name_omnis_siderolink_address_and_ports() {
        let docs = render(&params(), "bare-metal").unwrap();
        assert!(docs.starts_with("apiVersion: v1alpha1\nkind: SideroLinkConfig\napiUrl: https://omni.example.org:8090?jointoken=v1%3A"), "{docs}");
        assert!(
            docs.contains("\nendpoint: '[fdae:41e4:649b:9303::1]:8091'\n"),
            "{docs}"
        );
        assert!(
            docs.contains("\nname: omni-kmsg\nurl: tcp://[fdae:41e4:649b:9303::1]:8092\n"),
            "{docs}"
        );
        assert_eq!(docs.matches("\n---\n").count(), 2);
    }

    #[test]
    fn missing_fields_are_refused_naming_them() {
        for (edit, what) in [
            (
                (|p: &mut ConnectionParamsSpec| p.logs_port = 0) as fn(&mut ConnectionParamsSpec),
                "logs port",
            ),
            (|p| p.events_port = 0, "events port"),
            (|p| p.api_endpoint.clear(), "API endpoint"),
            (|p| p.join_token.clear(), "join token"),
        ] {
            let mut p = params();
            edit(&mut p);
            assert_eq!(render(&p, "x"), Err(LegacyJoinError::Missing(what)));
        }
    }

    #[test]
    fn scalars_that_yaml_would_misread_are_quoted() {
        assert_eq!(yaml_scalar("tcp://[::1]:1"), "tcp://[::1]:1");
        assert_eq!(yaml_scalar("[::1]:1"), "'[::1]:1'");
        assert_eq!(yaml_scalar("it's: x"), "'it''s: x'");
    }
}
