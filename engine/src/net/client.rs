//! The fetching side: one iroh endpoint, one cached connection per peer, many requests in
//! flight.
//!
//! [`Client`] is a cheap clone (an `Arc` inside). Each request opens a bidirectional stream on
//! the peer's cached connection; a request that fails because the connection died is retried
//! once on a fresh connection (a server that restarted keeps its ID52, so the client simply
//! dials again). Connects and requests are bounded by timeouts.
//!
//! [`RemoteTrack`] turns one remote track into a [`RangeSource`], so indexes and the player read
//! a peer's track exactly as they read a local file.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use iroh::endpoint::{Connection, ConnectionError, ConnectionType};
use iroh::{Endpoint, NodeAddr, NodeId};

use super::identity;
use super::protocol::{
    read_frame, ErrorCode, FrameError, GetRequest, NetError, ReadRangeOk, ReadRangeRequest, ReadWindow,
    Request, ResponseHeader, StreamInfo, ALPN, CLOSE_BUSY, CLOSE_EVICTED, CLOSE_IDLE, CLOSE_UNAUTHORIZED,
    MAX_RESPONSE_HEADER,
};
use super::reach::Reach;
use super::server::endpoint_builder;
use crate::source::{check_range, RangeSource, ReadOptions, SourceError};

/// Most requests one [`RemoteTrack`] read keeps in flight at once; a large read is fetched in
/// window-sized parts, this many at a time.
pub const MAX_READS_IN_FLIGHT: usize = 8;

/// How to reach a peer: its ID52, and a direct address when known (LAN, loopback). Without
/// one the client relies on discovery and relays (internet mode).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerAddr {
    pub id52: String,
    pub direct: Option<SocketAddr>,
}

impl PeerAddr {
    pub fn new(id52: impl Into<String>, direct: Option<SocketAddr>) -> PeerAddr {
        PeerAddr { id52: id52.into(), direct }
    }

    pub fn node_addr(&self) -> Result<NodeAddr, NetError> {
        let node = identity::id52_to_node_id(&self.id52)?;
        Ok(NodeAddr::new(node).with_direct_addresses(self.direct))
    }
}

/// Options of a [`Client`].
pub struct ClientBuilder {
    /// The client's identity (what a server's allow-list checks); fresh when absent.
    secret_key: Option<fastn_id52::SecretKey>,
    bind: SocketAddr,
    /// Relays and discovery (to reach a bare ID52), or loopback/LAN only (the default).
    reach: Reach,
    connect_timeout: Duration,
    request_timeout: Duration,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("bind", &self.bind)
            .field("reach", &self.reach)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            secret_key: None,
            bind: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)),
            reach: Reach::direct(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
        }
    }
}

impl ClientBuilder {
    pub fn secret_key(mut self, key: fastn_id52::SecretKey) -> Self {
        self.secret_key = Some(key);
        self
    }
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind = addr;
        self
    }
    /// n0 relays and discovery on or off; shorthand for [`Self::reach`].
    pub fn internet(mut self, on: bool) -> Self {
        self.reach = if on { Reach::n0() } else { Reach::direct() };
        self
    }
    /// Relays and discovery used to reach peers dialed without a direct address.
    pub fn reach(mut self, reach: Reach) -> Self {
        self.reach = reach;
        self
    }
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Binds the client's endpoint. Must run inside a tokio runtime, which the client then
    /// uses for blocking reads through [`RemoteTrack`].
    pub async fn spawn(self) -> Result<Client, NetError> {
        let key = self.secret_key.unwrap_or_else(fastn_id52::SecretKey::generate);
        let secret = identity::to_iroh_secret(&key);
        let endpoint = bind_endpoint(self.bind, &self.reach, &secret).await?;
        Ok(Client {
            inner: Arc::new(ClientInner {
                id52: key.id52(),
                secret,
                redial_bind: SocketAddr::new(self.bind.ip(), 0),
                reach: self.reach,
                endpoint,
                connections: Mutex::new(HashMap::new()),
                connect_timeout: self.connect_timeout,
                request_timeout: self.request_timeout,
                runtime: tokio::runtime::Handle::current(),
            }),
        })
    }
}

/// Fetches stream descriptions and byte ranges from peers. Clone it freely.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<ClientInner>,
}

/// One connection slot per peer, locked while dialing so concurrent requests share one dial.
type Slot = Arc<tokio::sync::Mutex<PeerSlot>>;

