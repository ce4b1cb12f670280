//! MP4 / ISO-BMFF (ISO/IEC 14496-12), plain and fragmented.
//!
//! Opening reads box headers from the start until `moov` (which a live recorder writes at the
//! end), then `moov` alone: for a file with `moov` at the end that is the 4 KiB head, one
//! 16-byte header read and the `moov`. The sample tables (stts, ctts, stss, stsz/stz2, stsc,
//! stco/co64) are expanded once into a compact per-sample list, which answers "which bytes show
//! time t" without further reads. Edit lists shift presentation times the way players (and
//! ffprobe) apply them.
//!
//! Fragmented files (`mvex` in `moov`) keep their samples in `moof` boxes. Opening also reads a
//! `sidx` that follows `moov`, or the `mfra` at the end (found through `mfro`), to know where
//! fragments start without scanning; without either, fragments are found by walking top-level
//! box headers (skipping `mdat` payloads) when first needed.
//!
//! Why hand-written: the `mp4` crate reads through `Read + Seek` and loads every `moof` on open;
//! `mp4-atom` decodes boxes but leaves the box walk, table expansion and fragment discovery to us,
//! which is most of this module. What we need, byte offsets per sample and control over each
//! range read (a network round trip), is the part no crate gives.

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;

use super::{
    AudioInfo, Codec, Container, ContainerIndex, Keyframe, ParseError, ReadPos, Reader, Sample, SampleBatch,
    TrackInfo, VideoInfo, WindowReader,
};
use crate::source::RangeSource;
use crate::time::MediaTime;

/// Window for walking top-level box headers of fragmented files.
const FRAGMENT_WALK_WINDOW: u64 = 64 * 1024;
/// A `moof` larger than this is refused (real ones are a few KiB to a few hundred KiB).
const MAX_MOOF: u64 = 64 * 1024 * 1024;
/// Upper bound on the top-level boxes walked to find `moov`, so a file of millions of tiny boxes
/// cannot keep opening busy forever.
const MAX_TOP_LEVEL_BOXES: usize = 100_000;
/// Most samples one track's `moov` tables may describe: 10 hours at 100 samples a second is
/// 3.6 million. Each costs 32 bytes expanded, so a forged table costs at most 128 MiB.
const MAX_TABLE_SAMPLES: usize = 4 * 1024 * 1024;
/// Most samples one `moof` may describe, whatever its runs claim: samples per byte of the
/// `moof` (a run of default-sized samples costs no bytes per sample), and an absolute cap.
const MOOF_SAMPLES_PER_BYTE: u64 = 16;
const MAX_MOOF_SAMPLES: u64 = 256 * 1024;

/// The first box is one an MP4 file starts with.
pub(crate) fn is_mp4(head: &[u8]) -> bool {
    head.len() >= 8
        && matches!(
            &head[4..8],
            b"ftyp" | b"styp" | b"moov" | b"mdat" | b"free" | b"skip" | b"wide" | b"pdin" | b"sidx" | b"moof"
        )
}

/// A box header: type, where the box starts, how long its header is and its total size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BoxHeader {
    kind: [u8; 4],
    offset: u64,
    header_len: u64,
    size: u64,
}

impl BoxHeader {
    fn end(&self) -> u64 {
        self.offset + self.size
    }
    fn body_offset(&self) -> u64 {
        self.offset + self.header_len
    }
    fn body_len(&self) -> u64 {
        self.size - self.header_len
    }
    fn is(&self, kind: &[u8; 4]) -> bool {
        &self.kind == kind
    }
}

/// Parses the box header at the start of `buf`, which lies at file offset `offset` inside a
/// parent that ends at `parent_end`. Sizes of zero mean "to the end of the parent".
fn parse_box_header(buf: &[u8], offset: u64, parent_end: u64) -> Result<BoxHeader, ParseError> {
    let too_short =
        || ParseError::Truncated { element: "box header", offset, needed: 8, end: offset + buf.len() as u64 };
    let size32 =
        u32::from_be_bytes(buf.get(0..4).ok_or_else(too_short)?.try_into().map_err(|_| too_short())?);
    let kind: [u8; 4] = buf.get(4..8).ok_or_else(too_short)?.try_into().map_err(|_| too_short())?;
    let (header_len, size) = match size32 {
        0 => (8, parent_end.saturating_sub(offset)),
        1 => {
            let large = buf.get(8..16).ok_or(ParseError::Truncated {
                element: "box header",
                offset,
                needed: 16,
                end: offset + buf.len() as u64,
            })?;
            let mut be = [0u8; 8];
            be.copy_from_slice(large);
            (16, u64::from_be_bytes(be))
        }
        n => (8, u64::from(n)),
    };
    if size < header_len {
        return Err(ParseError::malformed(
            box_name(&kind),
            offset,
            format!("box size {size} is smaller than its {header_len}-byte header"),
        ));
    }
    match offset.checked_add(size) {
        Some(end) if end <= parent_end => {}
        _ => {
            return Err(ParseError::malformed(
                box_name(&kind),
                offset,
                format!("box of {size} bytes runs past its parent, which ends at byte {parent_end}"),
            ))
        }
    }
    Ok(BoxHeader { kind, offset, header_len, size })
}

/// A static name for error messages: the boxes we parse by name, "box" otherwise.
fn box_name(kind: &[u8; 4]) -> &'static str {
    const KNOWN: &[&str] = &[
        "ftyp", "moov", "mdat", "moof", "mfra", "mfro", "tfra", "sidx", "mvhd", "trak", "tkhd", "mdia",
        "mdhd", "hdlr", "minf", "stbl", "stsd", "stts", "ctts", "stss", "stsz", "stz2", "stsc", "stco",
        "co64", "edts", "elst", "mvex", "trex", "mehd", "traf", "tfhd", "tfdt", "trun", "avcC", "hvcC",
        "esds", "dOps", "av1C", "dfLa", "free", "skip", "uuid",
    ];
    KNOWN.iter().copied().find(|k| k.as_bytes() == kind).unwrap_or("box")
}

/// A tick count read from the file as a signed count, or a typed error naming the box: a
/// value above `i64::MAX` would otherwise wrap into a negative time.
fn signed_ticks(value: u64, element: &'static str, offset: u64) -> Result<i64, ParseError> {
    i64::try_from(value)
        .map_err(|_| ParseError::malformed(element, offset, format!("{value} ticks do not fit in 63 bits")))
}

/// Iterates the child boxes of a body held in memory.
struct Children<'a> {
    body: &'a Bytes,
    /// File offset of `body[0]`.
    base: u64,
    pos: usize,
}

impl<'a> Children<'a> {
    fn new(body: &'a Bytes, base: u64) -> Self {
        Children { body, base, pos: 0 }
    }
}

impl Iterator for Children<'_> {
    type Item = Result<(BoxHeader, Bytes), ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos + 8 > self.body.len() {
            return None;
        }
        let offset = self.base + self.pos as u64;
        let parent_end = self.base + self.body.len() as u64;
        let header = match parse_box_header(&self.body[self.pos..], offset, parent_end) {
            Ok(h) => h,
            Err(e) => {
                self.pos = self.body.len();
                return Some(Err(e));
            }
        };
        let start = self.pos + header.header_len as usize;
        let end = self.pos + header.size as usize;
        self.pos = end;
        Some(Ok((header, self.body.slice(start..end))))
    }
}

/// Finds the first child of type `kind`.
fn child(body: &Bytes, base: u64, kind: &[u8; 4]) -> Result<Option<(BoxHeader, Bytes)>, ParseError> {
    for item in Children::new(body, base) {
        let (header, data) = item?;
        if header.is(kind) {
            return Ok(Some((header, data)));
        }
    }
    Ok(None)
}

