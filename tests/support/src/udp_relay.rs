//! A loopback UDP relay in front of one simulated BMC whose test decides, datagram by
//! datagram, what goes through: drop a reply, count requests of one kind, or stop the
//! simulator at a chosen moment. One client socket at a time (one IPMI operation
//! after another); each new client address takes over the replies.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;

/// Which way a datagram travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Client to BMC.
    Up,
    /// BMC to client.
    Down,
}

/// What the relay does with one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Pass it on.
    Forward,
    /// Lose it.
    Drop,
}

/// A running relay; stopped on drop.
pub struct Relay {
    /// The port clients talk to.
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// A relay to `127.0.0.1:target` that asks `policy` about every datagram.
    pub async fn start(
        target: u16,
        policy: impl FnMut(Dir, &[u8]) -> Verdict + Send + 'static,
    ) -> Self {
        let front = UdpSocket::bind("127.0.0.1:0").await.expect("relay front");
        let back = UdpSocket::bind("127.0.0.1:0").await.expect("relay back");
        let target: SocketAddr = ([127, 0, 0, 1], target).into();
        let port = front.local_addr().expect("relay address").port();
        let policy = Arc::new(Mutex::new(policy));
        let task = tokio::spawn(async move {
            let mut client: Option<SocketAddr> = None;
            let mut up = [0u8; 2048];
            let mut down = [0u8; 2048];
            loop {
                tokio::select! {
                    got = front.recv_from(&mut up) => {
                        let Ok((n, from)) = got else { return };
                        client = Some(from);
                        let verdict = (policy.lock().expect("policy"))(Dir::Up, &up[..n]);
                        if verdict == Verdict::Forward {
                            let _ = back.send_to(&up[..n], target).await;
                        }
                    }
                    got = back.recv_from(&mut down) => {
                        let Ok((n, _)) = got else { continue };
                        let verdict = (policy.lock().expect("policy"))(Dir::Down, &down[..n]);
                        if let (Verdict::Forward, Some(to)) = (verdict, client) {
                            let _ = front.send_to(&down[..n], to).await;
                        }
                    }
                }
            }
        });
        Relay { port, task }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The IPMI command of an unauthenticated RMCP+ IPMI datagram (session 0), as
/// (network function, command): the pre-session requests a client sends in the clear.
/// RMCP header (4), auth type 0x06, payload type, session id (4), sequence (4),
/// length (2), then the IPMI message: rsAddr, netFn/LUN, checksum, rqAddr, rqSeq, cmd.
pub fn presession_command(datagram: &[u8]) -> Option<(u8, u8)> {
    if datagram.len() < 22 || datagram[4] != 0x06 || datagram[5] != 0x00 {
        return None;
    }
    Some((datagram[17] >> 2, datagram[21]))
}

/// True for a Get Channel Cipher Suites request (App 0x54).
pub fn is_cipher_suites_request(datagram: &[u8]) -> bool {
    presession_command(datagram) == Some((0x06, 0x54))
}

/// The RMCP+ payload type (low 6 bits) and session id of a v2.0 datagram.
pub fn rmcp_plus_header(datagram: &[u8]) -> Option<(u8, u32)> {
    if datagram.len() < 16 || datagram[4] != 0x06 {
        return None;
    }
    let sid = u32::from_le_bytes(datagram[6..10].try_into().ok()?);
    Some((datagram[5] & 0x3f, sid))
}

/// True for a datagram inside an established session (IPMI payload, encrypted and
/// authenticated, non-zero session id).
pub fn in_session(datagram: &[u8]) -> bool {
    datagram.len() >= 16 && datagram[4] == 0x06 && datagram[5] == 0xc0 && {
        matches!(rmcp_plus_header(datagram), Some((0, sid)) if sid != 0)
    }
}
