//! Keyframe indexes: from a [`RangeSource`] to "which bytes show time t".
//!
//! One module per container behind one internal trait, [`ContainerIndex`]; the public face is
//! [`TrackIndex`], which adds the track's name to every error and remembers what opening cost.
//!
//! | module      | containers                         | how it opens with few bytes                   |
//! |-------------|------------------------------------|-----------------------------------------------|
//! | `mp4`       | MP4/ISO-BMFF, fragmented MP4       | box headers until `moov` (anywhere), then `moov` |
//! | `mkv`       | Matroska, WebM                     | EBML header, SeekHead, Tracks, Cues           |
//! | `ogg`       | Ogg Vorbis, Ogg Opus               | headers, last page; bisection on granules     |
//! | `mp3`       | MPEG audio layer III               | ID3v2 skip, Xing/Info/VBRI, frame headers     |
//! | `subtitles` | WebVTT, SRT                        | the whole (small) file                        |
//!
//! Containers are told apart by their bytes ([`detect`]), never by file names.
//!
//! Every parser treats its input as hostile: sizes are checked against the source length and
//! against [`MAX_METADATA_READ`] before anything is allocated, loops must make progress, and
//! every failure is a [`ParseError`] naming the box or element and the byte offset.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use crate::source::{CountingSource, ExactReads, RangeSource, ReadCost, SourceError};
use crate::time::MediaTime;

pub mod mkv;
pub mod mp3;
pub mod mp4;
pub mod ogg;
pub mod subtitles;

/// The largest single metadata structure (a `moov`, a Cues element, a subtitle file) a parser
/// will read into memory. A 10-hour 60 fps MP4 has a `moov` of about 30 MiB.
pub const MAX_METADATA_READ: u64 = 256 * 1024 * 1024;

/// How many bytes of the file's start are read at once to detect the container; the parsers
/// reuse them, so detection costs no extra round trip.
pub const HEAD_READ: u64 = 4096;

/// The container formats tandem indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Container {
    Mp4,
    FragmentedMp4,
    Matroska,
    #[serde(rename = "webm")]
    WebM,
    Ogg,
    Mp3,
    #[serde(rename = "webvtt")]
    WebVtt,
    Srt,
}

/// Codecs the indexes recognise; anything else is carried by its container's own identifier.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Codec {
    H264,
    H265,
    Vp8,
    Vp9,
    Av1,
    Aac,
    Mp3,
    Opus,
    Vorbis,
    Flac,
    #[serde(rename = "webvtt")]
    WebVtt,
    Srt,
    Other(String),
}

impl Codec {
    pub fn is_video(&self) -> bool {
        matches!(self, Codec::H264 | Codec::H265 | Codec::Vp8 | Codec::Vp9 | Codec::Av1)
    }
    pub fn is_audio(&self) -> bool {
        matches!(self, Codec::Aac | Codec::Mp3 | Codec::Opus | Codec::Vorbis | Codec::Flac)
    }
    pub fn is_text(&self) -> bool {
        matches!(self, Codec::WebVtt | Codec::Srt)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VideoInfo {
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AudioInfo {
    pub sample_rate: u32,
    pub channels: u32,
}

/// What a decoder needs to know about a track, and how the container counts time.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackInfo {
    pub container: Container,
    pub codec: Codec,
    /// The codec configuration as GStreamer caps carry it (`codec_data` / `streamheader`):
    /// the `avcC`/`hvcC` payload for H.264/H.265, AudioSpecificConfig for AAC, `OpusHead` for
    /// Opus, the three Vorbis headers Xiph-laced (as Matroska's CodecPrivate stores them) for
    /// Vorbis. `None` when the codec carries its configuration in-band (VP8, MP3).
    pub codec_config: Option<Bytes>,
    /// The container's native ticks per second for this track (MP4 media timescale, 10^9 /
    /// TimestampScale for Matroska, the sample rate for Ogg and MP3, 1000 for subtitles).
    pub timescale: u64,
    /// Media duration when the container says it (or it is cheap to learn).
    pub duration: Option<MediaTime>,
    pub video: Option<VideoInfo>,
    pub audio: Option<AudioInfo>,
}

/// Where sample iteration resumes: opaque, only the index that made it understands it (pass
/// it back to [`TrackIndex::samples`]). Inside, table-based containers (MP4) count samples in
/// decode order; the others resume at a byte offset (a Matroska cluster, an Ogg page, an MP3
/// frame) and a count within it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub struct ReadPos {
    pub(crate) offset: u64,
    /// Sample number in decode order (MP4), or within the unit at `offset`.
    pub(crate) sample: u64,
}

/// A point decoding can start from, and the bytes that hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Keyframe {
    /// Presentation time in media time.
    pub pts: MediaTime,
    /// First byte needed to decode from here (the keyframe sample, or the Matroska cluster,
    /// Ogg page or MP3 frame holding it).
    pub offset: u64,
    /// Bytes from `offset` that hold the keyframe itself.
    pub size: u64,
    /// Where [`TrackIndex::samples`] continues from this keyframe.
    pub pos: ReadPos,
}

