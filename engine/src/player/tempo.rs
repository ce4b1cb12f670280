//! The pitch-keeping element of an audio branch (`scaletempo`), and the timestamps of what it
//! outputs.
//!
//! `scaletempo` (WSOLA) queues 50 ms of input (14 ms search + 30 ms stride + 6 ms overlap),
//! writes one 30 ms output stride from the front of the queue, then slides the queue by
//! `30 ms x rate` of input. GStreamer 1.22.0 stamps each output buffer with the start of the input
//! buffer that completed it minus that whole queue, divided by the rate: anywhere up to one
//! input buffer (21 ms of Vorbis) before the samples it carries. It also keeps its queue across
//! flushing seeks, so the first stride after a seek starts with up to 50 ms of audio from before
//! it. A clock-synced `appsink` renders every buffer at its own stamp: the clicks of the fixtures
//! played 29 ms early to 17 ms late at 0.5x-2x. (An `audiobasesink` plays samples back to back
//! and hides the jitter up to its 40 ms alignment threshold, not the stale queue.)
//!
//! [`scaletempo`] restamps the output from scaletempo's own arithmetic, followed on both pads:
//! every input frame it takes gets an index, every output stride starts where the sum of the
//! slides before it points, and that input frame's meeting time (frames queued from before a
//! seek count back from the seek's first frame) gives the stride's time at the rate. What is
//! left is WSOLA's own: a sound moves by up to the search window and by its place in a stride
//! times `|rate - 1|`. The stamps take off the average of both ([`early_ms`]), the search is
//! 10 ms and the stride shortens at rates far from 1 ([`stride_ms`]), so a click lands within
//! about 8 ms either way at 0.5x-1.5x and 10 ms at 2x.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_audio as gst_audio;

use super::elements::make;
use super::PlayerError;

/// How far past where the slides point a stride may start (scaletempo's default is 14 ms): a
/// sound moves by up to that much. 10 ms still holds a whole pitch period of a 100 Hz voice.
const SEARCH_MS: u32 = 10;

/// The time-stretching element of `track`'s branch, its output restamped.
pub(crate) fn scaletempo(track: &str) -> Result<gst::Element, PlayerError> {
    let tempo = make("scaletempo", format!("{track}-tempo"))?;
    tempo.set_property("search", SEARCH_MS);
    let shadow = Arc::new(Mutex::new(Shadow {
        stride_ms: tempo.property::<u32>("stride"),
        overlap: tempo.property::<f64>("overlap"),
        search_ms: tempo.property::<u32>("search"),
        scale: 1.0,
        ..Shadow::default()
    }));
    if let (Some(sink), Some(src)) = (tempo.static_pad("sink"), tempo.static_pad("src")) {
        let input = shadow.clone();
        let element = tempo.downgrade();
        sink.add_probe(gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM, move |_, probe| {
            let mut shadow = input.lock().unwrap_or_else(|e| e.into_inner());
            match &probe.data {
                Some(gst::PadProbeData::Event(event)) => {
                    shadow.event(event);
                    // Before scaletempo sees the segment (on its streaming thread: no transform
                    // runs meanwhile), the stride that suits its rate.
                    let stride = stride_ms(shadow.scale);
                    if shadow.scale != 1.0 && stride != shadow.stride_ms {
                        if let Some(tempo) = element.upgrade() {
                            tempo.set_property("stride", stride);
                            shadow.stride_ms = stride;
                            shadow.resize = true;
                        }
                    }
                }
                Some(gst::PadProbeData::Buffer(buffer)) => shadow.input(buffer),
                _ => {}
            }
            gst::PadProbeReturn::Ok
        });
        src.add_probe(gst::PadProbeType::BUFFER, move |_, probe| {
            if let Some(gst::PadProbeData::Buffer(buffer)) = &mut probe.data {
                let mut shadow = shadow.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(pts) = shadow.output(buffer) {
                    buffer.make_mut().set_pts(pts);
                }
            }
            gst::PadProbeReturn::Ok
        });
    }
    Ok(tempo)
}

/// The stride (ms of output per splice) for `scale`. WSOLA plays each stride's input at 1x, so
/// where a sound lands depends on where in a stride it falls: over `stride x (rate - 1)` above 1x,
/// over `stride x rate x (1 - rate)` below (a sound is first heard in the earliest of the
/// overlapping strides holding it). scaletempo's 30 ms default is kept while that spread stays
/// within 6 ms (0.75x, 1.2x), and shortened beyond it: 24 ms at 0.5x and 1.25x, 12 ms at 1.5x,
/// 10 ms (spread 10 ms) at 2x.
fn stride_ms(scale: f64) -> u32 {
    const SPREAD_MS: f64 = 6.0;
    let spread_per_ms = if scale >= 1.0 { scale - 1.0 } else { scale * (1.0 - scale) };
    (SPREAD_MS / spread_per_ms.max(1e-3)).clamp(10.0, 30.0) as u32
}

/// How much earlier than the rate puts it, on average, scaletempo plays a sound (meeting ms;
/// negative: later). A stride starts anywhere in the search window (on average half of it)
/// after where the slides point, and plays its input at 1x: a sound `u` ms into a stride lands
/// `u x (rate - 1)` late. Above 1x `u` averages half a stride; below 1x strides overlap, and a
/// sound is first heard in the earliest stride holding it, `stride x (1 - rate)` or more in.
fn early_ms(scale: f64, stride_ms: u32, search_ms: u32) -> f64 {
    let stride = f64::from(stride_ms);
    let into = if scale >= 1.0 { stride / 2.0 } else { stride * (1.0 + scale) / 2.0 };
    f64::from(search_ms) / 2.0 - into * (scale - 1.0)
}