#[derive(Debug, Default)]
struct PeerSlot {
    conn: Option<Connection>,
    /// A connection to this peer was lost: dial it next from a fresh endpoint. iroh 0.91 keeps
    /// trusting the old UDP path for seconds, and a restarted server drops QUIC packets from a
    /// path it has not pinged, so a re-dial on the same endpoint stalls for 5-20 s.
    lost: bool,
    /// The peer's own endpoint after a loss (the shared one otherwise).
    endpoint: Option<Endpoint>,
}

async fn bind_endpoint(
    bind: SocketAddr,
    reach: &Reach,
    secret: &iroh::SecretKey,
) -> Result<Endpoint, NetError> {
    endpoint_builder(bind, reach)
        .secret_key(secret.clone())
        .bind()
        .await
        .map_err(|e| NetError::Bind(e.to_string()))
}

#[derive(Debug)]
struct ClientInner {
    id52: String,
    /// Same identity on every endpoint the client binds.
    secret: iroh::SecretKey,
    /// Where re-dial endpoints bind (the client's IP, any port).
    redial_bind: SocketAddr,
    reach: Reach,
    endpoint: Endpoint,
    connections: Mutex<HashMap<NodeId, Slot>>,
    connect_timeout: Duration,
    request_timeout: Duration,
    /// Where [`RemoteTrack`]'s blocking reads run their requests.
    runtime: tokio::runtime::Handle,
}

impl Client {
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// This client's ID52 (what a server's allow-list names).
    pub fn id52(&self) -> &str {
        &self.inner.id52
    }

    /// Describes `stream` on `peer`.
    pub async fn get(&self, peer: &PeerAddr, stream: &str) -> Result<StreamInfo, NetError> {
        let request = Request::Get(GetRequest { stream: stream.to_string() });
        let (header, _) = self.request(peer, &request, false).await?;
        header.into_result()
    }

    /// Exactly `len` bytes at `start` of a remote track; `len` must fit the server's window.
    pub async fn read_range(
        &self,
        peer: &PeerAddr,
        stream: &str,
        track: &str,
        start: u64,
        len: u64,
    ) -> Result<Bytes, NetError> {
        self.read_range_prioritized(peer, stream, track, start, len, None).await
    }

    /// [`Client::read_range`] with a send priority (higher first among this connection's
    /// answers; see [`ReadRangeRequest::priority`]).
    pub async fn read_range_prioritized(
        &self,
        peer: &PeerAddr,
        stream: &str,
        track: &str,
        start: u64,
        len: u64,
        priority: Option<i32>,
    ) -> Result<Bytes, NetError> {
        self.read_file_range(peer, stream, track, 0, start, len, priority).await
    }

    /// [`Client::read_range_prioritized`] of file `file` of a track in several files (see
    /// [`super::TrackEntry::sizes`]).
    #[allow(clippy::too_many_arguments)]
    pub async fn read_file_range(
        &self,
        peer: &PeerAddr,
        stream: &str,
        track: &str,
        file: u32,
        start: u64,
        len: u64,
        priority: Option<i32>,
    ) -> Result<Bytes, NetError> {
        let request = Request::ReadRange(ReadRangeRequest {
            stream: stream.to_string(),
            track: track.to_string(),
            file,
            start,
            len,
            priority,
        });
        let (_, data) = self.request(peer, &request, true).await?;
        Ok(data)
    }

    /// A [`RangeSource`] over one remote track (one `stream.get` to learn its size).
    pub async fn remote_track(
        &self,
        peer: &PeerAddr,
        stream: &str,
        track: &str,
    ) -> Result<RemoteTrack, NetError> {
        let info = self.get(peer, stream).await?;
        RemoteTrack::new(self.clone(), peer.clone(), &info, track)
    }

    /// How the connection to `peer` runs now: direct, through a relay, or both while iroh
    /// checks a direct path; `None` when not connected. Says whether a relay carries the bytes.
    pub async fn path(&self, peer: &PeerAddr) -> Option<ConnectionType> {
        use iroh::Watcher as _;
        let node = identity::id52_to_node_id(&peer.id52).ok()?;
        let slot = {
            let map = self.inner.connections.lock().unwrap_or_else(|e| e.into_inner());
            map.get(&node).cloned()?
        };
        let guard = slot.lock().await;
        guard.conn.as_ref()?;
        let endpoint = guard.endpoint.as_ref().unwrap_or(&self.inner.endpoint);
        endpoint.conn_type(node).map(|mut watcher| watcher.get())
    }

