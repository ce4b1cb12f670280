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

use std::sync::{Mutex, MutexGuard, PoisonError};

use super::{
    AudioInfo, Codec, Container, ContainerIndex, Keyframe, ParseError, ReadPos, Reader, Sample, SampleBatch,
    TrackInfo, WindowReader,
};
use crate::source::RangeSource;
use crate::time::MediaTime;

const FRAME: &str = "MPEG audio frame";
const ID3: &str = "ID3v2 tag";
const XING: &str = "Xing header";

/// Window for walking frame headers.
pub(crate) const FRAME_WINDOW: u64 = 1024 * 1024;
/// Window read where a constant-bitrate layout predicts a frame: a few frames and the next
/// header.
const VERIFY_WINDOW: u64 = 4096;
/// Bytes read at the first frame when it lies past the head: the largest layer III frame
/// (1441 bytes) and the next header fit.
const FIRST_FRAME_READ: u64 = 4096;
/// How far past a damaged spot we look for the next frame before giving up.
const MAX_RESYNC: u64 = 64 * 1024;
/// Frames a walk reads before offering them to the shared table (about a window's worth at
/// 128 kbit/s).
const WALK_STEP: usize = 2048;

/// A decoded layer III frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    /// 1 for MPEG-1, 2 for MPEG-2, 25 for MPEG-2.5.
    pub(crate) version: u8,
    pub(crate) bitrate_kbps: u32,
    pub(crate) sample_rate: u32,
    pub(crate) padding: bool,
    pub(crate) mono: bool,
    pub(crate) len: u32,
    pub(crate) samples: u32,
}

impl FrameHeader {
    pub(crate) fn parse(b: &[u8]) -> Option<FrameHeader> {
        let h = u32::from_be_bytes([*b.first()?, *b.get(1)?, *b.get(2)?, *b.get(3)?]);
        if h >> 21 != 0x7FF {
            return None;
        }
        let version = match (h >> 19) & 3 {
            0 => 25,
            2 => 2,
            3 => 1,
            _ => return None,
        };
        if (h >> 17) & 3 != 1 {
            return None; // not layer III
        }
        let bitrate_index = ((h >> 12) & 15) as usize;
        let rate_index = ((h >> 10) & 3) as usize;
        if bitrate_index == 0 || bitrate_index == 15 || rate_index == 3 {
            return None;
        }
        const V1: [u32; 15] = [0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320];
        const V2: [u32; 15] = [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160];
        let (bitrate_kbps, sample_rate, samples, coeff) = match version {
            1 => (V1[bitrate_index], [44_100, 48_000, 32_000][rate_index], 1152, 144),
            2 => (V2[bitrate_index], [22_050, 24_000, 16_000][rate_index], 576, 72),
            _ => (V2[bitrate_index], [11_025, 12_000, 8_000][rate_index], 576, 72),
        };
        let padding = (h >> 9) & 1 == 1;
        let len = coeff * bitrate_kbps * 1000 / sample_rate + padding as u32;
        Some(FrameHeader {
            version,
            bitrate_kbps,
            sample_rate,
            padding,
            mono: (h >> 6) & 3 == 3,
            len,
            samples,
        })
    }

    /// Whether `other` can follow this frame in the same stream.
    fn compatible(&self, other: &FrameHeader) -> bool {
        self.version == other.version && self.sample_rate == other.sample_rate
    }

    /// Offset of a Xing/Info header inside the frame (after the side information).
    fn xing_offset(&self) -> usize {
        match (self.version == 1, self.mono) {
            (true, false) => 4 + 32,
            (true, true) | (false, false) => 4 + 17,
            (false, true) => 4 + 9,
        }
    }
}

/// What the first frame's Xing/Info or VBRI header says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct VbrHeader {
    pub(crate) frames: Option<u32>,
    pub(crate) bytes: Option<u32>,
    /// The Xing seek table (100 entries of 1/256 of the file), when present and increasing.
    pub(crate) toc: Option<[u8; 100]>,
    /// LAME encoder delay and padding, in samples.
    pub(crate) delay: Option<(u16, u16)>,
    /// The tag says "Info": LAME writes it instead of "Xing" for constant bitrate.
    pub(crate) info: bool,
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes([*b.get(at)?, *b.get(at + 1)?, *b.get(at + 2)?, *b.get(at + 3)?]))
}

