//! The player: one meeting clock over tracks that come and go.
//!
//! The player is a renderer over the stream layer ([`crate::stream`]): each subscribed track
//! is a stream subscription whose packets a feeder pushes into an appsrc.
//!
//! ```text
//!  MeetingStream (cursor = the pipeline's position) ──> per subscribed track:
//!     Subscription ══bounded channel══> Feeder thread ─> appsrc
//!     (fetch, buffer,                   (engine audio decoding, drains,   │
//!      back-pressure)                    generations, flush guard)        ▼
//!                                                  decoder ! convert ! clock-synced sink
//!  one gst::Pipeline, one clock, one segment start for every branch; the clock watcher
//!  turns the cursor into span, caption, buffer and buffering events.
//! ```
//!
//! | module      | concern                                                             |
//! |-------------|---------------------------------------------------------------------|
//! | `audio`     | Vorbis, MP3, AAC, FLAC decoded with symphonia                        |
//! | `feeder`    | packets -> appsrc; seek generations and the flush guard              |
//! | `stats`     | a track's fetch and render figures                                   |
//! | `branch`    | one track's elements: build, join while playing, remove              |
//! | `tempo`     | scaletempo (pitch kept at 0.5x-2x) and the stamps of its output      |
//! | `output`    | window, headless or callbacks, and the frames callbacks receive      |
//! | `grid`      | the grid layout and name tiles the window, export and snapshots share |
//! | `window`    | the live grid window of the subscribed video tracks                  |
//! | `export`    | a stretch rendered as fast as possible into an MP4 or one grid image |
//! | `elements`  | GStreamer elements, and which Debian package installs a missing one  |
//! | `seek`      | seek modes and per-track seek latency                                |
//! | `clock`     | the cursor's events: spans, captions, buffering                     |
//! | `degrade`   | video that gives way when the link cannot carry every track          |
//! | `events`    | the event stream                                                     |
//! | `tracks`    | a track opened, joined to the pipeline, removed                      |
//! | `bus`       | the pipeline's bus: a track's error, the meeting's end               |
//! | `error`     | `PlayerError`                                                        |
//!
//! # Known limits
//! - Pausing within about 100 ms of a flushing seek's preroll has been seen (on GStreamer
//!   1.22.0, a few runs in ten) to leave every track offset from the clock by the pause's
//!   length; pausing once playback runs is exact (see `tests/tests/player.rs`).
//!
//! # Example
//! Play two tracks of the bundled meeting headless for a moment:
//! ```
//! use tandem::player::{Meeting, Output, Player, PlayerOptions, SeekMode};
//! use tandem::MediaTime;
//!
//! let meeting = Meeting::from_folder(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/meeting"))?;
//! let options = PlayerOptions {
//!     output: Output::Headless,
//!     subscribe: Some(vec!["alice_video".into(), "mixed_audio".into()]),
//!     ..PlayerOptions::default()
//! };
//! let player = Player::open(meeting, options)?;
//! player.seek(MediaTime::from_secs(12), SeekMode::Accurate)?;
//! player.play()?;
//! std::thread::sleep(std::time::Duration::from_secs(2));
//! assert!(player.position() > MediaTime::from_millis(13_500));
//! # Ok::<(), tandem::player::PlayerError>(())
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Receiver;
use gstreamer as gst;
use gstreamer::prelude::*;

mod audio;
mod branch;
mod bus;
mod clock;
mod degrade;
mod elements;
mod error;
mod events;
mod export;
mod feeder;
mod grid;
mod output;
mod seek;
mod stats;
mod tempo;
mod tracks;
mod window;

pub use crate::stream::{Meeting, Place, Span, Timeline, TrackDesc};
pub use error::PlayerError;
pub use events::PlayerEvent;
pub use export::{compose_grid, export_mp4, ExportLayout, ExportOptions, ExportProgress, RgbImage};
pub use output::{AudioCallback, AudioChunk, Output, VideoCallback, VideoFrame};
pub use seek::SeekMode;
pub use stats::TrackStats;