    /// Sends an already framed request and returns the response header and whatever bytes
    /// follow it (up to `max_body`). For tests and diagnostics of servers: it lets malformed
    /// requests through.
    #[cfg(any(test, feature = "test-utils"))]
    pub async fn send_raw(
        &self,
        peer: &PeerAddr,
        frame: Bytes,
        max_body: usize,
    ) -> Result<(ResponseHeader, Bytes), NetError> {
        let conn = self.connection(&peer.node_addr()?).await?;
        let work = async {
            let (mut send, mut recv) = conn.open_bi().await.map_err(conn_err)?;
            // The server may stop reading an oversized header; its answer still arrives.
            let _ = send.write_chunk(frame).await;
            let _ = send.finish();
            let header = read_header(&mut recv).await?;
            let rest = recv.read_to_end(max_body).await.map_err(conn_err)?;
            Ok((header, Bytes::from(rest)))
        };
        let result = tokio::time::timeout(self.inner.request_timeout, work)
            .await
            .map_err(|_| NetError::Timeout(self.inner.request_timeout))?;
        result.map_err(|e| refusal(&conn).unwrap_or(e))
    }

    /// Closes every connection and every endpoint.
    pub async fn close(&self) {
        let slots: Vec<Slot> = {
            let map = self.inner.connections.lock().unwrap_or_else(|e| e.into_inner());
            map.values().cloned().collect()
        };
        for slot in slots {
            let mut guard = slot.lock().await;
            guard.conn = None;
            if let Some(endpoint) = guard.endpoint.take() {
                endpoint.close().await;
            }
        }
        self.inner.endpoint.close().await;
    }

    async fn request(
        &self,
        peer: &PeerAddr,
        request: &Request,
        ranged: bool,
    ) -> Result<(ResponseHeader, Bytes), NetError> {
        let frame = request.encode()?;
        let addr = peer.node_addr()?;
        let expected = match request {
            Request::ReadRange(r) if ranged => Some(r.len),
            _ => None,
        };
        tracing::trace!(?request, "request");
        let mut attempt = 0;
        loop {
            attempt += 1;
            let conn = self.connection(&addr).await?;
            let result =
                tokio::time::timeout(self.inner.request_timeout, exchange(&conn, frame.clone(), expected))
                    .await
                    .unwrap_or(Err(NetError::Timeout(self.inner.request_timeout)));
            let result = match result {
                Err(NetError::Connection(message)) => {
                    Err(refusal(&conn).unwrap_or(NetError::Connection(message)))
                }
                other => other,
            };
            match result {
                Err(NetError::Connection(message)) => {
                    self.forget(addr.node_id, &conn).await;
                    if attempt >= 2 {
                        return Err(NetError::Connection(message));
                    }
                    tracing::debug!(peer = %peer.id52, "retrying on a fresh connection: {message}");
                }
                Err(NetError::Timeout(t)) => {
                    // The connection may be dead without having noticed: dial afresh next time.
                    self.forget(addr.node_id, &conn).await;
                    return Err(NetError::Timeout(t));
                }
                other => return other,
            }
        }
    }

    /// The cached connection to a peer, dialing when there is none or it has closed.
    async fn connection(&self, addr: &NodeAddr) -> Result<Connection, NetError> {
        let slot = {
            let mut map = self.inner.connections.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(addr.node_id).or_default().clone()
        };
        let mut guard = slot.lock().await;
        if let Some(conn) = guard.conn.as_ref() {
            if conn.close_reason().is_none() {
                return Ok(conn.clone());
            }
            // A server that closed an idle connection (or refused us) is alive on the same
            // path: dial it again from the same endpoint.
            guard.lost = !closed_by_live_server(conn);
        }
        guard.conn = None;
        if guard.lost {
            guard.lost = false;
            if let Some(old) = guard.endpoint.take() {
                old.close().await;
            }
            guard.endpoint =
                Some(bind_endpoint(self.inner.redial_bind, &self.inner.reach, &self.inner.secret).await?);
        }
        let endpoint = guard.endpoint.as_ref().unwrap_or(&self.inner.endpoint);
        let peer = identity::node_id_to_id52(&addr.node_id);
        let dial = endpoint.connect(addr.clone(), ALPN);
        let conn = tokio::time::timeout(self.inner.connect_timeout, dial)
            .await
            .map_err(|_| NetError::Connect {
                peer: peer.clone(),
                message: format!("no answer within {:?}", self.inner.connect_timeout),
            })?
            .map_err(|e| NetError::Connect { peer, message: e.to_string() });
        match conn {
            Ok(conn) => {
                guard.conn = Some(conn.clone());
                Ok(conn)
            }
            Err(e) => {
                guard.lost = true;
                Err(e)
            }
        }
    }

