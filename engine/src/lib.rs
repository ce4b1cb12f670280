//! tandem replays recorded meetings: several separately recorded tracks played on one meeting
//! clock, streamed on demand from a peer that holds the recording.
//!
//! # Layout
//! - [`time`]: typed media time ([`MediaTime`]) and checked conversions from container ticks.
//! - [`source`]: [`RangeSource`], the one thing everything above reads through: a length and
//!   `read_range(start, len) -> Bytes`. Local files and remote tracks both implement it.
//! - [`index`]: per-container keyframe indexes behind one type, [`index::TrackIndex`]; one module
//!   per container format (`mp4`, `mkv`, `ogg`, `mp3`, `subtitles`). Parsers are synchronous and
//!   free of I/O policy: they ask a `RangeSource` for the few ranges they need.
//! - [`manifest`]: the `meeting.json` schema a recording folder carries.
//! - `import` (cargo feature `import`, on by default): recordings other systems wrote
//!   (BigBlueButton raw recordings, LiveKit track egress) turned into a meeting folder; see
//!   [`import`].
//! - `net` (cargo feature `net`, on by default): the peer protocol (`stream.get`,
//!   `stream.read_range`) over iroh/QUIC with fastn ID52 identities; `net::protocol` is the wire
//!   spec: names, kinds, sizes and timeline placement, never a codec. Without the feature the
//!   crate is the parsers alone
//!   (what the fuzz targets build). With the feature `s3` (off by default: it brings an HTTP
//!   client), `net::s3` serves meetings from an S3 bucket.
//! - `stream` (cargo feature `stream`, implied by `net` and `player`): the stream layer any
//!   app can embed, free of GStreamer: a meeting's tracks subscribed as handles, each a
//!   buffered stream of coded packets on the meeting timeline (bounded in time and bytes,
//!   back-pressure from the consumer to the reads), seek by time with tickets; see
//!   [`stream`].
//! - `player` (cargo feature `player`, on by default): a GStreamer renderer over the stream
//!   layer: one meeting clock, one pipeline fed by `appsrc` with exact timestamps; see
//!   [`player`] for its own layout.

#![forbid(unsafe_code)]

#[cfg(feature = "import")]
pub mod import;
pub mod index;
#[cfg(feature = "stream")]
mod lock;
pub mod manifest;
#[cfg(feature = "net")]
pub mod net;
#[cfg(feature = "player")]
pub mod player;
pub mod source;
#[cfg(feature = "stream")]
pub mod stream;
pub mod time;

pub use source::{FileSource, RangeSource, ReadOptions, SourceError};
pub use time::MediaTime;
