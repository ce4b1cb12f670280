//! How much and when: the buffer target in time and bytes, the room to read (the sound
//! first), the cursor a start trusts, reads that give up on a new start, and the hand-out.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{SendTimeoutError, TryRecvError};

use super::{Fetcher, Flow, Run, POLL};
use crate::index::Codec;
use crate::manifest::TrackKind;
use crate::source::{ReadOptions, SourceError};
use crate::stream::item::{Item, TrackItem};
use crate::time::MediaTime;

/// Frames a reordering decoder may hold back: not yet playable when handed out.
const REORDER_HELD: i64 = 3;
/// Video refills wait while a subscribed audio track has less than this ahead...
const SOUND_FIRST_LEAD: MediaTime = MediaTime::from_secs(2);
/// ...if the video track has this much of its own...
const SOUND_FIRST_OWN: MediaTime = MediaTime::from_secs(1);
/// ...for this long at most at a time.
const SOUND_FIRST_MOST: Duration = Duration::from_secs(2);

impl Fetcher {
    /// Reads a range of media data, giving up when the subscription ends or a new start comes;
    /// its first `urgent` bytes are awaited now.
    pub(super) fn read(&mut self, start: u64, len: u64, urgent: u64) -> Result<Bytes, Flow> {
        if let Some(data) = self.source.read_cached(start, len) {
            return Ok(data);
        }
        loop {
            let started = Instant::now();
            match self.data_source.read_range_with(start, len, ReadOptions::urgent(&self.cancel, urgent)) {
                Ok(data) => {
                    tracing::debug!(track = %self.desc.name, start, len, took = ?started.elapsed(), "read");
                    self.sizer.record(data.len() as u64, started.elapsed());
                    self.waits.note(started.elapsed());
                    self.figures.throughput.store(self.sizer.throughput().to_bits(), Ordering::Relaxed);
                    self.figures.rtt.store(self.sizer.rtt().as_nanos() as u64, Ordering::Relaxed);
                    return Ok(data);
                }
                Err(SourceError::Cancelled { .. }) => {
                    self.poll_commands()?;
                    // The cancel belonged to the start this run already took up (it lands
                    // just after its command): read again.
                    self.cancel.reset();
                }
                Err(e) => return Err(Flow::Failed(format!("reading bytes {start}..{}: {e}", start + len))),
            }
        }
    }

    /// Records that media up to `end` was handed out.
    pub(super) fn advance(&mut self, run: &mut Run, end: MediaTime, bytes: u64) {
        if end > run.sent_until {
            run.sent_until = end;
            // A reordering decoder (B-frames) outputs a frame only once later ones arrived:
            // the last few frames handed out are not playable yet.
            let reorders =
                self.index.as_ref().is_some_and(|i| matches!(i.info().codec, Codec::H264 | Codec::H265));
            let held = if bytes > 0 && reorders {
                MediaTime::from_nanos(run.last_duration.as_nanos().saturating_mul(REORDER_HELD))
            } else {
                MediaTime::ZERO
            };
            self.figures.set_buffered_until(end.saturating_sub(held));
        }
        if bytes > 0 {
            run.in_flight.push_back((end, bytes));
            run.media_until = run.media_until.max(end);
        }
    }

    /// The media kept ahead of the cursor: the stream's target, or three times the longest
    /// recent wait on the link if that is more (a lossy far link makes a read last seconds
    /// now and then; the buffer must outlast it), at most four times the stream's target.
    /// The byte bound holds whatever this says.
    pub(super) fn target(&self) -> MediaTime {
        let outlast = MediaTime::from_nanos(
            self.waits.longest().as_nanos().saturating_mul(3).min(i64::MAX as u128) as i64,
        );
        let most = MediaTime::from_nanos(self.buffer_target.as_nanos().saturating_mul(4));
        self.buffer_target.max(outlast.min(most))
    }

