//! The image stage of an emulated boot: what iPXE does with its boot script. The script's
//! `kernel` and `initrd` lines are read (a `chain` to another script on the same server
//! is followed once), then the kernel and every initrd are fetched in script order, as
//! iPXE fetches them: HTTP/1.1 on one kept-alive connection per machine, one request at
//! a time, each body read to its end through a fixed read buffer and counted (and hashed
//! when `--verify-image` gives the expected contents), never stored.
//!
//! The script parser is sans-IO ([`parse_script`], [`resolve`]); [`Client`] moves bytes.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

use super::http::io_reason;

/// What an image line fetches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `kernel` (`imgselect`): the image iPXE boots.
    Kernel,
    /// `initrd` (`imgfetch`, `module`): an image handed to the kernel.
    Initrd,
}

impl Kind {
    /// The prefix of this fetch's failure reasons.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Kind::Kernel => "kernel",
            Kind::Initrd => "initrd",
        }
    }
}

/// One image the script fetches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ImageLine {
    pub(crate) kind: Kind,
    /// The URL as written (settings expanded).
    pub(crate) url: String,
    /// `--name` given to it, if any.
    pub(crate) name: Option<String>,
    /// The words after the URL (the kernel's command line).
    pub(crate) args: Vec<String>,
}

/// What a boot script asks of iPXE, as far as the image stage cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScriptPlan {
    /// Fetch these, in order (at least one kernel among them).
    Images(Vec<ImageLine>),
    /// Hand over to the script at this URL.
    Chain(String),
}

/// Why a boot script cannot be followed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ScriptError {
    /// The body does not start with `#!ipxe`.
    #[error("not an iPXE script (no #!ipxe)")]
    NotIpxe,
    /// An image command without a URL.
    #[error("line {line}: {command} without a URL")]
    MissingUrl { line: usize, command: String },
    /// An option that takes a value, at the end of its line.
    #[error("line {line}: {option} without its value")]
    OptionWithoutValue { line: usize, option: String },
    /// An option iPXE's image commands do not have.
    #[error("line {line}: unknown option {option}")]
    UnknownOption { line: usize, option: String },
    /// A `${...}` in a URL the storm cannot expand.
    #[error("line {line}: setting {setting} in a URL")]
    UnknownSetting { line: usize, setting: String },
    /// A `${` without its `}`.
    #[error("line {line}: unclosed ${{")]
    UnclosedSetting { line: usize },
    /// Nothing to boot: no kernel line before `boot`, `exit` or the end.
    #[error("no kernel line")]
    NoKernel,
}

impl ScriptError {
    /// The label this failure is counted under.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            ScriptError::NotIpxe => "script_not_ipxe",
            ScriptError::MissingUrl { .. } => "script_missing_url",
            ScriptError::OptionWithoutValue { .. } => "script_option_without_value",
            ScriptError::UnknownOption { .. } => "script_unknown_option",
            ScriptError::UnknownSetting { .. } => "script_unknown_setting",
            ScriptError::UnclosedSetting { .. } => "script_unclosed_setting",
            ScriptError::NoKernel => "script_no_kernel",
        }
    }
}

/// The values of the iPXE settings a machine's URLs may use.
#[derive(Debug, Clone, Default)]
pub(crate) struct Settings {
    pub(crate) uuid: String,
    /// `aa:bb:cc:dd:ee:ff`.
    pub(crate) mac: String,
    /// `x86_64` or `i386`.
    pub(crate) buildarch: String,
}

impl Settings {
    fn get(&self, name: &str) -> Option<&str> {
        // `net0/mac` and the like name the booting NIC's own setting.
        let name = name.rsplit('/').next().unwrap_or(name);
        Some(match name {
            "uuid" => &self.uuid,
            "mac" => &self.mac,
            "buildarch" => &self.buildarch,
            _ => return None,
        })
    }

