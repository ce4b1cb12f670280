//! The window: the subscribed video tracks in one grid, and the speakers.
//!
//! ```text
//! per video track:  appsrc (live, frames as their clock-synced sink renders them) ─┐
//!                   dark tile with the participant's name (grid.rs)               ─┴ compositor
//!                                                                       ! videoconvert ! autovideosink
//! ```
//!
//! The grid is a second, live pipeline fed by the playback pipeline's appsinks, so the
//! compositor never waits for a track that has nothing to show (a live aggregator moves on
//! with what it has), and tracks join and leave without touching it. The grid re-lays itself
//! over the subscribed tracks; a subscribed track outside its span shows its name tile.

use std::sync::{Arc, Mutex};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;

use super::elements::make;
use super::grid::{self, TilePads};
use super::output::VideoFrame;
use super::PlayerError;

struct Tile {
    track: Arc<str>,
    appsrc: gst_app::AppSrc,
    pads: TilePads,
    /// Size of the frames last pushed (caps change with it).
    size: Mutex<(u32, u32)>,
    /// Inside a span (the track layer is shown).
    visible: Mutex<bool>,
}

/// The grid window.
pub(crate) struct GridWindow {
    pipeline: gst::Pipeline,
    tiles: Vec<Tile>,
    /// The subscribed tracks, in the meeting's order.
    shown: Mutex<Vec<Arc<str>>>,
}

impl std::fmt::Debug for GridWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GridWindow")
            .field("tiles", &self.tiles.iter().map(|t| &t.track).collect::<Vec<_>>())
            .finish()
    }
}

use crate::lock::lock;

impl GridWindow {
    /// A window with a tile for each of `tracks` (name, label), none shown until subscribed.
    pub(crate) fn open(tracks: &[(Arc<str>, String)]) -> Result<GridWindow, PlayerError> {
        let err = |e: &dyn std::fmt::Display| PlayerError::Gst(format!("the window: {e}"));
        let pipeline = gst::Pipeline::with_name("tandem-window");
        let compositor = grid::compositor()?;
        let filter = make("capsfilter", String::new())?;
        filter.set_property("caps", grid::caps(30));
        let convert = make("videoconvert", String::new())?;
        let sink = make("autovideosink", String::new())?;
        sink.set_property("sync", false);
        pipeline.add_many([&compositor, &filter, &convert, &sink]).map_err(|e| err(&e))?;
        gst::Element::link_many([&compositor, &filter, &convert, &sink]).map_err(|e| err(&e))?;
        let mut tiles = Vec::new();
        for (track, label) in tracks {
            let appsrc = gst_app::AppSrc::builder()
                .is_live(true)
                .do_timestamp(true)
                .format(gst::Format::Time)
                .max_buffers(2)
                .leaky_type(gst_app::AppLeakyType::Downstream)
                .build();
            let pads = grid::add_tile(&pipeline, &compositor, appsrc.upcast_ref(), label, true, 30, None)?;
            pads.place(None);
            tiles.push(Tile {
                track: track.clone(),
                appsrc,
                pads,
                size: Mutex::new((0, 0)),
                visible: Mutex::new(false),
            });
        }
        if pipeline.set_state(gst::State::Playing).is_err() {
            // The reason is on the bus (no display, a display that refuses the connection).
            let reason = pipeline
                .bus()
                .and_then(|bus| bus.pop_filtered(&[gst::MessageType::Error]))
                .and_then(|m| match m.view() {
                    gst::MessageView::Error(e) => Some(format!("{} ({:?})", e.error(), e.debug())),
                    _ => None,
                })
                .unwrap_or_else(|| "it did not start".into());
            let _ = pipeline.set_state(gst::State::Null);
            return Err(err(&reason));
        }
        Ok(GridWindow { pipeline, tiles, shown: Mutex::new(Vec::new()) })
    }

    /// Shows a rendered frame in its track's tile (zero-copy: the decoded buffer is shared).
    pub(crate) fn show(&self, frame: &VideoFrame) {
        let Some(tile) = self.tiles.iter().find(|t| t.track == frame.track) else { return };
        {
            let mut size = lock(&tile.size);
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
        let _ = tile.appsrc.push_buffer(frame.to_buffer());
    }

    /// Shows or hides a track's frames (its name tile shows while they are hidden).
    pub(crate) fn set_visible(&self, track: &str, visible: bool) {
        let shown = lock(&self.shown);
        if let Some(tile) = self.tiles.iter().find(|t| &*t.track == track) {
            let mut current = lock(&tile.visible);
            *current = visible;
            let on = visible && shown.iter().any(|s| &**s == track);
            tile.pads.track.set_property("alpha", if on { 1.0f64 } else { 0.0 });
        }
    }

    /// A track was subscribed (`true`) or left: the grid re-lays itself.
    pub(crate) fn set_subscribed(&self, track: &str, subscribed: bool) {
        let mut shown = lock(&self.shown);
        shown.retain(|s| &**s != track);
        if subscribed {
            shown.push(Arc::from(track));
        }
        let order: Vec<&Tile> = self.tiles.iter().filter(|t| shown.contains(&t.track)).collect();
        let places = grid::layout(order.len());
        for tile in &self.tiles {
            match order.iter().position(|t| t.track == tile.track) {
                Some(i) => {
                    tile.pads.place(places.get(i).copied());
                    let on = *lock(&tile.visible);
                    tile.pads.track.set_property("alpha", if on { 1.0f64 } else { 0.0 });
                }
                None => tile.pads.place(None),
            }
        }
    }
}

impl Drop for GridWindow {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}
