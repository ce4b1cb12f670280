//! Matroska and WebM keyframe index.
//!
//! # Why hand-written
//! Crates such as `matroska-demuxer` and `webm-iterable` read a file sequentially through
//! `Read + Seek`: they neither expose the byte offsets of clusters and blocks nor let the caller
//! decide which ranges are fetched. tandem reads tracks from a peer across the network, so it
//! needs exactly those offsets and the fewest, smallest range reads: the EBML primitives in
//! `ebml` are parsed from byte slices, and this module decides what to read.
//!
//! # Opening
//! The 4 KiB head read for detection normally holds the EBML header, the Segment header, the
//! SeekHead, Info and Tracks. The SeekHead (followed into further SeekHeads, each visited once)
//! locates Info, Tracks and Cues when they are not in the head; Cues are read with one
//! speculative read of `CUES_PROBE` bytes, plus one more when they are larger. Without Cues,
//! one more read of the file's last 64 KiB finds the last cluster: its Timestamp bounds
//! bisection, and the end of the track's last block in it is the duration when Info has none
//! (live writers leave it out). When no cluster starts in that window (clusters holding a
//! whole group of pictures), a second read extends the tail to 1 MiB; a tail that cannot be
//! parsed leaves the duration unknown. Other clusters are
//! never read at open. The chosen track is the first video track, else the first audio track,
//! else the first track.
//!
//! # Time to bytes
//! Block timestamps are cluster Timestamp + the block's signed 16-bit offset, in TimestampScale
//! nanosecond ticks (`TrackInfo::timescale` is 10^9 / TimestampScale, or 10^9 when that is not
//! integral; [`MediaTime`] is exact either way). For audio tracks the CodecDelay, rounded to
//! ticks, is subtracted, as ffmpeg does (Opus pre-skip shows as a first packet before zero);
//! video times are never shifted.
//! - With Cues, `keyframes` is one keyframe per CuePoint of the track and
//!   `seek` is a binary search over them, with no reads. A keyframe's `offset` is
//!   its cluster's offset (CueClusterPosition + the Segment data start) and its `size` runs to
//!   the next cued cluster (or the Segment end), which covers the whole cluster without reading
//!   its header. Cues are trusted to list every keyframe (ffmpeg, mkvmerge, libwebm and
//!   GStreamer all cue every video keyframe).
//! - Without Cues (live writers, MediaRecorder), `keyframes` walks cluster and block headers
//!   forward with a `WindowReader`, skipping payloads. Video lists every keyframe block; audio
//!   and text (every packet is a sync point) list the first keyframe of each cluster. `size`
//!   is the exact cluster size (for unknown-size clusters, up to the next top-level element).
//!   `seek` bisects over byte offsets instead (module `scan`): each step reads a 64 KiB window
//!   at the midpoint, recognises the first Cluster in it by its ID, a plausible size and a
//!   Timestamp child, and narrows on that Timestamp; then it walks forward from the latest
//!   cluster at or before `t`, and steps back exponentially when that group of pictures holds
//!   no keyframe. The answer equals the forward walk's; a file that bisection cannot make
//!   sense of (timestamps going backwards, megabytes without a Cluster) is walked forward.
//!
//! # Resume positions
//! [`ReadPos::offset`] is always a cluster's offset. [`ReadPos::sample`] is 0 to start at the
//! cluster's beginning, otherwise `(r + 1) * 256 + lace`, where `r` is the byte offset of a
//! SimpleBlock or BlockGroup from the cluster's data start and `lace` the index of the frame
//! within that (laced) block to start from.
//!
//! # Damaged files
//! Files cut short (a recorder killed mid-write) index up to the last complete block. Garbage
//! between clusters is skipped by scanning up to `RESYNC_LIMIT` bytes for the Cluster ID.
//! Tracks with ContentEncodings (compression, encryption) are refused as unsupported.

mod ebml;
mod scan;

use bytes::Bytes;

use self::ebml::{id, Header, HeaderError};
use super::{
    Codec, Container, ContainerIndex, Keyframe, ParseError, ReadPos, Reader, Sample, SampleBatch, TrackInfo,
    WindowReader,
};
use crate::index::{AudioInfo, VideoInfo};
use crate::source::RangeSource;
use crate::time::MediaTime;

/// Bytes read at once at a Cues (or SeekHead) position outside the head: most Cues of short
/// files fit, so they cost one read; larger ones cost a second read for the rest.
const CUES_PROBE: u64 = 512;
/// Window for walking clusters: big enough to hold many small blocks (audio, P-frames) per
/// read, small enough that skipping a large keyframe does not fetch much of it.
const WALK_WINDOW: u64 = 32 * 1024;
/// How far past damaged bytes to look for the next Cluster ID before giving up.
const RESYNC_LIMIT: u64 = 1024 * 1024;
/// Lace headers larger than this are refused (256 Xiph-laced frames of 16 KiB need 16 KiB).
const MAX_LACE_HEADER: u64 = 64 * 1024;
/// SeekHeads followed at open, against loops and chains.
const MAX_SEEK_HEADS: usize = 8;
/// Top-level elements looked at before the first Cluster at open.
const MAX_TOP_LEVEL: usize = 512;

/// One CuePoint of the chosen track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CuePoint {
    /// CueTime, in TimestampScale ticks.
    ticks: u64,
    /// Absolute offset of the Cluster.
    cluster: u64,
    /// CueRelativePosition: the block's offset from the cluster's data start.
    relative: Option<u64>,
}

/// The chosen track's entry in Tracks.
#[derive(Debug, Clone, PartialEq)]
struct TrackEntry {
    number: u64,
    kind: u64,
    codec_id: String,
    codec_private: Option<Bytes>,
    default_duration: Option<u64>,
    codec_delay: u64,
    encoded: bool,
    video: Option<VideoInfo>,
    audio: Option<AudioInfo>,
}