/// scaletempo's queue, followed from outside: what it holds and where its next stride starts.
/// Input frames are numbered in the order scaletempo takes them (only while it stretches: at 1x
/// it passes buffers through and its queue rests).
#[derive(Debug, Default)]
struct Shadow {
    /// scaletempo's properties.
    stride_ms: u32,
    overlap: f64,
    search_ms: u32,
    /// From the caps.
    sample_rate: u64,
    frame_bytes: u64,
    /// scaletempo recomputes its sizes at its next buffer (caps or properties changed).
    resize: bool,
    /// Output frames per stride.
    stride: u64,
    /// Input frames per output stride: `stride x rate`.
    stride_in: f64,
    /// |segment rate|; 1 is passthrough.
    scale: f64,
    segment_start: u64,
    /// The index of the next input frame.
    taken: u64,
    /// The index of the first frame of the next stride (fractional: slides carry their error).
    next_stride: f64,
    /// Runs of input since the segment began: (index of the first frame, its time in ns).
    runs: VecDeque<(u64, u64)>,
}

impl Shadow {
    fn event(&mut self, event: &gst::Event) {
        match event.view() {
            gst::EventView::Caps(caps) => {
                let Ok(info) = gst_audio::AudioInfo::from_caps(caps.caps()) else { return };
                self.sample_rate = u64::from(info.rate());
                self.frame_bytes = u64::from(info.bpf());
                self.resize = true;
            }
            gst::EventView::Segment(segment) => {
                let Some(segment) = segment.segment().downcast_ref::<gst::ClockTime>() else { return };
                let scale = segment.rate().abs();
                let scale = if (scale - 1.0).abs() < 1e-10 { 1.0 } else { scale };
                if scale != 1.0 && scale != self.scale {
                    // A new rate drops a slide still owed to input not yet received.
                    self.next_stride = self.next_stride.min(self.taken as f64);
                }
                self.scale = scale;
                self.stride_in = self.stride as f64 * self.scale;
                self.segment_start = segment.start().map_or(0, |s| s.nseconds());
                self.runs.clear();
            }
            _ => {}
        }
    }

    /// scaletempo's `reinit_buffers`: new sizes; a queue longer than the new one keeps its newest
    /// frames.
    fn resize(&mut self) {
        let per_ms = self.sample_rate as f64 / 1000.0;
        self.stride = (f64::from(self.stride_ms) * per_ms) as u64;
        let overlap = (self.stride as f64 * self.overlap) as u64;
        let search = if overlap <= 1 { 0 } else { (f64::from(self.search_ms) * per_ms) as u64 };
        let queue = (search + self.stride + overlap) as f64;
        self.next_stride = self.next_stride.max(self.taken as f64 - queue);
        self.stride_in = self.stride as f64 * self.scale;
        self.resize = false;
    }

    fn stretching(&self) -> bool {
        self.scale != 1.0 && self.sample_rate > 0 && self.frame_bytes > 0
    }

    /// A buffer scaletempo takes, clipped to the segment as it clips it.
    fn input(&mut self, buffer: &gst::BufferRef) {
        if !self.stretching() {
            return;
        }
        if self.resize {
            self.resize();
        }
        let mut frames = buffer.size() as u64 / self.frame_bytes;
        let mut at = buffer.pts().map(|p| p.nseconds());
        if let Some(pts) = at.filter(|&p| p < self.segment_start) {
            let clipped =
                (u128::from(self.segment_start - pts) * u128::from(self.sample_rate) / 1_000_000_000) as u64;
            if clipped >= frames {
                return;
            }
            frames -= clipped;
            at = Some(self.segment_start);
        }
        // Without a stamp the frames continue the run before them.
        if let Some(at) = at {
            self.runs.push_back((self.taken, at));
        }
        self.taken += frames;
        // Runs wholly before the next stride are no longer needed (keep one to count from).
        while self.runs.len() > 1 && self.runs[1].0 as f64 <= self.next_stride {
            self.runs.pop_front();
        }
    }

    /// The meeting time (ns) of input frame `index`: frames queued before the segment's first
    /// run are counted back from it.
    fn time_of(&self, index: f64) -> Option<f64> {
        let &(first, at) = self.runs.iter().rev().find(|(i, _)| *i as f64 <= index).or(self.runs.front())?;
        Some(at as f64 + (index - first as f64) * 1e9 / self.sample_rate as f64)
    }

    /// The stamp of an output buffer: its first stride's input, played at the rate, less what
    /// scaletempo moves sounds on average.
    fn output(&mut self, buffer: &gst::BufferRef) -> Option<gst::ClockTime> {
        if !self.stretching() || self.stride == 0 {
            return None;
        }
        let strides = buffer.size() as u64 / self.frame_bytes / self.stride;
        if strides == 0 {
            return None;
        }
        let at = self.time_of(self.next_stride);
        self.next_stride += strides as f64 * self.stride_in;
        let early = early_ms(self.scale, self.stride_ms, self.search_ms) * 1e6;
        let start = self.segment_start as f64;
        let pts = start + (at? + early - start) / self.scale;
        Some(gst::ClockTime::from_nseconds(pts.max(0.0) as u64))
    }
}
