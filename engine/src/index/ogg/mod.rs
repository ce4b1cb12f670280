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

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use super::{
    AudioInfo, Codec, Container, ContainerIndex, Keyframe, ParseError, ReadPos, Reader, Sample, SampleBatch,
    TrackInfo, WindowReader, MAX_METADATA_READ,
};
use crate::source::RangeSource;
use crate::time::MediaTime;

const PAGE: &str = "Ogg page";
const OPUS_HEAD: &str = "OpusHead";
const VORBIS_ID: &str = "Vorbis identification header";
const VORBIS_SETUP: &str = "Vorbis setup header";

/// Fixed part of a page header.
const HEADER_LEN: usize = 27;
/// The largest possible page: header, 255 lacing values of 255.
const MAX_PAGE: u64 = 27 + 255 + 255 * 255;
/// Window for walking pages forward.
const WALK_WINDOW: u64 = 256 * 1024;
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

/// CRC-32 as Ogg computes it: polynomial 0x04c11db7, MSB first, no reflection, zero init.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut r = (i as u32) << 24;
        let mut bit = 0;
        while bit < 8 {
            r = if r & 0x8000_0000 != 0 { (r << 1) ^ 0x04c1_1db7 } else { r << 1 };
            bit += 1;
        }
        table[i] = r;
        i += 1;
    }
    table
};

fn crc_update(mut crc: u32, data: &[u8]) -> u32 {
    for &b in data {
        crc = (crc << 8) ^ CRC_TABLE[((crc >> 24) as u8 ^ b) as usize];
    }
    crc
}

/// The CRC of a whole page, computed with its CRC field as zeros.
pub(crate) fn page_crc(page: &[u8]) -> u32 {
    let mut crc = crc_update(0, page.get(..22).unwrap_or(page));
    crc = crc_update(crc, &[0, 0, 0, 0]);
    crc_update(crc, page.get(26..).unwrap_or(&[]))
}

/// One validated page.
#[derive(Debug, Clone)]
struct Page {
    offset: u64,
    header_type: u8,
    granule: i64,
    serial: u32,
    /// Page sequence number: a gap means pages of the stream are missing.
    sequence: u32,
    header_len: usize,
    /// Header and body.
    bytes: Bytes,
}

/// A run of segments: one packet, or the part of one that lies on this page.
#[derive(Debug, Clone, Copy)]
struct Run {
    start: usize,
    len: usize,
    complete: bool,
}

impl Page {
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn end(&self) -> u64 {
        self.offset.saturating_add(self.len())
    }
    fn continued(&self) -> bool {
        self.header_type & 1 != 0
    }
    fn bos(&self) -> bool {
        self.header_type & 2 != 0
    }
    fn body(&self) -> &[u8] {
        self.bytes.get(self.header_len..).unwrap_or(&[])
    }
    fn body_offset(&self) -> u64 {
        self.offset + self.header_len as u64
    }
    fn lacing(&self) -> &[u8] {
        self.bytes.get(HEADER_LEN..self.header_len).unwrap_or(&[])
    }
    /// The packets (or packet parts) on this page, in order.
    fn runs(&self) -> Vec<Run> {
        let mut runs = Vec::new();
        let mut start = 0usize;
        let mut len = 0usize;
        let lacing = self.lacing();
        for (i, &l) in lacing.iter().enumerate() {
            len += l as usize;
            if l < 255 {
                runs.push(Run { start, len, complete: true });
                start += len;
                len = 0;
            } else if i + 1 == lacing.len() {
                runs.push(Run { start, len, complete: false });
            }
        }
        runs
    }
    fn run_bytes(&self, run: Run) -> &[u8] {
        self.body().get(run.start..run.start + run.len).unwrap_or(&[])
    }
}

/// Parses and validates (capture pattern, version, CRC) the page at `at` in `buf`, which lies at
/// byte `abs` of the file. `Truncated` when `buf` ends before the page does.
fn parse_page(buf: &Bytes, at: usize, abs: u64) -> Result<Page, ParseError> {
    let mut unlimited = u64::MAX;
    parse_page_budgeted(buf, at, abs, &mut unlimited)
}

