//! Playing a span: the index walk from the keyframe at or before the target, the samples
//! admitted (damage, late frames), the first read that takes the whole keyframe-to-target
//! stretch, and a preview's lone keyframe.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{Fetcher, Flow, Run, REORDER_LOOKAHEAD};
use crate::index::{Codec, Container, Keyframe, ReadPos, Sample, TrackIndex};
use crate::manifest::TrackKind;
use crate::source::{RangeSource, ReadOptions, SourceError};
use crate::stream::item::{Item, Packet};
use crate::stream::read_ahead::ReadAhead;
use crate::stream::timeline::Span;
use crate::stream::RequestSizer;
use crate::time::MediaTime;

/// Samples asked of the index at once.
const INDEX_BATCH: usize = 128;
/// Opus decoders need this much audio before a seek point to converge (RFC 7845 section 4.6).
const OPUS_PREROLL: MediaTime = MediaTime::from_millis(80);
/// An index walk that waits this long on the link fetches media: read ahead of it.
const WALK_WAITS: Duration = Duration::from_millis(20);
/// The least a read ahead asks for.
const READ_AHEAD_LEAST: u64 = 64 * 1024;
/// A video frame this far behind the cursor is late: with catch-up on, it is not fetched.
const LATE: MediaTime = MediaTime::from_millis(100);
/// Past a start's target, the frames a reordering decoder holds before showing the target.
const REORDER_MARGIN: MediaTime = MediaTime::from_millis(100);
/// A prefetch asks this much more than the mean byte rate says (keyframes are large)...
const PREFETCH_MARGIN: f64 = 1.5;
/// ...and at least this much.
const PREFETCH_LEAST: u64 = 64 * 1024;

/// Whether the index finds samples by reading the media itself (Matroska clusters, Ogg
/// pages, MP3 frames, fragments) rather than from a table it holds (MP4's `moov`, cues).
fn walks_media(index: &TrackIndex) -> bool {
    !matches!(index.info().container, Container::Mp4 | Container::WebVtt | Container::Srt)
}

/// A fetched range served from memory; anything outside it goes to the track's source (an
/// Ogg packet that continues past the range, say).
struct Chunk<'a> {
    base: &'a dyn RangeSource,
    start: u64,
    data: Bytes,
}

impl RangeSource for Chunk<'_> {
    fn len(&self) -> u64 {
        self.base.len()
    }
    fn read_range(&self, start: u64, len: u64) -> Result<Bytes, SourceError> {
        let end = self.start + self.data.len() as u64;
        match start.checked_add(len) {
            Some(stop) if start >= self.start && stop <= end => {
                let from = (start - self.start) as usize;
                Ok(self.data.slice(from..from + len as usize))
            }
            _ => self.base.read_range(start, len),
        }
    }
}

impl Fetcher {
    /// A preview: the keyframe at or before the target, alone; other tracks have nothing to
    /// preview and say so with a short gap.
    pub(super) fn keyframe(
        &mut self,
        run: &mut Run,
        index: &TrackIndex,
        span_index: usize,
        span: &Span,
        media: MediaTime,
    ) -> Result<(), Flow> {
        if self.desc.kind != TrackKind::Video {
            let gap = Item::Gap { start: run.target, duration: MediaTime::from_millis(40) };
            return self.send(run, gap);
        }
        let failed = |e: crate::index::IndexError| Flow::Failed(e.to_string());
        let source = self.source.clone();
        let src = source.as_ref();
        let keyframe = index.seek(src, media).map_err(failed)?;
        let batch = index.samples(src, keyframe.pos, 1).map_err(failed)?;
        let Some(sample) = batch.samples.first() else { return Ok(()) };
        let data = index.sample_data(src, sample).map_err(failed)?;
        let packet = Packet {
            pts: span.to_meeting(sample.pts),
            dts: Some(span.to_meeting(sample.dts)),
            duration: sample.duration,
            data,
            keyframe: true,
            decode_only: false,
            discont: true,
            span: span_index,
        };
        self.send(run, Item::Packet(packet))
    }