#[derive(Debug)]
pub(crate) struct MkvIndex {
    info: TrackInfo,
    /// TrackNumber that blocks carry for the chosen track.
    track: u64,
    /// Nanoseconds per tick (TimestampScale).
    scale: i64,
    /// Ticks subtracted from block times (audio CodecDelay, as ffmpeg reports packets).
    delay_ticks: i64,
    /// DefaultDuration in nanoseconds, for samples without BlockDuration.
    default_duration: Option<i64>,
    /// Video lists every keyframe block when walking; other tracks one per cluster.
    is_video: bool,
    /// End of the Segment (the file end for unknown-size Segments), clamped to the file.
    segment_end: u64,
    /// Where walking for clusters starts: the first Cluster if open saw it, else the end of the
    /// last top-level element open looked at.
    walk_start: u64,
    /// Cue points of the chosen track sorted by time; empty when there are none.
    cues: Vec<CuePoint>,
    /// Distinct cued cluster offsets, sorted: a cued keyframe's bytes run to the next one.
    cued_clusters: Vec<u64>,
    /// The first cluster's Timestamp, when open saw it in the head: bisection's lower bound.
    first_cluster_ticks: Option<u64>,
    /// The last cluster's Timestamp, from the tail read at open without Cues: clusters found
    /// by bisection beyond it are taken for payload bytes that look like a Cluster.
    last_cluster_ticks: Option<u64>,
}

/// The first element header at `pos`, read through the open-time reader.
fn header_at(reader: &Reader<'_>, pos: u64, element: &'static str) -> Result<Header, ParseError> {
    let bytes = reader.read_up_to(pos, ebml::MAX_HEADER, element)?;
    ebml::read_header(&bytes, pos).map_err(|e| match e {
        HeaderError::Incomplete => ParseError::Truncated {
            element,
            offset: pos,
            needed: ebml::MAX_HEADER.min(reader.len().saturating_sub(pos).saturating_add(1)),
            end: reader.len(),
        },
        HeaderError::Invalid => ParseError::malformed(element, pos, "invalid element header"),
    })
}

/// The header of the element at `pos` and the bytes read with it (starting at `pos`): served
/// from the head when it lies there, otherwise one read of `probe` bytes.
fn probe_element(
    reader: &Reader<'_>,
    pos: u64,
    probe: u64,
    element: &'static str,
) -> Result<(Header, Bytes), ParseError> {
    let head = reader.head();
    let head_len = head.len() as u64;
    let in_head =
        pos.saturating_add(ebml::MAX_HEADER) <= head_len || (pos < head_len && head_len == reader.len());
    let first = if in_head {
        head.slice(pos as usize..)
    } else {
        reader.read_up_to(pos, probe.max(ebml::MAX_HEADER), element)?
    };
    match ebml::read_header(&first, pos) {
        Ok(h) => Ok((h, first)),
        Err(HeaderError::Incomplete) => {
            Err(ParseError::Truncated { element, offset: pos, needed: ebml::MAX_HEADER, end: reader.len() })
        }
        Err(HeaderError::Invalid) => Err(ParseError::malformed(element, pos, "invalid element header")),
    }
}

/// The data of an element probed with [`probe_element`]; one more read when it is larger than
/// what the probe brought.
fn finish_element(
    reader: &Reader<'_>,
    header: &Header,
    first: &Bytes,
    element: &'static str,
) -> Result<Bytes, ParseError> {
    let Some(size) = header.size else {
        return Err(ParseError::malformed(element, header.offset, "unknown size"));
    };
    let total = header.len.saturating_add(size);
    if total <= first.len() as u64 {
        return Ok(first.slice(header.len as usize..total as usize));
    }
    let have = first.len() as u64;
    // Checks the size against the limit and the file before anything is allocated.
    let rest = reader.read(header.offset.saturating_add(have), total - have, element)?;
    let mut data = Vec::with_capacity(first.len().saturating_sub(header.len as usize) + rest.len());
    data.extend_from_slice(first.get(header.len as usize..).unwrap_or_default());
    data.extend_from_slice(&rest);
    Ok(Bytes::from(data))
}

/// The whole element at `pos`: its header and data.
fn read_element(
    reader: &Reader<'_>,
    pos: u64,
    probe: u64,
    element: &'static str,
) -> Result<(Header, Bytes), ParseError> {
    let (header, first) = probe_element(reader, pos, probe, element)?;
    let data = finish_element(reader, &header, &first, element)?;
    Ok((header, data))
}

fn child_err(element: &'static str) -> impl Fn(ebml::ChildError) -> ParseError {
    move |e| ParseError::malformed(element, e.offset, e.kind.reason())
}

/// The EBML header's DocType, from bytes holding the whole header.
fn parse_doc_type(head: &[u8]) -> Option<String> {
    let header = ebml::read_header(head, 0).ok()?;
    if header.id != id::EBML {
        return None;
    }
    let end = usize::try_from(header.end()?).ok()?;
    parse_doc_type_data(head.get(header.len as usize..end)?, header.len).ok()
}

/// Matroska or WebM, from the EBML header's DocType (called only after the EBML magic matched).
pub(crate) fn doc_type(head: &[u8]) -> Container {
    match parse_doc_type(head).as_deref() {
        Some("webm") => Container::WebM,
        _ => Container::Matroska,
    }
}

fn codec_from_id(codec_id: &str) -> Codec {
    match codec_id {
        "V_VP8" => Codec::Vp8,
        "V_VP9" => Codec::Vp9,
        "V_AV1" => Codec::Av1,
        "V_MPEG4/ISO/AVC" => Codec::H264,
        "V_MPEGH/ISO/HEVC" => Codec::H265,
        "A_OPUS" => Codec::Opus,
        "A_VORBIS" => Codec::Vorbis,
        "A_MPEG/L3" => Codec::Mp3,
        "A_FLAC" => Codec::Flac,
        "S_TEXT/WEBVTT" | "D_WEBVTT/SUBTITLES" | "D_WEBVTT/CAPTIONS" => Codec::WebVtt,
        "S_TEXT/UTF8" => Codec::Srt,
        other if other == "A_AAC" || other.starts_with("A_AAC/") => Codec::Aac,
        other => Codec::Other(other.to_string()),
    }
}

