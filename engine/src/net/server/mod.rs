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

mod builder;
mod connection;
mod handle;
mod limits;

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use iroh::NodeId;

pub(crate) use builder::endpoint_builder;
pub use builder::{Server, ServerBuilder, INITIAL_WINDOW};
pub use handle::ServerHandle;

use super::protocol::{NetError, ReadWindow, StreamInfo};

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

/// The server's settings, shared by its accept loop and connections.
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
