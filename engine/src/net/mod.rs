//! The peer link: serve and fetch track byte ranges (`stream.get`, `stream.read_range`) over
//! iroh/QUIC with fastn ID52 identities.
//!
//! # Layout
//! - [`protocol`]: the wire spec (ALPN, protocol names, framing, typed requests, responses and
//!   error codes). Knows nothing about media.
//! - [`server`]: a server built from two async callbacks (resolver, loader), with allow-list,
//!   read window, limits and explicit shutdown.
//! - [`client`]: a cloneable client with one cached connection per peer, and [`client::RemoteTrack`],
//!   a [`crate::RangeSource`] over a remote track.
//! - [`folder`]: a ready-made provider serving a root folder of meetings.
//! - `s3` (feature `s3`): a provider serving meetings from an S3 bucket: chunked range GETs,
//!   an LRU bounded in bytes, identical reads in flight merged.
//! - [`identity`]: ID52 key files and their iroh equivalents.
//! - [`reach`]: relays and discovery (none, n0's, or your own relay and pkarr relay).
//! - `strangers` (tests and benches, feature `test-utils`): crowds of hostile identities that
//!   idle, stall mid-header or stall mid-handshake.
//!
//! Layering rule: nothing here imports the index (codec) modules; the player sits above.

pub mod client;
pub mod folder;
#[cfg(test)]
mod hostile_tests;
pub mod identity;
pub mod protocol;
pub mod reach;
#[cfg(feature = "s3")]
pub mod s3;
pub mod server;
#[cfg(any(test, feature = "test-utils"))]
pub mod strangers;

pub use client::{Client, PeerAddr, RemoteTrack, SendPriority};
pub use folder::FolderProvider;
pub use iroh::endpoint::ConnectionType;
pub use protocol::{
    ErrorCode, NetError, ReadWindow, StreamInfo, TrackEntry, ALPN, STREAM_GET, STREAM_READ_RANGE,
};
pub use reach::{Discovery, Reach, Relays};
#[cfg(feature = "s3")]
pub use s3::{S3Config, S3Error, S3Location, S3Provider};
pub use server::{Server, ServerHandle};
