//! The wire protocol between a serving peer and a playing peer. This module is the spec.
//!
//! # Goals
//! - Fetch any byte range of any track of a named stream (a meeting) with one round trip, the
//!   bytes raw on the wire (no base64, no JSON arrays of bytes).
//! - Many requests in flight on one connection, answered concurrently.
//! - The server exposes names, kinds, sizes and timeline offsets: never paths.
//!
//! # Non-goals
//! - No media knowledge: this module never imports codec or index modules. The server does not
//!   decode, transcode or cache; the client decides which ranges it needs.
//! - No push, no subscriptions: the client pulls.
//!
//! # Transport
//! - QUIC via iroh, ALPN [`ALPN`] (`tandem/stream/1`); peers are named by fastn ID52 keys
//!   (the BASE32_DNSSEC encoding of the ed25519 public key iroh uses as its node id).
//! - One connection per pair of peers, one bidirectional stream per request.
//!
//! # Request (client -> server, then the client finishes its send side)
//! ```text
//! u32 big-endian length N (N <= MAX_REQUEST_HEADER = 64 KiB)
//! N bytes of JSON: {"protocol": "stream.get" | "stream.read_range", "body": {...}}
//! ```
//! - `stream.get`, body [`GetRequest`] `{"stream": "standup"}`, answers [`StreamInfo`].
//! - `stream.read_range`, body [`ReadRangeRequest`] `{"stream", "track", "start", "len"}`
//!   and optionally `"file"` (which of the track's files, numbered from 0 as
//!   [`TrackEntry::sizes`] lists them; 0 when absent) and `"priority"` (an integer, higher sent
//!   first when bandwidth is short; 0 when absent), answers [`ReadRangeOk`] `{"len": n}` followed by exactly `n` raw bytes
//!   (`n == len`).
//!
//! # Response (server -> client, then the server finishes the stream)
//! ```text
//! u32 big-endian length M (M <= MAX_RESPONSE_HEADER)
//! M bytes of JSON: {"status":"ok","body":{...}}
//!               or {"status":"error","code":"<ErrorCode>","message":"..."}
//! [for an ok read_range: exactly body.len raw bytes]
//! ```
//!
//! # Limits
//! - A request header longer than [`MAX_REQUEST_HEADER`] is answered with `header_too_large`
//!   without reading it; the server then stops reading that stream. Other streams on the
//!   connection are unaffected.
//! - Reads must satisfy the server's [`ReadWindow`] (`min <= len <= max`, advertised in
//!   [`StreamInfo::read_window`]); a shorter read is allowed only when it ends exactly at the
//!   end of the track (the tail of a file). Zero-length reads, reads past the end and reads
//!   outside the window get `bad_length` / `out_of_range`.
//! - A server with an allow-list closes a connection from any other peer as soon as the
//!   handshake names it, with close code [`CLOSE_UNAUTHORIZED`], before reading any request:
//!   such peers learn nothing about which streams exist and hold no connection slot. Clients
//!   report that close as the status `unauthorized`.
//! - At its connection cap a server makes room for a new connection by closing, with
//!   [`CLOSE_EVICTED`], the open connection that has gone longest without a request and has
//!   none being answered; only when every open connection is being answered is the new one
//!   closed with [`CLOSE_BUSY`] (as is one beyond its peer's share). A request header must
//!   arrive within the server's header timeout (else `bad_request`); a new connection must
//!   send a whole first request header within the first-request timeout, and a connection with
//!   no request for the idle timeout is closed, both with [`CLOSE_IDLE`] (clients simply dial
//!   again).
//! - Handshakes in progress are bounded in number and time: a server at its bound closes the
//!   oldest handshake in progress with [`CLOSE_EVICTED`] (a peer's ID is known only once its
//!   handshake completes, so a crowd of stalled handshakes must not keep a new, allowed one
//!   waiting), and one that outlasts the handshake timeout with [`CLOSE_IDLE`]. A client may
//!   see such a close as a transport-level close during the handshake instead.
//! - Clients refuse a [`ReadWindow`] whose `max` is below [`MIN_WINDOW_MAX`] or whose `min` is
//!   above [`MAX_WINDOW_MIN`] (a server could otherwise make one read cost millions of
//!   requests, or a tiny read cost a huge one) and never ask for more than
//!   [`CLIENT_MAX_READ`] in one request.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::manifest::{GapPolicy, ManifestTrack, Role, TrackKind};