/// [`parse_page`] that takes the bytes its CRC covers from `budget`, refusing (with
/// `TooLarge` naming [`PAGE_SEARCH`]) a page whose CRC the budget cannot pay for.
fn parse_page_budgeted(buf: &Bytes, at: usize, abs: u64, budget: &mut u64) -> Result<Page, ParseError> {
    let rest = buf.get(at..).unwrap_or(&[]);
    let end = abs + rest.len() as u64;
    let truncated =
        |needed: usize| ParseError::Truncated { element: PAGE, offset: abs, needed: needed as u64, end };
    let head = rest.get(..HEADER_LEN).ok_or_else(|| truncated(HEADER_LEN))?;
    if &head[..4] != b"OggS" {
        return Err(ParseError::malformed(PAGE, abs, "no OggS capture pattern"));
    }
    if head[4] != 0 {
        return Err(ParseError::Unsupported {
            element: PAGE,
            offset: abs,
            what: format!("version {}", head[4]),
        });
    }
    let nsegs = head[26] as usize;
    let header_len = HEADER_LEN + nsegs;
    let lacing = rest.get(HEADER_LEN..header_len).ok_or_else(|| truncated(header_len))?;
    let body_len: usize = lacing.iter().map(|&l| l as usize).sum();
    let total = header_len + body_len;
    let page = rest.get(..total).ok_or_else(|| truncated(total))?;
    *budget = budget.checked_sub(total as u64).ok_or(ParseError::TooLarge {
        element: PAGE_SEARCH,
        offset: abs,
        size: total as u64,
        limit: *budget,
    })?;
    let stored = u32::from_le_bytes([head[22], head[23], head[24], head[25]]);
    let computed = page_crc(page);
    if stored != computed {
        return Err(ParseError::malformed(
            PAGE,
            abs,
            format!("CRC mismatch (stored {stored:08x}, computed {computed:08x})"),
        ));
    }
    let mut g = [0u8; 8];
    g.copy_from_slice(&head[6..14]);
    Ok(Page {
        offset: abs,
        header_type: head[5],
        granule: i64::from_le_bytes(g),
        serial: u32::from_le_bytes([head[14], head[15], head[16], head[17]]),
        sequence: u32::from_le_bytes([head[18], head[19], head[20], head[21]]),
        header_len,
        bytes: buf.slice(at..at + total),
    })
}

/// Reads the page at `offset` through a window reader, paying its CRC from `budget`.
fn read_page(wr: &mut WindowReader<'_>, offset: u64, budget: &mut u64) -> Result<Page, ParseError> {
    let head = wr.read(offset, HEADER_LEN as u64, PAGE)?;
    let nsegs = head.get(26).copied().unwrap_or(0) as u64;
    let lacing = wr.read(offset, HEADER_LEN as u64 + nsegs, PAGE)?;
    let body: u64 = lacing.get(HEADER_LEN..).unwrap_or(&[]).iter().map(|&l| l as u64).sum();
    let all = wr.read(offset, HEADER_LEN as u64 + nsegs + body, PAGE)?;
    parse_page_budgeted(&all, 0, offset, budget)
}

/// The first valid page of `serial` (any serial when `None`) starting at or after `from` in
/// `buf` (which lies at byte `abs`), wholly inside `buf`.
///
/// The CRCs it checks add up to at most [`CRC_WORK_PER_BYTE`] times the buffer plus
/// [`CRC_WORK_SLACK`]: a buffer packed with fake capture patterns is searched in linear time,
/// and what it hides past the budget is not found.
fn find_page(buf: &Bytes, from: usize, abs: u64, serial: Option<u32>) -> Option<Page> {
    let mut budget = (buf.len() as u64).saturating_mul(CRC_WORK_PER_BYTE).saturating_add(CRC_WORK_SLACK);
    let mut i = from;
    while let Some(found) = find_capture(buf.get(i..)?) {
        let at = i + found;
        match parse_page_budgeted(buf, at, abs + at as u64, &mut budget) {
            Ok(page) => {
                if serial.is_none_or(|s| s == page.serial) {
                    return Some(page);
                }
                i = at + page.bytes.len().max(1);
            }
            Err(ParseError::TooLarge { element: PAGE_SEARCH, .. }) => return None,
            Err(_) => i = at + 1,
        }
    }
    None
}

fn find_capture(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"OggS")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Opus,
    Vorbis,
}

/// What the Vorbis setup header says about block sizes, as FFmpeg's Vorbis parser reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct VorbisModes {
    blocksize: [u32; 2],
    /// Per mode: true for a long block.
    long: Vec<bool>,
    mode_mask: u8,
    prev_mask: u8,
}

impl VorbisModes {
    /// The block size of an audio packet (`None` for non-audio packets).
    fn packet_blocksize(&self, first: u8) -> Option<(u32, bool, u8)> {
        if first & 1 != 0 {
            return None;
        }
        let mode = if self.long.len() == 1 { 0 } else { ((first & self.mode_mask) >> 1) as usize };
        let long = *self.long.get(mode)?;
        Some((if long { self.blocksize[1] } else { self.blocksize[0] }, long, first))
    }

    /// Samples of a packet, given the previous packet's block size; updates it.
    fn duration(&self, first: Option<u8>, prev: &mut u32) -> i64 {
        let Some((current, long, byte)) = first.and_then(|b| self.packet_blocksize(b)) else {
            return 0;
        };
        let previous = if long {
            if byte & self.prev_mask != 0 {
                self.blocksize[1]
            } else {
                self.blocksize[0]
            }
        } else {
            *prev
        };
        *prev = current;
        ((previous + current) / 4) as i64
    }
}

