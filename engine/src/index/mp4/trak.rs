//! What one `trak` says: media header, edit list and sample entry (codec, dimensions, audio
//! configuration from `esds` or `dOps`), parsed from the `moov` bytes read at open.

use bytes::Bytes;

use super::boxes::{child, signed_ticks, Children, Cursor};
use super::sample_table::parse_sample_table;
use super::TableSample;
use crate::index::{AudioInfo, Codec, ParseError, VideoInfo};

/// What one `trak` says about the track.
#[derive(Debug)]
pub(super) struct Trak {
    pub(super) track_id: u32,
    pub(super) timescale: u64,
    pub(super) media_duration: i64,
    pub(super) codec: Codec,
    pub(super) codec_config: Option<Bytes>,
    pub(super) video: Option<VideoInfo>,
    pub(super) audio: Option<AudioInfo>,
    pub(super) edit_media_start: i64,
    /// Empty edits before the first media edit, in movie ticks.
    pub(super) edit_empty: i64,
    pub(super) samples: Vec<TableSample>,
}

pub(super) fn parse_trak(trak: &Bytes, base: u64, file_len: u64) -> Result<Trak, ParseError> {
    let mut track_id = 0;
    let mut edit_media_start = 0i64;
    let mut edit_empty = 0i64;
    let mut mdia = None;
    for item in Children::new(trak, base) {
        let (header, data) = item?;
        match &header.kind {
            b"tkhd" => {
                let mut c = Cursor::new(&data, "tkhd", header.body_offset());
                let (version, _) = c.full_box()?;
                c.skip(if version == 1 { 16 } else { 8 })?;
                track_id = c.u32()?;
            }
            b"edts" => {
                if let Some((h, elst)) = child(&data, header.body_offset(), b"elst")? {
                    (edit_media_start, edit_empty) = parse_elst(&elst, h.body_offset())?;
                }
            }
            b"mdia" => mdia = Some((header, data)),
            _ => {}
        }
    }
    let Some((mdia_header, mdia)) = mdia else {
        return Err(ParseError::Missing { element: "mdia", searched_to: base, hint: "a trak without media" });
    };
    let mdia_base = mdia_header.body_offset();
    let (mdhd_header, mdhd) = child(&mdia, mdia_base, b"mdhd")?.ok_or(ParseError::Missing {
        element: "mdhd",
        searched_to: mdia_base,
        hint: "media header missing",
    })?;
    let mut c = Cursor::new(&mdhd, "mdhd", mdhd_header.body_offset());
    let (version, _) = c.full_box()?;
    let (timescale, media_duration) = if version == 1 {
        c.skip(16)?;
        let timescale = u64::from(c.u32()?);
        let duration = match c.u64()? {
            u64::MAX => 0, // unknown
            d => signed_ticks(d, "mdhd", mdhd_header.offset)?,
        };
        (timescale, duration)
    } else {
        c.skip(8)?;
        (u64::from(c.u32()?), i64::from(c.u32()?))
    };
    if timescale == 0 {
        return Err(ParseError::malformed("mdhd", mdhd_header.offset, "media timescale is zero"));
    }
    let (minf_header, minf) = child(&mdia, mdia_base, b"minf")?.ok_or(ParseError::Missing {
        element: "minf",
        searched_to: mdia_base,
        hint: "media information missing",
    })?;
    let (stbl_header, stbl) =
        child(&minf, minf_header.body_offset(), b"stbl")?.ok_or(ParseError::Missing {
            element: "stbl",
            searched_to: minf_header.offset,
            hint: "sample table missing",
        })?;
    let stbl_base = stbl_header.body_offset();
    let entry = match child(&stbl, stbl_base, b"stsd")? {
        Some((h, stsd)) => parse_stsd(&stsd, h.body_offset())?,
        None => SampleEntry::default(),
    };
    let samples = parse_sample_table(&stbl, stbl_base, file_len)?;
    Ok(Trak {
        track_id,
        timescale,
        media_duration,
        codec: entry.codec,
        codec_config: entry.config,
        video: entry.video,
        audio: entry.audio,
        edit_media_start,
        edit_empty,
        samples,
    })
}

