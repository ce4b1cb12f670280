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

mod boxes;
mod fragments;
mod sample_table;
mod trak;

use std::sync::{Arc, Mutex};

use bytes::Bytes;

use self::boxes::{box_name, parse_box_header, signed_ticks, BoxHeader, Children, Cursor};
use self::fragments::{parse_sidx, read_mfra};
use self::trak::parse_trak;
use super::{
    Container, ContainerIndex, Keyframe, ParseError, ReadPos, Reader, Sample, SampleBatch, TrackInfo,
};
use crate::source::RangeSource;
use crate::time::MediaTime;

/// Upper bound on the top-level boxes walked to find `moov`, so a file of millions of tiny boxes
/// cannot keep opening busy forever.
const MAX_TOP_LEVEL_BOXES: usize = 100_000;

/// The first box is one an MP4 file starts with.
pub(crate) fn is_mp4(head: &[u8]) -> bool {
    head.len() >= 8
        && matches!(
            &head[4..8],
            b"ftyp" | b"styp" | b"moov" | b"mdat" | b"free" | b"skip" | b"wide" | b"pdin" | b"sidx" | b"moof"
        )
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

#[cfg(test)]
mod tests;