/// Reads bits most significant first (used on the byte-reversed setup header).
struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl BitReader<'_> {
    fn left(&self) -> usize {
        (self.data.len() * 8).saturating_sub(self.pos)
    }
    fn bit(&mut self) -> Option<u32> {
        let byte = *self.data.get(self.pos / 8)?;
        let b = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Some(b as u32)
    }
    fn bits(&mut self, n: usize) -> Option<u32> {
        let mut v = 0u32;
        for _ in 0..n {
            v = (v << 1) | self.bit()?;
        }
        Some(v)
    }
}

/// Finds the mode list at the end of a Vorbis setup header by reading it backwards, as FFmpeg
/// (`vorbis_parser.c`) and liboggz do: the modes are the last field before the framing bit and
/// each is 41 bits (blockflag, window type 0, transform type 0, mapping), so candidate counts
/// are checked against the 6-bit mode count that precedes them.
fn parse_vorbis_modes(setup: &[u8], blocksize: [u32; 2], offset: u64) -> Result<VorbisModes, ParseError> {
    if setup.len() < 7 || setup[0] != 5 || &setup[1..7] != b"vorbis" {
        return Err(ParseError::malformed(VORBIS_SETUP, offset, "not a Vorbis setup header"));
    }
    let rev: Vec<u8> = setup.iter().rev().copied().collect();
    let mut gb = BitReader { data: &rev, pos: 0 };
    let mut framing = None;
    while gb.left() > 97 {
        if gb.bit() == Some(1) {
            framing = Some(gb.pos);
            break;
        }
    }
    let framing = framing.ok_or_else(|| ParseError::malformed(VORBIS_SETUP, offset, "no framing bit"))?;
    let mut mode_count = 0usize;
    let mut last_mode_count = None;
    while gb.left() >= 97 {
        let mapping = gb.bits(8).unwrap_or(u32::MAX);
        if mapping > 63 || gb.bits(16) != Some(0) || gb.bits(16) != Some(0) {
            break;
        }
        gb.bit();
        mode_count += 1;
        if mode_count > 64 {
            break;
        }
        let mut gb0 = BitReader { data: gb.data, pos: gb.pos };
        if gb0.bits(6).map(|c| c as usize + 1) == Some(mode_count) {
            last_mode_count = Some(mode_count);
        }
    }
    let count = last_mode_count
        .filter(|&c| c <= 63)
        .ok_or_else(|| ParseError::malformed(VORBIS_SETUP, offset, "no valid mode list"))?;
    let mut gb = BitReader { data: &rev, pos: framing };
    let mut long = vec![false; count];
    for i in (0..count).rev() {
        gb.bits(40);
        long[i] =
            gb.bit().ok_or_else(|| ParseError::malformed(VORBIS_SETUP, offset, "mode list cut short"))? == 1;
    }
    let log2 = usize::BITS - 1 - (count - 1).max(1).leading_zeros();
    let log2 = if count - 1 == 0 { 0 } else { log2 };
    let mode_mask = (((1u32 << (log2 + 1)) - 1) << 1) as u8;
    let prev_mask = (mode_mask | 1).wrapping_add(1);
    Ok(VorbisModes { blocksize, long, mode_mask, prev_mask })
}

/// Samples (at 48 kHz) in an Opus packet, from its TOC byte (RFC 6716 section 3.1).
pub(crate) fn opus_packet_samples(packet: &[u8]) -> Option<u32> {
    let toc = *packet.first()?;
    let config = toc >> 3;
    let frame = match config {
        0..=11 => [480, 960, 1920, 2880][(config % 4) as usize],
        12..=15 => [480, 960][(config % 2) as usize],
        _ => [120, 240, 480, 960][(config % 4) as usize],
    };
    let frames = match toc & 3 {
        0 => 1,
        1 | 2 => 2,
        _ => (*packet.get(1)? & 0x3F) as u32,
    };
    let total = frame * frames;
    (total <= 5760).then_some(total)
}

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

    fn time(&self, granule_units: i64) -> MediaTime {
        MediaTime::from_ticks(granule_units.saturating_sub(self.pre_skip), self.rate)
            .unwrap_or(MediaTime::MAX)
    }

    fn walker<'a>(&'a self, src: &'a dyn RangeSource, start: u64) -> Walker<'a> {
        Walker {
            index: self,
            wr: WindowReader::new(src, WALK_WINDOW),
            pos: start,
            anchor: None,
            pending: None,
            out: VecDeque::new(),
            done: false,
            crc_budget: CRC_WORK_SLACK,
            last_sequence: None,
            skipped: false,
        }
    }

    /// A walker that begins up to one seek window before `target` (at a page of ours found
    /// there), so the page at `target` gets exact times. Its first read reaches one seek
    /// window past `target`, not a whole walk window: a seek needs the pages around its
    /// target first, and on a far link each extra 256 KiB delays them (later walk windows
    /// come as the walk goes).
    fn walker_before<'a>(&'a self, src: &'a dyn RangeSource, target: u64) -> Result<Walker<'a>, ParseError> {
        if target <= self.data_start {
            return Ok(self.walker(src, self.data_start));
        }
        let back = target.saturating_sub(SEEK_WINDOW).max(self.data_start);
        let mut walker = self.walker(src, target);
        let buf = walker.wr.read_up_to(back, (target - back) + SEEK_WINDOW, PAGE)?;
        if let Some(page) = find_page(&buf, 0, back, Some(self.serial)) {
            if page.offset < target {
                walker.pos = page.offset;
            }
        }
        Ok(walker)
    }

    fn keyframe(packet: &Packet, pts: MediaTime) -> Keyframe {
        Keyframe {
            pts,
            offset: packet.page,
            size: packet.page_len,
            pos: ReadPos { offset: packet.page, sample: 0 },
        }
    }
}

