//! What can go wrong serving from a bucket: every error names the bucket, and where an object
//! is involved the object (`s3://bucket/key`) and the byte range.
//!
//! `Clone`, so one failed GET reaches every reader that waited on it. [`S3Error::to_net`] turns
//! one into what a client is told: the meeting and track by name and what went wrong, never
//! the bucket or an object key (the server knows names and sizes, never paths); the server's
//! log line carries the whole error.

use std::time::Duration;

use crate::net::protocol::{ErrorCode, NetError};

/// Bytes `start..end` of an object, written `bytes START-LAST` (inclusive, like HTTP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl std::fmt::Display for ByteRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bytes {}-{}", self.start, self.end.saturating_sub(1))
    }
}

/// `" (bytes a-b)"` or nothing.
fn range_suffix(range: &Option<ByteRange>) -> String {
    range.map(|r| format!(" ({r})")).unwrap_or_default()
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum S3Error {
    /// What `serve` was given is not `s3://BUCKET[/PREFIX]`.
    #[error("{location:?} is not an s3://BUCKET[/PREFIX] location: {reason}")]
    InvalidLocation { location: String, reason: String },
    /// The object store client could not be configured (a malformed endpoint, say).
    #[error("configuring the S3 client for bucket {bucket:?}: {message}")]
    Config { bucket: String, message: String },
    /// The endpoint answers that the bucket does not exist.
    #[error("bucket {bucket:?} at {endpoint}: no such bucket")]
    NoSuchBucket { bucket: String, endpoint: String },
    /// A meeting name that could not name a folder (`..`, a slash).
    #[error("invalid meeting name {meeting:?}")]
    BadName { meeting: String },
    /// The manifest names a track file that is not in the bucket.
    #[error("{object}: no such object (track {track:?} of meeting {meeting:?})")]
    MissingObject { object: String, meeting: String, track: String },
    /// The manifest names a file that cannot be an object key inside the meeting's folder.
    #[error("{object}: track {track:?} names file {file:?}, which is not a plain path inside the meeting")]
    BadFile { object: String, track: String, file: String },
    /// `meeting.json` is there but unusable.
    #[error("{object}: {message}")]
    Manifest { object: String, message: String },
    /// No `meeting.json` under the meeting's folder.
    #[error("{location}: no meeting {meeting:?}")]
    UnknownMeeting { location: String, meeting: String },
    #[error("meeting {meeting:?} has no track {track:?}")]
    UnknownTrack { meeting: String, track: String },
    /// A read past an object's end (the server checks reads against the sizes it announced,
    /// so this means the object shrank, or a direct caller asked wrong).
    #[error("{object}: {range} lies past the end of its {size} bytes")]
    OutOfRange { object: String, range: ByteRange, size: u64 },
    /// The object answered with another length than asked: it was replaced while served.
    #[error("{object}{}: got {got} bytes, expected {expected} (the object changed?)", range_suffix(.range))]
    Changed { object: String, range: Option<ByteRange>, got: u64, expected: u64 },
    /// No answer (retries included) within the configured deadline.
    #[error("{object}{}: no answer from {endpoint} within {after:?}", range_suffix(.range))]
    Timeout { object: String, endpoint: String, range: Option<ByteRange>, after: Duration },
    /// Any other failure of the store (refused connection, denied access, server error).
    #[error("{object}{}: {message}", range_suffix(.range))]
    Store { object: String, range: Option<ByteRange>, message: String },
    /// A fetch task died (a panic in the HTTP stack).
    #[error("{object}: fetch task failed: {message}")]
    Worker { object: String, message: String },
}

impl S3Error {
    /// What a client is told: names (meeting, track) and the kind of failure; the bucket and
    /// keys stay on the server.
    pub fn to_net(&self, meeting: &str, track: Option<&str>) -> NetError {
        let what = match track {
            Some(track) => format!("track {track:?} of {meeting:?}"),
            None => format!("stream {meeting:?}"),
        };
        match self {
            S3Error::BadName { meeting } => {
                NetError::status(ErrorCode::BadRequest, format!("invalid stream name {meeting:?}"))
            }
            S3Error::UnknownMeeting { meeting, .. } => {
                NetError::status(ErrorCode::UnknownStream, format!("no stream {meeting:?}"))
            }
            S3Error::UnknownTrack { meeting, track } => {
                NetError::status(ErrorCode::UnknownTrack, format!("no track {track:?} in {meeting:?}"))
            }
            S3Error::MissingObject { meeting, track, .. } => NetError::status(
                ErrorCode::UnknownTrack,
                format!("track {track:?} of {meeting:?} has no file on the server"),
            ),
            S3Error::OutOfRange { range, size, .. } => NetError::status(
                ErrorCode::OutOfRange,
                format!("{what}: {range} lies past the end of its {size} bytes"),
            ),
            S3Error::Timeout { after, .. } => NetError::status(
                ErrorCode::Internal,
                format!("{what}: the server's object store did not answer within {after:?}"),
            ),
            S3Error::Manifest { .. } => NetError::status(
                ErrorCode::Internal,
                format!("{what}: the server's meeting.json is unusable"),
            ),
            S3Error::BadFile { track, .. } => NetError::status(
                ErrorCode::Internal,
                format!("track {track:?} of {meeting:?}: its file is not inside the meeting"),
            ),
            S3Error::NoSuchBucket { .. } => {
                NetError::status(ErrorCode::Internal, format!("{what}: the server's bucket is gone"))
            }
            S3Error::Changed { .. } => NetError::status(
                ErrorCode::Internal,
                format!("{what}: the object changed while being read; ask again"),
            ),
            S3Error::InvalidLocation { .. }
            | S3Error::Config { .. }
            | S3Error::Store { .. }
            | S3Error::Worker { .. } => {
                NetError::status(ErrorCode::Internal, format!("{what}: the server's object store failed"))
            }
        }
    }
}