/// The ALPN of this protocol; the version is part of it.
pub const ALPN: &[u8] = b"tandem/stream/1";

/// Protocol name: describe a stream (its tracks, sizes, timeline placement).
pub const STREAM_GET: &str = "stream.get";
/// Protocol name: read a byte range of one track.
pub const STREAM_READ_RANGE: &str = "stream.read_range";

/// Largest request header a server reads.
pub const MAX_REQUEST_HEADER: u32 = 64 * 1024;
/// Largest response header a client reads (a stream description with many tracks and
/// segments is bigger than any request).
pub const MAX_RESPONSE_HEADER: u32 = 1024 * 1024;

/// Default smallest read a server accepts (except a file's tail).
pub const DEFAULT_MIN_READ: u64 = 4 * 1024;
/// Default largest read a server accepts.
pub const DEFAULT_MAX_READ: u64 = 8 * 1024 * 1024;

/// Connection close code: the server is shutting down.
pub const CLOSE_SHUTDOWN: u32 = 0;
/// Connection close code: the peer is not on the server's allow-list.
pub const CLOSE_UNAUTHORIZED: u32 = 1;
/// Connection close code: the server (or this peer's share of it) has no connection free.
pub const CLOSE_BUSY: u32 = 2;
/// Connection close code: no request arrived for the server's idle timeout (or, on a new
/// connection, for its first-request timeout).
pub const CLOSE_IDLE: u32 = 3;
/// Connection close code: the server was at its connection cap and closed this connection, the
/// one that had gone longest without a request and had none being answered, to make room for
/// a new one; or it had too many handshakes in progress and this was the oldest. Clients
/// simply dial again.
pub const CLOSE_EVICTED: u32 = 4;

/// The smallest `max` of a read window a client accepts: below this a read of a few MiB of
/// metadata would take thousands of requests.
pub const MIN_WINDOW_MAX: u64 = 4 * 1024;
/// The largest `min` of a read window a client accepts: above this reading a 16-byte box
/// header would fetch megabytes.
pub const MAX_WINDOW_MIN: u64 = 1024 * 1024;
/// The largest single request a client sends, whatever the server allows.
pub const CLIENT_MAX_READ: u64 = 16 * 1024 * 1024;

/// Error codes carried by an error response. Serialized in snake_case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    UnknownStream,
    UnknownTrack,
    OutOfRange,
    BadLength,
    BadRequest,
    HeaderTooLarge,
    UnknownProtocol,
    Unauthorized,
    Busy,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::UnknownStream => "unknown_stream",
            ErrorCode::UnknownTrack => "unknown_track",
            ErrorCode::OutOfRange => "out_of_range",
            ErrorCode::BadLength => "bad_length",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::HeaderTooLarge => "header_too_large",
            ErrorCode::UnknownProtocol => "unknown_protocol",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Busy => "busy",
            ErrorCode::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything that can go wrong on the peer link. `Clone` so one failure can reach every
/// waiter of a shared request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    /// A protocol-level refusal: sent by a server, or produced by a provider callback.
    #[error("{code}: {message}")]
    Status { code: ErrorCode, message: String },
    /// The peer broke the framing or sent something unparsable.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// Could not reach the peer.
    #[error("connecting to {peer}: {message}")]
    Connect { peer: String, message: String },
    /// The connection or stream failed mid-request (the client retries once on these).
    #[error("connection lost: {0}")]
    Connection(String),
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// Binding the local endpoint failed.
    #[error("binding the endpoint: {0}")]
    Bind(String),
    /// Key file or ID52 problems.
    #[error("identity: {0}")]
    Identity(String),
    /// A relay or discovery setting that cannot be used (a malformed URL).
    #[error("reach: {0}")]
    Config(String),
}

impl NetError {
    pub fn status(code: ErrorCode, message: impl Into<String>) -> NetError {
        NetError::Status { code, message: message.into() }
    }

    /// The protocol code: the one carried by a status error, `internal` for everything else.
    pub fn code(&self) -> ErrorCode {
        match self {
            NetError::Status { code, .. } => *code,
            _ => ErrorCode::Internal,
        }
    }
}

