//! Walking frame headers forward in windows, resyncing past damage, and keeping the frame table
//! as far as walked: VBR seeks get exact times and later seeks before that point read nothing.

use std::sync::{MutexGuard, PoisonError};

use super::frame::FrameHeader;
use super::{FrameRef, Mp3Index, Prefix, FRAME, FRAME_WINDOW, WALK_STEP};
use crate::index::{ParseError, WindowReader};
use crate::source::RangeSource;

/// How far past a damaged spot we look for the next frame before giving up.
const MAX_RESYNC: u64 = 64 * 1024;

impl Mp3Index {
    /// The frame table, walked on until `enough` says it holds what the caller needs (or the
    /// stream ends).
    pub(super) fn table_until(
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
    pub(super) fn next_frame(
        &self,
        wr: &mut WindowReader<'_>,
        pos: &mut u64,
    ) -> Result<Option<FrameRef>, ParseError> {
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
}