/// The first media edit's start (media ticks) and the empty edits before it (movie ticks).
fn parse_elst(elst: &Bytes, base: u64) -> Result<(i64, i64), ParseError> {
    let mut c = Cursor::new(elst, "elst", base);
    let (version, _) = c.full_box()?;
    let entry_size = if version == 1 { 20 } else { 12 };
    let count = c.count(entry_size)?;
    let mut empty = 0u64;
    for _ in 0..count {
        // Media time is signed in both versions (-1 marks an empty edit).
        let (duration, media_time) = if version == 1 {
            (c.u64()?, c.i64()?)
        } else {
            (u64::from(c.u32()?), i64::from(i32::from_be_bytes(c.u32()?.to_be_bytes())))
        };
        c.skip(4)?; // media rate
        if media_time == -1 {
            empty = empty.checked_add(duration).ok_or_else(|| {
                ParseError::malformed("elst", base, "empty edits add up to more than 64 bits")
            })?;
            continue;
        }
        return Ok((media_time.max(0), signed_ticks(empty, "elst", base)?));
    }
    Ok((0, signed_ticks(empty, "elst", base)?))
}

#[derive(Debug)]
struct SampleEntry {
    codec: Codec,
    config: Option<Bytes>,
    video: Option<VideoInfo>,
    audio: Option<AudioInfo>,
}

impl Default for SampleEntry {
    fn default() -> Self {
        SampleEntry { codec: Codec::Other(String::new()), config: None, video: None, audio: None }
    }
}

fn parse_stsd(stsd: &Bytes, base: u64) -> Result<SampleEntry, ParseError> {
    let mut c = Cursor::new(stsd, "stsd", base);
    c.full_box()?;
    let count = c.u32()?;
    if count == 0 {
        return Ok(SampleEntry::default());
    }
    let entries = stsd.slice(8..);
    let Some(first) = Children::new(&entries, base + 8).next() else {
        return Err(ParseError::Truncated {
            element: "stsd",
            offset: base + 8,
            needed: 8,
            end: base + stsd.len() as u64,
        });
    };
    let (header, body) = first?;
    let fourcc = String::from_utf8_lossy(&header.kind).into_owned();
    let mut entry = SampleEntry::default();
    let is_visual =
        matches!(&header.kind, b"avc1" | b"avc3" | b"hvc1" | b"hev1" | b"vp08" | b"vp09" | b"av01");
    let is_audio = matches!(&header.kind, b"mp4a" | b"Opus" | b"fLaC" | b".mp3" | b"ac-3");
    entry.codec = match &header.kind {
        b"avc1" | b"avc3" => Codec::H264,
        b"hvc1" | b"hev1" => Codec::H265,
        b"vp08" => Codec::Vp8,
        b"vp09" => Codec::Vp9,
        b"av01" => Codec::Av1,
        b"mp4a" => Codec::Aac,
        b"Opus" => Codec::Opus,
        b"fLaC" => Codec::Flac,
        b".mp3" => Codec::Mp3,
        b"wvtt" => Codec::WebVtt,
        _ => Codec::Other(fourcc),
    };
    let body_base = header.body_offset();
    let mut c = Cursor::new(&body, "stsd", body_base);
    let children_at = if is_visual {
        // SampleEntry (8) + VisualSampleEntry fields up to width/height (16), then 50 more.
        c.skip(8 + 16)?;
        let width = u32::from(c.u16()?);
        let height = u32::from(c.u16()?);
        entry.video = Some(VideoInfo { width, height });
        78
    } else if is_audio {
        c.skip(8)?;
        let version = c.u16()?;
        c.skip(6)?;
        let channels = u32::from(c.u16()?);
        c.skip(6)?;
        let rate = c.u32()? >> 16;
        entry.audio = Some(AudioInfo { sample_rate: rate, channels });
        match version {
            1 => 28 + 16,
            2 => 28 + 36,
            _ => 28,
        }
    } else {
        8
    };
    if body.len() < children_at {
        return Ok(entry);
    }
    let children = body.slice(children_at..);
    for item in Children::new(&children, body_base + children_at as u64) {
        let Ok((h, data)) = item else { break };
        match (&h.kind, &entry.codec) {
            (b"avcC", _) | (b"hvcC", _) | (b"av1C", _) => entry.config = Some(data),
            (b"esds", _) => entry.config = parse_esds(&data, h.body_offset())?,
            (b"dOps", _) => entry.config = Some(ops_to_opus_head(&data, h.body_offset())?),
            (b"dfLa", _) => entry.config = Some(data),
            _ => {}
        }
    }
    if let (Codec::Aac, Some(config)) = (&entry.codec, &entry.config) {
        if config.first().is_some_and(|b| b >> 3 == 0) {
            entry.config = None;
        }
    }
    Ok(entry)
}

