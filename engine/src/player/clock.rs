//! The meeting clock as the embedder sees it: the cursor (the pipeline's position), and a
//! watcher that turns its movement into events: tracks entering and leaving their spans,
//! caption cues becoming current, and buffering (pausing while a track runs dry, resuming by
//! itself once every track has enough; a video track the link cannot carry stops holding the
//! clock, see `degrade`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::events::PlayerEvent;
use super::Inner;
use crate::time::MediaTime;

/// How often the watcher looks at the clock.
const TICK: Duration = Duration::from_millis(40);
/// A playing track with less than this fetched ahead makes playback wait.
const LOW_WATER: MediaTime = MediaTime::from_millis(80);
/// Playback resumes once every track has this much (or its buffer target, if smaller).
pub(crate) const HIGH_WATER: MediaTime = MediaTime::from_millis(1500);
/// After a seek or resume, the pipeline's own preroll covers the first moments.
const SETTLE: MediaTime = MediaTime::from_millis(200);
/// `play` starts the clock once every track has this much ahead of the cursor...
pub(crate) const START_LEAD: MediaTime = MediaTime::from_millis(500);
/// ...or after this long, when waiting turns into buffering (with its events).
const START_WAIT: Duration = Duration::from_secs(2);

/// How often each track's buffer and fetch figures are published.
const FIGURES_EVERY: Duration = Duration::from_millis(250);

/// Starts the watcher; it ends when the player is dropped or `stop` is set.
pub(crate) fn spawn_watcher(inner: Weak<Inner>, stop: Arc<AtomicBool>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("tandem-clock".into()).spawn(move || {
        let mut active: Vec<(Arc<str>, bool)> = Vec::new();
        let mut cues: Vec<(Arc<str>, Option<usize>)> = Vec::new();
        let mut figures_sent = Instant::now();
        let mut degrader = super::degrade::Degrader::default();
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(TICK);
            let Some(inner) = inner.upgrade() else { return };
            let Some(position) = inner.position() else { continue };
            inner.watch_spans(position, &mut active);
            inner.watch_captions(position, &mut cues);
            // Before the buffering check: a track that gives way does not stall the clock.
            degrader.watch(&inner, position);
            inner.watch_buffering(position);
            if figures_sent.elapsed() >= FIGURES_EVERY {
                figures_sent = Instant::now();
                inner.publish_figures(position);
            }
        }
    })
}

impl Inner {
    fn watch_spans(&self, position: MediaTime, seen: &mut Vec<(Arc<str>, bool)>) {
        for desc in self.subscribed_descs() {
            let now = desc.timeline.is_active(position);
            if let Some(window) = &self.window {
                window.set_visible(&desc.name, now);
            }
            match seen.iter_mut().find(|(name, _)| *name == desc.name) {
                Some((_, was)) if *was == now => {}
                Some((_, was)) => {
                    *was = now;
                    self.events.send(PlayerEvent::Active {
                        track: desc.name.clone(),
                        active: now,
                        at: position,
                    });
                }
                None => {
                    seen.push((desc.name.clone(), now));
                    self.events.send(PlayerEvent::Active {
                        track: desc.name.clone(),
                        active: now,
                        at: position,
                    });
                }
            }
        }
    }

    fn watch_captions(&self, position: MediaTime, shown: &mut Vec<(Arc<str>, Option<usize>)>) {
        for (track, cues) in self.caption_tracks() {
            let current = cues.iter().position(|c| c.start <= position && position < c.end);
            let entry = match shown.iter_mut().find(|(name, _)| *name == track) {
                Some(entry) => entry,
                None => {
                    shown.push((track.clone(), None));
                    let last = shown.len() - 1;
                    &mut shown[last]
                }
            };
            if entry.1 != current {
                entry.1 = current;
                if let Some(cue) = current.and_then(|i| cues.get(i)) {
                    self.events.send(PlayerEvent::Caption {
                        track: track.clone(),
                        start: cue.start,
                        end: cue.end,
                        text: cue.text.clone(),
                    });
                }
            }
        }
    }

    /// Each track's buffer and fetch figures, as [`PlayerEvent::Buffer`].
    fn publish_figures(&self, position: MediaTime) {
        for (track, stats) in self.media_stats() {
            let figures = stats.figures();
            let until = figures.buffered_until();
            if until == MediaTime::MAX {
                continue;
            }
            self.events.send(PlayerEvent::Buffer {
                track,
                buffered: until.saturating_sub(position).max(MediaTime::ZERO),
                bytes: figures.buffered_bytes(),
                throughput: figures.throughput(),
                rtt: figures.rtt(),
            });
        }
    }

    /// The track with the least media ahead of `position`, and how much; `None` when every
    /// track has sent all it has. Degraded tracks do not count: the clock does not wait for
    /// them.
    pub(crate) fn lowest_lead(&self, position: MediaTime) -> Option<(Arc<str>, MediaTime)> {
        let mut lowest: Option<(Arc<str>, MediaTime)> = None;
        for (name, stats) in self.media_stats() {
            let until = stats.buffered_until();
            if until == MediaTime::MAX || self.is_degraded(&name) {
                continue;
            }
            let ahead = until.saturating_sub(position);
            if lowest.as_ref().is_none_or(|(_, a)| ahead < *a) {
                lowest = Some((name, ahead));
            }
        }
        lowest
    }

    fn watch_buffering(&self, position: MediaTime) {
        let (playing, buffering, since) = self.play_state();
        if !playing || !self.options.realtime {
            return;
        }
        let high = HIGH_WATER.min(self.options.buffer_target);
        let lowest = self.lowest_lead(position);
        if let Some(started) = self.starting() {
            if lowest.as_ref().is_none_or(|(_, ahead)| *ahead >= START_LEAD.min(high)) {
                self.set_starting(false);
                self.set_buffering(false);
                return;
            }
            if started.elapsed() < START_WAIT {
                return;
            }
            self.set_starting(false);
        }
        let Some((track, ahead)) = lowest else {
            if buffering {
                self.set_buffering(false);
            }
            return;
        };
        let percent =
            (ahead.as_nanos().max(0) as f64 / high.as_nanos().max(1) as f64 * 100.0).min(100.0) as u32;
        if buffering {
            self.events.send(PlayerEvent::Buffering { track, percent });
            if ahead >= high {
                self.set_buffering(false);
            }
        } else if ahead < LOW_WATER && position >= since.saturating_add(SETTLE) {
            self.events.send(PlayerEvent::Buffering { track, percent });
            self.set_buffering(true);
        }
    }
}