/// Big-endian reads over a box body with errors naming the box and offset.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    element: &'static str,
    base: u64,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8], element: &'static str, base: u64) -> Self {
        Cursor { buf, pos: 0, element, base }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ParseError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len()).ok_or(ParseError::Truncated {
            element: self.element,
            offset: self.base + self.pos as u64,
            needed: n as u64,
            end: self.base + self.buf.len() as u64,
        })?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn skip(&mut self, n: usize) -> Result<(), ParseError> {
        self.take(n).map(|_| ())
    }

    fn u8(&mut self) -> Result<u8, ParseError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, ParseError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u24(&mut self) -> Result<u32, ParseError> {
        let b = self.take(3)?;
        Ok(u32::from_be_bytes([0, b[0], b[1], b[2]]))
    }

    fn u32(&mut self) -> Result<u32, ParseError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, ParseError> {
        let b = self.take(8)?;
        let mut be = [0u8; 8];
        be.copy_from_slice(b);
        Ok(u64::from_be_bytes(be))
    }

    /// A signed 64-bit field (as the spec declares it, e.g. an edit's media time).
    fn i64(&mut self) -> Result<i64, ParseError> {
        let b = self.take(8)?;
        let mut be = [0u8; 8];
        be.copy_from_slice(b);
        Ok(i64::from_be_bytes(be))
    }

    /// Version byte and 24-bit flags of a full box.
    fn full_box(&mut self) -> Result<(u8, u32), ParseError> {
        Ok((self.u8()?, self.u24()?))
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    /// An entry count that must fit, at `entry_size` bytes each, in what is left of the box:
    /// the check that keeps a forged count from sizing an allocation.
    fn count(&mut self, entry_size: usize) -> Result<usize, ParseError> {
        let at = self.offset();
        let count = self.u32()? as usize;
        if count.saturating_mul(entry_size) > self.remaining() {
            return Err(ParseError::malformed(
                self.element,
                at,
                format!(
                    "{count} entries of {entry_size} bytes do not fit in the {} bytes left",
                    self.remaining()
                ),
            ));
        }
        Ok(count)
    }
}

/// One sample of the chosen track, compact: the table of a 10-hour file stays small.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TableSample {
    offset: u64,
    size: u32,
    /// Decode time in media ticks.
    dts: i64,
    /// Composition offset in media ticks.
    cts_offset: i32,
    duration: u32,
    sync: bool,
}

/// Track defaults from `trex`, used by fragments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct TrackDefaults {
    duration: u32,
    size: u32,
    flags: u32,
}

/// A fragment known before reading it (from `sidx` or `mfra`): where its `moof` starts and
/// the presentation time it starts at (or of its first sync sample).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FragmentRef {
    moof_offset: u64,
    start: MediaTime,
}

#[derive(Debug)]
pub(crate) struct Mp4Index {
    info: TrackInfo,
    track_id: u32,
    timescale: u64,
    /// Subtracted from composition times (media ticks): the edit list's media start.
    edit_media_start: i64,
    /// Added to presentation times: empty edits at the start (already converted).
    edit_delay: MediaTime,
    /// Samples described in `moov` (all of them for a plain file).
    table: Vec<TableSample>,
    /// Present for fragmented files.
    fragments: Option<Fragments>,
    /// What reading fragments has taught so far (fragmented files only). Filled without the
    /// lock held across reads: two threads may both read, the first to finish keeps its copy.
    learned: Mutex<Learned>,
}

/// Kept from walks of a fragmented file, as the MP3 index keeps its frame table: a seek or a
/// batch of samples does not re-read what an earlier one already read.
#[derive(Debug, Default)]
struct Learned {
    /// Every fragment's `moof` offset, from a walk of top-level box headers.
    offsets: Option<Arc<Vec<u64>>>,
    /// The keyframes of every fragment, in file order.
    keyframes: Option<Arc<Vec<Keyframe>>>,
    /// The last `moof` expanded: consecutive sample batches read from the same fragment.
    last_moof: Option<(BoxHeader, Arc<Vec<TableSample>>)>,
}

#[derive(Debug)]
struct Fragments {
    defaults: TrackDefaults,
    /// Where the `moov` ends: fragments follow it.
    after_moov: u64,
    /// Every fragment, from a `sidx`; `None` means walk box headers to find them.
    known: Option<Vec<FragmentRef>>,
    /// Fragments holding sync samples with their times (from `sidx` or `mfra`): where a seek
    /// looks first, so it reads one `moof` instead of walking.
    seek_hints: Option<Vec<FragmentRef>>,
}

impl Mp4Index {
    pub(crate) fn open(reader: &Reader<'_>) -> Result<Self, ParseError> {
        let len = reader.len();
        let mut offset = 0u64;
        let mut moov: Option<BoxHeader> = None;
        let mut boxes = 0usize;
        while offset + 8 <= len {
            boxes += 1;
            if boxes > MAX_TOP_LEVEL_BOXES {
                return Err(ParseError::malformed("box", offset, "too many top-level boxes before moov"));
            }
            let header_bytes = reader.read_up_to(offset, 16, "box header")?;
            let header = parse_box_header(&header_bytes, offset, len)?;
            if header.is(b"moov") {
                moov = Some(header);
                break;
            }
            offset = header.end();
        }
        let Some(moov) = moov else {
            return Err(ParseError::Missing {
                element: "moov",
                searched_to: offset,
                hint: "the recording was never finalized (the recorder stopped before writing its index)",
            });
        };
        let body = reader.read(moov.body_offset(), moov.body_len(), "moov")?;
        let mut index = Self::from_moov(&body, moov.body_offset(), len)?;
        if let Some(fragments) = index.fragments.as_mut() {
            fragments.after_moov = moov.end();
            // Only fragmented files look past moov: for a sidx right after it.
            let first_after_moov = match reader.read_up_to(moov.end(), 16, "box header")? {
                h if h.len() >= 8 => Some(parse_box_header(&h, moov.end(), len)?),
                _ => None,
            };
            if let Some(sidx) = first_after_moov.filter(|h| h.is(b"sidx")) {
                let body = reader.read(sidx.body_offset(), sidx.body_len(), "sidx")?;
                let refs = parse_sidx(&body, sidx)?;
                if !refs.is_empty() {
                    fragments.known = Some(refs.clone());
                    fragments.seek_hints = Some(refs);
                }
            } else {
                fragments.seek_hints = read_mfra(reader, index.track_id, index.timescale)?;
            }
        }
        if index.table.is_empty() && index.fragments.is_none() {
            return Err(ParseError::NoSamples);
        }
        index.info.duration = index.info.duration.or_else(|| index.table_duration());
        Ok(index)
    }

