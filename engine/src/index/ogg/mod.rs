//! Ogg Vorbis and Ogg Opus: pages, packets and granule positions, read by byte ranges.
//!
//! Hand-written because the `ogg` crate's reader and symphonia's Ogg demuxer read sequentially
//! through `Read + Seek`: they neither expose the byte range of a page or packet nor bound how
//! much a seek reads. Over a network we need both: a keyframe is "this page, these bytes", and a
//! seek must cost a handful of range reads.
//!
//! # How time maps to bytes
//! An Ogg page carries a granule position: the PCM sample count (at 48 kHz for Opus) at the end
//! of the last packet completed on that page. Pages are ordered by granule, so a seek is a
//! bisection over byte offsets: read a window at the midpoint, find the next page of our stream,
//! compare its granule with the target. Once the interval is one window wide, a short forward
//! walk computes exact packet times.
//!
//! Packet times follow what FFmpeg (our oracle, `ffprobe`) reports: the packet after a page with
//! a granule starts at that granule; later packets on the next page start where the previous one
//! ended (durations from the Opus TOC byte, RFC 6716 section 3.1, or from the Vorbis block sizes:
//! `previous/4 + current/4`). The first page of a walk has no predecessor, so its first packet
//! starts at its granule minus the durations of the packets completed on it (for the stream's
//! first audio page this is exactly FFmpeg's rule; a Vorbis encoder delay shows up as a negative
//! first time). Opus times are shifted by the pre-skip, so the first Opus packet is at
//! `-pre_skip / 48000`, as ffprobe reports. Mid-stream walks start one window before the page
//! they need so that page gets exact times.
//!
//! # Seek points
//! Audio has no keyframes; ours are the pages on which at least one packet starts: the time of
//! the first packet starting there, the page's byte range, and `ReadPos { offset: page,
//! sample: 0 }`. In a [`ReadPos`] for Ogg, `sample` counts packets starting on that page to skip,
//! so a batch can end in the middle of a page. Seeking returns the page at or before `t`; an
//! Opus decoder wants about 80 ms of pre-roll before `t`, which a caller gets by seeking to
//! `t - 80 ms` (decoders clip to the segment).
//!
//! # Codec configuration
//! Opus: the `OpusHead` packet. Vorbis: the identification, comment and setup headers
//! Xiph-laced: `0x02`, the sizes of the first two packets in Xiph lacing (runs of 255 plus a
//! remainder), then the three packets concatenated: Matroska's CodecPrivate and what
//! GStreamer turns into `streamheader`.
//!
//! Only the first logical stream (the lowest serial among the beginning-of-stream pages that
//! holds Vorbis or Opus) is indexed; pages of other streams are skipped. Audio packets must start
//! on a fresh page after the headers, as the Vorbis and Opus mappings require.

mod codec;
mod pages;
mod walk;

use bytes::{Bytes, BytesMut};

use self::codec::{parse_vorbis_modes, Kind, VorbisModes};
use self::pages::{find_capture, find_page, last_granule, parse_page, read_page, Page};
use self::walk::Packet;
use super::{
    AudioInfo, Codec, Container, ContainerIndex, Keyframe, ParseError, ReadPos, Reader, Sample, SampleBatch,
    TrackInfo, WindowReader, MAX_METADATA_READ,
};
use crate::source::RangeSource;
use crate::time::MediaTime;

const PAGE: &str = "Ogg page";
const OPUS_HEAD: &str = "OpusHead";
const VORBIS_ID: &str = "Vorbis identification header";

