//! The window: every video track of the meeting in one grid, and the speakers.
//!
//! ```text
//! per video track:  appsrc (live, frames as their clock-synced sink renders them)
//!                     ! videoconvert ! videoscale ! video/x-raw,tile size ─┐
//!                                                                           compositor
//!                                                                           ! videoconvert ! autovideosink
//! ```
//!
//! The grid is a second, live pipeline fed by the playback pipeline's appsinks, so the
//! compositor never waits for a track that has nothing to show (a live aggregator moves on
//! with what it has), and tracks join and leave without touching it. A tile whose track is
//! outside its span or unsubscribed is hidden (alpha 0) over the black background.

use std::sync::{Arc, Mutex};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;

use super::output::VideoFrame;
use super::PlayerError;

/// Size of one tile.
const TILE: (i32, i32) = (640, 360);

struct Tile {
    track: Arc<str>,
    appsrc: gst_app::AppSrc,
    pad: gst::Pad,
    /// Size of the frames last pushed (caps change with it).
    size: Mutex<(u32, u32)>,
    visible: Mutex<bool>,
}

/// The grid window.
pub(crate) struct GridWindow {
    pipeline: gst::Pipeline,
    tiles: Vec<Tile>,
}

impl std::fmt::Debug for GridWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GridWindow")
            .field("tiles", &self.tiles.iter().map(|t| &t.track).collect::<Vec<_>>())
            .finish()
    }
}

fn make(factory: &str) -> Result<gst::Element, PlayerError> {
    gst::ElementFactory::make(factory).build().map_err(|_| {
        PlayerError::Gst(format!("GStreamer element {factory:?} is missing: run scripts/install-deps.sh"))
    })
}

impl GridWindow {
    /// A window with one tile per track, in order, as close to square as the count allows.
    pub(crate) fn open(tracks: &[Arc<str>]) -> Result<GridWindow, PlayerError> {
        let err = |e: &dyn std::fmt::Display| PlayerError::Gst(format!("the window: {e}"));
        let pipeline = gst::Pipeline::with_name("tandem-window");
        let count = tracks.len().max(1);
        let cols = (count as f64).sqrt().ceil() as i32;
        let rows = (count as i32 + cols - 1) / cols;
        let compositor = make("compositor")?;
        compositor.set_property_from_str("background", "black");
        let filter = make("capsfilter")?;
        filter.set_property(
            "caps",
            gst_video::VideoCapsBuilder::new()
                .width(TILE.0 * cols)
                .height(TILE.1 * rows)
                .framerate(gst::Fraction::new(30, 1))
                .build(),
        );
        let convert = make("videoconvert")?;
        let sink = make("autovideosink")?;
        sink.set_property("sync", false);
        pipeline.add_many([&compositor, &filter, &convert, &sink]).map_err(|e| err(&e))?;
        gst::Element::link_many([&compositor, &filter, &convert, &sink]).map_err(|e| err(&e))?;
        let mut tiles = Vec::new();
        for (i, track) in tracks.iter().enumerate() {
            let appsrc = gst_app::AppSrc::builder()
                .is_live(true)
                .do_timestamp(true)
                .format(gst::Format::Time)
                .max_buffers(2)
                .leaky_type(gst_app::AppLeakyType::Downstream)
                .build();
            let convert = make("videoconvert")?;
            let scale = make("videoscale")?;
            let size = make("capsfilter")?;
            size.set_property(
                "caps",
                gst_video::VideoCapsBuilder::new()
                    .width(TILE.0)
                    .height(TILE.1)
                    .pixel_aspect_ratio(gst::Fraction::new(1, 1))
                    .build(),
            );
            let chain = [appsrc.upcast_ref::<gst::Element>(), &convert, &scale, &size];
            pipeline.add_many(chain).map_err(|e| err(&e))?;
            gst::Element::link_many(chain).map_err(|e| err(&e))?;
            let pad = compositor.request_pad_simple("sink_%u").ok_or_else(|| err(&"no compositor pad"))?;
            pad.set_property("xpos", TILE.0 * (i as i32 % cols));
            pad.set_property("ypos", TILE.1 * (i as i32 / cols));
            pad.set_property("alpha", 0.0f64);
            let src = size.static_pad("src").ok_or_else(|| err(&"no tile pad"))?;
            src.link(&pad).map_err(|e| err(&e))?;
            tiles.push(Tile {
                track: track.clone(),
                appsrc,
                pad,
                size: Mutex::new((0, 0)),
                visible: Mutex::new(false),
            });
        }
        pipeline.set_state(gst::State::Playing).map_err(|e| err(&e))?;
        Ok(GridWindow { pipeline, tiles })
    }

    /// Shows a rendered frame in its track's tile (zero-copy: the decoded buffer is shared).
    pub(crate) fn show(&self, frame: &VideoFrame) {
        let Some(tile) = self.tiles.iter().find(|t| t.track == frame.track) else { return };
        {
            let mut size = tile.size.lock().unwrap_or_else(|e| e.into_inner());
            if *size != (frame.width, frame.height) {
                *size = (frame.width, frame.height);
                let caps = gst_video::VideoCapsBuilder::new()
                    .format(gst_video::VideoFormat::I420)
                    .width(frame.width as i32)
                    .height(frame.height as i32)
                    .framerate(gst::Fraction::new(0, 1))
                    .build();
                tile.appsrc.set_caps(Some(&caps));
            }
        }
        let mut buffer = gst::Buffer::from_slice(frame.data.clone());
        if let Some(b) = buffer.get_mut() {
            let offsets = frame.planes;
            let strides = [frame.stride as i32, frame.chroma_stride as i32, frame.chroma_stride as i32];
            let _ = gst_video::VideoMeta::add_full(
                b,
                gst_video::VideoFrameFlags::empty(),
                gst_video::VideoFormat::I420,
                frame.width,
                frame.height,
                &offsets,
                &strides,
            );
        }
        let _ = tile.appsrc.push_buffer(buffer);
    }

    /// Shows or hides a track's tile.
    pub(crate) fn set_visible(&self, track: &str, visible: bool) {
        if let Some(tile) = self.tiles.iter().find(|t| &*t.track == track) {
            let mut shown = tile.visible.lock().unwrap_or_else(|e| e.into_inner());
            if *shown != visible {
                *shown = visible;
                tile.pad.set_property("alpha", if visible { 1.0f64 } else { 0.0 });
            }
        }
    }
}

impl Drop for GridWindow {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}
