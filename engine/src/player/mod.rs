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
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Receiver;
use gstreamer as gst;
use gstreamer::prelude::*;

mod audio;
mod branch;
mod clock;
mod degrade;
mod elements;
mod events;
mod export;
mod feeder;
mod grid;
mod output;
mod seek;
mod stats;
mod tempo;
mod window;

pub use crate::stream::{Meeting, Place, Span, Timeline, TrackDesc};
pub use events::PlayerEvent;
pub use export::{compose_grid, export_mp4, ExportLayout, ExportOptions, ExportProgress, RgbImage};
pub use output::{AudioCallback, AudioChunk, Output, VideoCallback, VideoFrame};
pub use seek::SeekMode;
pub use stats::TrackStats;

use branch::Branch;
use events::EventSink;
use feeder::{clock_time, Feeder, Gate};
use output::SinkContext;
use seek::SeekTracker;

use crate::index::{IndexError, TrackInfo};
use crate::manifest::{ManifestError, Role, TrackKind};
use crate::stream::{
    Cue, Item, MeetingStream, SeekTicket, StartMode, StreamError, StreamOptions, Subscription,
};
use crate::time::MediaTime;

/// Why the player could not do what it was asked: what the stream says, or GStreamer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PlayerError {
    /// Reading the meeting: its manifest, an index, the peer, a track.
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("track {track}: {what}")]
    Unsupported { track: String, what: String },
    #[error("GStreamer: {0}")]
    Gst(String),
    #[error("the GStreamer element {factory} is missing: install the Debian package {package} (scripts/install-deps.sh installs every one tandem needs)")]
    MissingElement { factory: String, package: &'static str },
    #[error("rate {0} is outside 0.5 to 2")]
    Rate(f64),
}

impl PlayerError {
    pub(crate) fn unknown_track(name: impl Into<String>) -> PlayerError {
        StreamError::UnknownTrack(name.into()).into()
    }
    pub(crate) fn open(track: impl Into<String>, message: impl Into<String>) -> PlayerError {
        StreamError::Open { track: track.into(), message: message.into() }.into()
    }
}

impl From<ManifestError> for PlayerError {
    fn from(e: ManifestError) -> Self {
        StreamError::from(e).into()
    }
}

impl From<IndexError> for PlayerError {
    fn from(e: IndexError) -> Self {
        StreamError::from(e).into()
    }
}

#[cfg(feature = "net")]
impl From<crate::net::NetError> for PlayerError {
    fn from(e: crate::net::NetError) -> Self {
        StreamError::from(e).into()
    }
}

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

/// A track whose first reads are done, its branch not built yet.
enum Opened {
    Media { desc: TrackDesc, subscription: Arc<Subscription> },
    Captions { desc: TrackDesc, cues: Vec<Cue> },
}

/// A subscribed track.
enum Runtime {
    Media {
        desc: TrackDesc,
        subscription: Arc<Subscription>,
        branch: Branch,
        gate: Arc<Gate>,
        stats: Arc<TrackStats>,
        /// Joined when the track stops, so its reads end before the caller goes on (a
        /// peer's runtime may be dropped right after the player).
        feeder: JoinHandle<()>,
    },
    Captions {
        desc: TrackDesc,
        cues: Arc<Vec<Cue>>,
    },
}

impl Runtime {
    /// Stops a media track: its feeder and its reads end before this returns. True for media.
    fn stop(self, pipeline: &gst::Pipeline) -> bool {
        let Runtime::Media { gate, branch, feeder, .. } = self else { return false };
        gate.close();
        branch.detach(pipeline);
        // The feeder sees the closed gate within a poll; its handle is the subscription's
        // last but ours, and dropping that joins the fetch worker.
        let _ = feeder.join();
        true
    }

