//! What the benchmarks know about a meeting folder without trusting the player: each track's
//! spans on the meeting timeline, each video track's frame times and keyframes (from the index),
//! hence the stamp that must be on screen at any meeting time; and the decode-only limit of a
//! seek.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use tandem::index::{Codec, Sample, TrackIndex, TrackInfo};
use tandem::manifest::{Manifest, TrackKind};
use tandem::player::Span;
use tandem::MediaTime;

/// One audio or video track of a meeting folder.
#[derive(Debug, Clone)]
pub struct Track {
    pub name: Arc<str>,
    pub kind: TrackKind,
    pub file: PathBuf,
    /// The file's name in the folder (what the HTTP server serves).
    pub file_name: String,
    pub spans: Vec<Span>,
    /// Video only: frame presentation times (media time, sorted) and keyframe times.
    pub frames: Vec<MediaTime>,
    pub keyframes: Vec<MediaTime>,
}

impl Track {
    /// The span showing meeting time `t`.
    pub fn span_at(&self, t: MediaTime) -> Option<&Span> {
        self.spans.iter().find(|s| s.contains(t))
    }

    pub fn active(&self, t: MediaTime) -> bool {
        self.span_at(t).is_some()
    }

    /// The stamp (meeting ms) of the frame on screen at `t`: the last frame at or before it in
    /// its span, or the span's first frame when `t` falls before it.
    pub fn expected_stamp(&self, t: MediaTime) -> Option<i64> {
        let span = self.span_at(t)?;
        let media = span.to_media(t);
        let idx = self.frames.partition_point(|p| *p <= media);
        let pts = match idx.checked_sub(1).map(|i| self.frames[i]) {
            Some(p) if p >= span.media_start.saturating_sub(MediaTime::from_millis(1)) => p,
            _ => *self.frames.get(idx)?,
        };
        Some(span.to_meeting(pts).as_millis())
    }

    /// The stamp of the keyframe at or before `t` (what a preview seek shows first).
    pub fn keyframe_stamp(&self, t: MediaTime) -> Option<i64> {
        let span = self.span_at(t)?;
        let media = span.to_media(t);
        let idx = self.keyframes.partition_point(|p| *p <= media);
        let key = idx.checked_sub(1).map(|i| self.keyframes[i]).unwrap_or(MediaTime::ZERO);
        // Before the span's media start the stamp is from before the span: the span starts
        // showing at its start.
        Some(span.to_meeting(key).as_millis())
    }
}

/// The audio and video tracks of a meeting folder.
#[derive(Debug, Clone)]
pub struct MeetingInfo {
    pub dir: PathBuf,
    pub duration: MediaTime,
    pub tracks: Vec<Track>,
}

impl MeetingInfo {
    pub fn load(dir: &Path) -> Result<MeetingInfo> {
        let manifest = Manifest::load(dir)?;
        let duration =
            MediaTime::from_millis(manifest.duration_ms.context("meeting without duration")? as i64);
        let mut tracks = Vec::new();
        for t in manifest.tracks.iter().filter(|t| matches!(t.kind, TrackKind::Video | TrackKind::Audio)) {
            let file = dir.join(t.file());
            let (mut frames, mut keyframes) = (Vec::new(), Vec::new());
            if t.kind == TrackKind::Video {
                let src = tandem::FileSource::open(&file)?;
                let index = TrackIndex::open(&t.name, &src)?;
                let keys = index.keyframes(&src)?;
                keyframes = keys.iter().map(|k| k.pts).collect();
                let mut pos = keys.first().map(|k| k.pos);
                while let Some(at) = pos {
                    let batch = index.samples(&src, at, 4096)?;
                    frames.extend(batch.samples.iter().map(|s| s.pts));
                    if batch.samples.is_empty() {
                        break;
                    }
                    pos = batch.next;
                }
                frames.sort();
                keyframes.sort();
            }
            tracks.push(Track {
                name: Arc::from(t.name.as_str()),
                kind: t.kind,
                file,
                file_name: t.file().to_string(),
                spans: t.segments.iter().map(|s| Span::from_segment(t, s)).collect(),
                frames,
                keyframes,
            });
        }
        Ok(MeetingInfo { dir: dir.to_path_buf(), duration, tracks })
    }

    pub fn videos(&self) -> impl Iterator<Item = &Track> {
        self.tracks.iter().filter(|t| t.kind == TrackKind::Video)
    }

    /// Video tracks showing something at `t`.
    pub fn active_videos(&self, t: MediaTime) -> Vec<&Track> {
        self.videos().filter(|v| v.active(t)).collect()
    }
}

/// A video track held in memory, for the decode-only limit.
#[derive(Debug)]
pub struct InMemoryTrack {
    pub track: Track,
    index: TrackIndex,
    data: Bytes,
}

/// Coded frames from the keyframe at or before a time to the frame shown at it.
#[derive(Debug)]
pub struct DecodeJob {
    caps: gst::Caps,
    codec: Codec,
    frames: Vec<(Sample, Bytes)>,
}

impl DecodeJob {
    /// The coded bytes of the frames: what a seek must fetch of this track at least.
    pub fn bytes(&self) -> u64 {
        self.frames.iter().map(|(_, data)| data.len() as u64).sum()
    }
}

impl InMemoryTrack {
    /// The bytes the index read to open (headers, moov, SeekHead and Cues...).
    pub fn index_open_bytes(&self) -> u64 {
        self.index.open_cost().bytes
    }

    pub fn load(track: &Track) -> Result<InMemoryTrack> {
        let data = Bytes::from(std::fs::read(&track.file)?);
        let index = TrackIndex::open(&track.name, &data)?;
        Ok(InMemoryTrack { track: track.clone(), index, data })
    }

