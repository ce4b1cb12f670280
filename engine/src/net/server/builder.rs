//! [`Server::builder`] and [`ServerBuilder`]: the server's options and defaults, and
//! [`ServerBuilder::spawn`], which binds the endpoint (BBR, initial window) and starts serving.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use iroh::endpoint::{TransportConfig, VarInt};
use iroh::Endpoint;
use tokio::sync::watch;

use super::connection::accept_loop;
use super::{Inner, Loader, Resolver, ServerHandle};
use crate::net::identity;
use crate::net::protocol::{NetError, ReadWindow, ALPN};
use crate::net::reach::Reach;

/// Entry point: `Server::builder(resolver, loader)...spawn().await`.
#[derive(Debug)]
pub struct Server;

impl Server {
    pub fn builder<R: Resolver, L: Loader>(resolver: R, loader: L) -> ServerBuilder<R, L> {
        ServerBuilder {
            resolver,
            loader,
            secret_key: None,
            allow: None,
            window: ReadWindow::default(),
            max_connections: 256,
            max_connections_per_peer: 8,
            max_requests_per_connection: 64,
            max_handshakes: 256,
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            first_request_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            bind: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)),
            reach: Reach::direct(),
            shutdown_timeout: Duration::from_secs(5),
        }
    }
}

/// Options of a server; every field has a default except the two callbacks.
pub struct ServerBuilder<R, L> {
    resolver: R,
    loader: L,
    /// The server's identity; a fresh one (a new ID52 every run) when absent.
    secret_key: Option<fastn_id52::SecretKey>,
    /// ID52s allowed to ask anything; everyone when `None`.
    allow: Option<Vec<String>>,
    window: ReadWindow,
    /// Connections open at once; at the cap a newcomer takes the place of the connection
    /// longest without a request (none being answered), or is closed when all are busy.
    max_connections: usize,
    /// Connections one peer may hold at once, so one peer cannot take every place.
    max_connections_per_peer: usize,
    /// Handshakes in progress at once; at the bound the oldest is dropped for a newcomer, so
    /// stalled handshakes cannot keep a new one (perhaps an allowed peer's) out.
    max_handshakes: usize,
    /// A handshake that takes longer is dropped.
    handshake_timeout: Duration,
    /// A request whose header has not arrived after this long is answered `bad_request`.
    header_timeout: Duration,
    /// A new connection that has not sent a whole request header after this long is closed:
    /// an honest client connects to ask something.
    first_request_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    idle_timeout: Duration,
    /// QUIC stream credit per connection; requests above it (if a client ignores the credit)
    /// get `busy`.
    max_requests_per_connection: usize,
    bind: SocketAddr,
    /// Relays and discovery, so a bare ID52 reaches us; none for loopback/LAN.
    reach: Reach,
    /// How long shutdown waits for in-flight requests.
    shutdown_timeout: Duration,
}

impl<R, L> std::fmt::Debug for ServerBuilder<R, L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("allow", &self.allow)
            .field("window", &self.window)
            .field("bind", &self.bind)
            .field("reach", &self.reach)
            .finish_non_exhaustive()
    }
}

