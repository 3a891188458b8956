//! The last stage of an emulated boot: the HTTP request iPXE makes for its boot script,
//! one connection per machine (as each machine's iPXE opens its own), HTTP/1.1 with
//! `Connection: close`, the body read to the end.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

/// Why the HTTP stage failed: the label it is counted under.
pub(crate) fn io_reason(e: &io::Error) -> String {
    format!("io_{:?}", e.kind()).to_lowercase()
}

/// A response: status and body length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) body_len: u64,
}

/// The request line and headers of `GET path` to `host`.
pub(crate) fn request(host: SocketAddrV4, path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: iPXE/1.21.1 (ironboot storm)\r\n\
         Connection: close\r\n\r\n"
    )
}

/// Parse a whole response (read until the server closed): the status code and the body
/// length (`Content-Length` if given, else what followed the headers).
pub(crate) fn parse_response(bytes: &[u8]) -> Result<Response, &'static str> {
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("http_truncated")?;
    let head = std::str::from_utf8(&bytes[..end]).map_err(|_| "http_malformed")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split(' ');
    if !parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err("http_malformed");
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or("http_malformed")?;
    let body = (bytes.len() - end - 4) as u64;
    let length = lines.find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<u64>().ok())
            .flatten()
    });
    match length {
        Some(n) if n > body => Err("http_truncated"),
        Some(n) => Ok(Response {
            status,
            body_len: n,
        }),
        None => Ok(Response {
            status,
            body_len: body,
        }),
    }
}

/// Largest response read (a boot script is a few hundred bytes).
const MAX_RESPONSE: u64 = 1 << 20;

/// `GET path` on `server` from `bind` (unspecified: any), within `limit`: the response
/// and its body.
pub(crate) async fn get(
    bind: Ipv4Addr,
    server: SocketAddrV4,
    path: &str,
    limit: Duration,
) -> Result<(Response, Vec<u8>), String> {
    let exchange = async {
        let socket = TcpSocket::new_v4().map_err(|e| io_reason(&e))?;
        if !bind.is_unspecified() {
            socket
                .bind(SocketAddr::V4(SocketAddrV4::new(bind, 0)))
                .map_err(|e| io_reason(&e))?;
        }
        let mut stream =
            socket
                .connect(SocketAddr::V4(server))
                .await
                .map_err(|e| match e.kind() {
                    io::ErrorKind::ConnectionRefused => "connection_refused".to_owned(),
                    _ => io_reason(&e),
                })?;
        stream
            .write_all(request(server, path).as_bytes())
            .await
            .map_err(|e| io_reason(&e))?;
        let mut bytes = Vec::with_capacity(1024);
        (&mut stream)
            .take(MAX_RESPONSE)
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| io_reason(&e))?;
        let response = parse_response(&bytes).map_err(str::to_owned)?;
        // The body follows the head's empty line (parse_response found it).
        let start = bytes
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(bytes.len(), |i| i + 4);
        let end = start.saturating_add(usize::try_from(response.body_len).unwrap_or(usize::MAX));
        bytes.truncate(end.min(bytes.len()));
        bytes.drain(..start);
        Ok((response, bytes))
    };
    tokio::time::timeout(limit, exchange)
        .await
        .map_err(|_| "timeout".to_owned())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(
            parse_response(ok),
            Ok(Response {
                status: 200,
                body_len: 5
            })
        );
        let close = b"HTTP/1.0 404 Not Found\r\n\r\nno";
        assert_eq!(
            parse_response(close),
            Ok(Response {
                status: 404,
                body_len: 2
            })
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort"),
            Err("http_truncated")
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\n"),
            Err("http_truncated")
        );
        assert_eq!(parse_response(b"SSH-2.0\r\n\r\n"), Err("http_malformed"));
        let req = request("10.0.0.1:50042".parse().unwrap(), "/ipxe/boot.ipxe?uuid=x");
        assert!(req.starts_with("GET /ipxe/boot.ipxe?uuid=x HTTP/1.1\r\nHost: 10.0.0.1:50042\r\n"));
        assert!(req.ends_with("\r\n\r\n"));
    }
}