    /// Plays `span` from media time `media` until the span ends or the media runs out;
    /// returns the meeting time where what was sent ends.
    pub(super) fn play_span(
        &mut self,
        run: &mut Run,
        index: &TrackIndex,
        span_index: usize,
        span: &Span,
        media: MediaTime,
    ) -> Result<MediaTime, Flow> {
        let failed = |e: crate::index::IndexError| Flow::Failed(e.to_string());
        let source = self.source.clone();
        let src: &dyn RangeSource = source.as_ref();
        let preroll = if index.info().codec == Codec::Opus { OPUS_PREROLL } else { MediaTime::ZERO };
        let keyframe = index.seek(src, media.saturating_sub(preroll).max(MediaTime::ZERO)).map_err(failed)?;
        self.prefetch_walk(index, &keyframe, media, run.awaited)?;
        let end_media = span.end.map(|e| span.to_media(e));
        // Media before this is decoded but not shown: before the target or the span's start.
        let show_from = span.to_media(run.target.max(span.start));
        let past_end = |s: &Sample| end_media.is_some_and(|end| s.dts >= end && s.pts >= end);
        let mut pending: VecDeque<Sample> = VecDeque::new();
        let mut next_pos: Option<ReadPos> = Some(keyframe.pos);
        let mut first = true;
        // Started the first time the index walk waits on the link (see `read_ahead`).
        let mut read_ahead: Option<ReadAhead> = None;
        run.skipping = false;
        run.truncated = false;
        run.media_end = media;
        // A span starts from its own keyframe, not where the last span left off, even in
        // the same file (a recording pause cut out): a discontinuity for the decoder.
        run.discont = true;
        loop {
            // Keep enough samples indexed to find presentation order and fill a request; the
            // first request's whole stretch: up to the target and a refill beyond it where
            // the index lists samples without reading; where the walk reads the media, only
            // the frames a reordering decoder needs past the target, so the first frame does
            // not wait for the walk's next round trip.
            let beyond = if walks_media(index) { REORDER_MARGIN } else { self.refill() };
            let first_horizon = media.saturating_add(beyond);
            let wanted = |pending: &VecDeque<Sample>| {
                pending.len() < INDEX_BATCH / 2
                    || (first
                        && pending.back().is_some_and(|s| s.dts <= first_horizon)
                        && pending
                            .back()
                            .zip(pending.front())
                            .is_some_and(|(b, f)| b.end().saturating_sub(f.offset) < RequestSizer::MAX))
            };
            while wanted(&pending) {
                let Some(pos) = next_pos else { break };
                let asked = Instant::now();
                let batch = index.samples(src, pos, INDEX_BATCH).map_err(failed)?;
                // An index walk fetches the media it walks (Matroska clusters, Ogg pages): a
                // wait on the link like any read, and from now on worth reading ahead of.
                let waited = asked.elapsed();
                self.waits.note(waited);
                if waited >= WALK_WAITS && read_ahead.is_none() {
                    read_ahead = Some(ReadAhead::new(&self.desc.name, self.source.clone()));
                }
                if batch.samples.is_empty() {
                    next_pos = None;
                    break;
                }
                for sample in batch.samples {
                    if let Some(sample) = self.admit(run, span, sample)? {
                        pending.push_back(sample);
                    }
                }
                next_pos = batch.next;
            }
            if let (Some(ahead), Some(from), Some(to)) = (&read_ahead, pending.front(), pending.back()) {
                // The stretch after the samples walked, as long as the buffer target holds at
                // their byte rate.
                let bytes: u64 = pending.iter().map(|s| s.size).sum();
                let lasts = to.pts.saturating_sub(from.pts).as_secs_f64().max(0.5);
                let len = (bytes as f64 / lasts * self.target().as_secs_f64()) as u64;
                ahead.want(to.end(), len.max(READ_AHEAD_LEAST));
            }
            if !first && self.drop_late(run, span, &mut pending) && pending.is_empty() {
                continue;
            }
            let Some(head) = pending.front().copied() else {
                // The samples ran out: fine at the end of the media, or after damage already
                // reported; damage anywhere else.
                if let (Some(duration), false) = (index.info().duration, run.skipping || run.truncated) {
                    if run.media_end.saturating_add(MediaTime::from_secs(1)) < duration
                        && end_media.is_none_or(|end| run.media_end < end)
                    {
                        return Err(Flow::Failed(format!(
                            "the samples end at {} but the track lasts {duration}: the file is damaged",
                            run.media_end
                        )));
                    }
                }
                return Ok(span.to_meeting(run.media_end));
            };
            if past_end(&head) {
                return Ok(span.end.unwrap_or(span.to_meeting(run.media_end)));
            }
            if first {
                self.poll_commands()?;
            } else {
                self.wait_for_room(run)?;
            }
            // The first request covers what the target needs, whatever its size (split, it
            // would cost a round trip per piece), and a refill beyond it, so playing on does
            // not wait for the next one; later ones what the buffer target needs and a refill
            // beyond it, within the request size: topping up only what the cursor freed would
            // cost a round trip per few packets on a far link.
            let (horizon, budget) = if first {
                (first_horizon, RequestSizer::MAX)
            } else {
                let ahead = self.target().saturating_add(self.refill());
                (span.to_media(self.cursor(&mut *run).saturating_add(ahead)), self.sizer.request_bytes())
            };
            let mut count = 0;
            let mut range_end = head.end();
            let mut urgent_end = head.end();
            for s in pending.iter() {
                if count > 0
                    && (s.offset < head.offset
                        || s.end().saturating_sub(head.offset) > budget
                        || (s.dts > horizon && s.pts > horizon)
                        || past_end(s))
                {
                    break;
                }
                range_end = range_end.max(s.end());
                if s.dts <= media || s.pts <= media {
                    urgent_end = urgent_end.max(s.end());
                }
                count += 1;
            }
            // A start's first read: what the target needs is awaited, the refill is not.
            let urgent = if std::mem::take(&mut run.awaited) { urgent_end - head.offset } else { 0 };
            self.source.set_awaited(false);
            let data = self.read(head.offset, range_end - head.offset, urgent)?;
            let chunk = Chunk { base: src, start: head.offset, data };
            // With catch-up on, frames fetched but already late are decoded (later frames
            // refer to them) and not shown: a late picture is a wrong picture.
            let late_cursor = (self.desc.kind == TrackKind::Video && self.catch_up.load(Ordering::Relaxed))
                .then(|| span.to_media(self.cursor(run)));
            first = false;
            for i in 0..count {
                let sample = pending[i];
                let around = run
                    .recent_pts
                    .iter()
                    .copied()
                    .chain(pending.iter().skip(i + 1).take(REORDER_LOOKAHEAD).map(|s| s.pts));
                let duration = presentation_duration(&sample, around).unwrap_or(run.last_duration);
                if run.recent_pts.len() == REORDER_LOOKAHEAD {
                    run.recent_pts.pop_front();
                }
                run.recent_pts.push_back(sample.pts);
                run.last_duration = duration;
                let data = index.sample_data(&chunk, &sample).map_err(failed)?;
                let hidden = sample.pts.saturating_add(duration) <= show_from
                    || end_media.is_some_and(|end| sample.pts >= end)
                    || late_cursor.is_some_and(|cursor| {
                        sample.pts.saturating_add(duration).saturating_add(LATE) < cursor
                    });
                run.media_end = run.media_end.max(sample.pts.saturating_add(duration));
                let packet = Packet {
                    pts: span.to_meeting(sample.pts),
                    dts: (sample.dts != sample.pts).then(|| span.to_meeting(sample.dts)),
                    duration,
                    data,
                    keyframe: sample.keyframe,
                    decode_only: hidden,
                    discont: std::mem::take(&mut run.discont) || sample.follows_damage,
                    span: span_index,
                };
                let (end, size) = (packet.end(), packet.data.len() as u64);
                self.send(run, Item::Packet(packet))?;
                self.advance(run, end, size);
            }
            pending.drain(..count);
        }
    }