/// Parses a Xing/Info or VBRI header in `frame` (the whole first frame), `offset` for errors.
pub(crate) fn parse_vbr_header(
    header: &FrameHeader,
    frame: &[u8],
    offset: u64,
) -> Result<Option<VbrHeader>, ParseError> {
    let at = header.xing_offset();
    let truncated = || ParseError::malformed(XING, offset, "shorter than its flags say");
    if let Some(tag) = frame.get(at..at + 4).filter(|t| t == b"Xing" || t == b"Info") {
        let flags = be32(frame, at + 4).ok_or_else(truncated)?;
        let mut p = at + 8;
        let mut vbr = VbrHeader { info: tag == b"Info", ..VbrHeader::default() };
        if flags & 1 != 0 {
            vbr.frames = Some(be32(frame, p).ok_or_else(truncated)?);
            p += 4;
        }
        if flags & 2 != 0 {
            vbr.bytes = Some(be32(frame, p).ok_or_else(truncated)?);
            p += 4;
        }
        if flags & 4 != 0 {
            let toc = frame.get(p..p + 100).ok_or_else(truncated)?;
            let mut table = [0u8; 100];
            table.copy_from_slice(toc);
            // A table that is not non-decreasing is nonsense: ignore it.
            if table.windows(2).all(|w| w[0] <= w[1]) {
                vbr.toc = Some(table);
            }
            p += 100;
        }
        if flags & 8 != 0 {
            p += 4;
        }
        // LAME tag: 9-byte encoder string, then delay/padding 12+12 bits at +21.
        if let Some(d) = frame.get(p + 21..p + 24).filter(|_| frame.get(p..p + 4) == Some(b"LAME")) {
            let delay = ((d[0] as u16) << 4) | (d[1] as u16 >> 4);
            let padding = (((d[1] & 0x0F) as u16) << 8) | d[2] as u16;
            vbr.delay = Some((delay, padding));
        }
        return Ok(Some(vbr));
    }
    if frame.get(36..40) == Some(b"VBRI") {
        let bytes = be32(frame, 36 + 10).ok_or_else(truncated)?;
        let frames = be32(frame, 36 + 14).ok_or_else(truncated)?;
        return Ok(Some(VbrHeader { frames: Some(frames), bytes: Some(bytes), ..VbrHeader::default() }));
    }
    Ok(None)
}

/// Size of the ID3v2 tag at the start of `b` (header, body, footer), if there is one.
fn id3v2_len(b: &[u8], offset: u64) -> Result<Option<u64>, ParseError> {
    if !b.starts_with(b"ID3") {
        return Ok(None);
    }
    let h = b.get(..10).ok_or_else(|| ParseError::Truncated {
        element: ID3,
        offset,
        needed: 10,
        end: offset + b.len() as u64,
    })?;
    if h[6..10].iter().any(|&x| x & 0x80 != 0) {
        return Err(ParseError::malformed(ID3, offset, "size is not syncsafe"));
    }
    let size = h[6..10].iter().fold(0u64, |a, &x| (a << 7) | x as u64);
    let footer = if h[5] & 0x10 != 0 { 10 } else { 0 };
    Ok(Some(10 + size + footer))
}

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

/// Where the frames of a constant-bitrate stream lie, if the encoder padded them: frame `n`
/// starts at `start + floor((n * per_frame + phase) / rate)` with `per_frame` = 144 (MPEG-1) or
/// 72 (MPEG-2/2.5) times the bitrate. LAME sets the padding bit so the running length tracks
/// that exact average, leaving the first frame unpadded: phase `rate - 1 - per_frame % rate`.
/// A plain running floor (phase 0) is tried as well.
#[derive(Debug, Clone, Copy)]
struct CbrLayout {
    start: u64,
    /// The first audio frame (the Info frame may have another bitrate).
    header: FrameHeader,
    per_frame: u128,
    rate: u128,
}

impl CbrLayout {
    fn new(start: u64, header: FrameHeader) -> CbrLayout {
        let coeff: u128 = if header.version == 1 { 144 } else { 72 };
        CbrLayout {
            start,
            header,
            per_frame: coeff * u128::from(header.bitrate_kbps) * 1000,
            rate: u128::from(header.sample_rate),
        }
    }