    /// Drops a cached connection, unless it was already replaced by a newer one.
    async fn forget(&self, node: NodeId, conn: &Connection) {
        let slot = {
            let map = self.inner.connections.lock().unwrap_or_else(|e| e.into_inner());
            map.get(&node).cloned()
        };
        if let Some(slot) = slot {
            let mut guard = slot.lock().await;
            if guard.conn.as_ref().is_some_and(|c| c.stable_id() == conn.stable_id()) {
                guard.conn = None;
                guard.lost = !closed_by_live_server(conn);
            }
        }
    }
}

fn conn_err(e: impl std::fmt::Display) -> NetError {
    NetError::Connection(e.to_string())
}

/// The server closed the connection while staying up (it sat idle, made room for another, or
/// refused us), as opposed to going away: it can be dialed again on the same path.
fn closed_by_live_server(conn: &Connection) -> bool {
    let live = [CLOSE_IDLE, CLOSE_UNAUTHORIZED, CLOSE_BUSY, CLOSE_EVICTED].map(u64::from);
    matches!(conn.close_reason(), Some(ConnectionError::ApplicationClosed(close))
        if live.contains(&close.error_code.into_inner()))
}

/// The server closed the connection to refuse us (not on its allow-list, or no room): the
/// status that says so, instead of a lost connection worth retrying.
fn refusal(conn: &Connection) -> Option<NetError> {
    let Some(ConnectionError::ApplicationClosed(close)) = conn.close_reason() else { return None };
    let reason = String::from_utf8_lossy(&close.reason).into_owned();
    match u32::try_from(close.error_code.into_inner()) {
        Ok(CLOSE_UNAUTHORIZED) => Some(NetError::status(ErrorCode::Unauthorized, reason)),
        Ok(CLOSE_BUSY) => Some(NetError::status(ErrorCode::Busy, reason)),
        _ => None,
    }
}

async fn read_header(recv: &mut iroh::endpoint::RecvStream) -> Result<ResponseHeader, NetError> {
    let json = read_frame(recv, MAX_RESPONSE_HEADER).await.map_err(|e| match e {
        FrameError::Io(e) => NetError::Connection(e),
        FrameError::TooLarge { len, limit } => {
            NetError::Protocol(format!("response header of {len} bytes exceeds {limit}"))
        }
    })?;
    serde_json::from_slice(&json).map_err(|e| NetError::Protocol(format!("malformed response header: {e}")))
}

/// One request on its own stream: the header, then for a range exactly `expected` bytes.
async fn exchange(
    conn: &Connection,
    frame: Bytes,
    expected: Option<u64>,
) -> Result<(ResponseHeader, Bytes), NetError> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(conn_err)?;
    send.write_chunk(frame).await.map_err(conn_err)?;
    send.finish().map_err(conn_err)?;
    let header = read_header(&mut recv).await?;
    let Some(expected) = expected else { return Ok((header, Bytes::new())) };
    let ok: ReadRangeOk = header.clone().into_result()?;
    if ok.len != expected {
        return Err(NetError::Protocol(format!("asked for {expected} bytes, server announced {}", ok.len)));
    }
    // `expected` is our own request, already bounded by the server's window.
    let size = usize::try_from(expected).map_err(|_| NetError::Protocol("range too large".into()))?;
    let mut buf = BytesMut::zeroed(size);
    recv.read_exact(&mut buf).await.map_err(conn_err)?;
    // The stream must end here: a server that sends more than it announced is broken.
    match recv.read_to_end(0).await {
        Ok(_) => Ok((header, buf.freeze())),
        Err(iroh::endpoint::ReadToEndError::TooLong) => {
            Err(NetError::Protocol(format!("server sent more than the {expected} bytes it announced")))
        }
        Err(e) => Err(conn_err(e)),
    }
}

/// One remote track as a [`RangeSource`]: peer, stream, track, size and a client handle.
///
/// `read_range` blocks the calling thread until the bytes arrive: call it from a blocking
/// thread (`spawn_blocking`, a parser or GStreamer thread), never from an async worker, where
/// it would stall the runtime. The requests themselves run on the client's runtime. Reads
/// larger than the server's window are split into window-sized requests, at most
/// [`MAX_READS_IN_FLIGHT`] in flight at once; reads smaller than the window's minimum fetch the
/// minimum (or up to the end of the track) and return the part asked for. The server's window
/// is checked once, when the track is made ([`ReadWindow::for_client`]).
#[derive(Debug, Clone)]
pub struct RemoteTrack {
    client: Client,
    peer: PeerAddr,
    stream: String,
    track: String,
    /// Which of the track's files (0 for a track in one file).
    file: u32,
    size: u64,
    window: ReadWindow,
    /// Send priorities of this track's reads (see [`ReadRangeRequest::priority`]).
    priority: Option<SendPriority>,
}

