//! The feeder: takes a track's items from the fetcher's bounded channel and pushes them into
//! its `appsrc` with exact timestamps, honouring the source's queue limits.
//!
//! The [`Gate`] is where seeks and data meet. appsrc calls `seek-data` on every flushing seek
//! (and once at start-up); the gate bumps the track's generation there and starts the fetcher
//! on the target. appsrc throws away whatever is pushed between `seek-data` and the
//! FLUSH_STOP that follows (GSTREAMER.md), so the feeder holds the new generation's data until
//! a pad probe has seen that FLUSH_STOP. Seeks without a flush (start-up, a join) empty the
//! queue too, right after `seek-data` returns: there the feeder waits for the `need-data` that
//! follows. (Pushing at once lost a keyframe in about one start in three.) Pushes are non-blocking and happen under the gate's
//! lock, so an item of an older generation can never slip in after a seek; back-pressure comes
//! from polling the appsrc queue level instead of `block=true`.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_audio as gst_audio;

use super::fetcher::{Item, Packet, Start, StartMode, Tagged};
use crate::time::MediaTime;

/// Most media an appsrc queues before the feeder waits.
const MAX_QUEUED_TIME: gst::ClockTime = gst::ClockTime::from_mseconds(500);
/// Most bytes an appsrc queues before the feeder waits.
const MAX_QUEUED_BYTES: u64 = 8 * 1024 * 1024;
const POLL: Duration = Duration::from_millis(10);

#[derive(Debug)]
struct GateState {
    /// Bumped by every `seek-data`.
    generation: u64,
    /// The newest generation whose flush has completed (or that needed none).
    flushed: u64,
    /// The next `seek-data` comes from a flushing seek.
    flush_expected: bool,
    /// A seek without a flush (start-up, a join) is done once appsrc asks for data.
    awaiting_need_data: bool,
    /// How the next start fetches.
    next_mode: StartMode,
    closed: bool,
}

/// Seek generations and the flush guard of one track.
#[derive(Debug)]
pub(crate) struct Gate {
    state: Mutex<GateState>,
    cond: Condvar,
    /// Dropped on close, which ends the fetcher.
    commands: Mutex<Option<Sender<Start>>>,
}