/// Info: (TimestampScale, Duration in ticks).
fn parse_info(data: &[u8], base: u64) -> Result<(u64, Option<f64>), ParseError> {
    let mut scale = 1_000_000;
    let mut duration = None;
    for child in ebml::children(data, base) {
        let (h, body) = child.map_err(child_err("Info"))?;
        match h.id {
            id::TIMESTAMP_SCALE => {
                scale = ebml::read_uint(body).ok_or_else(|| {
                    ParseError::malformed("Info", h.offset, "TimestampScale longer than 8 bytes")
                })?;
            }
            id::DURATION => duration = ebml::read_float(body),
            _ => {}
        }
    }
    if scale == 0 || scale > 1_000_000_000_000 {
        return Err(ParseError::malformed("Info", base, format!("TimestampScale {scale} out of range")));
    }
    Ok((scale, duration))
}

fn uint_child(body: &[u8], h: &Header, element: &'static str) -> Result<u64, ParseError> {
    ebml::read_uint(body)
        .ok_or_else(|| ParseError::malformed(element, h.offset, "integer longer than 8 bytes"))
}

fn parse_track_entry(data: &[u8], base: u64) -> Result<TrackEntry, ParseError> {
    let mut entry = TrackEntry {
        number: 0,
        kind: 0,
        codec_id: String::new(),
        codec_private: None,
        default_duration: None,
        codec_delay: 0,
        encoded: false,
        video: None,
        audio: None,
    };
    for child in ebml::children(data, base) {
        let (h, body) = child.map_err(child_err("TrackEntry"))?;
        match h.id {
            id::TRACK_NUMBER => entry.number = uint_child(body, &h, "TrackEntry")?,
            id::TRACK_TYPE => entry.kind = uint_child(body, &h, "TrackEntry")?,
            id::CODEC_ID => entry.codec_id = ebml::read_string(body),
            id::CODEC_PRIVATE => entry.codec_private = Some(Bytes::copy_from_slice(body)),
            id::DEFAULT_DURATION => entry.default_duration = Some(uint_child(body, &h, "TrackEntry")?),
            id::CODEC_DELAY => entry.codec_delay = uint_child(body, &h, "TrackEntry")?,
            id::CONTENT_ENCODINGS => entry.encoded = true,
            id::VIDEO => {
                let (mut width, mut height) = (0u64, 0u64);
                for v in ebml::children(body, h.data_start()) {
                    let (vh, vb) = v.map_err(child_err("Video"))?;
                    match vh.id {
                        id::PIXEL_WIDTH => width = uint_child(vb, &vh, "Video")?,
                        id::PIXEL_HEIGHT => height = uint_child(vb, &vh, "Video")?,
                        _ => {}
                    }
                }
                entry.video = Some(VideoInfo {
                    width: u32::try_from(width).unwrap_or(u32::MAX),
                    height: u32::try_from(height).unwrap_or(u32::MAX),
                });
            }
            id::AUDIO => {
                let (mut rate, mut channels) = (8000.0f64, 1u64);
                for a in ebml::children(body, h.data_start()) {
                    let (ah, ab) = a.map_err(child_err("Audio"))?;
                    match ah.id {
                        id::SAMPLING_FREQUENCY => rate = ebml::read_float(ab).unwrap_or(rate),
                        id::CHANNELS => channels = uint_child(ab, &ah, "Audio")?,
                        _ => {}
                    }
                }
                let rate = if rate.is_finite() && rate >= 0.0 {
                    rate.round().min(u32::MAX as f64) as u32
                } else {
                    0
                };
                entry.audio = Some(AudioInfo {
                    sample_rate: rate,
                    channels: u32::try_from(channels).unwrap_or(u32::MAX),
                });
            }
            _ => {}
        }
    }
    if entry.number == 0 {
        return Err(ParseError::malformed("TrackEntry", base, "missing or zero TrackNumber"));
    }
    Ok(entry)
}

/// The first video track, else the first audio track, else the first track.
fn choose_track(data: &[u8], base: u64) -> Result<TrackEntry, ParseError> {
    let mut entries = Vec::new();
    for child in ebml::children(data, base) {
        let (h, body) = child.map_err(child_err("Tracks"))?;
        if h.id == id::TRACK_ENTRY {
            entries.push(parse_track_entry(body, h.data_start())?);
        }
    }
    let kind_of = |e: &TrackEntry| match e.kind {
        0 => {
            let codec = codec_from_id(&e.codec_id);
            if codec.is_video() {
                1
            } else if codec.is_audio() {
                2
            } else {
                0
            }
        }
        k => k,
    };
    let position = entries
        .iter()
        .position(|e| kind_of(e) == 1)
        .or_else(|| entries.iter().position(|e| kind_of(e) == 2))
        .unwrap_or(0);
    if position < entries.len() {
        Ok(entries.swap_remove(position))
    } else {
        Err(ParseError::Missing { element: "TrackEntry", searched_to: base, hint: "Tracks lists no track" })
    }
}

