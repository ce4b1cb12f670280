//! The serving side: answers `stream.get` and `stream.read_range` from two async callbacks.
//!
//! ```text
//! Endpoint (ALPN tandem/stream/1)
//!   '- accept loop: handshakes in progress bounded in number (at the bound the oldest is
//!      closed, CLOSE_EVICTED, for the newcomer) and in time (the handshake timeout, CLOSE_IDLE)
//!        '- per connection, once the handshake names the peer:
//!             allow-list (strangers closed at once, CLOSE_UNAUTHORIZED, no place taken),
//!             per-peer cap (CLOSE_BUSY), then a place under the connection cap: when it is
//!             full, the connection longest without a request and with none being answered
//!             is closed (CLOSE_EVICTED) to make room; when every one is being answered, the
//!             newcomer is closed (CLOSE_BUSY);
//!             then accept_bi loop, closed with CLOSE_IDLE when no whole request header has
//!             arrived within the first-request timeout, or after the idle timeout
//!             '- per stream (max concurrent per connection, `busy` above): read header
//!                (within the header timeout), check, resolver(stream) -> sizes,
//!                loader(stream, track, file, start, len) -> bytes
//! ```
//!
//! Why evict rather than refuse: an iroh peer's ID is known only once its handshake completes,
//! and strangers can come from the same address as an honest client, so neither limits by
//! address nor per-peer caps stop a crowd of fresh identities that connect and never ask
//! anything. Such connections are the ones that go longest without a request; an honest
//! client's connection asks at once and is busy while it is answered.
//!
//! The server knows names and sizes only through the resolver and bytes only through the
//! loader; it never decodes and never caches (every read calls the loader). Whatever the
//! callbacks return as an error is sent to the client with its code ([`NetError::code`]).
//! Shutdown is explicit: [`ServerHandle::shutdown`] stops accepting, lets in-flight requests
//! finish (bounded by a timeout) and closes the endpoint.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use iroh::endpoint::{Connecting, Connection, Incoming, RecvStream, SendStream, TransportConfig, VarInt};
use iroh::{Endpoint, NodeAddr, NodeId};
use tokio::sync::{oneshot, watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::identity;
use super::protocol::{
    encode_frame, read_frame, ErrorCode, FrameError, NetError, ReadRangeOk, ReadRangeRequest, ReadWindow,
    Request, ResponseHeader, StreamInfo, ALPN, CLOSE_BUSY, CLOSE_EVICTED, CLOSE_IDLE, CLOSE_SHUTDOWN,
    CLOSE_UNAUTHORIZED, MAX_REQUEST_HEADER,
};
use super::reach::Reach;

/// Describes a stream: `Ok(None)` when there is no such stream. The server replaces
/// `read_window` with its own.
pub trait Resolver: Clone + Send + Sync + 'static {
    fn resolve(&self, stream: String) -> impl Future<Output = Result<Option<StreamInfo>, NetError>> + Send;
}

impl<F, Fut> Resolver for F
where
    F: Fn(String) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Option<StreamInfo>, NetError>> + Send,
{
    fn resolve(&self, stream: String) -> impl Future<Output = Result<Option<StreamInfo>, NetError>> + Send {
        self(stream)
    }
}

/// Loads exactly `len` bytes at `start` of file `file` of a track (numbered as
/// [`TrackEntry::sizes`](super::protocol::TrackEntry::sizes) lists them; 0 for a track in one
/// file). Called only for ranges the server has already checked against the resolver's size
/// of that file and the read window.
pub trait Loader: Clone + Send + Sync + 'static {
    fn load(
        &self,
        stream: String,
        track: String,
        file: u32,
        start: u64,
        len: u64,
    ) -> impl Future<Output = Result<Bytes, NetError>> + Send;
}

