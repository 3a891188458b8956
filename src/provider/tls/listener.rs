//! The TLS listener: TLS 1.3 only, ALPN `h2` (gRPC). Connections are accepted and bounded
//! as on the plain API port ([`crate::boot::http::server`]: the caps, header, idle and write
//! deadlines), the handshake done in each connection's own task within
//! `--tls-handshake-timeout` (a slow or silent client holds up no one).

use std::future::Future;
use std::io;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;

use crate::boot::http::server::{self, Gate, Handshake, Listener, Timed};

/// The TLS handshake as [`server`]'s connection set-up.
#[derive(Clone)]
struct Tls(TlsAcceptor);

impl Handshake for Tls {
    type Io = TlsStream<Timed<TcpStream>>;
    const TLS: bool = true;

    fn handshake(
        &self,
        tcp: Timed<TcpStream>,
    ) -> impl Future<Output = io::Result<Self::Io>> + Send + 'static {
        self.0.accept(tcp)
    }
}

/// Serve `router` over TLS on `listener` under `gate`'s rules until `shutdown` resolves,
/// then finish the requests in flight (close the agents' tunnels first, as for the plain
/// port).
pub(crate) async fn serve(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    router: axum::Router,
    gate: Arc<Gate>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let tls = Tls(TlsAcceptor::from(config));
    server::serve(listener, Listener::Tls, gate, router, tls, shutdown).await
}
