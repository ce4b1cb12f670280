//! Ogg pages: the CRC, parsing and validating one page, and finding pages of a stream in a
//! window, with the CRC work of a search bounded so forged capture patterns cannot stall it.

use bytes::Bytes;

use super::{CRC_WORK_PER_BYTE, CRC_WORK_SLACK, HEADER_LEN, PAGE, PAGE_SEARCH};
use crate::index::{ParseError, WindowReader};

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

pub(super) fn crc_update(mut crc: u32, data: &[u8]) -> u32 {
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
pub(super) struct Page {
    pub(super) offset: u64,
    header_type: u8,
    pub(super) granule: i64,
    pub(super) serial: u32,
    /// Page sequence number: a gap means pages of the stream are missing.
    pub(super) sequence: u32,
    pub(super) header_len: usize,
    /// Header and body.
    pub(super) bytes: Bytes,
}

/// A run of segments: one packet, or the part of one that lies on this page.
#[derive(Debug, Clone, Copy)]
pub(super) struct Run {
    pub(super) start: usize,
    pub(super) len: usize,
    pub(super) complete: bool,
}

impl Page {
    pub(super) fn len(&self) -> u64 {
        self.bytes.len() as u64
    }
    pub(super) fn end(&self) -> u64 {
        self.offset.saturating_add(self.len())
    }
    pub(super) fn continued(&self) -> bool {
        self.header_type & 1 != 0
    }
    pub(super) fn bos(&self) -> bool {
        self.header_type & 2 != 0
    }
    fn body(&self) -> &[u8] {
        self.bytes.get(self.header_len..).unwrap_or(&[])
    }
    pub(super) fn body_offset(&self) -> u64 {
        self.offset + self.header_len as u64
    }
    fn lacing(&self) -> &[u8] {
        self.bytes.get(HEADER_LEN..self.header_len).unwrap_or(&[])
    }
    /// The packets (or packet parts) on this page, in order.
    pub(super) fn runs(&self) -> Vec<Run> {
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
    pub(super) fn run_bytes(&self, run: Run) -> &[u8] {
        self.body().get(run.start..run.start + run.len).unwrap_or(&[])
    }
}

/// Parses and validates (capture pattern, version, CRC) the page at `at` in `buf`, which lies at
/// byte `abs` of the file. `Truncated` when `buf` ends before the page does.
pub(super) fn parse_page(buf: &Bytes, at: usize, abs: u64) -> Result<Page, ParseError> {
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
pub(super) fn read_page(
    wr: &mut WindowReader<'_>,
    offset: u64,
    budget: &mut u64,
) -> Result<Page, ParseError> {
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
pub(super) fn find_page(buf: &Bytes, from: usize, abs: u64, serial: Option<u32>) -> Option<Page> {
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

pub(super) fn find_capture(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"OggS")
}

/// The granule of the last complete page of stream `serial` in `tail` (which starts at file
/// offset `tail_start`), scanning backwards.
/// Its CRC work is bounded as [`find_page`]'s is.
pub(super) fn last_granule(tail: &Bytes, tail_start: u64, serial: u32) -> Option<i64> {
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
