//! Video that gives way when the link cannot carry every track: the sound and the meeting
//! clock keep real time, a starving video track stops holding the clock and shows keyframes
//! as they arrive (its late frames are not fetched, see `Subscription::set_catch_up`), then
//! rejoins by itself once it keeps a lead again.
//!
//! A video track gives way before it stalls the clock when its lead has fallen through
//! [`FALLING_FOR`] of steady play and is about to run out: it is fetched slower than it plays,
//! so the link is short. A video track about to enter a span (a camera turned on) without its
//! first frame gives way likewise, before the clock reaches the span: its keyframe was asked
//! for a buffer's length ahead, so the link is short, and the meeting does not wait for a
//! picture that was not there a moment ago. Otherwise it is degraded after playback has waited
//! on it for [`DEGRADE_AFTER`] while every audio track was ready: a short wait stays a wait (a
//! seek, a moment of loss). Once the link has shown it is short (a track is degraded), another
//! video track about to run dry gives way at once. A degraded track recovers after keeping
//! [`RECOVER_LEAD`] for a while, a while that doubles each time it has to be degraded again,
//! so a link just short of the bitrate does not stall every few seconds.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::events::PlayerEvent;
use super::{clock, lock, Inner, Runtime};
use crate::manifest::TrackKind;
use crate::stream::Place;
use crate::time::MediaTime;

/// How long playback waits on a video track, the audio ready, before it plays on without it.
const DEGRADE_AFTER: Duration = Duration::from_millis(1500);
/// Once one track is degraded, another video track with less than this ahead gives way
/// before it stalls the clock.
const SOON_DRY: MediaTime = MediaTime::from_millis(300);
/// A video track about to run dry whose lead has fallen through this much steady play...
const FALLING_FOR: Duration = Duration::from_secs(2);
/// ...by at least this much (it is fetched at 0.9x real time or slower) gives way at once.
const FALLEN_BY: MediaTime = MediaTime::from_millis(200);
/// A move of the clock larger than this between two looks is a seek: leads start afresh.
const JUMP: MediaTime = MediaTime::from_millis(1000);
/// The lead a degraded track must keep to rejoin...
const RECOVER_LEAD: MediaTime = MediaTime::from_millis(1500);
/// ...for this long the first time (doubling each time after, up to [`RECOVER_MOST`]).
const RECOVER_AFTER: Duration = Duration::from_secs(3);
const RECOVER_MOST: Duration = Duration::from_secs(60);

/// The watcher's memory of stalls and degraded tracks.
#[derive(Debug, Default)]
pub(crate) struct Degrader {
    stalled_since: Option<Instant>,
    /// Per track: times degraded, and since when its lead has held (while degraded).
    tracks: HashMap<Arc<str>, (u32, Option<Instant>)>,
    /// Per video track holding the clock: (when, clock, lead) through the last
    /// [`FALLING_FOR`] of steady play, oldest first.
    leads: HashMap<Arc<str>, VecDeque<(Instant, MediaTime, MediaTime)>>,
    last_position: Option<MediaTime>,
}

impl Degrader {
    pub(crate) fn watch(&mut self, inner: &Inner, position: MediaTime) {
        let (playing, buffering, _) = inner.play_state();
        if !playing || !inner.options.realtime {
            self.stalled_since = None;
            self.leads.clear();
            return;
        }
        let jumped =
            self.last_position.is_none_or(|last| position < last || position.saturating_sub(last) > JUMP);
        self.last_position = Some(position);
        if buffering || jumped {
            self.leads.clear();
        } else if let Some(track) = self.falling(inner, position).or_else(|| entering(inner, position)) {
            self.tracks.entry(track.clone()).or_default().0 += 1;
            inner.set_degraded(&track, true, position);
            self.leads.remove(&track);
        }
        if !buffering && !inner.degraded_tracks().is_empty() {
            // The link has already shown it cannot carry every track: a video track about to
            // run dry gives way at once rather than after a stall (a pipeline that paused
            // waits for every sink to preroll again before it plays).
            if let Some((track, lead)) = inner.lowest_lead(position) {
                if lead < SOON_DRY
                    && inner.track_kind(&track) == Some(TrackKind::Video)
                    && inner.audio_ready(position)
                {
                    self.tracks.entry(track.clone()).or_default().0 += 1;
                    inner.set_degraded(&track, true, position);
                }
            }
        }
        if buffering {
            let since = *self.stalled_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= DEGRADE_AFTER {
                if let Some((track, _)) = inner.lowest_lead(position) {
                    if inner.track_kind(&track) == Some(TrackKind::Video) && inner.audio_ready(position) {
                        self.tracks.entry(track.clone()).or_default().0 += 1;
                        inner.set_degraded(&track, true, position);
                        self.stalled_since = None;
                    }
                }
            }
        } else {
            self.stalled_since = None;
        }
        for track in inner.degraded_tracks() {
            let entry = self.tracks.entry(track.clone()).or_default();
            // While the clock waits for another track, any track's lead grows: only a lead
            // kept while playing shows the link carries it.
            if buffering || inner.lead(&track, position).is_none_or(|lead| lead < RECOVER_LEAD) {
                entry.1 = None;
                continue;
            }
            let held = *entry.1.get_or_insert_with(Instant::now);
            let needed =
                RECOVER_AFTER.saturating_mul(1 << entry.0.saturating_sub(1).min(5)).min(RECOVER_MOST);
            if held.elapsed() >= needed {
                entry.1 = None;
                inner.set_degraded(&track, false, position);
            }
        }
    }
}