use bus::spawn_bus_watch;
use events::EventSink;
use seek::SeekTracker;
use tracks::{Opened, Runtime};

use crate::index::TrackInfo;
use crate::manifest::{Role, TrackKind};
use crate::stream::{Cue, MeetingStream, StreamError, StreamOptions};
use crate::time::MediaTime;

/// How a player is opened.
#[derive(Debug, Clone)]
pub struct PlayerOptions {
    pub output: Output,
    /// Media fetched ahead of the cursor per track (default 3 s).
    pub buffer_target: MediaTime,
    /// Tracks to subscribe at once; every track when `None`.
    pub subscribe: Option<Vec<String>>,
    /// Where the cursor starts.
    pub start_at: MediaTime,
    /// How far ahead of the cursor a track joining while playing appears.
    pub join_margin: MediaTime,
    /// Sinks follow the pipeline clock (true, playback). False renders as fast as data and
    /// decoders allow, for export: the cursor is then the furthest time rendered, fetching runs
    /// the buffer target ahead of it, and playback never pauses to buffer.
    pub realtime: bool,
}

impl Default for PlayerOptions {
    fn default() -> Self {
        PlayerOptions {
            output: Output::Headless,
            buffer_target: MediaTime::from_secs(3),
            subscribe: None,
            start_at: MediaTime::ZERO,
            join_margin: MediaTime::from_millis(300),
            realtime: true,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct PlayState {
    /// The embedder asked to play.
    playing: bool,
    /// Playback waits for data.
    buffering: bool,
    rate: f64,
    /// Segment start of the last flushing seek: running time is `(pts - start) / rate`.
    segment_start: MediaTime,
    /// Where playing last (re)started: buffering is not judged before the pipeline settles.
    since: MediaTime,
    /// `play` waits (since then) for every track to have a little ahead before the clock runs:
    /// a start, not a stall (see `clock::START_LEAD`).
    starting: Option<std::time::Instant>,
}

pub(crate) struct Inner {
    /// The meeting's tracks, fetched and buffered; its cursor is the player's position.
    stream: MeetingStream,
    options: PlayerOptions,
    pipeline: gst::Pipeline,
    tracks: Mutex<Vec<Runtime>>,
    /// Every track ever subscribed: stats outlive subscriptions.
    stats: Mutex<HashMap<Arc<str>, Arc<TrackStats>>>,
    events: EventSink,
    events_rx: Receiver<PlayerEvent>,
    seeks: Arc<SeekTracker>,
    play: Mutex<PlayState>,
    stop: Arc<AtomicBool>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// The grid of video tracks, with [`Output::Window`].
    window: Option<Arc<window::GridWindow>>,
    /// Furthest meeting time rendered (nanoseconds): the cursor when not realtime.
    rendered_until: Arc<AtomicI64>,
    /// Video tracks the clock does not wait for: the link cannot carry them (see `degrade`).
    degraded: Mutex<Vec<Arc<str>>>,
}

/// Plays one meeting. Dropping it stops everything it started.
pub struct Player {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Player {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Player")
            .field("meeting", &self.inner.stream.meeting().name())
            .field("subscribed", &self.subscribed())
            .finish()
    }
}

use crate::lock::lock;

fn gst_err(e: impl std::fmt::Display) -> PlayerError {
    PlayerError::Gst(e.to_string())
}

impl Player {
    /// Opens `meeting`, subscribes the chosen tracks and prerolls paused at `start_at`.
    pub fn open(meeting: Meeting, options: PlayerOptions) -> Result<Player, PlayerError> {
        gst::init().map_err(gst_err)?;
        let pipeline = gst::Pipeline::with_name("tandem");
        let (events, events_rx) = EventSink::new();
        let seeks = Arc::new(SeekTracker::new(events.clone()));
        let window = match options.output {
            Output::Window => {
                let videos: Vec<(Arc<str>, String)> = meeting
                    .tracks()
                    .iter()
                    .filter(|t| t.kind == TrackKind::Video)
                    .map(|t| (t.name.clone(), tile_label(t)))
                    .collect();
                Some(Arc::new(window::GridWindow::open(&videos)?))
            }
            _ => None,
        };
        let stream_options =
            StreamOptions { buffer_target: options.buffer_target, ..StreamOptions::default() };
        let stream = MeetingStream::open(meeting, stream_options);
        let inner = Arc::new(Inner {
            stream,
            options,
            pipeline,
            tracks: Mutex::new(Vec::new()),
            stats: Mutex::new(HashMap::new()),
            events,
            events_rx,
            seeks,
            play: Mutex::new(PlayState {
                playing: false,
                buffering: false,
                rate: 1.0,
                segment_start: MediaTime::ZERO,
                since: MediaTime::ZERO,
                starting: None,
            }),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Mutex::new(Vec::new()),
            window,
            rendered_until: Arc::new(AtomicI64::new(0)),
            degraded: Mutex::new(Vec::new()),
        });
        let player = Player { inner: inner.clone() };
        let weak = Arc::downgrade(&inner);
        inner.stream.set_clock(Arc::new(move || weak.upgrade()?.position()));
        let names: Vec<String> = match &inner.options.subscribe {
            Some(names) => names.clone(),
            None => inner.stream.meeting().tracks().iter().map(|t| t.name.to_string()).collect(),
        };
        // A track that cannot be opened (damaged index, unsupported codec, a lost file) is
        // reported and left out; the meeting plays with the others.
        // Each track's first reads (its index, a caption file) cost round trips on a far link:
        // every track opens at once, then the branches are built in order.
        let opens: Vec<Result<Opened, PlayerError>> = std::thread::scope(|scope| {
            let inner = &inner;
            let handles: Vec<_> =
                names.iter().map(|name| scope.spawn(move || inner.open_track(name))).collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(gst_err("a track's opening thread panicked"))))
                .collect()
        });
        let mut opened = 0;
        let mut first_error = None;
        for (name, open) in names.iter().zip(opens) {
            match open.and_then(|open| inner.add_opened(open, false)) {
                // Captions alone play nothing: the meeting needs one audio or video track.
                Ok(()) if inner.has_media() => opened += 1,
                Ok(()) => {}
                Err(e @ PlayerError::Stream(StreamError::UnknownTrack(_))) => return Err(e),
                Err(e) => {
                    tracing::warn!(track = %name, error = %e, "track left out");
                    inner.events.send(PlayerEvent::TrackError {
                        track: Arc::from(name.as_str()),
                        message: e.to_string(),
                    });
                    first_error.get_or_insert(e);
                }
            }
        }
        if let (0, Some(e)) = (opened, first_error) {
            return Err(e);
        }
        let bus = spawn_bus_watch(Arc::downgrade(&inner), inner.stop.clone()).map_err(gst_err)?;
        let watcher = clock::spawn_watcher(Arc::downgrade(&inner), inner.stop.clone()).map_err(gst_err)?;
        lock(&inner.threads).extend([bus, watcher]);
        inner.pipeline.set_state(gst::State::Paused).map_err(|e| gst_err(format!("pausing: {e}")))?;
        inner.wait_settled()?;
        // Prerolling started every track at zero; anywhere else is a seek.
        if inner.options.start_at > MediaTime::ZERO {
            player.seek(inner.options.start_at, SeekMode::Accurate)?;
        }
        Ok(player)
    }

    pub fn meeting(&self) -> &Meeting {
        self.inner.stream.meeting()
    }

    /// The meeting's tracks with kind, role, participant and spans.
    pub fn tracks(&self) -> &[TrackDesc] {
        self.inner.stream.meeting().tracks()
    }

    /// Names of the subscribed tracks.
    pub fn subscribed(&self) -> Vec<Arc<str>> {
        lock(&self.inner.tracks).iter().map(|r| r.desc().name.clone()).collect()
    }

    /// Adds a track at any moment; while playing it joins at the cursor without disturbing
    /// the others.
    pub fn subscribe(&self, track: &str) -> Result<(), PlayerError> {
        if self.subscribed().iter().any(|t| &**t == track) {
            return Ok(());
        }
        let (playing, _, _) = self.inner.play_state();
        if playing {
            self.inner.add_track(track, true)
        } else {
            self.inner.add_track(track, false)?;
            // Paused: re-preroll every branch at the cursor, the new one included.
            self.seek(self.position(), SeekMode::Accurate).map(|_| ())
        }
    }

    /// Removes a track: its fetching stops at once and its branch leaves the pipeline.
    pub fn unsubscribe(&self, track: &str) -> Result<(), PlayerError> {
        if self.inner.remove_track(track) {
            Ok(())
        } else {
            Err(PlayerError::unknown_track(track))
        }
    }

    pub fn play(&self) -> Result<(), PlayerError> {
        let position = self.position();
        // State changes happen under the play lock, so a buffering resume from the clock
        // watcher and the embedder's pause cannot interleave.
        let ready = self.inner.lowest_lead(position).is_none_or(|(_, lead)| lead >= clock::START_LEAD);
        let mut state = lock(&self.inner.play);
        state.playing = true;
        state.since = position;
        self.inner.settle();
        if !ready && !state.buffering && self.inner.options.realtime {
            // Right after a seek a far link may have brought only each track's first frame:
            // the clock starts once every track has a little more.
            state.buffering = true;
            state.starting = Some(std::time::Instant::now());
            return Ok(());
        }
        if !state.buffering {
            self.inner.pipeline.set_state(gst::State::Playing).map_err(gst_err)?;
        }
        Ok(())
    }

    pub fn pause(&self) -> Result<(), PlayerError> {
        let mut state = lock(&self.inner.play);
        state.playing = false;
        state.buffering = false;
        state.starting = None;
        self.inner.settle();
        self.inner.pipeline.set_state(gst::State::Paused).map_err(gst_err)?;
        Ok(())
    }

    pub fn is_playing(&self) -> bool {
        lock(&self.inner.play).playing
    }

    /// Moves the cursor. Returns the target the tracks seek to (a keyframe in fast mode).
    pub fn seek(&self, t: MediaTime, mode: SeekMode) -> Result<MediaTime, PlayerError> {
        self.inner.seek(t, mode)
    }

    /// Playback rate, 0.5 to 2; audio keeps its pitch.
    pub fn set_rate(&self, rate: f64) -> Result<(), PlayerError> {
        if !(0.5..=2.0).contains(&rate) {
            return Err(PlayerError::Rate(rate));
        }
        let position = self.position();
        lock(&self.inner.play).rate = rate;
        self.inner.seek(position, SeekMode::Accurate).map(|_| ())
    }

    pub fn rate(&self) -> f64 {
        lock(&self.inner.play).rate
    }

    /// The cursor: the meeting time on screen now.
    pub fn position(&self) -> MediaTime {
        self.inner.position().unwrap_or_else(|| lock(&self.inner.play).segment_start)
    }

    /// The event stream (a clone of the one receiver; events go to whichever reads first).
    pub fn events(&self) -> Receiver<PlayerEvent> {
        self.inner.events_rx.clone()
    }

    /// Events dropped because nobody read them in time.
    pub fn events_dropped(&self) -> u64 {
        self.inner.events.dropped()
    }

    /// Fetch and render figures of a track subscribed now or before.
    pub fn track_stats(&self, track: &str) -> Option<Arc<TrackStats>> {
        lock(&self.inner.stats).get(track).cloned()
    }

    /// Waits until every subscribed track shows the last seek's target; false on timeout.
    pub fn wait_seek(&self, timeout: Duration) -> bool {
        let count = self.inner.seeks.count();
        self.inner.seeks.wait(count, timeout)
    }

    /// Codec, size and format of a subscribed audio or video track, from its index.
    pub fn track_info(&self, track: &str) -> Option<TrackInfo> {
        lock(&self.inner.tracks).iter().find_map(|r| match r {
            Runtime::Media { desc, subscription, .. } if &*desc.name == track => subscription.info().cloned(),
            _ => None,
        })
    }

    /// How many seeks have been made (frames carry the count current when they were shown).
    pub fn seek_count(&self) -> u64 {
        self.inner.seeks.count()
    }
}

impl Drop for Player {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Relaxed);
        let _ = self.inner.pipeline.set_state(gst::State::Null);
        for runtime in lock(&self.inner.tracks).drain(..) {
            runtime.stop(&self.inner.pipeline);
        }
        for thread in lock(&self.inner.threads).drain(..) {
            let _ = thread.join();
        }
    }
}