    /// `text` with its `${name}` / `${name:type}` settings expanded.
    fn expand(&self, text: &str, line: usize) -> Result<String, ScriptError> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find('}')
                .ok_or(ScriptError::UnclosedSetting { line })?;
            let setting = &after[..end];
            let (name, kind) = setting.split_once(':').unwrap_or((setting, ""));
            let value = self
                .get(name)
                .filter(|_| matches!(kind, "" | "string" | "uristring" | "hex" | "hexhyp"))
                .ok_or_else(|| ScriptError::UnknownSetting {
                    line,
                    setting: setting.to_owned(),
                })?;
            match (name, kind) {
                ("mac", "hexhyp") => out.push_str(&value.replace(':', "-")),
                _ => out.push_str(value),
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// Options of iPXE's image commands (`kernel`, `initrd`, `chain`, ...): those that take a
/// value, and flags.
const VALUE_OPTIONS: [(&str, &str); 2] = [("--name", "-n"), ("--timeout", "-t")];
const FLAG_OPTIONS: [(&str, &str); 2] = [("--autofree", "-a"), ("--replace", "-r")];

/// Read a boot script the way iPXE runs it, until it boots, chains, exits or ends.
/// Comments, labels and commands that fetch nothing (`echo`, `set`, `dhcp`, `goto`, ...)
/// are passed over; on a line with `||` or `&&` only the first command counts (the
/// storm's fetches either succeed or fail the boot).
pub(crate) fn parse_script(text: &str, settings: &Settings) -> Result<ScriptPlan, ScriptError> {
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, first)) if first.trim_end().starts_with("#!ipxe") => {}
        _ => return Err(ScriptError::NotIpxe),
    }
    let mut images = Vec::new();
    for (index, raw) in lines {
        let line = index + 1;
        let words: Vec<&str> = raw
            .split_whitespace()
            .take_while(|w| *w != "||" && *w != "&&")
            .collect();
        let Some((&command, rest)) = words.split_first() else {
            continue;
        };
        if command.starts_with('#') || command.starts_with(':') {
            continue;
        }
        let kind = match command {
            "kernel" | "imgselect" => Some(Kind::Kernel),
            "initrd" | "imgfetch" | "module" => Some(Kind::Initrd),
            "chain" | "imgexec" => None,
            "boot" | "imgexec_selected" | "exit" | "sanboot" | "reboot" | "poweroff" => break,
            _ => continue,
        };
        let mut name = None;
        let mut words = rest.iter();
        let mut positional = Vec::new();
        while let Some(&w) = words.next() {
            if !positional.is_empty() || !w.starts_with('-') {
                positional.push(w);
                continue;
            }
            let (option, inline) = match w.split_once('=') {
                Some((o, v)) if o.starts_with("--") => (o, Some(v)),
                _ => (w, None),
            };
            if let Some(&(long, _)) = VALUE_OPTIONS
                .iter()
                .find(|(l, s)| option == *l || option == *s)
            {
                let value = match inline {
                    Some(v) => v,
                    None => *words
                        .next()
                        .ok_or_else(|| ScriptError::OptionWithoutValue {
                            line,
                            option: option.to_owned(),
                        })?,
                };
                if long == "--name" {
                    name = Some(value.to_owned());
                }
            } else if inline.is_some()
                || !FLAG_OPTIONS
                    .iter()
                    .any(|(l, s)| option == *l || option == *s)
            {
                return Err(ScriptError::UnknownOption {
                    line,
                    option: w.to_owned(),
                });
            }
        }
        let Some((url, args)) = positional.split_first() else {
            return Err(ScriptError::MissingUrl {
                line,
                command: command.to_owned(),
            });
        };
        let url = settings.expand(url, line)?;
        match kind {
            Some(kind) => images.push(ImageLine {
                kind,
                url,
                name,
                args: args.iter().map(|a| (*a).to_owned()).collect(),
            }),
            None => return Ok(ScriptPlan::Chain(url)),
        }
    }
    if !images.iter().any(|i| i.kind == Kind::Kernel) {
        return Err(ScriptError::NoKernel);
    }
    Ok(ScriptPlan::Images(images))
}

/// Where an HTTP request goes: the server and the request target (path and query).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) addr: SocketAddrV4,
    pub(crate) path: String,
}

/// Why a URL cannot be fetched by the storm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum UrlError {
    /// Not `http://` (`https://`, `tftp://`, ...).
    #[error("not an http:// URL")]
    NotHttp,
    /// The host is a name, not an IPv4 address (the storm resolves no names).
    #[error("the host is not an IPv4 address")]
    HostNotIpv4,
    /// The port is not a number from 1 to 65535.
    #[error("bad port")]
    BadPort,
}

impl UrlError {
    /// The label this failure is counted under.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            UrlError::NotHttp => "url_not_http",
            UrlError::HostNotIpv4 => "url_host_not_ipv4",
            UrlError::BadPort => "url_bad_port",
        }
    }
}

