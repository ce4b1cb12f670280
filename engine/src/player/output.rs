//! Where decoded media goes: a window, nowhere (headless), or the embedder's callbacks, and
//! the types those callbacks receive.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use super::seek::SeekTracker;
use super::stats::TrackStats;
use crate::time::MediaTime;

/// Receives every decoded, clock-synced video frame (and the preroll frame after a seek).
pub type VideoCallback = Arc<dyn Fn(&VideoFrame) + Send + Sync>;
/// Receives every clock-synced buffer of decoded audio.
pub type AudioCallback = Arc<dyn Fn(&AudioChunk) + Send + Sync>;

/// The outputs, chosen when the player opens.
#[derive(Clone, Default)]
pub enum Output {
    /// The grid window of the subscribed video tracks, and the speakers.
    Window,
    /// Clock-synced sinks with no window and no sound: servers and CI.
    #[default]
    Headless,
    /// Clock-synced frames and samples handed to the embedder.
    Callbacks { video: Option<VideoCallback>, audio: Option<AudioCallback> },
}

impl fmt::Debug for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Output::Window => write!(f, "Window"),
            Output::Headless => write!(f, "Headless"),
            Output::Callbacks { video, audio } => f
                .debug_struct("Callbacks")
                .field("video", &video.is_some())
                .field("audio", &audio.is_some())
                .finish(),
        }
    }
}

/// One decoded I420 frame, shown at `pts` on the meeting timeline.
#[derive(Clone)]
pub struct VideoFrame {
    pub track: Arc<str>,
    /// Presentation time on the meeting timeline. After an accurate seek the first frame's PTS
    /// is the target (clipped), not the frame's original time.
    pub pts: MediaTime,
    pub duration: MediaTime,
    /// The meeting time of the pipeline clock when the frame was handed over.
    pub clock: Option<MediaTime>,
    /// The frame a paused or seeking pipeline prerolled (it is handed over again when shown).
    pub preroll: bool,
    pub width: u32,
    pub height: u32,
    /// Bytes per row of the luma plane.
    pub stride: usize,
    /// Byte offsets of the Y, U and V planes in `data`.
    pub planes: [usize; 3],
    /// Bytes per row of the chroma planes.
    pub chroma_stride: usize,
    /// The decoded buffer, shared with GStreamer (no copy).
    pub data: Bytes,
    /// How many seeks the player had made when the frame was shown.
    pub seek: u64,
}

impl VideoFrame {
    /// The luma plane (`stride` bytes per row, `height` rows).
    pub fn luma(&self) -> &[u8] {
        let end = (self.planes[0] + self.stride * self.height as usize).min(self.data.len());
        &self.data[self.planes[0].min(end)..end]
    }

    /// The frame as a GStreamer buffer sharing its memory, with the plane layout attached.
    pub(crate) fn to_buffer(&self) -> gstreamer::Buffer {
        use gstreamer_video as gst_video;
        let mut buffer = gstreamer::Buffer::from_slice(self.data.clone());
        if let Some(b) = buffer.get_mut() {
            let strides = [self.stride as i32, self.chroma_stride as i32, self.chroma_stride as i32];
            let _ = gst_video::VideoMeta::add_full(
                b,
                gst_video::VideoFrameFlags::empty(),
                gst_video::VideoFormat::I420,
                self.width,
                self.height,
                &self.planes,
                &strides,
            );
        }
        buffer
    }

    /// The frame as packed RGB, 3 bytes per pixel (BT.601), for snapshots.
    pub fn to_rgb(&self) -> Vec<u8> {
        let (w, h) = (self.width as usize, self.height as usize);
        let mut out = vec![0u8; w * h * 3];
        let at = |plane: usize, stride: usize, x: usize, y: usize| -> f32 {
            self.data.get(self.planes[plane] + y * stride + x).copied().unwrap_or(128) as f32
        };
        for y in 0..h {
            for x in 0..w {
                let luma = at(0, self.stride, x, y) - 16.0;
                let u = at(1, self.chroma_stride, x / 2, y / 2) - 128.0;
                let v = at(2, self.chroma_stride, x / 2, y / 2) - 128.0;
                let r = 1.164 * luma + 1.596 * v;
                let g = 1.164 * luma - 0.392 * u - 0.813 * v;
                let b = 1.164 * luma + 2.017 * u;
                let o = (y * w + x) * 3;
                out[o] = r.clamp(0.0, 255.0) as u8;
                out[o + 1] = g.clamp(0.0, 255.0) as u8;
                out[o + 2] = b.clamp(0.0, 255.0) as u8;
            }
        }
        out
    }
}

impl fmt::Debug for VideoFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VideoFrame")
            .field("track", &self.track)
            .field("pts", &self.pts)
            .field("clock", &self.clock)
            .field("preroll", &self.preroll)
            .field("size", &(self.width, self.height))
            .finish()
    }
}

/// Decoded audio: interleaved little-endian `f32` samples starting at `pts`.
#[derive(Clone)]
pub struct AudioChunk {
    pub track: Arc<str>,
    pub pts: MediaTime,
    pub clock: Option<MediaTime>,
    pub rate: u32,
    pub channels: u32,
    pub samples: Bytes,
    pub seek: u64,
}

impl AudioChunk {
    /// The samples as `f32` values.
    pub fn to_f32(&self) -> Vec<f32> {
        self.samples.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    }
}

impl fmt::Debug for AudioChunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AudioChunk")
            .field("track", &self.track)
            .field("pts", &self.pts)
            .field("rate", &self.rate)
            .field("channels", &self.channels)
            .field("bytes", &self.samples.len())
            .finish()
    }
}

/// What a track's sink callbacks need.
pub(crate) struct SinkContext {
    pub(crate) track: Arc<str>,
    pub(crate) stats: Arc<TrackStats>,
    pub(crate) on_video: Option<VideoCallback>,
    pub(crate) on_audio: Option<AudioCallback>,
    pub(crate) seeks: Arc<SeekTracker>,
    /// The seek count when the sink last flushed: buffers it shows belong to that seek.
    pub(crate) epoch: std::sync::atomic::AtomicU64,
    /// Sinks wait for the clock (false: as fast as the data comes, see `PlayerOptions::realtime`).
    pub(crate) realtime: bool,
    /// The furthest meeting time (nanoseconds) any track has rendered up to: the cursor when
    /// not `realtime`.
    pub(crate) rendered_until: Arc<std::sync::atomic::AtomicI64>,
}

impl SinkContext {
    /// The sink saw FLUSH_STOP: what it shows from now on belongs to the latest seek.
    pub(crate) fn flushed(&self) {
        self.stats.set_ended(false);
        self.epoch.store(self.seeks.count(), std::sync::atomic::Ordering::Relaxed);
    }

    /// A buffer reached the sink: the first one of the latest seek completes it here.
    pub(crate) fn first_buffer(&self) {
        if self.seek_count() == self.seeks.count() {
            self.seeks.shown(&self.track);
        }
    }

    /// A buffer ending at `end` was rendered.
    pub(crate) fn rendered_to(&self, end: MediaTime) {
        self.rendered_until.fetch_max(end.as_nanos(), std::sync::atomic::Ordering::Relaxed);
    }

    /// The seek the shown buffers belong to.
    pub(crate) fn seek_count(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::Relaxed)
    }
}