impl Inner {
    fn has_media(&self) -> bool {
        lock(&self.tracks).iter().any(|r| matches!(r, Runtime::Media { .. }))
    }

    pub(crate) fn position(&self) -> Option<MediaTime> {
        if self.options.realtime {
            pipeline_position(&self.pipeline)
        } else {
            Some(MediaTime::from_nanos(self.rendered_until.load(Ordering::Relaxed)))
        }
    }

    pub(crate) fn play_state(&self) -> (bool, bool, MediaTime) {
        let state = lock(&self.play);
        (state.playing, state.buffering, state.since)
    }

    /// When `play` began waiting for the tracks' first lead, if it still does.
    pub(crate) fn starting(&self) -> Option<std::time::Instant> {
        lock(&self.play).starting
    }

    pub(crate) fn set_starting(&self, on: bool) {
        lock(&self.play).starting = on.then(std::time::Instant::now);
    }

    pub(crate) fn subscribed_descs(&self) -> Vec<TrackDesc> {
        lock(&self.tracks).iter().map(|r| r.desc().clone()).collect()
    }

    pub(crate) fn caption_tracks(&self) -> Vec<(Arc<str>, Arc<Vec<Cue>>)> {
        lock(&self.tracks)
            .iter()
            .filter_map(|r| match r {
                Runtime::Captions { desc, cues } => Some((desc.name.clone(), cues.clone())),
                Runtime::Media { .. } => None,
            })
            .collect()
    }

