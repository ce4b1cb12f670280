//! MPEG audio layer III (MP3): ID3v2 skip, Xing/Info/VBRI header, frame headers.
//!
//! Hand-written because symphonia's MP3 demuxer (and crates like `minimp3`) read sequentially
//! through `Read + Seek`: they expose neither the byte range of each frame nor bound the reads a
//! seek makes. We need "this frame is these bytes" and range reads over a network.
//!
//! # How time maps to bytes
//! Every frame is a sync point holding 1152 (MPEG-1) or 576 (MPEG-2/2.5) samples, so frame `i`
//! starts at `i * samples_per_frame / sample_rate`, counted from the first audio frame (the
//! Xing/Info/VBRI frame is not audio and is skipped, as ffprobe does). That is the time ffprobe
//! reports: it starts packets at 0 and keeps the LAME encoder delay for the decoder to trim, so
//! we parse the delay but do not shift times by it.
//!
//! A byte offset does not by itself tell the frame index (frame sizes vary with bitrate and
//! padding), so exact times need to know how many frames come before. Two cases:
//!
//! - **Constant bitrate** (no Xing/VBRI frame, or LAME's "Info" frame, which marks CBR): an
//!   encoder that pads as LAME does puts frame `n` at `first + floor((n * 144 * bitrate +
//!   phase) / rate)` (72 for MPEG-2/2.5; see [`CbrLayout`]). A seek computes `n` from `t`,
//!   reads one 4 KiB window there and checks that a header of the predicted length sits exactly
//!   at the predicted offset and its successor right after it; then the frame's time is exactly
//!   `n * samples_per_frame / rate`. Sample batches walk forward from such a frame the same way
//!   ([`ReadPos::sample`] carries the frame index). If the check fails (other padding, garbage
//!   mid-file, a VBR file without a header) we fall back to the walk below, so times stay exact.
//!   The check cannot see a whole frame dropped from an otherwise perfect layout before `n`;
//!   such a file would need its padding pattern to survive the cut, which LAME's does not.
//! - **Variable bitrate** (Xing, VBRI): we walk frame headers forward in large windows
//!   ([`FRAME_WINDOW`]: one read per MiB) and keep the table, but only as far as a call needs:
//!   a seek to minute 5 of 60 reads about a twelfth of the file, later seeks before that point
//!   are binary searches without reads. The Xing TOC would give a seek from one read, but it
//!   is a 1/256-of-the-file estimate and times would be off by frames; we choose exact times
//!   and pay with reading the file up to the target once. `keyframes()` walks everything.
//!
//! Opening reads the 4 KiB head plus at most one small read at the first frame (after a large
//! ID3v2 tag). The duration comes from the Xing/VBRI frame count, or for CBR files without one
//! from the file size and the first frame's bitrate (as ffprobe estimates it).

mod cbr;
mod frame;
mod vbr;
mod walk;

use std::sync::{Mutex, PoisonError};

use self::cbr::CbrLayout;
use self::frame::{id3v2_len, FrameHeader};
use self::vbr::parse_vbr_header;
use super::{
    AudioInfo, Codec, Container, ContainerIndex, Keyframe, ParseError, ReadPos, Reader, Sample, SampleBatch,
    TrackInfo,
};
use crate::source::RangeSource;
use crate::time::MediaTime;

const FRAME: &str = "MPEG audio frame";
const ID3: &str = "ID3v2 tag";

/// Window for walking frame headers.
pub(crate) const FRAME_WINDOW: u64 = 1024 * 1024;
/// Bytes read at the first frame when it lies past the head: the largest layer III frame
/// (1441 bytes) and the next header fit.
const FIRST_FRAME_READ: u64 = 4096;
/// Frames a walk reads before offering them to the shared table (about a window's worth at
/// 128 kbit/s).
const WALK_STEP: usize = 2048;

/// An ID3v2 tag, or a layer III frame header whose next header also validates when the head
/// holds it.
pub(crate) fn is_mp3(head: &[u8]) -> bool {
    if head.starts_with(b"ID3") {
        return true;
    }
    let Some(first) = FrameHeader::parse(head) else {
        return false;
    };
    match head.get(first.len as usize..) {
        Some(next) if next.len() >= 4 => FrameHeader::parse(next).is_some_and(|n| first.compatible(&n)),
        _ => true,
    }
}