    /// Where the index walks the media itself (Matroska clusters, Ogg pages, MP3 frames,
    /// fragments), fetches in one read what the walk from `keyframe` to `media` and a refill
    /// beyond is likely to cover, estimated at the file's mean byte rate: on a far link the
    /// walk would otherwise pay a round trip per window. A cancelled prefetch is no failure.
    pub(super) fn prefetch_walk(
        &mut self,
        index: &TrackIndex,
        keyframe: &Keyframe,
        media: MediaTime,
        awaited: bool,
    ) -> Result<(), Flow> {
        let info = index.info();
        if !walks_media(index) {
            return Ok(());
        }
        let Some(duration) = info.duration.filter(|d| *d > MediaTime::ZERO) else { return Ok(()) };
        let byte_rate = self.data_source.len() as f64 / duration.as_secs_f64();
        let estimate = |stretch: MediaTime| {
            (byte_rate * stretch.as_secs_f64() * PREFETCH_MARGIN) as u64 + PREFETCH_LEAST
        };
        let needed = media.saturating_sub(keyframe.pts);
        let len = estimate(needed.saturating_add(self.refill()));
        // Awaited: the stretch up to the target is urgent, the refill beyond it is not.
        let urgent = if awaited { estimate(needed) } else { 0 };
        match self.source.prefetch(keyframe.offset, len, ReadOptions::urgent(&self.cancel, urgent)) {
            Ok(()) => Ok(()),
            Err(SourceError::Cancelled { .. }) => {
                self.poll_commands()?;
                self.cancel.reset();
                Ok(())
            }
            // The walk reads again, and reports what fails there.
            Err(_) => Ok(()),
        }
    }