/// Fixed part of a page header.
const HEADER_LEN: usize = 27;
/// The largest possible page: header, 255 lacing values of 255.
const MAX_PAGE: u64 = 27 + 255 + 255 * 255;
/// Window read at each bisection step, and how far back a mid-stream walk starts.
const SEEK_WINDOW: u64 = 64 * 1024;
/// Probes placed by interpolation before a seek falls back to halving.
const MAX_GUESSES: u32 = 4;
/// How much of the end is read to find the last granule: a small read that holds the last page
/// of a typical stream (pages of a few KiB), then one that holds the largest possible page.
const TAIL_READS: [u64; 2] = [16 * 1024, MAX_PAGE + 4];
/// How far into the file the header packets may reach.
const MAX_HEADER_BYTES: u64 = 16 * 1024 * 1024;
/// Read granularity while collecting header pages past the head.
const HEADER_CHUNK: u64 = 8 * 1024;
/// Bytes of CRC a search for pages may compute per byte it searches: a window full of fake
/// `OggS` capture patterns, each claiming a 64 KiB page, would otherwise cost a CRC of up to
/// 64 KiB per four bytes of window.
const CRC_WORK_PER_BYTE: u64 = 4;
/// What a page search spends (in CRC bytes) beyond [`CRC_WORK_PER_BYTE`] before giving up.
const CRC_WORK_SLACK: u64 = 4 * MAX_PAGE;
/// The element named when a page search runs out of CRC budget.
const PAGE_SEARCH: &str = "Ogg page search";

/// The Ogg index of one logical stream.
#[derive(Debug)]
pub(crate) struct OggIndex {
    info: TrackInfo,
    kind: Kind,
    serial: u32,
    /// Offset of the first page after the header packets.
    data_start: u64,
    /// Opus pre-skip (0 for Vorbis): subtracted from granule times.
    pre_skip: i64,
    rate: u64,
    vorbis: Option<VorbisModes>,
}

/// Reads the header pages at the start of the file: through a window reader that starts with
/// the already-read head, so each page costs its own bytes (never a copy of the whole prefix),
/// and never past [`MAX_HEADER_BYTES`].
struct HeaderPages<'a> {
    wr: WindowReader<'a>,
}

impl HeaderPages<'_> {
    fn page(&mut self, offset: u64) -> Result<Page, ParseError> {
        if offset >= MAX_HEADER_BYTES {
            return Err(ParseError::TooLarge {
                element: PAGE,
                offset,
                size: offset,
                limit: MAX_HEADER_BYTES,
            });
        }
        let mut unlimited = u64::MAX;
        read_page(&mut self.wr, offset, &mut unlimited)
    }
}