/// `url` resolved against `base` (the script's own location), as iPXE resolves relative
/// URIs: absolute `scheme://`, a path from the root (`/x`), or a name beside the script.
pub(crate) fn resolve(url: &str, base: &Target) -> Result<Target, UrlError> {
    if let Some((scheme, rest)) = url.split_once("://") {
        if !scheme.eq_ignore_ascii_case("http") {
            return Err(UrlError::NotHttp);
        }
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_owned()
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or(UrlError::BadPort)?,
            ),
            None => (authority, 80),
        };
        let ip: Ipv4Addr = host.parse().map_err(|_| UrlError::HostNotIpv4)?;
        return Ok(Target {
            addr: SocketAddrV4::new(ip, port),
            path,
        });
    }
    let path = if url.starts_with('/') {
        url.to_owned()
    } else {
        let dir_end = base.path.split('?').next().unwrap_or("/").rfind('/');
        let dir = dir_end.map_or("/", |i| &base.path[..=i]);
        format!("{dir}{url}")
    };
    Ok(Target {
        addr: base.addr,
        path,
    })
}

/// Why one HTTP fetch failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    /// Nothing listens on the port.
    #[error("connection refused")]
    Refused,
    /// No progress within the idle limit.
    #[error("no progress within the time limit")]
    Timeout,
    /// A socket error.
    #[error("socket error")]
    Io(#[source] io::Error),
    /// The response head is not HTTP/1.x, or too large, or its framing is unreadable.
    #[error("malformed response: {0}")]
    Malformed(&'static str),
    /// A status other than 200.
    #[error("status {0}")]
    Status(u16),
    /// The connection ended before the body did.
    #[error("short body: {got} of {want:?} bytes")]
    ShortBody { got: u64, want: Option<u64> },
}

impl FetchError {
    /// The label this failure is counted under (after the fetch's kind).
    pub(crate) fn reason(&self) -> String {
        match self {
            FetchError::Refused => "connection_refused".to_owned(),
            FetchError::Timeout => "timeout".to_owned(),
            FetchError::Io(e) => io_reason(e),
            FetchError::Malformed(_) => "http_malformed".to_owned(),
            FetchError::Status(code) => format!("status_{code}"),
            FetchError::ShortBody { .. } => "short_body".to_owned(),
        }
    }
}

/// The read buffer of a machine's connection: all a machine holds of an image in flight.
pub(crate) const READ_BUFFER: usize = 64 << 10;
/// Longest response head read (status line and headers).
const MAX_HEAD: usize = 16 << 10;
/// Longest chunk-size or trailer line.
const MAX_LINE: u64 = 1024;

/// A response's body framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    UntilClose,
}

/// The parts of a response head the client acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Head {
    status: u16,
    framing: Framing,
    /// The server will keep the connection open after this response.
    keep_alive: bool,
}

/// Parse a response head (without its final empty line).
fn parse_head(head: &str) -> Result<Head, FetchError> {
    let mut lines = head.split("\r\n").map(|l| l.trim_end_matches('\n'));
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split(' ');
    let version = parts.next().unwrap_or_default();
    let http11 = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => return Err(FetchError::Malformed("status_line")),
    };
    let status = parts
        .next()
        .filter(|s| s.len() == 3)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or(FetchError::Malformed("status_line"))?;
    let mut length = None;
    let mut chunked = false;
    let mut keep_alive = http11;
    for l in lines {
        let Some((name, value)) = l.split_once(':') else {
            return Err(FetchError::Malformed("header"));
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            let n = value
                .parse::<u64>()
                .map_err(|_| FetchError::Malformed("content_length"))?;
            if length.is_some_and(|m| m != n) {
                return Err(FetchError::Malformed("content_length"));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("chunked"));
            if !chunked {
                return Err(FetchError::Malformed("transfer_encoding"));
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        }
    }
    // RFC 9112 6.3: chunked framing overrides a Content-Length.
    let framing = match (chunked, length) {
        (true, _) => Framing::Chunked,
        (false, Some(n)) => Framing::Length(n),
        (false, None) => Framing::UntilClose,
    };
    Ok(Head {
        status,
        framing,
        keep_alive: keep_alive && framing != Framing::UntilClose,
    })
}