/// Where times stand after the packets read so far.
#[derive(Debug, Clone, Copy)]
struct Anchor {
    /// End of the last completed packet, in granule units.
    end: i64,
    /// Block size of the last Vorbis audio packet.
    blocksize: u32,
}

/// A packet being assembled.
#[derive(Debug, Clone)]
struct Partial {
    page: u64,
    page_len: u64,
    index_on_page: u64,
    offset: u64,
    end: u64,
    head: Vec<u8>,
}

/// A complete packet with its time (granule units, before the pre-skip shift).
#[derive(Debug, Clone, Copy)]
struct Packet {
    /// The page the packet starts on.
    page: u64,
    page_len: u64,
    /// How many packets started on that page before this one.
    index_on_page: u64,
    offset: u64,
    end: u64,
    start: i64,
    duration: i64,
    /// Pages were skipped or missing before this packet.
    follows_damage: bool,
}

/// Walks our stream's packets forward from a page.
struct Walker<'a> {
    index: &'a OggIndex,
    wr: WindowReader<'a>,
    pos: u64,
    anchor: Option<Anchor>,
    pending: Option<Partial>,
    out: VecDeque<Packet>,
    done: bool,
    /// CRC bytes the walk may still compute: earned at [`CRC_WORK_PER_BYTE`] per byte walked,
    /// so resyncing through a stretch of fake capture patterns stays linear in its length.
    crc_budget: u64,
    /// Sequence number of our stream's last page.
    last_sequence: Option<u32>,
    /// Damaged pages were skipped, or ours came with a sequence gap, since the last packet.
    skipped: bool,
}

