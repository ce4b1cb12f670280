//! Fragmented MP4: reading and expanding `moof` boxes, finding fragments through `sidx`, `mfra`
//! or a walk of top-level box headers, and remembering what earlier walks read.

use std::sync::{Arc, PoisonError};

use bytes::Bytes;

use super::boxes::{box_name, parse_box_header, BoxHeader, Children, Cursor};
use super::{FragmentRef, Fragments, Learned, Mp4Index, TableSample, TrackDefaults, MAX_TOP_LEVEL_BOXES};
use crate::index::{Keyframe, ParseError, ReadPos, Reader, WindowReader};
use crate::source::RangeSource;
use crate::time::MediaTime;

/// Window for walking top-level box headers of fragmented files.
const FRAGMENT_WALK_WINDOW: u64 = 64 * 1024;
/// A `moof` larger than this is refused (real ones are a few KiB to a few hundred KiB).
const MAX_MOOF: u64 = 64 * 1024 * 1024;
/// Most samples one `moof` may describe, whatever its runs claim: samples per byte of the
/// `moof` (a run of default-sized samples costs no bytes per sample), and an absolute cap.
const MOOF_SAMPLES_PER_BYTE: u64 = 16;
const MAX_MOOF_SAMPLES: u64 = 256 * 1024;

impl Mp4Index {
    fn learned(&self) -> std::sync::MutexGuard<'_, Learned> {
        self.learned.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads and expands the fragment whose `moof` starts at `moof_offset` (or takes it from
    /// the last one expanded).
    pub(super) fn read_fragment(
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

    pub(super) fn fragment_keyframes(
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

    /// The first fragment after `current` (or the first fragment at all).
    pub(super) fn next_fragment(
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
pub(super) fn read_mfra(
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

pub(super) fn parse_sidx(body: &Bytes, sidx: BoxHeader) -> Result<Vec<FragmentRef>, ParseError> {
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