/// One audio frame: where it is and how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FrameRef {
    offset: u64,
    len: u32,
    /// Bytes before this frame were skipped to find sync again.
    follows_damage: bool,
}

/// The frame table as far as it has been walked.
#[derive(Debug)]
struct Prefix {
    frames: Vec<FrameRef>,
    /// Where the walk continues.
    next: u64,
    /// The walk reached the end of the stream.
    done: bool,
}

#[derive(Debug)]
pub(crate) struct Mp3Index {
    info: TrackInfo,
    first: FrameHeader,
    /// Offset of the first audio frame (after the ID3v2 tag and the Xing frame).
    audio_start: u64,
    /// Set when the stream says it is constant bitrate (no Xing/VBRI header, or LAME's Info).
    cbr: Option<CbrLayout>,
    /// The frame table, walked lazily and only as far as a call needs. Never held across a
    /// read: a walk extends a copy of the table's end in steps of [`WALK_STEP`] frames and
    /// appends them if the table has not moved on meanwhile, so a seek into what is already
    /// walked never waits behind another thread's network reads.
    table: Mutex<Prefix>,
    /// Encoder delay from the LAME tag, in samples: what a decoder trims at the start.
    encoder_delay: Option<u64>,
}

impl Mp3Index {
    pub(crate) fn open(reader: &Reader<'_>) -> Result<Self, ParseError> {
        let len = reader.len();
        // Skip ID3v2 tags (there may be more than one).
        let mut pos = 0u64;
        for _ in 0..8 {
            let probe = reader.read_up_to(pos, 10, ID3)?;
            let Some(tag) = id3v2_len(&probe, pos)? else { break };
            let end = pos.saturating_add(tag);
            if end > len {
                return Err(ParseError::Truncated { element: ID3, offset: pos, needed: tag, end: len });
            }
            pos = end;
        }
        let head = reader.head();
        let buf = match usize::try_from(pos) {
            Ok(p) if p + 2048 <= head.len() => head.slice(p..),
            _ => reader.read_up_to(pos, FIRST_FRAME_READ, FRAME)?,
        };
        // Find the first frame whose successor also validates (or that ends the file).
        let mut found = None;
        for i in 0..buf.len() {
            let Some(h) = FrameHeader::parse(&buf[i..]) else { continue };
            let next_at = i + h.len as usize;
            let ok = match buf.get(next_at..next_at + 4) {
                Some(n) => FrameHeader::parse(n).is_some_and(|n| h.compatible(&n)),
                None => pos + next_at as u64 >= len || next_at + 4 > buf.len(),
            };
            if ok {
                found = Some((i, h));
                break;
            }
        }
        let Some((i, first)) = found else {
            return Err(ParseError::Missing {
                element: FRAME,
                searched_to: pos + buf.len() as u64,
                hint: "no two consecutive valid layer III frame headers",
            });
        };
        let first_offset = pos + i as u64;
        let frame = buf.get(i..(i + first.len as usize).min(buf.len())).unwrap_or(&[]);
        let vbr = parse_vbr_header(&first, frame, first_offset)?;
        let audio_start = if vbr.is_some() { first_offset + first.len as u64 } else { first_offset };
        let audio_at = if vbr.is_some() { i + first.len as usize } else { i };
        let claims_cbr = vbr.as_ref().is_none_or(|v| v.info);
        let encoder_delay = vbr.as_ref().and_then(|v| v.delay).map(|(delay, _)| delay as u64);
        let cbr = buf
            .get(audio_at..)
            .and_then(FrameHeader::parse)
            .filter(|h| claims_cbr && h.compatible(&first))
            .map(|h| CbrLayout::new(audio_start, h));
        let rate = first.sample_rate as u64;
        let frames = vbr.as_ref().and_then(|v| v.frames).filter(|&f| f > 0);
        let duration = match frames {
            Some(f) => MediaTime::from_ticks(f as i64 * first.samples as i64, rate),
            None => {
                let bytes = vbr.as_ref().and_then(|v| v.bytes).map(u64::from).filter(|&b| b > 0 && b <= len);
                let bits = bytes.unwrap_or(len.saturating_sub(audio_start)).saturating_mul(8);
                MediaTime::from_ticks(
                    i64::try_from(bits).unwrap_or(i64::MAX),
                    first.bitrate_kbps as u64 * 1000,
                )
            }
        };
        Ok(Mp3Index {
            info: TrackInfo {
                container: Container::Mp3,
                codec: Codec::Mp3,
                codec_config: None,
                timescale: rate,
                duration,
                video: None,
                audio: Some(AudioInfo {
                    sample_rate: first.sample_rate,
                    channels: if first.mono { 1 } else { 2 },
                }),
            },
            first,
            audio_start,
            cbr,
            table: Mutex::new(Prefix { frames: Vec::new(), next: audio_start, done: false }),
            encoder_delay,
        })
    }