/// Walks ES_Descriptor -> DecoderConfigDescriptor -> DecoderSpecificInfo to the
/// AudioSpecificConfig; `.mp3` in `mp4a` (object type 0x6B) has none.
fn parse_esds(esds: &Bytes, base: u64) -> Result<Option<Bytes>, ParseError> {
    let mut c = Cursor::new(esds, "esds", base);
    c.full_box()?;
    fn descriptor(c: &mut Cursor<'_>) -> Result<(u8, usize), ParseError> {
        let tag = c.u8()?;
        let mut len = 0usize;
        for _ in 0..4 {
            let b = c.u8()?;
            len = (len << 7) | usize::from(b & 0x7F);
            if b & 0x80 == 0 {
                break;
            }
        }
        Ok((tag, len))
    }
    let (tag, _) = descriptor(&mut c)?;
    if tag != 0x03 {
        return Ok(None);
    }
    c.skip(2)?;
    let flags = c.u8()?;
    if flags & 0x80 != 0 {
        c.skip(2)?;
    }
    if flags & 0x40 != 0 {
        let n = c.u8()?;
        c.skip(usize::from(n))?;
    }
    if flags & 0x20 != 0 {
        c.skip(2)?;
    }
    let (tag, _) = descriptor(&mut c)?;
    if tag != 0x04 {
        return Ok(None);
    }
    let object_type = c.u8()?;
    c.skip(12)?;
    if object_type == 0x6B || object_type == 0x69 {
        return Ok(None);
    }
    if c.remaining() == 0 {
        return Ok(None);
    }
    let (tag, len) = descriptor(&mut c)?;
    if tag != 0x05 {
        return Ok(None);
    }
    let at = c.pos;
    c.skip(len)?;
    Ok(Some(esds.slice(at..at + len)))
}

/// `dOps` (big-endian, ISO-BMFF Opus mapping) to the `OpusHead` packet decoders expect.
fn ops_to_opus_head(dops: &Bytes, base: u64) -> Result<Bytes, ParseError> {
    let mut c = Cursor::new(dops, "dOps", base);
    let _version = c.u8()?;
    let channels = c.u8()?;
    let pre_skip = c.u16()?;
    let rate = c.u32()?;
    let gain = c.u16()?;
    let family = c.u8()?;
    let mut head = Vec::with_capacity(21 + usize::from(channels));
    head.extend_from_slice(b"OpusHead");
    head.push(1);
    head.push(channels);
    head.extend_from_slice(&pre_skip.to_le_bytes());
    head.extend_from_slice(&rate.to_le_bytes());
    head.extend_from_slice(&gain.to_le_bytes());
    head.push(family);
    if family != 0 {
        head.push(c.u8()?);
        head.push(c.u8()?);
        head.extend_from_slice(c.take(usize::from(channels))?);
    }
    Ok(Bytes::from(head))
}
