//! Expanding a plain file's sample tables (stts, ctts, stss, stsz/stz2, stsc, stco/co64) into one
//! compact entry per sample, refusing counts the boxes and the file cannot hold.

use bytes::Bytes;

use super::boxes::{box_name, Children, Cursor};
use super::TableSample;
use crate::index::ParseError;

/// Most samples one track's `moov` tables may describe: 10 hours at 100 samples a second is
/// 3.6 million. Each costs 32 bytes expanded, so a forged table costs at most 128 MiB.
const MAX_TABLE_SAMPLES: usize = 4 * 1024 * 1024;

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
pub(super) fn parse_sample_table(
    stbl: &Bytes,
    base: u64,
    file_len: u64,
) -> Result<Vec<TableSample>, ParseError> {
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
