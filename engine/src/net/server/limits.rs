//! The connection limits: handshakes in progress (oldest evicted), connections per peer,
//! places under the connection cap (idlest evicted), and [`admit`], which applies them in turn.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use iroh::endpoint::{Connecting, Connection, Incoming, VarInt};
use iroh::NodeId;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::Inner;
use crate::net::protocol::{CLOSE_BUSY, CLOSE_EVICTED, CLOSE_IDLE, CLOSE_UNAUTHORIZED};

/// Open connections per peer; a [`PeerShare`] gives its place back when dropped.
pub(super) type PeerCounts = Arc<Mutex<HashMap<NodeId, usize>>>;

pub(super) struct PeerShare {
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

/// Handshakes in progress, bounded in number: at the bound the oldest is dropped (closed with
/// [`CLOSE_EVICTED`]) to make room for the newcomer, so a crowd of handshakes that never
/// complete delays a new one by at most the time it takes that many more to arrive.
pub(super) struct Handshakes {
    max: usize,
    tasks: JoinSet<Option<Connection>>,
    /// One per task, oldest first: dropping it tells the task to give up its handshake. A
    /// closed one belongs to a task that has ended; they are pruned as new ones arrive.
    order: VecDeque<oneshot::Sender<()>>,
}

impl Handshakes {
    pub(super) fn new(max: usize) -> Handshakes {
        Handshakes { max, tasks: JoinSet::new(), order: VecDeque::new() }
    }

    pub(super) fn start(&mut self, incoming: Incoming, timeout: Duration) {
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
    pub(super) async fn next_done(&mut self) -> Option<Option<Connection>> {
        let done = self.tasks.join_next().await?;
        Some(done.ok().flatten())
    }

    pub(super) fn abort_all(&mut self) {
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
pub(super) struct Places {
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
    pub(super) fn new(max: usize) -> Places {
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
pub(super) struct Place {
    places: Places,
    id: u64,
}

impl Place {
    /// A request's header has arrived: the connection is busy until the guard is dropped.
    pub(super) fn answering(&self) -> Answering<'_> {
        let mut table = self.places.lock();
        if let Some(open) = table.open.get_mut(&self.id) {
            open.answering += 1;
            open.asked = true;
            open.last_request = Instant::now();
        }
        Answering { place: self }
    }

    pub(super) fn asked(&self) -> bool {
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
pub(super) struct Answering<'a> {
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
pub(super) fn admit<R, L>(
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
