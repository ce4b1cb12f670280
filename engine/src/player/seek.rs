//! Seek bookkeeping: which tracks have shown the current seek's target, how long each took,
//! and the `SeekDone` event once all have.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;

use super::events::{EventSink, PlayerEvent};
use super::feeder::clock_time;
use super::{gst_err, lock, Inner, PlayerError, Runtime};
use crate::manifest::TrackKind;
use crate::stream::StartMode;
use crate::time::MediaTime;

/// How a seek lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeekMode {
    /// The first frame shown on every video track is the one on screen at the target; audio
    /// starts at the target sample.
    #[default]
    Accurate,
    /// The cursor snaps to the keyframe at or before the target (of the first video track
    /// showing something there).
    Fast,
    /// Every video track shows its keyframe at or before the target at once, then continues
    /// to the accurate frame.
    Preview,
}

#[derive(Debug)]
struct State {
    count: u64,
    target: MediaTime,
    mode: SeekMode,
    started: Instant,
    pending: Vec<Arc<str>>,
    done: Vec<(Arc<str>, Duration)>,
}

/// Tracks the latest seek.
#[derive(Debug)]
pub(crate) struct SeekTracker {
    state: Mutex<State>,
    cond: Condvar,
    events: EventSink,
}

impl SeekTracker {
    pub(crate) fn new(events: EventSink) -> SeekTracker {
        SeekTracker {
            state: Mutex::new(State {
                count: 0,
                target: MediaTime::ZERO,
                mode: SeekMode::Accurate,
                started: Instant::now(),
                pending: Vec::new(),
                done: Vec::new(),
            }),
            cond: Condvar::new(),
            events,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A seek starts; `waiting` are the tracks that will show something at the target.
    pub(crate) fn begin(&self, target: MediaTime, mode: SeekMode, waiting: Vec<Arc<str>>) -> u64 {
        let mut state = self.lock();
        state.count += 1;
        state.target = target;
        state.mode = mode;
        state.started = Instant::now();
        state.pending = waiting;
        state.done.clear();
        let count = state.count;
        self.finish_if_done(&mut state);
        count
    }

    /// A track's sink got its first buffer since the seek.
    pub(crate) fn shown(&self, track: &Arc<str>) {
        let mut state = self.lock();
        if let Some(i) = state.pending.iter().position(|t| t == track) {
            state.pending.swap_remove(i);
            let took = state.started.elapsed();
            state.done.push((track.clone(), took));
            self.finish_if_done(&mut state);
        }
    }

    /// A track left (unsubscribed or failed): nobody waits for it.
    pub(crate) fn forget(&self, track: &Arc<str>) {
        let mut state = self.lock();
        if let Some(i) = state.pending.iter().position(|t| t == track) {
            state.pending.swap_remove(i);
            self.finish_if_done(&mut state);
        }
    }

    fn finish_if_done(&self, state: &mut State) {
        if state.pending.is_empty() {
            self.events.send(PlayerEvent::SeekDone {
                target: state.target,
                mode: state.mode,
                tracks: std::mem::take(&mut state.done),
            });
            // Mark as reported: nothing pending and nothing done until the next seek.
            self.cond.notify_all();
        }
    }

    pub(crate) fn count(&self) -> u64 {
        self.lock().count
    }

    /// Waits until seek `count` is done (or superseded); false on timeout.
    pub(crate) fn wait(&self, count: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            if state.count != count || state.pending.is_empty() {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self.cond.wait_timeout(state, left).map(|(s, _)| s).unwrap_or_else(|e| e.into_inner().0);
        }
    }
}

impl Inner {
    /// Lets a state change under way (the preroll after a flushing seek) finish before the
    /// next one: pausing in the middle of it left the pipeline's running time where it was
    /// before the seek (every track then played 2 s late in about one case in four).
    pub(super) fn settle(&self) {
        let _ = self.pipeline.state(gst::ClockTime::from_seconds(5));
    }

    /// Waits for the pipeline to finish a state change (preroll).
    pub(super) fn wait_settled(&self) -> Result<(), PlayerError> {
        let (result, _, _) = self.pipeline.state(gst::ClockTime::from_seconds(30));
        result.map(|_| ()).map_err(|e| gst_err(format!("the pipeline did not preroll: {e}")))
    }

    pub(super) fn seek(self: &Arc<Self>, t: MediaTime, mode: SeekMode) -> Result<MediaTime, PlayerError> {
        let t = t.max(MediaTime::ZERO);
        let target = if mode == SeekMode::Fast { self.snap_to_keyframe(t) } else { t };
        let rate = lock(&self.play).rate;
        let start_mode = if mode == SeekMode::Preview { StartMode::Keyframe } else { StartMode::Accurate };
        let waiting: Vec<Arc<str>>;
        {
            let tracks = lock(&self.tracks);
            waiting = tracks
                .iter()
                .filter_map(|r| match r {
                    Runtime::Media { desc, .. } if desc.timeline.is_active(target) => Some(desc.name.clone()),
                    _ => None,
                })
                .collect();
            for runtime in tracks.iter() {
                if let Runtime::Media { gate, branch, .. } = runtime {
                    gate.expect_flush(start_mode);
                    if let Some(pad) = branch.appsrc.static_pad("src") {
                        pad.set_offset(0);
                    }
                }
            }
        }
        let count = self.seeks.begin(target, mode, waiting);
        {
            let mut state = lock(&self.play);
            state.segment_start = target;
            state.since = target;
        }
        self.rendered_until.store(target.as_nanos(), Ordering::Relaxed);
        if !self.has_media() {
            return Ok(target);
        }
        self.pipeline
            .seek(
                rate,
                gst::SeekFlags::FLUSH | gst::SeekFlags::ACCURATE,
                gst::SeekType::Set,
                clock_time(target),
                gst::SeekType::None,
                gst::ClockTime::NONE,
            )
            .map_err(|e| gst_err(format!("seeking to {target}: {e}")))?;
        if mode == SeekMode::Preview {
            // Keyframes first; then the accurate frame, unless another seek came first.
            let weak = Arc::downgrade(self);
            let _ = std::thread::Builder::new().name("tandem-preview".into()).spawn(move || {
                let Some(inner) = weak.upgrade() else { return };
                inner.seeks.wait(count, Duration::from_secs(3));
                if inner.seeks.count() == count {
                    let _ = inner.seek(target, SeekMode::Accurate);
                }
            });
        }
        Ok(target)
    }

    /// The keyframe at or before `t` of the first subscribed video track showing something
    /// at `t`, in meeting time.
    pub(super) fn snap_to_keyframe(&self, t: MediaTime) -> MediaTime {
        let tracks = lock(&self.tracks);
        for runtime in tracks.iter() {
            let Runtime::Media { desc, subscription, .. } = runtime else { continue };
            if desc.kind != TrackKind::Video {
                continue;
            }
            if let Some(keyframe) = subscription.keyframe_before(t) {
                return keyframe;
            }
        }
        t
    }
}