impl Walker<'_> {
    fn next_packet(&mut self) -> Result<Option<Packet>, ParseError> {
        loop {
            if let Some(p) = self.out.pop_front() {
                return Ok(Some(p));
            }
            if self.done {
                return Ok(None);
            }
            let Some(page) = self.next_page()? else {
                self.done = true;
                continue;
            };
            if page.serial == self.index.serial {
                if self.last_sequence.is_some_and(|s| page.sequence != s.wrapping_add(1)) {
                    self.skipped = true;
                }
                self.last_sequence = Some(page.sequence);
                self.process(&page);
            }
        }
    }

    /// The next valid page, skipping damaged ones (which loses time continuity).
    fn next_page(&mut self) -> Result<Option<Page>, ParseError> {
        let len = self.wr.len();
        while self.pos < len {
            match read_page(&mut self.wr, self.pos, &mut self.crc_budget) {
                Ok(page) => {
                    self.pos = page.end();
                    self.crc_budget =
                        self.crc_budget.saturating_add(page.len().saturating_mul(CRC_WORK_PER_BYTE));
                    return Ok(Some(page));
                }
                Err(ParseError::TooLarge { element: PAGE_SEARCH, offset, .. }) => {
                    return Err(ParseError::malformed(
                        PAGE,
                        offset,
                        "too many damaged pages: finding the next valid page costs more than the bytes walked",
                    ));
                }
                Err(ParseError::Truncated { .. }) if self.pos.saturating_add(MAX_PAGE) >= len => {
                    // A cut-off last page: nothing more to read.
                    self.pos = len;
                }
                Err(ParseError::Source(e)) => return Err(ParseError::Source(e)),
                Err(_) => {
                    self.anchor = None;
                    self.pending = None;
                    self.skipped = true;
                    let from = self.pos.saturating_add(1);
                    let buf = self.wr.read_up_to(from, SEEK_WINDOW, PAGE)?;
                    let before = self.pos;
                    match find_capture(&buf) {
                        Some(i) => self.pos = from + i as u64,
                        None => self.pos = from + (buf.len() as u64).saturating_sub(3).max(1),
                    }
                    let skipped = self.pos - before;
                    self.crc_budget =
                        self.crc_budget.saturating_add(skipped.saturating_mul(CRC_WORK_PER_BYTE));
                }
            }
        }
        Ok(None)
    }

    fn process(&mut self, page: &Page) {
        let mut completed: Vec<Partial> = Vec::new();
        let mut started = 0u64;
        for (i, run) in page.runs().into_iter().enumerate() {
            let bytes = page.run_bytes(run);
            let run_end = page.body_offset() + (run.start + run.len) as u64;
            let mut packet = if i == 0 && page.continued() {
                match self.pending.take() {
                    Some(mut p) => {
                        p.end = run_end;
                        let need = 2usize.saturating_sub(p.head.len());
                        p.head.extend(bytes.iter().take(need));
                        p
                    }
                    None => continue, // the start of this packet was not read
                }
            } else {
                let p = Partial {
                    page: page.offset,
                    page_len: page.len(),
                    index_on_page: started,
                    offset: page.body_offset() + run.start as u64,
                    end: run_end,
                    head: bytes.iter().take(2).copied().collect(),
                };
                started += 1;
                p
            };
            if run.complete {
                completed.push(packet);
            } else {
                packet.end = run_end;
                self.pending = Some(packet);
            }
        }
        if i64::try_from(completed.len()).is_err() || completed.is_empty() {
            return;
        }
        let mut blocksize = self
            .anchor
            .map(|a| a.blocksize)
            .or_else(|| self.index.vorbis.as_ref().map(|v| v.blocksize[0]))
            .unwrap_or(0);
        let durations: Vec<i64> = completed
            .iter()
            .map(|p| match (&self.index.vorbis, self.index.kind) {
                (Some(modes), Kind::Vorbis) => modes.duration(p.head.first().copied(), &mut blocksize),
                _ => opus_packet_samples(&p.head).map_or(0, i64::from),
            })
            .collect();
        let mut t = match self.anchor {
            Some(a) => a.end,
            None if page.granule != -1 => {
                page.granule.saturating_sub(durations.iter().fold(0i64, |a, d| a.saturating_add(*d)))
            }
            None => return, // no time for these packets
        };
        for (p, d) in completed.into_iter().zip(durations) {
            self.out.push_back(Packet {
                page: p.page,
                page_len: p.page_len,
                index_on_page: p.index_on_page,
                offset: p.offset,
                end: p.end,
                start: t,
                duration: d,
                follows_damage: std::mem::take(&mut self.skipped),
            });
            t = t.saturating_add(d);
        }
        let end = if page.granule != -1 { page.granule } else { t };
        self.anchor = Some(Anchor { end, blocksize });
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

/// The granule of the last complete page of stream `serial` in `tail` (which starts at file
/// offset `tail_start`), scanning backwards.
/// Its CRC work is bounded as [`find_page`]'s is.
fn last_granule(tail: &Bytes, tail_start: u64, serial: u32) -> Option<i64> {
    let mut budget = (tail.len() as u64).saturating_mul(CRC_WORK_PER_BYTE).saturating_add(CRC_WORK_SLACK);
    let mut end = tail.len();
    while let Some(at) = tail.get(..end).and_then(|b| b.windows(4).rposition(|w| w == b"OggS")) {
        match parse_page_budgeted(tail, at, tail_start + at as u64, &mut budget) {
            Ok(page) if page.serial == serial && page.granule >= 0 => return Some(page.granule),
            Err(ParseError::TooLarge { element: PAGE_SEARCH, .. }) => return None,
            _ => {}
        }
        end = at + 3;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{TrackIndex, HEAD_READ};

    /// Builds one page with a correct CRC from packet parts: (bytes, completes here).
    fn page(header_type: u8, granule: i64, serial: u32, seq: u32, parts: &[(&[u8], bool)]) -> Vec<u8> {
        let mut lacing = Vec::new();
        let mut body = Vec::new();
        for (bytes, complete) in parts {
            let mut n = bytes.len();
            while n >= 255 {
                lacing.push(255);
                n -= 255;
            }
            if *complete {
                lacing.push(n as u8);
            } else {
                assert_eq!(n, 0, "incomplete parts must be multiples of 255");
            }
            body.extend_from_slice(bytes);
        }
        let mut p = b"OggS".to_vec();
        p.push(0);
        p.push(header_type);
        p.extend_from_slice(&granule.to_le_bytes());
        p.extend_from_slice(&serial.to_le_bytes());
        p.extend_from_slice(&seq.to_le_bytes());
        p.extend_from_slice(&[0; 4]);
        p.push(lacing.len() as u8);
        p.extend_from_slice(&lacing);
        p.extend_from_slice(&body);
        let crc = page_crc(&p);
        p[22..26].copy_from_slice(&crc.to_le_bytes());
        p
    }

    fn opus_head(pre_skip: u16) -> Vec<u8> {
        let mut h = b"OpusHead".to_vec();
        h.extend_from_slice(&[1, 2]);
        h.extend_from_slice(&pre_skip.to_le_bytes());
        h.extend_from_slice(&48_000u32.to_le_bytes());
        h.extend_from_slice(&[0, 0, 0]);
        h
    }

    /// An Opus file: 20 ms packets (TOC 0xF8: CELT 20 ms, one frame), `per_page` per page.
    fn opus_file(pages: usize, per_page: usize, pre_skip: u16) -> Vec<u8> {
        let mut f = page(2, 0, 7, 0, &[(&opus_head(pre_skip), true)]);
        f.extend(page(0, 0, 7, 1, &[(b"OpusTags\0\0\0\0\0\0\0\0", true)]));
        let packet = [0xF8u8, 1, 2, 3, 4, 5, 6, 7, 8, 9];
        let mut granule = 0i64;
        for i in 0..pages {
            let parts: Vec<(&[u8], bool)> = (0..per_page).map(|_| (&packet[..], true)).collect();
            granule += 960 * per_page as i64;
            let flags = if i + 1 == pages { 4 } else { 0 };
            f.extend(page(flags, granule, 7, 2 + i as u32, &parts));
        }
        f
    }

    fn open(bytes: Vec<u8>) -> (Bytes, Result<TrackIndex, crate::index::IndexError>) {
        let src = Bytes::from(bytes);
        let index = TrackIndex::open("t", &src);
        (src, index)
    }

    #[test]
    fn crc_matches_a_published_check_value_and_pages_written_by_gstreamer() {
        // Ogg's CRC is CRC-32/CKSUM without the final inversion (polynomial 0x04c11db7,
        // MSB first, zero init): the reveng catalogue's check value for CKSUM over
        // "123456789" is 0x765e7680, so ours is its complement.
        assert_eq!(crc_update(0, b"123456789"), !0x765e_7680);
        // Every page of the committed fixture, muxed by GStreamer's oggmux (libogg's
        // framing), carries a CRC our function reproduces; a changed byte breaks it.
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/meeting/mixed_audio.ogg");
        let file = Bytes::from(std::fs::read(path).expect("fixture"));
        let mut at = 0usize;
        let mut pages = 0;
        while at + HEADER_LEN <= file.len() {
            let nsegs = file[at + 26] as usize;
            let body: usize =
                file[at + HEADER_LEN..at + HEADER_LEN + nsegs].iter().map(|&l| l as usize).sum();
            let page = &file[at..at + HEADER_LEN + nsegs + body];
            assert_eq!(
                u32::from_le_bytes([page[22], page[23], page[24], page[25]]),
                page_crc(page),
                "page at {at}"
            );
            pages += 1;
            at += page.len();
        }
        assert_eq!(at, file.len());
        assert!(pages > 10, "{pages} pages");
        let mut damaged = file[..HEADER_LEN + file[26] as usize].to_vec();
        damaged[HEADER_LEN] ^= 1;
        assert_ne!(
            u32::from_le_bytes([damaged[22], damaged[23], damaged[24], damaged[25]]),
            page_crc(&damaged)
        );
    }

    #[test]
    fn opus_times_keyframes_seek_and_samples() {
        let (src, index) = open(opus_file(50, 5, 312));
        let index = index.expect("opens");
        let info = index.info();
        assert_eq!(info.codec, Codec::Opus);
        assert_eq!(info.timescale, 48_000);
        assert_eq!(info.codec_config.as_deref(), Some(&opus_head(312)[..]));
        // 250 packets of 960 samples minus 312 pre-skip.
        assert_eq!(info.duration, MediaTime::from_ticks(250 * 960 - 312, 48_000));
        let keyframes = index.keyframes(&src).expect("walks");
        assert_eq!(keyframes.len(), 50);
        assert_eq!(keyframes[0].pts, MediaTime::from_ticks(-312, 48_000).expect("fits"));
        assert_eq!(keyframes[1].pts, MediaTime::from_ticks(5 * 960 - 312, 48_000).expect("fits"));
        for t in [0i64, 100, 1234, 4000, 99_000] {
            let t = MediaTime::from_millis(t);
            let k = index.seek(&src, t).expect("seeks");
            let expected = keyframes.iter().rev().find(|k| k.pts <= t).unwrap_or(&keyframes[0]);
            assert_eq!(&k, expected, "seek to {t}");
        }
        let batch = index.samples(&src, keyframes[3].pos, 7).expect("samples");
        assert_eq!(batch.samples.len(), 7);
        assert_eq!(batch.samples[0].pts, keyframes[3].pts);
        assert_eq!(batch.samples[1].pts.as_nanos() - batch.samples[0].pts.as_nanos(), 20_000_000);
        let data = index.sample_data(&src, &batch.samples[0]).expect("data");
        assert_eq!(&data[..], &[0xF8u8, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
        // Resuming mid-page continues where the batch stopped.
        let next = index.samples(&src, batch.next.expect("more"), 1).expect("samples");
        assert_eq!(next.samples[0].pts.as_nanos() - batch.samples[6].pts.as_nanos(), 20_000_000);
    }

    #[test]
    fn duration_from_a_last_page_larger_than_the_first_tail_read() {
        // Many small pages, then a last page of ~25 KiB: the 16 KiB tail read holds no whole
        // page of ours, so the second, page-sized read finds it.
        let mut f = opus_file(20, 5, 0);
        let big = vec![0xF8u8; 255 * 100 - 1];
        f.extend(page(4, 100 * 960 + 960, 7, 22, &[(&big, true)]));
        let (_, index) = open(f);
        let index = index.expect("opens");
        assert_eq!(index.info().duration, MediaTime::from_ticks(101 * 960, 48_000));
        assert_eq!(index.open_cost().reads, 3, "head, small tail, page-sized tail");
    }

    #[test]
    fn packet_spanning_pages_is_reassembled() {
        let mut f = page(2, 0, 7, 0, &[(&opus_head(0), true)]);
        f.extend(page(0, 0, 7, 1, &[(b"OpusTags", true)]));
        let mut big = vec![0xF8u8];
        big.extend((0..509).map(|i| i as u8));
        big.extend(std::iter::repeat_n(9u8, 40));
        f.extend(page(0, -1, 7, 2, &[(&big[..510], false)]));
        f.extend(page(1, 1920, 7, 3, &[(&big[510..], true), (&[0xF8, 1], true)]));
        let (src, index) = open(f);
        let index = index.expect("opens");
        let batch = index.samples(&src, ReadPos { offset: 0, sample: 0 }, 10).expect("samples");
        assert_eq!(batch.samples.len(), 2);
        assert_eq!(batch.samples[0].pts, MediaTime::ZERO);
        assert_eq!(batch.samples[1].pts, MediaTime::from_millis(20));
        let data = index.sample_data(&src, &batch.samples[0]).expect("reassembles");
        assert_eq!(&data[..], &big[..]);
        let keyframes = index.keyframes(&src).expect("walks");
        let times: Vec<_> = keyframes.iter().map(|k| k.pts).collect();
        assert_eq!(times, vec![MediaTime::ZERO, MediaTime::from_millis(20)]);
    }

    #[test]
    fn bad_crc_at_open_is_typed_and_skipped_when_walking() {
        let mut f = opus_file(4, 2, 0);
        f[30] ^= 0xFF;
        let (_, index) = open(f);
        let err = index.expect_err("bad CRC").source;
        assert!(matches!(err, ParseError::Malformed { element: PAGE, offset: 0, .. }), "{err}");

        let mut f = opus_file(4, 2, 0);
        let third_page = f.windows(4).enumerate().filter(|(_, w)| w == b"OggS").nth(3).map(|(i, _)| i);
        let third_page = third_page.expect("page");
        f[third_page + 30] ^= 0xFF;
        let (src, index) = open(f);
        let keyframes = index.expect("opens").keyframes(&src).expect("walks past the bad page");
        assert_eq!(keyframes.len(), 3);
    }

    #[test]
    fn packets_after_skipped_or_missing_pages_are_marked() {
        let marks = |f: Vec<u8>| -> Vec<bool> {
            let (src, index) = open(f);
            let index = index.expect("opens");
            let first = index.keyframes(&src).expect("walks")[0].pos;
            let batch = index.samples(&src, first, 100).expect("samples");
            batch.samples.iter().map(|s| s.follows_damage).collect()
        };
        let pages = |f: &[u8]| -> Vec<usize> {
            f.windows(4).enumerate().filter(|(_, w)| w == b"OggS").map(|(i, _)| i).collect()
        };
        // Intact: nothing marked.
        assert_eq!(marks(opus_file(4, 2, 0)), vec![false; 8]);
        // A damaged page (bad CRC) is skipped: the first packet after it is marked.
        let mut f = opus_file(4, 2, 0);
        let third = pages(&f)[3];
        f[third + 30] ^= 0xFF;
        assert_eq!(marks(f), vec![false, false, true, false, false, false]);
        // A page cut out whole: its successor's sequence number jumps.
        let f = opus_file(4, 2, 0);
        let at = pages(&f);
        let mut cut = f[..at[3]].to_vec();
        cut.extend_from_slice(&f[at[4]..]);
        assert_eq!(marks(cut), vec![false, false, true, false, false, false]);
    }

    #[test]
    fn malformed_inputs_are_errors_not_panics() {
        let good = opus_file(3, 2, 0);
        for cut in [0usize, 4, 27, 30, 60, 80, 100] {
            let (src, index) = open(good[..cut.min(good.len())].to_vec());
            if let Ok(index) = index {
                let _ = index.keyframes(&src);
                let _ = index.seek(&src, MediaTime::from_secs(1));
            }
        }
        // Absurd segment count with no body.
        let mut f = b"OggS\0\x02".to_vec();
        f.extend_from_slice(&[0; 20]);
        f.push(255);
        let (_, index) = open(f);
        assert!(matches!(index.expect_err("truncated").source, ParseError::Truncated { element: PAGE, .. }));
        // Not Opus or Vorbis.
        let (_, index) = open(page(2, 0, 1, 0, &[(b"\x80theora", true)]));
        assert!(matches!(index.expect_err("unsupported").source, ParseError::Unsupported { .. }));
        // Short OpusHead.
        let mut f = page(2, 0, 1, 0, &[(b"OpusHead\x01", true)]);
        f.extend(page(0, 0, 1, 1, &[(b"OpusTags", true)]));
        let (_, index) = open(f);
        assert!(matches!(index.expect_err("short").source, ParseError::Malformed { element: OPUS_HEAD, .. }));
        // Granules going backwards and -1 granules: seek still ends.
        let mut f = page(2, 0, 7, 0, &[(&opus_head(0), true)]);
        f.extend(page(0, 0, 7, 1, &[(b"OpusTags", true)]));
        let packet = [0xF8u8; 300];
        for i in 0..2000i64 {
            let g = if i % 3 == 0 { -1 } else { (5000 - i) * 960 };
            f.extend(page(0, g, 7, i as u32 + 2, &[(&packet, true)]));
        }
        let (src, index) = open(f);
        let index = index.expect("opens");
        for t in [0i64, 5, 50, 5000] {
            let _ = index.seek(&src, MediaTime::from_secs(t));
        }
        assert!(RangeSource::len(&src) > HEAD_READ);
    }

    #[test]
    fn opus_toc_durations() {
        assert_eq!(opus_packet_samples(&[0xF8]), Some(960));
        assert_eq!(opus_packet_samples(&[0x00]), Some(480));
        assert_eq!(opus_packet_samples(&[(3 << 3) | 3, 2]), Some(5760));
        assert_eq!(opus_packet_samples(&[(3 << 3) | 3, 3]), None);
        assert_eq!(opus_packet_samples(&[0x80 | 1]), Some(240));
        assert_eq!(opus_packet_samples(&[0x03]), None);
        assert_eq!(opus_packet_samples(&[]), None);
    }

    #[test]
    fn vorbis_mode_list_read_backwards() {
        // A synthetic setup header whose last bits are: mode count 2 (6 bits = 1), two modes
        // (blockflag 0, then 1), framing bit; packed LSB first as Vorbis does.
        let mut bits: Vec<u8> = Vec::new();
        let push =
            |v: u32, n: usize, bits: &mut Vec<u8>| (0..n).for_each(|i| bits.push(((v >> i) & 1) as u8));
        // padding that cannot look like modes
        for _ in 0..16 {
            push(0xFF, 8, &mut bits);
        }
        push(1, 6, &mut bits); // mode count - 1
        for flag in [0u32, 1] {
            push(flag, 1, &mut bits);
            push(0, 16, &mut bits);
            push(0, 16, &mut bits);
            push(flag, 8, &mut bits); // mapping
        }
        push(1, 1, &mut bits); // framing
        let mut setup = b"\x05vorbis".to_vec();
        for chunk in bits.chunks(8) {
            setup.push(chunk.iter().enumerate().fold(0u8, |a, (i, b)| a | (b << i)));
        }
        let modes = parse_vorbis_modes(&setup, [256, 2048], 0).expect("modes");
        assert_eq!(modes.long, vec![false, true]);
        assert_eq!(modes.mode_mask, 0b10);
        assert_eq!(modes.prev_mask, 0b100);
        let mut prev = 256;
        assert_eq!(modes.duration(Some(0b000), &mut prev), 128); // short after short
        assert_eq!(modes.duration(Some(0b010), &mut prev), (256 + 2048) / 4); // long, prev short
        assert_eq!(modes.duration(Some(0b110), &mut prev), 1024); // long, prev long
        assert_eq!(modes.duration(Some(0b000), &mut prev), (2048 + 256) / 4); // short after long
        assert!(parse_vorbis_modes(b"\x05vorbis\0\0", [256, 2048], 9).is_err());
        assert!(parse_vorbis_modes(b"", [256, 2048], 9).is_err());
    }
}
