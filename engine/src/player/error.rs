//! Why the player could not do what it was asked.

use crate::index::IndexError;
use crate::manifest::ManifestError;
use crate::stream::StreamError;

/// Why the player could not do what it was asked: what the stream says, or GStreamer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PlayerError {
    /// Reading the meeting: its manifest, an index, the peer, a track.
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("track {track}: {what}")]
    Unsupported { track: String, what: String },
    #[error("GStreamer: {0}")]
    Gst(String),
    #[error("the GStreamer element {factory} is missing: install the Debian package {package} (scripts/install-deps.sh installs every one tandem needs)")]
    MissingElement { factory: String, package: &'static str },
    #[error("rate {0} is outside 0.5 to 2")]
    Rate(f64),
}

impl PlayerError {
    pub(crate) fn unknown_track(name: impl Into<String>) -> PlayerError {
        StreamError::UnknownTrack(name.into()).into()
    }
    pub(crate) fn open(track: impl Into<String>, message: impl Into<String>) -> PlayerError {
        StreamError::Open { track: track.into(), message: message.into() }.into()
    }
}

impl From<ManifestError> for PlayerError {
    fn from(e: ManifestError) -> Self {
        StreamError::from(e).into()
    }
}

impl From<IndexError> for PlayerError {
    fn from(e: IndexError) -> Self {
        StreamError::from(e).into()
    }
}

#[cfg(feature = "net")]
impl From<crate::net::NetError> for PlayerError {
    fn from(e: crate::net::NetError) -> Self {
        StreamError::from(e).into()
    }
}