impl OggIndex {
    pub(crate) fn open(reader: &Reader<'_>) -> Result<Self, ParseError> {
        let mut prefix =
            HeaderPages { wr: WindowReader::with_buffer(reader.src(), HEADER_CHUNK, reader.head().clone()) };
        // Beginning-of-stream pages come first; pick the lowest serial we can decode.
        let mut offset = 0u64;
        let mut chosen: Option<(u32, Kind, Bytes)> = None;
        let mut first_non_bos = None;
        for _ in 0..256 {
            if offset >= reader.len() {
                break;
            }
            let page = prefix.page(offset)?;
            if !page.bos() {
                first_non_bos = Some(offset);
                break;
            }
            let runs = page.runs();
            let packet = runs.first().map(|r| page.run_bytes(*r)).unwrap_or(&[]);
            let kind = if packet.starts_with(b"OpusHead") {
                Some(Kind::Opus)
            } else if packet.starts_with(b"\x01vorbis") {
                Some(Kind::Vorbis)
            } else {
                None
            };
            if let Some(kind) = kind {
                if chosen.as_ref().is_none_or(|(s, _, _)| page.serial < *s) {
                    chosen = Some((page.serial, kind, Bytes::copy_from_slice(packet)));
                }
            }
            offset = page.end();
        }
        let Some((serial, kind, first)) = chosen else {
            return Err(ParseError::Unsupported {
                element: PAGE,
                offset: 0,
                what: "codec: no Vorbis or Opus stream starts here".into(),
            });
        };
        let header_count = match kind {
            Kind::Opus => 2,
            Kind::Vorbis => 3,
        };
        // Collect the header packets of our stream (the first is on its BOS page).
        let mut headers: Vec<Vec<u8>> = vec![first.to_vec()];
        let mut partial: Option<Vec<u8>> = None;
        let mut pos = first_non_bos.unwrap_or(offset);
        let data_start;
        loop {
            if headers.len() >= header_count {
                data_start = pos;
                break;
            }
            let page = prefix.page(pos)?;
            pos = page.end();
            if page.serial != serial {
                continue;
            }
            for (i, run) in page.runs().into_iter().enumerate() {
                let bytes = page.run_bytes(run);
                let mut packet = match partial.take() {
                    Some(p) if i == 0 && page.continued() => p,
                    _ => Vec::new(),
                };
                if packet.len() as u64 + bytes.len() as u64 > MAX_HEADER_BYTES {
                    return Err(ParseError::TooLarge {
                        element: PAGE,
                        offset: page.offset,
                        size: packet.len() as u64 + bytes.len() as u64,
                        limit: MAX_HEADER_BYTES,
                    });
                }
                packet.extend_from_slice(bytes);
                if run.complete {
                    if headers.len() < header_count {
                        headers.push(packet);
                    }
                } else {
                    partial = Some(packet);
                }
            }
        }
        let len = reader.len();
        let (rate, channels, pre_skip, vorbis, codec, codec_config) = match kind {
            Kind::Opus => {
                let head = &headers[0];
                if head.len() < 19 {
                    return Err(ParseError::malformed(
                        OPUS_HEAD,
                        0,
                        format!("{} bytes, needs 19", head.len()),
                    ));
                }
                if head[8] >> 4 != 0 {
                    return Err(ParseError::Unsupported {
                        element: OPUS_HEAD,
                        offset: 0,
                        what: format!("version {}", head[8]),
                    });
                }
                let channels = head[9] as u32;
                if channels == 0 {
                    return Err(ParseError::malformed(OPUS_HEAD, 0, "zero channels"));
                }
                let pre_skip = u16::from_le_bytes([head[10], head[11]]) as i64;
                (48_000u64, channels, pre_skip, None, Codec::Opus, Bytes::copy_from_slice(head))
            }
            Kind::Vorbis => {
                let id = &headers[0];
                if id.len() < 30 {
                    return Err(ParseError::malformed(VORBIS_ID, 0, format!("{} bytes, needs 30", id.len())));
                }
                let channels = id[11] as u32;
                let rate = u32::from_le_bytes([id[12], id[13], id[14], id[15]]) as u64;
                let (e0, e1) = (id[28] & 15, id[28] >> 4);
                if channels == 0 || rate == 0 || !(6..=13).contains(&e0) || !(6..=13).contains(&e1) || e0 > e1
                {
                    return Err(ParseError::malformed(
                        VORBIS_ID,
                        0,
                        format!("channels {channels}, rate {rate}, block size exponents {e0}/{e1}"),
                    ));
                }
                let setup_at = data_start;
                let modes = parse_vorbis_modes(&headers[2], [1 << e0, 1 << e1], setup_at)?;
                let mut config = vec![2u8];
                for h in &headers[..2] {
                    config.extend(std::iter::repeat_n(255u8, h.len() / 255));
                    config.push((h.len() % 255) as u8);
                }
                for h in &headers {
                    config.extend_from_slice(h);
                }
                (rate, channels, 0, Some(modes), Codec::Vorbis, Bytes::from(config))
            }
        };
        let mut index = OggIndex {
            info: TrackInfo {
                container: Container::Ogg,
                codec,
                codec_config: Some(codec_config),
                timescale: rate,
                duration: None,
                video: None,
                audio: Some(AudioInfo { sample_rate: rate as u32, channels }),
            },
            kind,
            serial,
            data_start,
            pre_skip,
            rate,
            vorbis,
        };
        // The last granule of our stream gives the duration.
        for tail_read in TAIL_READS {
            let tail_start = len.saturating_sub(tail_read).max(data_start);
            let tail = reader.read_up_to(tail_start, len - tail_start.min(len), PAGE)?;
            if let Some(granule) = last_granule(&tail, tail_start, serial) {
                index.info.duration = MediaTime::from_ticks(granule.saturating_sub(pre_skip), rate);
                break;
            }
            if tail_start == data_start {
                break;
            }
        }
        Ok(index)
    }
}