    pub(crate) fn media_stats(&self) -> Vec<(Arc<str>, Arc<TrackStats>)> {
        lock(&self.tracks)
            .iter()
            .filter_map(|r| match r {
                Runtime::Media { desc, stats, .. } => Some((desc.name.clone(), stats.clone())),
                Runtime::Captions { .. } => None,
            })
            .collect()
    }

    /// Pauses while a track runs dry; resumes when all have enough.
    pub(crate) fn set_buffering(&self, on: bool) {
        let position = self.position().unwrap_or_default();
        let mut state = lock(&self.play);
        if !state.playing {
            // Paused by the embedder meanwhile: nothing to wait for or resume.
            state.buffering = false;
            return;
        }
        state.buffering = on;
        if !on {
            state.since = position;
        }
        self.settle();
        let _ = self.pipeline.set_state(if on { gst::State::Paused } else { gst::State::Playing });
    }
}

/// The audio output the window plays through (`pulsesink`, `pipewiresink` or `alsasink`,
/// the first that opens); `None` when no sound device opens, and the audio then plays
/// silently, in sync.
pub fn sound_output() -> Option<&'static str> {
    gst::init().ok()?;
    ["pulsesink", "pipewiresink", "alsasink"].into_iter().find(|factory| {
        let Ok(sink) = gst::ElementFactory::make(factory).build() else { return false };
        let opens = sink.set_state(gst::State::Ready).is_ok();
        let _ = sink.set_state(gst::State::Null);
        opens
    })
}

/// What a video track's tile says while it has nothing to show: who it is.
pub(crate) fn tile_label(desc: &TrackDesc) -> String {
    match &desc.participant {
        Some(who) if desc.role != Role::Camera => format!("{who} ({})", desc.role),
        Some(who) => who.clone(),
        None => desc.name.to_string(),
    }
}

/// The meeting time on screen: the pipeline's position.
fn pipeline_position(pipeline: &gst::Pipeline) -> Option<MediaTime> {
    pipeline.query_position::<gst::ClockTime>().map(feeder::meeting_time)
}
