//! Hostile strangers for tests and benchmarks: many fresh identities, one connection each,
//! that take a server's room without ever asking for anything.
//!
//! ```text
//! Idle:          stranger --handshake--> server, then nothing
//! MidHeader:     stranger --handshake--> server, opens a stream, sends 2 of the 4 length bytes
//! MidHandshake:  stranger --> black-hole relay --> server (the server's answers are dropped,
//!                so the handshake never completes)
//! ```
//!
//! Each stranger has its own endpoint (its own ID52), so a per-peer cap does not help; all dial
//! from the same IP as an honest client on the machine. With `keep_arriving` a stranger whose
//! connection ends dials again at once (the harshest crowd), and one stalled mid-handshake
//! starts another handshake every [`REDIAL_EVERY`], so the attack goes on while it runs.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use iroh::endpoint::{ConnectionError, VarInt};
use iroh::{Endpoint, NodeAddr};
use tokio::net::UdpSocket;
use tokio::task::JoinSet;

use super::identity;
use super::protocol::{ALPN, CLOSE_BUSY, CLOSE_EVICTED, CLOSE_IDLE, CLOSE_UNAUTHORIZED};
use super::server::endpoint_builder;

/// What a stranger does once it has dialed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stall {
    /// Completes the handshake, then sends nothing.
    Idle,
    /// Completes the handshake, opens a stream and sends half a request header's length.
    MidHeader,
    /// Starts a handshake that never completes (its packets reach the server; the server's
    /// answers never reach it).
    MidHandshake,
}

/// What the strangers have seen so far.
#[derive(Debug, Default)]
pub struct StrangerCounts {
    /// Handshakes that completed (never for [`Stall::MidHandshake`]).
    pub connected: AtomicUsize,
    /// Dials started, including re-dials.
    pub dials: AtomicUsize,
    /// Connections the server closed with [`CLOSE_BUSY`].
    pub busy: AtomicUsize,
    /// Connections the server closed with [`CLOSE_IDLE`].
    pub idle: AtomicUsize,
    /// Connections the server closed with [`CLOSE_EVICTED`].
    pub evicted: AtomicUsize,
    /// Connections the server closed with [`CLOSE_UNAUTHORIZED`].
    pub unauthorized: AtomicUsize,
    /// Connections that ended any other way (reset, timed out, refused).
    pub other: AtomicUsize,
}

/// A running crowd of strangers; [`Strangers::stop`] ends it.
#[derive(Debug)]
pub struct Strangers {
    counts: Arc<StrangerCounts>,
    tasks: JoinSet<()>,
    endpoints: Vec<Endpoint>,
}

impl Strangers {
    /// Binds `count` endpoints on loopback, each with a fresh identity, and starts them
    /// dialing `server` (whose direct address must be an IPv4 loopback socket) all at once.
    pub async fn start(
        server: NodeAddr,
        how: Stall,
        count: usize,
        keep_arriving: bool,
    ) -> std::io::Result<Strangers> {
        let counts = Arc::new(StrangerCounts::default());
        let binds = (0..count).map(|_| {
            let key = identity::to_iroh_secret(&fastn_id52::SecretKey::generate());
            endpoint_builder(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), &super::reach::Reach::direct())
                .secret_key(key)
                .bind()
        });
        let endpoints: Vec<Endpoint> =
            futures::future::try_join_all(binds).await.map_err(std::io::Error::other)?;
        let mut tasks = JoinSet::new();
        for endpoint in &endpoints {
            let target = match how {
                Stall::MidHandshake => {
                    let direct = server.direct_addresses().next().copied().ok_or_else(|| {
                        std::io::Error::new(
                            std::io::ErrorKind::InvalidInput,
                            "the server has no direct address",
                        )
                    })?;
                    let hole = BlackHole::bind(direct).await?;
                    let addr = hole.addr;
                    tasks.spawn(hole.run());
                    NodeAddr::new(server.node_id).with_direct_addresses([addr])
                }
                _ => server.clone(),
            };
            tasks.spawn(stranger(endpoint.clone(), target, how, keep_arriving, counts.clone()));
        }
        Ok(Strangers { counts, tasks, endpoints })
    }

    pub fn counts(&self) -> &StrangerCounts {
        &self.counts
    }

    /// Stops every stranger and closes their endpoints.
    pub async fn stop(mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        let closes = self.endpoints.iter().map(|e| async move {
            // Bounded: a close waits for every connection to drain, and the server's answers
            // to a stalled handshake never arrive.
            let _ = tokio::time::timeout(Duration::from_millis(500), e.close()).await;
        });
        futures::future::join_all(closes).await;
    }
}