    fn from_moov(moov: &Bytes, base: u64, file_len: u64) -> Result<Self, ParseError> {
        let mut movie_timescale = 1000u64;
        let mut movie_duration = 0u64;
        let mut traks = Vec::new();
        let mut mvex: Option<(BoxHeader, Bytes)> = None;
        for item in Children::new(moov, base) {
            let (header, data) = item?;
            match &header.kind {
                b"mvhd" => {
                    let mut c = Cursor::new(&data, "mvhd", header.body_offset());
                    let (version, _) = c.full_box()?;
                    if version == 1 {
                        c.skip(16)?;
                        movie_timescale = u64::from(c.u32()?);
                        movie_duration = match c.u64()? {
                            u64::MAX => 0, // unknown
                            d => {
                                signed_ticks(d, "mvhd", header.offset)?;
                                d
                            }
                        };
                    } else {
                        c.skip(8)?;
                        movie_timescale = u64::from(c.u32()?);
                        movie_duration = u64::from(c.u32()?);
                    }
                }
                b"trak" => traks.push(parse_trak(&data, header.body_offset(), file_len)?),
                b"mvex" => mvex = Some((header, data)),
                _ => {}
            }
        }
        // First video track, else first audio, else the first track with a known codec.
        let pick = traks
            .iter()
            .position(|t| t.codec.is_video())
            .or_else(|| traks.iter().position(|t| t.codec.is_audio()))
            .or_else(|| (!traks.is_empty()).then_some(0));
        let Some(pick) = pick else {
            return Err(ParseError::Missing {
                element: "trak",
                searched_to: base,
                hint: "the moov holds no tracks",
            });
        };
        let trak = traks.swap_remove(pick);
        if movie_timescale == 0 {
            return Err(ParseError::malformed("mvhd", base, "movie timescale is zero"));
        }
        let edit_delay = MediaTime::from_ticks(trak.edit_empty, movie_timescale).unwrap_or(MediaTime::ZERO);

        let fragments = match mvex {
            Some((header, data)) => {
                let mut defaults = TrackDefaults::default();
                let mut fragment_duration = None;
                for item in Children::new(&data, header.body_offset()) {
                    let (h, d) = item?;
                    let mut c = Cursor::new(&d, box_name(&h.kind), h.body_offset());
                    if h.is(b"trex") {
                        c.full_box()?;
                        if c.u32()? == trak.track_id {
                            c.skip(4)?;
                            defaults = TrackDefaults { duration: c.u32()?, size: c.u32()?, flags: c.u32()? };
                        }
                    } else if h.is(b"mehd") {
                        let (version, _) = c.full_box()?;
                        let d = if version == 1 { c.u64()? } else { u64::from(c.u32()?) };
                        if d != u64::MAX {
                            signed_ticks(d, "mehd", h.offset)?;
                            fragment_duration = Some(d);
                        }
                    }
                }
                if let Some(d) = fragment_duration.filter(|&d| d > 0) {
                    movie_duration = d;
                }
                Some(Fragments { defaults, after_moov: 0, known: None, seek_hints: None })
            }
            None => None,
        };

        let duration = if trak.media_duration > 0 && trak.timescale > 0 && fragments.is_none() {
            MediaTime::from_ticks(trak.media_duration, trak.timescale)
        } else if movie_duration > 0 && movie_duration != u64::from(u32::MAX) {
            MediaTime::from_ticks(signed_ticks(movie_duration, "mvhd", base)?, movie_timescale)
        } else {
            None
        };
        let info = TrackInfo {
            container: if fragments.is_some() { Container::FragmentedMp4 } else { Container::Mp4 },
            codec: trak.codec,
            codec_config: trak.codec_config,
            timescale: trak.timescale,
            duration,
            video: trak.video,
            audio: trak.audio,
        };
        Ok(Mp4Index {
            info,
            track_id: trak.track_id,
            timescale: trak.timescale,
            edit_media_start: trak.edit_media_start,
            edit_delay,
            table: trak.samples,
            fragments,
            learned: Mutex::new(Learned::default()),
        })
    }

    fn table_duration(&self) -> Option<MediaTime> {
        let last = self.table.last()?;
        MediaTime::from_ticks(last.dts.saturating_add(i64::from(last.duration)), self.timescale)
    }

    /// Presentation time of a sample given its decode time and composition offset (ticks).
    fn pts(&self, dts: i64, cts_offset: i32) -> MediaTime {
        let ticks = dts.saturating_add(i64::from(cts_offset)).saturating_sub(self.edit_media_start);
        MediaTime::from_ticks(ticks, self.timescale)
            .unwrap_or(MediaTime::ZERO)
            .saturating_add(self.edit_delay)
    }

    fn dts(&self, dts: i64) -> MediaTime {
        MediaTime::from_ticks(dts.saturating_sub(self.edit_media_start), self.timescale)
            .unwrap_or(MediaTime::ZERO)
            .saturating_add(self.edit_delay)
    }

    fn to_sample(&self, s: &TableSample) -> Sample {
        Sample {
            pts: self.pts(s.dts, s.cts_offset),
            dts: self.dts(s.dts),
            duration: MediaTime::from_ticks(i64::from(s.duration), self.timescale).unwrap_or(MediaTime::ZERO),
            offset: s.offset,
            size: u64::from(s.size),
            keyframe: s.sync,
            follows_damage: false,
        }
    }

    fn keyframe_at(&self, s: &TableSample, pos: ReadPos) -> Keyframe {
        Keyframe { pts: self.pts(s.dts, s.cts_offset), offset: s.offset, size: u64::from(s.size), pos }
    }

    /// Keyframes of the `moov` table; `pos.offset` 0 marks table positions.
    fn table_keyframes(&self) -> Vec<Keyframe> {
        self.table
            .iter()
            .enumerate()
            .filter(|(_, s)| s.sync)
            .map(|(i, s)| self.keyframe_at(s, ReadPos { offset: 0, sample: i as u64 }))
            .collect()
    }

    fn learned(&self) -> std::sync::MutexGuard<'_, Learned> {
        self.learned.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads and expands the fragment whose `moof` starts at `moof_offset` (or takes it from
    /// the last one expanded).
    fn read_fragment(
        &self,
        src: &dyn RangeSource,
        moof_offset: u64,
        fragments: &Fragments,
    ) -> Result<(BoxHeader, Arc<Vec<TableSample>>), ParseError> {
        if let Some((header, samples)) = &self.learned().last_moof {
            if header.offset == moof_offset {
                return Ok((*header, samples.clone()));
            }
        }
        let reader = Reader::new(src, Bytes::new());
        let head = reader.read_up_to(moof_offset, 16, "box header")?;
        let header = parse_box_header(&head, moof_offset, src.len())?;
        if !header.is(b"moof") {
            return Err(ParseError::malformed("moof", moof_offset, "expected a moof box here"));
        }
        if header.size > MAX_MOOF {
            return Err(ParseError::TooLarge {
                element: "moof",
                offset: moof_offset,
                size: header.size,
                limit: MAX_MOOF,
            });
        }
        let body = reader.read(header.body_offset(), header.body_len(), "moof")?;
        let samples = Arc::new(parse_moof(&body, header, self.track_id, fragments.defaults)?);
        self.learned().last_moof = Some((header, samples.clone()));
        Ok((header, samples))
    }

    /// Every fragment `moof` offset in file order: from `sidx`/`mfra` when opening found one,
    /// else by walking top-level box headers.
    fn fragment_offsets(
        &self,
        src: &dyn RangeSource,
        fragments: &Fragments,
    ) -> Result<Arc<Vec<u64>>, ParseError> {
        if let Some(known) = &fragments.known {
            return Ok(Arc::new(known.iter().map(|f| f.moof_offset).collect()));
        }
        if let Some(offsets) = &self.learned().offsets {
            return Ok(offsets.clone());
        }
        let mut walker = WindowReader::new(src, FRAGMENT_WALK_WINDOW);
        let mut offset = fragments.after_moov;
        let mut out = Vec::new();
        let len = src.len();
        while offset + 8 <= len {
            let head = walker.read_up_to(offset, 16, "box header")?;
            let header = parse_box_header(&head, offset, len)?;
            if header.is(b"moof") {
                out.push(offset);
            }
            offset = header.end();
        }
        let out = Arc::new(out);
        self.learned().offsets = Some(out.clone());
        Ok(out)
    }

    fn fragment_keyframes(
        &self,
        src: &dyn RangeSource,
        fragments: &Fragments,
    ) -> Result<Arc<Vec<Keyframe>>, ParseError> {
        if let Some(keyframes) = &self.learned().keyframes {
            return Ok(keyframes.clone());
        }
        let mut out = Vec::new();
        for &moof in self.fragment_offsets(src, fragments)?.iter() {
            let (_, samples) = self.read_fragment(src, moof, fragments)?;
            for (i, s) in samples.iter().enumerate().filter(|(_, s)| s.sync) {
                out.push(self.keyframe_at(s, ReadPos { offset: moof, sample: i as u64 }));
            }
        }
        let out = Arc::new(out);
        self.learned().keyframes = Some(out.clone());
        Ok(out)
    }

    /// The moof that follows the fragment at `moof`, walking box headers past its `mdat`.
    fn next_moof(&self, src: &dyn RangeSource, moof: BoxHeader) -> Result<Option<u64>, ParseError> {
        let reader = Reader::new(src, Bytes::new());
        let len = src.len();
        let mut offset = moof.end();
        let mut steps = 0;
        while offset + 8 <= len && steps < MAX_TOP_LEVEL_BOXES {
            let head = reader.read_up_to(offset, 16, "box header")?;
            let header = parse_box_header(&head, offset, len)?;
            if header.is(b"moof") {
                return Ok(Some(offset));
            }
            offset = header.end();
            steps += 1;
        }
        Ok(None)
    }
}

fn presentation_order(mut keyframes: Vec<Keyframe>) -> Vec<Keyframe> {
    keyframes.sort_by_key(|k| (k.pts, k.offset));
    keyframes
}

/// The latest keyframe at or before `t`, or the first when `t` precedes all of them.
fn at_or_before(keyframes: &[Keyframe], t: MediaTime) -> Option<Keyframe> {
    keyframes.iter().filter(|k| k.pts <= t).max_by_key(|k| k.pts).or_else(|| keyframes.first()).copied()
}

impl ContainerIndex for Mp4Index {
    fn info(&self) -> &TrackInfo {
        &self.info
    }

