//! A TCP relay a test puts in front of a peer (the Omni harness) to cut it off without
//! killing it. The peer keeps its state. Two kinds of outage, until [`Relay::restore`]:
//!
//! - [`Relay::cut`] closes every relayed connection and each new one as soon as it is
//!   accepted (the client sees a reset, as when a firewall rejects it);
//! - [`Relay::pause`] stops moving bytes: relayed connections stay open and silent (the
//!   kernel's buffers fill, writers block), new ones are accepted and never answered (a
//!   black hole, as a broken route or a hung peer). Restored, the relayed connections
//!   carry on where they stopped; the unanswered ones are closed.

use std::io::ErrorKind;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    /// No bytes move; new connections are held, unanswered.
    paused: AtomicBool,
    held: Mutex<Vec<TcpStream>>,
    /// Both ends of every relayed connection, and whether the relay is cut (one lock: a
    /// connection is either registered before a cut, and closed by it, or refused).
    conns: Mutex<(bool, Vec<TcpStream>)>,
    refused: AtomicU64,
    relayed: AtomicU64,
}

/// A relay listening on its own port; stopped (every connection closed) on drop.
pub struct Relay {
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    /// Relays connections to `listen_ip:<any port>` to `target`.
    pub fn start(listen_ip: &str, target: SocketAddr) -> Self {
        let listener = TcpListener::bind((listen_ip, 0)).expect("binding the relay");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let thread = thread::spawn(move || {
            while !s.stop.load(Ordering::Relaxed) {
                let client = match listener.accept() {
                    Ok((c, _)) => c,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                    Err(_) => continue,
                };
                let _ = client.set_nonblocking(false);
                if s.paused.load(Ordering::SeqCst) {
                    s.refused.fetch_add(1, Ordering::Relaxed);
                    s.held.lock().unwrap().push(client);
                    continue;
                }
                let mut conns = s.conns.lock().unwrap();
                if conns.0 {
                    s.refused.fetch_add(1, Ordering::Relaxed);
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(5)) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                s.relayed.fetch_add(1, Ordering::Relaxed);
                for end in [&client, &server] {
                    if let Ok(c) = end.try_clone() {
                        conns.1.push(c);
                    }
                }
                drop(conns);
                pump(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    s.clone(),
                );
                pump(server, client, s.clone());
            }
        });
        Self {
            addr,
            shared,
            thread: Some(thread),
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every relayed connection; new ones are closed at once until
    /// [`Relay::restore`].
    pub fn cut(&self) {
        let mut conns = self.shared.conns.lock().unwrap();
        conns.0 = true;
        for c in conns.1.drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// Stops moving bytes and answering new connections.
    pub fn pause(&self) {
        self.shared.paused.store(true, Ordering::SeqCst);
    }

    /// Ends a cut or a pause: relays new connections again, relayed ones carry on, and
    /// those held unanswered during a pause are closed.
    pub fn restore(&self) {
        self.shared.conns.lock().unwrap().0 = false;
        self.shared.paused.store(false, Ordering::SeqCst);
        for c in self.shared.held.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// Connections closed on arrival (cut) or held unanswered (pause) so far.
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::Relaxed)
    }

    /// Connections relayed so far.
    pub fn relayed(&self) -> u64 {
        self.shared.relayed.load(Ordering::Relaxed)
    }
}

/// Copies `from` to `to` on a thread of its own, nothing while paused; closes both when
/// either side ends.
fn pump(mut from: TcpStream, mut to: TcpStream, shared: Arc<Shared>) {
    use std::io::{Read, Write};
    thread::spawn(move || {
        let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
        let mut buf = vec![0u8; 64 * 1024];
        while !shared.stop.load(Ordering::Relaxed) {
            if shared.paused.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(20));
                continue;
            }
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
        }
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    });
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.cut();
        self.restore();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
