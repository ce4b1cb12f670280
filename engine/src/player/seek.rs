//! Seek bookkeeping: which tracks have shown the current seek's target, how long each took,
//! and the `SeekDone` event once all have.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::events::{EventSink, PlayerEvent};
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
