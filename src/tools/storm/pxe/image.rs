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
            // `net0/mac` and the like name the booting NIC's own setting.
            let name = name.rsplit('/').next().unwrap_or(name);
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
            "boot" | "exit" | "sanboot" | "reboot" | "poweroff" => break,
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
            // `imgexec` alone boots the selected image, as `boot` does.
            if command == "imgexec" {
                break;
            }
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    use super::*;

    fn settings() -> Settings {
        Settings {
            uuid: "57a7c000-0000-4000-8000-000000000001".into(),
            mac: "52:54:00:00:00:01".into(),
            buildarch: "x86_64".into(),
        }
    }

    fn images(text: &str) -> Vec<ImageLine> {
        match parse_script(text, &settings()) {
            Ok(ScriptPlan::Images(i)) => i,
            other => panic!("{text:?}: {other:?}"),
        }
    }

    #[test]
    fn kernel_and_initrd_lines_are_read_in_order_with_their_names_and_arguments() {
        let got = images(
            "#!ipxe\n# a comment\n:start\necho booting ${uuid}\ndhcp\n\
             kernel http://10.0.0.1/vmlinuz console=ttyS0 talos.platform=metal\r\n\
             initrd http://10.0.0.1/initramfs.xz\n\
             initrd --name extra.cpio http://10.0.0.1/extra.cpio\n\
             imgfetch -n y --timeout 5000 http://10.0.0.1/y || goto failed\n\
             module --autofree --name=z http://10.0.0.1/${buildarch}/z?m=${net0/mac:hexhyp}\n\
             boot\ninitrd http://10.0.0.1/after-boot\n",
        );
        let urls: Vec<(Kind, &str, Option<&str>)> = got
            .iter()
            .map(|l| (l.kind, l.url.as_str(), l.name.as_deref()))
            .collect();
        assert_eq!(
            urls,
            [
                (Kind::Kernel, "http://10.0.0.1/vmlinuz", None),
                (Kind::Initrd, "http://10.0.0.1/initramfs.xz", None),
                (
                    Kind::Initrd,
                    "http://10.0.0.1/extra.cpio",
                    Some("extra.cpio")
                ),
                (Kind::Initrd, "http://10.0.0.1/y", Some("y")),
                (
                    Kind::Initrd,
                    "http://10.0.0.1/x86_64/z?m=52-54-00-00-00-01",
                    Some("z")
                ),
            ],
            "the line after boot is never run"
        );
        assert_eq!(got[0].args, ["console=ttyS0", "talos.platform=metal"]);
        assert!(got[1].args.is_empty());
        // ironboot's own rendering of an inventory kernel target.
        let got =
            images("#!ipxe\nkernel http://10.0.0.1/k a=${uuid}\ninitrd http://10.0.0.1/i\nboot\n");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].args, ["a=${uuid}"], "arguments are not expanded");
    }

    #[test]
    fn a_chain_ends_the_script_and_is_returned() {
        let s = settings();
        assert_eq!(
            parse_script(
                "#!ipxe\nchain --replace http://10.0.0.1:50042/x?u=${uuid} || goto f\n\
                 kernel http://10.0.0.1/never\n",
                &s
            ),
            Ok(ScriptPlan::Chain(
                "http://10.0.0.1:50042/x?u=57a7c000-0000-4000-8000-000000000001".into()
            ))
        );
        // A chain after a kernel line still hands over (iPXE runs lines in order).
        assert_eq!(
            parse_script("#!ipxe\nkernel http://a/k\nimgexec http://10.0.0.1/s\n", &s),
            Ok(ScriptPlan::Chain("http://10.0.0.1/s".into()))
        );
    }

    #[test]
    fn malformed_scripts_are_refused_with_a_reason() {
        let s = settings();
        for (text, reason) in [
            ("kernel http://a/k\n", "script_not_ipxe"),
            ("", "script_not_ipxe"),
            ("#!ipxe\nkernel\n", "script_missing_url"),
            ("#!ipxe\ninitrd --name x\n", "script_missing_url"),
            ("#!ipxe\nkernel --name\n", "script_option_without_value"),
            (
                "#!ipxe\nkernel --bogus http://a/k\n",
                "script_unknown_option",
            ),
            (
                "#!ipxe\nkernel --replace=1 http://a/k\n",
                "script_unknown_option",
            ),
            (
                "#!ipxe\nkernel http://${next-server}/k\n",
                "script_unknown_setting",
            ),
            (
                "#!ipxe\nkernel http://a/${uuid\n",
                "script_unclosed_setting",
            ),
            ("#!ipxe\ninitrd http://a/i\nboot\n", "script_no_kernel"),
            ("#!ipxe\nexit\nkernel http://a/k\n", "script_no_kernel"),
            ("#!ipxe\nimgexec\nkernel http://a/k\n", "script_no_kernel"),
            ("#!ipxe\nchain\n", "script_missing_url"),
            (
                "#!ipxe\nsanboot --no-describe --drive 0x80\n",
                "script_no_kernel",
            ),
        ] {
            match parse_script(text, &s) {
                Err(e) => assert_eq!(e.reason(), reason, "{text:?}: {e}"),
                Ok(p) => panic!("{text:?} accepted: {p:?}"),
            }
        }
    }

    #[test]
    fn urls_resolve_as_ipxe_resolves_them() {
        let base = Target {
            addr: "10.0.0.1:50042".parse().unwrap(),
            path: "/ipxe/boot.ipxe?uuid=x/y".into(),
        };
        let t = |url| resolve(url, &base);
        assert_eq!(
            t("http://10.0.0.2:8080/a/k?x=1"),
            Ok(Target {
                addr: "10.0.0.2:8080".parse().unwrap(),
                path: "/a/k?x=1".into()
            })
        );
        assert_eq!(
            t("HTTP://10.0.0.2"),
            Ok(Target {
                addr: "10.0.0.2:80".parse().unwrap(),
                path: "/".into()
            })
        );
        assert_eq!(t("/tftp/k").map(|t| t.path), Ok("/tftp/k".into()));
        assert_eq!(t("k.efi").map(|t| t.path), Ok("/ipxe/k.efi".into()));
        assert_eq!(t("k.efi").map(|t| t.addr), Ok(base.addr));
        assert_eq!(t("https://10.0.0.1/k"), Err(UrlError::NotHttp));
        assert_eq!(t("tftp://10.0.0.1/k"), Err(UrlError::NotHttp));
        assert_eq!(t("http://boot.example/k"), Err(UrlError::HostNotIpv4));
        assert_eq!(t("http://10.0.0.1:0/k"), Err(UrlError::BadPort));
        assert_eq!(t("http://10.0.0.1:x/k"), Err(UrlError::BadPort));
    }

    #[test]
    fn response_heads() {
        let h = parse_head("HTTP/1.1 200 OK\r\nContent-Length: 12\r\nX: y").unwrap();
        assert_eq!(
            h,
            Head {
                status: 200,
                framing: Framing::Length(12),
                keep_alive: true
            }
        );
        let h = parse_head("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3")
            .unwrap();
        assert_eq!(h.framing, Framing::Chunked, "chunked overrides the length");
        let h = parse_head("HTTP/1.0 200 OK\r\nContent-Length: 1").unwrap();
        assert!(!h.keep_alive, "HTTP/1.0 closes unless asked");
        let h = parse_head("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1").unwrap();
        assert!(!h.keep_alive);
        let h = parse_head("HTTP/1.1 200 OK").unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::UntilClose, false));
        for bad in [
            "SSH-2.0-x",
            "HTTP/1.1 2000 OK",
            "HTTP/1.1 200 OK\r\nno colon",
            "HTTP/1.1 200 OK\r\nContent-Length: -1",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip",
        ] {
            assert!(
                matches!(parse_head(bad), Err(FetchError::Malformed(_))),
                "{bad:?}"
            );
        }
    }

    /// A server on loopback answering each accepted connection's requests from `answers`
    /// in turn (one answer per request, the connection closed after `close_after`
    /// requests). Returns its address and the number of connections it accepted.
    async fn server(
        answers: Vec<Vec<u8>>,
        close_after: usize,
    ) -> (SocketAddrV4, std::sync::Arc<AtomicU64>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = match listener.local_addr().unwrap() {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => unreachable!("bound to an IPv4 address"),
        };
        let accepted = std::sync::Arc::new(AtomicU64::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            let mut answers = answers.into_iter();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut reader = BufReader::new(stream);
                for _ in 0..close_after {
                    // Read one request head.
                    let mut line = Vec::new();
                    loop {
                        line.clear();
                        if reader.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
                            break;
                        }
                        if line == b"\r\n" {
                            break;
                        }
                    }
                    let Some(answer) = answers.next() else {
                        return;
                    };
                    if reader.get_mut().write_all(&answer).await.is_err() {
                        break;
                    }
                }
            }
        });
        (addr, accepted)
    }

    fn ok(body: &[u8]) -> Vec<u8> {
        let mut v =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        v.extend_from_slice(body);
        v
    }

    async fn fetch_all(
        addr: SocketAddrV4,
        paths: &[&str],
    ) -> (Vec<Result<(u64, Vec<u8>), String>>, u64) {
        let mut client = Client::new(Ipv4Addr::UNSPECIFIED, Duration::from_secs(5));
        let mut out = Vec::new();
        for p in paths {
            let mut body = Vec::new();
            let r = client
                .get(
                    &Target {
                        addr,
                        path: (*p).to_owned(),
                    },
                    &mut |d: &[u8]| body.extend_from_slice(d),
                )
                .await;
            out.push(r.map(|f| (f.bytes, body)).map_err(|e| e.reason()));
        }
        (out, client.connections)
    }

    #[tokio::test]
    async fn one_connection_carries_every_image_and_framings_are_honoured() {
        let big = vec![7u8; 3 * READ_BUFFER + 5];
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                        3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: 1\r\n\r\n"
            .to_vec();
        let (addr, accepted) = server(vec![ok(&big), chunked, ok(b"")], 10).await;
        let (got, connections) = fetch_all(addr, &["/k", "/i", "/e"]).await;
        assert_eq!(got[0], Ok((big.len() as u64, big)));
        assert_eq!(got[1], Ok((5, b"abcde".to_vec())));
        assert_eq!(got[2], Ok((0, Vec::new())));
        assert_eq!(connections, 1);
        assert_eq!(accepted.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_kept_alive_connection_the_server_closed_is_replaced_once() {
        // The server answers one request per connection without saying it will close.
        let (addr, accepted) = server(vec![ok(b"kernel"), ok(b"initrd")], 1).await;
        let (got, connections) = fetch_all(addr, &["/k", "/i"]).await;
        assert_eq!(got[1], Ok((6, b"initrd".to_vec())));
        assert_eq!(connections, 2);
        assert_eq!(accepted.load(std::sync::atomic::Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn short_bodies_and_error_statuses_fail_with_their_reason() {
        let mut short = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n".to_vec();
        short.extend_from_slice(&[1; 40]);
        let (addr, _) = server(vec![short], 1).await;
        let (got, _) = fetch_all(addr, &["/k"]).await;
        assert_eq!(got[0], Err("short_body".to_owned()));

        let cut_chunk = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nff\r\nabc".to_vec();
        let (addr, _) = server(vec![cut_chunk], 1).await;
        assert_eq!(
            fetch_all(addr, &["/k"]).await.0[0],
            Err("short_body".to_owned())
        );

        let not_found = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec();
        let (addr, _) = server(vec![not_found], 1).await;
        assert_eq!(
            fetch_all(addr, &["/k"]).await.0[0],
            Err("status_404".to_owned())
        );

        let (addr, _) = server(vec![b"SSH-2.0-x\r\n\r\n".to_vec()], 1).await;
        assert_eq!(
            fetch_all(addr, &["/k"]).await.0[0],
            Err("http_malformed".to_owned())
        );

        // Nothing listens: the port of a listener just closed.
        let gone = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let SocketAddr::V4(addr) = gone.local_addr().unwrap() else {
            unreachable!("bound to an IPv4 address")
        };
        drop(gone);
        assert_eq!(
            fetch_all(addr, &["/k"]).await.0[0],
            Err("connection_refused".to_owned())
        );
    }

    #[tokio::test]
    async fn a_machine_follows_one_chain_and_verifies_what_it_fetched() {
        let kernel = b"kernel bytes".to_vec();
        let initrd = vec![3u8; 100_000];
        let digest = |b: &[u8]| {
            let mut h = Hasher::new();
            h.update(b);
            h.finish()
        };
        let chained = b"#!ipxe\nkernel /k quiet\ninitrd i.img\nboot\n";
        let (addr, accepted) = server(vec![ok(chained), ok(&kernel), ok(&initrd)], 10).await;
        let digests = [digest(&kernel), digest(&initrd)];
        let machine = Machine {
            api: addr,
            bind: Ipv4Addr::UNSPECIFIED,
            idle: Duration::from_secs(5),
            settings: settings(),
            digests: &digests,
        };
        let script = format!("#!ipxe\nchain --replace http://{addr}/ipxe/next.ipxe\n");
        let at = Target {
            addr,
            path: "/ipxe/boot.ipxe".into(),
        };
        let moved = AtomicU64::new(0);
        let mut out = Outcome::default();
        boot_images(&machine, script.as_bytes(), at.clone(), &mut out, &moved)
            .await
            .unwrap();
        assert_eq!(out.bytes, (kernel.len() + initrd.len()) as u64);
        assert_eq!(moved.load(std::sync::atomic::Ordering::Relaxed), out.bytes);
        assert_eq!(
            (out.kernel.len(), out.initrd.len(), out.connections),
            (1, 1, 1)
        );
        assert_eq!(accepted.load(std::sync::atomic::Ordering::Relaxed), 1);

        // The same, with the initrd's contents changed: a hash mismatch.
        let (addr2, _) = server(vec![ok(chained), ok(&kernel), ok(b"other")], 10).await;
        let machine = Machine {
            api: addr2,
            ..machine
        };
        let script = format!("#!ipxe\nchain http://{addr2}/ipxe/next.ipxe\n");
        let mut out = Outcome::default();
        let at = Target { addr: addr2, ..at };
        assert_eq!(
            boot_images(&machine, script.as_bytes(), at.clone(), &mut out, &moved).await,
            Err("initrd_hash_mismatch".to_owned())
        );
        assert_eq!(out.kernel.len(), 1);

        // A chain to another server, and a second chain, are refused.
        let other = "#!ipxe\nchain http://10.255.255.1:1/x\n";
        assert_eq!(
            boot_images(&machine, other.as_bytes(), at.clone(), &mut out, &moved).await,
            Err("chain_other_server".to_owned())
        );
        let again = format!("#!ipxe\nchain http://{addr2}/ipxe/again.ipxe\n");
        let (addr3, _) = server(vec![ok(again.as_bytes())], 10).await;
        let machine = Machine {
            api: addr3,
            ..machine
        };
        let script = format!("#!ipxe\nchain http://{addr3}/ipxe/next.ipxe\n");
        assert_eq!(
            boot_images(
                &machine,
                script.as_bytes(),
                Target { addr: addr3, ..at },
                &mut out,
                &moved
            )
            .await,
            Err("chain_twice".to_owned())
        );
    }
}