/// The envelope of every request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestHeader {
    pub protocol: String,
    pub body: serde_json::Value,
}

/// `stream.get` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetRequest {
    pub stream: String,
}

/// `stream.read_range` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadRangeRequest {
    pub stream: String,
    pub track: String,
    /// Which of the track's files (see [`TrackEntry::sizes`]); absent is 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub file: u32,
    pub start: u64,
    pub len: u64,
    /// Send order among this connection's answers when the link is short: higher first
    /// (quinn's stream priority; absent is 0). A player asks audio before video, so a link
    /// that cannot carry every track keeps the sound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
}

/// `stream.read_range` success body; `len` raw bytes follow the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadRangeOk {
    pub len: u64,
}

/// A typed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Get(GetRequest),
    ReadRange(ReadRangeRequest),
}

impl Request {
    pub fn protocol(&self) -> &'static str {
        match self {
            Request::Get(_) => STREAM_GET,
            Request::ReadRange(_) => STREAM_READ_RANGE,
        }
    }

    pub fn to_header(&self) -> RequestHeader {
        let body = match self {
            Request::Get(b) => serde_json::to_value(b),
            Request::ReadRange(b) => serde_json::to_value(b),
        };
        RequestHeader { protocol: self.protocol().to_string(), body: body.unwrap_or_default() }
    }

    pub fn from_header(header: RequestHeader) -> Result<Request, NetError> {
        let bad = |e: serde_json::Error| NetError::status(ErrorCode::BadRequest, e.to_string());
        match header.protocol.as_str() {
            STREAM_GET => Ok(Request::Get(serde_json::from_value(header.body).map_err(bad)?)),
            STREAM_READ_RANGE => Ok(Request::ReadRange(serde_json::from_value(header.body).map_err(bad)?)),
            other => Err(NetError::status(ErrorCode::UnknownProtocol, format!("unknown protocol {other:?}"))),
        }
    }

    /// The framed request: length prefix and JSON header.
    pub fn encode(&self) -> Result<Bytes, NetError> {
        encode_frame(&self.to_header())
    }

    /// Parses a header's JSON (without its length prefix).
    pub fn decode(json: &[u8]) -> Result<Request, NetError> {
        let header: RequestHeader = serde_json::from_slice(json)
            .map_err(|e| NetError::status(ErrorCode::BadRequest, format!("malformed header: {e}")))?;
        Request::from_header(header)
    }
}

/// The envelope of every response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ResponseHeader {
    Ok { body: serde_json::Value },
    Error { code: ErrorCode, message: String },
}

impl ResponseHeader {
    pub fn ok<T: Serialize>(body: &T) -> Result<ResponseHeader, NetError> {
        let body =
            serde_json::to_value(body).map_err(|e| NetError::status(ErrorCode::Internal, e.to_string()))?;
        Ok(ResponseHeader::Ok { body })
    }

    pub fn error(err: &NetError) -> ResponseHeader {
        let message = match err {
            NetError::Status { message, .. } => message.clone(),
            other => other.to_string(),
        };
        ResponseHeader::Error { code: err.code(), message }
    }

    /// The typed body of an ok response, or the carried error.
    pub fn into_result<T: serde::de::DeserializeOwned>(self) -> Result<T, NetError> {
        match self {
            ResponseHeader::Ok { body } => serde_json::from_value(body)
                .map_err(|e| NetError::Protocol(format!("unexpected response body: {e}"))),
            ResponseHeader::Error { code, message } => Err(NetError::Status { code, message }),
        }
    }
}

/// A stream (meeting) as a server describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamInfo {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    pub tracks: Vec<TrackEntry>,
    pub read_window: ReadWindow,
}

impl StreamInfo {
    pub fn track(&self, name: &str) -> Option<&TrackEntry> {
        self.tracks.iter().find(|t| t.name == name)
    }
}

/// One track of a stream: what it is, how big, where it sits on the timeline. Kind, role and
/// gap policy are the manifest's own types: a kind or gap policy a client does not know makes
/// the description malformed (an error naming it), never a guess; a role is free text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackEntry {
    pub name: String,
    pub kind: TrackKind,
    #[serde(default)]
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participant: Option<String>,
    /// Size of each of the track's files (byte streams), numbered from 0: a track is in one
    /// file unless its segments name several (a camera that stopped and started again).
    pub sizes: Vec<u64>,
    pub segments: Vec<SegmentInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap_policy: Option<GapPolicy>,
}