/// One coded frame (video), packet (audio) or cue (captions), in decode order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sample {
    pub pts: MediaTime,
    pub dts: MediaTime,
    /// Zero when the container does not say.
    pub duration: MediaTime,
    /// Byte range holding the sample's data. For Ogg packets that span pages the range covers
    /// the pages; [`TrackIndex::sample_data`] returns the packet itself.
    pub offset: u64,
    pub size: u64,
    pub keyframe: bool,
    /// Bytes before this sample were damaged or missing, and the index skipped them (a
    /// Matroska resync, a gap in Ogg page sequence numbers, an MP3 resync): frames that
    /// reference earlier ones may have lost their references. Time passing between samples is
    /// no damage: encoders pause and recorders drop frames while references stay intact.
    #[serde(default)]
    pub follows_damage: bool,
}

impl Sample {
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.size)
    }
}

/// Samples in decode order and where the next batch starts (`None` at the end of the track).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SampleBatch {
    pub samples: Vec<Sample>,
    pub next: Option<ReadPos>,
}

/// Why an index could not be built or used. Every variant names the box or element and the
/// byte offset where parsing stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("not a container tandem can index (first bytes: {head})")]
    UnknownFormat { head: String },
    #[error("{element} at byte {offset}: truncated, needs {needed} bytes but the source ends at byte {end}")]
    Truncated { element: &'static str, offset: u64, needed: u64, end: u64 },
    #[error("{element} at byte {offset}: {reason}")]
    Malformed { element: &'static str, offset: u64, reason: String },
    #[error("{element} at byte {offset}: {size} bytes exceed the limit of {limit}")]
    TooLarge { element: &'static str, offset: u64, size: u64, limit: u64 },
    #[error("{element} not found (searched to byte {searched_to}): {hint}")]
    Missing { element: &'static str, searched_to: u64, hint: &'static str },
    #[error("{element} at byte {offset}: unsupported {what}")]
    Unsupported { element: &'static str, offset: u64, what: String },
    #[error("the track has no samples")]
    NoSamples,
    #[error(transparent)]
    Source(#[from] SourceError),
}

impl ParseError {
    pub(crate) fn malformed(element: &'static str, offset: u64, reason: impl Into<String>) -> Self {
        ParseError::Malformed { element, offset, reason: reason.into() }
    }
}

/// A [`ParseError`] with the name of the track it happened on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("track {track}: {source}")]
pub struct IndexError {
    pub track: Arc<str>,
    #[source]
    pub source: ParseError,
}

/// The contract each container module fulfils. Implementations hold only what opening read
/// (tables, cue points); anything else they need they read from the source they are given.
pub(crate) trait ContainerIndex: Send + Sync + fmt::Debug {
    fn info(&self) -> &TrackInfo;

    /// Every point decoding can start from, in presentation order. Containers without a table
    /// (Matroska without Cues, Ogg, MP3 without a TOC) walk the file with range reads.
    fn keyframes(&self, src: &dyn RangeSource) -> Result<Vec<Keyframe>, ParseError>;

    /// The keyframe at or before media time `t`; the first keyframe when `t` precedes it.
    fn seek(&self, src: &dyn RangeSource, t: MediaTime) -> Result<Keyframe, ParseError>;

    /// Up to `max` samples in decode order starting at `from`.
    fn samples(&self, src: &dyn RangeSource, from: ReadPos, max: usize) -> Result<SampleBatch, ParseError>;

    /// Samples the encoder put before the first real one (MP3's LAME delay), for decoders
    /// that do not learn it from the stream.
    fn encoder_delay(&self) -> Option<u64> {
        None
    }

    /// The bytes of one sample as its decoder wants them.
    fn sample_data(&self, src: &dyn RangeSource, sample: &Sample) -> Result<Bytes, ParseError> {
        Ok(src.read_range(sample.offset, sample.size)?)
    }
}

/// The keyframe index of one track, opened with as few reads as its container allows.
#[derive(Debug)]
pub struct TrackIndex {
    track: Arc<str>,
    inner: Box<dyn ContainerIndex>,
    open_cost: ReadCost,
}

impl TrackIndex {
    /// Detects the container from its bytes and builds the index, counting what it reads.
    pub fn open(track: &str, src: &dyn RangeSource) -> Result<TrackIndex, IndexError> {
        let track: Arc<str> = Arc::from(track);
        let counted = CountingSource::new(ExactReads(src));
        let inner =
            open_with(&counted, None).map_err(|source| IndexError { track: track.clone(), source })?;
        Ok(TrackIndex { track, inner, open_cost: counted.cost() })
    }

    /// Builds the index with a given container's parser, whatever the bytes say (fuzzers,
    /// and apps that already know the format).
    pub fn open_as(
        track: &str,
        src: &dyn RangeSource,
        container: Container,
    ) -> Result<TrackIndex, IndexError> {
        let track: Arc<str> = Arc::from(track);
        let counted = CountingSource::new(ExactReads(src));
        let inner = open_with(&counted, Some(container))
            .map_err(|source| IndexError { track: track.clone(), source })?;
        Ok(TrackIndex { track, inner, open_cost: counted.cost() })
    }

    pub fn track(&self) -> &str {
        &self.track
    }

    pub fn info(&self) -> &TrackInfo {
        self.inner.info()
    }

    /// Samples of encoder delay to trim at the start of decoded audio (MP3's LAME tag).
    pub fn encoder_delay(&self) -> Option<u64> {
        self.inner.encoder_delay()
    }

    /// Bytes and reads used to open the index.
    pub fn open_cost(&self) -> ReadCost {
        self.open_cost
    }

    // Every entry point reads through `ExactReads`: the parsers may then rely on a read
    // returning the bytes they asked for, whatever the embedder's source does.

    pub fn keyframes(&self, src: &dyn RangeSource) -> Result<Vec<Keyframe>, IndexError> {
        self.inner.keyframes(&ExactReads(src)).map_err(|e| self.err(e))
    }

    pub fn seek(&self, src: &dyn RangeSource, t: MediaTime) -> Result<Keyframe, IndexError> {
        self.inner.seek(&ExactReads(src), t).map_err(|e| self.err(e))
    }

    pub fn samples(
        &self,
        src: &dyn RangeSource,
        from: ReadPos,
        max: usize,
    ) -> Result<SampleBatch, IndexError> {
        self.inner.samples(&ExactReads(src), from, max).map_err(|e| self.err(e))
    }

    pub fn sample_data(&self, src: &dyn RangeSource, sample: &Sample) -> Result<Bytes, IndexError> {
        self.inner.sample_data(&ExactReads(src), sample).map_err(|e| self.err(e))
    }

    /// The keyframe at or before `t` and the byte range, from that keyframe to the end of the
    /// sample presented at `t`, that must be fetched to show `t`.
    pub fn range_to_show(
        &self,
        src: &dyn RangeSource,
        t: MediaTime,
    ) -> Result<(Keyframe, std::ops::Range<u64>), IndexError> {
        let keyframe = self.seek(src, t)?;
        let mut start = keyframe.offset;
        let mut end = keyframe.offset.saturating_add(keyframe.size);
        let mut pos = Some(keyframe.pos);
        // Walk decode order until every sample presented at or before t is covered; B-frames
        // mean a later-decoded sample may be presented earlier, so stop only once decode
        // time has passed t.
        'walk: while let Some(at) = pos {
            let batch = self.samples(src, at, 256)?;
            for sample in &batch.samples {
                if sample.dts > t && sample.pts > t {
                    break 'walk;
                }
                if sample.pts <= t || sample.dts <= t {
                    start = start.min(sample.offset);
                    end = end.max(sample.end());
                }
            }
            if batch.samples.is_empty() {
                break;
            }
            pos = batch.next;
        }
        Ok((keyframe, start..end))
    }

    fn err(&self, source: ParseError) -> IndexError {
        IndexError { track: self.track.clone(), source }
    }
}

/// Tells the container from the first bytes of a file.
pub fn detect(head: &[u8]) -> Option<Container> {
    if head.len() >= 8 && mp4::is_mp4(head) {
        return Some(Container::Mp4);
    }
    if head.starts_with(&[0x1A, 0x45, 0xDF, 0xA3]) {
        return Some(mkv::doc_type(head));
    }
    if head.starts_with(b"OggS") {
        return Some(Container::Ogg);
    }
    if subtitles::is_webvtt(head) {
        return Some(Container::WebVtt);
    }
    if mp3::is_mp3(head) {
        return Some(Container::Mp3);
    }
    if subtitles::is_srt(head) {
        return Some(Container::Srt);
    }
    None
}

fn open_with(
    src: &dyn RangeSource,
    container: Option<Container>,
) -> Result<Box<dyn ContainerIndex>, ParseError> {
    let head_len = src.len().min(HEAD_READ);
    let head = src.read_range(0, head_len)?;
    let reader = Reader::new(src, head.clone());
    match container.or_else(|| detect(&head)) {
        Some(Container::Mp4 | Container::FragmentedMp4) => Ok(Box::new(mp4::Mp4Index::open(&reader)?)),
        Some(Container::Matroska | Container::WebM) => Ok(Box::new(mkv::MkvIndex::open(&reader)?)),
        Some(Container::Ogg) => Ok(Box::new(ogg::OggIndex::open(&reader)?)),
        Some(Container::Mp3) => Ok(Box::new(mp3::Mp3Index::open(&reader)?)),
        Some(Container::WebVtt | Container::Srt) => Ok(Box::new(subtitles::SubtitleIndex::open(&reader)?)),
        None => Err(ParseError::UnknownFormat {
            head: head.iter().take(16).map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" "),
        }),
    }
}

/// Reads ranges for a parser: serves what lies in the already-read head from memory, checks
/// every range against the source length and [`MAX_METADATA_READ`], and turns failures into
/// [`ParseError`]s that name the element being read.
#[derive(Clone)]
pub(crate) struct Reader<'a> {
    src: &'a dyn RangeSource,
    head: Bytes,
}

impl fmt::Debug for Reader<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reader").field("len", &self.src.len()).field("head", &self.head.len()).finish()
    }
}