    /// With catch-up on, a video track's delta frames the cursor has passed are dropped
    /// before they are fetched, and so is every delta frame after them up to the next
    /// keyframe (they would decode against missing references); that keyframe starts the
    /// decoder afresh. True when something was dropped.
    pub(super) fn drop_late(&self, run: &mut Run, span: &Span, pending: &mut VecDeque<Sample>) -> bool {
        if self.desc.kind != TrackKind::Video || !self.catch_up.load(Ordering::Relaxed) {
            return false;
        }
        let cursor = span.to_media(self.cursor(run));
        let mut dropped = false;
        while let Some(sample) = pending.front() {
            let late = sample.pts.saturating_add(LATE) < cursor;
            if sample.keyframe || !(late || run.skipping) {
                break;
            }
            pending.pop_front();
            run.skipping = true;
            dropped = true;
        }
        if pending.front().is_some_and(|s| s.keyframe) && run.skipping {
            run.skipping = false;
            run.discont = true;
        }
        dropped
    }

    /// Whether a sample the index listed is sent. After bytes the index skipped (damage) a
    /// video track's delta frames have lost their references: they are dropped up to the next
    /// keyframe, so the picture holds the last good frame, and the damage is reported. A long
    /// pause between frames is not damage. A sample the file ends inside ends the span.
    pub(super) fn admit(
        &mut self,
        run: &mut Run,
        span: &Span,
        mut sample: Sample,
    ) -> Result<Option<Sample>, Flow> {
        if run.truncated {
            return Ok(None);
        }
        let is_video = self.desc.kind == TrackKind::Video;
        let len = self.data_source.len();
        if sample.end() > len {
            run.truncated = true;
            let what = format!("the file ends at byte {len}, inside this sample: the track ends here");
            self.report_damage(run, span.to_meeting(sample.pts), sample.offset, what)?;
            return Ok(None);
        }
        if sample.follows_damage {
            let skip = is_video && !sample.keyframe;
            let what = if skip {
                "bytes before this frame are damaged or missing: frames up to the next keyframe are skipped"
            } else {
                "bytes before this sample are damaged or missing"
            };
            self.report_damage(run, span.to_meeting(sample.pts), sample.offset, what.to_string())?;
            run.skipping |= skip;
        }
        if sample.keyframe {
            // The first frame after a skip starts the decoder afresh.
            sample.follows_damage |= std::mem::take(&mut run.skipping);
            return Ok(Some(sample));
        }
        Ok((!run.skipping).then_some(sample))
    }

    pub(super) fn report_damage(
        &self,
        run: &Run,
        at: MediaTime,
        offset: u64,
        what: String,
    ) -> Result<(), Flow> {
        let message = format!("t {at} (byte {offset}): {what}");
        tracing::warn!(track = %self.desc.name, %message, "damaged media");
        self.send(run, Item::Damaged { at, offset, message })
    }
}

/// Next presentation time minus this one, among the samples decoded around it (B-frames put
/// the next presentation time before or after it in decode order): exact even where the
/// container rounds durations (Matroska's whole milliseconds).
fn presentation_duration(sample: &Sample, around: impl Iterator<Item = MediaTime>) -> Option<MediaTime> {
    around
        .filter(|pts| *pts > sample.pts)
        .map(|pts| pts.saturating_sub(sample.pts))
        .min()
        .or((sample.duration > MediaTime::ZERO).then_some(sample.duration))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(pts_ms: i64, dts_ms: i64) -> Sample {
        Sample {
            pts: MediaTime::from_millis(pts_ms),
            dts: MediaTime::from_millis(dts_ms),
            duration: MediaTime::ZERO,
            offset: 0,
            size: 1,
            keyframe: false,
            follows_damage: false,
        }
    }

    #[test]
    fn durations_follow_presentation_order_across_b_frames() {
        // Decode order I0 P120 B40 B80 P240: the B-frame at 80 ends where P120, decoded before
        // it, starts.
        let samples = [sample(0, -40), sample(120, 0), sample(40, 40), sample(80, 80), sample(240, 120)];
        let d = |i: usize| presentation_duration(&samples[i], samples.iter().map(|s| s.pts));
        assert_eq!(d(0), Some(MediaTime::from_millis(40)));
        assert_eq!(d(2), Some(MediaTime::from_millis(40)));
        assert_eq!(d(3), Some(MediaTime::from_millis(40)));
        assert_eq!(d(1), Some(MediaTime::from_millis(120)));
        assert_eq!(presentation_duration(&samples[4], samples[..4].iter().map(|s| s.pts)), None);
    }
}