    /// The last frame whose pts is not after `t` (0 before the start).
    fn frame_at(&self, t: MediaTime) -> u64 {
        let per_sec = 1_000_000_000 * i128::from(self.first.samples);
        let exact = i128::from(t.as_nanos().max(0)) * i128::from(self.first.sample_rate) / per_sec;
        let mut n = u64::try_from(exact).unwrap_or(u64::MAX);
        // Frame times are rounded to the nanosecond, so `t` may sit just before a rounded pts
        // or just after one: one step either way settles it.
        if self.pts(n.saturating_add(1)) <= t {
            n = n.saturating_add(1);
        }
        if n > 0 && self.pts(n) > t {
            n -= 1;
        }
        n
    }

    fn pts(&self, index: u64) -> MediaTime {
        let ticks = index.saturating_mul(u64::from(self.first.samples));
        MediaTime::from_ticks(i64::try_from(ticks).unwrap_or(i64::MAX), self.first.sample_rate as u64)
            .unwrap_or(MediaTime::MAX)
    }

    fn keyframe(&self, index: u64, f: FrameRef) -> Keyframe {
        Keyframe {
            pts: self.pts(index),
            offset: f.offset,
            size: f.len as u64,
            pos: ReadPos { offset: f.offset, sample: index },
        }
    }

    fn sample(&self, index: u64, f: FrameRef) -> Sample {
        Sample {
            pts: self.pts(index),
            dts: self.pts(index),
            duration: self.pts(1),
            offset: f.offset,
            size: f.len as u64,
            keyframe: true,
            follows_damage: f.follows_damage,
        }
    }
}

impl ContainerIndex for Mp3Index {
    fn info(&self) -> &TrackInfo {
        &self.info
    }

    fn encoder_delay(&self) -> Option<u64> {
        self.encoder_delay
    }

    fn keyframes(&self, src: &dyn RangeSource) -> Result<Vec<Keyframe>, ParseError> {
        let table = self.table_until(src, |_| false)?;
        if table.frames.is_empty() {
            return Err(ParseError::NoSamples);
        }
        Ok(table.frames.iter().zip(0u64..).map(|(f, i)| self.keyframe(i, *f)).collect())
    }

    fn seek(&self, src: &dyn RangeSource, t: MediaTime) -> Result<Keyframe, ParseError> {
        let n = self.frame_at(t);
        let walked = {
            let table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
            table.done || table.frames.len() as u64 > n
        };
        if !walked {
            if let Some(k) = self.seek_cbr(src, n)? {
                return Ok(k);
            }
        }
        let table = self.table_until(src, |f| f.len() as u64 > n)?;
        let index = usize::try_from(n).unwrap_or(usize::MAX).min(table.frames.len().saturating_sub(1));
        let frame = table.frames.get(index).ok_or(ParseError::NoSamples)?;
        Ok(self.keyframe(index as u64, *frame))
    }

    fn samples(&self, src: &dyn RangeSource, from: ReadPos, max: usize) -> Result<SampleBatch, ParseError> {
        // Frames from `from` on, plus one to tell whether there is a next batch.
        let covers = |f: &[FrameRef]| f.len() - f.partition_point(|x| x.offset < from.offset) > max;
        let walked = {
            let table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
            table.done || covers(&table.frames)
        };
        if !walked {
            if let Some(batch) = self.samples_local(src, from, max)? {
                return Ok(batch);
            }
        }
        let table = self.table_until(src, covers)?;
        let frames = &table.frames;
        let start = frames.partition_point(|f| f.offset < from.offset);
        let end = start.saturating_add(max).min(frames.len());
        let samples = (start..end).filter_map(|i| frames.get(i).map(|f| self.sample(i as u64, *f))).collect();
        let next = frames.get(end).map(|f| ReadPos { offset: f.offset, sample: end as u64 });
        Ok(SampleBatch { samples, next })
    }
}

#[cfg(test)]
mod tests;