impl<'a> Reader<'a> {
    pub(crate) fn new(src: &'a dyn RangeSource, head: Bytes) -> Reader<'a> {
        Reader { src, head }
    }

    pub(crate) fn src(&self) -> &'a dyn RangeSource {
        self.src
    }

    pub(crate) fn len(&self) -> u64 {
        self.src.len()
    }

    /// The bytes read for detection (a prefix of the file).
    pub(crate) fn head(&self) -> &Bytes {
        &self.head
    }

    /// Exactly `len` bytes at `offset`, or a typed error naming `element`.
    pub(crate) fn read(&self, offset: u64, len: u64, element: &'static str) -> Result<Bytes, ParseError> {
        check_read(self.src.len(), offset, len, element)?;
        if offset + len <= self.head.len() as u64 {
            return Ok(self.head.slice(offset as usize..(offset + len) as usize));
        }
        Ok(self.src.read_range(offset, len)?)
    }

    /// Up to `len` bytes at `offset`, fewer at the end of the source.
    pub(crate) fn read_up_to(
        &self,
        offset: u64,
        len: u64,
        element: &'static str,
    ) -> Result<Bytes, ParseError> {
        let available = self.src.len().saturating_sub(offset);
        self.read(offset, len.min(available), element)
    }
}

/// Checks a parser's read of `len` bytes at `offset` from a source of `end` bytes: within the
/// source and within [`MAX_METADATA_READ`]. Returns where the read stops.
fn check_read(end: u64, offset: u64, len: u64, element: &'static str) -> Result<u64, ParseError> {
    if len > MAX_METADATA_READ {
        return Err(ParseError::TooLarge { element, offset, size: len, limit: MAX_METADATA_READ });
    }
    match offset.checked_add(len) {
        Some(stop) if stop <= end => Ok(stop),
        _ => Err(ParseError::Truncated { element, offset, needed: len, end }),
    }
}