impl<R: Resolver, L: Loader> ServerBuilder<R, L> {
    pub fn secret_key(mut self, key: fastn_id52::SecretKey) -> Self {
        self.secret_key = Some(key);
        self
    }
    /// Only these ID52s may use the server; connections from others are closed as soon as
    /// their handshake ends (clients see `unauthorized`).
    pub fn allow<I: IntoIterator<Item = S>, S: Into<String>>(mut self, id52s: I) -> Self {
        self.allow = Some(id52s.into_iter().map(Into::into).collect());
        self
    }
    pub fn read_window(mut self, window: ReadWindow) -> Self {
        self.window = window;
        self
    }
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.max(1);
        self
    }
    pub fn max_connections_per_peer(mut self, n: usize) -> Self {
        self.max_connections_per_peer = n.max(1);
        self
    }
    pub fn max_handshakes(mut self, n: usize) -> Self {
        self.max_handshakes = n.max(1);
        self
    }
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }
    pub fn header_timeout(mut self, timeout: Duration) -> Self {
        self.header_timeout = timeout;
        self
    }
    pub fn first_request_timeout(mut self, timeout: Duration) -> Self {
        self.first_request_timeout = timeout;
        self
    }
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }
    pub fn max_requests_per_connection(mut self, n: usize) -> Self {
        self.max_requests_per_connection = n.max(1);
        self
    }
    /// Local address; port 0 picks a free one (tests).
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind = addr;
        self
    }
    /// Turns n0 relays and discovery on (internet) or off (loopback/LAN, the default);
    /// shorthand for [`Self::reach`] with [`Reach::n0`] or [`Reach::direct`].
    pub fn internet(mut self, on: bool) -> Self {
        self.reach = if on { Reach::n0() } else { Reach::direct() };
        self
    }
    /// Relays to be reached through and where to publish our address (own servers, n0's,
    /// or none).
    pub fn reach(mut self, reach: Reach) -> Self {
        self.reach = reach;
        self
    }
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Binds the endpoint and starts serving.
    pub async fn spawn(self) -> Result<ServerHandle, NetError> {
        if self.window.min == 0 || self.window.min > self.window.max {
            return Err(NetError::Bind(format!("invalid read window {:?}", self.window)));
        }
        let allow = match &self.allow {
            None => None,
            Some(list) => {
                Some(list.iter().map(|s| identity::id52_to_node_id(s)).collect::<Result<HashSet<_>, _>>()?)
            }
        };
        let key = self.secret_key.unwrap_or_else(fastn_id52::SecretKey::generate);
        let mut transport = TransportConfig::default();
        transport.keep_alive_interval(Some(Duration::from_secs(1)));
        let streams = u32::try_from(self.max_requests_per_connection).unwrap_or(u32::MAX);
        transport.max_concurrent_bidi_streams(VarInt::from_u32(streams));
        transport.max_concurrent_uni_streams(VarInt::from_u32(0));
        transport.congestion_controller_factory(congestion_controller());
        let endpoint = endpoint_builder(self.bind, &self.reach)
            .secret_key(identity::to_iroh_secret(&key))
            .alpns(vec![ALPN.to_vec()])
            .transport_config(transport)
            .bind()
            .await
            .map_err(|e| NetError::Bind(e.to_string()))?;
        // iroh falls back silently when a requested port is taken; a server asked for a
        // specific port must get it or fail.
        if self.bind.port() != 0 && !endpoint.bound_sockets().iter().any(|a| a.port() == self.bind.port()) {
            endpoint.close().await;
            return Err(NetError::Bind(format!("{} is already in use", self.bind)));
        }
        let inner = Arc::new(Inner {
            resolver: self.resolver,
            loader: self.loader,
            allow,
            window: self.window,
            max_requests: self.max_requests_per_connection,
            max_connections: self.max_connections,
            max_per_peer: self.max_connections_per_peer,
            max_handshakes: self.max_handshakes,
            handshake_timeout: self.handshake_timeout,
            header_timeout: self.header_timeout,
            first_request_timeout: self.first_request_timeout,
            idle_timeout: self.idle_timeout,
            shutdown_timeout: self.shutdown_timeout,
        });
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(endpoint.clone(), inner, shutdown_rx));
        Ok(ServerHandle { id52: key.id52(), endpoint, shutdown_tx, task })
    }
}

/// What a server sends before the first acknowledgement. QUIC's default (about 14 KiB, RFC
/// 9002) makes opening a meeting spend three or four round trips in slow start: every
/// track's index and first keyframes come at once, about 100-200 KiB.
pub const INITIAL_WINDOW: u64 = 64 * 1024;

/// BBR rather than quinn's default Cubic, measured: through a 200 ms, 2 Mbit/s link with 1 %
/// loss, Cubic let single 100-130 KB reads take up to 4.3 s (a loss halves its window, and a
/// player's requests are too short to grow it back), and playback stalled 1.6 s in 36 s with
/// 4x headroom; with BBR the same reads took 0.6-1.5 s and playback did not stall
/// (`tests/tests/real_links.rs`). quinn marks its BBR experimental; iroh does not re-export
/// congestion settings, hence the direct `iroh-quinn-proto` dependency at the version iroh pins.
fn congestion_controller() -> Arc<dyn iroh::endpoint::ControllerFactory + Send + Sync> {
    let mut bbr = iroh_quinn_proto::congestion::BbrConfig::default();
    bbr.initial_window(INITIAL_WINDOW);
    Arc::new(bbr)
}

/// An iroh endpoint builder with the relays and discovery of `reach`. No local-network
/// discovery: it needs multicast, which many machines lack, and direct addresses cover the LAN.
pub(crate) fn endpoint_builder(bind: SocketAddr, reach: &Reach) -> iroh::endpoint::Builder {
    let builder = reach.apply(Endpoint::builder());
    match bind {
        SocketAddr::V4(v4) => builder.bind_addr_v4(v4),
        SocketAddr::V6(v6) => builder.bind_addr_v6(v6),
    }
}
