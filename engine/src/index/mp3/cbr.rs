//! Constant bitrate: where a padded CBR layout puts frame `n`, the one-read check that the file
//! follows it, and sample batches walked from such a frame (or the start) without the table.

use super::frame::FrameHeader;
use super::{Mp3Index, FRAME, FRAME_WINDOW};
use crate::index::{Keyframe, ParseError, ReadPos, SampleBatch, WindowReader};
use crate::source::RangeSource;

/// Window read where a constant-bitrate layout predicts a frame: a few frames and the next
/// header.
pub(super) const VERIFY_WINDOW: u64 = 4096;

/// Where the frames of a constant-bitrate stream lie, if the encoder padded them: frame `n`
/// starts at `start + floor((n * per_frame + phase) / rate)` with `per_frame` = 144 (MPEG-1) or
/// 72 (MPEG-2/2.5) times the bitrate. LAME sets the padding bit so the running length tracks
/// that exact average, leaving the first frame unpadded: phase `rate - 1 - per_frame % rate`.
/// A plain running floor (phase 0) is tried as well.
#[derive(Debug, Clone, Copy)]
pub(super) struct CbrLayout {
    start: u64,
    /// The first audio frame (the Info frame may have another bitrate).
    header: FrameHeader,
    per_frame: u128,
    rate: u128,
}

impl CbrLayout {
    pub(super) fn new(start: u64, header: FrameHeader) -> CbrLayout {
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
    pub(super) fn offset(&self, n: u64, phase: u128) -> Option<u64> {
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

impl Mp3Index {
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
    pub(super) fn seek_cbr(&self, src: &dyn RangeSource, n: u64) -> Result<Option<Keyframe>, ParseError> {
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
    pub(super) fn samples_local(
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
}