/// The send priorities a track's reads ask for (higher first; see
/// [`ReadRangeRequest::priority`]): a peer's send order decides who gets a short link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendPriority {
    /// The bytes playback waits for now ([`ReadOptions::urgent`]).
    pub urgent: i32,
    /// Every other read: refills, reads ahead, index reads.
    pub routine: i32,
}

impl RemoteTrack {
    /// From a description already fetched with [`Client::get`]: the track's first file (its
    /// only one, for most tracks).
    pub fn new(
        client: Client,
        peer: PeerAddr,
        info: &StreamInfo,
        track: &str,
    ) -> Result<RemoteTrack, NetError> {
        RemoteTrack::file(client, peer, info, track, 0)
    }

    /// File `file` of a track in several files (see [`super::TrackEntry::sizes`]).
    pub fn file(
        client: Client,
        peer: PeerAddr,
        info: &StreamInfo,
        track: &str,
        file: u32,
    ) -> Result<RemoteTrack, NetError> {
        let t = info.track(track).ok_or_else(|| {
            NetError::status(
                super::protocol::ErrorCode::UnknownTrack,
                format!("no track {track:?} in {:?}", info.name),
            )
        })?;
        let size = t.size(file).ok_or_else(|| {
            NetError::status(
                super::protocol::ErrorCode::OutOfRange,
                format!("track {track:?} of {:?} has {} file(s), no file {file}", info.name, t.sizes.len()),
            )
        })?;
        Ok(RemoteTrack {
            client,
            peer,
            stream: info.name.clone(),
            track: track.to_string(),
            file,
            size,
            window: info.read_window.for_client()?,
            priority: None,
        })
    }

    /// Reads of this track are sent before lower ones when the link is short.
    pub fn with_priority(mut self, priority: SendPriority) -> RemoteTrack {
        self.priority = Some(priority);
        self
    }

    pub fn peer(&self) -> &PeerAddr {
        &self.peer
    }
    pub fn stream(&self) -> &str {
        &self.stream
    }
    pub fn track(&self) -> &str {
        &self.track
    }
    pub fn window(&self) -> ReadWindow {
        self.window
    }

    /// The requests (start, len to ask, len to keep) that cover `start..start+len`, none
    /// across `split` (where urgent bytes end and routine ones begin).
    fn plan(&self, start: u64, len: u64, split: u64) -> Vec<(u64, u64, u64)> {
        let max = self.window.max.max(1);
        let mut out = Vec::new();
        let mut at = start;
        let end = start.saturating_add(len);
        while at < end {
            let mut keep = (end - at).min(max);
            if at < split && split < at + keep {
                keep = split - at;
            }
            // Short reads must end the track; otherwise ask for the minimum and keep a prefix.
            let ask = if keep < self.window.min {
                self.window.min.min(self.size.saturating_sub(at)).max(keep)
            } else {
                keep
            };
            out.push((at, ask, keep));
            at += keep;
        }
        out
    }

    /// The async form of [`RangeSource::read_range`], for callers already on the runtime.
    pub async fn read(&self, start: u64, len: u64) -> Result<Bytes, NetError> {
        self.read_urgent(start, len, 0).await
    }

    /// Like [`RemoteTrack::read`]; the parts that hold the first `urgent` bytes go out at
    /// the track's urgent priority.
    pub async fn read_urgent(&self, start: u64, len: u64, urgent: u64) -> Result<Bytes, NetError> {
        check_range(start, len, self.size)
            .map_err(|e| NetError::status(super::protocol::ErrorCode::OutOfRange, e.to_string()))?;
        let urgent_end = start.saturating_add(urgent);
        let parts = self.plan(start, len, urgent_end);
        let fetches = parts.into_iter().map(|(at, ask, keep)| async move {
            let priority = self.priority.map(|p| if at < urgent_end { p.urgent } else { p.routine });
            let data = self
                .client
                .read_file_range(&self.peer, &self.stream, &self.track, self.file, at, ask, priority)
                .await?;
            Ok::<Bytes, NetError>(data.slice(..usize::try_from(keep).unwrap_or(usize::MAX).min(data.len())))
        });
        // In order, a bounded number at a time; the first error stops the rest.
        let mut chunks: Vec<Bytes> =
            futures::stream::iter(fetches).buffered(MAX_READS_IN_FLIGHT).try_collect().await?;
        if chunks.len() == 1 {
            return Ok(chunks.pop().unwrap_or_default());
        }
        let mut out = BytesMut::with_capacity(usize::try_from(len).unwrap_or(0));
        for chunk in chunks {
            out.extend_from_slice(&chunk);
        }
        Ok(out.freeze())
    }
}