/// Reads a source forward in windows, so walking many small headers (Matroska blocks without
/// Cues, Ogg pages, MP3 frames) costs one read per window instead of one per header, and large
/// payloads that are skipped are never fetched.
pub(crate) struct WindowReader<'a> {
    src: &'a dyn RangeSource,
    window: u64,
    buf: Bytes,
    buf_start: u64,
}

impl fmt::Debug for WindowReader<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WindowReader")
            .field("len", &self.src.len())
            .field("window", &self.window)
            .field("buf_start", &self.buf_start)
            .field("buf_len", &self.buf.len())
            .finish()
    }
}

impl<'a> WindowReader<'a> {
    pub(crate) fn new(src: &'a dyn RangeSource, window: u64) -> WindowReader<'a> {
        WindowReader { src, window: window.max(1), buf: Bytes::new(), buf_start: 0 }
    }

    /// A window reader whose first window is `head`, bytes already read from the start.
    pub(crate) fn with_buffer(src: &'a dyn RangeSource, window: u64, head: Bytes) -> WindowReader<'a> {
        WindowReader { src, window: window.max(1), buf: head, buf_start: 0 }
    }

    pub(crate) fn len(&self) -> u64 {
        self.src.len()
    }

    /// Exactly `len` bytes at `offset`, served from the current window when it holds them.
    pub(crate) fn read(&mut self, offset: u64, len: u64, element: &'static str) -> Result<Bytes, ParseError> {
        let end = self.src.len();
        let stop = check_read(end, offset, len, element)?;
        let buf_end = self.buf_start + self.buf.len() as u64;
        if offset >= self.buf_start && stop <= buf_end {
            let from = (offset - self.buf_start) as usize;
            return Ok(self.buf.slice(from..from + len as usize));
        }
        let fetch = len.max(self.window).min(end - offset);
        self.buf = self.src.read_range(offset, fetch)?;
        self.buf_start = offset;
        Ok(self.buf.slice(0..len as usize))
    }

    /// Up to `len` bytes at `offset`, fewer at the end of the source.
    pub(crate) fn read_up_to(
        &mut self,
        offset: u64,
        len: u64,
        element: &'static str,
    ) -> Result<Bytes, ParseError> {
        let available = self.src.len().saturating_sub(offset);
        self.read(offset, len.min(available), element)
    }
}