    /// The frames to decode to show meeting time `t`, read out of memory ahead of timing.
    pub fn job(&self, t: MediaTime) -> Result<Option<DecodeJob>> {
        let Some(span) = self.track.span_at(t) else { return Ok(None) };
        let media = span.to_media(t);
        let keyframe = self.index.seek(&self.data, media)?;
        let mut frames = Vec::new();
        let mut pos = Some(keyframe.pos);
        'walk: while let Some(at) = pos {
            let batch = self.index.samples(&self.data, at, 256)?;
            for sample in &batch.samples {
                if sample.dts > media && sample.pts > media {
                    break 'walk;
                }
                frames.push((*sample, self.index.sample_data(&self.data, sample)?));
            }
            if batch.samples.is_empty() {
                break;
            }
            pos = batch.next;
        }
        let info = self.index.info();
        Ok(Some(DecodeJob { caps: caps(info)?, codec: info.codec.clone(), frames }))
    }
}

fn caps(info: &TrackInfo) -> Result<gst::Caps> {
    let sized = |b: gst::caps::Builder<gst::caps::NoFeature>| match info.video {
        Some(v) => b.field("width", v.width as i32).field("height", v.height as i32),
        None => b,
    };
    Ok(match &info.codec {
        Codec::H264 => sized(gst::Caps::builder("video/x-h264"))
            .field("stream-format", "avc")
            .field("alignment", "au")
            .field(
                "codec_data",
                gst::Buffer::from_slice(info.codec_config.clone().context("H.264 without avcC")?),
            )
            .build(),
        Codec::Vp8 => sized(gst::Caps::builder("video/x-vp8")).build(),
        Codec::Vp9 => sized(gst::Caps::builder("video/x-vp9")).build(),
        other => bail!("no decode limit for {other:?}"),
    })
}

/// Decodes `job` and returns the time from the first buffer pushed to the last frame out:
/// `appsrc ! <decoder the player uses> ! appsink sync=false`, the pipeline built and playing
/// before the clock starts.
pub fn decode(job: &DecodeJob) -> Result<Duration> {
    //  appsrc (coded frames, time format) ! decoder ! appsink (sync=false, counts frames, EOS)
    let pipeline = gst::Pipeline::new();
    let src = gst_app::AppSrc::builder().caps(&job.caps).format(gst::Format::Time).build();
    src.set_property("max-bytes", 0u64);
    let decoder = match job.codec {
        // As the player configures it: frame threading deadlocks on flush/NULL in 1.22.0.
        Codec::H264 => {
            gst::ElementFactory::make("avdec_h264").property_from_str("thread-type", "slice").build()?
        }
        Codec::Vp8 => gst::ElementFactory::make("vp8dec").build()?,
        Codec::Vp9 => gst::ElementFactory::make("vp9dec").build()?,
        ref other => bail!("no decoder for {other:?}"),
    };
    // async=false: the pipeline reaches PLAYING without a preroll buffer, so the clock starts
    // with the first push (not after a state-change timeout).
    let sink = gst_app::AppSink::builder().sync(false).build();
    sink.set_property("async", false);
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(|s| {
                let _ = s.pull_sample();
                Ok(gst::FlowSuccess::Ok)
            })
            .eos(move |_| {
                let _ = tx.send(());
            })
            .build(),
    );
    pipeline.add_many([src.upcast_ref(), &decoder, sink.upcast_ref()])?;
    gst::Element::link_many([src.upcast_ref(), &decoder, sink.upcast_ref()])?;
    pipeline.set_state(gst::State::Playing)?;
    let (state, current, _) = pipeline.state(gst::ClockTime::from_seconds(5));
    state.context("decode pipeline did not start")?;
    anyhow::ensure!(current == gst::State::Playing, "decode pipeline is {current:?}, not playing");
    let start = Instant::now();
    for (sample, data) in &job.frames {
        let mut buffer = gst::Buffer::from_slice(data.clone());
        {
            let b = buffer.get_mut().context("fresh buffer")?;
            b.set_pts(gst::ClockTime::from_nseconds(sample.pts.as_nanos().max(0) as u64));
            b.set_dts(gst::ClockTime::from_nseconds(sample.dts.as_nanos().max(0) as u64));
            if !sample.keyframe {
                b.set_flags(gst::BufferFlags::DELTA_UNIT);
            }
        }
        src.push_buffer(buffer)?;
    }
    src.end_of_stream()?;
    let done = rx.recv_timeout(Duration::from_secs(30));
    let elapsed = start.elapsed();
    let error = pipeline.bus().and_then(|bus| bus.pop_filtered(&[gst::MessageType::Error]));
    pipeline.set_state(gst::State::Null)?;
    if let Some(msg) = error {
        bail!("decode pipeline: {msg:?}");
    }
    done.context("decode pipeline did not finish")?;
    Ok(elapsed)
}

/// The decode-only limit of showing `t` on every track: each track's frames decoded on its own
/// thread, all at once, as the player's branches do (so they share the cores as the player's
/// do); the slowest track's time from its first buffer pushed to its last frame out, and each
/// track's own time. Building each pipeline is outside the timing.
pub fn decode_limit(tracks: &[InMemoryTrack], t: MediaTime) -> Result<(Duration, Vec<Duration>)> {
    let jobs: Vec<DecodeJob> = tracks.iter().filter_map(|tr| tr.job(t).transpose()).collect::<Result<_>>()?;
    let per_track = std::thread::scope(|s| {
        let handles: Vec<_> = jobs.iter().map(|job| s.spawn(move || decode(job))).collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow::anyhow!("decode thread panicked"))?)
            .collect::<Result<Vec<_>>>()
    })?;
    Ok((per_track.iter().copied().max().unwrap_or_default(), per_track))
}
