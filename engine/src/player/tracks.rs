//! The tracks a player holds: opening one (its index, its subscription), joining its branch
//! to the running pipeline, and removing it, its reads ended first.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;

use super::branch::{self, Branch};
use super::feeder::{Feeder, Gate};
use super::output::{Output, SinkContext, VideoCallback, VideoFrame};
use super::{audio, gst_err, lock, Inner, PlayerError, TrackStats};
use crate::manifest::TrackKind;
use crate::stream::{Cue, Item, SeekTicket, Subscription, TrackDesc};
use crate::time::MediaTime;

/// A track whose first reads are done, its branch not built yet.
pub(super) enum Opened {
    Media { desc: TrackDesc, subscription: Arc<Subscription> },
    Captions { desc: TrackDesc, cues: Vec<Cue> },
}

/// A subscribed track.
pub(super) enum Runtime {
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
    pub(super) fn stop(self, pipeline: &gst::Pipeline) -> bool {
        let Runtime::Media { gate, branch, feeder, .. } = self else { return false };
        gate.close();
        branch.detach(pipeline);
        // The feeder sees the closed gate within a poll; its handle is the subscription's
        // last but ours, and dropping that joins the fetch worker.
        let _ = feeder.join();
        true
    }

    pub(super) fn desc(&self) -> &TrackDesc {
        match self {
            Runtime::Media { desc, .. } | Runtime::Captions { desc, .. } => desc,
        }
    }
}

impl Inner {
    /// Opens, builds and starts a track; `joining` while the pipeline plays.
    pub(super) fn add_track(self: &Arc<Self>, name: &str, joining: bool) -> Result<(), PlayerError> {
        let opened = self.open_track(name)?;
        self.add_opened(opened, joining)
    }

    /// A track's reads before its branch can be built: its index, or all its cues. Runs on
    /// any thread, for every track at once.
    pub(super) fn open_track(&self, name: &str) -> Result<Opened, PlayerError> {
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
    pub(super) fn add_opened(self: &Arc<Self>, opened: Opened, joining: bool) -> Result<(), PlayerError> {
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
    pub(super) fn load_cues(&self, name: &str) -> Result<Vec<Cue>, PlayerError> {
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
    pub(super) fn join_branch(&self, branch: &Branch) -> Result<(), PlayerError> {
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
    pub(super) fn remove_track(&self, name: &str) -> bool {
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
    pub(super) fn track_of(&self, element: &str) -> Option<Arc<str>> {
        lock(&self.tracks)
            .iter()
            .map(|r| r.desc().name.clone())
            .filter(|name| element.strip_prefix(&**name).is_some_and(|rest| rest.starts_with('-')))
            .max_by_key(|name| name.len())
    }
}
