//! The meeting clock as the embedder sees it: the cursor (the pipeline's position), and a
//! watcher that turns its movement into events: tracks entering and leaving their spans,
//! caption cues becoming current, and buffering (pausing while a track runs dry, resuming by
//! itself once every track has enough).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use super::events::PlayerEvent;
use super::Inner;
use crate::time::MediaTime;

/// How often the watcher looks at the clock.
const TICK: Duration = Duration::from_millis(40);
/// A playing track with less than this fetched ahead makes playback wait.
const LOW_WATER: MediaTime = MediaTime::from_millis(80);
/// Playback resumes once every track has this much (or its buffer target, if smaller).
const HIGH_WATER: MediaTime = MediaTime::from_millis(1500);
/// After a seek or resume, the pipeline's own preroll covers the first moments.
const SETTLE: MediaTime = MediaTime::from_millis(200);

/// One caption cue, read once when the track is subscribed (caption files are small).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cue {
    pub(crate) start: MediaTime,
    pub(crate) end: MediaTime,
    pub(crate) text: String,
}

/// Starts the watcher; it ends when the player is dropped or `stop` is set.
pub(crate) fn spawn_watcher(inner: Weak<Inner>, stop: Arc<AtomicBool>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("tandem-clock".into()).spawn(move || {
        let mut active: Vec<(Arc<str>, bool)> = Vec::new();
        let mut cues: Vec<(Arc<str>, Option<usize>)> = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(TICK);
            let Some(inner) = inner.upgrade() else { return };
            let Some(position) = inner.position() else { continue };
            inner.watch_spans(position, &mut active);
            inner.watch_captions(position, &mut cues);
            inner.watch_buffering(position);
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

    fn watch_buffering(&self, position: MediaTime) {
        let (playing, buffering, since) = self.play_state();
        if !playing || !self.options.realtime {
            return;
        }
        let high = HIGH_WATER.min(self.options.buffer_target);
        let mut lowest: Option<(Arc<str>, MediaTime)> = None;
        for (name, stats) in self.media_stats() {
            let until = stats.buffered_until();
            if until == MediaTime::MAX {
                continue;
            }
            let ahead = until.saturating_sub(position);
            if lowest.as_ref().is_none_or(|(_, a)| ahead < *a) {
                lowest = Some((name, ahead));
            }
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