/// How often a stranger stalled mid-handshake starts another handshake when it keeps arriving,
/// and how many of its stalled handshakes it keeps open at once.
const REDIAL_EVERY: Duration = Duration::from_secs(1);
const STALLED_HANDSHAKES_EACH: usize = 8;

async fn stranger(
    endpoint: Endpoint,
    target: NodeAddr,
    how: Stall,
    keep_arriving: bool,
    counts: Arc<StrangerCounts>,
) {
    if how == Stall::MidHandshake {
        return stall_handshakes(endpoint, target, keep_arriving, counts).await;
    }
    loop {
        counts.dials.fetch_add(1, Ordering::Relaxed);
        let conn = match endpoint.connect(target.clone(), ALPN).await {
            Ok(conn) => conn,
            Err(_) => {
                counts.other.fetch_add(1, Ordering::Relaxed);
                if !keep_arriving {
                    return;
                }
                // Refused or timed out: try again shortly.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        counts.connected.fetch_add(1, Ordering::Relaxed);
        // Held until the connection ends.
        let mut _stalled = None;
        if how == Stall::MidHeader {
            if let Ok((mut send, recv)) = conn.open_bi().await {
                let _ = send.write_all(&[0, 0]).await;
                _stalled = Some((send, recv));
            }
        }
        let counter = match conn.closed().await {
            ConnectionError::ApplicationClosed(close) => match u32::try_from(close.error_code.into_inner()) {
                Ok(CLOSE_BUSY) => &counts.busy,
                Ok(CLOSE_IDLE) => &counts.idle,
                Ok(CLOSE_EVICTED) => &counts.evicted,
                Ok(CLOSE_UNAUTHORIZED) => &counts.unauthorized,
                _ => &counts.other,
            },
            _ => &counts.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if !keep_arriving {
            return;
        }
        drop(_stalled);
        conn.close(VarInt::from_u32(0), b"");
    }
}

/// Starts handshakes that never complete and keeps them (never polled, never closed: a
/// dropped attempt would tell the server). With `keep_arriving` one more every
/// [`REDIAL_EVERY`], the oldest let go beyond [`STALLED_HANDSHAKES_EACH`].
async fn stall_handshakes(
    endpoint: Endpoint,
    target: NodeAddr,
    keep_arriving: bool,
    counts: Arc<StrangerCounts>,
) {
    let mut held = std::collections::VecDeque::new();
    loop {
        counts.dials.fetch_add(1, Ordering::Relaxed);
        match endpoint.connect_with_opts(target.clone(), ALPN, Default::default()).await {
            Ok(connecting) => held.push_back(connecting),
            Err(_) => {
                counts.other.fetch_add(1, Ordering::Relaxed);
            }
        }
        if held.len() > STALLED_HANDSHAKES_EACH {
            held.pop_front();
        }
        if !keep_arriving {
            return std::future::pending().await;
        }
        tokio::time::sleep(REDIAL_EVERY).await;
    }
}

/// A UDP relay that passes a stranger's packets to the server and drops every answer.
struct BlackHole {
    socket: UdpSocket,
    addr: SocketAddr,
    server: SocketAddr,
}

impl BlackHole {
    async fn bind(server: SocketAddr) -> std::io::Result<BlackHole> {
        let socket = UdpSocket::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?;
        let addr = socket.local_addr()?;
        Ok(BlackHole { socket, addr, server })
    }

    async fn run(self) {
        let mut buf = vec![0u8; 65_536];
        loop {
            let Ok((n, from)) = self.socket.recv_from(&mut buf).await else { return };
            if from != self.server {
                let _ = self.socket.send_to(&buf[..n], self.server).await;
            }
        }
    }
}