    fn desc(&self) -> &TrackDesc {
        match self {
            Runtime::Media { desc, .. } | Runtime::Captions { desc, .. } => desc,
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

    /// Lets a state change under way (the preroll after a flushing seek) finish before the
    /// next one: pausing in the middle of it left the pipeline's running time where it was
    /// before the seek (every track then played 2 s late in about one case in four).
    fn settle(&self) {
        let _ = self.pipeline.state(gst::ClockTime::from_seconds(5));
    }

    /// Waits for the pipeline to finish a state change (preroll).
    fn wait_settled(&self) -> Result<(), PlayerError> {
        let (result, _, _) = self.pipeline.state(gst::ClockTime::from_seconds(30));
        result.map(|_| ()).map_err(|e| gst_err(format!("the pipeline did not preroll: {e}")))
    }

    fn seek(self: &Arc<Self>, t: MediaTime, mode: SeekMode) -> Result<MediaTime, PlayerError> {
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
    fn snap_to_keyframe(&self, t: MediaTime) -> MediaTime {
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

    /// Opens, builds and starts a track; `joining` while the pipeline plays.
    fn add_track(self: &Arc<Self>, name: &str, joining: bool) -> Result<(), PlayerError> {
        let opened = self.open_track(name)?;
        self.add_opened(opened, joining)
    }

    /// A track's reads before its branch can be built: its index, or all its cues. Runs on
    /// any thread, for every track at once.
    fn open_track(&self, name: &str) -> Result<Opened, PlayerError> {
        let desc =
            self.stream.meeting().track(name).cloned().ok_or_else(|| PlayerError::unknown_track(name))?;
        if desc.kind == TrackKind::Captions {
            let cues = self.load_cues(name)?;
            return Ok(Opened::Captions { desc, cues });
        }
        // The track starts where appsrc's first seek-data says (see `feeder`).
        let subscription = Arc::new(self.stream.subscribe_idle(name)?);
        Ok(Opened::Media { desc, subscription })
    }

    /// Builds and starts an opened track; `joining` while the pipeline plays.
    fn add_opened(self: &Arc<Self>, opened: Opened, joining: bool) -> Result<(), PlayerError> {
        let (desc, subscription) = match opened {
            Opened::Captions { desc, cues } => {
                lock(&self.tracks).push(Runtime::Captions { desc, cues: Arc::new(cues) });
                return Ok(());
            }
            Opened::Media { desc, subscription } => (desc, subscription),
        };
        let name: &str = &desc.name.clone();
        let stats = lock(&self.stats)
            .entry(desc.name.clone())
            .or_insert_with(|| Arc::new(TrackStats::new(self.stream.figures(name))))
            .clone();
        let Some(info) = subscription.info().cloned() else {
            return Err(PlayerError::Unsupported {
                track: name.into(),
                what: "a file tandem cannot index".into(),
            });
        };
        let engine_audio = desc.kind == TrackKind::Audio && audio::decodes_in_engine(&info.codec);
        let decoder = if engine_audio {
            Some(
                audio::AudioDecoder::new(&info, subscription.encoder_delay())
                    .map_err(|what| PlayerError::Unsupported { track: name.into(), what })?,
            )
        } else {
            None
        };
        let gate = Arc::new(Gate::new(subscription.clone()));
        let (on_video, on_audio) = match (&self.options.output, &self.window) {
            (Output::Callbacks { video, audio }, _) => (video.clone(), audio.clone()),
            (Output::Window, Some(window)) => {
                let window = window.clone();
                let show: VideoCallback = Arc::new(move |frame: &VideoFrame| window.show(frame));
                (Some(show), None)
            }
            _ => (None, None),
        };
        let context = Arc::new(SinkContext {
            track: desc.name.clone(),
            stats: stats.clone(),
            on_video,
            on_audio,
            seeks: self.seeks.clone(),
            epoch: std::sync::atomic::AtomicU64::new(self.seeks.count()),
            realtime: self.options.realtime,
            rendered_until: self.rendered_until.clone(),
        });
        let spec = branch::BranchSpec {
            track: name,
            kind: desc.kind,
            timeline: &desc.timeline,
            info: &info,
            engine_audio,
            output: &self.options.output,
            joining,
        };
        let branch = branch::build(&spec, gate.clone(), context)?;
        branch.attach(&self.pipeline)?;
        let feeder = Feeder {
            track: desc.name.clone(),
            kind: desc.kind,
            timeline: desc.timeline.clone(),
            sample_rate: info.audio.map(|a| a.sample_rate).unwrap_or(48_000),
            subscription: subscription.clone(),
            appsrc: branch.appsrc.clone(),
            gate: gate.clone(),
            decoder,
            events: self.events.clone(),
        };
        let feeder = match feeder.spawn() {
            Ok(feeder) => feeder,
            Err(e) => {
                gate.close();
                branch.detach(&self.pipeline);
                return Err(gst_err(format!("starting the feeder thread: {e}")));
            }
        };
        let started = if joining {
            self.join_branch(&branch)
        } else if self.pipeline.current_state() >= gst::State::Paused {
            branch.sync_state()
        } else {
            Ok(())
        };
        if let Err(e) = started {
            gate.close();
            branch.detach(&self.pipeline);
            let _ = feeder.join();
            return Err(e);
        }
        if let (Some(window), TrackKind::Video) = (&self.window, desc.kind) {
            window.set_subscribed(&desc.name, true);
        }
        lock(&self.tracks).push(Runtime::Media { desc, subscription, branch, gate, stats, feeder });
        Ok(())
    }

    /// Every cue of a caption track, read once (caption files are small).
    fn load_cues(&self, name: &str) -> Result<Vec<Cue>, PlayerError> {
        let subscription = self.stream.subscribe_at(name, MediaTime::ZERO, SeekTicket::default())?;
        let mut cues = Vec::new();
        loop {
            match subscription.recv_timeout(Duration::from_secs(30)).map(|t| t.item) {
                Ok(Item::Cue(cue)) => cues.push(cue),
                Ok(Item::End) => return Ok(cues),
                Ok(Item::Failed { message }) => return Err(PlayerError::open(name, message)),
                Ok(_) => {}
                Err(_) => return Err(PlayerError::open(name, "its cues did not arrive within 30 s")),
            }
        }
    }

    /// Starts a branch inside a playing pipeline: its segment starts a little ahead of the
    /// cursor, and a pad offset puts its running time where the other branches' is.
    fn join_branch(&self, branch: &Branch) -> Result<(), PlayerError> {
        let (rate, segment_start) = {
            let state = lock(&self.play);
            (state.rate, state.segment_start)
        };
        let position = self.position().unwrap_or(segment_start);
        let join_at = position.saturating_add(self.options.join_margin);
        branch.appsrc.set_state(gst::State::Ready).map_err(gst_err)?;
        if !branch::pending_seek(&branch.appsrc, rate, join_at) {
            return Err(gst_err("the joining track refused its start position"));
        }
        let offset = (join_at.saturating_sub(segment_start).as_nanos() as f64 / rate) as i64;
        if let Some(pad) = branch.appsrc.static_pad("src") {
            pad.set_offset(offset);
        }
        branch.sync_state()
    }

    /// Removes a track; false when it was not subscribed.
    fn remove_track(&self, name: &str) -> bool {
        let runtime = {
            let mut tracks = lock(&self.tracks);
            let Some(i) = tracks.iter().position(|r| &*r.desc().name == name) else { return false };
            tracks.remove(i)
        };
        let name = runtime.desc().name.clone();
        if runtime.stop(&self.pipeline) {
            self.seeks.forget(&name);
            if let Some(window) = &self.window {
                window.set_subscribed(&name, false);
            }
        }
        true
    }

    /// The subscribed track an element belongs to (branch elements are named `<track>-...`).
    fn track_of(&self, element: &str) -> Option<Arc<str>> {
        lock(&self.tracks)
            .iter()
            .map(|r| r.desc().name.clone())
            .filter(|name| element.strip_prefix(&**name).is_some_and(|rest| rest.starts_with('-')))
            .max_by_key(|name| name.len())
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

/// Watches the pipeline's bus: a track's error stops that track only; the end of every
/// branch is the end of the meeting.
fn spawn_bus_watch(inner: Weak<Inner>, stop: Arc<AtomicBool>) -> std::io::Result<JoinHandle<()>> {
    let bus = inner.upgrade().and_then(|i| i.pipeline.bus());
    std::thread::Builder::new().name("tandem-bus".into()).spawn(move || {
        let Some(bus) = bus else { return };
        while !stop.load(Ordering::Relaxed) {
            let Some(message) = bus.timed_pop(gst::ClockTime::from_mseconds(100)) else { continue };
            let Some(inner) = inner.upgrade() else { return };
            match message.view() {
                gst::MessageView::Error(err) => {
                    let source = message.src().map(|s| s.name().to_string()).unwrap_or_default();
                    let text = format!("{} ({source})", err.error());
                    match inner.track_of(&source) {
                        Some(track) => {
                            tracing::warn!(%track, %text, "track error");
                            inner
                                .events
                                .send(PlayerEvent::TrackError { track: track.clone(), message: text });
                            inner.remove_track(&track);
                        }
                        None => inner
                            .events
                            .send(PlayerEvent::TrackError { track: Arc::from("pipeline"), message: text }),
                    }
                }
                gst::MessageView::Eos(_) => inner.events.send(PlayerEvent::EndOfMeeting),
                _ => {}
            }
        }
    })
}