impl TrackEntry {
    /// What a provider tells clients of a manifest's track whose files (numbered as
    /// [`ManifestTrack::files`] lists them) have these sizes.
    pub fn from_manifest(track: &ManifestTrack, sizes: Vec<u64>) -> TrackEntry {
        TrackEntry {
            name: track.name.clone(),
            kind: track.kind,
            role: track.role.clone(),
            participant: track.participant.clone(),
            sizes,
            segments: track
                .segments
                .iter()
                .map(|s| SegmentInfo {
                    file: track.file_number(s),
                    start_ms: s.start_ms,
                    media_start_ms: s.media_start_ms,
                    end_ms: s.end_ms,
                })
                .collect(),
            gap_policy: track.gap_policy,
        }
    }

    /// The size of file `file` of the track; `None` when it has no such file.
    pub fn size(&self, file: u32) -> Option<u64> {
        self.sizes.get(usize::try_from(file).ok()?).copied()
    }
}

/// Where a stretch of the track lands on the meeting timeline, and which file holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentInfo {
    /// Which of the track's files holds this stretch (see [`TrackEntry::sizes`]); absent is 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub file: u32,
    pub start_ms: u64,
    #[serde(default)]
    pub media_start_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_ms: Option<u64>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The sizes of reads a server accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadWindow {
    pub min: u64,
    pub max: u64,
}

impl Default for ReadWindow {
    fn default() -> Self {
        ReadWindow { min: DEFAULT_MIN_READ, max: DEFAULT_MAX_READ }
    }
}

impl ReadWindow {
    /// The window a client uses for a server's advertised one: `max` capped at
    /// [`CLIENT_MAX_READ`]; an error for a window no sane server advertises.
    pub fn for_client(self) -> Result<ReadWindow, NetError> {
        if self.min == 0 || self.min > self.max || self.max < MIN_WINDOW_MAX || self.min > MAX_WINDOW_MIN {
            return Err(NetError::Protocol(format!(
                "the server's read window {}..={} bytes is unusable (a client needs 1 <= min <= {} \
                 and max >= {} and min <= max)",
                self.min, self.max, MAX_WINDOW_MIN, MIN_WINDOW_MAX
            )));
        }
        Ok(ReadWindow { min: self.min, max: self.max.min(CLIENT_MAX_READ) })
    }

    /// Checks a read of a track of `size` bytes against the window and the track's end.
    pub fn check(&self, start: u64, len: u64, size: u64) -> Result<(), NetError> {
        if len == 0 {
            return Err(NetError::status(ErrorCode::BadLength, "zero-length read"));
        }
        if len > self.max {
            return Err(NetError::status(
                ErrorCode::BadLength,
                format!("read of {len} bytes exceeds the maximum of {}", self.max),
            ));
        }
        let end = match start.checked_add(len) {
            Some(end) if end <= size => end,
            _ => {
                return Err(NetError::status(
                    ErrorCode::OutOfRange,
                    format!("range {start}+{len} lies past the end of the track ({size} bytes)"),
                ))
            }
        };
        if len < self.min && end != size {
            return Err(NetError::status(
                ErrorCode::BadLength,
                format!(
                    "read of {len} bytes is below the minimum of {} and does not end the track",
                    self.min
                ),
            ));
        }
        Ok(())
    }
}

/// Length prefix plus JSON of `value`.
pub fn encode_frame<T: Serialize>(value: &T) -> Result<Bytes, NetError> {
    let json = serde_json::to_vec(value).map_err(|e| NetError::status(ErrorCode::Internal, e.to_string()))?;
    let len = u32::try_from(json.len())
        .map_err(|_| NetError::status(ErrorCode::Internal, "header longer than 4 GiB"))?;
    let mut out = BytesMut::with_capacity(4 + json.len());
    out.put_u32(len);
    out.put_slice(&json);
    Ok(out.freeze())
}

/// Why a frame could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The announced length exceeds the limit; nothing past the prefix was read.
    TooLarge { len: u32, limit: u32 },
    /// The stream ended or failed before the frame was complete.
    Io(String),
}