    fn keyframes(&self, src: &dyn RangeSource) -> Result<Vec<Keyframe>, ParseError> {
        let mut out = self.table_keyframes();
        if let Some(fragments) = &self.fragments {
            out.extend(self.fragment_keyframes(src, fragments)?.iter().copied());
        }
        Ok(presentation_order(out))
    }

    fn seek(&self, src: &dyn RangeSource, t: MediaTime) -> Result<Keyframe, ParseError> {
        let Some(fragments) = &self.fragments else {
            return at_or_before(&self.table_keyframes(), t).ok_or(ParseError::NoSamples);
        };
        // With a fragment table, read only the fragment that starts at or before t (and the
        // one before it, should that fragment not begin with a keyframe).
        if let Some(hints) = &fragments.seek_hints {
            let idx = hints.iter().rposition(|f| f.start <= t).unwrap_or(0);
            for (i, fragment) in hints[..=idx].iter().enumerate().rev() {
                let (_, samples) = self.read_fragment(src, fragment.moof_offset, fragments)?;
                let mut candidates = samples.iter().enumerate().filter(|(_, s)| s.sync).map(|(n, s)| {
                    self.keyframe_at(s, ReadPos { offset: fragment.moof_offset, sample: n as u64 })
                });
                let best = candidates.clone().filter(|k| k.pts <= t).max_by_key(|k| k.pts);
                if let Some(k) = best {
                    return Ok(k);
                }
                if i == 0 {
                    if let Some(first) = candidates.next() {
                        return Ok(first);
                    }
                }
            }
        }
        at_or_before(&self.keyframes(src)?, t).ok_or(ParseError::NoSamples)
    }