    /// Media a request adds beyond the buffer target: four round trips' worth, at most half
    /// the target. Nothing on a near link, where small top-ups cost nothing and keep the
    /// packets flowing evenly (bursts of a quarter second made frames late on a loaded
    /// machine).
    pub(super) fn refill(&self) -> MediaTime {
        let rtts =
            MediaTime::from_nanos(self.sizer.rtt().as_nanos().saturating_mul(4).min(i64::MAX as u128) as i64);
        rtts.min(MediaTime::from_nanos(self.target().as_nanos() / 2))
    }

    /// Where the cursor is for this start: the stream's, but a consumer's clock only once it
    /// has been seen near the target (right after a seek it may still report where it was);
    /// the target until then.
    pub(super) fn cursor(&self, run: &mut Run) -> MediaTime {
        let Some(shared) = self.shared.upgrade() else { return run.target };
        let Some(position) = shared.cursor() else { return run.target };
        if !shared.cursor_may_lag() {
            return position.max(run.target);
        }
        if !run.cursor_seen {
            let slack = MediaTime::from_secs(1);
            run.cursor_seen =
                position >= run.target.saturating_sub(slack) && position <= run.target.saturating_add(slack);
        }
        if run.cursor_seen {
            position.max(run.target)
        } else {
            run.target
        }
    }

    /// Waits while the media handed out ahead of the cursor reaches the buffer target, in
    /// time or in bytes.
    pub(super) fn wait_for_room(&mut self, run: &mut Run) -> Result<(), Flow> {
        let asked = Instant::now();
        loop {
            let cursor = self.cursor(run);
            while run.in_flight.front().is_some_and(|(end, _)| *end <= cursor) {
                run.in_flight.pop_front();
            }
            let bytes: u64 = run.in_flight.iter().map(|(_, b)| b).sum();
            self.figures.buffered_bytes.store(bytes, Ordering::Relaxed);
            if run.sent_until.saturating_sub(cursor) < self.target()
                && bytes < self.buffer_bytes
                && !self.sound_first(cursor, run.media_until, asked)
            {
                return Ok(());
            }
            if !self.alive.load(Ordering::Relaxed) {
                return Err(Flow::Stop);
            }
            crossbeam_channel::select! {
                recv(self.commands) -> start => match start {
                    Ok(start) => return Err(Flow::Command(start)),
                    Err(_) => return Err(Flow::Stop),
                },
                recv(self.nudges) -> nudge => {
                    if nudge.is_err() {
                        return Err(Flow::Stop);
                    }
                }
                default(POLL) => {}
            }
        }
    }

    /// A video track with a lead of its own (media until `media_until`: a gap before its
    /// next span costs the link nothing and is no lead, or the span's first frames would wait)
    /// waits while the sound runs short, for [`SOUND_FIRST_MOST`] at most (a sound that fails
    /// to fill must not starve the picture).
    pub(super) fn sound_first(&self, cursor: MediaTime, media_until: MediaTime, asked: Instant) -> bool {
        self.desc.kind == TrackKind::Video
            && asked.elapsed() < SOUND_FIRST_MOST
            && media_until.saturating_sub(cursor) >= SOUND_FIRST_OWN
            && self.shared.upgrade().is_some_and(|s| s.sound_runs_short(cursor, SOUND_FIRST_LEAD))
    }

    pub(super) fn poll_commands(&self) -> Result<(), Flow> {
        if !self.alive.load(Ordering::Relaxed) {
            return Err(Flow::Stop);
        }
        match self.commands.try_recv() {
            Ok(start) => Err(Flow::Command(start)),
            Err(TryRecvError::Empty) => Ok(()),
            Err(TryRecvError::Disconnected) => Err(Flow::Stop),
        }
    }

    /// Hands an item out, waiting while the channel is full but giving way to a new start or
    /// the end of the subscription.
    pub(super) fn send(&self, run: &Run, item: Item) -> Result<(), Flow> {
        let mut tagged = TrackItem { ticket: run.ticket, item };
        loop {
            match self.out.send_timeout(tagged, POLL) {
                Ok(()) => {
                    self.waker.wake();
                    return Ok(());
                }
                Err(SendTimeoutError::Timeout(back)) => {
                    tagged = back;
                    self.poll_commands()?;
                }
                Err(SendTimeoutError::Disconnected(_)) => return Err(Flow::Stop),
            }
        }
    }
}