impl ContainerIndex for OggIndex {
    fn info(&self) -> &TrackInfo {
        &self.info
    }

    fn keyframes(&self, src: &dyn RangeSource) -> Result<Vec<Keyframe>, ParseError> {
        let mut walker = self.walker(src, self.data_start);
        let mut keyframes: Vec<Keyframe> = Vec::new();
        while let Some(p) = walker.next_packet()? {
            if p.index_on_page == 0 && keyframes.last().is_none_or(|k| k.offset != p.page) {
                keyframes.push(Self::keyframe(&p, self.time(p.start)));
            }
        }
        if keyframes.is_empty() {
            return Err(ParseError::NoSamples);
        }
        Ok(keyframes)
    }

    fn seek(&self, src: &dyn RangeSource, t: MediaTime) -> Result<Keyframe, ParseError> {
        let target = t.to_ticks(self.rate).unwrap_or(i64::MAX).saturating_add(self.pre_skip);
        let len = src.len();
        let (mut lo, mut hi) = (self.data_start, len);
        // Granules known at lo and hi: each probe lands where the target's granule would be at
        // a steady bitrate, a little early so the window holds a page before it. On a far link
        // each probe is a round trip: audio's near-constant rate makes this one or two probes
        // where halving takes log2(file / window), and a start at zero none beyond the
        // (cached) first window. A probe that would not shrink the range halves it instead,
        // so this ends even if granules go backwards.
        let mut lo_granule = self.pre_skip;
        let mut hi_granule =
            self.info.duration.and_then(|d| d.to_ticks(self.rate)).map(|g| g + self.pre_skip);
        let mut guesses = 0;
        while hi.saturating_sub(lo) > SEEK_WINDOW {
            let halfway = lo + (hi - lo) / 2;
            let guess = hi_granule.filter(|&g| g > lo_granule).map(|hi_g| {
                let fraction = (target.saturating_sub(lo_granule)).max(0) as f64 / (hi_g - lo_granule) as f64;
                let at = lo as f64 + (hi - lo) as f64 * fraction.min(1.0);
                (at as u64).saturating_sub(SEEK_WINDOW / 4).clamp(lo, hi - SEEK_WINDOW)
            });
            let mid = guess.unwrap_or(halfway);
            let buf = src.read_range(mid, SEEK_WINDOW.min(len - mid))?;
            // The last page ending before the target and the first ending at or after it: both
            // in one window and the search is over.
            let (mut below, mut above) = (None, None);
            let mut from = 0usize;
            while let Some(page) = find_page(&buf, from, mid, Some(self.serial)) {
                if page.granule != -1 {
                    if page.granule < target {
                        below = Some((page.offset, page.granule));
                    } else {
                        above = Some((page.offset, page.granule));
                        break;
                    }
                }
                from = (page.offset - mid) as usize + page.bytes.len();
            }
            let (lo_before, hi_before) = (lo, hi);
            if let Some((offset, granule)) = below {
                (lo, lo_granule) = (offset, granule);
            }
            match (below, above) {
                (Some(_), Some((offset, granule))) => (hi, hi_granule) = (offset.max(lo), Some(granule)),
                (None, Some((_, granule))) => (hi, hi_granule) = (mid, Some(granule)),
                (None, None) => hi = mid,
                (Some(_), None) => {}
            }
            guesses += 1;
            if (lo, hi) == (lo_before, hi_before) || guesses >= MAX_GUESSES {
                // Guessing did not narrow the range: halve it from here on.
                hi_granule = None;
            }
        }
        let mut walker = self.walker_before(src, lo)?;
        let mut best: Option<Keyframe> = None;
        while let Some(p) = walker.next_packet()? {
            if p.index_on_page != 0 {
                continue;
            }
            let pts = self.time(p.start);
            if pts > t {
                break;
            }
            best = Some(Self::keyframe(&p, pts));
        }
        if let Some(k) = best {
            return Ok(k);
        }
        // t precedes the stream's first packet (or the walk found nothing): the first keyframe.
        let mut walker = self.walker(src, self.data_start);
        while let Some(p) = walker.next_packet()? {
            if p.index_on_page == 0 {
                return Ok(Self::keyframe(&p, self.time(p.start)));
            }
        }
        Err(ParseError::NoSamples)
    }