    fn samples(&self, src: &dyn RangeSource, from: ReadPos, max: usize) -> Result<SampleBatch, ParseError> {
        let mut out = Vec::new();
        let mut pos = Some(from);
        while let Some(at) = pos {
            if out.len() >= max {
                break;
            }
            if at.offset == 0 {
                // moov table
                let start = usize::try_from(at.sample).unwrap_or(usize::MAX).min(self.table.len());
                let take = (max - out.len()).min(self.table.len() - start);
                out.extend(self.table[start..start + take].iter().map(|s| self.to_sample(s)));
                let next = start + take;
                pos = if next < self.table.len() {
                    Some(ReadPos { offset: 0, sample: next as u64 })
                } else {
                    match &self.fragments {
                        Some(f) => {
                            self.next_fragment(src, f, None)?.map(|moof| ReadPos { offset: moof, sample: 0 })
                        }
                        None => None,
                    }
                };
            } else {
                let Some(fragments) = &self.fragments else {
                    return Err(ParseError::malformed(
                        "moof",
                        at.offset,
                        "position names a fragment in a plain file",
                    ));
                };
                let (moof, samples) = self.read_fragment(src, at.offset, fragments)?;
                let start = usize::try_from(at.sample).unwrap_or(usize::MAX).min(samples.len());
                let take = (max - out.len()).min(samples.len() - start);
                out.extend(samples[start..start + take].iter().map(|s| self.to_sample(s)));
                let next = start + take;
                pos = if next < samples.len() {
                    Some(ReadPos { offset: at.offset, sample: next as u64 })
                } else {
                    self.next_fragment(src, fragments, Some(moof))?.map(|m| ReadPos { offset: m, sample: 0 })
                };
            }
        }
        Ok(SampleBatch { samples: out, next: pos })
    }
}

impl Mp4Index {
    /// The first fragment after `current` (or the first fragment at all).
    fn next_fragment(
        &self,
        src: &dyn RangeSource,
        fragments: &Fragments,
        current: Option<BoxHeader>,
    ) -> Result<Option<u64>, ParseError> {
        let after = current.map(|c| c.offset);
        if let Some(known) = &fragments.known {
            return Ok(known.iter().map(|f| f.moof_offset).find(|&m| after.is_none_or(|a| m > a)));
        }
        if let Some(offsets) = self.learned().offsets.clone() {
            return Ok(offsets.iter().copied().find(|&m| after.is_none_or(|a| m > a)));
        }
        match current {
            Some(moof) => self.next_moof(src, moof),
            None => {
                let reader = Reader::new(src, Bytes::new());
                let head = reader.read_up_to(fragments.after_moov, 16, "box header")?;
                if head.len() < 8 {
                    return Ok(None);
                }
                let header = parse_box_header(&head, fragments.after_moov, src.len())?;
                if header.is(b"moof") {
                    Ok(Some(header.offset))
                } else {
                    self.next_moof(src, header)
                }
            }
        }
    }
}

/// What one `trak` says about the track.
#[derive(Debug)]
struct Trak {
    track_id: u32,
    timescale: u64,
    media_duration: i64,
    codec: Codec,
    codec_config: Option<Bytes>,
    video: Option<VideoInfo>,
    audio: Option<AudioInfo>,
    edit_media_start: i64,
    /// Empty edits before the first media edit, in movie ticks.
    edit_empty: i64,
    samples: Vec<TableSample>,
}

fn parse_trak(trak: &Bytes, base: u64, file_len: u64) -> Result<Trak, ParseError> {
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

/// Sample sizes: one for all (a fixed-size `stsz` needs no per-sample vector) or one each.
#[derive(Debug)]
enum Sizes {
    Fixed { size: u32, count: usize },
    Each(Vec<u32>),
}

impl Sizes {
    fn len(&self) -> usize {
        match self {
            Sizes::Fixed { count, .. } => *count,
            Sizes::Each(v) => v.len(),
        }
    }
    fn get(&self, i: usize) -> u32 {
        match self {
            Sizes::Fixed { size, .. } => *size,
            Sizes::Each(v) => v.get(i).copied().unwrap_or(0),
        }
    }
}

/// Refuses a sample count above [`MAX_TABLE_SAMPLES`] before anything is sized by it.
fn table_count(count: usize, element: &'static str, offset: u64) -> Result<usize, ParseError> {
    if count > MAX_TABLE_SAMPLES {
        return Err(ParseError::malformed(
            element,
            offset,
            format!("{count} samples exceed the limit of {MAX_TABLE_SAMPLES} per track"),
        ));
    }
    Ok(count)
}

/// Expands stts/ctts/stss/stsz/stz2/stsc/stco/co64 into one entry per sample.
///
/// The sample count comes from `stsz`/`stz2` and must agree with what the other boxes hold:
/// no more samples than `stts` gives times to, than the chunks (`stsc` x `stco`) hold, than
/// fit in the file at their sizes, and no more than [`MAX_TABLE_SAMPLES`].
fn parse_sample_table(stbl: &Bytes, base: u64, file_len: u64) -> Result<Vec<TableSample>, ParseError> {
    let mut sizes = Sizes::Each(Vec::new());
    let mut sizes_at = base;
    let mut durations: Vec<(u32, u32)> = Vec::new();
    let mut timed: Option<u64> = None;
    let mut cts: Vec<(u32, i32)> = Vec::new();
    let mut sync: Option<Vec<u32>> = None;
    let mut chunks: Vec<u64> = Vec::new();
    let mut stsc: Vec<(u32, u32)> = Vec::new();
    for item in Children::new(stbl, base) {
        let (h, data) = item?;
        let name = box_name(&h.kind);
        let mut c = Cursor::new(&data, name, h.body_offset());
        match &h.kind {
            b"stsz" => {
                c.full_box()?;
                let fixed = c.u32()?;
                let at = c.offset();
                sizes_at = at;
                let count = table_count(c.u32()? as usize, "stsz", at)?;
                if fixed != 0 {
                    // Every sample has the same size: so many samples must fit in the file.
                    if (count as u64).saturating_mul(u64::from(fixed)) > file_len {
                        return Err(ParseError::malformed(
                            "stsz",
                            at,
                            format!("{count} samples of {fixed} bytes do not fit in a {file_len}-byte file"),
                        ));
                    }
                    sizes = Sizes::Fixed { size: fixed, count };
                } else {
                    if count.saturating_mul(4) > c.remaining() {
                        return Err(ParseError::malformed("stsz", at, "sample count exceeds the box"));
                    }
                    let mut each = Vec::with_capacity(count);
                    for _ in 0..count {
                        each.push(c.u32()?);
                    }
                    sizes = Sizes::Each(each);
                }
            }
            b"stz2" => {
                c.full_box()?;
                c.skip(3)?;
                let field = c.u8()?;
                let at = c.offset();
                sizes_at = at;
                let count = table_count(c.u32()? as usize, "stz2", at)?;
                let needed = match field {
                    4 => count.div_ceil(2),
                    8 => count,
                    16 => count.saturating_mul(2),
                    _ => {
                        return Err(ParseError::malformed(
                            "stz2",
                            at,
                            format!("field size {field} is not 4, 8 or 16"),
                        ))
                    }
                };
                if needed > c.remaining() {
                    return Err(ParseError::malformed("stz2", at, "sample count exceeds the box"));
                }
                let mut each = Vec::with_capacity(count);
                let mut i = 0;
                while i < count {
                    match field {
                        4 => {
                            let b = c.u8()?;
                            each.push(u32::from(b >> 4));
                            if i + 1 < count {
                                each.push(u32::from(b & 0x0F));
                            }
                            i += 2;
                        }
                        8 => {
                            each.push(u32::from(c.u8()?));
                            i += 1;
                        }
                        _ => {
                            each.push(u32::from(c.u16()?));
                            i += 1;
                        }
                    }
                }
                sizes = Sizes::Each(each);
            }
            b"stts" => {
                c.full_box()?;
                let n = c.count(8)?;
                durations.reserve_exact(n);
                let mut total = 0u64;
                for _ in 0..n {
                    let entry = (c.u32()?, c.u32()?);
                    total += u64::from(entry.0);
                    durations.push(entry);
                }
                timed = Some(total);
            }
            b"ctts" => {
                // Version 0 is unsigned by the letter of the spec, but writers put negative
                // offsets there too; reading both versions signed is what players do.
                c.full_box()?;
                let n = c.count(8)?;
                cts.reserve_exact(n);
                for _ in 0..n {
                    let count = c.u32()?;
                    cts.push((count, i32::from_be_bytes(c.u32()?.to_be_bytes())));
                }
            }
            b"stss" => {
                c.full_box()?;
                let n = c.count(4)?;
                let mut list = Vec::with_capacity(n);
                for _ in 0..n {
                    list.push(c.u32()?);
                }
                sync = Some(list);
            }
            b"stco" => {
                c.full_box()?;
                let n = c.count(4)?;
                chunks.reserve_exact(n);
                for _ in 0..n {
                    chunks.push(u64::from(c.u32()?));
                }
            }
            b"co64" => {
                c.full_box()?;
                let n = c.count(8)?;
                chunks.reserve_exact(n);
                for _ in 0..n {
                    chunks.push(c.u64()?);
                }
            }
            b"stsc" => {
                c.full_box()?;
                let n = c.count(12)?;
                stsc.reserve_exact(n);
                for _ in 0..n {
                    let first_chunk = c.u32()?;
                    let per_chunk = c.u32()?;
                    c.skip(4)?;
                    stsc.push((first_chunk, per_chunk));
                }
            }
            _ => {}
        }
    }
    let count = sizes.len();
    if count == 0 {
        return Ok(Vec::new());
    }
    if let Some(timed) = timed.filter(|&t| (count as u64) > t) {
        return Err(ParseError::malformed(
            "stsz",
            sizes_at,
            format!("{count} samples listed, but stts gives times to only {timed}"),
        ));
    }
    // Lay samples out in chunks, each with its times and sync flag.
    let mut out = Vec::with_capacity(count);
    let mut dts = 0i64;
    let mut durations = durations.iter().flat_map(|&(n, d)| std::iter::repeat_n(d, n as usize));
    let mut cts = cts.iter().flat_map(|&(n, o)| std::iter::repeat_n(o, n as usize));
    let mut sync_iter = sync.as_ref().map(|s| s.iter().copied().peekable());
    'layout: for (i, &(first_chunk, per_chunk)) in stsc.iter().enumerate() {
        let first = (first_chunk as usize).saturating_sub(1);
        let last =
            stsc.get(i + 1).map(|&(next, _)| (next as usize).saturating_sub(1)).unwrap_or(chunks.len());
        if first >= chunks.len() || last <= first {
            if last < first {
                return Err(ParseError::malformed("stsc", base, "chunk runs are out of order"));
            }
            continue;
        }
        for chunk in &chunks[first..last.min(chunks.len())] {
            let mut offset = *chunk;
            for _ in 0..per_chunk {
                if out.len() >= count {
                    break 'layout;
                }
                let size = sizes.get(out.len());
                let duration = durations.next().unwrap_or(0);
                let cts_offset = cts.next().unwrap_or(0);
                let is_sync = match sync_iter.as_mut() {
                    None => true,
                    Some(it) => {
                        let number = (out.len() + 1) as u32;
                        while it.peek().is_some_and(|&n| n < number) {
                            it.next();
                        }
                        it.peek() == Some(&number)
                    }
                };
                out.push(TableSample { offset, size, dts, cts_offset, duration, sync: is_sync });
                dts = dts.saturating_add(i64::from(duration));
                offset = offset.saturating_add(u64::from(size));
            }
        }
    }
    if out.len() < count {
        return Err(ParseError::malformed(
            "stsc",
            base,
            format!("chunks hold {} of the {count} samples stsz lists", out.len()),
        ));
    }
    Ok(out)
}

/// Expands the runs of our track in one `moof`.
fn parse_moof(
    moof: &Bytes,
    moof_header: BoxHeader,
    track_id: u32,
    defaults: TrackDefaults,
) -> Result<Vec<TableSample>, ParseError> {
    // Runs of default-sized samples cost no bytes per sample, so the count is capped by the
    // moof's size instead, over all its runs together.
    let limit = moof_header.size.saturating_mul(MOOF_SAMPLES_PER_BYTE).min(MAX_MOOF_SAMPLES);
    let mut out = Vec::new();
    for item in Children::new(moof, moof_header.body_offset()) {
        let (h, traf) = item?;
        if !h.is(b"traf") {
            continue;
        }
        let mut tfhd: Option<(u32, TrackDefaults, Option<u64>, bool)> = None;
        let mut base_decode_time: Option<i64> = None;
        let mut next_data = None;
        for item in Children::new(&traf, h.body_offset()) {
            let (bh, data) = item?;
            let mut c = Cursor::new(&data, box_name(&bh.kind), bh.body_offset());
            match &bh.kind {
                b"tfhd" => {
                    let (_, flags) = c.full_box()?;
                    let id = c.u32()?;
                    let base_offset = if flags & 0x1 != 0 { Some(c.u64()?) } else { None };
                    if flags & 0x2 != 0 {
                        c.skip(4)?;
                    }
                    let mut d = defaults;
                    if flags & 0x8 != 0 {
                        d.duration = c.u32()?;
                    }
                    if flags & 0x10 != 0 {
                        d.size = c.u32()?;
                    }
                    if flags & 0x20 != 0 {
                        d.flags = c.u32()?;
                    }
                    tfhd = Some((id, d, base_offset, flags & 0x20000 != 0));
                }
                b"tfdt" => {
                    let (version, _) = c.full_box()?;
                    let t = if version == 1 { c.u64()? } else { u64::from(c.u32()?) };
                    base_decode_time = Some(i64::try_from(t).map_err(|_| {
                        ParseError::malformed("tfdt", bh.offset, "decode time does not fit in 63 bits")
                    })?);
                }
                b"trun" => {
                    let Some((id, d, base_offset, _default_base_is_moof)) = tfhd else {
                        return Err(ParseError::malformed("trun", bh.offset, "trun before tfhd"));
                    };
                    if id != track_id {
                        continue;
                    }
                    let (_, flags) = c.full_box()?;
                    let per_sample =
                        [0x100u32, 0x200, 0x400, 0x800].iter().filter(|&&f| flags & f != 0).count() * 4;
                    let at = c.offset();
                    let count = c.u32()? as usize;
                    let data_offset = if flags & 0x1 != 0 {
                        Some(i64::from(i32::from_be_bytes(c.u32()?.to_be_bytes())))
                    } else {
                        None
                    };
                    let first_flags = if flags & 0x4 != 0 { Some(c.u32()?) } else { None };
                    if per_sample > 0 && count.saturating_mul(per_sample) > c.remaining() {
                        return Err(ParseError::malformed("trun", at, "sample count exceeds the box"));
                    }
                    let total = (out.len() as u64).saturating_add(count as u64);
                    if total > limit {
                        return Err(ParseError::malformed(
                            "trun",
                            at,
                            format!(
                                "runs declare {total} samples, more than the {limit} a moof of {} bytes may hold",
                                moof_header.size
                            ),
                        ));
                    }
                    let base = base_offset.unwrap_or(moof_header.offset);
                    let mut offset = match data_offset {
                        Some(off) => base.checked_add_signed(off).ok_or_else(|| {
                            ParseError::malformed("trun", at, "data offset points before the file")
                        })?,
                        None => next_data.unwrap_or(moof_header.end()),
                    };
                    let mut dts = base_decode_time.unwrap_or(0);
                    out.reserve(count);
                    for i in 0..count {
                        let duration = if flags & 0x100 != 0 { c.u32()? } else { d.duration };
                        let size = if flags & 0x200 != 0 { c.u32()? } else { d.size };
                        let sample_flags = if flags & 0x400 != 0 {
                            c.u32()?
                        } else if i == 0 {
                            first_flags.unwrap_or(d.flags)
                        } else {
                            d.flags
                        };
                        let cts_offset =
                            if flags & 0x800 != 0 { i32::from_be_bytes(c.u32()?.to_be_bytes()) } else { 0 };
                        let non_sync = sample_flags & 0x0001_0000 != 0;
                        out.push(TableSample { offset, size, dts, cts_offset, duration, sync: !non_sync });
                        offset = offset.saturating_add(u64::from(size));
                        dts = dts.saturating_add(i64::from(duration));
                    }
                    next_data = Some(offset);
                    base_decode_time = Some(dts);
                }
                _ => {}
            }
        }
    }
    Ok(out)
}

/// The sync-sample fragments listed by the `mfra` at the end of the file (found through the
/// `mfro` in its last 16 bytes). `None` when the file has none. `tfra` lists only fragments that
/// hold a sync sample, so this serves seeking, not the fragment list.
fn read_mfra(
    reader: &Reader<'_>,
    track_id: u32,
    timescale: u64,
) -> Result<Option<Vec<FragmentRef>>, ParseError> {
    let len = reader.len();
    if len < 16 {
        return Ok(None);
    }
    let tail = reader.read(len - 16, 16, "mfro")?;
    if &tail[4..8] != b"mfro" {
        return Ok(None);
    }
    let mfra_size = u64::from(u32::from_be_bytes([tail[12], tail[13], tail[14], tail[15]]));
    if mfra_size < 16 || mfra_size > len {
        return Ok(None);
    }
    let mfra_offset = len - mfra_size;
    let mfra = reader.read(mfra_offset, mfra_size, "mfra")?;
    let header = parse_box_header(&mfra, mfra_offset, len)?;
    if !header.is(b"mfra") {
        return Ok(None);
    }
    let body = mfra.slice(header.header_len as usize..);
    for item in Children::new(&body, header.body_offset()) {
        let (h, tfra) = item?;
        if !h.is(b"tfra") {
            continue;
        }
        let mut c = Cursor::new(&tfra, "tfra", h.body_offset());
        let (version, _) = c.full_box()?;
        if c.u32()? != track_id {
            continue;
        }
        let sizes = c.u32()?;
        let field = |shift: u32| ((sizes >> shift) & 0x3) as usize + 1;
        let skip = field(4) + field(2) + field(0);
        let count = c.count(if version == 1 { 16 } else { 8 } + skip)?;
        let mut out: Vec<FragmentRef> = Vec::with_capacity(count);
        for _ in 0..count {
            let (time, moof) =
                if version == 1 { (c.u64()?, c.u64()?) } else { (u64::from(c.u32()?), u64::from(c.u32()?)) };
            c.skip(skip)?;
            if moof >= len {
                return Err(ParseError::malformed(
                    "tfra",
                    h.offset,
                    format!("moof offset {moof} lies past the end"),
                ));
            }
            let start = MediaTime::from_ticks(i64::try_from(time).unwrap_or(i64::MAX), timescale)
                .unwrap_or(MediaTime::MAX);
            out.push(FragmentRef { moof_offset: moof, start });
        }
        out.sort_by_key(|f| f.moof_offset);
        out.dedup_by_key(|f| f.moof_offset);
        return Ok(Some(out).filter(|o| !o.is_empty()));
    }
    Ok(None)
}

fn parse_sidx(body: &Bytes, sidx: BoxHeader) -> Result<Vec<FragmentRef>, ParseError> {
    let mut c = Cursor::new(body, "sidx", sidx.body_offset());
    let (version, _) = c.full_box()?;
    c.skip(4)?; // reference id
    let timescale = u64::from(c.u32()?);
    let (earliest, first_offset) =
        if version == 0 { (u64::from(c.u32()?), u64::from(c.u32()?)) } else { (c.u64()?, c.u64()?) };
    c.skip(2)?;
    let count = usize::from(c.u16()?);
    if count.saturating_mul(12) > c.remaining() {
        return Err(ParseError::malformed("sidx", sidx.offset, "reference count exceeds the box"));
    }
    let mut offset = sidx.end().saturating_add(first_offset);
    let mut time = earliest;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let reference = c.u32()?;
        let duration = u64::from(c.u32()?);
        c.skip(4)?;
        if reference & 0x8000_0000 != 0 {
            // A reference to another sidx (hierarchical index): fall back to walking.
            return Ok(Vec::new());
        }
        let start = MediaTime::from_ticks(i64::try_from(time).unwrap_or(i64::MAX), timescale.max(1))
            .unwrap_or(MediaTime::MAX);
        out.push(FragmentRef { moof_offset: offset, start });
        offset = offset.saturating_add(u64::from(reference & 0x7FFF_FFFF));
        time = time.saturating_add(duration);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::TrackIndex;

    /// A box: size, type, body.
    fn bx(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut out = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(body);
        out
    }

    fn full(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut b = vec![0, 0, 0, 0];
        b.extend_from_slice(body);
        bx(kind, &b)
    }

    fn u32s(values: &[u32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_be_bytes()).collect()
    }

    /// A one-track movie of `n` one-second samples of 100 bytes in one chunk at `data_at`.
    fn movie(n: u32, data_at: u32, stsz_count: u32) -> Vec<u8> {
        let mdhd = full(b"mdhd", &u32s(&[0, 0, 1000, n * 1000, 0]));
        let stts = full(b"stts", &u32s(&[1, n, 1000]));
        let stss = full(b"stss", &u32s(&[1, 1]));
        let mut stsz_body = u32s(&[0, stsz_count]);
        stsz_body.extend(u32s(&vec![100; n as usize]));
        let stsz = full(b"stsz", &stsz_body);
        let stsc = full(b"stsc", &u32s(&[1, 1, n, 1]));
        let stco = full(b"stco", &u32s(&[1, data_at]));
        let stbl = bx(b"stbl", &[stts, stss, stsz, stsc, stco].concat());
        let minf = bx(b"minf", &stbl);
        let mdia = bx(b"mdia", &[mdhd, minf].concat());
        let tkhd = full(b"tkhd", &u32s(&[0, 0, 1, 0, 0]));
        let trak = bx(b"trak", &[tkhd, mdia].concat());
        let mvhd = full(b"mvhd", &u32s(&[0, 0, 1000, n * 1000]));
        bx(b"moov", &[mvhd, trak].concat())
    }

    fn file_with_moov_at_end(n: u32) -> Bytes {
        let ftyp = bx(b"ftyp", b"isom\0\0\0\0");
        let mdat = bx(b"mdat", &vec![0u8; (n * 100) as usize]);
        let data_at = (ftyp.len() + 8) as u32;
        Bytes::from([ftyp, mdat, movie(n, data_at, n)].concat())
    }

    fn open(data: Vec<u8>) -> Result<TrackIndex, ParseError> {
        TrackIndex::open("t", &Bytes::from(data)).map_err(|e| e.source)
    }

    #[test]
    fn a_built_movie_indexes_every_sample() {
        let src = file_with_moov_at_end(5);
        let index = TrackIndex::open("t", &src).expect("opens");
        assert_eq!(index.info().duration, Some(MediaTime::from_secs(5)));
        let keyframes = index.keyframes(&src).expect("keyframes");
        assert_eq!(keyframes.len(), 1);
        assert_eq!(keyframes[0].offset, 24);
        let batch = index.samples(&src, keyframes[0].pos, 10).expect("samples");
        assert_eq!(batch.samples.len(), 5);
        assert_eq!(batch.samples[4].offset, 24 + 400);
        assert_eq!(batch.samples[4].pts, MediaTime::from_secs(4));
        assert!(!batch.samples[1].keyframe);
    }

    #[test]
    fn a_recording_without_moov_says_it_was_never_finalized() {
        let ftyp = bx(b"ftyp", b"isom\0\0\0\0");
        let mdat = bx(b"mdat", &[0u8; 5000]);
        let err = open([ftyp, mdat].concat()).expect_err("no moov");
        assert!(matches!(err, ParseError::Missing { element: "moov", .. }), "{err}");
        assert!(err.to_string().contains("never finalized"));
    }

    #[test]
    fn box_sizes_past_the_end_smaller_than_header_or_huge_are_errors() {
        let ftyp = bx(b"ftyp", b"isom\0\0\0\0");
        // mdat claims more than the file holds.
        let mut mdat = bx(b"mdat", &[0u8; 64]);
        mdat[0..4].copy_from_slice(&1_000_000u32.to_be_bytes());
        let err = open([ftyp.clone(), mdat].concat()).expect_err("too big");
        assert!(matches!(err, ParseError::Malformed { element: "mdat", offset: 16, .. }), "{err}");
        // size 4: smaller than its header.
        let mut bad = bx(b"free", &[0u8; 8]);
        bad[0..4].copy_from_slice(&4u32.to_be_bytes());
        let err = open([ftyp.clone(), bad].concat()).expect_err("tiny");
        assert!(matches!(err, ParseError::Malformed { element: "free", offset: 16, .. }), "{err}");
        // 64-bit size of 2^64-1.
        let mut large = 1u32.to_be_bytes().to_vec();
        large.extend_from_slice(b"mdat");
        large.extend_from_slice(&u64::MAX.to_be_bytes());
        let err = open([ftyp.clone(), large].concat()).expect_err("huge");
        assert!(matches!(err, ParseError::Malformed { element: "mdat", .. }), "{err}");
        // Truncated header at the end is simply the end of the walk: no moov.
        let err = open([ftyp, vec![0, 0, 0]].concat()).expect_err("truncated");
        assert!(matches!(err, ParseError::Missing { element: "moov", .. }), "{err}");
    }

    #[test]
    fn forged_counts_do_not_size_allocations() {
        // stsz claims 2^31 samples in a 20-byte body.
        let ftyp = bx(b"ftyp", b"isom\0\0\0\0");
        let moov = movie(1, 0, 0x8000_0000);
        let err = open([ftyp.clone(), moov].concat()).expect_err("forged count");
        assert!(
            matches!(&err, ParseError::Malformed { element: "stsz", reason, .. } if reason.contains("exceed the limit")),
            "{err}"
        );
        // stsz lists more samples than stts gives times to.
        let moov = movie(3, 0, 3);
        let at = moov.windows(4).position(|w| w == b"stts").expect("stts") + 4 + 4 + 4;
        let mut moov = moov;
        moov[at..at + 4].copy_from_slice(&2u32.to_be_bytes());
        let err = open([ftyp, moov].concat()).expect_err("untimed samples");
        assert!(matches!(err, ParseError::Malformed { element: "stsz", .. }), "{err}");
    }

    #[test]
    fn durations_and_edit_times_above_63_bits_are_typed_errors_not_negative_times() {
        let ftyp = bx(b"ftyp", b"isom\0\0\0\0");
        // mdhd version 1 with a duration of 2^63 + 5: wraps to a negative time with `as i64`.
        let mut v1 = vec![1, 0, 0, 0];
        v1.extend_from_slice(&[0; 16]);
        v1.extend_from_slice(&1000u32.to_be_bytes());
        v1.extend_from_slice(&(u64::MAX / 2 + 6).to_be_bytes());
        v1.extend_from_slice(&[0; 4]);
        let moov = movie(1, 0, 1);
        let at = moov.windows(4).position(|w| w == b"mdhd").expect("mdhd") - 4;
        let old_len = u32::from_be_bytes([moov[at], moov[at + 1], moov[at + 2], moov[at + 3]]) as usize;
        let new_mdhd = bx(b"mdhd", &v1);
        let grow = (new_mdhd.len() - old_len) as u32;
        let mut moov2 = [&moov[..at], &new_mdhd[..], &moov[at + old_len..]].concat();
        // moov, trak and mdia sizes grow with it.
        for kind in [b"moov", b"trak", b"mdia"] {
            let k = moov2.windows(4).position(|w| w == kind).expect("box") - 4;
            let size = u32::from_be_bytes([moov2[k], moov2[k + 1], moov2[k + 2], moov2[k + 3]]) + grow;
            moov2[k..k + 4].copy_from_slice(&size.to_be_bytes());
        }
        let err = open([ftyp.clone(), moov2].concat()).expect_err("huge duration");
        assert!(matches!(err, ParseError::Malformed { element: "mdhd", .. }), "{err}");

        // mvhd version 0 is 32-bit: fine. An elst of version 1 whose empty edits add past
        // i64::MAX movie ticks.
        let mut elst = vec![1, 0, 0, 0];
        elst.extend_from_slice(&2u32.to_be_bytes());
        for _ in 0..2 {
            elst.extend_from_slice(&(u64::MAX / 2 + 1).to_be_bytes()); // duration
            elst.extend_from_slice(&(-1i64).to_be_bytes()); // empty edit
            elst.extend_from_slice(&[0, 1, 0, 0]);
        }
        let edts = bx(b"edts", &bx(b"elst", &elst));
        let moov = movie(1, 0, 1);
        let at = moov.windows(4).position(|w| w == b"mdia").expect("mdia") - 4;
        let mut moov3: Vec<u8> = [&moov[..at], &edts[..], &moov[at..]].concat();
        for kind in [b"moov", b"trak"] {
            let k = moov3.windows(4).position(|w| w == kind).expect("box") - 4;
            let size =
                u32::from_be_bytes([moov3[k], moov3[k + 1], moov3[k + 2], moov3[k + 3]]) + edts.len() as u32;
            moov3[k..k + 4].copy_from_slice(&size.to_be_bytes());
        }
        let err = open([ftyp, moov3].concat()).expect_err("empty edits past 63 bits");
        assert!(matches!(err, ParseError::Malformed { element: "elst", .. }), "{err}");
    }

    /// A fragmented file: an empty moov table with `trex` defaults (1 s, 100 bytes, sync), then
    /// `fragments` moof+mdat pairs of `per` samples each, no sidx, no mfra.
    fn fragmented(fragments: u32, per: u32) -> Bytes {
        let ftyp = bx(b"ftyp", b"iso6\0\0\0\0");
        let plain = movie(0, 0, 0);
        let trex = full(b"trex", &u32s(&[1, 1, 1000, 100, 0]));
        let mvex = bx(b"mvex", &trex);
        let moov = bx(b"moov", &[&plain[8..], &mvex[..]].concat());
        let mut out = [ftyp, moov].concat();
        for f in 0..fragments {
            let mfhd = full(b"mfhd", &u32s(&[f + 1]));
            let tfhd = bx(b"tfhd", &[&[0u8, 2, 0, 0][..], &u32s(&[1])].concat());
            let mut tfdt_body = vec![1, 0, 0, 0];
            tfdt_body.extend_from_slice(&(u64::from(f * per) * 1000).to_be_bytes());
            let tfdt = bx(b"tfdt", &tfdt_body);
            // trun: data offset present; patched once the moof size is known.
            let trun = bx(b"trun", &[&[0u8, 0, 0, 1][..], &u32s(&[per, 0])].concat());
            let traf = bx(b"traf", &[tfhd, tfdt, trun].concat());
            let mut moof = bx(b"moof", &[mfhd, traf].concat());
            let data_offset = moof.len() as u32 + 8;
            let n = moof.len();
            moof[n - 4..].copy_from_slice(&data_offset.to_be_bytes());
            out.extend_from_slice(&moof);
            out.extend_from_slice(&bx(b"mdat", &vec![0u8; (per * 100) as usize]));
        }
        Bytes::from(out)
    }

    #[test]
    fn fragment_walks_and_moofs_are_read_once() {
        let src = fragmented(20, 10);
        let index = TrackIndex::open("t", &src).expect("opens");
        assert_eq!(index.info().container, Container::FragmentedMp4);
        let counted = crate::source::CountingSource::new(&src);
        let first = index.seek(&counted, MediaTime::from_secs(155)).expect("seek");
        assert_eq!(first.pts, MediaTime::from_secs(155));
        assert!(counted.cost().reads > 0);
        // A second seek reads nothing: the walk's keyframes are kept.
        let before = counted.cost();
        let again = index.seek(&counted, MediaTime::from_secs(42)).expect("seek again");
        assert_eq!(again.pts, MediaTime::from_secs(42));
        assert_eq!(counted.cost(), before, "the second seek walked the fragments again");
        // Batches of one sample through a fragment, and on into the next, read each moof once
        // (its header, then its body).
        let mut pos = Some(again.pos);
        for expected in 42..55 {
            let batch = index.samples(&counted, pos.expect("more"), 1).expect("batch");
            assert_eq!(batch.samples[0].pts, MediaTime::from_secs(expected));
            pos = batch.next;
        }
        assert_eq!(counted.cost().reads - before.reads, 4, "two moofs, header and body each");
    }

    #[test]
    fn a_moof_of_many_small_runs_cannot_declare_unbounded_samples() {
        // 64 runs of a million default-sized samples each: 20 bytes per run.
        let src = fragmented(1, 1);
        let moof_at = src.windows(4).position(|w| w == b"moof").expect("moof") - 4;
        let mfhd = full(b"mfhd", &u32s(&[1]));
        let tfhd = bx(b"tfhd", &[&[0u8, 2, 0, 0][..], &u32s(&[1])].concat());
        let runs: Vec<u8> = (0..64).flat_map(|_| full(b"trun", &u32s(&[1_000_000]))).collect();
        let traf = bx(b"traf", &[tfhd, runs].concat());
        let moof = bx(b"moof", &[mfhd, traf].concat());
        let data = Bytes::from([&src[..moof_at], &moof[..], &bx(b"mdat", &[0u8; 100])[..]].concat());
        let index = TrackIndex::open("t", &data).expect("opens: moov is fine");
        let err = index.keyframes(&data).expect_err("too many samples").source;
        assert!(
            matches!(&err, ParseError::Malformed { element: "trun", reason, .. } if reason.contains("may hold")),
            "{err}"
        );
    }

    #[test]
    fn a_zero_timescale_is_refused() {
        let ftyp = bx(b"ftyp", b"isom\0\0\0\0");
        let mut moov = movie(1, 0, 1);
        let at = moov.windows(4).position(|w| w == b"mdhd").expect("mdhd") + 4 + 4 + 8;
        moov[at..at + 4].copy_from_slice(&0u32.to_be_bytes());
        let err = open([ftyp, moov].concat()).expect_err("zero timescale");
        assert!(matches!(err, ParseError::Malformed { element: "mdhd", .. }), "{err}");
    }

    #[test]
    fn every_truncation_of_a_valid_file_fails_cleanly() {
        let full_file = file_with_moov_at_end(3);
        let moov_at = full_file.windows(4).position(|w| w == b"moov").expect("moov") as u64 - 4;
        for cut in 0..full_file.len() {
            let data = full_file.slice(..cut);
            // moov is last: every cut loses part of it (or all of it).
            let err = TrackIndex::open("t", &data).expect_err("a cut file").source;
            match err {
                ParseError::Missing { element: "moov", searched_to, .. } => {
                    assert!(searched_to <= moov_at, "cut {cut}: {err}")
                }
                // A box whose size runs past the cut: ftyp, mdat or moov itself.
                ParseError::Malformed { element: "ftyp" | "mdat" | "moov", offset, .. } => {
                    assert!(offset <= moov_at, "cut {cut}: {err}")
                }
                ParseError::UnknownFormat { .. } => assert!(cut < 8, "cut {cut}: {err}"),
                other => panic!("cut {cut}: {other}"),
            }
        }
    }
}