/// The cue points of `track`, with cluster positions made absolute and points past the file
/// dropped, sorted by time.
fn parse_cues(
    data: &[u8],
    base: u64,
    track: u64,
    segment_data: u64,
    file_len: u64,
) -> Result<Vec<CuePoint>, ParseError> {
    let mut cues = Vec::new();
    for child in ebml::children(data, base) {
        let (h, body) = child.map_err(child_err("Cues"))?;
        if h.id != id::CUE_POINT {
            continue;
        }
        let mut time = None;
        let mut positions = Vec::new();
        for point_child in ebml::children(body, h.data_start()) {
            let (ph, pb) = point_child.map_err(child_err("CuePoint"))?;
            match ph.id {
                id::CUE_TIME => time = Some(uint_child(pb, &ph, "CuePoint")?),
                id::CUE_TRACK_POSITIONS => {
                    let (mut cue_track, mut cluster, mut relative) = (None, None, None);
                    for tp in ebml::children(pb, ph.data_start()) {
                        let (th, tb) = tp.map_err(child_err("CueTrackPositions"))?;
                        match th.id {
                            id::CUE_TRACK => cue_track = Some(uint_child(tb, &th, "CueTrackPositions")?),
                            id::CUE_CLUSTER_POSITION => {
                                cluster = Some(uint_child(tb, &th, "CueTrackPositions")?)
                            }
                            id::CUE_RELATIVE_POSITION => {
                                relative = Some(uint_child(tb, &th, "CueTrackPositions")?)
                            }
                            _ => {}
                        }
                    }
                    if cue_track == Some(track) {
                        if let Some(cluster) = cluster.and_then(|c| segment_data.checked_add(c)) {
                            if cluster < file_len {
                                positions.push((cluster, relative));
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        let Some(ticks) = time else {
            return Err(ParseError::malformed("CuePoint", h.offset, "no CueTime"));
        };
        cues.extend(positions.into_iter().map(|(cluster, relative)| CuePoint { ticks, cluster, relative }));
    }
    cues.sort_by_key(|c| (c.ticks, c.cluster));
    cues.dedup_by_key(|c| c.ticks);
    Ok(cues)
}

/// What the SeekHeads and the walk over the Segment's first elements found.
#[derive(Debug, Default)]
struct Found {
    info: Option<(u64, Option<f64>)>,
    tracks: Option<(Header, Bytes)>,
    cues: Option<(Header, Bytes)>,
    /// (element ID, absolute position) from SeekHeads, not yet followed.
    seeks: Vec<(u32, u64)>,
    seek_heads_seen: Vec<u64>,
}

impl Found {
    fn take_seek_head(&mut self, data: &[u8], header: &Header, segment_data: u64) -> Result<(), ParseError> {
        self.seek_heads_seen.push(header.offset);
        for child in ebml::children(data, header.data_start()) {
            let (h, body) = child.map_err(child_err("SeekHead"))?;
            if h.id != id::SEEK {
                continue;
            }
            let (mut target, mut position) = (None, None);
            for seek_child in ebml::children(body, h.data_start()) {
                let (sh, sb) = seek_child.map_err(child_err("Seek"))?;
                match sh.id {
                    id::SEEK_ID => target = ebml::read_id(sb).ok().map(|(v, _)| v),
                    id::SEEK_POSITION => position = Some(uint_child(sb, &sh, "Seek")?),
                    _ => {}
                }
            }
            if let (Some(target), Some(position)) = (target, position) {
                if let Some(abs) = segment_data.checked_add(position) {
                    // Bounded: a SeekHead's entries are bounded by its bytes.
                    self.seeks.push((target, abs));
                }
            }
        }
        Ok(())
    }

    fn complete(&self) -> bool {
        self.info.is_some() && self.tracks.is_some()
    }
}

impl MkvIndex {
    pub(crate) fn open(reader: &Reader<'_>) -> Result<Self, ParseError> {
        let file_len = reader.len();
        let ebml_header = header_at(reader, 0, "EBML header")?;
        if ebml_header.id != id::EBML {
            return Err(ParseError::malformed("EBML header", 0, "no EBML magic"));
        }
        let (ebml_header, ebml_data) = read_element(reader, 0, CUES_PROBE, "EBML header")?;
        let container = match parse_doc_type_data(&ebml_data, ebml_header.len)?.as_str() {
            "webm" => Container::WebM,
            "matroska" => Container::Matroska,
            other => {
                return Err(ParseError::Unsupported {
                    element: "EBML header",
                    offset: 0,
                    what: format!("DocType {other:?}"),
                })
            }
        };
        let segment_pos = ebml_header.end().unwrap_or(u64::MAX);
        let segment = header_at(reader, segment_pos, "Segment")?;
        if segment.id != id::SEGMENT {
            return Err(ParseError::malformed(
                "Segment",
                segment_pos,
                format!("expected Segment, found element {:#x}", segment.id),
            ));
        }
        let segment_data = segment.data_start();
        let segment_end = segment.end().map_or(file_len, |e| e.min(file_len));

        let mut found = Found::default();
        let head_len = reader.head().len() as u64;
        let mut pos = segment_data;
        let mut first_cluster = None;
        // The Segment's first elements: free while in the head, then only while Info or Tracks
        // is still missing and no SeekHead said where they are.
        for _ in 0..MAX_TOP_LEVEL {
            if pos >= segment_end {
                break;
            }
            let in_head = pos.saturating_add(ebml::MAX_HEADER) <= head_len || head_len == file_len;
            if !in_head && (found.complete() || !found.seeks.is_empty()) {
                break;
            }
            let Ok(header) = header_at(reader, pos, "Segment") else { break };
            if header.id == id::CLUSTER {
                first_cluster = Some(pos);
                break;
            }
            open_element(reader, &header, &mut found, segment_data)?;
            match header.end() {
                Some(end) if end > pos => pos = end,
                _ => break,
            }
        }
        // Follow SeekHeads (into further SeekHeads, each once) for what is still missing.
        let mut steps = 0;
        while let Some((target, at)) = found.seeks.pop() {
            steps += 1;
            if steps > 64 * MAX_SEEK_HEADS {
                break;
            }
            let wanted = match target {
                id::SEEK_HEAD => {
                    !found.seek_heads_seen.contains(&at) && found.seek_heads_seen.len() < MAX_SEEK_HEADS
                }
                id::INFO => found.info.is_none(),
                id::TRACKS => found.tracks.is_none(),
                id::CUES => found.cues.is_none(),
                _ => false,
            };
            if !wanted || at >= file_len {
                continue;
            }
            let element = match target {
                id::SEEK_HEAD => "SeekHead",
                id::INFO => "Info",
                id::TRACKS => "Tracks",
                _ => "Cues",
            };
            let Ok((header, first)) = probe_element(reader, at, CUES_PROBE, element) else { continue };
            if header.id != target {
                // A stale or wrong SeekHead entry: ignore it, as players do.
                continue;
            }
            let data = finish_element(reader, &header, &first, element)?;
            record_element(&header, data, &mut found, segment_data)?;
        }
        let Some((tracks_header, tracks_data)) = found.tracks.take() else {
            return Err(ParseError::Missing {
                element: "Tracks",
                searched_to: pos,
                hint: "neither before the first Cluster nor in a SeekHead",
            });
        };
        let (scale, duration_ticks) = found.info.unwrap_or((1_000_000, None));
        let entry = choose_track(&tracks_data, tracks_header.data_start())?;
        if entry.encoded {
            return Err(ParseError::Unsupported {
                element: "TrackEntry",
                offset: tracks_header.offset,
                what: "ContentEncodings (compressed or encrypted track)".into(),
            });
        }
        let codec = codec_from_id(&entry.codec_id);
        let is_video = entry.kind == 1 || (entry.kind == 0 && codec.is_video());
        let is_audio = entry.kind == 2 || (entry.kind == 0 && codec.is_audio());
        let scale_i = i64::try_from(scale).unwrap_or(i64::MAX);
        let delay_ticks = if is_audio {
            // Rounded to the nearest tick, half away from zero, as ffmpeg does.
            i64::try_from(entry.codec_delay.saturating_add(scale / 2) / scale).unwrap_or(0)
        } else {
            0
        };
        let duration = duration_ticks.and_then(|d| {
            let ns = d * scale as f64;
            (0.0..9.0e18).contains(&ns).then(|| MediaTime::from_nanos(ns.round() as i64))
        });
        let cues = match &found.cues {
            Some((h, data)) => parse_cues(data, h.data_start(), entry.number, segment_data, file_len)?,
            None => Vec::new(),
        };
        let mut cued_clusters: Vec<u64> = cues.iter().map(|c| c.cluster).collect();
        cued_clusters.sort_unstable();
        cued_clusters.dedup();
        let info = TrackInfo {
            container,
            codec,
            codec_config: entry.codec_private.clone(),
            timescale: if 1_000_000_000 % scale == 0 { 1_000_000_000 / scale } else { 1_000_000_000 },
            duration,
            video: if is_video { entry.video } else { None },
            audio: if is_audio { entry.audio } else { None },
        };
        let first_cluster_ticks = first_cluster.and_then(|at| {
            let head = reader.head();
            let bytes = head.get(usize::try_from(at).ok()?..)?;
            scan::cluster_at(bytes, at, segment_end, u64::MAX).map(|c| c.ticks)
        });
        let mut index = MkvIndex {
            info,
            track: entry.number,
            scale: scale_i,
            delay_ticks,
            default_duration: entry.default_duration.and_then(|d| i64::try_from(d).ok()),
            is_video,
            segment_end,
            walk_start: first_cluster.unwrap_or(pos),
            cues,
            cued_clusters,
            first_cluster_ticks,
            last_cluster_ticks: None,
        };
        if index.cues.is_empty() {
            // One read of the tail: the last cluster bounds bisection, and gives the duration
            // that live writers leave out.
            if let Some(tail) = index.read_tail(reader.src(), reader.head()) {
                index.last_cluster_ticks = Some(tail.last_cluster_ticks);
                if index.info.duration.is_none() {
                    index.info.duration = tail.end_ns.filter(|&ns| ns >= 0).map(MediaTime::from_nanos);
                }
            }
        }
        Ok(index)
    }

    /// Media time of a block timestamp in ticks.
    fn time(&self, ticks: i64) -> MediaTime {
        let ns = ticks.saturating_sub(self.delay_ticks).saturating_mul(self.scale);
        MediaTime::from_nanos(ns)
    }

    fn cue_keyframe(&self, cue: &CuePoint) -> Keyframe {
        let next = match self.cued_clusters.binary_search(&cue.cluster) {
            Ok(i) => self.cued_clusters.get(i + 1).copied(),
            Err(i) => self.cued_clusters.get(i).copied(),
        };
        let end = next.unwrap_or(self.segment_end).max(cue.cluster);
        Keyframe {
            pts: self.time(i64::try_from(cue.ticks).unwrap_or(i64::MAX)),
            offset: cue.cluster,
            size: end - cue.cluster,
            pos: ReadPos {
                offset: cue.cluster,
                sample: cue.relative.and_then(|r| encode_resume(r, 0)).unwrap_or(0),
            },
        }
    }

    /// Walks clusters from the start, collecting keyframes; stops after the first cluster with
    /// a keyframe later than `until`.
    fn walk_keyframes(
        &self,
        src: &dyn RangeSource,
        until: Option<MediaTime>,
    ) -> Result<Vec<Keyframe>, ParseError> {
        let mut w = Walker::new(src, self.segment_end, &self.info.codec);
        let mut out = Vec::new();
        let mut pos = self.walk_start;
        while let Some(cluster) = w.next_cluster(pos)? {
            let mut found: Vec<(i64, u64)> = Vec::new();
            let is_video = self.is_video;
            let walked = w.walk_cluster(&cluster, self.track, &mut |_, block| {
                if block.keyframe {
                    found.push((block.ticks, block.offset));
                }
                Ok(Flow::more_if(is_video || found.is_empty()))
            })?;
            let size = walked.saturating_sub(cluster.offset);
            let mut past = false;
            for (ticks, block_offset) in found {
                let pts = self.time(ticks);
                past |= until.is_some_and(|t| pts > t);
                let rel = block_offset.saturating_sub(cluster.data_start());
                out.push(Keyframe {
                    pts,
                    offset: cluster.offset,
                    size,
                    pos: ReadPos { offset: cluster.offset, sample: encode_resume(rel, 0).unwrap_or(0) },
                });
            }
            if past || walked <= pos {
                break;
            }
            pos = walked;
        }
        out.sort_by_key(|k| k.pts);
        Ok(out)
    }
}

/// The DocType in an EBML header's data (DocType defaults to "matroska").
fn parse_doc_type_data(data: &[u8], base: u64) -> Result<String, ParseError> {
    for child in ebml::children(data, base) {
        let (h, body) = child.map_err(child_err("EBML header"))?;
        if h.id == id::DOC_TYPE {
            return Ok(ebml::read_string(body));
        }
    }
    Ok("matroska".to_string())
}

/// Reads and records one top-level element met at open, if it is one still wanted.
fn open_element(
    reader: &Reader<'_>,
    header: &Header,
    found: &mut Found,
    segment_data: u64,
) -> Result<(), ParseError> {
    let element = match header.id {
        id::SEEK_HEAD
            if found.seek_heads_seen.len() < MAX_SEEK_HEADS
                && !found.seek_heads_seen.contains(&header.offset) =>
        {
            "SeekHead"
        }
        id::INFO if found.info.is_none() => "Info",
        id::TRACKS if found.tracks.is_none() => "Tracks",
        id::CUES if found.cues.is_none() => "Cues",
        _ => return Ok(()),
    };
    let (header, data) = read_element(reader, header.offset, CUES_PROBE, element)?;
    record_element(&header, data, found, segment_data)
}

/// Parses (SeekHead, Info) or keeps (Tracks, Cues) an element read at open.
fn record_element(
    header: &Header,
    data: Bytes,
    found: &mut Found,
    segment_data: u64,
) -> Result<(), ParseError> {
    match header.id {
        id::SEEK_HEAD => found.take_seek_head(&data, header, segment_data)?,
        id::INFO => found.info = Some(parse_info(&data, header.data_start())?),
        id::TRACKS => found.tracks = Some((*header, data)),
        id::CUES => found.cues = Some((*header, data)),
        _ => {}
    }
    Ok(())
}

/// `ReadPos::sample` for a block `rel` bytes after its cluster's data start, from lace `lace`.
fn encode_resume(rel: u64, lace: usize) -> Option<u64> {
    rel.checked_add(1)?.checked_mul(256)?.checked_add(lace as u64 & 0xFF)
}

/// (block offset from the cluster's data start, lace) from `ReadPos::sample`; `None` for 0.
fn decode_resume(sample: u64) -> Option<(u64, usize)> {
    let block = sample >> 8;
    (block > 0).then(|| (block - 1, (sample & 0xFF) as usize))
}

/// A SimpleBlock or Block of the chosen track, located but not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BlockRef {
    /// Offset of the SimpleBlock or BlockGroup element.
    offset: u64,
    /// Name for errors: "SimpleBlock" or "Block".
    element: &'static str,
    /// Cluster Timestamp + relative timestamp, in ticks.
    ticks: i64,
    keyframe: bool,
    /// Lacing bits: 0 none, 1 Xiph, 2 fixed, 3 EBML.
    lacing: u8,
    /// Frame data (after track number, timestamp and flags), absolute.
    payload: u64,
    payload_end: u64,
    /// BlockDuration in ticks.
    duration: Option<u64>,
    /// The walk skipped damaged bytes since the track's previous block.
    follows_damage: bool,
}

/// Forward walker over clusters and their blocks.
struct Walker<'a> {
    w: WindowReader<'a>,
    segment_end: u64,
    /// VP8 and VP9 frames say whether they are keyframes, where a BlockGroup may not:
    /// GStreamer's muxer writes a delta frame that needs a BlockDuration (one followed by a
    /// pause) as a BlockGroup without ReferenceBlock, which Matroska reads as a keyframe.
    keys_in_frames: Option<Codec>,
    /// Damaged bytes were skipped since the last block reported: the next one is marked.
    skipped: bool,
}

/// What a block callback wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// Report the next block of the track.
    More,
    /// Report no more blocks, but walk on to the cluster's end (needed for unknown sizes).
    Done,
    /// Stop here: the caller needs neither more blocks nor the cluster's end.
    Abort,
}

impl Flow {
    fn more_if(more: bool) -> Flow {
        if more {
            Flow::More
        } else {
            Flow::Done
        }
    }
}

/// Callback for each block of the chosen track.
type OnBlock<'c> = dyn FnMut(&mut WindowReader<'_>, BlockRef) -> Result<Flow, ParseError> + 'c;

impl<'a> Walker<'a> {
    fn new(src: &'a dyn RangeSource, segment_end: u64, codec: &Codec) -> Walker<'a> {
        let segment_end = segment_end.min(src.len());
        let keys_in_frames = matches!(codec, Codec::Vp8 | Codec::Vp9).then(|| codec.clone());
        Walker { w: WindowReader::new(src, WALK_WINDOW), segment_end, keys_in_frames, skipped: false }
    }

    fn header(&mut self, pos: u64, element: &'static str) -> Result<Result<Header, HeaderError>, ParseError> {
        let bytes = self.w.read_up_to(pos, ebml::MAX_HEADER, element)?;
        Ok(ebml::read_header(&bytes, pos))
    }

    /// The Cluster at or after `pos`, skipping other top-level elements and resyncing past
    /// garbage; `None` at the end of the Segment.
    fn next_cluster(&mut self, mut pos: u64) -> Result<Option<Header>, ParseError> {
        while pos < self.segment_end {
            match self.header(pos, "Cluster")? {
                Ok(h) if h.id == id::CLUSTER => return Ok(Some(h)),
                Ok(h) if ebml::is_top_level(h.id) || h.id == id::VOID || h.id == id::CRC32 => match h.end() {
                    Some(end) => pos = end,
                    None => return Ok(None),
                },
                Err(HeaderError::Incomplete) => return Ok(None),
                _ => pos = self.resync(pos)?,
            }
        }
        Ok(None)
    }

    /// The offset of the next Cluster ID after damaged bytes at `from`.
    fn resync(&mut self, from: u64) -> Result<u64, ParseError> {
        const MAGIC: [u8; 4] = [0x1F, 0x43, 0xB6, 0x75];
        self.skipped = true;
        let mut at = from.saturating_add(1);
        let limit = from.saturating_add(RESYNC_LIMIT).min(self.segment_end);
        while at < limit {
            let chunk = self.w.read_up_to(at, WALK_WINDOW.min(limit - at).saturating_add(3), "Cluster")?;
            if chunk.len() < 4 {
                break;
            }
            if let Some(i) = chunk.windows(4).position(|w| w == MAGIC) {
                return Ok(at + i as u64);
            }
            at += (chunk.len() - 3) as u64;
        }
        if limit >= self.segment_end {
            // Garbage up to the end: nothing more to index.
            return Ok(self.segment_end);
        }
        Err(ParseError::malformed(
            "Cluster",
            from,
            format!("no Cluster within {RESYNC_LIMIT} bytes of damaged data"),
        ))
    }

    /// Walks one cluster's children, calling `on_block` for each block of `track` until it
    /// says otherwise. Returns the offset after the cluster (where the walk stopped, after
    /// [`Flow::Abort`]).
    fn walk_cluster(
        &mut self,
        cluster: &Header,
        track: u64,
        on_block: &mut OnBlock<'_>,
    ) -> Result<u64, ParseError> {
        let known_end = cluster.end().map(|e| e.min(self.segment_end));
        let limit = known_end.unwrap_or(self.segment_end);
        let mut pos = cluster.data_start();
        let mut timestamp: Option<u64> = None;
        let mut reporting = true;
        while pos < limit {
            let header = match self.header(pos, "Cluster")? {
                Ok(h) => h,
                // Garbage inside a cluster (or a file cut inside a header): the cluster ends,
                // and whatever it held past here is lost.
                Err(_) => {
                    self.skipped = true;
                    break;
                }
            };
            if known_end.is_none() && ebml::is_top_level(header.id) {
                return Ok(pos);
            }
            let Some(end) = header.end() else {
                return Err(ParseError::malformed("Cluster", pos, "child element of unknown size"));
            };
            if end > limit {
                // Cut short: index up to the last complete block.
                self.skipped = true;
                break;
            }
            match header.id {
                id::TIMESTAMP => {
                    let size = header.size.unwrap_or(0);
                    if size > 8 {
                        return Err(ParseError::malformed("Cluster", pos, "Timestamp longer than 8 bytes"));
                    }
                    let data = self.w.read(header.data_start(), size, "Cluster")?;
                    timestamp = ebml::read_uint(&data);
                }
                id::SIMPLE_BLOCK | id::BLOCK_GROUP if reporting => {
                    if let Some(mut block) = self.block(&header, end, track, timestamp)? {
                        block.follows_damage = std::mem::take(&mut self.skipped);
                        match on_block(&mut self.w, block)? {
                            Flow::More => {}
                            Flow::Done => {
                                reporting = false;
                                if known_end.is_some() {
                                    break;
                                }
                            }
                            Flow::Abort => return Ok(end),
                        }
                    }
                }
                _ => {}
            }
            pos = end;
        }
        Ok(known_end.unwrap_or(pos).max(cluster.data_start()))
    }

    /// The block in a SimpleBlock or BlockGroup element, if it belongs to `track`.
    fn block(
        &mut self,
        header: &Header,
        end: u64,
        track: u64,
        timestamp: Option<u64>,
    ) -> Result<Option<BlockRef>, ParseError> {
        let (element, block_start, block_end, mut keyframe_flag, duration) = if header.id == id::SIMPLE_BLOCK
        {
            ("SimpleBlock", header.data_start(), end, None, None)
        } else {
            let mut pos = header.data_start();
            let mut block = None;
            let mut referenced = false;
            let mut duration = None;
            while pos < end {
                let h = match self.header(pos, "BlockGroup")? {
                    Ok(h) => h,
                    Err(_) => {
                        return Err(ParseError::malformed("BlockGroup", pos, "invalid child element header"))
                    }
                };
                let child_end = match h.end() {
                    Some(e) if e <= end => e,
                    _ => {
                        return Err(ParseError::malformed(
                            "BlockGroup",
                            pos,
                            "child element extends past its parent",
                        ))
                    }
                };
                match h.id {
                    id::BLOCK => block = Some((h.data_start(), child_end)),
                    id::REFERENCE_BLOCK => referenced = true,
                    id::BLOCK_DURATION => {
                        let size = h.size.unwrap_or(0);
                        if size <= 8 {
                            duration = ebml::read_uint(&self.w.read(h.data_start(), size, "BlockGroup")?);
                        }
                    }
                    _ => {}
                }
                pos = child_end;
            }
            let Some((start, stop)) = block else {
                return Err(ParseError::malformed("BlockGroup", header.offset, "no Block"));
            };
            ("Block", start, stop, Some(!referenced), duration)
        };
        let head = self.w.read_up_to(block_start, 11.min(block_end - block_start), element)?;
        let (number, number_len) = match ebml::read_vint(&head) {
            Ok((Some(n), len)) => (n, len),
            _ => return Err(ParseError::malformed(element, block_start, "invalid track number")),
        };
        if number != track {
            return Ok(None);
        }
        let (Some(&t0), Some(&t1), Some(&flags)) =
            (head.get(number_len), head.get(number_len + 1), head.get(number_len + 2))
        else {
            return Err(ParseError::malformed(element, block_start, "block header shorter than 4 bytes"));
        };
        let Some(cluster_ticks) = timestamp else {
            return Err(ParseError::malformed(
                "Cluster",
                header.offset,
                "block before the cluster Timestamp",
            ));
        };
        let relative = i64::from(i16::from_be_bytes([t0, t1]));
        let ticks = i64::try_from(cluster_ticks).unwrap_or(i64::MAX).saturating_add(relative);
        let lacing = (flags >> 1) & 0x03;
        match keyframe_flag {
            None => keyframe_flag = Some(flags & 0x80 != 0),
            // A Block without ReferenceBlock: the frame itself says.
            Some(true) => match (&self.keys_in_frames, head.get(number_len + 3).filter(|_| lacing == 0)) {
                (Some(Codec::Vp8), Some(&b)) => keyframe_flag = Some(vp8_keyframe(b)),
                (Some(Codec::Vp9), Some(&b)) => keyframe_flag = Some(vp9_keyframe(b)),
                _ => {}
            },
            Some(false) => {}
        }
        Ok(Some(BlockRef {
            offset: header.offset,
            element,
            ticks,
            keyframe: keyframe_flag.unwrap_or(false),
            lacing,
            payload: block_start + number_len as u64 + 3,
            payload_end: block_end,
            duration,
            follows_damage: false,
        }))
    }
}

/// A VP8 frame tag's first byte: bit 0 is the frame type, 0 for a key frame (RFC 6386 9.1).
fn vp8_keyframe(first: u8) -> bool {
    first & 1 == 0
}

/// A VP9 uncompressed header's first byte (VP9 bitstream spec 6.2): frame marker, profile,
/// show_existing_frame, then frame_type (0 for a key frame).
fn vp9_keyframe(first: u8) -> bool {
    let profile = ((first >> 4) & 1) << 1 | ((first >> 5) & 1);
    let rest = if profile == 3 { first << 5 } else { first << 4 };
    let show_existing = rest & 0x80 != 0;
    let frame_type = rest & 0x40 != 0;
    first >> 6 == 0b10 && !show_existing && !frame_type
}

/// The (offset, size) of each frame in a block, undoing Xiph, fixed-size and EBML lacing.
fn block_frames(w: &mut WindowReader<'_>, block: &BlockRef) -> Result<Vec<(u64, u64)>, ParseError> {
    let len = block.payload_end.saturating_sub(block.payload);
    if block.lacing == 0 {
        return Ok(vec![(block.payload, len)]);
    }
    let bad = |reason: &str| ParseError::malformed(block.element, block.offset, format!("lacing: {reason}"));
    let head = w.read_up_to(block.payload, len.min(MAX_LACE_HEADER), block.element)?;
    let count = usize::from(*head.first().ok_or_else(|| bad("no frame count"))?) + 1;
    let mut pos = 1usize;
    let mut sizes: Vec<u64> = Vec::with_capacity(count);
    match block.lacing {
        1 => {
            for _ in 1..count {
                let mut size = 0u64;
                loop {
                    let b = *head.get(pos).ok_or_else(|| bad("Xiph lace sizes run past the block"))?;
                    pos += 1;
                    size += u64::from(b);
                    if b != 255 {
                        break;
                    }
                }
                sizes.push(size);
            }
        }
        2 => {
            let total = len - 1;
            if !total.is_multiple_of(count as u64) {
                return Err(bad("fixed-size frames do not divide the block"));
            }
            sizes.resize(count - 1, total / count as u64);
        }
        _ => {
            let mut prev: Option<u64> = None;
            for _ in 1..count {
                let rest = head.get(pos..).unwrap_or_default();
                let (raw, n) = match ebml::read_vint(rest) {
                    Ok((Some(v), n)) => (v, n),
                    _ => return Err(bad("invalid EBML lace size")),
                };
                pos += n;
                let size = match prev {
                    None => raw,
                    Some(p) => {
                        let bias = (1i128 << (7 * n - 1)) - 1;
                        let s = i128::from(p) + i128::from(raw) - bias;
                        u64::try_from(s).map_err(|_| bad("negative EBML lace size"))?
                    }
                };
                sizes.push(size);
                prev = Some(size);
            }
        }
    }
    let used =
        sizes.iter().try_fold(pos as u64, |acc, &s| acc.checked_add(s)).ok_or_else(|| bad("overflow"))?;
    let last = len.checked_sub(used).ok_or_else(|| bad("frames larger than the block"))?;
    sizes.push(last);
    let mut frames = Vec::with_capacity(count);
    let mut at = block.payload + pos as u64;
    for size in sizes {
        frames.push((at, size));
        at += size;
    }
    Ok(frames)
}

impl ContainerIndex for MkvIndex {
    fn info(&self) -> &TrackInfo {
        &self.info
    }

    fn keyframes(&self, src: &dyn RangeSource) -> Result<Vec<Keyframe>, ParseError> {
        if self.cues.is_empty() {
            return self.walk_keyframes(src, None);
        }
        Ok(self.cues.iter().map(|c| self.cue_keyframe(c)).collect())
    }

    fn seek(&self, src: &dyn RangeSource, t: MediaTime) -> Result<Keyframe, ParseError> {
        if !self.cues.is_empty() {
            let after =
                self.cues.partition_point(|c| self.time(i64::try_from(c.ticks).unwrap_or(i64::MAX)) <= t);
            let cue = self.cues.get(after.saturating_sub(1)).ok_or(ParseError::NoSamples)?;
            return Ok(self.cue_keyframe(cue));
        }
        if let Some(keyframe) = self.bisect_seek(src, t)? {
            return Ok(keyframe);
        }
        let keyframes = self.walk_keyframes(src, Some(t))?;
        let after = keyframes.partition_point(|k| k.pts <= t);
        keyframes.get(after.saturating_sub(1)).copied().ok_or(ParseError::NoSamples)
    }

    fn samples(&self, src: &dyn RangeSource, from: ReadPos, max: usize) -> Result<SampleBatch, ParseError> {
        if max == 0 {
            return Ok(SampleBatch { samples: Vec::new(), next: Some(from) });
        }
        let mut w = Walker::new(src, self.segment_end, &self.info.codec);
        let first = match w.header(from.offset, "Cluster")? {
            Ok(h) if h.id == id::CLUSTER => h,
            _ => {
                return Err(ParseError::malformed(
                    "Cluster",
                    from.offset,
                    "no Cluster at the resume position",
                ))
            }
        };
        let mut resume = decode_resume(from.sample);
        let mut cluster = Some(first);
        let mut samples = Vec::new();
        while let Some(c) = cluster {
            let data_start = c.data_start();
            let target = resume.map(|(rel, lace)| (data_start.saturating_add(rel), lace));
            let mut next = None;
            let walked = w.walk_cluster(&c, self.track, &mut |wr, block| {
                let skip = match target {
                    Some((at, _)) if block.offset < at => return Ok(Flow::More),
                    Some((at, lace)) if block.offset == at => lace,
                    _ => 0,
                };
                let frames = block_frames(wr, &block)?;
                let count = frames.len() as i64;
                let pts0 = self.time(block.ticks);
                let per_frame = match (block.duration, self.default_duration) {
                    (Some(d), _) => {
                        i64::try_from(d).unwrap_or(i64::MAX).saturating_mul(self.scale) / count.max(1)
                    }
                    (None, Some(d)) => d,
                    (None, None) => 0,
                };
                for (i, (offset, size)) in frames.into_iter().enumerate().skip(skip) {
                    if samples.len() >= max {
                        next = encode_resume(block.offset - data_start, i)
                            .map(|sample| ReadPos { offset: c.offset, sample });
                        return Ok(Flow::Done);
                    }
                    let pts = pts0.saturating_add(MediaTime::from_nanos(per_frame.saturating_mul(i as i64)));
                    samples.push(Sample {
                        pts,
                        dts: pts,
                        duration: MediaTime::from_nanos(per_frame),
                        offset,
                        size,
                        keyframe: block.keyframe,
                        // Laced frames after the first follow their block's first frame.
                        follows_damage: block.follows_damage && i == 0,
                    });
                }
                Ok(Flow::More)
            })?;
            if next.is_some() {
                return Ok(SampleBatch { samples, next });
            }
            resume = None;
            cluster = if walked > c.offset { w.next_cluster(walked)? } else { None };
        }
        Ok(SampleBatch { samples, next: None })
    }
}

#[cfg(test)]
mod tests;
