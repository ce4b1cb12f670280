//! A provider serving meetings from an S3 bucket (feature `s3`): `serve s3://BUCKET[/PREFIX]`.
//!
//! ```text
//! resolver(meeting)                          loader(meeting, track, start, len)
//!   '- meetings cache (fresh for the TTL,      |- the meeting as resolved (cached)
//!      one resolve in flight per meeting)      |- chunks covering start..start+len
//!        |- GET <prefix>/<meeting>/meeting.json|    (aligned to the chunk size)
//!        '- HEAD each track's object           |- per chunk: LRU | join a GET in flight |
//!           (size, ETag)                       |    range GET (one per chunk at a time)
//!                                              '- the bytes: a slice of one chunk, or the
//!                                                 chunks joined
//! ```
//!
//! Layout in the bucket: `<prefix>/<meeting>/meeting.json` and the files its segments name,
//! relative to `<prefix>/<meeting>/` (a manifest naming `..`, an absolute path or an empty
//! component is refused, so no key outside the meeting is ever read). Nothing is written to
//! local disk; data stays in [`Bytes`](bytes::Bytes) from the HTTP body to the QUIC stream.
//!
//! **Why chunks and merging**: the server calls the resolver for every read and the loader
//! for every range a client asks; 100 viewers of one meeting ask the same ranges at about the
//! same time. Reads are widened to whole chunks ([`S3Config::chunk_size`], 256 KiB), kept in
//! an LRU bounded in bytes ([`S3Config::cache_bytes`]), and a chunk wanted while its GET is
//! under way waits for that GET (see [`chunks`]): each chunk costs the bucket one GET however
//! many viewers read it, until it is evicted. Resolved meetings are kept for
//! [`S3Config::manifest_ttl`] (a replaced `meeting.json` or object is seen after that; chunks
//! are keyed by the object's ETag and size, so old and new bytes never mix).
//!
//! **Timeouts for a player**: object_store's defaults retry for up to three minutes; a player
//! waiting on a chunk wants an error in seconds so it can tell the person (or, later, ask
//! another peer). Each HTTP attempt is bounded by [`S3Config::request_timeout`], connects by
//! [`S3Config::connect_timeout`], and every store operation, retries included, by
//! [`S3Config::deadline`] (5 s by default).
//!
//! Configuration comes from the standard environment ([`S3Config::from_env`]:
//! `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
//! `AWS_REGION`, `AWS_ALLOW_HTTP`) or from the builder methods. Errors are [`S3Error`]s naming
//! the bucket, the object and the byte range; the server's callbacks log them whole and tell
//! the client only names ([`S3Error::to_net`]).

mod bucket;
mod chunks;
mod config;
mod error;
mod location;
mod provider;
#[cfg(test)]
mod tests;

pub use config::S3Config;
pub use error::{ByteRange, S3Error};
pub use location::S3Location;
pub use provider::{S3Provider, S3Stats};

/// A `meeting.json` larger than this is refused unread (a manifest is a few KiB).
pub const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;