    fn phases(&self) -> [u128; 2] {
        [self.rate.saturating_sub(1 + self.per_frame % self.rate), 0]
    }

    /// Predicted start of frame `n`.
    fn offset(&self, n: u64, phase: u128) -> Option<u64> {
        let rel = u128::from(n).checked_mul(self.per_frame)?.checked_add(phase)? / self.rate;
        self.start.checked_add(u64::try_from(rel).ok()?)
    }

    /// How many predicted frames end within `len` bytes.
    fn frames_in(&self, len: u64, phase: u128) -> u64 {
        if len < self.start || self.per_frame == 0 {
            return 0;
        }
        // Frames 0..m fit iff offset(m) <= len iff m * per_frame + phase < (len - start + 1) * rate.
        let room = (u128::from(len - self.start) + 1) * self.rate;
        u64::try_from(room.saturating_sub(phase + 1) / self.per_frame).unwrap_or(u64::MAX)
    }
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

    /// The frame table, walked on until `enough` says it holds what the caller needs (or the
    /// stream ends).
    fn table_until(
        &self,
        src: &dyn RangeSource,
        enough: impl Fn(&[FrameRef]) -> bool,
    ) -> Result<MutexGuard<'_, Prefix>, ParseError> {
        let mut wr = WindowReader::new(src, FRAME_WINDOW);
        loop {
            let start = {
                let table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
                if table.done || enough(&table.frames) {
                    return Ok(table);
                }
                table.next
            };
            // Walk a step with the lock released.
            let mut pos = start;
            let mut step = Vec::new();
            let mut done = false;
            while step.len() < WALK_STEP {
                match self.next_frame(&mut wr, &mut pos)? {
                    Some(f) => step.push(f),
                    None => {
                        done = true;
                        break;
                    }
                }
            }
            let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
            // Another walk may have extended the table meanwhile: keep ours only if it
            // continues the table where it ends now (else theirs already holds these frames).
            if table.next == start && !table.done {
                table.frames.extend_from_slice(&step);
                table.next = pos;
                table.done = done;
            }
        }
    }

    /// The frame at `*pos`, or after the damaged bytes there; `None` at the end of the stream.
    /// Moves `*pos` past the frame. Every walk (full or local) goes through here, so they
    /// agree frame for frame.
    fn next_frame(&self, wr: &mut WindowReader<'_>, pos: &mut u64) -> Result<Option<FrameRef>, ParseError> {
        let len = wr.len();
        // Each round returns or moves `*pos` forward (resync finds a start past it).
        let mut resynced = false;
        loop {
            if pos.saturating_add(4) > len {
                return Ok(None);
            }
            let head = wr.read(*pos, 4, FRAME)?;
            if let Some(h) = FrameHeader::parse(&head).filter(|h| h.compatible(&self.first)) {
                let end = *pos + h.len as u64;
                if end > len {
                    return Ok(None); // a cut-off last frame
                }
                let frame = FrameRef { offset: *pos, len: h.len, follows_damage: resynced };
                *pos = end;
                return Ok(Some(frame));
            }
            // Lost sync (garbage, a tag at the end): find two consecutive frames again.
            match self.resync(wr, *pos + 1)? {
                Some(next) => {
                    *pos = next;
                    resynced = true;
                }
                None => return Ok(None),
            }
        }
    }

    fn resync(&self, wr: &mut WindowReader<'_>, from: u64) -> Result<Option<u64>, ParseError> {
        let buf = wr.read_up_to(from, MAX_RESYNC + 4096, FRAME)?;
        for i in 0..buf.len().min(MAX_RESYNC as usize) {
            let Some(h) = FrameHeader::parse(&buf[i..]).filter(|h| h.compatible(&self.first)) else {
                continue;
            };
            let next = i + h.len as usize;
            if buf.get(next..next + 4).and_then(FrameHeader::parse).is_some_and(|n| h.compatible(&n)) {
                return Ok(Some(from + i as u64));
            }
        }
        Ok(None)
    }

    /// Whether the predicted frame `k` (and `k + 1`, when it fits in the file or
    /// `need_successor`) has a header exactly where the layout puts it, of the predicted length.
    fn verify(
        &self,
        wr: &mut WindowReader<'_>,
        layout: &CbrLayout,
        k: u64,
        phase: u128,
        need_successor: bool,
    ) -> Result<bool, ParseError> {
        let count = layout.frames_in(wr.len(), phase);
        for i in [k, k.saturating_add(1)] {
            if i >= count {
                return Ok(i > k && !need_successor);
            }
            let (Some(start), Some(end)) = (layout.offset(i, phase), layout.offset(i + 1, phase)) else {
                return Ok(false);
            };
            let head = wr.read_up_to(start, 4, FRAME)?;
            match FrameHeader::parse(&head) {
                Some(h)
                    if h.compatible(&layout.header)
                        && h.bitrate_kbps == layout.header.bitrate_kbps
                        && u64::from(h.len) == end - start => {}
                _ => return Ok(false),
            }
        }
        Ok(true)
    }

    /// Constant bitrate: the frame for index `n` (the last frame if the stream is shorter)
    /// from one small read where the layout predicts it. `None` when the bytes there do not
    /// confirm the layout; the caller walks instead.
    fn seek_cbr(&self, src: &dyn RangeSource, n: u64) -> Result<Option<Keyframe>, ParseError> {
        let Some(layout) = self.cbr else { return Ok(None) };
        let mut wr = WindowReader::new(src, VERIFY_WINDOW);
        for phase in layout.phases() {
            let count = layout.frames_in(src.len(), phase);
            if count < 2 {
                continue;
            }
            // Near the end, anchor two frames back so the successor check has bytes to see,
            // then walk (a few frames) to the real end of the stream.
            let anchor = n.min(count - 2);
            let Some(mut pos) = layout.offset(anchor, phase) else { continue };
            if !self.verify(&mut wr, &layout, anchor, phase, true)? {
                continue;
            }
            let mut found = None;
            let mut index = anchor;
            while let Some(f) = self.next_frame(&mut wr, &mut pos)? {
                found = Some(self.keyframe(index, f));
                if index >= n {
                    break;
                }
                index += 1;
            }
            return Ok(found);
        }
        Ok(None)
    }

    /// Samples by walking forward from `from` without the table, when `from` is the start or a
    /// constant-bitrate frame whose index (`from.sample`) the layout confirms.
    fn samples_local(
        &self,
        src: &dyn RangeSource,
        from: ReadPos,
        max: usize,
    ) -> Result<Option<SampleBatch>, ParseError> {
        // Enough window for the batch and the next header, within the usual bounds.
        let window = (max as u64)
            .saturating_add(2)
            .saturating_mul(u64::from(self.first.len) + 1)
            .clamp(VERIFY_WINDOW, FRAME_WINDOW);
        let mut wr = WindowReader::new(src, window);
        let (mut index, mut pos) = if from.offset <= self.audio_start {
            (0, self.audio_start)
        } else {
            let Some(layout) = self.cbr else { return Ok(None) };
            let mut confirmed = false;
            for phase in layout.phases() {
                if layout.offset(from.sample, phase) == Some(from.offset)
                    && self.verify(&mut wr, &layout, from.sample, phase, false)?
                {
                    confirmed = true;
                    break;
                }
            }
            if !confirmed {
                return Ok(None);
            }
            (from.sample, from.offset)
        };
        let mut samples = Vec::new();
        let mut next = None;
        while let Some(f) = self.next_frame(&mut wr, &mut pos)? {
            if samples.len() >= max {
                next = Some(ReadPos { offset: f.offset, sample: index });
                break;
            }
            samples.push(self.sample(index, f));
            index = index.saturating_add(1);
        }
        Ok(Some(SampleBatch { samples, next }))
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
mod tests {
    use super::*;
    use crate::index::TrackIndex;
    use bytes::Bytes;
    use std::sync::Arc;

    /// A 128 kbps 44.1 kHz MPEG-1 stereo frame header (417 bytes, 418 padded).
    fn header(padding: bool) -> [u8; 4] {
        [0xFF, 0xFB, 0x90 | if padding { 2 } else { 0 }, 0x00]
    }

    fn frame(padding: bool) -> Vec<u8> {
        let mut f = header(padding).to_vec();
        f.resize(if padding { 418 } else { 417 }, 0x55);
        f
    }

    fn xing_frame(frames: u32) -> Vec<u8> {
        let mut f = frame(false);
        f[36..40].copy_from_slice(b"Xing");
        f[40..44].copy_from_slice(&7u32.to_be_bytes());
        f[44..48].copy_from_slice(&frames.to_be_bytes());
        f[48..52].copy_from_slice(&1000u32.to_be_bytes());
        for i in 0..100 {
            f[52 + i] = (i * 2) as u8;
        }
        f
    }

    fn id3(size: u32) -> Vec<u8> {
        let mut t = b"ID3\x04\x00\x00".to_vec();
        t.extend([
            (size >> 21) as u8 & 0x7F,
            (size >> 14) as u8 & 0x7F,
            (size >> 7) as u8 & 0x7F,
            size as u8 & 0x7F,
        ]);
        t.resize(10 + size as usize, 0);
        t
    }

    /// A source whose reads past `gate_at` wait until the gate opens.
    struct Gated {
        data: Bytes,
        gate_at: u64,
        open: Mutex<bool>,
        opened: std::sync::Condvar,
        waiting: std::sync::atomic::AtomicBool,
    }

    impl Gated {
        fn release(&self) {
            *self.open.lock().unwrap_or_else(PoisonError::into_inner) = true;
            self.opened.notify_all();
        }
    }

    impl RangeSource for Gated {
        fn len(&self) -> u64 {
            self.data.len() as u64
        }
        fn read_range(&self, start: u64, len: u64) -> Result<Bytes, crate::source::SourceError> {
            if start.saturating_add(len) > self.gate_at {
                self.waiting.store(true, std::sync::atomic::Ordering::SeqCst);
                let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
                while !*open {
                    open = self.opened.wait(open).unwrap_or_else(PoisonError::into_inner);
                }
            }
            self.data.read_range(start, len)
        }
    }

    #[test]
    fn a_seek_into_walked_frames_does_not_wait_behind_another_walk() {
        // A VBR (Xing) stream of 6000 frames, 2.5 MB: no constant-bitrate shortcut, so seeks
        // use the frame table.
        let mut data = xing_frame(6000);
        for i in 0..6000 {
            data.extend(frame(i % 3 == 0));
        }
        let src = Arc::new(Gated {
            data: Bytes::from(data),
            gate_at: 2 * FRAME_WINDOW,
            open: Mutex::new(false),
            opened: std::sync::Condvar::new(),
            waiting: std::sync::atomic::AtomicBool::new(false),
        });
        let index = Arc::new(TrackIndex::open("t", &*src).expect("opens"));
        // One thread walks the whole stream and stalls on a read past the first window.
        let walker = {
            let (index, src) = (index.clone(), src.clone());
            std::thread::spawn(move || index.keyframes(&*src).map(|k| k.len()))
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !src.waiting.load(std::sync::atomic::Ordering::SeqCst) {
            assert!(std::time::Instant::now() < deadline, "the walk never reached the gate");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // Meanwhile a seek to 1 s (frame 38, inside the first window) must not wait for it.
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let (index, src) = (index.clone(), src.clone());
            std::thread::spawn(move || {
                let _ = tx.send(index.seek(&*src, MediaTime::from_secs(1)).map(|k| k.pos.sample));
            });
        }
        let seek = rx.recv_timeout(std::time::Duration::from_secs(5));
        src.release();
        let frames = walker.join().expect("walker").expect("keyframes");
        assert_eq!(frames, 6000);
        let sample = seek.expect("the seek waited behind the walk's stalled read").expect("seek");
        assert_eq!(sample, 38);
    }

    #[test]
    fn parses_headers() {
        let h = FrameHeader::parse(&header(true)).expect("valid");
        assert_eq!((h.version, h.bitrate_kbps, h.sample_rate, h.len, h.samples), (1, 128, 44_100, 418, 1152));
        // MPEG-2 layer III 64 kbps 22.05 kHz.
        let h = FrameHeader::parse(&[0xFF, 0xF3, 0x80, 0xC0]).expect("valid");
        assert_eq!((h.version, h.bitrate_kbps, h.sample_rate, h.samples, h.mono), (2, 64, 22_050, 576, true));
        assert_eq!(h.len, 72 * 64_000 / 22_050);
        assert!(FrameHeader::parse(&[0xFF, 0xFB, 0xF0, 0]).is_none(), "bitrate 15");
        assert!(FrameHeader::parse(&[0xFF, 0xFB, 0x0C, 0]).is_none(), "free format / bad rate");
        assert!(FrameHeader::parse(&[0xFF, 0xFD, 0x90, 0]).is_none(), "layer II");
        assert!(FrameHeader::parse(&[0xFF]).is_none());
    }

    #[test]
    fn detects() {
        let mut two = frame(false);
        two.extend(frame(true));
        assert!(is_mp3(&two));
        assert!(is_mp3(b"ID3\x04"));
        let mut bad = frame(false);
        bad.extend([0u8; 8]);
        assert!(!is_mp3(&bad));
        assert!(!is_mp3(b"hello"));
    }

    #[test]
    fn xing_file_times_and_seek() {
        let mut f = id3(100);
        f.extend(xing_frame(20));
        let audio_start = f.len() as u64;
        for i in 0..20 {
            f.extend(frame(i % 3 == 1));
        }
        f.extend(b"TAG");
        f.resize(f.len() + 125, 0);
        let src = Bytes::from(f);
        let index = TrackIndex::open("t", &src).expect("opens");
        assert_eq!(index.info().duration, MediaTime::from_ticks(20 * 1152, 44_100));
        assert_eq!(index.open_cost().reads, 1, "the head holds the first frame");
        let keyframes = index.keyframes(&src).expect("walks");
        assert_eq!(keyframes.len(), 20);
        assert_eq!(keyframes[0].offset, audio_start);
        assert_eq!(keyframes[3].pts, MediaTime::from_ticks(3 * 1152, 44_100).expect("fits"));
        let k = index.seek(&src, MediaTime::from_millis(100)).expect("seek");
        assert_eq!(k, keyframes[3]);
        let k = index.seek(&src, MediaTime::from_secs(99)).expect("seek");
        assert_eq!(k, keyframes[19]);
        let batch = index.samples(&src, keyframes[18].pos, 5).expect("samples");
        assert_eq!(batch.samples.len(), 2);
        assert_eq!(batch.next, None);
        assert_eq!(batch.samples[1].size, keyframes[19].size);
    }

    #[test]
    fn vbr_header_fields_and_garbage_between_frames() {
        let x = xing_frame(5);
        let h = FrameHeader::parse(&x).expect("valid");
        let vbr = parse_vbr_header(&h, &x, 0).expect("parses").expect("xing");
        assert_eq!(vbr.frames, Some(5));
        assert_eq!(vbr.bytes, Some(1000));
        assert!(vbr.toc.is_some());
        // Cut right after the flags: typed error.
        let err = parse_vbr_header(&h, &x[..46], 7).expect_err("short");
        assert!(matches!(err, ParseError::Malformed { element: XING, offset: 7, .. }));

        let mut f = Vec::new();
        for _ in 0..4 {
            f.extend(frame(false));
        }
        f.extend([0xFFu8, 0xFB, 0x00, 0x12, 0x34]);
        for _ in 0..4 {
            f.extend(frame(false));
        }
        let src = Bytes::from(f);
        let index = TrackIndex::open("t", &src).expect("opens");
        let keyframes = index.keyframes(&src).expect("walks");
        assert_eq!(keyframes.len(), 8);
        assert_eq!(keyframes[4].offset, 4 * 417 + 5);
        // The frame found after the garbage is marked, and only that one.
        let batch = index.samples(&src, keyframes[0].pos, 20).expect("samples");
        let marked: Vec<usize> =
            batch.samples.iter().enumerate().filter(|(_, s)| s.follows_damage).map(|(i, _)| i).collect();
        assert_eq!(marked, vec![4]);
        // Without Xing: CBR estimate.
        let d = index.info().duration.expect("estimate").as_millis();
        assert!((d - (8 * 417 + 5) * 8 / 128).abs() <= 1, "{d}");
    }

    #[test]
    fn malformed_inputs() {
        // ID3 size past EOF.
        let mut f = id3(0);
        f[6..10].copy_from_slice(&[0x7F, 0x7F, 0x7F, 0x7F]);
        let src = Bytes::from(f);
        let err = TrackIndex::open("t", &src).expect_err("past EOF").source;
        assert!(matches!(err, ParseError::Truncated { element: ID3, .. }), "{err}");
        // ID3 followed by garbage.
        let mut f = id3(20);
        f.extend([0x12u8; 3000]);
        let src = Bytes::from(f);
        let err = TrackIndex::open("t", &src).expect_err("no frames").source;
        assert!(matches!(err, ParseError::Missing { element: FRAME, .. }), "{err}");
        // Non-syncsafe size.
        let mut f = id3(0);
        f[9] = 0x80;
        let err = TrackIndex::open("t", &Bytes::from(f)).expect_err("syncsafe").source;
        assert!(matches!(err, ParseError::Malformed { element: ID3, .. }), "{err}");
        // Truncated frames and random bytes never panic.
        let mut f = xing_frame(1_000_000);
        f.extend(frame(false));
        f.extend(&frame(false)[..100]);
        let src = Bytes::from(f);
        let index = TrackIndex::open("t", &src).expect("opens");
        assert_eq!(index.keyframes(&src).expect("walks").len(), 1);
        let _ = index.seek(&src, MediaTime::from_secs(1000));
        let mut seed = 12345u64;
        for _ in 0..200 {
            let mut f = vec![0xFFu8, 0xFB, 0x90, 0x00];
            for _ in 0..600 {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                f.push((seed >> 56) as u8);
            }
            let src = Bytes::from(f);
            if let Ok(index) = TrackIndex::open("t", &src) {
                let _ = index.keyframes(&src);
                let _ = index.seek(&src, MediaTime::from_millis(5));
            }
        }
    }

    #[test]
    fn lame_delay_is_read() {
        let mut x = xing_frame(5);
        // Flags 7: frames, bytes, TOC; LAME tag at 36 + 8 + 4 + 4 + 100 = 152.
        x[152..156].copy_from_slice(b"LAME");
        x[152 + 21..152 + 24].copy_from_slice(&[0x24, 0x00, 0x10]);
        let src = Bytes::from(x.clone());
        let h = FrameHeader::parse(&x).expect("valid");
        let vbr = parse_vbr_header(&h, &x, 0).expect("ok").expect("xing");
        assert_eq!(vbr.delay, Some((576, 16)));
        let index = Mp3Index::open(&Reader::new(&src, src.clone())).expect("opens");
        assert_eq!(index.info().duration, MediaTime::from_ticks(5 * 1152, 44_100));
    }

    /// A 128 kbps 44.1 kHz stream of `frames` frames padded as `phase` says (see
    /// [`CbrLayout`]), optionally with `garbage` bytes before frame `at`, and an ID3v1 tag.
    fn cbr_stream(frames: u64, phase: u64, garbage: Option<(u64, usize)>) -> Bytes {
        let off = |n: u64| (n * 144 * 128_000 + phase) / 44_100;
        let mut f = Vec::new();
        for n in 0..frames {
            if let Some((_, junk)) = garbage.filter(|g| g.0 == n) {
                f.resize(f.len() + junk, 0x11);
            }
            let len = off(n + 1) - off(n);
            let mut fr = frame(len == 418);
            fr[4..12].copy_from_slice(&n.to_be_bytes());
            assert_eq!(fr.len() as u64, len);
            f.extend(fr);
        }
        f.extend(b"TAG");
        f.resize(f.len() + 125, 0);
        Bytes::from(f)
    }

    /// Seeks on fresh indexes through a counting source; returns the keyframes and what each
    /// seek cost.
    fn seeks(src: &Bytes, targets: &[MediaTime]) -> Vec<(Keyframe, crate::source::ReadCost)> {
        targets
            .iter()
            .map(|&t| {
                let index = TrackIndex::open("t", src).expect("opens");
                let counted = crate::source::CountingSource::new(src);
                let k = index.seek(&counted, t).expect("seek");
                (k, counted.cost())
            })
            .collect()
    }

    fn expected(keyframes: &[Keyframe], t: MediaTime) -> Keyframe {
        *keyframes.iter().rev().find(|k| k.pts <= t).unwrap_or(&keyframes[0])
    }

    #[test]
    fn cbr_seek_reads_one_window_and_matches_the_walk() {
        // LAME's phase for 128 kbps at 44.1 kHz, then a plain running floor.
        for phase in [44_100 - 1 - (144 * 128_000) % 44_100, 0] {
            let src = cbr_stream(3000, phase, None);
            let keyframes = TrackIndex::open("t", &src).expect("opens").keyframes(&src).expect("walks");
            assert_eq!(keyframes.len(), 3000);
            let last = keyframes[2999].pts;
            let targets: Vec<MediaTime> = [0, 1, 25_000, 40_000, 78_000]
                .iter()
                .map(|&ms| MediaTime::from_millis(ms))
                .chain([last, last.saturating_add(MediaTime::from_secs(9)), MediaTime::MAX])
                .chain([MediaTime::from_millis(-3)])
                .collect();
            for ((k, cost), t) in seeks(&src, &targets).into_iter().zip(&targets) {
                assert_eq!(k, expected(&keyframes, *t), "phase {phase}, seek({t})");
                assert!(cost.reads <= 2 && cost.bytes <= 2 * VERIFY_WINDOW, "phase {phase} {t}: {cost:?}");
            }
            // Frame times are rounded to the nanosecond: just before one is the frame before.
            let index = TrackIndex::open("t", &src).expect("opens");
            let just_before = keyframes[500].pts.saturating_sub(MediaTime::from_nanos(1));
            assert_eq!(index.seek(&src, just_before).expect("seek"), keyframes[499]);
            // Batches from a seek point need no table either, and agree with it.
            let index = TrackIndex::open("t", &src).expect("opens");
            let counted = crate::source::CountingSource::new(&src);
            let k = index.seek(&counted, MediaTime::from_secs(60)).expect("seek");
            let mut pos = Some(k.pos);
            let mut got = Vec::new();
            while let Some(at) = pos {
                let batch = index.samples(&counted, at, 100).expect("samples");
                got.extend(batch.samples.iter().map(|s| (s.pts, s.offset, s.size)));
                pos = batch.next;
            }
            let want: Vec<_> = keyframes
                .iter()
                .skip_while(|x| x.offset < k.offset)
                .map(|x| (x.pts, x.offset, x.size))
                .collect();
            assert_eq!(got, want);
            assert!(counted.cost().bytes < src.len() as u64 / 2, "{:?}", counted.cost());
        }
    }

    #[test]
    fn cbr_layout_that_does_not_hold_falls_back_to_the_walk() {
        let phase = 44_100 - 1 - (144 * 128_000) % 44_100;
        // Garbage mid-file shifts every later frame off the layout.
        let src = cbr_stream(2000, phase, Some((1000, 5)));
        let keyframes = TrackIndex::open("t", &src).expect("opens").keyframes(&src).expect("walks");
        assert_eq!(keyframes.len(), 2000);
        let targets = [MediaTime::from_secs(10), MediaTime::from_secs(40), MediaTime::from_secs(999)];
        for ((k, cost), t) in seeks(&src, &targets).into_iter().zip(&targets) {
            assert_eq!(k, expected(&keyframes, *t), "seek({t})");
            if *t > MediaTime::from_secs(30) {
                assert!(cost.bytes >= src.len() as u64 / 2, "walked: {cost:?}");
            }
        }
        // Samples from a position the layout does not confirm come from the table.
        let index = TrackIndex::open("t", &src).expect("opens");
        let batch = index.samples(&src, keyframes[1500].pos, 3).expect("samples");
        assert_eq!(batch.samples[0].pts, keyframes[1500].pts);
        assert_eq!(batch.next, Some(keyframes[1503].pos));
        // A position with a wrong frame number is not trusted either.
        let index = TrackIndex::open("t", &src).expect("opens");
        let lie = ReadPos { offset: keyframes[10].offset, sample: 11 };
        let batch = index.samples(&src, lie, 1).expect("samples");
        assert_eq!(batch.samples[0].pts, keyframes[10].pts);
    }
}
