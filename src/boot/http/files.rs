//! `GET`/`HEAD /tftp/<name>`: the boot files over HTTP (UEFI HTTP boot, iPXE), from the
//! same in-memory [`FileSet`](ironboot_net::files::FileSet) as TFTP. Bodies are slices of
//! the shared bytes: no copy per request.

use std::ops::Range;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{AppState, text};

/// What a `Range` header asks for, against a file of a known length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum RangeRequest {
    /// No usable `Range` (absent, another unit, several ranges, malformed, or with an
    /// `If-Range` we cannot evaluate): the whole file, 200. RFC 9110 lets a server ignore
    /// such a header.
    Full,
    /// One satisfiable range: 206.
    Partial(Range<usize>),
    /// A valid range that starts past the end: 416.
    Unsatisfiable,
}

/// A run of ASCII digits as a number, saturating (a huge first-byte-pos is simply past
/// the end). `None` if empty or not all digits (`+5`, ` 5`).
fn digits(s: &str) -> Option<usize> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.bytes().fold(0usize, |n, b| {
        n.saturating_mul(10).saturating_add(usize::from(b - b'0'))
    }))
}

/// Interpret a `Range` header (`bytes=a-b`, `bytes=a-`, `bytes=-n`) for a file of `len`
/// bytes.
pub(super) fn parse_range(range: Option<&HeaderValue>, if_range: bool, len: usize) -> RangeRequest {
    let Some(spec) = range
        .filter(|_| !if_range)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
    else {
        return RangeRequest::Full;
    };
    let Some((unit, set)) = spec.split_once('=') else {
        return RangeRequest::Full;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || set.contains(',') {
        return RangeRequest::Full;
    }
    let Some((first, last)) = set.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    match (first, last) {
        ("", suffix) => match digits(suffix) {
            None => RangeRequest::Full,
            Some(0) => RangeRequest::Unsatisfiable,
            Some(_) if len == 0 => RangeRequest::Unsatisfiable,
            Some(n) => RangeRequest::Partial(len.saturating_sub(n)..len),
        },
        (first, "") => match digits(first) {
            None => RangeRequest::Full,
            Some(a) if a >= len => RangeRequest::Unsatisfiable,
            Some(a) => RangeRequest::Partial(a..len),
        },
        (first, last) => match (digits(first), digits(last)) {
            (Some(a), Some(b)) if a <= b => {
                if a >= len {
                    RangeRequest::Unsatisfiable
                } else {
                    RangeRequest::Partial(a..b.saturating_add(1).min(len))
                }
            }
            _ => RangeRequest::Full,
        },
    }
}

pub(super) async fn serve(
    State(s): State<AppState>,
    name: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    let Ok(Path(name)) = name else {
        return text(StatusCode::BAD_REQUEST, "bad file name encoding\n");
    };
    let file = match s.api.files.get(&name) {
        Ok(Some(f)) => f,
        Ok(None) => return text(StatusCode::NOT_FOUND, "no such boot file\n"),
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("bad file name: {e}\n")),
    };
    let len = file.len();
    let range = parse_range(
        headers.get(header::RANGE),
        headers.contains_key(header::IF_RANGE),
        len,
    );
    let (status, body, content_range) = match range {
        RangeRequest::Full => (StatusCode::OK, file.clone(), None),
        RangeRequest::Partial(r) => {
            let cr = format!("bytes {}-{}/{len}", r.start, r.end - 1);
            (StatusCode::PARTIAL_CONTENT, file.slice(r), Some(cr))
        }
        RangeRequest::Unsatisfiable => {
            let mut resp = text(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable\n");
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return resp;
        }
    };
    let body_len = body.len();
    let mut response = (status, Body::from(body)).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    // Explicit, so HEAD answers carry it too (axum strips the body of HEAD responses).
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(body_len));
    if let Some(cr) = content_range.and_then(|cr| HeaderValue::from_str(&cr).ok()) {
        h.insert(header::CONTENT_RANGE, cr);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(v: &str, len: usize) -> RangeRequest {
        parse_range(Some(&HeaderValue::from_str(v).unwrap()), false, len)
    }

    #[test]
    fn ranges() {
        use RangeRequest::*;
        let cases: &[(&str, usize, RangeRequest)] = &[
            ("bytes=0-0", 10, Partial(0..1)),
            ("bytes=0-9", 10, Partial(0..10)),
            ("bytes=2-5", 10, Partial(2..6)),
            ("bytes=2-500", 10, Partial(2..10)),
            ("bytes=9-", 10, Partial(9..10)),
            ("bytes=0-", 10, Partial(0..10)),
            ("bytes=-3", 10, Partial(7..10)),
            ("bytes=-30", 10, Partial(0..10)),
            ("BYTES = 1-2", 10, Partial(1..3)),
            ("bytes=1-18446744073709551616000", 10, Partial(1..10)),
            ("bytes=10-", 10, Unsatisfiable),
            ("bytes=10-20", 10, Unsatisfiable),
            ("bytes=99999999999999999999999-", 10, Unsatisfiable),
            ("bytes=-0", 10, Unsatisfiable),
            ("bytes=0-0", 0, Unsatisfiable),
            ("bytes=-1", 0, Unsatisfiable),
            ("bytes=5-2", 10, Full),
            ("bytes=0-1,3-4", 10, Full),
            ("items=0-1", 10, Full),
            ("bytes=a-b", 10, Full),
            ("bytes=+1-2", 10, Full),
            ("bytes=1", 10, Full),
            ("bytes=-", 10, Full),
            ("bytes", 10, Full),
            ("", 10, Full),
        ];
        for (v, len, want) in cases {
            assert_eq!(&r(v, *len), want, "{v:?} of {len}");
        }
        assert_eq!(parse_range(None, false, 10), Full);
        let v = HeaderValue::from_static("bytes=0-1");
        assert_eq!(
            parse_range(Some(&v), true, 10),
            Full,
            "If-Range: cannot validate"
        );
    }
}