impl Degrader {
    /// Notes each video track's lead; returns one about to run dry whose lead has fallen
    /// through [`FALLING_FOR`] of steady play, while the audio is ready.
    fn falling(&mut self, inner: &Inner, position: MediaTime) -> Option<Arc<str>> {
        let now = Instant::now();
        let mut found = None;
        let descs = inner.subscribed_descs();
        for (track, stats) in inner.media_stats() {
            let until = stats.buffered_until();
            let showing = descs
                .iter()
                .any(|d| d.name == track && d.kind == TrackKind::Video && d.timeline.is_active(position));
            if until == MediaTime::MAX || !showing || inner.is_degraded(&track) {
                self.leads.remove(&track);
                continue;
            }
            let lead = until.saturating_sub(position);
            let leads = self.leads.entry(track.clone()).or_default();
            leads.push_back((now, position, lead));
            while leads.len() > 2
                && leads.get(1).is_some_and(|(at, _, _)| now.duration_since(*at) >= FALLING_FOR)
            {
                leads.pop_front();
            }
            let Some(&(then, was_at, before)) = leads.front() else { continue };
            // Steady play: the clock moved (a start waiting for its first frames does not, and
            // a restart there empties the lead without the link being short).
            let played = position.saturating_sub(was_at);
            if found.is_none()
                && now.duration_since(then) >= FALLING_FOR
                && played >= MediaTime::from_nanos(FALLING_FOR.as_nanos() as i64 / 2)
                && lead < SOON_DRY
                && before.saturating_sub(lead) >= FALLEN_BY
            {
                found = Some(track);
            }
        }
        found.filter(|_| inner.audio_ready(position))
    }
}

/// A video track whose next span begins within [`SOON_DRY`] of `position` with nothing of
/// that span fetched yet, while the audio is ready and the clock plays on (not a start).
fn entering(inner: &Inner, position: MediaTime) -> Option<Arc<str>> {
    if inner.starting().is_some() || !inner.audio_ready(position) {
        return None;
    }
    let stats = inner.media_stats();
    inner.subscribed_descs().into_iter().find_map(|desc| {
        if desc.kind != TrackKind::Video || inner.is_degraded(&desc.name) {
            return None;
        }
        let Place::Idle { next } = desc.timeline.place(position) else { return None };
        let begins = desc.timeline.span(next)?.start;
        let until = stats.iter().find(|(name, _)| *name == desc.name)?.1.buffered_until();
        (begins <= position.saturating_add(SOON_DRY) && until <= begins).then_some(desc.name)
    })
}

impl Inner {
    pub(crate) fn track_kind(&self, track: &str) -> Option<TrackKind> {
        lock(&self.tracks).iter().map(Runtime::desc).find(|d| &*d.name == track).map(|d| d.kind)
    }

    /// Media fetched ahead of `position` on `track`; `None` once it has sent all it has.
    pub(crate) fn lead(&self, track: &str, position: MediaTime) -> Option<MediaTime> {
        let stats = lock(&self.stats).get(track).cloned()?;
        let until = stats.buffered_until();
        (until != MediaTime::MAX).then(|| until.saturating_sub(position))
    }

    /// Every subscribed audio track (one at least) has enough to resume.
    pub(crate) fn audio_ready(&self, position: MediaTime) -> bool {
        let high = clock::HIGH_WATER.min(self.options.buffer_target);
        let audio: Vec<Arc<str>> = lock(&self.tracks)
            .iter()
            .map(Runtime::desc)
            .filter(|d| d.kind == TrackKind::Audio)
            .map(|d| d.name.clone())
            .collect();
        !audio.is_empty() && audio.iter().all(|t| self.lead(t, position).is_none_or(|lead| lead >= high))
    }

    pub(crate) fn is_degraded(&self, track: &str) -> bool {
        lock(&self.degraded).iter().any(|t| &**t == track)
    }

    pub(crate) fn degraded_tracks(&self) -> Vec<Arc<str>> {
        lock(&self.degraded).clone()
    }

    /// The clock stops (or starts again) waiting for a video track, which catches up at its
    /// keyframes meanwhile.
    pub(crate) fn set_degraded(&self, track: &Arc<str>, on: bool, at: MediaTime) {
        {
            let mut degraded = lock(&self.degraded);
            degraded.retain(|t| t != track);
            if on {
                degraded.push(track.clone());
            }
        }
        for runtime in lock(&self.tracks).iter() {
            if let Runtime::Media { desc, subscription, branch, .. } = runtime {
                if desc.name == *track {
                    subscription.set_catch_up(on);
                    branch.set_degraded(on);
                }
            }
        }
        tracing::info!(%track, degraded = on, %at, "the link cannot carry every track");
        self.events.send(PlayerEvent::Degraded { track: track.clone(), degraded: on, at });
    }
}