/// Reads one length-prefixed frame, refusing lengths above `limit` before allocating.
pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R, limit: u32) -> Result<Vec<u8>, FrameError> {
    let mut prefix = [0u8; 4];
    reader.read_exact(&mut prefix).await.map_err(|e| FrameError::Io(e.to_string()))?;
    let len = u32::from_be_bytes(prefix);
    if len > limit {
        return Err(FrameError::TooLarge { len, limit });
    }
    let mut buf = vec![0u8; len as usize];
    reader.read_exact(&mut buf).await.map_err(|e| FrameError::Io(e.to_string()))?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_name() -> impl Strategy<Value = String> {
        "[A-Za-z0-9_.\\-/ é\"\\\\]{0,40}"
    }

    fn arb_request() -> impl Strategy<Value = Request> {
        prop_oneof![
            arb_name().prop_map(|stream| Request::Get(GetRequest { stream })),
            (arb_name(), arb_name(), any::<u32>(), any::<u64>(), any::<u64>(), any::<Option<i32>>())
                .prop_map(|(stream, track, file, start, len, priority)| {
                    Request::ReadRange(ReadRangeRequest { stream, track, file, start, len, priority })
                }),
        ]
    }

    proptest! {
        #[test]
        fn request_round_trips(req in arb_request()) {
            let framed = req.encode().expect("encode");
            let len = u32::from_be_bytes(framed[..4].try_into().expect("prefix")) as usize;
            prop_assert_eq!(len, framed.len() - 4);
            prop_assert_eq!(Request::decode(&framed[4..]).expect("decode"), req);
        }

        #[test]
        fn error_response_round_trips(msg in ".{0,60}", code in 0usize..10) {
            let codes = [ErrorCode::UnknownStream, ErrorCode::UnknownTrack, ErrorCode::OutOfRange,
                ErrorCode::BadLength, ErrorCode::BadRequest, ErrorCode::HeaderTooLarge,
                ErrorCode::UnknownProtocol, ErrorCode::Unauthorized, ErrorCode::Busy, ErrorCode::Internal];
            let err = NetError::status(codes[code], msg);
            let framed = encode_frame(&ResponseHeader::error(&err)).expect("encode");
            let back: ResponseHeader = serde_json::from_slice(&framed[4..]).expect("json");
            prop_assert_eq!(back.into_result::<ReadRangeOk>(), Err(err));
        }

        #[test]
        fn window_accepts_exactly_the_allowed_reads(start in 0u64..10_000, len in 0u64..10_000, size in 0u64..10_000) {
            let w = ReadWindow { min: 100, max: 1000 };
            let ok = len > 0 && len <= 1000 && start + len <= size && (len >= 100 || start + len == size);
            prop_assert_eq!(w.check(start, len, size).is_ok(), ok);
        }
    }

    #[test]
    fn kinds_and_gap_policies_are_typed_and_roles_free() {
        let track = |kind: &str, role: &str, gap: &str| {
            format!(
                r#"{{"name":"t","kind":"{kind}","role":"{role}","sizes":[1],"segments":[],"gap_policy":"{gap}"}}"#
            )
        };
        let known: TrackEntry = serde_json::from_str(&track("video", "screen", "freeze")).expect("known");
        assert_eq!(
            (known.kind, known.role, known.gap_policy),
            (TrackKind::Video, Role::Screen, Some(GapPolicy::Freeze))
        );
        let free: TrackEntry =
            serde_json::from_str(&track("audio", "interpreter", "silence")).expect("free role");
        assert_eq!(free.role, Role::Other("interpreter".into()));
        assert_eq!(serde_json::to_value(&free).expect("json")["role"], "interpreter");
        let gap =
            serde_json::from_str::<TrackEntry>(&track("video", "camera", "blur")).expect_err("unknown gap");
        assert!(gap.to_string().contains("blur"), "{gap}");
        let kind = serde_json::from_str::<TrackEntry>(&track("hologram", "camera", "hide"))
            .expect_err("unknown kind");
        assert!(kind.to_string().contains("hologram"), "{kind}");
    }

    #[test]
    fn wire_shapes_are_as_documented() {
        let req = Request::ReadRange(ReadRangeRequest {
            stream: "m".into(),
            track: "t".into(),
            file: 0,
            start: 1,
            len: 2,
            priority: None,
        });
        let framed = req.encode().expect("encode");
        let json: serde_json::Value = serde_json::from_slice(&framed[4..]).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"protocol":"stream.read_range","body":{"stream":"m","track":"t","start":1,"len":2}})
        );
        let urgent = Request::ReadRange(ReadRangeRequest {
            stream: "m".into(),
            track: "t".into(),
            file: 1,
            start: 1,
            len: 2,
            priority: Some(2),
        });
        let json: serde_json::Value =
            serde_json::from_slice(&urgent.encode().expect("encode")[4..]).expect("json");
        assert_eq!(json["body"]["priority"], 2);
        assert_eq!(json["body"]["file"], 1);
        // A track in two files: a size per file, each segment naming its file (0 unwritten).
        let entry: TrackEntry = serde_json::from_value(serde_json::json!({
            "name": "cam", "kind": "video", "sizes": [10, 20],
            "segments": [{"start_ms": 0, "end_ms": 5}, {"file": 1, "start_ms": 9}]
        }))
        .expect("two files");
        assert_eq!((entry.size(0), entry.size(1), entry.size(2)), (Some(10), Some(20), None));
        assert_eq!((entry.segments[0].file, entry.segments[1].file), (0, 1));
        assert_eq!(
            serde_json::to_value(entry.segments[0]).expect("json"),
            serde_json::json!({"start_ms": 0, "media_start_ms": 0, "end_ms": 5})
        );
        let err = ResponseHeader::error(&NetError::status(ErrorCode::OutOfRange, "x"));
        assert_eq!(
            serde_json::to_value(&err).expect("json"),
            serde_json::json!({"status":"error","code":"out_of_range","message":"x"})
        );
        let ok = ResponseHeader::ok(&ReadRangeOk { len: 5 }).expect("ok");
        assert_eq!(
            serde_json::to_value(&ok).expect("json"),
            serde_json::json!({"status":"ok","body":{"len":5}})
        );
    }

    #[test]
    fn bad_headers_get_typed_errors() {
        assert_eq!(Request::decode(b"{not json").map_err(|e| e.code()), Err(ErrorCode::BadRequest));
        assert_eq!(
            Request::decode(br#"{"protocol":"stream.delete","body":{}}"#).map_err(|e| e.code()),
            Err(ErrorCode::UnknownProtocol)
        );
        assert_eq!(
            Request::decode(br#"{"protocol":"stream.get","body":{"stream":7}}"#).map_err(|e| e.code()),
            Err(ErrorCode::BadRequest)
        );
        assert_eq!(
            Request::decode(
                br#"{"protocol":"stream.read_range","body":{"stream":"a","track":"b","start":-1,"len":1}}"#
            )
            .map_err(|e| e.code()),
            Err(ErrorCode::BadRequest)
        );
    }

    #[tokio::test]
    async fn framing_refuses_oversized_and_truncated_frames() {
        // Exactly at the limit: read.
        let mut ok = Vec::from((4u32).to_be_bytes());
        ok.extend_from_slice(b"abcd");
        assert_eq!(read_frame(&mut &ok[..], 4).await, Ok(b"abcd".to_vec()));
        // One above: refused from the prefix alone (no allocation of the announced size).
        let big = Vec::from((u32::MAX).to_be_bytes());
        assert_eq!(
            read_frame(&mut &big[..], MAX_REQUEST_HEADER).await,
            Err(FrameError::TooLarge { len: u32::MAX, limit: MAX_REQUEST_HEADER })
        );
        let over = Vec::from((MAX_REQUEST_HEADER + 1).to_be_bytes());
        assert!(matches!(
            read_frame(&mut &over[..], MAX_REQUEST_HEADER).await,
            Err(FrameError::TooLarge { .. })
        ));
        // Truncated prefix or body: an I/O error, not a panic.
        assert!(matches!(read_frame(&mut &[0u8, 0][..], 10).await, Err(FrameError::Io(_))));
        let mut short = Vec::from((10u32).to_be_bytes());
        short.extend_from_slice(b"abc");
        assert!(matches!(read_frame(&mut &short[..], 10).await, Err(FrameError::Io(_))));
    }
}