impl<F, Fut> Loader for F
where
    F: Fn(String, String, u32, u64, u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Bytes, NetError>> + Send,
{
    fn load(
        &self,
        stream: String,
        track: String,
        file: u32,
        start: u64,
        len: u64,
    ) -> impl Future<Output = Result<Bytes, NetError>> + Send {
        self(stream, track, file, start, len)
    }
}

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

/// A running server. Dropping it leaves the server running until the runtime ends; call
/// [`ServerHandle::shutdown`] to stop it cleanly.
#[derive(Debug)]
pub struct ServerHandle {
    id52: String,
    endpoint: Endpoint,
    shutdown_tx: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl ServerHandle {
    /// The server's public identity.
    pub fn id52(&self) -> &str {
        &self.id52
    }

    pub fn node_id(&self) -> NodeId {
        self.endpoint.node_id()
    }

    /// The local UDP sockets the endpoint is bound to.
    pub fn bound_addrs(&self) -> Vec<SocketAddr> {
        self.endpoint.bound_sockets()
    }

    /// Addresses a client on this machine or LAN can dial: the bound sockets, with an
    /// unspecified IP replaced by loopback, plus whatever interface addresses iroh has found.
    pub fn direct_addrs(&self) -> Vec<SocketAddr> {
        use iroh::Watcher as _;
        let mut out: Vec<SocketAddr> = Vec::new();
        for mut addr in self.endpoint.bound_sockets() {
            if addr.ip().is_unspecified() {
                addr.set_ip(match addr {
                    SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                    SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                });
            }
            if !out.contains(&addr) {
                out.push(addr);
            }
        }
        if let Some(found) = self.endpoint.direct_addresses().get() {
            for d in found {
                if !out.contains(&d.addr) {
                    out.push(d.addr);
                }
            }
        }
        out
    }

    /// Node id plus [`Self::direct_addrs`].
    pub fn node_addr(&self) -> NodeAddr {
        NodeAddr::new(self.node_id()).with_direct_addresses(self.direct_addrs())
    }

    /// Stops accepting, lets in-flight requests finish (up to the shutdown timeout), closes
    /// every connection and the endpoint.
    ///
    /// Returns once the UDP ports are free again (up to two seconds), so a restarted server
    /// can bind the same address.
    pub async fn shutdown(self) {
        let _ = self.shutdown_tx.send(true);
        let _ = self.task.await;
        let sockets = self.endpoint.bound_sockets();
        self.endpoint.close().await;
        drop(self.endpoint);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        for addr in sockets {
            while std::net::UdpSocket::bind(addr).is_err() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

struct Inner<R, L> {
    resolver: R,
    loader: L,
    allow: Option<HashSet<NodeId>>,
    window: ReadWindow,
    max_requests: usize,
    max_connections: usize,
    max_per_peer: usize,
    max_handshakes: usize,
    handshake_timeout: Duration,
    header_timeout: Duration,
    first_request_timeout: Duration,
    idle_timeout: Duration,
    shutdown_timeout: Duration,
}

/// Open connections per peer; a [`PeerShare`] gives its place back when dropped.
type PeerCounts = Arc<Mutex<HashMap<NodeId, usize>>>;

struct PeerShare {
    counts: PeerCounts,
    peer: NodeId,
}

impl PeerShare {
    fn take(counts: &PeerCounts, peer: NodeId, max: usize) -> Option<PeerShare> {
        let mut map = counts.lock().unwrap_or_else(PoisonError::into_inner);
        let n = map.entry(peer).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PeerShare { counts: counts.clone(), peer })
    }
}

impl Drop for PeerShare {
    fn drop(&mut self) {
        let mut map = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.peer);
            }
        }
    }
}

async fn wait_shutdown(rx: &mut watch::Receiver<bool>) {
    // An error means the handle is gone without shutdown: keep serving until the runtime ends.
    if rx.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn accept_loop<R: Resolver, L: Loader>(
    endpoint: Endpoint,
    inner: Arc<Inner<R, L>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut handshakes = Handshakes::new(inner.max_handshakes);
    let places = Places::new(inner.max_connections);
    let per_peer: PeerCounts = Arc::default();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = wait_shutdown(&mut shutdown) => break,
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                handshakes.start(incoming, inner.handshake_timeout);
            }
            Some(done) = handshakes.next_done() => {
                let Some(conn) = done else { continue };
                let Some((place, peer_share)) = admit(&conn, &inner, &places, &per_peer) else { continue };
                let (inner, shutdown) = (inner.clone(), shutdown.clone());
                connections.spawn(async move {
                    serve_connection(conn, place, inner, shutdown).await;
                    drop(peer_share);
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    handshakes.abort_all();
    // Each connection task saw the same signal and is draining its requests.
    let grace = inner.shutdown_timeout.saturating_add(Duration::from_secs(1));
    let _ = tokio::time::timeout(grace, async { while connections.join_next().await.is_some() {} }).await;
    connections.abort_all();
}

/// Handshakes in progress, bounded in number: at the bound the oldest is dropped (closed with
/// [`CLOSE_EVICTED`]) to make room for the newcomer, so a crowd of handshakes that never
/// complete delays a new one by at most the time it takes that many more to arrive.
struct Handshakes {
    max: usize,
    tasks: JoinSet<Option<Connection>>,
    /// One per task, oldest first: dropping it tells the task to give up its handshake. A
    /// closed one belongs to a task that has ended; they are pruned as new ones arrive.
    order: VecDeque<oneshot::Sender<()>>,
}

impl Handshakes {
    fn new(max: usize) -> Handshakes {
        Handshakes { max, tasks: JoinSet::new(), order: VecDeque::new() }
    }

    fn start(&mut self, incoming: Incoming, timeout: Duration) {
        self.order.retain(|task| !task.is_closed());
        while self.order.len() >= self.max {
            tracing::debug!("dropping the oldest handshake in progress: {} at once", self.max);
            self.order.pop_front();
        }
        let (evict, evicted) = oneshot::channel();
        self.order.push_back(evict);
        self.tasks.spawn(async move {
            let mut connecting = match incoming.accept() {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!("accept failed: {e}");
                    return None;
                }
            };
            tokio::select! {
                done = &mut connecting => match done {
                    Ok(conn) => Some(conn),
                    Err(e) => {
                        tracing::debug!("handshake failed: {e}");
                        None
                    }
                },
                _ = tokio::time::sleep(timeout) => {
                    tracing::debug!("handshake timed out");
                    close_handshake(connecting, CLOSE_IDLE, b"handshake timed out");
                    None
                }
                _ = evicted => {
                    close_handshake(connecting, CLOSE_EVICTED, b"too many handshakes in progress");
                    None
                }
            }
        });
    }

    /// The next handshake to end: `Some(None)` when it failed, timed out or was dropped;
    /// `None` when none is in progress.
    async fn next_done(&mut self) -> Option<Option<Connection>> {
        let done = self.tasks.join_next().await?;
        Some(done.ok().flatten())
    }

    fn abort_all(&mut self) {
        self.tasks.abort_all();
        self.order.clear();
    }
}

/// Closes a handshake in progress with `code` (merely dropping it would close it with code 0,
/// which clients read as a shutdown). A server-side handshake can always be turned into a
/// (0.5-RTT) connection; nothing is sent on it but the close.
fn close_handshake(connecting: Connecting, code: u32, reason: &[u8]) {
    if let Ok((conn, _)) = connecting.into_0rtt() {
        conn.close(VarInt::from_u32(code), reason);
    }
}

/// The connections holding a place under the cap, and what eviction needs to know of each.
#[derive(Clone)]
struct Places {
    inner: Arc<Mutex<PlaceTable>>,
}

struct PlaceTable {
    max: usize,
    next_id: u64,
    open: HashMap<u64, OpenConnection>,
}

struct OpenConnection {
    /// To close it when it is evicted.
    conn: Connection,
    /// When it was admitted, then when a request of it last arrived or was answered.
    last_request: Instant,
    /// Requests whose header has arrived and whose answer is not yet written: an evicted
    /// connection must have none.
    answering: usize,
    /// A whole request header has arrived on it (the first-request timeout no longer applies).
    asked: bool,
}

impl Places {
    fn new(max: usize) -> Places {
        Places { inner: Arc::new(Mutex::new(PlaceTable { max, next_id: 0, open: HashMap::new() })) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PlaceTable> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A place for `conn`: a free one, or the place of the connection that has gone longest
    /// without a request and has none being answered (closed with [`CLOSE_EVICTED`]). `None`
    /// when every open connection is being answered.
    fn take(&self, conn: &Connection) -> Option<Place> {
        let mut table = self.lock();
        if table.open.len() >= table.max {
            let victim = table
                .open
                .iter()
                .filter(|(_, open)| open.answering == 0)
                .min_by_key(|(_, open)| open.last_request)
                .map(|(id, _)| *id)?;
            if let Some(evicted) = table.open.remove(&victim) {
                tracing::debug!("evicting the connection longest without a request: {} open", table.max);
                evicted.conn.close(VarInt::from_u32(CLOSE_EVICTED), b"making room for a new connection");
            }
        }
        let id = table.next_id;
        table.next_id += 1;
        let open =
            OpenConnection { conn: conn.clone(), last_request: Instant::now(), answering: 0, asked: false };
        table.open.insert(id, open);
        Some(Place { places: self.clone(), id })
    }
}

/// A connection's place under the cap; given back when dropped (or taken by eviction).
struct Place {
    places: Places,
    id: u64,
}

impl Place {
    /// A request's header has arrived: the connection is busy until the guard is dropped.
    fn answering(&self) -> Answering<'_> {
        let mut table = self.places.lock();
        if let Some(open) = table.open.get_mut(&self.id) {
            open.answering += 1;
            open.asked = true;
            open.last_request = Instant::now();
        }
        Answering { place: self }
    }

    fn asked(&self) -> bool {
        // An evicted connection is closed already; whatever is answered here does not matter.
        self.places.lock().open.get(&self.id).is_none_or(|open| open.asked)
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.places.lock().open.remove(&self.id);
    }
}

/// A request being answered on a connection (see [`Place::answering`]).
struct Answering<'a> {
    place: &'a Place,
}

impl Drop for Answering<'_> {
    fn drop(&mut self) {
        let mut table = self.place.places.lock();
        if let Some(open) = table.open.get_mut(&self.place.id) {
            open.answering = open.answering.saturating_sub(1);
            open.last_request = Instant::now();
        }
    }
}

/// Decides whether a connection whose handshake has ended may stay: the allow-list first
/// (a stranger is closed at once and holds nothing), then its peer's share, then a place.
fn admit<R, L>(
    conn: &Connection,
    inner: &Inner<R, L>,
    places: &Places,
    per_peer: &PeerCounts,
) -> Option<(Place, PeerShare)> {
    let Ok(peer) = conn.remote_node_id() else {
        conn.close(VarInt::from_u32(CLOSE_UNAUTHORIZED), b"no peer identity");
        return None;
    };
    if inner.allow.as_ref().is_some_and(|allow| !allow.contains(&peer)) {
        conn.close(VarInt::from_u32(CLOSE_UNAUTHORIZED), b"not on this server's allow-list");
        return None;
    }
    let Some(peer_share) = PeerShare::take(per_peer, peer, inner.max_per_peer) else {
        tracing::debug!(%peer, "refusing a connection: the peer already holds {}", inner.max_per_peer);
        conn.close(VarInt::from_u32(CLOSE_BUSY), b"too many connections from this peer");
        return None;
    };
    let Some(place) = places.take(conn) else {
        tracing::debug!("refusing a connection: all {} open ones are being answered", inner.max_connections);
        conn.close(VarInt::from_u32(CLOSE_BUSY), b"too many connections");
        return None;
    };
    Some((place, peer_share))
}

async fn serve_connection<R: Resolver, L: Loader>(
    conn: Connection,
    place: Place,
    inner: Arc<Inner<R, L>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let place = Arc::new(place);
    let slots = Arc::new(Semaphore::new(inner.max_requests));
    let mut requests = JoinSet::new();
    let idle = tokio::time::sleep(inner.idle_timeout);
    tokio::pin!(idle);
    let first_request = tokio::time::sleep(inner.first_request_timeout);
    tokio::pin!(first_request);
    let mut first_request_checked = false;
    let (mut code, mut reason): (u32, &[u8]) = (CLOSE_SHUTDOWN, b"server shutting down");
    loop {
        tokio::select! {
            _ = wait_shutdown(&mut shutdown) => break,
            accepted = conn.accept_bi() => {
                let Ok((send, recv)) = accepted else { break };
                let (inner, place) = (inner.clone(), place.clone());
                let slot = slots.clone().try_acquire_owned().ok();
                requests.spawn(async move { serve_request(&inner, &place, send, recv, slot).await });
            }
            _ = &mut first_request, if !first_request_checked => {
                first_request_checked = true;
                if !place.asked() {
                    // Nothing to drain: no header has arrived on it.
                    requests.abort_all();
                    (code, reason) = (CLOSE_IDLE, b"no request");
                    break;
                }
            }
            Some(_) = requests.join_next(), if !requests.is_empty() => {
                if requests.is_empty() {
                    idle.as_mut().reset(tokio::time::Instant::now() + inner.idle_timeout);
                }
            }
            _ = &mut idle, if requests.is_empty() => {
                (code, reason) = (CLOSE_IDLE, b"idle");
                break;
            }
        }
    }
    let _ =
        tokio::time::timeout(inner.shutdown_timeout, async { while requests.join_next().await.is_some() {} })
            .await;
    requests.abort_all();
    conn.close(VarInt::from_u32(code), reason);
}

/// Reads one request, answers it, and waits until the client has the whole answer (so a
/// shutdown right after does not cut it off).
async fn serve_request<R: Resolver, L: Loader>(
    inner: &Inner<R, L>,
    place: &Place,
    mut send: SendStream,
    mut recv: RecvStream,
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
) {
    let header = tokio::time::timeout(inner.header_timeout, read_frame(&mut recv, MAX_REQUEST_HEADER)).await;
    // A whole header makes the connection busy (not to be evicted) until it is answered.
    let answering = matches!(header, Ok(Ok(_))).then(|| place.answering());
    let result = match header {
        Err(_) => {
            let _ = recv.stop(VarInt::from_u32(1));
            Err(NetError::status(
                ErrorCode::BadRequest,
                format!("the request header did not arrive within {:?}", inner.header_timeout),
            ))
        }
        Ok(Err(FrameError::TooLarge { len, limit })) => {
            let _ = recv.stop(VarInt::from_u32(1));
            Err(NetError::status(
                ErrorCode::HeaderTooLarge,
                format!("request header of {len} bytes exceeds {limit}"),
            ))
        }
        Ok(Err(FrameError::Io(e))) => {
            Err(NetError::status(ErrorCode::BadRequest, format!("incomplete header: {e}")))
        }
        Ok(Ok(_)) if slot.is_none() => {
            Err(NetError::status(ErrorCode::Busy, "too many requests on this connection"))
        }
        Ok(Ok(header)) => match Request::decode(&header) {
            Ok(request) => {
                if let Request::ReadRange(ReadRangeRequest { priority: Some(priority), .. }) = &request {
                    // Among this connection's answers only: one client cannot push others back.
                    let _ = send.set_priority(*priority);
                }
                answer(inner, request).await
            }
            Err(e) => Err(e),
        },
    };
    let (header, data) = match result {
        Ok((header, data)) => (header, data),
        Err(e) => (ResponseHeader::error(&e), None),
    };
    let frame = match encode_frame(&header) {
        Ok(f) => f,
        Err(e) => return tracing::warn!("encoding a response: {e}"),
    };
    if send.write_chunk(frame).await.is_err() {
        return;
    }
    if let Some(data) = data {
        if send.write_chunk(data).await.is_err() {
            return;
        }
    }
    drop(slot);
    drop(answering);
    if send.finish().is_ok() {
        let _ = tokio::time::timeout(ACK_WAIT, send.stopped()).await;
    }
}

async fn answer<R: Resolver, L: Loader>(
    inner: &Inner<R, L>,
    request: Request,
) -> Result<(ResponseHeader, Option<Bytes>), NetError> {
    match request {
        Request::Get(get) => {
            let mut info = inner
                .resolver
                .resolve(get.stream.clone())
                .await?
                .ok_or_else(|| unknown_stream(&get.stream))?;
            info.read_window = inner.window;
            Ok((ResponseHeader::ok(&info)?, None))
        }
        Request::ReadRange(read) => {
            let info = inner
                .resolver
                .resolve(read.stream.clone())
                .await?
                .ok_or_else(|| unknown_stream(&read.stream))?;
            let track = info.track(&read.track).ok_or_else(|| {
                NetError::status(
                    ErrorCode::UnknownTrack,
                    format!("no track {:?} in {:?}", read.track, read.stream),
                )
            })?;
            let size = track.size(read.file).ok_or_else(|| {
                NetError::status(
                    ErrorCode::OutOfRange,
                    format!(
                        "track {:?} of {:?} has {} file(s), no file {}",
                        read.track,
                        read.stream,
                        track.sizes.len(),
                        read.file
                    ),
                )
            })?;
            inner.window.check(read.start, read.len, size)?;
            let data = inner.loader.load(read.stream, read.track, read.file, read.start, read.len).await?;
            if data.len() as u64 != read.len {
                return Err(NetError::status(
                    ErrorCode::Internal,
                    format!("loader returned {} bytes for a read of {}", data.len(), read.len),
                ));
            }
            Ok((ResponseHeader::ok(&ReadRangeOk { len: read.len })?, Some(data)))
        }
    }
}

/// How long a finished response may wait for the client's acknowledgement.
const ACK_WAIT: Duration = Duration::from_secs(30);

fn unknown_stream(name: &str) -> NetError {
    NetError::status(ErrorCode::UnknownStream, format!("no stream {name:?}"))
}
