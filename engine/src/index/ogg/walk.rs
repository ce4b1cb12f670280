//! Walking our stream's packets forward from a page: reassembling packets across pages and
//! giving each its time, as FFmpeg does (see the module doc).

use std::collections::VecDeque;

use super::codec::{opus_packet_samples, Kind};
use super::pages::{find_capture, find_page, read_page, Page};
use super::{OggIndex, CRC_WORK_PER_BYTE, CRC_WORK_SLACK, MAX_PAGE, PAGE, PAGE_SEARCH, SEEK_WINDOW};
use crate::index::{Keyframe, ParseError, ReadPos, WindowReader};
use crate::source::RangeSource;
use crate::time::MediaTime;

/// Window for walking pages forward.
const WALK_WINDOW: u64 = 256 * 1024;

impl OggIndex {
    pub(super) fn time(&self, granule_units: i64) -> MediaTime {
        MediaTime::from_ticks(granule_units.saturating_sub(self.pre_skip), self.rate)
            .unwrap_or(MediaTime::MAX)
    }

    pub(super) fn walker<'a>(&'a self, src: &'a dyn RangeSource, start: u64) -> Walker<'a> {
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
    pub(super) fn walker_before<'a>(
        &'a self,
        src: &'a dyn RangeSource,
        target: u64,
    ) -> Result<Walker<'a>, ParseError> {
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

    pub(super) fn keyframe(packet: &Packet, pts: MediaTime) -> Keyframe {
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
pub(super) struct Packet {
    /// The page the packet starts on.
    pub(super) page: u64,
    page_len: u64,
    /// How many packets started on that page before this one.
    pub(super) index_on_page: u64,
    pub(super) offset: u64,
    pub(super) end: u64,
    pub(super) start: i64,
    pub(super) duration: i64,
    /// Pages were skipped or missing before this packet.
    pub(super) follows_damage: bool,
}

/// Walks our stream's packets forward from a page.
pub(super) struct Walker<'a> {
    pub(super) index: &'a OggIndex,
    pub(super) wr: WindowReader<'a>,
    pub(super) pos: u64,
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
    pub(super) fn next_packet(&mut self) -> Result<Option<Packet>, ParseError> {
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