impl RangeSource for RemoteTrack {
    fn len(&self) -> u64 {
        self.size
    }

    fn read_range(&self, start: u64, len: u64) -> Result<Bytes, SourceError> {
        check_range(start, len, self.size)?;
        if len == 0 {
            return Ok(Bytes::new());
        }
        let this = self.clone();
        let task = self.client.inner.runtime.spawn(async move { this.read(start, len).await });
        match futures::executor::block_on(task) {
            Ok(Ok(data)) => Ok(data),
            Ok(Err(e)) => Err(SourceError::Remote { start, len, message: e.to_string() }),
            Err(e) => Err(SourceError::Remote { start, len, message: task_failed(&e) }),
        }
    }

    /// Cancelling aborts the request task: its QUIC streams are dropped, which stops the
    /// server's sending (STOP_SENDING) instead of waiting for the bytes.
    fn read_range_with(&self, start: u64, len: u64, options: ReadOptions<'_>) -> Result<Bytes, SourceError> {
        check_range(start, len, self.size)?;
        if len == 0 {
            return Ok(Bytes::new());
        }
        let cancel = options.cancel;
        if cancel.is_cancelled() {
            return Err(SourceError::Cancelled { start, len });
        }
        let this = self.clone();
        let urgent = options.urgent;
        let task = self.client.inner.runtime.spawn(async move { this.read_urgent(start, len, urgent).await });
        let abort = task.abort_handle();
        let cancelled = std::pin::pin!(cancel.cancelled());
        let outcome = futures::executor::block_on(futures::future::select(task, cancelled));
        match outcome {
            futures::future::Either::Left((Ok(Ok(data)), _)) => Ok(data),
            futures::future::Either::Left((Ok(Err(e)), _)) => {
                Err(SourceError::Remote { start, len, message: e.to_string() })
            }
            futures::future::Either::Left((Err(e), _)) => {
                Err(SourceError::Remote { start, len, message: task_failed(&e) })
            }
            futures::future::Either::Right(_) => {
                abort.abort();
                Err(SourceError::Cancelled { start, len })
            }
        }
    }
}

/// Why a read's task ended without an answer, in words: a task nobody aborted is cancelled
/// only when the client's runtime shuts down under a reader.
fn task_failed(e: &tokio::task::JoinError) -> String {
    if e.is_cancelled() {
        "the client's runtime shut down during the read (drop readers before the runtime)".into()
    } else {
        format!("the read's task failed: {e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn plan_splits_and_pads_reads_to_the_window() {
        let client = Client::builder().spawn().await.expect("client");
        let track = RemoteTrack {
            client,
            peer: PeerAddr::new("x", None),
            stream: "s".into(),
            track: "t".into(),
            file: 0,
            size: 10_000,
            window: ReadWindow { min: 100, max: 1000 },
            priority: None,
        };
        // Small read in the middle: ask for the minimum, keep 8.
        assert_eq!(track.plan(50, 8, 0), vec![(50, 100, 8)]);
        // Small read near the end: ask up to the end.
        assert_eq!(track.plan(9_950, 8, 0), vec![(9_950, 50, 8)]);
        // Large read: window-sized parts, a short tail padded to the minimum.
        assert_eq!(track.plan(0, 2_010, 0), vec![(0, 1000, 1000), (1000, 1000, 1000), (2000, 100, 10)]);
        // Urgent bytes end at 1500: no part crosses there.
        assert_eq!(track.plan(0, 2_010, 1500), vec![(0, 1000, 1000), (1000, 500, 500), (1500, 510, 510)]);
        assert_eq!(track.plan(0, 900, 30), vec![(0, 100, 30), (30, 870, 870)]);
        for (at, ask, keep) in track.plan(123, 7_777, 4_000) {
            assert!(keep <= ask && ask <= 1000);
            assert!(ask >= 100 || at + ask == 10_000);
        }
    }
}