    fn samples(&self, src: &dyn RangeSource, from: ReadPos, max: usize) -> Result<SampleBatch, ParseError> {
        let mut walker = self.walker_before(src, from.offset.max(self.data_start))?;
        let mut samples = Vec::new();
        let mut last: Option<Packet> = None;
        while samples.len() < max {
            let Some(p) = walker.next_packet()? else {
                return Ok(SampleBatch { samples, next: None });
            };
            if p.page < from.offset || (p.page == from.offset && p.index_on_page < from.sample) {
                continue;
            }
            let pts = self.time(p.start);
            samples.push(Sample {
                pts,
                dts: pts,
                duration: MediaTime::from_ticks(p.duration, self.rate).unwrap_or(MediaTime::ZERO),
                offset: p.offset,
                size: p.end.saturating_sub(p.offset),
                keyframe: true,
                follows_damage: p.follows_damage,
            });
            last = Some(p);
        }
        let next = last.map(|p| ReadPos { offset: p.page, sample: p.index_on_page + 1 });
        Ok(SampleBatch { samples, next: next.or(Some(from)) })
    }

    fn sample_data(&self, src: &dyn RangeSource, sample: &Sample) -> Result<Bytes, ParseError> {
        if sample.size > MAX_METADATA_READ {
            return Err(ParseError::TooLarge {
                element: PAGE,
                offset: sample.offset,
                size: sample.size,
                limit: MAX_METADATA_READ,
            });
        }
        let data = src.read_range(sample.offset, sample.size)?;
        if find_capture(&data).is_none() {
            return Ok(data);
        }
        // The range may cross page headers: find them (CRC-checked) and keep the packet bytes.
        let extra = MAX_PAGE.min(src.len().saturating_sub(sample.end()));
        let buf = src.read_range(sample.offset, sample.size + extra)?;
        let size = sample.size as usize;
        let Some(first) = find_page(&buf, 0, sample.offset, Some(self.serial)) else {
            return Ok(data);
        };
        let mut at = (first.offset - sample.offset) as usize;
        if at >= size {
            return Ok(data);
        }
        let mut out = BytesMut::with_capacity(size);
        out.extend_from_slice(buf.get(..at).unwrap_or(&[]));
        // At most one page per 27 bytes of range.
        for _ in 0..=size / HEADER_LEN {
            let page = parse_page(&buf, at, sample.offset + at as u64)?;
            let run = page.runs().into_iter().next();
            let Some(run) = run.filter(|_| page.continued()) else {
                return Err(ParseError::malformed(PAGE, page.offset, "expected the packet to continue here"));
            };
            out.extend_from_slice(page.run_bytes(run));
            let run_end = page.header_len + run.start + run.len;
            if run.complete || at + run_end >= size {
                return Ok(out.freeze());
            }
            at += page.bytes.len();
        }
        Err(ParseError::malformed(PAGE, sample.offset, "packet does not end inside its range"))
    }
}

#[cfg(test)]
mod tests;