/// One open connection.
struct Conn {
    addr: SocketAddrV4,
    reader: BufReader<TcpStream>,
}

/// A machine's HTTP client: at most one connection, kept alive between requests to the
/// same server, replaced for another server.
pub(crate) struct Client {
    bind: Ipv4Addr,
    /// How long any one read, write or connect may make no progress.
    idle: Duration,
    conn: Option<Conn>,
    /// Connections opened (for the report's account of keep-alive).
    pub(crate) connections: u64,
}

/// What a fetch delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fetched {
    pub(crate) bytes: u64,
}

impl Client {
    pub(crate) fn new(bind: Ipv4Addr, idle: Duration) -> Client {
        Client {
            bind,
            idle,
            conn: None,
            connections: 0,
        }
    }

    async fn step<T>(
        idle: Duration,
        f: impl Future<Output = io::Result<T>>,
    ) -> Result<T, FetchError> {
        match tokio::time::timeout(idle, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(FetchError::Io(e)),
            Err(_) => Err(FetchError::Timeout),
        }
    }

    async fn connect(&mut self, addr: SocketAddrV4) -> Result<Conn, FetchError> {
        let socket = TcpSocket::new_v4().map_err(FetchError::Io)?;
        if !self.bind.is_unspecified() {
            socket
                .bind(SocketAddr::V4(SocketAddrV4::new(self.bind, 0)))
                .map_err(FetchError::Io)?;
        }
        let stream =
            match tokio::time::timeout(self.idle, socket.connect(SocketAddr::V4(addr))).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    return Err(FetchError::Refused);
                }
                Ok(Err(e)) => return Err(FetchError::Io(e)),
                Err(_) => return Err(FetchError::Timeout),
            };
        let _ = stream.set_nodelay(true);
        self.connections += 1;
        Ok(Conn {
            addr,
            reader: BufReader::with_capacity(READ_BUFFER, stream),
        })
    }

    /// `GET target`, every body byte handed to `on_data`. A kept-alive connection the
    /// server closed between requests (no response byte at all) is replaced once, as
    /// iPXE opens a new connection for a stale one.
    pub(crate) async fn get(
        &mut self,
        target: &Target,
        on_data: &mut impl FnMut(&[u8]),
    ) -> Result<Fetched, FetchError> {
        let reused = match self.conn.take() {
            Some(c) if c.addr == target.addr => Some(c),
            _ => None,
        };
        let conn = match reused {
            Some(c) => match self.exchange(c, target, on_data).await {
                Err(Failed {
                    before_response: true,
                    ..
                }) => self.connect(target.addr).await?,
                other => return other.map_err(|f| f.error),
            },
            None => self.connect(target.addr).await?,
        };
        self.exchange(conn, target, on_data)
            .await
            .map_err(|f| f.error)
    }

    /// One request and response on `conn`; the connection is kept if the response allows.
    async fn exchange(
        &mut self,
        mut conn: Conn,
        target: &Target,
        on_data: &mut impl FnMut(&[u8]),
    ) -> Result<Fetched, Failed> {
        let idle = self.idle;
        let early = |error| Failed {
            error,
            before_response: true,
        };
        let late = |error| Failed {
            error,
            before_response: false,
        };
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: iPXE/1.21.1 (ironboot storm)\r\n\
             Connection: keep-alive\r\n\r\n",
            target.path, target.addr
        );
        Self::step(idle, conn.reader.get_mut().write_all(request.as_bytes()))
            .await
            .map_err(early)?;
        // The head, line by line, bounded.
        let mut head = Vec::with_capacity(512);
        loop {
            let before = head.len();
            let limit = (MAX_HEAD - before) as u64;
            let n = Self::step(
                idle,
                (&mut conn.reader).take(limit).read_until(b'\n', &mut head),
            )
            .await
            .map_err(if before == 0 { early } else { late })?;
            if n == 0 {
                return Err(if before == 0 {
                    early(FetchError::Io(io::ErrorKind::UnexpectedEof.into()))
                } else {
                    late(FetchError::Malformed("truncated_head"))
                });
            }
            if !head.ends_with(b"\n") {
                return Err(late(FetchError::Malformed("head_too_large")));
            }
            if &head[before..] == b"\r\n" || &head[before..] == b"\n" {
                head.truncate(before);
                break;
            }
        }
        let head =
            std::str::from_utf8(&head).map_err(|_| late(FetchError::Malformed("head_not_utf8")))?;
        let head = parse_head(head.trim_end_matches(['\r', '\n'])).map_err(late)?;
        if head.status != 200 {
            return Err(late(FetchError::Status(head.status)));
        }
        let bytes = match head.framing {
            Framing::Length(n) => read_exact_body(&mut conn.reader, n, idle, on_data).await,
            Framing::UntilClose => read_to_close(&mut conn.reader, idle, on_data).await,
            Framing::Chunked => read_chunked(&mut conn.reader, idle, on_data).await,
        }
        .map_err(late)?;
        if head.keep_alive {
            self.conn = Some(conn);
        }
        Ok(Fetched { bytes })
    }
}

