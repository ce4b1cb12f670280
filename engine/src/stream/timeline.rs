//! Where a track has something to show on the meeting timeline.
//!
//! A track is placed on the meeting timeline by its spans (the manifest's segments), each
//! showing a stretch of one of the track's files: `meeting = media - span.media_start +
//! span.start`, media time being the time in that span's file. The fetcher asks [`Timeline::place`]
//! what the track does at a meeting time: play a span from some media time, wait (a gap) until
//! its next span starts, or stay done for good.

use crate::manifest::{ManifestTrack, Segment};
use crate::time::MediaTime;

/// One stretch of a track on the meeting timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Span {
    /// Meeting time where the span starts.
    pub start: MediaTime,
    /// Meeting time where it ends; open (the end of the media) when `None`.
    pub end: Option<MediaTime>,
    /// Media time shown at `start`.
    pub media_start: MediaTime,
    /// Which of the track's files holds the span's media: numbered from 0 as
    /// [`ManifestTrack::files`](crate::manifest::ManifestTrack::files) lists them.
    pub file: u32,
}

impl Span {
    /// The span of `segment` of `track`.
    pub fn from_segment(track: &ManifestTrack, segment: &Segment) -> Span {
        Span {
            start: segment.start(),
            end: segment.end(),
            media_start: MediaTime::from_millis(segment.media_start_ms as i64),
            file: track.file_number(segment),
        }
    }

    /// Meeting time of media time `media` in this span (not clipped to the span).
    pub fn to_meeting(&self, media: MediaTime) -> MediaTime {
        media.saturating_sub(self.media_start).saturating_add(self.start)
    }

    /// Media time shown at meeting time `t` (not clipped to the span).
    pub fn to_media(&self, t: MediaTime) -> MediaTime {
        t.saturating_sub(self.start).saturating_add(self.media_start)
    }

    /// Whether meeting time `t` lies in the span.
    pub fn contains(&self, t: MediaTime) -> bool {
        t >= self.start && self.end.is_none_or(|end| t < end)
    }
}

/// What a track does at a meeting time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Span `span` is showing media time `media`.
    Active { span: usize, media: MediaTime },
    /// Nothing to show until span `next` starts.
    Idle { next: usize },
    /// Nothing more to show.
    Done,
}

/// A track's spans, in order and not overlapping (the manifest validates that).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Timeline {
    spans: Vec<Span>,
}

impl Timeline {
    pub fn new(mut spans: Vec<Span>) -> Timeline {
        spans.sort_by_key(|s| s.start);
        Timeline { spans }
    }

    pub fn spans(&self) -> &[Span] {
        &self.spans
    }

    pub fn span(&self, i: usize) -> Option<&Span> {
        self.spans.get(i)
    }

    /// How many files the spans show (one more than the highest file number).
    pub fn files(&self) -> usize {
        self.spans.iter().map(|s| s.file as usize + 1).max().unwrap_or(1)
    }

    /// What the track does at meeting time `t`.
    pub fn place(&self, t: MediaTime) -> Place {
        for (i, span) in self.spans.iter().enumerate() {
            if t < span.start {
                return Place::Idle { next: i };
            }
            if span.contains(t) {
                return Place::Active { span: i, media: span.to_media(t) };
            }
        }
        Place::Done
    }

    /// Whether the track shows something at meeting time `t`.
    pub fn is_active(&self, t: MediaTime) -> bool {
        matches!(self.place(t), Place::Active { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: i64) -> MediaTime {
        MediaTime::from_millis(v)
    }

    #[test]
    fn places_times_before_inside_between_and_after_spans() {
        let timeline = Timeline::new(vec![
            Span { start: ms(10_000), end: Some(ms(25_000)), media_start: ms(0), file: 0 },
            Span { start: ms(32_000), end: Some(ms(45_000)), media_start: ms(15_000), file: 0 },
        ]);
        assert_eq!(timeline.place(ms(0)), Place::Idle { next: 0 });
        assert_eq!(timeline.place(ms(12_000)), Place::Active { span: 0, media: ms(2_000) });
        assert_eq!(timeline.place(ms(25_000)), Place::Idle { next: 1 });
        assert_eq!(timeline.place(ms(33_000)), Place::Active { span: 1, media: ms(16_000) });
        assert_eq!(timeline.place(ms(45_000)), Place::Done);
        assert_eq!(timeline.spans()[1].to_meeting(ms(16_000)), ms(33_000));
    }

    #[test]
    fn an_open_span_runs_to_the_end_of_its_media() {
        let timeline = Timeline::new(vec![Span { start: ms(5_000), end: None, media_start: ms(0), file: 0 }]);
        assert_eq!(timeline.place(ms(3_600_000)), Place::Active { span: 0, media: ms(3_595_000) });
    }
}