impl Gate {
    pub(crate) fn new(commands: Sender<Start>) -> Gate {
        Gate {
            state: Mutex::new(GateState {
                generation: 0,
                flushed: 0,
                flush_expected: false,
                awaiting_need_data: false,
                next_mode: StartMode::Accurate,
                closed: false,
            }),
            cond: Condvar::new(),
            commands: Mutex::new(Some(commands)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called before the player issues a flushing seek.
    pub(crate) fn expect_flush(&self, mode: StartMode) {
        let mut state = self.lock();
        state.flush_expected = true;
        state.next_mode = mode;
    }

    /// appsrc's `seek-data`: a new generation starts at `target`.
    pub(crate) fn on_seek_data(&self, target: MediaTime) {
        let mut state = self.lock();
        state.generation += 1;
        // appsrc empties its queue after this callback returns, with or without a flush: what
        // is pushed before then is lost. A flushing seek is over at its FLUSH_STOP; one
        // without (start-up, a join) when the streaming thread, back on an empty queue, asks
        // for data.
        state.awaiting_need_data = !std::mem::take(&mut state.flush_expected);
        let mode = std::mem::replace(&mut state.next_mode, StartMode::Accurate);
        let start = Start { generation: state.generation, target, mode };
        drop(state);
        self.cond.notify_all();
        let commands = self.commands.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(commands) = commands.as_ref() {
            match commands.try_send(start) {
                Ok(()) | Err(TrySendError::Disconnected(_)) => {}
                Err(TrySendError::Full(_)) => tracing::warn!("fetcher command queue full; seek dropped"),
            }
        }
    }

    /// appsrc's `need-data`: after a seek without a flush, the current generation may push.
    pub(crate) fn on_need_data(&self) {
        let mut state = self.lock();
        if std::mem::take(&mut state.awaiting_need_data) {
            state.flushed = state.generation;
            drop(state);
            self.cond.notify_all();
        }
    }

    /// The probe saw FLUSH_STOP: the current generation may push.
    pub(crate) fn on_flush_stop(&self) {
        let mut state = self.lock();
        state.flushed = state.generation;
        drop(state);
        self.cond.notify_all();
    }

    /// Ends the feeder.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.commands.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.cond.notify_all();
    }

    /// Locks the gate once `generation` may push; `None` when it is stale or the gate closed.
    fn ready(&self, generation: u64) -> Option<MutexGuard<'_, GateState>> {
        let mut state = self.lock();
        loop {
            if state.closed || state.generation != generation {
                return None;
            }
            if state.flushed >= generation {
                return Some(state);
            }
            state = self.cond.wait_timeout(state, POLL).map(|(s, _)| s).unwrap_or_else(|e| e.into_inner().0);
        }
    }

    fn is_current(&self, generation: u64) -> bool {
        let state = self.lock();
        !state.closed && state.generation == generation
    }
}

/// Starts the feeder thread of one track.
pub(crate) fn spawn(
    name: &str,
    appsrc: gst_app::AppSrc,
    gate: Arc<Gate>,
    items: Receiver<Tagged>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(format!("feed-{name}")).spawn(move || feed(&appsrc, &gate, &items))
}

fn feed(appsrc: &gst_app::AppSrc, gate: &Gate, items: &Receiver<Tagged>) {
    while let Ok(tagged) = items.recv() {
        if !gate.is_current(tagged.generation) {
            continue;
        }
        // Wait for room in appsrc's queue (its limits close the back-pressure loop).
        while appsrc.current_level_time() > MAX_QUEUED_TIME || appsrc.current_level_bytes() > MAX_QUEUED_BYTES
        {
            if !gate.is_current(tagged.generation) {
                break;
            }
            std::thread::sleep(POLL);
        }
        let Some(_guard) = gate.ready(tagged.generation) else { continue };
        match tagged.item {
            Item::Buffer(packet) => {
                let buffer = to_buffer(packet);
                // Flushing or EOS mean a seek or a state change is under way: drop it.
                let _ = appsrc.push_buffer(buffer);
            }
            Item::Gap { start, duration } => {
                let gap = gst::event::Gap::builder(clock_time(start)).duration(clock_time(duration)).build();
                appsrc.send_event(gap);
            }
            Item::Eos => {
                let _ = appsrc.end_of_stream();
            }
        }
    }
}

/// GStreamer's unsigned nanoseconds as meeting time (saturating past `i64::MAX`).
pub(crate) fn media_time(t: gst::ClockTime) -> MediaTime {
    MediaTime::from_nanos(t.nseconds().min(i64::MAX as u64) as i64)
}

pub(crate) fn clock_time(t: MediaTime) -> gst::ClockTime {
    gst::ClockTime::from_nseconds(t.as_nanos().max(0) as u64)
}

/// A GStreamer buffer around the packet's bytes (no copy), with its times and flags.
fn to_buffer(packet: Packet) -> gst::Buffer {
    let mut buffer = gst::Buffer::from_slice(packet.data);
    {
        let b = buffer.make_mut();
        b.set_pts(clock_time(packet.pts));
        b.set_dts(packet.dts.map(clock_time));
        b.set_duration(clock_time(packet.duration));
        let mut flags = gst::BufferFlags::empty();
        if !packet.keyframe {
            flags |= gst::BufferFlags::DELTA_UNIT;
        }
        if packet.discont {
            flags |= gst::BufferFlags::DISCONT;
        }
        if packet.decode_only {
            flags |= gst::BufferFlags::DECODE_ONLY;
        }
        b.set_flags(flags);
        if packet.clip_start > 0 {
            // Samples (at the stream's rate) the decoder drops from the start of its output.
            gst_audio::AudioClippingMeta::add(
                b,
                gst::format::Default::from_u64(packet.clip_start),
                gst::format::Default::from_u64(0),
            );
        }
    }
    buffer
}