/// A failed exchange, and whether it failed before any byte of the response.
struct Failed {
    error: FetchError,
    before_response: bool,
}

async fn read_exact_body(
    reader: &mut BufReader<TcpStream>,
    want: u64,
    idle: Duration,
    on_data: &mut impl FnMut(&[u8]),
) -> Result<u64, FetchError> {
    let mut got = 0;
    while got < want {
        let buf = Client::step(idle, reader.fill_buf()).await?;
        if buf.is_empty() {
            return Err(FetchError::ShortBody {
                got,
                want: Some(want),
            });
        }
        let n = buf
            .len()
            .min(usize::try_from(want - got).unwrap_or(usize::MAX));
        on_data(&buf[..n]);
        reader.consume(n);
        got += n as u64;
    }
    Ok(got)
}

async fn read_to_close(
    reader: &mut BufReader<TcpStream>,
    idle: Duration,
    on_data: &mut impl FnMut(&[u8]),
) -> Result<u64, FetchError> {
    let mut got = 0;
    loop {
        let buf = Client::step(idle, reader.fill_buf()).await?;
        if buf.is_empty() {
            return Ok(got);
        }
        let n = buf.len();
        on_data(buf);
        reader.consume(n);
        got += n as u64;
    }
}

async fn read_line(
    reader: &mut BufReader<TcpStream>,
    idle: Duration,
    line: &mut Vec<u8>,
    got: u64,
) -> Result<(), FetchError> {
    line.clear();
    let n = Client::step(idle, (&mut *reader).take(MAX_LINE).read_until(b'\n', line)).await?;
    if n == 0 {
        return Err(FetchError::ShortBody { got, want: None });
    }
    if !line.ends_with(b"\n") {
        return Err(FetchError::Malformed("chunk_line"));
    }
    Ok(())
}

async fn read_chunked(
    reader: &mut BufReader<TcpStream>,
    idle: Duration,
    on_data: &mut impl FnMut(&[u8]),
) -> Result<u64, FetchError> {
    let mut got = 0;
    let mut line = Vec::with_capacity(64);
    loop {
        read_line(reader, idle, &mut line, got).await?;
        let text = std::str::from_utf8(&line).map_err(|_| FetchError::Malformed("chunk_size"))?;
        let size = text.split(';').next().unwrap_or_default().trim();
        let size =
            u64::from_str_radix(size, 16).map_err(|_| FetchError::Malformed("chunk_size"))?;
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                read_line(reader, idle, &mut line, got).await?;
                if line == b"\r\n" || line == b"\n" {
                    return Ok(got);
                }
            }
        }
        match read_exact_body(reader, size, idle, on_data).await {
            Ok(n) => got += n,
            Err(FetchError::ShortBody { got: g, .. }) => {
                return Err(FetchError::ShortBody {
                    got: got + g,
                    want: None,
                });
            }
            Err(e) => return Err(e),
        }
        read_line(reader, idle, &mut line, got).await?;
        if line != b"\r\n" && line != b"\n" {
            return Err(FetchError::Malformed("chunk_end"));
        }
    }
}

/// The SHA-256 of a body, fed as it arrives.
pub(crate) struct Hasher(Sha256);

impl Hasher {
    pub(crate) fn new() -> Hasher {
        Hasher(Sha256::new())
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub(crate) fn finish(self) -> [u8; 32] {
        self.0.finalize().into()
    }
}

/// The SHA-256 of a local file, read in pieces.
pub(crate) fn file_digest(path: &std::path::Path) -> io::Result<[u8; 32]> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Hasher::new();
    let mut buf = vec![0u8; READ_BUFFER];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.finish());
        }
        hasher.update(&buf[..n]);
    }
}

/// Longest chained script read.
const MAX_SCRIPT: usize = 1 << 20;

/// What one machine's image stage needs to know.
pub(crate) struct Machine<'a> {
    /// The server's HTTP API: a `chain` is followed only to it.
    pub(crate) api: SocketAddrV4,
    /// The machine's own address (unspecified: the kernel's choice).
    pub(crate) bind: Ipv4Addr,
    /// How long any one read, write or connect may make no progress.
    pub(crate) idle: Duration,
    pub(crate) settings: Settings,
    /// Expected SHA-256 of the fetched images, in fetch order (`--verify-image`).
    pub(crate) digests: &'a [[u8; 32]],
}

/// What one machine's image stage measured, failed or not.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Body bytes of the images received.
    pub(crate) bytes: u64,
    /// Each completed kernel fetch's and initrd fetch's latency.
    pub(crate) kernel: Vec<Duration>,
    pub(crate) initrd: Vec<Duration>,
    /// TCP connections opened.
    pub(crate) connections: u64,
}

/// Follow `script` (fetched from `script_at`): one chain to the same server at most, then
/// every image in order. `moved` counts image bytes as they arrive (the progress line).
/// Fails with the reason the boot is counted under.
pub(crate) async fn boot_images(
    machine: &Machine<'_>,
    script: &[u8],
    script_at: Target,
    out: &mut Outcome,
    moved: &std::sync::atomic::AtomicU64,
) -> Result<(), String> {
    let mut client = Client::new(machine.bind, machine.idle);
    let result = follow(machine, &mut client, script, script_at, out, moved).await;
    out.connections += client.connections;
    result
}

async fn follow(
    machine: &Machine<'_>,
    client: &mut Client,
    script: &[u8],
    script_at: Target,
    out: &mut Outcome,
    moved: &std::sync::atomic::AtomicU64,
) -> Result<(), String> {
    use std::sync::atomic::Ordering;
    let parse = |body: &[u8]| {
        let text = std::str::from_utf8(body).map_err(|_| ScriptError::NotIpxe)?;
        parse_script(text, &machine.settings)
    };
    let mut base = script_at;
    let mut plan = parse(script).map_err(|e| e.reason().to_owned())?;
    if let ScriptPlan::Chain(url) = &plan {
        let target = resolve(url, &base).map_err(|e| format!("chain_{}", e.reason()))?;
        if target.addr != machine.api {
            return Err("chain_other_server".to_owned());
        }
        let mut body = Vec::with_capacity(1024);
        let mut too_long = false;
        client
            .get(&target, &mut |data: &[u8]| {
                if body.len() + data.len() > MAX_SCRIPT {
                    too_long = true;
                } else {
                    body.extend_from_slice(data);
                }
            })
            .await
            .map_err(|e| format!("chain_{}", e.reason()))?;
        if too_long {
            return Err("chain_script_too_long".to_owned());
        }
        plan = parse(&body).map_err(|e| format!("chain_{}", e.reason()))?;
        base = target;
    }
    let images = match plan {
        ScriptPlan::Images(images) => images,
        ScriptPlan::Chain(_) => return Err("chain_twice".to_owned()),
    };
    let mut verified = 0;
    for line in &images {
        let what = line.kind.label();
        let target = resolve(&line.url, &base).map_err(|e| format!("{what}_{}", e.reason()))?;
        let expected = machine.digests.get(verified).copied();
        let mut hasher = expected.map(|_| Hasher::new());
        let start = tokio::time::Instant::now();
        let mut got = 0u64;
        let result = client
            .get(&target, &mut |data: &[u8]| {
                got += data.len() as u64;
                moved.fetch_add(data.len() as u64, Ordering::Relaxed);
                if let Some(h) = hasher.as_mut() {
                    h.update(data);
                }
            })
            .await;
        out.bytes += got;
        result.map_err(|e| format!("{what}_{}", e.reason()))?;
        if let (Some(want), Some(h)) = (expected, hasher) {
            if h.finish() != want {
                return Err(format!("{what}_hash_mismatch"));
            }
            verified += 1;
        }
        match line.kind {
            Kind::Kernel => out.kernel.push(start.elapsed()),
            Kind::Initrd => out.initrd.push(start.elapsed()),
        }
    }
    if verified < machine.digests.len() {
        return Err("verify_image_more_files_than_fetched".to_owned());
    }
    Ok(())
}
